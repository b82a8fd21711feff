#!/usr/bin/env bash
# Fuzz the qcow2 header/chain parser for SECONDS (default 60).
#   backends/qcow2/fuzz/run.sh 300
# Needs a nightly toolchain (cargo fuzz uses -Zsanitizer); installs
# cargo-fuzz from crates.io when missing. The seed corpus is generated from
# the test vectors with qemu-img (tests/fuzz_stress.rs writes the seeds).
set -euo pipefail
SECONDS_TO_RUN="${1:-60}"
HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/../../.." && pwd)"
if ! rustup toolchain list | grep -q '^nightly'; then
  echo "run.sh: no nightly toolchain installed (rustup toolchain install nightly); cargo fuzz needs it" >&2
  exit 2
fi
if ! cargo fuzz --help >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked
fi
CORPUS="$HERE/corpus/open_image"
mkdir -p "$CORPUS"
if command -v qemu-img >/dev/null 2>&1; then
  (cd "$ROOT" && QCOW2_FUZZ_SEED_DIR="$CORPUS" cargo test -q -p boxlite-backend-qcow2 --test fuzz_stress >/dev/null)
else
  echo "run.sh: qemu-img missing, fuzzing without a seed corpus" >&2
fi
cd "$HERE"
cargo +nightly fuzz run open_image "$CORPUS" -- \
  -max_total_time="$SECONDS_TO_RUN" -max_len=65536 -rss_limit_mb=2048
