#!/usr/bin/env bash
# Cluster-mode csnapd against tgtd, both over O_DIRECT: a 2-node local
# cluster (tests/cluster/csnap-cluster: Consul + csnapd on 127.0.0.1-2, the
# fixed ports of the cluster tests) serves a volume whose origin file tgtd
# also serves, opened O_DIRECT (tgtadm --bsoflags direct), as cluster nodes
# open theirs (-direct-io, docs/CLUSTER.md). The rows and ratios are those of
# target-vs-tgtd.sh, which this script runs against one cluster node.
#
# usage: tests/bench/cluster-vs-tgtd.sh [ROUNDS]    (default 5)
# env:   CSNAP_BIN (default ./bin; needs consul: make consul)
#        BENCH_SIZE_MB (default 512)
#        NODE=server|client (default client): measure the node elected
#          snapshot server for the volume, or the other one, whose queries
#          go to the server over TCP.
#        METRICS as for target-vs-tgtd.sh.
#        NO_TLS=1: the snapshot-server protocol without TLS (-insecure-no-tls),
#          to measure what mutual TLS costs.
# Never run it while the cluster tests run: they use the same ports.
set -euo pipefail
ROUNDS=${1:-5}
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
BIN=${CSNAP_BIN:-$ROOT/bin}
SIZE_MB=${BENCH_SIZE_MB:-512}
NODE=${NODE:-client}
for f in csnapd csnap-admin consul; do
	[ -x "$BIN/$f" ] || { echo "missing $BIN/$f: run make build consul" >&2; exit 2; }
done
( cd "$ROOT" && go build -o "$BIN/" ./tests/cluster/csnap-cluster )

WORK=$(mktemp -d /tmp/csnap-cbench.XXXXXX)
CL_PID=
cleanup() {
	if [ -n "$CL_PID" ]; then
		kill $CL_PID 2>/dev/null || true # it stops its csnapd and Consul processes
		for _ in $(seq 100); do kill -0 $CL_PID 2>/dev/null || break; sleep 0.1; done
		kill -9 $CL_PID 2>/dev/null || true
	fi
	rm -rf "$WORK"
}
trap cleanup EXIT

"$BIN/csnap-cluster" -bin "$BIN" -dir "$WORK/cluster" -nodes 2 ${NO_TLS:+-insecure-no-tls} > "$WORK/cluster.out" 2>&1 &
CL_PID=$!
for _ in $(seq 300); do grep -q 'cluster of 2 nodes ready' "$WORK/cluster.out" && break; kill -0 $CL_PID || break; sleep 0.1; done
grep -q 'cluster of 2 nodes ready' "$WORK/cluster.out" || { cat "$WORK/cluster.out" >&2; exit 1; }

# Under the cluster's directory: the nodes' -volume-paths.
ORIGIN=$WORK/cluster/vol1.origin
truncate -s ${SIZE_MB}M "$ORIGIN"
dd if=/dev/urandom of="$ORIGIN" bs=1M count=$SIZE_MB conv=notrunc oflag=direct status=none
export CSNAP_HTTP_TOKEN_FILE="$WORK/cluster/n1/csnapd/api-token"
ADMIN="$BIN/csnap-admin -addr 127.0.0.1:7862"
$ADMIN volume create vol1 --origin "$ORIGIN" --store "$WORK/cluster/vol1.store" --size ${SIZE_MB}MiB >/dev/null
srv=
for _ in $(seq 100); do
	srv=$($ADMIN server vol1 2>/dev/null | awk '$1 == "node" {print $2}') && [ -n "$srv" ] && break
	sleep 0.1
done
[ -n "$srv" ] || { echo "no snapshot server elected for vol1" >&2; exit 1; }
case "$NODE:$srv" in
server:n1 | client:n2) n=1 ;;
*) n=2 ;;
esac
pid=$(sed -n "s/^cluster: n$n csnapd started (pid \([0-9]*\).*/\1/p" "$WORK/cluster.out")
url=iscsi://127.0.0.$n:3260/iqn.2026-11.io.csnap:vol1/0
# Wait until the node exports the volume.
for _ in $(seq 100); do iscsi-inq "$url" >/dev/null 2>&1 && break; sleep 0.1; done
echo "# cluster-vs-tgtd: measuring n$n ($NODE; server is $srv), both targets O_DIRECT"
CSNAP_TARGET="$url $pid $ORIGIN" TGT_BSOFLAGS=direct COLD_TURNS=0 BENCH_SIZE_MB=$SIZE_MB \
	CSNAP_BIN="$BIN" "$HERE/target-vs-tgtd.sh" "$ROUNDS"
