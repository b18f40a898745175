#!/bin/bash
# tests/vm/setup.sh [CACHE]
#
# Prepares this machine for the VM initiator tests (package
# github.com/csnap/csnap/tests/vm). Idempotent and quick once done.
#
#   1. apt packages: qemu (TCG is enough, no KVM), open-iscsi (its iscsid and
#      iscsiadm binaries are copied into the guest), e2fsprogs, dmsetup (for
#      dm-multipath in the guest), kmod, cpio, xz-utils, and tgt (reference
#      target used by the harness's own tests).
#   2. a *static* busybox, unpacked from busybox-static's .deb into the cache
#      (installing busybox-static would remove the system's dynamic busybox).
#   3. a Debian kernel, unpacked from its linux-image .deb into the cache. It
#      is never installed: an install runs update-initramfs and takes minutes.
#   4. the guest artifacts in CACHE/build:
#        vmlinux-KVER          the ELF inside the compressed bzImage; qemu
#                              boots it through its PVH entry point, which
#                              saves the 3-5 s of in-guest xz decompression
#                              under TCG
#        base-KVER.cpio.gz     busybox, iscsid, iscsiadm, mke2fs, e2fsck, dmsetup,
#                              their libraries and the kernel modules. It has
#                              NO /init: the Go harness appends one (from
#                              guest/init.sh, embedded in the test binary) at
#                              run time, so editing init.sh needs no rebuild.
#      and CACHE/vm.conf, which tells the harness what to boot.
#
# CACHE defaults to tests/vm/.cache (gitignored); the harness looks there, or
# in $CSNAP_VM_CACHE. Root is needed only when packages are missing.
# Env: CSNAP_VM_KVER=VERSION picks a kernel ABI (default: the one already in
# the cache, else what linux-image-amd64 currently depends on).
set -euo pipefail
export LC_ALL=C DEBIAN_FRONTEND=noninteractive

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CACHE=${1:-${CSNAP_VM_CACHE:-$HERE/.cache}}
mkdir -p "$CACHE"
CACHE=$(cd "$CACHE" && pwd)
T0=$SECONDS

say() { echo "vm-setup: $*" >&2; }
die() { say "ERROR: $*"; exit 1; }

# One setup at a time per cache (parallel `make test` runs, several engineers).
exec 9>"$CACHE/.setup.lock"
flock 9

# ---------------------------------------------------------------- packages
PKGS="qemu-system-x86 open-iscsi e2fsprogs dmsetup kmod cpio xz-utils gzip tgt"
missing=
for p in $PKGS; do
	st=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
	[ "$st" = "install ok installed" ] || missing="$missing $p"
done
APT_UPDATED=0
apt_update() {
	[ "$APT_UPDATED" = 1 ] && return 0
	say "apt-get update"
	apt-get update -qq || die "apt-get update failed"
	APT_UPDATED=1
}
if [ -n "$missing" ]; then
	[ "$(id -u)" = 0 ] || die "missing packages:$missing (run this script as root, or: apt-get install$missing)"
	apt_update
	say "installing:$missing"
	apt-get install -y -qq --no-install-recommends $missing </dev/null >/dev/null ||
		die "apt-get install$missing failed"
fi
for b in qemu-system-x86_64 /usr/sbin/iscsid /usr/sbin/iscsiadm /usr/sbin/mke2fs /usr/sbin/e2fsck /sbin/dmsetup depmod modprobe cpio xz gzip; do
	command -v "$b" >/dev/null || die "$b still missing after package install"
done

# fetch_deb PKG DIR: apt-get download PKG and unpack it into DIR (atomically)
fetch_deb() {
	local pkg=$1 dir=$2 tmp
	tmp=$(mktemp -d "$CACHE/.dl.XXXXXX")
	if ! (cd "$tmp" && apt-get download -qq "$pkg" >/dev/null 2>&1); then
		apt_update
		(cd "$tmp" && apt-get download -qq "$pkg" >/dev/null 2>&1) || { rm -rf "$tmp"; die "apt-get download $pkg failed"; }
	fi
	mkdir "$tmp/x"
	dpkg-deb -x "$tmp"/*.deb "$tmp/x" || { rm -rf "$tmp"; die "dpkg-deb -x $pkg failed"; }
	rm -rf "$dir"
	mv "$tmp/x" "$dir"
	rm -rf "$tmp"
}

# ---------------------------------------------------------------- busybox
BB=$CACHE/busybox/bin/busybox
if [ ! -x "$BB" ]; then
	say "unpacking busybox-static"
	fetch_deb busybox-static "$CACHE/busybox"
fi
[ -x "$BB" ] || die "no $BB in busybox-static"
if ldd "$BB" >/dev/null 2>&1; then die "$BB is not static"; fi

# ---------------------------------------------------------------- kernel
KV=${CSNAP_VM_KVER:-}
if [ -z "$KV" ]; then
	# keep the kernel we already have (offline, reproducible within a cache)
	for d in "$CACHE"/kroot-*; do
		[ -r "$d/.complete" ] && KV=${d##*/kroot-}
	done
