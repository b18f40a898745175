package scsi

import (
	"errors"
	"slices"
	"strings"
)

// Persistent reservations (SPC-4 5.12, 6.13, 6.14). The state lives in the
// ReservationStore; every PERSISTENT RESERVE OUT is one Update, so it is
// atomic with respect to the other nodes.

// PERSISTENT RESERVE IN service actions.
const (
	prinReadKeys        = 0x00
	prinReadReservation = 0x01
	prinReportCaps      = 0x02
	prinReadFullStatus  = 0x03
)

// PERSISTENT RESERVE OUT service actions.
const (
	proutRegister       = 0x00
	proutReserve        = 0x01
	proutRelease        = 0x02
	proutClear          = 0x03
	proutPreempt        = 0x04
	proutPreemptAbort   = 0x05
	proutRegisterIgnore = 0x06
	proutRegisterMove   = 0x07
)

// validPRType reports whether t is a persistent reservation type.
func validPRType(t byte) bool {
	switch t {
	case prTypeWE, prTypeEA, prTypeWERO, prTypeEARO, prTypeWEAR, prTypeEAAR:
		return true
	}
	return false
}

// allRegistrants reports the "all registrants" types, where every
// registrant holds the reservation (SPC-4 5.12.10).
func allRegistrants(t byte) bool { return t == prTypeWEAR || t == prTypeEAAR }

// registrantsOnly reports the types that give access to all registrants.
func registrantsOnly(t byte) bool {
	return t == prTypeWERO || t == prTypeEARO || allRegistrants(t)
}

// exclusiveAccess reports the types that also keep non-holders from reading.
func exclusiveAccess(t byte) bool {
	return t == prTypeEA || t == prTypeEARO || t == prTypeEAAR
}

// isHolder reports whether nexus n holds the persistent reservation
// (SPC-4 5.12.10): any registrant for the all registrants types, otherwise
// the nexus that reserved, or any nexus of its registration if it was made
// with ALL_TG_PT.
func (s *LUState) isHolder(n NexusID) bool {
	res := s.Reservation
	if res == nil {
		return false
	}
	reg := s.registration(n)
	if reg == nil {
		return false
	}
	if allRegistrants(res.Type) {
		return true
	}
	return reg.Key == res.Key && reg.matches(res.Holder)
}

// conflicts reports whether command c from nexus n must get RESERVATION
// CONFLICT under the logical unit's reservations.
func (s *LUState) conflicts(n NexusID, c *command, cdb []byte) bool {
	if s.Legacy != nil && *s.Legacy != n {
		// SPC-2 reservation: only a few commands get through (SPC-2 5.5.1).
		allowed := c.spc2OK || c.op == opPreventAllow && cdb[4]&0x03 == 0
		if !allowed {
			return true
		}
	}
	res := s.Reservation
	if res == nil {
		return false
	}
	rule := c.rule(cdb)
	if rule == prAllowed || s.isHolder(n) {
		return false
	}
	if registrantsOnly(res.Type) && s.registration(n) != nil {
		return false
	}
	if rule == prConflict {
		return true
	}
	return exclusiveAccess(res.Type) // prReadOnly
}

// persistentReserveIn implements PERSISTENT RESERVE IN (SPC-4 6.13).
func (lu *LU) persistentReserveIn(r *request) Result {
	alloc := int(be16(r.cdb[7:9]))
	st := r.state
	var d []byte
	switch r.cdb[1] & 0x1f {
	case prinReadKeys:
		d = make([]byte, 8, 8+8*len(st.Registrations))
		for _, reg := range st.Registrations {
			d = append(d, make([]byte, 8)...)
			put64(d[len(d)-8:], reg.Key)
		}
	case prinReadReservation:
		d = make([]byte, 8)
		if res := st.Reservation; res != nil {
			d = append(d, make([]byte, 16)...)
			if !allRegistrants(res.Type) {
				// All registrants reservations report key 0
				// (SPC-4 6.13.3.3).
				put64(d[8:16], res.Key)
			}
			d[21] = res.Type // scope 0: logical unit
		}
	case prinReportCaps:
		d = make([]byte, 8)
		put16(d[0:2], 8)
		d[2] = 0x10 | 0x04                      // CRH, ATP_C (ALL_TG_PT); no SIP_C, no PTPL_C
		d[3] = 0x80 | 0x10                      // TMV, ALLOW COMMANDS 001b
		d[4] = 0x80 | 0x40 | 0x20 | 0x08 | 0x02 // WR_EX_AR EX_AC_RO WR_EX_RO EX_AC WR_EX
		d[5] = 0x01                             // EX_AC_AR
		return good(d, alloc)
	case prinReadFullStatus:
		d = lu.readFullStatus(st)
	default:
		return invalidServiceAction()
	}
	put32(d[0:4], st.Generation)
	put32(d[4:8], uint32(len(d)-8))
	return good(d, alloc)
}

