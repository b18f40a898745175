package scsi

// SPC-2 RESERVE(6)/(10) and RELEASE(6)/(10) (SPC-2 7.21-7.24), with the
// compatible reservation handling of SPC-4 5.13.3 (CRH=1 in REPORT
// CAPABILITIES) when persistent reservations are in use.

// reserve implements RESERVE(6) and RESERVE(10).
func (lu *LU) reserve(r *request) Result {
	if r.cdb[0] == opReserve10 {
		if r.cdb[1]&0x10 != 0 {
			return invalidCDB(1, 4) // 3RDPTY: third party reservations not supported
		}
		if r.cdb[1]&0x02 != 0 {
			return invalidCDB(1, 1) // LONGID
		}
	} else if r.cdb[1]&0x01 != 0 {
		return invalidCDB(1, 0) // EXTENT (obsolete)
	}
	var res Result
	_, err := lu.update(func(s *LUState) error {
		res = Result{Status: StatusGood}
		switch {
		case s.Reservation != nil && s.isHolder(r.nexus):
			// The persistent reservation holder gets GOOD, and no SPC-2
			// reservation is made (SPC-4 5.13.3).
		case s.Reservation != nil || len(s.Registrations) > 0:
			res = reservationConflict()
		case s.Legacy != nil && *s.Legacy != r.nexus:
			res = reservationConflict()
		default:
			n := r.nexus
			s.Legacy = &n
		}
		return nil
	})
	if err != nil {
		return stateError(err)
	}
	return res
}

// release implements RELEASE(6) and RELEASE(10). Releasing a reservation
// one does not hold is not an error (SPC-2 7.23).
func (lu *LU) release(r *request) Result {
	if r.cdb[0] == opRelease10 && r.cdb[1]&0x10 != 0 {
		return invalidCDB(1, 4) // 3RDPTY
	}
	if l := r.state.Legacy; l == nil || *l != r.nexus {
		return Result{Status: StatusGood}
	}
	if _, err := lu.update(func(s *LUState) error {
		if s.Legacy != nil && *s.Legacy == r.nexus {
			s.Legacy = nil
		}
		return nil
	}); err != nil {
		return stateError(err)
	}
	return Result{Status: StatusGood}
}
