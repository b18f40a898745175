package snapstore

import (
	"context"
	"fmt"
	"sort"
	"time"

	"github.com/csnap/csnap/internal/names"
)

// Snapshot accounting.
//
// Users of an exception. A shared exception x of chunk C serves ids
// [x.lo, x.hi]; its users are the counted ids in that range that have no
// private exception for C. "Counted" means: live; or deleted but still
// queued for reclamation; or in the current reclamation pass and not yet
// visited by it for x (x's key is beyond the pass cursor). The counted set
// changes only at points where the counters below are adjusted, which keeps
// them exact and maintained in O(1)-ish work per change.
//
// Per live snapshot s:
//   R(s) = number of shared exceptions s is a user of. Kept as a difference
//          array over ids: a new exception [lo,hi] adds +1 at lo and -1 at
//          hi+1; a private exception for s inside a shared range adds a
//          point correction -1 at s, +1 at s+1. A contribution aimed at an
//          id that is not live goes to the next live id above it (or to
//          state.pendingDiff, taken over by the next snapshot created);
//          this leaves every prefix sum at a live id unchanged. R(s) is the
//          prefix sum of diff over live ids <= s.
//   U(s) = exceptions whose only user is s (table field uniq).
//   P(s) = private exceptions of s (counted in table field uniq as well and
//          separately in priv).
// Unique bytes = U*chunk; shared bytes = (R + P - U)*chunk.

// SnapshotState is the lifecycle state of a snapshot.
type SnapshotState int

const (
	// StateLive snapshots are readable (and writable if created so).
	StateLive SnapshotState = iota + 1
	// StateDeleting snapshots are deleted; their space is being reclaimed
	// in the background.
	StateDeleting
	// StateDropped snapshots were dropped when the store was full. Reads
	// fail with ErrSnapshotDropped until the snapshot is deleted.
	StateDropped
)

func (s SnapshotState) String() string {
	switch s {
	case StateLive:
		return "live"
	case StateDeleting:
		return "deleting"
	case StateDropped:
		return "dropped"
	}
	return fmt.Sprintf("state(%d)", int(s))
}

// SnapshotInfo describes one snapshot.
type SnapshotInfo struct {
	ID          SnapID
	Name        string
	Created     time.Time
	Priority    int32
	Writable    bool
	State       SnapshotState
	UniqueBytes int64 // bytes of store chunks only this snapshot uses
	SharedBytes int64 // bytes of store chunks it shares with other snapshots
}

func countRange(s []uint32, lo, hi uint32) int {
	if lo > hi {
		return 0
	}
	i := sort.Search(len(s), func(i int) bool { return s[i] >= lo })
	j := sort.Search(len(s), func(i int) bool { return s[i] > hi })
	return j - i
}

func has(s []uint32, id uint32) bool {
	i := sort.Search(len(s), func(i int) bool { return s[i] >= id })
	return i < len(s) && s[i] == id
}

func insertSorted(s []uint32, id uint32) []uint32 {
	i := sort.Search(len(s), func(i int) bool { return s[i] >= id })
	s = append(s, 0)
	copy(s[i+1:], s[i:])
	s[i] = id
	return s
}

func removeSorted(s []uint32, id uint32) []uint32 {
	i := sort.Search(len(s), func(i int) bool { return s[i] >= id })
	if i < len(s) && s[i] == id {
		return append(s[:i], s[i+1:]...)
	}
	return s
}

// wCounted reports whether snapshots of the current reclamation pass still
// count as users of the exception with key k.
func (e *Engine) wCounted(k key) bool {
	return e.st.reclaiming && (!e.st.cursorSet || e.st.cursor.less(k))
}

func (e *Engine) counted(id uint32, w bool) bool {
	return has(e.live, id) || has(e.queued, id) || (w && has(e.recl, id))
}

func (e *Engine) countedIn(lo, hi uint32, w bool) int {
	n := countRange(e.live, lo, hi) + countRange(e.queued, lo, hi)
	if w {
		n += countRange(e.recl, lo, hi)
	}
	return n
}

// users counts the users of shared exception [lo,hi] given the ids of the
// private exceptions of the same chunk in that range.
func (e *Engine) users(lo, hi uint32, privs []uint32, w bool) int {
	n := e.countedIn(lo, hi, w)
	for _, p := range privs {
		if p >= lo && p <= hi && e.counted(p, w) {
			n--
		}
	}
	return n
}

// soleUser returns the only user of [lo,hi] (users() must be 1).
func (e *Engine) soleUser(lo, hi uint32, privs []uint32, w bool) uint32 {
	lists := [][]uint32{e.live, e.queued}
	if w {
		lists = append(lists, e.recl)
	}
	for _, s := range lists {
		i := sort.Search(len(s), func(i int) bool { return s[i] >= lo })
		for ; i < len(s) && s[i] <= hi; i++ {
			isPriv := false
			for _, p := range privs {
				isPriv = isPriv || p == s[i]
			}
			if !isPriv {
				return s[i]
			}
		}
	}
	return 0
}

