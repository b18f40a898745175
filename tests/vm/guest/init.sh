#!/bin/sh
# /init of the csnap VM test guest (busybox ash). See tests/vm/README.md.
#
# It runs the steps given on the kernel command line as repeated
#   vm.s=OP,key=value,key=value...
# parameters, in order, then powers off. Globals: vm.host, vm.initiator,
# vm.chap_user, vm.chap_pass, vm.chap_in_user, vm.chap_in_pass, vm.disc_chap,
# vm.digest, vm.set=KEY=VALUE (repeatable), vm.strict, vm.debug, vm.lunwait.
#
# Every line for the host starts with "@@VM EVENT" followed by key=value words
# and t=<guest uptime>. The run ends with "@@VM PASS" or "@@VM FAIL <reason>".
# The host resumes a "@@VM PAUSE name=N" by writing "@@GO N" to the console.
export PATH=/sbin:/bin:/usr/sbin:/usr/bin
umask 022

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /run /tmp /mnt /var/run /var/lock
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp
mkdir -p /run/lock/iscsi /tmp/vm/manifest
stty -echo 2>/dev/null # the host's "@@GO" lines are not echoed back
# fd 3 is the console even inside $(...), so a fail() in a command
# substitution still reaches the host (and powers the guest off)
exec 3>&1

# (builtins only: every fork costs under TCG)
mark() {
	read -r _up _ </proc/uptime
	echo "@@VM $* t=$_up" >&3
}
poweroff_now() {
	sync
	echo o >/proc/sysrq-trigger 2>/dev/null
	poweroff -f
	sleep 10
	echo b >/proc/sysrq-trigger
}
fail() {
	mark "FAIL ${STEPNO:+step=$STEPNO op=$OP }$*"
	{
		echo "----- iscsid log (tail) -----"
		tail -n 40 /tmp/iscsid.log 2>/dev/null
		echo "----- dmesg (since /init) -----"
		dmesg | tail -n +$((DMESG0 + 1)) | tail -n 60
		echo "----- iscsiadm -m session -P 3 -----"
		iscsiadm -m session -P 3 2>&1 | head -n 80
	} >&3 2>&1
	poweroff_now
}

# ---------------------------------------------------------------- kernel log
# SCSI/iSCSI/ext4 trouble that the data path may hide (writeback errors are
# not reported to dd/sync/umount): I/O errors, sense data, aborts, resets,
# timeouts, connection and digest errors, ext4/jbd2 errors. The unit
# attention "Power-on or device reset occurred" at LUN attach is normal.
# (lower case: matched against the lower-cased line)
KERR='i/o error|buffer i/o|blk_update_request|critical (medium|target|nexus|space)|sense key|add[.] sense|failed result|failed: result|timed out|timing out|ping timeout|conn error|recovery timed|abort|task mgmt|lun reset|target reset|host reset|ext4-fs (error|warning)|ext4-fs.*error|jbd2.*(error|abort)|digest|remounting filesystem read-only'
DMESG0=$(dmesg | wc -l) # lines before /init are not ours to judge
DMESG_SEEN=$DMESG0
KERR_TOTAL=0
# after an operation that was meant to fail: its kernel lines (conn errors
# of a refused login) are expected and not counted
kernel_expected() {
	n=$(dmesg | wc -l)
	mark "KERNEL_EXPECTED lines=$((n - DMESG_SEEN))"
	DMESG_SEEN=$n
}
check_kernel() {
	: >/tmp/vm/kerr.txt
	DMESG_SEEN=$(dmesg | awk -v seen="$DMESG_SEEN" -v re="$KERR" '
		NR > seen && tolower($0) ~ re { print > "/tmp/vm/kerr.txt" }
		END { print NR }')
	[ -s /tmp/vm/kerr.txt ] || return 0
	k=$(wc -l </tmp/vm/kerr.txt)
	KERR_TOTAL=$((KERR_TOTAL + k))
	sed 's/^/@@VM KERNEL_ERR /' /tmp/vm/kerr.txt | head -n 30 >&3
	[ "$STRICT" = 1 ] && fail "$k kernel error line(s) in dmesg after $1"
	mark "KERNEL_WARN count=$k after=$1"
}

# ---------------------------------------------------------------- parameters
HOST=10.0.2.2 INITIATOR=iqn.2024-01.io.csnap.test:vm-guest
CHAP_USER= CHAP_PASS= CHAP_IN_USER= CHAP_IN_PASS= DISC_CHAP=0
DIGEST= SETS= STRICT=1 DEBUG=0 LUNWAIT=60 NSTEPS=0
set -f # cmdline words like node.conn[0].x must not glob
for w in $(cat /proc/cmdline); do
	case $w in
	vm.host=*) HOST=${w#*=} ;;
	vm.initiator=*) INITIATOR=${w#*=} ;;
	vm.chap_user=*) CHAP_USER=${w#*=} ;;
	vm.chap_pass=*) CHAP_PASS=${w#*=} ;;
	vm.chap_in_user=*) CHAP_IN_USER=${w#*=} ;;
	vm.chap_in_pass=*) CHAP_IN_PASS=${w#*=} ;;
	vm.disc_chap=*) DISC_CHAP=${w#*=} ;;
	vm.digest=*) DIGEST=${w#*=} ;;
	vm.set=*) SETS="$SETS ${w#*=}" ;;
	vm.strict=*) STRICT=${w#*=} ;;
	vm.debug=*) DEBUG=${w#*=} ;;
	vm.lunwait=*) LUNWAIT=${w#*=} ;;
	vm.s=*)
		NSTEPS=$((NSTEPS + 1))
		eval "STEP_$NSTEPS=\${w#*=}"
		;;
	esac
