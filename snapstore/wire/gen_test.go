package wire

import (
	"math/rand"
	"time"
)

// allTypes lists every defined message type.
func allTypes() []MsgType {
	var ts []MsgType
	for t := 0; t < 256; t++ {
		if newMessage(MsgType(t)) != nil {
			ts = append(ts, MsgType(t))
		}
	}
	return ts
}

// gen produces random valid messages. Sizes are usually small, sometimes
// at the limits, so round trips cover both.
type gen struct{ r *rand.Rand }

func (g gen) big() bool { return g.r.Intn(20) == 0 }

func (g gen) u64() uint64 {
	switch g.r.Intn(4) {
	case 0:
		return uint64(g.r.Intn(3))
	case 1:
		return ^uint64(0) - uint64(g.r.Intn(3))
	}
	return g.r.Uint64()
}

func (g gen) name() string {
	const alpha = "abcdefghijklmnopqrstuvwxyz0123456789-"
	n := 1 + g.r.Intn(MaxNameLen)
	if !g.big() {
		n = 1 + g.r.Intn(8)
	}
	b := make([]byte, n)
	for i := range b {
		b[i] = alpha[g.r.Intn(len(alpha))]
	}
	if b[0] == '-' {
		b[0] = 'a'
	}
	return string(b)
}

func (g gen) node() string {
	const alpha = "abcXYZ019.-_"
	n := 1 + g.r.Intn(12)
	if g.big() {
		n = MaxNodeNameLen
	}
	b := make([]byte, n)
	for i := range b {
		b[i] = alpha[g.r.Intn(len(alpha))]
	}
	b[0] = 'n'
	return string(b)
}

func (g gen) text() string {
	if g.r.Intn(4) == 0 {
		return ""
	}
	s := []rune("αβγ copy-out failed: chunk 12 \u00e9\U0001F600")
	n := g.r.Intn(len(s))
	return string(s[:n])
}

func (g gen) id() (c ClientID) {
	g.r.Read(c[:])
	c[0] |= 1
	return c
}

// ranges returns a valid range list; start may sit near 2^64.
func (g gen) ranges() []Range {
	n := 1 + g.r.Intn(4)
	if g.big() {
		n = MaxRanges
	}
	budget := uint64(MaxChunks)
	next := uint64(g.r.Intn(1000))
	if g.r.Intn(8) == 0 {
		next = ^uint64(0) - uint64(n)*64
	}
	rs := make([]Range, n)
	for i := range rs {
		maxc := budget - uint64(n-i-1) // leave one chunk for each later range
		c := 1 + uint64(g.r.Intn(40))
		if c > maxc {
			c = maxc
		}
		next += uint64(g.r.Intn(3))
		rs[i] = Range{Start: next, Count: uint32(c)}
		next += c
		budget -= c
	}
	return rs
}

func (g gen) extents(storeOnly bool) []Extent {
	var xs []Extent
	for _, r := range g.ranges() {
		for left := r.Count; left > 0; {
			c := 1 + uint32(g.r.Intn(int(left)))
			x := Extent{Start: r.Start + uint64(r.Count-left), Count: c}
			if storeOnly || g.r.Intn(2) == 0 {
				x.StoreOffset = g.u64()
			} else {
				x.Origin = true
			}
			xs = append(xs, x)
			left -= c
		}
	}
	return xs
}

func (g gen) ref() SnapshotRef {
	if g.r.Intn(2) == 0 {
		return SnapshotRef{ID: 1 + uint32(g.r.Intn(1<<20))}
	}
	return SnapshotRef{Name: g.name()}
}

func (g gen) entry(id uint32) SnapshotEntry {
	return SnapshotEntry{ID: id, Name: g.name(), Created: int64(g.u64()), Priority: int32(g.r.Uint32()),
		Writable: g.r.Intn(2) == 0, Dropped: g.r.Intn(2) == 0, Deleting: g.r.Intn(2) == 0,
		UniqueBytes: g.u64(), SharedBytes: g.u64()}
}

