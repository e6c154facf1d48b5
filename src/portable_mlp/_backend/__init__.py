"""Everything that knows which array library is in use.

The layers, losses and optimizers receive an array namespace ``xp`` (or a :class:`Placement`,
which carries it) and never import a backend. This module is the one place that does. It holds

- :data:`TABLE`, one :class:`Backend` per array library with every fact the rest of the code,
  the command line, the tests and the benchmarks ask about it: how to import it, its devices and
  their human names, how to copy to the host, how to wait for it, how to enable float64, whether
  its arrays can be updated in place, and its :class:`Kernels`;
- :class:`Placement`, the (backend, device, dtype) triple every array of a model shares, made
  once by :func:`placement` and handed to every layer, model, optimizer and estimator;
- the helpers that turn user spellings into namespaces, devices and dtypes, move host arrays onto
  a placement and back, and refuse arrays that do not belong (each error names both sides).

Each backend quirk handled here carries a comment saying why.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from types import ModuleType
from typing import TYPE_CHECKING, Any

import array_api_compat
import numpy as np

if TYPE_CHECKING:
    from ..compiled import StepPlan

#: Any backend's array. One alias for the whole package: the array API has no common base class.
Array = Any

#: Backend names accepted wherever a ``backend=`` argument is, in the order they are tried.
BACKENDS = ("numpy", "array_api_strict", "torch", "jax", "cupy")

_ALIASES = {"strict": "array_api_strict", "array-api-strict": "array_api_strict"}
_FLOATS = ("float32", "float64")


class BackendError(ValueError):
    """A backend, device or dtype that cannot be used here (not installed, no GPU, ...)."""


# --------------------------------------------------------------------------------------------
# Kernels: the operations a backend may do faster than the portable form
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Kernels:
    """The few operations where a backend's own kernel was measured to beat the portable form.

    Every field is always set: :func:`portable_kernels` fills them with the portable forms, and a
    backend replaces the ones it does faster, so a caller never branches. Each replacement is
    tested against the portable form (tests/test_kernels.py).
    """

    linear: Callable[[Array, Array, Array | None], Array]  # (x, W, b) -> x W + b
    # (dy, x, W, bias, input_grad) -> (dx, dW, db): functional.linear_backward's contract
    linear_backward: Callable[
        [Array, Array, Array, bool, bool], tuple[Array | None, Array, Array | None]
    ]
    relu: Callable[[Array], Array]  # x -> max(x, 0)
    relu_backward: Callable[[Array, Array], Array]  # (dy, y) -> dy where y > 0, else 0
    # (params, grads, a) -> [p + a g]: in place (the same arrays back) where arrays are mutable
    add_scaled: Callable[[list[Array], list[Array], float], list[Array]]
    sum: Callable[[Array, int | None], Array]  # (x, axis) -> xp.sum(x, axis=axis)
    # (z, y, e, reduction) -> BCE of logits z against y, e = exp(-|z|): functional.bce_with_logits
    bce_with_logits: Callable[[Array, Array, Array, str], Array]
    # (z, y, e, reduction) -> its dL/dz: functional.bce_with_logits_backward
    bce_with_logits_backward: Callable[[Array, Array, Array, str], Array]


def portable_kernels(xp: ModuleType, *, mutable: bool) -> Kernels:
    """The portable forms of every kernel, for ``xp``."""
    from .. import functional as F  # functional imports this module; it is complete by now

    def add_scaled(params: list[Array], grads: list[Array], a: float) -> list[Array]:
        if not mutable:
            return [p + a * g for p, g in zip(params, grads, strict=True)]
        for p, g in zip(params, grads, strict=True):
            p += a * g
        return params

    def bce_with_logits(z: Array, y: Array, e: Array, reduction: Any) -> Array:
        return F.bce_with_logits(z, y, reduction=reduction, xp=xp, e=e)

    def bce_with_logits_backward(z: Array, y: Array, e: Array, reduction: Any) -> Array:
        return F.bce_with_logits_backward(z, y, reduction=reduction, xp=xp, e=e)

    return Kernels(
        linear=lambda x, W, b: F.linear(x, W, b, xp=xp),
        linear_backward=lambda dy, x, W, bias, input_grad: F.linear_backward(
            dy, x, W, bias=bias, input_grad=input_grad, xp=xp
        ),
        relu=lambda x: F.relu(x, xp=xp),
        relu_backward=lambda dy, y: F.relu_backward(dy, y, xp=xp),
        add_scaled=add_scaled,
        sum=lambda x, axis: xp.sum(x, axis=axis),
        bce_with_logits=bce_with_logits,
        bce_with_logits_backward=bce_with_logits_backward,
    )


# --------------------------------------------------------------------------------------------
# The backend table
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Backend:
    """The facts about one array library; :data:`TABLE` holds one per supported backend.

    Subclasses override what differs; the defaults are those of a CPU-only, mutable,
    array-API-native library.
    """

    name: str
    module: str  # imported for the namespace ("jax.numpy")
    package: str  # whose __version__ is reported ("jax")
    install: str  # what `pip install` takes
    mutable: bool = True  # arrays can be updated in place (optimizers then update in place)
    is_host: bool = False  # arrays are host NumPy arrays (results go back as they came)

    # ---- namespaces
    def namespace(self) -> ModuleType:
        """The array API namespace (array-api-compat's wrapper where the library needs one)."""
        try:
            mod = importlib.import_module(self.module)
        except ImportError as exc:
            raise BackendError(
                f"backend {self.name!r} is not installed ({exc}); pip install {self.install} "
                f"(installed: {', '.join(installed_backends()) or 'none'})"
            ) from exc
        return self.namespace_of_module(mod)

    def namespace_of_module(self, mod: ModuleType) -> ModuleType:
        return mod

    def installed(self) -> bool:
        try:
            importlib.import_module(self.module)
        except ImportError:
            return False
        return True

    def version(self) -> str:
        mod = importlib.import_module(self.package)
        return str(getattr(mod, "__version__", "-"))

    # ---- devices
    def devices(self) -> list[Any]:
        """User spellings of the devices present here, the default first (may raise for a
        library whose driver is missing)."""
        return [None]

    def test_devices(self) -> list[Any]:
        """The devices the test matrix covers: the default and, where the library has one, a
        non-default device (so a result that lands on the default is caught)."""
        return self.devices()

    def describe(self, device: Any) -> str:
        """A person's name for a device: ``"cuda:0 (NVIDIA H200)"``, ``"cpu"``."""
        return "default" if device is None else str(device)

    def resolve_device(self, xp: ModuleType, spec: Any) -> Any:
        """The device object for a user's spelling (``None``: the default)."""
        if spec is None:
            return xp.__array_namespace_info__().default_device()
        return _checked_member(spec, xp.__array_namespace_info__().devices(), self.name)

    def device_spec(self, device: Any) -> Any:
        """A plain spelling of ``device`` that :meth:`resolve_device` turns back into it
        (for pickling and configs): a str or int."""
        return str(device)

    # ---- dtypes
    def enable_float64(self) -> None:
        """Make float64 usable, where the library needs to be told (before arrays are made)."""

    def float64_hint(self) -> str:
        return ""

    # ---- compiled programs
    def keep_compiled(self, directory: str) -> None:
        """Keep the programs the backend compiles in ``directory`` across runs (called before
        the first compilation); a backend that compiles nothing keeps nothing."""

    # ---- making arrays without computing (for a compiling backend: without compiling)
    def zeros(self, xp: ModuleType, shape: tuple[int, ...], dtype: Any, device: Any) -> Array:
        return xp.zeros(shape, dtype=dtype, device=device)

    def copy(self, xp: ModuleType, x: Array) -> Array:
        """A copy of ``x`` where it is, which nothing done to ``x`` (donation included) changes."""
        return xp.asarray(x, copy=True)

    def output_of(self, f: Callable[[Array], Array], x: Array) -> Any:
        """``f`` of the first row of ``x``, or (a compiling backend) something with the shape
        and dtype it would have: what a check of ``f``'s outputs needs."""
        return f(x[:1, ...])

    # ---- moving and waiting
    def from_host(self, a: np.ndarray[Any, Any], xp: ModuleType, dtype: Any, device: Any) -> Array:
        """A copy of the host array ``a`` (already cast to ``dtype``, one of ``xp``'s dtypes)
        on ``device``."""
        # copy=True: a parameter updated in place must never write into the caller's array.
        return xp.asarray(a, dtype=dtype, device=device, copy=True)

    def to_host(self, x: Array) -> np.ndarray[Any, Any]:
        """A host NumPy copy (a transfer from an accelerator)."""
        return np.array(x, copy=True)

    def sync(self, x: Array | None, device: Any) -> None:
        """Wait until the work that produces ``x`` (or all work on ``device``) is done."""

    # ---- kernels
    def kernels(self, xp: ModuleType) -> Kernels:
        return portable_kernels(xp, mutable=self.mutable)

    def floating_point_errors_quiet(self) -> contextlib.AbstractContextManager[Any]:
        """Silence the library's own floating-point warnings, where it has any."""
        return contextlib.nullcontext()

    # ---- data parallelism within one process (a device mesh); multi-process is _collectives
    def shard_batch(self, x: Array, device: Any) -> Array:
        """``x`` split over ``device``'s devices along its first (batch) axis; unchanged where
        ``device`` is one device."""
        return x

    def underflow_ok(self) -> contextlib.AbstractContextManager[Any]:
        """A block where an underflow to a subnormal or zero is the right answer, not an error
        (the stable sigmoid, BCE and softmax forms), whatever the library's error state."""
        return contextlib.nullcontext()

    # ---- the captured step (compiled.py)
    def capture_step(self, plan: StepPlan) -> Callable[[Array, Array], Array]:
        """``step(x, y) -> loss`` for :func:`portable_mlp.compile_step`: by default the eager
        step with its calls looked up once (no compiler, no graph)."""
        return plan.eager()

    def capture_function(self, fn: Callable[..., Any]) -> Callable[..., Any] | None:
        """``fn``, a pure function of arrays (a model's prediction, the unpacking of packed
        gradients), compiled where that pays (JAX: one call instead of an operation at a time,
        each compiled per new shape); by default None: the caller runs ``fn`` eagerly."""
        return None

    def capture_epoch(self, epoch: Callable[..., Any], device: Any) -> Callable[..., Any] | None:
        """A whole epoch of the captured step as one compiled call, for ``fit`` on ``device``:
        ``epoch(scan, params, state, lr, steps, ..., settings=...)`` is a pure function that
        steps with the ``scan`` given (``scan(f, carry, xs) -> (carry, ys)``); parameters and
        state may be donated; ``settings`` is hashable and keys the compilation (a changed one
        compiles anew). By default None: ``fit`` calls the step once per batch."""
        return None


def _checked_member(dev: Any, devices: Any, name: str) -> Any:
    if dev not in list(devices):
        raise BackendError(f"{dev!r} is not a {name} device; expected one of {list(devices)}")
    return dev


# Above this many elements NumPy's and torch's where on a random sign pattern are slower than
# the portable arithmetic selection (they branch per element); below, the calls saved count more.
_WHERE_MAX = 8192


@dataclass(frozen=True)
class _NumPy(Backend):
    is_host: bool = True

    def namespace_of_module(self, mod: ModuleType) -> ModuleType:
        # NumPy's own namespace is not quite the standard (NumPy 1.26 is not at all).
        return importlib.import_module("array_api_compat.numpy")

    def devices(self) -> list[Any]:
        return [None]

    def describe(self, device: Any) -> str:
        return "cpu"

    def resolve_device(self, xp: ModuleType, spec: Any) -> Any:
        if spec is None or spec == "cpu":
            return "cpu"
        raise BackendError(f"NumPy arrays live on the 'cpu' device, not {spec!r}")

    def floating_point_errors_quiet(self) -> contextlib.AbstractContextManager[Any]:
        # NumPy warns on every overflow of a diverging run; the trainer detects non-finite values
        # itself and raises one clear error instead.
        return np.errstate(over="ignore", invalid="ignore", divide="ignore", under="ignore")

    def kernels(self, xp: ModuleType) -> Kernels:
        portable = portable_kernels(xp, mutable=self.mutable)

        def relu_backward(dy: Array, y: Array) -> Array:
            return dy * (y > 0)  # dy * 1 or dy * 0, as the portable form; NumPy multiplies bools

        def bce_with_logits_backward(z: Array, y: Array, e: Array, reduction: str) -> Array:
            if z.size <= _WHERE_MAX:
                try:
                    tail = e / (1.0 + e)
                    # bit for bit the portable form's arithmetic selection, in fewer calls
                    dz = np.where(z >= 0, (1.0 - y) - tail, tail - y)
                    return dz * (1.0 / z.size) if reduction == "mean" else dz
                except FloatingPointError:
                    pass  # an error state that raises: the portable form knows which are right
            return portable.bce_with_logits_backward(z, y, e, reduction)

        # np.sum is a Python wrapper around np.add.reduce (the same pairwise sum), costing as
        # much again as the reduction itself on a small array; compat's astype is another
        # wrapper call. Small steps are made of such calls.
        return replace(
            portable,
            relu_backward=relu_backward,
            sum=lambda x, axis: np.add.reduce(x, axis=axis),
            bce_with_logits_backward=bce_with_logits_backward,
        )

    def underflow_ok(self) -> contextlib.AbstractContextManager[Any]:
        # NumPy (and array-api-strict, which computes with it) obeys np.seterr: under
        # np.seterr(all="raise"), exp(-100) in float32 raises FloatingPointError("underflow"),
        # and so does scaling a gradient that small by 1/n, though both results are right.
        # Overflow, division by zero and invalid operations still raise as the caller set.
        return np.errstate(under="ignore")


@dataclass(frozen=True)
class _Strict(_NumPy):
    is_host: bool = False

    def namespace_of_module(self, mod: ModuleType) -> ModuleType:
        return mod

    def kernels(self, xp: ModuleType) -> Kernels:
        return Backend.kernels(self, xp)  # strict arrays refuse NumPy's functions

    def test_devices(self) -> list[Any]:
        # device1: a non-default device, so any result that lands on the default is caught.
        return [None, "device1"]

    def describe(self, device: Any) -> str:
        if device is None:
            return "default"
        return device if isinstance(device, str) else str(self.device_spec(device))

    def resolve_device(self, xp: ModuleType, spec: Any) -> Any:
        devices = xp.__array_namespace_info__().devices()
        if spec is None:
            return xp.__array_namespace_info__().default_device()
        if isinstance(spec, str):
            import array_api_strict

            try:
                spec = array_api_strict.Device(spec)
            except ValueError:
                raise BackendError(
                    f"{spec!r} is not a {self.name} device; expected one of {list(devices)}"
                ) from None
        return _checked_member(spec, devices, self.name)

    def device_spec(self, device: Any) -> Any:
        return str(device._device)  # Device("device1") keeps its name there, and nowhere public

    def to_host(self, x: Array) -> np.ndarray[Any, Any]:
        # Strict refuses __array__ off its CPU device; DLPack works from any of its devices.
        return np.array(np.from_dlpack(x), copy=True)


@dataclass(frozen=True)
class _Torch(Backend):
    def namespace_of_module(self, mod: ModuleType) -> ModuleType:
        return importlib.import_module("array_api_compat.torch")

    def devices(self) -> list[Any]:
        import torch

        return ["cpu", *(f"cuda:{i}" for i in range(torch.cuda.device_count()))]

    def describe(self, device: Any) -> str:
        import torch

        d = torch.device(device)
        if d.type == "cuda":
            index = torch.cuda.current_device() if d.index is None else d.index
            return f"cuda:{index} ({torch.cuda.get_device_name(index)})"
        return str(d)

    def resolve_device(self, xp: ModuleType, spec: Any) -> Any:
        import torch

        if spec is None:
            return xp.__array_namespace_info__().default_device()
        try:
            d = torch.device(spec)
        except (RuntimeError, TypeError) as exc:
            raise BackendError(f"not a torch device: {spec!r}") from exc
        if d.type == "cuda":
            if not torch.cuda.is_available():
                raise BackendError(f"device {spec!r} asked for, but torch sees no CUDA device")
            index = torch.cuda.current_device() if d.index is None else d.index
            if index >= torch.cuda.device_count():
                raise BackendError(
                    f"device {spec!r} asked for, but torch sees "
                    f"{torch.cuda.device_count()} CUDA device(s)"
                )
            d = torch.device("cuda", index)
        return d

    def to_host(self, x: Array) -> np.ndarray[Any, Any]:
        return np.array(x.detach().cpu().numpy(), copy=True)

    def sync(self, x: Array | None, device: Any) -> None:
        import torch

        if torch.device(device).type == "cuda":
            torch.cuda.synchronize(device)

    def kernels(self, xp: ModuleType) -> Kernels:
        import torch

        def linear(x: Array, W: Array, b: Array | None) -> Array:
            return x @ W if b is None else torch.addmm(b, x, W)

        threshold_backward = torch.ops.aten.threshold_backward.default  # no overload lookup

        def relu_backward(dy: Array, y: Array) -> Array:
            return threshold_backward(dy, y, 0)

        def add_scaled(params: list[Array], grads: list[Array], a: float) -> list[Array]:
            torch._foreach_add_(params, grads, alpha=a)
            return params

        def sum_(x: Array, axis: int | None) -> Array:
            return torch.sum(x) if axis is None else torch.sum(x, axis)

        # A Python number in a CPU op is wrapped into a tensor and converted on every call, which
        # costs as much again as the op on a small array; 0-d tensors of the operand's dtype and
        # device are made once (outside any CUDA-graph capture: the warm-up step makes them).
        constants: dict[tuple[float, Any, Any], Array] = {}

        def constant(value: float, like: Array) -> Array:
            key = (value, like.dtype, like.device)
            c = constants.get(key)
            if c is None:
                c = constants[key] = torch.full((), value, dtype=like.dtype, device=like.device)
            return c

        def bce_with_logits(z: Array, y: Array, e: Array, reduction: str) -> Array:
            per_element = torch.relu(z) - z * y + torch.log1p(e)
            if reduction == "none":
                return per_element
            total = torch.sum(per_element)
            return total / constant(z.numel(), z) if reduction == "mean" else total

        def bce_with_logits_backward(z: Array, y: Array, e: Array, reduction: str) -> Array:
            one = constant(1.0, z)
            tail = e / (one + e)
            z_pos = z >= constant(0.0, z)
            if z.numel() <= _WHERE_MAX:
                # bit for bit the portable form's arithmetic selection (tests/test_kernels.py),
                # in three kernels fewer
                dz = torch.where(z_pos, (one - y) - tail, tail - y)
            else:
                m = z_pos.to(z.dtype)
                dz = (m - y) + tail * (one - (m + m))
            return dz * constant(1.0 / z.numel(), z) if reduction == "mean" else dz

        # Every compat-wrapped call costs microseconds of type promotion and scalar wrapping,
        # which dominates small steps. addmm does x W + b in one kernel with no temporary; relu
        # and threshold_backward (autograd's own ReLU gradient) are one kernel each where the
        # portable forms take two to four; one _foreach_add_ updates all parameters at once.
        return replace(
            portable_kernels(xp, mutable=True),
            linear=linear,
            relu=torch.relu,
            relu_backward=relu_backward,
            add_scaled=add_scaled,
            sum=sum_,
            bce_with_logits=bce_with_logits,
            bce_with_logits_backward=bce_with_logits_backward,
        )

    def capture_step(self, plan: StepPlan) -> Callable[[Array, Array], Array]:
        import torch

        device = torch.device(plan.placement.device)
        if device.type != "cuda":
            return _one_thread_when_small(plan)

        # As PyTorch's CUDA-graph recipe: warm up on a side stream, capture on the graph's own
        # stream into a private memory pool, replay on the current stream of the model's device.
        def capture(
            body: Callable[[], Any], warmup: Callable[[], None]
        ) -> tuple[Callable[[], None], Any]:
            with torch.cuda.device(device):
                side = torch.cuda.Stream()  # type: ignore[no-untyped-call,unused-ignore]
                side.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(side):
                    warmup()
                torch.cuda.current_stream().wait_stream(side)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph):
                    out = body()

            def replay() -> None:
                with torch.cuda.device(device):
                    graph.replay()

            return replay, out

        return plan.graphed(capture)


