"""ONNX export: a model's own forward pass, run on ndonnx arrays, is its ONNX graph.

ndonnx implements the array API with arrays that record ONNX operations instead of computing
values. The layers here are written against the array API, so a model rebuilt on an ndonnx
placement and run on a placeholder input of shape ``(batch, p)`` builds its graph: no converter
and no second copy of any layer's math. The weights become initialisers in the model's dtype and
the batch dimension stays symbolic, so one file serves every batch size.

For an estimator the graph goes on to where ``predict``/``predict_proba`` end, and starts, where
the checkpoint stores one, with the standardiser of the command line, so the file predicts from
raw features.
"""

from __future__ import annotations

import importlib
import json
import os
from collections.abc import Mapping
from types import ModuleType
from typing import Any

import numpy as np

from . import _io, checkpoints, datasets
from . import functional as F
from ._backend import Array, Placement, placement
from .layers import Module
from .models import from_config

__all__ = ["INSTALL", "export_onnx"]

#: What to run where the optional dependencies of the export are missing.
INSTALL = "pip install 'portable-mlp[onnx]'"

# Output names, as skl2onnx names a classifier's; one input, "X" for estimators ("x" for a model).
LABEL, PROBABILITIES, PREDICTION, LOGITS = "label", "probabilities", "prediction", "y"


def export_onnx(
    source: Any,
    path: str | os.PathLike[str],
    *,
    batch: str | int = "N",
    opset: int | None = None,
    standardizer: datasets.Standardizer | None = None,
) -> Any:
    """Write ``source`` to ``path`` as an ONNX model; returns the ``onnx.ModelProto``.

    ``source``: a model (a :class:`Module` with Linear layers; one input ``"x"``, one output
    ``"y"``: the forward pass), a fitted :class:`~portable_mlp.MLPClassifier` (input ``"X"``,
    outputs ``"label"``, the predicted classes' values, and ``"probabilities"``) or
    :class:`~portable_mlp.MLPRegressor` (input ``"X"``, output ``"prediction"``), or the path of
    a checkpoint holding one of them. A checkpoint's stored standardiser (``portable-mlp train
    --save`` keeps one) becomes the first step of the graph; ``standardizer=`` adds one to an
    object. Standardisation runs in float64 and its result is cast to the model's dtype, as
    ``Standardizer.transform`` followed by ``predict`` does.

    The input takes the model's dtype; the weights are stored in it. ``batch``: the name of the
    symbolic batch dimension (or a fixed size). ``opset``: convert to this ONNX opset (default:
    the one ndonnx builds with). Needs ndonnx and onnx (:data:`INSTALL`); without them raises
    ImportError saying so.
    """
    ndx, onnx = _require()
    if not (isinstance(batch, str) and batch.isidentifier()) and not (
        isinstance(batch, int) and not isinstance(batch, bool) and batch >= 1
    ):
        raise ValueError(f"batch must be a dimension name or a positive int, got {batch!r}")
    obj, meta = _open(source)
    if standardizer is not None:
        if "standardizer" in meta:
            raise ValueError(
                f"{source} stores a standardizer already; pass standardizer= only for objects"
            )
        meta["standardizer"] = standardizer.to_dict()
    model, home, kind = _model_of(obj)
    graph_model = _on_ndonnx(model, home, ndx)
    where = graph_model.placement
    p = graph_model.n_features_in
    x = X = ndx.argument(shape=(batch, p), dtype=where.dtype)
    if "standardizer" in meta:
        x = _standardize(X, datasets.Standardizer.from_dict(meta["standardizer"]), where.dtype, ndx)
    z = graph_model.forward(x, cache=False)  # (n, p_out): the model's own forward pass
    if kind == "model":
        inputs, outputs = {"x": X}, {LOGITS: z}
    elif kind == "MLPClassifier":
        inputs, outputs = {"X": X}, _classifier_head(obj, z, ndx)
    else:
        inputs, outputs = {"X": X}, {PREDICTION: _regressor_head(obj, z)}
    proto = ndx.build(inputs, outputs)
    _constants_to_initializers(proto, onnx)
    _name_batch_dims(proto, batch)
    _describe(proto, kind, model, home, obj, meta, onnx)
    if opset is None:
        onnx.checker.check_model(proto, full_check=True)
    else:
        proto = _convert(proto, opset, onnx)
    _io.write_atomic(os.fspath(path), proto.SerializeToString())
    return proto


