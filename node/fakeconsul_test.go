package node

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/csnap/csnap/consul"
)

// fakeConsul is an in-memory Consul for in-process cluster tests: volume
// definitions in KV, sessions and locks with Consul's semantics (a lock is
// released with its invalidated session and then blocked for lockDelay;
// its LockIndex grows on every acquisition), client registries guarded by
// the lock, and the live members. A node can be partitioned: its calls
// hang until their deadline, its watches see nothing new, and once it has
// been cut off for failureDetection its sessions are invalidated and it
// leaves the members (as serfHealth going critical does).
type fakeConsul struct {
	keys             consul.Keys
	failureDetection time.Duration
	lockDelay        time.Duration

	mu            sync.Mutex
	defs          map[string]consul.VolumeDef
	locks         map[string]*fakeLockState
	sessions      map[string]fakeSession
	nextSession   int
	registered    map[string]bool
	meta          map[string]map[string]string // node -> its csnap-iscsi service metadata
	partitionedAt map[string]time.Time         // node -> when cut off
	down          map[string]bool              // cut off for longer than failureDetection
	registries    map[string]map[[16]byte]consul.ClientRecord
	changed       chan struct{} // closed and replaced on every change
}

type fakeLockState struct {
	session    string
	index      uint64
	value      []byte
	delayUntil time.Time
}

type fakeSession struct {
	node, name string
	valid      bool
}

func newFakeConsul(t *testing.T, fd, lockDelay time.Duration) *fakeConsul {
	f := &fakeConsul{keys: consul.Keys{Prefix: "csnap/"}, failureDetection: fd, lockDelay: lockDelay,
		defs: map[string]consul.VolumeDef{}, locks: map[string]*fakeLockState{}, sessions: map[string]fakeSession{},
		registered: map[string]bool{}, partitionedAt: map[string]time.Time{}, down: map[string]bool{},
		registries: map[string]map[[16]byte]consul.ClientRecord{}, changed: make(chan struct{})}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { // failure detection runs whether or not anyone calls
		defer close(done)
		tick := time.NewTicker(10 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
				f.mu.Lock()
				f.expire(time.Now())
				f.mu.Unlock()
			}
		}
	}()
	t.Cleanup(func() { cancel(); <-done })
	return f
}

// notify wakes the watches. f.mu is held.
func (f *fakeConsul) notify() {
	close(f.changed)
	f.changed = make(chan struct{})
}

// expire invalidates the sessions of nodes cut off for longer than
// failureDetection. f.mu is held.
func (f *fakeConsul) expire(now time.Time) {
	for node, at := range f.partitionedAt {
		if f.down[node] || now.Sub(at) <= f.failureDetection {
			continue
		}
		f.down[node] = true
		for id, s := range f.sessions {
			if s.node == node && s.valid {
				f.invalidate(id, now)
			}
		}
		f.notify()
	}
}

// invalidate ends session id, releasing its locks behind the lock-delay.
// f.mu is held.
func (f *fakeConsul) invalidate(id string, now time.Time) {
	s := f.sessions[id]
	s.valid = false
	f.sessions[id] = s
	for _, l := range f.locks {
		if l.session == id {
			l.session = ""
			l.delayUntil = now.Add(f.lockDelay)
		}
	}
}

// partition cuts node off from Consul (on) or reconnects it.
func (f *fakeConsul) partition(node string, on bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if on {
		f.partitionedAt[node] = time.Now()
		return
	}
	delete(f.partitionedAt, node)
	delete(f.down, node)
	f.notify()
}

// publish writes a volume definition.
func (f *fakeConsul) publish(d consul.VolumeDef) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.defs[d.Name] = d
	f.notify()
}

// agent is node's view of the fake.
func (f *fakeConsul) agent(node string) *fakeAgent { return &fakeAgent{f: f, node: node} }

// fakeAgent is one node's consul.Cluster over the fake.
type fakeAgent struct {
	f    *fakeConsul
	node string
}

var _ consul.Cluster = (*fakeAgent)(nil)

var errFakePartition = errors.New("fake consul: partitioned")

// enter takes f.mu for a call of the node; a partitioned node's call
// hangs until the partition heals, or fails at its deadline.
func (a *fakeAgent) enter(ctx context.Context) error {
	for {
		a.f.mu.Lock()
		if _, cut := a.f.partitionedAt[a.node]; !cut {
			return nil
		}
		ch := a.f.changed
		a.f.mu.Unlock()
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w: %v", errFakePartition, ctx.Err())
		case <-ch:
		}
	}
}

func (a *fakeAgent) Keys() consul.Keys { return a.f.keys }
func (a *fakeAgent) Address() string   { return "fake" }

func (a *fakeAgent) AgentNode(context.Context, *logrus.Entry) (string, error) { return a.node, nil }

func (a *fakeAgent) listLocked() ([]consul.VolumeDef, map[string]consul.ServerInfo) {
	defs := make([]consul.VolumeDef, 0, len(a.f.defs))
	servers := map[string]consul.ServerInfo{}
	for name, d := range a.f.defs {
		defs = append(defs, d)
		if si, held := a.f.serverLocked(name); held {
			servers[name] = si
		}
	}
	sort.Slice(defs, func(i, j int) bool { return defs[i].Name < defs[j].Name })
	return defs, servers
}

