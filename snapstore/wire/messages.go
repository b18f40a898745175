package wire

import (
	"crypto/sha256"
	"fmt"
	"math/bits"
	"slices"
	"time"

	"github.com/csnap/csnap/internal/names"
)

// Protocol versions this package speaks. A HELLO offers a range; the server
// picks the highest version both sides support.
const (
	MinVersion uint16 = 1
	MaxVersion uint16 = 5 // 2: shared state (SHARED_UPDATE, SHARED_RESULT, UPLOAD_SHARED, SHARED_STATE); 3: ORIGIN_UNIQUE; 4: RECLAIM; 5: BLOCK_LOCK
)

// VersionShared is the first protocol version with the shared-state messages.
const VersionShared uint16 = 2

// VersionUnique is the first protocol version with ORIGIN_UNIQUE.
const VersionUnique uint16 = 3

// VersionReclaim is the first protocol version with RECLAIM and
// RECLAIM_OK: a client that negotiated it may cache the store locations of
// read-only snapshots, and the server tells it before a deleted snapshot's
// space is reused.
const VersionReclaim uint16 = 4

// VersionBlockLock is the first protocol version with BLOCK_LOCK,
// BLOCK_LOCK_OK and BLOCK_UNLOCK: cluster-wide exclusive locks on byte
// ranges of a volume, which make COMPARE AND WRITE atomic across nodes.
const VersionBlockLock uint16 = 5

// The read-lock lease (see "The IO path" in the package doc). A server
// keeps a read lock it granted for at least LockLease, unless the client
// releases it; a client trusts an origin read under a lock only if it
// finished within LockTrust of sending the SNAPSHOT_READ that was granted
// it. LockTrust leaves a quarter of the lease for clock-rate differences
// and for the check itself.
const (
	LockLease = 2 * time.Second
	LockTrust = LockLease * 3 / 4
)

// Limits. Decoders enforce them before allocating; encoders refuse to
// produce messages that exceed them, so a peer never has to guess.
const (
	MaxBody        = 1 << 20 // bytes in one frame body
	MaxRanges      = 256     // ranges in one range list
	MaxChunks      = 16384   // chunks covered by one range or extent list
	MaxBlockLock   = 1 << 20 // bytes in one BLOCK_LOCK range
	MaxExtents     = MaxChunks
	MaxNameLen     = names.MaxLen // volume and snapshot names
	MaxNodeNameLen = 253          // node names (DNS host name length)
	MaxText        = 4096         // bytes of an error message or check problem
	MaxUploadLocks = 1024         // locks in one UPLOAD_LOCKS message
	MaxListEntries = 1024         // snapshots in one SNAPSHOT_LIST page
	MaxProblems    = 1024         // problems in one CHECK_OK
	MaxClients     = 4096         // clients in one STATUS_OK
	MaxSharedKey   = 255          // bytes of a shared-state key
	MaxSharedValue = 512 << 10
	MaxReclaimIDs  = 4096 // snapshot ids in one RECLAIM
)

// ClientID identifies a client (one csnapd's attachment to one volume) for
// its whole life, across reconnects and server failovers. 16 random bytes:
// nodes can mint them without coordination. The zero ID is invalid.
type ClientID [16]byte

func (c ClientID) String() string { return fmt.Sprintf("%x", c[:]) }

// ClientIDFor is the client id of node's attachment to volume: the first
// 16 bytes of SHA-256(node, 0x00, volume). csnapd uses it, and a server
// that authenticates its clients' nodes (TLS) accepts no other id from
// that node, so a node cannot pose as another node's client.
func ClientIDFor(node, volume string) ClientID {
	h := sha256.Sum256([]byte(node + "\x00" + volume))
	var id ClientID
	copy(id[:], h[:16])
	return id
}

// Range is a run of Count origin chunks starting at chunk Start. Its shape
// matches locks.Range, so one converts to the other with a type conversion.
type Range struct {
	Start uint64
	Count uint32
}

// Extent says where the chunks [Start, Start+Count) of a snapshot live:
// on the origin (Origin true: at their own offsets, under a read lock), or
// on the store device, chunk Start+i at byte StoreOffset + i*ChunkSize.
type Extent struct {
	Start       uint64
	Count       uint32
	Origin      bool
	StoreOffset uint64 // zero for origin extents
}

// MsgType is the message type byte of a frame.
type MsgType uint8

// Message types. Gaps are deliberate: 0x0_ connection, 0x1_ IO path,
// 0x2_ server-initiated, 0x3_ admin.
const (
	TypeHello              MsgType = 0x01
	TypeHelloOK            MsgType = 0x02
	TypeHelloReject        MsgType = 0x03
	TypePing               MsgType = 0x04
	TypePong               MsgType = 0x05
	TypeError              MsgType = 0x06
	TypeOK                 MsgType = 0x07
	TypeOriginWrite        MsgType = 0x10
	TypeOriginWriteOK      MsgType = 0x11
	TypeSnapshotRead       MsgType = 0x12
	TypeSnapshotReadOK     MsgType = 0x13
	TypeFinishSnapshotRead MsgType = 0x14
	TypeSnapshotWrite      MsgType = 0x15
	TypeSnapshotWriteOK    MsgType = 0x16
	TypeUploadLocks        MsgType = 0x17
	TypeUploadDone         MsgType = 0x18
	TypeSharedUpdate       MsgType = 0x19
	TypeSharedResult       MsgType = 0x1a
	TypeUploadShared       MsgType = 0x1b
	TypeBlockLock          MsgType = 0x1c
	TypeBlockLockOK        MsgType = 0x1d
	TypeBlockUnlock        MsgType = 0x1e
	TypeInvalidate         MsgType = 0x20
	TypeInvalidateAck      MsgType = 0x21
	TypeSharedState        MsgType = 0x22
	TypeOriginUnique       MsgType = 0x23
	TypeReclaim            MsgType = 0x24
	TypeReclaimOK          MsgType = 0x25
	TypeCreateSnapshot     MsgType = 0x30
	TypeCreateSnapshotOK   MsgType = 0x31
	TypeDeleteSnapshot     MsgType = 0x32
	TypeListSnapshots      MsgType = 0x33
	TypeSnapshotList       MsgType = 0x34
	TypeSetPriority        MsgType = 0x35
	TypeStatus             MsgType = 0x36
	TypeStatusOK           MsgType = 0x37
	TypeCheck              MsgType = 0x38
	TypeCheckOK            MsgType = 0x39
	TypeRecover            MsgType = 0x3e
)

// Kind says how a message relates to request ids.
type Kind uint8

const (
	// KindRequest: the sender picks a nonzero id; the peer answers with
	// exactly one reply carrying that id.
	KindRequest Kind = iota + 1
	// KindReply: answers the peer's request with the same id.
	KindReply
	// KindNotice: carries request id 0 and gets no reply.
	KindNotice
)

// msgInfo is one row of the message catalogue.
type msgInfo struct {
	name    string
	kind    Kind
	replies []MsgType // a request's reply types, ERROR aside (nil: no request)
	new     func() Message
}

