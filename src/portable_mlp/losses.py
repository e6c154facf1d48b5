"""Losses with the definitions and reductions of their PyTorch namesakes.

``L = loss.forward(z, y)`` returns a 0-d array and keeps what ``dz = loss.backward()`` needs;
``dz`` is the true gradient of ``L`` (the 1/n of a mean lives here, not in the layers). With
``reduction="none"`` ``L`` holds each element's loss (each row's, for cross-entropy) and ``dz`` is
the gradient of their sum. :class:`SampleWeightedLoss` weights rows, as scikit-learn's
``sample_weight`` does.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

from . import functional as F
from ._backend import Array, device, dtype_name, isdtype, kernels_of, namespace_of

_REDUCTIONS = ("mean", "sum", "none")


class Loss:
    """Base class: ``forward(z, y) -> 0-d array``, ``backward() -> dL/dz``."""

    def __init__(self, reduction: F.Reduction = "mean") -> None:
        self._labels = False
        if reduction not in _REDUCTIONS:
            raise ValueError(
                f"reduction must be one of {', '.join(_REDUCTIONS)}, got {reduction!r}"
            )
        self.reduction: F.Reduction = reduction
        self._cache: tuple[Any, ...] | None = None  # what _backward needs, namespace last

    def __repr__(self) -> str:
        return f"{type(self).__name__}(reduction={self.reduction!r})"

    def _settings(self) -> tuple[Any, ...]:
        """The Python values the loss reads (a captured step bakes them in and is keyed by
        them, as by the optimizer's); a subclass with settings of its own adds them."""
        return (self.reduction,)

    def forward(self, z: Array, y: Array) -> Array:
        """The loss of logits (or predictions) ``z: (n, k)`` against targets ``y``."""
        xp = namespace_of(z, y)
        self._check_logits(z, y, xp)
        return self._forward(z, self._prepare_target(z, y, xp), xp)

    __call__ = forward

    def backward(self) -> Array:
        """dL/dz for the last :meth:`forward`, shape (n, k)."""
        if self._cache is None:
            raise RuntimeError(
                f"{self!r}.backward() called before forward() (or twice for one forward)"
            )
        cache, self._cache = self._cache, None
        return self._backward(*cache)

    def _forward(self, z: Array, target: Array, xp: ModuleType) -> Array:
        raise NotImplementedError

    def _l2_divisor(self, rows: int) -> Any:
        """What scikit-learn divides the L2 term of a batch of ``rows`` rows by (read after
        :meth:`forward`): the rows."""
        return rows

    def _backward(self, *cache: Any) -> Array:
        raise NotImplementedError

    def _prepare_target(self, z: Array, y: Array, xp: ModuleType) -> Array:
        """Check ``y`` against ``z`` and return the target array the math uses."""
        self._check_same_shape(z, y)
        return self._float_target(z, y, xp, integers_ok=False)

    def _check_logits(self, z: Array, y: Array, xp: ModuleType) -> None:
        if z.ndim != 2:
            raise ValueError(f"{self!r} expected z of shape (n, k), got {tuple(z.shape)}")
        if not isdtype(xp, z.dtype, "real floating"):
            raise TypeError(f"{self!r} expected floating z, got {dtype_name(z.dtype)}")
        if device(y) != device(z):
            raise ValueError(
                f"{self!r} expected y on the device of z ({device(z)}), got {device(y)}"
            )

    def _check_same_shape(self, z: Array, y: Array) -> None:
        if tuple(y.shape) != tuple(z.shape):
            raise ValueError(
                f"{self!r} expected y with the shape of z {tuple(z.shape)}, got {tuple(y.shape)}"
            )

    def _float_target(self, z: Array, y: Array, xp: ModuleType, *, integers_ok: bool) -> Array:
        if y.dtype == z.dtype:
            return y
        if integers_ok and isdtype(xp, y.dtype, ("integral", "bool")):
            return xp.astype(y, z.dtype)  # 0/1 labels as numbers: exact in any float dtype
        raise TypeError(
            f"{self!r} expected y with the dtype of z ({dtype_name(z.dtype)}), got "
            f"{dtype_name(y.dtype)}; cast it explicitly"
        )


class BCEWithLogitsLoss(Loss):
    """Binary cross-entropy on logits ``z: (n, k)`` with targets ``y: (n, k)`` in [0, 1].

    Integer or boolean 0/1 targets are accepted and converted to ``z``'s dtype.
    """

    def _prepare_target(self, z: Array, y: Array, xp: ModuleType) -> Array:
        self._check_same_shape(z, y)
        return self._float_target(z, y, xp, integers_ok=True)

    def _forward(self, z: Array, target: Array, xp: ModuleType) -> Array:
        e = F.exp_neg_abs(z, xp=xp)  # shared by the loss and its gradient
        self._cache = (z, target, e, xp)
        return kernels_of(xp).bce_with_logits(z, target, e, self.reduction)

    def _backward(self, z: Array, target: Array, e: Array, xp: ModuleType) -> Array:
        return kernels_of(xp).bce_with_logits_backward(z, target, e, self.reduction)


class CrossEntropyLoss(Loss):
    """Softmax cross-entropy on logits ``z: (n, k)``.

    ``y`` is either integer class labels ``(n,)`` in ``[0, k)`` or class probabilities ``(n, k)``
    of ``z``'s dtype, as in ``torch.nn.CrossEntropyLoss``. A label outside ``[0, k)`` makes the
    loss NaN instead of raising: checking would read the labels back from the device on every
    call. (``MLPClassifier`` checks its labels once, up front.)
    """

    def _prepare_target(self, z: Array, y: Array, xp: ModuleType) -> Array:
        self._labels = y.ndim == 1
        if self._labels:
            if not isdtype(xp, y.dtype, "integral"):
                raise TypeError(
                    f"{self!r} expected integer class labels of shape (n,), got "
                    f"{dtype_name(y.dtype)}; for class probabilities pass y of shape (n, k)"
                )
            if y.shape[0] != z.shape[0]:
                raise ValueError(
                    f"{self!r} expected {z.shape[0]} labels (one per row of z), got {y.shape[0]}"
                )
            return F.one_hot(y, z.shape[1], z.dtype, xp=xp)
        self._check_same_shape(z, y)
        return self._float_target(z, y, xp, integers_ok=False)

    def _forward(self, z: Array, target: Array, xp: ModuleType) -> Array:
        logp = F.log_softmax(z, xp=xp)
        self._cache = (logp, target, xp)
        loss = F.cross_entropy(logp, target, reduction=self.reduction, xp=xp)
        if not self._labels:
            return loss
        # The one-hot row of an out-of-range label is all zero: poison the loss, never drop it.
        labelled = xp.all(xp.sum(target, axis=-1) > 0)
        return xp.where(labelled, loss, float("nan"))

    def _backward(self, logp: Array, target: Array, xp: ModuleType) -> Array:
        return F.cross_entropy_backward(logp, target, reduction=self.reduction, xp=xp)


class MSELoss(Loss):
    """Mean (or summed) squared error over all elements; ``y`` has ``z``'s shape and dtype."""

    def _forward(self, z: Array, target: Array, xp: ModuleType) -> Array:
        self._cache = (z, target, xp)
        return F.mse(z, target, reduction=self.reduction, xp=xp)

    def _backward(self, z: Array, target: Array, xp: ModuleType) -> Array:
        return F.mse_backward(z, target, reduction=self.reduction, xp=xp)


class SampleWeightedLoss(Loss):
    """``base``'s loss with a weight per row: ``sum_i w_i l_i / sum_i w_i``, where ``l_i`` is row
    ``i``'s loss as ``base``'s mean counts it (its mean over the outputs, or its cross-entropy),
    so unit weights give ``base`` itself: scikit-learn's ``sample_weight``.

    The targets carry the weights as one more column, ``y: (n, k + 1)`` for ``z: (n, k)``, so a
    batch gathered from them brings its weights along. ``weight_total`` is the last batch's sum
    of weights (a 0-d array), by which :func:`~portable_mlp.training.train_step` divides the L2
    term, as scikit-learn does.
    """

    def __init__(self, base: Loss) -> None:
        super().__init__("mean")
        if type(base) not in LOSSES.values():
            raise TypeError(f"SampleWeightedLoss takes one of {', '.join(LOSSES)}, got {base!r}")
        self.base = type(base)(reduction="none")
        self.weight_total: Array | None = None

    def __repr__(self) -> str:
        return f"SampleWeightedLoss({type(self.base).__name__}())"

    def _check_logits(self, z: Array, y: Array, xp: ModuleType) -> None:
        self.base._check_logits(z, y, xp)

    def _prepare_target(self, z: Array, y: Array, xp: ModuleType) -> Array:
        if y.ndim != 2 or tuple(y.shape) != (z.shape[0], z.shape[1] + 1):
            raise ValueError(
                f"{self!r} expected targets and weights of shape {(z.shape[0], z.shape[1] + 1)} "
                f"for z of shape {tuple(z.shape)}, got {tuple(y.shape)}"
            )
        target = self.base._prepare_target(z, y[:, :-1], xp)
        return xp.concat([target, self._float_target(z, y[:, -1:], xp, integers_ok=False)], axis=1)

    def _forward(self, z: Array, target: Array, xp: ModuleType) -> Array:
        w = target[:, -1]  # (n,)
        each = self.base._forward(z, target[:, :-1], xp)  # (n, k), or (n,) for cross-entropy
        outputs = 1 if each.ndim == 1 else each.shape[1]
        rows = each if each.ndim == 1 else xp.sum(each, axis=1)
        self.weight_total = total = xp.sum(w)
        share = w / (total * float(outputs))  # (n,): each row's part of the weighted mean
        self._cache = (share[:, None],)
        return xp.sum(rows * share)

    def _backward(self, share: Array) -> Array:
        return self.base.backward() * share

    def _l2_divisor(self, rows: int) -> Any:
        return self.weight_total


LOSSES: dict[str, type[Loss]] = {
    "bce_with_logits": BCEWithLogitsLoss,
    "cross_entropy": CrossEntropyLoss,
    "mse": MSELoss,
}
