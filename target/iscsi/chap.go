package iscsi

import (
	"bytes"
	"crypto/md5"
	"crypto/rand"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"strconv"
	"strings"
)

// CHAP holds the credentials of one target (or of discovery sessions).
// Initiators authenticate with User/Secret; with MutualUser set, the target
// authenticates back to the initiator with MutualUser/MutualSecret.
type CHAP struct {
	User         string
	Secret       string
	MutualUser   string
	MutualSecret string
}

// CHAPAlgorithm is a CHAP_A value of RFC 7143 section 12.1.3 and the IANA
// registry: the hash of the CHAP exchange.
type CHAPAlgorithm string

// The CHAP algorithms the target knows.
const (
	CHAPMD5    CHAPAlgorithm = "5"
	CHAPSHA1   CHAPAlgorithm = "6"
	CHAPSHA256 CHAPAlgorithm = "7"
)

// chapHash is the hash function of a CHAP algorithm, nil if unknown.
func chapHash(a string) func() hash.Hash {
	switch CHAPAlgorithm(a) {
	case CHAPSHA256:
		return sha256.New
	case CHAPSHA1:
		return sha1.New
	case CHAPMD5:
		return md5.New
	}
	return nil
}

// ParseCHAPAlgorithms turns a comma-separated list of "sha256", "sha1" and
// "md5" (any case) into algorithms, in the order given.
func ParseCHAPAlgorithms(list string) ([]CHAPAlgorithm, error) {
	var out []CHAPAlgorithm
	for _, name := range strings.Split(list, ",") {
		switch strings.ToLower(strings.TrimSpace(name)) {
		case "sha256", "sha-256":
			out = append(out, CHAPSHA256)
		case "sha1", "sha-1":
			out = append(out, CHAPSHA1)
		case "md5":
			out = append(out, CHAPMD5)
		case "":
		default:
			return nil, fmt.Errorf("unknown CHAP algorithm %q (sha256, sha1, md5)", name)
		}
	}
	if len(out) == 0 {
		return nil, errors.New("no CHAP algorithm given")
	}
	return out, nil
}

// chapChallengeLen is the challenge size in bytes. RFC 7143 asks for at
// least as long as the hash output; 32 covers SHA-256.
const chapChallengeLen = 32

// chapState is one CHAP exchange in the security stage of a login.
type chapState struct {
	cfg       *CHAP
	algs      []CHAPAlgorithm // accepted, in order of preference
	alg       string
	id        byte
	challenge []byte
	step      int // 0: expect CHAP_A, 1: expect CHAP_N/CHAP_R, 2: done
}

var errAuth = errors.New("authentication failed")

// handle advances the exchange with the initiator's keys and returns the
// keys to send back. done is true once the initiator is authenticated.
func (c *chapState) handle(keys map[string]string) (resp []kv, done bool, err error) {
	switch c.step {
	case 0:
		a, ok := keys["CHAP_A"]
		if !ok {
			return nil, false, nil // still waiting for the algorithm list
		}
		for _, want := range c.algs {
			for _, offered := range strings.Split(a, ",") {
				if offered == string(want) && c.alg == "" {
					c.alg = offered
				}
			}
		}
		if c.alg == "" {
			return []kv{{"CHAP_A", "Reject"}}, false, fmt.Errorf("%w: no supported CHAP algorithm in %q", errAuth, a)
		}
		var idb [1]byte
		c.challenge = make([]byte, chapChallengeLen)
		if _, err := rand.Read(idb[:]); err != nil {
			return nil, false, err
		}
		if _, err := rand.Read(c.challenge); err != nil {
			return nil, false, err
		}
		c.id = idb[0]
		c.step = 1
		return []kv{
			{"CHAP_A", c.alg},
			{"CHAP_I", strconv.Itoa(int(c.id))},
			{"CHAP_C", "0x" + hex.EncodeToString(c.challenge)},
		}, false, nil
	case 1:
		name, okN := keys["CHAP_N"]
		rs, okR := keys["CHAP_R"]
		if !okN || !okR {
			return nil, false, fmt.Errorf("%w: CHAP_N and CHAP_R expected", errAuth)
		}
		r, err := decodeBinary(rs)
		if err != nil {
			return nil, false, fmt.Errorf("%w: bad CHAP_R: %v", errAuth, err)
		}
		want := chapResponse(c.alg, c.id, c.cfg.Secret, c.challenge)
		if name != c.cfg.User || subtle.ConstantTimeCompare(r, want) != 1 {
			return nil, false, fmt.Errorf("%w: wrong CHAP name or secret for user %q", errAuth, name)
		}
		c.step = 2
		// Mutual CHAP: the initiator challenges us.
		ci, okI := keys["CHAP_I"]
		cc, okC := keys["CHAP_C"]
		if !okI && !okC {
			// One-way CHAP. Even when a mutual user is configured,
			// whether to authenticate the target is the initiator's call.
			return nil, true, nil
		}
		if !okI || !okC {
			return nil, false, fmt.Errorf("%w: mutual CHAP needs both CHAP_I and CHAP_C", errAuth)
		}
		if c.cfg.MutualUser == "" {
			return nil, false, fmt.Errorf("%w: initiator asks for mutual CHAP, none configured", errAuth)
		}
		id, err := strconv.ParseUint(ci, 0, 8)
		if err != nil {
			return nil, false, fmt.Errorf("%w: bad CHAP_I %q", errAuth, ci)
		}
		chal, err := decodeBinary(cc)
		if err != nil || len(chal) == 0 || len(chal) > 1024 {
			return nil, false, fmt.Errorf("%w: bad CHAP_C", errAuth)
		}
		// Refuse a reflected challenge (RFC 7143 section 9.2.1).
		if bytes.Equal(chal, c.challenge) {
			return nil, false, fmt.Errorf("%w: initiator reflected our CHAP challenge", errAuth)
		}
		resp := chapResponse(c.alg, byte(id), c.cfg.MutualSecret, chal)
		return []kv{
			{"CHAP_N", c.cfg.MutualUser},
			{"CHAP_R", "0x" + hex.EncodeToString(resp)},
		}, true, nil
	}
	return nil, true, nil
}

// chapResponse is H(id || secret || challenge) (RFC 1994 section 4.1).
func chapResponse(alg string, id byte, secret string, challenge []byte) []byte {
	h := chapHash(alg)()
	h.Write([]byte{id})
	h.Write([]byte(secret))
	h.Write(challenge)
	return h.Sum(nil)
}

// decodeBinary decodes the binary-value encodings of RFC 7143 section
// 6.1: 0x/0X hexadecimal or 0b/0B base64.
func decodeBinary(s string) ([]byte, error) {
	if len(s) < 3 {
		return nil, fmt.Errorf("binary value %q too short", s)
	}
	switch s[:2] {
	case "0x", "0X":
		h := s[2:]
		if len(h)%2 == 1 {
			h = "0" + h
		}
		return hex.DecodeString(h)
	case "0b", "0B":
		return base64.StdEncoding.DecodeString(s[2:])
	}
	return nil, fmt.Errorf("binary value %q lacks a 0x or 0b prefix", s)
}
