"""Sequential and MLP: structure, parity with PyTorch autograd, seeds, caches, random shapes."""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import portable_mlp as pm
from portable_mlp.testing import (
    TOLERANCE,
    Case,
    assert_close,
    away_from_zero,
    parity,
    randomize,
    torch_reference,
)

LOSS_TARGETS = {
    "bce_with_logits": lambda rng, n, k: rng.integers(0, 2, size=(n, k)).astype(float),
    "cross_entropy": lambda rng, n, k: rng.integers(0, k, size=n),
    "mse": lambda rng, n, k: rng.normal(size=(n, k)),
}


def _target(case: Case, loss: str, y: np.ndarray, dtype: str) -> Any:
    return case.array(y) if loss == "cross_entropy" else case.array(y, dtype)


def test_mlp_structure_and_parameter_names(case: Case, dtype: str) -> None:
    model = pm.MLP([30, 16, 8, 1], activation="relu", rng=0, **case.model_kwargs(dtype))
    kinds = [type(layer).__name__ for layer in model.layers]
    assert kinds == ["Linear", "ReLU", "Linear", "ReLU", "Linear"]  # logits out, no activation
    params = model.parameters()
    assert list(params) == ["0.weight", "0.bias", "2.weight", "2.bias", "4.weight", "4.bias"]
    assert [tuple(p.shape) for p in params.values()] == [
        (30, 16),
        (16,),
        (16, 8),
        (8,),
        (8, 1),
        (1,),
    ]
    assert model.backend == case.backend and model.device == case.resolved_device
    assert pm.MLP([3, 2], bias=False, **case.model_kwargs(dtype)).parameters().keys() == {
        "0.weight"
    }


@pytest.mark.parametrize(
    "activation", ["relu", "sigmoid", "tanh", "leaky_relu", "identity", "gelu"]
)
@pytest.mark.parametrize("loss_name", list(LOSS_TARGETS))
def test_mlp_matches_torch_autograd(
    case: Case, dtype: str, activation: str, loss_name: str
) -> None:
    rng = np.random.default_rng(2)
    model = pm.MLP([6, 5, 4, 3], activation=activation, rng=0, **case.model_kwargs(dtype))
    randomize(model, case, dtype)
    x = case.array(rng.normal(size=(9, 6)), dtype)
    y = _target(case, loss_name, LOSS_TARGETS[loss_name](rng, 9, 3), dtype)
    loss = pm.losses.LOSSES[loss_name]()
    z = model.forward(x)
    value = loss.forward(z, y)
    dx = model.backward(loss.backward())
    ref = torch_reference(model, x, y, loss)
    assert_close(value, ref["loss"], case=case, dtype=dtype, what="loss")
    assert_close(dx, ref["input"], case=case, dtype=dtype, what="dx")
    grads = model.gradients()
    assert list(grads) == list(model.parameters())
    for key, g in grads.items():
        assert_close(g, ref[key], case=case, dtype=dtype, what=key)


@pytest.mark.parametrize("activation", ["relu", "tanh", "leaky_relu"])
def test_mlp_gradcheck(case: Case, activation: str) -> None:
    rng = np.random.default_rng(4)
    model = pm.MLP([4, 3, 3, 2], activation=activation, rng=1, **case.model_kwargs("float64"))
    randomize(model, case, "float64", seed=5)
    x = case.array(away_from_zero(rng.normal(size=(5, 4))), "float64")
    y = case.array(rng.integers(0, 2, size=5))
    result = pm.gradcheck(model, x, y, pm.CrossEntropyLoss())
    assert set(result.errors) == {*model.parameters(), "input"}


def test_one_seed_gives_the_same_weights_everywhere(case: Case, dtype: str) -> None:
    here = pm.MLP([7, 5, 2], rng=3, **case.model_kwargs(dtype)).parameters()
    reference = pm.MLP([7, 5, 2], rng=3, backend="numpy", dtype=dtype).parameters()
    for key in reference:
        assert np.array_equal(pm.to_numpy(here[key]), reference[key]), key
    again = pm.MLP([7, 5, 2], rng=np.random.default_rng(3), **case.model_kwargs(dtype)).parameters()
    assert all(np.array_equal(pm.to_numpy(again[k]), reference[k]) for k in reference)


@pytest.mark.parametrize(
    ("name", "variance"),
    [
        ("normal", 1 / 400),
        ("he", 2 / 400),
        ("xavier", 2 / 600),
        ("he_uniform", 2 / 400),
        ("xavier_uniform", 2 / 600),
    ],
)
def test_initializer_has_its_variance(name: str, variance: float) -> None:
    w = pm.init.get(name)(np.random.default_rng(0), 400, 200)
    assert w.shape == (400, 200)
    assert abs(w.var() / variance - 1) < 0.02  # 80,000 draws: sampling error about 0.5 %


