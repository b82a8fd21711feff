#!/usr/bin/env bash
# Short fuzz run of every cargo-fuzz target in fuzz/ (qcow2 open_image, archive
# import_archive), SECONDS each (default 60), after one shared build (see fuzz/run.sh).
# cargo fuzz needs a nightly toolchain; on a machine without one this prints a loud SKIPPED
# line and exits 0 (nightly cannot be fetched on every machine; see docs/SECURITY.md).
# A crash in any target makes this script fail.
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-60}"
if ! rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
  echo "SKIPPED: fuzzing needs a nightly toolchain (rustup toolchain install nightly)" >&2
  exit 0
fi
start=$(date +%s)
bash fuzz/run.sh "$secs"
echo "fuzz: open_image and import_archive ran ${secs}s of fuzzing each ($(( $(date +%s) - start ))s with build), no crash"
