"""Saving and loading models and estimators as safetensors files: values and config, no pickle.

A checkpoint holds the model's parameters (keys of :meth:`Module.parameters`) as little-endian
host arrays in the model's dtype, and in its string metadata what rebuilds the rest::

    format          "portable_mlp"
    format_version  "2"
    config          the model's config (see below) as JSON
    dtype           "float32" or "float64"
    kind            "model", or the estimator's class name
    estimator       (estimators only) the estimator's state as JSON
    user            (optional) the caller's own metadata as JSON, see :func:`read_metadata`
    digest          "sha256:" and the SHA-256 of everything else (see :func:`_digest`)

JSON entries are written canonically (sorted keys, no spaces) and tensors in sorted order, so one
model always saves to the same bytes. Any safetensors reader can open the file.

:func:`load` rebuilds the model on any backend and device; by default in the stored dtype, so a
model trained on one backend loads on another bit for bit. What a checkpoint guarantees:

- integrity: the digest covers every tensor byte and every metadata entry, so a corrupted file
  (a flipped bit, a cut, a permuted header) is refused, never loaded as a different model. It is
  a checksum, not a signature: it cannot tell a deliberately re-signed file.
- bounded loading: only a regular file is opened; the 8-byte length and the header are read
  first and their size capped, the file's size is checked against the header's data offsets,
  and the config and estimator state are checked against a schema (known keys, types, ranges,
  nesting depth) and against the stored tensors' shapes before any model is built. A file's
  cost to load is therefore proportional to its size on disk.
- no code execution: nothing is unpickled or imported by name beyond the two estimator classes.

Every way a file can be wrong is a :class:`CheckpointError` naming the file; :func:`load` and
:func:`read_metadata` raise nothing else for a file's contents (``OSError`` for the filesystem,
and the backend's own errors for a ``backend``, ``device`` or ``dtype`` argument).
"""

from __future__ import annotations

import hashlib
import importlib
import itertools
import json
import math
import os
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import Any, BinaryIO, TypeVar

import numpy as np

from . import _io
from ._backend import BACKENDS, BackendError, Placement, dtype_name, placement, to_numpy
from ._validation import as_host, check_estimator_params
from .datasets import Standardizer
from .layers import ACTIVATIONS, Module
from .models import from_config

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "CheckpointError",
    "load",
    "read_metadata",
    "save",
    "stored_dtype",
]

FORMAT = "portable_mlp"
FORMAT_VERSION = "2"

