package snapstore

import (
	"container/list"
	"fmt"
)

// cblock is one cached metadata block: a tree node or a bitmap block.
// The table and state blocks are held in memory permanently (their size is
// bounded by the table capacity) and are not cached here.
type cblock struct {
	addr uint64
	kind uint8
	n    *node  // kindLeaf / kindBranch
	bits []byte // bitmap kinds: BlockSize-hdrSize bytes
	// dirty: modified since the last capture; never evicted.
	dirty bool
	// homePending: the transaction whose home write of this block has not
	// been issued yet; the block may not be evicted until it has (a re-read
	// would see the stale home copy).
	homePending uint64
	elem        *list.Element
}

// All cache methods run with e.mu held.

func (e *Engine) cacheLookup(addr uint64) *cblock {
	cb := e.cache[addr]
	if cb != nil {
		e.lru.MoveToFront(cb.elem)
	}
	return cb
}

func (e *Engine) cacheAdd(cb *cblock) {
	cb.elem = e.lru.PushFront(cb)
	e.cache[cb.addr] = cb
}

func (e *Engine) cacheDrop(addr uint64) {
	if cb := e.cache[addr]; cb != nil {
		e.lru.Remove(cb.elem)
		delete(e.cache, addr)
		delete(e.dirty, addr)
	}
}

// trimCache evicts clean blocks beyond the cache capacity. It is called only
// between operations, when no node pointers are held.
func (e *Engine) trimCache() {
	for el := e.lru.Back(); el != nil && len(e.cache) > e.cacheCap; {
		cb := el.Value.(*cblock)
		prev := el.Prev()
		if !cb.dirty && cb.homePending == 0 {
			e.lru.Remove(el)
			delete(e.cache, cb.addr)
		}
		el = prev
	}
}

func (e *Engine) readBlock(addr uint64) ([]byte, error) {
	buf := AlignedBuffer(BlockSize)
	if err := readFull(e.store, buf, int64(addr)*BlockSize); err != nil {
		return nil, fmt.Errorf("read metadata block %d: %w", addr, err)
	}
	return buf, nil
}

func (e *Engine) isMetaAddr(addr uint64) bool {
	return addr >= e.sb.metaStart && addr < e.sb.metaStart+e.sb.metaBlocks
}

// getNode returns the tree node at addr, reading and verifying it on a miss.
func (e *Engine) getNode(addr uint64) (*node, error) {
	if cb := e.cacheLookup(addr); cb != nil {
		if cb.n == nil {
			return nil, fmt.Errorf("block %d is cached as a %s, referenced as a tree node: %w", addr, kindName(cb.kind), ErrCorrupt)
		}
		return cb.n, nil
	}
	if !e.isMetaAddr(addr) {
		return nil, fmt.Errorf("tree node address %d outside the metadata area: %w", addr, ErrCorrupt)
	}
	buf, err := e.readBlock(addr)
	if err != nil {
		return nil, err
	}
	n, err := decodeNode(buf, addr, e.uuid)
	if err != nil {
		return nil, err
	}
	kind := uint8(kindBranch)
	if n.leaf {
		kind = kindLeaf
	}
	e.cacheAdd(&cblock{addr: addr, kind: kind, n: n})
	return n, nil
}

func (e *Engine) dirtyNode(n *node) {
	cb := e.cache[n.addr]
	if cb == nil || cb.n != n {
		panic(fmt.Sprintf("snapstore: dirtying uncached node %d", n.addr))
	}
	cb.dirty = true
	e.dirty[n.addr] = cb
}

// getBitmap returns the cached bitmap block at addr.
func (e *Engine) getBitmap(kind uint8, addr uint64) (*cblock, error) {
	if cb := e.cacheLookup(addr); cb != nil {
		if cb.kind != kind {
			return nil, fmt.Errorf("block %d cached as %s, wanted %s: %w", addr, kindName(cb.kind), kindName(kind), ErrCorrupt)
		}
		return cb, nil
	}
	buf, err := e.readBlock(addr)
	if err != nil {
		return nil, err
	}
	bits, err := decodeBitmap(buf, kind, addr, e.uuid)
	if err != nil {
		return nil, err
	}
	cb := &cblock{addr: addr, kind: kind, bits: bits}
	e.cacheAdd(cb)
	return cb, nil
}

func (e *Engine) dirtyBlock(cb *cblock) {
	cb.dirty = true
	e.dirty[cb.addr] = cb
}
