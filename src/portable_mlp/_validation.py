"""The estimators' parameters, inputs and outputs: the constructor's parameters checked when
fitting; a user's ``X``, ``y`` and ``sample_weight`` checked once on the host with scikit-learn's
meanings and messages, feature names, class labels encoded for the loss and decoded from
predictions, and results handed back in the namespace (and on the device) of the input they
answer.
"""

from __future__ import annotations

import functools
import importlib
import math
import numbers
import sys
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ._backend import (
    Array,
    Placement,
    backend_of,
    device,
    from_numpy,
    isdtype,
    namespace_of,
    numpy_dtype,
    to_numpy,
)
from .layers import ACTIVATIONS
from .optim import OPTIMIZERS

SCHEDULES = ("constant", "invscaling", "adaptive", "step", "cosine")


# ---------------------------------------------------------------- the estimators' parameters
def check_estimator_params(est: Any) -> None:
    """Refuse a constructor parameter of ``est`` outside its domain, naming it and its value
    (checked when fitting, as scikit-learn does)."""
    name = type(est).__name__
    _check_choice(name, "solver", est.solver, OPTIMIZERS)
    _check_choice(name, "learning_rate", est.learning_rate, SCHEDULES)
    _check_choice(name, "activation", est.activation, ACTIVATIONS)
    sizes: Any = est.hidden_layer_sizes
    sizes = [sizes] if is_int(sizes) else sizes
    if not (isinstance(sizes, Sequence) and all(is_int(s) and s >= 1 for s in sizes)):
        raise ValueError(f"{name} hidden_layer_sizes must be positive ints, got {sizes!r}")
    batch: Any = est.batch_size
    if not (batch == "auto" or (is_int(batch) and batch >= 1)):
        raise ValueError(f"{name} batch_size must be 'auto' or an int >= 1, got {batch!r}")
    if not (is_int(est.max_iter) and est.max_iter >= 1):
        raise ValueError(f"{name} max_iter must be an int >= 1, got {est.max_iter!r}")
    if not isinstance(est.compile, (bool, np.bool_)):
        raise ValueError(f"{name} compile must be True or False, got {est.compile!r}")
    stall = est.n_iter_no_change
    if not ((is_int(stall) and stall >= 1) or stall == math.inf):
        raise ValueError(f"{name} n_iter_no_change must be an int >= 1 or inf, got {stall!r}")
    for key, interval in (
        ("alpha", "[0, inf)"),
        ("learning_rate_init", "(0, inf)"),
        ("power_t", "[0, inf)"),
        ("tol", "[0, inf)"),
        ("momentum", "[0, 1]"),
        ("validation_fraction", "(0, 1)"),
        ("beta_1", "[0, 1)"),
        ("beta_2", "[0, 1)"),
        ("epsilon", "(0, inf)"),
        ("max_grad_norm", "(0, inf)"),
    ):
        value = getattr(est, key)
        if not (key == "max_grad_norm" and value is None):
            _check_number(name, key, value, interval)


