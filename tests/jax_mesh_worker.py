"""The JAX mesh test of test_distributed.py, run as a script (never collected).

``XLA_FLAGS=--xla_force_host_platform_device_count=2 python jax_mesh_worker.py OUT``: trains the
same model on a two-device mesh (batches split with ``shard_batch``) and on one device, and
writes both models' parameters and what it saw of the placements to ``OUT/mesh.npz``. The flag
must be set before JAX is imported, hence a process of its own.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import jax
import numpy as np

jax.config.update("jax_enable_x64", True)

import portable_mlp as pm  # noqa: E402
from portable_mlp import distributed as dist  # noqa: E402

N, FEATURES, CLASSES, ALPHA = 127, 5, 3, 0.01


def run(device: Any, optimizer: str) -> tuple[pm.Module, dict[str, Any]]:
    rng = np.random.default_rng(7)
    X, y = rng.normal(size=(N, FEATURES)), rng.integers(0, CLASSES, N)
    model = pm.MLP([FEATURES, 16, CLASSES], rng=0, backend="jax", device=device, dtype="float64")
    opt = (
        pm.SGD(model, lr=0.1, momentum=0.9)
        if optimizer == "sgd"
        else pm.Adam(model, lr=0.01, weight_decay=0.001)
    )
    loss = pm.CrossEntropyLoss()
    seen: dict[str, Any] = {}
    # Two batches of 64 rows split over the 2 devices, then one of 63 rows that stays whole.
    for s, e in [(0, 64), (63, 127), (64, 127)]:
        xb = dist.shard_batch(pm.asarray(X[s:e], like=model), like=model)
        yb = dist.shard_batch(pm.asarray(y[s:e], like=model), like=model)
        seen.setdefault("x_shards", []).append(len(xb.addressable_shards))
        seen.setdefault("x_shard_rows", []).append(xb.addressable_shards[0].data.shape[0])
        value = pm.train_step(model, loss, opt, xb, yb, alpha=ALPHA)
        # One collective program at a time: XLA's CPU rendezvous aborts with several in flight.
        value.block_until_ready()
    W = model.parameters()["0.weight"]
    seen["param_devices"] = len(W.sharding.device_set)
    seen["param_replicated"] = bool(W.sharding.is_fully_replicated)
    seen["placement"] = repr(model.placement)
    return model, seen


def fit_on(device: Any) -> tuple[pm.Module, list[bool]]:
    """pm.fit (its captured step) for 2 epochs of a 64-row and a 63-row batch; whether each
    batch it stepped on was split over the devices."""
    rng = np.random.default_rng(7)
    X, y = rng.normal(size=(N, FEATURES)), rng.integers(0, CLASSES, N)
    model = pm.MLP([FEATURES, 16, CLASSES], rng=0, backend="jax", device=device, dtype="float64")
    split: list[bool] = []
    original = dist.shard_batch

    def spy(x: Any, *, like: Any) -> Any:
        out = original(x, like=like)
        if x.ndim == 2 and x.shape[1] == FEATURES:
            split.append(not out.sharding.is_fully_replicated)
        return out

    dist.shard_batch = spy  # what fit calls for every batch
    try:
        Xd, yd = pm.asarray(X, like=model), pm.asarray(y, like=model)
        opt, loss = pm.Adam(model, lr=0.01), pm.CrossEntropyLoss()
        pm.fit(model, loss, opt, Xd, yd, epochs=2, batch_size=64, rng=0, alpha=ALPHA)
    finally:
        dist.shard_batch = original
    return model, split


def main(out: Path) -> None:
    assert len(jax.devices()) == 2, jax.devices()
    result: dict[str, Any] = {}
    for optimizer in ("sgd", "adam"):
        mesh = jax.make_mesh((2,), ("batch",))
        sharded, seen = run(mesh, optimizer)
        single, _ = run(None, optimizer)
        for key, value in sharded.parameters().items():
            result[f"{optimizer}/mesh/{key}"] = pm.to_numpy(value)
            result[f"{optimizer}/one/{key}"] = pm.to_numpy(single.parameters()[key])
        for key, value in seen.items():
            result[f"{optimizer}/{key}"] = np.asarray(value)
    sharded, split = fit_on(jax.make_mesh((2,), ("batch",)))
    single, _ = fit_on(None)
    for key, value in sharded.parameters().items():
        result[f"fit/mesh/{key}"] = pm.to_numpy(value)
        result[f"fit/one/{key}"] = pm.to_numpy(single.parameters()[key])
    result["fit/split"] = np.asarray(split)
    np.savez(out / "mesh.npz", **result)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
