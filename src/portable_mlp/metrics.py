"""Scores, written against the array API: one accuracy and one R^2, used by the estimators'
``score`` and by the training loop's validation and eval curves alike.

Each returns a 0-d array in the namespace and on the device of its inputs and never reads it
back, so a loop can gather several values and read them in one transfer.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ._backend import Array, device, namespace_of
from .losses import BCEWithLogitsLoss, CrossEntropyLoss, Loss, MSELoss

Score = Callable[[Array, Array], Array]
"""``score(z, target) -> 0-d array``: model outputs ``z: (n, k)`` against targets in the loss's
working form (float ``(n, k)``); higher is better."""


def accuracy(y_true: Array, y_pred: Array, *, dtype: Any = None) -> Array:
    """The fraction of ``y_pred`` equal to ``y_true``: labels (numbers or, on NumPy, strings) or
    class codes of one namespace, ``(n,)`` or ``(n, 1)``. A 0-d array of ``dtype`` (default: the
    default floating dtype of the inputs' device)."""
    xp = namespace_of(y_true, y_pred)
    hit = xp.reshape(y_true, (-1,)) == xp.reshape(y_pred, (-1,))
    if dtype is None:
        dtype = xp.__array_namespace_info__().default_dtypes(device=device(hit))["real floating"]
    return xp.mean(xp.astype(hit, dtype))


def r2_score(y_true: Array, y_pred: Array) -> Array:
    """The coefficient of determination R^2 of floating ``y_pred`` against ``y_true`` (``(n,)`` or
    ``(n, k)``, one namespace), averaged over the ``k`` outputs; a 0-d array."""
    xp = namespace_of(y_true, y_pred)
    y_pred = xp.reshape(y_pred, (y_true.shape[0], -1))  # (n, k)
    y_true = xp.reshape(y_true, y_pred.shape)
    residual = xp.sum((y_true - y_pred) ** 2, axis=0)  # (k,)
    total = xp.sum((y_true - xp.mean(y_true, axis=0)) ** 2, axis=0)  # (k,)
    return xp.mean(1.0 - residual / total)


def for_loss(loss: Loss) -> Score:
    """The score that goes with ``loss``: accuracy of the logits for the classification losses,
    R^2 of the predictions for the squared error."""
    if isinstance(loss, BCEWithLogitsLoss):
        return _binary_accuracy
    if isinstance(loss, CrossEntropyLoss):
        return _multiclass_accuracy
    if isinstance(loss, MSELoss):
        return _r2_of_outputs
    raise TypeError(f"no default score for {loss!r}; pass score=(z, target) -> 0-d array")


def _binary_accuracy(z: Array, target: Array) -> Array:
    # z: (n, k) logits, target: (n, k) in [0, 1]; a positive logit predicts 1.
    return accuracy(target > 0.5, z > 0, dtype=z.dtype)


def _multiclass_accuracy(z: Array, target: Array) -> Array:
    # z: (n, k) logits, target: (n, k) one-hot (or probability) rows.
    xp = namespace_of(z)
    return accuracy(xp.argmax(target, axis=1), xp.argmax(z, axis=1), dtype=z.dtype)


def _r2_of_outputs(z: Array, target: Array) -> Array:
    return r2_score(target, z)
