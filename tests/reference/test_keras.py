"""The seed's reference check: the functional MLP against TensorFlow/Keras gradients.

Run by ``nox -s reference``. Keras builds the seed's model (Dense 16, 8, 1 without bias, ReLU,
ReLU, sigmoid; binary cross-entropy) in float64; its weights go to ``pm.functional`` in both
layouts and every gradient must agree.
"""

from __future__ import annotations

import numpy as np
import pytest

import portable_mlp as pm
from portable_mlp.testing import Case, assert_close

tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")


def _keras_reference() -> dict[str, object]:
    keras.config.set_floatx("float64")
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    X = rng.random((10, 32))
    y = (rng.random((10, 1)) <= rng.random((10, 1))).astype(np.float64)
    model = keras.Sequential(
        [
            keras.Input(shape=(32,)),
            keras.layers.Dense(16, activation="relu", use_bias=False),
            keras.layers.Dense(8, activation="relu", use_bias=False),
            keras.layers.Dense(1, activation="sigmoid", use_bias=False),
        ]
    )
    loss_object = keras.losses.BinaryCrossentropy()
    with tf.GradientTape() as tape:
        out = model(X)
        loss = loss_object(y, out)
    grads = tape.gradient(loss, model.trainable_variables)
    return {
        "X": X,
        "y": y,
        "A": out.numpy(),
        "weights": [w.numpy() for w in model.weights],
        "grads": [g.numpy() for g in grads],
    }


@pytest.mark.parametrize("layout", ["rows", "columns"])
def test_functional_matches_keras(case: Case, layout: str) -> None:
    ref = _keras_reference()
    rows = layout == "rows"
    X = case.array(ref["X"] if rows else ref["X"].T, "float64")
    y = case.array(ref["y"] if rows else ref["y"].T, "float64")
    weights = [case.array(w if rows else w.T, "float64") for w in ref["weights"]]
    A, cache = pm.functional.forward(X, weights, layout=layout)
    grads = pm.functional.backward(A, y, cache)
    # Keras clips probabilities to [eps, 1 - eps] inside its BCE; no output comes near that here.
    assert np.all((ref["A"] > 1e-6) & (ref["A"] < 1 - 1e-6))
    assert_close(A, ref["A"] if rows else ref["A"].T, case=case, dtype="float64", tol=1e-12)
    for g, expected in zip(grads, ref["grads"], strict=True):
        assert_close(g, expected if rows else expected.T, case=case, dtype="float64", tol=1e-10)
