package iscsi

import (
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"
	"time"
)

// Login status classes and details (RFC 7143 section 11.13.5).
const (
	loginSuccess          = 0x0000
	loginInitiatorError   = 0x0200
	loginAuthFailed       = 0x0201
	loginForbidden        = 0x0202
	loginNotFound         = 0x0203
	loginTargetRemoved    = 0x0204
	loginUnsupportedVer   = 0x0205
	loginTooManyConns     = 0x0206
	loginMissingParam     = 0x0207
	loginCantIncludeConn  = 0x0208
	loginSessionTypeUnsup = 0x0209
	loginNoSession        = 0x020a
	loginInvalidRequest   = 0x020b
	loginTargetError      = 0x0300
	loginServiceUnavail   = 0x0301
	loginOutOfResources   = 0x0302
)

// Login stages (CSG/NSG).
const (
	stageSecurity    = 0
	stageOperational = 1
	stageFullFeature = 3
)

// loginState carries a connection through its login phase.
type loginState struct {
	c          *conn
	isid       [6]byte
	tsih       uint16
	cid        uint16
	itt        uint32
	cmdSN      uint32
	statSN     uint32
	first      bool // no PDU of this login seen yet
	stage      int
	initiator  string
	targetName string
	discovery  bool
	// named is set once the first complete login request (which may span
	// several PDUs) fixed InitiatorName, SessionType and TargetName: later
	// requests may repeat them but never change them.
	named      bool
	tgt        *target
	authDone   bool
	authMethod string // "", "None" or "CHAP"
	chap       *chapState
	neg        *negotiator
	sentTPGT   bool
	sentAlias  bool
	sentMRDSL  bool
	pending    []byte // text of a continued (C bit) request
}

// loginError ends a login with a status response.
type loginError struct {
	status uint16
	err    error
}

func (e *loginError) Error() string {
	return fmt.Sprintf("login failed (status %#04x): %v", e.status, e.err)
}

func loginFail(status uint16, format string, a ...any) error {
	return &loginError{status, fmt.Errorf(format, a...)}
}

// login runs the login phase. On success the connection is bound to a
// session and its negotiated parameters are in force.
func (c *conn) login() error {
	c.nc.SetDeadline(time.Now().Add(c.srv.cfg.LoginTimeout))
	defer c.nc.SetDeadline(time.Time{})
	ls := &loginState{c: c, first: true, stage: -1, neg: newNegotiator(c.srv.cfg.Offer)}
	c.rd.maxData = maxTextBytes
	for {
		var p PDU
		if err := c.rd.readPDU(&p); err != nil {
			return fmt.Errorf("reading login request: %w", err)
		}
		if p.Opcode() != opLoginReq {
			// Anything but a login before full feature phase is a
			// protocol error: RFC 7143 says close the connection.
			return fmt.Errorf("opcode %#x during login", p.Opcode())
		}
		done, err := ls.step(&p)
		if err != nil {
			var le *loginError
			if errors.As(err, &le) {
				// Counted before the initiator hears of it, so its
				// next try already finds the count.
				c.countFailure(le)
				ls.respond(&p, nil, false, 0, le.status)
			}
			return err
		}
		if done {
			return nil
		}
	}
}

