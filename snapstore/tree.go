package snapstore

import (
	"fmt"
	"sort"
)

// The exception tree: a B+tree of exceptions keyed by (origin chunk, lo,
// private), updated in place under the journal. Branch keys are lower
// bounds: every key in subtree i is >= keys[i] (i > 0) and < keys[i+1].
// All functions run with e.mu held.

type pathEl struct {
	n *node
	i int
}

type cursor struct {
	e    *Engine
	path []pathEl
}

func (n *node) count() int {
	if n.leaf {
		return len(n.ents)
	}
	return len(n.kids)
}

func childIndex(n *node, k key) int {
	// largest i with keys[i] <= k, at least 0
	i := sort.Search(len(n.keys), func(i int) bool { return k.less(n.keys[i]) }) - 1
	if i < 0 {
		i = 0
	}
	return i
}

// descend walks from the root to the leaf that would hold k. The leaf's
// index is the first entry >= k.
func (e *Engine) descend(k key) (*cursor, error) {
	c := &cursor{e: e, path: make([]pathEl, 0, e.st.height)}
	addr := e.st.root
	for depth := uint32(0); ; depth++ {
		n, err := e.getNode(addr)
		if err != nil {
			return nil, err
		}
		if depth+1 == e.st.height {
			if !n.leaf {
				return nil, fmt.Errorf("tree node %d at depth %d is a branch, expected a leaf: %w", addr, depth, ErrCorrupt)
			}
			i := sort.Search(len(n.ents), func(i int) bool { return !n.ents[i].key().less(k) })
			c.path = append(c.path, pathEl{n, i})
			return c, nil
		}
		if n.leaf {
			return nil, fmt.Errorf("tree node %d at depth %d is a leaf, expected a branch: %w", addr, depth, ErrCorrupt)
		}
		i := childIndex(n, k)
		c.path = append(c.path, pathEl{n, i})
		addr = n.kids[i]
	}
}

func (c *cursor) leaf() *pathEl { return &c.path[len(c.path)-1] }

func (c *cursor) valid() bool {
	l := c.leaf()
	return l.i >= 0 && l.i < len(l.n.ents)
}

func (c *cursor) entry() exception { l := c.leaf(); return l.n.ents[l.i] }

// fill re-descends from depth d (whose index is set) to a leaf, taking the
// first (first=true) or last entry of each node.
func (c *cursor) fill(d int, first bool) error {
	for j := d + 1; j < len(c.path); j++ {
		p := c.path[j-1]
		n, err := c.e.getNode(p.n.kids[p.i])
		if err != nil {
			return err
		}
		i := 0
		if !first {
			i = n.count() - 1
		}
		c.path[j] = pathEl{n, i}
	}
	return nil
}

// next advances to the following entry. At the end it leaves the cursor
// just past the last entry (invalid).
func (c *cursor) next() error {
	for {
		l := c.leaf()
		if l.i < len(l.n.ents) {
			l.i++
		}
		if l.i < len(l.n.ents) {
			return nil
		}
		d := len(c.path) - 2
		for ; d >= 0 && c.path[d].i+1 >= len(c.path[d].n.kids); d-- {
		}
		if d < 0 {
			return nil
		}
		c.path[d].i++
		if err := c.fill(d, true); err != nil {
			return err
		}
		if len(c.leaf().n.ents) > 0 {
			return nil
		}
		c.leaf().i = -1 // empty leaf (should not happen): keep walking
	}
}

// prev steps back to the preceding entry; before the first it leaves the
// cursor invalid (index -1).
func (c *cursor) prev() error {
	for {
		l := c.leaf()
		if l.i > len(l.n.ents) {
			l.i = len(l.n.ents)
		}
		if l.i >= 0 {
			l.i--
		}
		if l.i >= 0 {
			return nil
		}
		d := len(c.path) - 2
		for ; d >= 0 && c.path[d].i == 0; d-- {
		}
		if d < 0 {
			return nil
		}
		c.path[d].i--
		if err := c.fill(d, false); err != nil {
			return err
		}
		if len(c.leaf().n.ents) > 0 {
			return nil
		}
		c.leaf().i = len(c.leaf().n.ents) // empty leaf: keep walking
	}
}

