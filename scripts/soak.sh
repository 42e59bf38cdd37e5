#!/usr/bin/env bash
# A live soak of `homeostat daemon`: the daemon watches the whole machine while this
# script keeps it busy with varied real work, and the figures an operator needs come
# out at the end: anomalies, responses and stopped processes per hour once profiles
# are normal, processes and calls under normal profiles, evictions and kernel losses.
# Nothing may hang or stay stopped: every task runs under `timeout`, and stopped
# processes (state T) are sampled every few seconds.
#
# Work (one task at a time, chosen in turn, each under `timeout 120`):
#   build     a small C program built with gcc and make (3 files, a Makefile),
#             then run; every round makes new binaries (new inodes: eviction);
#   tests     a python3 unittest module of 5 tests;
#   pkg       package queries: apt-cache policy/show/depends, dpkg -l;
#   git       init, 3 commits, log, diff, status, a branch and a merge;
#   scripts   a bash script of loops, functions, here-documents, sed/awk/grep;
#   pipeline  find | sort | uniq -c | sort -n | head, wc, cut, tr;
#   compress  tar czf, xz, gzip -d, tar tf of a tree of text files;
#   python    python3: json, sqlite3, hashlib, subprocess;
#   curl      GETs against a local python3 http.server (127.0.0.1).
#
# Phases: the first third of the run (WARMUP, default a third of MINUTES) is
# training; normal_wait is shortened (NORMAL_WAIT, default 30 s) so that profiles of
# programs the work repeats become normal within it. Figures "after warm-up" count
# events after it, per hour of the time left.
#
# Mode: MODE=detect (default) or enforce. A machine-wide daemon in enforce mode stops,
# delays and refuses execve of *any* process whose profile is normal and sees an
# anomaly, other users' included: run enforce only on a machine of your own. In detect
# mode "responses" are 0 by construction; anomalies are what enforce would have
# responded to (each anomaly of a normal profile would have stopped its process).
#
# Scope: SCOPE=1 (the default with MODE=enforce) runs the work in a cgroup of its own
# (cgroup v2: /sys/fs/cgroup, or /sys/fs/cgroup/unified on a hybrid machine) and
# starts the daemon with `--cgroup` on it, so that it watches, learns from, tests and
# responds to the soak's own processes only: enforce mode without touching anybody
# else's work on a shared machine. SCOPE=0 watches the whole machine.
#
# Usage: scripts/soak.sh   (root; Linux with BPF and BTF)
# Environment:
#   MINUTES      length of the soak (default 30)
#   WARMUP       minutes of warm-up (default MINUTES / 3)
#   MODE         detect | enforce (default detect)
#   NORMAL_WAIT  seconds (default 30)
#   HOMEOSTAT    the binary (default target/release/homeostat, else target/debug)
#   SCOPE        1: only the soak's cgroup; 0: the whole machine (default: 1 for
#                enforce, 0 for detect)
#   OUT          where to keep the events, log and summary (default a temp dir)
#   DAEMON_ARGS  more daemon flags, e.g. "--throttle-connect --rate-limit" (the
#                summary then counts their queued, held and released calls)
# Output: a markdown summary on stdout (also OUT/summary.md); progress on stderr.
set -euo pipefail

MINUTES=${MINUTES:-30}
WARMUP=${WARMUP:-$(awk -v m="$MINUTES" 'BEGIN { printf "%.2f", m / 3 }')}
MODE=${MODE:-detect}
NORMAL_WAIT=${NORMAL_WAIT:-30}
root=$(cd "$(dirname "$0")/.." && pwd)
if [[ -z ${HOMEOSTAT:-} ]]; then
    if [[ -x $root/target/release/homeostat ]]; then
        HOMEOSTAT=$root/target/release/homeostat
    else
        HOMEOSTAT=$root/target/debug/homeostat
    fi
fi
[[ $(id -u) == 0 ]] || { echo "soak: needs root (the daemon loads BPF programs)" >&2; exit 1; }
[[ -x $HOMEOSTAT ]] || { echo "soak: no binary at $HOMEOSTAT (cargo build --release -p homeostat)" >&2; exit 1; }
case $MODE in detect | enforce) ;; *) echo "soak: MODE is detect or enforce" >&2; exit 1 ;; esac
if [[ -z ${SCOPE:-} ]]; then
    if [[ $MODE == enforce ]]; then SCOPE=1; else SCOPE=0; fi
