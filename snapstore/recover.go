package snapstore

import (
	"container/list"
	"context"
	"errors"
	"fmt"
	"time"
)

// Failure and recovery in place.
//
// An engine fails (Engine.fail) when an IO error or a damaged block stops
// an operation half-way: its in-memory state may then differ from the
// store, so it refuses all work. It writes nothing more, so the store is
// as a crash at that instant would leave it, which the journal makes
// consistent. Recover does what Open does on the same devices: it forgets
// every cached block and in-memory change, re-reads the superblock,
// replays the journal, reloads the state and table, and writes the
// superblock, all in place (the Engine value, its origin-read holds and
// chunk locks stay), so the caller (the snapshot server) need not rebuild
// anything. A background goroutine tries it with exponential backoff
// (Options.RecoverBackoff); callers may call it at any time.

// EngineState is an engine's health.
type EngineState int

const (
	// EngineOK: the engine works.
	EngineOK EngineState = iota
	// EngineFailed: the engine stopped on an error and refuses work until
	// it recovers in place.
	EngineFailed
	// EngineClosed: Close was called.
	EngineClosed
)

func (s EngineState) String() string {
	switch s {
	case EngineOK:
		return "ok"
	case EngineFailed:
		return "failed"
	case EngineClosed:
		return "closed"
	}
	return fmt.Sprintf("engine-state(%d)", int(s))
}

// ErrLostWrites: a flush of the store failed since the engine's last good
// one, possibly one another user of the device made, so writes the engine
// relies on may be lost although its own flush succeeded.
var ErrLostWrites = errors.New("a flush of the store failed since the engine's last good flush: writes may be lost")

// flushStore flushes the store and fails if any flush of the device failed
// since the engine's baseline (Open, Recover), its own or another user's
// (FlushErrorCounter).
func (e *Engine) flushStore() error {
	if err := e.store.Flush(); err != nil {
		return err
	}
	if fc, ok := e.store.(FlushErrorCounter); ok {
		if n, base := fc.FlushErrors(), e.flushErrBase.Load(); n != base {
			return fmt.Errorf("%w (%d failed flushes)", ErrLostWrites, n-base)
		}
	}
	return nil
}

// setFlushBaseline makes the device's current count of failed flushes the
// engine's baseline: called before the engine writes anything it relies on.
func (e *Engine) setFlushBaseline() {
	if fc, ok := e.store.(FlushErrorCounter); ok {
		e.flushErrBase.Store(fc.FlushErrors())
	}
}

// maxRecoverBackoff bounds the wait between automatic recovery attempts.
const maxRecoverBackoff = 30 * time.Second

// State returns the engine's health and, when failed, the error it
// failed on.
func (e *Engine) State() (EngineState, error) {
	e.mu.Lock()
	defer e.unlock()
	if e.failed == nil && !e.closed {
		// A flush of the store another user saw fail: the engine's
		// unflushed writes may be gone, so it fails now rather than at
		// its next commit.
		if fc, ok := e.store.(FlushErrorCounter); ok {
			if n, base := fc.FlushErrors(), e.flushErrBase.Load(); n != base {
				e.fail(fmt.Errorf("%w (%d failed flushes)", ErrLostWrites, n-base))
			}
		}
	}
	switch {
	case e.closed:
		return EngineClosed, ErrClosed
	case e.failed != nil:
		return EngineFailed, e.failed
	}
	return EngineOK, nil
}

// Recover brings a failed engine back in place: the same steps as Open
// (journal replay) on the same devices. It returns nil at once for an
// engine that has not failed, and an error (the engine staying failed)
// while the store cannot be read or written.
func (e *Engine) Recover(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	e.lock()
	defer e.unlock()
	// A commit, a reclamation pass start or a copy-out may be doing IO
	// without e.mu; each finds the engine failed when it is back.
	for e.committing || e.passBusy || e.copying > 0 {
		e.cond.Wait()
	}
	if e.closed {
		return ErrClosed
	}
	if e.failed == nil {
		return nil
	}
	n, err := e.reopenLocked()
	if err != nil {
		return fmt.Errorf("recover in place: %w (still failed: %v)", err, e.failed)
	}
	cause := e.failed
	e.failed = nil
	e.nRecoveries.Add(1)
	e.events = append(e.events, Event{Kind: EventRecovered,
		Message: fmt.Sprintf("recovered in place after %v: replayed %d journal transactions", cause, n)})
	e.cond.Broadcast()
	e.kickReclaim()
	return nil
}