// step handles one login request PDU.
func (ls *loginState) step(p *PDU) (done bool, err error) {
	flags := p.Flags()
	transit := flags&flagTransit != 0
	cont := flags&flagContinue != 0
	csg := int(flags>>2) & 3
	nsg := int(flags) & 3
	if transit && cont {
		return false, loginFail(loginInitiatorError, "login request with both T and C set")
	}
	verMax, verMin := p.BHS[2], p.BHS[3]
	if verMin > 0 {
		_ = verMax
		return false, loginFail(loginUnsupportedVer, "initiator needs iSCSI version %d..%d, we speak 0", verMin, verMax)
	}
	var isid [6]byte
	copy(isid[:], p.BHS[8:14])
	tsih := binary.BigEndian.Uint16(p.BHS[14:])
	if ls.first {
		if ls.c.source != "" && ls.c.srv.authFails.blocked(ls.c.source, ls.c.srv.now()) {
			return false, loginFail(loginServiceUnavail, "too many failed logins from %s; try again later", ls.c.source)
		}
		ls.isid, ls.tsih = isid, tsih
		ls.cid = binary.BigEndian.Uint16(p.BHS[20:])
		ls.itt = p.ITT()
		ls.cmdSN = p.get(fieldCmdSN)
		ls.statSN = p.get(fieldExpStatSN) // ExpStatSN: where our StatSN starts
		ls.stage = csg
	} else if isid != ls.isid || tsih != ls.tsih || p.ITT() != ls.itt {
		return false, loginFail(loginInitiatorError, "ISID, TSIH or ITT changed during login")
	}
	if csg != ls.stage && !(csg > ls.stage) {
		return false, loginFail(loginInitiatorError, "login stage went back from %d to %d", ls.stage, csg)
	}
	if csg == 2 || csg == stageFullFeature {
		return false, loginFail(loginInitiatorError, "invalid current login stage %d", csg)
	}
	ls.stage = csg

	ls.pending = append(ls.pending, p.Data...)
	if len(ls.pending) > maxTextBytes {
		return false, loginFail(loginOutOfResources, "login text exceeds %d bytes", maxTextBytes)
	}
	ls.first = false
	if cont {
		// More text follows: acknowledge with an empty response.
		ls.respond(p, nil, false, nsg, loginSuccess)
		return false, nil
	}
	pairs, err := parseText(ls.pending, false)
	ls.pending = nil
	if err != nil {
		return false, loginFail(loginInitiatorError, "%v", err)
	}
	resp, err := ls.keys(pairs, csg)
	if err != nil {
		return false, err
	}
	if !ls.discovery && !ls.sentTPGT {
		resp = append(resp, kv{"TargetPortalGroupTag", strconv.Itoa(int(ls.c.srv.cfg.PortalGroupTag))})
		ls.sentTPGT = true
	}

	if csg == stageSecurity {
		if ls.authMethod == "" && ls.needAuth() {
			return false, loginFail(loginAuthFailed, "CHAP required but the initiator offered no AuthMethod")
		}
		if transit && !ls.authDone {
			switch {
			case ls.authMethod == "CHAP" && ls.chap != nil && ls.chap.step < 2:
				// The initiator may ask to move on from its first
				// request; the exchange is not over, so we answer
				// without the T bit (RFC 7143 section 6.2).
				transit = false
			case ls.authMethod == "CHAP" || ls.needAuth():
				return false, loginFail(loginAuthFailed, "initiator left the security stage before authenticating")
			default:
				ls.authDone = true
			}
		}
	} else if !ls.authDone {
		if ls.needAuth() {
			return false, loginFail(loginAuthFailed, "authentication required, initiator skipped the security stage")
		}
		ls.authDone = true
	}
	if csg == stageOperational || (transit && nsg == stageFullFeature) {
		if !ls.sentMRDSL {
			resp = append(resp, kv{"MaxRecvDataSegmentLength", strconv.Itoa(int(ls.c.srv.cfg.Offer.MaxRecvDataSegmentLength))})
			ls.sentMRDSL = true
		}
	}
	if transit && nsg == stageFullFeature {
		if err := ls.c.enterFullFeature(ls); err != nil {
			return false, err
		}
		// The login slot is free before the initiator hears it is in.
		ls.c.endLogin()
		ls.respond(p, encodeText(resp), true, nsg, loginSuccess)
		return true, nil
	}
	ls.respond(p, encodeText(resp), transit, nsg, loginSuccess)
	return false, nil
}

func (ls *loginState) needAuth() bool {
	if ls.discovery {
		return ls.c.srv.cfg.DiscoveryCHAP != nil
	}
	return ls.tgt != nil && ls.tgt.cfg.CHAP != nil
}