# Below this many multiply-adds in a step's largest matrix product, torch on the CPU runs the
# step faster on one thread: with more, MKL's threading costs each small product more than it
# saves (64x30 by 30x16: about 2.5 us against 6 us on two threads).
_ONE_THREAD_MACS = 1 << 20


def _one_thread_when_small(plan: StepPlan) -> Callable[[Array, Array], Array]:
    """The eager step of ``plan``, run with torch's intra-op threads set to one (and set back,
    whatever happens) where the batch's largest matrix product is small."""
    import torch

    check, run, widest = plan.check, plan.run, plan.widest

    def step(x: Array, y: Array) -> Array:
        check(x, y)
        threads = torch.get_num_threads()
        if threads == 1 or x.shape[0] * widest > _ONE_THREAD_MACS:
            return run(x, y)
        torch.set_num_threads(1)
        try:
            return run(x, y)
        finally:
            torch.set_num_threads(threads)

    return step


@dataclass(frozen=True)
class _Jax(Backend):
    mutable: bool = False  # JAX arrays are immutable: optimizers hand back new arrays

    def devices(self) -> list[Any]:
        import jax

        return [f"{d.platform}:{d.id}" for d in jax.devices()]

    def describe(self, device: Any) -> str:
        kind = getattr(device, "device_kind", "")
        spec = device if isinstance(device, str) else self.device_spec(device)
        return f"{spec} ({kind})" if kind and kind != "cpu" else str(spec)

    def resolve_device(self, xp: ModuleType, spec: Any) -> Any:
        import jax

        if spec is None:
            # JAX reports None ("wherever JAX puts it"); a fresh array's device is concrete.
            return device(jax.device_put(np.zeros(())))
        if isinstance(spec, str) and spec.startswith("mesh("):
            return self._mesh_from_spec(xp, spec)
        if isinstance(spec, (jax.sharding.Mesh, jax.sharding.NamedSharding)):
            # Data parallelism: the parameters are replicated on every device of the mesh; the
            # batches are split over it (shard_batch) and XLA inserts the all-reduces.
            return _replicated(spec if isinstance(spec, jax.sharding.Mesh) else spec.mesh)
        if isinstance(spec, str):
            platform, _, index = spec.partition(":")
            platform = {"cuda": "gpu"}.get(platform, platform)
            try:
                found = jax.devices(platform)
            except RuntimeError as exc:
                raise BackendError(f"JAX has no {platform!r} device for {spec!r}: {exc}") from exc
            i = int(index or 0)
            if i >= len(found):
                raise BackendError(f"JAX has {len(found)} {platform} device(s), asked for {spec!r}")
            return found[i]
        return _checked_member(spec, jax.devices(), self.name)

    def device_spec(self, device: Any) -> Any:
        mesh = getattr(device, "mesh", None)
        if mesh is not None:  # "mesh(batch=2; cpu:0, cpu:1)", which resolve_device reads back
            axes = ", ".join(f"{name}={size}" for name, size in mesh.shape.items())
            devices = ", ".join(self.device_spec(d) for d in mesh.devices.flat)
            return f"mesh({axes}; {devices})"
        return f"{device.platform}:{device.id}"

    def _mesh_from_spec(self, xp: ModuleType, spec: str) -> Any:
        """The replicated sharding over the mesh ``"mesh(batch=2)"`` (the first devices of the
        default platform) or ``"mesh(batch=2; gpu:0, gpu:1)"`` spells."""
        import jax

        inner = spec[len("mesh(") : -1] if spec.endswith(")") else ""
        axes_part, _, devices_part = inner.partition(";")
        try:
            axes = {
                name.strip(): int(size)
                for name, size in (a.split("=") for a in axes_part.split(","))
            }
        except ValueError:
            raise BackendError(
                f"cannot read the JAX mesh {spec!r}; expected e.g. 'mesh(batch=2)' or "
                "'mesh(batch=2; gpu:0, gpu:1)'"
            ) from None
        size = math.prod(axes.values())
        if devices_part.strip():
            devices = [self.resolve_device(xp, d.strip()) for d in devices_part.split(",")]
        else:
            devices = jax.devices()[:size]
        if len(devices) != size:
            raise BackendError(
                f"the JAX mesh {spec!r} needs {size} devices, got {len(devices)} "
                f"(JAX sees {len(jax.devices())})"
            )
        grid = np.empty(len(devices), dtype=object)
        grid[:] = devices
        mesh = jax.sharding.Mesh(grid.reshape(tuple(axes.values())), tuple(axes))
        return self.resolve_device(xp, mesh)

    def shard_batch(self, x: Array, device: Any) -> Array:
        mesh = getattr(device, "mesh", None)
        if mesh is None:
            return x
        import jax

        axes = mesh.axis_names
        # jax refuses a split that does not divide the rows; such a batch (the last of an
        # epoch, say) stays replicated: the same result, computed on every device.
        split = (axes[0] if len(axes) == 1 else axes) if x.shape[0] % mesh.size == 0 else None
        partition: Any = jax.sharding.PartitionSpec  # untyped in jax
        spec = partition(split)
        return jax.device_put(x, jax.sharding.NamedSharding(mesh, spec))

    def enable_float64(self) -> None:
        importlib.import_module("jax").config.update("jax_enable_x64", True)

    def keep_compiled(self, directory: str) -> None:
        # JAX runs the programs it finds there: the folder must be the user's own, closed to
        # others (JAX's own warning); an error here leaves JAX as it was.
        os.makedirs(directory, mode=0o700, exist_ok=True)
        found = os.stat(directory)
        if found.st_mode & 0o022 or found.st_uid != os.getuid():
            raise PermissionError(
                f"{directory} is writable by others or not the user's own, and JAX would run "
                "the programs it finds there"
            )
        config = importlib.import_module("jax").config
        # Every program, however small or quick to compile: the eager operations around
        # training (evaluation, the final report) compile one small program each.
        config.update("jax_compilation_cache_dir", directory)
        config.update("jax_persistent_cache_min_compile_time_secs", 0)
        config.update("jax_persistent_cache_min_entry_size_bytes", -1)

    # Each eager JAX operation compiles once per shape, which at set-up (zeros, copies, a probe
    # of the output shape) costs more than a small model's whole training: these compile nothing.
    def zeros(self, xp: ModuleType, shape: tuple[int, ...], dtype: Any, device: Any) -> Array:
        return self.from_host(np.zeros(shape, dtype=numpy_dtype(dtype)), xp, dtype, device)

    def copy(self, xp: ModuleType, x: Array) -> Array:
        import jax

        return jax.device_put(x, may_alias=False)  # a copy where x is

    def output_of(self, f: Callable[[Array], Array], x: Array) -> Any:
        import jax

        struct: Any = jax.ShapeDtypeStruct  # untyped in jax
        return jax.eval_shape(f, struct((1, *x.shape[1:]), x.dtype))

    def from_host(self, a: np.ndarray[Any, Any], xp: ModuleType, dtype: Any, device: Any) -> Array:
        import jax

        # jnp.asarray with a dtype and copy=True compiles a conversion and a copy for each new
        # shape; a plain transfer compiles nothing. may_alias=False: never the caller's buffer
        # (a donated parameter would free it).
        return jax.device_put(a, device, may_alias=False)

    def float64_hint(self) -> str:
        return "; enable it with jax.config.update('jax_enable_x64', True) before making arrays"

    def sync(self, x: Array | None, device: Any) -> None:
        if x is not None:
            x.block_until_ready()

    def kernels(self, xp: ModuleType) -> Kernels:
        def linear_backward(
            dy: Array, x: Array, W: Array, bias: bool, input_grad: bool
        ) -> tuple[Array | None, Array, Array | None]:
            # XLA on the CPU computes x.T @ dy for a one-column dy (a last layer with one
            # output) by copying x transposed before a matrix-vector product; (dy.T @ x).T reads
            # x as it lies and is the same dot for XLA otherwise.
            dW = (dy.T @ x).T
            db = xp.sum(dy, axis=0) if bias else None
            return (dy @ W.T if input_grad else None), dW, db

        return replace(portable_kernels(xp, mutable=False), linear_backward=linear_backward)

    def capture_step(self, plan: StepPlan) -> Callable[[Array, Array], Array]:
        import jax

        # Donated parameters, state and step count let XLA update them in place; the learning
        # rate and count are arrays, so new values never retrace; the optimizer's and loss's
        # other settings are a static argument, so a changed one traces anew. Each output of a
        # compiled call costs about a microsecond on the CPU: a small model's gradients come
        # back packed into one array (unpacked when read), a large one's as they are.
        packed = plan.packable and plan.size <= _PACKED_GRADIENTS_MAX
        step = plan.packed_step if packed else plan.captured_step
        compiled = jax.jit(step, donate_argnums=(0, 1, 3), static_argnames=("settings",))
        return plan.functional(compiled, packed=packed)

    def capture_function(self, fn: Callable[..., Any]) -> Callable[..., Any] | None:
        import jax

        compiled: Callable[..., Any] = jax.jit(fn)
        return compiled

    def capture_epoch(self, epoch: Callable[..., Any], device: Any) -> Callable[..., Any] | None:
        if getattr(device, "mesh", None) is not None:
            return None  # a mesh splits each batch over its devices as it comes (shard_batch)
        import jax

        # One dispatch and one compilation for all of an epoch's steps, its gathers and its
        # report: eager ops around a step would each compile once and dispatch every batch.
        compiled: Callable[..., Any] = jax.jit(
            functools.partial(epoch, jax.lax.scan),
            donate_argnums=(0, 1),
            static_argnames=("settings",),
        )
        return compiled


