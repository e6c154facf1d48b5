"""How the benchmark times: warm-up, interleaved rounds, medians.

Every method of a size is built and warmed first and then timed round-robin: each round times
one block of steps of every method, in a rotated order, so drift of this (shared, noisy) machine
hits all methods alike; the reported time is the median over rounds of the mean step time of a
block. Each block ends with one sync (:meth:`methods.Method.sync`, which asks the method's
placement), so queued device work is inside the timed span.
"""

from __future__ import annotations

import statistics
import sys
import time
from typing import Any

from methods import EAGER, FLOOR, SKLEARN, Factory, Method

SETTLE_S = 0.15  # pause when the next block runs on another library's thread pools (CPU)
BLOCK_S = 0.05  # target length of one timed block: long enough for the clock, short for drift
WARMUP = 3
QUICK_ROUNDS, QUICK_BLOCK_S, QUICK_WARMUP = 3, 0.01, 1


def prepare(m: Method, warmup: int, block_s: float) -> None:
    """Warm up (compilation, capture, caches, thread pools), then size the block from one more
    step."""
    for _ in range(warmup):
        m.sync(m.step())
    t0 = time.perf_counter()
    m.sync(m.step())
    m.block = max(1, min(1000, round(block_s / (time.perf_counter() - t0))))


def time_block(m: Method) -> None:
    """One untimed step (this library's threads and caches, after the others ran), then a block
    of steps with one sync at its end; appends the mean time per step."""
    m.sync(m.step())
    t0 = time.perf_counter()
    for _ in range(m.block):
        value = m.step()
    m.sync(value)
    m.times.append((time.perf_counter() - t0) / m.block)


def build(
    plan: list[tuple[str, str, str, Factory]], where: dict[str, str], warmup: int, block_s: float
) -> tuple[list[Method], list[dict[str, str]]]:
    """Build and warm every planned method; one that fails (a missing device or library) is
    reported as skipped and the others are timed."""
    methods, skipped = [], []
    for dtype, backend, method, factory in plan:
        try:
            m = factory()
            prepare(m, warmup, block_s)
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
            skipped.append(
                {**where, "dtype": dtype, "backend": backend, "method": method, "error": error}
            )
            print(f"  skipped {where['size']} {backend} {method} {dtype}: {exc}", file=sys.stderr)
            continue
        methods.append(m)
    return methods, skipped


def interleave(methods: list[Method], rounds: int, settle: bool) -> None:
    """Time ``rounds`` blocks of every method, round-robin in a rotated order."""
    previous = None
    for r in range(rounds):
        k = r % len(methods)  # rotate the order so no method always follows the same one
        for m in methods[k:] + methods[:k]:
            if settle and _threads_of(m) != previous:
                # BLAS and OpenMP worker threads spin for up to ~0.1 s after their last call,
                # holding cores that another library's threads then wait for (seen: torch
                # eager 0.24 -> 7.9 ms/step right after an OpenBLAS block). Let them sleep.
                time.sleep(SETTLE_S)
            previous = _threads_of(m)
            time_block(m)


def _threads_of(m: Method) -> str:
    """Which thread pools a method runs on (scikit-learn ships its own OpenBLAS)."""
    return "sklearn" if m.method == SKLEARN else m.backend


def results(methods: list[Method], n: int) -> list[dict[str, Any]]:
    """One row per method: median ms/step, quartiles, samples/s, ratio to torch eager and the
    fraction of the floor (fastest GEMM floor of the same size, device kind and dtype)."""
    rows = []
    for m in methods:
        ms = [t * 1e3 for t in m.times]
        q1, _, q3 = statistics.quantiles(ms, n=4) if len(ms) > 1 else (ms[0], 0.0, ms[0])
        median = statistics.median(ms)
        rows.append(
            {
                "size": m.size,
                "device": m.device,
                "dtype": m.dtype,
                "backend": m.backend,
                "method": m.method,
                "placement": m.placement.describe(),
                "ms": median,
                "ms_q1": q1,
                "ms_q3": q3,
                "ms_min": min(ms),
                "samples_per_s": n / median * 1e3,
                "rounds": len(ms),
                "steps_per_block": m.block,
                "times_ms": ms,
            }
        )
    for row in rows:
        group = [r for r in rows if group_of(r) == group_of(row)]
        eager = [r["ms"] for r in group if r["method"] == EAGER]
        floors = [r["ms"] for r in group if r["method"] == FLOOR]
        row["ratio_to_torch_eager"] = row["ms"] / eager[0] if eager else None
        row["floor_fraction"] = min(floors) / row["ms"] if floors else None
    return rows


def group_of(row: dict[str, Any]) -> tuple[str, str, str]:
    """Rows compared with each other: one size, device kind and dtype."""
    return row["size"], row["device"], row["dtype"]