func (ls *loginState) chapConfig() *CHAP {
	if ls.discovery {
		return ls.c.srv.cfg.DiscoveryCHAP
	}
	if ls.tgt != nil {
		return ls.tgt.cfg.CHAP
	}
	return nil
}

// identify takes InitiatorName, SessionType and TargetName from the first
// complete login request and refuses any later request that changes them.
func (ls *loginState) identify(m map[string]string) error {
	if ls.named {
		sessionType := "Normal"
		if ls.discovery {
			sessionType = "Discovery"
		}
		for key, fixed := range map[string]string{"InitiatorName": ls.initiator, "SessionType": sessionType, "TargetName": ls.targetName} {
			if v, ok := m[key]; ok && v != fixed {
				return loginFail(loginInitiatorError, "%s changed during login (first %q, now %q)", key, fixed, v)
			}
		}
		return nil
	}
	ls.named = true
	ls.initiator = m["InitiatorName"]
	switch v := m["SessionType"]; v {
	case "Discovery":
		ls.discovery = true
	case "Normal", "":
	default:
		return loginFail(loginSessionTypeUnsup, "unknown SessionType %q", v)
	}
	ls.targetName = m["TargetName"]
	if ls.initiator == "" {
		return loginFail(loginMissingParam, "InitiatorName missing")
	}
	if err := validInitiatorName(ls.initiator); err != nil {
		return loginFail(loginInitiatorError, "%v", err)
	}
	if ls.discovery {
		if ls.targetName != "" {
			return loginFail(loginInitiatorError, "TargetName in a discovery session")
		}
		return nil
	}
	if ls.targetName == "" {
		return loginFail(loginMissingParam, "TargetName missing in a normal session")
	}
	// The target decides whether authentication is needed, so it must be
	// known before AuthMethod is answered.
	t := ls.c.srv.lookupTarget(ls.targetName)
	if t == nil {
		return loginFail(loginNotFound, "target %s not found", ls.targetName)
	}
	ls.c.loginTarget = t.cfg.Name
	if !t.allows(ls.initiator) {
		return loginFail(loginForbidden, "initiator %s is not on the allow-list of %s", ls.initiator, ls.targetName)
	}
	ls.tgt = t
	return nil
}

// authorize decides, as the login enters full feature phase, whether it
// may: against the target's configuration at this moment (which may have
// changed during the login), the initiator must be allowed and, where CHAP
// is required, must have completed CHAP with exactly these credentials. It
// returns the identity the session was authenticated as ("" without CHAP).
func (ls *loginState) authorize(tgt *target) (identity string, err error) {
	need := ls.c.srv.cfg.DiscoveryCHAP
	if !ls.discovery {
		if tgt == nil {
			return "", loginFail(loginTargetRemoved, "target %s was removed during login", ls.targetName)
		}
		if !tgt.allows(ls.initiator) {
			return "", loginFail(loginForbidden, "initiator %s is not on the allow-list of %s", ls.initiator, ls.targetName)
		}
		need = tgt.cfg.CHAP
	}
	authed := ls.chap != nil && ls.chap.step == 2 && ls.chap.cfg != nil
	if need == nil {
		if authed {
			return ls.chap.cfg.User, nil
		}
		return "", nil
	}
	if !authed || ls.chap.cfg.User != need.User || ls.chap.cfg.Secret != need.Secret {
		return "", loginFail(loginAuthFailed, "not authenticated for %s", ls.sessionName())
	}
	return need.User, nil
}

// sessionName names what the login is for, in messages.
func (ls *loginState) sessionName() string {
	if ls.discovery {
		return "discovery"
	}
	return ls.targetName
}