func (e *Engine) slotOf(id uint32) *tableEntry {
	if i, ok := e.byID[id]; ok {
		return &e.slots[i]
	}
	return nil
}

func (e *Engine) dirtySlot(id uint32) {
	if i, ok := e.byID[id]; ok {
		e.tableDirty[i/tableEntriesPerBlk] = true
	}
}

// addDiff adds d to the difference array at id (see above).
func (e *Engine) addDiff(id uint32, d int64) {
	i := sort.Search(len(e.live), func(i int) bool { return e.live[i] >= id })
	if i == len(e.live) {
		e.st.pendingDiff += d
		e.stDirty = true
		return
	}
	e.slotOf(e.live[i]).diff += d
	e.dirtySlot(e.live[i])
}

func (e *Engine) addUniq(id uint32, d int64) {
	if t := e.slotOf(id); t != nil {
		t.uniq += d
		e.dirtySlot(id)
	}
}

func (e *Engine) info(t *tableEntry, r int64) SnapshotInfo {
	si := SnapshotInfo{
		ID: SnapID(t.id), Name: t.name, Created: time.Unix(0, t.ctime), Priority: t.priority,
		Writable: t.flags&flagWritable != 0,
	}
	switch t.state {
	case slotLive:
		si.State = StateLive
		si.UniqueBytes = t.uniq * e.cs
		si.SharedBytes = (r + t.privCount() - t.uniq) * e.cs
	case slotDropped:
		si.State = StateDropped
	default:
		si.State = StateDeleting
		if t.flags&flagDropped != 0 {
			si.State = StateDropped
		}
	}
	return si
}

// Snapshots lists every snapshot in the table (live, deleting and dropped),
// ordered by id, with per-snapshot unique and shared bytes. It does no IO.
func (e *Engine) Snapshots() []SnapshotInfo {
	e.lock()
	defer e.mu.Unlock()
	ids := make([]uint32, 0, len(e.byID))
	for id := range e.byID {
		ids = append(ids, id)
	}
	sort.Slice(ids, func(i, j int) bool { return ids[i] < ids[j] })
	out := make([]SnapshotInfo, 0, len(ids))
	var r int64
	for _, id := range ids {
		t := e.slotOf(id)
		if t.state == slotLive {
			r += t.diff
		}
		out = append(out, e.info(t, r))
	}
	return out
}

// Snapshot returns one snapshot by id.
func (e *Engine) Snapshot(id SnapID) (SnapshotInfo, error) {
	for _, s := range e.Snapshots() {
		if s.ID == id {
			return s, nil
		}
	}
	return SnapshotInfo{}, fmt.Errorf("snapshot %d: %w", id, ErrNoSuchSnapshot)
}

// Lookup finds a live or dropped snapshot by name.
func (e *Engine) Lookup(name string) (SnapshotInfo, error) {
	for _, s := range e.Snapshots() {
		if s.Name == name && s.State != StateDeleting {
			return s, nil
		}
	}
	return SnapshotInfo{}, fmt.Errorf("snapshot %q: %w", name, ErrNoSuchSnapshot)
}

// ValidName reports whether name is a valid snapshot name: 1-63 characters
// of a-z 0-9 '-', starting with a letter or digit (names.Valid).
func ValidName(name string) bool { return names.Valid(name) }

// CreateOptions configure CreateSnapshot.
type CreateOptions struct {
	Priority int32
	Writable bool
}

// CreateSnapshot records a new snapshot of the origin as of now, durably,
// in O(1). The caller (the server) must ensure no origin write it already
// approved is still in flight, so the snapshot is a point in time.
func (e *Engine) CreateSnapshot(ctx context.Context, name string, o CreateOptions) (SnapshotInfo, error) {
	if !ValidName(name) {
		return SnapshotInfo{}, fmt.Errorf("create snapshot %q: %w", name, ErrBadName)
	}
	if err := ctx.Err(); err != nil {
		return SnapshotInfo{}, err
	}
	e.lock()
	defer e.unlock()
	if err := e.usable(); err != nil {
		return SnapshotInfo{}, err
	}
	if err := e.throttleLocked(); err != nil {
		return SnapshotInfo{}, err
	}
	free := -1
	for i := range e.slots {
		t := &e.slots[i]
		if t.state == slotFree {
			if free < 0 {
				free = i
			}
			continue
		}
		if t.name == name && (t.state == slotLive || t.state == slotDropped) {
			return SnapshotInfo{}, fmt.Errorf("create snapshot %q: %w", name, ErrSnapshotExists)
		}
	}
	if free < 0 {
		return SnapshotInfo{}, fmt.Errorf("create snapshot %q: all %d table slots in use: %w", name, len(e.slots), ErrTableFull)
	}
	if e.st.nextID == ^uint32(0) {
		return SnapshotInfo{}, fmt.Errorf("create snapshot %q: snapshot ids exhausted: %w", name, ErrTableFull)
	}
	id := e.st.nextID
	t := tableEntry{id: id, state: slotLive, priority: o.Priority, ctime: e.opts.Now().UnixNano(),
		diff: e.st.pendingDiff, name: name}
	if o.Writable {
		t.flags |= flagWritable
	}
	e.slots[free] = t
	e.byID[id] = free
	e.tableDirty[free/tableEntriesPerBlk] = true
	e.live = append(e.live, id) // ids are monotonic: stays sorted
	e.st.pendingDiff = 0
	e.st.nextID++
	e.st.generation = uint64(id)
	e.stDirty = true
	if err := e.waitDurableLocked(e.openSeq); err != nil {
		return SnapshotInfo{}, err
	}
	return e.info(&e.slots[free], 0), nil
}

