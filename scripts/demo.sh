#!/usr/bin/env bash
# The quick start's main job: build homeostat, run `homeostat demo` (pH protecting a
# real program: learn, normal, exploit -> anomalies, delays, refused execve) and, as
# root, `homeostat demo --daemon` (the same with the system-wide eBPF daemon), then
# evaluate the four detectors on the labelled sample of real traces compiled into it,
# and on ADFA-LD when it is present (../shared/datasets/ADFA-LD, or $HOMEOSTAT_ADFA_DIR).
set -euo pipefail
cd "$(dirname "$0")/.."

# shellcheck source=scripts/lib/ensure-rust.sh
. scripts/lib/ensure-rust.sh
echo "== building (release)"
cargo build --release --quiet
bin=target/release/homeostat

echo
echo "== homeostat demo"
"$bin" demo

echo
if [ "$(id -u)" = 0 ] && [ -e /sys/kernel/btf/vmlinux ]; then
    echo "== homeostat demo --daemon (the same attack, stopped by the system-wide eBPF daemon)"
    "$bin" demo --daemon
else
    echo "(homeostat demo --daemon skipped: the eBPF daemon needs root and a kernel with BTF)"
fi

echo
echo "== evaluating stide, t-stide, lookahead pairs and Markov on the embedded sample"
"$bin" eval --plot sample-roc.svg

adfa="${HOMEOSTAT_ADFA_DIR:-../shared/datasets/ADFA-LD}"
if [ -d "$adfa/Training_Data_Master" ]; then
    echo
    echo "== evaluating on ADFA-LD ($adfa)"
    "$bin" eval adfa-ld "$adfa" --plot adfa-roc.svg
else
    echo
    echo "(ADFA-LD not found at $adfa: set HOMEOSTAT_ADFA_DIR to evaluate on it too)"
fi