# The estimator classes a checkpoint may name. load() instantiates whatever "kind" says, so it
# only ever looks up these names, and only in portable_mlp.estimator.
_ESTIMATORS = ("MLPClassifier", "MLPRegressor")
# dtype name -> (safetensors code, little-endian NumPy dtype)
_DTYPES: dict[str, tuple[str, np.dtype[Any]]] = {
    "float32": ("F32", np.dtype("<f4")),
    "float64": ("F64", np.dtype("<f8")),
}
_CODES = {code: name for name, (code, _) in _DTYPES.items()}
# The header holds the config, the estimator state (loss curves: one number an epoch) and the
# caller's metadata (a standardizer: two numbers a feature). 16 MiB is far beyond any of those,
# and caps what a hostile length field can make load() read and parse.
MAX_HEADER_BYTES = 16 * 2**20
# Nesting of any JSON entry: a config nests two levels per Sequential, the rest one or two.
MAX_JSON_DEPTH = 32
_MAX_RANK = 8
_T = TypeVar("_T")


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
    standardizer and column names there), read back by :func:`read_metadata`. A fitted
    scikit-learn ``Pipeline`` of a standardizer and an estimator saves the estimator, with the
    standardizer and column names in the metadata, as ``portable-mlp train --save`` does.

    The write is atomic (:mod:`portable_mlp._io`): a crash or an error never leaves a partial
    checkpoint, and an existing file at ``path`` stays as it was until the new one is complete.
    """
    if hasattr(obj, "steps"):  # a Pipeline: its estimator, and its standardizer in metadata
        obj, metadata = _unpipe(obj, metadata)
    model, kind, state = _unpack(obj)
    params = model.parameters()
    model_dtype = getattr(model, "dtype", None)  # None: a model without a Linear
    if not params or model_dtype is None:
        raise ValueError(f"save() got {model!r}, which has no parameters to save")
    name = dtype_name(model_dtype)
    # A C-ordered little-endian copy: the bytes are written as they lie in memory, so a
    # Fortran-ordered host copy (a transposed torch tensor, say) would be written scrambled.
    tensors = {
        key: np.ascontiguousarray(to_numpy(value), dtype=_DTYPES[name][1])
        for key, value in params.items()
    }
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": _dumps(model.config(), f"{model!r}.config()"),
        "dtype": name,
        "kind": kind,
    }
    if state is not None:
        meta["estimator"] = _dumps(state, f"the state of {kind}")
    if metadata is not None:
        meta["user"] = _dumps(dict(metadata), "metadata")
    _io.write_atomic(path, _encode(tensors, meta))


def _unpipe(obj: Any, metadata: Mapping[str, Any] | None) -> tuple[Any, dict[str, Any]]:
    """What :func:`save` writes for a fitted scikit-learn ``Pipeline`` of a standardizer
    (``StandardScaler`` or :class:`~portable_mlp.datasets.Standardizer`) and one of the
    estimators: the estimator, with the standardizer's statistics and the column names in the
    metadata, where ``portable-mlp predict`` finds them."""
    steps = list(obj.steps)
    names = [type(step).__name__ for _, step in steps]
    if len(steps) != 2 or not isinstance(steps[1][1], _estimator_module()._BaseMLP):
        raise TypeError(
            "save() takes a Pipeline of a standardizer and an MLPClassifier or MLPRegressor, "
            f"got one of {names}"
        )
    scaler, est = steps[0][1], steps[1][1]
    est._check_fitted()
    mean, scale = getattr(scaler, "mean_", None), getattr(scaler, "scale_", None)
    if not (isinstance(scaler, Standardizer) or names[0] == "StandardScaler"):
        raise TypeError(f"save() takes a Pipeline whose first step standardizes, got {names[0]}")
    if mean is None or scale is None:
        raise ValueError(
            f"save() needs the Pipeline's {names[0]} fitted, with a mean and a scale (a "
            "StandardScaler with with_mean=True and with_std=True)"
        )
    stats = {k: as_host(v, k).tolist() for k, v in (("mean", mean), ("scale", scale))}
    if len(stats["mean"]) != est.n_features_in_:
        raise ValueError(
            f"the Pipeline's {names[0]} has {len(stats['mean'])} features, its "
            f"{names[1]} {est.n_features_in_}"
        )
    user: dict[str, Any] = {"standardizer": stats}
    columns = getattr(scaler, "feature_names_in_", getattr(est, "feature_names_in_", None))
    if columns is not None:
        user["feature_names"] = [str(c) for c in columns]
    return est, {**user, **(metadata or {})}


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


def _canonical(value: Any) -> str:
    """The one JSON spelling of ``value``: sorted keys, no spaces, ASCII only."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def _dumps(value: dict[str, Any], what: str) -> str:
    try:
        return _canonical(value)
    except (TypeError, ValueError) as exc:  # a callable, an array, a circular reference...
        raise TypeError(f"save() stores {what} as JSON, but it is not JSON: {exc}") from exc


def _encode(tensors: Mapping[str, np.ndarray], meta: Mapping[str, str]) -> bytes:
    """The bytes of a checkpoint: the 8-byte header length, the header, the tensors' bytes.

    Tensors follow in sorted order, each right after the one before, as safetensors requires.
    """
    entries: dict[str, Any] = {}
    chunks: list[bytes] = []
    offset = 0
    for key in sorted(tensors):
        value = tensors[key]
        code = _DTYPES[value.dtype.name][0]
        entries[key] = {
            "dtype": code,
            "shape": list(value.shape),
            "data_offsets": [offset, offset + value.nbytes],
        }
        chunks.append(value.tobytes())
        offset += value.nbytes
    data = b"".join(chunks)
    signed = {**meta, "digest": _digest(meta, entries, data)}
    header = _canonical({"__metadata__": signed, **entries}).encode()
    header += b" " * (-len(header) % 8)  # the data starts 8-byte aligned, as safetensors does
    if len(header) > MAX_HEADER_BYTES:
        raise ValueError(
            f"save(): the checkpoint's header would take {len(header)} bytes, over the "
            f"{MAX_HEADER_BYTES} that load() accepts (is the metadata that large?)"
        )
    return len(header).to_bytes(8, "little") + header + data


