package tests

import (
	"strings"
	"testing"
	"time"
)

// TestCHAPWithRealInitiators: libiscsi's iscsi-inq and qemu-io log in to a
// CHAP-protected csnapd -dev with the right credentials (and move data),
// and are refused without them, with a wrong secret, and (with
// -chap-algorithms sha256) when the initiator offers only MD5.
func TestCHAPWithRealInitiators(t *testing.T) {
	requireTool(t, "iscsi-inq")
	requireTool(t, "qemu-io")
	env := []string{"CSNAP_CHAP_USER=guest", "CSNAP_CHAP_SECRET=initiator-secret"}
	n := startDevEnv(t, "", env)
	lun := func(cred string) string {
		if cred != "" {
			cred += "@"
		}
		return "iscsi://" + cred + n.iscsiAddr + "/iqn.2026-11.io.csnap:dev/0"
	}
	if out, err := runCmd(t, 30*time.Second, "iscsi-inq", lun("guest%initiator-secret")); err != nil {
		t.Fatalf("iscsi-inq with CHAP: %v\n%s", err, out)
	}
	for name, cred := range map[string]string{"no credentials": "", "wrong secret": "guest%wrong-secret-1", "wrong user": "mallory%initiator-secret"} {
		if out, err := runCmd(t, 30*time.Second, "iscsi-inq", lun(cred)); err == nil {
			t.Errorf("iscsi-inq with %s logged in:\n%s", name, out)
		}
	}
	out, err := runCmd(t, 60*time.Second, "qemu-io", "-f", "raw",
		"-c", "write -P 0x5c 1M 1M", "-c", "read -P 0x5c 1M 1M", lun("guest%initiator-secret"))
	if err != nil || strings.Contains(out, "Pattern verification failed") {
		t.Fatalf("qemu-io with CHAP: %v\n%s", err, out)
	}
	n.proc.stop(10 * time.Second)

	// The same initiators against a node that refuses MD5: libiscsi
	// offers MD5 only (if it offers more, it must still log in).
	m := startDevEnv(t, n.dataDir, env, "-chap-algorithms", "sha256")
	out, err = runCmd(t, 30*time.Second, "iscsi-inq", "iscsi://guest%initiator-secret@"+m.iscsiAddr+"/iqn.2026-11.io.csnap:dev/0")
	// csnapd logs the refusal as it answers the login: the line may reach
	// its output pipe just after iscsi-inq has exited.
	logs := m.proc.out.String()
	for deadline := time.Now().Add(2 * time.Second); err != nil && !strings.Contains(logs, "no supported CHAP algorithm") && time.Now().Before(deadline); {
		time.Sleep(20 * time.Millisecond)
		logs = m.proc.out.String()
	}
	switch {
	case err == nil && strings.Contains(logs, "no supported CHAP algorithm"):
		t.Fatalf("iscsi-inq logged in although the target refused its algorithm:\n%s", out)
	case err != nil && !strings.Contains(logs, "no supported CHAP algorithm"):
		t.Fatalf("iscsi-inq refused for another reason: %v\n%s\ncsnapd:\n%s", err, out, tail(logs, 20))
	}
	t.Logf("libiscsi against -chap-algorithms sha256: logged in=%v", err == nil)
}
