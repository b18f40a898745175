package vm

import (
	"bytes"
	"fmt"
	"strconv"
	"strings"
)

// Content returns the bytes the guest's write step puts in a file written
// with Write(id, path, size, seed): 512-byte sectors, each "PATH@SEED
// %016d " (the sector number, from 0) padded with dots to 511 bytes and a
// newline, cut to size. Every sector of every file is distinct, so data
// served from the wrong place or from the wrong point in time shows up. The
// host can compare a file read from a backing store (for example with
// `debugfs -R 'cat /PATH' IMAGE`) against it.
func Content(path, seed string, size int) []byte {
	if seed == "" {
		seed = "0"
	}
	tag := path + "@" + seed
	dots := strings.Repeat(".", 512)
	var b bytes.Buffer
	b.Grow(size + 512)
	for i := 0; b.Len() < size; i++ {
		h := fmt.Sprintf("%s %016d ", tag, i)
		b.WriteString(h)
		if n := 511 - len(h); n > 0 {
			b.WriteString(dots[:n])
		}
		b.WriteByte('\n')
	}
	return b.Bytes()[:size]
}

// RawContent returns what RawIO(id, offMiB, mb, seed) writes to the disk
// at offMiB.
func RawContent(offMiB, mb int, seed string) []byte {
	if seed == "" {
		seed = "0"
	}
	return Content("raw", seed+"@"+strconv.Itoa(offMiB), mb<<20)
}