def _digest(meta: Mapping[str, str], entries: Mapping[str, Any], data: bytes) -> str:
    """``"sha256:<hex>"`` of the canonical header without its digest, then the tensor bytes.

    Canonical, so a file whose header another writer spelled differently (key order, spaces)
    but that says the same still verifies; any change in what it says, or in a byte of data,
    does not.
    """
    h = hashlib.sha256(_canonical({"__metadata__": meta, **entries}).encode())
    h.update(data)
    return f"sha256:{h.hexdigest()}"


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Tensor:
    shape: tuple[int, ...]
    begin: int
    end: int


@dataclass(frozen=True)
class _Contents:
    """A checkpoint whose bytes are verified and whose config matches its tensors."""

    meta: dict[str, str]
    dtype: str
    kind: str
    config: dict[str, Any]
    user: dict[str, Any]
    tensors: dict[str, _Tensor]
    data: bytes

    def arrays(self) -> dict[str, np.ndarray]:
        """The stored tensors as host arrays (views of the file's bytes)."""
        dt = _DTYPES[self.dtype][1]
        return {
            key: np.frombuffer(
                self.data, dtype=dt, count=math.prod(t.shape), offset=t.begin
            ).reshape(t.shape)
            for key, t in self.tensors.items()
        }


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
    checkpoint, ``OSError`` for one that cannot be read, and the backend's errors for a backend,
    device or dtype that cannot be used.
    """
    path = os.fspath(path)
    contents = _guarded(path, lambda: _read(path))
    state = None
    if contents.kind != "model":
        state = _guarded(
            path,
            lambda: estimator_state(
                contents.kind, _json_object(contents.meta, "estimator"), contents.config
            ),
        )
    # Resolved outside the guard: a bad backend, device or dtype argument raises its own error.
    try:
        where = placement(backend, device, contents.dtype if dtype is None else dtype)
    except BackendError as exc:
        if dtype is not None:
            raise
        raise BackendError(
            f"{path} holds a {contents.dtype} model, but {exc}; or load it in another dtype: "
            f"load(path, backend=..., dtype='float32')"
        ) from None
    return _guarded(path, lambda: _build(contents, state, where))


def stored_dtype(path: str | os.PathLike[str]) -> str:
    """The dtype a checkpoint's values are stored in, once the file is verified as :func:`load`
    would: ``"float32"`` or ``"float64"``."""
    path = os.fspath(path)
    return _guarded(path, lambda: _read(path)).dtype


def read_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The caller's metadata saved with the checkpoint at ``path`` (``{}`` if none), once the
    whole file is verified as :func:`load` would."""
    path = os.fspath(path)
    return _guarded(path, lambda: _read(path)).user


def _guarded(path: str, step: Callable[[], _T]) -> _T:
    """``step()``, with every error but the filesystem's turned into a one-line
    :class:`CheckpointError` naming ``path``.

    The checks in ``step`` raise :class:`_Refused` with a message; anything else escaping them
    (a case they missed) is still a refusal of the file, never a crash of the caller.
    """
    try:
        return step()
    except _Refused as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    except (CheckpointError, OSError):
        raise
    except Exception as exc:
        message = " ".join(str(exc).split())  # one line
        raise CheckpointError(f"{path}: unreadable ({type(exc).__name__}: {message})") from exc


class _Refused(CheckpointError):
    """A check failed; :func:`_guarded` prefixes the file's name."""


def _read(path: str) -> _Contents:
    with _open_regular(path) as f:
        size = os.fstat(f.fileno()).st_size
        if size < 8:
            raise _Refused(
                f"truncated: {size} bytes, but a safetensors file starts with an 8-byte length"
            )
        header_len = int.from_bytes(f.read(8), "little")
        if header_len > MAX_HEADER_BYTES:
            raise _Refused(
                f"not a safetensors file (its first 8 bytes give a header length of "
                f"{header_len}, over the {MAX_HEADER_BYTES} accepted)"
            )
        if 8 + header_len > size:
            raise _Refused(
                f"truncated: expected a {header_len}-byte header, found {size - 8} bytes"
            )
        header = _parse_header(_read_exactly(f, header_len))
        meta = _checked_metadata(header)
        stored_dtype, kind = meta["dtype"], meta["kind"]
        tensors = _tensor_entries(header, stored_dtype)
        end = max((t.end for t in tensors.values()), default=0)
        expected = 8 + header_len + end
        if size < expected:
            raise _Refused(f"truncated: expected {expected} bytes, found {size}")
        if size > expected:
            raise _Refused(
                f"{size - expected} stray bytes after the data: expected {expected}, found {size}"
            )
        data = _read_exactly(f, end)
    entries = {k: v for k, v in header.items() if k != "__metadata__"}
    unsigned = {k: v for k, v in meta.items() if k != "digest"}
    if _digest(unsigned, entries, data) != meta["digest"]:
        raise _Refused(
            "corrupted: the SHA-256 digest of its contents does not match the one stored in it"
        )
    config = _json_object(meta, "config")
    _match_tensors(tensors, _config_shapes(config))
    user = _json_object(meta, "user") if "user" in meta else {}
    return _Contents(meta, stored_dtype, kind, config, user, tensors, data)


