#!/usr/bin/env bash
# Issue 4's benchmark: csnapd's snapshot paths against the plain file
# backend served by the same target code (tests/bench/plaintarget), side by
# side, alternating per round, with qemu-img bench over iscsi://.
#
# usage: tests/bench/snapshot-vs-plain.sh [ROUNDS]      (default 3)
# env:   CSNAP_BIN (default ./bin)  BENCH_MB (MiB moved per measurement, default 256)
#        CSNAP_DEV_PREALLOC (default 1): csnapd's store file is created fully
#          allocated, as the plain file is filled before measuring and as a
#          store on a block device is; 0 keeps the sparse store of plain -dev,
#          whose block allocation makes every copy-out commit a filesystem
#          journal commit (slow when other processes write to the filesystem)
#
# Ratios printed (goals from the issue):
#   rewrite of already-copied chunks / plain write        >= 0.95
#   first write after a snapshot / plain write            >= 0.4
#   snapshot read / origin read                           >= 0.9
#   snapshot create latency with writes in flight (ms)    <= 50
#     (the HTTP API request, timed by curl: create, barrier, target export)
set -euo pipefail
ROUNDS=${1:-3}
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
BIN=${CSNAP_BIN:-$ROOT/bin}
MB=${BENCH_MB:-256}
( cd "$ROOT" && go build -o "$BIN/" ./tests/bench/plaintarget )
for t in qemu-img bc curl; do command -v $t >/dev/null || { echo "missing $t: run make deps" >&2; exit 2; }; done

WORK=$(mktemp -d /tmp/csnap-sbench.XXXXXX)
P_PORT=$((25000 + RANDOM % 4000)); C_PORT=$((P_PORT + 1)); H_PORT=$((P_PORT + 2))
P_PID= C_PID= BG_PID=
cleanup() {
	for p in $BG_PID $P_PID $C_PID; do kill $p 2>/dev/null || true; done
	for p in $BG_PID $P_PID $C_PID; do
		for _ in $(seq 50); do kill -0 $p 2>/dev/null || break; sleep 0.1; done
		kill -9 $p 2>/dev/null || true
	done
	rm -rf "$WORK"
}
trap cleanup EXIT

truncate -s 1G "$WORK/plain.img"
"$BIN/plaintarget" -addr 127.0.0.1:$P_PORT -file "$WORK/plain.img" & P_PID=$!
mkdir -p "$WORK/cs"
CSNAP_DEV_PREALLOC=${CSNAP_DEV_PREALLOC:-1} "$BIN/csnapd" -dev -data-dir "$WORK/cs" -iscsi-addr 127.0.0.1:$C_PORT -http-addr 127.0.0.1:$H_PORT -log-level warn > "$WORK/csnapd.log" 2>&1 & C_PID=$!
# csnapd first writes its 1 GiB store (CSNAP_DEV_PREALLOC): allow 30 s.
for port in $P_PORT $C_PORT $H_PORT; do
	for _ in $(seq 300); do (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.1; done
done
PLAIN=iscsi://127.0.0.1:$P_PORT/iqn.2026-11.io.csnap:plain/0
ORIGIN=iscsi://127.0.0.1:$C_PORT/iqn.2026-11.io.csnap:dev/0
ADMIN="$BIN/csnap-admin -addr 127.0.0.1:$H_PORT"
# The API token csnapd -dev generated (builds before the eighth session have
# none and ignore both the variable and the header).
export CSNAP_HTTP_TOKEN_FILE="$WORK/cs/api-token"
AUTH="Authorization: Bearer $(cat "$CSNAP_HTTP_TOKEN_FILE" 2>/dev/null || true)"

bench() { qemu-img bench -f raw "$@" 2>&1 | sed -n 's/^Run completed in \([0-9.]*\) seconds.*/\1/p'; }
mbps() { echo "$MB / $1" | bc -l; }
# Both LUNs hold data everywhere we read.
bench -w -c $MB -d 8 -s 1M "$PLAIN" >/dev/null
bench -w -c $MB -d 8 -s 1M "$ORIGIN" >/dev/null

declare -A R
add() { R[$1]="${R[$1]:-} $2"; }
median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }

