"""Peak memory of one portable_mlp training step and of one prediction, against the minimum.

Measured on one placement per run: host arrays (the table's host backend, NumPy) through
tracemalloc, CUDA arrays through their allocator's counters where the library keeps a peak.
"""

from __future__ import annotations

import gc
import tracemalloc
from collections.abc import Callable
from typing import Any

import numpy as np
from methods import Size, build_pm, find_placement

import portable_mlp as pm
from portable_mlp._backend import Placement

MEMORY_NOTE = (
    "minimum = parameters + gradients + optimizer state (none) + cached activations (each hidden "
    "layer's output, also the next Linear's input) + logits + x + y. step peak = parameters + "
    "x + y (held before) + the peak of what the step allocates on a fresh model (NumPy: "
    "tracemalloc, which includes a few KiB of Python objects; CUDA: torch.cuda "
    "max_memory_allocated). predict: forward(x, cache=False), its peak allocation and what it "
    "still holds once its output is dropped; cached forward: the same for forward(x), for "
    "contrast (it keeps the activations for backward)."
)

Probe = Callable[[Callable[[], Any], Placement], tuple[int, int]]


def traced(fn: Callable[[], Any], p: Placement) -> tuple[int, int]:
    """Host arrays: NumPy reports its buffers to tracemalloc (which also counts the step's Python
    objects, a few KiB)."""
    tracemalloc.start()
    try:
        fn()
        held, peak = tracemalloc.get_traced_memory()
        return peak, held
    finally:
        tracemalloc.stop()


def torch_cuda_allocated(fn: Callable[[], Any], p: Placement) -> tuple[int, int]:
    """torch's CUDA caching allocator counts what tensors hold (in 512-byte blocks)."""
    import torch

    p.sync()
    before = torch.cuda.memory_allocated(p.device)
    torch.cuda.reset_peak_memory_stats(p.device)
    fn()
    p.sync()
    return (
        int(torch.cuda.max_memory_allocated(p.device)) - before,
        int(torch.cuda.memory_allocated(p.device)) - before,
    )


# The backend table keeps no allocator statistics: the CUDA libraries whose allocator reports a
# peak, by backend name. Host arrays need none (tracemalloc sees them).
CUDA_PROBES: dict[str, Probe] = {"torch": torch_cuda_allocated}


def probe_of(p: Placement, kind: str) -> Probe | None:
    """How to measure allocations on ``p``, or None where nothing here can."""
    if p.backend.is_host:
        return traced
    return CUDA_PROBES.get(p.name) if kind == "cuda" else None


def memory_placement(backends: list[str], kind: str) -> Placement | None:
    """The first chosen backend's float32 placement whose allocations can be measured."""
    for b in backends:
        p = find_placement(b, kind, "float32")
        if p is not None and probe_of(p, kind) is not None:
            return p
    return None


def allocated_by(fn: Callable[[], Any], p: Placement, kind: str) -> tuple[int, int]:
    """Bytes allocated while ``fn()`` runs above what was allocated when it started: the peak,
    and what is still held once its result is dropped (caches kept, gradients made)."""
    probe = probe_of(p, kind)
    if probe is None:
        raise ValueError(f"no allocation counter for {p.describe()}")
    gc.collect()
    return probe(fn, p)


def nbytes(a: Any) -> int:
    return int(a.nbytes)


def measure_memory(size: Size, p: Placement, kind: str) -> dict[str, Any]:
    """Peak memory of one training step and of one prediction on a fresh model on ``p``.

    Counted: the parameters and the batch (held before the step, summed from their sizes) plus
    the peak of the allocations the step makes (activations, temporaries, gradients; the old
    gradients do not exist: the model is fresh). The analytic minimum is parameters + gradients
    + optimizer state (none: plain SGD) + the cached activations (each hidden layer's output,
    which is also the next Linear's input; the first Linear's input is x) + the logits + x and y.
    """
    # One throwaway step first, so one-time allocations (cuBLAS workspace, caches) are not counted.
    model, loss, opt, x, y = build_pm(size, p)
    pm.train_step(model, loss, opt, x, y)
    model, loss, opt, x, y = build_pm(size, p)
    itemsize = np.dtype(p.dtype_name).itemsize
    params = sum(nbytes(w) for w in model.parameters().values())
    held = params + nbytes(x) + nbytes(y)
    kept = size.n * sum(size.widths[1:]) * itemsize  # hidden outputs and the logits
    minimum = 2 * params + kept + nbytes(x) + nbytes(y)
    step_new, _ = allocated_by(lambda: pm.train_step(model, loss, opt, x, y), p, kind)
    predict_new, predict_kept = allocated_by(lambda: model.forward(x, cache=False), p, kind)
    forward_new, forward_kept = allocated_by(lambda: model.forward(x), p, kind)
    layer_out = size.n * max(size.widths[1:]) * itemsize
    return {
        "size": size.name,
        "backend": p.name,
        "device": kind,
        "dtype": p.dtype_name,
        "parameters": params,
        "gradients": params,
        "optimizer_state": 0,
        "activations_and_logits": kept,
        "batch": nbytes(x) + nbytes(y),
        "minimum": minimum,
        "held_before_step": held,
        "step_new_peak": step_new,
        "step_peak": held + step_new,
        "peak_over_minimum": (held + step_new) / minimum,
        "largest_layer_output": layer_out,
        "predict_new_peak": predict_new,
        "predict_over_layer_output": predict_new / layer_out,
        "predict_kept": predict_kept,
        "forward_cached_new_peak": forward_new,
        "forward_cached_kept": forward_kept,
    }
