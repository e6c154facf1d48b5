"""Checkpoints: bit-for-bit round trips across backends, the file format, atomic writes, and every
kind of broken file refused with a one-line error naming it."""

from __future__ import annotations

import hashlib
import io
import json
import os
import sys
import types
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import safetensors
import safetensors.numpy

import portable_mlp as pm
from portable_mlp import _backend, checkpoints
from portable_mlp.checkpoints import CheckpointError
from portable_mlp.testing import TOLERANCE, Case, randomize, relative_error

BUILDERS: dict[str, Callable[[dict[str, Any]], Any]] = {
    "mlp-tanh": lambda kw: pm.MLP([5, 4, 3, 2], activation="tanh", rng=0, **kw),
    "mlp-no-bias": lambda kw: pm.MLP([5, 3, 2], activation="gelu", bias=False, rng=0, **kw),
    "sequential": lambda kw: pm.Sequential(
        pm.Linear(5, 4, rng=0, **kw), pm.LeakyReLU(0.2), pm.Linear(4, 2, bias=False, rng=1, **kw)
    ),
    "linear": lambda kw: pm.Linear(5, 2, rng=0, **kw),
}


def _host(model: pm.Module) -> dict[str, np.ndarray]:
    return {k: pm.to_numpy(v) for k, v in model.parameters().items()}


def _saved(tmp_path: Path, name: str = "model.safetensors") -> Path:
    """A float32 NumPy MLP checkpoint."""
    path = tmp_path / name
    checkpoints.save(pm.MLP([4, 3, 2], rng=0, dtype="float32"), path)
    return path


def _contents(path: Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    with safetensors.safe_open(path, framework="numpy") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})  # noqa: SIM118


_CODES = {"float32": "F32", "float64": "F64", "float16": "F16", "int64": "I64"}


def canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def write_signed(
    path: Path, metadata: dict[str, str], entries: dict[str, Any], data: bytes
) -> None:
    """A checkpoint with this header and data and the digest the format documents: SHA-256 of
    the canonical header without its digest, then the data. Written independently of the
    library's writer, so the tests also pin the format down."""
    unsigned = {k: v for k, v in metadata.items() if k != "digest"}
    digest = hashlib.sha256(canonical({"__metadata__": unsigned, **entries}) + data).hexdigest()
    header = canonical({"__metadata__": {**unsigned, "digest": f"sha256:{digest}"}, **entries})
    header += b" " * (-len(header) % 8)  # the data 8-byte aligned
    path.write_bytes(len(header).to_bytes(8, "little") + header + data)


def write_tensors(path: Path, tensors: dict[str, np.ndarray], metadata: dict[str, str]) -> None:
    """A signed checkpoint holding ``tensors`` (end to end, in sorted order) and ``metadata``."""
    entries, offset = {}, 0
    for key in sorted(tensors):
        t = tensors[key]
        entries[key] = {
            "dtype": _CODES[t.dtype.name],
            "shape": list(t.shape),
            "data_offsets": [offset, offset + t.nbytes],
        }
        offset += t.nbytes
    data = b"".join(np.ascontiguousarray(tensors[k]).tobytes() for k in sorted(tensors))
    write_signed(path, metadata, entries, data)


def _rewrite(
    path: Path,
    *,
    metadata: dict[str, str | None] | None = None,
    tensors: dict[str, np.ndarray | None] | None = None,
) -> None:
    """Rewrite a checkpoint with some metadata entries or tensors replaced (``None``: dropped),
    signed again: what is refused is the edit itself, not a stale digest."""
    old_tensors, old_meta = _contents(path)
    new_tensors = {**old_tensors, **(tensors or {})}
    new_meta = {**old_meta, **(metadata or {})}
    write_tensors(
        path,
        {k: v for k, v in new_tensors.items() if v is not None},
        {k: v for k, v in new_meta.items() if v is not None},
    )


