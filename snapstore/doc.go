// Package snapstore is csnap's snapshot store engine: the copy-on-write
// metadata and data management the snapshot server runs over one volume's
// origin device and snapshot-store device.
//
// # Model
//
// The origin is divided into chunks (a power of two from 4 KiB to 1 MiB,
// default 64 KiB). A snapshot shares every chunk with the origin until the
// origin chunk is overwritten; before that happens the engine copies the
// chunk to the store and records an exception. Snapshot ids are allocated
// monotonically from 1 and never reused. An exception records the
// contiguous run of snapshot ids [lo, hi] it serves: when chunk C is first
// written after snapshots a..b were taken, one copy serves exactly those
// ids, so a copy-out costs the same with 1 or 4096 live snapshots. Writable
// snapshots additionally get private exceptions (lo == hi, private flag),
// which take precedence over a shared one for that snapshot.
//
// Deleting a snapshot is O(1) in the foreground (the snapshot stops being
// readable at once); its space is reclaimed by a background walk of the
// exception tree, a few entries per critical section, with a cursor that
// is persisted and resumed after a crash. When the store is full, the
// lowest-priority live snapshot (oldest among equal priorities) is dropped
// instead of failing an origin write; a dropped snapshot reads as
// ErrSnapshotDropped until it is deleted. Per-snapshot unique and shared
// byte counts are maintained incrementally (see snaptable.go), so listing
// is instant.
//
// # Using the engine (the snapshot server's view)
//
//	e, err := snapstore.Open(originDev, storeDev, snapstore.Options{
//		BeforeReclaim: srv.drainReads, // func(ctx, ids): finish reads of deleted snapshots
//		OnEvent:       srv.logEvent,
//	})
//	e.SetEpoch(ctx, term)                      // at takeover, durable
//	// origin write query for chunks [c, c+n):
//	gen, err := e.PrepareOriginWrite(ctx, c, n) // copied out + durable;
//	// reply "write ok, unique since generation gen"; the client writes the
//	// origin itself.
//	// snapshot read query, under the mutex of the server's lock table:
//	locs, err := e.MapSnapshotRead(ctx, id, c, n)
//	// grant read locks on the chunks with locs[i].Origin; an origin write
//	// is approved after PrepareOriginWrite returned AND (under the same
//	// mutex) the locks granted before have drained. (Or let the engine do
//	// it: MapSnapshotReadHold + ReleaseOriginRead.)
//	// snapshot write query (writable snapshots):
//	offs, err := e.PrepareSnapshotWrite(ctx, id, c, n) // store offsets
//	// admin:
//	si, err := e.CreateSnapshot(ctx, "nightly", snapstore.CreateOptions{Priority: 1})
//	err = e.DeleteSnapshot(ctx, si.ID)
//	list := e.Snapshots()
//	res, err := e.Check(ctx, func(p string) { fmt.Println(p) })
//	// changed-block query (diff.go): byte ranges where snapshot b may
//	// differ from a (NoSnapshot: where b may hold data), paginated:
//	exts, next, err := e.Diff(ctx, a, b, offset, limit)
//
// Every method is safe for concurrent use; copy-outs of different chunks
// run in parallel and share journal commits, and the chunks of one call
// that are adjacent on the origin and in the store are copied with one read
// and one write of up to 1 MiB. The caller (the server) is
// responsible for two things the engine cannot see: CreateSnapshot must not
// be called while an origin write the server already approved is still
// being written by a client (the point-in-time barrier), and store
// locations returned for a snapshot must not be used after the snapshot is
// deleted (BeforeReclaim is the hook to drain them).
//
// Generation() is the id of the newest snapshot ever created; it changes
// on every create and never otherwise, so a client may cache "chunk C
// needs no copy-out at generation G" (PrepareOriginWrite returns G). Events
// (snapshot dropped for space, journal recovered, space reclaimed) go to
// Options.OnEvent for the caller to log and count; Stats().Drops is the
// persistent number of drops, Stats().SnapshotsDropped those since Open
// (csnap_snapshots_dropped_total).
//
// # Faults: a full device, IO errors, failed flushes
//
// A full store. When no data chunk is free, the lowest-priority live
// snapshot (oldest among equals) is dropped and its space reclaimed; an
// origin write never fails for space. The same holds when the store device
// itself runs out of space while the bitmap still has free chunks (ENOSPC:
// a thin device, a sparse store file on a full file system): the failed
// copy-out is abandoned (nothing points at its chunk), deleted or dropped
// snapshots are reclaimed, or else the lowest-priority snapshot is dropped
// and reclaimed, and allocation restarts from the first data chunk, where
// the chunks the device already holds are. Each ENOSPC frees chunks or
// drops one snapshot, so the write ends, at worst with no snapshot left
// (and then no copy-out needed). Format writes the journal and the
// metadata area once, so metadata writes do not meet ENOSPC on such
// devices; csnapd also allocates store files in full (fallocate).
//
// IO errors. An error in the middle of an operation that changes metadata
// (a journal commit, a metadata read) puts the engine in the failed state
// (State, EventFailed): it writes nothing more, so the store is what a
// crash at that instant would leave, and every operation returns ErrFailed.
// A failed copy-out (the read of the origin or the write of the chunk) only
// fails its own operation. A failed engine recovers in place (Recover:
// journal replay on the same devices, the Engine value and its holds and
// chunk locks kept), automatically with exponential backoff
// (Options.RecoverBackoff, 1 s doubling to 30 s), on request (the server's
// RECOVER, csnap-admin volume recover), and before DeleteSnapshot, so that
// space can be freed whenever the store can be read and written.
//
// The fsync error policy. After a failed flush Linux marks the pages it
// failed to write clean: reads still return them, a later fdatasync
// succeeds without writing them, and a power cut loses them. So no flush
// after a failed one may be taken as proof of durability:
//   - the engine: a failed flush (or write) during a commit fails the
//     engine; it answers nothing until Recover, which replays the journal
//     (rewriting every metadata block of every transaction since the
//     durable tail), rewrites the data chunks the last transaction vouches
//     for by checksum, and only then flushes and moves the journal tail.
//     Everything the recovered state depends on and that was written since
//     the last good flush has thus been rewritten and flushed after the
//     failure: a transaction whose flush failed was either replayed (and
//     its blocks rewritten) or is absent (its operation failed).
//   - the clients (package client): a failed write or flush of the origin
//     or store latches; every later flush of that device through the
//     client (SYNCHRONIZE CACHE, FUA writes) fails until the latch is
//     cleared by reopening (a new client: csnapd's restart) or by the
//     operator (client.ClearIOErrors, csnap-admin volume recover), who
//     accepts that writes acknowledged before the failure without a good
//     flush may be lost. The client cannot rewrite what it does not keep,
//     so only a reopen or an explicit decision clears it.
//
// # Devices shared by several hosts: direct IO
//
// In a cluster every node reads and writes the volume's origin itself and
// the server node also the store, all of them the same block devices (or
// files on shared storage) from different hosts. Through each host's page
// cache that is incoherent: a host would keep serving an origin chunk it
// cached after another host overwrote it, and the server could copy that
// stale chunk into a snapshot. Such devices are opened with OpenDirect
// (O_DIRECT, as ddsnap did): reads come from the device, writes reach it
// before they complete, and Flush (fdatasync) also empties the device's
// volatile cache.
//
// Direct IO needs the buffer address, the offset and the length to be
// multiples of the device's alignment (Alignment: the logical block size,
// BLKSSZGET or statx STATX_DIOALIGN; 4096 if unknown). Aligned IO is one
// pread or pwrite from the caller's buffer. Anything else is correct but
// slower: it goes through an aligned bounce buffer covering the blocks it
// touches, and a write covering part of a block reads the block first
// (read-modify-write). Writes to the same 64 KiB region are serialised
// within the process so a read-modify-write cannot undo a concurrent write
// of the same block; across hosts nothing serialises them, so two hosts
// writing different parts of one block at once can lose one part. The
// engine's IO is all aligned (chunk and 4 KiB block offsets, buffers from
// AlignedBuffer), and so is a client's whenever its caller's buffer and
// range are (the iSCSI target allocates 4 KiB-aligned command buffers).
//
// # Testing
//
//	go test ./snapstore/                       # ~15 s: everything below
//	go test ./snapstore/ -run Model -soak=100000   # long randomized soak
//	CSNAP_SEED=7 go test ./snapstore/ -run Model -soak=20000
//	CSNAP_CRASH_STRIDE=1 go test -race ./snapstore/ -run Crash
//	make crash     # every crash and fault point (TestCrash, TestFaults)
//	go test ./snapstore/ -run XXX -fuzz FuzzOpenCorrupt -fuzztime 1m
//	go test ./snapstore/ -run XXX -bench . -benchtime=1x   # see BENCHMARKS.md
//
// TestModel runs random operations (origin writes, snapshot creates and
// deletes, writable-snapshot writes, priorities, reclamation, reopen)
// against an in-memory oracle of every snapshot's bytes, with check()
// after every batch and per-snapshot unique/shared bytes compared with the
// actual mappings. TestCrash cuts the power (package faultdev: unflushed
// writes lost, kept or torn per 512-byte sector) at every device operation
// of several workloads (over 1500 crash points) and verifies recovery
// against the oracle; TestCrashConcurrent does so with concurrent,
// group-committed writers. TestFaults (crash_fault_test.go) adds a
// workload of origin writes made durable only by later flushes, cuts the
// power at every device operation of it (also on a thin store that runs
// out of space), and injects an IO error, ENOSPC or a failed flush at
// every device operation in turn: the engine recovers in place, reads
// exactly what was written, and a power cut afterwards loses no
// acknowledged write (about 2400 points with CSNAP_CRASH_STRIDE=1; every
// 11th by default). Fuzz targets cover every on-disk decoder and
// opening a store with corrupted bytes.
//
// # Known limits
//
// Check holds the engine lock only to commit and copy the in-memory state;
// it then reads a point-in-time view of the store (pre-images of metadata
// blocks overwritten meanwhile are kept for it) while copy-outs go on
// (BENCHMARKS.md: IO latency during a check). One operation's metadata must fit in one journal transaction (at
// most 504 blocks, and half the journal): an origin write to a chunk that
// thousands of writable snapshots have each written privately touches one
// table block per such snapshot, so a journal much smaller than twice the
// snapshot table can refuse it (the engine then fails safe). The default
// journal is large enough for the default table.
//
// # Crash safety
//
// All metadata lives on the store device and changes only through a
// write-ahead journal of whole 4 KiB blocks. Copied-out data is written
// before the exception pointing at it is inserted. The committer writes the
// transaction (descriptor + block images) in one write and flushes (the
// commit point), then writes the blocks to their home addresses (made
// durable by a later flush before their journal space is reused).
// Copied-out data must be durable no later than the metadata pointing at
// it: for origin copy-outs the descriptor records the CRC32C of every
// chunk copied in the transaction, so a single flush covers data and
// journal, and recovery discards the last transaction if its data did not
// all reach the disk (only the last can be incomplete; a copied-out chunk
// cannot change before a later transaction commits). Transactions holding
// chunks copied for snapshot writes (which the client overwrites later)
// flush the data first instead. Concurrent operations join the open
// transaction and wait for the same commit (group commit). Data chunks are reserved in memory and marked in
// the bitmap only together with the exception that owns them, so a
// transaction never records an allocation without its owner. Chunks of
// deleted snapshots are reused only after the deletion is durable. The
// superblock is written as two copies with a sequence number; the newest
// valid copy wins, so a torn superblock write leaves the previous one.
//
// # On-disk format, version 1
//
// All integers are little endian. The store is addressed in 4 KiB blocks;
// data chunks start at a chunk-aligned block. Layout:
//
//	block 0, 1          superblock, two copies
//	block 2             state block (journaled root of mutable metadata)
//	block 3 ...         snapshot table    (tableBlocks)
//	                    journal           (journalBlocks)
//	                    data bitmap       (dbmBlocks)
//	                    metadata bitmap   (mbmBlocks)
//	                    metadata area     (metaBlocks: tree nodes)
//	dataStart (aligned) data chunks       (dataChunks × chunk size)
//
// Every metadata block (all blocks above except data chunks and journal
// images, which are copies of metadata blocks) starts with this header:
//
//	off len field
//	  0   4 magic 0x424E5343 ("CSNB")
//	  4   1 kind: 1 superblock, 2 state, 3 snapshot table, 4 data bitmap,
//	          5 metadata bitmap, 6 tree leaf, 7 tree branch,
//	          8 journal descriptor
//	  5   1 format version (1); a newer version is refused (ErrVersion)
//	  6   2 reserved, zero
//	  8   4 CRC32C (Castagnoli) of the whole 4096-byte block with this
//	          field taken as zero
//	 12   4 reserved, zero
//	 16   8 the block's own address (block number); a block read from any
//	          other address is reported as misplaced
//	 24   8 sequence: superblock write sequence, or the journal
//	          transaction that last wrote the block
//	 32  16 volume UUID; a block of another volume is reported as such
//
// Superblock (kind 1), after the header:
//
//	 48   4 chunk size in bytes
//	 52   4 block size (4096)
//	 56   8 origin size in bytes
//	 64   8 store size in bytes as formatted (a smaller device: ErrTruncated)
//	 72   8 creation time, Unix nanoseconds
//	 80   8 epoch: the server term last recorded (SetEpoch)
//	 88   4 flags: bit 0 clean (set by Close, cleared by Open)
//	 92   4 snapshot table capacity (slots)
//	 96   8 tableStart       104 8 tableBlocks
//	112   8 journalStart     120 8 journalBlocks
//	128   8 dbmStart         136 8 dbmBlocks
//	144   8 mbmStart         152 8 mbmBlocks
//	160   8 metaStart        168 8 metaBlocks
//	176   8 dataStart        184 8 dataChunks
//	192   8 journal tail position (block index in the journal)
//	200   8 journal tail sequence (the next transaction to replay)
//	208   8 state block address (2): the root of all journaled metadata
//	232  24 "csnap snapshot store" padded with NULs (second magic)
//	256   4 volume attributes length n (0..3072; 0: none)
//	260   n volume attributes (Engine.SetVolumeAttrs): bytes the engine
//	          keeps for its user, opaque to it; the snapshot server keeps
//	          there the shared state that outlives a restart of every node
//	          (snapstore/server, "Persisted shared state")
//
// The volume attributes are a compatible extension of version 1: stores
// made before have zeros there (no attributes); an engine that predates
// them ignores them, and drops them when it rewrites the superblock.
//
// Of the two copies the valid one with the higher sequence is current.
//
// State block (kind 2), journaled:
//
//	 48   8 tree root block
//	 56   4 tree height (1: the root is a leaf)
//	 60   4 next snapshot id
//	 64   8 generation (id of the newest snapshot created)
//	 72   8 pending difference counter (int64, see snaptable.go)
//	 80   8 free data chunks       88 8 free metadata blocks
//	 96   8 data allocation cursor 104 8 metadata allocation cursor
//	112   8 snapshots dropped for space (total)
//	120   1 reclamation pass active (0/1)
//	121   1 reclamation cursor set (0/1)
//	128   8 cursor chunk  136 4 cursor lo  140 1 cursor private (0/1)
//	144   8 number of exceptions in the tree
//
// Snapshot table block (kind 3): 31 entries of 128 bytes from offset 48;
// slot s lives in table block s/31 at entry s%31. A free slot is all zero.
//
//	  0   4 snapshot id (nonzero)
//	  4   1 state: 1 live, 2 deleted (queued for reclamation),
//	          3 in the current reclamation pass, 4 dropped (tombstone)
//	  5   1 flags: bit 0 writable, bit 1 dropped for space
//	  6   1 name length (1..63)
//	  7   1 reserved
//	  8   4 priority (int32; lowest dropped first)
//	 12   4 reserved
//	 16   8 creation time, Unix nanoseconds
//	 24   8 difference counter (int64; shared-exception count prefix sums)
//	 32   8 unique count: exceptions whose only user is this snapshot
//	 40  64 name (a-z 0-9 -), zero padded
//	104   8 private exception count
//	112  16 reserved
//
// Bitmap blocks (kinds 4 and 5): bits from offset 48, 32384 per block, bit
// i at byte i/8, bit i%8; 1 = in use. Data bitmap bit i is data chunk i;
// metadata bitmap bit i is block metaStart+i.
//
// Tree leaf (kind 6): from offset 48 a u16 entry count (max 168), 6 bytes
// reserved, then from offset 56 entries of 24 bytes sorted by key
// (chunk, lo, private):
//
//	 0   8 origin chunk
//	 8   4 lo: first snapshot id served
//	12   4 hi: last snapshot id served (== lo for a private exception)
//	16   8 bits 0-62: data chunk number in the store; bit 63: private
//
// Tree branch (kind 7): u16 child count at 48, entries of 24 bytes from 56:
//
//	 0   8 key chunk    8 4 key lo    12 1 key private (0/1)   13 3 zero
//	16   8 child block address
//
// Key i is a lower bound of child i's subtree (key 0 is unused by search)
// and every key of child i is below key i+1. All leaves are at the same
// depth.
//
// Journal descriptor (kind 8) at journal position p (block journalStart+p):
//
//	48   4 number of image blocks n (1..504)
//	52   4 CRC32C of the n image blocks, concatenated
//	56   4 number of data entries m (0 if the data was flushed first)
//	60   4 reserved, zero
//	64 8×n home block address of each image
//	 … 12×m data entries: u64 data chunk number, u32 CRC32C of the chunk
//
// followed by the n images in blocks p+1..p+n. Transactions are laid out
// back to back from the tail; one that would run past the end of the
// journal starts at position 0 instead, after the superblock tail has been
// moved to 0 (which requires every earlier home write to be durable).
// Recovery replays, from the superblock's tail, each transaction whose
// descriptor verifies, carries the expected sequence, and whose images
// match the CRC; it stops at the first that does not. If the last such
// transaction has data entries and a listed chunk does not match its CRC,
// that transaction was never acknowledged and is dropped too.
package snapstore
