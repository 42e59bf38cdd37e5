#!/usr/bin/env python3
"""hmmlearn's side of scripts/bench-hmm.sh: Baum-Welch on ADFA-LD's training traces.

Same data as homeostat's hmm_train example (Training_Data_Master, files sorted by name,
calls mapped to dense ids), CategoricalHMM with the scaling implementation, a fixed
number of iterations (tol disabled). Prints the seconds of each iteration and a
machine-readable RESULT line.
"""
import argparse
import os
import statistics
import sys
import time

import numpy as np
from hmmlearn import hmm
from hmmlearn.base import ConvergenceMonitor


class TimedMonitor(ConvergenceMonitor):
    """Records the wall time of each EM iteration (report() runs once per iteration)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.stamps = []

    def _reset(self):
        super()._reset()
        self.stamps = [time.perf_counter()]
        self.cpu = [time.process_time()]

    def report(self, log_prob):
        super().report(log_prob)
        self.stamps.append(time.perf_counter())
        self.cpu.append(time.process_time())
        n = len(self.stamps) - 1
        print(f"iteration {n:3}: log-likelihood/call {log_prob / CALLS:.5f}  "
              f"{self.stamps[-1] - self.stamps[-2]:.3f} s  "
              f"(cpu {self.cpu[-1] - self.cpu[-2]:.2f} s)", flush=True)


def load(directory):
    train = os.path.join(directory, "Training_Data_Master")
    traces = []
    for name in sorted(os.listdir(train)):
        if name.startswith("."):
            continue
        with open(os.path.join(train, name)) as f:
            calls = [int(x) for x in f.read().split()]
        if calls:
            traces.append(calls)
    return traces


def main():
    global CALLS
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--dir", required=True)
    ap.add_argument("--states", type=int, default=150)
    ap.add_argument("--iterations", type=int, default=3)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    traces = load(args.dir)
    ids = {}
    for t in traces:
        for c in t:
            ids.setdefault(c, len(ids))
    X = np.array([[ids[c]] for t in traces for c in t], dtype=np.int64)
    lengths = [len(t) for t in traces]
    CALLS = len(X)
    print(f"hmmlearn {hmm.__name__.split('.')[0]} "
          f"{__import__('hmmlearn').__version__}: {len(traces)} traces, {CALLS} calls, "
          f"{len(ids)} symbols, {args.states} states", flush=True)
    model = hmm.CategoricalHMM(
        n_components=args.states,
        n_features=len(ids),
        n_iter=args.iterations,
        tol=-np.inf,
        random_state=args.seed,
        implementation="scaling",
    )
    model.monitor_ = TimedMonitor(model.tol, model.n_iter, model.verbose)
    model.fit(X, lengths)
    stamps = model.monitor_.stamps
    per_iter = [b - a for a, b in zip(stamps, stamps[1:])]
    cpu = model.monitor_.cpu
    cpu_per_iter = [b - a for a, b in zip(cpu, cpu[1:])]
    if not per_iter:
        sys.exit("hmmlearn ran no iterations")
    print(f"RESULT hmmlearn_seconds_per_iteration_median={statistics.median(per_iter):.4f} "
          f"mean={statistics.fmean(per_iter):.4f} "
          f"cpu_median={statistics.median(cpu_per_iter):.4f}", flush=True)


CALLS = 1
if __name__ == "__main__":
    main()
