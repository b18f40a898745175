// Package names owns the rule for volume and snapshot names, which the
// HTTP API (api), the store engine (snapstore: snapshot table slots) and
// the snapshot protocol (snapstore/wire) all check: 1 to MaxLen
// characters of a-z 0-9 '-', starting with a letter or digit
// (^[a-z0-9][a-z0-9-]{0,62}$), the form iSCSI target names are built from.
package names

// MaxLen is the longest volume or snapshot name in bytes.
const MaxLen = 63

// Rule describes the rule, for error messages.
const Rule = "1-63 characters of a-z, 0-9 and -, starting with a letter or digit"

// Valid reports whether s is a valid volume or snapshot name.
func Valid(s string) bool {
	if len(s) == 0 || len(s) > MaxLen || s[0] == '-' {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
			return false
		}
	}
	return true
}
