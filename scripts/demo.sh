#!/usr/bin/env bash
# The quick start's main job: build homeostat, run `homeostat demo` (pH protecting a
# real program: learn, normal, exploit -> anomalies, delays, refused execve), then
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
