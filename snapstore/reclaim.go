package snapstore

import (
	"context"
	"fmt"
	"time"
)

// Reclamation of deleted and dropped snapshots.
//
// Deleting a snapshot only moves it to the queue (one table block and the
// state block, committed durably). A reclamation pass takes every queued
// snapshot whose deletion is durable (the set W), calls BeforeReclaim, then
// walks the exception tree in key order from a cursor persisted in the
// state block, a small batch of entries per critical section:
//   - a private exception of a snapshot in W is freed;
//   - a shared exception whose range holds an id in W is re-counted: with
//     no user left it is freed; if W's departure left exactly one user,
//     that user's unique counter is incremented.
// When the walk reaches the end, W's table slots are freed (or become
// tombstones for dropped snapshots). A crash resumes the pass from the last
// committed cursor; the counting rule (wCounted) makes re-visiting an entry
// after recovery idempotent because cursor and counters commit together.

const (
	reclaimBatch       = 32
	maxPassTableBlocks = 24
)

func (e *Engine) kickReclaim() {
	select {
	case e.kick <- struct{}{}:
	default:
	}
}

func (e *Engine) reclaimer() {
	defer close(e.bgDone)
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case <-e.stop:
			return
		case <-e.kick:
		case <-tick.C:
		}
		for {
			select {
			case <-e.stop:
				return
			default:
			}
			if e.pauseReclaim.Load() {
				time.Sleep(200 * time.Microsecond)
				continue
			}
			t0 := time.Now()
			e.mu.Lock()
			e.hookWait = 0
			progressed, err := false, e.usable()
			if err == nil {
				progressed, err = e.reclaimOnceLocked(reclaimBatch, true)
			}
			hook := e.hookWait
			e.trimCache()
			e.unlock()
			if err != nil || !progressed {
				break
			}
			// Pace reclamation: it is background work, and each batch adds
			// metadata blocks to foreground commits. At 32 entries per
			// millisecond 1 GiB of 64 KiB chunks is reclaimed in about a
			// second. Time spent waiting in BeforeReclaim (clients
			// finishing their reads) is not work and does not count.
			time.Sleep(max(time.Millisecond, 2*(time.Since(t0)-hook)))
		}
	}
}

// SetBeforeReclaim installs fn as the BeforeReclaim hook (nil removes it),
// replacing Options.BeforeReclaim: the snapshot server, built after the
// engine, installs its own. A pass already calling the old hook finishes
// with it.
func (e *Engine) SetBeforeReclaim(fn func(ctx context.Context, ids []SnapID)) {
	e.mu.Lock()
	e.beforeReclaim = fn
	e.mu.Unlock()
}

// Reclaim runs reclamation of every deleted snapshot to completion and
// commits. Normally the background reclaimer does this.
func (e *Engine) Reclaim(ctx context.Context) error {
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		e.mu.Lock()
		if err := e.usable(); err != nil {
			e.unlock()
			return err
		}
		progressed, err := e.reclaimOnceLocked(reclaimBatch, false)
		if err == nil && !progressed {
			err = e.waitDurableLocked(e.openSeq)
			e.trimCache()
			e.unlock()
			return err
		}
		e.trimCache()
		e.unlock()
		if err != nil {
			return err
		}
	}
}

// Reclaiming reports whether deleted snapshots are waiting for or under
// reclamation.
func (e *Engine) Reclaiming() bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.st.reclaiming || len(e.queued) > 0
}

// reclaimOnceLocked does one unit of reclamation work; false if there was
// nothing to do. With yield, it stops early when foreground work waits.
func (e *Engine) reclaimOnceLocked(budget int, yield bool) (bool, error) {
	if e.passBusy {
		return false, nil
	}
	if !e.st.reclaiming {
		if len(e.queued) == 0 {
			return false, nil
		}
		return true, e.startPassLocked()
	}
	return true, e.reclaimStepLocked(budget, yield)
}

