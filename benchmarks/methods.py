"""What the benchmark times: one training step of portable_mlp and of each reference.

A step is forward, loss, backward and a plain SGD update (lr=0.01, no momentum). Every method
is a :class:`Method`: a step closure, the placement its arrays live on and what to wait for.
portable_mlp's methods are built from a :class:`~portable_mlp.Placement` that the backend table
finds (:func:`find_placement`); the references (PyTorch eager, ``jax.jit``, scikit-learn, a
hand-written NumPy loop, the GEMM floor) import their own library, as a user of it would, but
take their device, dtype, host transfer and sync from a placement of that library too.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

import portable_mlp as pm
from portable_mlp._backend import TABLE, BackendError, Placement

LR = 0.01
PM = "portable_mlp"
CAPTURED = "portable_mlp captured"  # pm.compile_step, where this build has it
EAGER = "torch eager"
SKLEARN = "sklearn"
JIT = "jax.jit"
LOOP = "numpy loop"
FLOOR = "GEMM floor"
METHOD_ORDER = (PM, CAPTURED, EAGER, SKLEARN, JIT, LOOP, FLOOR)


@dataclass(frozen=True)
class Size:
    """A benchmark problem: batch ``n``, layer ``widths``, loss, and how long to time it."""

    name: str
    n: int
    widths: tuple[int, ...]
    loss: str  # "bce" (BCE with logits, 0/1 targets (n, 1)) or "ce" (cross-entropy, labels (n,))
    rounds: int  # timed blocks per method; fewer where a step is slow
    gpu_only: bool = False

    @property
    def layers(self) -> list[tuple[int, int]]:
        return list(zip(self.widths[:-1], self.widths[1:], strict=True))


SIZES = {
    "S": Size("S", 64, (30, 16, 8, 1), "bce", rounds=40),  # Python overhead
    "M": Size("M", 256, (784, 256, 256, 10), "ce", rounds=25),
    "L": Size("L", 1024, (1024, 1024, 1024, 1), "bce", rounds=9),  # matrix products
    "XL": Size("XL", 8192, (4096, 4096, 4096, 10), "ce", rounds=15, gpu_only=True),
}


@dataclass
class Method:
    """One timed thing: a step closure, where its arrays live and what its sync waits for."""

    size: str
    device: str  # the device kind results are compared within: "cpu" or "cuda"
    placement: Placement  # backend, device and dtype of the method's arrays
    method: str
    step: Callable[[], Any]
    # The arrays whose computation a sync waits for, given the step's result; by default the
    # result alone (a backend with queued work waits for the whole device anyway).
    waits: Callable[[Any], tuple[Any, ...]] = lambda value: (value,)
    block: int = 1
    times: list[float] = field(default_factory=list)  # seconds per step, one per timed block

    @property
    def backend(self) -> str:
        return self.placement.name

    @property
    def dtype(self) -> str:
        return self.placement.dtype_name

    def sync(self, value: Any) -> None:
        for x in self.waits(value):
            self.placement.sync(x)


# ---------------------------------------------------------------------------- placements
# DLPack's device types (the array API's __dlpack_device__): how a placement says where it is.
_DLPACK_KINDS = {1: "cpu", 2: "cuda"}


def device_kind(p: Placement) -> str | None:
    """``"cpu"`` or ``"cuda"``: where a placement's arrays live, as DLPack reports it."""
    return _DLPACK_KINDS.get(int(p.zeros((1,)).__dlpack_device__()[0]))


@functools.cache
def find_placement(backend: str, kind: str, dtype: str) -> Placement | None:
    """A placement of ``backend`` on a device of ``kind`` (``"cpu"``, ``"cuda"``), or None.

    The kind itself is tried as a device spelling first (JAX lists only its default platform's
    devices), then every device the table lists, the default first.
    """
    entry = TABLE[backend]
    if not entry.installed():
        return None
    try:
        specs = [kind, *entry.devices()]
    except Exception:  # a library whose driver is missing cannot list its devices
        specs = [kind]
    for spec in specs:
        try:
            p = pm.placement(backend, spec, dtype)
        except BackendError:
            continue
        if device_kind(p) == kind:
            return p
    return None