def test_unknown_initializer() -> None:
    with pytest.raises(ValueError, match="unknown init 'orthogonal'"):
        pm.init.get("orthogonal")


def test_prediction_matches_and_forgets_the_cache(case: Case, dtype: str) -> None:
    model = pm.MLP([4, 8, 3], rng=0, **case.model_kwargs(dtype))
    x = case.array(np.ones((2, 4)), dtype)
    cached = model.forward(x)
    predicted = model.forward(x, cache=False)
    assert_close(predicted, pm.to_numpy(cached), case=case, dtype=dtype)
    with pytest.raises(RuntimeError, match="before forward"):
        model.backward(cached)  # the prediction dropped what the cached forward kept


def _arrays_kept(layer: pm.Module, case: Case, *, cache: bool, backward: bool = False) -> int:
    """How many of a layer's input and output arrays outlive their last reference outside it
    (after a forward with ``cache``, then a backward if asked). No garbage collection runs: an
    array kept alive only by a reference cycle counts as kept."""
    p_in = layer.p_in if isinstance(layer, pm.Linear) else 8
    x = case.array(np.random.default_rng(0).normal(size=(2, p_in)), "float64")
    y = layer.forward(x, cache=cache)
    dy = case.array(np.ones(tuple(y.shape)), "float64")
    refs = [weakref.ref(x), weakref.ref(y)]
    del x, y
    if backward:
        layer.backward(dy)
    return sum(r() is not None for r in refs)


@pytest.mark.parametrize(
    "make",
    [
        lambda kw: pm.Linear(8, 8, rng=0, **kw),
        lambda kw: pm.ReLU(),
        lambda kw: pm.Tanh(),
        lambda kw: pm.GELU(),
    ],
    ids=["linear", "relu", "tanh", "gelu"],
)
def test_what_a_layer_keeps(case: Case, make: Callable[[dict[str, Any]], pm.Module]) -> None:
    """A cached forward keeps an array for backward, which backward releases; a prediction
    (``cache=False``) keeps none."""
    layer = make(case.model_kwargs("float64"))
    assert _arrays_kept(layer, case, cache=True) >= 1
    assert _arrays_kept(layer, case, cache=True, backward=True) == 0
    assert _arrays_kept(layer, case, cache=False) == 0


def test_backward_twice_for_one_forward(case: Case) -> None:
    model = pm.MLP([4, 8, 3], rng=0, **case.model_kwargs("float64"))
    z = model.forward(case.array(np.ones((2, 4)), "float64"))
    model.backward(z)
    with pytest.raises(RuntimeError, match="twice"):
        model.backward(z)


def test_backward_without_input_gradient(case: Case) -> None:
    model = pm.MLP([4, 8, 3], rng=0, **case.model_kwargs("float64"))
    z = model.forward(case.array(np.ones((2, 4)), "float64"))
    assert model.backward(z, input_grad=False) is None
    assert list(model.gradients()) == list(model.parameters())


def _halves(c: Case, model: pm.Module) -> dict[str, Any]:
    return {
        k: c.array(np.full(tuple(v.shape), 0.5), "float64") for k, v in model.parameters().items()
    }


def test_set_parameters_round_trip(case: Case) -> None:
    model = pm.MLP([3, 2], rng=0, **case.model_kwargs("float64"))
    model.set_parameters(_halves(case, model))
    assert_close(model.parameters()["0.weight"], np.full((3, 2), 0.5), case=case, dtype="float64")


# One misuse each: (error, message, the parameters handed to set_parameters of an MLP([3, 2])).
SET_PARAMETERS_MISUSE: dict[str, tuple[type[Exception], str, Callable[..., dict[str, Any]]]] = {
    "missing": (KeyError, r"missing \['0.bias'\]", lambda c, new: {"0.weight": new["0.weight"]}),
    "shape": (
        ValueError,
        r"shape \(3, 2\), got \(2, 3\)",
        lambda c, new: {**new, "0.weight": c.array(np.zeros((2, 3)), "float64")},
    ),
    "dtype": (
        TypeError,
        "dtype float64, got float32",
        lambda c, new: {**new, "0.bias": c.array(np.zeros(2), "float32")},
    ),
}


@pytest.mark.parametrize("misuse", SET_PARAMETERS_MISUSE)
def test_set_parameters_refuses(case: Case, misuse: str) -> None:
    error, message, params = SET_PARAMETERS_MISUSE[misuse]
    model = pm.MLP([3, 2], rng=0, **case.model_kwargs("float64"))
    with pytest.raises(error, match=message):
        model.set_parameters(params(case, _halves(case, model)))


