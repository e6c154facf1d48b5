"""One rank of the multi-process tests in test_distributed.py (run as a script, never collected).

``python distributed_worker.py OUT [RDV]``: joins the process group (``RDV``: a file rendezvous,
with RANK and WORLD_SIZE in the environment; without it, torchrun's environment), trains the
scenarios of :data:`SCENARIOS` and :data:`FIT_SCENARIOS` (those named in ``$SCENARIOS``,
comma-separated, if set) data-parallel and writes what the test compares to
``OUT/rank<r>.npz``. The single-process reference is computed by the test itself, from the same
functions. ``$TORCH_DEVICE`` puts the
torch models on another device (``cuda``), ``$DIST_BACKEND`` picks torch.distributed's backend.
"""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np

import portable_mlp as pm
from portable_mlp import distributed as dist

N, FEATURES, CLASSES = 255, 5, 3  # 255 rows: uneven shards, and a short last batch
BATCH, EPOCHS, ALPHA, SEED = 64, 2, 0.01, 3

# (name, backend, optimizer, how the rows reach the optimizer)
SCENARIOS = [
    ("numpy-sgd", "numpy", "sgd", "sampler"),
    ("numpy-adam", "numpy", "adam", "sampler"),
    ("torch-sgd", "torch", "sgd", "sampler"),
    ("torch-adam", "torch", "adam", "sampler"),
    ("strict-adam", "array_api_strict", "adam", "sampler"),
    ("numpy-sgd-n_local", "numpy", "sgd", "n_local"),
]


# pm.fit and the estimator, which find the process group themselves (numpy, float64).
FIT_SCENARIOS = [
    "fit-classifier",
    "fit-unseeded",
    "fit-stopping",
    "fit-validation",
    "fit-diverging",
]


def data() -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    rng = np.random.default_rng(7)
    return rng.normal(size=(N, FEATURES)), rng.integers(0, CLASSES, N)


def make(
    backend: str, optimizer: str, seed: int, device: str | None = None
) -> tuple[pm.Module, pm.optim.Optimizer]:
    model = pm.MLP(
        [FEATURES, 16, CLASSES], rng=seed, backend=backend, device=device, dtype="float64"
    )
    if optimizer == "sgd":
        return model, pm.SGD(model, lr=0.1, momentum=0.9, nesterov=True)
    return model, pm.Adam(model, lr=0.01)


def params(model: pm.Module) -> dict[str, np.ndarray[Any, Any]]:
    return {k: pm.to_numpy(v) for k, v in model.parameters().items()}


def train(
    model: pm.Module,
    optimizer: pm.optim.Optimizer | dist.DistributedOptimizer,
    sampler: dist.DistributedSampler,
    rows_by: str,
    alpha: float,
) -> list[float]:
    """The documented loop; returns each epoch's mean loss (all-reduced: equal on every rank)."""
    X, y = data()
    loss = pm.CrossEntropyLoss()
    curve = []
    for epoch in range(EPOCHS):
        sampler.set_epoch(epoch)
        total, rows = 0.0, 0
        for idx in sampler:
            xb, yb = pm.asarray(X[idx], like=model), pm.asarray(y[idx], like=model)
            if rows_by == "sampler":
                value = pm.train_step(model, loss, optimizer, xb, yb, alpha=alpha)
            else:  # the explicit form, for loops that run the step themselves
                value = loss.forward(model.forward(xb), yb)
                model.backward(loss.backward(), input_grad=False)
                optimizer.step(n_local=len(idx))
            total, rows = total + float(pm.to_numpy(value)) * len(idx), rows + len(idx)
        curve.append(dist.all_reduce_mean(total / rows, weight=rows))
    return curve


