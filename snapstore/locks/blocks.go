package locks

import (
	"fmt"
	"slices"
)

// Blocks is the table of block locks: exclusive locks on byte ranges of
// a volume (the origin or one writable snapshot), which the server grants
// for BLOCK_LOCK so that COMPARE AND WRITE is atomic across nodes.
//
// Requests are granted in arrival order: a request waits while it
// overlaps a granted lock or an earlier waiting request, so a stream of
// later requests never starves an earlier one, and requests on disjoint
// ranges never wait for each other. Like Table it does no I/O, reads no
// clock and is not safe for concurrent use; the server holds its mutex.
type Blocks struct {
	max     int // per client, granted and waiting
	granted []blockLock
	waiting []blockLock // arrival order
	count   map[ClientID]int
}

type blockLock struct {
	key      Key
	snapshot uint32
	start    uint64
	end      uint64 // exclusive
}

func (a blockLock) overlaps(b blockLock) bool {
	return a.snapshot == b.snapshot && a.start < b.end && b.start < a.end
}

// ErrTooManyBlockLocks: the client holds or waits for as many block locks
// as it may.
var ErrTooManyBlockLocks = fmt.Errorf("locks: too many block locks for one client: %w", ErrLimit)

// NewBlocks returns an empty table allowing each client max block locks,
// granted or waiting (0: 64).
func NewBlocks(max int) *Blocks {
	if max <= 0 {
		max = 64
	}
	return &Blocks{max: max, count: map[ClientID]int{}}
}

// Lock asks for bytes [off, off+n) of snapshot (0: the origin) for k. It
// reports whether the lock is granted now; if not, k waits until an
// Unlock or Drop returns it as granted.
func (b *Blocks) Lock(k Key, snapshot uint32, off, n uint64) (bool, error) {
	if n == 0 || off+n < off {
		return false, fmt.Errorf("locks: block lock of %d bytes at %d", n, off)
	}
	if b.find(k) {
		return false, fmt.Errorf("locks: block lock %v already exists", k)
	}
	if b.count[k.Client] >= b.max {
		return false, ErrTooManyBlockLocks
	}
	b.count[k.Client]++
	l := blockLock{key: k, snapshot: snapshot, start: off, end: off + n}
	if b.free(l, len(b.waiting)) {
		b.granted = append(b.granted, l)
		return true, nil
	}
	b.waiting = append(b.waiting, l)
	return false, nil
}

// find reports whether k is granted or waiting.
func (b *Blocks) find(k Key) bool {
	is := func(l blockLock) bool { return l.key == k }
	return slices.ContainsFunc(b.granted, is) || slices.ContainsFunc(b.waiting, is)
}

// free reports whether l overlaps no granted lock and none of the first
// before waiting requests.
func (b *Blocks) free(l blockLock, before int) bool {
	for _, g := range b.granted {
		if g.overlaps(l) {
			return false
		}
	}
	for _, w := range b.waiting[:before] {
		if w.overlaps(l) {
			return false
		}
	}
	return true
}

// Unlock releases the lock of k, granted or waiting, and returns the keys
// granted as a result. Unknown keys are ignored.
func (b *Blocks) Unlock(k Key) (granted []Key) {
	return b.remove(func(l blockLock) bool { return l.key == k })
}

// Drop releases every lock of client c, granted or waiting.
func (b *Blocks) Drop(c ClientID) (granted []Key) {
	return b.remove(func(l blockLock) bool { return l.key.Client == c })
}

func (b *Blocks) remove(match func(blockLock) bool) []Key {
	n := len(b.granted) + len(b.waiting)
	for _, l := range b.granted {
		if match(l) {
			b.forget(l.key.Client)
		}
	}
	for _, l := range b.waiting {
		if match(l) {
			b.forget(l.key.Client)
		}
	}
	b.granted = slices.DeleteFunc(b.granted, match)
	b.waiting = slices.DeleteFunc(b.waiting, match)
	if len(b.granted)+len(b.waiting) == n {
		return nil
	}
	// Grant, in order, every waiting request now free.
	var out []Key
	for i := 0; i < len(b.waiting); {
		if l := b.waiting[i]; b.free(l, i) {
			b.granted = append(b.granted, l)
			b.waiting = slices.Delete(b.waiting, i, i+1)
			out = append(out, l.key)
			continue
		}
		i++
	}
	return out
}

func (b *Blocks) forget(c ClientID) {
	if b.count[c]--; b.count[c] <= 0 {
		delete(b.count, c)
	}
}

// Granted reports whether k holds its lock (false: waiting or unknown).
func (b *Blocks) Granted(k Key) bool {
	return slices.ContainsFunc(b.granted, func(l blockLock) bool { return l.key == k })
}

// Len returns the numbers of granted and waiting locks.
func (b *Blocks) Len() (granted, waiting int) { return len(b.granted), len(b.waiting) }
