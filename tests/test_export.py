"""ONNX export: onnxruntime running the exported file gives what the model and the estimators give
in Python, at any batch size, from raw features where a standardizer is stored, and the same file
whichever backend the checkpoint was saved on."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import portable_mlp as pm
from portable_mlp import checkpoints, cli, datasets
from portable_mlp.layers import ACTIVATIONS
from portable_mlp.testing import selected_backends

_EXTRA = "needs the [onnx] extra: pip install 'portable-mlp[onnx]'"
ndonnx = pytest.importorskip("ndonnx", reason=_EXTRA)
onnx = pytest.importorskip("onnx", reason=_EXTRA)
ort = pytest.importorskip("onnxruntime", reason=_EXTRA)
from onnx import numpy_helper  # noqa: E402 (after the skip)

SELECTED = selected_backends()  # the backends this run covers (PORTABLE_MLP_BACKEND)

pytestmark = pytest.mark.filterwarnings("ignore::portable_mlp.ConvergenceWarning")

# onnxruntime against the NumPy model, per output: |ort - numpy| <= TOL * max|numpy| (stated once):
# 8 ulps of the output's scale in either dtype (float64: 1.8e-15, inside the 1e-12). The
# two libraries sum each layer's products in different orders; 3.4 ulps was the worst seen.
TOL = {dtype: 8 * float(np.finfo(dtype).eps) for dtype in ("float32", "float64")}
BATCHES = (1, 7, 1000)
N_FEATURES = 6
SHAPE_READERS = {"Shape", "Size", "If"}  # nodes that look at the batch at run time


def _session(path: Path) -> Any:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _assert_close(actual: np.ndarray, expected: np.ndarray, dtype: str, what: str) -> None:
    assert actual.dtype == np.dtype(dtype), f"{what}: dtype {actual.dtype}, expected {dtype}"
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} vs {expected.shape}"
    err = np.max(np.abs(actual - expected)) / np.max(np.abs(expected))
    assert err <= TOL[dtype], f"{what}: error {err:.2e} of max|y| > {TOL[dtype]:.1e}"


def _dims(value_info: Any) -> list[Any]:
    return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]


def _ops(proto: Any) -> set[str]:
    """Every operator in the graph, If branches included."""
    found = set()
    stack = [proto.graph]
    while stack:
        graph = stack.pop()
        for node in graph.node:
            found.add(node.op_type)
            stack.extend(a.g for a in node.attribute if a.type == onnx.AttributeProto.GRAPH)
    return found


def _inputs(dtype: str, n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed + n).standard_normal((n, N_FEATURES)).astype(dtype)


def _forward(model: pm.Module, x: np.ndarray) -> np.ndarray:
    return pm.to_numpy(model.forward(pm.asarray(x, like=model), cache=False))


# ---------------------------------------------------------------------------- models
@pytest.mark.parametrize("activation", list(ACTIVATIONS))
def test_model_matches_numpy_at_every_batch_size(
    activation: str, dtype: str, tmp_path: Path
) -> None:
    model = pm.MLP([N_FEATURES, 9, 5, 3], activation=activation, rng=1, dtype=dtype)
    path = tmp_path / "model.onnx"
    pm.export_onnx(model, path)
    proto = onnx.load(path)
    (x_info,), (y_info,) = proto.graph.input, proto.graph.output
    assert (x_info.name, _dims(x_info)) == ("x", ["N", N_FEATURES])
    assert (y_info.name, _dims(y_info)) == ("y", ["N", 3])
    assert not _ops(proto) & SHAPE_READERS, "a node reads the batch size"
    session = _session(path)
    for n in BATCHES:
        x = _inputs(dtype, n)
        (y,) = session.run(None, {"x": x})
        _assert_close(y, _forward(model, x), dtype, f"{activation}, batch {n}")


def test_weights_are_initializers_in_the_models_dtype(dtype: str, tmp_path: Path) -> None:
    model = pm.MLP([N_FEATURES, 4, 2], activation="relu", rng=0, dtype=dtype)
    proto = pm.export_onnx(model, tmp_path / "model.onnx")
    assert "Constant" not in {node.op_type for node in proto.graph.node}
    stored = [numpy_helper.to_array(t) for t in proto.graph.initializer]
    for key, value in model.parameters().items():
        host = pm.to_numpy(value)
        matches = [a for a in stored if a.dtype == host.dtype and np.array_equal(a, host)]
        assert matches, f"parameter {key} ({host.dtype}) is not stored bit for bit"


def test_sequential_with_custom_layers(tmp_path: Path) -> None:
    model = pm.Sequential(
        pm.Linear(N_FEATURES, 4, rng=0),
        pm.LeakyReLU(0.3),
        pm.Linear(4, 2, bias=False, rng=1),
    )
    path = tmp_path / "model.onnx"
    pm.export_onnx(model, path)
    x = _inputs("float64", 7)
    (y,) = _session(path).run(None, {"x": x})
    _assert_close(y, _forward(model, x), "float64", "Sequential")


def test_batch_name_and_fixed_batch(tmp_path: Path) -> None:
    model = pm.MLP([N_FEATURES, 3, 2], rng=0)
    named = pm.export_onnx(model, tmp_path / "named.onnx", batch="rows")
    assert _dims(named.graph.input[0]) == ["rows", N_FEATURES]
    assert _dims(named.graph.output[0]) == ["rows", 2]
    fixed = pm.export_onnx(model, tmp_path / "fixed.onnx", batch=7)
    assert _dims(fixed.graph.input[0]) == [7, N_FEATURES]
    for bad in ("", "2 rows", 0, -1, 1.5, True):
        with pytest.raises(ValueError, match="batch must be"):
            pm.export_onnx(model, tmp_path / "bad.onnx", batch=bad)
    assert not (tmp_path / "bad.onnx").exists()


def test_an_empty_batch_runs(tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    pm.export_onnx(pm.MLP([N_FEATURES, 3, 2], rng=0, bias=False), path)
    (y,) = _session(path).run(None, {"x": np.zeros((0, N_FEATURES))})
    assert y.shape == (0, 2)


def test_a_newer_opset(tmp_path: Path) -> None:
    model = pm.MLP([N_FEATURES, 3, 2], activation="gelu", rng=0)
    path = tmp_path / "model.onnx"
    proto = pm.export_onnx(model, path, opset=22)
    assert [o.version for o in proto.opset_import if o.domain == ""] == [22]
    x = _inputs("float64", 7)
    (y,) = _session(path).run(None, {"x": x})
    _assert_close(y, _forward(model, x), "float64", "opset 22")


def test_an_unreachable_opset_is_a_value_error(tmp_path: Path) -> None:
    model = pm.MLP([N_FEATURES, 3, 2], activation="sigmoid", rng=0)
    with pytest.raises(ValueError, match="cannot convert the graph from ONNX opset 21 to 13"):
        pm.export_onnx(model, tmp_path / "model.onnx", opset=13)
    assert not (tmp_path / "model.onnx").exists()


# ---------------------------------------------------------------------------- estimators
def _fitted(kind: str, dtype: str, labels: str = "int") -> Any:
    """A briefly trained estimator: a binary classifier (BCE, sigmoid head), a multiclass one
    (cross-entropy, softmax head) or a regressor (MSE, identity head)."""
    rng = np.random.default_rng(3)
    X = rng.standard_normal((120, N_FEATURES))
    kw = {"max_iter": 3, "random_state": 0, "dtype": dtype}
    if kind == "regressor":
        y = X @ rng.standard_normal(N_FEATURES) if labels == "1d" else X[:, :2] * 3.0
        return pm.MLPRegressor((8, 5), activation="tanh", **kw).fit(X, y)
    code = (X[:, 0] > 0).astype(int) + (2 * (X[:, 1] > 0) if kind == "multiclass" else 0)
    values = {"int": np.array([-3, 5, 11, 40]), "str": np.array(["ant", "bee", "cat", "dog"])}
    return pm.MLPClassifier((8,), activation="gelu", **kw).fit(X, values[labels][code])


@pytest.mark.parametrize("labels", ["int", "str"])
@pytest.mark.parametrize("kind", ["binary", "multiclass"])
def test_classifier_matches_predict_and_predict_proba(
    kind: str, labels: str, dtype: str, tmp_path: Path
) -> None:
    est = _fitted(kind, dtype, labels)
    assert est.n_outputs_ == (1 if kind == "binary" else 4)
    path = tmp_path / "clf.onnx"
    proto = pm.export_onnx(est, path)
    assert [o.name for o in proto.graph.output] == ["label", "probabilities"]
    assert _dims(proto.graph.input[0]) == ["N", N_FEATURES]
    assert _dims(proto.graph.output[0]) == ["N"]
    assert _dims(proto.graph.output[1]) == ["N", len(est.classes_)]
    assert not _ops(proto) & SHAPE_READERS, "a node reads the batch size"
    session = _session(path)
    for n in BATCHES:
        X = _inputs(dtype, n)
        label, proba = session.run(None, {"X": X})
        expected = est.predict(X)
        assert label.tolist() == expected.tolist(), f"labels differ at batch {n}"
        if labels == "int":
            assert label.dtype == est.classes_.dtype
        _assert_close(proba, est.predict_proba(X), dtype, f"probabilities, batch {n}")


@pytest.mark.parametrize("y_shape", ["1d", "2d"])
def test_regressor_matches_predict(y_shape: str, dtype: str, tmp_path: Path) -> None:
    est = _fitted("regressor", dtype, y_shape)
    path = tmp_path / "reg.onnx"
    proto = pm.export_onnx(est, path)
    assert [o.name for o in proto.graph.output] == ["prediction"]
    assert _dims(proto.graph.output[0]) == (["N"] if y_shape == "1d" else ["N", 2])
    assert not _ops(proto) & SHAPE_READERS, "a node reads the batch size"
    session = _session(path)
    for n in BATCHES:
        X = _inputs(dtype, n)
        (pred,) = session.run(None, {"X": X})
        _assert_close(pred, est.predict(X), dtype, f"batch {n}")


def test_classes_are_in_the_metadata(tmp_path: Path) -> None:
    est = _fitted("multiclass", "float64", "str")
    proto = pm.export_onnx(est, tmp_path / "clf.onnx")
    props = {p.key: p.value for p in proto.metadata_props}
    assert props["portable_mlp.kind"] == "MLPClassifier"
    assert props["portable_mlp.classes"] == '["ant", "bee", "cat", "dog"]'


def test_byte_labels_are_refused(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    X = rng.standard_normal((40, N_FEATURES))
    est = pm.MLPClassifier((4,), max_iter=1).fit(X, np.array([b"no", b"yes"])[(X[:, 0] > 0) * 1])
    with pytest.raises(TypeError, match="fit with int or str labels"):
        pm.export_onnx(est, tmp_path / "clf.onnx")


def test_an_unfitted_estimator_or_a_foreign_object_is_refused(tmp_path: Path) -> None:
    with pytest.raises(pm.NotFittedError, match="not fitted"):
        pm.export_onnx(pm.MLPClassifier(), tmp_path / "a.onnx")
    with pytest.raises(TypeError, match="takes a portable_mlp model"):
        pm.export_onnx({"weights": 1}, tmp_path / "a.onnx")
    with pytest.raises(ValueError, match="no Linear layer"):
        pm.export_onnx(pm.ReLU(), tmp_path / "a.onnx")


# ---------------------------------------------------------------------------- standardizer
def _with_standardizer(tmp_path: Path, dtype: str) -> tuple[Path, Any, datasets.Standardizer]:
    """A classifier trained on standardised data, saved as ``portable-mlp train --save`` does."""
    rng = np.random.default_rng(5)
    raw = rng.standard_normal((150, N_FEATURES)) * [1, 10, 100, 0.1, 5, 1000] + 50.0
    scaler = datasets.Standardizer().fit(raw)
    y = (raw[:, 1] > 50.0).astype(int) + (raw[:, 2] > 50.0)
    est = pm.MLPClassifier((8,), max_iter=3, random_state=0, dtype=dtype)
    est.fit(scaler.transform(raw), y)
    path = tmp_path / "clf.safetensors"
    names = [f"f{i}" for i in range(N_FEATURES)]
    meta = {"standardizer": scaler.to_dict(), "feature_names": names, "source": "test"}
    checkpoints.save(est, path, metadata=meta)
    return path, est, scaler


def _raw(dtype: str, n: int) -> np.ndarray:
    rng = np.random.default_rng(n)
    return (rng.standard_normal((n, N_FEATURES)) * [1, 10, 100, 0.1, 5, 1000] + 50.0).astype(dtype)


def test_a_stored_standardizer_makes_the_file_predict_from_raw_features(
    dtype: str, tmp_path: Path
) -> None:
    path, est, scaler = _with_standardizer(tmp_path, dtype)
    out = tmp_path / "clf.onnx"
    proto = pm.export_onnx(path, out)
    props = {p.key: p.value for p in proto.metadata_props}
    assert props["portable_mlp.feature_names"] == '["f0", "f1", "f2", "f3", "f4", "f5"]'
    session = _session(out)
    for n in BATCHES:
        raw = _raw(dtype, n)
        label, proba = session.run(None, {"X": raw})
        expected = est.predict_proba(scaler.transform(raw))
        _assert_close(proba, expected, dtype, f"batch {n}")
        assert label.tolist() == est.predict(scaler.transform(raw)).tolist()
        # Without the standardizer the same rows give other probabilities: the step is there.
        assert np.max(np.abs(proba - est.predict_proba(raw))) > 1e-3


def test_standardizer_argument_for_an_object(tmp_path: Path) -> None:
    path, est, scaler = _with_standardizer(tmp_path, "float64")
    out = tmp_path / "clf.onnx"
    pm.export_onnx(est, out, standardizer=scaler)
    raw = _raw("float64", 7)
    _, proba = _session(out).run(None, {"X": raw})
    _assert_close(proba, est.predict_proba(scaler.transform(raw)), "float64", "standardizer=")
    with pytest.raises(ValueError, match="stores a standardizer already"):
        pm.export_onnx(path, out, standardizer=scaler)
    narrow = datasets.Standardizer().fit(np.ones((3, N_FEATURES - 1)))
    with pytest.raises(ValueError, match="fitted on 5 columns, the model takes 6"):
        pm.export_onnx(est, out, standardizer=narrow)


# ---------------------------------------------------------------------------- backends
@pytest.mark.parametrize("backend", ["torch", "jax"])
def test_a_checkpoint_saved_on_another_backend_exports_the_same_file(
    backend: str, dtype: str, tmp_path: Path
) -> None:
    if backend not in SELECTED:
        pytest.skip(f"{backend} is not among the selected backends ({', '.join(SELECTED)})")
    est = _fitted("multiclass", dtype, "str")
    on_numpy, on_other = tmp_path / "numpy.safetensors", tmp_path / f"{backend}.safetensors"
    checkpoints.save(est, on_numpy)
    moved = checkpoints.load(on_numpy, backend=backend)
    assert moved.model_.backend == backend
    checkpoints.save(moved, on_other)
    reference = pm.export_onnx(on_numpy, tmp_path / "numpy.onnx").SerializeToString()
    assert pm.export_onnx(on_other, tmp_path / "other.onnx").SerializeToString() == reference
    # The live object on that backend, too.
    assert pm.export_onnx(moved, tmp_path / "live.onnx").SerializeToString() == reference


# ---------------------------------------------------------------------------- the command line
def test_cli_export(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path, est, scaler = _with_standardizer(tmp_path, "float32")
    out = tmp_path / "clf.onnx"
    assert cli.main(["export", str(path), str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines == [f"wrote {out}: X (N, {N_FEATURES}) -> label, probabilities, ONNX opset 21"]
    raw = _raw("float32", 7)
    _, proba = _session(out).run(None, {"X": raw})
    _assert_close(proba, est.predict_proba(scaler.transform(raw)), "float32", "CLI export")


def test_cli_export_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out.onnx"
    not_a_checkpoint = tmp_path / "notes.txt"
    not_a_checkpoint.write_text("hello, this is not a checkpoint")
    for source, message in (
        (tmp_path / "missing.safetensors", "No such file or directory"),
        (not_a_checkpoint, "not a safetensors file"),
    ):
        assert cli.main(["export", str(source), str(out)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("portable-mlp export: error: ") and message in err
        assert err.count("\n") == 1
    assert not out.exists()


@pytest.mark.parametrize("missing", ["ndonnx", "onnx"])
def test_without_the_extra_both_say_what_to_install(
    missing: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = tmp_path / "model.safetensors"
    checkpoints.save(pm.MLP([N_FEATURES, 2], rng=0), path)
    monkeypatch.setitem(sys.modules, missing, None)  # `import missing` now raises ImportError
    with pytest.raises(ImportError, match=r"pip install 'portable-mlp\[onnx\]'"):
        pm.export_onnx(path, tmp_path / "model.onnx")
    assert cli.main(["export", str(path), str(tmp_path / "model.onnx")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("portable-mlp export: error: ONNX export needs ndonnx")
    assert "pip install 'portable-mlp[onnx]'" in err and err.count("\n") == 1
    assert not (tmp_path / "model.onnx").exists()
