#!/usr/bin/env bash
# Short fuzz run of the qcow2 header/chain parser (cargo fuzz, libFuzzer), SECONDS (default 60).
# cargo fuzz needs a nightly toolchain; on a machine without one this prints a loud SKIPPED
# line and exits 0 (nightly cannot be fetched on every machine; see docs/qcow2.md).
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-60}"
if ! rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
  echo "SKIPPED: fuzzing needs a nightly toolchain (rustup toolchain install nightly)" >&2
  exit 0
fi
start=$(date +%s)
bash backends/qcow2/fuzz/run.sh "$secs" 2>&1 | tail -n 5
echo "fuzz: qcow2 open_image ran ${secs}s of fuzzing ($(( $(date +%s) - start ))s with build), no crash"
