package api

import (
	"context"
	"fmt"
	"net/http"
)

// ResetState is the body of POST /v1/volumes/{v}/reset-state: the shared
// SCSI state (persistent reservations, registrations, pending unit
// attentions) of the volume's origin logical unit, or of snapshot
// Snapshot's, goes back to that of a logical unit never used, on every
// node. The operator's repair for a state no node can decode (every
// command to the LU then fails NOT READY); reservation holders must
// register and reserve again.
type ResetState struct {
	Snapshot string `json:"snapshot,omitempty"`
}

// StateReset is the answer: the entry's key and its new version.
type StateReset struct {
	Volume   string `json:"volume"`
	Snapshot string `json:"snapshot,omitempty"`
	Key      string `json:"key"`
	Version  uint64 `json:"version"`
}

// StateResetter is implemented by Services that can reset shared state.
type StateResetter interface {
	ResetState(ctx context.Context, volume string, r ResetState) (StateReset, error)
}

// resetStateHandler serves POST /v1/volumes/{v}/reset-state.
func resetStateHandler(svc Service) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		rs, ok := svc.(StateResetter)
		if !ok {
			reply(w, 0, nil, fmt.Errorf("%w: this node cannot reset shared state", ErrNotFound))
			return
		}
		var req ResetState
		if err := decode(r, &req); err != nil {
			reply(w, 0, nil, err)
			return
		}
		if req.Snapshot != "" {
			if err := ValidName("snapshot", req.Snapshot); err != nil {
				reply(w, 0, nil, err)
				return
			}
		}
		st, err := rs.ResetState(r.Context(), r.PathValue("v"), req)
		reply(w, http.StatusOK, st, err)
	}
}