# The JAX captured step packs the gradients of a model with at most this many parameters into one
# output. Measured (benchmarks/jax_step_parts.py and the step itself, CPU, float32): at 641
# parameters (size S) the step takes 0.97-1.16x jax.jit's time packed against 1.47-1.84x
# unpacked; at 4,810 (digits' 64-64-10) 1.16x against 1.33x; at 50,890 (784-64-10) 1.10x
# against 0.96x: there the copy into one array costs more than the outputs it saves (and at
# 269,322, size M, XLA's concatenation took 7x the step).
_PACKED_GRADIENTS_MAX = 1 << 14


@functools.cache
def _replicated(mesh: Any) -> Any:
    """The placement device of a JAX mesh: every device of it holds the whole array.

    It is also the device :func:`device` reports for any array split over that mesh, so arrays
    made "on the device of x" (``xp.arange(k, device=device(x))``) and the checks that compare
    devices work on split batches unchanged.
    """
    import jax

    # Automatic axes (jax.make_mesh makes explicit ones, whose matmuls over the split batch axis
    # ask for an output sharding): XLA chooses the collectives and the layer code runs unchanged.
    auto = jax.sharding.Mesh(mesh.devices, mesh.axis_names)
    partition: Any = jax.sharding.PartitionSpec  # untyped in jax
    return jax.sharding.NamedSharding(auto, partition())