// readFullStatus returns the READ FULL STATUS data (SPC-4 6.13.5), without
// the generation and length, which the caller fills in.
func (lu *LU) readFullStatus(st *LUState) []byte {
	d := make([]byte, 8)
	for i := range st.Registrations {
		reg := &st.Registrations[i]
		e := make([]byte, 24)
		put64(e[0:8], reg.Key)
		if reg.AllTargetPorts {
			e[12] |= 0x02
		}
		if res := st.Reservation; res != nil &&
			(allRegistrants(res.Type) || reg.Key == res.Key && reg.matches(res.Holder)) {
			e[12] |= 0x01 // R_HOLDER
			e[13] = res.Type
		}
		put16(e[18:20], reg.RelativeTargetPort)
		tid := transportID(reg.InitiatorPort)
		put32(e[20:24], uint32(len(tid)))
		d = append(d, e...)
		d = append(d, tid...)
	}
	return d
}

// transportID returns the iSCSI TransportID of an initiator port (SPC-4
// 7.6.4.6): format 01b (name, ",i,0x", ISID) when the port name has an
// ISID, format 00b (name only) otherwise. The name is null terminated and
// padded to a multiple of four bytes, 20 at least.
func transportID(port string) []byte {
	format := byte(0x00)
	if strings.Contains(port, ",i,0x") {
		format = 0x40
	}
	n := max((len(port)+4)&^3, 20)
	t := make([]byte, 4+n)
	t[0] = format | 0x05 // protocol identifier: iSCSI
	put16(t[2:4], uint16(n))
	copy(t[4:], port)
	return t
}

// errPROut carries the result of a failed PERSISTENT RESERVE OUT out of the
// store's update function.
type errPROut struct{ res Result }

func (e *errPROut) Error() string { return "persistent reserve out refused" }

func prFail(res Result) error { return &errPROut{res} }

// persistentReserveOut implements PERSISTENT RESERVE OUT (SPC-4 6.14).
func (lu *LU) persistentReserveOut(r *request) Result {
	n := be32(r.cdb[5:9])
	res := lu.doPROut(r, n)
	res.DataOutLen = int(n)
	return res
}

func (lu *LU) doPROut(r *request, n uint32) Result {
	cdb := r.cdb
	sa := cdb[1] & 0x1f
	scope, typ := cdb[2]>>4, cdb[2]&0x0f
	switch sa {
	case proutRegister, proutRegisterIgnore, proutClear:
	case proutReserve, proutRelease, proutPreempt, proutPreemptAbort:
		if scope != 0 {
			return invalidCDB(2, 7) // only logical unit scope
		}
	default:
		// REGISTER AND MOVE is optional and not supported.
		return invalidServiceAction()
	}
	if n != 24 || len(r.cmd.DataOut) < 24 {
		return paramListLengthError()
	}
	p := r.cmd.DataOut[:24]
	key, sark := be64(p[0:8]), be64(p[8:16])
	flags := p[20]
	switch {
	case flags&0x08 != 0:
		return invalidParam(20, 3) // SPEC_I_PT not supported (SIP_C 0)
	case flags&0x01 != 0:
		return invalidParam(20, 0) // APTPL not supported (PTPL_C 0)
	}
	allTgPt := flags&0x04 != 0

	var preempted []NexusID
	_, err := lu.update(func(s *LUState) error {
		preempted = nil
		switch sa {
		case proutRegister, proutRegisterIgnore:
			return s.prRegister(r, key, sark, allTgPt, sa == proutRegisterIgnore)
		case proutReserve:
			return s.prReserve(r.nexus, key, typ)
		case proutRelease:
			return s.prRelease(r.nexus, key, typ)
		case proutClear:
			return s.prClear(r.nexus, key)
		default:
			var err error
			preempted, err = s.prPreempt(r.nexus, key, sark, typ)
			return err
		}
	})
	var pe *errPROut
	if errors.As(err, &pe) {
		return pe.res
	}
	if err != nil {
		return stateError(err)
	}
	if sa == proutPreemptAbort && len(preempted) > 0 {
		if fn := r.t.abortHandler(); fn != nil {
			fn(lu.lun, preempted, r.cmd)
		}
	}
	return Result{Status: StatusGood}
}

