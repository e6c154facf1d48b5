"""The seed notebook's own checks, reproduced through portable_mlp's contract on every backend."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

import portable_mlp as pm
from portable_mlp.testing import Case, assert_close, torch_reference


# --------------------------------------------------------------------------- the seed's code
class SeedLinear:
    """The seed's Linear, verbatim in its math (1/n inside backward, no bias)."""

    def __init__(self, p_in: int, p_out: int, rng: np.random.Generator) -> None:
        self.weight = rng.normal(size=(p_in, p_out)) * (1 / np.sqrt(p_in))

    def forward(self, x: np.ndarray) -> np.ndarray:
        self.x = x
        return x @ self.weight

    def backward(self, dy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        dw = (1.0 / self.x.shape[0]) * self.x.T @ dy
        return dw, dy @ self.weight.T


def _seed_layer_check() -> dict[str, Any]:
    """The seed's "Layer implementation" check: n=10, 4-3-1, ReLU, BCE, default_rng(0)."""
    rng = np.random.default_rng(seed=0)
    x = rng.normal(0, 1, (10, 4))
    l1, l2 = SeedLinear(4, 3, rng), SeedLinear(3, 1, rng)
    h = np.maximum(l1.forward(x), 0)
    z = l2.forward(h)
    y = rng.binomial(1, 1.0 / (1.0 + np.exp(-z)))
    dz = 1.0 / (1.0 + np.exp(-z)) - y  # the seed's BCE backward: a - y, no 1/n
    dw2, dh = l2.backward(dz)
    dw1, dx = l1.backward(dh * (h > 0))
    return {"x": x, "y": y, "w1": l1.weight, "w2": l2.weight, "dw1": dw1, "dw2": dw2, "dx": dx}


SEED = _seed_layer_check()


def test_seed_weights_bit_for_bit(case: Case) -> None:
    rng = np.random.default_rng(0)
    rng.normal(0, 1, (10, 4))  # the seed draws x first
    l1 = pm.Linear(4, 3, bias=False, rng=rng, **case.model_kwargs("float64"))
    l2 = pm.Linear(3, 1, bias=False, rng=rng, **case.model_kwargs("float64"))
    assert np.array_equal(pm.to_numpy(l1.weight), SEED["w1"])
    assert np.array_equal(pm.to_numpy(l2.weight), SEED["w2"])


def test_seed_layer_check(case: Case, dtype: str) -> None:
    """Same weights, data and labels as the seed; loss and gradients against torch autograd,
    the seed's own dW, and finite differences. dL/dx is the true one (the seed's is n times too
    big)."""
    rng = np.random.default_rng(0)
    x = case.array(rng.normal(0, 1, (10, 4)), dtype)
    model = pm.MLP([4, 3, 1], "relu", bias=False, rng=rng, **case.model_kwargs(dtype))
    y = case.array(SEED["y"])  # integer 0/1 labels, as the seed has them
    loss = pm.BCEWithLogitsLoss()
    value = loss.forward(model.forward(x), y)
    dx = model.backward(loss.backward())
    grads = model.gradients()
    ref = torch_reference(model, x, y, loss)
    assert_close(value, ref["loss"], case=case, dtype=dtype, what="loss")
    assert_close(grads["0.weight"], ref["0.weight"], case=case, dtype=dtype, what="dW1")
    assert_close(grads["2.weight"], ref["2.weight"], case=case, dtype=dtype, what="dW2")
    assert_close(dx, ref["input"], case=case, dtype=dtype, what="dx")
    # The seed's own numbers (computed in float64 by its code): dW agree, dx differs by n.
    assert_close(grads["0.weight"], SEED["dw1"], case=case, dtype=dtype, what="seed's dW1")
    assert_close(grads["2.weight"], SEED["dw2"], case=case, dtype=dtype, what="seed's dW2")
    assert_close(dx, SEED["dx"] / 10, case=case, dtype=dtype, what="seed's dx / n")
    if dtype == "float64":
        assert pm.gradcheck(model, x, y, loss).passed


# --------------------------------------------------------------------------- functional API
def _seed_functional_data() -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """The seed's functional check: n=10, 32-16-8-1, no bias, its data recipe."""
    np.random.seed(0)  # noqa: NPY002 - the seed's own legacy recipe, for the same X and y
    X = np.random.random((10, 32))  # noqa: NPY002
    p = np.random.random((10,))  # noqa: NPY002
    y = (np.random.random(10) <= p).astype(float).reshape(10, 1)  # noqa: NPY002
    rng = np.random.default_rng(0)
    weights = [pm.init.xavier_uniform(rng, a, b) for a, b in [(32, 16), (16, 8), (8, 1)]]
    return X, y, weights


def _torch_functional(X: np.ndarray, y: np.ndarray, weights: list[np.ndarray]) -> dict[str, Any]:
    Ws = [torch.tensor(w, requires_grad=True) for w in weights]
    A = torch.tensor(X)
    for i, W in enumerate(Ws):
        A = torch.sigmoid(A @ W) if i == len(Ws) - 1 else torch.relu(A @ W)
    loss = torch.nn.functional.binary_cross_entropy(A, torch.tensor(y))
    loss.backward()
    return {"A": A.detach().numpy(), "grads": [W.grad.numpy() for W in Ws]}


@pytest.mark.parametrize("layout", ["rows", "columns"])
def test_seed_functional_check(case: Case, dtype: str, layout: str) -> None:
    X, y, weights = _seed_functional_data()
    ref = _torch_functional(X, y, weights)
    rows = layout == "rows"
    Xb = case.array(X if rows else X.T, dtype)
    yb = case.array(y if rows else y.T, dtype)
    Wb = [case.array(w if rows else w.T, dtype) for w in weights]
    A, cache = pm.functional.forward(Xb, Wb, layout=layout)
    grads = pm.functional.backward(A, yb, cache)
    assert_close(A, ref["A"] if rows else ref["A"].T, case=case, dtype=dtype, what="A")
    assert len(grads) == 3
    for g, W, expected in zip(grads, Wb, ref["grads"], strict=True):
        assert tuple(g.shape) == tuple(W.shape)  # in the weights' layout
        assert_close(g, expected if rows else expected.T, case=case, dtype=dtype)


def test_functional_agrees_with_the_layers(case: Case) -> None:
    """The functional MLP is the layer MLP with a sigmoid on top and no bias."""
    X, y, _ = _seed_functional_data()
    model = pm.MLP([32, 16, 8, 1], bias=False, rng=0, **case.model_kwargs("float64"))
    Xb, yb = case.array(X, "float64"), case.array(y, "float64")
    weights = [model.parameters()[k] for k in ("0.weight", "2.weight", "4.weight")]
    A, cache = pm.functional.forward(Xb, weights)
    grads = pm.functional.backward(A, yb, cache)
    loss = pm.BCEWithLogitsLoss()
    z = model.forward(Xb)
    loss.forward(z, yb)
    model.backward(loss.backward())
    assert_close(A, pm.to_numpy(pm.functional.sigmoid(z)), case=case, dtype="float64")
    for g, key in zip(grads, ("0.weight", "2.weight", "4.weight"), strict=True):
        assert_close(g, pm.to_numpy(model.gradients()[key]), case=case, dtype="float64")


def _ones(c: Case, *shape: int) -> Any:
    return c.array(np.ones(shape), "float64")


def test_functional_unknown_layout(case: Case) -> None:
    with pytest.raises(ValueError, match="layout must be 'rows' or 'columns'"):
        pm.functional.forward(_ones(case, 4, 3), [_ones(case, 3, 1)], layout="diagonal")  # type: ignore[arg-type]


def test_functional_weights_in_the_other_layout(case: Case) -> None:
    with pytest.raises(
        ValueError, match=r"layer 0 \(columns layout\) expected an input with 1 features"
    ):
        pm.functional.forward(_ones(case, 4, 3), [_ones(case, 3, 1)], layout="columns")


def test_functional_targets_of_the_wrong_shape(case: Case) -> None:
    A, cache = pm.functional.forward(_ones(case, 4, 3), [_ones(case, 3, 1)])
    with pytest.raises(ValueError, match=r"shape of A \(4, 1\), got \(1, 4\)"):
        pm.functional.backward(A, _ones(case, 1, 4), cache)