@dataclass(frozen=True)
class _CuPy(Backend):
    def namespace_of_module(self, mod: ModuleType) -> ModuleType:
        return importlib.import_module("array_api_compat.cupy")

    def devices(self) -> list[Any]:
        import cupy

        return list(range(cupy.cuda.runtime.getDeviceCount()))

    def describe(self, device: Any) -> str:
        import cupy

        index = device if isinstance(device, int) else int(getattr(device, "id", 0))
        props = cupy.cuda.runtime.getDeviceProperties(index)
        return f"cuda:{index} ({props['name'].decode()})"

    def resolve_device(self, xp: ModuleType, spec: Any) -> Any:
        import cupy

        if spec is None:
            return xp.__array_namespace_info__().default_device()
        if isinstance(spec, str):
            platform, _, index = spec.partition(":")
            if platform not in ("cuda", "gpu"):
                raise BackendError(f"CuPy arrays live on CUDA devices, not {spec!r}")
            spec = int(index or 0)
        if isinstance(spec, int):
            count = cupy.cuda.runtime.getDeviceCount()
            if spec >= count:
                raise BackendError(f"CuPy sees {count} CUDA device(s), asked for {spec}")
            spec = cupy.cuda.Device(spec)
        return spec

    def device_spec(self, device: Any) -> Any:
        return int(device.id)

    def to_host(self, x: Array) -> np.ndarray[Any, Any]:
        return np.asarray(x.get())

    def sync(self, x: Array | None, device: Any) -> None:
        device.synchronize()

    def capture_step(self, plan: StepPlan) -> Callable[[Array, Array], Array]:
        import cupy

        device = plan.placement.device

        # CuPy's stream capture (cupy.cuda.Stream.begin_capture/end_capture). Its arrays come
        # from a memory pool of this graph alone: the capture's temporaries, freed when it ends,
        # must never be handed to other arrays, since every replay writes into them again.
        def capture(
            body: Callable[[], Any], warmup: Callable[[], None]
        ) -> tuple[Callable[[], None], Any]:
            pool = cupy.cuda.MemoryPool()
            with device:
                current = cupy.cuda.get_current_stream()
                side = cupy.cuda.Stream(non_blocking=True)
                side.wait_event(current.record())
                with cupy.cuda.using_allocator(pool.malloc), side:
                    warmup()
                    side.begin_capture()
                    try:
                        out = body()
                    finally:
                        graph = side.end_capture()
                current.wait_event(side.record())

            def replay() -> None:
                with device:
                    graph.launch(cupy.cuda.get_current_stream())
                _ = pool  # the graph's memory lives as long as the graph

            return replay, out

        return plan.graphed(capture)


