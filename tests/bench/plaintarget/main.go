// Command plaintarget serves one file as an iSCSI LUN through csnap's own
// target code and the plain file backend, with no snapshot client: the
// reference that tests/bench/snapshot-vs-plain.sh measures csnapd's
// snapshot paths against. It is a benchmark tool, not part of the product.
//
//	plaintarget -addr 127.0.0.1:PORT -file PATH [-iqn IQN]
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"syscall"

	"github.com/sirupsen/logrus"

	"github.com/csnap/csnap/target/fileback"
	"github.com/csnap/csnap/target/iscsi"
	"github.com/csnap/csnap/target/scsi"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:3261", "portal address")
	file := flag.String("file", "", "backing file")
	iqn := flag.String("iqn", "iqn.2026-11.io.csnap:plain", "target name")
	flag.Parse()
	if err := run(*addr, *file, *iqn); err != nil {
		fmt.Fprintln(os.Stderr, "plaintarget:", err)
		os.Exit(1)
	}
}

func run(addr, file, iqn string) error {
	be, err := fileback.Open(file, 0, false, scsi.IdentityFor(file, "csnap plain"))
	if err != nil {
		return err
	}
	defer be.Close()
	t, err := scsi.NewTarget(map[uint64]*scsi.LU{0: scsi.NewLU(be)}, scsi.NewMemStore())
	if err != nil {
		return err
	}
	l := logrus.New()
	l.SetOutput(io.Discard)
	srv := iscsi.NewServer(iscsi.Config{Log: logrus.NewEntry(l)})
	t.SetPreemptAbortHandler(srv.PreemptAbort)
	if err := srv.AddTarget(iscsi.TargetConfig{Name: iqn, Exec: t}); err != nil {
		return err
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	go func() { <-ctx.Done(); srv.Close() }()
	return srv.Serve(ctx, ln)
}
