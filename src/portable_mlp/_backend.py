"""Everything that knows which array library is in use.

The layers, losses and optimizers receive an array namespace ``xp`` and never import a backend.
This module is the one place that does: it turns a backend name into a namespace, resolves devices
and dtypes, moves host (NumPy) arrays onto a backend and back, and checks that arrays agree with
the parameters they meet. Each backend quirk handled here carries a comment saying why.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import array_api_compat
import numpy as np

#: Backend names accepted wherever a ``backend=`` argument is, in the order they are tried.
BACKENDS = ("numpy", "array_api_strict", "torch", "jax", "cupy")

_ALIASES = {"strict": "array_api_strict", "array-api-strict": "array_api_strict"}
_FLOATS = ("float32", "float64")

# array_namespace() costs 2-35 us; the namespace of an array depends only on its type.
_NAMESPACE_OF_TYPE: dict[type, ModuleType] = {}


class BackendError(ValueError):
    """A backend, device or dtype that cannot be used here (not installed, no GPU, ...)."""


# --------------------------------------------------------------------------------------------
# Namespaces
# --------------------------------------------------------------------------------------------
def namespace(backend: str | ModuleType) -> ModuleType:
    """The array API namespace for a backend name or module.

    ``"numpy"``, ``"torch"`` and ``"cupy"`` give array-api-compat's wrappers; ``"jax"`` gives
    ``jax.numpy`` and ``"array_api_strict"`` the strict reference, both used natively. A module
    (``numpy``, ``torch``, ``jax.numpy``, a compat wrapper, ...) is mapped the same way.
    """
    if isinstance(backend, ModuleType):
        return _namespace_of_module(backend)
    if not isinstance(backend, str):
        raise TypeError(f"backend must be a name or an array namespace, got {backend!r}")
    name = _ALIASES.get(backend, backend)
    if name not in BACKENDS:
        raise BackendError(
            f"unknown backend {backend!r}; expected one of {', '.join(BACKENDS)} "
            f"(installed: {', '.join(installed_backends()) or 'none'})"
        )
    module = {"jax": "jax.numpy"}.get(name, name)
    try:
        mod = importlib.import_module(module)
    except ImportError as exc:
        raise BackendError(
            f"backend {name!r} is not installed ({exc}); "
            f"installed: {', '.join(installed_backends()) or 'none'}"
        ) from exc
    return _namespace_of_module(mod)


def _namespace_of_module(mod: ModuleType) -> ModuleType:
    # Build a 0-d array with the module and ask array-api-compat, so numpy -> compat numpy,
    # jax.numpy -> jax.numpy, and so on, exactly as array_namespace() would for user arrays.
    if array_api_compat.is_array_api_strict_namespace(mod) or array_api_compat.is_jax_namespace(
        mod
    ):
        return mod
    for name, check in (
        ("numpy", array_api_compat.is_numpy_namespace),
        ("torch", array_api_compat.is_torch_namespace),
        ("cupy", array_api_compat.is_cupy_namespace),
    ):
        if check(mod):
            return importlib.import_module(f"array_api_compat.{name}")
    if hasattr(mod, "__array_namespace_info__"):
        return mod
    raise BackendError(f"{mod.__name__} is not an array namespace this library knows")


def namespace_of(*arrays: Any) -> ModuleType:
    """The namespace of ``arrays`` (they must agree), cached by array type."""
    found: ModuleType | None = None
    for x in arrays:
        xp = _NAMESPACE_OF_TYPE.get(type(x))
        if xp is None:
            try:
                xp = array_api_compat.array_namespace(x)
            except TypeError as exc:
                raise TypeError(f"expected an array, got {_type_name(x)}") from exc
            _NAMESPACE_OF_TYPE[type(x)] = xp
        if found is not None and xp is not found:
            raise TypeError(
                f"arrays come from different backends: {backend_name(found)} and "
                f"{backend_name(xp)}; move them to one backend first"
            )
        found = xp
    if found is None:
        raise TypeError("namespace_of() needs at least one array")
    return found


def backend_name(xp: ModuleType) -> str:
    """The short name of a namespace: ``"numpy"``, ``"torch"``, ``"jax"``, ..."""
    if array_api_compat.is_numpy_namespace(xp):
        return "numpy"
    if array_api_compat.is_torch_namespace(xp):
        return "torch"
    if array_api_compat.is_cupy_namespace(xp):
        return "cupy"
    if array_api_compat.is_jax_namespace(xp):
        return "jax"
    if array_api_compat.is_array_api_strict_namespace(xp):
        return "array_api_strict"
    return str(getattr(xp, "__name__", xp))


def installed_backends() -> list[str]:
    """Names of the backends that import here (not necessarily with a usable device)."""
    found = []
    for name in BACKENDS:
        try:
            importlib.import_module({"jax": "jax.numpy"}.get(name, name))
        except ImportError:
            continue
        found.append(name)
    return found


def is_mutable(xp: ModuleType) -> bool:
    """Whether arrays of ``xp`` can be updated in place (all but JAX's)."""
    return not array_api_compat.is_jax_namespace(xp)


# --------------------------------------------------------------------------------------------
# Devices
# --------------------------------------------------------------------------------------------
def device(x: Any) -> Any:
    """The device an array lives on."""
    getter = _DEVICE_OF_TYPE.get(type(x))
    if getter is None:
        getter = _DEVICE_OF_TYPE[type(x)] = _device_getter(x)
    return getter(x)


# array_api_compat.device() costs about 5 us a call (it tries each library in turn); the lookup
# depends only on the array type, and for NumPy and torch it is a constant or an attribute.
_DEVICE_OF_TYPE: dict[type, Callable[[Any], Any]] = {}


def _device_getter(x: Any) -> Callable[[Any], Any]:
    if type(x) is np.ndarray:
        return lambda _: "cpu"
    if array_api_compat.is_torch_array(x):
        return lambda a: a.device
    return array_api_compat.device


def resolve_device(xp: ModuleType, dev: Any = None) -> Any:
    """A device object of ``xp`` from a user's spelling (``None``, ``"cpu"``, ``"cuda:1"``, ...)."""
    name = backend_name(xp)
    if dev is None:
        dev = xp.__array_namespace_info__().default_device()
        # JAX reports None ("wherever JAX puts it"); the device of a fresh array is concrete.
        return device(xp.zeros(())) if dev is None else dev
    if name == "torch":
        import torch

        try:
            d = torch.device(dev)
        except (RuntimeError, TypeError) as exc:
            raise BackendError(f"not a torch device: {dev!r}") from exc
        if d.type == "cuda":
            if not torch.cuda.is_available():
                raise BackendError(f"device {dev!r} asked for, but torch sees no CUDA device")
            cuda_index = torch.cuda.current_device() if d.index is None else d.index
            if cuda_index >= torch.cuda.device_count():
                raise BackendError(
                    f"device {dev!r} asked for, but torch sees "
                    f"{torch.cuda.device_count()} CUDA device(s)"
                )
            d = torch.device("cuda", cuda_index)
        return d
    if name == "array_api_strict":
        import array_api_strict

        devices = xp.__array_namespace_info__().devices()
        if isinstance(dev, str):
            try:
                dev = array_api_strict.Device(dev)
            except ValueError:
                raise BackendError(
                    f"{dev!r} is not a {name} device; expected one of {list(devices)}"
                ) from None
        return _checked_member(dev, devices, name)
    if name == "jax":
        import jax

        if isinstance(dev, str):
            platform, _, index = dev.partition(":")
            platform = {"cuda": "gpu"}.get(platform, platform)
            try:
                devices = jax.devices(platform)
            except RuntimeError as exc:
                raise BackendError(f"JAX has no {platform!r} device for {dev!r}: {exc}") from exc
            i = int(index or 0)
            if i >= len(devices):
                raise BackendError(
                    f"JAX has {len(devices)} {platform} device(s), asked for {dev!r}"
                )
            return devices[i]
        return _checked_member(dev, jax.devices(), name)
    if name == "cupy":
        import cupy

        if isinstance(dev, str):
            platform, _, index = dev.partition(":")
            if platform not in ("cuda", "gpu"):
                raise BackendError(f"CuPy arrays live on CUDA devices, not {dev!r}")
            dev = int(index or 0)
        if isinstance(dev, int):
            count = cupy.cuda.runtime.getDeviceCount()
            if dev >= count:
                raise BackendError(f"CuPy sees {count} CUDA device(s), asked for {dev}")
            dev = cupy.cuda.Device(dev)
        return dev
    if name == "numpy":
        if dev != "cpu":
            raise BackendError(f"NumPy arrays live on the 'cpu' device, not {dev!r}")
        return dev
    return dev


def _checked_member(dev: Any, devices: Any, name: str) -> Any:
    if dev not in list(devices):
        raise BackendError(f"{dev!r} is not a {name} device; expected one of {list(devices)}")
    return dev


# --------------------------------------------------------------------------------------------
# Dtypes
# --------------------------------------------------------------------------------------------
def resolve_dtype(xp: ModuleType, dtype: Any = None, dev: Any = None) -> Any:
    """A real floating dtype of ``xp``: ``None`` is the backend's default on ``dev``.

    Refuses a dtype the device cannot hold, rather than letting the backend truncate it: JAX
    silently turns float64 into float32 unless ``jax_enable_x64`` is set.
    """
    info = xp.__array_namespace_info__()
    if dtype is None:
        return info.default_dtypes(device=dev)["real floating"]
    allowed = info.dtypes(device=dev, kind="real floating")
    if isinstance(dtype, str):
        if dtype not in _FLOATS:
            raise TypeError(f"dtype must be one of {', '.join(_FLOATS)}, got {dtype!r}")
        name = dtype
    else:
        matches = [n for n in _FLOATS if hasattr(xp, n) and dtype == getattr(xp, n)]
        if not matches:
            raise TypeError(
                f"dtype must be float32 or float64 of {backend_name(xp)}, got {dtype!r}"
            )
        name = matches[0]
    if name not in allowed:
        hint = (
            "; enable it with jax.config.update('jax_enable_x64', True) before making arrays"
            if backend_name(xp) == "jax"
            else ""
        )
        raise BackendError(
            f"{backend_name(xp)} on device {dev} does not support {name} "
            f"(it offers {', '.join(allowed)}){hint}"
        )
    return getattr(xp, name)


_KIND_CACHE: dict[tuple[ModuleType, Any, Any], bool] = {}


def isdtype(xp: ModuleType, dtype: Any, kind: str | tuple[str, ...]) -> bool:
    """``xp.isdtype``, remembered: NumPy's costs several microseconds per call."""
    key = (xp, dtype, kind)
    try:
        return _KIND_CACHE[key]
    except KeyError:
        result = _KIND_CACHE[key] = bool(xp.isdtype(dtype, kind))
        return result
    except TypeError:  # an unhashable dtype object
        return bool(xp.isdtype(dtype, kind))


def dtype_name(dtype: Any) -> str:
    """``"float32"`` for any backend's float32 dtype object, and so on."""
    try:
        return str(np.dtype(dtype).name)  # NumPy, CuPy and JAX dtypes are NumPy dtypes
    except TypeError:
        return str(dtype).rpartition(".")[2]  # "torch.float32", "array_api_strict.float32"


def numpy_dtype(dtype: Any) -> np.dtype[Any]:
    """The NumPy dtype with the same name as a backend dtype."""
    return np.dtype(dtype_name(dtype))


# --------------------------------------------------------------------------------------------
# Host <-> backend
# --------------------------------------------------------------------------------------------
def from_numpy(a: Any, *, xp: ModuleType, dtype: Any = None, device: Any = None) -> Any:
    """Copy a host array onto ``xp``'s ``device`` with ``dtype`` (cast on the host first)."""
    a = np.asarray(a)
    if dtype is not None:
        a = a.astype(numpy_dtype(dtype), copy=False)
    # copy=True: a parameter updated in place must never write into the caller's host array.
    return xp.asarray(a, dtype=dtype, device=device, copy=True)


def to_numpy(x: Any) -> np.ndarray[Any, Any]:
    """A host NumPy copy of any backend's array (a transfer from a GPU; reporting only)."""
    xp = namespace_of(x)
    name = backend_name(xp)
    if name == "numpy":
        return np.array(x, copy=True)
    if name == "torch":
        return np.array(x.detach().cpu().numpy(), copy=True)
    if name == "cupy":
        return np.asarray(x.get())
    if name == "array_api_strict":
        # Strict refuses __array__ off its CPU device; DLPack works from any of its devices.
        return np.array(np.from_dlpack(x), copy=True)
    return np.array(x, copy=True)


def asarray(data: Any, *, like: Any, dtype: Any = None) -> Any:
    """``data`` (host or any backend) as an array of ``like``'s backend and device.

    ``like`` is a model, layer or array. Floating data takes ``like``'s dtype unless ``dtype``
    says otherwise; integer and boolean data (labels) keep an integer or boolean dtype. An
    explicit, visible move: it is never done behind a user's back.
    """
    if hasattr(like, "xp") and hasattr(like, "device"):
        xp, dev, like_dtype = like.xp, like.device, like.dtype
    else:
        xp, dev, like_dtype = namespace_of(like), device(like), like.dtype
    try:
        host = to_numpy(data)
    except TypeError:
        host = np.asarray(data)
    if dtype is not None:
        dtype = resolve_dtype(xp, dtype, dev) if isinstance(dtype, str) else dtype
    elif host.dtype.kind == "f":
        dtype = like_dtype
    elif host.dtype.kind in "iu":
        dtype = xp.__array_namespace_info__().default_dtypes(device=dev)["integral"]
    elif host.dtype.kind == "b":
        dtype = xp.bool
    else:
        raise TypeError(f"asarray() expected numeric data, got dtype {host.dtype}")
    return from_numpy(host, xp=xp, dtype=dtype, device=dev)


def floating_point_errors_checked_by_caller(
    xp: ModuleType,
) -> contextlib.AbstractContextManager[Any]:
    """Silence NumPy's overflow/invalid warnings where the caller checks finiteness itself.

    NumPy (and array-api-strict, built on it) warn on every overflow of a diverging run; the
    trainer detects non-finite losses and raises one clear error instead.
    """
    if backend_name(xp) in ("numpy", "array_api_strict"):
        return np.errstate(over="ignore", invalid="ignore", divide="ignore", under="ignore")
    return contextlib.nullcontext()


def host_rng(seed: int | np.random.Generator | None) -> np.random.Generator:
    """The host random generator for shuffling and splitting (``None``: fresh entropy)."""
    return np.random.default_rng(seed)


def to_float(x: Any) -> float:
    """A 0-d array's value as a Python float: a device sync, for reporting only."""
    return float(to_numpy(x))


# --------------------------------------------------------------------------------------------
# Checks
# --------------------------------------------------------------------------------------------
def check_array(x: Any, *, xp: ModuleType, dtype: Any, dev: Any, who: str, what: str = "x") -> None:
    """Refuse ``x`` unless it has ``xp``'s type, ``dtype`` and ``dev``: never cast or move it."""
    try:
        x_xp = namespace_of(x)
    except TypeError:
        raise TypeError(
            f"{who} expected {what} as a {backend_name(xp)} array, got {_type_name(x)}"
        ) from None
    if x_xp is not xp:
        raise TypeError(
            f"{who} expected {what} as a {backend_name(xp)} array (like its parameters), got a "
            f"{backend_name(x_xp)} array; move it with portable_mlp.asarray(x, like=model)"
        )
    if x.dtype != dtype:
        raise TypeError(
            f"{who} expected {what} with dtype {dtype_name(dtype)}, got {dtype_name(x.dtype)}; "
            f"cast it explicitly (xp.astype) or build the model with dtype={dtype_name(x.dtype)!r}"
        )
    x_dev = device(x)
    if x_dev != dev:
        raise ValueError(
            f"{who} expected {what} on device {dev}, got an array on device {x_dev}; "
            "arrays are never moved implicitly"
        )


def _type_name(x: Any) -> str:
    t = type(x)
    return f"{t.__module__}.{t.__qualname__}"


# --------------------------------------------------------------------------------------------
# Fast paths: backend-specific kernels measured to matter, each tested against the portable form
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Kernels:
    """Backend kernels that replace a portable expression where that was measured to matter.

    ``None`` means: use the portable form. Each kernel is tested against the portable form.
    """

    linear: Callable[[Any, Any, Any], Any] | None = None  # (b, x, W) -> x W + b
    relu: Callable[[Any], Any] | None = None  # x -> max(x, 0)
    relu_backward: Callable[[Any, Any], Any] | None = None  # (dy, y) -> dy where y > 0, else 0
    add_scaled_: Callable[[list[Any], list[Any], float], None] | None = None  # p += a g, in place


_KERNELS: dict[ModuleType, Kernels] = {}


def kernels(xp: ModuleType) -> Kernels:
    """The fast paths of ``xp`` (cached); most backends have none."""
    found = _KERNELS.get(xp)
    if found is None:
        found = _KERNELS[xp] = _torch_kernels() if backend_name(xp) == "torch" else Kernels()
    return found


def _torch_kernels() -> Kernels:
    import torch

    def relu_backward(dy: Any, y: Any) -> Any:
        return torch.ops.aten.threshold_backward(dy, y, 0)

    def add_scaled_(params: list[Any], grads: list[Any], alpha: float) -> None:
        torch._foreach_add_(params, grads, alpha=alpha)

    # Measured on torch 2.13 (CPU): every compat-wrapped call costs several microseconds of type
    # promotion and scalar wrapping, which dominates small steps. addmm does x W + b in one
    # kernel with no temporary; relu and threshold_backward (autograd's own ReLU gradient) are
    # one kernel each where the portable forms take two to four; one _foreach_add_ updates all
    # parameters where a loop takes two calls per parameter.
    return Kernels(
        linear=torch.addmm, relu=torch.relu, relu_backward=relu_backward, add_scaled_=add_scaled_
    )
