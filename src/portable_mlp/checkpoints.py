"""Saving and loading models and estimators as safetensors files: values and config, no pickle.

A checkpoint holds the model's parameters (keys of :meth:`Module.parameters`) as host arrays in
the model's dtype, and in its string metadata what rebuilds the rest::

    format          "portable_mlp"
    format_version  "1"
    config          json.dumps(model.config())
    dtype           "float32" or "float64"
    kind            "model", or the estimator's class name
    estimator       (estimators only) the estimator's state as JSON
    user            (optional) the caller's own metadata as JSON, see :func:`read_metadata`

:func:`load` rebuilds the model on any backend and device; by default in the stored dtype, so a
model trained on one backend loads on another bit for bit. Every way a file can be wrong (cut
short, corrupted, someone else's safetensors file, an edited header) is a :class:`CheckpointError`
naming the file, raised before a model is returned.
"""

from __future__ import annotations

import importlib
import json
import os
import secrets
from collections.abc import Mapping
from types import ModuleType
from typing import Any

import numpy as np
import safetensors.numpy

from ._backend import Placement, dtype_name, placement, to_numpy
from .layers import Module
from .models import from_config

__all__ = ["FORMAT", "FORMAT_VERSION", "CheckpointError", "load", "read_metadata", "save"]

FORMAT = "portable_mlp"
FORMAT_VERSION = "1"

# The estimator classes a checkpoint may name. load() instantiates whatever "kind" says, so it
# only ever looks up these names, and only in portable_mlp.estimator.
_ESTIMATORS = ("MLPClassifier", "MLPRegressor")
_DTYPES = ("float32", "float64")
# safetensors refuses headers over 100 MB; a larger length field means the bytes are not one.
_MAX_HEADER = 100_000_000


class CheckpointError(ValueError):
    """A file that is not a readable portable_mlp checkpoint (truncated, corrupted, foreign...)."""


# --------------------------------------------------------------------------------------------
# Saving
# --------------------------------------------------------------------------------------------
def save(
    obj: Any, path: str | os.PathLike[str], *, metadata: Mapping[str, Any] | None = None
) -> None:
    """Write a model (a :class:`Module`) or an estimator to ``path`` as a safetensors file.

    ``metadata``: a JSON-able mapping of the caller's own (the command line keeps its
    standardizer and column names there), read back by :func:`read_metadata`.

    The write is atomic: the bytes go to a temporary file beside ``path``, which replaces
    ``path`` only once it is complete and synced, so a crash or an error never leaves a partial
    checkpoint, and an existing file at ``path`` stays as it was until then.
    """
    model, kind, state = _unpack(obj)
    params = model.parameters()
    model_dtype = getattr(model, "dtype", None)  # None: a model without a Linear
    if not params or model_dtype is None:
        raise ValueError(f"save() got {model!r}, which has no parameters to save")
    # safetensors copies raw memory from the data pointer, so a Fortran-ordered or strided host
    # copy (a transposed torch tensor, say) would be written scrambled: make each one C-ordered.
    tensors = {key: np.ascontiguousarray(to_numpy(value)) for key, value in params.items()}
    header = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": _dumps(model.config(), f"{model!r}.config()"),
        "dtype": dtype_name(model_dtype),
        "kind": kind,
    }
    if state is not None:
        header["estimator"] = _dumps(state, f"the state of {kind}")
    if metadata is not None:
        header["user"] = _dumps(dict(metadata), "metadata")
    _write_atomic(os.fspath(path), safetensors.numpy.save(tensors, metadata=header))


def _unpack(obj: Any) -> tuple[Module, str, dict[str, Any] | None]:
    """``(model, kind, estimator state)`` of what :func:`save` was given."""
    if isinstance(obj, Module):
        return obj, "model", None
    kind = type(obj).__name__
    # Only a class load() would dispatch back to: anything else would load as something else.
    if kind in _ESTIMATORS and _estimator_class(kind) is type(obj):
        model, state = obj._checkpoint()
        if not isinstance(model, Module) or not isinstance(state, dict):
            raise TypeError(
                f"{kind}._checkpoint() must return (Module, dict), "
                f"got ({type(model).__name__}, {type(state).__name__})"
            )
        return model, kind, state
    raise TypeError(
        f"save() takes a portable_mlp Module or estimator ({', '.join(_ESTIMATORS)}), "
        f"got {type(obj).__module__}.{type(obj).__qualname__}"
    )


