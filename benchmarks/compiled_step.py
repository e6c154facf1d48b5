"""Time ``pm.compile_step`` against the eager ``pm.train_step`` and each backend's yardstick.

    PYTHONPATH=src python benchmarks/compiled_step.py [--sizes S M] [--device cpu|cuda]
                                                      [--backends numpy torch ...] [--rounds N]

The sizes, models (float32, plain SGD), yardsticks and the round-robin timing are bench.py's
(methods.py, timing.py): the hand-written NumPy loop of the same math for NumPy and
array-api-strict, PyTorch eager (nn.Linear, autograd, torch.optim.SGD) for torch and CuPy,
``jax.jit`` of a value-and-grad step for JAX. Each method's time is the median over rounds of
its mean step time in a block, as wall time and as the process's CPU time (all its threads;
steadier where other processes share the cores, and meaningful with one thread per library:
OMP_NUM_THREADS=1 and so on); ratios are to the yardstick in the same run.
Prints a Markdown table; nothing here is a test.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import methods
import timing

YARDSTICK = {
    "numpy": (methods.LOOP, "numpy"),
    "array_api_strict": (methods.LOOP, "numpy"),
    "torch": (methods.EAGER, "torch"),
    "cupy": (methods.EAGER, "torch"),
    "jax": (methods.JIT, "jax"),
}
MAKERS = {
    methods.LOOP: methods.numpy_loop_method,
    methods.EAGER: methods.torch_eager_method,
    methods.JIT: methods.jax_jit_method,
    methods.PM: methods.pm_method,
    methods.CAPTURED: methods.captured_method,
}


def planned(size: methods.Size, backends: list[str], kind: str) -> list[methods.Method]:
    """Every backend's eager and captured step, and the yardsticks they are held to."""
    wanted: list[tuple[str, str]] = []
    for backend in backends:
        for entry in (YARDSTICK[backend], (methods.PM, backend), (methods.CAPTURED, backend)):
            if entry not in wanted:
                wanted.append(entry)
    built = []
    for method, backend in wanted:
        p = methods.find_placement(backend, kind, "float32")
        if p is None:
            raise SystemExit(f"no {kind} placement for {backend} here")
        built.append(MAKERS[method](size, p, kind))
    return built


def time_block(m: methods.Method, cpu: dict[int, list[float]]) -> None:
    """timing.time_block, also recording the block's process CPU time per step in ``cpu``."""
    c0 = time.process_time()
    timing.time_block(m)
    steps = m.block + 1  # time_block runs one untimed step first
    cpu.setdefault(id(m), []).append((time.process_time() - c0) / steps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", nargs="+", choices=list(methods.SIZES), default=["S", "M"])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--backends", nargs="+", choices=list(YARDSTICK), default=["numpy"])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--block", type=float, default=timing.BLOCK_S, help="seconds per block")
    args = parser.parse_args()
    env = {k: os.environ.get(k, "-") for k in ("OMP_NUM_THREADS", "OPENBLAS_CORETYPE")}
    print(f"float32 on {args.device}, {args.rounds} rounds, {os.cpu_count()} cores; {env}\n")
    print("| size | backend | method | wall ms/step | ratio | CPU ms/step | ratio |")
    print("|---|---|---|---:|---:|---:|---:|")
    for name in args.sizes:
        timed = planned(methods.SIZES[name], args.backends, args.device)
        for m in timed:
            timing.prepare(m, warmup=timing.WARMUP, block_s=args.block)
        cpu: dict[int, list[float]] = {}
        for r in range(args.rounds):
            k = r % len(timed)
            for m in timed[k:] + timed[:k]:
                time_block(m, cpu)
        refs = {(m.method, m.backend): m for m in timed}
        for m in timed:
            ours = m.method in (methods.PM, methods.CAPTURED)
            ref = refs[YARDSTICK[m.backend]] if ours else m
            wall, ref_wall = statistics.median(m.times), statistics.median(ref.times)
            own, ref_cpu = statistics.median(cpu[id(m)]), statistics.median(cpu[id(ref)])
            print(
                f"| {name} | {m.backend} | {m.method} | {wall * 1e3:.4f} | "
                f"{wall / ref_wall:.3f}x | {own * 1e3:.4f} | {own / ref_cpu:.3f}x |",
                flush=True,
            )


if __name__ == "__main__":
    main()
