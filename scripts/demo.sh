#!/usr/bin/env bash
# The quick start's main job: build homeostat, run `homeostat demo` (pH protecting a
# real program: learn, normal, exploit -> anomalies, delays, refused execve) and, as
# root, `homeostat demo --daemon` (the same with the system-wide eBPF daemon), then
# evaluate the four detectors on the labelled sample of real traces compiled into it,
# and on ADFA-LD when it is present (../shared/datasets/ADFA-LD, or $HOMEOSTAT_ADFA_DIR).
#
# It installs what it needs first (scripts/lib/ensure-deps.sh: Debian packages as root,
# the Rust toolchain). `--quick` builds the dev profile instead of release, so that CI
# (.ci/run), which runs the demo before the tests, shares the tests' build.
set -euo pipefail
cd "$(dirname "$0")/.."

profile=release
case "${1:-}" in
    --quick) profile=dev ;;
    "") ;;
    *) echo "usage: scripts/demo.sh [--quick]" >&2; exit 2 ;;
esac

# shellcheck source=scripts/lib/ensure-deps.sh
. scripts/lib/ensure-deps.sh
echo "== building ($profile)"
cargo build --profile "$profile" --quiet -p homeostat
# Where cargo put it: $CARGO_TARGET_DIR when set, as cargo itself reads it.
tdir="${CARGO_TARGET_DIR:-target}"
if [ "$profile" = dev ]; then bin="$tdir/debug/homeostat"; else bin="$tdir/release/homeostat"; fi

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
