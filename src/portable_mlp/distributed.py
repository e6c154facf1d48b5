"""Data-parallel training: several processes (``torchrun``), or the devices of a JAX mesh.

The layers, losses and optimizers stay the one code path; this module adds only what splits the
batch and averages the gradients, on existing engines.

**Several processes** (NumPy, array-api-strict, torch and CuPy models) run under ``torchrun``,
one process per device, and communicate through ``torch.distributed`` (gloo on CPU, NCCL on
CUDA)::

    import portable_mlp as pm
    from portable_mlp import distributed as dist

    dist.init()                                   # reads torchrun's environment
    model = pm.MLP([784, 256, 10], rng=0)
    dist.broadcast_parameters(model)              # every rank starts from rank 0's weights
    sampler = dist.DistributedSampler(len(X), batch_size=256, seed=0)
    opt = dist.DistributedOptimizer(pm.Adam(model), sampler=sampler)
    loss = pm.CrossEntropyLoss()
    for epoch in range(10):
        sampler.set_epoch(epoch)                  # one shuffle, the same on every rank
        total, rows = 0.0, 0
        for idx in sampler:                       # this rank's rows of each global batch
            xb, yb = pm.asarray(X[idx], like=model), pm.asarray(y[idx], like=model)
            value = pm.train_step(model, loss, opt, xb, yb, alpha=alpha / dist.world_size())
            total, rows = total + float(value) * len(idx), rows + len(idx)
        epoch_loss = dist.all_reduce_mean(total / rows, weight=rows)  # equal on every rank
        if dist.rank() == 0:
            print(epoch, epoch_loss)

The result equals one process training on the whole global batch, to floating-point rounding:

- :class:`DistributedOptimizer` averages the gradients in ``step()`` with one all-reduce of one
  flat buffer, each rank weighted by its rows, so uneven shards (255 rows over 2 ranks, the last
  batch of an epoch) average exactly as the one-process mean does;
- the L2 term: :func:`~portable_mlp.training.train_step` adds ``alpha / n_local * W`` on each
  rank; weighted by ``n_local / n_global`` and summed, ``alpha / world_size()`` per rank makes it
  ``alpha / n_global * W``, as one process has it (and the same for the reported loss);
- every rank applies the same averaged gradient, so the ranks stay bitwise equal.

One process (``WORLD_SIZE`` unset) needs no change: :func:`init` does nothing, the rank is 0,
the world size 1, and the optimizer and the reductions pass values through.

**JAX** uses its own collectives: build the model on a device mesh
(``pm.MLP(..., backend='jax', device=jax.make_mesh((8,), ('batch',)))``, or
``device='mesh(batch=8)'``), so its parameters are replicated on every device, and split each
batch over the mesh with :func:`shard_batch`; XLA inserts the all-reduces and the layer code runs
unchanged. Across hosts, call ``jax.distributed.initialize()`` first. JAX arrays never go
through ``torch.distributed``: DLPack would share their buffers and the in-place all-reduce would
mutate arrays JAX treats as immutable.
"""

from __future__ import annotations

import math
import os
import secrets
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, TypeVar, overload

import numpy as np

from ._backend import Array, Placement, placement_like
from ._backend import collectives as _collectives
from .layers import Module
from .optim import Optimizer

__all__ = [
    "DistributedOptimizer",
    "DistributedSampler",
    "all_ranks_equal",
    "all_reduce_mean",
    "all_reduce_sum",
    "barrier",
    "broadcast_parameters",
    "init",
    "is_initialized",
    "local_rank",
    "rank",
    "shard_batch",
    "shared_seed",
    "shutdown",
    "world_size",
]