@dataclass(frozen=True)
class _Other(Backend):
    """Any other array-API namespace a user hands in: portable forms, updated
    functionally (nothing is assumed about in-place updates), copied to the host by DLPack."""

    mutable: bool = False

    def to_host(self, x: Array) -> np.ndarray[Any, Any]:
        try:
            return np.array(np.from_dlpack(x), copy=True)
        except (TypeError, AttributeError, RuntimeError, BufferError):
            return np.array(x, copy=True)


@dataclass(frozen=True)
class _Ndonnx(_Other):
    """ndonnx, for ONNX export: its arrays are nodes of a graph being built, not values."""

    def kernels(self, xp: ModuleType) -> Kernels:
        # The opset ndonnx itself builds with; its constructors are listed in a computed __all__.
        op: Any = importlib.import_module("spox.opset.ai.onnx.v21")

        def linear(x: Array, W: Array, b: Array | None) -> Array:
            # ndonnx wraps every matmul in an If on the operands' sizes (its guard against an
            # onnxruntime bug on empty arrays): Size nodes and a branch per layer, which keep
            # onnxruntime from fusing the layer. Gemm is the node runtimes read as a dense layer.
            if b is None:
                return xp.asarray(op.matmul(x.unwrap_spox(), W.unwrap_spox()))
            return xp.asarray(op.gemm(x.unwrap_spox(), W.unwrap_spox(), b.unwrap_spox()))

        def relu(x: Array) -> Array:
            return xp.asarray(op.relu(x.unwrap_spox()))  # onnxruntime fuses it into the Gemm

        return replace(portable_kernels(xp, mutable=False), linear=linear, relu=relu)


