"""The seed notebook's "Function Implementation": an MLP as two functions of plain arrays.

ReLU hidden layers, a sigmoid output, mean binary cross-entropy, no bias, in either weight
layout. Exposed as ``portable_mlp.functional.forward`` and ``backward``; built from the
primitives in ``functional`` (the gradient of each layer is :func:`functional.linear_backward`).
"""

from __future__ import annotations

from collections.abc import Sequence

from ._backend import Array, namespace_of
from .functional import Layout, linear_backward, relu, relu_backward, sigmoid


class ForwardCache(list[tuple[Array, Array, Array]]):
    """What :func:`forward` keeps for :func:`backward`: ``(A_prev, W, Z)`` per layer, and layout."""

    def __init__(self, layout: Layout) -> None:
        super().__init__()
        self.layout: Layout = layout


def forward(
    X: Array, weights: Sequence[Array], layout: Layout = "rows"
) -> tuple[Array, ForwardCache]:
    """The seed's functional MLP: ReLU hidden layers, sigmoid output, no bias.

    ``layout="rows"``: X (n, p), weights (p_in, p_out), A (n, 1); examples are rows.
    ``layout="columns"``: X (p, n), weights (p_out, p_in), A (1, n); examples are columns.
    Returns the output probabilities ``A`` and the cache of ``(A_prev, W, Z)`` per layer.
    """
    if layout not in ("rows", "columns"):
        raise ValueError(f"layout must be 'rows' or 'columns', got {layout!r}")
    if not weights:
        raise ValueError("forward() needs at least one weight matrix")
    xp = namespace_of(X, *weights)
    rows = layout == "rows"
    A = X
    cache = ForwardCache(layout)
    for i, W in enumerate(weights):
        fan_in = W.shape[0] if rows else W.shape[1]
        width = A.shape[1] if rows else A.shape[0]
        if A.ndim != 2 or W.ndim != 2 or width != fan_in:
            raise ValueError(
                f"layer {i} ({layout} layout) expected an input with {fan_in} features along "
                f"axis {1 if rows else 0}, got shape {tuple(A.shape)} for weights {tuple(W.shape)}"
            )
        Z = A @ W if rows else W @ A  # rows: (n, p_out); columns: (p_out, n)
        cache.append((A, W, Z))
        A = sigmoid(Z, xp=xp) if i == len(weights) - 1 else relu(Z, xp=xp)
    return A, cache


def backward(A: Array, y: Array, cache: ForwardCache) -> list[Array]:
    """Gradients of the mean binary cross-entropy of :func:`forward`'s output, one dW per layer.

    ``A`` and ``y`` are (n, 1) in the rows layout, (1, n) in the columns layout; each dW comes
    back in the layout (and shape) of its W. Unlike the seed, the 1/n of the mean is applied
    once, to dL/dZ of the output, so every intermediate gradient is the true one.
    """
    xp = namespace_of(A, y)
    if tuple(A.shape) != tuple(y.shape):
        raise ValueError(
            f"backward() expected y with the shape of A {tuple(A.shape)}, got {tuple(y.shape)}"
        )
    rows = cache.layout == "rows"
    n = A.shape[0] if rows else A.shape[1]
    dZ = (A - xp.astype(y, A.dtype)) * (1.0 / n)  # mean BCE of sigmoid(Z): dL/dZ = (A - y) / n
    grads = []
    for i in range(len(cache) - 1, -1, -1):
        A_prev, W, Z = cache[i]
        if i < len(cache) - 1:
            dZ = relu_backward(dZ, Z, xp=xp)  # ReLU's output is > 0 exactly where Z is
        if rows:  # Z = A_prev W: a linear layer as it is
            dZ, dW, _ = linear_backward(dZ, A_prev, W, bias=False, input_grad=i > 0, xp=xp)
        else:  # Z = W A_prev, i.e. Z.T = A_prev.T W.T: the same layer, transposed
            dZ_t, dW_t, _ = linear_backward(
                dZ.T, A_prev.T, W.T, bias=False, input_grad=i > 0, xp=xp
            )
            dZ, dW = (None if dZ_t is None else dZ_t.T), dW_t.T
        grads.append(dW)
    return grads[::-1]
