"""Layers: each holds its parameters and cache, and calls the math in ``functional``.

A layer's ``forward(x)`` keeps what its ``backward(dy)`` needs; ``backward`` returns dL/dx and
(for layers with parameters) sets ``grads``. Models that chain layers are in ``models``. Nothing
here imports a backend: arrays are touched only through their namespace ``xp``, which a
:class:`~portable_mlp._backend.Placement` carries.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import ModuleType
from typing import Any

from . import functional as F
from . import init as _init
from ._backend import Array, Placement, from_numpy, kernels_of, namespace_of, placement_arg


class Module:
    """Base: ``forward``/``backward``, ``parameters``/``gradients``, and a config to rebuild it."""

    def forward(self, x: Array, *, cache: bool = True) -> Array:
        """Apply the layer to ``x``; ``cache=False`` (prediction) keeps nothing for backward."""
        self._check_input(x)
        return self._forward(x, cache)

    def backward(self, dy: Array, *, input_grad: bool = True) -> Array | None:
        """dL/dx from dL/dy; parameter gradients go to ``grads``. ``input_grad=False``: no dx."""
        self._check_upstream(dy)
        return self._backward(dy, input_grad)

    __call__ = forward

    # What a copy or a pickle leaves out: the forward pass's cache (a copy holds parameters and
    # gradients, not a half-done step) and what is rebuilt from the placement on load.
    _transient: tuple[str, ...] = ()

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        for key in self._transient:
            state[key] = None
        state.pop("_predictions", None)  # compiled prediction functions (compiled.py), remade
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._rebuild()

    def _rebuild(self) -> None:
        """Restore what :attr:`_transient` left out (none by default)."""

    def parameters(self) -> dict[str, Array]:
        """The trainable arrays by name (empty for activations)."""
        return {}

    def gradients(self) -> dict[str, Array]:
        """dL/d(parameter) from the last backward, with the keys of :meth:`parameters`."""
        return {}

    def set_parameters(self, params: Mapping[str, Array], *, check: bool = True) -> None:
        """Replace parameters by name (the keys of :meth:`parameters`); refused on any mismatch."""
        if params:
            raise KeyError(f"{self!r} has no parameters, got {sorted(params)}")

    def config(self) -> dict[str, Any]:
        """What rebuilds this layer (without its values): ``{"type": ..., **arguments}``."""
        return {"type": type(self).__name__}

    # Subclasses implement these; they skip the checks, for use inside a model that has done them.
    def _forward(self, x: Array, cache: bool) -> Array:
        raise NotImplementedError

    def _backward(self, dy: Array, input_grad: bool) -> Array | None:
        raise NotImplementedError

    def _check_input(self, x: Array) -> None:
        namespace_of(x)

    def _check_upstream(self, dy: Array) -> None:
        shape = getattr(self, "_out_shape", None)
        if shape is None:
            raise RuntimeError(
                f"{self!r}.backward() called before forward() (or twice for one forward, or "
                "after forward(x, cache=False)); run forward(x) first"
            )
        if tuple(dy.shape) != shape:
            raise ValueError(
                f"{self!r}.backward() expected dy of shape {shape}, got {tuple(dy.shape)}"
            )

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class Placed:
    """The shorthands of a layer or model that holds arrays: its placement's namespace, backend
    name, device and dtype."""

    _placement: Placement | None

    @property
    def placement(self) -> Placement:
        if self._placement is None:
            raise AttributeError(f"{self!r} has no Linear layer, so no placement")
        return self._placement

    @property
    def xp(self) -> ModuleType:
        return self.placement.xp

    @property
    def backend(self) -> str:
        return self.placement.name

    @property
    def device(self) -> Any:
        return self.placement.device

    @property
    def dtype(self) -> Any:
        return self.placement.dtype


# ---------------------------------------------------------------------------- Linear
class Linear(Placed, Module):
    """``y = x W + b`` with ``W: (p_in, p_out)`` and ``b: (p_out,)``, as in the seed notebook.

    Weights are drawn on the host from ``rng`` by ``init`` (default: the seed's N(0, 1)/sqrt(p_in);
    also ``"he"``, ``"xavier"``, ``"he_uniform"``, ``"xavier_uniform"``), then moved to the
    placement: ``placement=`` (a :class:`Placement`), or the ``backend=``, ``device=``, ``dtype=``
    shorthands it is made from. Biases start at zero.
    """

    def __init__(
        self,
        p_in: int,
        p_out: int,
        *,
        bias: bool = True,
        rng: _init.RNGLike = None,
        backend: str | ModuleType = "numpy",
        device: Any = None,
        dtype: Any = None,
        init: str | _init.Initializer = "normal",
        placement: Placement | None = None,
    ) -> None:
        for name, value in (("p_in", p_in), ("p_out", p_out)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"Linear {name} must be a positive int, got {value!r}")
        self.p_in, self.p_out = p_in, p_out
        where = placement_arg(placement, backend, device, dtype)
        self._placement = where
        self.init = init
        W = _init.get(init)(_init.as_generator(rng), p_in, p_out)
        if tuple(W.shape) != (p_in, p_out):
            raise ValueError(f"init {init!r} returned shape {W.shape}, expected {(p_in, p_out)}")
        self.weight: Array = from_numpy(W, xp=where.xp, dtype=where.dtype, device=where.device)
        self.bias: Array | None = where.zeros((p_out,)) if bias else None
        self._pending: Any = None  # gradients a captured step left packed (grads)
        self.grads = {}
        self._x: Array | None = None
        self._out_shape: tuple[int, ...] | None = None
        self._linear = where.kernels.linear

    _transient = ("_x", "_out_shape", "_linear")

    @property
    def grads(self) -> dict[str, Array]:
        """dL/dW (``"weight"``) and dL/db (``"bias"``) of the last backward or training step."""
        if self._pending is not None:  # a captured step left them packed: unpacked once, now
            self._pending.unpack()
        return self._grads

    @grads.setter
    def grads(self, value: dict[str, Array]) -> None:
        self._grads, self._pending = value, None

    def _leave_packed(self, pending: Any) -> None:
        """The last step's gradients are in ``pending`` (compiled.py), whose ``unpack()`` sets
        every layer's ``grads`` when one is first read."""
        self._pending = pending

    def __getstate__(self) -> dict[str, Any]:
        self.grads  # noqa: B018 -- unpack gradients left packed, so that a copy holds them
        return super().__getstate__()

    def _rebuild(self) -> None:
        self._linear = self.placement.kernels.linear
        if "grads" in self.__dict__:  # pickled before gradients could be left packed
            self._grads, self._pending = self.__dict__.pop("grads"), None

    def __repr__(self) -> str:
        extra = "" if self.bias is not None else ", bias=False"
        return f"Linear({self.p_in} -> {self.p_out}{extra})"

    def config(self) -> dict[str, Any]:
        return {
            "type": "Linear",
            "p_in": self.p_in,
            "p_out": self.p_out,
            "bias": self.bias is not None,
        }

    def parameters(self) -> dict[str, Array]:
        params = {"weight": self.weight}
        if self.bias is not None:
            params["bias"] = self.bias
        return params

    def gradients(self) -> dict[str, Array]:
        return self.grads

    def set_parameters(self, params: Mapping[str, Array], *, check: bool = True) -> None:
        if check:
            expected = {k: tuple(v.shape) for k, v in self.parameters().items()}
            if set(params) != set(expected):
                raise KeyError(f"{self!r} has parameters {sorted(expected)}, got {sorted(params)}")
            for key, value in params.items():
                what = f"parameter {key!r}"
                self.placement.check(value, who=repr(self), what=what)
                if tuple(value.shape) != expected[key]:
                    raise ValueError(
                        f"{self!r} expected {what} of shape {expected[key]}, "
                        f"got {tuple(value.shape)}"
                    )
        self.weight = params["weight"]
        if self.bias is not None:
            self.bias = params["bias"]

    def _check_input(self, x: Array) -> None:
        self.placement.check(x, who=repr(self))
        if x.ndim != 2 or x.shape[1] != self.p_in:
            raise ValueError(
                f"{self!r} expected x of shape (n, {self.p_in}) with {self.p_in} features, "
                f"got {tuple(x.shape)}"
            )

    def _forward(self, x: Array, cache: bool) -> Array:
        y = self._linear(x, self.weight, self.bias)
        self._x = x if cache else None
        self._out_shape = tuple(y.shape) if cache else None
        return y

    def _backward(self, dy: Array, input_grad: bool) -> Array | None:
        x, self._x, self._out_shape = self._x, None, None
        dx, dW, db = self.placement.kernels.linear_backward(
            dy, x, self.weight, self.bias is not None, input_grad
        )
        self.grads = {"weight": dW} if db is None else {"weight": dW, "bias": db}
        return dx