done
set +f

echo
mark "INIT kernel=$(uname -r) steps=$NSTEPS strict=$STRICT"
[ "$NSTEPS" -gt 0 ] || fail "no vm.s= steps on the kernel command line"

# ---------------------------------------------------------------- modules
echo /sbin/modprobe >/proc/sys/kernel/modprobe
while read -r ko; do
	[ -n "$ko" ] || continue
	# softdeps such as crc32c-intel fail harmlessly on CPUs without the
	# instructions; "File exists" means built in or already loaded
	insmod "$ko" 2>/tmp/vm/insmod.err || grep -q 'File exists' /tmp/vm/insmod.err ||
		echo "insmod $ko: $(cat /tmp/vm/insmod.err)"
done </etc/modules.order
[ -d /sys/module/iscsi_tcp ] || fail "iscsi_tcp did not load"
mark "MODULES"

# ---------------------------------------------------------------- network
# qemu user networking: the guest is 10.0.2.15, the host's loopback is 10.0.2.2
ip link set lo up
ip link set eth0 up || fail "no eth0 (virtio-net)"
ip addr add 10.0.2.15/24 dev eth0
ip route add default via 10.0.2.2
mark "NET"

# ---------------------------------------------------------------- iscsid
mkdir -p /etc/iscsi/nodes /etc/iscsi/send_targets /etc/iscsi/ifaces
echo "InitiatorName=$INITIATOR" >/etc/iscsi/initiatorname.iscsi
iscsid -f -d "$DEBUG" >/tmp/iscsid.log 2>&1 &
ISCSID=$!
i=0
# iscsid -f writes no pid file: it is ready once its IPC socket exists
until grep -q ISCSIADM_ABSTRACT_NAMESPACE /proc/net/unix; do
	kill -0 $ISCSID 2>/dev/null || fail "iscsid exited: $(tail -n 3 /tmp/iscsid.log)"
	i=$((i + 1))
	[ $i -le 200 ] || fail "iscsid not ready after 20 s"
	sleep 0.1
done
mark "ISCSID initiator=$INITIATOR"
check_kernel boot