fi
if [ -z "$KV" ]; then
	resolve() { apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/{sub(/^linux-image-/,"",$2); print $2; exit}'; }
	KV=$(resolve)
	if [ -z "$KV" ]; then apt_update; KV=$(resolve); fi
	[ -n "$KV" ] || die "cannot resolve linux-image-amd64 to a kernel version"
fi
KROOT=$CACHE/kroot-$KV
if [ ! -r "$KROOT/.complete" ]; then
	say "downloading and unpacking linux-image-$KV (not installing it)"
	fetch_deb "linux-image-$KV" "$KROOT"
	[ -r "$KROOT/boot/vmlinuz-$KV" ] || die "no boot/vmlinuz-$KV in linux-image-$KV"
	depmod -b "$KROOT" "$KV"
	touch "$KROOT/.complete"
	for d in "$CACHE"/kroot-*; do [ "$d" = "$KROOT" ] || rm -rf "$d"; done
fi
MODDIR=$KROOT/lib/modules/$KV

# ---------------------------------------------------------------- guest build
BUILD=$CACHE/build
mkdir -p "$BUILD"
BASE=base-$KV.cpio.gz
VMLINUX=vmlinux-$KV
# Everything that goes into the base initramfs; a change rebuilds it.
STAMP="kver=$KV script=$(sha256sum "${BASH_SOURCE[0]}" | cut -c1-16)"
STAMP="$STAMP $(dpkg-query -W -f='${Package}=${Version} ' open-iscsi e2fsprogs dmsetup libc6 2>/dev/null)"
STAMP="$STAMP busybox=$(sha256sum "$BB" | cut -c1-16)"

if [ -s "$BUILD/$BASE" ] && [ "$(cat "$BUILD/.stamp" 2>/dev/null)" = "$STAMP" ]; then
	say "initramfs up to date ($KV)"
else
	say "building the base initramfs for $KV"
	rm -f "$BUILD/.stamp"
	STAGE=$(mktemp -d "$BUILD/.stage.XXXXXX")
	trap 'rm -rf "$STAGE"' EXIT
	mkdir -p "$STAGE"/{bin,sbin,usr/bin,usr/sbin,lib,lib64,etc/iscsi,proc,sys,dev,run,tmp,mnt,var/lib,root}

	# busybox applets; skip those that would shadow the real e2fsprogs tools
	# (ash prefers its own applets over PATH, and busybox mke2fs has no ext4)
	cp "$BB" "$STAGE/bin/busybox"
	for a in $("$BB" --list); do
		case $a in busybox|mke2fs|mkfs.ext2|e2fsck|fsck*) continue ;; esac
		ln -s busybox "$STAGE/bin/$a"
	done
	ln -s ../bin/busybox "$STAGE/sbin/modprobe" # for the kernel's request_module()

	# dynamically linked tools with every library ldd reports, at the same paths
	add_bin() {
		local src=$1 lib
		cp -L "$src" "$STAGE/sbin/$(basename "$src")"
		for lib in $(ldd "$src" | awk '$2=="=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}'); do
			[ -e "$STAGE$lib" ] && continue
			mkdir -p "$STAGE$(dirname "$lib")"
			cp -L "$lib" "$STAGE$lib"
		done
	}
	for b in /usr/sbin/iscsid /usr/sbin/iscsiadm /usr/sbin/mke2fs /usr/sbin/e2fsck /sbin/dmsetup; do add_bin "$b"; done
	[ -e "$STAGE/lib64/ld-linux-x86-64.so.2" ] || die "dynamic loader not picked up from ldd"
	ln -s mke2fs "$STAGE/sbin/mkfs.ext4"
	cp /etc/mke2fs.conf "$STAGE/etc/"
	[ -r /etc/e2scrub.conf ] && cp /etc/e2scrub.conf "$STAGE/etc/"
	# iscsid is started by /init; iscsiadm must not try to start it
	sed 's|^iscsid.startup.*|iscsid.startup = /bin/true|' /etc/iscsi/iscsid.conf >"$STAGE/etc/iscsi/iscsid.conf"
	echo 'root:x:0:0:root:/root:/bin/sh' >"$STAGE/etc/passwd"
	echo 'root:x:0:' >"$STAGE/etc/group"

	# kernel modules in load order, resolved (not loaded) by the host's kmod
	# against the unpacked tree, softdeps included; stored uncompressed
	WANT="virtio_pci virtio_net crc32c_generic crct10dif_generic crc64_rocksoft_generic iscsi_tcp sd_mod ext4 dm_multipath dm_round_robin"
	mkdir -p "$STAGE/lib/modules/$KV"
	: >"$STAGE/etc/modules.order"
	for m in $WANT; do
		modprobe -D -d "$KROOT" -S "$KV" "$m" || die "modprobe -D $m failed for $KV"
	done | awk '$1=="insmod" && !seen[$2]++ {print $2}' | while read -r ko; do
		rel=${ko#*/lib/modules/"$KV"/}
		case $rel in *.ko) ;; *) rel=${rel%.*} ;; esac # stored uncompressed
		out=$STAGE/lib/modules/$KV/$rel
		mkdir -p "$(dirname "$out")"
		case $ko in
		*.ko.xz) xz -dc "$ko" >"$out" ;;
		*.ko.zst) zstd -qdc "$ko" >"$out" ;;
		*.ko.gz) gzip -dc "$ko" >"$out" ;;
		*) cp "$ko" "$out" ;;
		esac
		echo "/lib/modules/$KV/$rel" >>"$STAGE/etc/modules.order"
	done
	grep -q '/iscsi_tcp\.ko$' "$STAGE/etc/modules.order" || die "iscsi_tcp.ko not found for $KV"
	cp "$MODDIR"/modules.builtin* "$MODDIR/modules.order" "$STAGE/lib/modules/$KV/" 2>/dev/null || true
	depmod -b "$STAGE" "$KV"

	(cd "$STAGE" && find . -print0 | sort -z | cpio --null -o -H newc -R 0:0 --quiet) | gzip -6 >"$BUILD/$BASE.tmp"
	mv "$BUILD/$BASE.tmp" "$BUILD/$BASE"
	say "built $BASE ($(du -h "$BUILD/$BASE" | cut -f1), $(wc -l <"$STAGE/etc/modules.order") modules)"

	for f in "$BUILD"/base-*.cpio.gz; do [ "$f" = "$BUILD/$BASE" ] || rm -f "$f"; done
	echo "$STAMP" >"$BUILD/.stamp"
