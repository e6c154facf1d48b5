"""Every layer against PyTorch autograd (float64) and finite differences, on every backend."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

import portable_mlp as pm
from portable_mlp.testing import Case, assert_close, away_from_zero, randomize, torch_reference

LAYERS: dict[str, Callable[[dict[str, Any]], pm.Module]] = {
    "linear": lambda kw: pm.Linear(5, 4, rng=0, **kw),
    "linear-nobias": lambda kw: pm.Linear(5, 4, bias=False, rng=0, **kw),
    "relu": lambda kw: pm.ReLU(),
    "sigmoid": lambda kw: pm.Sigmoid(),
    "tanh": lambda kw: pm.Tanh(),
    "leaky_relu": lambda kw: pm.LeakyReLU(negative_slope=0.2),
    "identity": lambda kw: pm.Identity(),
    "gelu": lambda kw: pm.GELU(),
}


def _inputs(case: Case, dtype: str, layer: pm.Module, seed: int = 0) -> tuple[Any, Any]:
    rng = np.random.default_rng(seed)
    p_out = layer.p_out if isinstance(layer, pm.Linear) else 5
    x = away_from_zero(rng.normal(size=(7, 5)) * 2)
    dy = rng.normal(size=(7, p_out))
    return case.array(x, dtype), case.array(dy, dtype)


@pytest.mark.parametrize("name", LAYERS)
def test_layer_matches_torch_autograd(case: Case, dtype: str, name: str) -> None:
    layer = LAYERS[name](case.model_kwargs(dtype))
    randomize(layer, case, dtype)
    x, dy = _inputs(case, dtype, layer)
    out = layer.forward(x)
    dx = layer.backward(dy)
    ref = torch_reference(layer, x, dy=dy)
    assert_close(case.xp.sum(out * dy), ref["output"], case=case, dtype=dtype, what="output")
    assert_close(dx, ref["input"], case=case, dtype=dtype, what="dx")
    grads = layer.gradients()
    assert list(grads) == list(layer.parameters())
    for key, g in grads.items():
        assert_close(g, ref[key], case=case, dtype=dtype, what=key)


@pytest.mark.parametrize("name", LAYERS)
def test_layer_gradcheck(case: Case, name: str) -> None:
    layer = LAYERS[name](case.model_kwargs("float64"))
    randomize(layer, case, "float64")
    x, _ = _inputs(case, "float64", layer)
    result = pm.gradcheck(layer, x)
    assert set(result.errors) == {*layer.parameters(), "input"}
    assert result.passed


def test_gradcheck_catches_a_wrong_gradient(case: Case) -> None:
    """The check can fail: a Tanh whose backward is off by 1 % is caught."""

    class BadTanh(pm.Tanh):
        def backward(self, dy: Any, *, input_grad: bool = True) -> Any:
            return super().backward(dy, input_grad=input_grad) * 1.01

    x, _ = _inputs(case, "float64", pm.Tanh())
    with pytest.raises(pm.GradcheckError, match="input"):
        pm.gradcheck(BadTanh(), x)


def test_linear_shapes_and_layout(case: Case, dtype: str) -> None:
    layer = pm.Linear(4, 3, rng=0, **case.model_kwargs(dtype))
    assert tuple(layer.weight.shape) == (4, 3)  # (p_in, p_out), as in the seed
    assert tuple(layer.bias.shape) == (3,)
    assert_close(layer.bias, np.zeros(3), case=case, dtype=dtype, what="bias starts at 0")
    assert pm.Linear(4, 3, bias=False, **case.model_kwargs(dtype)).bias is None
    x = case.array(np.ones((2, 4)), dtype)
    y = layer.forward(x)
    assert tuple(y.shape) == (2, 3)
    layer.backward(case.array(np.ones((2, 3)), dtype))
    assert set(layer.gradients()) == {"weight", "bias"}


def test_torch_addmm_fast_path_matches_portable_form(dtype: str) -> None:
    """The fused torch kernel gives what the portable ``x @ W + b`` gives."""
    layer = pm.Linear(6, 3, rng=0, backend="torch", dtype=dtype)
    rng = np.random.default_rng(3)
    layer.set_parameters(
        {"weight": layer.weight, "bias": pm.asarray(rng.normal(size=3), like=layer)}
    )
    x = pm.asarray(rng.normal(size=(5, 6)), like=layer)
    fused = layer.forward(x)
    portable = pm.functional.linear(x, layer.weight, layer.bias)
    np.testing.assert_allclose(pm.to_numpy(fused), pm.to_numpy(portable), rtol=1e-6)
