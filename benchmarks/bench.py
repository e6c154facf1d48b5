"""Time one training step of portable_mlp against PyTorch eager, scikit-learn, ``jax.jit`` and
the GEMM floor, and measure a step's peak memory against its analytic minimum.

A step is forward, loss, backward and a plain SGD update (lr=0.01, no momentum). Every method of
a size is built first and then timed round-robin: each round times one block of steps of every
method, in a rotated order, so drift of this (shared, noisy) machine hits all methods alike; the
reported time is the median over rounds of the mean step time of a block.

    python benchmarks/bench.py --out DIR [--sizes S M L] [--backends numpy torch ...]
                               [--device cpu|cuda] [--repeats N] [--quick]

writes DIR/bench.json (machine-readable, with machine info), DIR/bench.md and DIR/bench.png.
``nox -s bench`` runs it in its own environment. Nothing here is a test: it asserts nothing.

On a shared machine, a library's worker threads wait for cores that other processes hold, which
can turn a 1 ms step into a 60 ms one; ``OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1
MKL_NUM_THREADS=1 XLA_FLAGS="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"``
gives steadier single-core numbers. The thread counts that ran are in the report.
"""

from __future__ import annotations

import os

# JAX would reserve 75% of a GPU's memory at its first array; torch and CuPy share the GPU here.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import argparse
import gc
import importlib.metadata
import importlib.util
import json
import math
import platform
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

import portable_mlp as pm

LR = 0.01
PM = "portable_mlp"
EAGER = "torch eager"
SKLEARN = "sklearn"
JIT = "jax.jit"
LOOP = "numpy loop"
FLOOR = "GEMM floor"
METHOD_ORDER = (PM, EAGER, SKLEARN, JIT, LOOP, FLOOR)
CPU_BACKENDS = ("numpy", "torch", "jax", "array_api_strict")
GPU_BACKENDS = ("torch", "cupy", "jax")
FLOOR_BACKENDS = ("numpy", "torch", "cupy")  # those with a matmul that writes into a buffer


@dataclass(frozen=True)
class Size:
    """A benchmark problem: batch ``n``, layer ``widths``, loss, and how long to time it."""

    name: str
    n: int
    widths: tuple[int, ...]
    loss: str  # "bce" (BCE with logits, 0/1 targets (n, 1)) or "ce" (cross-entropy, labels (n,))
    rounds: int  # timed blocks per method; fewer where a step is slow
    gpu_only: bool = False

    @property
    def layers(self) -> list[tuple[int, int]]:
        return list(zip(self.widths[:-1], self.widths[1:], strict=True))


SIZES = {
    "S": Size("S", 64, (30, 16, 8, 1), "bce", rounds=40),  # Python overhead
    "M": Size("M", 256, (784, 256, 256, 10), "ce", rounds=25),
    "L": Size("L", 1024, (1024, 1024, 1024, 1), "bce", rounds=9),  # matrix products
    "XL": Size("XL", 8192, (4096, 4096, 4096, 10), "ce", rounds=15, gpu_only=True),
}
SETTLE_S = 0.15  # pause when the next block runs on another library's thread pools (CPU)
BLOCK_S = 0.05  # target length of one timed block: long enough for the clock, short for drift
QUICK_ROUNDS, QUICK_BLOCK_S = 3, 0.01


@dataclass
class Method:
    """One timed thing: a step closure and the sync that makes its work finish."""

    size: str
    device: str  # "cpu" or "cuda": the device kind results are compared within
    dtype: str
    backend: str
    method: str
    step: Callable[[], Any]
    sync: Callable[[Any], None]
    block: int = 1
    times: list[float] = field(default_factory=list)  # seconds per step, one per timed block


def no_sync(_: Any) -> None:
    """CPU backends other than JAX finish their work before returning."""


def device_sync(backend: str, device: str) -> Callable[[Any], None]:
    """What waits for queued work: CUDA streams and JAX's asynchronous dispatch."""
    if backend == "jax":
        import jax

        return jax.block_until_ready
    if device != "cuda":
        return no_sync
    if backend == "torch":
        import torch

        return lambda _: torch.cuda.synchronize()
    if backend == "cupy":
        import cupy

        return lambda _: cupy.cuda.Device().synchronize()
    raise ValueError(f"no CUDA sync for {backend}")