# ---------------------------------------------------------------- helpers
# size: 4096, 64K, 8M, 1G
bytes() {
	case $1 in
	*[kK]) echo $((${1%?} * 1024)) ;;
	*[mM]) echo $((${1%?} * 1048576)) ;;
	*[gG]) echo $((${1%?} * 1073741824)) ;;
	*) echo $(($1)) ;;
	esac
}
# gen TAG SIZE: deterministic content, cut to SIZE bytes, made of 512-byte
# sectors "TAG %016d " (sector number from 0) padded with dots to 511 bytes
# plus "\n": every sector of every file is distinct, so data from the wrong
# place or the wrong point in time shows. vm.Content in Go is the same.
gen() {
	awk -v t="$1" -v n=$((($2 + 511) / 512)) 'BEGIN {
		f = "."
		while (length(f) < 512) f = f f
		for (i = 0; i < n; i++) {
			h = sprintf("%s %016d ", t, i)
			printf "%s%s\n", h, substr(f, 1, 511 - length(h))
		}
	}' | head -c "$2"
}
need() { for _k; do eval "[ -n \"\${a_$_k}\" ]" || fail "missing $_k="; done; }
disk_of() { # id -> sdX
	eval "_d=\${DISK_$1}"
	[ -n "$_d" ] || fail "no disk logged in as id=$1"
	echo "$_d"
}
mnt_of() { echo "/mnt/$1"; }
mounted() { grep -q " $(mnt_of "$1") " /proc/mounts; }
path_in() { # id relpath -> absolute path on that id's mount
	mounted "$1" || fail "id=$1 is not mounted"
	case $2 in /* | *..*) fail "path must be relative without ..: $2" ;; esac
	echo "$(mnt_of "$1")/$2"
}
auth_settings() { # emit "key value" pairs for the login's node record
	_u=${a_user-$CHAP_USER} _p=${a_pass-$CHAP_PASS}
	_iu=${a_in_user-$CHAP_IN_USER} _ip=${a_in_pass-$CHAP_IN_PASS}
	[ -n "$_u" ] || return 0
	echo "node.session.auth.authmethod CHAP"
	echo "node.session.auth.username $_u"
	echo "node.session.auth.password $_p"
	[ -n "$_iu" ] || return 0
	echo "node.session.auth.username_in $_iu"
	echo "node.session.auth.password_in $_ip"
}
sessions() { ls -d /sys/class/iscsi_session/session* 2>/dev/null; }
hexof() { [ -r "$1" ] && od -An -v -tx1 "$1" | tr -d ' \n'; }

# ---------------------------------------------------------------- steps
op_discover() {
	need portal
	D="iscsiadm -m discoverydb -t sendtargets -p $a_portal"
	$D -o new >/dev/null 2>&1
	if [ -n "$CHAP_USER" ] && [ "${a_auth:-$DISC_CHAP}" = 1 ]; then
		for kv in "authmethod CHAP" "username $CHAP_USER" "password $CHAP_PASS"; do
			$D -o update -n "discovery.sendtargets.auth.${kv%% *}" -v "${kv#* }" >/dev/null || fail "discoverydb update ${kv%% *}"
		done
		if [ -n "$CHAP_IN_USER" ]; then
			$D -o update -n discovery.sendtargets.auth.username_in -v "$CHAP_IN_USER" >/dev/null &&
				$D -o update -n discovery.sendtargets.auth.password_in -v "$CHAP_IN_PASS" >/dev/null || fail "discoverydb update *_in"
		fi
	fi
	# nonpersistent: the targets advertise their own (host loopback)
	# addresses, useless inside the guest; logins use explicit portals
	$D --discover -o nonpersistent >/tmp/vm/disc.out 2>&1
	rc=$?
	if [ "${a_fail:-0}" = 1 ]; then
		[ $rc -ne 0 ] || fail "discovery on $a_portal succeeded, expected failure"
		mark "DISCOVERY_FAILED portal=$a_portal rc=$rc expected=1"
		kernel_expected
		return
	fi
	[ $rc -eq 0 ] || { cat /tmp/vm/disc.out; fail "discovery on $a_portal rc=$rc"; }
	n=0
	while read -r addr iqn; do
		[ -n "$iqn" ] || continue
		mark "TARGET iqn=$iqn addr=$addr portal=$a_portal"
		n=$((n + 1))
	done </tmp/vm/disc.out
	for want in $(echo "${a_expect:-}" | tr '+' ' '); do
		grep -q " $want\$" /tmp/vm/disc.out || fail "target $want not in the SendTargets reply from $a_portal"
	done
	mark "DISCOVERY portal=$a_portal targets=$n"
}

op_login() {
	need id iqn portal
	eval "[ -z \"\${DISK_$a_id}\" ]" || fail "id=$a_id is already logged in"
	N="iscsiadm -m node -T $a_iqn -p $a_portal"
	$N -o delete >/dev/null 2>&1
	$N -o new >/dev/null || fail "node record for $a_iqn $a_portal"
	{
		echo "node.session.timeo.replacement_timeout ${a_replacement:-15}"
		echo "node.session.initial_login_retry_max 2"
		if [ -n "$DIGEST" ]; then
			echo "node.conn[0].iscsi.HeaderDigest $DIGEST"
			echo "node.conn[0].iscsi.DataDigest $DIGEST"
		fi
		set -f
		for kv in $SETS; do echo "${kv%%=*} ${kv#*=}"; done
		set +f
		auth_settings
	} >/tmp/vm/node.set
	while read -r k v; do
		$N -o update -n "$k" -v "$v" >/dev/null || fail "node update $k"
	done </tmp/vm/node.set
	{ echo none; sessions; } >/tmp/vm/sess.before # never empty: busybox grep -f
	$N --login >/tmp/vm/login.out 2>&1
	rc=$?
	if [ "${a_fail:-0}" = 1 ]; then
		[ $rc -ne 0 ] || fail "login to $a_iqn on $a_portal succeeded, expected failure"
		$N -o delete >/dev/null 2>&1
		mark "LOGIN_FAILED id=$a_id rc=$rc expected=1"
		kernel_expected
		return
	fi
	[ $rc -eq 0 ] || { cat /tmp/vm/login.out; fail "login to $a_iqn on $a_portal rc=$rc"; }
	S=$(sessions | grep -vxF -f /tmp/vm/sess.before | head -n 1)
	[ -n "$S" ] || fail "login ok but no new iscsi session in sysfs"
	sid=${S##*/session}
	lun=${a_lun:-*}
	i=0
	while :; do
		dev=
		for b in "$S"/device/target*/*:*:*:$lun/block/*; do
			[ -e "$b" ] && { dev=${b##*/}; break; }
		done
		[ -n "$dev" ] && [ -b "/dev/$dev" ] && break
		i=$((i + 1))
		[ $i -le $((LUNWAIT * 10)) ] || fail "no block device (lun=$lun) in session $sid after ${LUNWAIT}s"
		sleep 0.1
	done
	eval "DISK_$a_id=\$dev IQN_$a_id=\$a_iqn PORTAL_$a_id=\$a_portal SID_$a_id=\$sid"
	sd=/sys/block/$dev
	hctl=$(basename "$(readlink -f "$sd/device")")
	mark "LOGIN id=$a_id sid=$sid iqn=$a_iqn portal=$a_portal"
	mark "DISK id=$a_id dev=$dev hctl=$hctl sectors=$(cat "$sd/size") lbs=$(cat "$sd/queue/logical_block_size")" \
		"ro=$(cat "$sd/ro") vendor=$(tr -d ' ' <"$sd/device/vendor") model=$(tr -d ' ' <"$sd/device/model")" \
		"rev=$(tr -d ' ' <"$sd/device/rev" 2>/dev/null)"
	mark "IDENT id=$a_id wwid=$(tr ' ' '_' <"$sd/device/wwid" 2>/dev/null) vpd83=$(hexof "$sd/device/vpd_pg83") vpd80=$(hexof "$sd/device/vpd_pg80")"
	iscsiadm -m session -r "$sid" -P 3 2>/dev/null |
		sed -n '/Negotiated iSCSI params/,/Attached SCSI/p' | grep ': ' |
		while IFS=: read -r k v; do
			k=$(echo $k)
			v=$(echo $v)
			echo "@@VM PARAM id=$a_id $k=$v" >&3
		done
}

