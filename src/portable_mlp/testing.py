"""Checking hand-written gradients, and the test matrix every backend is held to.

:func:`gradcheck` compares a model's backward with two-sided finite differences. Perturbed values
are built on the host and moved to the parameters' backend and device, so it works the same on
immutable arrays (JAX) as on mutable ones and never edits an array in place.

:func:`torch_reference` recomputes a model and loss with PyTorch autograd in float64 on the CPU,
from the very same parameter values, and :func:`parity` reports the relative error of every
gradient against it. These are test tools: they read values back to the host.

The test matrix: :func:`cases` lists every installed backend on its default device and, where it
has one, a non-default device (from the backend table), :data:`TOLERANCE` is the relative error
allowed per dtype (stated once, for the test suite and ``portable-mlp check``), and
:func:`assert_close` checks an array's namespace, dtype, device and shape before its values.
A test suite of one's own can use them as ``tests/conftest.py`` does::

    import pytest
    from portable_mlp.testing import cases

    CASES = cases()

    @pytest.fixture(params=CASES, ids=[c.label for c in CASES])
    def case(request):
        if request.param.skip:
            pytest.skip(request.param.skip)
        return request.param
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import numpy as np

from ._backend import (
    TABLE,
    Array,
    Placement,
    backend_name,
    backend_of,
    device,
    dtype_name,
    from_numpy,
    installed_backends,
    namespace,
    namespace_of,
    placement,
    to_float,
    to_numpy,
)
from .layers import Module
from .losses import Loss


class GradcheckError(AssertionError):
    """Hand-written gradients disagree with finite differences."""


@dataclass
class GradcheckResult:
    """Per array (``"input"`` and each parameter name): the max relative error found."""

    errors: dict[str, float] = field(default_factory=dict)
    tol: float = 0.0

    @property
    def max_error(self) -> float:
        return max(self.errors.values(), default=0.0)

    @property
    def passed(self) -> bool:
        return self.max_error <= self.tol

    def __str__(self) -> str:
        rows = ", ".join(f"{k}: {v:.2e}" for k, v in self.errors.items())
        return f"gradcheck {'passed' if self.passed else 'FAILED'} (tol {self.tol:.0e}): {rows}"


def relative_error(actual: np.ndarray, expected: np.ndarray) -> float:
    """``max|actual - expected| / max|expected|`` (the absolute error where ``expected`` is 0)."""
    actual, expected = np.asarray(actual, dtype=np.float64), np.asarray(expected, dtype=np.float64)
    if actual.shape != expected.shape:
        raise ValueError(f"shapes differ: {actual.shape} vs {expected.shape}")
    if actual.size == 0:
        return 0.0
    diff = float(np.max(np.abs(actual - expected)))
    scale = float(np.max(np.abs(expected)))
    return diff / scale if scale > 0 else diff


def gradcheck(
    model: Module,
    x: Array,
    y: Array | None = None,
    loss: Loss | None = None,
    *,
    eps: float = 1e-6,
    tol: float = 1e-6,
    input_grad: bool = True,
    seed: int = 0,
    raise_on_failure: bool = True,
) -> GradcheckResult:
    """Compare ``model``'s backward (and ``loss``'s) with central finite differences.

    The scalar checked is ``loss.forward(model.forward(x), y)``; without a loss it is
    ``sum(model.forward(x) * R)`` for a fixed random ``R``, so ``backward(R)`` is its gradient.
    Every parameter and (with ``input_grad``) the input are checked, element by element, with a
    step of ``eps * max(1, |value|)``. Needs float64: in float32 the differences are noise.
    """
    xp = namespace_of(x)
    if dtype_name(x.dtype) != "float64":
        raise TypeError(
            f"gradcheck needs float64 inputs (finite differences in {dtype_name(x.dtype)} are "
            "dominated by rounding); build the model with dtype='float64'"
        )
    if (y is None) != (loss is None):
        raise ValueError("gradcheck takes y and loss together, or neither")

    out = model.forward(x)
    if loss is None:
        R = from_numpy(
            np.random.default_rng(seed).normal(size=tuple(out.shape)),
            xp=xp,
            dtype=out.dtype,
            device=device(x),
        )

        def scalar(x_: Array) -> float:
            return to_float(xp.sum(model.forward(x_, cache=False) * R))

        dx = model.backward(R)
    else:

        def scalar(x_: Array) -> float:
            return to_float(loss.forward(model.forward(x_, cache=False), y))

        loss.forward(out, y)
        dx = model.backward(loss.backward())

    analytic = {name: to_numpy(g) for name, g in model.gradients().items()}
    params = model.parameters()
    result = GradcheckResult(tol=tol)
    for name, value in params.items():

        def with_value(v: np.ndarray, name: str = name, like: Array = value) -> float:
            model.set_parameters(
                {**params, name: from_numpy(v, xp=xp, dtype=like.dtype, device=device(like))}
            )
            return scalar(x)

        numeric = _central_differences(with_value, to_numpy(value), eps)
        model.set_parameters(params)
        result.errors[name] = relative_error(analytic[name], numeric)
    if input_grad:
        numeric = _central_differences(
            lambda v: scalar(from_numpy(v, xp=xp, dtype=x.dtype, device=device(x))),
            to_numpy(x),
            eps,
        )
        result.errors["input"] = relative_error(to_numpy(dx), numeric)
    if raise_on_failure and not result.passed:
        raise GradcheckError(f"{model!r}: {result}")
    return result


def _central_differences(
    f: Callable[[np.ndarray], float], value: np.ndarray, eps: float
) -> np.ndarray:
    grad = np.empty_like(value, dtype=np.float64)
    for idx in np.ndindex(value.shape):
        h = eps * max(1.0, abs(float(value[idx])))
        original = value[idx]
        value[idx] = original + h
        plus = f(value.copy())
        value[idx] = original - h
        minus = f(value.copy())
        value[idx] = original
        grad[idx] = (plus - minus) / (2 * h)
    return grad


# ---------------------------------------------------------------------------- PyTorch autograd
def reference_missing() -> str | None:
    """What to install for :func:`torch_reference`, or None when PyTorch is there."""
    try:
        import torch  # noqa: F401
    except ImportError:
        return "PyTorch as the reference: pip install torch"
    return None


def torch_reference(
    model: Module,
    x: Array,
    y: Array | None = None,
    loss: Loss | None = None,
    dy: Array | None = None,
) -> dict[str, np.ndarray]:
    """The loss (or output), every parameter gradient and the input gradient by torch autograd.

    Computed in float64 on the CPU from ``model``'s current parameters (whatever their backend
    and dtype), with torch's own functions for every activation and loss. Without ``loss``, the
    scalar is ``sum(model(x) * dy)``. Keys: ``"loss"`` (or ``"output"``), ``"input"`` and the
    keys of ``model.parameters()``.
    """
    import torch

    def t(a: Array, requires_grad: bool = False) -> Any:
        return torch.tensor(to_numpy(a), dtype=torch.float64, requires_grad=requires_grad)

    params = {k: t(v, True) for k, v in model.parameters().items()}
    x_t = t(x, True)
    out = _torch_forward(model, x_t, params, prefix="")
    value: Any
    if loss is None:
        if dy is None:
            raise ValueError("torch_reference needs dy (the upstream gradient) when loss is None")
        value = torch.sum(out * t(dy))
        key = "output"
    else:
        if y is None:
            raise ValueError("torch_reference needs y with loss")
        value = _torch_loss(loss, out, to_numpy(y))
        key = "loss"
    value.backward()
    result = {key: value.detach().numpy(), "input": x_t.grad.numpy()}
    result.update({k: p.grad.numpy() for k, p in params.items()})
    return result


def _torch_forward(module: Module, x: Any, params: dict[str, Any], prefix: str) -> Any:
    import torch
    import torch.nn.functional as tF

    from . import layers as L
    from . import models as M

    if isinstance(module, M.Sequential):
        for i, layer in enumerate(module.layers):
            x = _torch_forward(layer, x, params, f"{prefix}{i}.")
        return x
    if isinstance(module, L.Linear):
        W, b = params[prefix + "weight"], params.get(prefix + "bias")
        return tF.linear(x, W.T, b)  # torch keeps (p_out, p_in); ours is (p_in, p_out)
    simple: dict[type, Callable[[Any], Any]] = {
        L.ReLU: torch.relu,
        L.Sigmoid: torch.sigmoid,
        L.Tanh: torch.tanh,
        L.Identity: lambda v: v,
        L.GELU: lambda v: tF.gelu(v, approximate="tanh"),
    }
    if isinstance(module, L.LeakyReLU):
        return tF.leaky_relu(x, module.negative_slope)
    if type(module) in simple:
        return simple[type(module)](x)
    raise TypeError(f"no PyTorch reference for {module!r}")


def _torch_loss(loss: Loss, z: Any, y: np.ndarray) -> Any:
    import torch
    import torch.nn.functional as tF

    from . import losses as Ls

    if isinstance(loss, Ls.BCEWithLogitsLoss):
        return tF.binary_cross_entropy_with_logits(
            z, torch.tensor(y, dtype=torch.float64), reduction=loss.reduction
        )
    if isinstance(loss, Ls.CrossEntropyLoss):
        target = torch.tensor(y, dtype=torch.int64 if y.ndim == 1 else torch.float64)
        return tF.cross_entropy(z, target, reduction=loss.reduction)
    if isinstance(loss, Ls.MSELoss):
        return tF.mse_loss(z, torch.tensor(y, dtype=torch.float64), reduction=loss.reduction)
    raise TypeError(f"no PyTorch reference for {loss!r}")


def parity(
    model: Module,
    x: Array,
    y: Array | None = None,
    loss: Loss | None = None,
    dy: Array | None = None,
) -> dict[str, float]:
    """Relative error of ``model``'s (and ``loss``'s) value and gradients against torch autograd.

    Runs forward and backward once, then :func:`torch_reference` on the same values.
    Keys: ``"loss"``/``"output"``, ``"input"`` and each parameter name.
    """
    out = model.forward(x)
    if loss is None:
        if dy is None:
            raise ValueError("parity needs dy (the upstream gradient) when loss is None")
        value = namespace_of(out).sum(out * dy)
        dx = model.backward(dy)
        key = "output"
    else:
        value = loss.forward(out, y)
        dx = model.backward(loss.backward())
        key = "loss"
    ours = {key: to_numpy(value), "input": to_numpy(dx)}
    ours.update({k: to_numpy(g) for k, g in model.gradients().items()})
    ref = torch_reference(model, x, y, loss, dy)
    return {k: relative_error(ours[k], ref[k]) for k in ref}


# ---------------------------------------------------------------------------- one backend at once
def parity_report(
    backend: Any, device: Any = None, dtype: Any = "float64", *, seed: int = 0
) -> dict[str, float]:
    """The max relative error against torch autograd of every layer, loss and an MLP per
    activation, on one backend, device and dtype: ``{name: error}`` (what ``portable-mlp check``
    prints). Parameters and inputs are random, and kept off ReLU's kink."""
    from . import layers as L
    from . import losses as Ls
    from . import models as M

    where = placement(backend, device, dtype)
    kw: dict[str, Any] = {"placement": where}
    rng = np.random.default_rng(seed)

    def array(a: np.ndarray) -> Any:
        return where.asarray(a)

    x = array(away_from_zero(rng.normal(size=(7, 5))))
    results: dict[str, float] = {}
    modules: dict[str, Module] = {
        "Linear": L.Linear(5, 4, rng=rng, **kw),
        "Linear(bias=False)": L.Linear(5, 4, bias=False, rng=rng, **kw),
        "ReLU": L.ReLU(),
        "Sigmoid": L.Sigmoid(),
        "Tanh": L.Tanh(),
        "GELU": L.GELU(),
        "LeakyReLU": L.LeakyReLU(0.1),
        "Identity": L.Identity(),
    }
    for name, module in modules.items():
        if isinstance(module, L.Linear):
            module.set_parameters(
                {k: array(rng.normal(size=tuple(v.shape))) for k, v in module.parameters().items()}
            )
        out = module.forward(x, cache=False)
        dy = array(rng.normal(size=tuple(out.shape)))
        results[name] = max(parity(module, x, dy=dy).values())
    z = L.Identity()
    n, k = 7, 3
    logits = array(rng.normal(size=(n, k)) * 3)
    targets = {
        "BCEWithLogitsLoss": (Ls.BCEWithLogitsLoss, array(rng.uniform(size=(n, k)))),
        "CrossEntropyLoss": (
            Ls.CrossEntropyLoss,
            where.asarray(rng.integers(0, k, size=n)),
        ),
        "MSELoss": (Ls.MSELoss, array(rng.normal(size=(n, k)))),
    }
    for name, (cls, y) in targets.items():
        for reduction in ("mean", "sum"):
            results[f"{name}({reduction})"] = max(
                parity(z, logits, y, cls(reduction=reduction)).values()
            )
    labels = targets["CrossEntropyLoss"][1]
    for activation in L.ACTIVATIONS:
        mlp = M.MLP([5, 6, 4, k], activation, rng=rng, **kw)
        mlp.set_parameters(
            {kk: array(rng.normal(size=tuple(v.shape)) * 0.5) for kk, v in mlp.parameters().items()}
        )
        results[f"MLP({activation})"] = max(parity(mlp, x, labels, Ls.CrossEntropyLoss()).values())
    return results


