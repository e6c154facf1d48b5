"""Data for the models: two bundled classification sets, a user's CSV or NPZ file, a standardizer
and a (stratified) train/test split. Everything here is plain NumPy on the host, in float64;
move the arrays to a backend with :func:`portable_mlp.asarray` afterwards.

>>> from portable_mlp import datasets
>>> X, y = datasets.load("breast_cancer")
>>> X_train, X_test, y_train, y_test = datasets.train_test_split(X, y, rng=0)
>>> scaler = datasets.Standardizer().fit(X_train)
>>> X_train, X_test = scaler.transform(X_train), scaler.transform(X_test)
"""

from __future__ import annotations

import csv
import gzip
import math
import os
import zipfile
from collections import Counter
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = [
    "DATASETS",
    "DataError",
    "Standardizer",
    "feature_names",
    "load",
    "load_file",
    "target_names",
    "train_test_split",
]

DATASETS = ("breast_cancer", "digits")

_FILES = {"breast_cancer": "breast_cancer.csv.gz", "digits": "digits.csv.gz"}

# The 10 measurements of a cell nucleus, each as its mean, standard error and worst value.
_NUCLEUS = (
    "radius",
    "texture",
    "perimeter",
    "area",
    "smoothness",
    "compactness",
    "concavity",
    "concave points",
    "symmetry",
    "fractal dimension",
)
_BREAST_CANCER_FEATURES = (
    [f"mean {m}" for m in _NUCLEUS]
    + [f"{m} error" for m in _NUCLEUS]
    + [f"worst {m}" for m in _NUCLEUS]
)

# Cells read as "no value" (compared lower-cased), in a feature or the label column alike.
_MISSING = frozenset({"", "na", "n/a", "nan", "-nan", "+nan", "null", "none"})


class DataError(ValueError):
    """A data file that cannot be read as the features (and labels) it was asked for."""


def _check_name(name: str) -> None:
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; available: {', '.join(DATASETS)}")


def _bundled_text(name: str) -> list[list[str]]:
    resource = resources.files("portable_mlp") / "data" / _FILES[name]
    with resource.open("rb") as raw, gzip.open(raw, "rt", encoding="utf-8") as text:
        return list(csv.reader(text))


def load(name: str) -> tuple[NDArray[np.float64], NDArray[np.int64]]:
    """A bundled dataset as ``(X, y)``: ``X: (n, p)`` float64 features, ``y: (n,)`` int64 labels.

    ``"breast_cancer"``: 569 x 30, labels 0 (malignant, 212) and 1 (benign, 357).
    ``"digits"``: 1797 x 64 (8x8 images, pixel values 0..16), labels 0..9.
    The values are those of scikit-learn's ``load_breast_cancer`` / ``load_digits``.
    """
    _check_name(name)
    rows = _bundled_text(name)
    if name == "breast_cancer":
        rows = rows[1:]  # scikit-learn's header line: "n_samples,n_features,target names..."
    table = np.asarray(rows, dtype=np.float64)
    return np.ascontiguousarray(table[:, :-1]), table[:, -1].astype(np.int64)


def feature_names(name: str) -> list[str]:
    """The ``p`` column names of a bundled dataset's ``X``."""
    _check_name(name)
    if name == "breast_cancer":
        return list(_BREAST_CANCER_FEATURES)
    return [f"pixel_{i}_{j}" for i in range(8) for j in range(8)]


def target_names(name: str) -> list[str]:
    """The class names of a bundled dataset; ``target_names(name)[k]`` names label ``k``."""
    _check_name(name)
    if name == "breast_cancer":
        return _bundled_text(name)[0][2:]
    return [str(k) for k in range(10)]


