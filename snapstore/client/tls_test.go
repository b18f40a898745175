package client

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/csnap/csnap/internal/testutil"
	"github.com/csnap/csnap/pki"
	"github.com/csnap/csnap/snapstore"
	"github.com/csnap/csnap/snapstore/server"
	"github.com/csnap/csnap/snapstore/wire"
)

// holders makes a CA and the certificates of nodes.
func holders(t testing.TB, nodes ...string) map[string]*pki.Holder {
	t.Helper()
	return testutil.Holders(t, nodes...)
}

// tlsServer serves a volume over TLS as node srvNode, with certificate h
// (nil: without TLS).
func tlsServer(t testing.TB, h *pki.Holder, srvNode string) (string, *snapstore.MemDevice, *snapstore.MemDevice) {
	t.Helper()
	origin, store := snapstore.NewMemDevice(1<<20), snapstore.NewMemDevice(32<<20)
	if err := snapstore.Format(origin, store, snapstore.FormatOptions{ChunkSize: e2eChunk, JournalBlocks: 256}); err != nil {
		t.Fatal(err)
	}
	eng, err := snapstore.Open(origin, store, snapstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	cfg := server.Config{Engine: eng, Volume: "vol", Term: 1, Node: srvNode, Log: testLog()}
	if h != nil {
		cfg.PeerNode = server.TLSPeerNode
	}
	srv, err := server.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { eng.Close() }) // after serving stops
	var wrap func(net.Listener) net.Listener
	if h != nil {
		wrap = func(ln net.Listener) net.Listener { return tls.NewListener(ln, h.ServerConfig()) }
	}
	addr, _ := testutil.Serve(t, srv, wrap)
	return addr, origin, store
}

// The client talks to the server over mutual TLS, and only to the node
// the locator names: a server whose certificate names another node is
// refused.
func TestTLSServerNode(t *testing.T) {
	hs := holders(t, "n1", "n2", "c1")
	addr, origin, store := tlsServer(t, hs["n1"], "n1")
	cfg := func(node string) Config {
		return Config{Volume: "vol", Node: "c1", ID: wire.ClientIDFor("c1", "vol"),
			Locator: StaticServer{Addr: addr, Node: node}, TLS: hs["c1"].ClientConfig,
			Origin: origin, Store: store, Log: testLog(), IOTimeout: 5 * time.Second, DialTimeout: time.Second}
	}
	c, err := New(ctx5(t), cfg("n1"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.CreateSnapshot(ctx5(t), "s1", 0, false); err != nil {
		t.Fatal(err)
	}
	c.Close()

	// The lock key names n2, but the address answers with n1's certificate.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_, err = New(ctx, cfg("n2"))
	if err == nil || !strings.Contains(err.Error(), pki.ErrWrongNode.Error()) {
		t.Fatalf("client connected to n1 as n2: %v", err)
	}
	t.Logf("as expected: %v", err)

	// TLS needs a locator that names the node.
	bad := cfg("n1")
	bad.Locator = StaticLocator(addr)
	ctx, cancel = context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if _, err := New(ctx, bad); err == nil {
		t.Fatal("TLS client without the server's node connected")
	}
}

// BenchmarkRoundTrip measures one request and its reply (STATUS) and the
// first write of a chunk after a snapshot (approval round trip and
// copy-out), with and without TLS.
func BenchmarkRoundTrip(b *testing.B) {
	for _, secure := range []bool{false, true} {
		name := "plain"
		if secure {
			name = "tls"
		}
		b.Run(name, func(b *testing.B) {
			hs := holders(b, "n1", "c1")
			var h *pki.Holder
			if secure {
				h = hs["n1"]
			}
			addr, origin, store := tlsServer(b, h, "n1")
			cfg := Config{Volume: "vol", Node: "c1", ID: wire.ClientIDFor("c1", "vol"),
				Locator: StaticServer{Addr: addr, Node: "n1"}, Origin: origin, Store: store, Log: testLog()}
			if secure {
				cfg.TLS = hs["c1"].ClientConfig
			}
			ctx := context.Background()
			c, err := New(ctx, cfg)
			if err != nil {
				b.Fatal(err)
			}
			defer c.Close()
			b.Run("status", func(b *testing.B) {
				for b.Loop() {
					if _, err := c.Status(ctx); err != nil {
						b.Fatal(err)
					}
				}
			})
			k := 0 // snapshots made (the function may be run more than once)
			b.Run("first-write", func(b *testing.B) {
				buf := make([]byte, e2eChunk)
				n := int64(1<<20) / e2eChunk
				i := n
				for b.Loop() {
					if i == n { // every chunk written: a new snapshot
						b.StopTimer()
						if k > 0 {
							if err := c.DeleteSnapshot(ctx, fmt.Sprint("s", k)); err != nil {
								b.Fatal(err)
							}
						}
						k++
						if _, err := c.CreateSnapshot(ctx, fmt.Sprint("s", k), 0, false); err != nil {
							b.Fatal(err)
						}
						i = 0
						b.StartTimer()
					}
					if err := c.Origin().WriteAt(buf, i*e2eChunk, false); err != nil {
						b.Fatal(err)
					}
					i++
				}
			})
		})
	}
}