# ---------------------------------------------------------------------------- the test matrix
#: Relative error allowed against a float64 reference, by the dtype of the computation: the one
#: tolerance of the test suite (layers, losses, models, optimizers) and ``portable-mlp check``.
TOLERANCE: dict[str, float] = {"float64": 1e-10, "float32": 1e-4}

#: The floating dtypes the test matrix covers.
DTYPES = ("float32", "float64")

#: The environment variable that limits a test run to some backends (comma-separated names).
BACKEND_VARIABLE = "PORTABLE_MLP_BACKEND"


def selected_backends(spec: str | None = None) -> list[str]:
    """The backends a test run covers: the comma-separated names in ``spec`` (by default the
    ``PORTABLE_MLP_BACKEND`` environment variable), or every installed backend when it is empty.

    A name that is unknown or not installed raises :class:`BackendError`: a backend asked for
    is never skipped silently.
    """
    if spec is None:
        spec = os.environ.get(BACKEND_VARIABLE, "")
    names = [n.strip() for n in spec.split(",") if n.strip()]
    if not names:
        return installed_backends()
    return [backend_of(namespace(name)).name for name in names]


@dataclass(frozen=True)
class Case:
    """One backend on one device of the test matrix: what a test needs to build arrays and
    models there, and to check that results stay there."""

    backend: str
    device: Any  # as users pass it to device= (None: the backend's default)
    label: str  # the test id
    skip: str | None = None  # why this case cannot run on this machine

    def placement(self, dtype: Any = None) -> Placement:
        """This backend and device with ``dtype`` (None: the backend's default there)."""
        return placement(self.backend, self.device, dtype)

    @property
    def xp(self) -> ModuleType:
        return namespace(self.backend)

    @property
    def resolved_device(self) -> Any:
        """The device object arrays here report."""
        return self.placement().device

    def array(self, host: Any, dtype: Any = None) -> Array:
        """Host data as an array here: floating data as ``dtype`` (which it needs), integer and
        boolean data (labels) as the backend's index dtype and bool."""
        a = np.asarray(host)
        if dtype is None:
            if a.dtype.kind not in "iub":
                raise ValueError(f"Case.array() needs dtype= for {a.dtype} data")
            return self.placement().asarray(a)
        where = self.placement(dtype)
        return where.asarray(a, dtype=where.dtype)

    def model_kwargs(self, dtype: Any) -> dict[str, Any]:
        """The ``backend=``, ``device=``, ``dtype=`` shorthands every constructor takes."""
        return {"backend": self.backend, "device": self.device, "dtype": dtype}