def load_file(
    path: str | os.PathLike[str],
    target: str | None = None,
    *,
    features: Sequence[str] | None = None,
) -> tuple[NDArray[np.float64], NDArray[Any] | None, list[str]]:
    """A user's data file as ``(X, y, feature_names)``: ``X: (n, p)`` float64, ``y: (n,)`` or None.

    ``.csv``: a header row of column names, then comma-separated rows. ``target`` names the label
    column (``y``); every other column is a feature and must be numeric. Without ``target``, all
    columns are features and ``y`` is None.
    ``.npz``: arrays ``X: (n, p)`` and, optionally, ``y: (n,)`` (or the array named ``target``);
    an optional array ``feature_names: (p,)`` names the columns, which are otherwise x0, x1, ...

    ``features`` (for predicting with a trained model): the feature columns to read, in this
    order; a missing one is an error, and other columns are ignored.

    ``y`` keeps the raw labels: float64 if every label is a number, else an object array of str.
    Missing values (empty, NA, nan, ...) anywhere are an error, as is any other unreadable input:
    all raise :class:`DataError` with a one-line message naming the file.
    """
    file = Path(path)
    if not file.exists():
        raise FileNotFoundError(f"{file}: no such file (expected a .csv or .npz data file)")
    if not file.is_file():
        raise DataError(f"{file}: is not a file (expected a .csv or .npz data file)")
    suffix = file.suffix.lower()
    if suffix not in (".csv", ".npz"):
        raise DataError(
            f"{file}: unsupported file type {suffix or '(no extension)'!r}; expected .csv or .npz"
        )
    if file.stat().st_size == 0:
        raise DataError(f"{file}: empty file; expected {_expected(suffix)}")
    if suffix == ".csv":
        return _load_csv(file, target, features)
    return _load_npz(file, target, features)


def _check_feature_names(file: Path, names: list[str], what: str) -> None:
    """Refuse repeated names: two features would be read from one column (or one left unread)."""
    repeated = sorted(name for name, count in Counter(names).items() if count > 1)
    if repeated:
        raise DataError(
            f"{file}: {what} name the same column more than once: {', '.join(repeated)}"
        )


def _expected(suffix: str) -> str:
    if suffix == ".csv":
        return "a header row of column names followed by data rows"
    return "an .npz archive with an array X (and optionally y)"