def _require() -> tuple[ModuleType, ModuleType]:
    """ndonnx and onnx, or an ImportError saying what to install."""
    found = []
    for name in ("ndonnx", "onnx"):
        try:
            found.append(importlib.import_module(name))
        except ImportError as exc:
            raise ImportError(
                f"ONNX export needs ndonnx, onnx and onnxruntime ({name} is missing: {exc}); "
                f"{INSTALL}"
            ) from exc
    return found[0], found[1]


def _open(source: Any) -> tuple[Any, dict[str, Any]]:
    """The object to export and the checkpoint's user metadata (``{}`` for an object)."""
    if isinstance(source, (str, os.PathLike)):
        return checkpoints.load(source), checkpoints.read_metadata(source)
    return source, {}


def _model_of(obj: Any) -> tuple[Module, Placement, str]:
    """The network of a model or fitted estimator, its placement, and ``"model"`` or the
    estimator's class."""
    from .estimator import MLPClassifier, MLPRegressor

    if isinstance(obj, (MLPClassifier, MLPRegressor)):
        obj._check_fitted()  # NotFittedError
        kind = "MLPClassifier" if isinstance(obj, MLPClassifier) else "MLPRegressor"
        return obj.model_, obj.model_.placement, kind
    if isinstance(obj, Module):
        home = getattr(obj, "placement", None)  # its Linear layers'
        if home is None:
            raise ValueError(f"export_onnx() got {obj!r}, which has no Linear layer to export")
        return obj, home, "model"
    raise TypeError(
        "export_onnx() takes a portable_mlp model, a fitted MLPClassifier or MLPRegressor, or "
        f"a checkpoint path; got {type(obj).__module__}.{type(obj).__qualname__}"
    )


def _on_ndonnx(model: Module, home: Placement, ndx: ModuleType) -> Any:
    """``model`` rebuilt on an ndonnx placement of its dtype, its weights as constants."""
    where = placement(ndx, dtype=home.dtype_name)
    graph_model = from_config(model.config(), placement=where)
    graph_model.set_parameters(
        {key: where.asarray(home.to_host(value)) for key, value in model.parameters().items()}
    )
    return graph_model


def _standardize(X: Array, scaler: datasets.Standardizer, dtype: Any, ndx: ModuleType) -> Array:
    """``Standardizer.transform`` in the graph: in float64, then cast to the model's dtype."""
    mean, scale = ndx.asarray(scaler.mean_), ndx.asarray(scaler.scale_)
    if X.shape[1] != mean.shape[0]:
        raise ValueError(
            f"the standardizer was fitted on {mean.shape[0]} columns, "
            f"the model takes {X.shape[1]} features"
        )
    return ndx.astype((ndx.astype(X, ndx.float64) - mean) / scale, dtype)


def _classifier_head(est: Any, z: Array, ndx: ModuleType) -> dict[str, Array]:
    """``predict``'s labels and ``predict_proba``'s probabilities from the logits z: (n, k)."""
    if est.n_outputs_ == 1:  # one logit: BCE's sigmoid, P(classes_[1])
        p = F.sigmoid(z, xp=ndx)
        proba = ndx.concat([1.0 - p, p], axis=1)  # (n, 2)
        index = ndx.astype(z[:, 0] > 0, ndx.int64)
    else:  # k logits: cross-entropy's softmax, as ONNX's own Softmax node
        # F.softmax's xp.max carries ndonnx's guard for empty arrays (Size -> If nodes that read
        # the batch at run time); ONNX's Softmax is the same max-shifted formula in one node.
        op: Any = importlib.import_module("spox.opset.ai.onnx.v21")
        proba = ndx.asarray(op.softmax(z.unwrap_spox(), axis=-1))  # (n, k)
        index = ndx.argmax(z, axis=1)
    return {LABEL: ndx.take(_classes(est.classes_, ndx), index), PROBABILITIES: proba}


