"""Where the time of portable_mlp's training step goes: cProfile over many steps.

    python benchmarks/profile_step.py [--sizes S M] [--backends numpy torch] [--steps 300]
                                      [--captured]

prints, per size and backend, the functions with the most time of their own (``tottime``) and
the most time including callees (``cumtime``). The models are those of bench.py (float32, CPU);
``--captured`` profiles the captured step (``pm.compile_step``) instead of ``pm.train_step``.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
from collections.abc import Callable
from typing import Any

from methods import SIZES, Size, build_pm, captured_available, find_placement

import portable_mlp as pm
from portable_mlp._backend import Placement


def step_of(size: Size, p: Placement, captured: bool) -> Callable[[], Any]:
    model, loss, opt, x, y = build_pm(size, p)
    if captured:
        step = pm.compile_step(model, loss, opt)
        return lambda: step(x, y)
    return lambda: pm.train_step(model, loss, opt, x, y)


def profile(size: Size, p: Placement, steps: int, top: int, captured: bool) -> str:
    """The top entries of a cProfile of ``steps`` training steps, after a short warm-up."""
    step = step_of(size, p, captured)
    for _ in range(10):
        value = step()
    p.sync(value)
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(steps):
        value = step()
    p.sync(value)  # queued device work (JAX, CUDA) finishes inside the profile
    profiler.disable()
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out).strip_dirs()
    stats.sort_stats("tottime").print_stats(top)
    stats.sort_stats("cumulative").print_stats(top)
    return out.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", nargs="+", choices=["S", "M", "L"], default=["S", "M"])
    parser.add_argument("--backends", nargs="+", choices=pm.BACKENDS, default=["numpy", "torch"])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--captured", action="store_true", help="profile pm.compile_step's step")
    args = parser.parse_args()
    if args.captured and not captured_available():
        parser.error("--captured: pm.compile_step is not available in this build")
    found = {b: find_placement(b, "cpu", "float32") for b in args.backends}
    missing = [b for b, p in found.items() if p is None]
    if missing:
        parser.error(f"no CPU placement for {', '.join(missing)} here")
    placements = [p for p in found.values() if p is not None]
    for name in args.sizes:
        for p in placements:
            print(f"===== {name} {p.describe()}: {args.steps} steps")
            print(profile(SIZES[name], p, args.steps, top=args.top, captured=args.captured))


if __name__ == "__main__":
    main()