// DeleteSnapshot deletes a snapshot: it stops being readable at once
// (durably, when this returns) and its space is reclaimed in the
// background. Deleting a dropped snapshot removes its tombstone.
func (e *Engine) DeleteSnapshot(ctx context.Context, id SnapID) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	// Deleting is how space is freed: a failed engine whose store works
	// again recovers first rather than refusing.
	if st, _ := e.State(); st == EngineFailed {
		if err := e.Recover(ctx); err != nil {
			return fmt.Errorf("delete snapshot %d: %w", id, err)
		}
	}
	e.lock()
	defer e.unlock()
	if err := e.usable(); err != nil {
		return err
	}
	if err := e.throttleLocked(); err != nil {
		return err
	}
	t := e.slotOf(uint32(id))
	if t == nil {
		return fmt.Errorf("delete snapshot %d: %w", id, ErrNoSuchSnapshot)
	}
	switch t.state {
	case slotLive:
		e.retireLocked(uint32(id), false)
	case slotDropped:
		e.dirtySlot(uint32(id))
		delete(e.byID, uint32(id))
		*t = tableEntry{}
	case slotQueued, slotReclaiming:
		if t.flags&flagDropped == 0 {
			return fmt.Errorf("delete snapshot %d: already being deleted: %w", id, ErrNoSuchSnapshot)
		}
		t.flags &^= flagDropped // reclaim to nothing rather than a tombstone
		e.dirtySlot(uint32(id))
	}
	if err := e.waitDurableLocked(e.openSeq); err != nil {
		return err
	}
	e.kickReclaim()
	return nil
}

// retireLocked moves a live snapshot to the reclamation queue.
func (e *Engine) retireLocked(id uint32, dropped bool) {
	t := e.slotOf(id)
	e.live = removeSorted(e.live, id)
	d := t.diff
	t.diff = 0
	e.addDiff(id, d) // fold into the next live id (or pending)
	t.state = slotQueued
	if dropped {
		t.flags |= flagDropped
	}
	e.dirtySlot(id)
	e.queued = insertSorted(e.queued, id)
	e.queuedAt[id] = e.openSeq
}

// SetPriority changes a live snapshot's priority (lowest is dropped first
// when the store is full).
func (e *Engine) SetPriority(ctx context.Context, id SnapID, prio int32) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	e.lock()
	defer e.unlock()
	if err := e.usable(); err != nil {
		return err
	}
	t := e.slotOf(uint32(id))
	if t == nil || t.state != slotLive {
		return fmt.Errorf("set priority of snapshot %d: %w", id, ErrNoSuchSnapshot)
	}
	t.priority = prio
	e.dirtySlot(uint32(id))
	return e.waitDurableLocked(e.openSeq)
}

// dropVictimLocked drops the lowest-priority live snapshot (oldest among
// equals). It returns false if there is none.
func (e *Engine) dropVictimLocked(why string) bool {
	var victim *tableEntry
	for _, id := range e.live {
		t := e.slotOf(id)
		if victim == nil || t.priority < victim.priority {
			victim = t
		}
	}
	if victim == nil {
		return false
	}
	e.retireLocked(victim.id, true)
	e.st.drops++
	e.nDrops.Add(1)
	e.stDirty = true
	e.events = append(e.events, Event{Kind: EventDropped, Snapshot: SnapID(victim.id), Name: victim.name,
		Message: fmt.Sprintf("%s: dropped snapshot %q (id %d, priority %d)", why, victim.name, victim.id, victim.priority)})
	return true
}

// liveSnapshot returns the table entry of a readable snapshot or the error
// to report for it.
func (e *Engine) liveSnapshot(id SnapID) (*tableEntry, error) {
	t := e.slotOf(uint32(id))
	if t == nil {
		return nil, fmt.Errorf("snapshot %d: %w", id, ErrNoSuchSnapshot)
	}
	switch {
	case t.state == slotLive:
		return t, nil
	case t.state == slotDropped || t.flags&flagDropped != 0:
		return nil, fmt.Errorf("snapshot %d (%s): %w", id, t.name, ErrSnapshotDropped)
	}
	return nil, fmt.Errorf("snapshot %d: deleted: %w", id, ErrNoSuchSnapshot)
}