// reopenLocked reloads everything from the store (e.mu held, no IO of
// others in flight). It does its IO under e.mu: nothing else can run on a
// failed engine anyway.
func (e *Engine) reopenLocked() (int, error) {
	e.setFlushBaseline()
	sb, slot, err := readSuper(e.store)
	if err != nil {
		return 0, err
	}
	if sb.uuid != e.uuid {
		return 0, fmt.Errorf("the store now holds another volume (uuid %x, was %x): %w", sb.uuid, e.uuid, ErrCorrupt)
	}
	e.sbMu.Lock()
	e.sb, e.sbSlot = *sb, slot
	e.sbMu.Unlock()
	e.cache, e.lru, e.dirty = map[uint64]*cblock{}, list.New(), map[uint64]*cblock{}
	e.reserved, e.tableDirty = map[uint64]bool{}, map[int]bool{}
	e.byID, e.queuedAt = map[uint32]int{}, map[uint32]uint64{}
	e.live, e.queued, e.recl = nil, nil, nil
	e.st, e.stDirty = state{}, false
	e.txData, e.txPrivData, e.dataDirty = nil, false, false
	n, err := e.replay()
	if err != nil {
		return 0, fmt.Errorf("journal recovery: %w", err)
	}
	// The fsync error policy (doc.go): the failed flush may have dropped
	// writes that reads still return (Linux keeps the pages, marked
	// clean). Replay rewrote every metadata block it replays; the data
	// chunks the last transaction's descriptor vouches for are rewritten
	// here, and the flush in writeSuperLocked makes both durable.
	if err := e.rewriteData(e.replayData); err != nil {
		return 0, err
	}
	if err := e.load(); err != nil {
		return 0, err
	}
	e.openSeq++
	e.durableSeq = e.openSeq - 1
	e.sbMu.Lock()
	e.sb.flags &^= superFlagClean
	e.sb.jTailPos, e.sb.jTailSeq = e.jPos, e.jSeq
	err = e.writeSuperLocked()
	e.sbMu.Unlock()
	if err != nil {
		return 0, err
	}
	return n, nil
}

// rewriteData reads the given data chunks and writes them back, so the
// next flush makes what reads return durable.
func (e *Engine) rewriteData(data []dataCRC) error {
	buf := AlignedBuffer(int(e.cs))
	for _, x := range data {
		if err := readFull(e.store, buf, e.storeOffset(x.chunk)); err != nil {
			return fmt.Errorf("rewrite data chunk %d: %w", x.chunk, err)
		}
		if err := writeFull(e.store, buf, e.storeOffset(x.chunk)); err != nil {
			return fmt.Errorf("rewrite data chunk %d: %w", x.chunk, err)
		}
	}
	return nil
}

// recoverer retries Recover with exponential backoff while the engine is
// failed.
func (e *Engine) recoverer() {
	defer close(e.recDone)
	for {
		select {
		case <-e.stop:
			return
		case <-e.failKick:
		}
		wait := e.opts.RecoverBackoff
		if wait == 0 {
			wait = time.Second
		}
		for {
			t := time.NewTimer(wait)
			select {
			case <-e.stop:
				t.Stop()
				return
			case <-t.C:
			}
			if st, _ := e.State(); st != EngineFailed {
				break
			}
			if err := e.Recover(e.hookCtx); err == nil {
				break
			}
			wait = min(2*wait, maxRecoverBackoff)
		}
	}
}