# --------------------------------------------------------------------------------------------
# The process group
# --------------------------------------------------------------------------------------------
def init(
    backend: str | None = None,
    *,
    init_method: str | None = None,
    rank: int | None = None,
    world_size: int | None = None,
    timeout: float | None = None,
) -> bool:
    """Join the process group ``torchrun`` describes; returns whether this process is in one.

    Reads ``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` (set by
    ``torchrun``, or by hand). Without ``WORLD_SIZE`` (a plain ``python`` run) it does nothing and
    returns False, so one script serves both. ``backend``: torch.distributed's, default gloo for
    host arrays and NCCL for CUDA arrays (each process then uses GPU ``LOCAL_RANK``).
    ``init_method``: a rendezvous URL (``"file:///tmp/rdv"``, ``"tcp://host:port"``) instead of
    ``MASTER_ADDR``/``MASTER_PORT``; ``rank``/``world_size`` override the environment;
    ``timeout`` in seconds. Calling it again once joined does nothing.
    """
    if _collectives.is_initialized():
        return True
    if world_size is None:
        if "WORLD_SIZE" not in os.environ:
            return False
        world_size = _env_int("WORLD_SIZE")
    if rank is None:
        rank = _env_int("RANK")
    if not 0 <= rank < world_size:
        raise ValueError(f"init() expected 0 <= rank < world_size, got rank {rank} of {world_size}")
    if init_method is None:
        missing = [v for v in ("MASTER_ADDR", "MASTER_PORT") if v not in os.environ]
        if missing:
            raise RuntimeError(
                f"init() found WORLD_SIZE={world_size} but no {' or '.join(missing)} in the "
                "environment; launch with torchrun, set them, or pass init_method="
            )
        init_method = "env://"
    _collectives.init_process_group(
        backend,
        init_method=init_method,
        rank=rank,
        world_size=world_size,
        local_rank=local_rank(),
        timeout_s=timeout,
    )
    return True


def _env_int(name: str) -> int:
    value = os.environ.get(name)
    if value is None:
        raise RuntimeError(f"init() expected {name} in the environment (torchrun sets it)")
    try:
        return int(value)
    except ValueError:
        raise RuntimeError(f"init() expected an integer {name}, got {value!r}") from None


def is_initialized() -> bool:
    """Whether this process has joined a process group."""
    return _collectives.is_initialized()


def rank() -> int:
    """This process's rank, 0 to ``world_size() - 1`` (0 outside a process group)."""
    return _collectives.rank()


def world_size() -> int:
    """How many processes train together (1 outside a process group)."""
    return _collectives.world_size()


