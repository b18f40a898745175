package main

import (
	"strings"
	"testing"
)

func TestVolumeResetState(t *testing.T) {
	for _, tc := range []struct {
		argv    []string
		bodyHas string
		outHas  string
	}{
		{[]string{"volume", "reset-state", "dev"}, `{}`, "shared state of origin of dev reset"},
		{[]string{"volume", "reset-state", "dev", "--snapshot", "s1"}, `"snapshot":"s1"`, "shared state of snapshot s1 of dev reset"},
	} {
		r := &recorder{status: 200, reply: `{"volume":"dev","key":"naa.6a00","version":8589934593}`}
		code, out, errs := admin(t, r, tc.argv...)
		if code != 0 {
			t.Fatalf("%v: exit %d, stderr %q", tc.argv, code, errs)
		}
		if r.method != "POST" || r.path != "/v1/volumes/dev/reset-state" || !strings.Contains(r.body, tc.bodyHas) {
			t.Errorf("%v: sent %s %s %s", tc.argv, r.method, r.path, r.body)
		}
		if !strings.Contains(out, tc.outHas) || !strings.Contains(out, "0x200000001") {
			t.Errorf("%v: printed %q", tc.argv, out)
		}
	}
	if code, _, _ := admin(t, &recorder{status: 200}, "volume", "reset-state", "dev", "s1"); code != 2 {
		t.Errorf("a snapshot given as a positional: exit %d, want 2 (usage)", code)
	}
}