def _dumps(value: dict[str, Any], what: str) -> str:
    try:
        return json.dumps(value)
    except (TypeError, ValueError) as exc:  # a callable, an array, a circular reference...
        raise TypeError(f"save() stores {what} as JSON, but it is not JSON: {exc}") from exc


def _write_atomic(path: str, data: bytes) -> None:
    directory, name = os.path.split(os.path.abspath(path))
    fd, tmp = _create_temp(directory, name)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())  # on disk before the rename makes it visible as `path`
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def _create_temp(directory: str, name: str) -> tuple[int, str]:
    """A new, empty ``.<name>.<random>.tmp`` in ``directory``, opened for writing.

    Not ``tempfile.mkstemp``: it creates files with mode 0600, which the rename would pass on to
    the checkpoint. Mode 0666 here is narrowed by the umask, as ``open(path, "wb")`` would be.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    while True:
        tmp = os.path.join(directory, f".{name}.{secrets.token_hex(8)}.tmp")
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:  # a leftover with the same 64 random bits: draw again
            continue


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------
def load(
    path: str | os.PathLike[str],
    *,
    backend: str | ModuleType | Placement = "numpy",
    device: Any = None,
    dtype: Any = None,
) -> Any:
    """The model or estimator saved at ``path``, rebuilt on ``backend`` and ``device``
    (``backend`` may be a :class:`Placement`).

    ``dtype=None`` keeps the stored dtype (so values come back bit for bit); another dtype casts
    the values on the host first. A model comes back as a :class:`Module`, an estimator as an
    instance of its class. Raises :class:`CheckpointError` for a file that is not a valid
    checkpoint, and the backend's errors for a backend, device or dtype that cannot be used.
    """
    path = os.fspath(path)
    with open(path, "rb") as f:
        data = f.read()
    tensors, meta = _read_safetensors(path, data)
    stored_dtype, config, kind, state = _check_metadata(path, meta)
    for key, value in tensors.items():
        if value.dtype.name != stored_dtype:
            raise CheckpointError(
                f"{path}: tensor {key!r} is {value.dtype.name}, "
                f"but the metadata says {stored_dtype}"
            )
    # Resolved here, so that a bad backend, device or dtype argument raises its own error and
    # the try below catches only what the stored config gets wrong.
    where = placement(backend, device, stored_dtype if dtype is None else dtype)
    try:
        model = from_config(config, placement=where)
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(
            f"{path}: the stored config does not build a model ({type(exc).__name__}: {exc})"
        ) from exc
    model.set_parameters(_matched(path, tensors, model, where))
    if kind == "model":
        return model
    cls = _estimator_class(kind)
    if cls is None:
        raise CheckpointError(f"{path}: portable_mlp.estimator has no estimator {kind!r}")
    return cls._from_checkpoint(model, state)


def read_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The caller's metadata saved with the checkpoint at ``path`` (``{}`` if none)."""
    path = os.fspath(path)
    with open(path, "rb") as f:
        _, meta = _read_safetensors(path, f.read())
    _check_metadata(path, meta)
    return _json_object(path, meta, "user") if "user" in meta else {}


def _read_safetensors(path: str, data: bytes) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """The tensors and the metadata of a safetensors file's bytes."""
    try:
        tensors = safetensors.numpy.load(data)
    # The parser meets arbitrary bytes: besides its SafetensorError it raises, for example, a
    # KeyError for a dtype NumPy lacks. Any failure in it means the file is unusable.
    except Exception as exc:
        message = " ".join(str(exc).split())  # one line
        raise CheckpointError(
            f"{path}: {_diagnose(data)} (safetensors: {type(exc).__name__}: {message})"
        ) from exc
    # The header was just validated by the parser; its "__metadata__" is a str -> str map.
    header_len = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + header_len])
    return tensors, dict(header.get("__metadata__") or {})


