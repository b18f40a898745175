package main

import (
	"fmt"
	"io"

	"github.com/csnap/csnap/api"
)

// volumeRecover is `csnap-admin volume recover NAME`: the volume's server
// recovers its failed store engine in place now (journal replay on the same
// devices; it also retries by itself with backoff), and the node asked
// (-addr) clears its latched IO error, after which its flushes (SYNCHRONIZE
// CACHE) succeed again. Run it once the cause (a full or failed device) is
// fixed: writes acknowledged before the failure without a good flush may
// be lost.
func volumeRecover(e *env, a args) error {
	var r api.RecoverReport
	if err := e.c.Do(e.ctx, "POST", api.Path("volumes", a.pos[0], "recover"), nil, &r); err != nil {
		return fmt.Errorf("recovering %s: %w", a.pos[0], err)
	}
	e.show(r, func(w io.Writer) {
		fmt.Fprintf(w, "%s: engine %s\n", r.Volume, r.Engine)
		if r.ClearedIOError != "" {
			fmt.Fprintf(w, "cleared IO error\t%s\n", r.ClearedIOError)
		}
	})
	return nil
}