# ---------------------------------------------------------------------------- activations
class _Activation(Module):
    """An elementwise layer; it caches its output (or input) and the namespace for backward."""

    _keeps_input = False  # cache x rather than y, for layers whose derivative needs x

    def __init__(self) -> None:
        self._saved: Array | None = None
        self._xp: ModuleType | None = None
        self._out_shape: tuple[int, ...] | None = None

    _transient = ("_saved", "_xp", "_out_shape")

    def _forward(self, x: Array, cache: bool) -> Array:
        xp = namespace_of(x)
        y = self._f(x, xp)
        if cache:
            self._saved, self._xp, self._out_shape = (
                (x if self._keeps_input else y),
                xp,
                tuple(y.shape),
            )
        else:
            self._saved = self._xp = self._out_shape = None
        return y

    def _backward(self, dy: Array, input_grad: bool) -> Array:
        saved, xp = self._saved, self._xp
        self._saved = self._xp = self._out_shape = None
        return self._df(dy, saved, xp)

    def _f(self, x: Array, xp: ModuleType) -> Array:
        raise NotImplementedError

    def _df(self, dy: Array, saved: Array, xp: ModuleType | None) -> Array:
        raise NotImplementedError


class ReLU(_Activation):
    """``max(x, 0)``."""

    def _f(self, x: Array, xp: ModuleType) -> Array:
        return kernels_of(xp).relu(x)

    def _df(self, dy: Array, saved: Array, xp: ModuleType | None) -> Array:
        return kernels_of(namespace_of(dy) if xp is None else xp).relu_backward(dy, saved)


