// Package stream is csnap's snapshot send/receive stream: a self-checking,
// resumable byte stream carrying one snapshot of a volume (a full stream)
// or the difference between two snapshots (an incremental stream), made
// by an Encoder from the engine's changed-block query (snapstore
// Engine.Diff) and the snapshot's data, and read back by a Decoder that
// verifies every record before handing it out and the whole stream before
// reporting success.
//
// # Format, version 1
//
// All integers are little endian. A stream is a header followed by
// records; the last record is an end record, after which the stream ends.
//
// Header (HeaderSize = 212 bytes in version 1):
//
//	off len field
//	  0   8 magic "CSNAPSTR"
//	  8   2 version (1); a newer version is refused (ErrVersion)
//	 10   2 flags, zero (reserved)
//	 12   4 header length h in bytes, this field's header included (212 in
//	        version 1; a reader accepts 212..MaxHeaderSize and ignores the
//	        bytes between 208 and h-4, so fields can be added)
//	 16  16 source volume UUID
//	 32   4 chunk size in bytes (a power of two, 4 KiB .. 1 MiB)
//	 36   4 reserved, zero
//	 40   8 volume size in bytes (> 0)
//	 48  80 FROM snapshot identity (all zero in a full stream)
//	128  80 TO snapshot identity
//	h-4   4 CRC32C (Castagnoli) of bytes [0, h-4)
//
// A snapshot identity (80 bytes):
//
//	 0   4 snapshot id on the source (nonzero; 0 in FROM: none)
//	 4   1 name length n (0..63)
//	 5   3 reserved, zero
//	 8   8 creation time, Unix nanoseconds
//	16  64 name (n bytes), zero padded
//
// Record:
//
//	  0   1 tag
//	  1   3 reserved, zero
//	  4   4 payload length L (at most MaxPayload = 8 + 1 MiB)
//	  8   L payload
//	8+L   4 CRC32C of bytes [0, 8+L) of the record
//
// Tags:
//
//	1 data    payload: u64 volume offset, then the bytes (1 .. 1 MiB).
//	          A data record never crosses a multiple of RecordSpan (1 MiB)
//	          in the volume.
//	2 zeros   payload: u64 volume offset, u64 length (> 0): the range
//	          reads as zeros in TO.
//	3 end     payload (48 bytes): u64 number of records before it (resume
//	          records excepted), u64 data bytes carried, 32 bytes SHA-256
//	          of every byte of the stream before the end record (header
//	          and records, resume records excepted).
//	4 resume  payload: a resume token (below); allowed only directly
//	          after the header: the records that follow continue the
//	          stream the token describes.
//	0x80..    tags with bit 7 set are optional: a reader that does not
//	          know one verifies its CRC and skips it (it is counted and
//	          hashed like any record). An unknown tag without bit 7 is
//	          refused (ErrUnknownTag).
//
// Data and zeros records are in increasing volume offset order and do not
// overlap; each lies inside [0, volume size). In a full stream they cover
// the whole volume (ranges that read as zero are zeros records: a receiver
// replaces the whole content); in an incremental stream they cover the
// ranges where TO may differ from FROM (Engine.Diff) and nothing else, a
// changed chunk that reads as zero being a zeros record. Zeros records are
// maximal (a zeros record is followed by a data record or the end), so
// the records from a given record boundary on are the same whenever the
// stream is made from there: that is what makes resuming possible.
//
// # Resume tokens
//
// After an interrupted transfer the receiver knows the last record it
// verified and applied. Decoder.Token describes that point:
//
//	  0   4 magic "CSRT"
//	  4   1 version (1)
//	  5   3 reserved, zero
//	  8  32 SHA-256 of the stream's header bytes: which stream (volume,
//	        chunk size, size, FROM and TO ids, names, creation times)
//	 40   8 stream position: the byte offset in the original stream just
//	        after the last complete record
//	 48   8 volume offset: where that record ended in the volume (the
//	        sender resumes the changed extents there)
//	 56   8 records so far         64 8 data bytes so far
//	 72   2 length m of the hash state (at most 256)
//	 74   m SHA-256 state over the stream's first "stream position" bytes
//	        (encoding.BinaryMarshaler form of crypto/sha256)
//	74+m  4 CRC32C of bytes [0, 74+m)
//
// In text (String, ParseToken) it is "csrt1-" followed by the bytes in
// unpadded URL-safe base64. A resumed stream is the same header, a resume
// record carrying the token, then the original stream's records from the
// token's position on; its end record's SHA-256 is the original stream's.
// The decoder checks that the token is for this stream (the header hash)
// before using it, and the receiver checks that the token's position is
// what it has applied. The checksums catch corruption, not an adversary:
// authenticity comes from the channel (TLS, the API token).
package stream
