package vm

import "testing"

// Require stops a test that needs a VM when the environment is not set up:
// it skips under `go test -short` and fails otherwise, so that `make test`
// (which runs tests/vm/setup.sh first) never skips VM tests silently.
func Require(tb testing.TB) {
	tb.Helper()
	if testing.Short() {
		tb.Skip("vm: VM tests skipped with -short")
	}
	if err := Ready(""); err != nil {
		tb.Fatalf("%v\nrun: bash tests/vm/setup.sh   (as root on a fresh Debian 12 machine)", err)
	}
}