op_logout() {
	need id
	dev=$(disk_of "$a_id")
	mounted "$a_id" && fail "id=$a_id is still mounted"
	eval "iqn=\$IQN_$a_id portal=\$PORTAL_$a_id sid=\$SID_$a_id"
	iscsiadm -m node -T "$iqn" -p "$portal" --logout >/tmp/vm/logout.out 2>&1 ||
		{ cat /tmp/vm/logout.out; fail "logout of $iqn $portal"; }
	iscsiadm -m node -T "$iqn" -p "$portal" -o delete >/dev/null 2>&1
	[ -e "/sys/class/iscsi_session/session$sid" ] && fail "session $sid still present after logout"
	eval "DISK_$a_id="
	mark "LOGOUT id=$a_id sid=$sid"
}

op_mkfs() {
	need id
	dev=$(disk_of "$a_id")
	/sbin/mke2fs -t ext4 -F -q -E lazy_itable_init=0,lazy_journal_init=0 -L "${a_label:-csnapvm}" "/dev/$dev" ||
		fail "mkfs.ext4 /dev/$dev"
	mark "MKFS id=$a_id dev=$dev"
}

op_mount() {
	need id
	dev=$(disk_of "$a_id")
	m=$(mnt_of "$a_id")
	o=
	[ "${a_ro:-0}" = 1 ] && o=ro
	[ -n "${a_opts:-}" ] && o="${o:+$o,}$(echo "$a_opts" | tr '+' ',')"
	mkdir -p "$m"
	mount -t ext4 ${o:+-o "$o"} "/dev/$dev" "$m" || fail "mount /dev/$dev ${o:+-o $o}"
	mark "MOUNT id=$a_id dev=$dev at=$m opts=${o:-rw}"
}

