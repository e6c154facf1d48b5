"""Bundled datasets, reading a user's CSV/NPZ file, Standardizer and train_test_split."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from portable_mlp import datasets
from portable_mlp.datasets import DataError, Standardizer, load_file, train_test_split

# -- bundled datasets ---------------------------------------------------------------------------


def test_breast_cancer_shape_dtype_and_classes() -> None:
    X, y = datasets.load("breast_cancer")
    assert X.shape == (569, 30) and X.dtype == np.float64 and X.flags.c_contiguous
    assert y.shape == (569,) and y.dtype == np.int64
    assert np.bincount(y).tolist() == [212, 357]
    assert datasets.target_names("breast_cancer") == ["malignant", "benign"]
    names = datasets.feature_names("breast_cancer")
    assert len(names) == 30
    assert names[:2] == ["mean radius", "mean texture"]
    assert names[10] == "radius error" and names[29] == "worst fractal dimension"


def test_digits_shape_dtype_and_classes() -> None:
    X, y = datasets.load("digits")
    assert X.shape == (1797, 64) and X.dtype == np.float64 and X.flags.c_contiguous
    assert y.shape == (1797,) and y.dtype == np.int64
    assert np.unique(y).tolist() == list(range(10))
    assert X.min() == 0 and X.max() == 16
    assert datasets.target_names("digits") == [str(k) for k in range(10)]
    names = datasets.feature_names("digits")
    assert len(names) == 64 and names[0] == "pixel_0_0" and names[-1] == "pixel_7_7"


def test_load_returns_fresh_arrays() -> None:
    X, _ = datasets.load("digits")
    X[0, 0] = -1.0
    assert datasets.load("digits")[0][0, 0] == 0.0


@pytest.mark.parametrize("name", datasets.DATASETS)
def test_bundled_data_equals_sklearn(name: str) -> None:
    from sklearn import datasets as sk  # a test dependency; imported here for its import time

    bunch = getattr(sk, f"load_{name}")()
    X, y = datasets.load(name)
    np.testing.assert_array_equal(X, bunch.data)
    np.testing.assert_array_equal(y, bunch.target)
    assert datasets.feature_names(name) == [str(s) for s in bunch.feature_names]
    assert datasets.target_names(name) == [str(s) for s in bunch.target_names]


@pytest.mark.parametrize("func", [datasets.load, datasets.feature_names, datasets.target_names])
def test_unknown_dataset_names_it_and_the_choices(func: object) -> None:
    assert callable(func)
    with pytest.raises(ValueError, match=r"'iris'.*breast_cancer, digits"):
        func("iris")


# -- load_file: CSV -----------------------------------------------------------------------------


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_csv_numeric_labels(tmp_path: Path) -> None:
    path = _write(tmp_path, "d.csv", "a,label,b\n1,0,2.5\n-3e2,1, 4\n")
    X, y, names = load_file(path, target="label")
    assert names == ["a", "b"]
    np.testing.assert_array_equal(X, [[1.0, 2.5], [-300.0, 4.0]])
    assert X.dtype == np.float64
    assert y is not None and y.dtype == np.int64  # integers stay integers
    np.testing.assert_array_equal(y, [0, 1])
    path = _write(tmp_path, "f.csv", "a,label\n1,0.0\n2,1\n")
    assert load_file(path, target="label")[1].dtype == np.float64


def test_csv_string_labels(tmp_path: Path) -> None:
    path = _write(tmp_path, "d.csv", "x,y,answer\n1,2,yes\n3,4,no\n5,6,1st\n")
    X, y, names = load_file(str(path), target="answer")
    assert names == ["x", "y"] and X.shape == (3, 2)
    assert y is not None and y.dtype == object
    assert y.tolist() == ["yes", "no", "1st"]


def test_csv_without_target_is_all_features(tmp_path: Path) -> None:
    # A byte-order mark (spreadsheet export), quoted fields and a trailing blank line.
    path = tmp_path / "d.csv"
    path.write_bytes(b'\xef\xbb\xbf"a","b"\r\n1,"2"\r\n3,4\r\n\r\n')
    X, y, names = load_file(path)
    assert y is None and names == ["a", "b"]
    np.testing.assert_array_equal(X, [[1.0, 2.0], [3.0, 4.0]])


def test_features_select_columns_in_the_models_order(tmp_path: Path) -> None:
    path = _write(tmp_path, "d.csv", "b,label,a,note\n2,yes,1,hello\n4,no,3,world\n")
    X, y, names = load_file(path, features=["a", "b"])
    assert names == ["a", "b"] and y is None  # label and note are not read at all
    np.testing.assert_array_equal(X, [[1.0, 2.0], [3.0, 4.0]])


def test_features_missing_from_a_csv(tmp_path: Path) -> None:
    path = _write(tmp_path, "d.csv", "b,label,a,note\n2,yes,1,hello\n4,no,3,world\n")
    with pytest.raises(DataError, match="missing feature columns c; the model was trained on a, c"):
        load_file(path, features=["a", "c"])


def test_features_name_the_columns_of_an_npz(tmp_path: Path) -> None:
    npz = tmp_path / "d.npz"
    np.savez(npz, X=np.ones((2, 2)))
    assert load_file(npz, features=["a", "b"])[2] == ["a", "b"]


def test_features_of_another_count_than_an_npz(tmp_path: Path) -> None:
    npz = tmp_path / "d.npz"
    np.savez(npz, X=np.ones((2, 2)))
    with pytest.raises(DataError, match="differ from the model's a, b, c"):
        load_file(npz, features=["a", "b", "c"])


def _error(path: Path, target: str | None = None) -> str:
    with pytest.raises(DataError) as info:
        load_file(path, target=target)
    message = str(info.value)
    assert str(path) in message and "\n" not in message
    return message


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.csv"
    with pytest.raises(FileNotFoundError, match="no such file") as info:
        load_file(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("name", ["empty.csv", "empty.npz"])
def test_empty_file(tmp_path: Path, name: str) -> None:
    assert "empty file" in _error(_write(tmp_path, name, ""))


def test_csv_blank_lines_only_is_empty(tmp_path: Path) -> None:
    assert "empty file" in _error(_write(tmp_path, "d.csv", "\n\n"))


def test_csv_header_without_rows(tmp_path: Path) -> None:
    assert "no data rows" in _error(_write(tmp_path, "d.csv", "a,b\n"))


def test_unknown_target_lists_columns(tmp_path: Path) -> None:
    message = _error(_write(tmp_path, "d.csv", "a,b,c\n1,2,3\n"), target="label")
    assert "'label'" in message and "a, b, c" in message


def test_target_as_only_column(tmp_path: Path) -> None:
    assert "no feature columns" in _error(_write(tmp_path, "d.csv", "y\n1\n"), target="y")


@pytest.mark.parametrize(
    ("header", "expected"),
    [("a,,b", "column 2"), ("a,b,a", "duplicate column names in the header: a")],
)
def test_bad_header(tmp_path: Path, header: str, expected: str) -> None:
    assert expected in _error(_write(tmp_path, "d.csv", f"{header}\n1,2,3\n"))


def test_non_numeric_feature_names_row_column_value(tmp_path: Path) -> None:
    path = _write(tmp_path, "d.csv", "a,b,y\n1,2,0\n3,abc,1\n")
    message = _error(path, target="y")
    assert "'abc'" in message and "row 2 (line 3)" in message and "column 'b'" in message


@pytest.mark.parametrize("cell", ["", "NA", "nan", "NaN", " n/a "])
def test_missing_feature_value(tmp_path: Path, cell: str) -> None:
    path = _write(tmp_path, "d.csv", f"a,b\n1,2\n3,4\n5,{cell}\n")
    message = _error(path)
    assert "missing value" in message and "row 3 (line 4)" in message and "column 'b'" in message


def test_missing_label(tmp_path: Path) -> None:
    message = _error(_write(tmp_path, "d.csv", "a,y\n1,yes\n2,\n"), target="y")
    assert "missing value" in message and "row 2" in message and "column 'y'" in message


def test_infinite_feature(tmp_path: Path) -> None:
    message = _error(_write(tmp_path, "d.csv", "a,b\n1,inf\n"))
    assert "non-finite" in message and "column 'b'" in message


@pytest.mark.parametrize("row", ["1,2,3", "1"])
def test_ragged_row(tmp_path: Path, row: str) -> None:
    message = _error(_write(tmp_path, "d.csv", f"a,b\n1,2\n{row}\n"))
    n = len(row.split(","))
    assert f"row 2 (line 3) has {n} fields, expected 2" in message


def test_csv_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_bytes(b"a,b\n1,\xff\n")
    assert "not UTF-8" in _error(path)


@pytest.mark.parametrize("name", ["d.txt", "d.json", "data"])
def test_unsupported_extension(tmp_path: Path, name: str) -> None:
    message = _error(_write(tmp_path, name, "a,b\n1,2\n"))
    assert "unsupported file type" in message and ".csv or .npz" in message


def test_directory_is_not_a_file(tmp_path: Path) -> None:
    path = tmp_path / "dir.csv"
    path.mkdir()
    assert "is not a file" in _error(path)


# -- load_file: NPZ -----------------------------------------------------------------------------


def test_npz_with_y(tmp_path: Path) -> None:
    X0 = np.arange(6, dtype=np.int32).reshape(3, 2)
    path = tmp_path / "d.npz"
    np.savez(path, X=X0, y=np.array([0, 1, 1]))
    X, y, names = load_file(path)
    assert X.dtype == np.float64 and y is not None and y.dtype == np.float64
    np.testing.assert_array_equal(X, X0)
    np.testing.assert_array_equal(y, [0.0, 1.0, 1.0])
    assert names == ["x0", "x1"]


def test_npz_named_target_string_labels_and_feature_names(tmp_path: Path) -> None:
    path = tmp_path / "d.npz"
    labels = np.array(["cat", "dog"])
    np.savez(path, X=np.ones((2, 2)), kind=labels, feature_names=np.array(["w", "h"]))
    X, y, names = load_file(path, target="kind")
    assert y is not None and y.dtype == object and y.tolist() == ["cat", "dog"]
    assert names == ["w", "h"] and X.shape == (2, 2)


def test_npz_without_y(tmp_path: Path) -> None:
    path = tmp_path / "d.npz"
    np.savez(path, X=np.ones((2, 3)))
    X, y, names = load_file(path)
    assert y is None and X.shape == (2, 3) and names == ["x0", "x1", "x2"]


def test_npz_without_x(tmp_path: Path) -> None:
    path = tmp_path / "d.npz"
    np.savez(path, data=np.ones((2, 2)), y=np.zeros(2))
    message = _error(path)
    assert "no array 'X'" in message and "data, y" in message


def test_npz_unknown_target(tmp_path: Path) -> None:
    path = tmp_path / "d.npz"
    np.savez(path, X=np.ones((2, 2)), y=np.zeros(2))
    message = _error(path, target="labels")
    assert "'labels'" in message and "X, y" in message


@pytest.mark.parametrize(
    ("arrays", "expected"),
    [
        ({"X": np.ones(3)}, "2-d numeric"),
        ({"X": np.array([["a", "b"]])}, "2-d numeric"),
        ({"X": np.array([[1.0, np.nan]])}, "X[0, 1]"),
        ({"X": np.ones((3, 2)), "y": np.zeros(2)}, "y must have shape (3,)"),
        ({"X": np.ones((2, 2)), "y": np.array([0.0, np.nan])}, "missing value (nan) at y[1]"),
        ({"X": np.ones((2, 2)), "y": np.zeros(2, dtype=complex)}, "numbers or strings"),
        ({"X": np.ones((2, 2)), "feature_names": np.array(["a"])}, "feature_names must be 2"),
    ],
)
def test_npz_bad_arrays(tmp_path: Path, arrays: dict[str, Any], expected: str) -> None:
    path = tmp_path / "d.npz"
    np.savez(path, **arrays)
    assert expected in _error(path)


def test_npz_not_an_archive(tmp_path: Path) -> None:
    assert "not a readable .npz archive" in _error(_write(tmp_path, "d.npz", "a,b\n1,2\n"))


def test_npz_holding_a_single_npy_array(tmp_path: Path) -> None:
    path = tmp_path / "d.npz"
    with path.open("wb") as f:
        np.save(f, np.ones((2, 2)))
    assert "single .npy array" in _error(path)


def test_npz_object_array_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "d.npz"
    np.savez(path, X=np.ones((2, 2)), y=np.array(["a", 1], dtype=object))
    assert "not a readable .npz archive" in _error(path)


# -- Standardizer -------------------------------------------------------------------------------


def test_standardizer_fits_train_only() -> None:
    rng = np.random.default_rng(0)
    train = rng.normal(5.0, 3.0, size=(200, 4))
    test = rng.normal(-2.0, 0.5, size=(50, 4))
    scaler = Standardizer().fit(train)
    np.testing.assert_allclose(scaler.mean_, train.mean(axis=0))
    np.testing.assert_allclose(scaler.scale_, train.std(axis=0))
    Z = scaler.transform(train)
    np.testing.assert_allclose(Z.mean(axis=0), 0.0, atol=1e-12)
    np.testing.assert_allclose(Z.std(axis=0), 1.0)
    # The test data is mapped with the training statistics, not its own.
    np.testing.assert_allclose(scaler.transform(test), (test - train.mean(0)) / train.std(0))
    assert abs(scaler.transform(test).mean()) > 1.0
    np.testing.assert_array_equal(Standardizer().fit_transform(train), Z)


def test_standardizer_constant_column_maps_to_zero() -> None:
    X = np.array([[0.1, 1.0, 0.0], [0.1, 2.0, 0.0], [0.1, 4.0, 0.0]])
    with np.errstate(all="raise"):
        scaler = Standardizer().fit(X)
        Z = scaler.transform(X)
    assert scaler.scale_[0] == 1.0 and scaler.scale_[2] == 1.0
    assert scaler.mean_[0] == 0.1
    assert (Z[:, [0, 2]] == 0.0).all()
    assert np.isfinite(Z).all() and Z[:, 1].std() == pytest.approx(1.0)


def test_standardizer_round_trip_through_json() -> None:
    X = np.random.default_rng(1).normal(size=(20, 3)) * [1.0, 10.0, 100.0]
    scaler = Standardizer().fit(X)
    d = json.loads(json.dumps(scaler.to_dict()))
    assert set(d) == {"mean", "scale"} and all(isinstance(v, float) for v in d["mean"])
    again = Standardizer.from_dict(d)
    np.testing.assert_array_equal(again.mean_, scaler.mean_)
    np.testing.assert_array_equal(again.scale_, scaler.scale_)
    np.testing.assert_array_equal(again.transform(X), scaler.transform(X))


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda: Standardizer().transform(np.ones((2, 2))), RuntimeError, "not fitted"),
        (lambda: Standardizer().to_dict(), RuntimeError, "not fitted"),
        (
            lambda: Standardizer().fit(np.ones((3, 2))).transform(np.ones((1, 3))),
            ValueError,
            "fitted on 2 columns, X has 3",
        ),
        (lambda: Standardizer().fit(np.ones(3)), ValueError, r"X: \(n, p\)"),
        (lambda: Standardizer().fit(np.ones((0, 3))), ValueError, r"X: \(n, p\)"),
        (lambda: Standardizer().fit([[1.0, np.nan]]), ValueError, "finite"),
        (lambda: Standardizer.from_dict({"mean": [0.0]}), ValueError, "keys"),
        (
            lambda: Standardizer.from_dict({"mean": [0.0], "scale": [1.0, 1.0]}),
            ValueError,
            "equal-length",
        ),
        (
            lambda: Standardizer.from_dict({"mean": [0.0], "scale": [0.0]}),
            ValueError,
            "positive",
        ),
    ],
    ids=[
        "transform-unfitted",
        "to_dict-unfitted",
        "column-count",
        "1-d",
        "no-rows",
        "nan",
        "dict-keys",
        "dict-lengths",
        "dict-scale",
    ],
)
def test_standardizer_misuse(call: Callable[[], Any], error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        call()


# -- train_test_split ---------------------------------------------------------------------------


def test_split_sizes_and_partition() -> None:
    X = np.arange(100, dtype=np.float64).reshape(50, 2)
    y = np.arange(50)
    X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.2, rng=0, stratify=False)
    assert X_train.shape == (40, 2) and X_test.shape == (10, 2)
    assert y_train.shape == (40,) and y_test.shape == (10,)
    # Rows stay paired with their labels, and every sample lands in exactly one part.
    np.testing.assert_array_equal(X_train[:, 0], 2 * y_train)
    np.testing.assert_array_equal(X_test[:, 0], 2 * y_test)
    assert sorted(np.concatenate([y_train, y_test]).tolist()) == list(range(50))
    assert not np.array_equal(y_train, np.sort(y_train))  # shuffled
    assert train_test_split(X, y, test_size=7, rng=0, stratify=False)[1].shape == (7, 2)
    assert train_test_split(X, y, test_size=0.01, rng=0, stratify=False)[1].shape == (1, 2)


def test_split_is_deterministic_with_a_seed() -> None:
    X, y = datasets.load("breast_cancer")
    a = train_test_split(X, y, rng=42)
    b = train_test_split(X, y, rng=np.random.default_rng(42))
    c = train_test_split(X, y, rng=43)
    for u, v in zip(a, b, strict=True):
        np.testing.assert_array_equal(u, v)
    assert not np.array_equal(a[3], c[3]) or not np.array_equal(a[1], c[1])


def test_stratified_split_keeps_class_proportions() -> None:
    X, y = datasets.load("breast_cancer")
    _, X_test, y_train, y_test = train_test_split(X, y, test_size=0.25, rng=0)
    assert y_test.size == 143 and X_test.shape == (143, 30)
    assert np.bincount(y_test).tolist() == [53, 90]  # 212 and 357 times 143/569, rounded
    assert np.bincount(y_train).tolist() == [159, 267]
    Xd, yd = datasets.load("digits")
    _, _, yd_train, yd_test = train_test_split(Xd, yd, test_size=0.2, rng=0)
    share = np.bincount(yd) / yd.size
    np.testing.assert_allclose(np.bincount(yd_test) / yd_test.size, share, atol=0.004)
    np.testing.assert_allclose(np.bincount(yd_train) / yd_train.size, share, atol=0.001)


def test_stratified_split_keeps_every_class_in_train() -> None:
    y = np.array(["a"] * 10 + ["b", "c", "c"])
    X = np.arange(13.0)[:, None]
    for seed in range(20):
        _, _, y_train, y_test = train_test_split(X, y, test_size=0.5, rng=seed)
        assert set(y_train) == {"a", "b", "c"}
        assert y_test.size == 7 and "b" not in y_test


def test_stratified_split_impossible() -> None:
    X = np.arange(4.0)[:, None]
    with pytest.raises(ValueError, match=r"cannot stratify.*stratify=False"):
        train_test_split(X, np.array([0.1, 0.2, 0.3, 0.4]), test_size=0.5)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"test_size": 0.0}, r"in \(0, 1\)"),
        ({"test_size": 1.0}, r"in \(0, 1\)"),
        ({"test_size": -0.5}, r"in \(0, 1\)"),
        ({"test_size": 0}, "between 1 and n - 1 = 9"),
        ({"test_size": 10}, "between 1 and n - 1 = 9"),
        ({"test_size": True}, "float in"),
        ({"test_size": "0.2"}, "float in"),
        ({"test_size": 0.95}, "none to train on"),
    ],
)
def test_split_bad_test_size(kwargs: dict[str, object], match: str) -> None:
    X, y = np.ones((10, 2)), np.arange(10) % 2
    with pytest.raises(ValueError, match=match):
        train_test_split(X, y, **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("X", "y", "message"),
    [
        (np.ones((3, 2)), np.zeros(2), "X has 3 samples but y has 2"),
        (np.ones((1, 2)), np.zeros(1), "at least 2 samples"),
        (np.float64(1.0), np.zeros(1), "not scalars"),
        (np.ones((4, 2)), np.eye(4), r"y: \(n,\)"),
    ],
    ids=["lengths", "one-sample", "scalar", "stratify-2-d-y"],
)
def test_split_bad_inputs(X: Any, y: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        train_test_split(X, y)


def test_split_multi_column_targets_without_stratification() -> None:
    _, _, y_train, y_test = train_test_split(
        np.ones((4, 2)), np.eye(4), test_size=1, stratify=False
    )
    assert y_train.shape == (3, 4) and y_test.shape == (1, 4)
