// Package api is csnap's HTTP API (SPEC.md): the JSON types, the Service a
// node implements, the http.Handler that serves it under /v1/, and the
// Client csnap-admin uses.
//
// Every node serves the API; a node that is not a volume's snapshot server
// forwards that volume's requests to the server (the Service decides).
// Errors are JSON objects {"error": "what failed and why"} with an HTTP
// status that says whose fault it was: 400 bad request, 404 no such
// volume or snapshot, 403 not allowed here (a path outside the node's
// volume_paths), 409 conflict (exists already, busy), 503 no server
// for the volume right now, 500 anything else.
package api

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"time"

	"github.com/csnap/csnap/internal/names"
)

// Volume is a volume's definition and state.
type Volume struct {
	Name      string `json:"name"`
	Origin    string `json:"origin"`
	Store     string `json:"store"`
	Size      int64  `json:"size"`
	ChunkSize int64  `json:"chunk_size"`
	// Server is the node serving the volume's snapshot metadata, or ""
	// when none is elected.
	Server    string `json:"server,omitempty"`
	Snapshots int    `json:"snapshots"`
	// StoreUsed and StoreSize describe the snapshot store's space.
	StoreUsed int64 `json:"store_used"`
	StoreSize int64 `json:"store_size"`
	// Engine is the state of the volume's store engine ("ok", "failed")
	// when the answering node serves the volume; EngineError says why it
	// failed. IOError is set while the answering node's client has seen a
	// write or flush of the origin or store fail: its flushes
	// (SYNCHRONIZE CACHE) fail until `volume recover` or a restart.
	Engine      string `json:"engine,omitempty"`
	EngineError string `json:"engine_error,omitempty"`
	IOError     string `json:"io_error,omitempty"`
	// LocationCache describes the answering node's cache of read-only
	// snapshots' store locations (absent while its client is not
	// connected).
	LocationCache *LocationCache `json:"location_cache,omitempty"`
	// Initiators, when not empty, are the only initiator names allowed to
	// log in to the volume's targets (origin and snapshots) on every node.
	Initiators []string `json:"initiators,omitempty"`
	// Refused says why the answering node does not export the volume (a
	// path outside its volume_paths, a device that does not open), or is
	// empty.
	Refused string `json:"refused,omitempty"`
}

// LocationCache counts a node's snapshot reads served from its cache of
// store locations (hits) and those that asked the volume's server.
type LocationCache struct {
	Hits    uint64 `json:"hits"`
	Misses  uint64 `json:"misses"`
	Entries int    `json:"entries"` // chunk locations held
	Bytes   int    `json:"bytes"`   // memory they are accounted for
}

// CreateVolume is the body of POST /v1/volumes.
type CreateVolume struct {
	Name      string `json:"name"`
	Origin    string `json:"origin"`
	Store     string `json:"store"`
	Size      int64  `json:"size,omitempty"`
	ChunkSize int64  `json:"chunk_size,omitempty"`
	// Force formats a store that holds data that is not a csnap store
	// (never one that holds a csnap store).
	Force bool `json:"force,omitempty"`
	// Initiators is the volume's initiator allow-list (empty: any).
	Initiators []string `json:"initiators,omitempty"`
}

// SetVolume is the body of PATCH /v1/volumes/V: the settings to change
// (absent fields are left as they are).
type SetVolume struct {
	// Initiators replaces the initiator allow-list; an empty list clears
	// it (any initiator may log in, CHAP permitting).
	Initiators *[]string `json:"initiators,omitempty"`
}

// Snapshot is one snapshot of a volume.
type Snapshot struct {
	Name     string    `json:"name"`
	ID       uint64    `json:"id"`
	Created  time.Time `json:"created"`
	Priority int       `json:"priority"`
	Writable bool      `json:"writable"`
	// Dropped is set when the store filled up and this snapshot was
	// sacrificed: its LUN reports errors until it is deleted.
	Dropped     bool  `json:"dropped,omitempty"`
	UniqueBytes int64 `json:"unique_bytes"`
	SharedBytes int64 `json:"shared_bytes"`
	// Target is the snapshot's iSCSI target name.
	Target string `json:"target"`
}

// CreateSnapshot is the body of POST /v1/volumes/V/snapshots.
type CreateSnapshot struct {
	Name     string `json:"name"`
	Priority int    `json:"priority,omitempty"`
	Writable bool   `json:"writable,omitempty"`
}

// Server describes a volume's current snapshot server.
type Server struct {
	Node    string    `json:"node"`
	Address string    `json:"address"`
	Term    uint64    `json:"term"`
	Since   time.Time `json:"since"`
}

// ClientEntry is one entry of a volume's client registry.
type ClientEntry struct {
	ID   string `json:"id"`
	Node string `json:"node"`
	// State is "connected" or "awaited" (known from the registry, not yet
	// reconnected to a newly elected server).
	State string `json:"state"`
	Locks int    `json:"locks"`
}