fi
for tool in gcc make git curl xz gzip tar python3 apt-cache dpkg awk sed timeout; do
    command -v "$tool" >/dev/null || { echo "soak: $tool is missing" >&2; exit 1; }
done

OUT=${OUT:-$(mktemp -d /tmp/homeostat-soak.XXXXXX)}
mkdir -p "$OUT"
state=$OUT/state
work=$OUT/work
mkdir -p "$work"
events=$OUT/events.jsonl
log=$OUT/daemon.log
say() { echo "soak: $*" >&2; }

cat >"$OUT/ph.toml" <<EOF
[ph]
mode = "$MODE"
EOF

# The local web server curl talks to.
mkdir -p "$work/www"
head -c 200000 /dev/urandom | base64 >"$work/www/data.txt"
echo '<html><body>soak</body></html>' >"$work/www/index.html"
cgroup="" cgroot="" scope_args=()
if [[ $SCOPE == 1 ]]; then
    for c in /sys/fs/cgroup/unified /sys/fs/cgroup; do
        if [[ -e $c/cgroup.procs && -e $c/cgroup.controllers ]]; then cgroot=$c; break; fi
    done
    [[ -n $cgroot ]] || { echo "soak: SCOPE=1 needs a cgroup v2 hierarchy" >&2; exit 1; }
    cgroup=$cgroot/homeostat-soak-$$
    mkdir "$cgroup"
    scope_args=(--cgroup "$cgroup")
fi
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
python3 -m http.server "$port" --bind 127.0.0.1 --directory "$work/www" >"$OUT/http.log" 2>&1 &
http_pid=$!

"$HOMEOSTAT" daemon --state-dir "$state" --config "$OUT/ph.toml" --normal-wait "$NORMAL_WAIT" \
    --events "$events" --quiet "${scope_args[@]}" ${DAEMON_ARGS:-} >"$log" 2>&1 &
daemon_pid=$!
cleanup() {
    kill -TERM "$daemon_pid" 2>/dev/null || true
    kill "$http_pid" 2>/dev/null || true
    wait "$daemon_pid" 2>/dev/null || true
    if [[ -n $cgroup ]]; then
        echo $$ >"$cgroot/cgroup.procs" 2>/dev/null || true
        rmdir "$cgroup" 2>/dev/null || true
    fi
}
trap cleanup EXIT
for _ in $(seq 1 200); do
    grep -q "daemon: watching" "$log" 2>/dev/null && break
    kill -0 "$daemon_pid" 2>/dev/null || { cat "$log" >&2; exit 1; }
    sleep 0.1
done
grep -q "daemon: watching" "$log" || { say "daemon not ready"; cat "$log" >&2; exit 1; }
say "daemon $daemon_pid watching (mode $MODE, normal_wait $NORMAL_WAIT s${cgroup:+, only cgroup $cgroup}); $MINUTES min, warm-up $WARMUP min; output in $OUT"
# The work runs in the scope: this shell moves into it, so every task it starts is
# inside (the daemon and the web server started before stay outside).
[[ -n $cgroup ]] && echo $$ >"$cgroup/cgroup.procs"

# The soak's own queries to the daemon (ps, status, profile list) run outside the
# scope: under it they are monitored programs like any other, and a response delays
# each of their calls by up to max_delay_ms (a first run here took minutes to list
# profiles once `homeostat` itself had been made normal and then behaved differently).
admin() {
    (
        [[ -n $cgroup ]] && echo $BASHPID >"$cgroot/cgroup.procs"
        exec "$HOMEOSTAT" "$@" --state-dir "$state"
    )
}