op_umount() {
	need id
	umount "$(mnt_of "$a_id")" || fail "umount $(mnt_of "$a_id")"
	mark "UMOUNT id=$a_id"
}

op_write() { # deterministic content (see gen), fsync'ed
	need id path size
	f=$(path_in "$a_id" "$a_path")
	mkdir -p "$(dirname "$f")"
	sz=$(bytes "$a_size")
	gen "$a_path@${a_seed:-0}" "$sz" | dd of="$f" bs=64k conv=fsync 2>/dev/null || fail "write $a_path"
	[ "$(stat -c %s "$f")" = "$sz" ] || fail "write $a_path: size $(stat -c %s "$f") != $sz"
	mark "WROTE id=$a_id path=$a_path size=$sz seed=${a_seed:-0}"
}

op_rand() { # random content, fsync'ed; the sha256 goes to the host
	need id path size
	f=$(path_in "$a_id" "$a_path")
	mkdir -p "$(dirname "$f")"
	sz=$(bytes "$a_size")
	head -c "$sz" /dev/urandom | dd of="$f" bs=64k conv=fsync 2>/dev/null || fail "write $a_path"
	mark "WROTE id=$a_id path=$a_path size=$sz sha256=$(sha256sum "$f" | cut -d' ' -f1)"
}

op_check() { # a file written by write= has exactly its deterministic content
	need id path size
	f=$(path_in "$a_id" "$a_path")
	[ -f "$f" ] || fail "check: $a_path missing"
	sz=$(bytes "$a_size")
	want=$(gen "$a_path@${a_seed:-0}" "$sz" | sha256sum | cut -d' ' -f1)
	got=$(sha256sum "$f" | cut -d' ' -f1)
	[ "$want" = "$got" ] || fail "check: $a_path content differs"
	mark "CHECKED id=$a_id path=$a_path"
}

op_rm() {
	need id path
	f=$(path_in "$a_id" "$a_path")
	[ -e "$f" ] || fail "rm: $a_path does not exist"
	rm -rf "$f" || fail "rm $a_path"
	sync
	mark "REMOVED id=$a_id path=$a_path"
}

op_mkdir() {
	need id path
	mkdir -p "$(path_in "$a_id" "$a_path")" || fail "mkdir $a_path"
	mark "MKDIR id=$a_id path=$a_path"
}