def _diagnose(data: bytes) -> str:
    """What is wrong with bytes the safetensors parser refused, as far as the size tells."""
    size = len(data)
    if size < 8:
        return f"truncated: {size} bytes, but a safetensors file starts with an 8-byte length"
    header_len = int.from_bytes(data[:8], "little")
    if header_len > _MAX_HEADER:
        return f"not a safetensors file (its first 8 bytes give a header length of {header_len})"
    if 8 + header_len > size:
        return f"truncated: expected a {header_len}-byte header, found {size - 8} bytes"
    try:
        header = json.loads(data[8 : 8 + header_len])
        end = max(
            (int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"),
            default=0,
        )
    except (ValueError, TypeError, KeyError, IndexError, AttributeError):
        return "corrupted safetensors header"
    expected = 8 + header_len + end
    if size < expected:
        return f"truncated: expected {expected} bytes, found {size}"
    if size > expected:
        return f"{size - expected} stray bytes after the data: expected {expected}, found {size}"
    return "corrupted safetensors file"


def _check_metadata(
    path: str, meta: Mapping[str, str]
) -> tuple[str, dict[str, Any], str, dict[str, Any] | None]:
    """``(dtype, config, kind, estimator state)`` from a checkpoint's metadata, all checked."""
    found = meta.get("format")
    if found != FORMAT:
        raise CheckpointError(
            f"{path} is a safetensors file but not a portable_mlp checkpoint "
            f"(metadata format {found!r}, expected {FORMAT!r})"
        )
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: unsupported checkpoint format_version {version!r}; "
            f"this portable_mlp reads version {FORMAT_VERSION!r}"
        )
    stored_dtype = meta.get("dtype")
    if stored_dtype not in _DTYPES:
        raise CheckpointError(
            f"{path}: metadata dtype {stored_dtype!r}, expected one of {', '.join(_DTYPES)}"
        )
    kind = meta.get("kind")
    if kind != "model" and kind not in _ESTIMATORS:
        raise CheckpointError(
            f"{path}: unknown checkpoint kind {kind!r}, expected 'model' or one of "
            f"{', '.join(_ESTIMATORS)}"
        )
    config = _json_object(path, meta, "config")
    state = None if kind == "model" else _json_object(path, meta, "estimator")
    return stored_dtype, config, kind, state


def _json_object(path: str, meta: Mapping[str, str], key: str) -> dict[str, Any]:
    text = meta.get(key)
    if text is None:
        raise CheckpointError(f"{path}: metadata has no {key!r} entry")
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise CheckpointError(f"{path}: metadata {key!r} is not valid JSON ({exc})") from exc
    if not isinstance(value, dict):
        raise CheckpointError(
            f"{path}: metadata {key!r} should be a JSON object, found {type(value).__name__}"
        )
    return value


def _matched(
    path: str,
    tensors: Mapping[str, np.ndarray],
    model: Module,
    where: Placement,
) -> dict[str, Any]:
    """The stored tensors on the model's backend, once their names and shapes match it."""
    expected = {key: tuple(value.shape) for key, value in model.parameters().items()}
    missing, extra = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
    if missing or extra:
        raise CheckpointError(
            f"{path}: tensors do not match the config's parameters: "
            f"missing {missing}, unexpected {extra}"
        )
    for key, shape in expected.items():
        if tensors[key].shape != shape:
            raise CheckpointError(
                f"{path}: tensor {key!r} has shape {tensors[key].shape}, the config expects {shape}"
            )
    return {key: where.asarray(tensors[key]) for key in expected}


def _estimator_class(kind: str) -> Any:
    """The class ``portable_mlp.estimator.<kind>`` for an allowed ``kind``, else ``None``.

    Imported on first use: the estimators build on this module, not the other way round.
    """
    if kind not in _ESTIMATORS:
        return None
    module = importlib.import_module(f"{__package__}.estimator")
    cls = getattr(module, kind, None)
    return cls if isinstance(cls, type) else None
