package testutil

import (
	"testing"

	"github.com/csnap/csnap/pki"
)

// Holders makes a new cluster CA in a temporary directory, signs a
// certificate for each node, and returns each node's pki.Holder, by node.
func Holders(t testing.TB, nodes ...string) map[string]*pki.Holder {
	t.Helper()
	dir := t.TempDir()
	ca, err := pki.NewCA("test", 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := ca.Write(dir, false); err != nil {
		t.Fatal(err)
	}
	out := map[string]*pki.Holder{}
	for _, n := range nodes {
		nc, err := ca.Sign(n, 0)
		if err != nil {
			t.Fatal(err)
		}
		p := pki.NodePaths(dir, n)
		if err := nc.Write(p, false); err != nil {
			t.Fatal(err)
		}
		if out[n], err = pki.NewHolder(p, n); err != nil {
			t.Fatal(err)
		}
	}
	return out
}