# ---------------------------------------------------------------------------- data and models
def host_data(size: Size, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Float64 inputs (n, p) and targets: 0/1 floats (n, 1) for BCE, int64 labels (n,) for CE."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(size.n, size.widths[0]))
    if size.loss == "bce":
        return x, rng.integers(0, 2, size=(size.n, 1)).astype(np.float64)
    return x, rng.integers(0, size.widths[-1], size=size.n)


def pm_device(backend: str, device: str) -> str | None:
    """What ``device=`` to give portable_mlp: NumPy, strict and CuPy have one natural device."""
    return device if backend in ("torch", "jax") else None


def build_pm(size: Size, backend: str, device: str, dtype: str) -> tuple[Any, Any, Any, Any, Any]:
    """A portable_mlp model, loss, optimizer and the batch moved onto its backend once."""
    model = pm.MLP(
        size.widths, "relu", rng=0, backend=backend, device=pm_device(backend, device), dtype=dtype
    )
    loss = pm.BCEWithLogitsLoss() if size.loss == "bce" else pm.CrossEntropyLoss()
    x, y = host_data(size)
    return model, loss, pm.SGD(model, lr=LR), pm.asarray(x, like=model), pm.asarray(y, like=model)


def pm_method(size: Size, backend: str, device: str, dtype: str) -> Method:
    model, loss, opt, x, y = build_pm(size, backend, device, dtype)
    sync = device_sync(backend, device)
    return Method(
        size.name,
        device,
        dtype,
        backend,
        PM,
        step=lambda: pm.train_step(model, loss, opt, x, y),
        # JAX's update makes new parameter arrays: wait for them too, not just for the loss.
        sync=(lambda v: sync((v, model.parameters()))) if backend == "jax" else sync,
    )


def torch_eager_method(size: Size, device: str, dtype: str) -> Method:
    import torch

    torch.manual_seed(0)
    dev, dt = torch.device(device), getattr(torch, dtype)
    layers: list[torch.nn.Module] = []
    for i, (p_in, p_out) in enumerate(size.layers):
        if i:
            layers.append(torch.nn.ReLU())
        layers.append(torch.nn.Linear(p_in, p_out))
    net = torch.nn.Sequential(*layers).to(device=dev, dtype=dt)
    loss_fn = torch.nn.BCEWithLogitsLoss() if size.loss == "bce" else torch.nn.CrossEntropyLoss()
    opt = torch.optim.SGD(net.parameters(), lr=LR)
    xh, yh = host_data(size)
    x = torch.as_tensor(xh, dtype=dt, device=dev)
    y = torch.as_tensor(yh, dtype=dt if size.loss == "bce" else torch.int64, device=dev)

    def step() -> Any:
        opt.zero_grad(set_to_none=True)
        value = loss_fn(net(x), y)
        value.backward()
        opt.step()
        return value

    return Method(size.name, device, dtype, "torch", EAGER, step, device_sync("torch", device))


def sklearn_method(size: Size, dtype: str) -> Method:
    from sklearn.neural_network import MLPClassifier

    clf = MLPClassifier(
        hidden_layer_sizes=size.widths[1:-1],
        activation="relu",
        solver="sgd",
        momentum=0.0,
        learning_rate_init=LR,
        alpha=0.0,
        batch_size=size.n,
        shuffle=False,
        random_state=0,
    )
    xh, yh = host_data(size)
    x = xh.astype(dtype)  # scikit-learn keeps float32 data float32
    labels = yh.ravel().astype(np.int64)
    n_classes = 2 if size.loss == "bce" else size.widths[-1]  # binary: one logistic output
    clf.partial_fit(x, labels, classes=np.arange(n_classes))  # the first call sets up the net
    return Method(
        size.name, "cpu", dtype, "numpy", SKLEARN, lambda: clf.partial_fit(x, labels), no_sync
    )


def numpy_loop_method(size: Size, dtype: str) -> Method:
    """The same step hand-written in plain NumPy, as a notebook would: the overhead yardstick.

    Same math as portable_mlp (ReLU MLP, stable BCE with logits or log-softmax cross-entropy,
    plain SGD), no namespace, no checks, no layers.
    """
    rng = np.random.default_rng(0)
    Ws = [(rng.normal(size=(a, b)) / np.sqrt(a)).astype(dtype) for a, b in size.layers]
    bs = [np.zeros(b, dtype=dtype) for _, b in size.layers]
    xh, yh = host_data(size)
    x = xh.astype(dtype)
    y = yh.astype(dtype) if size.loss == "bce" else np.eye(size.widths[-1], dtype=dtype)[yh]
    n, last = size.n, len(Ws) - 1

    def step() -> Any:
        acts = [x]
        for i, (W, b) in enumerate(zip(Ws, bs, strict=True)):
            z = acts[-1] @ W + b
            acts.append(np.maximum(z, 0) if i < last else z)
        z = acts[-1]
        if size.loss == "bce":
            e = np.exp(-np.abs(z))
            value = np.mean(np.maximum(z, 0) - z * y + np.log1p(e))
            dz = (np.where(z >= 0, 1.0, e) / (1 + e) - y) / z.size
        else:
            s = z - z.max(axis=1, keepdims=True)
            logp = s - np.log(np.exp(s).sum(axis=1, keepdims=True))
            value = -(y * logp).sum() / n
            dz = (np.exp(logp) - y) / n
        for i in range(last, -1, -1):
            dW, db = acts[i].T @ dz, dz.sum(axis=0)
            if i:
                dz = (dz @ Ws[i].T) * (acts[i] > 0)
            Ws[i] -= LR * dW
            bs[i] -= LR * db
        return value

    return Method(size.name, "cpu", dtype, "numpy", LOOP, step, no_sync)


def jax_jit_method(size: Size, device: str, dtype: str) -> Method:
    import jax
    import jax.numpy as jnp

    dev = jax.devices("gpu" if device == "cuda" else "cpu")[0]
    rng = np.random.default_rng(0)
    params = [
        (
            jax.device_put((rng.normal(size=(p_in, p_out)) / math.sqrt(p_in)).astype(dtype), dev),
            jax.device_put(np.zeros(p_out, dtype), dev),
        )
        for p_in, p_out in size.layers
    ]
    xh, yh = host_data(size)
    x = jax.device_put(xh.astype(dtype), dev)
    y = jax.device_put(yh.astype(dtype) if size.loss == "bce" else yh.astype(np.int32), dev)

    def loss_fn(params: Any, x: Any, y: Any) -> Any:
        a = x
        for i, (W, b) in enumerate(params):
            a = a @ W + b
            if i < len(params) - 1:
                a = jax.nn.relu(a)
        if size.loss == "bce":
            return jnp.mean(jnp.maximum(a, 0) - a * y + jnp.log1p(jnp.exp(-jnp.abs(a))))
        logp = jax.nn.log_softmax(a)
        return -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=1))

    def update(params: Any, x: Any, y: Any) -> tuple[Any, Any]:
        value, grads = jax.value_and_grad(loss_fn)(params, x, y)
        return jax.tree_util.tree_map(lambda p, g: p - LR * g, params, grads), value

    # Donating the parameters lets XLA update them in place, as the other methods do.
    compiled = jax.jit(update, donate_argnums=0)

    def step() -> Any:
        nonlocal params
        params, value = compiled(params, x, y)
        return value

    return Method(
        size.name,
        device,
        dtype,
        "jax",
        JIT,
        step,
        lambda v: jax.block_until_ready((v, params)),
    )


