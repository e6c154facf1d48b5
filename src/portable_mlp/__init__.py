"""portable_mlp: a multilayer perceptron with hand-written backprop, written once against the
Python array API, that trains on NumPy, CuPy, PyTorch, JAX and array-api-strict arrays alike.

>>> import portable_mlp as pm
>>> model = pm.MLP([30, 16, 8, 1], activation="relu", rng=0, backend="numpy")
"""

from . import functional, init, losses
from ._backend import (
    BACKENDS,
    BackendError,
    asarray,
    installed_backends,
    namespace,
    namespace_of,
    to_numpy,
)
from .layers import (
    GELU,
    MLP,
    Identity,
    LeakyReLU,
    Linear,
    Module,
    ReLU,
    Sequential,
    Sigmoid,
    Tanh,
    from_config,
)
from .losses import BCEWithLogitsLoss, CrossEntropyLoss, Loss, MSELoss
from .testing import GradcheckError, GradcheckResult, gradcheck

__version__ = "0.1.0"

__all__ = [
    "BACKENDS",
    "GELU",
    "MLP",
    "BCEWithLogitsLoss",
    "BackendError",
    "CrossEntropyLoss",
    "GradcheckError",
    "GradcheckResult",
    "Identity",
    "LeakyReLU",
    "Linear",
    "Loss",
    "MSELoss",
    "Module",
    "ReLU",
    "Sequential",
    "Sigmoid",
    "Tanh",
    "asarray",
    "from_config",
    "functional",
    "gradcheck",
    "init",
    "installed_backends",
    "losses",
    "namespace",
    "namespace_of",
    "to_numpy",
]
