package client

import (
	"sort"
	"time"

	"github.com/csnap/csnap/snapstore/wire"
)

// heldLocks is the client's held-lock bookkeeping: the read locks
// (SNAPSHOT_READ answers that hold the origin) and block locks
// (BLOCK_LOCK_OK) it holds, until when what is done under each can be
// trusted, and which were held across a lost connection (the server may
// have released them). It is a pure ledger (no goroutines, clock or I/O:
// the Client passes the time in and sends the frames); its rules are
// checked against a brute-force oracle by TestHeldLocksModel.
type heldLocks struct {
	reads  map[uint64]*heldRead
	blocks map[uint64]*heldBlock
}

type heldRead struct {
	lock   wire.HeldLock
	until  time.Time // reads under it finished later are redone (wire.LockTrust)
	broken bool      // held across a lost connection: the read must be redone
}

type heldBlock struct {
	until  time.Time
	broken bool
}

func newHeldLocks() *heldLocks {
	return &heldLocks{reads: make(map[uint64]*heldRead), blocks: make(map[uint64]*heldBlock)}
}

// readCount returns how many read locks are held.
func (h *heldLocks) readCount() int { return len(h.reads) }

// blockCount returns how many block locks are held.
func (h *heldLocks) blockCount() int { return len(h.blocks) }

// grantRead records read lock l (its handle is l.Handle), trusted until
// until.
func (h *heldLocks) grantRead(l wire.HeldLock, until time.Time) {
	h.reads[l.Handle] = &heldRead{lock: l, until: until}
}

// releaseRead forgets read lock handle. held says whether it was held
// (and so whether the server must be told: FINISH_SNAPSHOT_READ); err says
// why what was read under it cannot be trusted, if it cannot:
// errLockBroken, a connection was lost while it was held, so the server
// may have released it (a server drops a connection's locks with it) and
// let the chunks be overwritten; errLockExpired, it is released (now)
// later than its trust time, so the server may have struck this client
// off and released it meanwhile (see wire.LockLease).
func (h *heldLocks) releaseRead(handle uint64, now time.Time) (held bool, err error) {
	r, ok := h.reads[handle]
	if !ok {
		return false, nil
	}
	delete(h.reads, handle)
	switch {
	case r.broken:
		return true, errLockBroken
	case now.After(r.until):
		return true, errLockExpired
	}
	return true, nil
}

// grantBlock records block lock handle, trusted until until.
func (h *heldLocks) grantBlock(handle uint64, until time.Time) {
	h.blocks[handle] = &heldBlock{until: until}
}

// blockTrusted reports whether block lock handle is certainly still held
// at now: held, not across a lost connection, within its trust time.
func (h *heldLocks) blockTrusted(handle uint64, now time.Time) bool {
	b, ok := h.blocks[handle]
	return ok && !b.broken && !now.After(b.until)
}

// releaseBlock forgets block lock handle; it reports whether it was held
// (and so whether the server must be told: BLOCK_UNLOCK).
func (h *heldLocks) releaseBlock(handle uint64) bool {
	if _, ok := h.blocks[handle]; !ok {
		return false
	}
	delete(h.blocks, handle)
	return true
}

// connLost marks every lock held as held across a lost connection.
func (h *heldLocks) connLost() {
	for _, r := range h.reads {
		r.broken = true
	}
	for _, b := range h.blocks {
		b.broken = true
	}
}

// uploadLockSize is the encoded size of a HeldLock with n ranges in
// UPLOAD_LOCKS (handle 8, snapshot 4, range count 2, ranges 12 each).
func uploadLockSize(n int) int { return 14 + 12*n }

// upload returns the read locks held, ascending by handle, in
// UPLOAD_LOCKS frames bounded by count (wire.MaxUploadLocks) and size
// (wire.MaxBody less a margin), and how many there are in all. Block locks
// are not re-declared: a server ends them with their connection.
func (h *heldLocks) upload() (frames [][]wire.HeldLock, n int) {
	hs := make([]uint64, 0, len(h.reads))
	for k := range h.reads {
		hs = append(hs, k)
	}
	sort.Slice(hs, func(i, j int) bool { return hs[i] < hs[j] })
	var batch []wire.HeldLock
	size := 0
	for _, k := range hs {
		l := h.reads[k].lock
		sz := uploadLockSize(len(l.Ranges))
		if len(batch) == wire.MaxUploadLocks || size+sz > wire.MaxBody-64 {
			frames = append(frames, batch)
			batch, size = nil, 0
		}
		batch = append(batch, l)
		size += sz
	}
	if len(batch) > 0 {
		frames = append(frames, batch)
	}
	return frames, len(hs)
}