class Sigmoid(_Activation):
    """``1 / (1 + exp(-x))``, without overflow."""

    def _f(self, x: Array, xp: ModuleType) -> Array:
        return F.sigmoid(x, xp=xp)

    def _df(self, dy: Array, saved: Array, xp: ModuleType | None) -> Array:
        return F.sigmoid_backward(dy, saved, xp=xp)


class Tanh(_Activation):
    """``tanh(x)``."""

    def _f(self, x: Array, xp: ModuleType) -> Array:
        return F.tanh(x, xp=xp)

    def _df(self, dy: Array, saved: Array, xp: ModuleType | None) -> Array:
        return F.tanh_backward(dy, saved, xp=xp)


class GELU(_Activation):
    """GELU in its tanh approximation (``torch.nn.GELU(approximate="tanh")``)."""

    _keeps_input = True

    def _f(self, x: Array, xp: ModuleType) -> Array:
        return F.gelu(x, xp=xp)

    def _df(self, dy: Array, saved: Array, xp: ModuleType | None) -> Array:
        return F.gelu_backward(dy, saved, xp=xp)


class LeakyReLU(_Activation):
    """``x`` where positive, ``negative_slope * x`` elsewhere."""

    _keeps_input = True

    def __init__(self, negative_slope: float = 0.01) -> None:
        super().__init__()
        self.negative_slope = float(negative_slope)

    def __repr__(self) -> str:
        return f"LeakyReLU(negative_slope={self.negative_slope})"

    def config(self) -> dict[str, Any]:
        return {"type": "LeakyReLU", "negative_slope": self.negative_slope}

    def _f(self, x: Array, xp: ModuleType) -> Array:
        return F.leaky_relu(x, self.negative_slope, xp=xp)

    def _df(self, dy: Array, saved: Array, xp: ModuleType | None) -> Array:
        return F.leaky_relu_backward(dy, saved, self.negative_slope, xp=xp)


class Identity(_Activation):
    """``x``, unchanged."""

    def _f(self, x: Array, xp: ModuleType) -> Array:
        return x

    def _df(self, dy: Array, saved: Array, xp: ModuleType | None) -> Array:
        return dy


ACTIVATIONS: dict[str, type[_Activation]] = {
    "relu": ReLU,
    "sigmoid": Sigmoid,
    "logistic": Sigmoid,  # scikit-learn's name for it
    "tanh": Tanh,
    "leaky_relu": LeakyReLU,
    "identity": Identity,
    "gelu": GELU,
}
