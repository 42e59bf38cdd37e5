#!/usr/bin/env bash
# Installs what the tests need (scripts/lib/ensure-deps.sh, the same step as the demo's)
# and runs all of them: formatting, lints, unit, property, integration and end-to-end
# tests (the ADFA-LD tests run when ../shared/datasets/ADFA-LD
# or $HOMEOSTAT_ADFA_DIR exists, and say they skip otherwise).
set -euo pipefail
cd "$(dirname "$0")/.."

# shellcheck source=scripts/lib/ensure-deps.sh
. scripts/lib/ensure-deps.sh
if command -v rustup >/dev/null 2>&1; then
    rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt
    rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy
fi

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings
echo "== cargo test"
cargo test --workspace
echo "== cargo test -p homeostat-ebpf --features floor (the swappable hook of benchmarks)"
cargo test -p homeostat-ebpf --features floor
echo "== fuzz (30 s per target)"
scripts/fuzz.sh 30
