package main

import (
	"bytes"
	"context"
	"strings"
	"testing"

	"github.com/csnap/csnap/pki"
)

func runAdmin(t *testing.T, argv ...string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	code := run(context.Background(), argv, func(string) string { return "" }, &out, &errb, false)
	return code, out.String(), errb.String()
}

// tls ca create and tls cert create write files csnapd loads.
func TestTLSCreate(t *testing.T) {
	dir := t.TempDir()
	if code, out, errs := runAdmin(t, "tls", "ca", "create", "--dir", dir); code != 0 || !strings.Contains(out, pki.CAFile) {
		t.Fatalf("ca create: %d %s %s", code, out, errs)
	}
	if code, out, errs := runAdmin(t, "tls", "cert", "create", "--node", "n1", "-dir", dir, "--days", "30"); code != 0 || !strings.Contains(out, "csnap-node-n1.pem") {
		t.Fatalf("cert create: %d %s %s", code, out, errs)
	}
	m, err := pki.Load(pki.NodePaths(dir, "n1"))
	if err != nil {
		t.Fatal(err)
	}
	if m.Node != "n1" || m.Leaf.NotAfter.Sub(m.Leaf.NotBefore).Hours() > 31*24 {
		t.Fatalf("node %q valid %v..%v", m.Node, m.Leaf.NotBefore, m.Leaf.NotAfter)
	}
	// Nothing is overwritten without --force.
	if code, _, errs := runAdmin(t, "tls", "ca", "create", "--dir", dir); code != 1 || !strings.Contains(errs, "exists") {
		t.Fatalf("ca create over an existing CA: %d %s", code, errs)
	}
	if code, _, errs := runAdmin(t, "tls", "cert", "create", "--node", "n1", "--dir", dir); code != 1 || !strings.Contains(errs, "exists") {
		t.Fatalf("cert create over an existing one: %d %s", code, errs)
	}
	if code, _, errs := runAdmin(t, "tls", "cert", "create", "--node", "n1", "--dir", dir, "--force"); code != 0 {
		t.Fatalf("cert create --force: %d %s", code, errs)
	}
	// Usage errors.
	for _, argv := range [][]string{
		{"tls"}, {"tls", "ca"}, {"tls", "cert", "create"}, {"tls", "ca", "create", "--node", "x"},
		{"tls", "cert", "create", "--node", "n1", "--days", "0"}, {"tls", "ca", "create", "extra"},
	} {
		if code, _, errs := runAdmin(t, argv...); code != 2 {
			t.Errorf("%v: exit %d, want 2 (%s)", argv, code, errs)
		}
	}
	// No CA in the directory.
	if code, _, errs := runAdmin(t, "tls", "cert", "create", "--node", "n2", "--dir", t.TempDir()); code != 1 || !strings.Contains(errs, "tls ca create") {
		t.Fatalf("cert create without a CA: %d %s", code, errs)
	}
}
