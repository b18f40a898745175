#!/bin/sh
# failover-stall.sh: the IO stall an initiator on a surviving node sees when
# a volume's snapshot server fails, measured on a real 3-agent Consul
# cluster with 3 csnapd (tests/TestClusterFailover): the longest single
# 64 KiB write (qemu-io) while the server's csnapd is killed (-9), while
# its whole node (Consul agent and csnapd) is killed, and across a graceful
# stop. The reference is Consul's own failure detection on the same
# machine, measured in the same run (tests/cluster TestConsulCluster:
# a killed agent's serfHealth seen critical).
#
# Usage: tests/bench/failover-stall.sh [RUNS]   (default 3; needs make build consul)
set -eu
cd "$(dirname "$0")/../.."
runs=${1:-3}
export CSNAP_BIN="$PWD/bin"
i=1
while [ "$i" -le "$runs" ]; do
	echo "== run $i"
	go test -count=1 -v -run TestConsulCluster ./tests/cluster/ 2>&1 |
		grep -o 'serfHealth critical (seen from n1) .* after SIGKILL' || true
	go test -count=1 -v -run TestClusterFailover ./tests/ 2>&1 |
		grep -E 'longest write|serves under term' | sed 's/^ *cluster_test.go:[0-9]*: //'
	i=$((i + 1))
done
