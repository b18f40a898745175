package node

import "testing"

func TestCHAPFromEnv(t *testing.T) {
	env := func(m map[string]string) func(string) string { return func(k string) string { return m[k] } }
	if c, err := chapFromEnv(env(nil)); c != nil || err != nil {
		t.Fatalf("no env: %v %v", c, err)
	}
	c, err := chapFromEnv(env(map[string]string{"CSNAP_CHAP_USER": "u", "CSNAP_CHAP_SECRET": "twelve-bytes", "CSNAP_CHAP_MUTUAL_USER": "t", "CSNAP_CHAP_MUTUAL_SECRET": "other-secret"}))
	if err != nil || c.User != "u" || c.MutualUser != "t" {
		t.Fatalf("mutual: %+v %v", c, err)
	}
	for _, bad := range []map[string]string{
		{"CSNAP_CHAP_USER": "u"},
		{"CSNAP_CHAP_USER": "u", "CSNAP_CHAP_SECRET": "short"},
		{"CSNAP_CHAP_USER": "u", "CSNAP_CHAP_SECRET": "twelve-bytes", "CSNAP_CHAP_MUTUAL_USER": "t"},
		{"CSNAP_CHAP_USER": "u", "CSNAP_CHAP_SECRET": "twelve-bytes", "CSNAP_CHAP_MUTUAL_USER": "t", "CSNAP_CHAP_MUTUAL_SECRET": "twelve-bytes"},
	} {
		if _, err := chapFromEnv(env(bad)); err == nil {
			t.Errorf("accepted %v", bad)
		}
	}
}
