"""Time one data-parallel training step of portable_mlp against PyTorch DDP's, on the same model.

Size M: a global batch of 256 rows split over the ranks, 784-256-256-10, cross-entropy, float32,
plain SGD (lr=0.01). Every rank times, in the same run and round-robin (each round one block of
steps of every method, in a rotated order, so drift of a shared machine hits all alike):

- ``portable_mlp <backend>``: ``pm.train_step`` with a ``DistributedOptimizer`` (one flat
  all-reduce of all gradients inside ``step()``);
- ``torch DDP``: ``torch.nn.parallel.DistributedDataParallel`` over the same layers (its
  bucketed all-reduce overlapped with backward), ``loss.backward()``, ``torch.optim.SGD``;
- ``all-reduce only``: the gradient averaging of one step alone, to give its share of the step;
- ``portable_mlp <backend>, local``: the same step without communication (one rank's rows).

A block's time is the mean over the ranks (they wait for each other at every all-reduce); the
reported figure is the median over rounds of a block's mean step time.

    python benchmarks/distributed.py [--ranks 2] [--backends numpy torch] [--rounds 15]
                                     [--steps 20] [--out DIR]

launches ``--ranks`` processes itself (gloo over loopback, a file rendezvous); under
``torchrun`` it uses the launcher's processes instead. Rank 0 prints a table and, with
``--out``, writes DIR/distributed.json. With two CPU cores and two ranks, each rank has one core:
the figures measure the overhead of the collectives and of each framework, not a speed-up.
Nothing here is a test: it asserts nothing.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

GLOBAL_BATCH, WIDTHS, LR = 256, (784, 256, 256, 10), 0.01
DDP = "torch DDP"


def host_data(rank: int, world: int) -> tuple[np.ndarray, np.ndarray]:
    """This rank's rows of the global batch (the same data as bench.py's M)."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(GLOBAL_BATCH, WIDTHS[0])).astype(np.float32)
    y = rng.integers(0, WIDTHS[-1], GLOBAL_BATCH)
    rows = np.array_split(np.arange(GLOBAL_BATCH), world)[rank]
    return X[rows], y[rows]


def pm_steps(backend: str, rank: int, world: int) -> dict[str, Callable[[], None]]:
    """portable_mlp's data-parallel step, its all-reduce alone, and its local step."""
    import portable_mlp as pm
    from portable_mlp import distributed as dist

    X, y = host_data(rank, world)
    steps: dict[str, Callable[[], None]] = {}
    loss = pm.CrossEntropyLoss()
    for wrapped in (True, False):
        model = pm.MLP(list(WIDTHS), rng=0, backend=backend, dtype="float32")
        dist.broadcast_parameters(model)
        optimizer = pm.SGD(model, lr=LR)
        opt = dist.DistributedOptimizer(optimizer) if wrapped else optimizer
        xb, yb = pm.asarray(X, like=model), pm.asarray(y, like=model)

        def step(model: Any = model, opt: Any = opt, xb: Any = xb, yb: Any = yb) -> None:
            pm.train_step(model, loss, opt, xb, yb)

        steps[f"portable_mlp {backend}" + ("" if wrapped else ", local")] = step
        if wrapped:
            step()
            grads = model.gradients()
            steps[f"all-reduce only ({backend})"] = lambda o=opt, g=grads: o.all_reduce_gradients(g)
    return steps


def ddp_step(rank: int, world: int) -> Callable[[], None]:
    import torch
    from torch.nn.parallel import DistributedDataParallel

    X, y = host_data(rank, world)
    torch.manual_seed(0)
    layers: list[torch.nn.Module] = []
    for i, (p_in, p_out) in enumerate(itertools.pairwise(WIDTHS)):
        if i:
            layers.append(torch.nn.ReLU())
        layers.append(torch.nn.Linear(p_in, p_out))
    model = DistributedDataParallel(torch.nn.Sequential(*layers))  # broadcasts rank 0's weights
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    xb, yb = torch.from_numpy(X), torch.from_numpy(y)
    loss_fn = torch.nn.CrossEntropyLoss()

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        loss_fn(model(xb), yb).backward()
        opt.step()

    return step


