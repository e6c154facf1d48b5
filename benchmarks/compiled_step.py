"""Time ``pm.compile_step`` against the eager ``pm.train_step`` and each backend's yardstick.

    PYTHONPATH=src python benchmarks/compiled_step.py [--sizes S M] [--backends numpy torch ...]
                                                      [--rounds 30] [--block 0.05]

S is n=64, 30-16-8-1 with BCE; M is n=256, 784-256-256-10 with cross-entropy; float32, plain
SGD (lr=0.01). Yardsticks: a hand-written NumPy loop of the same math (NumPy and
array-api-strict), PyTorch eager (nn.Linear, autograd, torch.optim.SGD) for torch, and
``jax.jit`` of a value-and-grad step for JAX. All methods of a size are built first and timed
round-robin in blocks (the order rotating each round), so the drift of a shared machine hits
them alike; a method's time is the median over rounds of its mean step time in a block, and
ratios are to the yardstick of the same backend in the same run. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import itertools
import math
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np

import portable_mlp as pm

LR = 0.01
SIZES = {
    "S": (64, (30, 16, 8, 1), "bce"),
    "M": (256, (784, 256, 256, 10), "ce"),
}


def data(size: str) -> tuple[np.ndarray, np.ndarray]:
    n, widths, loss = SIZES[size]
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, widths[0])).astype(np.float32)
    if loss == "bce":
        return x, rng.integers(0, 2, size=(n, 1)).astype(np.float32)
    return x, rng.integers(0, widths[-1], size=n)


def pm_steps(size: str, backend: str) -> dict[str, Callable[[], Any]]:
    """The eager and the compiled step of the same model (two copies, one per method)."""
    _, widths, loss_name = SIZES[size]
    xh, yh = data(size)
    out = {}
    for method in ("train_step", "compile_step"):
        model = pm.MLP(widths, rng=0, backend=backend, dtype="float32")
        loss = pm.BCEWithLogitsLoss() if loss_name == "bce" else pm.CrossEntropyLoss()
        opt = pm.SGD(model, lr=LR)
        x, y = pm.asarray(xh, like=model), pm.asarray(yh, like=model)
        if method == "train_step":
            out[method] = lambda m=model, L=loss, o=opt, x=x, y=y: pm.train_step(m, L, o, x, y)
        else:
            step = pm.compile_step(model, loss, opt)
            out[method] = lambda s=step, x=x, y=y: s(x, y)
    return out


def numpy_loop(size: str) -> Callable[[], Any]:
    """The step written by hand in NumPy: ReLU MLP, stable BCE or log-softmax CE, plain SGD."""
    n, widths, loss_name = SIZES[size]
    rng = np.random.default_rng(0)
    W = [
        (rng.normal(size=(a, b)) / math.sqrt(a)).astype(np.float32)
        for a, b in itertools.pairwise(widths)
    ]
    b = [np.zeros(w.shape[1], np.float32) for w in W]
    x, y = data(size)
    target = y if loss_name == "bce" else np.eye(widths[-1], dtype=np.float32)[y]
    last = len(W) - 1

    def step() -> Any:
        h = [x]
        for i in range(last + 1):
            z = h[i] @ W[i] + b[i]
            h.append(np.maximum(z, 0) if i < last else z)
        z = h[-1]
        if loss_name == "bce":
            e = np.exp(-np.abs(z))
            value = (np.maximum(z, 0) - z * target + np.log1p(e)).mean()
            dz = (np.where(z >= 0, 1.0, e) / (1.0 + e) - target) / z.size
        else:
            s = z - z.max(axis=1, keepdims=True)
            logp = s - np.log(np.exp(s).sum(axis=1, keepdims=True))
            value = -(target * logp).sum() / n
            dz = (np.exp(logp) - target) / n
        for i in range(last, -1, -1):
            dW, db = h[i].T @ dz, dz.sum(axis=0)
            if i:
                dz = (dz @ W[i].T) * (h[i] > 0)
            W[i] -= LR * dW
            b[i] -= LR * db
        return value

    return step


def torch_eager(size: str) -> Callable[[], Any]:
    import torch

    _, widths, loss_name = SIZES[size]
    torch.manual_seed(0)
    layers: list[Any] = []
    for i, (a, b) in enumerate(itertools.pairwise(widths)):
        layers += [torch.nn.ReLU()] if i else []
        layers.append(torch.nn.Linear(a, b))
    net = torch.nn.Sequential(*layers)
    loss_fn = torch.nn.BCEWithLogitsLoss() if loss_name == "bce" else torch.nn.CrossEntropyLoss()
    opt = torch.optim.SGD(net.parameters(), lr=LR)
    xh, yh = data(size)
    x, y = torch.as_tensor(xh), torch.as_tensor(yh)

    def step() -> Any:
        opt.zero_grad(set_to_none=True)
        value = loss_fn(net(x), y)
        value.backward()
        opt.step()
        return value

    return step


def jax_jit(size: str) -> Callable[[], Any]:
    import jax
    import jax.numpy as jnp

    _, widths, loss_name = SIZES[size]
    rng = np.random.default_rng(0)
    params = [
        (jnp.asarray((rng.normal(size=(a, b)) / math.sqrt(a)).astype(np.float32)), jnp.zeros(b))
        for a, b in itertools.pairwise(widths)
    ]
    xh, yh = data(size)
    x, y = jnp.asarray(xh), jnp.asarray(yh)

    def loss_fn(params: Any) -> Any:
        h = x
        for i, (W, b) in enumerate(params):
            h = h @ W + b
            h = jax.nn.relu(h) if i < len(params) - 1 else h
        if loss_name == "bce":
            return jnp.mean(jnp.maximum(h, 0) - h * y + jnp.log1p(jnp.exp(-jnp.abs(h))))
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(h), y[:, None], axis=1))

    @jax.jit
    def update(params: Any) -> Any:
        value, grads = jax.value_and_grad(loss_fn)(params)
        return jax.tree_util.tree_map(lambda p, g: p - LR * g, params, grads), value

    state = [params]

    def step() -> Any:
        state[0], value = update(state[0])
        return value

    return step


def methods(size: str, backends: list[str]) -> dict[str, tuple[str, Callable[[], Any]]]:
    """name -> (yardstick name, step) for every method; yardsticks point to themselves."""
    out: dict[str, tuple[str, Callable[[], Any]]] = {}
    for backend in backends:
        ref = {
            "numpy": "numpy loop",
            "array_api_strict": "numpy loop",
            "torch": "torch eager",
            "jax": "jax.jit",
        }[backend]
        if ref not in out:
            factory = {"numpy loop": numpy_loop, "torch eager": torch_eager, "jax.jit": jax_jit}
            out[ref] = (ref, factory[ref](size))
        for method, step in pm_steps(size, backend).items():
            out[f"{backend} {method}"] = (ref, step)
    return out


def wait(value: Any) -> None:
    """JAX dispatches asynchronously: wait for the step's loss (and so for the step)."""
    block = getattr(value, "block_until_ready", None)
    if block is not None:
        block()


