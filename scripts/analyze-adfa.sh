#!/usr/bin/env bash
# The numbers of docs/analyze.md: MFS lengths per ADFA-LD attack type and mimicry
# padding for the standard goals, from profiles trained on ADFA-LD's training set.
# Usage: scripts/analyze-adfa.sh [ADFA-LD dir] [work dir]
set -euo pipefail
ADFA=${1:-${HOMEOSTAT_ADFA_DIR:-/work/shared/datasets/ADFA-LD}}
WORK=${2:-$(mktemp -d)}
H=${HOMEOSTAT:-target/release/homeostat}
[ -d "$ADFA/Training_Data_Master" ] || { echo "no ADFA-LD at $ADFA" >&2; exit 1; }
mkdir -p "$WORK"
for spec in "stide 6" "stide 10" "stide 14" "tstide 6" "pairs 9" "markov 3"; do
    set -- $spec
    "$H" train --arch i386 -m "$1" -w "$2" -o "$WORK/$1$2.prof" "$ADFA/Training_Data_Master" >/dev/null
done

echo "## MFS lengths per attack type (stide k = 14 profile: exact up to 14)"
"$H" analyze mfs --json -p "$WORK/stide14.prof" "$ADFA/Attack_Data_Master" "$ADFA/Validation_Data_Master" \
    > "$WORK/mfs14.jsonl"
python3 - "$WORK/mfs14.jsonl" <<'PY'
import json, sys, re, collections
rows = collections.defaultdict(list)
for line in open(sys.argv[1]):
    t = json.loads(line)
    parent = t["file"].rstrip("/").split("/")[-2]
    kind = "normal (validation)" if parent == "Validation_Data_Master" else re.sub(r"_\d+$", "", parent)
    rows[kind].append(t)
ks = [2, 3, 4, 5, 6, 8, 10, 12, 14]
print("| traces | n | MFS | median len | " + " | ".join(f"len {l}" for l in ["1", "2", "3-4", "5-6", "7-8", "9-10", "11-14"]) + " |")
print("|---|---|---|---|" + "---|" * 7)
buckets = [(1, 1), (2, 2), (3, 4), (5, 6), (7, 8), (9, 10), (11, 14)]
for kind in sorted(rows):
    lens = sorted(m["len"] for t in rows[kind] for m in t["mfs"])
    n = len(lens)
    med = lens[n // 2] if n else "-"
    pct = [f"{100 * sum(a <= l <= b for l in lens) / n:.1f}%" if n else "-" for a, b in buckets]
    print(f"| {kind} | {len(rows[kind])} | {n} | {med} | " + " | ".join(pct) + " |")
print()
print("Traces stide would flag at all (an MFS of length <= k), by window k:")
print()
print("| traces | " + " | ".join(f"k={k}" for k in ks) + " | none <= 14 |")
print("|---|" + "---|" * (len(ks) + 1))
for kind in sorted(rows):
    ts = rows[kind]
    mins = [min((m["len"] for m in t["mfs"]), default=99) for t in ts]
    cells = [f"{100 * sum(m <= k for m in mins) / len(ts):.1f}%" for k in ks]
    print(f"| {kind} | " + " | ".join(cells) + f" | {sum(m == 99 for m in mins)} |")
PY

echo
echo "## Tightness and mimicry padding for the standard goals"
for p in stide6 stide10 stide14 tstide6 pairs9 markov3; do
    for start in "" --mid-trace; do
        echo "### $p $start"
        /usr/bin/time -f "(%e s, %M KiB)" "$H" analyze tightness $start -p "$WORK/$p.prof" 2>&1
    done
done