def gemm_floor_method(size: Size, backend: str, device: str, dtype: str) -> Method:
    """Only the step's matrix products, into preallocated buffers: per layer the forward x W,
    dW = x^T dy and dX = dy W^T, except the first layer's dX, which no training step needs."""
    if backend == "numpy":

        def put(a: np.ndarray) -> Any:
            return a.astype(dtype)

        def mm(a: Any, b: Any, out: Any) -> None:
            np.matmul(a, b, out=out)

    elif backend == "torch":
        import torch

        def put(a: np.ndarray) -> Any:
            return torch.as_tensor(a, dtype=getattr(torch, dtype), device=device)

        def mm(a: Any, b: Any, out: Any) -> None:
            torch.mm(a, b, out=out)

    elif backend == "cupy":
        import cupy

        def put(a: np.ndarray) -> Any:
            return cupy.asarray(a.astype(dtype))

        def mm(a: Any, b: Any, out: Any) -> None:
            cupy.matmul(a, b, out=out)

    else:
        raise ValueError(f"no GEMM floor for {backend}")
    rng = np.random.default_rng(0)
    n = size.n
    products = []
    for i, (p_in, p_out) in enumerate(size.layers):
        x, W, dy = (put(rng.normal(size=s)) for s in ((n, p_in), (p_in, p_out), (n, p_out)))
        products.append((x, W, put(np.zeros((n, p_out)))))
        products.append((x.T, dy, put(np.zeros((p_in, p_out)))))
        if i:
            products.append((dy, W.T, put(np.zeros((n, p_in)))))

    def step() -> None:
        for a, b, out in products:
            mm(a, b, out)

    return Method(size.name, device, dtype, backend, FLOOR, step, device_sync(backend, device))