// catalogue is the message catalogue: for every message type its name,
// kind, replies and zero value. A new message is a Type constant, a row
// here, and its struct with its methods. Read only.
var catalogue = map[MsgType]msgInfo{
	TypeHello:              {"HELLO", KindRequest, []MsgType{TypeHelloOK, TypeHelloReject}, func() Message { return new(Hello) }},
	TypeHelloOK:            {"HELLO_OK", KindReply, nil, func() Message { return new(HelloOK) }},
	TypeHelloReject:        {"HELLO_REJECT", KindReply, nil, func() Message { return new(HelloReject) }},
	TypePing:               {"PING", KindRequest, []MsgType{TypePong}, func() Message { return new(Ping) }},
	TypePong:               {"PONG", KindReply, nil, func() Message { return new(Pong) }},
	TypeError:              {"ERROR", KindReply, nil, func() Message { return new(Error) }},
	TypeOK:                 {"OK", KindReply, nil, func() Message { return new(OK) }},
	TypeOriginWrite:        {"ORIGIN_WRITE", KindRequest, []MsgType{TypeOriginWriteOK}, func() Message { return new(OriginWrite) }},
	TypeOriginWriteOK:      {"ORIGIN_WRITE_OK", KindReply, nil, func() Message { return new(OriginWriteOK) }},
	TypeSnapshotRead:       {"SNAPSHOT_READ", KindRequest, []MsgType{TypeSnapshotReadOK}, func() Message { return new(SnapshotRead) }},
	TypeSnapshotReadOK:     {"SNAPSHOT_READ_OK", KindReply, nil, func() Message { return new(SnapshotReadOK) }},
	TypeFinishSnapshotRead: {"FINISH_SNAPSHOT_READ", KindNotice, nil, func() Message { return new(FinishSnapshotRead) }},
	TypeSnapshotWrite:      {"SNAPSHOT_WRITE", KindRequest, []MsgType{TypeSnapshotWriteOK}, func() Message { return new(SnapshotWrite) }},
	TypeSnapshotWriteOK:    {"SNAPSHOT_WRITE_OK", KindReply, nil, func() Message { return new(SnapshotWriteOK) }},
	TypeUploadLocks:        {"UPLOAD_LOCKS", KindNotice, nil, func() Message { return new(UploadLocks) }},
	TypeUploadDone:         {"UPLOAD_DONE", KindRequest, []MsgType{TypeOK}, func() Message { return new(UploadDone) }},
	TypeSharedUpdate:       {"SHARED_UPDATE", KindRequest, []MsgType{TypeSharedResult}, func() Message { return new(SharedUpdate) }},
	TypeSharedResult:       {"SHARED_RESULT", KindReply, nil, func() Message { return new(SharedResult) }},
	TypeUploadShared:       {"UPLOAD_SHARED", KindNotice, nil, func() Message { return new(UploadShared) }},
	TypeBlockLock:          {"BLOCK_LOCK", KindRequest, []MsgType{TypeBlockLockOK}, func() Message { return new(BlockLock) }},
	TypeBlockLockOK:        {"BLOCK_LOCK_OK", KindReply, nil, func() Message { return new(BlockLockOK) }},
	TypeBlockUnlock:        {"BLOCK_UNLOCK", KindNotice, nil, func() Message { return new(BlockUnlock) }},
	TypeInvalidate:         {"INVALIDATE", KindRequest, []MsgType{TypeInvalidateAck}, func() Message { return new(Invalidate) }},
	TypeInvalidateAck:      {"INVALIDATE_ACK", KindReply, nil, func() Message { return new(InvalidateAck) }},
	TypeSharedState:        {"SHARED_STATE", KindRequest, []MsgType{TypeOK}, func() Message { return new(SharedState) }},
	TypeOriginUnique:       {"ORIGIN_UNIQUE", KindNotice, nil, func() Message { return new(OriginUnique) }},
	TypeReclaim:            {"RECLAIM", KindRequest, []MsgType{TypeReclaimOK}, func() Message { return new(Reclaim) }},
	TypeReclaimOK:          {"RECLAIM_OK", KindReply, nil, func() Message { return new(ReclaimOK) }},
	TypeCreateSnapshot:     {"CREATE_SNAPSHOT", KindRequest, []MsgType{TypeCreateSnapshotOK}, func() Message { return new(CreateSnapshot) }},
	TypeCreateSnapshotOK:   {"CREATE_SNAPSHOT_OK", KindReply, nil, func() Message { return new(CreateSnapshotOK) }},
	TypeDeleteSnapshot:     {"DELETE_SNAPSHOT", KindRequest, []MsgType{TypeOK}, func() Message { return new(DeleteSnapshot) }},
	TypeListSnapshots:      {"LIST_SNAPSHOTS", KindRequest, []MsgType{TypeSnapshotList}, func() Message { return new(ListSnapshots) }},
	TypeSnapshotList:       {"SNAPSHOT_LIST", KindReply, nil, func() Message { return new(SnapshotList) }},
	TypeSetPriority:        {"SET_PRIORITY", KindRequest, []MsgType{TypeOK}, func() Message { return new(SetPriority) }},
	TypeStatus:             {"STATUS", KindRequest, []MsgType{TypeStatusOK}, func() Message { return new(Status) }},
	TypeStatusOK:           {"STATUS_OK", KindReply, nil, func() Message { return new(StatusOK) }},
	TypeCheck:              {"CHECK", KindRequest, []MsgType{TypeCheckOK}, func() Message { return new(Check) }},
	TypeCheckOK:            {"CHECK_OK", KindReply, nil, func() Message { return new(CheckOK) }},
	TypeRecover:            {"RECOVER", KindRequest, []MsgType{TypeOK}, func() Message { return new(Recover) }},
}

func (t MsgType) String() string {
	if m, ok := catalogue[t]; ok {
		return m.name
	}
	return fmt.Sprintf("MsgType(%#02x)", uint8(t))
}

// Kind returns the type's kind, or 0 for an unknown type.
func (t MsgType) Kind() Kind { return catalogue[t].kind }

// Replies lists the reply types that may answer a request of type t (ERROR
// may answer any request and is always included); nil if t is no request.
// A client uses it to reject a mismatched answer.
func (t MsgType) Replies() []MsgType {
	m, ok := catalogue[t]
	if !ok || m.kind != KindRequest {
		return nil
	}
	return append(slices.Clip(m.replies), TypeError)
}

// Message is one protocol message. The set is closed: only this package's
// types implement it.
type Message interface {
	Type() MsgType
	validate() error
	marshal(e *encoder)
	unmarshal(d *decoder)
}

// newMessage returns a zero message of type t, or nil if t is unknown.
func newMessage(t MsgType) Message {
	if m, ok := catalogue[t]; ok {
		return m.new()
	}
	return nil
}

// ---------------------------------------------------------------------------
// Connection

// Hello opens a connection (client -> server). The server answers HELLO_OK
// or HELLO_REJECT and, after a reject, closes the connection.
type Hello struct {
	MinVersion, MaxVersion uint16   // protocol versions the client speaks
	Client                 ClientID // nonzero, stable across reconnects
	Term                   uint64   // newest server term the client knows; 0 if none
	Node                   string   // the client's node name
	Volume                 string   // the volume it wants
}

func (*Hello) Type() MsgType { return TypeHello }

