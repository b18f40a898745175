package vm

import (
	"bytes"
	"crypto/sha256"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestParseMarker(t *testing.T) {
	m, ok := parseMarker("junk @@VM DISK id=a dev=sda ro=0 vendor=IET t=12.34\r", time.Second)
	if !ok || m.Event != "DISK" || m.Get("dev") != "sda" || m.Get("ro") != "0" || m.Guest != 12.34 ||
		m.Text != "id=a dev=sda ro=0 vendor=IET" || len(m.Fields) != 4 {
		t.Fatalf("%+v", m)
	}
	m, ok = parseMarker("@@VM FAIL step=3 op=login login to x rc=24 t=1.5", 0)
	if !ok || m.Event != "FAIL" || m.Text != "step=3 op=login login to x rc=24" || m.Get("rc") != "24" {
		t.Fatalf("%+v", m)
	}
	if _, ok := parseMarker("[    1.2] sd 0:0:0:1: Attached", 0); ok {
		t.Fatal("not a marker")
	}
}

func TestKernelArgs(t *testing.T) {
	o := Options{
		Steps:        []Step{Login("a", "iqn.2024-01.x:y", Portal(3260)).With("lun", "1"), Pause("p", 90*time.Second)},
		CHAP:         &CHAP{"u", "secret-secret"},
		MutualCHAP:   &CHAP{"t", "secret-target"},
		Digest:       "CRC32C",
		NodeSettings: []string{"node.conn[0].timeo.noop_out_interval=0"},
		Lenient:      true,
	}
	got, err := kernelArgs(o)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		" vm.s=login,id=a,iqn=iqn.2024-01.x:y,portal=10.0.2.2:3260,lun=1 ",
		" vm.s=pause,name=p,timeout=90",
		" vm.chap_user=u vm.chap_pass=secret-secret vm.chap_in_user=t vm.chap_in_pass=secret-target ",
		" vm.digest=CRC32C ", " vm.set=node.conn[0].timeo.noop_out_interval=0 ", " vm.strict=0",
	} {
		if !strings.Contains(got+" ", want) {
			t.Errorf("missing %q in %q", want, got)
		}
	}
	for _, bad := range []Options{
		{Steps: []Step{Write("a", "has space", 1, "")}},
		{Steps: []Step{Write("a", "x,y", 1, "")}},
		{Steps: []Step{Login("a", "iqn", "p")}, CHAP: &CHAP{"u", "a b"}},
		{Steps: []Step{Login("a", "iqn", "p")}, MutualCHAP: &CHAP{"u", "p"}},
		{Steps: []Step{{Op: "Bad"}}},
		{},
		{Steps: []Step{Mkfs(strings.Repeat("x", 2100))}},
	} {
		if _, err := kernelArgs(bad); err == nil {
			t.Errorf("no error for %+v", bad)
		}
	}
}

func TestInitrdLayout(t *testing.T) {
	dir := t.TempDir()
	base := filepath.Join(dir, "base")
	if err := os.WriteFile(base, []byte("\x1f\x8bBASE"), 0o644); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "initrd")
	if err := writeInitrd(out, base, []byte("#!/bin/sh\n")); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	i := bytes.Index(b, []byte("\x1f\x8bBASE"))
	if !bytes.HasPrefix(b, []byte("070701")) || i <= 0 || i%512 != 0 || i+6 != len(b) {
		t.Fatalf("layout: base at %d of %d", i, len(b))
	}
	if _, err := exec.LookPath("cpio"); err == nil {
		cmd := exec.Command("cpio", "-t", "--quiet")
		cmd.Stdin = bytes.NewReader(b[:i])
		list, err := cmd.Output()
		if err != nil || string(list) != "dev\ndev/console\ninit\n" {
			t.Fatalf("cpio -t: %v %q", err, list)
		}
	}
}

// TestContentMatchesGuest runs the guest's gen() with the guest's busybox
// and compares it with Content and RawContent.
func TestContentMatchesGuest(t *testing.T) {
	bb := filepath.Join(defaultCache(), "busybox", "bin", "busybox")
	if _, err := os.Stat(bb); err != nil {
		if testing.Short() {
			t.Skip("no busybox in the cache (tests/vm/setup.sh)")
		}
		t.Fatalf("%v: run bash tests/vm/setup.sh", err)
	}
	gen := regexp.MustCompile(`(?ms)^gen\(\) \{.*?^\}\n`).Find(initScript)
	if gen == nil {
		t.Fatal("no gen() in guest/init.sh")
	}
	for _, c := range []struct {
		tag  string
		size int
		want []byte
	}{
		{"hello.txt@basic", 5000, Content("hello.txt", "basic", 5000)},
		{"dir/a.bin@7", 1 << 20, Content("dir/a.bin", "7", 1<<20)},
		{"x@0", 511, Content("x", "", 511)},
		{"raw@z@16", 1 << 20, RawContent(16, 1, "z")},
	} {
		cmd := exec.Command(bb, "sh", "-c", string(gen)+`gen "$0" "$1"`, c.tag, strconv.Itoa(c.size))
		got, err := cmd.Output()
		if err != nil {
			t.Fatal(err)
		}
		if sha256.Sum256(got) != sha256.Sum256(c.want) {
			t.Errorf("%s %d: guest and Content differ (%d vs %d bytes)", c.tag, c.size, len(got), len(c.want))
		}
	}
}

// Two paths of one csnap LU (nodes 2 and 1 of a cluster, as a guest read
// them): the LU designator (NAA) and the LU's SCSI name string match, the
// target port ones differ.
func TestLUDesignators(t *testing.T) {
	const (
		pa = "00830064010300106a00000a729f5c11e75d4b24fd1f09d85398002069716e2e323032362d31312e696f2e63736e61703a762c742c307830303032005194000400000002519500040000000253a8001869716e2e323032362d31312e696f2e63736e61703a760000"
		pb = "00830064010300106a00000a729f5c11e75d4b24fd1f09d85398002069716e2e323032362d31312e696f2e63736e61703a762c742c307830303031005194000400000001519500040000000153a8001869716e2e323032362d31312e696f2e63736e61703a760000"
	)
	la, err := LUDesignators(pa)
	if err != nil {
		t.Fatal(err)
	}
	lb, err := LUDesignators(pb)
	if err != nil {
		t.Fatal(err)
	}
	if len(la) != 1 || la[0] != "010300106a00000a729f5c11e75d4b24fd1f09d8" || strings.Join(la, "") != strings.Join(lb, "") {
		t.Fatalf("LU designators: %v and %v", la, lb)
	}
	for _, bad := range []string{"zz", "0080", "008300080103", "00830004010300106a"} {
		if _, err := LUDesignators(bad); err == nil {
			t.Errorf("LUDesignators(%q) accepted", bad)
		}
	}
}