def backends_on(kind: str) -> list[str]:
    """The table's backends that have a device of ``kind`` here, in the table's order."""
    return [b for b in TABLE if find_placement(b, kind, "float32") is not None]


def full_precision_matmuls(kind: str) -> None:
    """Hold every method to the same float32 arithmetic: torch and CuPy multiply float32
    matrices in full float32 by default, JAX in TF32 on recent GPUs."""
    if kind == "cuda" and find_placement("jax", kind, "float32") is not None:
        importlib.import_module("jax").config.update("jax_default_matmul_precision", "highest")


# ---------------------------------------------------------------------------- data and models
def host_data(size: Size, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Float64 inputs (n, p) and targets: 0/1 floats (n, 1) for BCE, int64 labels (n,) for CE."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(size.n, size.widths[0]))
    if size.loss == "bce":
        return x, rng.integers(0, 2, size=(size.n, 1)).astype(np.float64)
    return x, rng.integers(0, size.widths[-1], size=size.n)


def build_pm(size: Size, p: Placement) -> tuple[Any, Any, Any, Any, Any]:
    """A portable_mlp model, loss, optimizer and the batch moved onto ``p`` once."""
    model = pm.MLP(size.widths, "relu", rng=0, placement=p)
    loss = pm.BCEWithLogitsLoss() if size.loss == "bce" else pm.CrossEntropyLoss()
    x, y = host_data(size)
    return model, loss, pm.SGD(model, lr=LR), p.asarray(x), p.asarray(y)


def _waits_for_update(model: Any) -> Callable[[Any], tuple[Any, ...]]:
    """The loss and, where arrays are immutable (JAX), the new parameters the update made:
    waiting for the loss alone would not wait for them."""
    if model.placement.mutable:
        return lambda value: (value,)
    return lambda value: (value, *model.parameters().values())


def pm_method(size: Size, p: Placement, kind: str) -> Method:
    """``pm.train_step``, the eager step."""
    model, loss, opt, x, y = build_pm(size, p)
    return Method(
        size.name,
        kind,
        p,
        PM,
        step=lambda: pm.train_step(model, loss, opt, x, y),
        waits=_waits_for_update(model),
    )


def captured_available() -> bool:
    """Whether this build of portable_mlp has the captured step (``pm.compile_step``)."""
    return hasattr(pm, "compile_step")


def captured_method(size: Size, p: Placement, kind: str) -> Method:
    """``pm.compile_step(model, loss, optimizer)``: the same step, captured once and replayed.
    Capture (tracing, graph recording) happens in the warm-up steps, before timing."""
    model, loss, opt, x, y = build_pm(size, p)
    step = pm.compile_step(model, loss, opt)
    return Method(
        size.name, kind, p, CAPTURED, step=lambda: step(x, y), waits=_waits_for_update(model)
    )


# ---------------------------------------------------------------------------- references
def torch_eager_method(size: Size, p: Placement, kind: str) -> Method:
    """``nn.Linear`` layers, autograd and ``torch.optim.SGD`` on the torch placement ``p``."""
    import torch

    torch.manual_seed(0)
    layers: list[torch.nn.Module] = []
    for i, (p_in, p_out) in enumerate(size.layers):
        if i:
            layers.append(torch.nn.ReLU())
        layers.append(torch.nn.Linear(p_in, p_out))
    net = torch.nn.Sequential(*layers).to(device=p.device, dtype=p.dtype)
    loss_fn = torch.nn.BCEWithLogitsLoss() if size.loss == "bce" else torch.nn.CrossEntropyLoss()
    opt = torch.optim.SGD(net.parameters(), lr=LR)
    xh, yh = host_data(size)
    x, y = p.asarray(xh), p.asarray(yh)  # CE labels stay int64

    def step() -> Any:
        opt.zero_grad(set_to_none=True)
        value = loss_fn(net(x), y)
        value.backward()
        opt.step()
        return value

    return Method(size.name, kind, p, EAGER, step)


def jax_jit_method(size: Size, p: Placement, kind: str) -> Method:
    """``jax.jit`` of a value-and-grad step with donated parameters, on the JAX placement ``p``."""
    import jax
    import jax.numpy as jnp

    rng = np.random.default_rng(0)
    params = [
        (p.asarray(rng.normal(size=(p_in, p_out)) / math.sqrt(p_in)), p.zeros((p_out,)))
        for p_in, p_out in size.layers
    ]
    xh, yh = host_data(size)
    x, y = p.asarray(xh), p.asarray(yh)  # CE labels: JAX's default integer (int32)

    def loss_fn(params: Any, x: Any, y: Any) -> Any:
        a = x
        for i, (W, b) in enumerate(params):
            a = a @ W + b
            if i < len(params) - 1:
                a = jax.nn.relu(a)
        if size.loss == "bce":
            return jnp.mean(jnp.maximum(a, 0) - a * y + jnp.log1p(jnp.exp(-jnp.abs(a))))
        logp = jax.nn.log_softmax(a)
        return -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=1))

    def update(params: Any, x: Any, y: Any) -> tuple[Any, Any]:
        value, grads = jax.value_and_grad(loss_fn)(params, x, y)
        return jax.tree_util.tree_map(lambda q, g: q - LR * g, params, grads), value

    # Donating the parameters lets XLA update them in place, as the other methods do.
    compiled = jax.jit(update, donate_argnums=0)

    def step() -> Any:
        nonlocal params
        params, value = compiled(params, x, y)
        return value

    return Method(
        size.name,
        kind,
        p,
        JIT,
        step,
        waits=lambda value: (value, *jax.tree_util.tree_leaves(params)),
    )


