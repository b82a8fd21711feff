#!/usr/bin/env bash
# Fuzz BoxLite's parsers of untrusted bytes for SECONDS each (default 60):
#   open_image      qcow2 safe open + reads, map, flatten, check, write (backends/qcow2)
#   import_archive  .boxsnap import: codec detection, tar, limits, manifest, checksums and the
#                   qcow2 standalone validation of staged disks (archive/)
#
#   fuzz/run.sh                        # every target, 60 s each
#   fuzz/run.sh 600 import_archive     # one target, 10 minutes
#
# Needs a nightly toolchain (cargo fuzz passes -Z flags); installs cargo-fuzz with
# `cargo install` when missing. Exits non-zero when a target crashes (the input is saved in
# fuzz/artifacts/<target>/); every target runs even if an earlier one crashed.
#
# Build: ONE `cargo fuzz build` for every target (they share all dependencies), with
#  * `--sanitizer none`: both parsers and all code they reach in this repository are safe
#    Rust (no `unsafe` in boxlite-api, boxlite-archive or boxlite-backend-qcow2), so
#    out-of-bounds accesses already panic and AddressSanitizer would find nothing more there;
#    the C code under them (libzstd) is not instrumented by `-Zsanitizer=address` anyway.
#    ASan instrumented every crate and slowed every execution.
#  * `--dev` with the crate's `[profile.dev]` (opt-level 1, no debug info, debug assertions
#    and overflow checks on): cargo fuzz's default release build compiles every crate as one
#    codegen unit at opt-level 3, several times slower to build, and measured here it did not
#    execute faster (docs/SECURITY.md, "Fuzzing").
# FUZZ_SANITIZER=address and FUZZ_RELEASE=1 restore cargo fuzz's defaults for a deeper run.
# The targets then run in parallel, one process each, when the machine has a core per target.
#
# Seeds: fuzz/corpus/<target>/, generated when empty from the test vectors:
#   open_image:      backends/qcow2/tests/fuzz_stress.rs (QCOW2_FUZZ_SEED_DIR) and the images
#                    of the hostile corpus (sdk/tests/hostile_corpus.rs)
#   import_archive:  the archives of the hostile corpus (BOXLITE_FUZZ_SEED_DIR)
# CI generates them during its normal test run (.ci/run exports both variables), so this
# script only builds and fuzzs there.
set -euo pipefail
SECONDS_TO_RUN="${1:-60}"
shift || true
TARGETS=("$@")
if [ "${#TARGETS[@]}" -eq 0 ]; then
  TARGETS=(open_image import_archive)
fi
HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
SANITIZER="${FUZZ_SANITIZER:-none}"
if ! rustup toolchain list | grep -q '^nightly'; then
  echo "run.sh: no nightly toolchain installed (rustup toolchain install nightly); cargo fuzz needs it" >&2
  exit 2
fi
if ! cargo fuzz --help >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked
fi

empty() { [ -z "$(ls -A "$1" 2>/dev/null)" ]; }
mkdir -p "$HERE/corpus/open_image" "$HERE/corpus/import_archive"
if empty "$HERE/corpus/open_image" || empty "$HERE/corpus/import_archive"; then
  if command -v qemu-img >/dev/null 2>&1; then
    echo "run.sh: generating seed corpora from the test vectors" >&2
    (cd "$ROOT" &&
      QCOW2_FUZZ_SEED_DIR="$HERE/corpus/open_image" \
        cargo test -q -p boxlite-backend-qcow2 --test fuzz_stress >/dev/null &&
      BOXLITE_FUZZ_SEED_DIR="$HERE/corpus" \
        cargo test -q -p boxlite --test hostile_corpus >/dev/null)
  else
    echo "run.sh: qemu-img missing, fuzzing without seed corpora" >&2
  fi
fi

cd "$HERE"
FLAGS=(--sanitizer "$SANITIZER")
profile=debug
if [ "${FUZZ_RELEASE:-0}" = 1 ]; then
  profile=release
else
  FLAGS+=(--dev)
fi
triple="$(rustc +nightly -vV | sed -n 's/^host: //p')"
tdir="${CARGO_TARGET_DIR:-$HERE/target}"
start=$(date +%s)
cargo +nightly fuzz build "${FLAGS[@]}"
echo "run.sh: built ${TARGETS[*]} in $(( $(date +%s) - start ))s (sanitizer $SANITIZER, $profile)" >&2

# One libFuzzer process per target, started the way `cargo fuzz run` starts it.
fuzz_one() {
  local t="$1" max_len=262144
  [ "$t" = open_image ] && max_len=65536
  mkdir -p "artifacts/$t" "logs"
  echo "run.sh: fuzzing $t for ${SECONDS_TO_RUN}s ($(ls "corpus/$t" | wc -l) seeds)" >&2
  "$tdir/$triple/$profile/$t" "corpus/$t" -artifact_prefix="artifacts/$t/" \
    -max_total_time="$SECONDS_TO_RUN" -max_len="$max_len" -rss_limit_mb=2048 \
    -timeout=30 -print_final_stats=1 >"logs/$t.log" 2>&1
}

declare -A pid
status=0
parallel=0
[ "$(nproc)" -ge "${#TARGETS[@]}" ] && parallel=1
for t in "${TARGETS[@]}"; do
  if [ $parallel = 1 ]; then
    fuzz_one "$t" &
    pid[$t]=$!
  elif ! fuzz_one "$t"; then
    pid[$t]=fail
  fi
done
for t in "${TARGETS[@]}"; do
  rc=0
  if [ "${pid[$t]:-}" = fail ]; then
    rc=1
  elif [ -n "${pid[$t]:-}" ]; then
    wait "${pid[$t]}" || rc=$?
  fi
  echo "---- $t (fuzz/logs/$t.log) ----" >&2
  grep -a -E '^(#[0-9]+ +DONE|stat::|==[0-9]+==|thread .* panicked|SUMMARY|artifact_prefix|Test unit written)' \
    "logs/$t.log" | tail -n 20 >&2 || true
  if [ "$rc" != 0 ]; then
    tail -n 40 "logs/$t.log" >&2
    echo "run.sh: $t FAILED (exit $rc; crash input in fuzz/artifacts/$t/)" >&2
    status=1
  fi
done
exit $status
