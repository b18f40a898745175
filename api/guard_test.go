package api

import (
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// TestProtect: the attacks of issue 15 on the HTTP API each get refused,
// and the one legitimate shape of request (csnap-admin's) passes.
func TestProtect(t *testing.T) {
	svc := &fakeService{snaps: map[string][]Snapshot{}}
	lo := net.IPv4(127, 0, 0, 1)
	h := Protect(Handler(svc), Access{
		Token: "s3cret", Hosts: []string{"localhost", "node1.example"},
		HostIP:  func(ip net.IP) bool { return ip.Equal(lo) },
		Origins: []string{"https://console.example"},
	})
	const body = `{"name":"s1"}`
	for _, tc := range []struct {
		name, method, path, host, auth, ctype, origin, body string
		code                                                int
	}{
		{"no token from loopback", "POST", "/v1/volumes/dev/snapshots", "127.0.0.1:7862", "", "application/json", "", body, 401},
		{"wrong token", "POST", "/v1/volumes/dev/snapshots", "127.0.0.1:7862", "Bearer s3creT", "application/json", "", body, 401},
		{"token without Bearer", "POST", "/v1/volumes/dev/snapshots", "127.0.0.1:7862", "s3cret", "application/json", "", body, 401},
		{"no token, read-only GET", "GET", "/v1/volumes", "127.0.0.1:7862", "", "", "", "", 401},
		{"no token, check", "POST", "/v1/volumes/dev/check", "127.0.0.1:7862", "", "", "", "", 401},
		{"text/plain POST", "POST", "/v1/volumes/dev/snapshots", "127.0.0.1:7862", "Bearer s3cret", "text/plain", "", body, 415},
		{"no content type", "POST", "/v1/volumes/dev/snapshots", "127.0.0.1:7862", "Bearer s3cret", "", "", body, 415},
		{"form POST", "POST", "/v1/volumes/dev/snapshots", "127.0.0.1:7862", "Bearer s3cret", "application/x-www-form-urlencoded", "", body, 415},
		{"foreign Origin", "POST", "/v1/volumes/dev/snapshots", "127.0.0.1:7862", "Bearer s3cret", "application/json", "http://evil.example", body, 403},
		{"null Origin", "POST", "/v1/volumes/dev/snapshots", "127.0.0.1:7862", "Bearer s3cret", "application/json", "null", body, 403},
		{"foreign Origin on health", "GET", "/v1/health", "127.0.0.1:7862", "", "", "http://evil.example", "", 403},
		{"rebinding Host", "POST", "/v1/volumes/dev/snapshots", "evil.example:7862", "Bearer s3cret", "application/json", "", body, 421},
		{"rebinding Host on health", "GET", "/v1/health", "evil.example", "", "", "", "", 421},
		{"other IP in Host", "GET", "/v1/volumes", "10.0.0.1:7862", "Bearer s3cret", "", "", "", 421},
		{"health without token", "GET", "/v1/health", "127.0.0.1:7862", "", "", "", "", 200},
		{"allowed origin", "POST", "/v1/volumes/dev/snapshots", "node1.example.:7862", "Bearer s3cret", "application/json; charset=utf-8", "https://console.example", body, 201},
		{"csnap-admin", "POST", "/v1/volumes/dev/snapshots", "localhost:7862", "Bearer s3cret", "application/json", "", `{"name":"s2"}`, 201},
		{"GET with token", "GET", "/v1/volumes", "127.0.0.1", "Bearer s3cret", "", "", "", 200},
	} {
		var rd *strings.Reader
		if tc.body != "" {
			rd = strings.NewReader(tc.body)
		}
		var req *http.Request
		if rd != nil {
			req = httptest.NewRequest(tc.method, tc.path, rd)
		} else {
			req = httptest.NewRequest(tc.method, tc.path, nil)
		}
		req.Host = tc.host
		if tc.auth != "" {
			req.Header.Set("Authorization", tc.auth)
		}
		if tc.ctype != "" {
			req.Header.Set("Content-Type", tc.ctype)
		}
		if tc.origin != "" {
			req.Header.Set("Origin", tc.origin)
		}
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code != tc.code {
			t.Errorf("%s: HTTP %d (%s), want %d", tc.name, rec.Code, strings.TrimSpace(rec.Body.String()), tc.code)
		}
	}
	if n := len(svc.snaps["dev"]); n != 2 {
		t.Errorf("%d snapshots created, want the 2 authorised ones", n)
	}
	// No token configured: nothing but health.
	h = Protect(Handler(svc), Access{Hosts: []string{"localhost"}})
	for _, auth := range []string{"", "Bearer ", "Bearer"} {
		req := httptest.NewRequest("GET", "/v1/volumes", nil)
		req.Host = "localhost"
		if auth != "" {
			req.Header.Set("Authorization", auth)
		}
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code != 401 {
			t.Errorf("empty token, Authorization %q: HTTP %d", auth, rec.Code)
		}
	}
}