def is_int(value: Any) -> bool:
    """An integer, and not a bool."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _check_choice(who: str, key: str, value: Any, choices: Any) -> None:
    if not (isinstance(value, str) and value in choices):
        raise ValueError(f"{who} {key} must be one of {', '.join(choices)}, got {value!r}")


def _check_number(who: str, key: str, value: Any, interval: str) -> None:
    """Refuse anything but a finite real number in ``interval`` (``"[0, 1)"``, ...): NaN and
    infinity never pass, whatever the bounds."""
    low, high = (float(b) for b in interval[1:-1].split(","))
    number = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(
        value, (bool, np.bool_)
    )
    if number and math.isfinite(value):
        above = value >= low if interval[0] == "[" else value > low
        below = value <= high if interval[-1] == "]" else value < high
        if above and below:
            return
    raise ValueError(f"{who} {key} must be a finite number in {interval}, got {value!r}")


# ---------------------------------------------------------------- scikit-learn's classes
@functools.cache
def sklearn_classes() -> dict[str, type]:
    """``ConvergenceWarning``, ``NotFittedError`` and ``DataConversionWarning``: subclasses of
    scikit-learn's where it is installed, so that the warning filters and ``except`` clauses
    written for scikit-learn catch ours; without it, of the built-in classes scikit-learn's
    derive from. Made on first use: importing scikit-learn takes seconds."""
    try:
        sk: Any = importlib.import_module("sklearn.exceptions")
    except ImportError:
        sk = None
    fallback: dict[str, tuple[type, ...]] = {
        "ConvergenceWarning": (UserWarning,),
        "NotFittedError": (ValueError, AttributeError),
        "DataConversionWarning": (UserWarning,),
    }
    docs = {
        "ConvergenceWarning": "``max_iter`` epochs ran out before the stopping rule was met.",
        "NotFittedError": "A method that needs a fitted estimator was called before ``fit``.",
        "DataConversionWarning": "The input was converted (a column ``y`` made 1-D).",
    }
    return {
        name: type(
            name,
            (getattr(sk, name),) if sk is not None else bases,
            {"__doc__": docs[name], "__module__": "portable_mlp.estimator"},
        )
        for name, bases in fallback.items()
    }


def array_api_dispatch() -> bool:
    """Whether scikit-learn's ``array_api_dispatch`` is on (it cannot be unless it is imported)."""
    sklearn = sys.modules.get("sklearn")
    return sklearn is not None and bool(sklearn.get_config().get("array_api_dispatch", False))


# ---------------------------------------------------------------------------- features
def is_sparse(X: Any) -> bool:
    """Whether ``X`` is a SciPy sparse matrix or array (which exists only once SciPy is
    imported, so nothing is imported here)."""
    sparse = sys.modules.get("scipy.sparse")
    return sparse is not None and bool(sparse.issparse(X))


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


def check_features(X: Any, what: str = "X", *, who: str, limit: Any = None) -> Any:
    """``X`` as float64 ``(n, p)`` on the host, numeric, finite, with a row and a feature: a
    NumPy array, or a SciPy CSR matrix for sparse ``X``. DataFrame columns of any numeric kind
    (bool, nullable integers) are read as numbers. ``limit``: a floating dtype whose range every
    value must fit (the model's), so that a cast to it never turns a number into infinity."""
    if is_sparse(X):
        A = X.tocsr()
        if A.dtype.kind == "c":
            raise ValueError(f"Complex data not supported: {what} is complex")
        A = A.astype(np.float64)
        values = A.data
    else:
        A = _numeric(_host_matrix(X, what), what)
        values = A
    _check_shape(A.shape, what, who)
    if values.size:
        largest = np.max(np.abs(values))  # one pass finds NaN, infinity and overflow alike
        if not np.isfinite(largest):
            raise ValueError(_non_finite(values, what, who))
        if limit is not None:
            check_range(float(largest), limit, what)
    return A


def check_range(largest: float, dtype: Any, what: str) -> None:
    """Refuse values up to ``largest`` in magnitude that a cast to ``dtype`` would overflow."""
    bound = float(np.finfo(numpy_dtype(dtype)).max)
    if largest > bound:
        name = numpy_dtype(dtype).name
        raise ValueError(
            f"{what} has values up to {largest:.4g}, beyond the range of the model's {name} "
            f"(largest {bound:.4g}); scale the features first, or use dtype='float64'"
        )


def _host_matrix(X: Any, what: str) -> NDArray[Any]:
    if hasattr(X, "columns") and hasattr(X, "to_numpy"):  # a DataFrame
        try:  # pandas: numeric extension columns (nullable Int64, boolean) as floats, NA as NaN
            return np.asarray(X.to_numpy(dtype=np.float64, na_value=np.nan))
        except (TypeError, ValueError):
            pass  # text columns, or another library's to_numpy: the checks below say what
    return as_host(X, what)