# ---------------------------------------------------------------------------- what runs where
def has_module(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def jax_usable(device: str) -> bool:
    """Whether JAX is installed and has a device of this kind."""
    if not has_module("jax"):
        return False
    import jax

    try:
        return bool(jax.devices("gpu" if device == "cuda" else "cpu"))
    except RuntimeError:  # "Unknown backend: 'gpu' requested ..."
        return False


def cuda_available() -> bool:
    if has_module("torch"):
        import torch

        if torch.cuda.is_available():
            return True
    if has_module("cupy"):
        import cupy

        try:
            return bool(cupy.cuda.runtime.getDeviceCount())
        except Exception:  # CUDARuntimeError and friends where there is no driver
            return False
    return False


def default_backends(device: str) -> list[str]:
    installed = set(pm.installed_backends())
    if device == "cpu":
        return [b for b in CPU_BACKENDS if b in installed]
    return [b for b in GPU_BACKENDS if b in installed and (b != "jax" or jax_usable("cuda"))]


def planned(size: Size, backends: list[str], device: str) -> list[tuple[str, str, str, Any]]:
    """(dtype, backend, method, factory) of every method of one size, in table order.

    portable_mlp and the floors run on the chosen backends; the references (torch eager,
    scikit-learn on the CPU, jax.jit) run wherever their library is installed. float64 is
    timed for NumPy only (and the references and floors it is compared with).
    """
    dtypes = ["float32"] + (["float64"] if device == "cpu" and "numpy" in backends else [])
    plan: list[tuple[str, str, str, Any]] = []
    for dtype in dtypes:
        for b in backends if dtype == "float32" else ["numpy"]:
            plan.append((dtype, b, PM, lambda b=b, d=dtype: pm_method(size, b, device, d)))
        if has_module("torch"):
            plan.append(
                (dtype, "torch", EAGER, lambda d=dtype: torch_eager_method(size, device, d))
            )
        if device == "cpu" and has_module("sklearn"):
            plan.append((dtype, "numpy", SKLEARN, lambda d=dtype: sklearn_method(size, d)))
        if device == "cpu" and "numpy" in backends:
            plan.append((dtype, "numpy", LOOP, lambda d=dtype: numpy_loop_method(size, d)))
        if dtype == "float32" and jax_usable(device):
            plan.append((dtype, "jax", JIT, lambda d=dtype: jax_jit_method(size, device, d)))
        for b in backends:
            if b in FLOOR_BACKENDS:
                plan.append(
                    (dtype, b, FLOOR, lambda b=b, d=dtype: gemm_floor_method(size, b, device, d))
                )
    return plan


# ---------------------------------------------------------------------------- timing
def prepare(m: Method, warmup: int, block_s: float) -> None:
    """Warm up (compilation, caches, thread pools), then size the block from one more step."""
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


def time_size(
    size: Size, backends: list[str], device: str, rounds: int, warmup: int, block_s: float
) -> tuple[list[Method], list[dict[str, str]]]:
    """Build and warm every method of ``size``, then time them round-robin."""
    methods, skipped = [], []
    for dtype, backend, method, factory in planned(size, backends, device):
        where = {"size": size.name, "device": device, "dtype": dtype, "backend": backend}
        try:
            m = factory()
            prepare(m, warmup, block_s)
        except Exception as exc:  # a missing device or library: report it, time the others
            skipped.append({**where, "method": method, "error": f"{type(exc).__name__}: {exc}"})
            print(f"  skipped {size.name} {backend} {method} {dtype}: {exc}", file=sys.stderr)
            continue
        methods.append(m)
    print(f"{size.name}: {len(methods)} methods x {rounds} rounds", file=sys.stderr)
    previous = None
    for r in range(rounds):
        k = r % len(methods)  # rotate the order so no method always follows the same one
        for m in methods[k:] + methods[:k]:
            if device == "cpu" and _threads_of(m) != previous:
                # BLAS and OpenMP worker threads spin for up to ~0.1 s after their last call,
                # holding cores that another library's threads then wait for (seen: torch
                # eager 0.24 -> 7.9 ms/step right after an OpenBLAS block). Let them sleep.
                time.sleep(SETTLE_S)
            previous = _threads_of(m)
            time_block(m)
    return methods, skipped


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
        group = [r for r in rows if (r["size"], r["device"], r["dtype"]) == _group(row)]
        eager = [r["ms"] for r in group if r["method"] == EAGER]
        floors = [r["ms"] for r in group if r["method"] == FLOOR]
        row["ratio_to_torch_eager"] = row["ms"] / eager[0] if eager else None
        row["floor_fraction"] = min(floors) / row["ms"] if floors else None
    return rows


def _group(row: dict[str, Any]) -> tuple[str, str, str]:
    return row["size"], row["device"], row["dtype"]


# ---------------------------------------------------------------------------- memory
def allocated_by(fn: Callable[[], Any], backend: str) -> tuple[int, int]:
    """Bytes allocated while ``fn()`` runs above what was allocated when it started: the peak,
    and what is still held once its result is dropped (caches kept, gradients made).

    NumPy reports its buffers to tracemalloc (which also counts the step's Python objects, a few
    KiB); torch's CUDA caching allocator counts what tensors hold (in 512-byte blocks).
    """
    gc.collect()
    if backend == "numpy":
        tracemalloc.start()
        try:
            fn()
            held, peak = tracemalloc.get_traced_memory()
            return peak, held
        finally:
            tracemalloc.stop()
    import torch

    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return (
        int(torch.cuda.max_memory_allocated()) - before,
        int(torch.cuda.memory_allocated()) - before,
    )


def nbytes(a: Any) -> int:
    return int(a.nbytes)


def measure_memory(size: Size, backend: str, device: str) -> dict[str, Any]:
    """Peak memory of one float32 training step and of one prediction on a fresh model.

    Counted: the parameters and the batch (held before the step, summed from their sizes) plus
    the peak of the allocations the step makes (activations, temporaries, gradients; the old
    gradients do not exist: the model is fresh). The analytic minimum is parameters + gradients
    + optimizer state (none: plain SGD) + the cached activations (each hidden layer's output,
    which is also the next Linear's input; the first Linear's input is x) + the logits + x and y.
    """
    dtype = "float32"
    # One throwaway step first, so one-time allocations (cuBLAS workspace, caches) are not counted.
    model, loss, opt, x, y = build_pm(size, backend, device, dtype)
    pm.train_step(model, loss, opt, x, y)
    model, loss, opt, x, y = build_pm(size, backend, device, dtype)
    itemsize = np.dtype(dtype).itemsize
    params = sum(nbytes(p) for p in model.parameters().values())
    held = params + nbytes(x) + nbytes(y)
    kept = size.n * sum(size.widths[1:]) * itemsize  # hidden outputs and the logits
    minimum = 2 * params + kept + nbytes(x) + nbytes(y)
    step_new, _ = allocated_by(lambda: pm.train_step(model, loss, opt, x, y), backend)
    predict_new, predict_kept = allocated_by(lambda: model.forward(x, cache=False), backend)
    forward_new, forward_kept = allocated_by(lambda: model.forward(x), backend)
    layer_out = size.n * max(size.widths[1:]) * itemsize
    return {
        "size": size.name,
        "backend": backend,
        "device": device,
        "dtype": dtype,
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


# ---------------------------------------------------------------------------- machine
VERSIONED = (
    "numpy",
    "torch",
    "jax",
    "jaxlib",
    "array-api-strict",
    "array-api-compat",
    "scikit-learn",
    "cupy-cuda13x",
    "cupy-cuda12x",
    "matplotlib",
    "threadpoolctl",
)
THREAD_ENV = (  # what picks BLAS kernels and thread counts
    "OPENBLAS_CORETYPE",
    "OPENBLAS_L2_SIZE",
    "OPENBLAS_NUM_THREADS",
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "XLA_FLAGS",
)


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def blas_info() -> list[dict[str, Any]]:
    """The BLAS and OpenMP libraries loaded, with the kernel each runs (threadpoolctl)."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return [{"error": "threadpoolctl is not installed: the BLAS kernel is unknown"}]
    keep = ("user_api", "internal_api", "version", "architecture", "threading_layer", "num_threads")
    return [
        {**{k: lib.get(k) for k in keep}, "library": Path(lib["filepath"]).name}
        for lib in threadpool_info()
    ]


def torch_info() -> dict[str, Any] | None:
    """torch's BLAS (MKL is linked statically, so threadpoolctl cannot see it) and its threads."""
    if "torch" not in sys.modules:
        return None
    import torch

    config = torch.__config__.show()
    blas = next(
        (p.split("=", 1)[1] for p in config.replace(",", " ").split() if "BLAS_INFO=" in p), None
    )
    return {
        "blas": blas,
        "num_threads": torch.get_num_threads(),
        "float32_matmul_precision": torch.get_float32_matmul_precision(),  # "highest": no TF32
    }


def gpu_name() -> str | None:
    if "torch" in sys.modules:
        import torch

        if torch.cuda.is_available():
            return str(torch.cuda.get_device_name())
    if "cupy" in sys.modules:
        import cupy

        return str(cupy.cuda.runtime.getDeviceProperties(0)["name"].decode())
    return None


def machine_info(load_before: tuple[float, float, float]) -> dict[str, Any]:
    versions = {"python": platform.python_version(), "portable_mlp": pm.__version__}
    for dist in VERSIONED:
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)),
        "platform": platform.platform(),
        "gpu": gpu_name(),
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "blas": blas_info(),
        "torch": torch_info(),
        "env": {k: os.environ.get(k) for k in THREAD_ENV},
        "versions": versions,
    }