def fit_scenario(name: str) -> dict[str, Any]:
    """One of :data:`FIT_SCENARIOS`, as its script would run it in one process or under
    torchrun (the same code): what the test compares."""
    X, y = data()
    if name == "fit-diverging":  # the first update overflows: every rank must raise alike
        model, _ = make("numpy", "sgd", seed=SEED)
        opt = pm.SGD(model, lr=1e300)
        Xd, yd = pm.asarray(X, like=model), pm.asarray(y, like=model)
        try:
            pm.fit(model, pm.CrossEntropyLoss(), opt, Xd, yd, epochs=2, batch_size=BATCH, rng=0)
            message = "trained"
        except pm.TrainingError as exc:
            message = str(exc)
        return {"error": np.asarray(message), **{f"end/{k}": v for k, v in params(model).items()}}
    kwargs: dict[str, Any] = {"max_iter": 3, "random_state": SEED, "alpha": ALPHA}
    if name == "fit-unseeded":  # rank 0's seed, drawn and shared by the estimator
        kwargs.update(random_state=None, max_iter=2)
    elif name == "fit-stopping":  # sklearn's rule on the training loss, summed over the ranks
        kwargs.update(max_iter=200, tol=2e-2, n_iter_no_change=2, learning_rate_init=0.02)
    elif name == "fit-validation":  # on a validation split drawn alike on every rank
        kwargs.update(max_iter=200, early_stopping=True, n_iter_no_change=2, tol=1e-2)
    clf = pm.MLPClassifier((16,), batch_size=BATCH, dtype="float64", **kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", pm.ConvergenceWarning)
        clf.fit(X, y)
    result = {f"end/{k}": v for k, v in params(clf.model_).items()}
    result["n_iter"] = np.asarray(clf.n_iter_)
    result["curve"] = np.asarray(clf.loss_curve_)
    if clf.validation_scores_ is not None:
        result["validation"] = np.asarray(clf.validation_scores_)
    return result


def main(out: Path, rendezvous: str | None) -> None:
    import torch

    torch.set_num_threads(1)
    joined = dist.init(
        os.environ.get("DIST_BACKEND"),  # gloo or nccl; default: gloo, and NCCL for CUDA
        init_method=None if rendezvous is None else f"file://{rendezvous}",
    )
    assert joined and dist.is_initialized()
    r, world = dist.rank(), dist.world_size()
    result: dict[str, Any] = {"world": world}
    chosen = os.environ.get("SCENARIOS")
    for name, backend, opt_name, rows_by in SCENARIOS:
        if chosen and name not in chosen.split(","):
            continue
        # A different seed on every rank: broadcast_parameters must make them rank 0's.
        device = os.environ.get("TORCH_DEVICE") if backend == "torch" else None
        model, optimizer = make(backend, opt_name, seed=100 + r, device=device)
        dist.broadcast_parameters(model)
        for key, value in params(model).items():
            result[f"{name}/start/{key}"] = value
        sampler = dist.DistributedSampler(N, BATCH, seed=SEED)
        wrapped = dist.DistributedOptimizer(optimizer, sampler=sampler)
        alpha = ALPHA if rows_by == "sampler" else 0.0
        # The L2 term: alpha / world_size on each rank sums to alpha over the global batch.
        curve = train(model, wrapped, sampler, rows_by, alpha / world)
        result[f"{name}/curve"] = np.asarray(curve)
        for key, value in params(model).items():
            result[f"{name}/end/{key}"] = value
    for name in FIT_SCENARIOS:
        if not chosen or name in chosen.split(","):
            for key, value in fit_scenario(name).items():
                result[f"{name}/{key}"] = value
    try:  # models that differ between ranks: refused on every rank, not a hang
        dist.broadcast_parameters(pm.MLP([FEATURES, 8 + r, CLASSES], rng=0))
        result["mismatch"] = np.asarray("broadcast")
    except ValueError as exc:
        result["mismatch"] = np.asarray(str(exc).partition(" (rank")[0])
    try:  # another shuffle seed on every rank: refused on every rank, before any step
        model, optimizer = make("numpy", "sgd", seed=0)
        Xd, yd = (pm.asarray(a, like=model) for a in data())
        pm.fit(model, pm.CrossEntropyLoss(), optimizer, Xd, yd, epochs=1, batch_size=BATCH, rng=r)
        result["fit-mismatch"] = np.asarray("trained")
    except ValueError as exc:
        result["fit-mismatch"] = np.asarray(str(exc).partition(" (rank")[0])
    result["seed"] = np.asarray(dist.shared_seed())  # drawn on rank 0, equal on every rank
    result["mean"] = np.asarray(dist.all_reduce_mean(float(r + 1), weight=r + 1))
    result["means"] = np.asarray(dist.all_reduce_mean([r, 10.0 * r]))
    result["sums"] = np.asarray(dist.all_reduce_sum([r, 1.0]))
    np.savez(out / f"rank{r}.npz", **result)
    dist.shutdown()


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else None)
