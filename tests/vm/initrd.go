package vm

import (
	"bytes"
	"fmt"
	"io"
	"os"
)

// newc is a minimal writer of the "newc" cpio format that the kernel
// unpacks into its initramfs.
type newc struct {
	buf bytes.Buffer
	ino int
}

const (
	modeDir  = 0o040000
	modeFile = 0o100000
	modeChr  = 0o020000
)

func (c *newc) entry(name string, mode uint32, rdevMajor, rdevMinor int, data []byte) {
	c.ino++
	nlink := 1
	if mode&0o170000 == modeDir {
		nlink = 2
	}
	fmt.Fprintf(&c.buf, "070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X",
		c.ino, mode, 0, 0, nlink, 0, len(data), 0, 0, rdevMajor, rdevMinor, len(name)+1, 0)
	c.buf.WriteString(name)
	c.buf.WriteByte(0)
	c.pad(4)
	c.buf.Write(data)
	c.pad(4)
}

func (c *newc) pad(n int) {
	for c.buf.Len()%n != 0 {
		c.buf.WriteByte(0)
	}
}

// bytes finishes the archive. It is padded to 512 bytes so that a
// compressed archive can follow it (the kernel wants the next one aligned).
func (c *newc) bytes() []byte {
	c.entry("TRAILER!!!", 0, 0, 0, nil)
	c.pad(512)
	return c.buf.Bytes()
}

// writeInitrd writes the guest's initrd to dst: a small uncompressed cpio
// holding /init (the embedded guest/init.sh) followed by the prebuilt base
// archive from setup.sh. The kernel unpacks concatenated archives in order,
// the same way early-microcode initrds work.
func writeInitrd(dst, base string, init []byte) error {
	var c newc
	c.entry("dev", modeDir|0o755, 0, 0, nil)
	c.entry("dev/console", modeChr|0o600, 5, 1, nil)
	c.entry("init", modeFile|0o755, 0, 0, init)
	in, err := os.Open(base)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	if _, err := out.Write(c.bytes()); err != nil {
		out.Close()
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}