def _open_regular(path: str) -> BinaryIO:
    """``open(path, "rb")`` for a regular file only, refused before anything is read.

    A device (``/dev/zero``) would read forever and a FIFO would block the open; O_NONBLOCK
    keeps even a FIFO swapped in after the check from blocking, and the opened file is checked
    again.
    """
    _refuse_irregular(os.stat(path).st_mode)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    fd = os.open(path, flags | getattr(os, "O_CLOEXEC", 0))
    try:
        _refuse_irregular(os.fstat(fd).st_mode)
    except BaseException:
        os.close(fd)
        raise
    return os.fdopen(fd, "rb")


def _refuse_irregular(mode: int) -> None:
    if stat.S_ISREG(mode):
        return
    kinds = (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    )
    kind = next((name for test, name in kinds if test(mode)), "not a file")
    raise _Refused(f"is {kind}, not a regular file; a checkpoint is a file")


def _read_exactly(f: BinaryIO, n: int) -> bytes:
    data = f.read(n)
    if len(data) != n:  # the file shrank while being read
        raise _Refused(f"truncated while reading: expected {n} more bytes, got {len(data)}")
    return data


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def _loads(text: str | bytes, what: str) -> Any:
    """Parsed JSON; a repeated key (which reader wins?) and deep nesting are refused too."""
    try:
        value = json.loads(text, object_pairs_hook=_unique_keys)
    except RecursionError:
        raise _Refused(f"{what} is nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, a duplicate key
        raise _Refused(f"{what} is not valid JSON ({' '.join(str(exc).split())})") from None
    if _depth(value) > MAX_JSON_DEPTH:
        raise _Refused(f"{what} is nested more than {MAX_JSON_DEPTH} levels deep")
    return value


def _depth(value: Any) -> int:
    """How deeply lists and objects nest in ``value`` (walked without recursion)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        children = item.values() if isinstance(item, dict) else item
        if isinstance(item, (dict, list)):
            deepest = max(deepest, level)
            stack.extend((child, level + 1) for child in children)
    return deepest


def _parse_header(raw: bytes) -> dict[str, Any]:
    header = _loads(raw, "corrupted safetensors header: it")
    if not isinstance(header, dict):
        raise _Refused(
            f"corrupted safetensors header: a JSON {type(header).__name__}, not an object"
        )
    return header


def _checked_metadata(header: Mapping[str, Any]) -> dict[str, str]:
    """The header's ``__metadata__``, its format, version, dtype and kind checked."""
    meta = header.get("__metadata__", {})
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise _Refused("corrupted safetensors header: __metadata__ is not a map of strings")
    found = meta.get("format")
    if found != FORMAT:
        raise _Refused(
            f"a safetensors file but not a portable_mlp checkpoint "
            f"(metadata format {found!r}, expected {FORMAT!r})"
        )
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        older = " (written before checkpoints carried a digest)" if version == "1" else ""
        raise _Refused(
            f"unsupported checkpoint format_version {version!r}{older}; this portable_mlp "
            f"reads version {FORMAT_VERSION!r}"
        )
    if meta.get("dtype") not in _DTYPES:
        raise _Refused(
            f"metadata dtype {meta.get('dtype')!r}, expected one of {', '.join(_DTYPES)}"
        )
    kind = meta.get("kind")
    if kind != "model" and kind not in _ESTIMATORS:
        raise _Refused(
            f"unknown checkpoint kind {kind!r}, expected 'model' or one of {', '.join(_ESTIMATORS)}"
        )
    digest = meta.get("digest", "")
    if not digest.startswith("sha256:"):
        raise _Refused(f"metadata digest {meta.get('digest')!r}, expected 'sha256:<hex>'")
    return dict(meta)


def _tensor_entries(header: Mapping[str, Any], stored_dtype: str) -> dict[str, _Tensor]:
    """The header's tensors, each of the stored dtype, laid end to end from offset 0."""
    itemsize = _DTYPES[stored_dtype][1].itemsize
    tensors: dict[str, _Tensor] = {}
    for key, entry in header.items():
        if key == "__metadata__":
            continue
        if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
            raise _Refused(
                f"corrupted safetensors header: tensor {key!r} is not "
                "{dtype, shape, data_offsets}"
            )
        code = entry["dtype"]
        if code != _DTYPES[stored_dtype][0]:
            found = _CODES.get(code, code) if isinstance(code, str) else repr(code)
            raise _Refused(f"tensor {key!r} is {found}, but the metadata says {stored_dtype}")
        shape, offsets = entry["shape"], entry["data_offsets"]
        if not _int_list(shape, _MAX_RANK, minimum=0):
            raise _Refused(f"corrupted safetensors header: tensor {key!r} has shape {shape!r}")
        if not (_int_list(offsets, 2, minimum=0) and len(offsets) == 2):
            raise _Refused(
                f"corrupted safetensors header: tensor {key!r} has data_offsets {offsets!r}"
            )
        begin, end = offsets
        if end - begin != math.prod(shape) * itemsize:
            raise _Refused(
                f"corrupted safetensors header: tensor {key!r} of shape {tuple(shape)} "
                f"takes {math.prod(shape) * itemsize} bytes, its data_offsets {offsets} say "
                f"{end - begin}"
            )
        tensors[key] = _Tensor(tuple(shape), begin, end)
    position = 0
    for key, t in sorted(tensors.items(), key=lambda kv: (kv[1].begin, kv[1].end)):
        if t.begin != position:
            raise _Refused(
                f"corrupted safetensors header: tensor {key!r} starts at byte {t.begin}, "
                f"expected {position} (tensors must follow each other without gaps or overlap)"
            )
        position = t.end
    return tensors


def _int_list(value: Any, max_len: int, *, minimum: int) -> bool:
    return (
        isinstance(value, list)
        and len(value) <= max_len
        and all(type(v) is int and v >= minimum for v in value)
    )


def _json_object(meta: Mapping[str, str], key: str) -> dict[str, Any]:
    text = meta.get(key)
    if text is None:
        raise _Refused(f"metadata has no {key!r} entry")
    value = _loads(text, f"metadata {key!r}")
    if not isinstance(value, dict):
        raise _Refused(f"metadata {key!r} should be a JSON object, found {type(value).__name__}")
    return value


# --------------------------------------------------------------------------------------------
# The config schema: what from_config() builds, checked without building it
# --------------------------------------------------------------------------------------------
_ACTIVATION_TYPES = {cls.__name__ for cls in ACTIVATIONS.values()}


def _config_shapes(config: Any, depth: int = 0) -> dict[str, tuple[int, ...]]:
    """The parameters ``from_config(config)`` would make, by key, with their shapes.

    Checks every field's type and range and refuses unknown fields, so that the shapes (and
    so the memory a model would take) are known, and compared with the stored tensors, before
    anything is allocated.
    """
    if depth > MAX_JSON_DEPTH:
        raise _Refused(f"config nests models more than {MAX_JSON_DEPTH} levels deep")
    if not isinstance(config, dict):
        raise _Refused(f"config: expected a layer as a JSON object, got {_json_type(config)}")
    kind = config.get("type")
    if kind == "MLP":
        _fields(config, {"sizes": _is_sizes, "activation": _is_activation, "bias": _is_bool})
        sizes, bias = config["sizes"], config["bias"]
        if len(sizes) < 2:
            raise _Refused(f"config: MLP sizes {sizes} need an input and an output size")
        shapes: dict[str, tuple[int, ...]] = {}
        for i, (p_in, p_out) in enumerate(itertools.pairwise(sizes)):
            for key, shape in _linear_shapes(p_in, p_out, bias).items():
                shapes[f"{2 * i}.{key}"] = shape  # an activation between each two Linears
        return shapes
    if kind == "Sequential":
        _fields(config, {"layers": lambda v: isinstance(v, list)})
        return {
            f"{i}.{key}": shape
            for i, layer in enumerate(config["layers"])
            for key, shape in _config_shapes(layer, depth + 1).items()
        }
    if kind == "Linear":
        _fields(config, {"p_in": _is_size, "p_out": _is_size, "bias": _is_bool})
        return _linear_shapes(config["p_in"], config["p_out"], config["bias"])
    if kind == "LeakyReLU":
        _fields(config, {"negative_slope": _is_finite})
        return {}
    if kind in _ACTIVATION_TYPES:
        _fields(config, {})
        return {}
    known = ", ".join(sorted({"MLP", "Sequential", "Linear", *_ACTIVATION_TYPES}))
    raise _Refused(f"config: unknown layer type {kind!r}; expected one of {known}")


def _fields(config: Mapping[str, Any], checks: Mapping[str, Any]) -> None:
    kind = config["type"]
    unknown = sorted(set(config) - {"type", *checks})
    missing = sorted(set(checks) - set(config))
    if unknown or missing:
        raise _Refused(
            f"config: {kind} has fields {sorted(config)}; unknown {unknown}, missing {missing}"
        )
    for key, check in checks.items():
        if not check(config[key]):
            raise _Refused(f"config: {kind} {key} {_short(config[key])} is not valid")


def _linear_shapes(p_in: int, p_out: int, bias: bool) -> dict[str, tuple[int, ...]]:
    return {"weight": (p_in, p_out), **({"bias": (p_out,)} if bias else {})}


def _match_tensors(tensors: Mapping[str, _Tensor], expected: Mapping[str, tuple[int, ...]]) -> None:
    """The stored tensors are exactly the config's parameters, shape for shape. So the model's
    size is the file's: a config cannot ask for more parameters than the file holds."""
    missing, extra = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
    if missing or extra:
        raise _Refused(
            f"tensors do not match the config's parameters: missing {_short(missing)}, "
            f"unexpected {_short(extra)}"
        )
    if not expected:
        raise _Refused("the config has no parameters, so there is no model to load")
    for key, shape in expected.items():
        if tensors[key].shape != shape:
            raise _Refused(
                f"tensor {key!r} has shape {tensors[key].shape}, the config expects {shape}"
            )


def _build(contents: _Contents, state: dict[str, Any] | None, where: Placement) -> Any:
    model = from_config(contents.config, placement=where)
    model.set_parameters({k: where.asarray(v) for k, v in contents.arrays().items()})
    if contents.kind == "model":
        return model
    cls = _estimator_class(contents.kind)
    if cls is None:
        raise _Refused(f"portable_mlp.estimator has no estimator {contents.kind!r}")
    return cls._from_checkpoint(model, state)


# --------------------------------------------------------------------------------------------
# The estimator state schema
# --------------------------------------------------------------------------------------------
def _is_bool(v: Any) -> bool:
    return isinstance(v, bool)


def _is_int(v: Any, minimum: int = 0) -> bool:
    return type(v) is int and v >= minimum


def _is_size(v: Any) -> bool:
    return _is_int(v, 1)


def _is_sizes(v: Any) -> bool:
    return isinstance(v, list) and all(_is_size(s) for s in v)


def _is_number(v: Any) -> bool:
    return type(v) in (int, float)


def _is_finite(v: Any) -> bool:
    return _is_number(v) and math.isfinite(v)


def _is_positive(v: Any) -> bool:
    return _is_finite(v) and v > 0


def _is_activation(v: Any) -> bool:
    return isinstance(v, str) and v in ACTIVATIONS


def _is_str(v: Any) -> bool:
    return isinstance(v, str)


def _optional(check: Any) -> Any:
    return lambda v: v is None or check(v)


def _is_numbers(v: Any) -> bool:
    return isinstance(v, list) and all(_is_number(x) for x in v)


# The constructor parameters an estimator stores; their ranges are the estimator's own checks.
_PARAMS: dict[str, Any] = {
    "hidden_layer_sizes": lambda v: _is_size(v) or _is_sizes(v),
    "activation": _is_activation,
    "solver": _is_str,
    "alpha": _is_finite,
    "batch_size": lambda v: v == "auto" or _is_size(v),
    "learning_rate": _is_str,
    "learning_rate_init": _is_positive,
    "max_iter": _is_size,
    "shuffle": _is_bool,
    "random_state": _optional(_is_int),
    "tol": _is_finite,
    "verbose": lambda v: _is_bool(v) or _is_int(v),
    "warm_start": _is_bool,
    "momentum": _is_finite,
    "nesterovs_momentum": _is_bool,
    "early_stopping": _is_bool,
    "validation_fraction": _is_finite,
    "beta_1": _is_finite,
    "beta_2": _is_finite,
    "epsilon": _is_positive,
    "n_iter_no_change": lambda v: _is_size(v) or v == math.inf,
    "power_t": _is_finite,
    "max_grad_norm": _optional(_is_positive),
    "compile": _is_bool,
    "backend": lambda v: v in BACKENDS,
    "device": lambda v: v is None,
    "dtype": lambda v: v is None,
}

# The fitted attributes an estimator's state may set, by class: nothing else is ever restored.
_FITTED: dict[str, Any] = {
    "n_features_in_": _is_size,
    "n_outputs_": _is_size,
    "n_iter_": _is_int,
    "t_": _is_int,
    "loss_curve_": _is_numbers,
    "validation_scores_": _optional(_is_numbers),
    "best_loss_": _optional(_is_number),
    "best_validation_score_": _optional(_is_number),
    "eval_loss_curve_": _optional(_is_numbers),
    "eval_scores_": _optional(_is_numbers),
    "feature_names_in_": _optional(lambda v: isinstance(v, list) and all(map(_is_str, v))),
}
_FITTED_BY_KIND: dict[str, dict[str, Any]] = {
    "MLPClassifier": {
        **_FITTED,
        "classes_": lambda v: isinstance(v, list),
        "classes_dtype": _is_str,
        "_multilabel": _is_bool,
    },
    "MLPRegressor": {**_FITTED, "_y_was_1d": _is_bool},
}
#: The attributes :func:`load` may set on an estimator of each class (``classes_dtype`` is not
#: one: it says how to rebuild ``classes_``; ``feature_names_in_`` exists only where stored).
FITTED_ATTRIBUTES: dict[str, frozenset[str]] = {
    kind: frozenset(keys) - {"classes_dtype", "feature_names_in_"}
    for kind, keys in _FITTED_BY_KIND.items()
}
# A string class label array may be wider than its longest label (NumPy keeps the input's
# width), but not by more than this: a width is memory, allocated per class.
_MAX_LABEL_WIDTH = 256


def estimator_state(kind: str, state: Any, config: Mapping[str, Any]) -> dict[str, Any]:
    """An estimator's stored ``state``, checked, as ``{"params": ..., "fitted": ...}``.

    Known keys only, each of its type; the constructor parameters pass the estimator's own
    checks; the state agrees with the model's ``config`` (already checked against the tensors:
    its sizes, activation and output width) and with its class (a classifier's classes, sorted
    and unique; a regressor's output shape). Raises :class:`CheckpointError` naming the first
    problem (:func:`load` adds the file's name).
    """
    if not isinstance(state, dict):
        raise _Refused(f"estimator state: expected a JSON object, got {_json_type(state)}")
    cls = _estimator_class(kind)
    if cls is None:
        raise _Refused(f"portable_mlp.estimator has no estimator {kind!r}")
    _known(
        state,
        {"params": lambda v: isinstance(v, dict), "fitted": lambda v: isinstance(v, dict)},
        "state",
    )
    params, fitted = state["params"], state["fitted"]
    allowed = {k: v for k, v in _PARAMS.items() if k in set(cls._param_names())}
    _known(params, allowed, "parameters", required=False)
    _known(fitted, _FITTED_BY_KIND[kind], "fitted state")
    est = cls(**params)  # missing parameters take their defaults
    try:
        check_estimator_params(est)
    except (ValueError, TypeError, OverflowError) as exc:
        raise _Refused(f"stored parameters refused: {exc}") from None

    if config.get("type") != "MLP" or not config["bias"]:
        raise _Refused(
            f"an estimator's model is an MLP with biases, the config says {_short(config)}"
        )
    sizes = config["sizes"]
    hidden = est.hidden_layer_sizes
    for what, stored, model in (
        ("hidden_layer_sizes", [hidden] if isinstance(hidden, int) else list(hidden), sizes[1:-1]),
        ("activation", est.activation, config["activation"]),
        ("n_features_in_", fitted["n_features_in_"], sizes[0]),
        ("n_outputs_", fitted["n_outputs_"], sizes[-1]),
    ):
        if stored != model:
            raise _Refused(
                f"the state's {what} {_short(stored)} disagrees with the model's {model}"
            )
    if kind == "MLPClassifier":
        classes = _classes(fitted["classes_"], fitted["classes_dtype"])
        expected = 1 if len(classes) == 2 and not fitted["_multilabel"] else len(classes)
        if fitted["n_outputs_"] != expected:
            raise _Refused(
                f"{len(classes)} classes need {expected} output(s), the state says "
                f"n_outputs_ {fitted['n_outputs_']}"
            )
    elif fitted["_y_was_1d"] and fitted["n_outputs_"] != 1:
        raise _Refused(f"a 1-d y means one output, the state says {fitted['n_outputs_']}")
    names = fitted["feature_names_in_"]
    if names is not None and len(names) != fitted["n_features_in_"]:
        raise _Refused(f"{len(names)} feature names for {fitted['n_features_in_']} features")
    return {"params": params, "fitted": fitted}


def _known(
    values: Mapping[str, Any], checks: Mapping[str, Any], what: str, *, required: bool = True
) -> None:
    unknown = sorted(set(values) - set(checks))
    missing = sorted(set(checks) - set(values)) if required else []
    if unknown or missing:
        raise _Refused(f"estimator {what}: unknown {_short(unknown)}, missing {_short(missing)}")
    for key, value in values.items():
        if not checks[key](value):
            raise _Refused(f"estimator {what}: {key} {_short(value)} is not valid")


def _classes(values: list[Any], dtype_str: str) -> np.ndarray:
    """The classes as the estimator would rebuild them, once that is known to be harmless."""
    try:
        dt = np.dtype(dtype_str)
    except (TypeError, ValueError):
        raise _Refused(f"classes_dtype {_short(dtype_str)} is not a NumPy dtype") from None
    if len(values) < 2:
        raise _Refused(f"a classifier needs at least 2 classes, the state has {len(values)}")
    kinds = {_label_kind(v) for v in values}
    allowed = {"U": {"str"}, "O": {"str", "number"}, "b": {"bool"}}
    allowed.update({kind: {"number"} for kind in "iuf"})
    if dt.kind not in allowed or len(kinds) != 1 or not kinds <= allowed[dt.kind]:
        raise _Refused(f"classes_ of kinds {sorted(kinds)} cannot be stored as {_short(dtype_str)}")
    if dt.kind == "U":
        longest = max(len(v) for v in values)
        if not longest <= dt.itemsize // 4 <= max(longest, _MAX_LABEL_WIDTH):
            raise _Refused(
                f"classes_dtype {dtype_str!r} does not fit labels of up to {longest} characters"
            )
    elif dt.kind != "O" and dt.itemsize > 8:
        raise _Refused(f"classes_dtype {dtype_str!r} is wider than 8 bytes")
    try:
        classes = np.array(values, dtype=dt)
    except (ValueError, TypeError, OverflowError) as exc:
        raise _Refused(f"classes_ do not fit {dtype_str!r}: {exc}") from None
    if classes.tolist() != values:
        raise _Refused(f"classes_ change when stored as {dtype_str!r}")
    if any(not a < b for a, b in itertools.pairwise(values)):
        raise _Refused(f"classes_ {_short(values)} are not sorted and unique")
    return classes


def _label_kind(value: Any) -> str:
    if isinstance(value, (str, bool)):
        return type(value).__name__
    return "number" if _is_finite(value) else "other"


def _json_type(value: Any) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean"}.get(
        type(value), "number" if _is_number(value) else "null"
    )


def _short(value: Any, limit: int = 80) -> str:
    """``repr(value)``, cut to ``limit`` characters: messages stay one readable line."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _estimator_class(kind: str) -> Any:
    """The class ``portable_mlp.estimator.<kind>`` for an allowed ``kind``, else ``None``.

    Imported on first use: the estimators build on this module, not the other way round.
    """
    if kind not in _ESTIMATORS:
        return None
    cls = getattr(_estimator_module(), kind, None)
    return cls if isinstance(cls, type) else None


def _estimator_module() -> Any:
    # Imported on first use: the estimators build on this module, not the other way round.
    return importlib.import_module(f"{__package__}.estimator")
