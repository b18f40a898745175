// Package vm boots a real Linux iSCSI initiator (Debian kernel, open-iscsi's
// iscsid and iscsiadm) under qemu and runs a script of steps in it against a
// target listening on this host's loopback. The guest reaches the host as
// 10.0.2.2 through qemu's user networking, so a target under test only has to
// listen on 127.0.0.1.
//
// Setup: tests/vm/setup.sh (once per machine; quick when done) installs
// the packages and builds the kernel and base initramfs into tests/vm/.cache
// (or $CSNAP_VM_CACHE). The guest's /init is guest/init.sh, embedded in this
// package and appended to the initramfs at every run.
//
// Typical use:
//
//	res, err := vm.Run(ctx, vm.Options{
//		Steps: []vm.Step{
//			vm.Discover(vm.Portal(port), iqn),
//			vm.Login("a", iqn, vm.Portal(port)),
//			vm.Mkfs("a"), vm.Mount("a"),
//			vm.Write("a", "hello.txt", 4096, "1"),
//			vm.Umount("a"), vm.Logout("a"),
//		},
//		Logf: t.Logf,
//	})
//
// Run returns an error unless the guest reported PASS. For interactive
// scenarios (a snapshot taken on the host while the guest is paused) use
// Options.OnPause, or Start, WaitPause and Resume on a Guest.
package vm