def _classes(classes: np.ndarray[Any, Any], ndx: ModuleType) -> Array:
    """The class values as an ndonnx constant: numbers and booleans as they are, text as str."""
    if classes.dtype.kind == "O" and all(isinstance(c, str) for c in classes):
        classes = classes.astype(str)
    if classes.dtype.kind not in "biufU":
        raise TypeError(
            f"ONNX outputs hold numbers, booleans or text; these classes are {classes.dtype} "
            f"({classes.tolist()[:5]}): fit with int or str labels to export the classifier"
        )
    return ndx.asarray(classes)


def _regressor_head(est: Any, z: Array) -> Array:
    """``predict``'s values: (n,) where ``predict`` gives 1-D results, else (n, n_outputs)."""
    probe = est.predict(np.zeros((1, est.n_features_in_)))  # the shape predict gives, publicly
    return z[:, 0] if np.ndim(probe) == 1 else z


def _constants_to_initializers(proto: Any, onnx: ModuleType) -> None:
    """Move the graph's top-level Constant tensors (the weights) into initialisers."""
    graph = proto.graph
    kept = []
    for node in graph.node:
        values = [a for a in node.attribute if a.name == "value"]
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx") and values:
            tensor = onnx.helper.get_attribute_value(values[0])
            tensor.name = node.output[0]
            graph.initializer.append(tensor)
        else:
            kept.append(node)
    del graph.node[:]
    graph.node.extend(kept)


def _name_batch_dims(proto: Any, batch: str | int) -> None:
    """Give the outputs' unnamed first dimension the input's batch name (rows in, rows out)."""
    for output in proto.graph.output:
        dims = output.type.tensor_type.shape.dim
        if dims and not dims[0].HasField("dim_value") and not dims[0].dim_param:
            if isinstance(batch, str):
                dims[0].dim_param = batch
            else:
                dims[0].dim_value = batch


def _describe(
    proto: Any,
    kind: str,
    model: Module,
    home: Placement,
    obj: Any,
    meta: Mapping[str, Any],
    onnx: ModuleType,
) -> None:
    """Who made the file, and what a deployer needs besides the graph: the classes' order (the
    columns of the probabilities) and the raw features' names."""
    from . import __version__

    proto.producer_name, proto.producer_version = "portable_mlp", __version__
    scaled = ", standardizing raw features first" if "standardizer" in meta else ""
    proto.doc_string = f"portable_mlp {kind}: {model!r}{scaled}"
    props: dict[str, str] = {
        "portable_mlp.kind": kind,
        "portable_mlp.dtype": home.dtype_name,
        "portable_mlp.config": json.dumps(model.config()),
    }
    if kind == "MLPClassifier":
        props["portable_mlp.classes"] = json.dumps(obj.classes_.tolist())
    if "feature_names" in meta:
        props["portable_mlp.feature_names"] = json.dumps(meta["feature_names"])
    onnx.helper.set_model_props(proto, {**{p.key: p.value for p in proto.metadata_props}, **props})


def _convert(proto: Any, opset: int, onnx: ModuleType) -> Any:
    """``proto`` converted to ONNX opset ``opset`` and checked; a ValueError where it cannot be."""
    if isinstance(opset, bool) or not isinstance(opset, int):
        raise TypeError(f"opset must be an int, got {opset!r}")
    built = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    try:
        converted = onnx.version_converter.convert_version(proto, opset)
        onnx.checker.check_model(converted, full_check=True)
    # The converter fails with C++ assertions (RuntimeError) and can write a model the checker
    # refuses (ValidationError): older opsets lack some operators' attributes and dtypes.
    except Exception as exc:
        message = " ".join(str(exc).split())
        raise ValueError(
            f"cannot convert the graph from ONNX opset {built} to {opset}: {message}"
        ) from exc
    return converted
