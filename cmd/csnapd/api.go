package main

import (
	"encoding/json"
	"fmt"
	"net/http"

	"github.com/csnap/csnap/target/iscsi"
)

// newAPI serves the HTTP API under /v1/ (SPEC.md). This build answers
// health and lists targets; volume and snapshot endpoints arrive with the
// snapshot server.
func newAPI(srv *iscsi.Server) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/health", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, map[string]any{"status": "ok", "targets": srv.TargetNames()})
	})
	mux.HandleFunc("GET /metrics", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; version=0.0.4")
		fmt.Fprintf(w, "# HELP csnap_iscsi_targets Targets exported by this node.\n# TYPE csnap_iscsi_targets gauge\ncsnap_iscsi_targets %d\n", len(srv.TargetNames()))
	})
	return mux
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}