# ---- the work ----
round=0
task_build() {
    local d=$work/build.$round
    mkdir -p "$d"
    cat >"$d/a.c" <<'EOF'
#include <stdio.h>
#include "b.h"
int main(void) { printf("%d\n", twice(21)); return 0; }
EOF
    cat >"$d/b.c" <<'EOF'
#include "b.h"
int twice(int x) { return 2 * x; }
EOF
    echo 'int twice(int x);' >"$d/b.h"
    printf 'prog: a.o b.o\n\tgcc -o prog a.o b.o\n%%.o: %%.c b.h\n\tgcc -O1 -c $<\n' >"$d/Makefile"
    make -s -C "$d" >/dev/null && "$d/prog" >/dev/null
    gcc -O2 -o "$d/one" "$d/a.c" "$d/b.c" && "$d/one" >/dev/null
    rm -rf "$d"
}
task_tests() {
    cat >"$work/test_soak.py" <<'EOF'
import unittest, json, re
class T(unittest.TestCase):
    def test_json(self): self.assertEqual(json.loads(json.dumps({"a": [1, 2]})), {"a": [1, 2]})
    def test_re(self): self.assertTrue(re.match(r"\d+", "123"))
    def test_sort(self): self.assertEqual(sorted([3, 1, 2]), [1, 2, 3])
    def test_str(self): self.assertEqual("a-b".split("-"), ["a", "b"])
    def test_file(self):
        with open(__file__) as f: self.assertIn("unittest", f.read())
EOF
    (cd "$work" && python3 -m unittest -q test_soak 2>/dev/null)
}
task_pkg() {
    apt-cache policy bash >/dev/null
    apt-cache show coreutils >/dev/null
    apt-cache depends make >/dev/null
    dpkg -l | wc -l >/dev/null
}
task_git() {
    local d=$work/git.$round
    mkdir -p "$d"
    (
        cd "$d"
        git init -q .
        git config user.email soak@localhost
        git config user.name soak
        for i in 1 2 3; do
            echo "line $i $RANDOM" >>f.txt
            git add f.txt
            git commit -q -m "commit $i"
        done
        git log --oneline >/dev/null
        git checkout -q -b side
        echo side >g.txt && git add g.txt && git commit -q -m side
        git checkout -q -
        git merge -q --no-edit side >/dev/null
        echo x >>f.txt
        git diff >/dev/null
        git status --short >/dev/null
    )
    rm -rf "$d"
}
task_scripts() {
    cat >"$work/s.sh" <<'EOF'
#!/bin/bash
f() { local n=$1; echo $((n * n)); }
sum=0
for i in $(seq 1 200); do sum=$((sum + $(f $i))); done
cat <<DOC | sed 's/a/b/g' | awk '{ n += length($0) } END { print n }'
alpha beta gamma
delta $sum
DOC
grep -c bash /etc/shells || true
EOF
    bash "$work/s.sh" >/dev/null
}
task_pipeline() {
    find /usr/share/doc -maxdepth 2 -type f 2>/dev/null | sed 's|.*/||' | sort | uniq -c | sort -n | tail -5 >/dev/null
    cut -d: -f1,7 /etc/passwd | tr ':' ' ' | wc -l >/dev/null
}
task_compress() {
    local d=$work/z.$round
    mkdir -p "$d/tree"
    for i in $(seq 1 20); do head -c 20000 "$work/www/data.txt" >"$d/tree/f$i"; done
    tar czf "$d/t.tgz" -C "$d" tree
    tar tf "$d/t.tgz" >/dev/null
    xz -k -1 "$d/tree/f1"
    gzip -c "$d/tree/f2" | gzip -d >/dev/null
    rm -rf "$d"
}
task_python() {
    python3 - <<'EOF'
import hashlib, json, sqlite3, subprocess
db = sqlite3.connect(":memory:")
db.execute("create table t (k text, v int)")
db.executemany("insert into t values (?, ?)", [(str(i), i) for i in range(500)])
assert db.execute("select sum(v) from t").fetchone()[0] == sum(range(500))
h = hashlib.sha256(json.dumps({"x": list(range(100))}).encode()).hexdigest()
subprocess.run(["true"], check=True)
EOF
}
task_curl() {
    curl -sf "http://127.0.0.1:$port/" >/dev/null
    curl -sf "http://127.0.0.1:$port/data.txt" | wc -c >/dev/null
    curl -sf -o /dev/null "http://127.0.0.1:$port/data.txt"
}
tasks=(build tests pkg git scripts pipeline compress python curl)

