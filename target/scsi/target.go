package scsi

import (
	"context"
	"fmt"
	"slices"
	"sync"
)

// PreemptAbortFunc is called by PERSISTENT RESERVE OUT with PREEMPT AND
// ABORT after the preemption took effect and before the command completes.
// The transport must abort every task on logical unit lun that came from
// one of the preempted I_T nexuses, except the PREEMPT AND ABORT command
// itself (except, the Command the transport passed to Execute), as SPC-4
// 5.12.11.2.4 requires. A NexusID with an empty TargetPort stands for the
// initiator port through every target port (an ALL_TG_PT registration).
// Nexuses connected to other nodes are in the list too; a node ignores the
// ones it does not have.
type PreemptAbortFunc func(lun uint64, preempted []NexusID, except *Command)

// Target is a SCSI target device: its logical units and the state they share
// through a ReservationStore. It implements Executor and is safe for
// concurrent use.
type Target struct {
	store ReservationStore

	mu      sync.RWMutex
	luns    map[uint64]*LU
	onAbort PreemptAbortFunc
	// copies is the copy domain EXTENDED COPY resolves CSCD descriptors
	// in; nil: the target's own logical units.
	copies *CopyDomain
}

var _ Executor = (*Target)(nil)

// NewTarget returns a target with the given logical units (LUN -> LU) whose
// reservations and unit attentions live in store (NewMemStore() for a
// single node).
func NewTarget(luns map[uint64]*LU, store ReservationStore) (*Target, error) {
	t := &Target{store: store, luns: make(map[uint64]*LU, len(luns))}
	for n, lu := range luns {
		if err := t.attach(n, lu); err != nil {
			return nil, err
		}
	}
	return t, nil
}

func (t *Target) attach(n uint64, lu *LU) error {
	if lu == nil {
		return fmt.Errorf("LUN %d: nil logical unit", n)
	}
	if n >= 1<<14 {
		// REPORT LUNS uses the flat and peripheral formats only.
		return fmt.Errorf("LUN %d: out of the supported range 0..16383", n)
	}
	// store and lun are read without locks by running commands, so they
	// are set once and never changed; an LU belongs to one target for good.
	if lu.store != nil {
		if lu.store != t.store || lu.lun != n {
			return fmt.Errorf("LUN %d: logical unit already belongs to another target or LUN", n)
		}
	} else {
		lu.store, lu.lun = t.store, n
	}
	t.luns[n] = lu
	return nil
}

// SetPreemptAbortHandler sets the function PREEMPT AND ABORT calls to have
// the transport abort the preempted nexuses' tasks.
func (t *Target) SetPreemptAbortHandler(fn PreemptAbortFunc) {
	t.mu.Lock()
	t.onAbort = fn
	t.mu.Unlock()
}

func (t *Target) abortHandler() PreemptAbortFunc {
	t.mu.RLock()
	defer t.mu.RUnlock()
	return t.onAbort
}

// AddLUN adds a logical unit at runtime. Every I_T nexus gets REPORTED LUNS
// DATA HAS CHANGED.
func (t *Target) AddLUN(n uint64, lu *LU) error {
	t.mu.Lock()
	if _, ok := t.luns[n]; ok {
		t.mu.Unlock()
		return fmt.Errorf("LUN %d already exists", n)
	}
	err := t.attach(n, lu)
	t.mu.Unlock()
	if err != nil {
		return err
	}
	return t.postLUNsChanged()
}

// RemoveLUN removes a logical unit at runtime. Every I_T nexus gets REPORTED
// LUNS DATA HAS CHANGED. Commands already running on it finish normally.
func (t *Target) RemoveLUN(n uint64) error {
	t.mu.Lock()
	_, ok := t.luns[n]
	if ok {
		delete(t.luns, n)
	}
	t.mu.Unlock()
	if !ok {
		return fmt.Errorf("LUN %d does not exist", n)
	}
	return t.postLUNsChanged()
}

// postLUNsChanged tells every I_T nexus of every logical unit that the LUN
// inventory changed (SPC-4 6.33).
func (t *Target) postLUNsChanged() error {
	for _, lu := range t.allLUs() {
		if _, err := lu.update(func(s *LUState) error {
			s.postUAAll(uaReportedLUNsChanged, nil)
			return nil
		}); err != nil {
			return fmt.Errorf("LUN %d: posting REPORTED LUNS DATA HAS CHANGED: %w", lu.lun, err)
		}
	}
	return nil
}

// LU returns the logical unit at LUN n, or nil.
func (t *Target) LU(n uint64) *LU {
	t.mu.RLock()
	defer t.mu.RUnlock()
	return t.luns[n]
}

func (t *Target) allLUs() []*LU {
	t.mu.RLock()
	defer t.mu.RUnlock()
	lus := make([]*LU, 0, len(t.luns))
	for _, lu := range t.luns {
		lus = append(lus, lu)
	}
	return lus
}

// LUNs implements Executor.
func (t *Target) LUNs() []uint64 {
	t.mu.RLock()
	ns := make([]uint64, 0, len(t.luns))
	for n := range t.luns {
		ns = append(ns, n)
	}
	t.mu.RUnlock()
	slices.Sort(ns)
	return ns
}

// Execute implements Executor.
func (t *Target) Execute(ctx context.Context, cmd *Command) Result {
	if len(cmd.CDB) == 0 {
		return invalidOpcode()
	}
	lu := t.LU(cmd.LUN)
	if lu == nil {
		return t.noLU(cmd)
	}
	return lu.execute(ctx, t, cmd)
}

