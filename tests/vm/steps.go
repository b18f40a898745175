package vm

import (
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Step is one action of the guest's script. It travels to the guest on the
// kernel command line as "vm.s=OP,key=value,...", so keys and values can't
// contain spaces, commas or quotes. Build steps with the functions below;
// With adds an argument (for example Login(...).With("lun", "1")).
type Step struct {
	Op   string
	Args []Arg
}

// Arg is a key=value argument of a Step.
type Arg struct{ Key, Value string }

// With returns a copy of s with one more argument.
func (s Step) With(key, value string) Step {
	args := make([]Arg, len(s.Args), len(s.Args)+1)
	copy(args, s.Args)
	s.Args = append(args, Arg{key, value})
	return s
}

// ExpectFail marks a Discover or Login step as expected to fail: the step
// passes if and only if the operation is refused (wrong CHAP secret,
// unknown IQN, ...), and the run goes on.
func (s Step) ExpectFail() Step { return s.With("fail", "1") }

// String renders the step as the guest reads it.
func (s Step) String() string {
	var b strings.Builder
	b.WriteString(s.Op)
	for _, a := range s.Args {
		b.WriteString(",")
		b.WriteString(a.Key)
		b.WriteString("=")
		b.WriteString(a.Value)
	}
	return b.String()
}

func (s Step) validate() error {
	if !isWord(s.Op, false) {
		return fmt.Errorf("vm: bad step op %q", s.Op)
	}
	for _, a := range s.Args {
		if !isWord(a.Key, false) || !isWord(a.Value, true) {
			return fmt.Errorf("vm: step %s: bad argument %q=%q (no spaces, commas, quotes or backslashes)", s.Op, a.Key, a.Value)
		}
	}
	return nil
}

// isWord: keys are [a-z0-9_]; values are any printable ASCII except
// space, comma, quotes and backslash (the guest's awk would interpret it).
func isWord(s string, value bool) bool {
	if s == "" {
		return value
	}
	for _, r := range s {
		switch {
		case r >= 'a' && r <= 'z', r >= '0' && r <= '9', r == '_':
		case !value:
			return false
		case r <= ' ' || r > '~' || r == ',' || r == '"' || r == '\'' || r == '\\':
			return false
		}
	}
	return true
}

func step(op string, kv ...string) Step {
	s := Step{Op: op}
	for i := 0; i+1 < len(kv); i += 2 {
		s.Args = append(s.Args, Arg{kv[i], kv[i+1]})
	}
	return s
}

// Discover runs a SendTargets discovery on portal and prints one TARGET
// marker per target in the reply (Result.Targets). Each IQN in expect must
// be in the reply. .With("auth", "1") authenticates the discovery session
// with the run's CHAP settings (also Options.DiscoveryCHAP).
func Discover(portal string, expect ...string) Step {
	s := step("discover", "portal", portal)
	if len(expect) > 0 {
		s = s.With("expect", strings.Join(expect, "+"))
	}
	return s
}

// Login logs in to iqn through portal and names the session's disk id.
// The disk is the session's first block device (lowest LUN) unless
// .With("lun", "N"). It prints LOGIN, DISK, IDENT (wwid, VPD 0x80/0x83)
// and PARAM (negotiated parameters) markers. Per-login CHAP overrides:
// .With("user"/"pass"/"in_user"/"in_pass", ...); an empty "user" disables
// CHAP for this login. .With("replacement", "N") sets the session's
// recovery timeout (default 15 s), after which I/O on a dead path fails.
func Login(id, iqn, portal string) Step {
	return step("login", "id", id, "iqn", iqn, "portal", portal)
}

// Logout ends the session of disk id (which must not be mounted).
func Logout(id string) Step { return step("logout", "id", id) }

// Mkfs makes an ext4 file system on disk id (no lazy init).
func Mkfs(id string) Step { return step("mkfs", "id", id) }

// Mount mounts disk id read-write at /mnt/ID.
func Mount(id string) Step { return step("mount", "id", id) }

// MountRO mounts disk id read-only. Extra mount options: .With("opts", "noload+norecovery").
func MountRO(id string) Step { return step("mount", "id", id, "ro", "1") }

// Umount unmounts disk id.
func Umount(id string) Step { return step("umount", "id", id) }

// Write writes size bytes of Content(path, seed, size) to path (relative to
// the mount of id, parent directories created) and fsyncs it.
func Write(id, path string, size int, seed string) Step {
	if seed == "" {
		seed = "0"
	}
	return step("write", "id", id, "path", path, "size", strconv.Itoa(size), "seed", seed)
}

// WriteRandom writes size random bytes to path and fsyncs it; the WROTE
// marker carries the sha256.
func WriteRandom(id, path string, size int) Step {
	return step("rand", "id", id, "path", path, "size", strconv.Itoa(size))
}

// Check verifies that path holds exactly Content(path, seed, size).
func Check(id, path string, size int, seed string) Step {
	if seed == "" {
		seed = "0"
	}
	return step("check", "id", id, "path", path, "size", strconv.Itoa(size), "seed", seed)
}

// Remove deletes path (recursively) and syncs.
func Remove(id, path string) Step { return step("rm", "id", id, "path", path) }

// Mkdir creates the directory path.
func Mkdir(id, path string) Step { return step("mkdir", "id", id, "path", path) }

// Sync runs sync(1).
func Sync() Step { return step("sync") }

// Manifest records the mounted tree of id (type, size, sha256 and path of
// every entry) under name, and prints it as ENTRY markers.
func Manifest(id, name string) Step { return step("manifest", "id", id, "name", name) }

// Verify fails unless the mounted tree of id is exactly the one recorded
// by Manifest(_, name): same entries, no more, no fewer, same contents.
func Verify(id, name string) Step { return step("verify", "id", id, "name", name) }

// Fsck runs e2fsck -fn on disk id, which must not be mounted.
func Fsck(id string) Step { return step("fsck", "id", id) }

// Freeze freezes the file system mounted from id (fsfreeze -f): the journal
// is flushed and the on-disk image is clean and stable until Thaw, which
// makes it the moment to take a snapshot.
func Freeze(id string) Step { return step("freeze", "id", id) }

// Thaw undoes Freeze.
func Thaw(id string) Step { return step("thaw", "id", id) }

// Pause prints "PAUSE name=NAME" and waits until the host resumes it
// (Guest.Resume, or Options.OnPause in Run). The guest fails the run if
// no resume comes within timeout (0: 300 s).
func Pause(name string, timeout time.Duration) Step {
	s := step("pause", "name", name)
	if timeout > 0 {
		s = s.With("timeout", strconv.Itoa(int((timeout+time.Second-1)/time.Second)))
	}
	return s
}

// Sleep pauses the guest for d (rounded to ms).
func Sleep(d time.Duration) Step {
	return step("sleep", "sec", strconv.FormatFloat(d.Seconds(), 'f', 3, 64))
}

// SameIdentity fails unless all the disks have the same logical-unit
// designators in VPD page 0x83 (device identification) and the same wwid,
// as dm-multipath requires of the paths of one LU. The page's target port
// designators (relative port, port group, port name) differ from portal
// to portal by design and are not compared.
func SameIdentity(ids ...string) Step { return step("sameid", "ids", strings.Join(ids, "+")) }

// RawIO writes mb MiB of deterministic data to the raw disk id at offMiB
// with O_DIRECT and reads it back (O_DIRECT) to compare. The disk must not
// be mounted.
func RawIO(id string, offMiB, mb int, seed string) Step {
	if seed == "" {
		seed = "0"
	}
	return step("rawio", "id", id, "off", strconv.Itoa(offMiB), "mb", strconv.Itoa(mb), "seed", seed)
}

// KernelErrors switches the guest's kernel log policy for the following
// steps: strict (SCSI/iSCSI/ext4 error lines fail the run) or not (they
// are reported as KERNEL_ERR/KERNEL_WARN markers only). Use it around a
// step that provokes errors on purpose, such as killing a path.
func KernelErrors(strict bool) Step {
	if strict {
		return step("kerr", "mode", "strict")
	}
	return step("kerr", "mode", "warn")
}

// Multipath creates a dm-multipath device id over the disks of paths (ids
// of logins to the same LU through different portals), round-robin, and
// without queue_if_no_path (I/O fails once every path is gone). The device
// is then used like a disk: Mkfs(id), Mount(id), RawIO(id, ...). Failing
// paths need KernelErrors(false) around the steps that run into it, and a
// short recovery: Login(...).With("replacement", "5") (seconds).
func Multipath(id string, paths ...string) Step {
	return step("mpath", "id", id, "ids", strings.Join(paths, "+"))
}

// MultipathStatus prints "MPSTATUS id= active=N failed=N" and fails unless
// the counts are active and failed (a negative count is not checked).
func MultipathStatus(id string, active, failed int) Step {
	s := step("mpstatus", "id", id)
	if active >= 0 {
		s = s.With("active", strconv.Itoa(active))
	}
	if failed >= 0 {
		s = s.With("failed", strconv.Itoa(failed))
	}
	return s
}

// MultipathRemove removes the dm-multipath device id (not mounted).
func MultipathRemove(id string) Step { return step("mpremove", "id", id) }

// SetWriteCache turns the write cache of disk id on (WCE=1, "write back")
// or off (WCE=0, "write through") through the kernel: writing sd's
// cache_type makes it send MODE SELECT with the Caching page, and read the
// page back. It fails unless the page then says what was set.
func SetWriteCache(id string, on bool) Step { return step("wcache", "id", id, "set", onOff(on)) }

// WantWriteCache has the kernel read the mode pages of disk id again (a
// device rescan: MODE SENSE of the Caching page) and fails unless its
// write cache is on (WCE=1) or off, as asked. A MODE SENSE that fails (sd
// then assumes write through) fails the step too.
func WantWriteCache(id string, on bool) Step { return step("wcache", "id", id, "want", onOff(on)) }

func onOff(on bool) string {
	if on {
		return "on"
	}
	return "off"
}
