"""Models: layers chained in order, and the multilayer perceptron.

A model's forward runs its layers' forwards in order; its backward runs their backwards in
reverse. Its placement is its Linear layers' (they must agree), fixed when it is built.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from types import ModuleType
from typing import Any

from . import init as _init
from ._backend import Array, Placement, namespace_of, placement_arg
from .layers import ACTIVATIONS, LeakyReLU, Linear, Module, Placed


class Sequential(Placed, Module):
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
        leaves = [leaf for _, leaf, _ in self._slots if isinstance(leaf, Linear)]
        # the placement of its Linear layers (nested models included), fixed once built
        self._placement: Placement | None = leaves[0].placement if leaves else None

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
            elif layer.placement != ref.placement:
                raise ValueError(
                    f"Sequential layers disagree: {ref!r} is {ref.placement.describe()}, "
                    f"layer {i} {layer!r} is {layer.placement.describe()}"
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

    @property
    def n_features_in(self) -> int:
        for _, leaf, _ in self._slots:
            if isinstance(leaf, Linear):
                return leaf.p_in
        raise AttributeError(f"{self!r} has no Linear layer")

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
                self.placement.check(x, who=repr(self))
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
        placement: Placement | None = None,
    ) -> None:
        where = placement_arg(placement, backend, device, dtype)
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
                    init=init,
                    placement=where,
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
            "bias": self._linears[0][1].bias is not None,
        }


def from_config(config: Mapping[str, Any], **kwargs: Any) -> Module:
    """Rebuild a layer or model from :meth:`Module.config`.

    ``kwargs``: ``placement=``, or the ``backend=``, ``device=``, ``dtype=`` shorthands.
    """
    if "placement" not in kwargs:
        kwargs = {
            "placement": placement_arg(
                None,
                kwargs.pop("backend", "numpy"),
                kwargs.pop("device", None),
                kwargs.pop("dtype", None),
            ),
            **kwargs,
        }
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
