"""The estimators' inputs and outputs: a user's ``X`` and ``y`` checked once on the host, class
labels encoded for the loss and decoded from predictions, and results handed back in the
namespace (and on the device) of the input they answer.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from ._backend import Array, Placement, backend_of, device, from_numpy, namespace_of, to_numpy


def as_host(data: Any, what: str) -> NDArray[Any]:
    """A NumPy array of ``data``: an array of any backend (copied to the host) or a sequence."""
    try:
        namespace_of(data)
    except TypeError:
        try:
            return np.asarray(data)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"{what} could not be read as an array: {exc}") from None
    return to_numpy(data)


def check_features(X: Any, what: str = "X") -> NDArray[np.float64]:
    """``X`` as float64 ``(n, p)``: numeric, finite, at least one row."""
    A = as_host(X, what)
    if A.ndim != 2:
        raise ValueError(f"{what} must be 2-D (n_samples, n_features), got shape {A.shape}")
    if A.dtype.kind not in "biuf":
        raise ValueError(f"{what} must be numeric, got dtype {A.dtype}")
    if A.shape[0] == 0:
        raise ValueError(f"{what} is empty")
    A = A.astype(np.float64)
    if not np.isfinite(A).all():
        raise ValueError(f"{what} must be finite; it has nan or inf")
    return A


def check_n_features(X: Any, n_features: int, who: str, what: str = "X") -> None:
    """Refuse ``X: (n, p)`` unless ``p`` is the ``n_features`` an estimator was fitted with."""
    if X.shape[1] != n_features:
        raise ValueError(
            f"{what} has {X.shape[1]} features, but {who} was fitted with {n_features}"
        )


def features_on(where: Placement, X: Any, n_features: int, who: str) -> Array:
    """``X`` as a model's input on ``where``: an array already there is used as it is (no copy,
    no transfer); anything else is checked on the host and moved once."""
    if (
        namespace_or_none(X) is where.xp
        and device(X) == where.device
        and X.dtype == where.dtype
        and X.ndim == 2
    ):
        check_n_features(X, n_features, who)
        return X
    host = check_features(X)
    check_n_features(host, n_features, who)
    return where.asarray(host)


def check_class_labels(y: Any, n: int) -> NDArray[Any]:
    """``y`` as 1-D class labels of length ``n`` (a column ``(n, 1)`` is accepted).

    Labels may be numbers or strings; non-integer floats are refused as continuous targets.
    """
    labels = as_host(y, "y")
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1:
        raise ValueError(f"y must be 1-D class labels (n,), got shape {labels.shape}")
    if labels.shape[0] != n:
        raise ValueError(f"X and y have different numbers of samples: {n} and {labels.shape[0]}")
    if labels.dtype.kind not in "biufUSO":
        raise ValueError(f"y must hold class labels, got dtype {labels.dtype}")
    if labels.dtype.kind == "f":
        if not np.isfinite(labels).all():
            raise ValueError("y contains NaN or infinity")
        if not np.array_equal(labels, np.round(labels)):
            raise ValueError(
                "Unknown label type: continuous (y holds non-integer floats); "
                "use MLPRegressor for regression"
            )
    return labels


def unique_labels(y: Any) -> NDArray[Any]:
    """The sorted distinct values of ``y``."""
    return np.unique(as_host(y, "classes"))


def encode_labels(labels: NDArray[Any], classes: NDArray[Any]) -> NDArray[np.intp]:
    """Positions of ``labels`` in the sorted ``classes``; a label not in ``classes`` is an error."""
    unknown = np.setdiff1d(labels, classes)
    if unknown.size:
        raise ValueError(
            f"y contains labels not seen before: {unknown.tolist()[:5]}; "
            f"known classes: {classes.tolist()}"
        )
    return np.searchsorted(classes, labels).astype(np.intp)


def class_targets(codes: NDArray[np.intp], n_outputs: int) -> NDArray[np.float64]:
    """Float targets for the loss: ``(n, 1)`` 0/1 for one logit, else ``(n, k)`` one-hot rows."""
    if n_outputs == 1:
        return codes.astype(np.float64).reshape(-1, 1)
    one_hot: NDArray[np.float64] = (codes[:, None] == np.arange(n_outputs)).astype(np.float64)
    return one_hot


def decode_labels(classes: NDArray[Any], codes: Any) -> NDArray[Any]:
    """``classes[codes]`` for integer or boolean (two-class) codes from any backend."""
    return classes[as_host(codes, "codes").astype(np.intp)]


def check_regression_targets(y: Any, n: int) -> NDArray[np.float64]:
    """``y`` as float64 ``(n, n_outputs)`` from ``(n,)`` or ``(n, n_outputs)``, finite."""
    t = as_host(y, "y")
    if t.ndim not in (1, 2) or t.dtype.kind not in "biuf":
        raise ValueError(f"y must be numeric, (n,) or (n, n_outputs), got {t.dtype} {t.shape}")
    if t.shape[0] != n:
        raise ValueError(f"X and y have different numbers of samples: {n} and {t.shape[0]}")
    t2 = t.astype(np.float64).reshape(n, -1)
    if not np.isfinite(t2).all():
        raise ValueError("y contains NaN or infinity")
    return t2


def namespace_or_none(x: Any) -> Any:
    """The array namespace of ``x``, or None for plain sequences and other non-arrays."""
    try:
        return namespace_of(x)
    except TypeError:
        return None


def like_input(result: Any, X_in: Any) -> Any:
    """``result`` in the namespace and on the device of the user's input ``X_in`` (NumPy for
    NumPy arrays and plain sequences)."""
    x_xp = namespace_or_none(X_in)
    if x_xp is None or backend_of(x_xp).is_host:
        return as_host(result, "result")
    if namespace_or_none(result) is x_xp and device(result) == device(X_in):
        return result
    return from_numpy(as_host(result, "result"), xp=x_xp, device=device(X_in))
