"""Scores, written against the array API: one accuracy and one R^2, used by the estimators'
``score`` and by the training loop's validation and eval curves alike.

Each returns a 0-d array in the namespace and on the device of its inputs and never reads it
back, so a loop can gather several values and read them in one transfer. ``sample_weight``
weights rows, as scikit-learn's ``accuracy_score`` and ``r2_score`` do.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from ._backend import Array, device, namespace_of
from .losses import BCEWithLogitsLoss, CrossEntropyLoss, Loss, MSELoss, SampleWeightedLoss

Score = Callable[[Array, Array], Array]
"""``score(z, target) -> 0-d array``: model outputs ``z: (n, k)`` against targets in the loss's
working form (float ``(n, k)``; with a :class:`~portable_mlp.losses.SampleWeightedLoss`, the row
weights as one more column); higher is better."""


def accuracy(
    y_true: Array, y_pred: Array, *, dtype: Any = None, sample_weight: Array | None = None
) -> Array:
    """The fraction of rows of ``y_pred`` equal to ``y_true``: labels (numbers or, on NumPy,
    strings) or class codes of one namespace, ``(n,)``, or ``(n, k)`` label indicators, where a
    row counts only if all its ``k`` entries are right (scikit-learn's subset accuracy). A 0-d
    array of ``dtype`` (default: the default floating dtype of the inputs' device)."""
    xp = namespace_of(y_true, y_pred)
    if y_true.ndim == y_pred.ndim == 2 and y_true.shape[1] > 1:
        hit = xp.all(y_true == y_pred, axis=1)
    else:
        hit = xp.reshape(y_true, (-1,)) == xp.reshape(y_pred, (-1,))
    if dtype is None:
        dtype = xp.__array_namespace_info__().default_dtypes(device=device(hit))["real floating"]
    hit = xp.astype(hit, dtype)
    if sample_weight is None:
        return xp.mean(hit)
    w = xp.astype(xp.reshape(sample_weight, (-1,)), dtype)
    return xp.sum(hit * w) / xp.sum(w)


def r2_score(y_true: Array, y_pred: Array, *, sample_weight: Array | None = None) -> Array:
    """The coefficient of determination R^2 of floating ``y_pred`` against ``y_true`` (``(n,)`` or
    ``(n, k)``, one namespace), averaged over the ``k`` outputs; a 0-d array.

    An output whose ``y_true`` is constant has no R^2; as in scikit-learn it scores 1 where the
    prediction is exact and 0 elsewhere, so that a score is always a finite number.
    """
    xp = namespace_of(y_true, y_pred)
    y_pred = xp.reshape(y_pred, (y_true.shape[0], -1))  # (n, k)
    y_true = xp.reshape(y_true, y_pred.shape)
    if sample_weight is None:
        w = xp.ones((y_true.shape[0], 1), dtype=y_true.dtype, device=device(y_true))
    else:
        w = xp.astype(xp.reshape(sample_weight, (-1, 1)), y_true.dtype)  # (n, 1)
    mean = xp.sum(w * y_true, axis=0) / xp.sum(w)  # (k,)
    residual = xp.sum(w * (y_true - y_pred) ** 2, axis=0)  # (k,)
    total = xp.sum(w * (y_true - mean) ** 2, axis=0)  # (k,)
    defined = total != 0
    ratio = residual / xp.where(defined, total, xp.ones_like(total))
    exact = xp.astype(residual == 0, y_true.dtype)
    return xp.mean(xp.where(defined, 1.0 - ratio, exact))


def for_loss(loss: Loss) -> Score:
    """The score that goes with ``loss``: accuracy of the logits for the classification losses,
    R^2 of the predictions for the squared error; weighted by the rows' weights for a
    :class:`~portable_mlp.losses.SampleWeightedLoss`."""
    base = loss.base if isinstance(loss, SampleWeightedLoss) else loss
    score: Callable[..., Array]
    if isinstance(base, BCEWithLogitsLoss):
        score = _binary_accuracy
    elif isinstance(base, CrossEntropyLoss):
        score = _multiclass_accuracy
    elif isinstance(base, MSELoss):
        score = _r2_of_outputs
    else:
        raise TypeError(f"no default score for {loss!r}; pass score=(z, target) -> 0-d array")
    return functools.partial(_weighted, score) if base is not loss else score


def _weighted(score: Callable[..., Array], z: Array, target: Array) -> Array:
    # target: (n, k + 1), the row weights last
    return score(z, target[:, :-1], target[:, -1])


def _binary_accuracy(z: Array, target: Array, weight: Array | None = None) -> Array:
    # z: (n, k) logits, target: (n, k) in [0, 1]; a positive logit predicts 1.
    return accuracy(target > 0.5, z > 0, dtype=z.dtype, sample_weight=weight)


def _multiclass_accuracy(z: Array, target: Array, weight: Array | None = None) -> Array:
    # z: (n, k) logits, target: (n, k) one-hot (or probability) rows.
    xp = namespace_of(z)
    return accuracy(
        xp.argmax(target, axis=1), xp.argmax(z, axis=1), dtype=z.dtype, sample_weight=weight
    )


def _r2_of_outputs(z: Array, target: Array, weight: Array | None = None) -> Array:
    return r2_score(target, z, sample_weight=weight)
