// Package server is the snapshot server of one csnap volume: it speaks the
// snapstore/wire protocol to every client (each csnapd, including the one
// on its own node), answers metadata questions with the snapstore engine,
// and keeps the read locks (snapstore/locks) that order snapshot reads of
// the origin against origin overwrites. Clients move the data themselves,
// on the shared origin and store devices.
//
// # Use (csnapd -dev)
//
//	eng, _ := snapstore.Open(originDev, storeDev, snapstore.Options{})
//	srv, err := server.New(server.Config{
//		Engine: eng, Volume: "dev", Term: eng.Epoch() + 1, Node: "localhost",
//		Registry: server.NewMemRegistry(), Membership: server.AllowAll{},
//		Log: logrus.NewEntry(logger),
//	})
//	ln, _ := net.Listen("tcp", "127.0.0.1:0")
//	go srv.Serve(ctx, ln)        // the local client dials ln.Addr()
//	si, err := srv.CreateSnapshot(ctx, "nightly", snapstore.CreateOptions{Priority: 1})
//	...
//	srv.Close(); eng.Close()
//
// Admin calls reach the server either over the wire (CREATE_SNAPSHOT,
// DELETE_SNAPSHOT, LIST_SNAPSHOTS, SET_PRIORITY, STATUS, CHECK from any
// connected client: a csnapd forwards its HTTP API calls to the volume's
// server this way) or, in the server's own process, through the same
// operations as Go methods (CreateSnapshot, DeleteSnapshot, SetPriority,
// Snapshots, Status, Clients, Check). Both run the same code, including
// the snapshot barrier.
//
// # Connections
//
// On a TLS listener (pki.Holder.ServerConfig) a connection without a
// client certificate of the cluster's CA fails its TLS handshake and is
// closed before any frame is read. With Config.PeerNode (TLSPeerNode),
// before a HELLO touches any state, the server rejects it (reason
// identity) unless it claims the node the certificate names and that
// node's client id (wire.ClientIDFor), and rejects it (not a member)
// unless that node is a cluster member. Whether or not connections are
// authenticated, a HELLO with a client id the server knows as another
// node's (connected, awaited, detached, unsettled) is rejected (identity):
// a node never takes over another's connection, locks or approvals.
//
// A client sends HELLO. The server rejects it (HELLO_REJECT, then closes)
// when it is shutting down, no protocol version is in common, the volume
// is not ours, the client's node is not a cluster member, or the client
// claims a newer term than ours. Membership is checked first, and a claim
// is never taken on the peer's word: the server asks Config.LockCheck
// (Consul's lock key, read consistently) and calls Config.OnDeposed only
// when the lock is confirmed lost (lockcheck.go). Otherwise HELLO_OK carries our term, the geometry, the
// store UUID, the snapshot generation and the limits. The client then
// re-declares the read locks it holds (UPLOAD_LOCKS notices, then
// UPLOAD_DONE, answered OK); until then only PING is served. On
// UPLOAD_DONE the locks enter the table (locks.Upload) and the client is
// recorded in the Registry. A second HELLO of the same client id (it
// reconnected while its old connection still looked alive) replaces the
// old connection, which is closed and whose locks are dropped; the new
// upload re-declares the ones still held.
//
// Requests are pipelined: the connection's reader goroutine applies
// FINISH_SNAPSHOT_READ and the upload in order, and starts every other
// request in its own goroutine (at most MaxInFlight per connection; one
// more is answered ERROR limit, "busy"). Replies go out as they are ready,
// in any order, through the concurrent wire.Writer; each frame write has a
// deadline (WriteTimeout), so a client that stops reading is
// disconnected rather than blocking anyone. Malformed frames are answered
// ERROR bad request; more than a few, or a corrupt stream, close the
// connection. Nothing a client sends affects other connections.
//
// A read or block lock is honoured no longer than Config.LockBound
// (DefaultLockBound, 4 × wire.LockLease) and then revoked, and one
// client's read locks cover at most locks.Limits.MaxChunks chunks
// (DefaultMaxLockedChunks); see lockbound.go. Shared-state values are
// checked by Config.ValidateShared before they are committed or adopted,
// and ResetShared is the operator's repair (shared.go).
//
// When a connection is lost, the client's parked writes are cancelled.
// If it holds no read lock it is forgotten (and deleted from the
// registry). If it does, it may still be reading the origin under them, so
// its locks are kept for DetachGrace (default 10s; writes to those chunks
// wait): if it reconnects, its upload re-declares them (locks.Upload keeps
// the identical ones, releases those it no longer declares); if not, they
// are released (locks.DropClient) and the writes they held back are
// approved. (The design brief said DropClient on every disconnect; that
// lets a write overwrite a chunk that a client cut off from the server is
// still reading for a snapshot, and the client re-declares its locks on
// reconnect precisely to prevent that.) A replaced connection (same
// client id in a new HELLO) keeps the locks for the new one's upload.
// NodeLeft and a barrier timeout release locks at once, except locks
// younger than wire.LockLease, kept (as for a lost connection) until they
// reach that age; locks of clients awaited from the registry count from
// the server's start.
//
// # Origin writes and snapshot reads
//
// ORIGIN_WRITE (ranges):
//
//  1. wait while a snapshot barrier runs or awaited clients remain (below);
//  2. engine.PrepareOriginWrite per range: copies out every chunk a
//     snapshot still shares, commits, and waits for the engine's
//     transient origin-read holds on those chunks; it returns generation G;
//  3. under the server mutex, locks.WaitFor(client/request id, ranges): if
//     read locks cover the chunks, the write parks until Release,
//     DropClient or Upload reports it ready. Only locks that exist now are
//     waited for, so a stream of later readers never starves a writer;
//  4. if a barrier has started or the generation is no longer G (a
//     snapshot was created while it was parked), go back to 1: the
//     copy-out was made for an older generation. Otherwise answer
//     ORIGIN_WRITE_OK{G}; until that frame is written the approval counts
//     as a copy-out in progress, which a barrier drains (below).
//
// SNAPSHOT_READ (snapshot, ranges):
//
//  1. engine.MapSnapshotReadHold per range: the lookup, and a transient
//     engine hold on every chunk it maps to the origin, atomically;
//  2. under the server mutex, locks.Acquire(client/request id, the
//     origin-mapped ranges) (if they are fragmented into more runs than a
//     lock may have, the requested ranges, a superset);
//  3. engine.ReleaseOriginRead on the held chunks;
//  4. on a client's first lock, record it in the registry as holding
//     locks (before it can read under the lock); answer with the extents.
//
// FINISH_SNAPSHOT_READ releases the lock (its handle is the read's request
// id) and approves the writes that no longer wait.
//
// Why this is correct without a lock around metadata IO: take a reader R
// and a writer W of chunk c. The engine decides R's mapping under its own
// mutex, and W's copy-out inserts the exception under the same mutex. If
// R's lookup comes after the insert, R is sent to the store copy and
// needs no lock. If it comes before, R took an engine hold on c in the
// same critical section, before the insert; PrepareOriginWrite waits for
// holds on c after the insert, so it returns only after R released the
// hold, which R does only after its table lock exists. W's WaitFor runs
// after PrepareOriginWrite returned, under the mutex that Acquire also
// took, so it sees R's lock and parks until R finishes. The holds are
// transient (lookup to Acquire, no IO in between), so a writer never waits
// long for them, and no server-wide lock is held across engine IO.
//
// # The snapshot barrier
//
// CREATE_SNAPSHOT (one at a time):
//
//  1. gate: new copy-outs (step 2 of ORIGIN_WRITE) wait, and those in
//     progress, and approvals being sent, drain;
//  2. engine.CreateSnapshot: the generation becomes the new id G';
//  3. INVALIDATE{G'} to every connected client (and to clients that finish
//     their handshake meanwhile). A client acks once it has dropped its
//     unique-chunk cache and every origin write approved under an older
//     generation has completed. Parked writes becoming ready meanwhile are
//     not approved (they redo their copy-out afterwards);
//  4. when all have acked, and no unsettled client (below) remains, open
//     the gate and answer CREATE_SNAPSHOT_OK.
//
// Unsettled clients. A client's writes go straight to the origin device,
// so a client that lost its connection may still be writing under an
// approval (or a cache entry, which only an approval creates). The server
// therefore records a client as unsettled, with the generation G, when it
// approves it a write under G, and as settled again when the client acks
// an INVALIDATE of a generation newer than G, on any connection (the
// client counts its writes by generation across reconnections). Step 4
// also waits for every client unsettled when the snapshot was recorded,
// connected or not: a disconnected one settles when it reconnects (the
// INVALIDATE it gets after UPLOAD_DONE makes it drain), when its node
// leaves (NodeLeft), or at the barrier timeout. An unsettled client stays
// in the registry after it disconnects, and a new server takes every
// registry client on a member node as unsettled: approvals of the old
// server may still be in flight.
//
// The snapshot is then the origin as of the instant the barrier
// completed: no copy-out ran between 2 and 4, every write approved before
// 3 had completed, and no write was approved between 1 and 4. A write
// acknowledged to an initiator before the create began is in it; a write
// approved after the create returned is copied out first. Because
// approvals being sent are drained in step 1, every ORIGIN_WRITE_OK{G}
// precedes INVALIDATE{G'} on its connection: a client never receives an
// approval for an older generation after acking a newer one. (A client may
// still check it and re-ask, as a defence.)
//
// This orders create before INVALIDATE, unlike the wire package's prose
// (invalidate, then record): with that order a create that fails after
// the clients acked G' (name taken, table full, IO error) would leave them
// expecting a generation that never comes. Holding copy-outs (not just
// approvals) during the barrier is what makes this order safe: a copy-out
// for the new snapshot never reads a chunk that a client is still writing
// through an old-generation approval. Snapshot reads, admin requests and
// snapshot writes are not held.
//
// Trade-off: a client that does not ack (or, disconnected, does not come
// back) within BarrierTimeout is disconnected and struck off (logged at
// error level, with the clients named) and the create completes without
// it. If that client is alive but unreachable, writes it had already been
// approved may still land on the origin after the create returned; waiting
// forever would instead stop every snapshot of the volume. Its node leaving
// the cluster (fencing, in the cluster layer) is what ends that risk.
//
// # Reclamation and client location caches
//
// A version-4 client caches the store locations of read-only snapshots
// (never origin answers) and reads them again without asking. Those
// locations stay right until the snapshot's space is reclaimed, so the
// server installs the engine's BeforeReclaim hook (Engine.SetBeforeReclaim;
// the reclaimer calls it without engine locks, in the background, so a
// DELETE_SNAPSHOT never waits for it). Before a pass reuses the space of
// snapshots W:
//
//  1. it waits until every SNAPSHOT_READ (and SNAPSHOT_WRITE) whose
//     lookup began before now has had its answer written: any later
//     lookup of W fails, so from here on no client can learn a location
//     of W;
//  2. it sends RECLAIM{W} to every live version-4 connection, and to
//     version-4 clients that finish their UPLOAD_DONE while it waits and
//     that it waits for (below). A client answers RECLAIM_OK once it has
//     dropped W's cached locations and every store read and write of W
//     it began has finished (answers to SNAPSHOT_READ and SNAPSHOT_WRITE
//     received before the RECLAIM included, by step 1 and the order of
//     frames on a connection; a client writes no store location later
//     than wire.LockTrust after asking, so BarrierTimeout must be at
//     least wire.LockLease);
//  3. it waits for the answer of each client that was connected, or had
//     lost its connection less than BarrierTimeout ago after being
//     answered store locations ("away": it may still be reading). A
//     connected client that does not answer within BarrierTimeout is
//     disconnected; an away client is waited for until it is back and
//     answers, or until BarrierTimeout after its connection was lost.
//
// Why an away client cannot read reused space: a client drops its whole
// cache when its connection is lost and when it connects, and uses a
// cached location only while its connection has received a frame within
// the last three ping intervals (client.Config.PingInterval, default 2 s;
// this must stay below BarrierTimeout, default 10 s). The last frame it
// received was sent before the server saw the connection end (or, for a
// client disconnected for not answering, before the RECLAIM it did not
// get), so it starts no store read of W from its cache after that time
// plus three ping intervals, and a store read it started earlier (from
// its cache or from an answer) is assumed to finish within the rest of
// BarrierTimeout. A client whose store device stalls longer than that is
// the same trade-off as the snapshot barrier's. Version 1-3 clients get no
// RECLAIM: they do not cache; their uncached reads of a snapshot deleted
// while they read it are not drained (as before version 4). A pass that
// runs while the server is closed is not drained either (its clients lose
// their connections and drop their caches; csnapd closes the engine with
// the server).
//
// # Persisted shared state
//
// The shared state (SHARED_UPDATE) lives in the server's memory and in
// every client's replica; a new server rebuilds it from the uploads. What
// must outlive a restart of every node is picked from each entry by
// Config.PersistShared (csnapd: an LU's mode parameters, never its
// reservations or unit attentions) and recorded in the store's volume
// attributes (snapstore.Engine.SetVolumeAttrs) before the update that
// changes it commits, so a change acknowledged to a client is durable. New
// restores the recorded entries at version 1, below every version a server
// commits, so any client's replica wins over them. The record (format 1,
// big-endian):
//
//	1  format, 1
//	2  entry count n, then n entries in increasing key order:
//	     2  key length, then the key
//	     2  value length, then the kept value
//
// No record (empty attributes) means nothing is kept. A record a server
// cannot read is logged and ignored. A replica a client uploads wins over
// the record even when it is older than the record's last change (a client
// that missed that change while disconnected, and is the only one left to
// upload): the change is then lost, as any shared-state change is whose
// only surviving replica is stale.
//
// # Failover: the client registry and awaited clients
//
// The Registry (Consul KV in cluster mode) records each connected client
// and whether it may hold read locks. New lists it: every entry that may
// hold locks, on a node that is still a member, is awaited. Until each
// awaited client has reconnected and uploaded its locks (UPLOAD_DONE), or
// its node has left (NodeLeft), or AwaitTimeout has passed, no copy-out
// starts and no origin write is approved; every other request is served.
// Clients lists awaited clients (Connected false); the logs name them.
//
// The term: New records Config.Term in the store (Engine.SetEpoch) and
// refuses to start (ErrStaleTerm) if the store records a newer one.
//
// NodeLeft (the cluster layer calls it when Consul reports a node gone)
// closes that node's connections, drops their locks (approving the writes
// they held back), deletes them from the registry and stops awaiting them.
//
// # Structure: ledgers and the clock
//
// The server's own requests to a client (INVALIDATE, SHARED_STATE, RECLAIM)
// are recorded in one ledger per connection (clientCalls, clientcalls.go):
// a pure type, no goroutines, clock or I/O, that hands out their request
// ids and judges every answer (accepted, refused with ERROR, or a protocol
// violation); one handler (session.clientReply) acts on the verdict. Read
// and block locks live in package locks (locks.Table, locks.Blocks), in
// the same style. Every time the server reads comes from Config.Now;
// timers and socket deadlines run on the system clock.
package server
