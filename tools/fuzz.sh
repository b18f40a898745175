#!/usr/bin/env bash
# Runs every fuzzer of the repository, one after another, each for
# FUZZTIME (default 30s): `make fuzz`. CI runs it with FUZZTIME=2s, a
# brief pass that still finds regressions of shallow bugs and checks that
# every fuzzer starts; FUZZMINTIME (default 5s) bounds the shrinking of a
# new input so a run ends near FUZZTIME. Fuzzers are found with `go test -list`, so new ones
# are picked up without editing this file. New failing inputs land in the
# package's testdata/fuzz/ and fail `go test` until fixed.
set -euo pipefail
cd "$(dirname "$0")/.."
FUZZTIME=${FUZZTIME:-30s}
GO=${GO:-go}
fail=0
n=0
for pkg in $($GO list ./...); do
	for f in $($GO test -list '^Fuzz' "$pkg" 2>/dev/null | grep '^Fuzz' || true); do
		n=$((n + 1))
		if ! out=$($GO test -run '^$' -fuzz "^${f}\$" -fuzztime "$FUZZTIME" -fuzzminimizetime "${FUZZMINTIME:-5s}" "$pkg" 2>&1); then
			echo "FAIL $pkg $f"
			echo "$out" | tail -20
			fail=1
		else
			echo "ok   $pkg $f"
		fi
	done
done
echo "$n fuzzers run for $FUZZTIME each"
exit $fail
