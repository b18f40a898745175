package scsi

import (
	"slices"
	"sync"
	"sync/atomic"
)

// ReservationStore keeps the state of logical units that must be shared by
// every node exporting them: persistent reservations, the SPC-2 reservation,
// the pending unit attentions of each I_T nexus and the mode parameters.
//
// The state of one logical unit is a value (LUState) read as a whole and
// changed by an update function, so that a cluster-wide implementation can be
// built from a versioned key-value record: Get returns the latest copy it
// knows, Update does read-modify-compare-and-swap and retries on a conflict.
type ReservationStore interface {
	// Get returns the current state of the logical unit lu. The caller must
	// not modify it. A logical unit never updated has the zero state.
	Get(lu string) (*LUState, error)
	// Update calls fn with a private copy of lu's current state and, when
	// fn returns nil, makes the copy the current state, atomically with
	// respect to every other Update of lu on any node. fn may be called
	// more than once (a remote store retries on a write conflict), so it
	// must not have effects outside the state it is given. Update returns
	// fn's error, or the store's.
	Update(lu string, fn func(s *LUState) error) error
}

// NexusID identifies an I_T nexus in the shared state.
type NexusID struct {
	InitiatorPort string // SCSI initiator port name
	TargetPort    string // SCSI target port name
}

func nexusID(n Nexus) NexusID {
	return NexusID{InitiatorPort: n.InitiatorPort, TargetPort: n.Port.Name}
}

// Persistent reservation types (SPC-4 6.15.2, table 171).
const (
	prTypeWE   = 0x1 // write exclusive
	prTypeEA   = 0x3 // exclusive access
	prTypeWERO = 0x5 // write exclusive, registrants only
	prTypeEARO = 0x6 // exclusive access, registrants only
	prTypeWEAR = 0x7 // write exclusive, all registrants
	prTypeEAAR = 0x8 // exclusive access, all registrants
)

// Registration is one registered reservation key (SPC-4 5.12.7).
type Registration struct {
	Key uint64
	// InitiatorPort and TargetPort name the I_T nexus that registered.
	// With AllTargetPorts the registration covers the initiator port
	// through every target port and TargetPort is empty.
	InitiatorPort  string
	TargetPort     string
	AllTargetPorts bool
	// RelativeTargetPort is the relative port id the registration came
	// through (for READ FULL STATUS).
	RelativeTargetPort uint16
}

// matches reports whether the registration belongs to I_T nexus n.
func (r *Registration) matches(n NexusID) bool {
	return r.InitiatorPort == n.InitiatorPort &&
		(r.AllTargetPorts || r.TargetPort == n.TargetPort)
}

// PersistentReservation is the reservation held on a logical unit.
type PersistentReservation struct {
	Type byte // one of the prType constants
	// Key is the holder's reservation key (for the all registrants types,
	// the key of the registrant that reserved; READ RESERVATION reports 0).
	Key uint64
	// Holder is the I_T nexus that holds it (not used for all registrants
	// types, where every registrant is a holder).
	Holder NexusID
}

// UnitAttention is a pending unit attention condition: its additional
// sense code and qualifier as ASC<<8 | ASCQ.
type UnitAttention uint16

func (u UnitAttention) asc() byte  { return byte(u >> 8) }
func (u UnitAttention) ascq() byte { return byte(u) }

// isReset reports a power on or reset condition (ASC 0x29).
func (u UnitAttention) isReset() bool { return u.asc() == ascPowerOnReset }

// LUState is the shared state of one logical unit.
type LUState struct {
	// Generation is the PRgeneration (SPC-4 6.15.2): bumped by every
	// successful PERSISTENT RESERVE OUT except RESERVE, RELEASE, PREEMPT
	// of no registration, and by nothing else.
	Generation    uint32
	Registrations []Registration
	Reservation   *PersistentReservation // nil when not reserved
	// Legacy is the I_T nexus holding an SPC-2 RESERVE(6)/(10), or nil.
	Legacy *NexusID
	// Nexuses holds every I_T nexus that has used the logical unit since
	// it was established, with its pending unit attentions, oldest first.
	Nexuses map[NexusID][]UnitAttention
	// Capacity is the capacity (bytes) last reported to initiators; a
	// change posts CAPACITY DATA HAS CHANGED.
	Capacity int64
	// Mode holds the changeable mode parameters, the same through every
	// node (MODE SELECT through any node changes them for all).
	Mode ModeParameters
}

// ModeParameters are the changeable mode parameters of a logical unit. The
// zero value is the default.
type ModeParameters struct {
	// WriteCacheDisabled: the Caching page's WCE is clear, so every write
	// is done with FUA (write-through).
	WriteCacheDisabled bool
	// SoftwareWriteProtect: the Control page's SWP is set, so every
	// command that writes the medium fails with DATA PROTECT.
	SoftwareWriteProtect bool
}

// Clone returns a deep copy of s.
func (s *LUState) Clone() *LUState {
	c := &LUState{
		Generation:    s.Generation,
		Registrations: slices.Clone(s.Registrations),
		Capacity:      s.Capacity,
		Mode:          s.Mode,
		Nexuses:       make(map[NexusID][]UnitAttention, len(s.Nexuses)),
	}
	if s.Reservation != nil {
		r := *s.Reservation
		c.Reservation = &r
	}
	if s.Legacy != nil {
		l := *s.Legacy
		c.Legacy = &l
	}
	for k, v := range s.Nexuses {
		c.Nexuses[k] = slices.Clone(v)
	}
	return c
}

// registration returns the registration of nexus n, or nil.
func (s *LUState) registration(n NexusID) *Registration {
	for i := range s.Registrations {
		if s.Registrations[i].matches(n) {
			return &s.Registrations[i]
		}
	}
	return nil
}

// MemStore is a ReservationStore in memory, for a single node and for
// tests. The zero value is ready to use.
type MemStore struct {
	mu  sync.Mutex // serializes Updates and guards lus
	lus sync.Map   // string -> *atomic.Pointer[LUState]
}

// NewMemStore returns an empty MemStore.
func NewMemStore() *MemStore { return &MemStore{} }

func (m *MemStore) slot(lu string) *atomic.Pointer[LUState] {
	if p, ok := m.lus.Load(lu); ok {
		return p.(*atomic.Pointer[LUState])
	}
	p, _ := m.lus.LoadOrStore(lu, new(atomic.Pointer[LUState]))
	return p.(*atomic.Pointer[LUState])
}

// Get implements ReservationStore. It is a single atomic load: the state is
// copied on write.
func (m *MemStore) Get(lu string) (*LUState, error) {
	if s := m.slot(lu).Load(); s != nil {
		return s, nil
	}
	return &LUState{}, nil
}

// Update implements ReservationStore.
func (m *MemStore) Update(lu string, fn func(s *LUState) error) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	p := m.slot(lu)
	cur := p.Load()
	if cur == nil {
		cur = &LUState{}
	}
	next := cur.Clone()
	if err := fn(next); err != nil {
		return err
	}
	p.Store(next)
	return nil
}
