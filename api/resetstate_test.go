package api

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

type resetService struct {
	fakeService
	got ResetState
}

func (r *resetService) ResetState(_ context.Context, v string, req ResetState) (StateReset, error) {
	r.got = req
	return StateReset{Volume: v, Snapshot: req.Snapshot, Key: "naa.1", Version: 3}, nil
}

func TestResetStateEndpoint(t *testing.T) {
	post := func(h http.Handler, body string) *httptest.ResponseRecorder {
		req := httptest.NewRequest("POST", "/v1/volumes/dev/reset-state", strings.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		return rec
	}
	svc := &resetService{}
	rec := post(Handler(svc), `{"snapshot":"s1"}`)
	if rec.Code != 200 || svc.got.Snapshot != "s1" || !strings.Contains(rec.Body.String(), `"key": "naa.1"`) {
		t.Fatalf("HTTP %d %s, got %+v", rec.Code, rec.Body, svc.got)
	}
	if rec := post(Handler(svc), `{"snapshot":"bad/name"}`); rec.Code != 400 {
		t.Fatalf("bad snapshot name: HTTP %d", rec.Code)
	}
	if rec := post(Handler(&fakeService{}), `{}`); rec.Code != 404 {
		t.Fatalf("service without reset: HTTP %d", rec.Code)
	}
}
