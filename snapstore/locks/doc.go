// Package locks is the snapshot server's table of read locks on origin
// chunks, and of the origin writes parked behind them.
//
// A client reading a snapshot chunk that the snapshot still shares with
// the origin reads it from the origin device, under a read lock the server
// grants with the answer. An origin write to that chunk must not proceed
// while such a reader may still be reading the old data. The server's flow
// for an origin write query is:
//
//  1. copy the chunk out to the store and commit (the origin is unchanged,
//     so the copy is right even while readers read it);
//  2. from now on snapshot reads of the chunk are answered with the store
//     copy, so no new read lock on it can mean "old data";
//  3. WaitFor: wait for the read locks granted before this point to drain,
//     and never for later ones: a stream of readers cannot starve a writer,
//     and a waiting writer does not block readers either;
//  4. approve the write.
//
// The table does step 3. It is a deterministic state machine with no
// goroutines, clock or IO, called under the server's mutex; a call that
// unblocks writes returns them (in arrival order), and the server answers
// them. The server must serialize Acquire with the lookup that decided
// "read the origin", and WaitFor after its copy-out commit, under the
// same mutex, or the ordering above does not hold. If a snapshot was
// created while a write was parked, the server must redo step 1 before
// approving (compare generations); the table does not know about
// generations.
//
// A lock is named by (client, handle), the handle being the request id of
// the SNAPSHOT_READ that granted it; a parked write by (client, request id
// of the ORIGIN_WRITE). Locks may overlap, also within one client.
//
// Clients come and go. DropClient removes all a client has: its parked
// writes are cancelled and never reported ready (ddsnap freed such a write
// while a lock release still referred to it), its locks are released. A
// reconnecting client re-declares its locks with Upload; a lock the table
// did not know (a new server after failover) is treated as granted before
// every write, because the client may be reading under it right now.
//
// Limits bound what one client can make the table hold (locks, chunks
// under them, parked writes, ranges per call); over a limit the call fails
// with an error wrapping ErrLimit and changes nothing.
//
// Typical use by the server, under its mutex:
//
//	// SNAPSHOT_READ id 17 from client c; the engine said chunks 8..11 are on the origin:
//	err := tab.Acquire(locks.Key{Client: c, ID: 17}, []locks.Range{{Start: 8, Count: 4}})
//
//	// ORIGIN_WRITE id 90 from client d, after the copy-out committed:
//	ready, err := tab.WaitFor(locks.Key{Client: d, ID: 90}, ranges)
//	if ready { approve(d, 90) } // else answered when it shows up in a ready list
//
//	// FINISH_SNAPSHOT_READ handle 17 from c:
//	woken, err := tab.Release(locks.Key{Client: c, ID: 17})
//	for _, w := range woken { approve(w.Client, w.ID) }
//
//	// c's node left the cluster:
//	for _, w := range tab.DropClient(c) { approve(w.Client, w.ID) }
package locks