def _numeric(A: NDArray[Any], what: str) -> NDArray[np.float64]:
    kind = A.dtype.kind
    if kind == "c":
        raise ValueError(f"Complex data not supported: {what} is complex")
    if kind == "O":  # numbers held as objects (a DataFrame of mixed column types) are numbers
        try:
            return A.astype(np.float64)
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"{what} must be numeric: {exc}") from None
    if kind not in "biuf":
        raise ValueError(f"{what} must be numeric, got dtype {A.dtype}")
    return A.astype(np.float64)


def _check_shape(shape: tuple[int, ...], what: str, who: str) -> None:
    if len(shape) == 1:
        raise ValueError(
            f"Expected 2D array, got 1D array instead for {what} of shape {shape}. Reshape your "
            "data either using array.reshape(-1, 1) if your data has a single feature or "
            "array.reshape(1, -1) if it contains a single sample."
        )
    if len(shape) != 2:
        raise ValueError(f"Expected 2D array (n_samples, n_features) for {what}, got {shape}")
    for axis, name in ((0, "sample"), (1, "feature")):
        if shape[axis] == 0:
            raise ValueError(
                f"Found array with 0 {name}(s) (shape={shape}) while a minimum of 1 is "
                f"required by {who}."
            )


def _non_finite(values: NDArray[Any], what: str, who: str) -> str:
    nan = np.isnan(values)
    kind = "NaN" if nan.any() else "infinity"
    where = np.argwhere(nan if kind == "NaN" else ~np.isfinite(values))[0]
    at = f"row {where[0]}, column {where[1]}" if values.ndim == 2 else f"stored value {where[0]}"
    return f"Input {what} contains {kind} (first at {at}); {who} needs finite values."


def check_n_features(X: Any, n_features: int, who: str, what: str = "X") -> None:
    """Refuse ``X: (n, p)`` unless ``p`` is the ``n_features`` an estimator was fitted with."""
    if X.shape[1] != n_features:
        raise ValueError(
            f"{what} has {X.shape[1]} features, but {who} is expecting {n_features} features "
            "as input."
        )


def features_on(where: Placement, X: Any, n_features: int, who: str) -> Array:
    """Dense ``X`` as a model's input on ``where``, finite and within the model's dtype.

    An array already in the model's namespace and on its device is checked there (one value
    read back) and used as it is, or cast on the device if its floating dtype differs;
    anything else is checked on the host and moved once.
    """
    xp = where.xp
    if namespace_or_none(X) is xp and device(X) == where.device:
        _check_shape(tuple(X.shape), "X", who)
        check_n_features(X, n_features, who)
        largest = float(where.to_host(xp.max(xp.abs(X))))  # NaN or infinity show here too
        if not np.isfinite(largest):
            raise ValueError(_non_finite(where.to_host(X), "X", who))
        if X.dtype == where.dtype:
            return X
        if isdtype(xp, X.dtype, "real floating"):
            check_range(largest, where.dtype, "X")
        return xp.astype(X, where.dtype)
    host = check_features(X, who=who, limit=where.dtype)
    check_n_features(host, n_features, who)
    return where.asarray(host)


def feature_names(X: Any) -> NDArray[np.object_] | None:
    """The column names of a DataFrame when they are all strings, else None (scikit-learn's
    rule; names of mixed string and other types are an error)."""
    columns = getattr(X, "columns", None)
    if columns is None or isinstance(X, np.ndarray) or is_sparse(X):
        return None
    names = np.asarray(list(columns), dtype=object)
    if len(names) == 0:
        return None
    types = sorted({type(v).__qualname__ for v in names})
    if len(types) > 1 and "str" in types:
        raise TypeError(
            "Feature names are only supported if all input features have string names, but "
            f"your input has {types} as feature name / column name types. Convert them all to "
            "strings (X.columns = X.columns.astype(str)) or none of them."
        )
    return names if types == ["str"] else None