// serverLocked reads volume's lock key. f.mu is held.
func (f *fakeConsul) serverLocked(volume string) (consul.ServerInfo, bool) {
	var si consul.ServerInfo
	l := f.locks[f.keys.ServerLock(volume)]
	held := l != nil && l.session != "" && json.Unmarshal(l.value, &si) == nil
	return si, held
}

func (a *fakeAgent) ListVolumes(ctx context.Context) ([]consul.VolumeDef, map[string]consul.ServerInfo, error) {
	if err := a.enter(ctx); err != nil {
		return nil, nil, err
	}
	defer a.f.mu.Unlock()
	defs, servers := a.listLocked()
	return defs, servers, nil
}

func (a *fakeAgent) GetVolume(ctx context.Context, name string) (*consul.VolumeDef, error) {
	if err := a.enter(ctx); err != nil {
		return nil, err
	}
	defer a.f.mu.Unlock()
	d, ok := a.f.defs[name]
	if !ok {
		return nil, nil
	}
	return &d, nil
}

func (a *fakeAgent) PublishVolume(ctx context.Context, d consul.VolumeDef) error {
	if err := a.enter(ctx); err != nil {
		return err
	}
	defer a.f.mu.Unlock()
	if _, ok := a.f.defs[d.Name]; ok {
		return fmt.Errorf("volume %s: %w", d.Name, consul.ErrVolumeExists)
	}
	a.f.defs[d.Name] = d
	a.f.notify()
	return nil
}

func (a *fakeAgent) UpdateVolume(ctx context.Context, name string, change func(*consul.VolumeDef) error) (consul.VolumeDef, error) {
	if err := a.enter(ctx); err != nil {
		return consul.VolumeDef{}, err
	}
	defer a.f.mu.Unlock()
	d, ok := a.f.defs[name]
	if !ok {
		return consul.VolumeDef{}, fmt.Errorf("volume %s: %w", name, consul.ErrNoVolume)
	}
	if err := change(&d); err != nil {
		return consul.VolumeDef{}, err
	}
	a.f.defs[name] = d
	a.f.notify()
	return d, nil
}

// watch calls read (f.mu held) now and after every change, until ctx
// ends, then what read returns (f.mu released); a partitioned node's
// watch sees nothing new.
func (a *fakeAgent) watch(ctx context.Context, read func() func()) {
	for {
		a.f.mu.Lock()
		_, cut := a.f.partitionedAt[a.node]
		var then func()
		if !cut {
			then = read()
		}
		ch := a.f.changed
		a.f.mu.Unlock()
		if then != nil {
			then()
		}
		select {
		case <-ctx.Done():
			return
		case <-ch:
		}
	}
}

func (a *fakeAgent) WatchVolumes(ctx context.Context, _ *logrus.Entry, fn func([]consul.VolumeDef)) {
	a.watch(ctx, func() func() {
		defs, _ := a.listLocked()
		return func() { fn(defs) }
	})
}

func (a *fakeAgent) RegisterISCSI(ctx context.Context, reg consul.ISCSIRegistration) error {
	if err := a.enter(ctx); err != nil {
		return err
	}
	defer a.f.mu.Unlock()
	a.f.registered[a.node] = true
	if a.f.meta == nil {
		a.f.meta = map[string]map[string]string{}
	}
	a.f.meta[a.node] = reg.Meta
	a.f.notify()
	return nil
}

func (a *fakeAgent) DeregisterISCSI(ctx context.Context) error {
	if err := a.enter(ctx); err != nil {
		return err
	}
	defer a.f.mu.Unlock()
	a.f.registered[a.node] = false
	a.f.notify()
	return nil
}

func (a *fakeAgent) ISCSIRegistered(ctx context.Context, node string) (bool, error) {
	if err := a.enter(ctx); err != nil {
		return false, err
	}
	defer a.f.mu.Unlock()
	return a.f.registered[node], nil
}

func (a *fakeAgent) RegisterServer(ctx context.Context, _ string, _ consul.ServerInfo) error {
	if err := a.enter(ctx); err != nil {
		return err
	}
	a.f.mu.Unlock()
	return nil
}

func (a *fakeAgent) DeregisterServer(ctx context.Context, _ string) error {
	if err := a.enter(ctx); err != nil {
		return err
	}
	a.f.mu.Unlock()
	return nil
}

func (a *fakeAgent) WatchServer(ctx context.Context, volume string, _ *logrus.Entry) *consul.ServerWatch {
	w := consul.NewServerWatch(volume)
	go a.watch(ctx, func() func() {
		w.Set(a.f.serverLocked(volume))
		return nil
	})
	return w
}

