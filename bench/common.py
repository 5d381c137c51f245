"""Shared benchmark helpers: the test environment's ComfyUI, and a median timer."""

import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tests" / "harness"), str(REPO / "tests")]


def median_time(fn, repeat=3):
    samples = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t)
    return statistics.median(samples)