// noLU answers a command addressed to a LUN that does not exist (SPC-4
// 6.6.2, 6.33, 6.39): INQUIRY reports peripheral qualifier 3, REPORT LUNS
// and REQUEST SENSE work, anything else is LOGICAL UNIT NOT SUPPORTED.
func (t *Target) noLU(cmd *Command) Result {
	cdb := cmd.CDB
	if len(cdb) < 6 {
		padded := make([]byte, 6)
		copy(padded, cdb)
		cdb = padded
	}
	switch cdb[0] {
	case opInquiry:
		if cdb[1]&0x01 != 0 || cdb[2] != 0 {
			return luNotSupported()
		}
		data := make([]byte, 36)
		data[0] = 0x7f // qualifier 3 (no LU), type 0x1f (unknown)
		data[2] = 0x06 // SPC-4
		data[3] = 0x12 // HISUP, response data format 2
		data[4] = 36 - 5
		copy(data[8:16], padASCII(vendorID, 8))
		return good(data, int(be16(cdb[3:5])))
	case opReportLUNs:
		if len(cdb) < 12 {
			return invalidCDB(0, -1)
		}
		return t.reportLUNs(cdb)
	case opRequestSense:
		// SPC-4 6.39: LOGICAL UNIT NOT SUPPORTED as sense data.
		s := senseData{key: SenseIllegalRequest, asc: ascLUNotSupported}
		return good(s.encode(), int(cdb[4]))
	}
	return luNotSupported()
}

// reportLUNs implements REPORT LUNS (SPC-4 6.33), for any LUN.
func (t *Target) reportLUNs(cdb []byte) Result {
	alloc := be32(cdb[6:10])
	if alloc < 16 {
		return invalidCDB(6, -1)
	}
	switch cdb[2] {
	case 0x00, 0x02: // all logical units (we have no well known LUs)
	case 0x01, 0x10, 0x11, 0x12: // well known only; administrative / subsidiary: none
		return good(make([]byte, 8), int(alloc))
	default:
		return invalidCDB(2, -1)
	}
	ns := t.LUNs()
	data := make([]byte, 8+8*len(ns))
	put32(data[0:4], uint32(8*len(ns)))
	for i, n := range ns {
		e := data[8+8*i:]
		if n < 256 {
			e[1] = byte(n) // peripheral device addressing
		} else {
			put16(e[0:2], 0x4000|uint16(n)) // flat space addressing
		}
	}
	return good(data, int(alloc))
}

// reportLUNs on an existing logical unit also clears a pending REPORTED
// LUNS DATA HAS CHANGED for the nexus (SPC-4 6.33).
func (lu *LU) reportLUNs(r *request) Result {
	res := r.t.reportLUNs(r.cdb)
	if res.Status != StatusGood {
		return res
	}
	for _, other := range r.t.allLUs() {
		st, err := other.store.Get(other.id)
		if err != nil || !slices.Contains(st.Nexuses[r.nexus], uaReportedLUNsChanged) {
			continue
		}
		_, _ = other.update(func(s *LUState) error {
			s.Nexuses[r.nexus] = slices.DeleteFunc(s.Nexuses[r.nexus], func(u UnitAttention) bool {
				return u == uaReportedLUNsChanged
			})
			return nil
		})
	}
	return res
}

// NexusLost implements Executor: an SPC-2 reservation held by the nexus is
// released (SPC-2 5.5.1) and its unit attentions are forgotten (a new nexus
// starts with POWER ON, RESET). Persistent reservations survive (SPC-4
// 5.12.1).
func (t *Target) NexusLost(n Nexus) {
	id := nexusID(n)
	for _, lu := range t.allLUs() {
		lu.local.remove(id)
		lu.copies.forget(id)
		_, _ = lu.update(func(s *LUState) error {
			if s.Legacy != nil && *s.Legacy == id {
				s.Legacy = nil
			}
			delete(s.Nexuses, id)
			return nil
		})
	}
}

// TaskManagement implements Executor. Only the logical unit state effects
// are done here (SAM-5 7.x); the transport aborts the tasks.
func (t *Target) TaskManagement(fn TMF, lun uint64, n Nexus) TMFResponse {
	switch fn {
	case TMFAbortTask, TMFAbortTaskSet, TMFClearTaskSet:
		// No logical unit state depends on the aborted tasks.
		if t.LU(lun) == nil {
			return TMFLUNNotExist
		}
		return TMFComplete
	case TMFLogicalUnitReset:
		lu := t.LU(lun)
		if lu == nil {
			return TMFLUNNotExist
		}
		if err := lu.reset(uaBusDeviceReset); err != nil {
			return TMFRejected
		}
		return TMFComplete
	case TMFTargetWarmReset, TMFTargetColdReset:
		ua := uaBusReset
		if fn == TMFTargetColdReset {
			ua = uaPowerOn
		}
		resp := TMFComplete
		for _, lu := range t.allLUs() {
			if err := lu.reset(ua); err != nil {
				resp = TMFRejected
			}
		}
		return resp
	case TMFTaskReassign:
		return TMFReassignNotSupp
	}
	return TMFNotSupported
}

// reset does what a logical unit reset or hard reset does to logical unit
// state (SAM-5 6.3.3, SPC-4 5.12.1): the SPC-2 reservation is released,
// mode parameters return to their defaults, and every I_T nexus, the one
// that asked for the reset included, gets unit attention ua (multipath
// initiators check each path for it). Persistent reservations are kept.
func (lu *LU) reset(ua UnitAttention) error {
	_, err := lu.update(func(s *LUState) error {
		s.Legacy = nil
		s.Mode = ModeParameters{}
		s.postUAAll(ua, nil)
		return nil
	})
	return err
}
