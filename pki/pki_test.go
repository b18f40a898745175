package pki

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
)

// mkNode writes a CA into dir (unless ca is given) and node's files, and
// returns the CA and node's paths.
func mkNode(t *testing.T, dir string, ca *CA, node string) (*CA, Paths) {
	t.Helper()
	if ca == nil {
		var err error
		if ca, err = NewCA("test CA", 0); err != nil {
			t.Fatal(err)
		}
		if err := ca.Write(dir, false); err != nil {
			t.Fatal(err)
		}
	}
	nc, err := ca.Sign(node, 0)
	if err != nil {
		t.Fatal(err)
	}
	p := NodePaths(dir, node)
	if err := nc.Write(p, true); err != nil {
		t.Fatal(err)
	}
	return ca, p
}

func TestFilesAndLoad(t *testing.T) {
	dir := t.TempDir()
	_, p := mkNode(t, dir, nil, "n1")
	for path, mode := range map[string]os.FileMode{
		filepath.Join(dir, CAFile): 0o644, filepath.Join(dir, CAKeyFile): 0o600, p.Cert: 0o644, p.Key: 0o600,
	} {
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != mode {
			t.Errorf("%s: mode %v, want %v", path, fi.Mode().Perm(), mode)
		}
	}
	m, err := Load(p)
	if err != nil {
		t.Fatal(err)
	}
	if m.Node != "n1" || m.Leaf.Subject.CommonName != "n1" || len(m.Leaf.DNSNames) != 1 || m.Leaf.DNSNames[0] != "n1" {
		t.Fatalf("loaded %q, cert CN %q DNS %v", m.Node, m.Leaf.Subject.CommonName, m.Leaf.DNSNames)
	}
	// The CA loads back and signs more.
	ca, err := LoadCA(dir)
	if err != nil {
		t.Fatal(err)
	}
	if _, p2 := mkNode(t, dir, ca, "n2"); p2.Cert != filepath.Join(dir, "csnap-node-n2.pem") {
		t.Fatalf("paths %+v", p2)
	}
	if _, err := Load(NodePaths(dir, "n2")); err != nil {
		t.Fatal(err)
	}
	// Existing files are not overwritten without asking.
	if err := ca.Write(dir, false); !errors.Is(err, ErrExists) {
		t.Fatalf("CA written over: %v", err)
	}
	// A holder for another node refuses the files.
	if _, err := NewHolder(p, "n2"); err == nil || !strings.Contains(err.Error(), `node "n1"`) {
		t.Fatalf("holder for n2 with n1's certificate: %v", err)
	}
	// A certificate of another CA does not load with this CA.
	other := t.TempDir()
	_, po := mkNode(t, other, nil, "n1")
	if _, err := Load(Paths{CA: p.CA, Cert: po.Cert, Key: po.Key}); err == nil {
		t.Fatal("certificate of another CA loaded")
	}
	if _, err := NewCA("x", 0); err != nil {
		t.Fatal(err)
	}
	if _, err := ca.Sign("bad name!", 0); err == nil {
		t.Fatal("signed an invalid node name")
	}
}

func quietLog() *logrus.Entry {
	l := logrus.New()
	l.Out = io.Discard
	return logrus.NewEntry(l)
}

// handshake runs a TLS handshake between server config sc and client
// config cc and returns the client's error and the server's view of the
// client node.
func handshake(t *testing.T, sc, cc *tls.Config) (clientErr error, peer string, serverErr error) {
	t.Helper()
	ln, err := tls.Listen("tcp", "127.0.0.1:0", sc)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	type res struct {
		node string
		err  error
	}
	ch := make(chan res, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			ch <- res{err: err}
			return
		}
		defer c.Close()
		tc := c.(*tls.Conn)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := tc.HandshakeContext(ctx); err != nil {
			ch <- res{err: err}
			return
		}
		n, err := PeerNode(tc)
		ch <- res{n, err}
		_, _ = io.Copy(io.Discard, c)
	}()
	d := net.Dialer{Timeout: 5 * time.Second}
	c, err := tls.DialWithDialer(&d, "tcp", ln.Addr().String(), cc)
	if err == nil {
		// TLS 1.3: the server's verdict on our certificate arrives
		// after the client's handshake; read to learn it.
		_ = c.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
		_, rerr := c.Read(make([]byte, 1))
		var ne net.Error
		if !errors.As(rerr, &ne) || !ne.Timeout() {
			err = rerr
		}
		c.Close()
	}
	r := <-ch
	return err, r.node, r.err
}

