// Package client is a node's client of one volume's snapshot server: what
// csnapd's LUNs for that volume (the origin and every snapshot) do their
// IO through. Every node, the server's own included, reads and writes the
// shared origin and store devices itself; the server is asked only
// metadata questions (may I overwrite these origin chunks? where does this
// snapshot's chunk live?) and holds the read locks. The protocol is
// package wire's; this package is its client half.
//
//	c, err := client.New(ctx, client.Config{Volume: "vol", Node: "n1", ID: id,
//		Locator: client.StaticLocator("10.0.0.1:7863"), Origin: o, Store: s})
//	err = c.Origin().WriteAt(buf, off, fua)
//	err = c.Snapshot(3, false).ReadAt(buf, off)
//
// # IO paths
//
// Origin reads go straight to the origin device. Snapshot reads send
// SNAPSHOT_READ for the chunks and read each extent of the answer from
// the store, or from the origin under the read lock the answer granted;
// FINISH_SNAPSHOT_READ releases the lock whatever happened to the read.
// Origin reads under a lock that finish later than wire.LockTrust after
// the request was sent, or across a lost connection, are done again.
// Snapshot writes (writable snapshots) send SNAPSHOT_WRITE, which makes
// the chunks private to the snapshot, and write the data at the store
// offsets of the answer; until written they hold back RECLAIM_OK for the
// snapshot, and a store write that would start later than wire.LockTrust
// after the request was sent, or after its connection was lost, is asked
// for again. Unmap on the origin is a write (the old data is
// copied out first): whole chunks are punched where the device can
// (PunchHoler), the rest zero-filled.
//
// An origin write needs the server's approval for every chunk it touches:
// ORIGIN_WRITE is answered once the chunks are copied out for every
// snapshot that needs them, with the generation the approval holds under.
//
// # The unique-chunk cache
//
// An approval means "unique since generation G": until the next snapshot,
// the chunk can be overwritten again without a copy-out. The client keeps
// those chunks in a cache (a sparse bitmap bounded by Config.CacheBytes;
// forgetting is always safe, it only costs a query) so that rewrites of hot
// chunks cost no round trip, where ddsnap paid one per chunk. The cache
// holds chunks of the current generation only and is emptied whenever the
// generation changes (INVALIDATE, or a HELLO_OK with another generation).
// It is consulted only while connected.
//
// While the volume has no snapshot at all, the server says so once
// (ORIGIN_UNIQUE, protocol version 3) and the client approves every
// origin write itself until the generation changes, so that first writes
// of a volume without snapshots cost no round trip either.
//
// # The location cache
//
// With a server of protocol version 4 or later, the client keeps the store
// locations of read-only snapshots' chunks that SNAPSHOT_READ_OK answered
// (never origin answers, which hold only under their read lock; never
// writable snapshots, whose chunks move on SNAPSHOT_WRITE: the writable
// flag given to Snapshot decides), in a cache bounded by
// Config.LocationCacheBytes (pages of 256 chunks, least recently used
// dropped first). A read batch whose chunks are all cached reads the store
// with no round trip. After each snapshot read the client asks, in the
// background, for the locations of up to Config.LocationReadahead bytes
// beyond it unless half of that is cached already; the read lock that
// answer grants on the window's origin-mapped chunks is released as soon
// as it arrives (the origin is not read for it), so a read-ahead holds
// back origin writes for one round trip at most.
//
// A read-only snapshot's store chunks move only when it is deleted or
// dropped and its space is reclaimed, and the server sends RECLAIM{ids}
// first. The client then forgets those snapshots' locations, changes its
// location epoch (an answer requested under an older epoch is not cached),
// waits until no read of them that may be reading the store is left (a
// cache hit, or a SNAPSHOT_READ_OK delivered: the server writes every
// answer it computed while they were readable before the RECLAIM), and
// answers RECLAIM_OK. The whole cache is dropped when the connection is
// lost and when one is made (a new server or term may have reclaimed space
// meanwhile), and cached locations are used only while the connection has
// received a frame within three PingIntervals, and a read of them must
// finish within that time too, or it is asked of the server (a client
// frozen in the read may find the space reused): a server waits
// BarrierTimeout for a client it lost before reusing space without its
// answer, so PingInterval times three must stay below the server's
// BarrierTimeout (2 s and 10 s by default). A delete made through this
// client drops its whole location cache; on other clients, between a
// delete and its RECLAIM (normally milliseconds: the delete starts the
// reclaimer, unless a pass is already running) a cached read of the
// deleted snapshot still returns its intact data instead of
// ErrSnapshotGone.
// LocationCacheStats reports hits, misses and size.
//
// # The snapshot barrier
//
// Every origin write is counted in flight, from approval until its data is
// on the origin device, under the generation current when it was approved.
// INVALIDATE{G'} (sent by the server to every client to take a snapshot)
// makes G' current at once, empties the cache, and is answered with
// INVALIDATE_ACK only when no write counted under a generation below G' is
// left. An approval that arrives after the INVALIDATE but carries an older
// generation is stale (it may have been granted before the snapshot began,
// and the write would now land after it): the client asks again. So when
// the server has every acknowledgement, every write any client approved
// before the snapshot is on disk, and every later write asks first: the
// snapshot is one point in time across all nodes.
//
// # Pipelining and flow control
//
// Requests are pipelined on one connection and matched to answers by
// request id; any number of goroutines may do IO at once. Request ids come
// from one counter that is never reset, so the id of a SNAPSHOT_READ
// identifies its read lock (the handle) for as long as the lock lives,
// across reconnections. The client keeps within the server's MaxInFlight
// (two slots are kept for PING and UPLOAD_DONE) and, counting snapshot
// reads outstanding as potential locks, within MaxLocks; requests beyond
// wait in issue order (a snapshot read waiting for a lock slot does not
// hold up origin writes). Frames are queued under the client's mutex and
// written by one goroutine per connection, so the order in which the
// client decided things is the order on the wire (FINISH_SNAPSHOT_READ
// after the lock upload, for instance) and IO never blocks on a socket.
//
// # Disconnection and failover
//
// When the connection fails (a read or write error, the server closing
// it, ERROR "not the server", or silence for three PingIntervals while a
// probe is outstanding) the client reconnects with capped exponential
// backoff (MinBackoff doubling to MaxBackoff), asking the Locator for the
// server's address before each attempt and sending the newest term it has
// seen in HELLO (so a deposed server refuses it). IO meanwhile waits; it
// does not fail. After HELLO_OK it first re-declares the read locks it
// still holds (UPLOAD_LOCKS, then UPLOAD_DONE), then re-sends every
// unanswered request: an origin write query is simply asked again; a
// snapshot read whose answer never came gets a new request id, because a
// lock the old server may have granted under the old id was not
// re-declared and is thereby released. Writes approved before the
// disconnection still count under their old generation, so a later
// INVALIDATE waits for them; a HELLO_OK with another generation empties
// the cache.
//
// Each IO waits at most IOTimeout for the server in all; then it fails
// with ErrTimeout and its late answer, if any, is dropped (a lock it
// grants is released at once). Once the client has been without a server
// for IOTimeout, everything waiting fails with ErrTimeout and new IO that
// needs the server fails at once, until a connection is made again: a
// long outage gives quick errors, not a pile of commands each waiting
// IOTimeout.
//
// # Structure: ledgers and the clock
//
// The bookkeeping lives in three pure ledgers, types without goroutines,
// clock or I/O, each checked against a brute-force oracle by a randomized
// model test: callBook (calls.go: request ids, the waiting queue in issue
// order, what is outstanding on which connection, flow control, re-sending
// after a reconnection), heldLocks (held.go: the read and block locks
// held, their trust times, which were held across a lost connection, the
// UPLOAD_LOCKS frames that re-declare them) and approvals (approvals.go:
// the generation, the unique-chunk cache, ORIGIN_UNIQUE and the origin
// writes in flight by generation, which the barrier waits for). The
// Client holds them under its mutex, passes the time in, and does the
// sending: sending only queues an encoded frame for the connection's
// writer goroutine (no socket I/O under the mutex), so that the order on
// the wire is the order decided; device I/O (the origin's size) and the
// connection's Info, Warn and Error logs (connected, lost, unreachable)
// happen outside it. Every time the client reads comes from Config.Now;
// timers and socket deadlines run on the system clock.
//
// # Errors
//
// IO to a deleted or dropped snapshot fails with ErrSnapshotGone (never
// data); the Volume remembers it, as snapshot ids are never reused. Errors
// from the server wrap a sentinel where one fits and the *wire.Error.
//
// The package has no package-level mutable state; OnChange is the hook
// for csnapd to refresh its snapshot targets after a snapshot was created
// or a reconnection.
package client