func (m *Hello) validate() error {
	if m.MinVersion == 0 || m.MinVersion > m.MaxVersion {
		return fmt.Errorf("version range [%d,%d] is empty or starts at 0: %w", m.MinVersion, m.MaxVersion, ErrMalformed)
	}
	if m.Client == (ClientID{}) {
		return fmt.Errorf("client id is zero: %w", ErrMalformed)
	}
	if err := checkNodeName("node", m.Node); err != nil {
		return err
	}
	return checkName("volume", m.Volume)
}

func (m *Hello) marshal(e *encoder) {
	e.u16(m.MinVersion)
	e.u16(m.MaxVersion)
	e.id(m.Client)
	e.u64(m.Term)
	e.name(m.Node)
	e.name(m.Volume)
}

func (m *Hello) unmarshal(d *decoder) {
	m.MinVersion = d.U16("min version")
	m.MaxVersion = d.U16("max version")
	m.Client = d.id("client id")
	m.Term = d.U64("term")
	m.Node = d.name("node")
	m.Volume = d.name("volume")
}

// HelloOK accepts a connection and tells the client what it needs to do IO.
type HelloOK struct {
	Version     uint16   // the version chosen, within the client's range
	Term        uint64   // the server's term (epoch); the client records it
	Node        string   // the server's node name
	ChunkSize   uint32   // bytes per chunk: a power of two, 512 B to 1 GiB
	VolumeSize  uint64   // origin size in bytes
	StoreUUID   [16]byte // the store's UUID: the client checks its store device
	Generation  uint64   // current snapshot generation
	MaxInFlight uint32   // requests the client may have outstanding (>= 1)
	MaxLocks    uint32   // read locks the client may hold at once
}

func (*HelloOK) Type() MsgType { return TypeHelloOK }

func (m *HelloOK) validate() error {
	if m.Version == 0 {
		return fmt.Errorf("version 0: %w", ErrMalformed)
	}
	if err := checkNodeName("server node", m.Node); err != nil {
		return err
	}
	if bits.OnesCount32(m.ChunkSize) != 1 || m.ChunkSize < 512 || m.ChunkSize > 1<<30 {
		return fmt.Errorf("chunk size %d is not a power of two from 512 to 2^30: %w", m.ChunkSize, ErrMalformed)
	}
	if m.MaxInFlight == 0 {
		return fmt.Errorf("max in flight is 0: %w", ErrMalformed)
	}
	return nil
}

func (m *HelloOK) marshal(e *encoder) {
	e.u16(m.Version)
	e.u64(m.Term)
	e.name(m.Node)
	e.u32(m.ChunkSize)
	e.u64(m.VolumeSize)
	e.id(m.StoreUUID)
	e.u64(m.Generation)
	e.u32(m.MaxInFlight)
	e.u32(m.MaxLocks)
}

func (m *HelloOK) unmarshal(d *decoder) {
	m.Version = d.U16("version")
	m.Term = d.U64("term")
	m.Node = d.name("server node")
	m.ChunkSize = d.U32("chunk size")
	m.VolumeSize = d.U64("volume size")
	m.StoreUUID = d.id("store uuid")
	m.Generation = d.U64("generation")
	m.MaxInFlight = d.U32("max in flight")
	m.MaxLocks = d.U32("max locks")
}

// RejectReason says why a server refused a HELLO.
type RejectReason uint16

const (
	// RejectVersion: no protocol version in common.
	RejectVersion RejectReason = 1
	// RejectForeignVolume: this server does not serve that volume.
	RejectForeignVolume RejectReason = 2
	// RejectNotServer: this node is not (or no longer) the volume's server;
	// ask Consul who is.
	RejectNotServer RejectReason = 3
	// RejectStaleTerm: the client knows a newer term than this server's,
	// so this server has been deposed and must step down.
	RejectStaleTerm RejectReason = 4
	// RejectNotMember: the client's node is not a cluster member.
	RejectNotMember RejectReason = 5
	// RejectShuttingDown: the server is stopping; retry elsewhere later.
	RejectShuttingDown RejectReason = 6
	// RejectIdentity: the HELLO claims a node other than the one the
	// connection authenticated (its TLS certificate), or a client id that
	// is not that node's (ClientIDFor) or is in use by another node.
	RejectIdentity RejectReason = 7
)

func (r RejectReason) String() string {
	switch r {
	case RejectVersion:
		return "version unsupported"
	case RejectForeignVolume:
		return "foreign volume"
	case RejectNotServer:
		return "not the server"
	case RejectStaleTerm:
		return "stale term"
	case RejectNotMember:
		return "node not a cluster member"
	case RejectShuttingDown:
		return "server shutting down"
	case RejectIdentity:
		return "identity mismatch"
	}
	return fmt.Sprintf("reject reason %d", uint16(r))
}

// HelloReject refuses a connection. Reasons unknown to the receiver are
// accepted (a newer server may add some) and treated as fatal.
type HelloReject struct {
	Reason  RejectReason // nonzero
	Term    uint64       // the server's term, so the client learns it
	Message string
}

func (*HelloReject) Type() MsgType { return TypeHelloReject }

func (m *HelloReject) validate() error {
	if m.Reason == 0 {
		return fmt.Errorf("reject reason 0: %w", ErrMalformed)
	}
	return checkText("message", m.Message)
}

func (m *HelloReject) marshal(e *encoder) { e.u16(uint16(m.Reason)); e.u64(m.Term); e.text(m.Message) }
func (m *HelloReject) unmarshal(d *decoder) {
	m.Reason = RejectReason(d.U16("reason"))
	m.Term = d.U64("term")
	m.Message = d.text("message")
}

// Ping asks for a Pong; either side may send it (liveness).
type Ping struct{}

func (*Ping) Type() MsgType      { return TypePing }
func (*Ping) validate() error    { return nil }
func (*Ping) marshal(*encoder)   {}
func (*Ping) unmarshal(*decoder) {}

// Pong answers a Ping.
type Pong struct{}

func (*Pong) Type() MsgType      { return TypePong }
func (*Pong) validate() error    { return nil }
func (*Pong) marshal(*encoder)   {}
func (*Pong) unmarshal(*decoder) {}

// OK is the empty success reply (UPLOAD_DONE, DELETE_SNAPSHOT, SET_PRIORITY).
type OK struct{}

func (*OK) Type() MsgType      { return TypeOK }
func (*OK) validate() error    { return nil }
func (*OK) marshal(*encoder)   {}
func (*OK) unmarshal(*decoder) {}

// ErrorCode classifies an ERROR reply.
type ErrorCode uint16

const (
	CodeInternal        ErrorCode = 1  // the server failed (IO error, bug)
	CodeBadRequest      ErrorCode = 2  // malformed, or not valid in this state
	CodeNotServer       ErrorCode = 3  // the server lost its role: reconnect
	CodeNoSuchSnapshot  ErrorCode = 4  // unknown or deleted snapshot
	CodeSnapshotDropped ErrorCode = 5  // dropped to free store space
	CodeNotWritable     ErrorCode = 6  // SNAPSHOT_WRITE to a read-only snapshot
	CodeExists          ErrorCode = 7  // CREATE_SNAPSHOT of a taken name
	CodeLimit           ErrorCode = 8  // too many requests in flight or locks held
	CodeNoSpace         ErrorCode = 9  // store full and nothing to drop
	CodeOutOfRange      ErrorCode = 10 // chunk beyond the end of the volume
	CodeUnsupported     ErrorCode = 11 // message type not accepted from this peer
	CodeShuttingDown    ErrorCode = 12 // the server is stopping
)