def sklearn_method(size: Size, p: Placement, kind: str) -> Method:
    """``MLPClassifier.partial_fit`` on one batch (host NumPy; ``p`` is NumPy's placement)."""
    from sklearn.neural_network import MLPClassifier

    clf = MLPClassifier(
        hidden_layer_sizes=size.widths[1:-1],
        activation="relu",
        solver="sgd",
        momentum=0.0,
        learning_rate_init=LR,
        alpha=0.0,
        batch_size=size.n,
        shuffle=False,
        random_state=0,
    )
    xh, yh = host_data(size)
    x = xh.astype(p.dtype_name)  # scikit-learn keeps float32 data float32
    labels = yh.ravel().astype(np.int64)
    n_classes = 2 if size.loss == "bce" else size.widths[-1]  # binary: one logistic output
    clf.partial_fit(x, labels, classes=np.arange(n_classes))  # the first call sets up the net
    step = functools.partial(clf.partial_fit, x, labels)
    return Method(size.name, kind, p, SKLEARN, step, waits=lambda _: ())  # done on return


def numpy_loop_method(size: Size, p: Placement, kind: str) -> Method:
    """The same step hand-written in plain NumPy, as a notebook would: the overhead yardstick.

    Same math as portable_mlp (ReLU MLP, stable BCE with logits or log-softmax cross-entropy,
    plain SGD), no namespace, no checks, no layers. ``p`` is NumPy's placement (host arrays).
    """
    rng = np.random.default_rng(0)
    Ws = [p.asarray(rng.normal(size=(a, b)) / np.sqrt(a)) for a, b in size.layers]
    bs = [p.zeros((b,)) for _, b in size.layers]
    xh, yh = host_data(size)
    x = p.asarray(xh)
    y = p.asarray(yh if size.loss == "bce" else np.eye(size.widths[-1])[yh])
    n, last = size.n, len(Ws) - 1

    def step() -> Any:
        acts = [x]
        for i, (W, b) in enumerate(zip(Ws, bs, strict=True)):
            z = acts[-1] @ W + b
            acts.append(np.maximum(z, 0) if i < last else z)
        z = acts[-1]
        if size.loss == "bce":
            e = np.exp(-np.abs(z))
            value = np.mean(np.maximum(z, 0) - z * y + np.log1p(e))
            dz = (np.where(z >= 0, 1.0, e) / (1 + e) - y) / z.size
        else:
            s = z - z.max(axis=1, keepdims=True)
            logp = s - np.log(np.exp(s).sum(axis=1, keepdims=True))
            value = -(y * logp).sum() / n
            dz = (np.exp(logp) - y) / n
        for i in range(last, -1, -1):
            dW, db = acts[i].T @ dz, dz.sum(axis=0)
            if i:
                dz = (dz @ Ws[i].T) * (acts[i] > 0)
            Ws[i] -= LR * dW
            bs[i] -= LR * db
        return value

    return Method(size.name, kind, p, LOOP, step)


