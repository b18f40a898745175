package main

import (
	"fmt"
	"net"
	"net/http"
	"net/http/pprof"

	"github.com/sirupsen/logrus"
)

// startPprof serves Go's profiler on addr, which must be a loopback
// address: profiles expose memory contents.
func startPprof(addr string, log *logrus.Entry) error {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("CSNAP_PPROF: %w", err)
	}
	if ta, ok := l.Addr().(*net.TCPAddr); !ok || !ta.IP.IsLoopback() {
		l.Close()
		return fmt.Errorf("CSNAP_PPROF=%s: profiling listens on loopback only", addr)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	go http.Serve(l, mux)
	log.WithField("addr", l.Addr().String()).Warn("profiling enabled (CSNAP_PPROF)")
	return nil
}