import (
	"bufio"
	"context"
	_ "embed"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

//go:embed guest/init.sh
var initScript []byte

// HostAddr is the host's loopback as the guest sees it.
const HostAddr = "10.0.2.2"

// Portal returns the guest-side portal address of a target listening on the
// host's loopback at port.
func Portal(port int) string { return HostAddr + ":" + strconv.Itoa(port) }

// ErrNotSetUp means setup.sh has not been run for the cache directory (or
// qemu is missing).
var ErrNotSetUp = errors.New("vm: the VM test environment is not set up (run tests/vm/setup.sh)")

// CHAP holds one direction's CHAP credentials. open-iscsi and most targets
// want secrets of 12 to 16 characters or more.
type CHAP struct {
	User, Secret string
}

// Options configure a guest run. Only Steps is required.
type Options struct {
	// Steps is the guest's script, run in order.
	Steps []Step

	// Initiator is the guest's initiator IQN
	// (default iqn.2024-01.io.csnap.test:vm-guest).
	Initiator string
	// CHAP: the initiator authenticates to the target (one-way CHAP).
	CHAP *CHAP
	// MutualCHAP: with CHAP set, the target also authenticates to the
	// initiator with these credentials.
	MutualCHAP *CHAP
	// DiscoveryCHAP also authenticates SendTargets discovery sessions.
	DiscoveryCHAP bool
	// Digest, if set, is both the HeaderDigest and the DataDigest the
	// initiator offers: "CRC32C" insists on digests, "CRC32C,None" or
	// "None" leave the choice to the target.
	Digest string
	// NodeSettings are extra iscsiadm node settings ("key=value") applied
	// before each login, e.g. "node.session.cmds_max=16".
	NodeSettings []string
	// Lenient: SCSI/iSCSI/ext4 errors in the guest's kernel log are
	// reported (KERNEL_ERR markers, Result.KernelErrors) but do not fail
	// the run. Default: they fail it at the step after which they appear.
	Lenient bool
	// ISCSIDDebug is iscsid's -d level (0-8); its log is printed on failure.
	ISCSIDDebug int

	// Timeout is the hard limit for the whole VM run; qemu is killed when
	// it expires (default 5 minutes).
	Timeout time.Duration
	// OnPause is called by Run for each PAUSE marker, with the guest
	// paused; the guest resumes when it returns nil. An error aborts the
	// run (qemu is killed). Nil: pauses are resumed at once.
	OnPause func(ctx context.Context, name string) error

	// Cache is the directory setup.sh prepared (default $CSNAP_VM_CACHE,
	// else tests/vm/.cache next to this package's source).
	Cache string
	// LogPath, if set, receives the whole console with host timestamps.
	LogPath string
	// Logf, if set, gets every marker line as it arrives (e.g. t.Logf).
	Logf func(format string, args ...any)
	// MemoryMiB (default 512) and CPUs (default 1) of the guest.
	MemoryMiB, CPUs int
	// KernelArgs are appended to the kernel command line
	// (e.g. "loglevel=7" to see kernel messages on the console).
	KernelArgs []string
}

// DefaultTimeout is the hard limit of a run when Options.Timeout is 0.
const DefaultTimeout = 5 * time.Minute

// Marker is one "@@VM EVENT ..." line from the guest.
type Marker struct {
	Event  string
	Text   string            // everything after the event, without t=
	Fields []string          // Text split into words
	KV     map[string]string // the key=value words of Text
	Guest  float64           // guest uptime (s) when printed
	Host   time.Duration     // since qemu was started
}

// Get returns the value of key, or "".
func (m Marker) Get(key string) string { return m.KV[key] }

func (m Marker) String() string {
	return fmt.Sprintf("[%6.2fs] %s %s", m.Host.Seconds(), m.Event, m.Text)
}

func parseMarker(line string, host time.Duration) (Marker, bool) {
	i := strings.Index(line, "@@VM ")
	if i < 0 {
		return Marker{}, false
	}
	words := strings.Fields(line[i+len("@@VM "):])
	if len(words) == 0 {
		return Marker{}, false
	}
	m := Marker{Event: words[0], KV: map[string]string{}, Host: host}
	words = words[1:]
	if n := len(words); n > 0 && strings.HasPrefix(words[n-1], "t=") {
		m.Guest, _ = strconv.ParseFloat(words[n-1][2:], 64)
		words = words[:n-1]
	}
	m.Fields = words
	m.Text = strings.Join(words, " ")
	for _, w := range words {
		if k, v, ok := strings.Cut(w, "="); ok && k != "" {
			m.KV[k] = v
		}
	}
	return m, true
}

// config is what setup.sh left in CACHE/vm.conf.
type config struct {
	kernel, initrd, kver string
}

func defaultCache() string {
	if d := os.Getenv("CSNAP_VM_CACHE"); d != "" {
		return d
	}
	if _, file, _, ok := runtime.Caller(0); ok && filepath.IsAbs(file) {
		return filepath.Join(filepath.Dir(file), ".cache")
	}
	// -trimpath: look for the repository from the working directory up
	if dir, err := os.Getwd(); err == nil {
		for ; ; dir = filepath.Dir(dir) {
			if _, err := os.Stat(filepath.Join(dir, "tests", "vm", "setup.sh")); err == nil {
				return filepath.Join(dir, "tests", "vm", ".cache")
			}
			if dir == filepath.Dir(dir) {
				break
			}
		}
	}
	return filepath.Join("tests", "vm", ".cache")
}

func loadConfig(cache string) (config, error) {
	if cache == "" {
		cache = defaultCache()
	}
	b, err := os.ReadFile(filepath.Join(cache, "vm.conf"))
	if err != nil {
		return config{}, fmt.Errorf("%w: %v", ErrNotSetUp, err)
	}
	var c config
	for _, line := range strings.Split(string(b), "\n") {
		k, v, _ := strings.Cut(line, "=")
		switch k {
		case "KERNEL":
			c.kernel = filepath.Join(cache, v)
		case "INITRD":
			c.initrd = filepath.Join(cache, v)
		case "KVER":
			c.kver = v
		}
	}
	for _, f := range []string{c.kernel, c.initrd} {
		if st, err := os.Stat(f); err != nil || st.Size() == 0 {
			return config{}, fmt.Errorf("%w: missing artifact %q", ErrNotSetUp, f)
		}
	}
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		return config{}, fmt.Errorf("%w: %v", ErrNotSetUp, err)
	}
	return c, nil
}

// Ready reports whether a VM can be booted with the given cache directory
// ("" for the default): nil, or an error wrapping ErrNotSetUp that says
// what is missing.
func Ready(cache string) error {
	_, err := loadConfig(cache)
	return err
}