// seekGE positions at the first entry >= k.
func (e *Engine) seekGE(k key) (*cursor, error) {
	c, err := e.descend(k)
	if err != nil {
		return nil, err
	}
	if l := c.leaf(); l.i >= len(l.n.ents) {
		l.i = len(l.n.ents) - 1
		if err := c.next(); err != nil {
			return nil, err
		}
		if !c.valid() {
			// Past the end: park after the last entry of the last leaf.
			l := c.leaf()
			l.i = len(l.n.ents)
		}
	}
	return c, nil
}

// seekGT positions at the first entry > k.
func (e *Engine) seekGT(k key) (*cursor, error) {
	c, err := e.seekGE(k)
	if err != nil {
		return nil, err
	}
	if c.valid() && c.entry().key() == k {
		err = c.next()
	}
	return c, err
}

// seekLE positions at the last entry <= k (invalid if none).
func (e *Engine) seekLE(k key) (*cursor, error) {
	c, err := e.seekGE(k)
	if err != nil {
		return nil, err
	}
	if c.valid() && c.entry().key() == k {
		return c, nil
	}
	return c, c.prev()
}

// newNode allocates a metadata block for a new, empty node.
func (e *Engine) newNode(leaf bool) (*node, error) {
	addr, err := e.allocMeta()
	if err != nil {
		return nil, err
	}
	n := &node{addr: addr, leaf: leaf}
	kind := uint8(kindBranch)
	if leaf {
		kind = kindLeaf
	}
	e.cacheDrop(addr)
	cb := &cblock{addr: addr, kind: kind, n: n}
	e.cacheAdd(cb)
	e.dirtyBlock(cb)
	return n, nil
}

// splitsNeeded counts the metadata blocks an insert along path c may
// allocate, so an insert can be refused before anything is modified.
func (e *Engine) splitsNeeded(c *cursor) int {
	need := 0
	for d := len(c.path) - 1; d >= 0; d-- {
		if c.path[d].n.count() < e.nodeCap {
			return need
		}
		need++
	}
	return need + 1 // new root
}

// treeInsert inserts x, which must not already exist. It returns errNoSpace
// without modifying anything when the metadata area cannot hold the splits.
func (e *Engine) treeInsert(x exception) error {
	k := x.key()
	c, err := e.descend(k)
	if err != nil {
		return err
	}
	l := c.leaf()
	if l.i < len(l.n.ents) && l.n.ents[l.i].key() == k {
		return fmt.Errorf("insert of existing exception %+v: %w", k, ErrCorrupt)
	}
	if uint64(e.splitsNeeded(c)) > e.st.metaFree {
		return errNoSpace
	}
	n := l.n
	n.ents = append(n.ents, exception{})
	copy(n.ents[l.i+1:], n.ents[l.i:])
	n.ents[l.i] = x
	e.dirtyNode(n)
	e.st.exceptions++
	e.stDirty = true
	return e.splitUp(c)
}

// splitUp splits overflowing nodes from the leaf of c upward.
func (e *Engine) splitUp(c *cursor) error {
	for d := len(c.path) - 1; d >= 0; d-- {
		n := c.path[d].n
		if n.count() <= e.nodeCap {
			return nil
		}
		right, err := e.newNode(n.leaf)
		if err != nil {
			return err
		}
		var sep key
		if n.leaf {
			mid := len(n.ents) / 2
			right.ents = append([]exception(nil), n.ents[mid:]...)
			n.ents = n.ents[:mid:mid]
			sep = right.ents[0].key()
		} else {
			mid := len(n.kids) / 2
			right.keys = append([]key(nil), n.keys[mid:]...)
			right.kids = append([]uint64(nil), n.kids[mid:]...)
			n.keys = n.keys[:mid:mid]
			n.kids = n.kids[:mid:mid]
			sep = right.keys[0]
		}
		e.dirtyNode(n)
		if d == 0 {
			root, err := e.newNode(false)
			if err != nil {
				return err
			}
			root.keys = []key{{}, sep}
			root.kids = []uint64{n.addr, right.addr}
			e.st.root = root.addr
			e.st.height++
			e.stDirty = true
			return nil
		}
		p := c.path[d-1]
		pn := p.n
		pn.keys = append(pn.keys, key{})
		pn.kids = append(pn.kids, 0)
		copy(pn.keys[p.i+2:], pn.keys[p.i+1:])
		copy(pn.kids[p.i+2:], pn.kids[p.i+1:])
		pn.keys[p.i+1] = sep
		pn.kids[p.i+1] = right.addr
		e.dirtyNode(pn)
	}
	return nil
}