def cases(backends: Iterable[str] | None = None) -> list[Case]:
    """The test matrix's cases: each backend (default: every installed one) on each of its test
    devices, the default and, where the backend has one, a non-default device (so a result
    that lands on the default device is caught).

    A backend whose devices cannot be listed (CuPy without a CUDA driver) gives one case whose
    ``skip`` says why. Float64 on JAX needs ``TABLE[name].enable_float64()`` before arrays are
    made; ``tests/conftest.py`` does it for the backends it selects.
    """
    found: list[Case] = []
    for name in installed_backends() if backends is None else backends:
        entry = TABLE.get(name) or backend_of(namespace(name))  # a name or an alias
        try:
            devices = entry.test_devices()
        except Exception as exc:  # whatever a missing driver raises (CUDARuntimeError, ...)
            reason = f"{entry.name} is installed but cannot list its devices: {exc}"
            found.append(Case(entry.name, None, f"{entry.name}-default", reason))
            continue
        if not devices:
            reason = f"{entry.name} is installed but sees no device"
            found.append(Case(entry.name, None, f"{entry.name}-default", reason))
        found.extend(
            Case(entry.name, d, f"{entry.name}-{'default' if d is None else d}") for d in devices
        )
    return found


def assert_close(
    actual: Any,
    expected: Any,
    *,
    case: Case | None = None,
    placement: Placement | None = None,
    dtype: Any = None,
    tol: float | None = None,
    what: str = "",
) -> None:
    """Assert that ``actual`` is an array of the expected placement, close to ``expected``.

    The placement is ``case``'s with ``dtype``, or ``placement`` itself. Namespace, dtype,
    device and shape are checked before the values (array-api-extra's order), then the relative
    error (:func:`relative_error`) against ``expected`` (a host array or number computed
    independently, usually in float64) is held to ``tol``, by default :data:`TOLERANCE` of the
    dtype.
    """
    if case is not None and placement is None:
        if dtype is None:
            raise TypeError("assert_close(case=...) needs dtype=")
        where = case.placement(dtype)
    elif placement is not None and case is None:
        where = placement
        if dtype is not None and dtype_name(dtype) != where.dtype_name:
            raise TypeError(f"assert_close(): dtype={dtype!r} contradicts {where!r}")
    else:
        raise TypeError("assert_close() takes case= (with dtype=) or placement=, one of them")
    label = f"{what}: " if what else ""
    try:
        xp = namespace_of(actual)
    except TypeError:
        raise AssertionError(
            f"{label}expected a {where.name} array, got {type(actual).__name__}"
        ) from None
    assert xp is where.xp, f"{label}a {backend_name(xp)} array, expected {where.name}"
    got = dtype_name(actual.dtype)
    assert got == where.dtype_name, f"{label}dtype {got}, expected {where.dtype_name}"
    on = device(actual)
    assert on == where.device, f"{label}device {on}, expected {where.device}"
    expected = np.asarray(expected)
    shape = tuple(actual.shape)
    assert shape == expected.shape, f"{label}shape {shape}, expected {expected.shape}"
    err = relative_error(to_numpy(actual), expected)
    limit = TOLERANCE[where.dtype_name] if tol is None else tol
    assert err <= limit, f"{label}relative error {err:.3e} > {limit:.0e}"