# ---------------------------------------------------------------------------- reports
def fmt_bytes(b: float) -> str:
    for unit, scale in (("MiB", 2**20), ("KiB", 2**10)):
        if b >= scale:
            return f"{b / scale:.2f} {unit}"
    return f"{b:.0f} B"


def fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def machine_lines(machine: dict[str, Any]) -> list[str]:
    blas = "; ".join(
        lib.get("error")
        or f"{lib['internal_api']} {lib['version']} ({lib['library']}): "
        f"{lib.get('architecture') or '-'}, {lib['num_threads']} threads"
        for lib in machine["blas"]
    )
    env = ", ".join(f"{k}={v}" for k, v in machine["env"].items() if v is not None) or "none set"
    torch = machine["torch"]
    return [
        f"- CPU: {machine['cpu']}, {machine['cores']} cores ({machine['usable_cores']} usable); "
        f"GPU: {machine['gpu'] or 'none'}",
        f"- load average before/after: {machine['load_average_before'][0]:.2f} / "
        f"{machine['load_average_after'][0]:.2f} (other processes share this machine)",
        f"- BLAS and OpenMP (threadpoolctl): {blas}",
        f"- torch: BLAS {torch['blas']}, {torch['num_threads']} threads, float32 matmul "
        f"precision {torch['float32_matmul_precision']}"
        if torch
        else "- torch: -",
        f"- BLAS and thread environment: {env}",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in machine["versions"].items()),
    ]


