"""Optimizers, schedules and clipping against torch.optim, step by step, on every backend."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch

import portable_mlp as pm
from portable_mlp.optim import clip_grad_norm, global_norm
from portable_mlp.testing import Case, assert_close

CONFIGS: dict[str, tuple[Callable[..., pm.optim.Optimizer], Callable[..., Any], dict[str, Any]]] = {
    "sgd": (pm.SGD, torch.optim.SGD, {"lr": 0.1}),
    "sgd-momentum": (pm.SGD, torch.optim.SGD, {"lr": 0.05, "momentum": 0.9}),
    "sgd-nesterov-wd": (
        pm.SGD,
        torch.optim.SGD,
        {"lr": 0.05, "momentum": 0.8, "nesterov": True, "weight_decay": 0.1},
    ),
    "adam": (pm.Adam, torch.optim.Adam, {"lr": 1e-2}),
    "adam-wd": (pm.Adam, torch.optim.Adam, {"lr": 1e-2, "betas": (0.8, 0.99), "weight_decay": 0.1}),
    "adamw": (pm.AdamW, torch.optim.AdamW, {"lr": 1e-2}),
    "adamw-eps": (pm.AdamW, torch.optim.AdamW, {"lr": 3e-3, "eps": 1e-3, "weight_decay": 0.5}),
}


def _grads(model: pm.Module, rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {k: rng.normal(size=tuple(v.shape)) for k, v in model.parameters().items()}


@pytest.mark.parametrize("name", CONFIGS)
def test_optimizer_matches_torch_step_by_step(case: Case, dtype: str, name: str) -> None:
    ours_cls, torch_cls, kwargs = CONFIGS[name]
    model = pm.MLP([4, 5, 3], rng=0, **case.model_kwargs(dtype))
    start = {k: pm.to_numpy(v).astype(np.float64) for k, v in model.parameters().items()}
    t_params = {k: torch.tensor(v, requires_grad=True) for k, v in start.items()}
    opt = ours_cls(model, **kwargs)
    t_opt = torch_cls(list(t_params.values()), **kwargs)
    rng = np.random.default_rng(0)
    for step in range(6):
        grads = _grads(model, rng)
        opt.step({k: case.array(g, dtype) for k, g in grads.items()})
        for k, p in t_params.items():
            p.grad = torch.tensor(grads[k])
        t_opt.step()
        for k, v in model.parameters().items():
            expected = t_params[k].detach().numpy()
            assert_close(v, expected, case=case, dtype=dtype, what=f"{name} step {step} {k}")
    where = case.placement(dtype)
    for key, state in opt.state.items():  # optimizer state lives with the parameters
        for buf_name, buf in state.items():
            where.check(buf, who=name, what=f"state[{key!r}][{buf_name!r}]")


def test_step_reads_model_gradients_and_updates_in_place(case: Case) -> None:
    model = pm.MLP([3, 2], rng=0, **case.model_kwargs("float64"))
    before = model.parameters()
    x = case.array(np.ones((4, 3)), "float64")
    loss = pm.MSELoss()
    loss.forward(model.forward(x), case.array(np.zeros((4, 2)), "float64"))
    model.backward(loss.backward())
    expected = {
        k: pm.to_numpy(p) - 0.5 * pm.to_numpy(g)
        for k, (p, g) in zip(
            before, zip(before.values(), model.gradients().values(), strict=True), strict=True
        )
    }
    pm.SGD(model, lr=0.5).step()
    after = model.parameters()
    for k in after:
        assert_close(after[k], expected[k], case=case, dtype="float64")
        # mutable backends update the very arrays a user holds, as torch.optim does
        assert (after[k] is before[k]) == pm.placement(case.backend, case.device).mutable


def test_clip_grad_norm_matches_torch(case: Case, dtype: str) -> None:
    rng = np.random.default_rng(1)
    host = {"a": rng.normal(size=(3, 4)) * 10, "b": rng.normal(size=(4,))}
    grads = {k: case.array(v, dtype) for k, v in host.items()}
    t = [torch.tensor(v) for v in host.values()]
    for tt in t:
        tt.grad = tt.clone()
    t_norm = torch.nn.utils.clip_grad_norm_(t, max_norm=1.5)
    clipped, norm = clip_grad_norm(grads, 1.5, xp=case.xp)
    assert_close(norm, t_norm.numpy(), case=case, dtype=dtype)
    for (_, g), tt in zip(clipped.items(), t, strict=True):
        assert_close(g, tt.grad.numpy(), case=case, dtype=dtype)
    assert_close(grads["a"], host["a"], case=case, dtype=dtype)  # inputs untouched
    small, _ = clip_grad_norm(grads, 1e6, xp=case.xp)  # under the limit: unchanged
    assert_close(small["a"], host["a"], case=case, dtype=dtype)
    assert_close(
        global_norm(grads, xp=case.xp),
        np.sqrt(sum((v**2).sum() for v in host.values())),
        case=case,
        dtype=dtype,
    )


def test_max_grad_norm_clips_inside_the_step(case: Case) -> None:
    model = pm.MLP([2, 2], rng=0, **case.model_kwargs("float64"))
    start = {k: pm.to_numpy(v) for k, v in model.parameters().items()}
    grads = {
        k: case.array(np.full(tuple(v.shape), 100.0), "float64")
        for k, v in model.parameters().items()
    }
    pm.SGD(model, lr=1.0, max_grad_norm=1.0).step(grads)
    moved = np.sqrt(
        sum(((pm.to_numpy(v) - start[k]) ** 2).sum() for k, v in model.parameters().items())
    )
    assert moved == pytest.approx(1.0, rel=1e-5)  # the step has the clipped norm, 1


@pytest.mark.parametrize(
    ("ours", "theirs", "kwargs"),
    [
        (pm.optim.StepLR, torch.optim.lr_scheduler.StepLR, {"step_size": 3, "gamma": 0.5}),
        (
            pm.optim.CosineAnnealingLR,
            torch.optim.lr_scheduler.CosineAnnealingLR,
            {"T_max": 10, "eta_min": 1e-3},
        ),
    ],
)
def test_schedules_match_torch(ours: Any, theirs: Any, kwargs: dict[str, Any]) -> None:
    opt = pm.SGD(pm.Linear(2, 1), lr=0.1)
    t_opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    sched, t_sched = ours(opt, **kwargs), theirs(t_opt, **kwargs)
    for _ in range(10):
        t_opt.step()
        t_sched.step()
        assert sched.step() == pytest.approx(t_opt.param_groups[0]["lr"], rel=1e-12)
    assert pm.optim.ConstantLR(opt).step() == opt.lr


def test_snapshot_restores_state(case: Case) -> None:
    model = pm.MLP([2, 2], rng=0, **case.model_kwargs("float64"))
    opt = pm.Adam(model, lr=0.1)
    grads = {
        k: case.array(np.ones(tuple(v.shape)), "float64") for k, v in model.parameters().items()
    }
    opt.step(grads)
    snap = opt.state_dict()
    opt.step(grads)
    assert opt.steps == 2
    opt.load_state_dict(snap)
    assert opt.steps == 1
    assert_close(opt.state["0.weight"]["m"], np.full((2, 2), 0.1), case=case, dtype="float64")


# One misuse each: (error, message, the call that must raise it, given an MLP([2, 2])).
OPTIMIZER_MISUSE: dict[str, tuple[type[Exception], str, Callable[[pm.Module], Any]]] = {
    "lr": (ValueError, "lr must be > 0, got 0", lambda m: pm.SGD(m, lr=0)),
    "nesterov": (ValueError, "nesterov=True needs momentum", lambda m: pm.SGD(m, nesterov=True)),
    "betas": (ValueError, r"betas must be in \[0, 1\)", lambda m: pm.Adam(m, betas=(0.9, 1.0))),
    "no parameters": (
        ValueError,
        "has no parameters",
        lambda m: pm.Adam(pm.Sequential(pm.ReLU())),
    ),
    "missing gradients": (
        KeyError,
        "expected gradients for",
        lambda m: pm.SGD(m).step({"0.weight": m.parameters()["0.weight"]}),
    ),
    "step before backward": (RuntimeError, "before backward", lambda m: pm.SGD(m).step()),
}


@pytest.mark.parametrize("misuse", OPTIMIZER_MISUSE)
def test_optimizer_misuse(misuse: str) -> None:
    error, message, call = OPTIMIZER_MISUSE[misuse]
    with pytest.raises(error, match=message):
        call(pm.MLP([2, 2], rng=0))


def test_train_step_l2_term_leaves_the_layer_gradients_alone() -> None:
    layer = pm.Linear(3, 2, rng=0, dtype="float64")
    x, y = np.ones((4, 3)), np.zeros((4, 2))
    pm.train_step(layer, pm.MSELoss(), pm.SGD(layer, lr=0.1), x, y, alpha=10.0)
    loss = pm.MSELoss()
    start = {k: v.copy() for k, v in layer.parameters().items()}
    layer.set_parameters(start)
    loss.forward(layer.forward(x), y)
    layer.backward(loss.backward())
    plain = {k: v.copy() for k, v in layer.gradients().items()}
    layer.set_parameters({k: v.copy() for k, v in start.items()})
    pm.train_step(layer, pm.MSELoss(), pm.SGD(layer, lr=0.1), x, y, alpha=10.0)
    for k in plain:  # dW, db of the data loss only: the penalty went to the update, not here
        np.testing.assert_array_equal(layer.gradients()[k], plain[k])
    expected_W = start["weight"] - 0.1 * (plain["weight"] + 10.0 / 4 * start["weight"])
    np.testing.assert_allclose(layer.weight, expected_W, rtol=1e-12)
