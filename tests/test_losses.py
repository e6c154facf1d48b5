"""Every loss against PyTorch autograd and finite differences, and at the extremes."""

from __future__ import annotations

import decimal
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch

import portable_mlp as pm
from portable_mlp.testing import Case, assert_close, torch_reference

REDUCTIONS = ("mean", "sum")


def _targets(name: str, n: int, k: int, rng: np.random.Generator) -> np.ndarray:
    if name == "bce":
        return rng.uniform(size=(n, k))  # any targets in [0, 1], not only 0/1
    if name == "ce":
        return rng.integers(0, k, size=n)
    if name == "ce-probs":
        p = rng.uniform(size=(n, k))
        return p / p.sum(axis=1, keepdims=True)
    return rng.normal(size=(n, k))


LOSSES = {
    "bce": pm.BCEWithLogitsLoss,
    "ce": pm.CrossEntropyLoss,
    "ce-probs": pm.CrossEntropyLoss,
    "mse": pm.MSELoss,
}


def _case_targets(case: Case, name: str, y: np.ndarray, dtype: str) -> Any:
    return case.array(y) if name == "ce" else case.array(y, dtype)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("name", LOSSES)
def test_loss_matches_torch_autograd(case: Case, dtype: str, name: str, reduction: str) -> None:
    rng = np.random.default_rng(0)
    z = case.array(rng.normal(size=(6, 3)) * 3, dtype)
    y = _case_targets(case, name, _targets(name, 6, 3, rng), dtype)
    loss = LOSSES[name](reduction=reduction)
    model = pm.Identity()  # the loss alone: dL/dz comes back as the "input" gradient
    value = loss.forward(model.forward(z), y)
    dz = model.backward(loss.backward())
    ref = torch_reference(model, z, y, loss)
    assert tuple(value.shape) == ()
    assert_close(value, ref["loss"], case=case, dtype=dtype, what="loss")
    assert_close(dz, ref["input"], case=case, dtype=dtype, what="dz")


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("name", LOSSES)
def test_loss_gradcheck(case: Case, name: str, reduction: str) -> None:
    rng = np.random.default_rng(1)
    z = case.array(rng.normal(size=(5, 4)), "float64")
    y = _case_targets(case, name, _targets(name, 5, 4, rng), "float64")
    assert pm.gradcheck(pm.Identity(), z, y, LOSSES[name](reduction=reduction)).passed


def test_bce_accepts_integer_and_boolean_labels(case: Case, dtype: str) -> None:
    z = case.array([[0.5], [-1.0], [2.0]], dtype)
    as_float = pm.BCEWithLogitsLoss().forward(z, case.array([[1.0], [0.0], [1.0]], dtype))
    as_int = pm.BCEWithLogitsLoss().forward(z, case.array(np.array([[1], [0], [1]])))
    as_bool = pm.BCEWithLogitsLoss().forward(
        z, case.xp.asarray(case.array(np.array([[1], [0], [1]])) > 0)
    )
    assert_close(as_int, pm.to_numpy(as_float), case=case, dtype=dtype)
    assert_close(as_bool, pm.to_numpy(as_float), case=case, dtype=dtype)


# --------------------------------------------------------------------------- extremes
EXTREME = np.array([[1e4], [-1e4], [100.0], [-100.0], [30.0], [-30.0], [0.0], [1e-8]])


# References to 100 significant digits (decimal), so float64 results can be held to 2 ulps;
# 1 + e^-100 still keeps 56 digits of e^-100.
_D = decimal.Context(prec=100, Emax=10**6, Emin=-(10**6))


def _exact(
    f: Callable[[decimal.Decimal, decimal.Decimal], decimal.Decimal], z: np.ndarray, y: np.ndarray
) -> np.ndarray:
    with decimal.localcontext(_D):
        values = [
            float(f(decimal.Decimal(float(a)), decimal.Decimal(float(b))))
            for a, b in zip(z.ravel(), y.ravel(), strict=True)
        ]
    return np.array(values).reshape(z.shape)


def _exact_bce(z: np.ndarray, y: np.ndarray) -> np.ndarray:
    return _exact(lambda a, b: (1 + a.exp()).ln() - a * b, z, y)  # log(1 + e^z) - z y


def _exact_bce_grad(z: np.ndarray, y: np.ndarray) -> np.ndarray:
    return _exact(lambda a, b: 1 / (1 + (-a).exp()) - b, z, y)  # sigmoid(z) - y


def _exact_sigmoid(z: np.ndarray) -> np.ndarray:
    return _exact_bce_grad(z, np.zeros_like(z))


def assert_ulps(
    actual: Any, expected: np.ndarray, *, case: Case, dtype: str, ulps: int = 2
) -> None:
    """Elementwise within ``ulps`` units in the last place of ``dtype``, subnormals included.

    A relative error means nothing for a float32 result of 3.7e-44 (a subnormal with 2 bits of
    precision); its spacing does. Results below the smallest normal number may be flushed to
    zero, as XLA does on the CPU.
    """
    assert_close(actual, expected, case=case, dtype=dtype, tol=np.inf)  # namespace, dtype, device
    got = pm.to_numpy(actual).astype(np.float64)
    spacing = np.spacing(np.abs(np.asarray(expected, dtype=dtype))).astype(np.float64)
    allowed = np.maximum(ulps * spacing, np.finfo(dtype).tiny)
    bad = np.abs(got - expected) > allowed
    assert not bad.any(), f"{got[bad]} vs {np.asarray(expected)[bad]} (more than {ulps} ulps)"


