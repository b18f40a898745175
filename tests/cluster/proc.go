package cluster

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// proc is one process the harness started: its output goes to a log file
// of its own, it runs in a process group of its own, and it is only ever
// signalled by its PID.
type proc struct {
	name    string // "n1 consul", for messages
	logPath string
	cmd     *exec.Cmd
	done    chan struct{} // closed once the process has been reaped
	err     error         // cmd.Wait's result, valid after done
}

// startProc starts one of member m's processes: in m's namespace in
// Netns mode, its log lines stamped with StampLogs.
func (c *Cluster) startProc(m *member, name, logPath string, env []string, bin string, args ...string) (*proc, error) {
	return startProc(name, logPath, m.info.Netns, c.opts.StampLogs, env, bin, args...)
}

// startProc starts bin with args, stdout and stderr appended to logPath
// (after a header line saying what starts), env ("K=V") added to ours.
// With netns it runs as `ip netns exec NETNS bin args...`: ip enters the
// namespace and execs bin, so the PID is bin's own. With stamp, its
// output passes through a pipe the harness reads, and each line is
// written with the time it was read in front (LogStampLayout).
//
// Setpgid keeps a Ctrl-C on the terminal from reaching the process (the
// harness stops it in order); Pdeathsig kills it if the harness itself
// dies without stopping it, so no run leaves processes behind (the
// setting survives the exec from ip to bin).
func startProc(name, logPath, netns string, stamp bool, env []string, bin string, args ...string) (*proc, error) {
	f, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("%s: log file: %w", name, err)
	}
	where := ""
	if netns != "" {
		where = " in namespace " + netns
	}
	fmt.Fprintf(f, "--- csnap cluster harness, %s: %s %q%s\n", time.Now().Format(time.RFC3339Nano), bin, args, where)
	path, argv := bin, args
	if netns != "" {
		path, argv = "ip", append([]string{"netns", "exec", netns, bin}, args...)
	}
	cmd := exec.Command(path, argv...)
	if stamp {
		// One writer for both: exec copies through one pipe and one
		// goroutine, and Wait returns once the copy is done.
		sw := &stampWriter{f: f}
		cmd.Stdout, cmd.Stderr = sw, sw
		cmd.WaitDelay = 2 * time.Second // a descendant holding the pipe
	} else {
		defer f.Close() // the child holds its own descriptor
		cmd.Stdout, cmd.Stderr = f, f
	}
	cmd.Env = append(os.Environ(), env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		if stamp {
			f.Close()
		}
		return nil, fmt.Errorf("%s: starting %s: %w", name, bin, err)
	}
	p := &proc{name: name, logPath: logPath, cmd: cmd, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		if stamp {
			f.Close()
		}
		close(p.done)
	}()
	return p, nil
}

// LogStampLayout is the layout of the time StampLogs puts in front of each
// log line (always UTC, fixed width).
const LogStampLayout = "2006-01-02T15:04:05.000000Z07:00"

// SplitStamp splits a line of a log written with StampLogs into the time
// the harness read it and the process's own line; ok is false for a line
// without a stamp (the harness's own header lines, or StampLogs off).
func SplitStamp(line string) (at time.Time, rest string, ok bool) {
	stamp, rest, found := strings.Cut(line, " ")
	if !found || len(stamp) != len(LogStampLayout)-len("Z07:00")+1 {
		return time.Time{}, line, false
	}
	at, err := time.Parse(LogStampLayout, stamp)
	if err != nil {
		return time.Time{}, line, false
	}
	return at, rest, true
}

// stampWriter writes what a process prints to its log file, each line
// headed by the time its first byte was read.
type stampWriter struct {
	f       *os.File
	midLine bool // the last write ended inside a line
	buf     []byte
}

func (w *stampWriter) Write(p []byte) (int, error) {
	stamp := time.Now().UTC().Format(LogStampLayout)
	w.buf = w.buf[:0]
	for rest := p; len(rest) > 0; {
		if !w.midLine {
			w.buf = append(append(w.buf, stamp...), ' ')
		}
		i := bytes.IndexByte(rest, '\n')
		if i < 0 {
			w.buf = append(w.buf, rest...)
			w.midLine = true
			break
		}
		w.buf = append(w.buf, rest[:i+1]...)
		rest = rest[i+1:]
		w.midLine = false
	}
	if _, err := w.f.Write(w.buf); err != nil {
		return 0, err
	}
	return len(p), nil
}

// pid is the process's PID, or 0 for a nil or exited process.
func (p *proc) pid() int {
	if p == nil || p.exited() {
		return 0
	}
	return p.cmd.Process.Pid
}

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// exitError describes how the process ended, with the tail of its log.
func (p *proc) exitError() error {
	return fmt.Errorf("%s (pid %d) exited: %v\n%s", p.name, p.cmd.Process.Pid, p.err, logTail(p.name, p.logPath))
}

// stop sends sig and waits up to grace for the process to exit, then
// sends SIGKILL and waits for it. It returns once the process is gone;
// the error says if it had to be killed. A process already gone is fine.
func (p *proc) stop(sig syscall.Signal, grace time.Duration) error {
	if p == nil || p.exited() {
		return nil
	}
	if err := p.cmd.Process.Signal(sig); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("%s (pid %d): %v: %w", p.name, p.cmd.Process.Pid, sig, err)
	}
	select {
	case <-p.done:
		return nil
	case <-time.After(grace):
	}
	if err := p.kill(); err != nil {
		return err
	}
	return fmt.Errorf("%s (pid %d) still running %v after %v; killed it", p.name, p.cmd.Process.Pid, grace, sig)
}

// kill sends SIGKILL and waits for the process to be reaped.
func (p *proc) kill() error {
	if p == nil || p.exited() {
		return nil
	}
	if err := p.cmd.Process.Signal(syscall.SIGKILL); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("%s (pid %d): SIGKILL: %w", p.name, p.cmd.Process.Pid, err)
	}
	<-p.done
	return nil
}

// logTail is the end of a log file (its last lines), headed by its name.
func logTail(name, path string) string {
	const maxBytes, maxLines = 8 << 10, 25
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Sprintf("--- %s: %v", name, err)
	}
	if len(b) > maxBytes {
		b = b[len(b)-maxBytes:]
	}
	lines := bytes.Split(bytes.TrimRight(b, "\n"), []byte("\n"))
	if len(lines) > maxLines {
		lines = lines[len(lines)-maxLines:]
	}
	return fmt.Sprintf("--- end of %s (%s):\n%s\n", name, filepath.Base(path), bytes.Join(lines, []byte("\n")))
}