// treeDelete removes the exception with key k, rebalancing underfull nodes.
func (e *Engine) treeDelete(k key) error {
	c, err := e.descend(k)
	if err != nil {
		return err
	}
	l := c.leaf()
	if l.i >= len(l.n.ents) || l.n.ents[l.i].key() != k {
		return fmt.Errorf("delete of missing exception %+v: %w", k, ErrCorrupt)
	}
	// Load the siblings rebalancing may need before modifying anything, so
	// a read error leaves the tree untouched.
	sibs := make([]*node, len(c.path))
	for d := len(c.path) - 1; d > 0; d-- {
		p := c.path[d-1]
		si := p.i - 1
		if p.i == 0 {
			si = 1
		}
		if si < len(p.n.kids) {
			if sibs[d], err = e.getNode(p.n.kids[si]); err != nil {
				return err
			}
		}
	}
	n := l.n
	n.ents = append(n.ents[:l.i], n.ents[l.i+1:]...)
	e.dirtyNode(n)
	e.st.exceptions--
	e.stDirty = true

	// Non-root leaves keep at least one entry and non-root branches at
	// least two children, so every non-root node has a sibling.
	minFill := max(1, e.nodeCap/4)
	for d := len(c.path) - 1; d > 0; d-- {
		n := c.path[d].n
		if n.count() >= minFill && (n.leaf || n.count() >= 2) {
			break
		}
		p := c.path[d-1]
		pn := p.n
		sib := sibs[d]
		if sib == nil {
			break // only child
		}
		var left, right *node
		li := p.i - 1
		if p.i == 0 {
			li = 0
			left, right = n, sib
		} else {
			left, right = sib, n
		}
		sep := pn.keys[li+1]
		if left.count()+right.count() <= e.nodeCap {
			// merge right into left
			if left.leaf {
				left.ents = append(left.ents, right.ents...)
			} else {
				left.keys = append(left.keys, sep)
				left.keys = append(left.keys, right.keys[1:]...)
				left.kids = append(left.kids, right.kids...)
			}
			e.dirtyNode(left)
			pn.keys = append(pn.keys[:li+1], pn.keys[li+2:]...)
			pn.kids = append(pn.kids[:li+1], pn.kids[li+2:]...)
			e.dirtyNode(pn)
			if err := e.freeMeta(right.addr); err != nil {
				return err
			}
			continue
		}
		// redistribute evenly
		if left.leaf {
			all := append(append([]exception(nil), left.ents...), right.ents...)
			mid := len(all) / 2
			left.ents = append([]exception(nil), all[:mid]...)
			right.ents = append([]exception(nil), all[mid:]...)
			pn.keys[li+1] = right.ents[0].key()
		} else {
			keys := append(append(append([]key(nil), left.keys...), sep), right.keys[1:]...)
			kids := append(append([]uint64(nil), left.kids...), right.kids...)
			mid := len(kids) / 2
			left.keys, left.kids = append([]key(nil), keys[:mid]...), append([]uint64(nil), kids[:mid]...)
			right.keys, right.kids = append([]key(nil), keys[mid:]...), append([]uint64(nil), kids[mid:]...)
			pn.keys[li+1] = right.keys[0]
		}
		e.dirtyNode(left)
		e.dirtyNode(right)
		e.dirtyNode(pn)
		break
	}
	// collapse a root branch with a single child
	for e.st.height > 1 {
		root, err := e.getNode(e.st.root)
		if err != nil {
			return err
		}
		if root.leaf || len(root.kids) != 1 {
			break
		}
		child := root.kids[0]
		if err := e.freeMeta(root.addr); err != nil {
			return err
		}
		e.st.root = child
		e.st.height--
		e.stDirty = true
	}
	return nil
}
