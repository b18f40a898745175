#!/usr/bin/env bash
# Side-by-side benchmark of csnapd's iSCSI target against tgtd (the C
# reference target) on the same backing file, driven by the same initiators
# (qemu-img bench and iscsi-perf, both libiscsi-based), alternating
# A B A B for ROUNDS rounds, and printing medians and ratios csnapd/tgtd.
#
# usage: tests/bench/target-vs-tgtd.sh [ROUNDS]     (default 5)
# env:   CSNAP_BIN=dir with csnapd (default ./bin)  BENCH_SIZE_MB (default 1024)
#        METRICS="randwrite_IOPS qd1write_us" measures only those (default: all);
#        the table gives medians, ratios, and each target's min-max over the rounds.
#        SEPARATE_FILES=1 gives tgtd an identical copy of the file instead of the same file.
#        COLD_TURNS (default 1): before each target's turn the file is synced
#          and dropped from the page cache, then read once through that target
#          (untimed), so each target is measured on the page cache its own IO
#          shaped. On a shared file the first reader otherwise decides how the
#          kernel caches it (readahead makes large folios, into which every
#          small write costs more: RESULTS.md) for both targets.
#          COLD_TURNS=0: no drop, no warm-up read (the script until the sixth session).
#        TGT_BSOFLAGS=direct makes tgtd open the file O_DIRECT (tgtadm --bsoflags).
#        CSNAP_TARGET="URL PID FILE" measures an already running csnapd (a cluster
#          node: tests/bench/cluster-vs-tgtd.sh) serving FILE at URL instead of
#          starting csnapd -dev; FILE must hold BENCH_SIZE_MB of data, and the
#          script leaves the process running.
#
# Measures: sequential 1 MiB read and write at QD 8, random 4 KiB read and
# write at QD 32, 4 KiB QD1 read and write latency, and the target's CPU
# seconds per GiB moved (sequential runs). Everything runs on loopback; both
# targets are stopped by PID on exit.
set -euo pipefail
ROUNDS=${1:-5}
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
BIN=${CSNAP_BIN:-$ROOT/bin}
SIZE_MB=${BENCH_SIZE_MB:-1024}
for t in tgtd tgtadm qemu-img iscsi-perf; do
	command -v $t >/dev/null || { echo "missing $t: run make deps" >&2; exit 2; }
done
[ -x "$BIN/csnapd" ] || { echo "missing $BIN/csnapd: run make build" >&2; exit 2; }

WORK=$(mktemp -d /tmp/csnap-bench.XXXXXX)
TGT_PORT=$((20000 + RANDOM % 5000))
CS_PORT=$((TGT_PORT + 1))
HTTP_PORT=$((TGT_PORT + 2))
CTL=$((100 + RANDOM % 800))
TGT_PID= CS_PID=
cleanup() {
	if [ -n "$TGT_PID" ]; then
		# tgtd ignores SIGTERM while it has targets: delete them first.
		tgtadm -C $CTL --lld iscsi --op delete --mode target --tid 1 --force >/dev/null 2>&1 || true
		tgtadm -C $CTL --op delete --mode system >/dev/null 2>&1 || true
		for _ in $(seq 50); do kill -0 $TGT_PID 2>/dev/null || break; sleep 0.1; done
		kill -9 $TGT_PID 2>/dev/null || true
	fi
	if [ -n "$CS_PID" ]; then
		kill $CS_PID 2>/dev/null || true
		for _ in $(seq 50); do kill -0 $CS_PID 2>/dev/null || break; sleep 0.1; done
		kill -9 $CS_PID 2>/dev/null || true
	fi
	rm -rf "$WORK"
}
trap cleanup EXIT

mkdir -p "$WORK/cs"
if [ -n "${CSNAP_TARGET:-}" ]; then
	read -r CS_URL EXT_PID IMG <<<"$CSNAP_TARGET"
	[ -f "$IMG" ] && kill -0 "$EXT_PID" || { echo "CSNAP_TARGET: want \"URL PID FILE\" of a running csnapd" >&2; exit 2; }
else
	IMG=$WORK/cs/origin.img
	truncate -s ${SIZE_MB}M "$IMG"
	# Fill it once so reads hit real data on both targets. O_DIRECT keeps the
	# fill out of the page cache: buffered 1 MiB writes would leave the file
	# cached in large folios, which slow every later small write to it (see
	# RESULTS.md) whatever the target, an artefact of the harness.
	dd if=/dev/urandom of="$IMG" bs=1M count=$SIZE_MB conv=notrunc oflag=direct status=none
fi
TGT_IMG=$IMG
if [ "${SEPARATE_FILES:-0}" = 1 ]; then
	# tgtd gets its own copy, so that neither target's writes shape the
	# page cache the other one writes through.
	TGT_IMG=$WORK/tgtd.img
	dd if="$IMG" of="$TGT_IMG" bs=1M iflag=direct oflag=direct status=none
fi

( exec tgtd -f -C $CTL --iscsi portal=127.0.0.1:$TGT_PORT > "$WORK/tgtd.log" 2>&1 ) &
TGT_PID=$!
for _ in $(seq 50); do tgtadm -C $CTL --op show --mode system >/dev/null 2>&1 && break; sleep 0.1; done
tgtadm -C $CTL --lld iscsi --op new --mode target --tid 1 -T iqn.2026-11.io.csnap:bench-tgtd
tgtadm -C $CTL --lld iscsi --op new --mode logicalunit --tid 1 --lun 1 -b "$TGT_IMG" ${TGT_BSOFLAGS:+--bsoflags $TGT_BSOFLAGS}
tgtadm -C $CTL --lld iscsi --op bind --mode target --tid 1 -I ALL
TGT_URL=iscsi://127.0.0.1:$TGT_PORT/iqn.2026-11.io.csnap:bench-tgtd/1

