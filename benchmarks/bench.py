"""Time one training step of portable_mlp against PyTorch eager, scikit-learn, ``jax.jit`` and
the GEMM floor, and measure a step's peak memory against its analytic minimum.

    python benchmarks/bench.py --out DIR [--sizes S M L] [--backends numpy torch ...]
                               [--device cpu|cuda] [--repeats N] [--quick]

writes DIR/bench.json (machine-readable, with machine info), DIR/bench.md and DIR/bench.png.
``nox -s bench`` runs it in its own environment. Nothing here is a test: it asserts nothing.

What is timed is in methods.py (the captured step, ``pm.compile_step``, is its own column where
this build has it), how in timing.py, memory in memory.py, the outputs and targets in report.py.

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
import sys
from pathlib import Path
from typing import Any

import memory
import methods
import report
import timing

import portable_mlp as pm


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sizes = methods.SIZES
    parser.add_argument(
        "--sizes", nargs="+", choices=list(sizes), help="default: S M L (+XL on cuda)"
    )
    parser.add_argument("--backends", nargs="+", choices=pm.BACKENDS, help="default: installed")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--repeats", type=int, help="rounds per size (default: per size)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: few, short rounds")
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results", help="output folder"
    )
    args = parser.parse_args(argv)
    here = methods.backends_on(args.device)
    if not here:
        parser.error(f"--device {args.device}: no installed backend has such a device here")
    args.sizes = args.sizes or [s for s in sizes if args.device == "cuda" or not sizes[s].gpu_only]
    gpu_only = [s for s in args.sizes if sizes[s].gpu_only and args.device == "cpu"]
    if gpu_only:
        parser.error(f"size {', '.join(gpu_only)} is for --device cuda only")
    args.backends = args.backends or here
    absent = set(args.backends) - set(pm.installed_backends())
    if absent:
        parser.error(f"not installed: {', '.join(sorted(absent))}")
    missing = [b for b in args.backends if b not in here]
    if missing:
        parser.error(
            f"no {args.device} device for {', '.join(missing)} here "
            f"(backends with one: {', '.join(here)})"
        )
    if args.repeats is not None and args.repeats < 1:
        parser.error("--repeats must be >= 1")
    return args


def run(args: argparse.Namespace, warmup: int, block_s: float) -> dict[str, list[Any]]:
    """Time every size (one after the other, its models freed before the next) and measure its
    memory; the rows, skipped methods and memory figures."""
    out: dict[str, list[Any]] = {"results": [], "skipped": [], "memory": []}
    memory_at = memory.memory_placement(args.backends, args.device)
    for name in args.sizes:
        size = methods.SIZES[name]
        rounds = args.repeats or (timing.QUICK_ROUNDS if args.quick else size.rounds)
        plan = methods.planned(size, args.backends, args.device)
        where = {"size": name, "device": args.device}
        built, skipped = timing.build(plan, where, warmup, block_s)
        print(f"{name}: {len(built)} methods x {rounds} rounds", file=sys.stderr)
        timing.interleave(built, rounds, settle=args.device == "cpu")
        out["results"] += timing.results(built, size.n)
        out["skipped"] += skipped
        del built
        gc.collect()
        if memory_at is not None:
            out["memory"].append(memory.measure_memory(size, memory_at, args.device))
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    load_before = os.getloadavg()
    methods.full_precision_matmuls(args.device)
    quick = (timing.QUICK_WARMUP, timing.QUICK_BLOCK_S)
    warmup, block_s = quick if args.quick else (timing.WARMUP, timing.BLOCK_S)
    measured = run(args, warmup, block_s)
    sizes = {s: methods.SIZES[s] for s in args.sizes}
    config = {
        "device": args.device,
        "sizes": {s: {"n": z.n, "widths": z.widths, "loss": z.loss} for s, z in sizes.items()},
        "backends": args.backends,
        "quick": args.quick,
        "warmup_steps": warmup,
        "block_seconds": block_s,
        "lr": methods.LR,
        "captured_step": methods.captured_available(),
    }
    machine = report.machine_info(load_before)
    full = {"machine": machine, "config": config, **measured, "memory_note": memory.MEMORY_NOTE}
    text = report.write(full, args.out)
    print(text)
    print(f"wrote {args.out}/bench.json, bench.md, bench.png", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
