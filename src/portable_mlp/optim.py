"""Optimizers, learning-rate schedules and gradient clipping, written against the array API.

The update rules are those of ``torch.optim.SGD``, ``Adam`` and ``AdamW``. Optimizer state is
made with ``zeros_like`` of the parameters, so it lives on their device with their dtype.
Updates are in place where the backend's arrays are mutable (the parameter objects a user holds
see the change, as in PyTorch) and functional where they are not (JAX): then the new arrays are
handed back with ``model.set_parameters``. Step counts and bias corrections are Python numbers on
the host, so a step never reads a value back from the device. A captured step
(:func:`portable_mlp.compile_step`) swaps in arrays for the learning rate and step count instead:
the same formulas then run on the device, and a schedule never forces a recapture.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from types import ModuleType
from typing import Any

from ._backend import Array
from .layers import Module


def global_norm(grads: Mapping[str, Array], *, xp: ModuleType) -> Array:
    """The 2-norm of all gradients taken together, as a 0-d array (no host sync)."""
    total = None
    for g in grads.values():
        s = xp.sum(g * g)
        total = s if total is None else total + s
    if total is None:
        raise ValueError("global_norm() of no gradients")
    return xp.sqrt(total)


def clip_grad_norm(
    grads: Mapping[str, Array], max_norm: float, *, xp: ModuleType
) -> tuple[dict[str, Array], Array]:
    """Scale ``grads`` so their global norm is at most ``max_norm``, as
    ``torch.nn.utils.clip_grad_norm_`` does; returns the new gradients and the norm before.

    The scale is computed on the device (``min(1, max_norm / (norm + 1e-6))``), so clipping costs
    no host sync; the input gradients are not modified.
    """
    norm = global_norm(grads, xp=xp)
    ratio = max_norm / (norm + 1e-6)
    # Not minimum(ratio, 1.0): compat's torch wrapper turns the 1.0 into a tensor by a
    # host-to-device copy, which a CUDA graph cannot capture.
    scale = xp.minimum(ratio, xp.ones_like(ratio))
    return {k: g * scale for k, g in grads.items()}, norm


def l2_term(
    params: Mapping[str, Array], grads: Mapping[str, Array], scale: float, *, xp: ModuleType
) -> tuple[dict[str, Array], Array | None]:
    """scikit-learn's L2 term on the weights (keys ending in ``weight``; not the biases).

    Returns the gradients with ``scale * W`` added (a new dict; the inputs are left alone) and
    ``sum ||W||^2`` as a 0-d array (``None`` without weights): the loss gains ``scale / 2`` of it.
    """
    grads = dict(grads)
    penalty = None
    for key, W in params.items():
        if key.endswith("weight"):
            grads[key] = grads[key] + scale * W
            s = xp.sum(W * W)
            penalty = s if penalty is None else penalty + s
    return grads, penalty


class Optimizer:
    """Base class. ``step()`` reads ``model.gradients()`` and updates ``model.parameters()``."""

    def __init__(
        self, model: Module, lr: float, weight_decay: float, max_grad_norm: float | None
    ) -> None:
        if not lr > 0:
            raise ValueError(f"{type(self).__name__} lr must be > 0, got {lr!r}")
        if weight_decay < 0:
            raise ValueError(
                f"{type(self).__name__} weight_decay must be >= 0, got {weight_decay!r}"
            )
        if max_grad_norm is not None and not max_grad_norm > 0:
            raise ValueError(f"max_grad_norm must be > 0 or None, got {max_grad_norm!r}")
        params = model.parameters()
        if not params:
            raise ValueError(f"{model!r} has no parameters to optimize")
        self.model = model
        self.lr = float(lr)
        self.weight_decay = float(weight_decay)
        self.max_grad_norm = max_grad_norm
        self.placement = model.placement  # type: ignore[attr-defined]
        self.xp: ModuleType = self.placement.xp
        self.in_place = self.placement.mutable
        self.state: dict[str, dict[str, Array]] = {}
        self.steps = 0  # completed steps, a host int

    def __repr__(self) -> str:
        return f"{type(self).__name__}(lr={self.lr}, weight_decay={self.weight_decay})"

    # The namespace module does not pickle; the placement does, and gives it back.
    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "xp"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.xp = self.placement.xp

    def step(self, grads: Mapping[str, Array] | None = None) -> None:
        """One update from ``grads`` (default: ``model.gradients()``, same keys as parameters)."""
        params = self.model.parameters()
        grads = self.model.gradients() if grads is None else grads
        if grads.keys() != params.keys():
            raise KeyError(
                f"{type(self).__name__}.step() expected gradients for {list(params)}, "
                f"got {list(grads)}"
            )
        self.update(params, grads)

    def update(self, params: Mapping[str, Array], grads: Mapping[str, Array]) -> None:
        """:meth:`step` without its checks: clip, count, update ``params`` (the model's) from
        ``grads`` (the same keys)."""
        if self.max_grad_norm is not None:
            grads, _ = clip_grad_norm(grads, self.max_grad_norm, xp=self.xp)
        self.steps += 1
        self._apply(params, grads)

    def init_state(self) -> None:
        """Make now, as zeros, every state buffer the first step would make, so the state has
        its final structure before a step is captured (a changed structure retraces)."""
        names = self._state_names()
        if not names:
            return
        for key, p in self.model.parameters().items():
            state = self.state.setdefault(key, {})
            for name in names:
                if name not in state:
                    state[name] = self.placement.zeros(p.shape)

    def _state_names(self) -> tuple[str, ...]:
        """The names of the per-parameter state buffers."""
        return ()

    def _settings(self) -> tuple[Any, ...]:
        """The Python values an update reads besides ``lr`` and ``steps`` (which a captured
        step takes as arrays). A captured step bakes these in and is keyed by them, so changing
        one between steps captures anew; a subclass with settings of its own adds them."""
        return (self.weight_decay, self.max_grad_norm)

    def _apply(self, params: Mapping[str, Array], grads: Mapping[str, Array]) -> None:
        """Update every parameter; the portable form goes one parameter at a time."""
        new = {k: self._update(k, p, grads[k]) for k, p in params.items()}
        if not self.in_place:
            self.model.set_parameters(new, check=False)

    def _update(self, key: str, p: Array, g: Array) -> Array:
        """Return the updated ``p`` (updated in place when ``self.in_place``)."""
        raise NotImplementedError

    def _descend(self, p: Array, delta: Array) -> Array:
        """``p - delta``, in place where allowed."""
        if self.in_place:
            p -= delta
            return p
        return p - delta

    def _blend(self, buf: Array, beta: float, g: Array, weight: float) -> Array:
        """``beta * buf + weight * g``, in place where allowed."""
        if self.in_place:
            buf *= beta
            buf += weight * g
            return buf
        return beta * buf + weight * g

    # Snapshots for restoring a model after a failed step; copies, on the state's device.
    def state_dict(self) -> dict[str, Any]:
        copy = self.placement.copy
        return {
            "steps": self.steps,
            "lr": self.lr,
            "state": {k: {n: copy(a) for n, a in s.items()} for k, s in self.state.items()},
        }

    def load_state_dict(self, snapshot: Mapping[str, Any]) -> None:
        copy = self.placement.copy
        self.steps = int(snapshot["steps"])
        self.lr = float(snapshot["lr"])
        self.state = {k: {n: copy(a) for n, a in s.items()} for k, s in snapshot["state"].items()}


class SGD(Optimizer):
    """Stochastic gradient descent with optional momentum, Nesterov momentum and weight decay.

    As ``torch.optim.SGD`` (dampening 0): ``g += wd * p``; ``b = g`` on the first step, then
    ``b = momentum * b + g``; ``g = g + momentum * b`` (Nesterov) or ``g = b``; ``p -= lr * g``.
    """

    def __init__(
        self,
        model: Module,
        lr: float = 0.1,
        momentum: float = 0.0,
        nesterov: bool = False,
        weight_decay: float = 0.0,
        *,
        max_grad_norm: float | None = None,
    ) -> None:
        super().__init__(model, lr, weight_decay, max_grad_norm)
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"SGD momentum must be in [0, 1), got {momentum!r}")
        if nesterov and momentum == 0.0:
            raise ValueError("SGD nesterov=True needs momentum > 0")
        self.momentum = float(momentum)
        self.nesterov = bool(nesterov)

    def _state_names(self) -> tuple[str, ...]:
        # A zero buffer gives the first step's b = g exactly (0 * momentum + g), as none does.
        return ("momentum",) if self.momentum else ()

    def _settings(self) -> tuple[Any, ...]:
        return (*super()._settings(), self.momentum, self.nesterov)

    def _apply(self, params: Mapping[str, Array], grads: Mapping[str, Array]) -> None:
        # add_scaled takes a host number; a captured step's learning rate is an array.
        if self.momentum or self.weight_decay or not isinstance(self.lr, float):
            super()._apply(params, grads)
            return
        # Plain SGD, p -= lr g: no state, so no per-parameter bookkeeping either.
        keys = list(params)
        new = self.placement.kernels.add_scaled(
            [params[k] for k in keys], [grads[k] for k in keys], -self.lr
        )
        if not self.in_place:
            self.model.set_parameters(dict(zip(keys, new, strict=True)), check=False)

    def _update(self, key: str, p: Array, g: Array) -> Array:
        if self.weight_decay:
            g = g + self.weight_decay * p
        if self.momentum:
            state = self.state.setdefault(key, {})
            buf = state.get("momentum")
            if buf is None:
                buf = self.xp.asarray(g, copy=True)
            else:
                buf = self._blend(buf, self.momentum, g, 1.0)
            state["momentum"] = buf
            g = g + self.momentum * buf if self.nesterov else buf
        return self._descend(p, self.lr * g)


class Adam(Optimizer):
    """Adam, as ``torch.optim.Adam``: L2 weight decay added to the gradient, bias-corrected moments.

    ``m = b1 m + (1 - b1) g``; ``v = b2 v + (1 - b2) g^2``;
    ``p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)``.
    """

    _decoupled = False

    def __init__(
        self,
        model: Module,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        *,
        max_grad_norm: float | None = None,
    ) -> None:
        super().__init__(model, lr, weight_decay, max_grad_norm)
        b1, b2 = betas
        if not (0.0 <= b1 < 1.0 and 0.0 <= b2 < 1.0):
            raise ValueError(f"{type(self).__name__} betas must be in [0, 1), got {betas!r}")
        if not eps > 0:
            raise ValueError(f"{type(self).__name__} eps must be > 0, got {eps!r}")
        self.betas = (float(b1), float(b2))
        self.eps = float(eps)
        self._corrections: tuple[Any, Any] | None = None

    def _state_names(self) -> tuple[str, ...]:
        return ("m", "v")

    def _settings(self) -> tuple[Any, ...]:
        return (*super()._settings(), self.betas, self.eps)

    def _apply(self, params: Mapping[str, Array], grads: Mapping[str, Array]) -> None:
        # The bias corrections are the same for every parameter: computed once a step.
        b1, b2 = self.betas
        t: Any = self.steps
        if isinstance(t, int):
            c1, root = 1.0 - b1**t, math.sqrt(1.0 - b2**t)
        else:  # a captured step: the count (and the learning rate) are arrays
            c1, root = (
                _one_minus_power(b1, t, self.xp),
                self.xp.sqrt(_one_minus_power(b2, t, self.xp)),
            )
        self._corrections = (self.lr / c1, 1.0 / root)
        try:
            super()._apply(params, grads)
        finally:
            self._corrections = None  # never keep a traced value past its trace

    def _update(self, key: str, p: Array, g: Array) -> Array:
        b1, b2 = self.betas
        assert self._corrections is not None, "Adam._update runs inside _apply"
        step_size, inv_root = self._corrections
        if self.weight_decay:
            if self._decoupled:  # AdamW: shrink the weights, leave the gradient alone
                if self.in_place:
                    p *= 1.0 - self.lr * self.weight_decay
                else:
                    p = p * (1.0 - self.lr * self.weight_decay)
            else:
                g = g + self.weight_decay * p
        state = self.state.get(key)
        if state is None:
            state = self.state[key] = {"m": self.xp.zeros_like(p), "v": self.xp.zeros_like(p)}
        m = state["m"] = self._blend(state["m"], b1, g, 1.0 - b1)
        v = state["v"] = self._blend(state["v"], b2, g * g, 1.0 - b2)
        denom = self.xp.sqrt(v) * inv_root + self.eps
        return self._descend(p, step_size * (m / denom))


def _one_minus_power(b: float, t: Array, xp: ModuleType) -> Array:
    """``1 - b**t`` for an array ``t``, as ``-expm1(t log b)``: in float32 the direct form loses
    five digits to cancellation (``1 - 0.999**1`` comes out 1.3e-5 off)."""
    return -xp.expm1(t * math.log(b)) if b > 0 else 1.0 - b**t


class AdamW(Adam):
    """AdamW, as ``torch.optim.AdamW``: decoupled weight decay ``p *= 1 - lr * wd`` before Adam."""

    _decoupled = True

    def __init__(
        self,
        model: Module,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        *,
        max_grad_norm: float | None = None,
    ) -> None:
        super().__init__(model, lr, betas, eps, weight_decay, max_grad_norm=max_grad_norm)


# ---------------------------------------------------------------------------- schedules
class LRScheduler:
    """Sets ``optimizer.lr`` from the count of ``step()`` calls (usually epochs), in closed form."""

    def __init__(self, optimizer: Optimizer) -> None:
        self.optimizer = optimizer
        self.base_lr = optimizer.lr
        self.epoch = 0

    def step(self) -> float:
        """Advance one epoch and set (and return) the optimizer's new learning rate."""
        self.epoch += 1
        self.optimizer.lr = self.lr_at(self.epoch)
        return self.optimizer.lr

    def lr_at(self, epoch: int) -> float:
        raise NotImplementedError