// kernelArgs builds the kernel command line that drives the guest.
func kernelArgs(o Options) (string, error) {
	// loglevel=1: kernel messages stay out of the markers (the guest reads
	// dmesg itself); log_buf_len: the per-step dmesg scan counts lines, so
	// the ring must not wrap
	args := []string{"console=ttyS0", "panic=-1", "loglevel=1", "log_buf_len=4M", "mitigations=off", "vm.host=" + HostAddr}
	add := func(k, v string) error {
		if !isWord(v, true) {
			return fmt.Errorf("vm: option %s=%q: no spaces, commas, quotes or backslashes allowed", k, v)
		}
		args = append(args, k+"="+v)
		return nil
	}
	var errs []error
	if o.Initiator != "" {
		errs = append(errs, add("vm.initiator", o.Initiator))
	}
	if o.CHAP != nil {
		errs = append(errs, add("vm.chap_user", o.CHAP.User), add("vm.chap_pass", o.CHAP.Secret))
		if o.MutualCHAP != nil {
			errs = append(errs, add("vm.chap_in_user", o.MutualCHAP.User), add("vm.chap_in_pass", o.MutualCHAP.Secret))
		}
	} else if o.MutualCHAP != nil {
		return "", errors.New("vm: MutualCHAP needs CHAP")
	}
	if o.DiscoveryCHAP {
		args = append(args, "vm.disc_chap=1")
	}
	if o.Digest != "" {
		errs = append(errs, add("vm.digest", o.Digest))
	}
	for _, s := range o.NodeSettings {
		if !strings.Contains(s, "=") {
			return "", fmt.Errorf("vm: node setting %q is not key=value", s)
		}
		errs = append(errs, add("vm.set", s))
	}
	if o.Lenient {
		args = append(args, "vm.strict=0")
	}
	if o.ISCSIDDebug > 0 {
		args = append(args, "vm.debug="+strconv.Itoa(o.ISCSIDDebug))
	}
	if len(o.Steps) == 0 {
		return "", errors.New("vm: no steps")
	}
	for _, s := range o.Steps {
		if err := s.validate(); err != nil {
			return "", err
		}
		args = append(args, "vm.s="+s.String())
	}
	for _, a := range o.KernelArgs {
		if strings.ContainsAny(a, " \t\n\"") {
			return "", fmt.Errorf("vm: kernel arg %q contains spaces or quotes", a)
		}
		args = append(args, a)
	}
	if err := errors.Join(errs...); err != nil {
		return "", err
	}
	cmdline := strings.Join(args, " ")
	// x86 COMMAND_LINE_SIZE is 2048 including the terminating NUL
	if len(cmdline) > 2000 {
		return "", fmt.Errorf("vm: kernel command line is %d bytes, the limit is about 2000: shorten the script (ids, IQNs, paths)", len(cmdline))
	}
	return cmdline, nil
}

// Guest is a running VM. Always Close it (it is safe to Close twice).
type Guest struct {
	cmd     *exec.Cmd
	stdin   io.WriteCloser
	workDir string
	start   time.Time
	logf    func(string, ...any)
	timer   *time.Timer
	stop    func() bool // detaches the context watcher

	mu       sync.Mutex
	changed  chan struct{} // closed and replaced on every new marker and at exit
	markers  []Marker
	console  []string // last consoleKeep lines
	exited   bool
	exitErr  error
	killedBy string // why the harness killed qemu, if it did
	done     chan struct{}
}

const consoleKeep = 400

// Start boots a guest running o.Steps. The guest runs until its script ends,
// the context is cancelled, or o.Timeout expires; in the last two cases
// qemu is killed.
func Start(ctx context.Context, o Options) (*Guest, error) {
	cfg, err := loadConfig(o.Cache)
	if err != nil {
		return nil, err
	}
	cmdline, err := kernelArgs(o)
	if err != nil {
		return nil, err
	}
	work, err := os.MkdirTemp("", "csnap-vm-")
	if err != nil {
		return nil, err
	}
	initrd := filepath.Join(work, "initrd")
	if err := writeInitrd(initrd, cfg.initrd, initScript); err != nil {
		os.RemoveAll(work)
		return nil, fmt.Errorf("vm: initrd: %w", err)
	}
	mem, cpus := o.MemoryMiB, o.CPUs
	if mem == 0 {
		mem = 512
	}
	if cpus == 0 {
		cpus = 1
	}
	args := []string{}
	// Software emulation (TCG) unless CSNAP_VM_KVM=1: on the machines
	// this project runs on, /dev/kvm may exist while KVM with -cpu max
	// aborts ("failed to set MSR 0x10a", nested virtualization), and a
	// test must not depend on the host's virtualization.
	if os.Getenv("CSNAP_VM_KVM") == "1" {
		if f, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0); err == nil {
			f.Close()
			args = append(args, "-accel", "kvm") // qemu falls back to the next -accel
		}
	}
	args = append(args,
		"-accel", "tcg", "-machine", "pc", "-cpu", "max",
		"-smp", strconv.Itoa(cpus), "-m", strconv.Itoa(mem),
		"-nographic", "-nodefaults", "-no-reboot", "-no-user-config",
		"-monitor", "none", "-serial", "stdio",
		"-kernel", cfg.kernel, "-initrd", initrd, "-append", cmdline,
		"-netdev", "user,id=n0", "-device", "virtio-net-pci,netdev=n0,romfile=",
	)
	cmd := exec.Command("qemu-system-x86_64", args...)
	// If the test binary dies, so does qemu.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		os.RemoveAll(work)
		return nil, err
	}
	pr, pw, err := os.Pipe()
	if err != nil {
		os.RemoveAll(work)
		return nil, err
	}
	cmd.Stdout, cmd.Stderr = pw, pw

	var logFile *os.File
	if o.LogPath != "" {
		if logFile, err = os.Create(o.LogPath); err != nil {
			pr.Close()
			pw.Close()
			os.RemoveAll(work)
			return nil, err
		}
		fmt.Fprintf(logFile, "# qemu-system-x86_64 %s\n", strings.Join(args, " "))
	}
	g := &Guest{
		cmd: cmd, stdin: stdin, workDir: work, logf: o.Logf,
		changed: make(chan struct{}), done: make(chan struct{}),
	}
	g.start = time.Now()
	if err := cmd.Start(); err != nil {
		pr.Close()
		pw.Close()
		if logFile != nil {
			logFile.Close()
		}
		os.RemoveAll(work)
		return nil, fmt.Errorf("vm: starting qemu: %w", err)
	}
	pw.Close()

	timeout := o.Timeout
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	g.timer = time.AfterFunc(timeout, func() { g.kill(fmt.Sprintf("hard timeout %v", timeout)) })
	g.stop = context.AfterFunc(ctx, func() { g.kill("context: " + context.Cause(ctx).Error()) })

	go g.readConsole(pr, logFile)
	return g, nil
}