def check_feature_names(estimator: Any, X: Any, *, reset: bool) -> None:
    """Record (``reset``) or check ``X``'s column names against ``feature_names_in_``, as
    scikit-learn's estimators do: other, missing or reordered names are an error; names on only
    one side, a warning."""
    names = feature_names(X)
    who = type(estimator).__name__
    if reset:
        if names is not None:
            estimator.feature_names_in_ = names
        elif hasattr(estimator, "feature_names_in_"):
            del estimator.feature_names_in_
        return
    fitted = getattr(estimator, "feature_names_in_", None)
    if fitted is None and names is None:
        return
    if fitted is None:
        warnings.warn(
            f"X has feature names, but {who} was fitted without feature names",
            UserWarning,
            stacklevel=3,
        )
        return
    if names is None:
        warnings.warn(
            f"X does not have valid feature names, but {who} was fitted with feature names",
            UserWarning,
            stacklevel=3,
        )
        return
    if len(fitted) == len(names) and np.array_equal(fitted, names):
        return
    unseen, missing = sorted(set(names) - set(fitted)), sorted(set(fitted) - set(names))
    message = "The feature names should match those that were passed during fit.\n"
    if unseen:
        message += "Feature names unseen at fit time:\n" + _listed(unseen)
    if missing:
        message += "Feature names seen at fit time, yet now missing:\n" + _listed(missing)
    if not unseen and not missing:
        message += "Feature names must be in the same order as they were in fit.\n"
    raise ValueError(message)


def _listed(names: list[str], most: int = 5) -> str:
    lines = [f"- {name}\n" for name in names[:most]]
    return "".join(lines) + ("- ...\n" if len(names) > most else "")


def check_same_namespace(where: Placement, X: Any, who: str, method: str) -> None:
    """Under scikit-learn's ``array_api_dispatch`` a model lives with the data it was fitted on;
    refuse ``X`` from another namespace or device (NumPy models take any array-like)."""
    x_xp = namespace_or_none(X)
    if x_xp is None or is_sparse(X):
        if where.backend.is_host:
            return
        found = "sparse array" if is_sparse(X) else "array-like"
    elif x_xp is where.xp and device(X) == where.device:
        return
    else:
        found = f"{backend_of(x_xp).name} array on {device(X)}"
    raise ValueError(
        f"Inputs passed to {who}.{method}() must use the same namespace and the same device as "
        f"those passed to fit(): the model is {where.describe()}, X is a {found}"
    )


# ---------------------------------------------------------------------------- targets
def check_y_given(y: Any, who: str) -> None:
    if y is None:
        raise ValueError(f"This {who} estimator requires y to be passed, but the target y is None.")


def label_values(y: Any) -> NDArray[Any]:
    """``y`` as a NumPy array of labels: numbers or strings, never a mixture (NumPy would turn
    ``[1, "a"]`` into two strings without a word)."""
    if isinstance(y, (list, tuple)):
        values = np.asarray(y, dtype=object)
    elif namespace_or_none(y) is not None:
        values = to_numpy(y)
    else:
        values = np.asarray(y)  # a Series: object dtype only for text or mixed values
    if values.dtype != object:
        return values
    kinds = {_label_kind(v) for v in values.ravel().tolist()}
    if kinds == {"str"}:
        return values.astype(str)
    if kinds <= {"number"}:
        return np.asarray(values.tolist())
    raise ValueError(
        f"y has labels of mixed types ({', '.join(sorted(kinds))}); class labels must be all "
        "numbers or all strings"
    )


def _label_kind(value: Any) -> str:
    if isinstance(value, (str, np.str_)):
        return "str"
    if isinstance(value, (numbers.Number, np.bool_)):
        return "number"
    return type(value).__name__


