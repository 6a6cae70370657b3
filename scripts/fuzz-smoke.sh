#!/usr/bin/env bash
# A short fuzzing run of every target in fuzz/ (cargo-fuzz / libFuzzer), as CI runs it.
#
#   scripts/fuzz-smoke.sh [target...]
#
# Installs cargo-fuzz when it is missing, builds all targets once, then runs each for
# FUZZ_SECONDS, FUZZ_JOBS targets at a time, starting from its committed seeds
# (fuzz/seeds/TARGET) and crash inputs (fuzz/regressions/TARGET, all replayed first), and
# growing its working corpus in fuzz/corpus/TARGET (git-ignored; keep it between runs, or cache
# it in CI, to start where the last run stopped). Fails when any target crashes, panics, hangs
# on one input for 10 s or goes over 2 GB; the input is saved under fuzz/artifacts/TARGET/ and
# its log is printed. docs/fuzzing.md says what to do with it.
#
# Environment:
#   FUZZ_SECONDS    seconds per target (default 60)
#   FUZZ_JOBS       targets fuzzed at the same time (default: the number of CPUs, at most 4);
#                   each uses one core
#   FUZZ_SANITIZER  none (default: all the code under test is safe Rust, so a panic is what a
#                   bug looks like, and runs are about twice as fast) or address
#   CARGO_FUZZ_VERSION  version installed when cargo-fuzz is missing (default 0.13.2)
#
# Only a stable toolchain is needed: RUSTC_BOOTSTRAP=1 lets it accept the few unstable compiler
# flags cargo-fuzz passes (-Zsanitizer when a sanitizer is asked for).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

SECONDS_PER_TARGET="${FUZZ_SECONDS:-60}"
SANITIZER="${FUZZ_SANITIZER:-none}"
JOBS="${FUZZ_JOBS:-$(nproc 2>/dev/null || echo 2)}"
((JOBS > 4)) && JOBS=4
((JOBS < 1)) && JOBS=1
export RUSTC_BOOTSTRAP=1

if ! cargo fuzz --version >/dev/null 2>&1; then
    version="${CARGO_FUZZ_VERSION:-0.13.2}"
    echo "fuzz-smoke: installing cargo-fuzz $version" >&2
    cargo install --locked cargo-fuzz --version "$version"
fi

targets=("$@")
if ((${#targets[@]} == 0)); then
    mapfile -t targets < <(cargo fuzz list)
fi

echo "fuzz-smoke: building ${#targets[@]} targets (sanitizer: $SANITIZER)" >&2
start=$(date +%s)
cargo fuzz build --sanitizer "$SANITIZER" >&2
echo "fuzz-smoke: built in $(($(date +%s) - start)) s" >&2

logs="$(mktemp -d)"
trap 'rm -rf "$logs"' EXIT

run_target() {
    local target="$1"
    local dirs=("fuzz/corpus/$target")
    mkdir -p "fuzz/corpus/$target"
    [[ -d "fuzz/seeds/$target" ]] && dirs+=("fuzz/seeds/$target")
    [[ -d "fuzz/regressions/$target" ]] && dirs+=("fuzz/regressions/$target")
    local rc=0
    cargo fuzz run --sanitizer "$SANITIZER" "$target" "${dirs[@]}" -- \
        -max_total_time="$SECONDS_PER_TARGET" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
        >"$logs/$target.log" 2>&1 || rc=$?
    echo "$rc" >"$logs/$target.rc"
}

start=$(date +%s)
running=()
for target in "${targets[@]}"; do
    # At most JOBS at a time: wait until one of the running targets has written its status.
    while ((${#running[@]} >= JOBS)); do
        sleep 1
        still=()
        for t in "${running[@]}"; do [[ -e "$logs/$t.rc" ]] || still+=("$t"); done
        running=("${still[@]+"${still[@]}"}")
    done
    run_target "$target" &
    running+=("$target")
done
wait
echo "fuzz-smoke: fuzzed for $(($(date +%s) - start)) s" >&2

failed=()
for target in "${targets[@]}"; do
    if [[ "$(cat "$logs/$target.rc" 2>/dev/null)" == 0 ]]; then
        runs="$(grep -o 'stat::number_of_executed_units: [0-9]*' "$logs/$target.log" | grep -o '[0-9]*$' || echo '?')"
        echo "fuzz-smoke: $target: ok, $runs runs in $SECONDS_PER_TARGET s" >&2
    else
        failed+=("$target")
        echo "fuzz-smoke: $target: FAILED; the end of its log:" >&2
        tail -n 60 "$logs/$target.log" >&2
    fi
done

if ((${#failed[@]} > 0)); then
    echo "fuzz-smoke: failing targets: ${failed[*]}" >&2
    echo "fuzz-smoke: the inputs are in fuzz/artifacts/TARGET/; see docs/fuzzing.md (reproduce, minimise," >&2
    echo "            commit under fuzz/regressions/TARGET/, add a unit test, fix)" >&2
    exit 1
fi
