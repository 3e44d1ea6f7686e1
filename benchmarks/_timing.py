"""Timing loops shared by the in-process benchmarks (validation.py, inline.py).

validation.py also runs this file, as source text, in the 0.0.20 interpreter: it must
stay plain Python with no imports from this project and no ``__future__`` import.
"""

import gc
import statistics
from itertools import repeat
from time import perf_counter_ns

REPEATS = 15
TARGET_RUN_NS = 40_000_000


def calibrate(run, target_ns=TARGET_RUN_NS):
    """Smallest n (roughly) for which run(n) takes target_ns; the runs warm up too."""
    n = 16
    while True:
        elapsed = run(n)
        if elapsed >= target_ns // 2:
            return max(1, int(n * target_ns / max(elapsed, 1)))
        n *= 4


def timed(run, n):
    gc.collect()
    gc.disable()
    try:
        return run(n) / n
    finally:
        gc.enable()


def measure_samples(cases, repeats=REPEATS):
    """cases: {name: run(n) -> elapsed ns}. Interleaved repeats; {name: [ns per call]}."""
    ns = {name: calibrate(run) for name, run in cases.items()}
    for name, run in cases.items():
        run(ns[name])  # one more warm-up at the measured size
    samples = {name: [] for name in cases}
    for _ in range(repeats):
        for name, run in cases.items():
            samples[name].append(timed(run, ns[name]))
    return samples


def summary(samples):
    return statistics.median(samples), min(samples)


def measure(cases, repeats=REPEATS):
    """{name: (median, best)} in ns per call."""
    return {name: summary(s) for name, s in measure_samples(cases, repeats).items()}


def loop1(f, a):
    def run(n):
        t0 = perf_counter_ns()
        for _ in repeat(None, n):
            f(a)
        return perf_counter_ns() - t0

    return run


def loop3(f, a, b, c):
    def run(n):
        t0 = perf_counter_ns()
        for _ in repeat(None, n):
            f(a, b, c)
        return perf_counter_ns() - t0

    return run