func (g gen) message(t MsgType) Message {
	r := g.r
	switch t {
	case TypeHello:
		lo := 1 + uint16(r.Intn(3))
		return &Hello{MinVersion: lo, MaxVersion: lo + uint16(r.Intn(3)), Client: g.id(), Term: g.u64(), Node: g.node(), Volume: g.name()}
	case TypeHelloOK:
		var u [16]byte
		r.Read(u[:])
		return &HelloOK{Version: 1 + uint16(r.Intn(5)), Term: g.u64(), Node: g.node(), ChunkSize: 512 << r.Intn(22),
			VolumeSize: g.u64(), StoreUUID: u, Generation: g.u64(), MaxInFlight: 1 + uint32(r.Intn(1000)), MaxLocks: r.Uint32()}
	case TypeHelloReject:
		return &HelloReject{Reason: RejectReason(1 + r.Intn(10)), Term: g.u64(), Message: g.text()}
	case TypePing:
		return &Ping{}
	case TypePong:
		return &Pong{}
	case TypeError:
		return &Error{Code: ErrorCode(1 + r.Intn(20)), Message: g.text()}
	case TypeOK:
		return &OK{}
	case TypeOriginWrite:
		return &OriginWrite{Ranges: g.ranges()}
	case TypeOriginWriteOK:
		return &OriginWriteOK{Generation: g.u64()}
	case TypeSnapshotRead:
		return &SnapshotRead{Snapshot: 1 + uint32(r.Intn(1<<30)), Ranges: g.ranges()}
	case TypeSnapshotReadOK:
		return &SnapshotReadOK{Extents: g.extents(false)}
	case TypeBlockLock:
		n := 1 + uint32(r.Intn(MaxBlockLock))
		return &BlockLock{Snapshot: r.Uint32(), Offset: uint64(r.Int63n(1<<62)) &^ 511, Length: n}
	case TypeBlockLockOK:
		return &BlockLockOK{Waited: time.Duration(r.Int63())}
	case TypeBlockUnlock:
		return &BlockUnlock{Handle: 1 + g.u64()/2}
	case TypeFinishSnapshotRead:
		return &FinishSnapshotRead{Handle: 1 + g.u64()/2}
	case TypeSnapshotWrite:
		return &SnapshotWrite{Snapshot: 1 + uint32(r.Intn(1<<30)), Ranges: g.ranges()}
	case TypeSnapshotWriteOK:
		return &SnapshotWriteOK{Extents: g.extents(true)}
	case TypeUploadLocks:
		n := 1 + r.Intn(5)
		if g.big() {
			n = 1 + r.Intn(MaxUploadLocks)
		}
		m := &UploadLocks{Locks: make([]HeldLock, n)}
		h := uint64(0)
		for i := range m.Locks {
			h += 1 + uint64(r.Intn(5))
			rs := g.ranges()
			if len(rs) > 8 { // keep the body under MaxBody
				rs = rs[:8]
			}
			m.Locks[i] = HeldLock{Handle: h, Snapshot: 1 + uint32(r.Intn(100)), Ranges: rs}
		}
		return m
	case TypeUploadDone:
		return &UploadDone{Locks: r.Uint32()}
	case TypeInvalidate:
		return &Invalidate{Generation: g.u64()}
	case TypeInvalidateAck:
		return &InvalidateAck{Generation: g.u64()}
	case TypeSharedUpdate:
		return &SharedUpdate{g.shared()}
	case TypeSharedResult:
		return &SharedResult{Committed: g.r.Intn(2) == 0, SharedValue: g.shared()}
	case TypeUploadShared:
		return &UploadShared{g.shared()}
	case TypeSharedState:
		return &SharedState{g.shared()}
	case TypeOriginUnique:
		return &OriginUnique{g.u64()}
	case TypeReclaim:
		n := 1 + r.Intn(4)
		if g.big() {
			n = MaxReclaimIDs
		}
		m := &Reclaim{Snapshots: make([]uint32, n)}
		id := uint32(0)
		if r.Intn(8) == 0 {
			id = ^uint32(0) - uint32(n)*3 // ids near the top
		}
		for i := range m.Snapshots {
			id += 1 + uint32(r.Intn(3))
			m.Snapshots[i] = id
		}
		return m
	case TypeReclaimOK:
		return &ReclaimOK{}
	case TypeCreateSnapshot:
		return &CreateSnapshot{Name: g.name(), Priority: int32(r.Uint32()), Writable: r.Intn(2) == 0}
	case TypeCreateSnapshotOK:
		return &CreateSnapshotOK{Snapshot: g.entry(1 + uint32(r.Intn(100)))}
	case TypeDeleteSnapshot:
		return &DeleteSnapshot{Snapshot: g.ref()}
	case TypeListSnapshots:
		return &ListSnapshots{After: r.Uint32(), Max: 1 + uint16(r.Intn(MaxListEntries))}
	case TypeSnapshotList:
		n := r.Intn(5)
		if g.big() {
			n = MaxListEntries
		}
		m := &SnapshotList{More: r.Intn(2) == 0}
		id := uint32(0)
		for i := 0; i < n; i++ {
			id += 1 + uint32(r.Intn(3))
			m.Entries = append(m.Entries, g.entry(id))
		}
		return m
	case TypeSetPriority:
		return &SetPriority{Snapshot: g.ref(), Priority: int32(r.Uint32())}
	case TypeStatus:
		return &Status{}
	case TypeStatusOK:
		m := &StatusOK{Term: g.u64(), Since: int64(g.u64()), Node: g.node(), Volume: g.name(), Generation: g.u64()}
		n := r.Intn(4)
		if g.big() {
			n = MaxClients
		}
		for i := 0; i < n; i++ {
			var c ClientID
			c[0], c[1] = byte(i>>8), byte(i)
			c[15] = 1
			m.Clients = append(m.Clients, ClientStatus{Client: c, Node: g.node(), Connected: r.Intn(2) == 0, Locks: r.Uint32()})
		}
		return m
	case TypeCheck:
		return &Check{}
	case TypeRecover:
		return &Recover{}
	case TypeCheckOK:
		m := &CheckOK{Omitted: r.Uint32()}
		n := r.Intn(4)
		if g.big() {
			n = MaxProblems
		}
		for i := 0; i < n; i++ {
			m.Problems = append(m.Problems, g.text())
		}
		return m
	}
	panic("gen: no generator for " + t.String())
}

// frameID returns a request id valid for t's kind.
func (g gen) frameID(t MsgType) uint64 {
	if t.Kind() == KindNotice {
		return 0
	}
	return 1 + g.u64()/2
}

func (g gen) shared() SharedValue {
	k := make([]byte, 1+g.r.Intn(40))
	if g.big() {
		k = make([]byte, MaxSharedKey)
	}
	g.r.Read(k)
	var v []byte
	switch {
	case g.big():
		v = make([]byte, MaxSharedValue)
	case g.r.Intn(4) > 0:
		v = make([]byte, g.r.Intn(300))
	}
	g.r.Read(v)
	if len(v) == 0 {
		v = nil // the decoder's canonical empty value
	}
	return SharedValue{Key: string(k), Version: g.u64(), Value: v}
}