def time_all(
    timed: dict[str, tuple[str, Callable[[], Any]]], rounds: int, block_s: float
) -> dict[str, float]:
    blocks = {}
    for name, (_, step) in timed.items():  # warm-up (compiles), then a block size per method
        for _ in range(3):
            wait(step())
        t = time.perf_counter()
        count = 0
        while time.perf_counter() - t < block_s / 2:
            wait(step())
            count += 1
        blocks[name] = max(1, int(count * block_s / (time.perf_counter() - t)))
    times: dict[str, list[float]] = {name: [] for name in timed}
    names = list(timed)
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            step, k = timed[name][1], blocks[name]
            t = time.perf_counter()
            for _ in range(k):
                value = step()
            wait(value)
            times[name].append((time.perf_counter() - t) / k)
    return {name: statistics.median(ts) for name, ts in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", nargs="+", choices=list(SIZES), default=list(SIZES))
    parser.add_argument(
        "--backends",
        nargs="+",
        default=["numpy", "array_api_strict", "torch", "jax"],
        choices=["numpy", "array_api_strict", "torch", "jax"],
    )
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--block", type=float, default=0.05, help="seconds per timed block")
    args = parser.parse_args()
    threads = {k: os.environ.get(k, "-") for k in ("OMP_NUM_THREADS", "OPENBLAS_CORETYPE")}
    print(f"float32, CPU ({os.cpu_count()} cores), {args.rounds} rounds; {threads}\n")
    print("| size | method | ms/step | vs yardstick |")
    print("|---|---|---:|---:|")
    for size in args.sizes:
        timed = methods(size, args.backends)
        med = time_all(timed, args.rounds, args.block)
        for name, (ref, _) in timed.items():
            print(f"| {size} | {name} | {med[name] * 1e3:.4f} | {med[name] / med[ref]:.2f}x |")


if __name__ == "__main__":
    main()