#: Every supported backend's facts, by name; the one place the rest of the code asks.
TABLE: dict[str, Backend] = {
    "numpy": _NumPy("numpy", "numpy", "numpy", "numpy"),
    "array_api_strict": _Strict(
        "array_api_strict", "array_api_strict", "array_api_strict", "array-api-strict"
    ),
    "torch": _Torch("torch", "torch", "torch", "torch"),
    "jax": _Jax("jax", "jax.numpy", "jax", "jax"),
    "cupy": _CuPy("cupy", "cupy", "cupy", "cupy-cuda12x"),
}


def _refused(xp: ModuleType) -> str | None:
    """Why a namespace cannot hold a model's arrays, or None."""
    if array_api_compat.is_dask_namespace(xp):
        # Dask builds a task graph per operation (a step at batch 256 cost 34-38 ms against 3 ms
        # on NumPy) and its `p -= g` only rebinds the name: an optimizer would silently leave
        # the weights unchanged. Dask is for data larger than memory, around a NumPy model.
        return (
            "Dask arrays cannot hold a model's parameters (each operation builds a graph, and "
            "in-place updates do not reach the array); train a NumPy model on Dask data with "
            "dask_ml.wrappers.Incremental, or call .compute() on each batch"
        )
    return None


# --------------------------------------------------------------------------------------------
# Namespaces
# --------------------------------------------------------------------------------------------
_BACKEND_OF_NAMESPACE: dict[ModuleType, Backend] = {}
# array_namespace() costs 2-35 us; the namespace of an array depends only on its type.
_NAMESPACE_OF_TYPE: dict[type, ModuleType] = {}


