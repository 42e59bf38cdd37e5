#!/usr/bin/env bash
# Overhead of `homeostat run` (seccomp launcher + pH engine, profiles training) on
# syscall-heavy and realistic workloads, as a ratio to the untraced run and to
# `strace -f -o /dev/null`, measured side by side: each round runs every variant once,
# in turn, and the medians of the rounds are compared.
# Usage: scripts/bench-run.sh [ROUNDS]   (default 5; needs strace and a release build)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds="${1:-5}"
cargo build --release --quiet
hs="$PWD/target/release/homeostat"
state="$(mktemp -d)"
trap 'rm -rf "$state"' EXIT

declare -A work=(
  [dd]='dd if=/dev/zero of=/dev/null bs=1 count=200000 status=none'
  [find]='find /usr -xdev >/dev/null'
  [tar]='tar c /usr/include 2>/dev/null | wc -c >/dev/null'
  [forkexec]='for i in $(seq 300); do /bin/true; done'
)
order=(dd find tar forkexec)

now() { date +%s%N; }
time_it() { local t0; t0=$(now); "$@" >/dev/null 2>&1 || true; echo $(( $(now) - t0 )); }
median() { sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }

printf '%-9s %10s %10s %10s %9s %9s\n' workload untraced homeostat strace "hs/base" "hs/strace"
for w in "${order[@]}"; do
  cmd="${work[$w]}"
  base=(); mon=(); st=()
  for _ in $(seq "$rounds"); do
    base+=("$(time_it sh -c "$cmd")")
    mon+=("$(time_it "$hs" run -q --state-dir "$state" -- sh -c "$cmd")")
    st+=("$(time_it strace -f -o /dev/null sh -c "$cmd")")
  done
  b=$(printf '%s\n' "${base[@]}" | median)
  m=$(printf '%s\n' "${mon[@]}" | median)
  s=$(printf '%s\n' "${st[@]}" | median)
  awk -v w="$w" -v b="$b" -v m="$m" -v s="$s" 'BEGIN {
    printf "%-9s %8.0fms %8.0fms %8.0fms %8.2fx %8.2fx\n", w, b/1e6, m/1e6, s/1e6, m/b, m/s }'
done