// prRegister does REGISTER and REGISTER AND IGNORE EXISTING KEY (SPC-4
// 5.12.7, 5.12.11.3).
func (s *LUState) prRegister(r *request, key, sark uint64, allTgPt, ignore bool) error {
	n := r.nexus
	reg := s.registration(n)
	if reg == nil {
		if !ignore && key != 0 {
			return prFail(reservationConflict())
		}
		if sark == 0 {
			return nil // nothing to unregister
		}
		nr := Registration{Key: sark, InitiatorPort: n.InitiatorPort,
			TargetPort: n.TargetPort, RelativeTargetPort: r.cmd.Nexus.Port.RelativeID}
		if allTgPt {
			nr.TargetPort, nr.AllTargetPorts = "", true
		}
		s.Registrations = append(s.Registrations, nr)
		s.Generation++
		return nil
	}
	if !ignore && key != reg.Key {
		return prFail(reservationConflict())
	}
	if sark != 0 {
		if s.isHolder(n) && !allRegistrants(s.Reservation.Type) {
			s.Reservation.Key = sark
		}
		reg.Key = sark
		s.Generation++
		return nil
	}
	// Unregister. A holder's reservation goes with it; for the
	// registrants only types the other registrants learn of it
	// (SPC-4 5.12.11.3). An all registrants reservation lasts while there
	// is a registrant.
	holder := s.isHolder(n)
	s.removeRegistrations(func(x *Registration) bool { return x == reg })
	if res := s.Reservation; res != nil {
		switch {
		case allRegistrants(res.Type):
			if len(s.Registrations) == 0 {
				s.Reservation = nil
			}
		case holder:
			s.Reservation = nil
			if registrantsOnly(res.Type) {
				s.postToRegistrants(uaReservationsRelease, n)
			}
		}
	}
	s.Generation++
	return nil
}

// removeRegistrations deletes the registrations for which drop returns true
// and returns them.
func (s *LUState) removeRegistrations(drop func(*Registration) bool) []Registration {
	var gone []Registration
	kept := s.Registrations[:0]
	for i := range s.Registrations {
		if drop(&s.Registrations[i]) {
			gone = append(gone, s.Registrations[i])
		} else {
			kept = append(kept, s.Registrations[i])
		}
	}
	s.Registrations = kept
	return gone
}

// postToRegistrants queues ua for every known nexus that is registered,
// except the nexus except.
func (s *LUState) postToRegistrants(ua UnitAttention, except NexusID) {
	s.postUAAll(ua, func(n NexusID) bool { return n == except || s.registration(n) == nil })
}

// postToRegistrationNexuses queues ua for every known nexus covered by one
// of regs.
func (s *LUState) postToRegistrationNexuses(ua UnitAttention, regs []Registration, except NexusID) {
	s.postUAAll(ua, func(n NexusID) bool {
		if n == except {
			return true
		}
		return !slices.ContainsFunc(regs, func(r Registration) bool { return r.matches(n) })
	})
}

// checkKey fails unless nexus n is registered with key.
func (s *LUState) checkKey(n NexusID, key uint64) (*Registration, error) {
	reg := s.registration(n)
	if reg == nil || reg.Key != key {
		return nil, prFail(reservationConflict())
	}
	return reg, nil
}

