#!/usr/bin/env bash
# The project's test command (README.md "Test"). Works on a fresh Debian machine as root:
# installs the Debian packages the tests use when they are missing, then runs the whole
# workspace's tests with cargo-nextest (or cargo test when nextest is not installed).
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages the tests use as real components and oracles:
#   qemu-utils  qemu-img / qemu-io (qcow2 oracle, never called by product code)
#   e2fsprogs   mkfs.ext4 -d / debugfs (real filesystems inside disks, demo)
#   btrfs-progs, xfsprogs  reflink filesystems on loop devices
#   zstd, lz4   system tar extraction checks of .boxsnap archives
need=()
for pkg in qemu-utils e2fsprogs btrfs-progs xfsprogs zstd lz4; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "scripts/test.sh: installing ${need[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  else
    echo "scripts/test.sh: WARNING: missing packages ${need[*]} and not root: tests that need them will skip (and fail under CI=true)" >&2
  fi
fi

if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast "$@"
  cargo test --workspace --doc --quiet
else
  cargo test --workspace --no-fail-fast "$@"
fi