# Stopped processes (state T), sampled: the count now, and any seen stopped in two
# samples in a row (10 s apart) is "stayed stopped".
stopped_now() {
    local n=0 f s
    for f in /proc/[0-9]*/stat; do
        s=$(awk '{ print $3 }' "$f" 2>/dev/null) || continue
        [[ $s == T ]] && n=$((n + 1))
    done
    echo $n
}
stopped_pids() {
    local f
    for f in /proc/[0-9]*/stat; do
        awk '$3 == "T" { print $1 }' "$f" 2>/dev/null || true
    done | sort
}

start=$(date +%s)
end=$((start + ${MINUTES%.*} * 60 + $(awk -v m="$MINUTES" 'BEGIN { printf "%d", (m - int(m)) * 60 }')))
warm_end=$(awk -v s="$start" -v w="$WARMUP" 'BEGIN { printf "%d", s + w * 60 }')
ran=0 failed=0 hung=0 max_stopped=0 stayed=0
declare -A fails
last_sample=0 prev_stopped="" ps_samples=0 ps_tasks=0 ps_normal=0
while (($(date +%s) < end)); do
    for t in "${tasks[@]}"; do
        rc=0
        timeout 120 bash -c "$(declare -f "task_$t"); work=$work round=$round port=$port task_$t" || rc=$?
        ran=$((ran + 1))
        if ((rc == 124)); then
            hung=$((hung + 1))
            say "task $t hung (timeout)"
        elif ((rc != 0)); then
            failed=$((failed + 1))
            fails[$t]=$((${fails[$t]:-0} + 1))
        fi
        now=$(date +%s)
        if ((now - last_sample >= 10)); then
            last_sample=$now
            n=$(stopped_now)
            ((n > max_stopped)) && max_stopped=$n
            cur=$(stopped_pids)
            if [[ -n $cur && -n $prev_stopped ]]; then
                both=$(comm -12 <(echo "$prev_stopped") <(echo "$cur") | grep -c . || true)
                stayed=$((stayed + both))
            fi
            prev_stopped=$cur
            if ((now >= warm_end)); then
                # Processes the daemon follows, and how many under normal profiles.
                read -r a b < <(admin ps --json 2>/dev/null |
                    python3 -c 'import json,sys
t=[x for m in json.load(sys.stdin) for x in (m.get("tasks") or [])]
print(len(t), sum(1 for x in t if x.get("state")=="normal"))' 2>/dev/null || echo "0 0")
                ps_samples=$((ps_samples + 1)) ps_tasks=$((ps_tasks + a)) ps_normal=$((ps_normal + b))
            fi
        fi
        (($(date +%s) >= end)) && break
    done
    round=$((round + 1))
    ((round % 5 == 0)) && say "round $round, $(($(date +%s) - start)) s, $ran tasks ($failed failed, $hung hung)"
done

admin status --json >"$OUT/status.json" 2>/dev/null || echo '[]' >"$OUT/status.json"
admin profile list --json >"$OUT/profiles.json" 2>/dev/null || echo '[]' >"$OUT/profiles.json"
kill -TERM "$daemon_pid"
wait "$daemon_pid" || say "daemon exited with $?"
trap - EXIT
kill "$http_pid" 2>/dev/null || true
if [[ -n $cgroup ]]; then
    echo $$ >"$cgroot/cgroup.procs"
    rmdir "$cgroup" || say "cgroup $cgroup not removed"
fi
final_stopped=$(stopped_now)

python3 - "$events" "$OUT/status.json" "$OUT/profiles.json" "$start" "$warm_end" "$end" \
    "$MODE" "$NORMAL_WAIT" "$MINUTES" "$WARMUP" "$ran" "$failed" "$hung" "$max_stopped" \
    "$stayed" "$final_stopped" "$ps_samples" "$ps_tasks" "$ps_normal" "$(uptime)" \
    "$(if [[ -n $cgroup ]]; then echo "only the soak's cgroup"; else echo "whole machine"; fi)" \
    "$(for t in "${!fails[@]}"; do printf '%s %s, ' "$t" "${fails[$t]}"; done)" <<'EOF' | tee "$OUT/summary.md"
import json, os, sys, collections
(ev, status, profiles, start, warm, end, mode, nw, minutes, warmup, ran, failed, hung,
 max_stopped, stayed, final_stopped, ps_n, ps_tasks, ps_normal, load, scope, fails) = sys.argv[1:]
start, warm, end = int(start), int(warm), int(end)
evs = [json.loads(l) for l in open(ev) if l.strip()]
# The work's time after warm-up only (not the daemon's shutdown after it).
after = [e for e in evs if warm <= e.get("ts", 0) <= end]
hours = max(end - warm, 1) / 3600
kinds = collections.Counter(e["event"] for e in after)
anoms = [e for e in after if e["event"] == "anomaly"]
by_exe = collections.Counter(e["exe"] for e in anoms)
lfc = collections.Counter(min(e["lfc"], 10) for e in anoms)
st = json.load(open(status))
st = st[0] if st else {}
profs = json.load(open(profiles))
states = collections.Counter(p["state"] for p in profs if p.get("source") == "daemon")
print(f"## Soak: {minutes} min, mode {mode}, normal_wait {nw} s, warm-up {warmup} min, {scope}\n")
print(f"- daemon flags beyond the mode: {os.environ.get('DAEMON_ARGS') or 'none'}")
print(f"- load at the end: {load.strip()}")
print(f"- tasks run: {ran} ({failed} failed, {hung} hung), failures by task: {fails.rstrip(', ') or 'none'}")
print(f"- stopped processes (state T, machine-wide, sampled every 10 s): at most {max_stopped} at once; "
      f"{stayed} seen stopped in two samples in a row; {final_stopped} stopped at the end")
print(f"- after warm-up ({(end - warm) / 60:.1f} min): {len(anoms)} anomalies "
      f"({len(anoms) / hours:.0f} per hour) in {len(by_exe)} programs; "
      f"responses {kinds['delay_start']} started, {kinds['exec_refused']} execve refused, "
      f"{kinds['response_failed']} failed; state changes {kinds['state_change']}; "
      f"back to training by anomaly_limit {sum(1 for e in after if e['event'] == 'state_change' and e.get('reason') == 'anomaly_limit')}")
if anoms:
    print("- anomalies by LFC (10 = 10 or more): " + ", ".join(f"{k}: {v}" for k, v in sorted(lfc.items())))
    print("- anomalies by program: " + ", ".join(f"{k} {v}" for k, v in by_exe.most_common(10)))
if st:
    calls, normal = st.get("calls", 0), st.get("calls_normal", 0)
    share = f"{100 * normal / calls:.1f}%" if calls else "-"
    p, l, x = st["profiles"], st["losses"], st.get("evicted", {})
    print(f"- calls under normal profiles (whole run): {share} ({normal} of {calls})")
    print(f"- profiles at the end: {p['training']} training, {p['frozen']} frozen, {p['normal']} normal; "
          f"evicted {x.get('deleted', 0)} (deleted executables) + {x.get('lru', 0)} (LRU)")
    print(f"- kernel losses: {l['lost_events']} events, {l['rows_full']} pairs, {l['tasks_full']} tasks, "
          f"{l['profiles_full']} profiles, {l['stops_failed']} stops")
lim = st.get("limits") if st else None
if lim:
    print(f"- throttle (whole run): {lim['throttle_queued']} connects to new hosts queued, "
          f"{lim['throttle_held']} held, {lim['throttle_released']} released, {lim['throttle_alarms']} alarms; "
          f"rate limits: {lim['rate_exceeded']} calls over a limit, {lim['rate_queued']} queued, "
          f"{lim['rate_released']} released, {lim['rate_alarms']} alarms")
    print(f"- after warm-up: throttle_queued {kinds['throttle_queued']}, rate_exceeded {kinds['rate_exceeded']}, "
          f"rate_queued {kinds['rate_queued']}")
if int(ps_n):
    print(f"- processes followed by the daemon after warm-up (homeostat ps, {ps_n} samples): "
          f"{int(ps_tasks) / int(ps_n):.0f} tasks on average, "
          f"{100 * int(ps_normal) / max(int(ps_tasks), 1):.1f}% under normal profiles")
EOF
say "done: $OUT"
if ((hung > 0 || final_stopped > 0)); then
    say "FAIL: $hung tasks hung, $final_stopped processes stopped at the end"
    exit 1
fi
