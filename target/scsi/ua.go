package scsi

import "sync"

// Unit attention conditions (SAM-5 5.14, SPC-4 5.8.7). They are kept per
// I_T nexus in the shared LUState, so that an event on one node (say a
// PREEMPT) reaches the initiators connected to the others.

// Unit attention conditions, as ASC<<8 | ASCQ.
const (
	uaPowerOnReset        UnitAttention = 0x2900
	uaPowerOn             UnitAttention = 0x2901
	uaBusReset            UnitAttention = 0x2902 // target reset
	uaBusDeviceReset      UnitAttention = 0x2903 // LUN reset
	uaModeChanged         UnitAttention = 0x2a01
	uaReservationsPreempt UnitAttention = 0x2a03
	uaReservationsRelease UnitAttention = 0x2a04
	uaRegistrationsPreemp UnitAttention = 0x2a05
	uaCapacityChanged     UnitAttention = 0x2a09
	uaReportedLUNsChanged UnitAttention = 0x3f0e
)

// maxPendingUA bounds the unit attentions queued for one nexus. SPC-4
// 5.8.7 allows dropping some when the queue is full; the initiator then
// learns of the rest through the ones it gets.
const maxPendingUA = 8

// postUA queues ua for nexus n if n is known. A reset or power on condition
// replaces every other pending condition (SAM-5 6.3.2: it subsumes them);
// a condition already queued is not queued twice.
func (s *LUState) postUA(n NexusID, ua UnitAttention) {
	q, ok := s.Nexuses[n]
	if !ok {
		return
	}
	if ua.isReset() {
		s.Nexuses[n] = []UnitAttention{ua}
		return
	}
	for _, p := range q {
		if p == ua || p.isReset() {
			// Already pending, or implied by a pending reset.
			return
		}
	}
	if len(q) >= maxPendingUA {
		return
	}
	s.Nexuses[n] = append(q, ua)
}

// postUAAll queues ua for every known nexus for which skip returns false
// (skip may be nil).
func (s *LUState) postUAAll(ua UnitAttention, skip func(NexusID) bool) {
	for n := range s.Nexuses {
		if skip == nil || !skip(n) {
			s.postUA(n, ua)
		}
	}
}

// takeUA removes and returns the oldest unit attention pending for n.
func (s *LUState) takeUA(n NexusID) (UnitAttention, bool) {
	q := s.Nexuses[n]
	if len(q) == 0 {
		return 0, false
	}
	s.Nexuses[n] = q[1:]
	return q[0], true
}

// maxNexuses bounds the nexuses an LU's shared state remembers across the
// cluster, so that the state stays well within the 512 KiB a shared-state
// value may take (a nexus id is at most about 360 bytes with InitiatorName
// bounded to 223) however many sessions log in, and nexuses of nodes that
// crashed (NexusLost never ran for them) cannot pile up without end.
const maxNexuses = 1024

// admitNexus records n as a nexus of the logical unit. The first command of
// a new I_T nexus reports POWER ON, RESET, OR BUS DEVICE RESET OCCURRED
// (SAM-5 6.3.2). At maxNexuses, a nexus with nothing pending that holds no
// reservation is forgotten to make room (if it is still alive, its next
// command admits it again, with a POWER ON unit attention); if there is
// none, n is not remembered (it gets no unit attentions).
func (s *LUState) admitNexus(n NexusID) {
	if s.Nexuses == nil {
		s.Nexuses = make(map[NexusID][]UnitAttention)
	}
	if _, ok := s.Nexuses[n]; ok {
		return
	}
	if len(s.Nexuses) >= maxNexuses && !s.evictNexus() {
		return
	}
	s.Nexuses[n] = []UnitAttention{uaPowerOnReset}
}

// forgetStale forgets the nexuses of target port port for which live
// returns false.
func (s *LUState) forgetStale(port string, live func(NexusID) bool) {
	for id := range s.Nexuses {
		if id.TargetPort == port && !live(id) {
			delete(s.Nexuses, id)
		}
	}
}

// ForgetTargetPorts forgets the nexuses (and their pending unit
// attentions) whose target port match picks, and returns how many: the
// cluster layer's cleanup after a node left, whose sessions all ended with
// it. Reservations and registrations are not touched: they outlive the
// loss of an I_T nexus (SPC-4 5.12.1).
func (s *LUState) ForgetTargetPorts(match func(targetPort string) bool) int {
	n := 0
	for id := range s.Nexuses {
		if match(id.TargetPort) {
			delete(s.Nexuses, id)
			n++
		}
	}
	return n
}

// nexusSet is a set of nexus ids safe for concurrent use; every command
// asks it (has), so reads take no lock.
type nexusSet struct{ ids sync.Map }

func (n *nexusSet) has(id NexusID) bool {
	_, ok := n.ids.Load(id)
	return ok
}

func (n *nexusSet) add(id NexusID)    { n.ids.Store(id, struct{}{}) }
func (n *nexusSet) remove(id NexusID) { n.ids.Delete(id) }

// evictNexus forgets one idle nexus (no pending unit attention, holding no
// reservation) and reports whether it found one.
func (s *LUState) evictNexus() bool {
	for id, q := range s.Nexuses {
		if len(q) > 0 || (s.Legacy != nil && *s.Legacy == id) ||
			(s.Reservation != nil && s.Reservation.Holder == id) {
			continue
		}
		delete(s.Nexuses, id)
		return true
	}
	return false
}

// uaResult is the CHECK CONDITION that reports ua.
func uaResult(ua UnitAttention) Result {
	return checkCondition(SenseUnitAttention, ua.asc(), ua.ascq())
}
