"""portable_mlp: a multilayer perceptron with hand-written backprop, written once against the
Python array API, that trains on NumPy, CuPy, PyTorch, JAX and array-api-strict arrays alike.

>>> import portable_mlp as pm
>>> model = pm.MLP([30, 16, 8, 1], activation="relu", rng=0, backend="numpy")
"""

from typing import Any

from . import (
    checkpoints,
    datasets,
    distributed,
    estimator,
    functional,
    init,
    losses,
    metrics,
    models,
    optim,
    training,
)
from ._backend import (
    BACKENDS,
    Array,
    BackendError,
    Placement,
    asarray,
    installed_backends,
    namespace,
    namespace_of,
    placement,
    to_numpy,
)
from .checkpoints import CheckpointError, load, save
from .compiled import compile_step
from .estimator import MLPClassifier, MLPRegressor
from .export import export_onnx
from .layers import GELU, Identity, LeakyReLU, Linear, Module, ReLU, Sigmoid, Tanh
from .losses import BCEWithLogitsLoss, CrossEntropyLoss, Loss, MSELoss
from .models import MLP, Sequential, from_config
from .optim import SGD, Adam, AdamW, CosineAnnealingLR, StepLR, clip_grad_norm
from .testing import GradcheckError, GradcheckResult, gradcheck
from .training import EarlyStopping, History, TrainingError, fit, train_step

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # scikit-learn's subclasses, made on first use (see portable_mlp.estimator)
    if name in ("ConvergenceWarning", "NotFittedError"):
        return getattr(estimator, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "BACKENDS",
    "GELU",
    "MLP",
    "SGD",
    "Adam",
    "AdamW",
    "Array",
    "BCEWithLogitsLoss",
    "BackendError",
    "CheckpointError",
    "ConvergenceWarning",
    "CosineAnnealingLR",
    "CrossEntropyLoss",
    "EarlyStopping",
    "GradcheckError",
    "GradcheckResult",
    "History",
    "Identity",
    "LeakyReLU",
    "Linear",
    "Loss",
    "MLPClassifier",
    "MLPRegressor",
    "MSELoss",
    "Module",
    "NotFittedError",
    "Placement",
    "ReLU",
    "Sequential",
    "Sigmoid",
    "StepLR",
    "Tanh",
    "TrainingError",
    "asarray",
    "checkpoints",
    "clip_grad_norm",
    "compile_step",
    "datasets",
    "distributed",
    "export_onnx",
    "fit",
    "from_config",
    "functional",
    "gradcheck",
    "init",
    "installed_backends",
    "load",
    "losses",
    "metrics",
    "models",
    "namespace",
    "namespace_of",
    "optim",
    "placement",
    "save",
    "to_numpy",
    "train_step",
    "training",
]
