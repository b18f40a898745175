package names

import (
	"regexp"
	"strings"
	"testing"
)

func TestValid(t *testing.T) {
	re := regexp.MustCompile(`^[a-z0-9][a-z0-9-]{0,62}$`)
	cases := []string{"", "a", "0", "a-b", "9-", "-a", "A", "a_b", "a.b", "é", "a b",
		strings.Repeat("z", MaxLen), strings.Repeat("z", MaxLen+1)}
	for c := 0; c < 256; c++ {
		cases = append(cases, string(rune(c)), "a"+string(rune(c)))
	}
	for _, s := range cases {
		if got, want := Valid(s), re.MatchString(s); got != want {
			t.Errorf("Valid(%q) = %v, the rule's regexp says %v", s, got, want)
		}
	}
}