class ConstantLR(LRScheduler):
    """The learning rate never changes."""

    def lr_at(self, epoch: int) -> float:
        return self.base_lr


class StepLR(LRScheduler):
    """``lr = base_lr * gamma ** (epoch // step_size)``, as ``torch.optim.lr_scheduler.StepLR``."""

    def __init__(self, optimizer: Optimizer, step_size: int, gamma: float = 0.1) -> None:
        if step_size < 1:
            raise ValueError(f"StepLR step_size must be >= 1, got {step_size!r}")
        super().__init__(optimizer)
        self.step_size, self.gamma = int(step_size), float(gamma)

    def lr_at(self, epoch: int) -> float:
        return self.base_lr * self.gamma ** (epoch // self.step_size)


class CosineAnnealingLR(LRScheduler):
    """``lr = eta_min + (base_lr - eta_min) (1 + cos(pi epoch / T_max)) / 2``, as torch's."""

    def __init__(self, optimizer: Optimizer, T_max: int, eta_min: float = 0.0) -> None:
        if T_max < 1:
            raise ValueError(f"CosineAnnealingLR T_max must be >= 1, got {T_max!r}")
        super().__init__(optimizer)
        self.T_max, self.eta_min = int(T_max), float(eta_min)

    def lr_at(self, epoch: int) -> float:
        cos = math.cos(math.pi * min(epoch, self.T_max) / self.T_max)
        return self.eta_min + (self.base_lr - self.eta_min) * (1.0 + cos) / 2.0


OPTIMIZERS: dict[str, type[Optimizer]] = {"sgd": SGD, "adam": Adam, "adamw": AdamW}


# ---------------------------------------------------------------- scikit-learn's schedules
class InvScalingLR(LRScheduler):
    """scikit-learn's ``"invscaling"``: after each epoch ``lr = base_lr / (t + 1) ** power_t``,
    where ``t`` counts the training rows seen so far: ``samples`` to begin with, then
    ``samples_per_epoch`` more each epoch."""

    def __init__(
        self,
        optimizer: Optimizer,
        power_t: float = 0.5,
        samples_per_epoch: int = 1,
        samples: int = 0,
    ) -> None:
        if not (math.isfinite(power_t) and power_t >= 0):
            raise ValueError(f"InvScalingLR power_t must be finite and >= 0, got {power_t!r}")
        super().__init__(optimizer)
        self.power_t = float(power_t)
        self.samples_per_epoch, self.samples = int(samples_per_epoch), int(samples)

    def step(self) -> float:
        self.samples += self.samples_per_epoch
        return super().step()

    def lr_at(self, epoch: int) -> float:
        return self.base_lr / math.pow(self.samples + 1, self.power_t)


class AdaptiveLR(LRScheduler):
    """scikit-learn's ``"adaptive"``: the rate stays as it is until training stalls (the stopping
    rule of :func:`~portable_mlp.training.fit` would stop it), then is divided by ``factor``; a
    stall once the rate is at most ``min_lr`` ends training."""

    def __init__(self, optimizer: Optimizer, factor: float = 5.0, min_lr: float = 1e-6) -> None:
        if not factor > 1:
            raise ValueError(f"AdaptiveLR factor must be > 1, got {factor!r}")
        super().__init__(optimizer)
        self.factor, self.min_lr = float(factor), float(min_lr)

    def lr_at(self, epoch: int) -> float:
        return self.optimizer.lr

    def on_stall(self) -> bool:
        """Divide the rate by ``factor`` and go on (True), or stop if it is already small."""
        if self.optimizer.lr <= self.min_lr:
            return False
        self.optimizer.lr /= self.factor
        return True