def backend_of(xp: ModuleType) -> Backend:
    """The :class:`Backend` (table entry) of a namespace; unknown namespaces get generic facts."""
    found = _BACKEND_OF_NAMESPACE.get(xp)
    if found is None:
        for name, check in (
            ("numpy", array_api_compat.is_numpy_namespace),
            ("torch", array_api_compat.is_torch_namespace),
            ("cupy", array_api_compat.is_cupy_namespace),
            ("jax", array_api_compat.is_jax_namespace),
            ("array_api_strict", array_api_compat.is_array_api_strict_namespace),
        ):
            if check(xp):
                found = TABLE[name]
                break
        else:
            name = str(getattr(xp, "__name__", xp))
            found = (
                _Ndonnx(name, "ndonnx", "ndonnx", "'portable-mlp[onnx]'")
                if array_api_compat.is_ndonnx_namespace(xp)
                else _Other(name, "", "", "")
            )
        _BACKEND_OF_NAMESPACE[xp] = found
    return found


def namespace(backend: str | ModuleType | Placement) -> ModuleType:
    """The array API namespace for a backend name, module or placement.

    ``"numpy"``, ``"torch"`` and ``"cupy"`` give array-api-compat's wrappers; ``"jax"`` gives
    ``jax.numpy`` and ``"array_api_strict"`` the strict reference, both used natively. A module
    (``numpy``, ``torch``, ``jax.numpy``, a compat wrapper, another array-API library) is mapped
    the same way.
    """
    if isinstance(backend, Placement):
        return backend.xp
    if isinstance(backend, ModuleType):
        for entry in TABLE.values():
            if entry.installed() and backend_of(backend) is entry:
                return entry.namespace()
        reason = _refused(backend)
        if reason is not None:
            raise BackendError(reason)
        if not hasattr(backend, "__array_namespace_info__"):
            raise BackendError(f"{backend.__name__} is not an array namespace this library knows")
        return backend
    if not isinstance(backend, str):
        raise TypeError(f"backend must be a name or an array namespace, got {backend!r}")
    name = _ALIASES.get(backend, backend)
    if name == "dask":
        raise BackendError(_refused(importlib.import_module("array_api_compat.dask.array")))
    if name not in TABLE:
        raise BackendError(
            f"unknown backend {backend!r}; expected one of {', '.join(BACKENDS)} "
            f"(installed: {', '.join(installed_backends()) or 'none'})"
        )
    return TABLE[name].namespace()


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
    return backend_of(xp).name


def installed_backends() -> list[str]:
    """Names of the backends that import here (not necessarily with a usable device)."""
    return [name for name, entry in TABLE.items() if entry.installed()]


def kernels_of(xp: ModuleType) -> Kernels:
    """The kernels of ``xp``'s backend (cached), for code that has a namespace, not a placement."""
    return _kernels(xp)


@functools.cache
def _kernels(xp: ModuleType) -> Kernels:
    return backend_of(xp).kernels(xp)


# --------------------------------------------------------------------------------------------
# Devices and dtypes
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
        return lambda _: "cpu"  # NumPy 1.26 arrays have no .device
    if array_api_compat.is_torch_array(x):
        return lambda a: a.device
    if array_api_compat.is_jax_array(x):
        from jax.sharding import NamedSharding, SingleDeviceSharding

        def jax_device(a: Any) -> Any:
            if type(getattr(a, "sharding", None)) is SingleDeviceSharding:
                return a.device  # the common case, in half the time of the general one
            d = array_api_compat.device(a)  # None while jit traces (jax-ml/jax#26000)
            return _replicated(d.mesh) if type(d) is NamedSharding else d

        return jax_device
    return array_api_compat.device


def place_key(x: Any) -> Any:
    """A value equal for arrays placed alike, cheap to get: JAX's sharding (0.06 us, against
    0.55 us for :func:`device`), else the device. Two arrays with equal keys are on the same
    device; arrays on one device may still differ (a split and a whole JAX array)."""
    getter = _PLACE_KEY_OF_TYPE.get(type(x))
    if getter is None:
        jax = array_api_compat.is_jax_array(x)
        getter = _PLACE_KEY_OF_TYPE[type(x)] = (lambda a: a.sharding) if jax else _device_getter(x)
    return getter(x)


_PLACE_KEY_OF_TYPE: dict[type, Callable[[Any], Any]] = {}