func (c ErrorCode) String() string {
	switch c {
	case CodeInternal:
		return "internal error"
	case CodeBadRequest:
		return "bad request"
	case CodeNotServer:
		return "not the server"
	case CodeNoSuchSnapshot:
		return "no such snapshot"
	case CodeSnapshotDropped:
		return "snapshot dropped"
	case CodeNotWritable:
		return "snapshot not writable"
	case CodeExists:
		return "already exists"
	case CodeLimit:
		return "limit exceeded"
	case CodeNoSpace:
		return "no space"
	case CodeOutOfRange:
		return "out of range"
	case CodeUnsupported:
		return "unsupported"
	case CodeShuttingDown:
		return "shutting down"
	}
	return fmt.Sprintf("error code %d", uint16(c))
}

// Error is the failure reply to any request. With request id 0 it reports a
// connection-level failure (e.g. a malformed frame) just before the sender
// closes. Codes unknown to the receiver are accepted and treated as fatal
// for that request. *Error implements error.
type Error struct {
	Code    ErrorCode // nonzero
	Message string
}

func (*Error) Type() MsgType { return TypeError }

func (m *Error) Error() string {
	if m.Message == "" {
		return m.Code.String()
	}
	return m.Code.String() + ": " + m.Message
}

func (m *Error) validate() error {
	if m.Code == 0 {
		return fmt.Errorf("error code 0: %w", ErrMalformed)
	}
	return checkText("message", m.Message)
}

func (m *Error) marshal(e *encoder) { e.u16(uint16(m.Code)); e.text(m.Message) }
func (m *Error) unmarshal(d *decoder) {
	m.Code = ErrorCode(d.U16("code"))
	m.Message = d.text("message")
}

// ---------------------------------------------------------------------------
// IO path

// OriginWrite asks whether the client may overwrite these origin chunks.
// The server answers ORIGIN_WRITE_OK once every chunk is safe: copied out
// to the store where a snapshot needs it, committed, and no read lock
// granted before this query still covers it.
type OriginWrite struct{ Ranges []Range }

func (*OriginWrite) Type() MsgType          { return TypeOriginWrite }
func (m *OriginWrite) validate() error      { return checkRanges("ranges", m.Ranges) }
func (m *OriginWrite) marshal(e *encoder)   { e.ranges(m.Ranges) }
func (m *OriginWrite) unmarshal(d *decoder) { m.Ranges = d.ranges("ranges") }

// OriginWriteOK approves an ORIGIN_WRITE. The chunks need no copy-out while
// the snapshot generation stays Generation, so the client may cache them
// as "unique since Generation" and overwrite them again without asking,
// until an INVALIDATE.
type OriginWriteOK struct{ Generation uint64 }

func (*OriginWriteOK) Type() MsgType          { return TypeOriginWriteOK }
func (*OriginWriteOK) validate() error        { return nil }
func (m *OriginWriteOK) marshal(e *encoder)   { e.u64(m.Generation) }
func (m *OriginWriteOK) unmarshal(d *decoder) { m.Generation = d.U64("generation") }

// SnapshotRead asks where a snapshot's chunks are.
type SnapshotRead struct {
	Snapshot uint32 // snapshot id, nonzero
	Ranges   []Range
}

func (*SnapshotRead) Type() MsgType { return TypeSnapshotRead }
func (m *SnapshotRead) validate() error {
	if m.Snapshot == 0 {
		return fmt.Errorf("snapshot id 0: %w", ErrMalformed)
	}
	return checkRanges("ranges", m.Ranges)
}
func (m *SnapshotRead) marshal(e *encoder) { e.u32(m.Snapshot); e.ranges(m.Ranges) }
func (m *SnapshotRead) unmarshal(d *decoder) {
	m.Snapshot = d.U32("snapshot")
	m.Ranges = d.ranges("ranges")
}

// SnapshotReadOK answers a SNAPSHOT_READ with extents that tile the
// requested ranges exactly, in order (see CheckExtents). If any extent is an
// origin extent, the server now holds a read lock on those origin chunks,
// identified by the request id of the SNAPSHOT_READ (the handle); the
// client reads them and then sends FINISH_SNAPSHOT_READ with that handle.
// A dropped or deleted snapshot is answered with ERROR instead.
type SnapshotReadOK struct{ Extents []Extent }

func (*SnapshotReadOK) Type() MsgType          { return TypeSnapshotReadOK }
func (m *SnapshotReadOK) validate() error      { return checkExtents("extents", m.Extents, false) }
func (m *SnapshotReadOK) marshal(e *encoder)   { marshalExtents(e, m.Extents) }
func (m *SnapshotReadOK) unmarshal(d *decoder) { m.Extents = unmarshalExtents(d) }

// HoldsLock reports whether the answer granted a read lock (some extent
// points at the origin), i.e. whether the client owes a FINISH_SNAPSHOT_READ.
func (m *SnapshotReadOK) HoldsLock() bool {
	for _, x := range m.Extents {
		if x.Origin {
			return true
		}
	}
	return false
}

// FinishSnapshotRead releases the read lock granted to the SNAPSHOT_READ
// whose request id was Handle. It is a notice (frame id 0, no reply): see
// the package documentation for why.
type FinishSnapshotRead struct{ Handle uint64 }

func (*FinishSnapshotRead) Type() MsgType { return TypeFinishSnapshotRead }
func (m *FinishSnapshotRead) validate() error {
	if m.Handle == 0 {
		return fmt.Errorf("handle 0: %w", ErrMalformed)
	}
	return nil
}
func (m *FinishSnapshotRead) marshal(e *encoder)   { e.u64(m.Handle) }
func (m *FinishSnapshotRead) unmarshal(d *decoder) { m.Handle = d.U64("handle") }

// BlockLock (version 5) asks for an exclusive lock on bytes [Offset,
// Offset+Length) of the origin (Snapshot 0) or of a writable snapshot,
// against every other BLOCK_LOCK of any client. BLOCK_LOCK_OK grants it;
// the request id is its handle, for BLOCK_UNLOCK. The server queues
// conflicting requests in arrival order. A lock ends with BLOCK_UNLOCK,
// or with the client's connection (after the read-lock lease, LockLease,
// has run since the grant), and is never re-declared after a reconnect.
type BlockLock struct {
	Snapshot uint32
	Offset   uint64
	Length   uint32
}