def check_class_labels(y: Any, n: int) -> tuple[NDArray[Any], bool]:
    """``y`` as class labels ``(n,)``, or a label indicator matrix ``(n, k)`` of 0s and 1s
    (multilabel), and whether it is the latter. A column ``(n, 1)`` is 1-D labels, with
    scikit-learn's ``DataConversionWarning``. Non-integer floats are refused as continuous."""
    labels = label_values(y)
    if labels.ndim == 2 and labels.shape[1] == 1:
        warnings.warn(
            sklearn_classes()["DataConversionWarning"](
                "A column-vector y was passed when a 1d array was expected. Please change the "
                "shape of y to (n_samples,), for example using ravel()."
            ),
            stacklevel=4,
        )
        labels = labels[:, 0]
    if labels.ndim not in (1, 2):
        raise ValueError(f"y must be 1-D class labels (n,), got shape {labels.shape}")
    if labels.shape[0] != n:
        raise ValueError(f"X and y have different numbers of samples: {n} and {labels.shape[0]}")
    if labels.dtype.kind not in "biufUS":
        raise ValueError(f"y must hold class labels, got dtype {labels.dtype}")
    if labels.dtype.kind == "f":
        if not np.isfinite(labels).all():
            raise ValueError(f"Input y contains {'NaN' if np.isnan(labels).any() else 'infinity'}")
        if not np.array_equal(labels, np.round(labels)):
            raise ValueError(
                "Unknown label type: continuous (y holds non-integer floats); "
                "use MLPRegressor for regression"
            )
    if labels.ndim == 1:
        return labels, False
    if labels.dtype.kind not in "biuf" or not np.isin(labels, (0, 1)).all():
        raise ValueError(
            f"y of shape {labels.shape} must be a multilabel indicator matrix of 0s and 1s; "
            "multiclass-multioutput targets are not supported"
        )
    return labels.astype(np.intp), True


def unique_labels(y: Any) -> NDArray[Any]:
    """The sorted distinct values of ``y``."""
    return np.unique(label_values(y))


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
    t = label_values(y)
    if t.ndim not in (1, 2) or t.dtype.kind not in "biuf":
        raise ValueError(f"y must be numeric, (n,) or (n, n_outputs), got {t.dtype} {t.shape}")
    if t.shape[0] != n:
        raise ValueError(f"X and y have different numbers of samples: {n} and {t.shape[0]}")
    t2 = t.astype(np.float64).reshape(n, -1)
    if not np.isfinite(t2).all():
        raise ValueError(f"Input y contains {'NaN' if np.isnan(t2).any() else 'infinity'}")
    return t2


def check_sample_weight(sample_weight: Any, n: int) -> NDArray[np.float64] | None:
    """``sample_weight`` as float64 ``(n,)``: finite, non-negative, not all zero (``None`` for
    none given)."""
    if sample_weight is None:
        return None
    if isinstance(sample_weight, numbers.Number):
        sample_weight = np.full(n, sample_weight)
    w = as_host(sample_weight, "sample_weight")
    if w.ndim != 1 or w.shape[0] != n:
        raise ValueError(f"sample_weight must have shape ({n},), got {w.shape}")
    if w.dtype.kind not in "biuf":
        raise ValueError(f"sample_weight must be numeric, got dtype {w.dtype}")
    w = w.astype(np.float64)
    if not np.isfinite(w).all():
        raise ValueError("Input sample_weight contains NaN or infinity")
    if (w < 0).any():
        raise ValueError("sample_weight must be non-negative")
    if not w.any():
        raise ValueError("Sample weights must contain at least one non-zero number.")
    return w


# ---------------------------------------------------------------------------- results
def namespace_or_none(x: Any) -> Any:
    """The array namespace of ``x``, or None for plain sequences and other non-arrays."""
    try:
        return namespace_of(x)
    except TypeError:
        return None


def like_input(result: Any, X_in: Any, *, floating: bool = False) -> Any:
    """``result`` in the namespace and on the device of the user's input ``X_in`` (NumPy for
    NumPy arrays, sequences, DataFrames and sparse matrices). ``floating``: a floating result
    also takes ``X_in``'s floating dtype, where it has one."""
    x_xp = namespace_or_none(X_in)
    dtype = None
    if floating and x_xp is not None and isdtype(x_xp, X_in.dtype, "real floating"):
        dtype = X_in.dtype
    if x_xp is None or backend_of(x_xp).is_host:
        host = as_host(result, "result")
        return host if dtype is None else host.astype(dtype, copy=False)
    if namespace_or_none(result) is x_xp and device(result) == device(X_in):
        return result if dtype is None or result.dtype == dtype else x_xp.astype(result, dtype)
    return from_numpy(as_host(result, "result"), xp=x_xp, device=device(X_in), dtype=dtype)
