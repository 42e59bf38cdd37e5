#!/usr/bin/env python3
"""Convert `strace -f -qq -o FILE` text output into UNM format.

UNM format: one line per system call, `pid syscall_number`, in the order the
calls were made (entry order).  Several pids may be interleaved; each pid is
its own trace.  Numbers are x86_64 syscall numbers taken from the kernel
header asm/unistd_64.h.

Rules:
  * `pid name(... <unfinished ...>`   -> counted once, at this line
  * `pid <... name resumed> ...`      -> skipped when it completes a pending
                                         unfinished call of that pid (if there
                                         is none, the call is counted here and
                                         a warning is printed)
  * `pid --- SIG... ---`               -> skipped (signal delivery)
  * `pid +++ exited/killed ... +++`    -> skipped (process exit)
  * strace's own messages              -> skipped
  * a syscall name not in the table    -> error (exit status 1)

Usage: strace_to_unm.py [--table unistd_64.h] IN.strace OUT.unm
"""
import os
import re
import sys

HEADERS = (
    "/usr/include/x86_64-linux-gnu/asm/unistd_64.h",
    "/usr/include/asm/unistd_64.h",
)

DEFINE_RE = re.compile(r"^#define\s+__NR_(\w+)\s+(\d+)\s*$")
# pid, then the rest of the line
LINE_RE = re.compile(r"^(\d+)\s+(.*)$")
RESUMED_RE = re.compile(r"^<\.\.\.\s+([A-Za-z0-9_?]+)\s+resumed>")
CALL_RE = re.compile(r"^([A-Za-z0-9_?]+)\(")
# strace's own diagnostics, with or without a pid prefix
STRACE_MSG_RE = re.compile(r"^(strace: |\[?\s*Process \d+ (attached|detached))")


def load_table(path=None):
    paths = [path] if path else [p for p in HEADERS if os.path.exists(p)]
    if not paths:
        sys.exit("strace_to_unm: no unistd_64.h found (apt-get install linux-libc-dev)")
    table = {}
    with open(paths[0]) as f:
        for line in f:
            m = DEFINE_RE.match(line)
            if m:
                table[m.group(1)] = int(m.group(2))
    if len(table) < 300:
        sys.exit(f"strace_to_unm: {paths[0]} has only {len(table)} syscalls")
    return table


def convert(lines, table, where="<input>"):
    """Yield (pid, number) in order. Raises ValueError on unknown names."""
    pending = {}  # pid -> name of its unfinished call
    for lineno, raw in enumerate(lines, 1):
        line = raw.rstrip("\n")
        if not line.strip():
            continue
        if STRACE_MSG_RE.match(line):
            continue
        m = LINE_RE.match(line)
        if not m:
            raise ValueError(f"{where}:{lineno}: line without pid: {line[:120]!r}")
        pid, rest = int(m.group(1)), m.group(2)
        if rest.startswith("---") or rest.startswith("+++"):
            continue
        if STRACE_MSG_RE.match(rest):
            continue
        r = RESUMED_RE.match(rest)
        if r:
            name = r.group(1)
            if pending.get(pid) == name:
                del pending[pid]
                continue
            print(f"{where}:{lineno}: warning: '{name} resumed' without a pending "
                  f"unfinished call in pid {pid}; counted here", file=sys.stderr)
            pending.pop(pid, None)
        else:
            c = CALL_RE.match(rest)
            if not c:
                raise ValueError(f"{where}:{lineno}: cannot parse: {line[:120]!r}")
            name = c.group(1)
            if rest.rstrip().endswith("<unfinished ...>"):
                pending[pid] = name
        if name not in table:
            raise ValueError(f"{where}:{lineno}: syscall {name!r} is not in the table")
        yield pid, table[name]


def main(argv):
    table_path = None
    if len(argv) >= 2 and argv[0] == "--table":
        table_path, argv = argv[1], argv[2:]
    if len(argv) != 2:
        sys.exit(__doc__)
    src, dst = argv
    table = load_table(table_path)
    with open(src, errors="replace") as f:
        try:
            out = [f"{pid} {nr}\n" for pid, nr in convert(f, table, src)]
        except ValueError as e:
            sys.exit(f"strace_to_unm: {e}")
    if not out:
        sys.exit(f"strace_to_unm: {src}: no system calls found")
    with open(dst, "w") as f:
        f.writelines(out)


if __name__ == "__main__":
    main(sys.argv[1:])
