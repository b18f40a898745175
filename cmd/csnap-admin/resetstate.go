package main

import (
	"fmt"
	"io"

	"github.com/csnap/csnap/api"
)

// volumeResetState is `volume reset-state VOLUME [--snapshot SNAP]`: the
// shared SCSI state (reservations, registrations, unit attentions) of the
// volume's origin LU, or of a snapshot's, goes back to that of an unused
// LU on every node. The repair for an LU whose every command fails NOT
// READY because its shared state cannot be decoded.
func volumeResetState(e *env, a args) error {
	req := api.ResetState{Snapshot: a.flags["snapshot"]}
	what := "origin"
	if req.Snapshot != "" {
		if err := api.ValidName("snapshot", req.Snapshot); err != nil {
			return usageError{err.Error()}
		}
		what = "snapshot " + req.Snapshot
	}
	var r api.StateReset
	if err := e.c.Do(e.ctx, "POST", api.Path("volumes", a.pos[0], "reset-state"), req, &r); err != nil {
		return fmt.Errorf("resetting the shared state of %s of %s: %w", what, a.pos[0], err)
	}
	e.show(r, func(w io.Writer) {
		fmt.Fprintf(w, "shared state of %s of %s reset (key %s, version %#x)\n", what, a.pos[0], r.Key, r.Version)
	})
	return nil
}