func (*BlockLock) Type() MsgType { return TypeBlockLock }
func (m *BlockLock) validate() error {
	if m.Length == 0 || m.Length > MaxBlockLock {
		return fmt.Errorf("block lock of %d bytes (1..%d): %w", m.Length, MaxBlockLock, ErrMalformed)
	}
	if m.Offset > 1<<63-uint64(m.Length) {
		return fmt.Errorf("block lock at %d+%d overflows: %w", m.Offset, m.Length, ErrMalformed)
	}
	return nil
}
func (m *BlockLock) marshal(e *encoder) { e.u32(m.Snapshot); e.u64(m.Offset); e.u32(m.Length) }
func (m *BlockLock) unmarshal(d *decoder) {
	m.Snapshot, m.Offset, m.Length = d.U32("snapshot"), d.U64("offset"), d.U32("length")
}

// BlockLockOK grants a BLOCK_LOCK (version 5). Waited is how long the
// server held the request before granting it, from when it started
// handling it: the grant came at least that long after the client sent
// it, and the client's trust in the lock (LockTrust) counts from there.
type BlockLockOK struct{ Waited time.Duration }

func (*BlockLockOK) Type() MsgType { return TypeBlockLockOK }
func (m *BlockLockOK) validate() error {
	if m.Waited < 0 {
		return fmt.Errorf("negative wait %v: %w", m.Waited, ErrMalformed)
	}
	return nil
}
func (m *BlockLockOK) marshal(e *encoder)   { e.u64(uint64(m.Waited)) }
func (m *BlockLockOK) unmarshal(d *decoder) { m.Waited = time.Duration(d.U64("waited")) }

// BlockUnlock (notice, version 5) releases the block lock granted to the
// BLOCK_LOCK whose request id was Handle. (A client that gave up waiting
// for a BLOCK_LOCK releases it this way once it is granted.)
type BlockUnlock struct{ Handle uint64 }

func (*BlockUnlock) Type() MsgType { return TypeBlockUnlock }
func (m *BlockUnlock) validate() error {
	if m.Handle == 0 {
		return fmt.Errorf("handle 0: %w", ErrMalformed)
	}
	return nil
}
func (m *BlockUnlock) marshal(e *encoder)   { e.u64(m.Handle) }
func (m *BlockUnlock) unmarshal(d *decoder) { m.Handle = d.U64("handle") }

// SnapshotWrite asks for store chunks private to a writable snapshot, so
// the client can write them directly.
type SnapshotWrite struct {
	Snapshot uint32
	Ranges   []Range
}

func (*SnapshotWrite) Type() MsgType { return TypeSnapshotWrite }
func (m *SnapshotWrite) validate() error {
	if m.Snapshot == 0 {
		return fmt.Errorf("snapshot id 0: %w", ErrMalformed)
	}
	return checkRanges("ranges", m.Ranges)
}
func (m *SnapshotWrite) marshal(e *encoder) { e.u32(m.Snapshot); e.ranges(m.Ranges) }
func (m *SnapshotWrite) unmarshal(d *decoder) {
	m.Snapshot = d.U32("snapshot")
	m.Ranges = d.ranges("ranges")
}

// SnapshotWriteOK answers a SNAPSHOT_WRITE with store extents (never origin
// ones) tiling the requested ranges, private to the snapshot.
type SnapshotWriteOK struct{ Extents []Extent }

func (*SnapshotWriteOK) Type() MsgType          { return TypeSnapshotWriteOK }
func (m *SnapshotWriteOK) validate() error      { return checkExtents("extents", m.Extents, true) }
func (m *SnapshotWriteOK) marshal(e *encoder)   { marshalExtents(e, m.Extents) }
func (m *SnapshotWriteOK) unmarshal(d *decoder) { m.Extents = unmarshalExtents(d) }

func marshalExtents(e *encoder, xs []Extent) {
	e.u32(uint32(len(xs)))
	for _, x := range xs {
		e.u64(x.Start)
		e.u32(x.Count)
		if x.Origin {
			e.u8(extentOrigin)
		} else {
			e.u8(extentStore)
			e.u64(x.StoreOffset)
		}
	}
}

const (
	extentOrigin = 0
	extentStore  = 1
)

func unmarshalExtents(d *decoder) []Extent {
	n := d.count(int(d.U32("extent count")), MaxExtents, 13, "extents")
	if n == 0 {
		return nil
	}
	xs := make([]Extent, n)
	for i := range xs {
		xs[i].Start = d.U64("extent start")
		xs[i].Count = d.U32("extent count")
		switch k := d.U8("extent kind"); k {
		case extentOrigin:
			xs[i].Origin = true
		case extentStore:
			xs[i].StoreOffset = d.U64("extent store offset")
		default:
			d.fail("extent %d: kind %d, want 0 (origin) or 1 (store): %w", i, k, ErrMalformed)
		}
	}
	return xs
}

// CheckExtents reports whether xs tiles ranges exactly: the same chunks,
// in order, with no gap or excess. A client checks every SNAPSHOT_READ_OK
// and SNAPSHOT_WRITE_OK against its request before trusting it.
func CheckExtents(xs []Extent, ranges []Range) error {
	i := 0
	for ri, r := range ranges {
		next, end := r.Start, r.Start+uint64(r.Count)
		for next < end {
			if i >= len(xs) {
				return fmt.Errorf("chunk %d of range %d has no extent: %w", next, ri, ErrMalformed)
			}
			x := xs[i]
			if x.Start != next || x.Start+uint64(x.Count) > end {
				return fmt.Errorf("extent %d (%d,+%d) does not continue range %d at chunk %d: %w", i, x.Start, x.Count, ri, next, ErrMalformed)
			}
			next += uint64(x.Count)
			i++
		}
	}
	if i != len(xs) {
		return fmt.Errorf("%d extents beyond the requested ranges: %w", len(xs)-i, ErrMalformed)
	}
	return nil
}

// HeldLock is one read lock a reconnecting client still holds: the handle
// it was granted under, the snapshot it reads, the origin chunks.
type HeldLock struct {
	Handle   uint64
	Snapshot uint32
	Ranges   []Range
}

// UploadLocks re-declares read locks after (re)connecting. It is a notice:
// a client sends zero or more UPLOAD_LOCKS, then one UPLOAD_DONE, which
// the server answers for the whole upload (OK, or ERROR and the upload is
// void). Splitting keeps each frame bounded however many locks are held.
type UploadLocks struct{ Locks []HeldLock }

func (*UploadLocks) Type() MsgType { return TypeUploadLocks }

func (m *UploadLocks) validate() error {
	if len(m.Locks) == 0 {
		return fmt.Errorf("no locks: %w", ErrMalformed)
	}
	if len(m.Locks) > MaxUploadLocks {
		return fmt.Errorf("%d locks exceeds limit %d: %w", len(m.Locks), MaxUploadLocks, ErrLimit)
	}
	for i, l := range m.Locks {
		if l.Handle == 0 || l.Snapshot == 0 {
			return fmt.Errorf("lock %d: handle %d, snapshot %d: both must be nonzero: %w", i, l.Handle, l.Snapshot, ErrMalformed)
		}
		if i > 0 && l.Handle <= m.Locks[i-1].Handle {
			return fmt.Errorf("lock %d: handle %d not above %d: handles must ascend: %w", i, l.Handle, m.Locks[i-1].Handle, ErrMalformed)
		}
		if err := checkRanges(fmt.Sprintf("lock %d ranges", i), l.Ranges); err != nil {
			return err
		}
	}
	return nil
}

