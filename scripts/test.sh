#!/usr/bin/env bash
# Sets up what the tests need and runs all of them: formatting, lints, unit, property,
# integration and end-to-end tests (the ADFA-LD tests run when ../shared/datasets/ADFA-LD
# or $HOMEOSTAT_ADFA_DIR exists, and say they skip otherwise).
set -euo pipefail
cd "$(dirname "$0")/.."

# shellcheck source=scripts/lib/ensure-rust.sh
. scripts/lib/ensure-rust.sh
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