func (a *fakeAgent) WatchMembers(ctx context.Context, _ *logrus.Entry, onLeft func(string)) *consul.Members {
	m := consul.NewMembers()
	go a.watch(ctx, func() func() {
		live := map[string]bool{}
		for n, r := range a.f.registered {
			if r && !a.f.down[n] {
				live[n] = true
			}
		}
		for n, meta := range a.f.meta {
			m.SetMeta(n, meta)
		}
		left := m.Update(live)
		return func() {
			for _, n := range left {
				if onLeft != nil {
					onLeft(n)
				}
			}
		}
	})
	return m
}

func (a *fakeAgent) NewLock(cfg consul.SessionConfig) (consul.Lock, error) {
	return &fakeLock{a: a, cfg: cfg}, nil
}

func (a *fakeAgent) ClientRegistry(volume string, session func() string) (consul.ClientRegistry, error) {
	return &fakeRegistry{a: a, volume: volume, session: session}, nil
}

// fakeLock is one election's lock API over the fake.
type fakeLock struct {
	a   *fakeAgent
	cfg consul.SessionConfig
}

func (l *fakeLock) CreateSession(ctx context.Context) (string, error) {
	if err := l.a.enter(ctx); err != nil {
		return "", err
	}
	defer l.a.f.mu.Unlock()
	f := l.a.f
	if f.down[l.a.node] {
		return "", errors.New("fake consul: node's checks are critical")
	}
	f.nextSession++
	id := fmt.Sprintf("session-%d", f.nextSession)
	f.sessions[id] = fakeSession{node: l.a.node, name: l.cfg.Name, valid: true}
	return id, nil
}

func (l *fakeLock) DestroySession(ctx context.Context, id string) error {
	if err := l.a.enter(ctx); err != nil {
		return err
	}
	defer l.a.f.mu.Unlock()
	l.a.f.invalidate(id, time.Now())
	l.a.f.notify()
	return nil
}

func (l *fakeLock) DestroyStaleSessions(ctx context.Context) (int, error) {
	if err := l.a.enter(ctx); err != nil {
		return 0, err
	}
	defer l.a.f.mu.Unlock()
	k := 0
	for id, s := range l.a.f.sessions {
		if s.valid && s.node == l.a.node && s.name == l.cfg.Name {
			l.a.f.invalidate(id, time.Now())
			k++
		}
	}
	return k, nil
}

func (l *fakeLock) Acquire(ctx context.Context, key, session string, value []byte) (bool, uint64, error) {
	if err := l.a.enter(ctx); err != nil {
		return false, 0, err
	}
	defer l.a.f.mu.Unlock()
	f := l.a.f
	if !f.sessions[session].valid {
		return false, 0, errors.New("fake consul: invalid session")
	}
	st := f.locks[key]
	if st == nil {
		st = &fakeLockState{}
		f.locks[key] = st
	}
	switch {
	case st.session == session:
	case st.session != "" || time.Now().Before(st.delayUntil):
		return false, st.index, nil
	default:
		st.session = session
		st.index++
	}
	st.value = append([]byte(nil), value...)
	f.notify()
	return true, st.index, nil
}

func (l *fakeLock) Holder(ctx context.Context, key string) (string, uint64, error) {
	if err := l.a.enter(ctx); err != nil {
		return "", 0, err
	}
	defer l.a.f.mu.Unlock()
	st := l.a.f.locks[key]
	if st == nil {
		return "", 0, nil
	}
	return st.session, st.index, nil
}

func (l *fakeLock) Release(ctx context.Context, key, session string) error {
	if err := l.a.enter(ctx); err != nil {
		return err
	}
	defer l.a.f.mu.Unlock()
	if st := l.a.f.locks[key]; st != nil && st.session == session {
		st.session = ""
		l.a.f.notify()
	}
	return nil
}

// fakeRegistry is a volume's client registry, written only while the
// volume's lock is held by session().
type fakeRegistry struct {
	a       *fakeAgent
	volume  string
	session func() string
}

func (r *fakeRegistry) write(ctx context.Context, fn func(map[[16]byte]consul.ClientRecord)) error {
	if err := r.a.enter(ctx); err != nil {
		return err
	}
	defer r.a.f.mu.Unlock()
	f := r.a.f
	st := f.locks[f.keys.ServerLock(r.volume)]
	if st == nil || st.session == "" || st.session != r.session() {
		return errors.New("fake consul: registry write without the volume's lock")
	}
	m := f.registries[r.volume]
	if m == nil {
		m = map[[16]byte]consul.ClientRecord{}
		f.registries[r.volume] = m
	}
	fn(m)
	return nil
}

func (r *fakeRegistry) Put(ctx context.Context, rec consul.ClientRecord) error {
	return r.write(ctx, func(m map[[16]byte]consul.ClientRecord) { m[rec.ID] = rec })
}

func (r *fakeRegistry) Delete(ctx context.Context, id [16]byte) error {
	return r.write(ctx, func(m map[[16]byte]consul.ClientRecord) { delete(m, id) })
}

func (r *fakeRegistry) List(ctx context.Context) ([]consul.ClientRecord, error) {
	if err := r.a.enter(ctx); err != nil {
		return nil, err
	}
	defer r.a.f.mu.Unlock()
	var out []consul.ClientRecord
	for _, rec := range r.a.f.registries[r.volume] {
		out = append(out, rec)
	}
	return out, nil
}