# The issue's targets, as same-run ratios: (label, backend, method, other method, bound, kind).
# "ratio": ms(method) / ms(other) must be at most bound; "floor": floor fraction at least bound;
# "speedup": ms(other) / ms(method) at least bound.
TARGETS = [
    ("S", "numpy vs the hand-written NumPy loop", "numpy", LOOP, "ratio", 1.2),
    ("M", "numpy, fraction of NumPy's GEMM floor", "numpy", FLOOR, "floor", 0.75),
    ("L", "numpy, fraction of NumPy's GEMM floor", "numpy", FLOOR, "floor", 0.90),
    ("M", "numpy, speed-up over scikit-learn", "numpy", SKLEARN, "speedup", 3.0),
    ("S", "torch vs PyTorch eager", "torch", EAGER, "ratio", 0.5),
    ("M", "torch vs PyTorch eager", "torch", EAGER, "ratio", 0.9),
    ("L", "torch vs PyTorch eager", "torch", EAGER, "ratio", 1.0),
    ("XL", "torch, fraction of torch's GEMM floor", "torch", FLOOR, "floor", 0.80),
    ("XL", "cupy, fraction of CuPy's GEMM floor", "cupy", FLOOR, "floor", 0.80),
]


def targets(rows: list[dict[str, Any]]) -> list[str]:
    """The float32 targets met or missed in this run, as a markdown table."""
    out = [
        "",
        "## Targets (float32, same run)",
        "",
        "| size | target | bound | measured | met |",
        "|---|---|---:|---:|---|",
    ]
    for size, label, backend, other, kind, bound in TARGETS:
        ours = [
            r
            for r in rows
            if (r["size"], r["dtype"], r["backend"], r["method"]) == (size, "float32", backend, PM)
        ]
        ref = [r for r in rows if (r["size"], r["dtype"], r["method"]) == (size, "float32", other)]
        if kind == "floor":  # the backend's own matrix products (NumPy: its OpenBLAS)
            ref = [r for r in ref if r["backend"] == backend]
        if not ours or not ref:
            continue
        ref_ms = min(r["ms"] for r in ref)
        value = {
            "ratio": ours[0]["ms"] / ref_ms,
            "floor": ref_ms / ours[0]["ms"],
            "speedup": ref_ms / ours[0]["ms"],
        }[kind]
        met = value <= bound if kind == "ratio" else value >= bound
        sign = "<=" if kind == "ratio" else ">="
        out.append(
            f"| {size} | {label} | {sign} {bound} | {value:.2f} | {'yes' if met else 'NO'} |"
        )
    return out


