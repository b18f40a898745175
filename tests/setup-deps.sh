#!/usr/bin/env bash
# Installs the Debian packages csnap's tests drive. Idempotent: does
# nothing (quickly) when everything is present. Needs root for apt.
set -euo pipefail
pkgs=(
  libiscsi-bin     # iscsi-test-cu (conformance), iscsi-ls, iscsi-perf
  qemu-utils       # qemu-io, qemu-img
  qemu-block-extra # qemu's iscsi:// block driver
  tgt              # tgtd, the reference target for side-by-side benchmarks
  e2fsprogs        # debugfs, e2fsck for host-side checks of guest file systems
  iproute2         # ip netns for partition tests
  bc               # arithmetic in the benchmark scripts
  curl             # API requests timed by the benchmark scripts
)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup-deps: installing ${missing[*]}"
  SUDO=
  [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
if [ -x tests/vm/setup.sh ]; then
  tests/vm/setup.sh
fi
