"""One way to time a call, shared by the device profile, the Latency evaluator, the exports and the benches.

:func:`time_calls` runs a callable ``warmup`` times untimed, then ``runs`` times
timed with :func:`time.perf_counter`, calling ``sync`` (a CUDA synchronize, say)
before and after each timed call, and returns the times in milliseconds.
:func:`summarize` turns them into the figures PruneTune reports: the median,
the interquartile range and the 90th percentile. The module is torch-free:
whatever the call needs (``torch.inference_mode``, threads) is the caller's.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["summarize", "time_calls"]


def time_calls(
    fn: Callable[[], Any], *, runs: int, warmup: int = 0, sync: Callable[[], None] | None = None
) -> list[float]:
    """The times (ms) of ``runs`` calls of ``fn``, after ``warmup`` calls that are not timed."""
    if runs < 1 or warmup < 0:
        raise ValueError(f"timing needs runs >= 1 and warmup >= 0, got runs={runs}, warmup={warmup}")
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        if sync is not None:
            sync()
        t = time.perf_counter()
        fn()
        if sync is not None:
            sync()
        times.append(1000.0 * (time.perf_counter() - t))
    return times


def summarize(times: Sequence[float]) -> dict[str, float]:
    """``median_ms``, ``iqr_ms`` (the interquartile range), ``p90_ms`` and ``runs`` of timed calls (ms)."""
    if not times:
        raise ValueError("summarize needs at least one time, got none")
    if len(times) == 1:
        return {"median_ms": times[0], "iqr_ms": 0.0, "p90_ms": times[0], "runs": 1}
    q = statistics.quantiles(times, n=4, method="inclusive")
    p90 = statistics.quantiles(times, n=10, method="inclusive")[-1]
    return {"median_ms": statistics.median(times), "iqr_ms": q[2] - q[0], "p90_ms": p90, "runs": len(times)}