def _load_csv(
    file: Path, target: str | None, features: Sequence[str] | None
) -> tuple[NDArray[np.float64], NDArray[Any] | None, list[str]]:
    try:
        # utf-8-sig: spreadsheet exports often start with a byte-order mark.
        with file.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            lines = [(reader.line_num, row) for row in reader if row]
    except UnicodeDecodeError as e:
        raise DataError(f"{file}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except csv.Error as e:
        raise DataError(f"{file}: malformed CSV ({e})") from None
    if not lines:
        raise DataError(f"{file}: empty file; expected {_expected('.csv')}")
    header = [c.strip() for c in lines[0][1]]
    if "" in header:
        raise DataError(f"{file}: column {header.index('') + 1} of the header has no name")
    duplicates = sorted({c for c in header if header.count(c) > 1})
    if duplicates:
        raise DataError(f"{file}: duplicate column names in the header: {', '.join(duplicates)}")
    if target is not None and target not in header:
        raise DataError(
            f"{file}: no target column {target!r}; available columns: {', '.join(header)}"
        )
    names = [c for c in header if c != target] if features is None else list(features)
    _check_feature_names(file, names, "features")
    if target is not None and target in names:
        raise DataError(f"{file}: the target column {target!r} cannot be a feature too")
    missing = [c for c in names if c not in header]
    if missing:
        raise DataError(
            f"{file}: missing feature columns {', '.join(missing)}; the model was trained on "
            f"{', '.join(names)}"
        )
    if not names:
        raise DataError(f"{file}: no feature columns besides the target {target!r}")
    read = {**{c: j for j, c in enumerate(names)}, **({} if target is None else {target: -1})}
    body = lines[1:]
    if not body:
        raise DataError(f"{file}: a header but no data rows")

    X = np.empty((len(body), len(names)), dtype=np.float64)
    labels: list[str] = []
    for i, (line, row) in enumerate(body):
        where = f"row {i + 1} (line {line})"
        if len(row) != len(header):
            raise DataError(
                f"{file}: {where} has {len(row)} fields, expected {len(header)} like the header"
            )
        for column, cell in zip(header, row, strict=True):
            j = read.get(column)
            if j is None:  # a column the caller did not ask for
                continue
            value = cell.strip()
            if value.lower() in _MISSING:
                raise DataError(f"{file}: missing value {cell!r} at {where}, column {column!r}")
            if column == target:
                labels.append(value)
                continue
            try:
                number = float(value)
            except ValueError:
                raise DataError(
                    f"{file}: non-numeric value {cell!r} at {where}, column {column!r}; "
                    "features must be numbers"
                ) from None
            if not math.isfinite(number):
                raise DataError(f"{file}: non-finite value {cell!r} at {where}, column {column!r}")
            X[i, j] = number
    return X, (None if target is None else _labels(file, target, labels)), names


def _labels(file: Path, target: str, values: list[str]) -> NDArray[Any]:
    """Int64 labels if every one is an integer, float64 if every one is a number, an object
    array of str if none is."""
    numbers: list[float] = []
    first_text = None  # the row of the first label that is not a number
    for i, value in enumerate(values):
        try:
            numbers.append(float(value))
        except ValueError:
            first_text = i if first_text is None else first_text
    if first_text is None:
        labels = np.array(numbers, dtype=np.float64)
        # "3" stays the integer 3, so that it comes back as "3", not "3.0"; "3.0" is a float
        integral = all(v.strip().lstrip("+-").isdigit() for v in values)
        return labels.astype(np.int64) if integral else labels
    if numbers:  # "1" next to "a": is 1 a class name or a number? Refused rather than guessed.
        first_number = next(i for i, v in enumerate(values) if _is_number(v))
        raise DataError(
            f"{file}: label column {target!r} mixes numbers ({values[first_number]!r} at row "
            f"{first_number + 1}) and text ({values[first_text]!r} at row {first_text + 1}); "
            "make the labels all numbers or all text"
        )
    return np.array(values, dtype=object)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _load_npz(
    file: Path, target: str | None, features: Sequence[str] | None
) -> tuple[NDArray[np.float64], NDArray[Any] | None, list[str]]:
    arrays = _npz_arrays(file)
    available = ", ".join(arrays) or "none"
    if "X" not in arrays:
        raise DataError(f"{file}: no array 'X'; expected {_expected('.npz')}; has: {available}")
    X = arrays["X"]
    if X.ndim != 2 or X.dtype.kind not in "biuf":
        raise DataError(f"{file}: X must be a 2-d numeric array (n, p), got {X.dtype} {X.shape}")
    X = X.astype(np.float64)
    bad = np.argwhere(~np.isfinite(X))
    if bad.size:
        r, c = (int(k) for k in bad[0])
        raise DataError(f"{file}: missing or non-finite value {X[r, c]} at X[{r}, {c}]")

    names = [f"x{j}" for j in range(X.shape[1])]
    if "feature_names" in arrays:
        given = arrays["feature_names"]
        if given.dtype.kind != "U" or given.shape != (X.shape[1],):
            raise DataError(
                f"{file}: feature_names must be {X.shape[1]} strings, "
                f"got {given.dtype} {given.shape}"
            )
        names = [str(v) for v in given]
        _check_feature_names(file, names, "feature_names")
    if features is not None:
        _check_feature_names(file, list(features), "features")
    if features is not None and names != list(features):
        if "feature_names" in arrays or len(features) != len(names):
            raise DataError(
                f"{file}: feature columns {', '.join(names)} differ from the model's "
                f"{', '.join(features)}"
            )
        names = list(features)  # unnamed columns: taken in the model's order

    key = "y" if target is None else target
    if key not in arrays:
        if target is None:
            return X, None, names
        raise DataError(f"{file}: no target array {target!r}; has: {available}")
    y = arrays[key]
    if y.shape != (X.shape[0],):
        raise DataError(f"{file}: {key} must have shape ({X.shape[0]},) like X, got {y.shape}")
    if y.dtype.kind == "U":
        return X, y.astype(object), names
    if y.dtype.kind not in "biuf":
        raise DataError(f"{file}: {key} must hold numbers or strings, got {y.dtype}")
    y = y.astype(np.float64)
    if np.isnan(y).any():
        raise DataError(f"{file}: missing value (nan) at {key}[{int(np.argmax(np.isnan(y)))}]")
    return X, y, names


def _npz_arrays(file: Path) -> dict[str, NDArray[Any]]:
    unreadable = (OSError, ValueError, EOFError, zipfile.BadZipFile)
    try:
        loaded = np.load(file, allow_pickle=False)
    except unreadable as e:
        raise DataError(f"{file}: not a readable .npz archive ({e})") from None
    if isinstance(loaded, np.ndarray):
        raise DataError(f"{file}: holds a single .npy array; expected {_expected('.npz')}")
    try:
        with loaded:
            return {key: loaded[key] for key in loaded.files}
    except unreadable as e:  # e.g. an object array, which would need pickle
        raise DataError(f"{file}: not a readable .npz archive ({e})") from None


def _as_matrix(X: ArrayLike, what: str) -> NDArray[np.float64]:
    A = np.asarray(X, dtype=np.float64)
    if A.ndim != 2 or A.shape[0] == 0:
        raise ValueError(f"{what} expects X: (n, p) with n >= 1, got shape {A.shape}")
    if not np.isfinite(A).all():
        raise ValueError(f"{what} expects finite values; X has nan or inf")
    return A


def _refuse_overflow(
    A: NDArray[np.float64], finite: Any, what: str, names: Sequence[str] | None
) -> None:
    """A :class:`DataError` naming the first column where ``finite`` is False."""
    if finite.all():
        return
    j = int(np.argmin(finite))
    column = f"column {names[j]!r}" if names is not None and len(names) > j else f"X[:, {j}]"
    raise DataError(
        f"Standardizer.{what}: {column} overflows float64 when standardized (values up to "
        f"{np.max(np.abs(A[:, j])):.3g}); rescale that column first"
    )


class Standardizer:
    """Per-column ``(x - mean_) / scale_``, with the mean and (population) std of the data it was
    fitted on. Fit on the training split only, so no statistic of the test data leaks into it.

    A constant column gets ``scale_ = 1``, so it maps to 0 (on the fitted data) without dividing
    by zero.
    """

    mean_: NDArray[np.float64]
    scale_: NDArray[np.float64]

    def __repr__(self) -> str:
        p = getattr(self, "mean_", None)
        return "Standardizer()" if p is None else f"Standardizer(p={p.shape[0]})"

    def fit(
        self, X: ArrayLike, y: Any = None, *, feature_names: Sequence[str] | None = None
    ) -> Standardizer:
        """Learn ``mean_: (p,)`` and ``scale_: (p,)`` from ``X: (n, p)``; returns self.

        Values so large that a column's mean or standard deviation overflows float64 are a
        :class:`DataError` naming the column (from ``feature_names`` where given).
        """
        A = _as_matrix(X, "Standardizer.fit")
        with np.errstate(over="ignore", invalid="ignore"):  # checked just below, per column
            mean = A.mean(axis=0)
            scale = A.std(axis=0)
            constant = np.ptp(A, axis=0) == 0
        _refuse_overflow(A, np.isfinite(mean) & np.isfinite(scale), "fit", feature_names)
        # The computed mean of a constant column can be off by an ulp; its own value is exact.
        mean[constant] = A[0, constant]
        scale[constant] = 1.0
        self.mean_, self.scale_ = mean, scale
        return self

    def transform(self, X: ArrayLike) -> NDArray[np.float64]:
        """``X: (n, p)`` standardized with the fitted statistics, as a new float64 array."""
        if getattr(self, "mean_", None) is None:
            raise RuntimeError("Standardizer is not fitted; call fit(X_train) first")
        A = _as_matrix(X, "Standardizer.transform")
        if A.shape[1] != self.mean_.shape[0]:
            raise ValueError(
                f"Standardizer was fitted on {self.mean_.shape[0]} columns, X has {A.shape[1]}"
            )
        with np.errstate(over="ignore", invalid="ignore"):  # checked just below, per column
            Z: NDArray[np.float64] = (A - self.mean_) / self.scale_
        _refuse_overflow(A, np.isfinite(Z).all(axis=0), "transform", None)
        return Z

    def fit_transform(
        self, X: ArrayLike, y: Any = None, *, feature_names: Sequence[str] | None = None
    ) -> NDArray[np.float64]:
        """``fit(X)`` then ``transform(X)`` (``y`` is ignored, as in a scikit-learn Pipeline)."""
        return self.fit(X, feature_names=feature_names).transform(X)

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """No parameters: what scikit-learn's ``clone`` asks, in a Pipeline."""
        return {}

    def set_params(self, **params: Any) -> Standardizer:
        if params:
            raise ValueError(f"Standardizer has no parameters, got {sorted(params)}")
        return self

    def to_dict(self) -> dict[str, list[float]]:
        """The fitted statistics as JSON-ready lists: ``{"mean": [...], "scale": [...]}``."""
        if getattr(self, "mean_", None) is None:
            raise RuntimeError("Standardizer is not fitted; nothing to save")
        return {"mean": self.mean_.tolist(), "scale": self.scale_.tolist()}

    @classmethod
    def from_dict(cls, d: dict[str, list[float]]) -> Standardizer:
        """The inverse of :meth:`to_dict`."""
        if set(d) != {"mean", "scale"}:
            raise ValueError(f"expected keys 'mean' and 'scale', got {sorted(d)}")
        mean = np.asarray(d["mean"], dtype=np.float64)
        scale = np.asarray(d["scale"], dtype=np.float64)
        if mean.ndim != 1 or mean.shape != scale.shape:
            raise ValueError(
                f"mean and scale must be equal-length lists, got {mean.shape}, {scale.shape}"
            )
        if not (np.isfinite(mean).all() and np.isfinite(scale).all() and (scale > 0).all()):
            raise ValueError("mean must be finite and scale finite and positive")
        out = cls()
        out.mean_, out.scale_ = mean, scale
        return out


def train_test_split(
    X: ArrayLike,
    y: ArrayLike,
    *,
    test_size: float | int = 0.2,
    rng: int | np.random.Generator | None = None,
    stratify: bool = True,
) -> tuple[NDArray[Any], NDArray[Any], NDArray[Any], NDArray[Any]]:
    """Shuffle ``X: (n, ...)`` and ``y: (n,)`` into ``(X_train, X_test, y_train, y_test)``.

    ``test_size``: a fraction in (0, 1) (the test count is rounded up) or a count in [1, n - 1].
    ``rng``: a seed or Generator for ``np.random.default_rng``; a fixed seed gives a fixed split.
    ``stratify``: keep each class's share of ``y`` in both parts (up to rounding), with at least
    one sample of every class in train. Pass ``stratify=False`` for regression targets.
    """
    Xa, ya = np.asarray(X), np.asarray(y)
    if Xa.ndim == 0 or ya.ndim == 0:
        raise ValueError("train_test_split expects X: (n, ...) and y: (n, ...), not scalars")
    n = Xa.shape[0]
    if ya.shape[0] != n:
        raise ValueError(f"X has {n} samples but y has {ya.shape[0]}")
    if n < 2:
        raise ValueError(f"train_test_split needs at least 2 samples, got {n}")
    n_test = _test_count(test_size, n)
    gen = np.random.default_rng(rng)
    if stratify:
        if ya.ndim != 1:
            raise ValueError(f"stratify=True expects class labels y: (n,), got shape {ya.shape}")
        test = _stratified_test(ya, n_test, gen)
    else:
        test = gen.permutation(n)[:n_test]
    in_test = np.zeros(n, dtype=bool)
    in_test[test] = True
    # Shuffle the training order too, so it is not grouped by class.
    train = gen.permutation(np.flatnonzero(~in_test))
    return Xa[train], Xa[test], ya[train], ya[test]


def _test_count(test_size: float | int, n: int) -> int:
    if isinstance(test_size, bool) or not isinstance(test_size, (int, float, np.integer)):
        raise ValueError(f"test_size must be a float in (0, 1) or an int, got {test_size!r}")
    if isinstance(test_size, (int, np.integer)):
        if not 1 <= test_size <= n - 1:
            raise ValueError(f"test_size={test_size} must be between 1 and n - 1 = {n - 1}")
        return int(test_size)
    if not 0.0 < test_size < 1.0:
        raise ValueError(f"test_size={test_size} as a fraction must lie in (0, 1)")
    n_test = math.ceil(test_size * n)
    if n_test > n - 1:
        raise ValueError(f"test_size={test_size} of {n} samples leaves none to train on")
    return n_test


def _stratified_test(y: NDArray[Any], n_test: int, gen: np.random.Generator) -> NDArray[np.intp]:
    classes, inverse, counts = np.unique(y, return_inverse=True, return_counts=True)
    room = counts - 1  # each class keeps one sample in train
    if room.sum() < n_test:
        raise ValueError(
            f"cannot stratify: {n_test} test samples while keeping one of each of the "
            f"{classes.size} classes in train needs more than {y.size} samples; use a smaller "
            "test_size, or stratify=False for regression targets"
        )
    ideal = n_test * counts / y.size
    take = np.floor(ideal).astype(np.intp)
    # Hand out what rounding down left over to the largest remainders (stable: ties by class).
    for k in np.argsort(-(ideal - take), kind="stable"):
        if take.sum() == n_test:
            break
        if take[k] < room[k]:
            take[k] += 1
    while take.sum() < n_test:  # capped classes can leave a remainder: fill wherever there's room
        take[int(np.argmax(room - take))] += 1
    parts = [gen.permutation(np.flatnonzero(inverse == k))[: take[k]] for k in range(classes.size)]
    return gen.permutation(np.concatenate(parts))