def randomize(
    model: Module, case: Case, dtype: Any, seed: int = 1, *, biases_only: bool = False
) -> None:
    """Give every parameter (or only the biases, which start at zero) N(0, 1) values, drawn on
    the host from ``seed`` and moved to ``case``'s device in ``dtype``.

    N(0, 1) weights in a deep, wide stack make logits of thousands, and saturated losses then
    cancel to gradients that are zero up to rounding: use ``biases_only`` there.
    """
    rng = np.random.default_rng(seed)
    model.set_parameters(
        {
            k: case.array(rng.normal(size=tuple(v.shape)), dtype)
            if not biases_only or k.endswith("bias")
            else v
            for k, v in model.parameters().items()
        }
    )


def away_from_zero(a: Any, margin: float = 0.05) -> np.ndarray[Any, Any]:
    """Host values moved off the kink of ReLU-like functions (``|a| >= margin``), where finite
    differences and one-sided derivatives disagree."""
    host: np.ndarray[Any, Any] = np.asarray(a)
    moved: np.ndarray[Any, Any] = np.where(
        np.abs(host) < margin, np.sign(host + 1e-12) * margin, host
    )
    return moved


@contextmanager
def jax_compilations() -> Iterator[list[str]]:
    """The names of the programs JAX compiles inside the block (``"jit(f)"``), in order: a list
    that grows while the block runs (JAX's compile log, caught)."""
    import jax

    compiled: list[str] = []

    class Compiles(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.getMessage().startswith("Compiling "):
                compiled.append(record.getMessage().split(" ")[1])

    logger, handler = logging.getLogger("jax"), Compiles(level=logging.WARNING)
    logger.addHandler(handler)
    try:
        with jax.log_compiles(True):
            yield compiled
    finally:
        logger.removeHandler(handler)