func TestMutualTLS(t *testing.T) {
	dir := t.TempDir()
	ca, p1 := mkNode(t, dir, nil, "n1")
	_, p2 := mkNode(t, dir, ca, "n2")
	h1, err := NewHolder(p1, "n1")
	if err != nil {
		t.Fatal(err)
	}
	h2, err := NewHolder(p2, "n2")
	if err != nil {
		t.Fatal(err)
	}
	// n2 connects to n1's server: both sides verified.
	cerr, peer, serr := handshake(t, h1.ServerConfig(), h2.ClientConfig("n1"))
	if cerr != nil || serr != nil || peer != "n2" {
		t.Fatalf("client %v, server %v, peer %q", cerr, serr, peer)
	}
	// The client expects node n3 there: refused.
	cerr, _, _ = handshake(t, h1.ServerConfig(), h2.ClientConfig("n3"))
	if !errors.Is(cerr, ErrWrongNode) {
		t.Fatalf("client accepted n1's certificate for n3: %v", cerr)
	}
	// A client without a certificate: refused by the server.
	noCert := &tls.Config{MinVersion: tls.VersionTLS13, InsecureSkipVerify: true}
	if _, _, serr = handshake(t, h1.ServerConfig(), noCert); serr == nil {
		t.Fatal("server accepted a client without a certificate")
	}
	// A client of another CA: refused by the server; and it refuses us.
	other := t.TempDir()
	_, po := mkNode(t, other, nil, "n2")
	ho, err := NewHolder(po, "n2")
	if err != nil {
		t.Fatal(err)
	}
	if _, _, serr = handshake(t, h1.ServerConfig(), ho.ClientConfig("n1")); serr == nil {
		t.Fatal("server accepted a client of another CA")
	}
	if cerr, _, _ = handshake(t, ho.ServerConfig(), h2.ClientConfig("n2")); cerr == nil {
		t.Fatal("client accepted a server of another CA")
	}
	// TLS 1.2 is refused.
	old := h2.ClientConfig("n1")
	old.MaxVersion = tls.VersionTLS12
	if cerr, _, _ = handshake(t, h1.ServerConfig(), old); cerr == nil {
		t.Fatal("TLS 1.2 accepted")
	}
}

// A reload (Watch, on a signal or a changed file) makes new connections
// use the new certificate and CA.
func TestReload(t *testing.T) {
	dir := t.TempDir()
	ca, p1 := mkNode(t, dir, nil, "n1")
	_, p2 := mkNode(t, dir, ca, "n2")
	h1, err := NewHolder(p1, "n1")
	if err != nil {
		t.Fatal(err)
	}
	h2, err := NewHolder(p2, "n2")
	if err != nil {
		t.Fatal(err)
	}
	first := h1.Current().Leaf.SerialNumber
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	sig := make(chan struct{})
	go h1.Watch(ctx, 20*time.Millisecond, sig, quietLog())

	// A new certificate for n1 (same CA), written in place: picked up by
	// the file watch.
	time.Sleep(10 * time.Millisecond) // (a distinct modification time)
	mkNode(t, dir, ca, "n1")
	deadline := time.Now().Add(5 * time.Second)
	for h1.Current().Leaf.SerialNumber.Cmp(first) == 0 {
		if time.Now().After(deadline) {
			t.Fatal("new certificate not picked up")
		}
		time.Sleep(10 * time.Millisecond)
	}
	cerr, peer, serr := handshake(t, h1.ServerConfig(), h2.ClientConfig("n1"))
	if cerr != nil || serr != nil || peer != "n2" {
		t.Fatalf("after reload: client %v, server %v", cerr, serr)
	}

	// A new CA for the whole cluster: n2 moves first; n1's server, still
	// on the old CA, refuses it until n1 reloads on a signal.
	newCA, err := NewCA("new CA", 0)
	if err != nil {
		t.Fatal(err)
	}
	dir2 := t.TempDir()
	if err := newCA.Write(dir2, false); err != nil {
		t.Fatal(err)
	}
	_, q2 := mkNode(t, dir2, newCA, "n2")
	h2b, err := NewHolder(q2, "n2")
	if err != nil {
		t.Fatal(err)
	}
	if _, _, serr = handshake(t, h1.ServerConfig(), h2b.ClientConfig("n1")); serr == nil {
		t.Fatal("old server accepted the new CA's client before reloading")
	}
	// n1's files are replaced; only the signal reloads them (the file
	// watch now looks once an hour).
	cancel()
	ctx, cancel = context.WithCancel(context.Background())
	defer cancel()
	go h1.Watch(ctx, time.Hour, sig, quietLog())
	if err := newCA.Write(dir, true); err != nil {
		t.Fatal(err)
	}
	mkNode(t, dir, newCA, "n1")
	sig <- struct{}{}
	deadline = time.Now().Add(5 * time.Second)
	for {
		cerr, peer, serr = handshake(t, h1.ServerConfig(), h2b.ClientConfig("n1"))
		if cerr == nil && serr == nil && peer == "n2" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after SIGHUP-style reload: client %v, server %v", cerr, serr)
		}
		time.Sleep(20 * time.Millisecond)
	}

	// A broken file is not taken: the material in use stays.
	cur := h1.Current()
	if err := os.WriteFile(h1.paths.Cert, []byte("junk"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := h1.Reload(); err == nil {
		t.Fatal("junk certificate loaded")
	}
	if h1.Current() != cur {
		t.Fatal("material changed after a failed reload")
	}
}