// keys handles the text keys of one (complete) login request.
func (ls *loginState) keys(pairs []kv, csg int) ([]kv, error) {
	var resp []kv
	m := map[string]string{}
	for _, p := range pairs {
		m[p.Key] = p.Value
	}
	// Session-identifying keys first: they decide what the rest mean.
	// They are taken from the first request only (RFC 7143 section
	// 6.3): a later request that changes one would otherwise switch the
	// session to a target (or from discovery to normal) that the
	// authentication was not decided for.
	if err := ls.identify(m); err != nil {
		return nil, err
	}
	for _, p := range pairs {
		k, v := p.Key, p.Value
		switch k {
		case "InitiatorName", "SessionType", "TargetName", "InitiatorAlias":
			// declarative, handled above or informational
		case "AuthMethod":
			if csg != stageSecurity {
				resp = append(resp, kv{k, "Irrelevant"})
				continue
			}
			choice := "Reject"
			want := "None"
			if ls.needAuth() {
				want = "CHAP"
			}
			for _, m := range splitList(v) {
				if m == want {
					choice = want
					break
				}
			}
			if choice == "Reject" {
				return nil, loginFail(loginAuthFailed, "AuthMethod %q offered, we need %s", v, want)
			}
			ls.authMethod = choice
			if choice == "CHAP" {
				ls.chap = &chapState{cfg: ls.chapConfig(), algs: ls.c.srv.cfg.CHAPAlgorithms}
			} else {
				ls.authDone = true
			}
			resp = append(resp, kv{k, choice})
		case "CHAP_A", "CHAP_I", "CHAP_C", "CHAP_N", "CHAP_R":
			// handled below as a group
		case "TargetAlias", "TargetAddress", "TargetPortalGroupTag":
			// Target-declared keys: an initiator must not send them.
			resp = append(resp, kv{k, "Reject"})
		case "SendTargets":
			resp = append(resp, kv{k, "Irrelevant"})
		default:
			if r, ok := ls.neg.operational(k, v); ok {
				if r != "" {
					resp = append(resp, kv{k, r})
				}
				continue
			}
			resp = append(resp, kv{k, "NotUnderstood"})
		}
	}
	if _, ok := m["CHAP_A"]; ok || m["CHAP_N"] != "" || m["CHAP_R"] != "" {
		if ls.chap == nil {
			return nil, loginFail(loginAuthFailed, "CHAP keys without AuthMethod=CHAP")
		}
		if ls.chap.cfg == nil {
			return nil, loginFail(loginAuthFailed, "CHAP not configured")
		}
		r, done, err := ls.chap.handle(m)
		if err != nil {
			return nil, loginFail(loginAuthFailed, "%v", err)
		}
		if done {
			ls.authDone = true
		}
		resp = append(resp, r...)
	}
	if !ls.discovery && ls.tgt != nil && ls.tgt.cfg.Alias != "" && !ls.sentAlias {
		resp = append(resp, kv{"TargetAlias", ls.tgt.cfg.Alias})
		ls.sentAlias = true
	}
	return resp, nil
}

func splitList(v string) []string {
	var out []string
	start := 0
	for i := 0; i <= len(v); i++ {
		if i == len(v) || v[i] == ',' {
			out = append(out, v[start:i])
			start = i + 1
		}
	}
	return out
}

// respond sends one login response.
func (ls *loginState) respond(req *PDU, data []byte, transit bool, nsg int, status uint16) {
	var p PDU
	flags := byte(ls.stage&3) << 2
	if transit && status == loginSuccess {
		flags |= flagTransit | byte(nsg&3)
	}
	p.setOpcode(opLoginResp, flags)
	p.BHS[2] = 0 // VersionMax
	p.BHS[3] = 0 // VersionActive
	copy(p.BHS[8:14], ls.isid[:])
	binary.BigEndian.PutUint16(p.BHS[14:], ls.tsih)
	p.set(fieldITT, req.ITT())
	p.set(fieldStatSN, ls.statSN)
	if status == loginSuccess {
		ls.statSN++
	}
	p.set(fieldExpCmdSN, ls.cmdSN)
	p.set(fieldMaxCmdSN, ls.cmdSN+ls.c.srv.cfg.QueueDepth-1)
	p.BHS[36] = byte(status >> 8)
	p.BHS[37] = byte(status)
	p.Data = data
	ls.c.nc.Write(p.marshal(false, false))
}
