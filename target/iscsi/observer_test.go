package iscsi

import (
	"sync"
	"testing"
	"time"
)

// recObserver records what a Server tells its Observer.
type recObserver struct {
	mu      sync.Mutex
	logins  map[string]int // "target result"
	ended   map[string]int
	refused map[RefusalReason]int
}

func newRecObserver() *recObserver {
	return &recObserver{logins: map[string]int{}, ended: map[string]int{}, refused: map[RefusalReason]int{}}
}

func (r *recObserver) LoginDone(target string, res LoginResult) {
	r.mu.Lock()
	r.logins[target+" "+string(res)]++
	r.mu.Unlock()
}

func (r *recObserver) SessionEnded(target string) {
	r.mu.Lock()
	r.ended[target]++
	r.mu.Unlock()
}

func (r *recObserver) ConnectionRefused(why RefusalReason) {
	r.mu.Lock()
	r.refused[why]++
	r.mu.Unlock()
}

func (r *recObserver) get(f func() int) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return f()
}

// TestObserver: logins by result (CHAP failures included), ended sessions
// and connections refused by a limit reach the Observer, labelled by target
// only.
func TestObserver(t *testing.T) {
	obs := newRecObserver()
	_, addr, _ := chapServer(t, Config{Observer: obs, MaxPendingLoginsPerSource: 2})
	if st := chapLogin(t, dialInitiator(t, addr), "alice", "alicesecret12", false, ""); st != 0 {
		t.Fatalf("login %#x", st)
	}
	chapLogin(t, dialInitiator(t, addr), "alice", "wrong-secret1", false, "")
	dialInitiator(t, addr).login("iqn.2026-11.io.csnap:none")
	open := dialInitiator(t, addr)
	if st := open.login(openIQN); st != 0 {
		t.Fatalf("open login %#x", st)
	}
	open.nc.Close()
	// Two idle connections fill the pending-login limit; a third is refused.
	dialInitiator(t, addr)
	dialInitiator(t, addr)
	time.Sleep(50 * time.Millisecond)
	dialInitiator(t, addr)
	deadline := time.Now().Add(3 * time.Second)
	for obs.get(func() int { return obs.ended[openIQN] + obs.refused[RefusedLogins] }) < 2 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	obs.mu.Lock()
	defer obs.mu.Unlock()
	for key, want := range map[string]int{
		testIQN + " ok": 1, testIQN + " auth_failed": 1, " not_found": 1, openIQN + " ok": 1,
	} {
		if obs.logins[key] != want {
			t.Errorf("logins %q: %d, want %d (all: %v)", key, obs.logins[key], want, obs.logins)
		}
	}
	if obs.ended[openIQN] != 1 {
		t.Errorf("sessions ended on %s: %d, want 1", openIQN, obs.ended[openIQN])
	}
	if obs.refused[RefusedLogins] != 1 {
		t.Errorf("refused for pending logins: %d, want 1", obs.refused[RefusedLogins])
	}
}
