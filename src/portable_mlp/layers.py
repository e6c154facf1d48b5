"""Layers and models: each holds its parameters and cache, and calls the math in ``functional``.

A layer's ``forward(x)`` keeps what its ``backward(dy)`` needs; ``backward`` returns dL/dx and
(for layers with parameters) sets ``grads``. A model's backward is its layers' backwards in
reverse. Nothing here imports a backend: arrays are touched only through their namespace ``xp``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from types import ModuleType
from typing import Any

from . import functional as F
from . import init as _init
from ._backend import (
    backend_name,
    check_array,
    dtype_name,
    from_numpy,
    kernels,
    namespace,
    namespace_of,
    resolve_device,
    resolve_dtype,
)

Array = Any


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


# ---------------------------------------------------------------------------- Linear
class Linear(Module):
    """``y = x W + b`` with ``W: (p_in, p_out)`` and ``b: (p_out,)``, as in the seed notebook.

    Weights are drawn on the host from ``rng`` by ``init`` (default: the seed's N(0, 1)/sqrt(p_in);
    also ``"he"``, ``"xavier"``, ``"he_uniform"``, ``"xavier_uniform"``), then moved to the
    backend, device and dtype. Biases start at zero.
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
    ) -> None:
        for name, value in (("p_in", p_in), ("p_out", p_out)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"Linear {name} must be a positive int, got {value!r}")
        self.p_in, self.p_out = p_in, p_out
        self.xp = namespace(backend)
        self.device = resolve_device(self.xp, device)
        self.dtype = resolve_dtype(self.xp, dtype, self.device)
        self.init = init
        W = _init.get(init)(_init.as_generator(rng), p_in, p_out)
        if tuple(W.shape) != (p_in, p_out):
            raise ValueError(f"init {init!r} returned shape {W.shape}, expected {(p_in, p_out)}")
        self.weight: Array = from_numpy(W, xp=self.xp, dtype=self.dtype, device=self.device)
        self.bias: Array | None = (
            self.xp.zeros((p_out,), dtype=self.dtype, device=self.device) if bias else None
        )
        self.grads: dict[str, Array] = {}
        self._x: Array | None = None
        self._out_shape: tuple[int, ...] | None = None
        self._addmm = kernels(self.xp).linear  # a fused x W + b, where the backend has one

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

    @property
    def backend(self) -> str:
        return backend_name(self.xp)

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
                check_array(
                    value, xp=self.xp, dtype=self.dtype, dev=self.device, who=repr(self), what=what
                )
                if tuple(value.shape) != expected[key]:
                    raise ValueError(
                        f"{self!r} expected {what} of shape {expected[key]}, "
                        f"got {tuple(value.shape)}"
                    )
        self.weight = params["weight"]
        if self.bias is not None:
            self.bias = params["bias"]

    def _check_input(self, x: Array) -> None:
        check_array(x, xp=self.xp, dtype=self.dtype, dev=self.device, who=repr(self))
        if x.ndim != 2 or x.shape[1] != self.p_in:
            raise ValueError(
                f"{self!r} expected x of shape (n, {self.p_in}) with {self.p_in} features, "
                f"got {tuple(x.shape)}"
            )

    def _forward(self, x: Array, cache: bool) -> Array:
        if self._addmm is not None and self.bias is not None:
            y = self._addmm(self.bias, x, self.weight)
        else:
            y = F.linear(x, self.weight, self.bias, xp=self.xp)
        self._x = x if cache else None
        self._out_shape = tuple(y.shape) if cache else None
        return y

    def _backward(self, dy: Array, input_grad: bool) -> Array | None:
        x, self._x, self._out_shape = self._x, None, None
        dx, dW, db = F.linear_backward(
            dy, x, self.weight, bias=self.bias is not None, input_grad=input_grad, xp=self.xp
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
        fast = kernels(xp).relu
        return F.relu(x, xp=xp) if fast is None else fast(x)

    def _df(self, dy: Array, saved: Array, xp: ModuleType | None) -> Array:
        fast = None if xp is None else kernels(xp).relu_backward
        return F.relu_backward(dy, saved, xp=xp) if fast is None else fast(dy, saved)


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
    "tanh": Tanh,
    "leaky_relu": LeakyReLU,
    "identity": Identity,
    "gelu": GELU,
}