# ---------------------------------------------------------------------------- round trips
@pytest.mark.parametrize("builder", list(BUILDERS))
def test_round_trip_is_bit_for_bit_on_every_backend(
    case: Case, dtype: str, builder: str, tmp_path: Path
) -> None:
    model = BUILDERS[builder](case.model_kwargs(dtype))
    randomize(model, case, dtype)
    path = tmp_path / "m.safetensors"
    checkpoints.save(model, path)
    x = case.array(np.random.default_rng(3).normal(size=(7, 5)), dtype)
    expected = _host(model)

    for backend, dev in (("numpy", None), (case.backend, case.device)):
        loaded = checkpoints.load(path, backend=backend, device=dev)
        assert type(loaded) is type(model) and loaded.config() == model.config()
        assert loaded.backend == backend
        assert _backend.dtype_name(loaded.dtype) == dtype  # the stored dtype, not the default
        got = _host(loaded)
        assert list(got) == list(expected)
        for key, value in expected.items():
            assert got[key].dtype == value.dtype and np.array_equal(got[key], value), key

    # Loaded on the case's own backend and device, it computes exactly what the original did.
    assert loaded.device == case.resolved_device
    assert np.array_equal(pm.to_numpy(loaded(x)), pm.to_numpy(model(x)))
    # On NumPy, it computes the same function, up to the dtype's rounding.
    on_numpy = checkpoints.load(path)
    x_host = pm.asarray(x, like=on_numpy)
    err = relative_error(pm.to_numpy(on_numpy(x_host)), pm.to_numpy(model(x)))
    assert err <= TOLERANCE[dtype]


def test_load_casts_to_a_requested_dtype(case: Case, dtype: str, tmp_path: Path) -> None:
    model = pm.MLP([3, 4, 2], rng=0, **case.model_kwargs(dtype))
    randomize(model, case, dtype)
    path = tmp_path / "m.safetensors"
    checkpoints.save(model, path)
    other = {"float32": "float64", "float64": "float32"}[dtype]
    loaded = checkpoints.load(path, backend=case.backend, device=case.device, dtype=other)
    assert _backend.dtype_name(loaded.dtype) == other
    for key, value in _host(model).items():
        assert np.array_equal(pm.to_numpy(loaded.parameters()[key]), value.astype(other)), key


def test_non_contiguous_parameters_are_saved_in_order(case: Case, tmp_path: Path) -> None:
    # A transposed view: its host copy may be Fortran-ordered, which must not scramble values.
    model = pm.MLP([3, 4], rng=0, **case.model_kwargs("float64"))
    weight = np.arange(12.0).reshape(3, 4)
    transposed = case.xp.permute_dims(case.array(weight.T.copy(), "float64"), (1, 0))
    model.set_parameters({"0.weight": transposed, "0.bias": case.array(np.zeros(4), "float64")})
    path = tmp_path / "m.safetensors"
    checkpoints.save(model, path)
    assert np.array_equal(_contents(path)[0]["0.weight"], weight)
    assert np.array_equal(pm.to_numpy(checkpoints.load(path).parameters()["0.weight"]), weight)


def test_file_format(tmp_path: Path) -> None:
    model = pm.MLP([4, 3, 2], activation="sigmoid", rng=0, dtype="float32")
    path = tmp_path / "m.safetensors"
    checkpoints.save(model, str(path))  # str paths as well as PathLike
    tensors, metadata = _contents(path)  # any safetensors reader opens it
    unsigned = {
        "format": "portable_mlp",
        "format_version": "2",
        "config": canonical(model.config()).decode(),
        "dtype": "float32",
        "kind": "model",
    }
    assert metadata == {**unsigned, "digest": metadata["digest"]}
    assert sorted(tensors) == sorted(model.parameters())
    assert all(t.dtype == np.float32 for t in tensors.values())
    # The documented digest and layout: written independently, the very same bytes.
    write_tensors(tmp_path / "again.safetensors", tensors, unsigned)
    assert path.read_bytes() == (tmp_path / "again.safetensors").read_bytes()
    assert isinstance(checkpoints.load(str(path)), pm.MLP)


# ---------------------------------------------------------------------------- atomic writes
@pytest.mark.skipif(os.name != "posix", reason="POSIX permission bits")
def test_new_files_get_the_umask_permissions(tmp_path: Path) -> None:
    umask = os.umask(0o022)
    try:
        path = _saved(tmp_path)
    finally:
        os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o644  # as open(path, "wb") makes it, not 0600


