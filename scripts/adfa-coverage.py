#!/usr/bin/env python3
"""How well ADFA-LD's training traces cover normal behaviour, and what the attack
traces hold (docs/models.md, "Toward issue 10's targets").

Prints, per set (Training, Validation, Attack): the median length; the share of traces
with a call, bigram or trigram no training trace has; the mean share of 6-call windows
unseen in training; and the share of traces holding one of the attacker goals' calls
(homeostat-analyze's STANDARD_GOALS without the open/write family, i386 numbers). Then
stide's rate (unseen 6-call windows per window) against the same rate counting only
the unseen windows that hold such a call, as AUC and detection at 1% false alarms,
Validation (normal) against Attack.

Usage: scripts/adfa-coverage.py [ADFA-LD DIR]  (default ../shared/datasets/ADFA-LD)
"""
import bisect
import glob
import os
import statistics
import sys

ROOT = sys.argv[1] if len(sys.argv) > 1 else os.environ.get(
    "HOMEOSTAT_ADFA_DIR", "../shared/datasets/ADFA-LD")
# execve, execveat, socketcall, socket, connect, dup2, dup3 (i386)
DANGER = {11, 358, 102, 359, 362, 63, 330}


def read(path):
    with open(path) as f:
        return [int(x) for x in f.read().split()]


def load(pattern):
    return [read(p) for p in sorted(glob.glob(os.path.join(ROOT, pattern)))]


def grams(trace, k):
    return [tuple(trace[i:i + k]) for i in range(len(trace) - k + 1)]


def auc(normal, attack):
    ns = sorted(normal)
    total = 0.0
    for x in attack:
        lo, hi = bisect.bisect_left(ns, x), bisect.bisect_right(ns, x)
        total += lo + 0.5 * (hi - lo)
    return total / (len(ns) * len(attack))


def dr_at(normal, attack, far=0.01):
    threshold = sorted(normal, reverse=True)[int(len(normal) * far)]
    return sum(1 for x in attack if x > threshold) / len(attack)


def main():
    train = load("Training_Data_Master/*.txt")
    valid = load("Validation_Data_Master/*.txt")
    attack = load("Attack_Data_Master/*/*.txt")
    if not train:
        sys.exit(f"no ADFA-LD at {ROOT}")
    seen = {k: {g for t in train for g in grams(t, k)} for k in (1, 2, 3, 6)}

    def unseen_share(t, k):
        g = grams(t, k)
        return sum(1 for x in g if x not in seen[k]) / max(1, len(g))

    for name, traces in (("training", train), ("validation", valid), ("attack", attack)):
        share = {k: [unseen_share(t, k) for t in traces] for k in (1, 2, 3, 6)}
        print(f"{name}: {len(traces)} traces, median length "
              f"{statistics.median(len(t) for t in traces):.0f}; with an unseen call "
              f"{sum(1 for x in share[1] if x) / len(traces):.3f}, bigram "
              f"{sum(1 for x in share[2] if x) / len(traces):.3f}, trigram "
              f"{sum(1 for x in share[3] if x) / len(traces):.3f}; mean unseen 6-call "
              f"windows {statistics.mean(share[6]):.3f}; with an attacker goal's call "
              f"{sum(1 for t in traces if DANGER & set(t)) / len(traces):.3f}")

    def rates(t):
        g = grams(t, 6)
        unseen = [x for x in g if x not in seen[6]]
        n = max(1, len(g))
        return len(unseen) / n, sum(1 for x in unseen if DANGER & set(x)) / n

    for i, name in enumerate(("stide rate (k=6)", "same, windows with a goal's call only")):
        n = [rates(t)[i] for t in valid]
        a = [rates(t)[i] for t in attack]
        print(f"{name}: AUC {auc(n, a):.4f}, DR at 1% FAR {100 * dr_at(n, a):.1f}%")


if __name__ == "__main__":
    main()