fi

# PVH-bootable ELF: the bzImage payload is xz (Debian); find its magic and
# decompress. xz complains about the trailing bytes after the stream, but
# the ELF is complete, so check the ELF magic instead of xz's exit code.
if [ ! -s "$BUILD/$VMLINUX" ]; then
	say "extracting $VMLINUX"
	grep -q '^CONFIG_PVH=y' "$KROOT/boot/config-$KV" || die "kernel $KV lacks CONFIG_PVH"
	off=$(grep -obUaP '\xfd7zXZ\x00' "$KROOT/boot/vmlinuz-$KV" | head -1 | cut -d: -f1)
	[ -n "$off" ] || die "no xz payload in vmlinuz-$KV"
	tail -c +$((off + 1)) "$KROOT/boot/vmlinuz-$KV" | xz -dc >"$BUILD/$VMLINUX.tmp" 2>/dev/null || true
	[ "$(head -c 4 "$BUILD/$VMLINUX.tmp" | od -An -tx1 | tr -d ' ')" = 7f454c46 ] || die "decompressed payload of vmlinuz-$KV is not an ELF"
	mv "$BUILD/$VMLINUX.tmp" "$BUILD/$VMLINUX"
	for f in "$BUILD"/vmlinux-*; do [ "$f" = "$BUILD/$VMLINUX" ] || rm -f "$f"; done
fi
say "ready ($KV) in $((SECONDS - T0)) s"

# What the Go harness boots (paths relative to the cache directory).
cat >"$CACHE/vm.conf.tmp" <<EOF
KVER=$KV
KERNEL=build/$VMLINUX
INITRD=build/$BASE
EOF
mv "$CACHE/vm.conf.tmp" "$CACHE/vm.conf"
