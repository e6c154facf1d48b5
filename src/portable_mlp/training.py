"""Training: one step (:func:`train_step`) and, built on it, the epoch loop (:func:`fit`).

A step is forward, loss, backward (no dL/dx), the L2 term and the optimizer's update, and returns
the batch loss as a 0-d array without reading it back.
"""

from __future__ import annotations

from ._backend import Array
from .layers import Module
from .losses import Loss
from .optim import Optimizer


def train_step(
    model: Module,
    loss: Loss,
    optimizer: Optimizer,
    x: Array,
    y: Array,
    *,
    alpha: float = 0.0,
    check: bool = True,
) -> Array:
    """One training step: forward, loss, backward (no dL/dx), L2 term, update.

    ``alpha`` is scikit-learn's L2 penalty, ``alpha / 2 ||W||^2 / n_batch`` on weights (not
    biases), added to the loss and its gradient. Returns the batch loss as a 0-d array, without
    reading it back. ``check=False`` skips the input checks, for loops whose data were checked
    once up front; ``y`` must then be in the loss's working form (float one-hot rows for
    cross-entropy).
    """
    if check:
        value = loss.forward(model.forward(x), y)
    else:
        value = loss._forward(model._forward(x, True), y, optimizer.xp)
    model._backward(loss.backward(), False)
    grads = model.gradients()
    if alpha:
        xp = optimizer.xp
        scale = float(alpha) / x.shape[0]
        penalty = None
        grads = dict(grads)  # a Linear hands out its own dict: leave the layer's gradients alone
        for key, W in model.parameters().items():
            if key.endswith("weight"):
                grads[key] = grads[key] + scale * W
                s = xp.sum(W * W)
                penalty = s if penalty is None else penalty + s
        value = value + (0.5 * scale) * penalty
    optimizer.step(grads)
    return value
