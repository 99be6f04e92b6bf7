"""Timing helpers shared by the benchmarks."""
from __future__ import annotations

import statistics
import time


def median_ms(fn, repeat: int, warmup: int = 1) -> float:
    """Median wall time of `fn()` in milliseconds, after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)
