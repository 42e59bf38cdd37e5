#!/usr/bin/env python3
"""Counts and a sanity check for the UNM sample (data/sample).

Prints, per folder: files, traces (distinct pids per file, summed), calls;
checks that every line is `pid number` with a known x86_64 syscall number and
that each file's first call is execve; and prints how often a few system calls
that matter for the attacks (execve, clone/fork, socket, connect, chmod) occur,
plus the share of each folder's length-6 windows never seen in training
(a stide-style sanity check).

Usage: python3 data/sample/stats.py [DIR]
"""
import collections
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = sys.argv[1] if len(sys.argv) > 1 else HERE
NR = {"execve": 59, "clone": 56, "clone3": 435, "fork": 57, "vfork": 58,
      "socket": 41, "connect": 42, "chmod": 90, "fchmodat": 268, "fchmod": 91}
K = 6


def read_unm(path):
    traces = collections.OrderedDict()
    with open(path) as f:
        for lineno, line in enumerate(f, 1):
            parts = line.split()
            if len(parts) != 2 or not parts[0].isdigit() or not parts[1].isdigit():
                sys.exit(f"{path}:{lineno}: bad line {line!r}")
            nr = int(parts[1])
            if nr > 1000:
                sys.exit(f"{path}:{lineno}: syscall number {nr} out of range")
            traces.setdefault(int(parts[0]), []).append(nr)
    if not traces:
        sys.exit(f"{path}: empty")
    first = next(iter(traces.values()))
    if first[0] != NR["execve"]:
        sys.exit(f"{path}: first call is {first[0]}, not execve")
    for pid, t in traces.items():
        if not t:
            sys.exit(f"{path}: pid {pid} has an empty trace")
    return traces


def folders(root):
    out = []
    for split in ("training", "validation"):
        out.append(split)
    att = os.path.join(root, "attack")
    for t in sorted(os.listdir(att)):
        if os.path.isdir(os.path.join(att, t)):
            out.append("attack/" + t)
    return out


def windows(trace):
    return {tuple(trace[i:i + K]) for i in range(max(1, len(trace) - K + 1))}


def main():
    data = {}
    for folder in folders(ROOT):
        d = os.path.join(ROOT, folder)
        files = sorted(f for f in os.listdir(d) if f.endswith(".unm"))
        data[folder] = {f: read_unm(os.path.join(d, f)) for f in files}

    train_windows = set()
    for traces in data["training"].values():
        for t in traces.values():
            train_windows |= windows(t)

    rows = []
    for folder, files in list(data.items()) + [("attack (all)", {
            k: v for f, fs in data.items() if f.startswith("attack/") for k, v in
            ((f + "/" + n, t) for n, t in fs.items())})]:
        n_traces = sum(len(t) for t in files.values())
        n_calls = sum(len(x) for t in files.values() for x in t.values())
        size = sum(os.path.getsize(os.path.join(ROOT, folder, f)) for f in files) \
            if not folder.startswith("attack (") else None
        rows.append((folder, len(files), n_traces, n_calls, size, files))

    print(f"{'folder':28} {'files':>5} {'traces':>6} {'calls':>7} {'bytes':>7}")
    for folder, nf, nt, nc, size, _ in rows:
        print(f"{folder:28} {nf:5d} {nt:6d} {nc:7d} {'' if size is None else size:>7}")
    total = 0
    for dirpath, _, fnames in os.walk(ROOT):
        total += sum(os.path.getsize(os.path.join(dirpath, f)) for f in fnames)
    print(f"total size of {ROOT}: {total} bytes ({total / 1024:.0f} KiB)")

    print(f"\nper-file means (and share of files with >=1)    unseen {K}-grams vs training")
    for folder, nf, nt, nc, size, files in rows:
        def stat(names):
            counts = [sum(x.count(NR[n]) for n in names for x in t.values()) for t in files.values()]
            return f"{sum(counts) / nf:5.2f} ({sum(c > 0 for c in counts) / nf:4.0%})"
        unseen = tot = 0
        for t in files.values():
            for x in t.values():
                w = windows(x)
                tot += len(w)
                unseen += len(w - train_windows)
        print(f"{folder:28} execve {stat(['execve'])}  fork {stat(['clone', 'clone3', 'fork', 'vfork'])}"
              f"  socket {stat(['socket'])}  connect {stat(['connect'])}"
              f"  chmod {stat(['chmod', 'fchmodat', 'fchmod'])}   {unseen / tot:6.1%}")


if __name__ == "__main__":
    main()
