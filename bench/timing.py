"""Timing calls for the benchmarks: the first call (compilation included) on its own, then
`repeats` further calls that take turns, so that every function sees the same machine load."""
import statistics
import time
from typing import Any, Callable

import jax


def interleaved(fns: dict[str, Callable[[], Any]], repeats: int) -> dict[str, dict[str, float]]:
    """name -> {"first_call_s", "median_s", "min_s"}; each call is waited for (results may be
    asynchronous JAX arrays)."""
    first = {}
    for name, fn in fns.items():
        start = time.perf_counter()
        jax.block_until_ready(fn())
        first[name] = time.perf_counter() - start
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            jax.block_until_ready(fn())
            times[name].append(time.perf_counter() - start)
    return {name: {"first_call_s": round(first[name], 4),
                   "median_s": round(statistics.median(t), 5), "min_s": round(min(t), 5)}
            for name, t in times.items()}


def timed(fn: Callable[[], Any], repeats: int) -> dict[str, float]:
    """`interleaved` of one function."""
    return interleaved({"fn": fn}, repeats)["fn"]