def local_rank() -> int:
    """This process's rank on its node, ``LOCAL_RANK`` (which GPU it uses); 0 when unset."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def barrier() -> None:
    """Wait until every rank gets here (nothing outside a process group)."""
    _collectives.barrier()


def shutdown() -> None:
    """Leave the process group (nothing outside one)."""
    _collectives.destroy()


# --------------------------------------------------------------------------------------------
# Parameters and metrics
# --------------------------------------------------------------------------------------------
def broadcast_parameters(model: Module, src: int = 0) -> None:
    """Give every rank rank ``src``'s parameters (one broadcast of one flat buffer).

    Call it once after building the model and before making its optimizer. The parameters are
    overwritten in place (arrays a caller holds see the new values). Refuses models whose
    parameter shapes differ between ranks.
    """
    where: Placement = model.placement  # type: ignore[attr-defined]
    _collectives.check_supported(where)
    if not is_initialized():
        return
    params = model.parameters()
    sizes = [math.prod(p.shape) for p in params.values()]
    # Differing models would deadlock or garble the broadcast: compare a fingerprint first.
    fingerprint = [float(sum(sizes)), float(len(sizes))]
    fingerprint.append(float(sum((i + 1) * s for i, s in enumerate(sizes))))
    if not all_ranks_equal(fingerprint):
        raise ValueError(
            f"broadcast_parameters(): the ranks' models differ (rank {rank()} has "
            f"{len(sizes)} arrays of {sum(sizes)} values: {model!r})"
        )
    xp = where.xp
    flat = xp.concat([xp.reshape(p, (-1,)) for p in params.values()])
    _collectives.broadcast_(flat, where, src)
    for key, value in _split(flat, params, xp=xp).items():
        params[key][...] = value  # every backend torch.distributed takes is mutable


@overload
def all_reduce_mean(value: float, *, weight: float = 1.0) -> float: ...
@overload
def all_reduce_mean(value: Sequence[float], *, weight: float = 1.0) -> list[float]: ...
def all_reduce_mean(value: float | Sequence[float], *, weight: float = 1.0) -> float | list[float]:
    """The mean over all ranks of a host number (or several, in one collective), each rank's
    value weighted by ``weight`` (its rows, say): ``sum(weight * value) / sum(weight)``.

    For epoch losses, metrics and stopping decisions: every rank gets the same result, so every
    rank stops, or restores, together. Outside a process group the value comes back as it is.
    """
    values = [float(v) for v in value] if isinstance(value, Sequence) else [float(value)]
    if is_initialized():
        weight = float(weight)
        sums = _collectives.all_reduce_host([*(weight * v for v in values), weight])
        if sums[-1] == 0:
            raise ValueError("all_reduce_mean(): the weights of all ranks sum to 0")
        values = [s / sums[-1] for s in sums[:-1]]
    return values if isinstance(value, Sequence) else values[0]


def all_reduce_sum(values: Sequence[float]) -> list[float]:
    """Host numbers summed over all ranks, in one collective (float64); outside a process group
    they come back as they are.

    For totals a loop decides on (an epoch's summed loss, how many ranks stayed finite), exact
    where a mean's division and remultiplication would round.
    """
    values = [float(v) for v in values]
    return _collectives.all_reduce_host(values) if is_initialized() else values


def all_ranks_equal(values: Sequence[float]) -> bool:
    """Whether every rank holds the same host numbers (one collective; True outside a group).

    For what must agree before a collective loop starts (the data's rows, the batch size, the
    shuffle seed): ranks that differ would deadlock or train on garbled batches.
    """
    values = [float(v) for v in values]
    if not is_initialized():
        return True
    high = _collectives.all_reduce_host([*values, *(-v for v in values)], op="max")
    return high[: len(values)] == [-v for v in high[len(values) :]]


def shared_seed(seed: int | None = None) -> int:
    """``seed`` if given, else one fresh random seed, the same on every rank (rank 0's).

    Shuffles, splits and initial weights must agree across ranks; a loop that takes
    ``random_state=None`` draws its seed here.
    """
    if seed is not None:
        return int(seed)
    drawn = float(secrets.randbits(52)) if rank() == 0 else 0.0  # exact in float64
    if is_initialized():
        drawn = _collectives.all_reduce_host([drawn])[0]  # only rank 0's is not 0
    return int(drawn)


def _split(flat: Array, like: Mapping[str, Array], *, xp: Any) -> dict[str, Array]:
    """Views of the flat buffer ``flat`` in the shapes of ``like``'s arrays, by the same keys."""
    out = {}
    start = 0
    for key, a in like.items():
        size = math.prod(a.shape)
        out[key] = xp.reshape(flat[start : start + size], tuple(a.shape))
        start += size
    return out


# --------------------------------------------------------------------------------------------
# Batches and gradients
# --------------------------------------------------------------------------------------------
_Rows = TypeVar("_Rows", np.ndarray[Any, Any], range)


class DistributedSampler:
    """Each rank's rows of every global batch: one shuffle (the same seed on every rank), each
    global batch split into ``world_size`` contiguous parts, as even as they can be.

    ``n``: rows in the data set; ``batch_size``: rows of a global batch (all ranks together).
    ``drop_last=False`` keeps a short last batch (its parts are shorter, and the optimizer
    weights them by their rows); ``drop_last=True`` drops it. ``set_epoch(e)`` before each epoch
    draws that epoch's shuffle. Iterating yields this rank's row indices (host integer arrays)
    step by step, and keeps the current step's ``rows`` (this rank's) and ``global_rows`` for a
    :class:`DistributedOptimizer` bound to it. ``rank``/``world_size`` default to the process
    group's.
    """

    def __init__(
        self,
        n: int,
        batch_size: int,
        *,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
        rank: int | None = None,
        world_size: int | None = None,
    ) -> None:
        self.rank = _collectives.rank() if rank is None else int(rank)
        self.world_size = _collectives.world_size() if world_size is None else int(world_size)
        for name, value in (("n", n), ("batch_size", batch_size), ("seed", seed)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"DistributedSampler {name} must be an int >= 0, got {value!r}")
        if not 0 <= self.rank < self.world_size:
            raise ValueError(
                f"DistributedSampler expected 0 <= rank < world_size, got rank {self.rank} "
                f"of {self.world_size}"
            )
        if batch_size < self.world_size:
            raise ValueError(
                f"DistributedSampler batch_size {batch_size} is smaller than the world size "
                f"{self.world_size}: some rank would get no rows"
            )
        last = n % batch_size
        if not drop_last and 0 < last < self.world_size:
            raise ValueError(
                f"DistributedSampler: the last batch of {last} rows (n={n}, batch_size="
                f"{batch_size}) cannot give each of {self.world_size} ranks a row; pass "
                "drop_last=True or choose a batch size that leaves at least one row per rank"
            )
        if drop_last and n < batch_size:
            raise ValueError(
                f"DistributedSampler: n={n} rows make no full batch of {batch_size} with "
                "drop_last=True"
            )
        self.n, self.batch_size = n, batch_size
        self.shuffle, self.seed, self.drop_last = bool(shuffle), seed, bool(drop_last)
        self.epoch = 0
        self.rows: int | None = None  # this rank's rows in the current step
        self.global_rows: int | None = None  # all ranks' rows in the current step

    def __repr__(self) -> str:
        return (
            f"DistributedSampler(n={self.n}, batch_size={self.batch_size}, rank={self.rank}, "
            f"world_size={self.world_size}, drop_last={self.drop_last})"
        )

    def set_epoch(self, epoch: int) -> None:
        """Draw epoch ``epoch``'s shuffle (the same on every rank) for the next iteration."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        """Steps in an epoch."""
        full, last = divmod(self.n, self.batch_size)
        return full + (1 if last and not self.drop_last else 0)

    def global_batches(self) -> list[np.ndarray[Any, Any]]:
        """Every step's rows over all ranks this epoch: what one process with the same global
        batch trains on."""
        if self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch]).permutation(self.n)
        else:
            order = np.arange(self.n)
        return [
            order[s : s + self.batch_size]
            for s in range(0, len(self) * self.batch_size, self.batch_size)
        ]

    def shard(self, batch: _Rows) -> _Rows:
        """This rank's contiguous part of a global batch (the first ranks get a row more): of
        its row indices, or of a ``range`` of row positions."""
        base, extra = divmod(len(batch), self.world_size)
        start = self.rank * base + min(self.rank, extra)
        return batch[start : start + base + (self.rank < extra)]

    def __iter__(self) -> Iterator[np.ndarray[Any, Any]]:
        for batch in self.global_batches():
            rows = self.shard(batch)
            self.rows, self.global_rows = len(rows), len(batch)
            yield rows


class _Through:
    """An attribute of a :class:`DistributedOptimizer` that is its wrapped optimizer's."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, wrapper: Any, owner: Any = None) -> Any:
        return self if wrapper is None else getattr(wrapper.optimizer, self.name)

    def __set__(self, wrapper: Any, value: Any) -> None:
        setattr(wrapper.optimizer, self.name, value)


class DistributedOptimizer(Optimizer):
    """Wraps one of this package's optimizers (SGD, Adam, AdamW, ...) so that ``step()`` first
    averages the gradients over all ranks, then updates as the wrapped optimizer does.

    The averaging is one all-reduce of one flat buffer: every gradient, scaled by this rank's
    rows ``n_local``, concatenated with ``n_local`` itself, summed over the ranks, then divided
    by the summed rows. That is the gradient of the mean loss over the global batch however the
    rows are split. ``n_local`` comes from ``step(n_local=...)``, else from the bound
    ``sampler`` (its current step), else every rank weighs the same (exact for even splits).
    The learning rate, step count and state are the wrapped optimizer's (schedules work).
    Outside a process group ``step()`` is the wrapped optimizer's.

    JAX models are refused (see :mod:`portable_mlp.distributed`: a mesh does this for JAX).
    """

    def __init__(self, optimizer: Optimizer, *, sampler: DistributedSampler | None = None) -> None:
        # Not Optimizer.__init__: the wrapped optimizer holds the hyperparameters and state.
        if isinstance(optimizer, DistributedOptimizer):
            raise TypeError("DistributedOptimizer() got an optimizer that is already wrapped")
        if not isinstance(optimizer, Optimizer):
            raise TypeError(
                f"DistributedOptimizer() expected one of portable_mlp's optimizers, got "
                f"{type(optimizer).__name__}"
            )
        _collectives.check_supported(optimizer.placement)
        self.optimizer = optimizer
        self.sampler = sampler
        self.model = optimizer.model
        self.placement = optimizer.placement
        self.xp = optimizer.xp
        self.in_place = optimizer.in_place
        self._one = self.xp.ones((1,), dtype=self.placement.dtype, device=self.placement.device)

    def __repr__(self) -> str:
        return f"DistributedOptimizer({self.optimizer!r})"

    # The wrapped optimizer's hyperparameters and state, read and written through (schedules
    # set lr; checkpoints and non-finite recovery read and restore the state).
    lr = _Through()
    steps = _Through()
    state = _Through()
    weight_decay = _Through()
    max_grad_norm = _Through()

    def state_dict(self) -> dict[str, Any]:
        return self.optimizer.state_dict()

    def load_state_dict(self, snapshot: Mapping[str, Any]) -> None:
        self.optimizer.load_state_dict(snapshot)

    def step(self, grads: Mapping[str, Array] | None = None, *, n_local: int | None = None) -> None:
        """Average ``grads`` (default: the model's) over all ranks, then update.

        ``n_local``: this rank's rows in the step's global batch (default: the bound sampler's
        current step; without one, every rank weighs the same).
        """
        grads = self.model.gradients() if grads is None else grads
        self.optimizer.update(self.model.parameters(), self._averaged(grads, n_local))

    def update(self, params: Mapping[str, Array], grads: Mapping[str, Array]) -> None:
        """:meth:`step` without its checks, the rows from the bound sampler: what a training
        step (eager or captured) calls."""
        self.optimizer.update(params, self._averaged(grads, None))

    def init_state(self) -> None:
        self.optimizer.init_state()

    def _settings(self) -> tuple[Any, ...]:
        return self.optimizer._settings()

    def _averaged(self, grads: Mapping[str, Array], n_local: int | None) -> Mapping[str, Array]:
        if not _collectives.is_initialized():
            return grads
        return self.all_reduce_gradients(grads, n_local=n_local)

    def all_reduce_gradients(
        self, grads: Mapping[str, Array], *, n_local: int | None = None
    ) -> dict[str, Array]:
        """The row-weighted mean of ``grads`` over all ranks (one collective; no host sync)."""
        xp = self.xp
        if n_local is None and self.sampler is not None:
            if self.sampler.rows is None:
                raise RuntimeError(
                    "DistributedOptimizer.step() before its sampler yielded a batch; iterate "
                    "the sampler for the step's rows, or pass n_local="
                )
            n_local = self.sampler.rows
        # [n_local * g for every gradient, n_local]: the summed last entry is the global rows.
        flat = xp.concat([*(xp.reshape(g, (-1,)) for g in grads.values()), self._one])
        if n_local is not None and n_local != 1:
            if self.in_place:
                flat *= float(n_local)
            else:
                flat = flat * float(n_local)
        flat = _collectives.all_reduce_sum_(flat, self.placement)
        return _split(flat[:-1] / flat[-1], grads, xp=xp)


# --------------------------------------------------------------------------------------------
# JAX: a device mesh
# --------------------------------------------------------------------------------------------
def shard_batch(x: Array, *, like: Any) -> Array:
    """``x`` split over the devices of ``like``'s mesh along its first (batch) axis.

    ``like`` is a model, layer, placement or array; ``x`` an array (a batch of inputs or
    targets). Where ``like`` is a JAX model on a mesh, ``x`` comes back split row-wise over the
    mesh's devices (so the step runs data-parallel and XLA sums the gradients); a batch whose
    rows the device count does not divide stays whole on every device (the same result, without
    the split). For any other placement ``x`` comes back unchanged, so a loop can call it always.
    """
    where = placement_like(like)
    return where.backend.shard_batch(x, where.device)