if [ -n "${CSNAP_TARGET:-}" ]; then
	MEAS_PID=$EXT_PID # not ours to stop: CS_PID stays empty
else
	"$BIN/csnapd" -dev -data-dir "$WORK/cs" -iscsi-addr 127.0.0.1:$CS_PORT -http-addr 127.0.0.1:$HTTP_PORT -log-level warn > "$WORK/csnapd.log" 2>&1 &
	CS_PID=$!
	MEAS_PID=$CS_PID
	for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$CS_PORT) 2>/dev/null && break; sleep 0.1; done
	CS_URL=iscsi://127.0.0.1:$CS_PORT/iqn.2026-11.io.csnap:dev/0
fi

# cpu PID: utime+stime of a process in clock ticks.
cpu() { awk '{print $14 + $15}' /proc/$1/stat; }
TICK=$(getconf CLK_TCK)
# bench_time ARGS...: seconds qemu-img bench took.
bench_time() { qemu-img bench -f raw "$@" 2>&1 | sed -n 's/^Run completed in \([0-9.]*\) seconds.*/\1/p'; }

declare -A R   # R[target,metric]="v1 v2 ..."
add() { R[$1,$2]="${R[$1,$2]:-} $3"; }

want() { [ -z "${METRICS:-}" ] || [[ " $METRICS " == *" $1 "* ]]; }
measure() { # NAME URL PID FILE
	local n=$1 url=$2 pid=$3 file=$4 t c0 c1 mb=512 iops
	if [ "${COLD_TURNS:-1}" = 1 ]; then
		sync "$file"; dd if="$file" iflag=nocache count=0 status=none
		bench_time -c $mb -d 8 -s 1M "$url" >/dev/null
	fi
	if want seqread_MiBps; then
		c0=$(cpu $pid)
		t=$(bench_time -c $mb -d 8 -s 1M "$url"); add $n seqread_MiBps "$(echo "$mb / $t" | bc -l)"
		c1=$(cpu $pid); add $n cpu_s_per_GiB_read "$(echo "($c1 - $c0) / $TICK / ($mb / 1024)" | bc -l)"
	fi
	if want seqwrite_MiBps; then
		c0=$(cpu $pid)
		t=$(bench_time -w -c $mb -d 8 -s 1M "$url"); add $n seqwrite_MiBps "$(echo "$mb / $t" | bc -l)"
		c1=$(cpu $pid); add $n cpu_s_per_GiB_write "$(echo "($c1 - $c0) / $TICK / ($mb / 1024)" | bc -l)"
	fi
	if want randread_IOPS; then
		iops=$(timeout 30 iscsi-perf -m 32 -b 8 -r -t 4 "$url" 2>&1 | tr '\r' '\n' | sed -n 's/^iops average \([0-9]*\).*/\1/p' | tail -1)
		add $n randread_IOPS "${iops:-0}"
	fi
	if want randwrite_IOPS; then
		t=$(bench_time -w -c 40000 -d 32 -s 4K -S 1052672 "$url"); add $n randwrite_IOPS "$(echo "40000 / $t" | bc -l)"
	fi
	if want qd1read_us; then
		t=$(bench_time -c 4000 -d 1 -s 4K -S 1052672 "$url"); add $n qd1read_us "$(echo "$t * 1000000 / 4000" | bc -l)"
	fi
	if want qd1write_us; then
		t=$(bench_time -w -c 4000 -d 1 -s 4K -S 1052672 "$url"); add $n qd1write_us "$(echo "$t * 1000000 / 4000" | bc -l)"
	fi
}

median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }

echo "# $(date -u +%FT%TZ) $(uname -n) rounds=$ROUNDS size=${SIZE_MB}MiB separate_files=${SEPARATE_FILES:-0} cold_turns=${COLD_TURNS:-1} tgt_bsoflags=${TGT_BSOFLAGS:-} csnap_target=${CSNAP_TARGET:-dev}"
for r in $(seq $ROUNDS); do
	measure tgtd "$TGT_URL" $TGT_PID "$TGT_IMG"
	measure csnapd "$CS_URL" $MEAS_PID "$IMG"
	echo "round $r done" >&2
done

lo() { tr ' ' '\n' | grep -v '^$' | sort -g | head -1; }
hi() { tr ' ' '\n' | grep -v '^$' | sort -g | tail -1; }
printf '%-22s %12s %12s %8s  %-18s %s\n' metric tgtd csnapd ratio goal "spread (min-max of rounds: tgtd | csnapd)"
for m in seqread_MiBps seqwrite_MiBps randread_IOPS randwrite_IOPS qd1read_us qd1write_us cpu_s_per_GiB_read cpu_s_per_GiB_write; do
	[ -n "${R[tgtd,$m]:-}" ] || continue
	a=$(echo "${R[tgtd,$m]}" | median); b=$(echo "${R[csnapd,$m]}" | median)
	ratio=$(echo "$b / $a" | bc -l)
	case $m in
	seqread_MiBps) goal=">= 1.35" ;; seqwrite_MiBps) goal=">= 3.3" ;;
	randread_IOPS|randwrite_IOPS) goal=">= 1.2" ;; qd1*) goal="<= 0.9" ;; *) goal="(lower is better)" ;;
	esac
	printf '%-22s %12.1f %12.1f %8.2f  %-18s %.1f-%.1f | %.1f-%.1f\n' $m "$a" "$b" "$ratio" "$goal" \
		"$(echo "${R[tgtd,$m]}" | lo)" "$(echo "${R[tgtd,$m]}" | hi)" "$(echo "${R[csnapd,$m]}" | lo)" "$(echo "${R[csnapd,$m]}" | hi)"
done