def out_matmul(p: Placement) -> Callable[..., Any] | None:
    """The backend library's own ``matmul`` that writes into a preallocated ``out=`` buffer, or
    None where there is none (immutable arrays; a library whose matmul takes no ``out=``)."""
    if not p.mutable:
        return None
    mm: Callable[..., Any] = importlib.import_module(p.backend.module).matmul
    a = p.zeros((1, 1))
    try:
        mm(a, a, out=p.zeros((1, 1)))
    except TypeError:
        return None
    return mm


def gemm_floor_method(size: Size, p: Placement, kind: str) -> Method:
    """Only the step's matrix products, into preallocated buffers: per layer the forward x W,
    dW = x^T dy and dX = dy W^T, except the first layer's dX, which no training step needs."""
    mm = out_matmul(p)
    if mm is None:
        raise BackendError(f"no matmul into a buffer for {p.describe()}")
    rng = np.random.default_rng(0)
    n = size.n
    products = []
    for i, (p_in, p_out) in enumerate(size.layers):
        x, W, dy = (p.asarray(rng.normal(size=s)) for s in ((n, p_in), (p_in, p_out), (n, p_out)))
        products.append((x, W, p.zeros((n, p_out))))
        products.append((x.T, dy, p.zeros((p_in, p_out))))
        if i:
            products.append((dy, W.T, p.zeros((n, p_in))))

    def step() -> None:
        for a, b, out in products:
            mm(a, b, out=out)

    # The step returns None: the sync waits for all of the device's queued work.
    return Method(size.name, kind, p, FLOOR, step)


# ---------------------------------------------------------------------------- what runs where
Factory = Callable[[], Method]


def planned(size: Size, backends: list[str], kind: str) -> list[tuple[str, str, str, Factory]]:
    """(dtype, backend, method, factory) of every method of one size, in table order.

    portable_mlp (eager, and captured where this build has it) and the floors run on the chosen
    backends; the references (torch eager, scikit-learn and the NumPy loop on the CPU, jax.jit)
    run wherever their library has a device of this kind. float64 is timed for NumPy only (and
    the references and floors it is compared with).
    """
    dtypes = ["float32"] + (["float64"] if kind == "cpu" and "numpy" in backends else [])
    plan: list[tuple[str, str, str, Factory]] = []

    def add(backend: str, dtype: str, method: str, make: Callable[..., Method]) -> None:
        p = find_placement(backend, kind, dtype)
        if p is not None:
            plan.append((dtype, backend, method, functools.partial(make, size, p, kind)))

    for dtype in dtypes:
        for b in backends if dtype == "float32" else ["numpy"]:
            add(b, dtype, PM, pm_method)
            if captured_available():
                add(b, dtype, CAPTURED, captured_method)
        add("torch", dtype, EAGER, torch_eager_method)
        if kind == "cpu" and importlib.util.find_spec("sklearn") is not None:
            add("numpy", dtype, SKLEARN, sklearn_method)
        if kind == "cpu" and "numpy" in backends:
            add("numpy", dtype, LOOP, numpy_loop_method)
        if dtype == "float32":
            add("jax", dtype, JIT, jax_jit_method)
        for b in backends:
            p = find_placement(b, kind, dtype)
            if p is not None and out_matmul(p) is not None:
                add(b, dtype, FLOOR, gemm_floor_method)
    return plan
