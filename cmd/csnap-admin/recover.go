package main

import (
	"fmt"
	"io"

	"github.com/csnap/csnap/api"
)

// volumeRecover is `csnap-admin volume recover NAME [--accept-data-loss]`:
// the volume's server recovers its failed store engine in place now
// (journal replay on the same devices; it also retries by itself with
// backoff). With --accept-data-loss the node asked (-addr) also clears its
// latched IO error, after which its flushes (SYNCHRONIZE CACHE) succeed
// again: writes acknowledged before the failure without a good flush may
// be lost, which is why it takes the flag. Run it once the cause (a full
// or failed device) is fixed.
func volumeRecover(e *env, a args) error {
	var r api.RecoverReport
	var body any
	if a.flags["accept-data-loss"] == "true" {
		body = api.RecoverRequest{AcceptDataLoss: true}
	}
	if err := e.c.Do(e.ctx, "POST", api.Path("volumes", a.pos[0], "recover"), body, &r); err != nil {
		return fmt.Errorf("recovering %s: %w", a.pos[0], err)
	}
	e.show(r, func(w io.Writer) {
		fmt.Fprintf(w, "%s: engine %s\n", r.Volume, r.Engine)
		if r.ClearedIOError != "" {
			fmt.Fprintf(w, "cleared IO error\t%s\n", r.ClearedIOError)
		}
		if r.IOError != "" {
			fmt.Fprintf(w, "IO error kept\t%s (flushes keep failing; --accept-data-loss clears it)\n", r.IOError)
		}
	})
	return nil
}