def resolve_device(xp: ModuleType, dev: Any = None) -> Any:
    """A device object of ``xp`` from a user's spelling (``None``, ``"cpu"``, ``"cuda:1"``, ...)."""
    return backend_of(xp).resolve_device(xp, dev)


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
        raise BackendError(
            f"{backend_name(xp)} on device {dev} does not support {name} "
            f"(it offers {', '.join(allowed)}){backend_of(xp).float64_hint()}"
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
# The placement: where a model's arrays live
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class Placement:
    """Where a model's arrays live: one backend's namespace, one device, one floating dtype.

    Made by :func:`placement` (from the ``backend=``, ``device=``, ``dtype=`` shorthands) and
    shared by every layer, model, optimizer and estimator that holds such arrays; nothing else
    re-derives the triple. It moves host arrays here (:meth:`asarray`) and back
    (:meth:`to_host`), refuses arrays that live elsewhere (:meth:`check`) and waits for the
    device (:meth:`sync`, for timing). Two placements are equal when namespace, device and dtype
    are; a placement pickles as its spelling and is rebuilt on load.
    """

    backend: Backend
    xp: ModuleType
    device: Any
    dtype: Any
    kernels: Kernels = field(repr=False)

    @property
    def name(self) -> str:
        """The backend's short name: ``"numpy"``, ``"torch"``, ..."""
        return self.backend.name

    @property
    def mutable(self) -> bool:
        """Whether arrays here can be updated in place (all but JAX's)."""
        return self.backend.mutable

    @property
    def dtype_name(self) -> str:
        return dtype_name(self.dtype)

    @property
    def device_spec(self) -> Any:
        """The device as a plain str or int that :func:`placement` accepts back."""
        return self.backend.device_spec(self.device)

    def describe(self) -> str:
        """``"torch on cuda:0 (NVIDIA H200), float32"``."""
        return f"{self.name} on {self.backend.describe(self.device)}, {self.dtype_name}"

    def __repr__(self) -> str:
        return f"Placement({self.name!r}, device={self.device_spec!r}, dtype={self.dtype_name!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Placement):
            return NotImplemented
        return (self.xp, self.device, self.dtype) == (other.xp, other.device, other.dtype)

    def __hash__(self) -> int:
        return hash((self.name, self.dtype_name))

    def __reduce__(self) -> tuple[Any, ...]:
        # The namespace module and device objects do not pickle; their spellings do.
        return (placement, (self.name, self.device_spec, self.dtype_name))

    def with_dtype(self, dtype: Any) -> Placement:
        """The same backend and device with another floating dtype."""
        return placement(self.xp, self.device, dtype)

    # ---- moving arrays
    def asarray(self, data: Any, *, dtype: Any = None) -> Array:
        """A copy of host data (or any backend's array) here.

        Floating data takes this placement's dtype unless ``dtype`` says otherwise; integer and
        boolean data (labels) keep an integer or boolean dtype. Always a copy: a parameter
        updated in place never writes into the caller's array.
        """
        host = _as_host(data)
        if dtype is not None:
            dtype = resolve_dtype(self.xp, dtype, self.device) if isinstance(dtype, str) else dtype
        elif host.dtype.kind == "f":
            dtype = self.dtype
        elif host.dtype.kind in "iu":
            dtype = self.index_dtype
        elif host.dtype.kind == "b":
            dtype = self.xp.bool
        else:
            raise TypeError(f"asarray() expected numeric data, got dtype {host.dtype}")
        return from_numpy(host, xp=self.xp, dtype=dtype, device=self.device)

    @property
    def index_dtype(self) -> Any:
        """The default integer dtype here (labels, gather indices)."""
        info = self.xp.__array_namespace_info__()
        return info.default_dtypes(device=self.device)["indexing"]

    def to_host(self, x: Array) -> np.ndarray[Any, Any]:
        """A host NumPy copy of an array of this placement (a transfer from an accelerator)."""
        return self.backend.to_host(x)

    def zeros(self, shape: Sequence[int]) -> Array:
        return self.backend.zeros(self.xp, tuple(shape), self.dtype, self.device)

    def copy(self, x: Array) -> Array:
        """A copy of ``x`` (an array of this placement) that nothing done to ``x`` changes."""
        return self.backend.copy(self.xp, x)

    # ---- checking and waiting
    def check(self, x: Any, *, who: str, what: str = "x") -> None:
        """Refuse ``x`` unless it is an array of this namespace, dtype and device (an error naming
        both sides); never cast or move it."""
        check_array(x, xp=self.xp, dtype=self.dtype, dev=self.device, who=who, what=what)

    def sync(self, x: Array | None = None) -> None:
        """Wait for the device: until ``x`` is computed (JAX) or all queued work is done."""
        self.backend.sync(x, self.device)

    def floating_point_errors_quiet(self) -> contextlib.AbstractContextManager[Any]:
        """Silence the backend's floating-point warnings where the caller checks finiteness."""
        return self.backend.floating_point_errors_quiet()


_PLACEMENTS: dict[tuple[Any, ...], Placement] = {}


def placement(
    backend: str | ModuleType | Placement = "numpy", device: Any = None, dtype: Any = None
) -> Placement:
    """The :class:`Placement` for a backend (name, module or placement), device and dtype.

    ``device=None`` is the backend's default device and ``dtype=None`` its default floating
    dtype on that device. A placement passed as ``backend`` comes back as it is (with ``dtype``
    set, in that dtype). Equal arguments give the same object.
    """
    if isinstance(backend, Placement):
        if device is not None and backend.backend.resolve_device(backend.xp, device) != (
            backend.device
        ):
            raise BackendError(f"{backend!r} is not on device {device!r}")
        return backend if dtype is None else backend.with_dtype(dtype)
    xp = namespace(backend)
    dev = resolve_device(xp, device)
    dt = resolve_dtype(xp, dtype, dev)
    key: tuple[Any, ...] = (xp, dev, dtype_name(dt))
    try:
        found = _PLACEMENTS.get(key)
    except TypeError:  # an unhashable device object: build a fresh placement
        return Placement(backend_of(xp), xp, dev, dt, _kernels(xp))
    if found is None:
        found = _PLACEMENTS[key] = Placement(backend_of(xp), xp, dev, dt, _kernels(xp))
    return found


def placement_arg(
    given: Placement | None, backend: str | ModuleType | Placement, device: Any, dtype: Any
) -> Placement:
    """A constructor's placement: ``placement=`` if given, else the one its ``backend=``,
    ``device=`` and ``dtype=`` shorthands make (passing both is an error)."""
    if given is None:
        return placement(backend, device, dtype)
    if not isinstance(given, Placement):
        raise TypeError(f"placement must be a Placement, got {type(given).__name__}")
    if backend != "numpy" or device is not None or dtype is not None:
        raise TypeError("pass placement= or backend=/device=/dtype=, not both")
    return given


def placement_of(x: Array) -> Placement:
    """The placement of an existing floating array: its namespace, device and dtype."""
    xp = namespace_of(x)
    return placement(xp, device(x), x.dtype)


# --------------------------------------------------------------------------------------------
# Host <-> backend
# --------------------------------------------------------------------------------------------
def from_numpy(a: Any, *, xp: ModuleType, dtype: Any = None, device: Any = None) -> Any:
    """Copy a host array onto ``xp``'s ``device`` with ``dtype`` (cast on the host first)."""
    a = np.asarray(a)
    if dtype is None:
        # copy=True: a parameter updated in place must never write into the caller's array.
        return xp.asarray(a, device=device, copy=True)
    return backend_of(xp).from_host(a.astype(numpy_dtype(dtype), copy=False), xp, dtype, device)


def to_numpy(x: Any) -> np.ndarray[Any, Any]:
    """A host NumPy copy of any backend's array (a transfer from a GPU; reporting only)."""
    return backend_of(namespace_of(x)).to_host(x)


def _as_host(data: Any) -> np.ndarray[Any, Any]:
    try:
        return to_numpy(data)
    except TypeError:
        return np.asarray(data)


def asarray(data: Any, *, like: Any, dtype: Any = None) -> Any:
    """``data`` (host or any backend) as an array of ``like``'s placement.

    ``like`` is a model, layer, placement or array. Floating data takes ``like``'s dtype unless
    ``dtype`` says otherwise; integer and boolean data (labels) keep an integer or boolean dtype.
    An explicit, visible move: it is never done behind a user's back.
    """
    return placement_like(like).asarray(data, dtype=dtype)


def placement_like(like: Any) -> Placement:
    """The placement of a model, layer, placement or array."""
    if isinstance(like, Placement):
        return like
    if hasattr(like, "placement"):
        return like.placement  # type: ignore[no-any-return]
    return placement_of(like)


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