// readConsole parses the console until qemu closes it, then reaps qemu.
func (g *Guest) readConsole(r *os.File, logFile *os.File) {
	br := bufio.NewReaderSize(r, 64<<10)
	for {
		line, err := br.ReadString('\n')
		if line != "" {
			line = strings.TrimRight(line, "\r\n")
			at := time.Since(g.start)
			if logFile != nil {
				fmt.Fprintf(logFile, "[%7.3f] %s\n", at.Seconds(), line)
			}
			m, isMarker := parseMarker(line, at)
			g.mu.Lock()
			g.console = append(g.console, line)
			if len(g.console) > consoleKeep {
				g.console = g.console[len(g.console)-consoleKeep:]
			}
			if isMarker {
				g.markers = append(g.markers, m)
				g.notifyLocked()
			}
			g.mu.Unlock()
			if isMarker && g.logf != nil {
				g.logf("vm %s", m)
			}
		}
		if err != nil {
			break
		}
	}
	r.Close()
	err := g.cmd.Wait()
	g.timer.Stop()
	g.stop()
	if logFile != nil {
		fmt.Fprintf(logFile, "# qemu exited after %.3fs: %v\n", time.Since(g.start).Seconds(), err)
		logFile.Close()
	}
	g.mu.Lock()
	g.exited, g.exitErr = true, err
	g.notifyLocked()
	g.mu.Unlock()
	close(g.done)
}

func (g *Guest) notifyLocked() {
	close(g.changed)
	g.changed = make(chan struct{})
}

// kill SIGKILLs qemu (by its PID) unless it has already exited.
func (g *Guest) kill(why string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.exited {
		return
	}
	if g.killedBy == "" {
		g.killedBy = why
	}
	_ = g.cmd.Process.Kill()
}

// PID returns qemu's process ID.
func (g *Guest) PID() int { return g.cmd.Process.Pid }

// Close kills qemu if it still runs, waits for it and removes the run's
// temporary files. It returns an error only if qemu could not be reaped.
func (g *Guest) Close() error {
	g.kill("closed by the test")
	select {
	case <-g.done:
	case <-time.After(30 * time.Second):
		return fmt.Errorf("vm: qemu pid %d did not exit after SIGKILL", g.PID())
	}
	g.stdin.Close()
	os.RemoveAll(g.workDir)
	return nil
}

