"""Where the JAX captured step's time goes, against ``jax.jit`` of a value-and-grad step.

    PYTHONPATH=src python benchmarks/jax_step_parts.py [--sizes S M] [--rounds 15]

For each size (bench.py's models: float32, plain SGD, CPU) it times, round-robin in blocks
(medians over rounds, ratios to ``jax.jit`` in the same run):

- ``jax.jit``: the yardstick (methods.jax_jit_method);
- ``captured step``: ``pm.compile_step``'s step, everything included;
- ``compiled call``: the step's pure function alone, jitted, called with the arrays the step
  would pass (no input checks, nothing handed back to the model), returning the gradients one
  array each, or packed into one array (as the step does for a model of at most
  ``_PACKED_GRADIENTS_MAX`` parameters: ``model.gradients()`` unpacks them when read);
- an ablation the step's contract does not allow, to size what the gradients cost: the same
  function returning no gradients.

The difference between the captured step and its compiled call is Python around the call;
between the calls, the gradient outputs. Prints a Markdown table; nothing here is a test.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import methods

import portable_mlp as pm
from portable_mlp.compiled import StepPlan


def compiled_call(size: methods.Size, p: Any, outputs: str) -> Callable[[], Any]:
    """The captured step's pure function, jitted with parameters, state and count donated as
    ``compile_step`` does; ``outputs``: "gradients" (one array each), "packed" or "none"."""
    model, loss, opt, x, y = methods.build_pm(size, p)
    plan = StepPlan(model, loss, opt, 0.0)

    def function(*args: Any) -> Any:
        params, state, count, grads, value = plan.captured_step(*args)
        if outputs == "none":
            grads = []
        elif outputs == "packed":
            grads = [jnp.concatenate([g.reshape(-1) for g in grads])]
        return params, state, count, grads, value

    jitted = jax.jit(function, donate_argnums=(0, 1, 3))
    lr, steps = p.asarray(methods.LR), p.zeros(())
    held = {"params": plan.params(), "state": opt.state, "steps": steps}

    def call() -> Any:
        params, state, count, _, value = jitted(
            held["params"], held["state"], lr, held["steps"], x, y
        )
        held["params"], held["state"], held["steps"] = params, state, count
        return value

    return call


def methods_of(size: methods.Size, p: Any) -> dict[str, Callable[[], Any]]:
    jit = methods.jax_jit_method(size, p, "cpu")
    captured = methods.captured_method(size, p, "cpu")
    return {
        "jax.jit": jit.step,
        "captured step": captured.step,
        "compiled call, gradients one by one": compiled_call(size, p, "gradients"),
        "compiled call, gradients packed": compiled_call(size, p, "packed"),
        "ablation: no gradients out": compiled_call(size, p, "none"),
    }


def block(step: Callable[[], Any], n: int) -> float:
    """Mean seconds per step over ``n`` steps, waiting for the last one's loss (one program's
    outputs are ready together)."""
    t0 = time.perf_counter()
    for _ in range(n):
        out = step()
    jax.block_until_ready(out)
    return (time.perf_counter() - t0) / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", nargs="+", choices=["S", "M", "L"], default=["S", "M"])
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    p = pm.placement("jax", "cpu", "float32")
    print(f"JAX {jax.__version__}, {jax.devices()[0].device_kind}, float32, us/step (median)\n")
    print("| size | method | us/step | x jax.jit |\n|---|---|---:|---:|")
    for name in args.sizes:
        size = methods.SIZES[name]
        steps = methods_of(size, p)
        for step in steps.values():  # compile, warm caches, size the blocks
            for _ in range(3):
                jax.block_until_ready(step())
        n = {k: max(1, round(0.05 / block(s, 5))) for k, s in steps.items()}
        times: dict[str, list[float]] = {k: [] for k in steps}
        for r in range(args.rounds):
            order = list(steps)[r % len(steps) :] + list(steps)[: r % len(steps)]
            for k in order:
                times[k].append(block(steps[k], n[k]))
        base = statistics.median(times["jax.jit"])
        for k, t in times.items():
            median = statistics.median(t)
            print(f"| {name} | {k} | {median * 1e6:.1f} | {median / base:.2f} |")


if __name__ == "__main__":
    main()
