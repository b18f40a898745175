package api

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// fakeService is an in-memory Service for handler and client tests.
type fakeService struct {
	snaps map[string][]Snapshot
}

func (f *fakeService) Health(context.Context) (Health, error) {
	return Health{Status: "ok", Node: "n1"}, nil
}
func (f *fakeService) Volumes(context.Context) ([]Volume, error) {
	return []Volume{{Name: "dev", Size: 1 << 30}}, nil
}
func (f *fakeService) Volume(_ context.Context, n string) (Volume, error) {
	if n != "dev" {
		return Volume{}, fmt.Errorf("volume %s: %w", n, ErrNotFound)
	}
	return Volume{Name: "dev"}, nil
}
func (f *fakeService) CreateVolume(_ context.Context, r CreateVolume) (Volume, error) {
	return Volume{}, fmt.Errorf("volume %s exists: %w", r.Name, ErrConflict)
}
func (f *fakeService) SetVolume(_ context.Context, n string, r SetVolume) (Volume, error) {
	v, err := f.Volume(context.Background(), n)
	if err == nil && r.Initiators != nil {
		v.Initiators = *r.Initiators
	}
	return v, err
}
func (f *fakeService) Snapshots(_ context.Context, v string) ([]Snapshot, error) {
	if _, err := f.Volume(context.Background(), v); err != nil {
		return nil, err
	}
	return f.snaps[v], nil
}
func (f *fakeService) CreateSnapshot(_ context.Context, v string, r CreateSnapshot) (Snapshot, error) {
	s := Snapshot{Name: r.Name, ID: uint64(len(f.snaps[v]) + 1), Created: time.Unix(1, 0).UTC(), Priority: r.Priority, Writable: r.Writable}
	f.snaps[v] = append(f.snaps[v], s)
	return s, nil
}
func (f *fakeService) DeleteSnapshot(_ context.Context, v, s string) error {
	return fmt.Errorf("snapshot %s of %s: %w", s, v, ErrNotFound)
}
func (f *fakeService) Server(context.Context, string) (Server, error) {
	return Server{}, fmt.Errorf("no server elected: %w", ErrUnavailable)
}
func (f *fakeService) Clients(context.Context, string) ([]ClientEntry, error) { return nil, nil }
func (f *fakeService) Check(context.Context, string) (CheckReport, error) {
	return CheckReport{}, errors.New("disk on fire")
}

func TestHandlerAndClient(t *testing.T) {
	svc := &fakeService{snaps: map[string][]Snapshot{}}
	ts := httptest.NewServer(Handler(svc))
	defer ts.Close()
	c := NewClient(ts.URL, "")
	ctx := context.Background()

	var s Snapshot
	if err := c.Do(ctx, "POST", Path("volumes", "dev", "snapshots"), CreateSnapshot{Name: "s1", Priority: 3, Writable: true}, &s); err != nil {
		t.Fatal(err)
	}
	if s.Name != "s1" || s.ID != 1 || !s.Writable || s.Priority != 3 {
		t.Fatalf("created %+v", s)
	}
	var list []Snapshot
	if err := c.Do(ctx, "GET", Path("volumes", "dev", "snapshots"), nil, &list); err != nil || len(list) != 1 {
		t.Fatalf("list: %v %v", list, err)
	}
	var clients []ClientEntry
	if err := c.Do(ctx, "GET", Path("volumes", "dev", "clients"), nil, &clients); err != nil || clients == nil {
		t.Fatalf("empty registry must be [] not null: %v %v", clients, err)
	}

	for _, tc := range []struct {
		method, path string
		body         any
		status       int
		msg          string
	}{
		{"GET", Path("volumes", "nope"), nil, 404, "volume nope"},
		{"POST", Path("volumes"), CreateVolume{Name: "dev", Origin: "/o", Store: "/s"}, 409, "exists"},
		{"POST", Path("volumes"), CreateVolume{Name: "Bad_Name"}, 400, "must be 1-63"},
		{"POST", Path("volumes", "dev", "snapshots"), CreateSnapshot{Name: "-x"}, 400, "snapshot name"},
		{"POST", Path("volumes", "dev", "snapshots"), map[string]any{"name": "s2", "priorty": 1}, 400, "unknown field"},
		{"DELETE", Path("volumes", "dev", "snapshots", "zz"), nil, 404, "snapshot zz"},
		{"GET", Path("volumes", "dev", "server"), nil, 503, "no server"},
		{"POST", Path("volumes", "dev", "check"), nil, 500, "disk on fire"},
		{"GET", "/v1/nothing", nil, 404, "no API endpoint"},
	} {
		err := c.Do(ctx, tc.method, tc.path, tc.body, nil)
		var ae *APIError
		if !errors.As(err, &ae) || ae.Status != tc.status || !strings.Contains(ae.Message, tc.msg) {
			t.Errorf("%s %s: got %v, want HTTP %d containing %q", tc.method, tc.path, err, tc.status, tc.msg)
		}
	}
	// Oversized bodies are refused, not read.
	resp, err := http.Post(ts.URL+Path("volumes"), "application/json", strings.NewReader(`{"name":"`+strings.Repeat("a", 100000)+`"}`))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 400 {
		t.Errorf("oversized body: HTTP %d", resp.StatusCode)
	}
}

func TestClientUnreachable(t *testing.T) {
	c := NewClient("127.0.0.1:1", "")
	err := c.Do(context.Background(), "GET", Path("volumes"), nil, nil)
	if err == nil || !strings.Contains(err.Error(), "cannot reach csnapd at 127.0.0.1:1") {
		t.Fatalf("got %v", err)
	}
}

func TestValidName(t *testing.T) {
	for _, ok := range []string{"a", "0", "dev", "snap-1", strings.Repeat("a", 63)} {
		if err := ValidName("x", ok); err != nil {
			t.Errorf("%q rejected: %v", ok, err)
		}
	}
	for _, bad := range []string{"", "-a", "A", "a_b", "a.b", "a b", strings.Repeat("a", 64), "é"} {
		if err := ValidName("x", bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func TestValidInitiatorName(t *testing.T) {
	for _, ok := range []string{
		"iqn.1994-05.com.redhat:4a1b2c3d", "iqn.2008-11.org.linux-kvm", "iqn.2007-10.com.github:sahlberg:libiscsi:iscsi-test",
		"iqn.2026-11.io.csnap:dev", "eui.02004567A425678D", "naa.52004567BA64678D", "naa.62004567BA64678D0123456789ABCDEF",
		"iqn.2001-04.com.example:" + strings.Repeat("a", 223-len("iqn.2001-04.com.example:")),
	} {
		if err := ValidInitiatorName(ok); err != nil {
			t.Errorf("%q rejected: %v", ok, err)
		}
	}
	for _, bad := range []string{
		"", "iqn", "iqn.", "iqn.1994-13.com.x", "iqn.94-05.com.x", "IQN.1994-05.com.x", "iqn.1994-05.Com.x", "iqn.1994-05.com.x:a b",
		"eui.02004567a425678d", "eui.0200", "naa.0123", "initiator", "iqn.1994-05.com.x\x00",
		"iqn.2001-04.com.example:" + strings.Repeat("a", 224-len("iqn.2001-04.com.example:")), strings.Repeat("x", 8192),
	} {
		if err := ValidInitiatorName(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
	if err := ValidInitiators([]string{"iqn.2008-11.org.linux-kvm", "iqn.2008-11.org.linux-kvm"}); err == nil {
		t.Error("duplicate accepted")
	}
}