// waitMarker waits for the first marker at index >= from that matches.
// It fails when the guest ends (FAIL, PASS or exit) without one.
func (g *Guest) waitMarker(ctx context.Context, from int, match func(Marker) bool) (int, Marker, error) {
	for {
		g.mu.Lock()
		for i := from; i < len(g.markers); i++ {
			if match(g.markers[i]) {
				m := g.markers[i]
				g.mu.Unlock()
				return i, m, nil
			}
		}
		from = len(g.markers)
		var ended string
		for _, m := range g.markers {
			if m.Event == "FAIL" {
				ended = "the guest failed: " + m.Text
			}
		}
		if ended == "" && g.exited {
			ended = "qemu exited"
			if g.killedBy != "" {
				ended += " (killed: " + g.killedBy + ")"
			}
		}
		ch := g.changed
		g.mu.Unlock()
		if ended != "" {
			return 0, Marker{}, errors.New("vm: " + ended)
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return 0, Marker{}, context.Cause(ctx)
		}
	}
}

// WaitMarker waits until the guest has printed a marker with the given event
// whose key=value words include all of kv ("key", "value", ...), and returns
// the first such marker (it may have been printed before the call).
func (g *Guest) WaitMarker(ctx context.Context, event string, kv ...string) (Marker, error) {
	_, m, err := g.waitMarker(ctx, 0, func(m Marker) bool { return markerMatches(m, event, kv) })
	if err != nil {
		return m, fmt.Errorf("waiting for %s %v: %w", event, kv, err)
	}
	return m, nil
}

func markerMatches(m Marker, event string, kv []string) bool {
	if m.Event != event {
		return false
	}
	for i := 0; i+1 < len(kv); i += 2 {
		if m.KV[kv[i]] != kv[i+1] {
			return false
		}
	}
	return true
}

// WaitPause waits until the guest reaches Pause(name).
func (g *Guest) WaitPause(ctx context.Context, name string) error {
	_, err := g.WaitMarker(ctx, "PAUSE", "name", name)
	return err
}

// Resume lets a guest paused at Pause(name) go on.
func (g *Guest) Resume(name string) error {
	_, err := io.WriteString(g.stdin, "@@GO "+name+"\n")
	return err
}

// Wait waits for qemu to exit and returns the run's result. The error is
// nil only if the guest printed PASS.
func (g *Guest) Wait(ctx context.Context) (*Result, error) {
	select {
	case <-g.done:
	case <-ctx.Done():
		g.kill("context: " + context.Cause(ctx).Error())
		<-g.done
	}
	r := g.result()
	return r, r.Err()
}

// Markers returns a copy of the markers received so far.
func (g *Guest) Markers() []Marker {
	g.mu.Lock()
	defer g.mu.Unlock()
	return append([]Marker(nil), g.markers...)
}

// Run boots a guest, resumes its pauses through o.OnPause, waits for the end
// of its script and closes it. The error is nil only if the guest passed;
// the Result is non-nil whenever qemu was started.
func Run(ctx context.Context, o Options) (*Result, error) {
	g, err := Start(ctx, o)
	if err != nil {
		return nil, err
	}
	defer g.Close()
	for from := 0; ; {
		i, m, err := g.waitMarker(ctx, from, func(m Marker) bool { return m.Event == "PAUSE" || m.Event == "PASS" })
		if err != nil || m.Event == "PASS" {
			break // Wait reports the outcome
		}
		from = i + 1
		name := m.Get("name")
		if o.OnPause != nil {
			if err := o.OnPause(ctx, name); err != nil {
				g.kill("OnPause(" + name + ") failed")
				r, _ := g.Wait(ctx)
				return r, fmt.Errorf("vm: OnPause(%q): %w\n%s", name, err, r.Tail(40))
			}
		}
		if err := g.Resume(name); err != nil {
			break
		}
	}
	return g.Wait(ctx)
}

// Disk is what the guest saw of a logged-in LU (DISK and IDENT markers).
type Disk struct {
	ID, Dev, IQN, Portal string
	Sectors              int64
	Vendor, Model        string
	ReadOnly             bool
	WWID                 string
	VPD83, VPD80         string            // hex dumps of the VPD pages
	Params               map[string]string // negotiated iSCSI parameters
}

// Target is one SendTargets entry (TARGET marker).
type Target struct {
	IQN, Addr, Portal string
}

// Result is the outcome of a guest run.
type Result struct {
	Passed       bool
	FailReason   string // the guest's FAIL text, or why the harness killed it
	Markers      []Marker
	Targets      []Target        // from all Discover steps, in order
	Disks        map[string]Disk // by login id; the latest login of an id
	KernelErrors []string        // kernel log lines the guest flagged
	Duration     time.Duration   // qemu's wall time
	Boot         time.Duration   // from qemu start to /init (INIT marker)
	ExitErr      error           // qemu's exit status
	Console      []string        // the console's last lines
}