# manifest: every entry of the mounted tree, "type size sha256 path", sorted
manifest_of() {
	m=$(mnt_of "$1")
	(cd "$m" && find . -mindepth 1 | sort) | while read -r p; do
		if [ -L "$m/$p" ]; then
			echo "l - $(readlink "$m/$p") $p"
		elif [ -d "$m/$p" ]; then
			echo "d - - $p"
		else
			echo "f $(stat -c %s "$m/$p") $(sha256sum "$m/$p" | cut -d' ' -f1) $p"
		fi
	done
}
op_manifest() {
	need id name
	mounted "$a_id" || fail "id=$a_id is not mounted"
	manifest_of "$a_id" >"/tmp/vm/manifest/$a_name"
	sed "s/^/@@VM ENTRY manifest=$a_name /" "/tmp/vm/manifest/$a_name" >&3
	mark "MANIFEST id=$a_id name=$a_name entries=$(wc -l <"/tmp/vm/manifest/$a_name") sha256=$(sha256sum "/tmp/vm/manifest/$a_name" | cut -d' ' -f1)"
}
op_verify() { # the mounted tree is exactly the one recorded by manifest=name
	need id name
	mounted "$a_id" || fail "id=$a_id is not mounted"
	[ -r "/tmp/vm/manifest/$a_name" ] || fail "no manifest $a_name"
	manifest_of "$a_id" >/tmp/vm/verify.now
	if ! cmp -s "/tmp/vm/manifest/$a_name" /tmp/vm/verify.now; then
		diff "/tmp/vm/manifest/$a_name" /tmp/vm/verify.now | grep '^[-+][^-+]' | head -n 40 | sed 's/^/@@VM DIFF /' >&3
		fail "id=$a_id differs from manifest $a_name"
	fi
	mark "VERIFIED id=$a_id name=$a_name entries=$(wc -l </tmp/vm/verify.now)"
}

op_fsck() {
	need id
	dev=$(disk_of "$a_id")
	mounted "$a_id" && fail "fsck: id=$a_id is mounted"
	e2fsck -fn "/dev/$dev" >/tmp/vm/fsck.out 2>&1
	rc=$?
	[ $rc -eq 0 ] || { cat /tmp/vm/fsck.out; fail "e2fsck -fn /dev/$dev rc=$rc"; }
	mark "FSCK id=$a_id dev=$dev clean=1"
}

op_freeze() { need id; fsfreeze --freeze "$(mnt_of "$a_id")" || fail "fsfreeze --freeze"; mark "FROZEN id=$a_id"; }
op_thaw() { need id; fsfreeze --unfreeze "$(mnt_of "$a_id")" || fail "fsfreeze --unfreeze"; mark "THAWED id=$a_id"; }
op_sync() { sync; mark "SYNCED"; }
op_sleep() { need sec; sleep "$a_sec"; mark "SLEPT sec=$a_sec"; }

op_pause() { # wait until the host writes "@@GO name" to the console
	need name
	to=${a_timeout:-300}
	mark "PAUSE name=$a_name timeout=$to"
	start=$(cut -d. -f1 /proc/uptime)
	while :; do
		left=$((start + to - $(cut -d. -f1 /proc/uptime)))
		[ $left -gt 0 ] || fail "pause $a_name: no @@GO from the host in ${to}s"
		line=
		# a timeout re-checks the deadline; EOF must not spin
		read -r -t "$left" line || { sleep 0.2; continue; }
		case $(echo "$line" | tr -d '\r') in
		"@@GO $a_name" | "@@GO $a_name "*) break ;;
		esac
	done
	mark "RESUMED name=$a_name"
}

