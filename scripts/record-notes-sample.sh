#!/usr/bin/env bash
# Re-records data/notes-app/sample: labelled sessions of a real web service for
# comparing the plain and the argument-aware alphabet (docs/arguments.md).
#
# The service is data/notes-app/notes.cgi (a Perl CGI note service with a path
# traversal bug) behind python3's http.server --cgi, driven over HTTP with curl. Each
# request's handler runs under `homeostat record`, one recording per request:
#   training/              normal requests (list, read, search) to train on
#   validation/            other normal requests, held out
#   attack/path_traversal/ ?read=../../../etc/passwd and friends: the same calls as a
#                          normal read, on a file the service never reads normally
#
# Usage: scripts/record-notes-sample.sh [OUT_DIR]   (default data/notes-app/sample)
# Needs root or a user allowed to create seccomp filters (any user on Linux >= 5.10
# with no_new_privs, which homeostat sets), python3 and curl.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$root/data/notes-app/sample}
hbin=${HOMEOSTAT:-$root/target/debug/homeostat}
if [ ! -x "$hbin" ]; then
    (cd "$root" && cargo build -q -p homeostat)
fi
for c in python3 curl perl; do
    command -v "$c" >/dev/null || { echo "record-notes-sample: $c is missing" >&2; exit 1; }
done

# A fixed place, so the recorded paths (and their classes) are the same on every run.
work=/tmp/homeostat-notes-app
rm -rf "$work"
mkdir -p "$work/notes" "$work/www/cgi-bin" "$work/rec"
# http.server runs CGI scripts as nobody when started by root.
chmod 1777 "$work/rec"
server=
cleanup() {
    [ -n "$server" ] && kill "$server" 2>/dev/null || true
    wait 2>/dev/null || true
    [ -n "${KEEP:-}" ] || rm -rf "$work"
}
trap cleanup EXIT

printf 'buy milk\nbuy bread\ncall the plumber\n' >"$work/notes/todo.txt"
printf 'Meeting notes, Monday\n- budget approved\n- hire two people\n' >"$work/notes/meeting.txt"
printf 'flour 500 g\nsugar 200 g\neggs 3\n' >"$work/notes/recipe.txt"
printf 'The quick brown fox jumps over the lazy dog.\n' >"$work/notes/fox.txt"
printf 'ideas:\n- a note service\n- a better note service\n' >"$work/notes/ideas.txt"

# The CGI entry point: the service's handler under the recorder.
cat >"$work/www/cgi-bin/notes.cgi" <<'CGI'
#!/bin/sh
exec "$HOMEOSTAT" record -o "$REC_DIR/current.hrec" -- "$NOTES_APP"
CGI
chmod +x "$work/www/cgi-bin/notes.cgi"
export HOMEOSTAT=$hbin REC_DIR=$work/rec NOTES_APP=$root/data/notes-app/notes.cgi
export NOTES_DIR=$work/notes

port=$((20000 + $$ % 20000))
(cd "$work/www" && exec python3 -m http.server --cgi --bind 127.0.0.1 "$port") \
    >"$work/server.log" 2>&1 &
server=$!
for _ in $(seq 100); do
    curl -s -o /dev/null "http://127.0.0.1:$port/" && break
    sleep 0.1
done

rm -rf "$out"
mkdir -p "$out/training" "$out/validation" "$out/attack/path_traversal"
n=0
req() { # label query
    n=$((n + 1))
    curl -sf --path-as-is -o /dev/null "http://127.0.0.1:$port/cgi-bin/notes.cgi?$2"
    [ -s "$work/rec/current.hrec" ] || { echo "no recording for ?$2" >&2; exit 1; }
    mv "$work/rec/current.hrec" "$out/$1/$(printf '%02d' $n).hrec"
}

for q in list read=todo.txt read=meeting.txt search=buy read=recipe.txt list \
    read=fox.txt search=note read=ideas.txt read=todo.txt search=eggs list \
    read=meeting.txt search=fox read=recipe.txt read=ideas.txt; do
    req training "$q"
done
for q in read=fox.txt list search=milk read=todo.txt read=ideas.txt search=budget \
    read=recipe.txt list read=meeting.txt search=dog; do
    req validation "$q"
done
for q in read=../../../etc/passwd read=../../../etc/hostname read=../../../etc/os-release \
    read=../../../etc/group read=../../../proc/version read=../../../etc/shadow; do
    req attack/path_traversal "$q"
done
du -sh "$out"