def markdown(report: dict[str, Any]) -> str:
    lines = [
        "# portable_mlp: one training step (forward, loss, backward, SGD update)",
        "",
        *machine_lines(report["machine"]),
        "",
        "ms/step: median over rounds (IQR: quartiles); x eager: ms / torch eager ms; "
        "floor: fastest GEMM floor ms / ms (1 = only matrix products).",
        "",
        "| size | device | dtype | backend | method | ms/step | IQR ms | samples/s "
        "| x eager | floor |",
        "|---|---|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in report["results"]:
        lines.append(
            f"| {r['size']} | {r['device']} | {r['dtype']} | {r['backend']} | {r['method']} "
            f"| {r['ms']:.3f} | {r['ms_q1']:.3f}-{r['ms_q3']:.3f} | {r['samples_per_s']:,.0f} "
            f"| {fmt(r['ratio_to_torch_eager'], '.2f')} | {fmt(r['floor_fraction'], '.2f')} |"
        )
    lines += targets(report["results"])
    for s in report["skipped"]:
        lines.append(
            f"\nSkipped {s['size']} {s['backend']} {s['method']} {s['dtype']}: {s['error']}"
        )
    if report["memory"]:
        lines += [
            "",
            "## Memory of one float32 step (portable_mlp)",
            "",
            report["memory_note"],
            "",
            "| size | backend | device | minimum | step peak | peak/min | largest layer output "
            "| predict peak (/output) | predict kept | cached forward peak | cached forward kept |",
            "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for m in report["memory"]:
            lines.append(
                f"| {m['size']} | {m['backend']} | {m['device']} | {fmt_bytes(m['minimum'])} "
                f"| {fmt_bytes(m['step_peak'])} | {m['peak_over_minimum']:.2f} "
                f"| {fmt_bytes(m['largest_layer_output'])} "
                f"| {fmt_bytes(m['predict_new_peak'])} ({m['predict_over_layer_output']:.2f}) "
                f"| {fmt_bytes(m['predict_kept'])} | {fmt_bytes(m['forward_cached_new_peak'])} "
                f"| {fmt_bytes(m['forward_cached_kept'])} |"
            )
    return "\n".join(lines) + "\n"


MEMORY_NOTE = (
    "minimum = parameters + gradients + optimizer state (none) + cached activations (each hidden "
    "layer's output, also the next Linear's input) + logits + x + y. step peak = parameters + "
    "x + y (held before) + the peak of what the step allocates on a fresh model (NumPy: "
    "tracemalloc, which includes a few KiB of Python objects; CUDA: torch.cuda "
    "max_memory_allocated). predict: forward(x, cache=False), its peak allocation and what it "
    "still holds once its output is dropped; cached forward: the same for forward(x), for "
    "contrast (it keeps the activations for backward)."
)


def chart(rows: list[dict[str, Any]], path: Path) -> None:
    """Bars of ms/step over torch eager's, one panel per size, device kind and dtype."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for r in rows:
        if r["ratio_to_torch_eager"] is not None:
            groups.setdefault(_group(r), []).append(r)
    if not groups:
        return
    fig, axes = plt.subplots(
        1, len(groups), figsize=(2.6 * len(groups) + 2, 4.8), squeeze=False, sharey=True
    )
    for ax, ((size, device, dtype), group) in zip(axes[0], groups.items(), strict=True):
        ratios = [r["ratio_to_torch_eager"] for r in group]
        colors = [f"C{METHOD_ORDER.index(r['method'])}" for r in group]
        bars = ax.bar(range(len(group)), ratios, color=colors)
        ax.bar_label(bars, labels=[f"{v:.2g}" for v in ratios], fontsize=7)
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_yscale("log")
        ax.set_xticks(range(len(group)))
        ax.set_xticklabels(
            [f"{r['backend']}\n{r['method']}" for r in group], rotation=90, fontsize=7
        )
        ax.set_title(f"{size} {device} {dtype}", fontsize=9)
    axes[0][0].set_ylabel("ms/step / torch eager ms/step (log)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--sizes", nargs="+", choices=list(SIZES), help="default: S M L (+XL on cuda)"
    )
    parser.add_argument("--backends", nargs="+", choices=pm.BACKENDS, help="default: installed")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--repeats", type=int, help="rounds per size (default: per size)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: few, short rounds")
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results", help="output folder"
    )
    args = parser.parse_args(argv)
    if args.device == "cuda" and not cuda_available():
        parser.error("--device cuda: no CUDA device here (neither torch nor CuPy sees one)")
    args.sizes = args.sizes or [s for s in SIZES if args.device == "cuda" or not SIZES[s].gpu_only]
    gpu_only = [s for s in args.sizes if SIZES[s].gpu_only and args.device == "cpu"]
    if gpu_only:
        parser.error(f"size {', '.join(gpu_only)} is for --device cuda only")
    args.backends = args.backends or default_backends(args.device)
    missing = set(args.backends) - set(pm.installed_backends())
    if missing:
        parser.error(f"not installed: {', '.join(sorted(missing))}")
    if args.device == "cpu" and "cupy" in args.backends:
        parser.error("cupy runs on --device cuda only")
    if args.repeats is not None and args.repeats < 1:
        parser.error("--repeats must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    load_before = os.getloadavg()
    if args.device == "cuda" and has_module("jax"):
        import jax

        # torch and CuPy multiply float32 matrices in full float32 by default, JAX in TF32 on
        # recent GPUs: hold every method to the same arithmetic.
        jax.config.update("jax_default_matmul_precision", "highest")
    warmup, block_s = (1, QUICK_BLOCK_S) if args.quick else (3, BLOCK_S)
    rows, skipped, memory = [], [], []
    for name in args.sizes:
        size = SIZES[name]
        rounds = args.repeats or (QUICK_ROUNDS if args.quick else size.rounds)
        methods, missed = time_size(size, args.backends, args.device, rounds, warmup, block_s)
        rows += results(methods, size.n)
        skipped += missed
        del methods  # free this size's models before the next size's
        gc.collect()
        memory_backend = "numpy" if args.device == "cpu" else "torch"
        if memory_backend in args.backends:
            memory.append(measure_memory(size, memory_backend, args.device))
    report = {
        "machine": machine_info(load_before),
        "config": {
            "device": args.device,
            "sizes": {
                s: {"n": SIZES[s].n, "widths": SIZES[s].widths, "loss": SIZES[s].loss}
                for s in args.sizes
            },
            "backends": args.backends,
            "quick": args.quick,
            "warmup_steps": warmup,
            "block_seconds": block_s,
            "lr": LR,
        },
        "results": rows,
        "skipped": skipped,
        "memory": memory,
        "memory_note": MEMORY_NOTE,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench.json").write_text(json.dumps(report, indent=1) + "\n")
    text = markdown(report)
    (args.out / "bench.md").write_text(text)
    chart(rows, args.out / "bench.png")
    print(text)
    print(f"wrote {args.out}/bench.json, bench.md, bench.png", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
