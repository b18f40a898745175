package main

import (
	"fmt"
	"path/filepath"
	"strconv"
	"time"

	"github.com/csnap/csnap/pki"
)

// tlsUsage is the usage of the tls commands (in usage).
const tlsUsage = `  tls ca create [--dir D] [--days N] [--force]
  tls cert create --node NAME [--dir D] [--days N] [--force]`

// tlsCmd runs `tls ca create` and `tls cert create` (local files, no
// node is asked): the snapshot-server protocol's CA and node certificates,
// in the layout of package pki (the shape of `consul tls`), in --dir
// (default: the current directory).
func tlsCmd(e *env, argv []string) error {
	if len(argv) < 2 || argv[1] != "create" || (argv[0] != "ca" && argv[0] != "cert") {
		return usagef("tls commands: tls ca create, tls cert create --node NAME")
	}
	valued := map[string]bool{"dir": true, "days": true, "node": argv[0] == "cert"}
	allowed := map[string]bool{"dir": true, "days": true, "force": true, "node": argv[0] == "cert"}
	a, err := parseArgs(argv[2:], valued, allowed)
	if err != nil {
		return err
	}
	if len(a.pos) != 0 {
		return usagef("tls %s create takes no argument, got %q", argv[0], a.pos[0])
	}
	dir := a.flags["dir"]
	if dir == "" {
		dir = "."
	}
	var validity time.Duration
	if d := a.flags["days"]; d != "" {
		n, err := strconv.Atoi(d)
		if err != nil || n <= 0 || n > 100*365 {
			return usagef("--days %q: want a number of days, 1 to 36500", d)
		}
		validity = time.Duration(n) * 24 * time.Hour
	}
	force := a.flags["force"] == "true"
	if argv[0] == "ca" {
		ca, err := pki.NewCA("csnap CA", validity)
		if err != nil {
			return err
		}
		if err := ca.Write(dir, force); err != nil {
			return fmt.Errorf("%w (--force overwrites)", err)
		}
		fmt.Fprintf(e.out, "==> Saved %s\n==> Saved %s (keep it off the nodes)\n",
			filepath.Join(dir, pki.CAFile), filepath.Join(dir, pki.CAKeyFile))
		return nil
	}
	node := a.flags["node"]
	if node == "" {
		return usagef("tls cert create needs --node NAME (the node's Consul node name)")
	}
	ca, err := pki.LoadCA(dir)
	if err != nil {
		return fmt.Errorf("loading the CA from %s (tls ca create makes one): %w", dir, err)
	}
	nc, err := ca.Sign(node, validity)
	if err != nil {
		return err
	}
	p := pki.NodePaths(dir, node)
	if err := nc.Write(p, force); err != nil {
		return fmt.Errorf("%w (--force overwrites)", err)
	}
	fmt.Fprintf(e.out, "==> Saved %s\n==> Saved %s\n  csnapd on node %s: -tls-ca %s -tls-cert %s -tls-key %s\n",
		p.Cert, p.Key, node, p.CA, p.Cert, p.Key)
	return nil
}
