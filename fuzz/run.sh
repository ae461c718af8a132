#!/usr/bin/env bash
# Builds the libFuzzer targets (stable rustc: `cargo fuzz build -s none`, i.e. SanitizerCoverage
# without a sanitizer, so no nightly is needed) and runs each for a bounded time.
#
#   fuzz/run.sh [seconds-per-target] [target...]     (default 60 s, all targets)
#   FUZZ_RUNS=10000000 fuzz/run.sh 0 frontend_decoder   (a fixed number of executions)
#
# New inputs go to fuzz/corpus-run/<target>/ (not committed); the committed seeds in
# fuzz/corpus/<target>/ are read only. Crashes are written to fuzz/artifacts/<target>/ and
# make the script exit 1. Prints executions, coverage and crashes per target.
set -euo pipefail
cd "$(dirname "$0")"

secs="${1:-60}"
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=(frontend_decoder startup_scram response_tracker)
fi

if ! command -v cargo-fuzz >/dev/null 2>&1; then
    echo "run.sh: installing cargo-fuzz from crates.io" >&2
    cargo install cargo-fuzz --locked
fi
for t in "${targets[@]}"; do cargo fuzz build -s none -O "$t" >&2; done
bin_dir="target/x86_64-unknown-linux-gnu/release"

status=0
for t in "${targets[@]}"; do
    mkdir -p "corpus-run/$t" "artifacts/$t"
    args=(-print_final_stats=1 -artifact_prefix="artifacts/$t/" -rss_limit_mb=2048 -timeout=10)
    if [ -n "${FUZZ_RUNS:-}" ]; then
        args+=(-runs="$FUZZ_RUNS")
    else
        args+=(-max_total_time="$secs")
    fi
    log="artifacts/$t/last-run.log"
    set +e
    "$bin_dir/$t" "${args[@]}" "corpus-run/$t" "corpus/$t" >"$log" 2>&1
    rc=$?
    set -e
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 || true)
    crashes=$(find "artifacts/$t" -name 'crash-*' -o -name 'oom-*' -o -name 'timeout-*' | wc -l)
    echo "$t: ${execs:-?} executions, ${cov:-cov: ?}, exit $rc, crash/oom/timeout artifacts: $crashes"
    if [ "$rc" -ne 0 ] || [ "$crashes" -ne 0 ]; then
        status=1
        grep -m5 -E 'panicked|ERROR|SUMMARY' "$log" || true
    fi
done
exit $status