func (m *UploadLocks) marshal(e *encoder) {
	e.u16(uint16(len(m.Locks)))
	for _, l := range m.Locks {
		e.u64(l.Handle)
		e.u32(l.Snapshot)
		e.ranges(l.Ranges)
	}
}

func (m *UploadLocks) unmarshal(d *decoder) {
	n := d.count(int(d.U16("lock count")), MaxUploadLocks, 14, "locks")
	if n == 0 {
		return
	}
	m.Locks = make([]HeldLock, n)
	for i := range m.Locks {
		m.Locks[i].Handle = d.U64("lock handle")
		m.Locks[i].Snapshot = d.U32("lock snapshot")
		m.Locks[i].Ranges = d.ranges("lock ranges")
	}
}

// UploadDone ends an upload. Locks is the total number of locks the
// preceding UPLOAD_LOCKS carried, so the server can check it saw them all.
type UploadDone struct{ Locks uint32 }

func (*UploadDone) Type() MsgType          { return TypeUploadDone }
func (*UploadDone) validate() error        { return nil }
func (m *UploadDone) marshal(e *encoder)   { e.u32(m.Locks) }
func (m *UploadDone) unmarshal(d *decoder) { m.Locks = d.U32("locks") }

// Invalidate (server -> client request) is the snapshot-creation barrier:
// the client drops its whole unique-chunk cache, waits until every origin
// write it had approved under a generation below Generation has completed
// (been written to the origin device), then answers INVALIDATE_ACK.
type Invalidate struct{ Generation uint64 }

func (*Invalidate) Type() MsgType          { return TypeInvalidate }
func (*Invalidate) validate() error        { return nil }
func (m *Invalidate) marshal(e *encoder)   { e.u64(m.Generation) }
func (m *Invalidate) unmarshal(d *decoder) { m.Generation = d.U64("generation") }

// OriginUnique (server -> client notice, version 3) says that at
// Generation no live snapshot exists and no read lock is held: every
// origin chunk may be overwritten without asking until the generation
// changes. The server sends it before an ORIGIN_WRITE_OK of that
// generation; a client that knows another generation ignores it.
type OriginUnique struct{ Generation uint64 }

func (*OriginUnique) Type() MsgType          { return TypeOriginUnique }
func (*OriginUnique) validate() error        { return nil }
func (m *OriginUnique) marshal(e *encoder)   { e.u64(m.Generation) }
func (m *OriginUnique) unmarshal(d *decoder) { m.Generation = d.U64("generation") }

// InvalidateAck answers INVALIDATE, echoing its generation.
type InvalidateAck struct{ Generation uint64 }

func (*InvalidateAck) Type() MsgType          { return TypeInvalidateAck }
func (*InvalidateAck) validate() error        { return nil }
func (m *InvalidateAck) marshal(e *encoder)   { e.u64(m.Generation) }
func (m *InvalidateAck) unmarshal(d *decoder) { m.Generation = d.U64("generation") }

// Reclaim (server -> client request, version 4) announces that the store
// space of the listed snapshots (deleted or dropped) is about to be reused.
// The client forgets every store location it caches for them, waits until
// every store read of them it has started (from its cache, or from a
// SNAPSHOT_READ_OK it has received) has finished, then answers RECLAIM_OK.
// Snapshots holds 1..MaxReclaimIDs nonzero ids, strictly ascending.
type Reclaim struct{ Snapshots []uint32 }

func (*Reclaim) Type() MsgType { return TypeReclaim }

func (m *Reclaim) validate() error {
	if len(m.Snapshots) == 0 {
		return fmt.Errorf("no snapshot ids: %w", ErrMalformed)
	}
	if len(m.Snapshots) > MaxReclaimIDs {
		return fmt.Errorf("%d snapshot ids exceeds limit %d: %w", len(m.Snapshots), MaxReclaimIDs, ErrLimit)
	}
	for i, id := range m.Snapshots {
		if id == 0 {
			return fmt.Errorf("snapshot id %d is zero: %w", i, ErrMalformed)
		}
		if i > 0 && id <= m.Snapshots[i-1] {
			return fmt.Errorf("snapshot id %d (%d) not above %d: ids must ascend: %w", i, id, m.Snapshots[i-1], ErrMalformed)
		}
	}
	return nil
}

func (m *Reclaim) marshal(e *encoder) {
	e.u16(uint16(len(m.Snapshots)))
	for _, id := range m.Snapshots {
		e.u32(id)
	}
}

func (m *Reclaim) unmarshal(d *decoder) {
	n := d.count(int(d.U16("snapshot count")), MaxReclaimIDs, 4, "snapshot ids")
	if n == 0 {
		return
	}
	m.Snapshots = make([]uint32, n)
	for i := range m.Snapshots {
		m.Snapshots[i] = d.U32("snapshot id")
	}
}

// ReclaimOK answers RECLAIM: the client holds no location of those
// snapshots and reads none of their store chunks any more.
type ReclaimOK struct{}

func (*ReclaimOK) Type() MsgType        { return TypeReclaimOK }
func (*ReclaimOK) validate() error      { return nil }
func (*ReclaimOK) marshal(*encoder)     {}
func (*ReclaimOK) unmarshal(d *decoder) {}

// ---------------------------------------------------------------------------
// Shared state

// SharedValue is one version of a shared-state entry: small state that
// every client of the volume must see alike (the SCSI target keeps its
// persistent reservations and unit attentions there). The server does not
// interpret Value. Version is (server term << 32 | counter): a newer
// server's versions are above every older server's.
type SharedValue struct {
	Key     string // 1-255 bytes
	Version uint64 // 0: the entry has never been written
	Value   []byte // at most MaxSharedValue bytes
}

func (v *SharedValue) check() error {
	if len(v.Key) == 0 || len(v.Key) > MaxSharedKey {
		return fmt.Errorf("shared-state key of %d bytes (1-%d): %w", len(v.Key), MaxSharedKey, ErrMalformed)
	}
	if len(v.Value) > MaxSharedValue {
		return fmt.Errorf("shared-state value of %d bytes exceeds limit %d: %w", len(v.Value), MaxSharedValue, ErrLimit)
	}
	return nil
}

func (v *SharedValue) marshal(e *encoder) {
	e.u8(uint8(len(v.Key)))
	e.b = append(e.b, v.Key...)
	e.u64(v.Version)
	e.u32(uint32(len(v.Value)))
	e.b = append(e.b, v.Value...)
}

func (v *SharedValue) unmarshal(d *decoder) {
	v.Key = string(d.Take(int(d.U8("key length")), "key"))
	v.Version = d.U64("version")
	n := d.U32("value length")
	if d.Err == nil && n > MaxSharedValue {
		d.fail("shared-state value of %d bytes exceeds limit %d: %w", n, MaxSharedValue, ErrLimit)
		return
	}
	if b := d.Take(int(n), "value"); len(b) > 0 {
		v.Value = append([]byte(nil), b...)
	}
}

// SharedUpdate (client -> server) replaces the entry Key, which the client
// last saw at version Version, with Value: a compare-and-set. The server
// answers SHARED_RESULT once every other connected client has the new
// value (SHARED_STATE acknowledged), so a change made through one node is
// in force on all of them when the request completes.
type SharedUpdate struct{ SharedValue }

