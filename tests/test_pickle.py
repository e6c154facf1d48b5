"""Models pickle and deep-copy on every backend: placement, values and behaviour survive."""

from __future__ import annotations

import copy
import pickle
from typing import Any

import numpy as np
import pytest

import portable_mlp as pm


def _roundtrips() -> list[Any]:
    return [lambda m: pickle.loads(pickle.dumps(m)), copy.deepcopy]


@pytest.mark.parametrize("roundtrip", _roundtrips(), ids=["pickle", "deepcopy"])
@pytest.mark.parametrize("activation", ["relu", "leaky_relu", "gelu"])
def test_model_roundtrip_keeps_placement_values_and_behaviour(
    case: Any, dtype: str, roundtrip: Any, activation: str
) -> None:
    model = pm.MLP([3, 5, 2], activation, rng=0, **case.model_kwargs(dtype))
    x = case.array(np.random.default_rng(1).normal(size=(4, 3)), dtype)
    model.forward(x)  # a pending forward cache is not part of the copy
    clone = roundtrip(model)
    assert clone.placement == model.placement
    for key, value in model.parameters().items():
        assert clone.parameters()[key] is not value
        np.testing.assert_array_equal(pm.to_numpy(clone.parameters()[key]), pm.to_numpy(value))
        assert pm.namespace_of(clone.parameters()[key]) is case.xp
    out = clone.forward(x)
    np.testing.assert_array_equal(pm.to_numpy(out), pm.to_numpy(model.forward(x)))
    clone.backward(case.xp.ones_like(out))  # the copy trains on its own
    assert set(clone.gradients()) == set(model.parameters())


def test_placement_pickles_as_its_spelling(case: Any, dtype: str) -> None:
    where = pm.placement(case.backend, case.device, dtype)
    assert pickle.loads(pickle.dumps(where)) is where  # placements are cached by spelling


@pytest.mark.parametrize("make", [pm.SGD, pm.Adam, pm.AdamW], ids=["sgd", "adam", "adamw"])
def test_optimizer_roundtrip_keeps_its_state_and_model(case: Any, make: Any) -> None:
    model = pm.MLP([3, 4, 1], rng=0, **case.model_kwargs("float64"))
    opt = make(model, lr=0.01) if make is not pm.SGD else make(model, lr=0.01, momentum=0.9)
    loss = pm.BCEWithLogitsLoss()
    rng = np.random.default_rng(2)
    x = case.array(rng.normal(size=(6, 3)), "float64")
    y = case.array(rng.integers(0, 2, size=(6, 1)).astype(float), "float64")
    pm.train_step(model, loss, opt, x, y)
    clone = pickle.loads(pickle.dumps(opt))
    assert clone.model is not model and clone.placement == opt.placement
    assert clone.steps == opt.steps == 1
    # the copy and the original take the same next step from the same state
    pm.train_step(model, loss, opt, x, y)
    pm.train_step(clone.model, loss, clone, x, y)
    for key, value in model.parameters().items():
        np.testing.assert_array_equal(
            pm.to_numpy(clone.model.parameters()[key]), pm.to_numpy(value)
        )
