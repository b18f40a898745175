// Package wire is the binary protocol between csnap snapshot clients and a
// volume's snapshot server, over TCP: framing, every message, and their
// limits. It does no IO of its own beyond Reader and Writer, holds no
// state, and never panics on input: every malformed byte sequence is an
// error that says what was wrong.
//
// All integers are big-endian. Signed integers are two's complement.
//
// # Frames
//
// Every message travels in one frame: a 20-byte header, then the body.
//
//	offset size field
//	0      2    magic            0xC5 0x4E
//	2      1    frame version    1 (the header layout; messages are versioned by HELLO)
//	3      1    message type     see below
//	4      8    request id       u64
//	12     4    body length      u32, at most MaxBody (1 MiB)
//	16     4    checksum         CRC-32C (Castagnoli) of bytes 0..15, then of the body
//	20     n    body
//
// A receiver checks magic, version and length before reading the body, so
// a garbage or hostile header never makes it allocate. A bad magic,
// version, length or checksum (ErrCorrupt) leaves the stream out of sync:
// the connection is closed. A frame that is intact but carries an unknown
// type or a malformed body (*MessageError) can be answered with ERROR
// (code 2, bad request) for its request id; the server closes the
// connection anyway if a peer keeps doing it.
//
// # Request ids and pipelining
//
// Each message type is a request, a reply or a notice (MsgType.Kind):
//
//   - A request carries a nonzero id chosen by its sender, unique among
//     that sender's outstanding requests. The peer answers it with exactly
//     one reply with the same id, or ERROR.
//   - A reply carries the id of the request it answers. Replies may come
//     in any order: a connection has many requests in flight (up to
//     HELLO_OK's MaxInFlight from a client) and the server answers each
//     when ready; a slow copy-out does not hold up a snapshot read.
//   - A notice carries id 0 and has no reply (FINISH_SNAPSHOT_READ,
//     UPLOAD_LOCKS, UPLOAD_SHARED).
//   - ERROR with id 0 reports a connection-level failure just before its
//     sender closes the connection.
//
// Both sides may send requests: the server sends INVALIDATE, SHARED_STATE,
// RECLAIM (and PING).
// Id spaces are per sender; the receiver knows from the type whether a
// frame is a request to it or a reply to one of its own.
//
// A client numbers its requests from one counter that it never resets,
// across reconnects and failovers, so that the id of a SNAPSHOT_READ can
// serve as the handle of the read lock it granted for as long as that
// lock lives. After a reconnect it re-sends its unanswered requests with
// their old ids.
//
// The server applies FINISH_SNAPSHOT_READ and UPLOAD_LOCKS/UPLOAD_DONE in
// the order it reads them, before it reads the next frame; everything
// else may complete in any order.
//
// # Connection life
//
//	client                                 server
//	HELLO (id 1)                  ->
//	                              <-       HELLO_OK (id 1)  or  HELLO_REJECT (id 1), close
//	UPLOAD_LOCKS (id 0) ...       ->       (zero or more; the locks it still holds)
//	UPLOAD_DONE (id 2)            ->
//	                              <-       OK (id 2)
//	requests, pipelined           <->      replies, any order; INVALIDATE at any time
//
// The client must send UPLOAD_DONE (with its UPLOAD_LOCKS before it) as
// the first thing after HELLO_OK, even with no locks: it tells a server
// that this client has re-declared everything, which a newly elected
// server waits for (from every client in its registry) before it approves
// writes that could conflict. The client may pipeline further requests
// right behind UPLOAD_DONE.
//
// # Transport
//
// Between csnapd nodes the stream runs over mutual TLS 1.3 (package pki):
// both ends present the certificate of their node, signed by the
// cluster's CA. A server accepts a HELLO only if it claims the node of the
// client's certificate and that node's client id, ClientIDFor(node,
// volume) (reason identity, 7); a client accepts only a server whose
// certificate names the node holding the volume's server lock. The frames
// are the same with or without TLS.
//
// The server rejects a HELLO with reason stale term (4) when the client
// already knows a term newer than the server's: that server has been
// deposed and must stop serving. A client whose known term is older just
// records the new one from HELLO_OK.
//
// # Bodies
//
// Body fields follow each other with no padding; a body must be consumed
// exactly (trailing bytes are an error). Building blocks:
//
//	bool        u8, 0 or 1 (any other value is an error)
//	name        u8 length n, then n bytes. Volume and snapshot names match
//	            ^[a-z0-9][a-z0-9-]{0,62}$; node names are 1-253 bytes of
//	            [A-Za-z0-9._-] starting with a letter or digit (Consul node
//	            names are host names).
//	text        u16 length n (at most MaxText, 4096), then n bytes of UTF-8
//	client id   16 bytes, not all zero
//	ranges      u16 n (1..MaxRanges, 256), then n times {u64 start chunk,
//	            u32 count}: counts nonzero, start+count < 2^64, ranges
//	            strictly ascending and disjoint, at most MaxChunks (16384)
//	            chunks in all
//	extents     u32 n (1..MaxExtents), then n times:
//	              u64 start chunk, u32 count, u8 kind,
//	              kind 0 (origin): nothing more;
//	              kind 1 (store):  u64 store byte offset of the first chunk
//	                               (chunk start+i is at offset + i*chunk size)
//	            same ordering rules and chunk limit as ranges
//	shared      u8 key length (1..255), key bytes, u64 version, u32 value
//	  value     length (0..MaxSharedValue, 512 KiB), value bytes (opaque)
//	snapshot    u32 id (0 = by name), name (empty = by id): exactly one set
//	  ref
//	snapshot    u32 id (nonzero), name, i64 created (unix ns), i32 priority,
//	  entry     u8 flags (bit 0 writable, bit 1 dropped, bit 2 deleting;
//	            other bits must be zero), u64 unique bytes, u64 shared bytes
//
// Messages (type byte, kind, body):
//
//	0x01 HELLO               req    u16 min version, u16 max version (1 <= min <= max),
//	                                client id, u64 term last known (0: none),
//	                                name node, name volume
//	0x02 HELLO_OK            reply  u16 version chosen, u64 term, name server node,
//	                                u32 chunk size (power of two, 512..2^30),
//	                                u64 volume size in bytes, 16 bytes store UUID,
//	                                u64 snapshot generation, u32 max requests in
//	                                flight (>= 1), u32 max read locks held
//	0x03 HELLO_REJECT        reply  u16 reason (1 version unsupported, 2 foreign
//	                                volume, 3 not the server, 4 stale term, 5 node
//	                                not a cluster member, 6 shutting down,
//	                                7 identity: node or client id not the
//	                                authenticated node's),
//	                                u64 server term, text message
//	0x04 PING                req    empty
//	0x05 PONG                reply  empty
//	0x06 ERROR               reply  u16 code (nonzero; see ErrorCode), text message
//	0x07 OK                  reply  empty
//	0x10 ORIGIN_WRITE        req    ranges
//	0x11 ORIGIN_WRITE_OK     reply  u64 generation the approval holds under
//	0x12 SNAPSHOT_READ       req    u32 snapshot id (nonzero), ranges
//	0x13 SNAPSHOT_READ_OK    reply  extents, tiling the requested ranges in order
//	0x14 FINISH_SNAPSHOT_READ notice u64 handle (the SNAPSHOT_READ's request id)
//	0x15 SNAPSHOT_WRITE      req    u32 snapshot id (nonzero), ranges
//	0x16 SNAPSHOT_WRITE_OK   reply  extents, all of kind store, tiling the ranges
//	0x17 UPLOAD_LOCKS        notice u16 n (1..MaxUploadLocks, 1024), then n times
//	                                {u64 handle, u32 snapshot id, ranges};
//	                                handles nonzero and strictly ascending
//	0x18 UPLOAD_DONE         req    u32 number of locks uploaded in all -> OK
//	0x19 SHARED_UPDATE       req    shared value: the new value, with the version
//	                                it replaces (0: the entry does not exist yet)
//	0x1a SHARED_RESULT       reply  bool committed, shared value: committed, the
//	                                key, the new version and an empty value; not
//	                                committed, the entry's current version and value
//	0x1b UPLOAD_SHARED       notice shared value: an entry as the client knows it
//	0x1c BLOCK_LOCK          req    u32 snapshot id (0: origin), u64 byte offset,
//	                                u32 length (1..MaxBlockLock, 1 MiB) (version 5)
//	0x1d BLOCK_LOCK_OK       reply  u64 nanoseconds the server held the request
//	                                before granting it (< 2^63); the request id
//	                                is the handle
//	0x1e BLOCK_UNLOCK        notice u64 handle (the BLOCK_LOCK's request id)
//	0x20 INVALIDATE          req    u64 new generation (server -> client)
//	0x21 INVALIDATE_ACK      reply  u64 the same generation
//	0x22 SHARED_STATE        req    shared value (server -> client) -> OK
//	0x23 ORIGIN_UNIQUE       notice u64 generation (server -> client, version 3):
//	                                no live snapshot and no read lock at it
//	0x24 RECLAIM             req    u16 n (1..MaxReclaimIDs, 4096), then n times u32
//	                                snapshot id: nonzero, strictly ascending
//	                                (server -> client, version 4)
//	0x25 RECLAIM_OK          reply  empty (version 4)
//	0x30 CREATE_SNAPSHOT     req    name, i32 priority, bool writable
//	0x31 CREATE_SNAPSHOT_OK  reply  snapshot entry
//	0x32 DELETE_SNAPSHOT     req    snapshot ref -> OK
//	0x33 LIST_SNAPSHOTS      req    u32 after id, u16 max entries (1..1024)
//	0x34 SNAPSHOT_LIST       reply  bool more, u16 n (0..1024), n snapshot entries
//	                                in strictly ascending id order
//	0x35 SET_PRIORITY        req    snapshot ref, i32 priority -> OK
//	0x36 STATUS              req    empty
//	0x37 STATUS_OK           reply  u64 term, i64 since (unix ns), name server node,
//	                                name volume, u64 generation, u16 n (0..4096),
//	                                n times {client id, name node, bool connected,
//	                                u32 locks held}, client ids strictly ascending
//	0x38 CHECK               req    empty
//	0x39 CHECK_OK            reply  u32 problems omitted, u16 n (0..1024), n texts
//	0x3e RECOVER             req    empty -> OK: recover a failed store engine
//	                                in place now (older servers answer ERROR)
//
// For example, ORIGIN_WRITE with request id 7 for chunks 5 and 6:
//
//	c5 4e 01 10  00 00 00 00 00 00 00 07  00 00 00 0e  <crc32c>
//	00 01  00 00 00 00 00 00 00 05  00 00 00 02
//
// Encodings are canonical: a message has exactly one valid encoding, so
// decode(encode(m)) == m and encode(decode(b)) == b; the tests and fuzzers
// check both.
//
// # The IO path
//
// Origin reads never involve the server. For an origin write the client
// consults its cache of chunks known unique since generation G; for the
// others it sends ORIGIN_WRITE and writes after ORIGIN_WRITE_OK, which the
// server sends once the chunks are copied out, committed, and no read lock
// granted before the query still covers them. The reply's generation is
// what the client caches the chunks under.
//
// A snapshot read sends SNAPSHOT_READ. Store extents are read from the
// store device; origin extents are read from the origin under a read lock
// that the server took atomically with the lookup, and that the client
// releases with FINISH_SNAPSHOT_READ once those origin reads are done (it
// owes one exactly when SnapshotReadOK.HoldsLock). A dropped snapshot
// gets ERROR code 5 (never data), a deleted one code 4.
//
// A lock is only as good as the client's knowledge that it is still held,
// and a client learns that its connection (and so perhaps its locks) was
// lost only when it next runs: a client frozen (SIGSTOP, a paused VM)
// between the grant and its origin read could be struck off, its chunks
// overwritten, and then read the new data as the snapshot's. Hence the
// read-lock lease (LockLease, LockTrust): a server never releases a lock
// against the client's will (its node left, a barrier or an await timed
// out) before the lock is LockLease old, counting a lock a new server
// inherits through its registry as granted when that server started; and
// a client whose origin reads under a lock finished later than LockTrust
// after it sent the SNAPSHOT_READ reads the batch again, exactly as for a
// lock held across a lost connection. The grant follows the send, so a
// trusted read finished while the server still kept the lock. Nothing on
// the wire changes, so there is no new protocol version; the guarantee
// needs both sides to follow the rule (a peer of an older release behaves
// as before). Because a client trusts a lock no longer than LockTrust, a
// server may also revoke a lock once it is LockLease old; csnapd's server
// does at 4 × LockLease (server.DefaultLockBound), so a connected client
// cannot hold writers back for longer.
//
// Block locks (version 5) make COMPARE AND WRITE atomic across nodes:
// BLOCK_LOCK asks for an exclusive lock on a byte range of the origin or
// of a writable snapshot; the server grants conflicting requests in
// arrival order (BLOCK_LOCK_OK, the request id is the handle) and
// BLOCK_UNLOCK releases. They follow the read-lock lease: the server ends
// a departed or disconnected client's granted block locks only once they
// are LockLease old (waiting ones at once), and a client writes under one
// only within LockTrust of sending the BLOCK_LOCK plus the wait the
// server reports in BLOCK_LOCK_OK (the grant came at least that long after
// the send), and if its connection was not lost since. A new server grants
// no block lock in its first LockLease (those of the previous server are
// unknown to it). A client never re-declares block locks after a
// reconnect; an unanswered BLOCK_LOCK is sent again with a new id.
//
// FINISH_SNAPSHOT_READ has no reply, as in ddsnap, because a reply would
// tell the client nothing it can use: once sent, the client does not
// touch those origin chunks again, and releasing a lock cannot fail in a
// way the client could repair (an unknown handle is a client bug, which
// the server logs). The client keeps its own exact count of locks held
// (for MaxLocks) because the server applies FINISH in order: any request
// sent after it is processed after the release. If the connection drops
// before the server reads it, the lock is either dropped with the
// connection or not re-declared in the client's upload; both release it.
// A reply per read would add a message to every snapshot read for none
// of this.
//
// # Snapshot creation barrier
//
// To take a snapshot the server sends INVALIDATE{G'} to every client and
// holds new write approvals. Each client drops its whole unique-chunk
// cache (later writes ask again), waits until every origin write it had
// approved (cached or ORIGIN_WRITE_OK) under an older generation has been
// written, and answers INVALIDATE_ACK{G'}. When all have answered (or
// been struck off), no write acknowledged before the snapshot began is
// still in flight, and the server records the snapshot. A client must
// answer INVALIDATE even while it is waiting for other replies.
//
// After deleting a snapshot the server sends INVALIDATE{G} of the current
// generation G to every client: nothing changes for the client's cache
// (G is not newer), it answers as for any INVALIDATE, and it learns that
// the snapshot list changed (the node unexports the deleted snapshot).
//
// # A volume without snapshots (version 3)
//
// While a volume has no live snapshot, no origin write needs a copy-out
// or waits for a read lock, and asking per chunk costs a round trip on
// every first write. So when the server approves an origin write under
// generation G and, at that moment, no live snapshot exists and no read
// lock is held, it sends ORIGIN_UNIQUE{G} just before ORIGIN_WRITE_OK.
// A client whose current generation is G then approves every origin write
// itself, counted in flight under G exactly like a cached approval, until
// its generation changes; it stops while disconnected, like the cache. It
// is safe because a snapshot can only come into being through the
// barrier, which moves every client to a newer generation first and waits
// for the writes counted under G, and because a read lock is granted only
// on a live snapshot. (A client reconnecting after a failover may
// re-declare a read lock of a snapshot deleted meanwhile; a read of a
// deleted snapshot may then see newer origin data, which no one can tell
// from the deletion having come first.) The server also records the client
// as having been approved under G, for the barrier's accounting of
// disconnected writers.
//
// # Shared state (version 2)
//
// A volume's clients share a few small entries, opaque to the server (the
// SCSI target keeps each logical unit's persistent reservations and unit
// attentions in one), replicated on every client so that reading them
// costs nothing. The server holds the authoritative copy, versioned
// (server term << 32 | counter). A client changes an entry with
// SHARED_UPDATE, a compare-and-set against the version it last saw; on
// success the server first sends SHARED_STATE to every other connected
// client and waits for their OK (a client that does not answer within the
// barrier timeout is disconnected), then answers SHARED_RESULT, so the
// change is in force on every connected node when the update completes.
// On a conflict SHARED_RESULT carries the current value and the client
// retries from it. Between HELLO_OK and UPLOAD_DONE a client declares
// every entry it knows with UPLOAD_SHARED; a newly elected server adopts
// the newest version offered, and after UPLOAD_DONE it sends the client
// SHARED_STATE for every entry it holds at another version.
//
// # Location cache and RECLAIM (version 4)
//
// A read-only snapshot's store chunks never move while it lives: only
// reclamation of a deleted or dropped snapshot frees store chunks, and a
// writable snapshot's SNAPSHOT_WRITE gives it new chunks but leaves the
// others' in place. So a version-4 client may keep the store extents of
// SNAPSHOT_READ_OK answers for read-only snapshots (never origin extents:
// those hold only under their read lock) and read them again without
// asking. Before a reclamation pass may reuse the space of snapshots W, the
// server sends RECLAIM{W} to every version-4 client and waits (up to its
// barrier timeout) for RECLAIM_OK; a client that does not answer in time
// is disconnected. The client answers once it has forgotten W's locations
// and every store read of W it started has finished. Every SNAPSHOT_READ_OK
// the server computed before the pass is on the wire before the RECLAIM,
// so an answer the client receives after RECLAIM for a snapshot of W is
// ERROR (the snapshot is no longer readable).
//
// For example, RECLAIM with request id 3 for snapshots 4 and 9:
//
//	c5 4e 01 24  00 00 00 00 00 00 00 03  00 00 00 0a  <crc32c>
//	00 02  00 00 00 04  00 00 00 09
//
// and its answer, RECLAIM_OK with request id 3 and an empty body:
//
//	c5 4e 01 25  00 00 00 00 00 00 00 03  00 00 00 00  <crc32c>
//
// A client's cached reads rely on its connection: it drops the whole cache
// when the connection is lost and when it connects (to any server, of any
// term), and uses a cached location only while its connection has
// received a frame within the last three ping intervals (the interval
// after which it gives a silent connection up); a read of cached
// locations that finishes later than that, counted from the last frame
// before the lookup, is not trusted and asked of the server. A server that has lost a
// client which may have been reading store chunks waits until the client
// is back and answers, or until its barrier timeout has passed since the
// connection was lost, before reusing space.
//
// Writes of writable snapshots follow the same rules: the server treats a
// SNAPSHOT_WRITE like a SNAPSHOT_READ (every SNAPSHOT_WRITE_OK it computed
// before a pass is on the wire before the RECLAIM; a client answered one
// counts as one that may be using store chunks after a lost connection),
// and a client answers RECLAIM_OK only once every store write of W it
// was approved has been written. A client starts no store write later
// than LockTrust after it sent the SNAPSHOT_WRITE, nor after the
// connection it was answered on was lost: it asks again (the server
// answers the same locations, the chunks being private already, or that
// the snapshot is gone). So a server's barrier timeout must be at least
// LockLease. Nothing on the wire changes; both sides must follow the rule
// (a peer of an older release behaves as before: its snapshot writes race
// a delete or drop of their snapshot).
//
// # Versioning
//
// HELLO offers [MinVersion, MaxVersion]; HELLO_OK names the version
// chosen. A new message type or field means a new version; a peer never
// sends a type the negotiated version does not define. Version 2 added
// shared state; version 3 adds ORIGIN_UNIQUE; version 4 adds RECLAIM
// and RECLAIM_OK: a server sends RECLAIM
// only to clients that negotiated 4 or later, and a client caches
// snapshot locations only under version 4 or later; version 5 adds
// BLOCK_LOCK, BLOCK_LOCK_OK and BLOCK_UNLOCK, which a client sends only
// under version 5 (with an older server its block locks are its own
// node's). Reject reasons and
// error codes a receiver does not know are accepted and treated as fatal
// for the request (so a server can add codes without a version bump).
package wire