# ---------------------------------------------------------------------------- models
class Sequential(Module):
    """Layers applied in order; backward runs their backwards in reverse.

    Parameters are named ``"<index>.<name>"`` (``"0.weight"``, ``"0.bias"``, ``"2.weight"``, ...),
    layer by layer, weight before bias, as in ``torch.nn.Sequential``.
    """

    def __init__(self, *layers: Module) -> None:
        if len(layers) == 1 and isinstance(layers[0], (list, tuple)):
            layers = tuple(layers[0])
        for i, layer in enumerate(layers):
            if not isinstance(layer, Module):
                raise TypeError(
                    f"Sequential layer {i} must be a Module, got {type(layer).__name__}"
                )
        self.layers: list[Module] = list(layers)
        self._linears = [(i, m) for i, m in enumerate(self.layers) if isinstance(m, Linear)]
        # (key, layer, attribute) of every parameter, nested models flattened: the structure is
        # fixed, so parameters() and gradients() need no string building per call.
        self._slots: list[tuple[str, Module, str]] = [
            (f"{i}.{key}", *_slot(layer, key))
            for i, layer in enumerate(self.layers)
            for key in layer.parameters()
        ]
        self._check_chain()
        first = self._linears[0][1] if self._linears else None
        self._first: Linear | None = (
            first if first is not None and first is self.layers[0] else None
        )

    def _check_chain(self) -> None:
        width = None
        ref: Linear | None = None
        for i, layer in self._linears:
            if width is not None and layer.p_in != width:
                raise ValueError(
                    f"Sequential layer {i} {layer!r} expected {layer.p_in} features, "
                    f"but the layer before it gives {width}"
                )
            width = layer.p_out
            if ref is None:
                ref = layer
            elif (layer.xp, layer.dtype, layer.device) != (ref.xp, ref.dtype, ref.device):
                raise ValueError(
                    f"Sequential layers disagree: {ref!r} is {backend_name(ref.xp)} "
                    f"{dtype_name(ref.dtype)} on {ref.device}, layer {i} {layer!r} is "
                    f"{backend_name(layer.xp)} {dtype_name(layer.dtype)} on {layer.device}"
                )

    def __repr__(self) -> str:
        inner = ", ".join(repr(layer) for layer in self.layers)
        return f"{type(self).__name__}({inner})"

    def __len__(self) -> int:
        return len(self.layers)

    def __getitem__(self, i: int) -> Module:
        return self.layers[i]

    def __iter__(self) -> Iterator[Module]:
        return iter(self.layers)

    def config(self) -> dict[str, Any]:
        return {"type": "Sequential", "layers": [layer.config() for layer in self.layers]}

    # The model's backend, dtype and device are its (first) Linear's.
    def _ref(self) -> Linear:
        for _, layer, _ in self._slots:  # nested models included
            if isinstance(layer, Linear):
                return layer
        raise AttributeError(f"{self!r} has no Linear layer, so no backend, dtype or device")

    @property
    def xp(self) -> ModuleType:
        return self._ref().xp

    @property
    def dtype(self) -> Any:
        return self._ref().dtype

    @property
    def device(self) -> Any:
        return self._ref().device

    @property
    def backend(self) -> str:
        return backend_name(self.xp)

    @property
    def n_features_in(self) -> int:
        return self._ref().p_in

    def parameters(self) -> dict[str, Array]:
        return {key: getattr(layer, attr) for key, layer, attr in self._slots}

    def gradients(self) -> dict[str, Array]:
        try:
            return {key: layer.gradients()[attr] for key, layer, attr in self._slots}
        except KeyError:
            raise RuntimeError(f"{self!r}.gradients() called before backward()") from None

    def set_parameters(self, params: Mapping[str, Array], *, check: bool = True) -> None:
        if not check:  # the optimizers' functional path: values known to fit
            for key, layer, attr in self._slots:
                setattr(layer, attr, params[key])
            return
        expected = self.parameters()
        if set(params) != set(expected):
            missing = sorted(set(expected) - set(params))
            extra = sorted(set(params) - set(expected))
            raise KeyError(f"{self!r}.set_parameters(): missing {missing}, unexpected {extra}")
        per_layer: dict[int, dict[str, Array]] = {}
        for key, value in params.items():
            position, _, name = key.partition(".")
            per_layer.setdefault(int(position), {})[name] = value
        for index, values in per_layer.items():
            self.layers[index].set_parameters(values)

    def _check_input(self, x: Array) -> None:
        if self._linears:
            if self._first is not None:
                self._first._check_input(x)
            else:
                ref = self._ref()
                check_array(x, xp=ref.xp, dtype=ref.dtype, dev=ref.device, who=repr(self))
        else:
            namespace_of(x)

    def _check_upstream(self, dy: Array) -> None:
        if self.layers:
            self.layers[-1]._check_upstream(dy)

    def _forward(self, x: Array, cache: bool) -> Array:
        for layer in self.layers:
            x = layer._forward(x, cache)
        return x

    def _backward(self, dy: Array, input_grad: bool) -> Array | None:
        last = len(self.layers) - 1
        for i in range(last, -1, -1):
            # The first layer's dx is work only when the caller wants dL/dx.
            dy = self.layers[i]._backward(dy, input_grad or i > 0)
        return dy


