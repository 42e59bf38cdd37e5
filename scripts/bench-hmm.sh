#!/usr/bin/env bash
# Baum-Welch speed, homeostat's HMM against Python's hmmlearn, side by side in one run:
# same ADFA-LD training traces, same state count, same number of iterations, both with
# scaling. Prints seconds per iteration for each and the ratio.
#
#   scripts/bench-hmm.sh [--states 150] [--iterations 3] [--threads N]
#
# Needs ADFA-LD ($HOMEOSTAT_ADFA_DIR, or ../shared/datasets/ADFA-LD beside the checkout)
# and hmmlearn (installed with pip when missing). The two runs go one after the other,
# never at once, so they do not compete for the cores; the per-iteration figure is the
# median over iterations, which resists a busy machine.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
states=150
iterations=3
threads=0
while [ $# -gt 0 ]; do
    case "$1" in
        --states) states=$2; shift 2 ;;
        --iterations) iterations=$2; shift 2 ;;
        --threads) threads=$2; shift 2 ;;
        *) echo "usage: $0 [--states N] [--iterations N] [--threads N]" >&2; exit 2 ;;
    esac
done
dir=${HOMEOSTAT_ADFA_DIR:-$root/../shared/datasets/ADFA-LD}
if [ ! -d "$dir/Training_Data_Master" ]; then
    echo "bench-hmm: ADFA-LD not found at $dir (set HOMEOSTAT_ADFA_DIR)" >&2
    exit 1
fi
if ! python3 -c 'import hmmlearn' 2>/dev/null; then
    echo "bench-hmm: installing hmmlearn with pip" >&2
    python3 -m pip install --quiet hmmlearn
fi

echo "== homeostat (Rust), $states states, $iterations iterations"
cargo build --release --quiet -p homeostat-core --example hmm_train --manifest-path "$root/Cargo.toml"
rust_out=$("$root/target/release/examples/hmm_train" --dir "$dir" --states "$states" \
    --iterations "$iterations" --tolerance 0 --threads "$threads")
echo "$rust_out"
echo "== hmmlearn (Python), $states states, $iterations iterations"
py_out=$(python3 "$root/scripts/bench-hmm.py" --dir "$dir" --states "$states" \
    --iterations "$iterations")
echo "$py_out"

field() { sed -n "s/^RESULT .*$1=\([0-9.]*\).*/\1/p"; }
rust=$(field seconds_per_iteration_median <<<"$rust_out")
py=$(field seconds_per_iteration_median <<<"$py_out")
rust_cpu=$(field " cpu_median" <<<"$rust_out")
py_cpu=$(field " cpu_median" <<<"$py_out")
threads_used=$(sed -n 's/.* \([0-9]*\) threads$/\1/p' <<<"$rust_out" | head -1)
echo
printf 'seconds per Baum-Welch iteration (median), %s states, ADFA-LD training set:\n' "$states"
printf '             %10s %10s\n' wall cpu
printf '  homeostat  %8.3f s %8.3f s  (%s threads)\n' "$rust" "$rust_cpu" "$threads_used"
printf '  hmmlearn   %8.3f s %8.3f s\n' "$py" "$py_cpu"
awk -v r="$rust" -v p="$py" -v rc="$rust_cpu" -v pc="$py_cpu" \
    'BEGIN { printf "  ratio      %8.1fx   %8.1fx  (hmmlearn / homeostat)\n", p / r, pc / rc }'