def test_save_overwrites_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    path = _saved(tmp_path)
    model = pm.MLP([2, 2], rng=5, dtype="float64")
    checkpoints.save(model, path)
    assert os.listdir(tmp_path) == [path.name]
    assert checkpoints.load(path).config() == model.config()


@pytest.mark.parametrize("failing", ["serializer", "write", "fsync", "replace"])
def test_a_failed_save_leaves_the_old_file_intact(
    failing: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _saved(tmp_path)
    old = path.read_bytes()
    seen: list[list[str]] = []

    def boom(*args: Any, **kwargs: Any) -> Any:
        seen.append(sorted(os.listdir(tmp_path)))  # what is on disk when it fails
        raise OSError(f"{failing} failed")

    if failing == "serializer":
        monkeypatch.setattr(checkpoints, "_encode", boom)
    elif failing == "write":

        class DiskFull(io.FileIO):
            def write(self, data: Any) -> int:
                super().write(bytes(data)[: len(data) // 2])  # half reaches the temporary file
                return int(boom())

        monkeypatch.setattr(os, "fdopen", lambda fd, mode: DiskFull(fd, mode))
    else:
        monkeypatch.setattr(os, failing, boom)

    with pytest.raises(OSError, match=f"{failing} failed"):
        checkpoints.save(pm.MLP([4, 3, 2], rng=9, dtype="float64"), path)
    monkeypatch.undo()
    assert path.read_bytes() == old
    assert os.listdir(tmp_path) == [path.name]  # the temporary file is gone
    if failing != "serializer":  # the failure struck while a temporary file existed beside it
        (tmp,) = set(seen[0]) - {path.name}
        assert tmp.startswith(f".{path.name}.") and tmp.endswith(".tmp")


def test_save_refuses_what_is_not_a_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "m.safetensors"
    with pytest.raises(TypeError, match=r"Module or estimator .* got builtins\.dict"):
        checkpoints.save({"0.weight": np.zeros((2, 2))}, path)
    with pytest.raises(TypeError, match=r"got numpy\.ndarray"):
        checkpoints.save(np.zeros(3), path)
    with pytest.raises(ValueError, match="no parameters to save"):
        checkpoints.save(pm.Sequential(pm.ReLU()), path)
    # A look-alike class named like an estimator, but not the one load() would rebuild.
    fake = _fake_estimator_module()
    monkeypatch.setitem(sys.modules, "portable_mlp.estimator", fake)
    impostor = type("MLPClassifier", (), {"_checkpoint": fake.MLPClassifier._checkpoint})
    with pytest.raises(TypeError, match="MLPClassifier"):
        checkpoints.save(impostor(), path)
    assert not path.exists()


def test_save_refuses_a_header_that_load_would_refuse(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    notes = "x" * checkpoints.MAX_HEADER_BYTES
    with pytest.raises(ValueError, match=r"header would take \d+ bytes, over the 16777216"):
        checkpoints.save(pm.MLP([2, 2], rng=0), path, metadata={"notes": notes})
    assert os.listdir(tmp_path) == []


# ---------------------------------------------------------------------------- estimators
def _fake_estimator_module() -> types.ModuleType:
    module = types.ModuleType("portable_mlp.estimator")

    class MLPClassifier:
        __module__ = "portable_mlp.estimator"

        def __init__(self, model: pm.Module, state: dict[str, Any]) -> None:
            self.model, self.state = model, state

        def _checkpoint(self) -> tuple[pm.Module, dict[str, Any]]:
            return self.model, self.state

    module.MLPClassifier = MLPClassifier  # type: ignore[attr-defined]
    return module


def fitted(kind: str = "MLPClassifier", **kwargs: Any) -> Any:
    """A small estimator fitted for 3 epochs: string classes, or a 2-output regression."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, 4))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", pm.ConvergenceWarning)
        if kind == "MLPClassifier":
            y = np.array(["ant", "bee", "cat"])[np.arange(40) % 3]
            return pm.MLPClassifier((3,), max_iter=3, random_state=0, **kwargs).fit(X, y)
        return pm.MLPRegressor((3,), max_iter=3, random_state=0, **kwargs).fit(X, X[:, :2])


@pytest.mark.parametrize("kind", ["MLPClassifier", "MLPRegressor"])
def test_estimator_round_trip(case: Case, dtype: str, kind: str, tmp_path: Path) -> None:
    # The regressor trained without the captured step: compile=False is stored and restored.
    est = fitted(kind, compile=kind == "MLPClassifier", **case.model_kwargs(dtype))
    path = tmp_path / "est.safetensors"
    checkpoints.save(est, path)
    metadata = _contents(path)[1]
    assert metadata["kind"] == kind
    state = json.loads(metadata["estimator"])
    assert state["fitted"]["n_iter_"] == 3

    loaded = checkpoints.load(path, backend=case.backend, device=case.device)
    assert type(loaded) is type(est)

    def constructor(e: Any) -> dict[str, Any]:  # JSON keeps tuples as lists; placement aside
        params = {**e.get_params(), "hidden_layer_sizes": list(e.hidden_layer_sizes)}
        return {k: v for k, v in params.items() if k not in ("backend", "device", "dtype")}

    assert constructor(loaded) == constructor(est)
    assert loaded.model_.device == case.resolved_device
    for key, value in _host(est.model_).items():
        assert np.array_equal(pm.to_numpy(loaded.model_.parameters()[key]), value), key
    for attribute in checkpoints.FITTED_ATTRIBUTES[kind]:
        expected, got = getattr(est, attribute), getattr(loaded, attribute)
        assert type(got) is type(expected), attribute
        assert np.array_equal(got, expected) if attribute == "classes_" else got == expected
    if kind == "MLPClassifier":
        assert loaded.classes_.dtype == est.classes_.dtype


def test_estimator_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "clf.safetensors"
    checkpoints.save(fitted(), path)
    good = _contents(path)[1]["estimator"]
    _rewrite(path, metadata={"estimator": "{not json"})
    _refused(path, "'estimator' is not valid JSON")
    _rewrite(path, metadata={"estimator": None})
    _refused(path, "no 'estimator' entry")
    # A classifier's state under a regressor's kind.
    _rewrite(path, metadata={"estimator": good, "kind": "MLPRegressor"})
    _refused(
        path,
        r"fitted state: unknown \['_multilabel', 'classes_', 'classes_dtype'\], "
        r"missing \['_y_was_1d'\]",
    )
    # Refused at save time, not written as a checkpoint that cannot be read back.
    fake = _fake_estimator_module()
    monkeypatch.setitem(sys.modules, "portable_mlp.estimator", fake)
    with pytest.raises(TypeError, match=r"the state of MLPClassifier .* not JSON"):
        checkpoints.save(fake.MLPClassifier(pm.MLP([2, 2]), {"f": len}), tmp_path / "x")
    assert not (tmp_path / "x").exists()
    # An allowed kind that the estimator module does not define.
    _rewrite(path, metadata={"kind": "MLPRegressor", "estimator": good})
    _refused(path, "has no estimator 'MLPRegressor'")


# ---------------------------------------------------------------------------- broken files
def _refused(path: Path, match: str) -> None:
    with pytest.raises(CheckpointError, match=match) as info:
        checkpoints.load(path)
    message = str(info.value)
    assert str(path) in message and "\n" not in message, message


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nowhere\.safetensors"):
        checkpoints.load(tmp_path / "nowhere.safetensors")


@pytest.mark.parametrize("keep", [0, 5, 8, 40, "data", -1])
def test_truncated_file(keep: int | str, tmp_path: Path) -> None:
    path = _saved(tmp_path)
    data = path.read_bytes()
    header_end = 8 + int.from_bytes(data[:8], "little")
    cut = (header_end + len(data)) // 2 if keep == "data" else int(keep) % len(data)
    path.write_bytes(data[:cut])
    _refused(path, "truncated")


def test_trailing_bytes(tmp_path: Path) -> None:
    path = _saved(tmp_path)
    path.write_bytes(path.read_bytes() + b"\0\0\0")
    _refused(path, "3 stray bytes")


def test_corrupted_header(tmp_path: Path) -> None:
    path = _saved(tmp_path)
    data = bytearray(path.read_bytes())
    data[8] ^= 0xFF  # the header's opening brace
    path.write_bytes(bytes(data))
    _refused(path, "corrupted safetensors header")
    data[8] ^= 0xFF
    data[7] = 0x40  # the header length, now absurd
    path.write_bytes(bytes(data))
    _refused(path, "not a safetensors file")


def test_not_a_safetensors_file(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("these are not the weights you are looking for\n" * 3)
    _refused(path, "not a safetensors file")


@pytest.mark.parametrize("metadata", [None, {"format": "pt"}])
def test_foreign_safetensors_file(metadata: dict[str, str] | None, tmp_path: Path) -> None:
    path = tmp_path / "foreign.safetensors"
    safetensors.numpy.save_file({"weight": np.ones((2, 2))}, path, metadata=metadata)
    _refused(path, "not a portable_mlp checkpoint")


@pytest.mark.parametrize(
    ("metadata", "match"),
    [
        ({"format_version": "3"}, "unsupported checkpoint format_version '3'"),
        ({"format_version": "1"}, "'1' .written before checkpoints carried a digest"),
        ({"format_version": None}, "format_version None"),
        ({"dtype": "float16"}, "metadata dtype 'float16'"),
        ({"kind": "Pickler"}, "unknown checkpoint kind 'Pickler'"),
        ({"config": '{"type": "MLP", '}, "'config' is not valid JSON"),
        ({"config": "[1, 2]"}, "'config' should be a JSON object, found list"),
        ({"config": None}, "no 'config' entry"),
        ({"config": '{"type": "Conv2d"}'}, "unknown layer type 'Conv2d'"),
        ({"config": '{"type": "MLP", "sizes": [4, 3]}'}, r"missing \['activation', 'bias'\]"),
        ({"config": json.dumps(pm.MLP([4, 5, 2]).config())}, r"'0.weight' has shape \(4, 3\)"),
        ({"config": json.dumps(pm.MLP([4, 2]).config())}, r"unexpected \['2.bias', '2.weight'\]"),
    ],
)
def test_edited_metadata(metadata: dict[str, str | None], match: str, tmp_path: Path) -> None:
    path = _saved(tmp_path)
    _rewrite(path, metadata=metadata)
    _refused(path, match)


@pytest.mark.parametrize(
    ("tensors", "match"),
    [
        ({"2.bias": None}, r"missing \['2.bias'\], unexpected \[\]"),
        ({"3.weight": np.zeros((3, 2), np.float32)}, r"unexpected \['3.weight'\]"),
        ({"2.weight": np.zeros((2, 3), np.float32)}, r"'2.weight' has shape \(2, 3\).*\(3, 2\)"),
        ({"0.bias": np.zeros(3)}, "'0.bias' is float64, but the metadata says float32"),
    ],
)
def test_edited_tensors(tensors: dict[str, np.ndarray | None], match: str, tmp_path: Path) -> None:
    path = _saved(tmp_path)
    _rewrite(path, tensors=tensors)
    _refused(path, match)


def test_bad_load_arguments_raise_their_own_errors(tmp_path: Path) -> None:
    path = _saved(tmp_path)
    with pytest.raises(pm.BackendError, match="unknown backend"):
        checkpoints.load(path, backend="tensorflow")
    with pytest.raises(TypeError, match="dtype must be one of"):
        checkpoints.load(path, dtype="float16")


def test_user_metadata_round_trip(tmp_path: Path) -> None:
    model = pm.MLP([3, 2], rng=0)
    path = tmp_path / "m.safetensors"
    pm.save(model, path)
    assert checkpoints.read_metadata(path) == {}
    pm.save(model, path, metadata={"standardizer": {"mean": [1.0, 2.0]}, "columns": ["a", "b"]})
    assert checkpoints.read_metadata(path) == {
        "standardizer": {"mean": [1.0, 2.0]},
        "columns": ["a", "b"],
    }
    with pytest.raises(TypeError, match="metadata as JSON"):
        pm.save(model, path, metadata={"array": np.zeros(2)})
    (tmp_path / "foreign.safetensors").write_bytes(b"not a checkpoint")
    with pytest.raises(pm.CheckpointError):
        checkpoints.read_metadata(tmp_path / "foreign.safetensors")
