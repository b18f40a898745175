package snapstore

import (
	"fmt"
	"hash/crc32"
)

// The journal is a circular region of whole-block images. A transaction is
// one descriptor block (sequence number, home addresses, CRC32C of the
// images) followed by the images; the descriptor is itself checksummed, so
// a torn transaction fails verification and is ignored. Transactions never
// wrap: when one does not fit before the end of the region the journal tail
// recorded in the superblock moves to position 0 first (after a flush that
// makes every earlier home write durable). Recovery replays transactions
// from the tail while they verify and carry consecutive sequence numbers.

// replay runs at Open, before anything else touches the store.
func (e *Engine) replay() (int, error) {
	type tx struct {
		pos uint64
		d   *jdesc
	}
	var chain []tx
	pos, seq := e.sb.jTailPos, e.sb.jTailSeq
	// Pass 1: find the chain of complete transactions.
	for pos+2 <= e.sb.journalBlocks {
		addr := e.sb.journalStart + pos
		b, err := e.readBlock(addr)
		if err != nil {
			return 0, err
		}
		d, err := decodeJDesc(b, addr, e.uuid)
		if err != nil || d.seq != seq || pos+1+uint64(len(d.homes)) > e.sb.journalBlocks {
			break // end of the log
		}
		imgs := AlignedBuffer(len(d.homes) * BlockSize)
		if err := readFull(e.store, imgs, int64(addr+1)*BlockSize); err != nil {
			return 0, fmt.Errorf("read journal transaction %d: %w", seq, err)
		}
		if crc32.Checksum(imgs, castagnoli) != d.crc {
			break // torn transaction: never committed
		}
		chain = append(chain, tx{pos, d})
		pos += 1 + uint64(len(d.homes))
		seq++
	}
	// A transaction committed without a preceding data flush is complete
	// only if its copied-out data is. Only the last one can be incomplete:
	// every later commit started after its flush.
	if k := len(chain); k > 0 && len(chain[k-1].d.data) > 0 {
		ok, err := e.dataIntact(chain[k-1].d.data)
		if err != nil {
			return 0, err
		}
		if !ok {
			pos = chain[k-1].pos
			seq--
			chain = chain[:k-1]
		}
	}
	e.replayData = nil
	if k := len(chain); k > 0 {
		e.replayData = chain[k-1].d.data
	}
	// Pass 2: write every image home.
	for _, t := range chain {
		addr := e.sb.journalStart + t.pos
		imgs := AlignedBuffer(len(t.d.homes) * BlockSize)
		if err := readFull(e.store, imgs, int64(addr+1)*BlockSize); err != nil {
			return 0, fmt.Errorf("read journal transaction %d: %w", t.d.seq, err)
		}
		for i, home := range t.d.homes {
			img := imgs[i*BlockSize : (i+1)*BlockSize]
			if _, err := verifyBlock(img, home, &e.uuid); err != nil {
				return 0, fmt.Errorf("journal transaction %d image %d: %w", t.d.seq, i, err)
			}
			if home < 2 || home >= e.sb.dataStart || (home >= e.sb.journalStart && home < e.sb.journalStart+e.sb.journalBlocks) {
				return 0, fmt.Errorf("journal transaction %d: home address %d is not a metadata block: %w", t.d.seq, home, ErrCorrupt)
			}
			if err := writeFull(e.store, img, int64(home)*BlockSize); err != nil {
				return 0, fmt.Errorf("replay block %d: %w", home, err)
			}
		}
	}
	if len(chain) > 0 {
		if err := e.flushStore(); err != nil {
			return 0, fmt.Errorf("flush after replay: %w", err)
		}
	}
	e.jPos, e.jSeq = pos, seq
	return len(chain), nil
}

// dataIntact checks copied-out chunks against their recorded CRC32C.
func (e *Engine) dataIntact(data []dataCRC) (bool, error) {
	buf := AlignedBuffer(int(e.cs))
	for _, x := range data {
		if x.chunk >= e.sb.dataChunks {
			return false, nil
		}
		if err := readFull(e.store, buf, e.storeOffset(x.chunk)); err != nil {
			return false, fmt.Errorf("verify copied-out chunk %d: %w", x.chunk, err)
		}
		if crc32.Checksum(buf, castagnoli) != x.crc {
			return false, nil
		}
	}
	return true, nil
}

// dirtyCount is the number of blocks the open transaction would write.
func (e *Engine) dirtyCount() int {
	n := len(e.dirty) + len(e.tableDirty)
	if e.stDirty {
		n++
	}
	return n
}

// txLimit is the most blocks one transaction may hold; txSoft leaves room
// for one more operation.
func (e *Engine) txLimit() int {
	return min(maxTxBlocks, int(e.sb.journalBlocks/2))
}

const opMaxBlocks = 100

// throttleLocked commits the open transaction if it is close to full.
func (e *Engine) throttleLocked() error {
	if e.dirtyCount()+opMaxBlocks > e.txLimit() {
		return e.waitDurableLocked(e.openSeq)
	}
	return nil
}

// waitDurableLocked returns once every change made in transaction seq (or
// before) is durable. The first waiter becomes the committer and writes
// everything dirty at that moment; the others wait for it (group commit).
// Called and returns with e.mu held; releases it while doing IO.
func (e *Engine) waitDurableLocked(seq uint64) error {
	for e.durableSeq < seq {
		if e.failed != nil {
			return e.failed
		}
		if e.committing {
			e.cond.Wait()
			continue
		}
		e.committing = true
		err := e.commitLocked()
		e.committing = false
		e.cond.Broadcast()
		if err != nil {
			return e.fail(err)
		}
	}
	return e.failed
}