func (*SharedUpdate) Type() MsgType          { return TypeSharedUpdate }
func (m *SharedUpdate) validate() error      { return m.check() }
func (m *SharedUpdate) marshal(e *encoder)   { m.SharedValue.marshal(e) }
func (m *SharedUpdate) unmarshal(d *decoder) { m.SharedValue.unmarshal(d) }

// SharedResult answers SHARED_UPDATE. Committed: the value is now the
// entry's, at Version (Value empty). Not committed (the entry had moved
// on): Version and Value are the entry's current ones, to retry from.
type SharedResult struct {
	Committed bool
	SharedValue
}

func (*SharedResult) Type() MsgType     { return TypeSharedResult }
func (m *SharedResult) validate() error { return m.check() }
func (m *SharedResult) marshal(e *encoder) {
	e.bool(m.Committed)
	m.SharedValue.marshal(e)
}
func (m *SharedResult) unmarshal(d *decoder) {
	m.Committed = d.bool("committed")
	m.SharedValue.unmarshal(d)
}

// UploadShared (client -> server notice, between HELLO_OK and UPLOAD_DONE)
// declares an entry as the client knows it. A server newly elected adopts
// the newest version it is offered, so the shared state survives a
// failover as long as one client does.
type UploadShared struct{ SharedValue }

func (*UploadShared) Type() MsgType          { return TypeUploadShared }
func (m *UploadShared) validate() error      { return m.check() }
func (m *UploadShared) marshal(e *encoder)   { m.SharedValue.marshal(e) }
func (m *UploadShared) unmarshal(d *decoder) { m.SharedValue.unmarshal(d) }

// SharedState (server -> client request) gives the client an entry's
// current value; the client installs it (unless it already has a newer
// version) and answers OK.
type SharedState struct{ SharedValue }

func (*SharedState) Type() MsgType          { return TypeSharedState }
func (m *SharedState) validate() error      { return m.check() }
func (m *SharedState) marshal(e *encoder)   { m.SharedValue.marshal(e) }
func (m *SharedState) unmarshal(d *decoder) { m.SharedValue.unmarshal(d) }

// ---------------------------------------------------------------------------
// Admin

// SnapshotRef names a snapshot by id or by name: exactly one is set.
type SnapshotRef struct {
	ID   uint32
	Name string
}

func (r SnapshotRef) check() error {
	switch {
	case r.ID == 0 && r.Name == "":
		return fmt.Errorf("snapshot reference has neither id nor name: %w", ErrMalformed)
	case r.ID != 0 && r.Name != "":
		return fmt.Errorf("snapshot reference has both id %d and name %q: %w", r.ID, r.Name, ErrMalformed)
	case r.Name != "":
		return checkName("snapshot", r.Name)
	}
	return nil
}

func (r SnapshotRef) marshal(e *encoder) { e.u32(r.ID); e.name(r.Name) }
func (r *SnapshotRef) unmarshal(d *decoder) {
	r.ID = d.U32("snapshot id")
	r.Name = d.name("snapshot name")
}

// CreateSnapshot takes a snapshot of the origin. The server runs the
// INVALIDATE barrier across all clients before it counts as taken.
type CreateSnapshot struct {
	Name     string
	Priority int32 // higher survives longer when the store fills
	Writable bool
}

func (*CreateSnapshot) Type() MsgType     { return TypeCreateSnapshot }
func (m *CreateSnapshot) validate() error { return checkName("snapshot", m.Name) }
func (m *CreateSnapshot) marshal(e *encoder) {
	e.name(m.Name)
	e.i32(m.Priority)
	e.bool(m.Writable)
}
func (m *CreateSnapshot) unmarshal(d *decoder) {
	m.Name = d.name("snapshot name")
	m.Priority = d.i32("priority")
	m.Writable = d.bool("writable")
}

// CreateSnapshotOK describes the snapshot just created.
type CreateSnapshotOK struct{ Snapshot SnapshotEntry }

func (*CreateSnapshotOK) Type() MsgType          { return TypeCreateSnapshotOK }
func (m *CreateSnapshotOK) validate() error      { return m.Snapshot.check() }
func (m *CreateSnapshotOK) marshal(e *encoder)   { m.Snapshot.marshal(e) }
func (m *CreateSnapshotOK) unmarshal(d *decoder) { m.Snapshot.unmarshal(d) }

// DeleteSnapshot deletes a snapshot; answered with OK.
type DeleteSnapshot struct{ Snapshot SnapshotRef }

func (*DeleteSnapshot) Type() MsgType          { return TypeDeleteSnapshot }
func (m *DeleteSnapshot) validate() error      { return m.Snapshot.check() }
func (m *DeleteSnapshot) marshal(e *encoder)   { m.Snapshot.marshal(e) }
func (m *DeleteSnapshot) unmarshal(d *decoder) { m.Snapshot.unmarshal(d) }

// SnapshotEntry describes one snapshot (LIST_SNAPSHOTS, CREATE_SNAPSHOT).
type SnapshotEntry struct {
	ID          uint32
	Name        string
	Created     int64 // unix nanoseconds
	Priority    int32
	Writable    bool
	Dropped     bool // dropped to free store space: reads fail
	Deleting    bool // deleted, space not yet reclaimed
	UniqueBytes uint64
	SharedBytes uint64
}

const (
	entryWritable = 1 << iota
	entryDropped
	entryDeleting
	entryKnown = entryWritable | entryDropped | entryDeleting
)

func (s *SnapshotEntry) check() error {
	if s.ID == 0 {
		return fmt.Errorf("snapshot id 0: %w", ErrMalformed)
	}
	return checkName("snapshot", s.Name)
}

func (s *SnapshotEntry) marshal(e *encoder) {
	e.u32(s.ID)
	e.name(s.Name)
	e.i64(s.Created)
	e.i32(s.Priority)
	var f uint8
	if s.Writable {
		f |= entryWritable
	}
	if s.Dropped {
		f |= entryDropped
	}
	if s.Deleting {
		f |= entryDeleting
	}
	e.u8(f)
	e.u64(s.UniqueBytes)
	e.u64(s.SharedBytes)
}

func (s *SnapshotEntry) unmarshal(d *decoder) {
	s.ID = d.U32("snapshot id")
	s.Name = d.name("snapshot name")
	s.Created = d.i64("created")
	s.Priority = d.i32("priority")
	f := d.U8("flags")
	if f&^entryKnown != 0 {
		d.fail("snapshot flags %#02x: unknown bits: %w", f, ErrMalformed)
	}
	s.Writable = f&entryWritable != 0
	s.Dropped = f&entryDropped != 0
	s.Deleting = f&entryDeleting != 0
	s.UniqueBytes = d.U64("unique bytes")
	s.SharedBytes = d.U64("shared bytes")
}

// ListSnapshots asks for one page of snapshots: those with id > After, in
// ascending id order, at most Max (1..MaxListEntries) of them. Paging keeps
// every frame bounded however many snapshots the store holds.
type ListSnapshots struct {
	After uint32
	Max   uint16
}

