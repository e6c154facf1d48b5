"""Time ``pm.compile_step`` against the eager ``pm.train_step`` and each backend's yardstick.

    PYTHONPATH=src python benchmarks/compiled_step.py [--sizes S M] [--device cpu|cuda]
                                                      [--backends numpy torch ...] [--rounds N]

The sizes, models (float32, plain SGD), yardsticks and the round-robin timing are bench.py's:
the hand-written NumPy loop of the same math for NumPy and array-api-strict, PyTorch eager
(nn.Linear, autograd, torch.optim.SGD) for torch and CuPy, ``jax.jit`` of a value-and-grad step
for JAX. Each method's time is the median over rounds of its mean step time in a block, as wall
time and as the process's CPU time (all its threads; steadier where other processes share the
cores, and meaningful with one thread per library: OMP_NUM_THREADS=1 and so on); ratios are to
the yardstick in the same run.
Prints a Markdown table; nothing here is a test.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from typing import Any

import bench

import portable_mlp as pm

COMPILED = "compile_step"
YARDSTICK = {
    "numpy": bench.LOOP,
    "array_api_strict": bench.LOOP,
    "torch": bench.EAGER,
    "cupy": bench.EAGER,
    "jax": bench.JIT,
}


def compiled_method(size: bench.Size, backend: str, device: str) -> bench.Method:
    model, loss, opt, x, y = bench.build_pm(size, backend, device, "float32")
    step = pm.compile_step(model, loss, opt)
    sync = bench.device_sync(backend, device)
    return bench.Method(
        size.name,
        device,
        "float32",
        backend,
        COMPILED,
        step=lambda: step(x, y),
        sync=(lambda v: sync((v, model.parameters()))) if backend == "jax" else sync,
    )


def methods(size: bench.Size, backends: list[str], device: str) -> list[bench.Method]:
    """Every backend's eager and compiled step, and the yardsticks they are held to."""
    factories: dict[str, Any] = {}
    for backend in backends:
        ref = YARDSTICK[backend]
        if ref == bench.LOOP:
            factories[ref] = lambda: bench.numpy_loop_method(size, "float32")
        elif ref == bench.EAGER:
            factories[ref] = lambda: bench.torch_eager_method(size, device, "float32")
        else:
            factories[ref] = lambda: bench.jax_jit_method(size, device, "float32")
        factories[f"{backend} train_step"] = lambda b=backend: bench.pm_method(
            size, b, device, "float32"
        )
        factories[f"{backend} {COMPILED}"] = lambda b=backend: compiled_method(size, b, device)
    return [make() for make in factories.values()]


def time_block(m: bench.Method, cpu: dict[str, list[float]]) -> None:
    """bench.time_block, also recording the block's process CPU time per step in ``cpu``."""
    c0 = time.process_time()
    bench.time_block(m)
    steps = m.block + 1  # time_block runs one untimed step first
    cpu.setdefault(f"{m.backend} {m.method}", []).append((time.process_time() - c0) / steps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", nargs="+", choices=list(bench.SIZES), default=["S", "M"])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--backends", nargs="+", choices=list(YARDSTICK), default=None)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--block", type=float, default=bench.BLOCK_S, help="seconds per block")
    args = parser.parse_args()
    backends = args.backends or bench.default_backends(args.device)
    threads = {k: os.environ.get(k, "-") for k in ("OMP_NUM_THREADS", "OPENBLAS_CORETYPE")}
    print(f"float32 on {args.device}, {args.rounds} rounds, {os.cpu_count()} cores; {threads}\n")
    print("| size | backend | method | wall ms/step | ratio | CPU ms/step | ratio |")
    print("|---|---|---|---:|---:|---:|---:|")
    for name in args.sizes:
        size = bench.SIZES[name]
        timed = methods(size, backends, args.device)
        for m in timed:
            bench.prepare(m, warmup=3, block_s=args.block)
        cpu: dict[str, list[float]] = {}
        for r in range(args.rounds):
            k = r % len(timed)
            for m in timed[k:] + timed[:k]:
                time_block(m, cpu)
        refs = {m.method: m for m in timed if m.method in YARDSTICK.values()}
        for m in timed:
            yardstick = m.method in refs
            ref = m if yardstick else refs[YARDSTICK[m.backend]]
            wall, ref_wall = statistics.median(m.times), statistics.median(ref.times)
            own = statistics.median(cpu[f"{m.backend} {m.method}"])
            ref_cpu = statistics.median(cpu[f"{ref.backend} {ref.method}"])
            label = m.method if yardstick else f"{m.backend} {m.method}"
            print(
                f"| {name} | {m.backend} | {label} | {wall * 1e3:.4f} | {wall / ref_wall:.2f}x "
                f"| {own * 1e3:.4f} | {own / ref_cpu:.2f}x |"
            )


if __name__ == "__main__":
    main()