func (g *Guest) result() *Result {
	g.mu.Lock()
	defer g.mu.Unlock()
	r := &Result{
		Markers:  append([]Marker(nil), g.markers...),
		Disks:    map[string]Disk{},
		Duration: time.Since(g.start),
		ExitErr:  g.exitErr,
		Console:  append([]string(nil), g.console...),
	}
	for _, m := range r.Markers {
		switch m.Event {
		case "INIT":
			r.Boot = m.Host
		case "PASS":
			r.Passed = true
		case "FAIL":
			if r.FailReason == "" { // the first one is the cause
				r.FailReason = m.Text
			}
		case "TARGET":
			r.Targets = append(r.Targets, Target{IQN: m.Get("iqn"), Addr: m.Get("addr"), Portal: m.Get("portal")})
		case "KERNEL_ERR":
			r.KernelErrors = append(r.KernelErrors, m.Text)
		case "LOGIN":
			r.Disks[m.Get("id")] = Disk{ID: m.Get("id"), IQN: m.Get("iqn"), Portal: m.Get("portal"), Params: map[string]string{}}
		case "DISK":
			d := r.Disks[m.Get("id")]
			d.Dev, d.Vendor, d.Model = m.Get("dev"), m.Get("vendor"), m.Get("model")
			d.Sectors, _ = strconv.ParseInt(m.Get("sectors"), 10, 64)
			d.ReadOnly = m.Get("ro") == "1"
			r.Disks[m.Get("id")] = d
		case "IDENT":
			d := r.Disks[m.Get("id")]
			d.WWID, d.VPD83, d.VPD80 = m.Get("wwid"), m.Get("vpd83"), m.Get("vpd80")
			r.Disks[m.Get("id")] = d
		case "PARAM":
			if d, ok := r.Disks[m.Get("id")]; ok {
				for k, v := range m.KV {
					if k != "id" {
						d.Params[k] = v
					}
				}
			}
		}
	}
	if r.Passed && r.FailReason != "" {
		r.Passed = false
	}
	if !r.Passed && r.FailReason == "" {
		switch {
		case g.killedBy != "":
			r.FailReason = "qemu killed: " + g.killedBy
		default:
			r.FailReason = fmt.Sprintf("the guest ended without PASS (qemu: %v)", g.exitErr)
		}
	}
	return r
}

// Err is nil if the guest passed, else an error with the reason and the
// console's last lines.
func (r *Result) Err() error {
	if r.Passed {
		return nil
	}
	return fmt.Errorf("vm: FAIL: %s\n--- console (last lines) ---\n%s", r.FailReason, r.Tail(60))
}

// Tail returns the last n console lines.
func (r *Result) Tail(n int) string {
	c := r.Console
	if len(c) > n {
		c = c[len(c)-n:]
	}
	return strings.Join(c, "\n")
}

// Find returns the markers with the given event whose key=value words
// include all of kv.
func (r *Result) Find(event string, kv ...string) []Marker {
	var out []Marker
	for _, m := range r.Markers {
		if markerMatches(m, event, kv) {
			out = append(out, m)
		}
	}
	return out
}

// At returns when (since qemu start) the first marker with the given event
// and key=values arrived, or -1.
func (r *Result) At(event string, kv ...string) time.Duration {
	if ms := r.Find(event, kv...); len(ms) > 0 {
		return ms[0].Host
	}
	return -1
}

// LUDesignators returns the designation descriptors of a VPD page 0x83 (as
// a hex dump, Disk.VPD83) whose association is the logical unit, as hex,
// in page order: what must match across the paths of one LU.
func LUDesignators(vpd83 string) ([]string, error) {
	b, err := hex.DecodeString(vpd83)
	if err != nil {
		return nil, fmt.Errorf("VPD 0x83 dump: %w", err)
	}
	if len(b) < 4 || b[1] != 0x83 {
		return nil, fmt.Errorf("not a VPD 0x83 page: %q", vpd83)
	}
	var out []string
	for p := b[4:]; len(p) > 0; {
		if len(p) < 4 || len(p) < 4+int(p[3]) {
			return nil, fmt.Errorf("VPD 0x83: truncated designator at byte %d", len(b)-len(p))
		}
		d := p[:4+int(p[3])]
		if (d[1]>>4)&3 == 0 {
			out = append(out, hex.EncodeToString(d))
		}
		p = p[len(d):]
	}
	return out, nil
}