func (e *Engine) startPassLocked() error {
	e.passBusy = true
	defer func() {
		e.passBusy = false
		e.cond.Broadcast()
	}()
	var at uint64
	for _, id := range e.queued {
		at = max(at, e.queuedAt[id])
	}
	// The deletions must be durable before their chunks can be reused.
	if err := e.waitDurableLocked(at); err != nil {
		return err
	}
	// A pass dirties the table block of each of its snapshots when it
	// starts and when it ends; keep that within one transaction. The rest
	// wait for the next pass.
	var ids []uint32
	blocks := map[int]bool{}
	for _, id := range e.queued {
		b := e.byID[id] / tableEntriesPerBlk
		if !blocks[b] && len(blocks) == maxPassTableBlocks {
			continue
		}
		blocks[b] = true
		ids = append(ids, id)
	}
	if hook := e.beforeReclaim; hook != nil && len(ids) > 0 {
		sids := make([]SnapID, len(ids))
		for i, id := range ids {
			sids[i] = SnapID(id)
		}
		t0 := time.Now()
		e.mu.Unlock()
		hook(e.hookCtx, sids)
		e.mu.Lock()
		e.hookWait += time.Since(t0)
		if err := e.usable(); err != nil {
			return err
		}
	}
	if e.st.reclaiming {
		return nil
	}
	if err := e.throttleLocked(); err != nil {
		return err
	}
	for _, id := range ids {
		if !has(e.queued, id) {
			continue
		}
		e.queued = removeSorted(e.queued, id)
		e.recl = insertSorted(e.recl, id)
		delete(e.queuedAt, id)
		e.slotOf(id).state = slotReclaiming
		e.dirtySlot(id)
	}
	e.st.reclaiming = true
	e.st.cursorSet = false
	e.st.cursor = key{}
	e.stDirty = true
	return nil
}

func (e *Engine) reclaimStepLocked(budget int, yield bool) error {
	for i := 0; i < budget && e.st.reclaiming; i++ {
		if yield && i > 0 && e.fgWait.Load() > 0 {
			return nil
		}
		if err := e.throttleLocked(); err != nil {
			return err
		}
		if !e.st.reclaiming {
			return nil
		}
		var cur *cursor
		var err error
		if e.st.cursorSet {
			cur, err = e.seekGT(e.st.cursor)
		} else {
			cur, err = e.seekGE(key{})
		}
		if err != nil {
			return e.fail(err)
		}
		if !cur.valid() {
			e.finishPassLocked()
			return nil
		}
		x := cur.entry()
		k := x.key()
		free := false
		if x.priv {
			free = has(e.recl, x.lo)
		} else if countRange(e.recl, x.lo, x.hi) > 0 {
			privs, err := e.gatherPrivs(x.chunk, x.lo, x.hi)
			if err != nil {
				return e.fail(err)
			}
			before := e.users(x.lo, x.hi, privs, true)
			after := e.users(x.lo, x.hi, privs, false)
			if after == 0 {
				free = true
			} else if after == 1 && before >= 2 {
				e.addUniq(e.soleUser(x.lo, x.hi, privs, false), 1)
			}
		}
		if free {
			if err := e.treeDelete(k); err != nil {
				return e.fail(err)
			}
			if err := e.freeData(x.store); err != nil {
				return e.fail(err)
			}
		}
		e.st.cursor = k
		e.st.cursorSet = true
		e.stDirty = true
	}
	return nil
}

func (e *Engine) finishPassLocked() {
	for _, id := range e.recl {
		t := e.slotOf(id)
		e.dirtySlot(id)
		if t.flags&flagDropped != 0 {
			t.state = slotDropped
			t.diff, t.uniq, t.priv = 0, 0, 0
		} else {
			e.events = append(e.events, Event{Kind: EventReclaimed, Snapshot: SnapID(id), Name: t.name,
				Message: fmt.Sprintf("space of deleted snapshot %q (id %d) reclaimed", t.name, id)})
			delete(e.byID, id)
			*t = tableEntry{}
		}
	}
	e.recl = nil
	e.st.reclaiming = false
	e.st.cursorSet = false
	e.st.cursor = key{}
	e.stDirty = true
	e.cond.Broadcast()
	if len(e.queued) > 0 {
		e.kickReclaim()
	}
}