func (*ListSnapshots) Type() MsgType { return TypeListSnapshots }
func (m *ListSnapshots) validate() error {
	if m.Max == 0 || m.Max > MaxListEntries {
		return fmt.Errorf("page size %d not in 1..%d: %w", m.Max, MaxListEntries, ErrLimit)
	}
	return nil
}
func (m *ListSnapshots) marshal(e *encoder)   { e.u32(m.After); e.u16(m.Max) }
func (m *ListSnapshots) unmarshal(d *decoder) { m.After = d.U32("after"); m.Max = d.U16("max") }

// SnapshotList is one page of snapshots in ascending id order. More says
// whether snapshots with higher ids remain (ask again with After set to
// the last id).
type SnapshotList struct {
	Entries []SnapshotEntry
	More    bool
}

func (*SnapshotList) Type() MsgType { return TypeSnapshotList }

func (m *SnapshotList) validate() error {
	if len(m.Entries) > MaxListEntries {
		return fmt.Errorf("%d entries exceeds limit %d: %w", len(m.Entries), MaxListEntries, ErrLimit)
	}
	for i := range m.Entries {
		if err := m.Entries[i].check(); err != nil {
			return fmt.Errorf("entry %d: %w", i, err)
		}
		if i > 0 && m.Entries[i].ID <= m.Entries[i-1].ID {
			return fmt.Errorf("entry %d: id %d not above %d: ids must ascend: %w", i, m.Entries[i].ID, m.Entries[i-1].ID, ErrMalformed)
		}
	}
	return nil
}

func (m *SnapshotList) marshal(e *encoder) {
	e.bool(m.More)
	e.u16(uint16(len(m.Entries)))
	for i := range m.Entries {
		m.Entries[i].marshal(e)
	}
}

func (m *SnapshotList) unmarshal(d *decoder) {
	m.More = d.bool("more")
	n := d.count(int(d.U16("entry count")), MaxListEntries, 34, "entries")
	if n == 0 {
		return
	}
	m.Entries = make([]SnapshotEntry, n)
	for i := range m.Entries {
		m.Entries[i].unmarshal(d)
	}
}

// SetPriority changes a snapshot's priority; answered with OK.
type SetPriority struct {
	Snapshot SnapshotRef
	Priority int32
}

func (*SetPriority) Type() MsgType          { return TypeSetPriority }
func (m *SetPriority) validate() error      { return m.Snapshot.check() }
func (m *SetPriority) marshal(e *encoder)   { m.Snapshot.marshal(e); e.i32(m.Priority) }
func (m *SetPriority) unmarshal(d *decoder) { m.Snapshot.unmarshal(d); m.Priority = d.i32("priority") }

// Status asks for the server's state and its client registry.
type Status struct{}

func (*Status) Type() MsgType      { return TypeStatus }
func (*Status) validate() error    { return nil }
func (*Status) marshal(*encoder)   {}
func (*Status) unmarshal(*decoder) {}

// Check asks for a full consistency check of the store. It can take long;
// other requests on the connection proceed meanwhile.
type Check struct{}

func (*Check) Type() MsgType      { return TypeCheck }
func (*Check) validate() error    { return nil }
func (*Check) marshal(*encoder)   {}
func (*Check) unmarshal(*decoder) {}

// ClientStatus is one entry of the server's client registry.
type ClientStatus struct {
	Client    ClientID
	Node      string
	Connected bool   // false: awaited (known from the registry, not yet reconnected)
	Locks     uint32 // read locks held
}

// StatusOK describes the server.
type StatusOK struct {
	Term       uint64
	Since      int64 // unix nanoseconds: when this server took the term
	Node       string
	Volume     string
	Generation uint64
	Clients    []ClientStatus // ascending by client id
}

func (*StatusOK) Type() MsgType { return TypeStatusOK }

func (m *StatusOK) validate() error {
	if err := checkNodeName("server node", m.Node); err != nil {
		return err
	}
	if err := checkName("volume", m.Volume); err != nil {
		return err
	}
	if len(m.Clients) > MaxClients {
		return fmt.Errorf("%d clients exceeds limit %d: %w", len(m.Clients), MaxClients, ErrLimit)
	}
	for i, c := range m.Clients {
		if c.Client == (ClientID{}) {
			return fmt.Errorf("client %d: zero id: %w", i, ErrMalformed)
		}
		if i > 0 && string(c.Client[:]) <= string(m.Clients[i-1].Client[:]) {
			return fmt.Errorf("client %d: ids must ascend: %w", i, ErrMalformed)
		}
		if err := checkNodeName(fmt.Sprintf("client %d node", i), c.Node); err != nil {
			return err
		}
	}
	return nil
}

func (m *StatusOK) marshal(e *encoder) {
	e.u64(m.Term)
	e.i64(m.Since)
	e.name(m.Node)
	e.name(m.Volume)
	e.u64(m.Generation)
	e.u16(uint16(len(m.Clients)))
	for _, c := range m.Clients {
		e.id(c.Client)
		e.name(c.Node)
		e.bool(c.Connected)
		e.u32(c.Locks)
	}
}

func (m *StatusOK) unmarshal(d *decoder) {
	m.Term = d.U64("term")
	m.Since = d.i64("since")
	m.Node = d.name("server node")
	m.Volume = d.name("volume")
	m.Generation = d.U64("generation")
	n := d.count(int(d.U16("client count")), MaxClients, 22, "clients")
	if n == 0 {
		return
	}
	m.Clients = make([]ClientStatus, n)
	for i := range m.Clients {
		c := &m.Clients[i]
		c.Client = d.id("client id")
		c.Node = d.name("client node")
		c.Connected = d.bool("connected")
		c.Locks = d.U32("locks")
	}
}

// Recover asks the server to recover its failed store engine in place
// (journal replay on the same devices) now, rather than at its next
// automatic attempt. OK when the engine works (again).
type Recover struct{}

func (*Recover) Type() MsgType      { return TypeRecover }
func (*Recover) validate() error    { return nil }
func (*Recover) marshal(*encoder)   {}
func (*Recover) unmarshal(*decoder) {}

// CheckOK reports the problems a consistency check found (none: clean).
// At most MaxProblems are listed; Omitted counts the rest.
type CheckOK struct {
	Problems []string
	Omitted  uint32
}

func (*CheckOK) Type() MsgType { return TypeCheckOK }

func (m *CheckOK) validate() error {
	if len(m.Problems) > MaxProblems {
		return fmt.Errorf("%d problems exceeds limit %d: %w", len(m.Problems), MaxProblems, ErrLimit)
	}
	for i, p := range m.Problems {
		if err := checkText(fmt.Sprintf("problem %d", i), p); err != nil {
			return err
		}
	}
	return nil
}

func (m *CheckOK) marshal(e *encoder) {
	e.u32(m.Omitted)
	e.u16(uint16(len(m.Problems)))
	for _, p := range m.Problems {
		e.text(p)
	}
}

func (m *CheckOK) unmarshal(d *decoder) {
	m.Omitted = d.U32("omitted")
	n := d.count(int(d.U16("problem count")), MaxProblems, 2, "problems")
	if n == 0 {
		return
	}
	m.Problems = make([]string, n)
	for i := range m.Problems {
		m.Problems[i] = d.text("problem")
	}
}