def run_rank(args: argparse.Namespace) -> None:
    import torch

    from portable_mlp import distributed as dist

    torch.set_num_threads(1)
    rendezvous = os.environ.get("BENCH_RENDEZVOUS")
    dist.init(init_method=None if rendezvous is None else f"file://{rendezvous}")
    rank, world = dist.rank(), dist.world_size()
    methods: dict[str, Callable[[], None]] = {}
    for backend in args.backends:
        methods.update(pm_steps(backend, rank, world))
    methods[DDP] = ddp_step(rank, world)
    names = list(methods)
    for name in names:  # warm-up
        for _ in range(3):
            methods[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(args.rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            dist.barrier()
            start = time.perf_counter()
            for _ in range(args.steps):
                methods[name]()
            times[name].append(dist.all_reduce_mean((time.perf_counter() - start) / args.steps))
    if rank == 0:
        report(args, times, world)
    dist.shutdown()


def report(args: argparse.Namespace, times: dict[str, list[float]], world: int) -> None:
    import torch

    median = {name: statistics.median(t) for name, t in times.items()}
    ddp = median[DDP]
    rows = []
    for name, t in median.items():
        spread = statistics.quantiles(times[name], n=4) if len(times[name]) > 1 else [t, t, t]
        rows.append(
            {
                "method": name,
                "ms": 1e3 * t,
                "q1_ms": 1e3 * spread[0],
                "q3_ms": 1e3 * spread[2],
                "best_ms": 1e3 * min(times[name]),
            }
        )
    print(
        f"M: global batch {GLOBAL_BATCH} over {world} ranks ({GLOBAL_BATCH // world} rows each), "
        f"{'-'.join(map(str, WIDTHS))}, cross-entropy, float32, SGD; gloo on "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"torch {torch.__version__}, OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', '-')}"
    )
    print(
        f"median (and best, which other processes on a shared machine can only make worse) of "
        f"{args.rounds} rounds of {args.steps} steps, mean over the ranks\n"
    )
    best_ddp = 1e3 * min(times[DDP])
    print(f"{'method':<34} {'ms/step':>9} {'q1-q3':>15} {'x DDP':>7} {'best':>7} {'x DDP':>7}")
    for row in rows:
        print(
            f"{row['method']:<34} {row['ms']:>9.2f} {row['q1_ms']:>7.2f}-{row['q3_ms']:<7.2f} "
            f"{row['ms'] / (1e3 * ddp):>7.2f} {row['best_ms']:>7.2f} "
            f"{row['best_ms'] / best_ddp:>7.2f}"
        )
    for backend in args.backends:
        share = median[f"all-reduce only ({backend})"] / median[f"portable_mlp {backend}"]
        print(f"\nall-reduce share of the portable_mlp {backend} step: {share:.0%}", end="")
    print(
        f"\n\n{world} ranks on {os.cpu_count()} CPU cores measure the overhead of the "
        "collectives and of each framework, not a speed-up."
    )
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        machine = {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "numpy": np.__version__,
            "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE"),
        }
        payload = {"ranks": world, "rows": rows, "machine": machine, "args": vars(args)}
        (out / "distributed.json").write_text(json.dumps(payload, indent=2))


def launch(args: argparse.Namespace) -> int:
    """Start ``--ranks`` processes of this script, joined through a file rendezvous."""
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, WORLD_SIZE=str(args.ranks), BENCH_RENDEZVOUS=f"{tmp}/rdv")
        env.setdefault("GLOO_SOCKET_IFNAME", "lo")
        env.setdefault("OMP_NUM_THREADS", "1")
        procs = [
            subprocess.Popen(
                [sys.executable, __file__, *sys.argv[1:]],
                env=dict(env, RANK=str(r), LOCAL_RANK=str(r)),
            )
            for r in range(args.ranks)
        ]
        return max(p.wait() for p in procs)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--backends", nargs="+", default=["numpy", "torch"])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    if "WORLD_SIZE" not in os.environ:
        return launch(args)
    run_rank(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
