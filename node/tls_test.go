package node

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/csnap/csnap/pki"
)

func quietLog() *logrus.Entry {
	l := logrus.New()
	l.Out = io.Discard
	return logrus.NewEntry(l)
}

func TestNodeTLSChoices(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	log := quietLog()
	// Cluster mode: no files, no -insecure-no-tls: refused.
	if _, err := nodeTLS(ctx, &Config{}, false, "", "n1", log); !errors.Is(err, errNoTLS) {
		t.Fatalf("cluster without TLS: %v", err)
	}
	// -insecure-no-tls: no TLS.
	if h, err := nodeTLS(ctx, &Config{InsecureNoTLS: true}, false, "", "n1", log); h != nil || err != nil {
		t.Fatalf("insecure: %v %v", h, err)
	}
	// Some files only: refused.
	if _, err := nodeTLS(ctx, &Config{TLSCA: "x"}, false, "", "n1", log); err == nil {
		t.Fatal("-tls-ca alone accepted")
	}
	// Files of another node: refused.
	dir := t.TempDir()
	p, err := devTLS(dir, "n2", log)
	if err != nil {
		t.Fatal(err)
	}
	o := &Config{TLSCA: p.CA, TLSCert: p.Cert, TLSKey: p.Key}
	if _, err := nodeTLS(ctx, o, false, "", "n1", log); err == nil || !strings.Contains(err.Error(), `node "n2"`) {
		t.Fatalf("n2's certificate on n1: %v", err)
	}
	if h, err := nodeTLS(ctx, o, false, "", "n2", log); err != nil || h.Current().Node != "n2" {
		t.Fatalf("n2: %v", err)
	}
}

// syncBuf is a bytes.Buffer safe for concurrent use.
type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuf) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// runDevOnce starts csnapd -dev on ephemeral ports in dir, waits until it
// serves (its snapshot client connected to its server over TLS), and
// stops it.
func runDevOnce(t *testing.T, dir string) {
	t.Helper()
	o := &Config{DataDir: dir, NodeName: "devnode",
		ISCSIAddr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0", ServerAddr: "127.0.0.1:0"}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var out syncBuf
	done := make(chan error, 1)
	go func() { done <- runDev(ctx, o, quietLog(), &out) }()
	deadline := time.Now().Add(30 * time.Second)
	for !strings.Contains(out.String(), "csnapd -dev:") {
		select {
		case err := <-done:
			t.Fatalf("csnapd -dev stopped: %v", err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatal("csnapd -dev not serving in time")
		}
		time.Sleep(20 * time.Millisecond)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// -dev makes a CA and its node's certificate at first start, runs its
// client and server over them, and reuses them afterwards.
func TestDevMakesAndReusesTLS(t *testing.T) {
	dir := t.TempDir()
	runDevOnce(t, dir)
	tdir := filepath.Join(dir, "tls")
	p := pki.NodePaths(tdir, "devnode")
	m1, err := pki.Load(p)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(p.Key)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file: %v %v", fi.Mode(), err)
	}
	runDevOnce(t, dir)
	m2, err := pki.Load(p)
	if err != nil {
		t.Fatal(err)
	}
	if !m1.Leaf.Equal(m2.Leaf) {
		t.Fatal("second start made a new certificate")
	}
}

// SIGHUP reloads the TLS files.
func TestNodeTLSReloadsOnSIGHUP(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	dir := t.TempDir()
	p, err := devTLS(dir, "n1", quietLog())
	if err != nil {
		t.Fatal(err)
	}
	h, err := nodeTLS(ctx, &Config{TLSCA: p.CA, TLSCert: p.Cert, TLSKey: p.Key}, false, "", "n1", quietLog())
	if err != nil {
		t.Fatal(err)
	}
	first := h.Current()
	// A new certificate, written with the old modification time (only the
	// signal can tell).
	fi, err := os.Stat(p.Cert)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := pki.LoadCA(dir)
	if err != nil {
		t.Fatal(err)
	}
	nc, err := ca.Sign("n1", 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := nc.Write(p, true); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{p.Cert, p.Key} {
		if err := os.Chtimes(f, fi.ModTime(), fi.ModTime()); err != nil {
			t.Fatal(err)
		}
	}
	if err := syscall.Kill(os.Getpid(), syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for h.Current() == first {
		if time.Now().After(deadline) {
			t.Fatal("SIGHUP did not reload the certificate")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if !h.Current().Leaf.Equal(nc.Cert) {
		t.Fatal("reloaded something else")
	}
}

// -dev replaces a node certificate that is expiring (or not of its CA).
func TestDevTLSRenews(t *testing.T) {
	dir := t.TempDir()
	p, err := devTLS(dir, "n1", quietLog())
	if err != nil {
		t.Fatal(err)
	}
	ca, err := pki.LoadCA(dir)
	if err != nil {
		t.Fatal(err)
	}
	short, err := ca.Sign("n1", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if err := short.Write(p, true); err != nil {
		t.Fatal(err)
	}
	if _, err := devTLS(dir, "n1", quietLog()); err != nil {
		t.Fatal(err)
	}
	m, err := pki.Load(p)
	if err != nil {
		t.Fatal(err)
	}
	if m.Leaf.Equal(short.Cert) || time.Until(m.Leaf.NotAfter) < 300*24*time.Hour {
		t.Fatalf("expiring certificate kept (until %v)", m.Leaf.NotAfter)
	}
	// Unchanged when usable.
	if _, err := devTLS(dir, "n1", quietLog()); err != nil {
		t.Fatal(err)
	}
	m2, err := pki.Load(p)
	if err != nil || !m2.Leaf.Equal(m.Leaf) {
		t.Fatalf("usable certificate replaced: %v", err)
	}
}