// prReserve does RESERVE (SPC-4 5.12.9).
func (s *LUState) prReserve(n NexusID, key uint64, typ byte) error {
	if !validPRType(typ) {
		return prFail(invalidCDB(2, 3))
	}
	if _, err := s.checkKey(n, key); err != nil {
		return err
	}
	if res := s.Reservation; res != nil {
		if s.isHolder(n) && res.Type == typ {
			return nil // reserving again what one holds is a no-op
		}
		return prFail(reservationConflict())
	}
	s.Reservation = &PersistentReservation{Type: typ, Key: key, Holder: n}
	return nil
}

// prRelease does RELEASE (SPC-4 5.12.11.2).
func (s *LUState) prRelease(n NexusID, key uint64, typ byte) error {
	if _, err := s.checkKey(n, key); err != nil {
		return err
	}
	res := s.Reservation
	if res == nil || !s.isHolder(n) {
		return nil // nothing of ours to release
	}
	if res.Type != typ {
		// INVALID RELEASE OF PERSISTENT RESERVATION
		return prFail(checkCondition(SenseIllegalRequest, ascInvalidFieldInParam, 0x04))
	}
	s.Reservation = nil
	if registrantsOnly(res.Type) {
		s.postToRegistrants(uaReservationsRelease, n)
	}
	return nil
}

// prClear does CLEAR (SPC-4 5.12.11.6): every registration and the
// reservation go; the other registrants get RESERVATIONS PREEMPTED.
func (s *LUState) prClear(n NexusID, key uint64) error {
	if _, err := s.checkKey(n, key); err != nil {
		return err
	}
	gone := s.removeRegistrations(func(*Registration) bool { return true })
	s.Reservation = nil
	s.postToRegistrationNexuses(uaReservationsPreempt, gone, n)
	s.Generation++
	return nil
}

// prPreempt does PREEMPT and PREEMPT AND ABORT (SPC-4 5.12.11.4) and
// returns the nexuses whose registrations were removed.
func (s *LUState) prPreempt(n NexusID, key, sark uint64, typ byte) ([]NexusID, error) {
	own, err := s.checkKey(n, key)
	if err != nil {
		return nil, err
	}
	ownKey := own.Key
	res := s.Reservation
	// keep is the preempting nexus's own registration, which survives
	// even when it carries the preempted key.
	keep := func(r *Registration) bool { return r.matches(n) }
	var gone []Registration
	switch {
	case res != nil && allRegistrants(res.Type) && sark == 0:
		// Preempt an all registrants reservation: every other
		// registration goes, the preempting nexus gets a new
		// reservation (SPC-4 5.12.11.4.4).
		if !validPRType(typ) {
			return nil, prFail(invalidCDB(2, 3))
		}
		gone = s.removeRegistrations(func(r *Registration) bool { return !keep(r) })
		s.Reservation = &PersistentReservation{Type: typ, Key: ownKey, Holder: n}
	case res != nil && !allRegistrants(res.Type) && sark == res.Key:
		// Preempt the holder: its registrations go, the reservation
		// moves to the preempting nexus with the requested type.
		if !validPRType(typ) {
			return nil, prFail(invalidCDB(2, 3))
		}
		gone = s.removeRegistrations(func(r *Registration) bool { return r.Key == sark && !keep(r) })
		s.Reservation = &PersistentReservation{Type: typ, Key: ownKey, Holder: n}
		if res.Type != typ {
			// The remaining registrants see their access change.
			s.postUAAll(uaReservationsRelease, func(x NexusID) bool {
				return x == n || s.registration(x) == nil
			})
		}
	default:
		// Remove registrations only (SPC-4 5.12.11.4.3).
		if sark == 0 {
			return nil, prFail(invalidParam(8, -1))
		}
		gone = s.removeRegistrations(func(r *Registration) bool { return r.Key == sark && !keep(r) })
		if len(gone) == 0 && sark != ownKey {
			return nil, prFail(reservationConflict())
		}
		if res != nil && allRegistrants(res.Type) && len(s.Registrations) == 0 {
			s.Reservation = nil
		}
	}
	s.postToRegistrationNexuses(uaRegistrationsPreemp, gone, n)
	s.Generation++
	ids := make([]NexusID, 0, len(gone))
	for _, g := range gone {
		ids = append(ids, NexusID{InitiatorPort: g.InitiatorPort, TargetPort: g.TargetPort})
	}
	return ids, nil
}