@pytest.mark.parametrize("target", [0.0, 1.0])
def test_bce_is_finite_and_right_at_extreme_logits(case: Case, dtype: str, target: float) -> None:
    y = np.full_like(EXTREME, target)
    loss = pm.BCEWithLogitsLoss(reduction="sum")
    for i in range(len(EXTREME)):  # one logit at a time: each value is checked, not only the sum
        value = loss.forward(case.array(EXTREME[i : i + 1], dtype), case.array(y[i : i + 1], dtype))
        assert_ulps(value, _exact_bce(EXTREME[i], y[i]).sum(), case=case, dtype=dtype)
        expected = _exact_bce_grad(EXTREME[i : i + 1], y[i : i + 1])
        assert_ulps(loss.backward(), expected, case=case, dtype=dtype)


def test_sigmoid_saturates_without_overflow(case: Case, dtype: str) -> None:
    z = case.array(EXTREME, dtype)
    s = pm.Sigmoid().forward(z)
    assert_ulps(s, _exact_sigmoid(EXTREME), case=case, dtype=dtype)
    values = pm.to_numpy(s)
    assert values[0, 0] == 1.0 and values[1, 0] == 0.0


def test_cross_entropy_at_extreme_logits(case: Case, dtype: str) -> None:
    z_host = np.array([[1e4, -1e4, 0.0], [-1e4, 1e4, 5e3], [0.0, 0.0, 0.0]])
    labels = np.array([1, 1, 2])
    loss = pm.CrossEntropyLoss(reduction="sum")
    value = loss.forward(case.array(z_host, dtype), case.array(labels))
    # row 0: label logit is 2e4 below the max; row 1: the max; row 2: uniform
    assert_close(value, 2e4 + 0.0 + np.log(3.0), case=case, dtype=dtype)
    dz = loss.backward()
    expected = np.array([[1.0, -1.0, 0.0], [0.0, 0.0, 0.0], [1 / 3, 1 / 3, -2 / 3]])
    assert_ulps(dz, expected, case=case, dtype=dtype)  # exact up to the rounding of 1/3


def test_out_of_range_label_poisons_the_loss(case: Case) -> None:
    z = case.array(np.zeros((3, 2)), "float64")
    value = pm.CrossEntropyLoss().forward(z, case.array(np.array([0, 1, 2])))
    assert np.isnan(pm.to_numpy(value))


# --------------------------------------------------------------------------- misuse
def _z(c: Case) -> Any:
    return c.array(np.zeros((4, 1)), "float64")


# One misuse each: (error, message, the call that must raise it).
LOSS_MISUSE: dict[str, tuple[type[Exception], str, Callable[[Case], Any]]] = {
    "target shape": (
        ValueError,
        r"shape of z \(4, 1\), got \(4,\)",
        lambda c: pm.BCEWithLogitsLoss().forward(_z(c), c.array(np.zeros(4), "float64")),
    ),
    "target dtype": (
        TypeError,
        r"dtype of z \(float64\), got float32",
        lambda c: pm.MSELoss().forward(_z(c), c.array(np.zeros((4, 1)), "float32")),
    ),
    "float labels": (
        TypeError,
        "integer class labels",
        lambda c: pm.CrossEntropyLoss().forward(_z(c), c.array(np.zeros(4), "float64")),
    ),
    "label count": (
        ValueError,
        "expected 4 labels",
        lambda c: pm.CrossEntropyLoss().forward(_z(c), c.array(np.zeros(3, dtype=int))),
    ),
    "z of one dimension": (
        ValueError,
        r"z of shape \(n, k\)",
        lambda c: pm.MSELoss().forward(
            c.array(np.zeros(4), "float64"), c.array(np.zeros(4), "float64")
        ),
    ),
    "backward first": (RuntimeError, "before forward", lambda c: pm.MSELoss().backward()),
}


@pytest.mark.parametrize("misuse", LOSS_MISUSE)
def test_loss_misuse_is_a_clear_error(case: Case, misuse: str) -> None:
    error, message, call = LOSS_MISUSE[misuse]
    with pytest.raises(error, match=message):
        call(case)


def test_backward_twice_for_one_forward(case: Case) -> None:
    loss = pm.MSELoss()
    loss.forward(_z(case), _z(case))
    loss.backward()
    with pytest.raises(RuntimeError, match="twice"):
        loss.backward()


def test_unknown_reduction() -> None:
    with pytest.raises(ValueError, match="reduction must be one of mean, sum, none"):
        pm.MSELoss(reduction="avg")  # type: ignore[arg-type]


def test_loss_refuses_mixed_backends() -> None:
    with pytest.raises(TypeError, match="different backends: torch and numpy"):
        pm.MSELoss().forward(torch.zeros((2, 1)), np.zeros((2, 1), dtype=np.float32))