def _slot(layer: Module, key: str) -> tuple[Module, str]:
    """The leaf layer and attribute holding parameter ``key`` of ``layer`` (``"1.weight"``)."""
    if isinstance(layer, Sequential):
        for k, leaf, attr in layer._slots:
            if k == key:
                return leaf, attr
    return layer, key


def _make_activation(activation: str | Callable[[], Module]) -> Module:
    if callable(activation) and not isinstance(activation, str):
        layer = activation()
        if not isinstance(layer, Module):
            raise TypeError(f"activation factory must return a Module, got {type(layer).__name__}")
        return layer
    try:
        return ACTIVATIONS[activation]()
    except KeyError:
        raise ValueError(
            f"unknown activation {activation!r}; expected one of {', '.join(ACTIVATIONS)}"
        ) from None


class MLP(Sequential):
    """Linear, activation, Linear, activation, ..., Linear: the last layer outputs logits.

    ``sizes`` lists the widths from input to output, e.g. ``[30, 16, 8, 1]``. One ``rng`` draws
    every layer's weights in order, so a seed gives the same model on every backend.
    """

    def __init__(
        self,
        sizes: Iterable[int],
        activation: str | Callable[[], Module] = "relu",
        bias: bool = True,
        rng: _init.RNGLike = None,
        backend: str | ModuleType = "numpy",
        device: Any = None,
        dtype: Any = None,
        init: str | _init.Initializer = "normal",
    ) -> None:
        self.sizes = [int(s) for s in sizes]
        if len(self.sizes) < 2:
            raise ValueError(f"MLP needs at least an input and an output size, got {self.sizes}")
        self.activation = activation
        self.init = init
        generator = _init.as_generator(rng)
        layers: list[Module] = []
        for i, (p_in, p_out) in enumerate(zip(self.sizes[:-1], self.sizes[1:], strict=True)):
            if i:
                layers.append(_make_activation(activation))
            layers.append(
                Linear(
                    p_in,
                    p_out,
                    bias=bias,
                    rng=generator,
                    backend=backend,
                    device=device,
                    dtype=dtype,
                    init=init,
                )
            )
        super().__init__(*layers)

    def config(self) -> dict[str, Any]:
        if not isinstance(self.activation, str):  # a custom factory: describe the layers instead
            return super().config()
        return {
            "type": "MLP",
            "sizes": self.sizes,
            "activation": self.activation,
            "bias": self._ref().bias is not None,
        }


def from_config(config: Mapping[str, Any], **kwargs: Any) -> Module:
    """Rebuild a layer or model from :meth:`Module.config` (``kwargs``: backend, device, dtype)."""
    kind = config.get("type")
    if kind == "Sequential":
        return Sequential(*(from_config(c, **kwargs) for c in config["layers"]))
    if kind == "MLP":
        return MLP(config["sizes"], config["activation"], bool(config["bias"]), rng=0, **kwargs)
    if kind == "Linear":
        return Linear(config["p_in"], config["p_out"], bias=bool(config["bias"]), **kwargs)
    if kind == "LeakyReLU":
        return LeakyReLU(float(config["negative_slope"]))
    by_class = {cls.__name__: cls for cls in ACTIVATIONS.values()}
    if kind in by_class:
        return by_class[kind]()
    raise ValueError(f"unknown layer type {kind!r} in config")