// CheckReport is the result of a full consistency check of a store.
type CheckReport struct {
	Volume   string   `json:"volume"`
	Clean    bool     `json:"clean"`
	Problems []string `json:"problems,omitempty"`
	Checked  int64    `json:"checked_blocks"`
}

// Health is GET /v1/health.
type Health struct {
	Status  string   `json:"status"`
	Node    string   `json:"node"`
	Targets []string `json:"targets"`
}

// RecoverReport is the answer of POST /v1/volumes/V/recover.
type RecoverReport struct {
	Volume string `json:"volume"`
	// Engine is the store engine's state afterwards ("ok").
	Engine string `json:"engine"`
	// ClearedIOError is the answering node's latched IO error that the
	// recovery cleared ("" if none).
	ClearedIOError string `json:"cleared_io_error,omitempty"`
}

// Recoverer is implemented by a Service that can recover a volume's failed
// store engine in place (csnap-admin volume recover): the engine's journal
// is replayed on the same devices, and the answering node's latched IO
// error (which fails its flushes) is cleared.
type Recoverer interface {
	Recover(ctx context.Context, volume string) (RecoverReport, error)
}

// Service is what a node does for the API. Implementations return errors
// made with the Err* helpers (or wrapping them) so the handler can pick the
// HTTP status.
type Service interface {
	Health(ctx context.Context) (Health, error)
	Volumes(ctx context.Context) ([]Volume, error)
	Volume(ctx context.Context, name string) (Volume, error)
	CreateVolume(ctx context.Context, req CreateVolume) (Volume, error)
	SetVolume(ctx context.Context, name string, req SetVolume) (Volume, error)
	Snapshots(ctx context.Context, volume string) ([]Snapshot, error)
	CreateSnapshot(ctx context.Context, volume string, req CreateSnapshot) (Snapshot, error)
	DeleteSnapshot(ctx context.Context, volume, snapshot string) error
	Server(ctx context.Context, volume string) (Server, error)
	Clients(ctx context.Context, volume string) ([]ClientEntry, error)
	Check(ctx context.Context, volume string) (CheckReport, error)
}

// Error kinds; wrap them (fmt.Errorf("...: %w", api.ErrNotFound)) so the
// handler answers with the matching status.
var (
	ErrBadRequest  = errors.New("bad request")
	ErrNotFound    = errors.New("not found")
	ErrConflict    = errors.New("conflict")
	ErrUnavailable = errors.New("unavailable")
	// ErrForbidden: not allowed on this node (a path outside its
	// volume_paths).
	ErrForbidden = errors.New("forbidden")
)

// ValidName checks a volume or snapshot name (SPEC.md: 1-63 characters of
// a-z 0-9 -, starting with a letter or digit; the rule is internal/names').
func ValidName(kind, name string) error {
	if !names.Valid(name) {
		return fmt.Errorf("%w: %s name %q must be %s", ErrBadRequest, kind, name, names.Rule)
	}
	return nil
}

// MaxInitiatorName is the longest iSCSI name (RFC 3720 section 3.2.6.1).
const MaxInitiatorName = 223

var (
	iqnRE = regexp.MustCompile(`^iqn\.[0-9]{4}-(0[1-9]|1[0-2])\.[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*(:[a-z0-9.:-]+)?$`)
	euiRE = regexp.MustCompile(`^eui\.[0-9A-F]{16}$`)
	naaRE = regexp.MustCompile(`^naa\.([0-9A-F]{16}|[0-9A-F]{32})$`)
)

// ValidInitiatorName checks an iSCSI initiator name for an allow-list:
// the iqn., eui. or naa. form of RFC 3720 section 3.2.6.3 and RFC 3980,
// at most 223 bytes, already in the normalised (lower-case iqn, upper-case
// hex) form that initiators send.
func ValidInitiatorName(name string) error {
	switch {
	case len(name) > MaxInitiatorName:
		return fmt.Errorf("%w: initiator name of %d bytes (at most %d)", ErrBadRequest, len(name), MaxInitiatorName)
	case iqnRE.MatchString(name), euiRE.MatchString(name), naaRE.MatchString(name):
		return nil
	}
	return fmt.Errorf("%w: initiator name %q is not an iSCSI name (iqn.YYYY-MM.reversed.domain[:id], eui.<16 hex>, naa.<16 or 32 hex>; lower-case iqn, upper-case hex)", ErrBadRequest, name)
}

// ValidInitiators checks an allow-list: valid names, no duplicates.
func ValidInitiators(names []string) error {
	seen := map[string]bool{}
	for _, n := range names {
		if err := ValidInitiatorName(n); err != nil {
			return err
		}
		if seen[n] {
			return fmt.Errorf("%w: initiator %s listed twice", ErrBadRequest, n)
		}
		seen[n] = true
	}
	return nil
}
