#!/usr/bin/env bash
# Overhead of `homeostat run` (seccomp launcher + pH engine, profiles training) on
# syscall-heavy and realistic workloads, as a ratio to the untraced run and to
# `strace -f -o /dev/null`, measured side by side: each round runs every variant once,
# in turn, and the medians of the rounds are compared.
# Usage: scripts/bench-run.sh [ROUNDS]   (default 5; needs strace and a release build)
# With BASELINE=/path/to/an/older/homeostat, that binary runs in every round too and the
# last column is this build's time over the baseline's (a before/after comparison).
set -euo pipefail
cd "$(dirname "$0")/.."
rounds="${1:-5}"
cargo build --release --quiet -p homeostat --bin homeostat
hs="$PWD/target/release/homeostat"
baseline="${BASELINE:-}"
state="$(mktemp -d)"
trap 'rm -rf "$state" "$state.old"' EXIT

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

printf '%-9s %10s %10s %10s %9s %9s' workload untraced homeostat strace "hs/base" "hs/strace"
[ -n "$baseline" ] && printf ' %10s %9s' baseline "hs/basel"
printf '\n'
for w in "${order[@]}"; do
  cmd="${work[$w]}"
  base=(); mon=(); st=(); old=()
  for r in $(seq "$rounds"); do
    base+=("$(time_it sh -c "$cmd")")
    # This build and the baseline take turns going first: on this VM the first of two
    # back-to-back runs was measurably faster (about 10%), whichever binary it was.
    if [ -n "$baseline" ] && [ $((r % 2)) = 0 ]; then
      old+=("$(time_it "$baseline" run -q --state-dir "$state.old" -- sh -c "$cmd")")
    fi
    mon+=("$(time_it "$hs" run -q --state-dir "$state" -- sh -c "$cmd")")
    if [ -n "$baseline" ] && [ $((r % 2)) = 1 ]; then
      old+=("$(time_it "$baseline" run -q --state-dir "$state.old" -- sh -c "$cmd")")
    fi
    st+=("$(time_it strace -f -o /dev/null sh -c "$cmd")")
  done
  b=$(printf '%s\n' "${base[@]}" | median)
  m=$(printf '%s\n' "${mon[@]}" | median)
  s=$(printf '%s\n' "${st[@]}" | median)
  o=0
  [ -n "$baseline" ] && o=$(printf '%s\n' "${old[@]}" | median)
  awk -v w="$w" -v b="$b" -v m="$m" -v s="$s" -v o="$o" 'BEGIN {
    printf "%-9s %8.0fms %8.0fms %8.0fms %8.2fx %8.2fx", w, b/1e6, m/1e6, s/1e6, m/b, m/s
    if (o > 0) printf " %8.0fms %8.2fx", o/1e6, m/o
    printf "\n" }'
done
