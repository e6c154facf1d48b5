"""The captured training step: one whole step handed to the backend once, then replayed.

``step = compile_step(model, loss, optimizer, alpha=...)`` gives ``step(x, y) -> loss`` that does
what ``train_step(model, loss, optimizer, x, y, alpha=alpha)`` does. How it is captured is the
backend's choice (its table entry's ``capture_step`` in ``_backend``):

- JAX: ``jax.jit`` of the step as a pure function of (parameters, optimizer state, learning
  rate, step count, x, y), parameters and state donated; traced once per batch shape.
- torch and CuPy on a CUDA device: a CUDA graph over static input buffers, the learning rate and
  step count in device scalars; captured once per batch shape.
- the others (NumPy, array-api-strict, torch on the CPU): the eager step, its calls looked up once
  (torch on the CPU runs a step of small matrix products on one intra-op thread).

There is one code path for the math: a capture runs the eager layers, loss and optimizer on
traced or captured arrays swapped into them (:class:`StepPlan`). This module never imports a
backend; the compilers and graph APIs are called from ``_backend``.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from ._backend import Array, namespace_of, place_key
from .layers import Linear, Module
from .losses import Loss
from .optim import Optimizer, l2_term

#: ``step(x, y) -> loss``: what :func:`compile_step` returns.
Step = Callable[[Array, Array], Array]

#: (key, leaf layer, attribute) of each parameter of a model, in its order.
Slots = list[tuple[str, Module, str]]

#: ``capture(body, warmup) -> (replay, outputs)``: a backend's CUDA-graph capture of ``body``
#: after running ``warmup`` on a side stream; ``replay()`` reruns the captured work.
GraphCapture = Callable[[Callable[[], Any], Callable[[], None]], tuple[Callable[[], None], Any]]


def compile_step(model: Module, loss: Loss, optimizer: Optimizer, *, alpha: float = 0.0) -> Step:
    """The training step of ``model``, ``loss`` and ``optimizer`` captured by the backend.

    ``step(x, y)`` does what ``train_step(model, loss, optimizer, x, y, alpha=alpha)`` does and
    returns the batch loss as a 0-d array, without reading it back. Afterwards the parameters,
    gradients and optimizer state are those the eager step leaves (they may be views of the
    captured buffers), so ``step`` and ``train_step`` can be mixed freely; a schedule may change
    ``optimizer.lr`` between calls. Other settings of the optimizer and loss (momentum, betas,
    weight decay, ``max_grad_norm``, the loss's reduction) may change too: the step is then
    captured anew (:meth:`StepPlan.settings`). The model's layers and their settings (an
    activation's slope) are baked into a compiled or graphed step: after changing them, build a
    new step.
    Inputs are checked as the eager step checks them.

    The optimizer's state is made now (zeros, as its first step would make it). On JAX the
    parameters and state are donated: arrays taken from ``model.parameters()`` before a call are
    invalid after it (take copies to keep them).
    """
    return StepPlan(model, loss, optimizer, alpha).capture()


def predict_function(
    model: Module, then: Callable[[Array, Any], Array] | None = None
) -> Callable[[Array], Array]:
    """``x -> then(model(x), placement)`` for prediction (nothing kept for a backward), ``x``
    already checked: one compiled call where the backend compiles functions (its table entry's
    ``capture_function``; JAX, where each eager operation would compile for every new batch
    shape), else the eager calls. ``then`` maps the outputs row by row (probabilities,
    labels); pass a module-level function: the function made for it is kept on the model
    (``_predictions``, which copies and pickles leave out) and given again for the same
    ``then``. The compiled call takes the parameters as they are at each call."""
    made: dict[Any, Callable[[Array], Array]] = model.__dict__.setdefault("_predictions", {})
    if then in made:
        return made[then]
    where: Any = model.placement  # type: ignore[attr-defined]
    slots = _slots(model)

    def outputs(x: Array) -> Array:
        z = model._forward(x, False)
        return z if then is None else then(z, where)

    def predict(params: list[Array], x: Array) -> Array:
        with _params_in(slots, params):
            return outputs(x)

    compiled = where.backend.capture_function(predict)
    if compiled is None:
        made[then] = outputs
    else:
        made[then] = lambda x: compiled(_params(slots), x)
    return made[then]


def _slots(model: Module) -> Slots:
    """(key, leaf layer, attribute) of every parameter of ``model``, in its order."""
    return list(getattr(model, "_slots", None) or [(k, model, k) for k in model.parameters()])


def _params(slots: Slots) -> list[Array]:
    return [getattr(leaf, attr) for _, leaf, attr in slots]


def _set_params(slots: Slots, params: list[Array]) -> None:
    for (_, leaf, attr), p in zip(slots, params, strict=True):
        setattr(leaf, attr, p)


@contextmanager
def _params_in(slots: Slots, params: list[Array]) -> Iterator[None]:
    """Run with ``params`` (in slot order) in the model's layers, for a tracing compiler; the
    model's own arrays are put back afterwards, whatever happens."""
    saved = _params(slots)
    _set_params(slots, params)
    try:
        yield
    finally:
        _set_params(slots, saved)


def backward_and_update(
    model: Module, loss: Loss, optimizer: Optimizer, value: Array, rows: int, alpha: float
) -> Array:
    """The second half of every training step, eager (``train_step``) or captured: backward
    from the loss whose forward gave ``value`` (no dL/dx), scikit-learn's L2 term over ``rows``,
    the optimizer's update. Returns the loss with the L2 term."""
    model._backward(loss.backward(), False)
    params, grads = model.parameters(), model.gradients()
    if alpha:
        scale = float(alpha) / loss._l2_divisor(rows)
        grads, penalty = l2_term(params, grads, scale, xp=optimizer.xp)
        if penalty is not None:
            value = value + (0.5 * scale) * penalty
    optimizer.update(params, grads)  # the gradients are the model's own: no key check needed
    return value


class StepPlan:
    """The eager step of one model, loss, optimizer and L2 weight, with its calls looked up once.

    :meth:`check` refuses inputs as the eager step does; :meth:`run` is the step on checked
    inputs. :meth:`eager`, :meth:`functional` and :meth:`graphed` make the callable a backend's
    ``capture_step`` returns.
    """

    def __init__(self, model: Module, loss: Loss, optimizer: Optimizer, alpha: float) -> None:
        for what, value, kind in (
            ("model", model, Module),
            ("loss", loss, Loss),
            ("optimizer", optimizer, Optimizer),
        ):
            if not isinstance(value, kind):
                raise TypeError(
                    f"compile_step() expected {what} as a {kind.__name__}, got "
                    f"{type(value).__name__}"
                )
        if optimizer.model is not model:
            raise ValueError(
                f"compile_step(): the optimizer updates {optimizer.model!r}, not {model!r}"
            )
        self.model, self.loss, self.optimizer = model, loss, optimizer
        self.alpha = float(alpha)
        self.placement = optimizer.placement
        self.xp = self.placement.xp
        # (key, leaf layer, attribute) of every parameter, in the model's order.
        self.slots: Slots = _slots(model)
        # Each parameter-holding layer, with the (attribute, slot index) of its gradients.
        leaves: dict[int, tuple[Module, list[tuple[str, int]]]] = {}
        for i, (_, leaf, attr) in enumerate(self.slots):
            leaves.setdefault(id(leaf), (leaf, []))[1].append((attr, i))
        self._leaves = list(leaves.values())
        # What a batch that passes the full checks looks like (see check()).
        linears = [leaf for _, leaf, _ in self.slots if isinstance(leaf, Linear)]
        self._features = linears[0].p_in if linears else None
        # Multiply-adds per batch row of the largest matrix product (a backend may pick its
        # threading by the size of the work).
        self.widest = max((m.p_in * m.p_out for m in linears), default=0)
        # The parameters' shapes and count; whether every layer can take packed gradients.
        self.shapes = [tuple(p.shape) for p in self.params()]
        self.size = sum(math.prod(s) for s in self.shapes)
        self.packable = all(isinstance(leaf, Linear) for leaf, _ in self._leaves)
        self._split: Callable[[Array], list[Array]] | None = None
        # (type, dtype and place_key of x; type and place_key of y) of the last batch that
        # passed the full checks: a batch like it passes (see check()).
        self._accepted: tuple[Any, ...] | None = None
        optimizer.init_state()
        self._settings = self.settings()  # those the optimizer's state was made for

    def settings(self) -> tuple[Any, ...]:
        """The Python values the step reads besides the arrays: the optimizer's (momentum,
        betas, weight decay, clipping norm, ...; not the learning rate and step count, which a
        capture takes as arrays) and the loss's. A capture bakes them in, so captures are keyed
        by them: one changed between steps is honoured by capturing anew."""
        return self.optimizer._settings(), self.loss._settings()

    def current_settings(self) -> tuple[Any, ...]:
        """:meth:`settings`, after making any optimizer state a changed setting needs (SGD's
        momentum buffers once momentum is set), so the next capture has its final structure."""
        settings = self.settings()
        if settings != self._settings:
            self.optimizer.init_state()
            self._settings = settings
        return settings

    def capture(self) -> Step:
        """The step captured as the backend captures it (its table entry's ``capture_step``)."""
        step: Step = self.placement.backend.capture_step(self)
        return step

    # ---- the eager step
    def check(self, x: Array, y: Array) -> None:
        """The eager step's input checks, before any work: the same errors for a batch of
        another backend, dtype, device or feature count (target shapes are checked in
        :meth:`run`, where the logits' shape is known)."""
        seen = self._accepted
        if (
            seen is not None
            and type(x) is seen[0]
            and x.ndim == 2
            and x.shape[1] == self._features
            and x.dtype == seen[1]
            and place_key(x) == seen[2]
            and type(y) is seen[3]
            and place_key(y) == seen[4]
        ):
            return  # placed as a batch the full checks below accepted, tested in fewer calls
        self.model._check_input(x)
        namespace_of(x, y)
        # x stands in for the logits: same namespace, dtype and device, and 2-d once checked.
        self.loss._check_logits(x, y, self.xp)
        self._accepted = (type(x), x.dtype, place_key(x), type(y), place_key(y))

    def run(self, x: Array, y: Array) -> Array:
        """The step on checked inputs: forward, loss, backward, L2 term, update; the loss."""
        model, loss, xp = self.model, self.loss, self.xp
        z = model._forward(x, True)
        value = loss._forward(z, loss._prepare_target(z, y, xp), xp)
        return backward_and_update(model, loss, self.optimizer, value, x.shape[0], self.alpha)

    def eager(self) -> Step:
        """The step without capture."""
        check, run = self.check, self.run

        def step(x: Array, y: Array) -> Array:
            check(x, y)
            return run(x, y)

        return step

    # ---- the values a capture swaps
    def params(self) -> list[Array]:
        return _params(self.slots)

    def set_params(self, params: list[Array]) -> None:
        _set_params(self.slots, params)

    def params_in(self, params: list[Array]) -> contextlib.AbstractContextManager[None]:
        """Run with ``params`` in the model (its own put back afterwards, whatever happens)."""
        return _params_in(self.slots, params)

    def grads(self) -> list[Array]:
        return [leaf.gradients()[attr] for _, leaf, attr in self.slots]

    def set_grads(self, grads: list[Array], pending: Any = None) -> None:
        """Leave ``grads`` (in slot order) where a backward would: each layer's ``grads``
        (``pending``: only in the layers still waiting for it to be unpacked; a layer that had
        a backward since keeps that one's)."""
        for leaf, attrs in self._leaves:
            if pending is None or leaf._pending is pending:  # type: ignore[attr-defined]
                leaf.grads = {attr: grads[i] for attr, i in attrs}  # type: ignore[attr-defined]

    @contextmanager
    def swapped(self, lr: Any, steps: Any) -> Iterator[None]:
        """Run with the optimizer's learning rate and step count replaced (by arrays)."""
        opt = self.optimizer
        saved = opt.lr, opt.steps
        opt.lr, opt.steps = lr, steps
        try:
            yield
        finally:
            opt.lr, opt.steps = saved

    # ---- JAX: the step as a pure function
    def captured_step(
        self,
        params: list[Array],
        state: Any,
        lr: Array,
        steps: Array,
        x: Array,
        y: Array,
        *,
        settings: Any = None,
    ) -> tuple[list[Array], Any, Array, list[Array], Array]:
        """The step as a pure function, for a tracing compiler: (params, optimizer state,
        learning rate, step count, x, y) -> (new params, new state, new count, gradients, loss).
        ``settings`` (:meth:`settings`, static) only keys the compiler's cache: the trace reads
        the optimizer's and loss's current values.

        The values are swapped into the model and optimizer for the eager code to run on, and
        the concrete arrays are put back afterwards, whatever happens.
        """
        opt = self.optimizer
        saved, opt.state = opt.state, state
        try:
            with self.params_in(params), self.swapped(lr, steps):
                value = self.run(x, y)
                return self.params(), opt.state, opt.steps, self.grads(), value
        finally:
            opt.state = saved

    def packed_step(
        self, *args: Any, settings: Any = None
    ) -> tuple[list[Array], Any, Array, Array, Array]:
        """:meth:`captured_step` (the same arguments) with the gradients packed into one 1-d
        array, in slot order (:meth:`unpacked` splits it)."""
        params, state, count, grads, value = self.captured_step(*args, settings=settings)
        xp = self.xp
        return params, state, count, xp.concat([xp.reshape(g, (-1,)) for g in grads]), value

    def unpacked(self, flat: Array) -> list[Array]:
        """The gradients :meth:`packed_step` packed into ``flat``, in slot order (one compiled
        call where the backend compiles functions)."""
        if self._split is None:
            xp, shapes = self.xp, self.shapes

            def split(flat: Array) -> list[Array]:
                out, at = [], 0
                for shape in shapes:
                    n = math.prod(shape)
                    out.append(xp.reshape(flat[at : at + n], shape))
                    at += n
                return out

            self._split = self.placement.backend.capture_function(split) or split
        return self._split(flat)

    def functional(self, compiled: Callable[..., Any], *, packed: bool = False) -> Step:
        """The step calling ``compiled``, a compiled :meth:`captured_step` (``packed``:
        :meth:`packed_step`) that may take its parameters, state and count as donations; its
        outputs become the model's parameters and gradients (packed: unpacked when first read,
        :class:`_Packed`) and the optimizer's state."""
        check, opt = self.check, self.optimizer
        scalars = _Scalars(self, in_place=False)

        def step(x: Array, y: Array) -> Array:
            check(x, y)
            settings = self.current_settings()
            lr, steps = scalars.current()
            params, state, count, grads, value = compiled(
                self.params(), opt.state, lr, steps, x, y, settings=settings
            )
            self.set_params(params)
            opt.state = state
            scalars.stepped(count)
            if packed:
                pending = _Packed(self, grads)
                for leaf, _ in self._leaves:
                    leaf._leave_packed(pending)  # type: ignore[attr-defined]
            else:
                self.set_grads(grads)
            return value

        return step

    # ---- CUDA graphs: the step replayed over static buffers
    def graphed(self, capture: GraphCapture) -> Step:
        """The step as CUDA graphs made by ``capture``, one per batch shape (:class:`_Graphed`)."""
        return _Graphed(self, capture)


class _Packed:
    """The gradients of one captured step, packed into one array (a compiled call's outputs
    each cost more than the copy, for a small model); :meth:`unpack` gives every layer its own
    (``grads``), which a layer asks for when its gradients are first read."""

    __slots__ = ("flat", "plan")

    def __init__(self, plan: StepPlan, flat: Array) -> None:
        self.plan, self.flat = plan, flat

    def unpack(self) -> None:
        self.plan.set_grads(self.plan.unpacked(self.flat), pending=self)


class _Scalars:
    """The optimizer's learning rate and step count as device scalars of the parameters' dtype
    (``b ** t`` then keeps it), for a captured step: a new value is written from the host only
    when the host's differs from what the device holds (a schedule's new rate, eager steps in
    between), so a replay or compiled call needs no transfer."""

    def __init__(self, plan: StepPlan, *, in_place: bool) -> None:
        self.placement, self.optimizer, self.in_place = plan.placement, plan.optimizer, in_place
        self.lr, self.steps = self.placement.zeros(()), self.placement.zeros(())
        self.held: tuple[Any, Any] = (None, None)  # the host values the scalars hold

    def current(self) -> tuple[Array, Array]:
        """The scalars, holding the optimizer's learning rate and step count."""
        lr, steps = self.optimizer.lr, self.optimizer.steps
        if lr != self.held[0]:
            self.lr = self._put(self.lr, lr)
        if steps != self.held[1]:
            self.steps = self._put(self.steps, steps)
        self.held = (lr, steps)
        return self.lr, self.steps

    def stepped(self, steps: Array | None = None) -> None:
        """One step was taken: on the device (``steps``: the new count where it is a new
        array) and now on the host too."""
        if steps is not None:
            self.steps = steps
        self.optimizer.steps += 1
        self.held = (self.held[0], self.optimizer.steps)

    def forget(self) -> None:
        """The device values are unknown (a warm-up moved them): write both next time."""
        self.held = (None, None)

    def _put(self, a: Array, value: float) -> Array:
        if self.in_place:
            a[...] = value
            return a
        where = self.placement
        return where.xp.asarray(value, dtype=where.dtype, device=where.device)


class _Graph:
    """One captured step: its static inputs and outputs, and how to replay it."""

    def __init__(
        self, x: Array, y: Array, replay: Callable[[], None], value: Array, grads: list[Array]
    ) -> None:
        self.x, self.y, self.replay, self.value, self.grads = x, y, replay, value, grads


class _Graphed:
    """The step as CUDA graphs: one per batch shape over static x and y buffers, updating the
    parameters and optimizer state in place.

    The learning rate and step count live in device scalars (:class:`_Scalars`). Arrays the user
    rebinds (``set_parameters``, ``load_state_dict``) are copied into the captured ones
    before a replay, so the graphs always read and write the arrays they were captured with.
    A changed optimizer or loss setting (:meth:`StepPlan.settings`) drops the graphs.
    """

    def __init__(self, plan: StepPlan, capture: GraphCapture) -> None:
        self.plan, self.capture = plan, capture
        self.graphs: dict[tuple[Any, ...], _Graph] = {}
        self.scalars = _Scalars(plan, in_place=True)
        self.params = plan.params()
        self._hold_state(plan.current_settings())

    def _hold_state(self, settings: tuple[Any, ...]) -> None:
        """Capture for ``settings`` from now on, over the optimizer's state arrays as they are."""
        self.settings = settings
        opt = self.plan.optimizer
        self.state = [(key, name, a) for key, s in opt.state.items() for name, a in s.items()]

    def __call__(self, x: Array, y: Array) -> Array:
        plan = self.plan
        plan.check(x, y)
        settings = plan.current_settings()
        if settings != self.settings:  # the graphs baked in the old values
            self.graphs.clear()
            self._hold_state(settings)
        key = (tuple(x.shape), tuple(y.shape), y.dtype)
        graph = self.graphs.get(key)
        if graph is None:
            graph = self.graphs[key] = self._capture(x, y)
        self._adopt()
        graph.x[...] = x
        graph.y[...] = y
        self.scalars.current()
        graph.replay()
        self.scalars.stepped()  # the graph counted its step on the device too
        plan.set_grads(graph.grads)
        return plan.xp.asarray(graph.value, copy=True)  # the next replay overwrites value

    def _adopt(self) -> None:
        """Copy rebound parameters and state into the captured arrays, and rebind to those."""
        plan, opt = self.plan, self.plan.optimizer
        for (_, leaf, attr), p in zip(plan.slots, self.params, strict=True):
            current = getattr(leaf, attr)
            if current is not p:
                p[...] = current
                setattr(leaf, attr, p)
        for key, name, a in self.state:
            state = opt.state.setdefault(key, {})
            current = state.get(name)
            if current is not a:
                # No buffer (state emptied by load_state_dict): the first step's zeros.
                a[...] = 0.0 if current is None else current
                state[name] = a

    def _capture(self, x: Array, y: Array) -> _Graph:
        plan, xp, scalars = self.plan, self.plan.xp, self.scalars
        self._adopt()
        static_x, static_y = xp.asarray(x, copy=True), xp.asarray(y, copy=True)
        mutated = self.params + [a for _, _, a in self.state]

        def body() -> tuple[Array, list[Array]]:
            with plan.swapped(scalars.lr, scalars.steps):
                value = plan.run(static_x, static_y)
            return value, plan.grads()

        def warmup() -> None:
            # A real step (it loads kernels and libraries before the capture), then undone.
            saved = [xp.asarray(a, copy=True) for a in mutated]
            scalars.current()
            try:
                body()
            finally:
                for a, s in zip(mutated, saved, strict=True):
                    a[...] = s
                scalars.forget()  # the warm-up counted a step on the device

        replay, (value, grads) = self.capture(body, warmup)
        return _Graph(static_x, static_y, replay, value, grads)
