#!/usr/bin/env bash
# The sys_enter program's run time per call, for several builds side by side: each
# round runs every build's `percall` example once (example
# crates/homeostat-ebpf/examples/percall.rs: its own load, auto_create, the workloads
# of bench-daemon.sh measured training then normal, kernel.bpf_stats_enabled on only
# around each measured run), the order of the builds rotating from round to round.
# Reports per (workload, state) the median ns per call of each build and, for each
# build after the first, the median of its per-round difference to the first build
# (a pair run back to back sees the same machine load).
#
# Usage: scripts/bench-percall.sh ROUNDS NAME=PERCALL_BIN... [-- WORKLOADS...]
#   e.g. scripts/bench-percall.sh 6 main=/tmp/percall-main new=target/release/examples/percall
#   Build a binary with `cargo build --release -p homeostat-ebpf --example percall`
#   (add `--features floor` for the hook's own price) and copy it aside.
# Root. Counters cover every call on the machine during each run: state the load.
set -Eeuo pipefail
export LC_ALL=C

if [ "$#" -lt 2 ]; then
    sed -n '2,/^set -E/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2
    exit 2
fi
rounds="$1"
shift
names=() bins=() wl=()
while [ "$#" -gt 0 ]; do
    if [ "$1" = -- ]; then
        shift
        wl=("$@")
        break
    fi
    names+=("${1%%=*}")
    bins+=("${1#*=}")
    shift
done
out="$(mktemp /tmp/bench-percall.XXXXXX)"
trap 'rm -f "$out"' EXIT
n=${#names[@]}
echo "# sys_enter run time per call: ${names[*]}"
echo "- $(date -u '+%Y-%m-%d %H:%M UTC'); $(nproc) CPUs; kernel $(uname -r); load average $(cut -d' ' -f1-3 /proc/loadavg) at start"
for ((r = 0; r < rounds; r++)); do
    for ((k = 0; k < n; k++)); do
        i=$(((k + r) % n))
        echo "== round $((r + 1))/$rounds: ${names[$i]}" >&2
        "${bins[$i]}" "${wl[@]}" 2>/dev/null | sed "s/^/$r ${names[$i]} /" >>"$out"
    done
done
echo "- load average $(cut -d' ' -f1-3 /proc/loadavg) at end; $rounds rounds"
echo
head="| workload | state |"
sep="|---|---|"
for ((k = 0; k < n; k++)); do
    head+=" ${names[$k]} (ns) |"
    sep+="---|"
    [ "$k" -eq 0 ] || { head+=" ${names[$k]} - ${names[0]} |"; sep+="---|"; }
done
echo "$head"
echo "$sep"
# lines: round name workload state ns runs
awk -v names="${names[*]}" '
    function median(a, n,   i, j, t) {
        for (i = 2; i <= n; i++) { t = a[i]; for (j = i - 1; j >= 1 && a[j] > t; j--) a[j + 1] = a[j]; a[j + 1] = t }
        return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
    }
    { v[$1, $2, $3, $4] = $5; if (!(($3, $4) in seen)) { seen[$3, $4] = 1; order[++no] = $3 " " $4 }; if ($1 + 1 > nr) nr = $1 + 1 }
    END {
        nn = split(names, nm, " ")
        for (o = 1; o <= no; o++) {
            split(order[o], ws, " "); line = "| " ws[1] " | " ws[2] " |"
            for (k = 1; k <= nn; k++) {
                c = 0; delete a
                for (r = 0; r < nr; r++) if ((r, nm[k], ws[1], ws[2]) in v) a[++c] = v[r, nm[k], ws[1], ws[2]]
                line = line sprintf(" %.1f |", c ? median(a, c) : -1)
                if (k > 1) {
                    c = 0; delete a
                    for (r = 0; r < nr; r++)
                        if (((r, nm[k], ws[1], ws[2]) in v) && ((r, nm[1], ws[1], ws[2]) in v))
                            a[++c] = v[r, nm[k], ws[1], ws[2]] - v[r, nm[1], ws[1], ws[2]]
                    line = line sprintf(" %+.1f |", c ? median(a, c) : 0)
                }
            }
            print line
        }
    }' "$out"
