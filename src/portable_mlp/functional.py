"""The math of every layer and loss, as pure functions of arrays.

Each forward function sits beside its backward. They touch arrays only through the namespace
``xp`` (pass it to skip the lookup; ``None`` resolves it from the arrays), create nothing without
the input's dtype and device, and never read a value back to the host. Shapes follow the seed
notebook: ``x: (n, p_in)``, ``W: (p_in, p_out)``, ``b: (p_out,)``.

The seed's "Function Implementation" keeps its names here, :func:`forward` and :func:`backward`
(ReLU hidden layers, a sigmoid output, mean binary cross-entropy, no bias, in either weight
layout); it is built from these primitives in ``_seed.py``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from types import ModuleType
from typing import Any, Literal, ParamSpec, TypeVar

from ._backend import Array, backend_of, device, kernels_of, namespace_of

Reduction = Literal["mean", "sum", "none"]
Layout = Literal["rows", "columns"]

_GELU_C = math.sqrt(2.0 / math.pi)  # a Python float: it keeps float32 arrays float32 (NEP 50)
_GELU_K = 0.044715


def _ns(xp: ModuleType | None, *arrays: Array) -> ModuleType:
    return namespace_of(*arrays) if xp is None else xp


_P = ParamSpec("_P")
_R = TypeVar("_R")


def _underflow_ok(f: Callable[_P, _R]) -> Callable[_P, _R]:
    """Make ``f`` immune to an error state that raises on underflow (``np.seterr(all="raise")``):
    in the stable forms below ``exp(-|z|)``, and products of it, underflow by design.

    It runs ``f`` as it is; only if that raises ``FloatingPointError`` (which a library raises
    only where the caller asked for it) does it run ``f`` again in its backend's
    :meth:`~portable_mlp._backend.Backend.underflow_ok` block, where an overflow or an invalid
    operation still raises. So the usual call pays nothing: entering NumPy's ``errstate`` on
    every call measurably slowed small batches.
    """

    @functools.wraps(f)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return f(*args, **kwargs)
        except FloatingPointError:
            xp = kwargs.get("xp") or namespace_of(args[0])
            with backend_of(xp).underflow_ok():  # type: ignore[arg-type]
                return f(*args, **kwargs)

    return wrapper


def _indicator(condition: Array, dtype: Any, xp: ModuleType) -> Array:
    """1.0 where ``condition`` holds, else 0.0, in ``dtype``.

    Selecting with it by arithmetic is exact for finite values (``a * 1 == a``, ``b * 0 == 0``)
    and, unlike ``where``, has no data-dependent branch: on a random sign pattern ``np.where``
    and ``torch.where`` run about ten times slower (256x256 float32: 310 us against 26 us).
    """
    return xp.astype(condition, dtype)


# ---------------------------------------------------------------------------- linear
def linear(x: Array, W: Array, b: Array | None = None, *, xp: ModuleType | None = None) -> Array:
    """``y = x W + b``.  x: (n, p_in), W: (p_in, p_out), b: (p_out,) -> y: (n, p_out)."""
    y = x @ W  # (n, p_out) = (n, p_in) (p_in, p_out)
    if b is not None:
        y += b  # y is new: adding in place saves a second (n, p_out) array (JAX rebinds)
    return y


def linear_backward(
    dy: Array,
    x: Array,
    W: Array,
    *,
    bias: bool,
    input_grad: bool = True,
    xp: ModuleType | None = None,
) -> tuple[Array | None, Array, Array | None]:
    """Gradients of :func:`linear`: ``(dx, dW, db)``; ``dx`` is ``None`` if not asked for.

    dy: (n, p_out), x: (n, p_in), W: (p_in, p_out).
    """
    xp = _ns(xp, dy)
    dW = x.T @ dy  # (p_in, p_out) = (p_in, n) (n, p_out)
    db = kernels_of(xp).sum(dy, 0) if bias else None  # (p_out,)
    dx = dy @ W.T if input_grad else None  # (n, p_in) = (n, p_out) (p_out, p_in)
    return dx, dW, db


# ---------------------------------------------------------------------------- activations
def relu(x: Array, *, xp: ModuleType | None = None) -> Array:
    """``max(x, 0)``, elementwise."""
    return _ns(xp, x).maximum(x, 0.0)


def relu_backward(dy: Array, y: Array, *, xp: ModuleType | None = None) -> Array:
    """Gradient of :func:`relu` from its output ``y``; 0 at the kink, as in PyTorch."""
    return dy * _indicator(y > 0, dy.dtype, _ns(xp, dy))


def _leaky_slope(x: Array, negative_slope: float, xp: ModuleType) -> Array:
    """1 where ``x > 0``, else ``negative_slope``: exactly, as ``m + s (1 - m)``."""
    m = _indicator(x > 0, x.dtype, xp)
    return m + negative_slope * (1.0 - m)


def leaky_relu(x: Array, negative_slope: float, *, xp: ModuleType | None = None) -> Array:
    """``x`` where positive, ``negative_slope * x`` elsewhere."""
    return x * _leaky_slope(x, negative_slope, _ns(xp, x))


def leaky_relu_backward(
    dy: Array, x: Array, negative_slope: float, *, xp: ModuleType | None = None
) -> Array:
    """Gradient of :func:`leaky_relu` from its input ``x`` (slope at 0, as in PyTorch)."""
    return dy * _leaky_slope(x, negative_slope, _ns(xp, dy))


@_underflow_ok
def sigmoid(z: Array, *, xp: ModuleType | None = None) -> Array:
    """``1 / (1 + exp(-z))`` without overflow: only ``exp(-|z|) <= 1`` is ever taken."""
    xp = _ns(xp, z)
    e = exp_neg_abs(z, xp=xp)
    s = 1.0 / (1.0 + e)  # sigmoid(|z|); sigmoid(-|z|) = e s
    m = _indicator(z >= 0, z.dtype, xp)
    return s * (m + e * (1.0 - m))  # s where z >= 0, else e s


@_underflow_ok
def sigmoid_backward(dy: Array, y: Array, *, xp: ModuleType | None = None) -> Array:
    """Gradient of :func:`sigmoid` from its output ``y``: ``dy * y * (1 - y)``."""
    return dy * y * (1.0 - y)


def tanh(x: Array, *, xp: ModuleType | None = None) -> Array:
    """Hyperbolic tangent, elementwise."""
    return _ns(xp, x).tanh(x)


def tanh_backward(dy: Array, y: Array, *, xp: ModuleType | None = None) -> Array:
    """Gradient of :func:`tanh` from its output ``y``: ``dy * (1 - y**2)``."""
    return dy * (1.0 - y * y)


def gelu(x: Array, *, xp: ModuleType | None = None) -> Array:
    """GELU, tanh approximation (``erf`` is not in the array API standard)."""
    xp = _ns(xp, x)
    return 0.5 * x * (1.0 + xp.tanh(_GELU_C * (x + _GELU_K * x * x * x)))


def gelu_backward(dy: Array, x: Array, *, xp: ModuleType | None = None) -> Array:
    """Gradient of :func:`gelu` from its input ``x``."""
    xp = _ns(xp, x)
    x2 = x * x
    t = xp.tanh(_GELU_C * (x + _GELU_K * x2 * x))
    du = _GELU_C * (1.0 + 3.0 * _GELU_K * x2)
    return dy * (0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * du)


# ---------------------------------------------------------------------------- softmax
@_underflow_ok
def log_softmax(z: Array, *, xp: ModuleType | None = None) -> Array:
    """``log(softmax(z))`` along the last axis, shifted by the max so nothing overflows."""
    xp = _ns(xp, z)
    s = z - xp.max(z, axis=-1, keepdims=True)  # every entry <= 0, the largest exactly 0
    return s - xp.log(xp.sum(xp.exp(s), axis=-1, keepdims=True))


@_underflow_ok
def softmax(z: Array, *, xp: ModuleType | None = None) -> Array:
    """Softmax along the last axis (SciPy's four-line stable form)."""
    xp = _ns(xp, z)
    e = xp.exp(z - xp.max(z, axis=-1, keepdims=True))
    return e / xp.sum(e, axis=-1, keepdims=True)


def one_hot(labels: Array, k: int, dtype: Any, *, xp: ModuleType | None = None) -> Array:
    """(n,) integer labels -> (n, k) one-hot rows of ``dtype``; labels outside [0, k): 0 rows."""
    xp = _ns(xp, labels)
    classes = xp.arange(k, dtype=labels.dtype, device=device(labels))
    return xp.astype(labels[:, None] == classes, dtype)


# ---------------------------------------------------------------------------- losses
def _scale(reduction: Reduction, size: int) -> float:
    return 1.0 / size if reduction == "mean" else 1.0


def _reduce(per_element: Array, reduction: Reduction, *, xp: ModuleType) -> Array:
    if reduction == "none":  # each element's loss; a backward then gives the sum's gradient
        return per_element
    total = kernels_of(xp).sum(per_element, None)
    return total / math.prod(per_element.shape) if reduction == "mean" else total


@_underflow_ok
def exp_neg_abs(z: Array, *, xp: ModuleType | None = None) -> Array:
    """``exp(-|z|)``, in (0, 1]: the one exponential the stable sigmoid and BCE forms take."""
    xp = _ns(xp, z)
    return xp.exp(-xp.abs(z))


@_underflow_ok
def bce_with_logits(
    z: Array,
    y: Array,
    *,
    reduction: Reduction = "mean",
    xp: ModuleType | None = None,
    e: Array | None = None,
) -> Array:
    """Binary cross-entropy of sigmoid(z) against targets y in [0, 1], from the logits z.

    ``max(z, 0) - z y + log1p(exp(-|z|))``: only ``exp`` of a non-positive number is taken,
    so logits of +-1e4 give finite, correct values. (The seed's final form took ``exp`` of
    ``max(z, 0)`` and overflowed.)  z, y: (n, k) -> 0-d. ``e``: :func:`exp_neg_abs` of ``z``
    where the caller has it already.
    """
    xp = _ns(xp, z)
    e = exp_neg_abs(z, xp=xp) if e is None else e
    # max(z, 0) as the backend's ReLU: compat's torch maximum(z, 0.0) copies the 0.0 from the
    # host on each call, which a CUDA graph cannot capture.
    per_element = kernels_of(xp).relu(z) - z * y + xp.log1p(e)
    return _reduce(per_element, reduction, xp=xp)


@_underflow_ok
def bce_with_logits_backward(
    z: Array,
    y: Array,
    *,
    reduction: Reduction = "mean",
    xp: ModuleType | None = None,
    e: Array | None = None,
) -> Array:
    """dL/dz of :func:`bce_with_logits`: ``(sigmoid(z) - y) / N`` for the mean over N elements.

    Written so that no result is a difference of two nearly equal numbers: for z >= 0,
    ``sigmoid(z) - y = (1 - y) - sigmoid(-z)``, so y = 1, z = 30 gives -9.4e-14, not 0.
    """
    xp = _ns(xp, z)
    e = exp_neg_abs(z, xp=xp) if e is None else e
    tail = e / (1.0 + e)  # sigmoid(-|z|), accurate however small
    m = _indicator(z >= 0, z.dtype, xp)
    dz = (m - y) + tail * (1.0 - 2.0 * m)  # (1 - y) - tail where z >= 0, else tail - y
    return dz * _scale(reduction, math.prod(z.shape))


@_underflow_ok
def cross_entropy(
    logp: Array, target: Array, *, reduction: Reduction = "mean", xp: ModuleType | None = None
) -> Array:
    """Cross-entropy of log-probabilities logp: (n, k) against one-hot rows target: (n, k).

    Averaged over the n rows, as ``torch.nn.CrossEntropyLoss`` does (``"none"``: each row's, (n,)).
    """
    xp = _ns(xp, logp)
    if reduction == "none":
        return -xp.sum(target * logp, axis=-1)
    total = -xp.sum(target * logp)
    return total / logp.shape[0] if reduction == "mean" else total


@_underflow_ok
def cross_entropy_backward(
    logp: Array, target: Array, *, reduction: Reduction = "mean", xp: ModuleType | None = None
) -> Array:
    """dL/dz of the cross-entropy of ``log_softmax(z)``: ``(softmax(z) - target) / n``."""
    xp = _ns(xp, logp)
    return (xp.exp(logp) - target) * _scale(reduction, logp.shape[0])


def mse(
    z: Array, y: Array, *, reduction: Reduction = "mean", xp: ModuleType | None = None
) -> Array:
    """Squared error over all elements: mean (or sum) of ``(z - y)**2``."""
    xp = _ns(xp, z)
    d = z - y
    return _reduce(d * d, reduction, xp=xp)


def mse_backward(
    z: Array, y: Array, *, reduction: Reduction = "mean", xp: ModuleType | None = None
) -> Array:
    """dL/dz of :func:`mse`: ``2 (z - y) / N``."""
    return (z - y) * (2.0 * _scale(reduction, math.prod(z.shape)))


# The seed notebook's functional MLP keeps its names here; its body is in _seed.py.
from ._seed import ForwardCache as ForwardCache  # noqa: E402 (built from the functions above)
from ._seed import backward as backward  # noqa: E402
from ._seed import forward as forward  # noqa: E402
