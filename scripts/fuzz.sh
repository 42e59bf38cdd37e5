#!/usr/bin/env bash
# Runs every cargo-fuzz target in fuzz/ for SECONDS each (default 30), so a new crash
# fails the build. Installs cargo-fuzz when missing. libFuzzer's sanitizer flags are
# nightly-only; with a stable toolchain RUSTC_BOOTSTRAP=1 lets stable rustc accept them
# (the only toolchain CI has). A crash leaves its input in fuzz/artifacts/<target>/
# (replay: see fuzz/README.md) and makes this script exit non-zero.
#
# Usage: scripts/fuzz.sh [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
seconds="${1:-30}"
case "$seconds" in
    '' | *[!0-9]*) echo "usage: $0 [SECONDS]" >&2; exit 2 ;;
esac

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "== installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi
export RUSTC_BOOTSTRAP=1

# Seeds that reach past the decoders' first checks quickly (the corpus folder is
# git-ignored; libFuzzer adds what it finds).
seed() {
    mkdir -p "corpus/$1"
    printf '%s' "$3" >"corpus/$1/$2"
}
seed fuzz_unm seed '551 4
551 2
552 66
551 5
'
seed fuzz_adfa seed '6 6 63 6 42 120 6 195 120 6 6 114 114 1 1 252'
seed fuzz_strace seed '1234  execve("/bin/ls", ["ls"], 0x7ffd /* 20 vars */) = 0
1234  brk(NULL)                         = 0x5581
1234  +++ exited with 0 +++
'
seed fuzz_daemon_profile seed '{"version":1,"dev":65024,"ino":42,"path":"/usr/bin/x","state":"normal","train_count":1000,"last_mod_count":900,"normal_time_ns":5,"anomalies":1,"pairs":[[0,1,1],[1,0,3],[59,1,128]]}'

echo "== cargo fuzz build"
cargo fuzz build
mapfile -t targets < <(cargo fuzz list)
for t in "${targets[@]}"; do
    echo "== fuzz $t (${seconds} s)"
    # -max_len keeps inputs near real file sizes; -rss_limit_mb turns unbounded
    # growth into a failure too. Output goes to a log, shown only on failure.
    log="$(mktemp)"
    if ! cargo fuzz run "$t" -- -max_total_time="$seconds" -max_len=65536 \
        -rss_limit_mb=2048 -print_final_stats=1 >"$log" 2>&1; then
        tail -n 60 "$log"
        rm -f "$log"
        echo "fuzz: $t failed; the crashing input is in fuzz/artifacts/$t/" >&2
        exit 1
    fi
    grep -E '^stat::number_of_executed_units|^stat::peak_rss_mb' "$log" | tr '\n' ' '
    echo
    rm -f "$log"
done