echo "# $(date -u +%FT%TZ) $(uname -n) rounds=$ROUNDS MiB=$MB store-prealloc=${CSNAP_DEV_PREALLOC:-1}"
for r in $(seq $ROUNDS); do
	add plain_write "$(mbps "$(bench -w -c $MB -d 8 -s 1M "$PLAIN")")"
	$ADMIN snapshot create dev b$r >/dev/null
	add first_write "$(mbps "$(bench -w -c $MB -d 8 -s 1M "$ORIGIN")")"
	add rewrite "$(mbps "$(bench -w -c $MB -d 8 -s 1M "$ORIGIN")")"
	add plain_write2 "$(mbps "$(bench -w -c $MB -d 8 -s 1M "$PLAIN")")"
	add origin_read "$(mbps "$(bench -c $MB -d 8 -s 1M "$ORIGIN")")"
	add snap_read "$(mbps "$(bench -c $MB -d 8 -s 1M "iscsi://127.0.0.1:$C_PORT/iqn.2026-11.io.csnap:dev:b$r/0")")"
	# Snapshot create latency while 4 KiB writes are in flight.
	qemu-img bench -f raw -w -c 2000000 -d 16 -s 4K -S 1052672 "$ORIGIN" >/dev/null 2>&1 & BG_PID=$!
	sleep 0.5
	# Timed by curl around the API request alone: starting any process
	# costs about 30 ms on this kind of machine, which is not the operation.
	for i in 1 2 3; do
		s=$(curl -sf -o /dev/null -w '%{time_total}' -X POST -H 'Content-Type: application/json' -H "$AUTH" \
			-d "{\"name\":\"l$r-$i\"}" "http://127.0.0.1:$H_PORT/v1/volumes/dev/snapshots")
		add create_ms "$(echo "$s * 1000" | bc -l)"
	done
	kill $BG_PID 2>/dev/null || true; wait $BG_PID 2>/dev/null || true; BG_PID=
	for s in b$r l$r-1 l$r-2 l$r-3; do $ADMIN snapshot delete dev $s >/dev/null; done
	echo "round $r done" >&2
done

pw=$(echo "${R[plain_write]} ${R[plain_write2]}" | median)
fw=$(echo "${R[first_write]}" | median); rw=$(echo "${R[rewrite]}" | median)
orr=$(echo "${R[origin_read]}" | median); sr=$(echo "${R[snap_read]}" | median)
cm=$(echo "${R[create_ms]}" | median); cx=$(echo "${R[create_ms]}" | tr ' ' '\n' | grep -v '^$' | sort -g | tail -1)
printf '%-44s %10s %8s  %s\n' measure value ratio goal
printf '%-44s %10.1f\n' "plain write MiB/s" "$pw"
printf '%-44s %10.1f %8.2f  %s\n' "first write after snapshot MiB/s" "$fw" "$(echo "$fw/$pw" | bc -l)" ">= 0.4"
printf '%-44s %10.1f %8.2f  %s\n' "rewrite of copied chunks MiB/s" "$rw" "$(echo "$rw/$pw" | bc -l)" ">= 0.95"
printf '%-44s %10.1f\n' "origin read MiB/s" "$orr"
printf '%-44s %10.1f %8.2f  %s\n' "snapshot read MiB/s" "$sr" "$(echo "$sr/$orr" | bc -l)" ">= 0.9"
printf '%-44s %10.1f %8s  %s\n' "snapshot create with writes in flight, median ms" "$cm" "" "<= 50"
printf '%-44s %10.1f\n' "snapshot create with writes in flight, max ms" "$cx"
