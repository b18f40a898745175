package node

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/csnap/csnap/snapstore"
)

// Volume paths (SPEC.md "Security"): a volume's origin and store must lie
// under one of the node's volume_paths (-volume-paths), each a directory
// (anything below it) or a file or device (itself). Both sides are
// resolved first: the path's symbolic links (of its parent when it does
// not exist yet) and those of the allow-list entries, so
// /dev/disk/by-id/X listed allows the device it names, and a link under an
// allowed directory pointing outside it does not escape. Checked where a
// volume is created and again on every node that opens it from its
// definition in Consul (a definition written straight into KV gets no
// further than the check).

// errPathNotAllowed marks a path outside the allow-list.
var errPathNotAllowed = errors.New("not under this node's volume_paths")

// resolvePath makes p absolute-checked, clean and free of symbolic links.
func resolvePath(p string) (string, error) {
	if !filepath.IsAbs(p) {
		return "", fmt.Errorf("%q is not an absolute path", p)
	}
	p = filepath.Clean(p)
	r, err := filepath.EvalSymlinks(p)
	if err == nil {
		return r, nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return "", err
	}
	// Not there yet (volume create makes it): resolve its parent.
	dir, err := filepath.EvalSymlinks(filepath.Dir(p))
	if err != nil {
		return "", err
	}
	return filepath.Join(dir, filepath.Base(p)), nil
}

// checkVolumePath returns p resolved if it lies under one of roots.
func checkVolumePath(roots []string, what, p string) (string, error) {
	r, err := resolvePath(p)
	if err != nil {
		return "", fmt.Errorf("%s %s: %w", what, p, err)
	}
	if len(roots) == 0 {
		return "", fmt.Errorf("%s %s: %w (none configured: set volume_paths or -volume-paths)", what, p, errPathNotAllowed)
	}
	for _, root := range roots {
		rr, err := resolvePath(root)
		if err != nil {
			continue // a missing allow-list entry allows nothing
		}
		if r == rr || strings.HasPrefix(r, strings.TrimSuffix(rr, "/")+"/") {
			return r, nil
		}
	}
	return "", fmt.Errorf("%s %s (%s): %w %v", what, p, r, errPathNotAllowed, roots)
}

// checkVolumePaths checks a volume's origin and store against roots and
// against each other: never the same file.
func checkVolumePaths(roots []string, origin, store string) error {
	ro, err := checkVolumePath(roots, "origin", origin)
	if err != nil {
		return err
	}
	rs, err := checkVolumePath(roots, "store", store)
	if err != nil {
		return err
	}
	if ro == rs {
		return fmt.Errorf("origin and store are the same file %s", ro)
	}
	oi, err1 := os.Stat(ro)
	si, err2 := os.Stat(rs)
	if err1 == nil && err2 == nil && os.SameFile(oi, si) {
		return fmt.Errorf("origin %s and store %s are the same file", origin, store)
	}
	return nil
}

// probeSize is how much of a device's start and end blankCheck reads.
const probeSize = 1 << 20

// storeSignature is the csnap store superblock's second magic
// (snapstore/doc.go), found even in a store that no longer opens.
var storeSignature = []byte("csnap snapshot store")

// looksLikeStore reports whether the device starts with csnap's store
// superblock, intact or not.
func looksLikeStore(d snapstore.Device) bool {
	if _, err := snapstore.Inspect(d); err == nil {
		return true
	}
	b := make([]byte, 4096)
	if n, _ := d.ReadAt(b, 0); n >= 256 {
		return bytes.HasPrefix(b[232:], storeSignature) || bytes.HasPrefix(b, []byte("CSNB"))
	}
	return false
}

// usedData reports where a device that is to become a store holds data:
// any non-zero byte in its first or last MiB (partition tables, file
// system and RAID superblocks, LVM labels all live there). "" when blank.
func usedData(d snapstore.Device, size int64) (string, error) {
	b := make([]byte, min(probeSize, size))
	for _, off := range []int64{0, max(0, size-int64(len(b)))} {
		if _, err := d.ReadAt(b, off); err != nil {
			return "", fmt.Errorf("reading at %d: %w", off, err)
		}
		for i, c := range b {
			if c != 0 {
				return fmt.Sprintf("non-zero bytes at offset %d", off+int64(i)), nil
			}
		}
	}
	return "", nil
}