# lu_designators prints the designation descriptors of a VPD 0x83 hex dump
# whose association is the logical unit (the target port and target
# device ones differ from portal to portal by design), concatenated.
lu_designators() {
	v=$1 out= i=8 n=${#1}
	while [ $((i + 8)) -le $n ]; do
		b1=$((0x$(echo "$v" | cut -c$((i + 3))-$((i + 4)))))
		len=$((0x$(echo "$v" | cut -c$((i + 7))-$((i + 8)))))
		end=$((i + 8 + 2 * len))
		[ $(((b1 >> 4) & 3)) -eq 0 ] && out="$out$(echo "$v" | cut -c$((i + 1))-$end)"
		i=$end
	done
	echo "$out"
}

op_sameid() { # all ids (a+b+...) show the same LU designators in VPD 0x83, and wwid
	need ids
	first= fw=
	for id in $(echo "$a_ids" | tr '+' ' '); do
		d=$(disk_of "$id")
		v=$(hexof "/sys/block/$d/device/vpd_pg83")
		w=$(cat "/sys/block/$d/device/wwid" 2>/dev/null)
		[ -n "$v" ] || fail "id=$id ($d) has no VPD page 0x83"
		l=$(lu_designators "$v")
		[ -n "$l" ] || fail "id=$id ($d): no logical-unit designator in VPD page 0x83 $v"
		if [ -z "$first" ]; then
			first=$l fw=$w
		else
			[ "$l" = "$first" ] || fail "LU designators in VPD 0x83 of id=$id differ: $l != $first"
			[ "$w" = "$fw" ] || fail "wwid of id=$id differs: $w != $fw"
		fi
	done
	mark "SAMEID ids=$a_ids lu=$first wwid=$fw"
}

op_rawio() { # O_DIRECT write + read back on the raw disk at off (MiB)
	need id mb
	dev=$(disk_of "$a_id")
	mounted "$a_id" && fail "rawio: id=$a_id is mounted"
	sz=$((a_mb * 1048576))
	tag="raw@${a_seed:-0}@${a_off:-0}"
	gen "$tag" "$sz" | dd of="/dev/$dev" bs=1M seek="${a_off:-0}" iflag=fullblock oflag=direct conv=fsync,notrunc 2>/dev/null ||
		fail "rawio write /dev/$dev"
	want=$(gen "$tag" "$sz" | sha256sum | cut -d' ' -f1)
	got=$(dd if="/dev/$dev" bs=1M skip="${a_off:-0}" count="$a_mb" iflag=direct 2>/dev/null | sha256sum | cut -d' ' -f1)
	[ "$want" = "$got" ] || fail "rawio read back differs on /dev/$dev"
	mark "RAWIO id=$a_id dev=$dev off=${a_off:-0} mb=$a_mb"
}

op_mpath() { # mpath,id=m,ids=p1+p2: dm-multipath device over paths of one LU
	need id ids
	eval "[ -z \"\${DISK_$a_id}\" ]" || fail "id=$a_id is already in use"
	n=0 size= paths=
	for p in $(echo "$a_ids" | tr '+' ' '); do
		d=$(disk_of "$p")
		s=$(cat "/sys/block/$d/size")
		[ -z "$size" ] || [ "$s" = "$size" ] || fail "path $p: $s sectors, not $size"
		size=$s n=$((n + 1)) paths="$paths $(cat "/sys/block/$d/dev") 1"
	done
	# no queue_if_no_path: with every path gone, I/O fails instead of hanging
	table="0 $size multipath 0 0 1 1 ${a_selector:-round-robin} 0 $n 1$paths"
	dmsetup create "$a_id" --noudevsync --table "$table" || fail "dmsetup create $a_id: $table"
	dev=
	for b in /sys/block/dm-*; do
		[ "$(cat "$b/dm/name" 2>/dev/null)" = "$a_id" ] && dev=${b##*/}
	done
	[ -n "$dev" ] && [ -b "/dev/$dev" ] || fail "no block device for dm map $a_id"
	eval "DISK_$a_id=\$dev MPATH_$a_id=1"
	mark "MPATH id=$a_id dev=$dev paths=$a_ids sectors=$size"
}
op_mpstatus() { # path states of a dm-multipath device: MPSTATUS active= failed=
	need id
	disk_of "$a_id" >/dev/null
	st=$(dmsetup status "$a_id") || fail "dmsetup status $a_id"
	act=$(echo "$st" | grep -oE '[0-9]+:[0-9]+ A' | wc -l)
	fld=$(echo "$st" | grep -oE '[0-9]+:[0-9]+ F' | wc -l)
	mark "MPSTATUS id=$a_id active=$act failed=$fld"
	[ -z "${a_active:-}" ] || [ "$act" = "$a_active" ] || fail "$a_id: $act active paths, want $a_active ($st)"
	[ -z "${a_failed:-}" ] || [ "$fld" = "$a_failed" ] || fail "$a_id: $fld failed paths, want $a_failed ($st)"
}
op_mpremove() {
	need id
	disk_of "$a_id" >/dev/null
	mounted "$a_id" && fail "id=$a_id is still mounted"
	dmsetup remove --noudevsync "$a_id" || fail "dmsetup remove $a_id"
	eval "DISK_$a_id= MPATH_$a_id="
	mark "MPREMOVED id=$a_id"
}

op_wcache() { # wcache,id=,set=on|off (MODE SELECT WCE) or wcache,id=,want=on|off (rescan: MODE SENSE)
	need id
	dev=$(disk_of "$a_id")
	f=$(ls /sys/block/$dev/device/scsi_disk/*/cache_type 2>/dev/null | head -n 1)
	[ -n "$f" ] || fail "id=$a_id: no scsi_disk cache_type in sysfs"
	n0=$(dmesg | wc -l)
	if [ -n "${a_set:-}" ]; then
		case $a_set in on) v="write back" ;; off) v="write through" ;; *) fail "wcache set=on|off" ;; esac
		echo "$v" >"$f" || fail "id=$a_id: writing '$v' to cache_type (MODE SELECT refused?)"
		want=$a_set
	else
		need want
		echo 1 >"/sys/block/$dev/device/rescan" || fail "id=$a_id: rescan"
		want=$a_want
	fi
	# A MODE SENSE that failed makes sd assume write through: not an answer.
	dmesg | tail -n +$((n0 + 1)) | grep -qiE "cache data failed|assuming drive cache" &&
		fail "id=$a_id: the kernel could not read the Caching mode page"
	case $(cat "$f") in
	"write back"*) got=on ;;
	"write through"* | none*) got=off ;;
	*) fail "id=$a_id: cache_type '$(cat "$f")'" ;;
	esac
	mark "WCACHE id=$a_id wce=$got"
	[ "$got" = "$want" ] || fail "id=$a_id: write cache $got, want $want"
}

op_kerr() { # kerr,mode=warn|strict: switch the kernel log policy
	case ${a_mode:-} in warn) STRICT=0 ;; strict) STRICT=1 ;; *) fail "kerr mode=warn|strict" ;; esac
	mark "KERR mode=$a_mode"
}

# ---------------------------------------------------------------- main loop
STEPNO=0
while [ $STEPNO -lt "$NSTEPS" ]; do
	STEPNO=$((STEPNO + 1))
	eval "S=\$STEP_$STEPNO"
	OP=${S%%,*}
	for v in $(set | sed -n 's/^\(a_[a-z0-9_]*\)=.*/\1/p'); do unset "$v"; done
	if [ "$OP" != "$S" ]; then
		oldifs=$IFS
		IFS=,
		set -f
		for kv in ${S#*,}; do
			k=${kv%%=*}
			case $k in *[!a-z0-9_]* | "") fail "bad step argument '$kv'" ;; esac
			eval "a_$k=\${kv#*=}"
		done
		set +f
		IFS=$oldifs
	fi
	command -v "op_$OP" >/dev/null || fail "unknown step op '$OP'"
	mark "STEP n=$STEPNO op=$OP"
	"op_$OP"
	check_kernel "step$STEPNO"
	mark "DONE n=$STEPNO op=$OP"
done
STEPNO= OP=

left=$(sessions | wc -l) # a script should log out of what it logged in to
kill $ISCSID 2>/dev/null
check_kernel end
mark "PASS steps=$NSTEPS kernel_warnings=$KERR_TOTAL sessions_left=$left"
poweroff_now
