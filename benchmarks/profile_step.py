"""Where the time of portable_mlp's training step goes: cProfile over many steps.

    python benchmarks/profile_step.py [--sizes S M] [--backends numpy torch] [--steps 300]

prints, per size and backend, the functions with the most time of their own (``tottime``) and
the most time including callees (``cumtime``). The models are those of bench.py (float32, CPU).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats

import bench

import portable_mlp as pm


def profile(size: bench.Size, backend: str, steps: int, top: int) -> str:
    """The top entries of a cProfile of ``steps`` training steps, after a short warm-up."""
    model, loss, opt, x, y = bench.build_pm(size, backend, "cpu", "float32")
    for _ in range(10):
        pm.train_step(model, loss, opt, x, y)
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(steps):
        pm.train_step(model, loss, opt, x, y)
    profiler.disable()
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out).strip_dirs()
    stats.sort_stats("tottime").print_stats(top)
    stats.sort_stats("cumulative").print_stats(top)
    return out.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", nargs="+", choices=["S", "M", "L"], default=["S", "M"])
    parser.add_argument(
        "--backends", nargs="+", choices=bench.CPU_BACKENDS, default=["numpy", "torch"]
    )
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args()
    for name in args.sizes:
        for backend in args.backends:
            print(f"===== {name} {backend}: {args.steps} steps")
            print(profile(bench.SIZES[name], backend, args.steps, args.top))


if __name__ == "__main__":
    main()