def test_config_rebuilds_the_architecture(case: Case) -> None:
    model = pm.Sequential(
        pm.Linear(3, 4, **case.model_kwargs("float32")),
        pm.LeakyReLU(0.3),
        pm.Linear(4, 2, bias=False, **case.model_kwargs("float32")),
    )
    rebuilt = pm.from_config(model.config(), **case.model_kwargs("float32"))
    assert (
        repr(rebuilt)
        == repr(model)
        == "Sequential(Linear(3 -> 4), LeakyReLU(negative_slope=0.3), Linear(4 -> 2, bias=False))"
    )
    mlp = pm.MLP([5, 4, 1], "tanh", **case.model_kwargs("float32"))
    again = pm.from_config(mlp.config(), **case.model_kwargs("float32"))
    assert isinstance(again, pm.MLP) and again.config() == mlp.config()


def test_layers_nest(case: Case) -> None:
    """A Sequential inside a Sequential: names nest, gradients still match autograd."""
    kw = case.model_kwargs("float64")
    inner = pm.Sequential(pm.Linear(3, 4, rng=0, **kw), pm.Tanh())
    model = pm.Sequential(inner, pm.Linear(4, 2, rng=1, **kw))
    assert list(model.parameters()) == ["0.0.weight", "0.0.bias", "1.weight", "1.bias"]
    randomize(model, case, "float64")
    rng = np.random.default_rng(0)
    x = case.array(rng.normal(size=(3, 3)), "float64")
    dy = case.array(rng.normal(size=(3, 2)), "float64")
    assert max(parity(model, x, dy=dy).values()) <= TOLERANCE["float64"]
    outer = pm.Sequential(pm.Sequential(pm.Linear(3, 2, **kw)), pm.ReLU())
    assert outer.backend == case.backend and outer.device == case.resolved_device
    pm.SGD(outer)  # the optimizer finds the namespace through the nested Linear


# --------------------------------------------------------------------------- random architectures
# Sizes come from small sets holding the edges (one unit, one row, the widest layer), sizes
# that differ from every other and one that a width shares (n == p hides transposition bugs;
# n != p exposes them): eager JAX compiles every operation once per shape, so shapes that recur
# across examples cost nothing the second time.
WIDTHS = (1, 3, 8, 64)
ROWS = (1, 8, 33)


@settings(
    max_examples=25,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    widths=st.lists(st.sampled_from(WIDTHS), min_size=2, max_size=6),  # depth 1-5
    activation=st.sampled_from(["relu", "sigmoid", "tanh", "leaky_relu", "identity", "gelu"]),
    loss_name=st.sampled_from(list(LOSS_TARGETS)),
    bias=st.booleans(),
    n=st.sampled_from(ROWS),
    seed=st.integers(0, 2**16),
)
# The largest model drawn (deepest, widest, most rows) and the narrowest deep one.
@example(widths=[64] * 6, activation="gelu", loss_name="cross_entropy", bias=True, n=33, seed=0)
@example(widths=[1] * 6, activation="sigmoid", loss_name="bce_with_logits", bias=True, n=1, seed=1)
def test_random_architectures_match_torch(
    case: Case,
    dtype: str,
    widths: list[int],
    activation: str,
    loss_name: str,
    bias: bool,
    n: int,
    seed: int,
) -> None:
    rng = np.random.default_rng(seed)
    model = pm.MLP(widths, activation, bias=bias, rng=seed, **case.model_kwargs(dtype))
    if bias:
        randomize(model, case, dtype, seed, biases_only=True)
    x = case.array(rng.normal(size=(n, widths[0])), dtype)
    y = _target(case, loss_name, LOSS_TARGETS[loss_name](rng, n, widths[-1]), dtype)
    errors = parity(model, x, y, pm.losses.LOSSES[loss_name]())
    assert max(errors.values()) <= TOLERANCE[dtype], errors


def test_a_training_step_runs_on_torch_meta_device() -> None:
    """The meta device refuses to read values back: forward and backward never sync."""
    for loss_name in LOSS_TARGETS:
        model = pm.MLP([6, 5, 3], rng=0, backend="torch", device="meta", dtype="float32")
        rng = np.random.default_rng(0)
        x = pm.asarray(rng.normal(size=(4, 6)), like=model)
        y = pm.asarray(LOSS_TARGETS[loss_name](rng, 4, 3), like=model)
        loss = pm.losses.LOSSES[loss_name]()
        value = loss.forward(model.forward(x), y)
        dx = model.backward(loss.backward())
        assert value.device.type == dx.device.type == "meta"
        assert all(g.device.type == "meta" for g in model.gradients().values())