type image struct {
	addr uint64
	b    []byte
	cb   *cblock
}

// commitLocked captures the open transaction and writes it.
func (e *Engine) commitLocked() error {
	txn := e.openSeq
	e.openSeq++
	if e.dirtyCount() == 0 {
		e.durableSeq = txn
		return nil
	}
	jseq := e.jSeq
	var imgs []image
	if e.stDirty {
		imgs = append(imgs, image{addr: e.sb.stateAddr, b: encodeState(&e.st, e.uuid, e.sb.stateAddr, jseq)})
		e.stDirty = false
	}
	for blk := range e.tableDirty {
		addr := e.sb.tableStart + uint64(blk)
		lo := blk * tableEntriesPerBlk
		hi := min(lo+tableEntriesPerBlk, len(e.slots))
		ents := make([]tableEntry, tableEntriesPerBlk)
		copy(ents, e.slots[lo:hi])
		imgs = append(imgs, image{addr: addr, b: encodeTableBlock(ents, e.uuid, addr, jseq)})
	}
	clear(e.tableDirty)
	for addr, cb := range e.dirty {
		var b []byte
		if cb.n != nil {
			b = encodeNode(cb.n, e.uuid, jseq)
		} else {
			b = encodeBitmap(cb.bits, cb.kind, e.uuid, addr, jseq)
		}
		cb.dirty = false
		cb.homePending = txn
		imgs = append(imgs, image{addr: addr, b: b, cb: cb})
	}
	clear(e.dirty)
	if len(imgs) > e.txLimit() {
		return fmt.Errorf("transaction of %d blocks exceeds the limit of %d", len(imgs), e.txLimit())
	}
	// Copied-out origin data need not be flushed before the journal write
	// when the descriptor records its checksums (recovery verifies them);
	// data copied for snapshot writes must be (the client overwrites it
	// after the commit, so it cannot be verified later).
	data := e.txData
	needFlush := e.dataDirty && (e.txPrivData || !jdescFits(len(imgs), len(data)))
	if needFlush || !e.dataDirty {
		data = nil
	}
	e.txData, e.txPrivData, e.dataDirty = nil, false, false
	pos := e.jPos
	wrap := pos+1+uint64(len(imgs)) > e.sb.journalBlocks
	e.mu.Unlock()
	err := e.writeTx(imgs, data, pos, jseq, needFlush, wrap)
	e.lock()
	for _, im := range imgs {
		if im.cb != nil && im.cb.homePending == txn {
			im.cb.homePending = 0
		}
	}
	if err != nil {
		return err
	}
	if wrap {
		pos = 0
	}
	e.jPos = pos + 1 + uint64(len(imgs))
	e.jSeq = jseq + 1
	e.durableSeq = txn
	e.nCommits.Add(1)
	e.nCommitBlocks.Add(uint64(len(imgs)))
	return nil
}

// writeTx does the IO of one transaction (no engine lock held).
func (e *Engine) writeTx(imgs []image, data []dataCRC, pos, jseq uint64, needFlush, wrap bool) error {
	flush := func(what string) error {
		e.nFlushes.Add(1)
		if err := e.flushStore(); err != nil {
			return fmt.Errorf("flush store (%s): %w", what, err)
		}
		return nil
	}
	// 1. Copied-out data must be durable before metadata pointing at it
	//    (unless the descriptor carries its checksums).
	if needFlush || wrap {
		if err := flush("data before journal"); err != nil {
			return err
		}
	}
	// 2. Wrapping reuses journal space: every earlier transaction's home
	//    writes are durable (flushed above), so the tail may move to 0.
	if wrap {
		pos = 0
		e.sbMu.Lock()
		e.sb.jTailPos, e.sb.jTailSeq = 0, jseq
		err := e.writeSuperLocked()
		e.sbMu.Unlock()
		if err != nil {
			return err
		}
	}
	// 3. Descriptor and images in one write, then flush: the commit point.
	buf := AlignedBuffer((1 + len(imgs)) * BlockSize)
	homes := make([]uint64, len(imgs))
	c := uint32(0)
	for i, im := range imgs {
		homes[i] = im.addr
		copy(buf[(1+i)*BlockSize:], im.b)
		c = crc32.Update(c, castagnoli, im.b)
	}
	daddr := e.sb.journalStart + pos
	copy(buf, encodeJDesc(&jdesc{seq: jseq, crc: c, homes: homes, data: data}, e.uuid, daddr))
	if err := writeFull(e.store, buf, int64(daddr)*BlockSize); err != nil {
		return fmt.Errorf("write journal transaction %d: %w", jseq, err)
	}
	if err := flush("journal commit"); err != nil {
		return err
	}
	// 4. Home writes; made durable by the next transaction's flush (or
	//    Close) before the journal space holding them is reused.
	for _, im := range imgs {
		e.preserve(im.addr)
		if err := writeFull(e.store, im.b, int64(im.addr)*BlockSize); err != nil {
			return fmt.Errorf("write metadata block %d: %w", im.addr, err)
		}
	}
	return nil
}

// Sync makes every change made so far durable.
func (e *Engine) Sync() error {
	e.lock()
	defer e.unlock()
	if err := e.usable(); err != nil {
		return err
	}
	return e.waitDurableLocked(e.openSeq)
}
