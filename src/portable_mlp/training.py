"""Training: one step (:func:`train_step`) and, built on it, the epoch loop (:func:`fit`).

A step is forward, loss, backward (no dL/dx), the L2 term and the optimizer's update, and returns
the batch loss as a 0-d array without reading it back. :func:`fit` runs steps over mini-batches
gathered on the device and reads back once per epoch: the epoch's loss, whether every weight is
still finite, and the validation and eval values, in one transfer.

The training features may also be a SciPy sparse matrix on the host (as scikit-learn's MLP
takes): each batch's rows are then densified on their own and moved to the device, so the dense
whole never exists.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import math
import operator
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from . import distributed as dist
from . import metrics
from ._backend import Array, Placement, from_numpy, host_rng, namespace_of
from ._progress import EpochProgress
from ._validation import is_sparse
from .compiled import StepPlan, backward_and_update
from .layers import Module
from .losses import Loss, SampleWeightedLoss
from .optim import LRScheduler, Optimizer

Step = Callable[[Array, Array], Array]
"""``step(x, y) -> 0-d batch loss``: one update of the model from a batch (see :func:`fit`)."""

Scan = Callable[[Callable[[Any, Any], tuple[Any, Any]], Any, Any], tuple[Any, Any]]
"""``scan(f, carry, xs) -> (carry, ys)``: a backend's loop over the leading axis of ``xs``
(``jax.lax.scan``), handed to a captured epoch by the backend."""


class TrainingError(FloatingPointError):
    """The loss or the weights became non-finite; the model keeps its last finite weights."""

    advice = "Try a smaller learning rate or set max_grad_norm."


def train_step(
    model: Module,
    loss: Loss,
    optimizer: Optimizer,
    x: Array,
    y: Array,
    *,
    alpha: float = 0.0,
    check: bool = True,
) -> Array:
    """One training step: forward, loss, backward (no dL/dx), L2 term, update.

    ``alpha`` is scikit-learn's L2 penalty, ``alpha / 2 ||W||^2 / n_batch`` on weights (not
    biases), added to the loss and its gradient (with a
    :class:`~portable_mlp.losses.SampleWeightedLoss`, over the batch's sum of weights instead
    of its rows, as scikit-learn). Returns the batch loss as a 0-d array, without reading it
    back. ``check=False`` skips the input checks, for loops whose data were checked once up
    front; ``y`` must then be in the loss's working form (float one-hot rows for
    cross-entropy).
    """
    if check:
        value = loss.forward(model.forward(x), y)
    else:
        value = loss._forward(model._forward(x, True), y, optimizer.xp)
    return backward_and_update(model, loss, optimizer, value, x.shape[0], alpha)


# ---------------------------------------------------------------------------- the epoch loop
@dataclass(frozen=True)
class EarlyStopping:
    """scikit-learn's stopping rule: stop once the monitored value has failed to improve by at
    least ``tol`` for more than ``n_iter_no_change`` epochs in a row.

    With a validation set the value is the validation score (higher is better); without one, the
    training loss (lower is better).
    """

    tol: float = 1e-4
    n_iter_no_change: float = 10  # an int, or math.inf: never stop

    def __post_init__(self) -> None:
        if not self.n_iter_no_change >= 1:
            raise ValueError(f"n_iter_no_change must be >= 1, got {self.n_iter_no_change!r}")
        if not math.isfinite(self.tol):
            raise ValueError(f"tol must be finite, got {self.tol!r}")


class Callback(Protocol):
    """Told about every finished epoch; returning True stops training after it."""

    def on_epoch_end(self, epoch: int, logs: Mapping[str, float]) -> bool | None:
        """``epoch`` counts from 1 over the whole history; ``logs`` holds ``loss`` and ``lr``,
        and ``validation_score``, ``eval_loss``, ``eval_score`` when those are computed."""
        ...


@dataclass
class History:
    """What :func:`fit` recorded, one entry per epoch; pass it back to :func:`fit` to go on.

    ``loss``: the mean training loss of each epoch (as the steps saw it, L2 term included).
    ``validation_scores``: the score on the validation set, which picks the best weights.
    ``eval_loss``/``eval_scores``: the loss and score on the eval set, watched only.
    ``best_epoch``: the epoch of the best validation score (or, with a stopping rule and no
    validation set, of the lowest training loss); ``best_loss``/``best_score`` are those values.
    ``stopped_early``: the stopping rule or a callback ended training before its epochs ran out
    (scikit-learn's "converged"), for the reason in ``stop_reason``.
    """

    loss: list[float] = field(default_factory=list)
    validation_scores: list[float] | None = None
    eval_loss: list[float] | None = None
    eval_scores: list[float] | None = None
    n_epochs: int = 0
    samples: int = 0  # training rows seen, over all epochs
    best_epoch: int | None = None
    best_loss: float = math.inf
    best_score: float | None = None
    no_improvement: int = 0  # epochs in a row without improvement, carried into a resumed fit
    stopped_early: bool = False
    stop_reason: str = ""


def fit(
    model: Module,
    loss: Loss,
    optimizer: Optimizer,
    X: Array,
    Y: Array,
    *,
    epochs: int,
    batch_size: int = 200,
    shuffle: bool = True,
    rng: Any = None,
    schedule: LRScheduler | None = None,
    validation: tuple[Array, Array] | None = None,
    eval_set: tuple[Array, Array] | None = None,
    early_stopping: EarlyStopping | None = None,
    score: metrics.Score | None = None,
    alpha: float = 0.0,
    step: Step | None = None,
    compile: bool = True,
    callbacks: Sequence[Callback] = (),
    progress: bool = False,
    eval_name: str = "eval",
    history: History | None = None,
    distributed: bool | None = None,
) -> History:
    """Train ``model`` for up to ``epochs`` passes over ``X: (n, p)`` and targets ``Y``.

    ``X``, ``Y`` (and the validation and eval sets) are arrays on the model's placement; ``Y`` is
    what ``loss`` takes (integer labels or one-hot rows for cross-entropy), converted once.
    ``X`` may also be a SciPy sparse matrix on the host, densified one batch at a time (a sparse
    validation or eval set is densified whole).
    Each epoch gathers mini-batches of ``batch_size`` rows on the device, in an order shuffled on
    the host by ``rng`` (a seed or ``numpy.random.Generator``) unless ``shuffle=False``, then
    steps ``schedule`` (an :mod:`~portable_mlp.optim` scheduler of the optimizer).

    ``validation=(X_val, Y_val)``: scored after every epoch; at the end the model gets back the
    weights of the best score. ``eval_set``: loss and score recorded, never used to decide.
    ``score(z, target)`` scores model outputs (default: :func:`metrics.for_loss`).
    ``early_stopping``: the stopping rule (:class:`EarlyStopping`); a schedule with
    ``on_stall()`` (:class:`~portable_mlp.optim.AdaptiveLR`) is asked first whether to go on with
    a smaller learning rate. Gradient clipping is the optimizer's ``max_grad_norm``.

    Each step is :func:`~portable_mlp.compile_step`'s captured step (``compile=False``: the eager
    ``train_step(model, loss, optimizer, x, y, alpha=alpha)``; both give the same updates).
    Where the backend captures whole epochs (JAX on one device, dense ``X``), an epoch of those
    steps, its gathers and its validation and eval values are one compiled call; the progress
    bar then moves once per epoch.
    ``step(x, y)`` replaces either (a step built once and reused across calls, say); its ``y``
    is in the loss's working form and ``alpha`` then belongs to it. ``callbacks``: objects with
    ``on_epoch_end`` (:class:`Callback`).
    ``progress``: draw a progress bar on stderr (reading the loss now and then), which calls
    the eval set ``eval_name``. ``history``:
    a :class:`History` to go on from (epochs, curves, best values, the stopping count).

    If the loss or a weight becomes non-finite, the epoch is replayed up to the last step that
    kept them finite and :class:`TrainingError` names the epoch and step; the model keeps those
    weights and ``history`` the epochs before.

    ``distributed``: train data-parallel over the ranks of a ``torchrun`` process group
    (:mod:`~portable_mlp.distributed`); default: whenever this process is in a group of two or
    more and the model's arrays can take the in-place collectives (not JAX, which splits its
    batches over the mesh of the model's device instead). Every rank passes the same model
    (:func:`~portable_mlp.distributed.broadcast_parameters`), the whole data set and the same
    ``rng`` seed: all ranks walk the same epoch order, ``batch_size`` is the global batch, and
    each rank steps on its contiguous share of every batch with the eager step (the gradients
    averaged by a :class:`~portable_mlp.distributed.DistributedOptimizer` around ``optimizer``,
    its rows weighting it). The epoch loss is summed over the ranks, so stopping, schedules and
    divergence decide alike everywhere; the validation and eval sets are scored whole on every
    rank (the same weights give the same values). The result is one process's with the same
    global batch, to rounding. Only rank 0 draws the progress bar.
    """
    if epochs < 1 or batch_size < 1:
        raise ValueError(f"fit needs epochs >= 1 and batch_size >= 1, got {epochs}, {batch_size}")
    if loss.reduction == "none":
        raise ValueError(f"fit needs a loss reduced to one number per batch, got {loss!r}")
    where = optimizer.placement
    if distributed is None:  # torch.distributed's collectives work in place
        distributed = dist.is_initialized() and dist.world_size() > 1 and where.mutable
    optimizer, step, plan = _the_step(model, loss, optimizer, step, alpha, compile, distributed)
    val = None if validation is None else _working_data(where, model, loss, *validation, "X_val")
    ev = None if eval_set is None else _working_data(where, model, loss, *eval_set, "X_eval")
    # The train set goes last: a cross-entropy loss remembers whether its targets were labels,
    # and that must hold for the training steps.
    data = _working_data(where, model, loss, X, Y, "X")
    if score is None and (val is not None or ev is not None):
        score = metrics.for_loss(loss)
    run = _Run(model, loss, optimizer, step, data, batch_size, val, ev, score, distributed, plan)
    history = _resumed(History() if history is None else history, val, ev)
    if distributed and shuffle and rng is None:
        rng = dist.shared_seed()  # rank 0's fresh seed: one epoch order for all ranks
    order_rng = host_rng(rng) if shuffle else None
    if distributed:
        _check_ranks_agree(run, epochs, order_rng)
    progress = progress and dist.rank() == 0
    with EpochProgress(epochs, eval_name) if progress else contextlib.nullcontext() as bar:
        best = run.epochs(epochs, history, order_rng, schedule, early_stopping, callbacks, bar)
    if best is not None:  # the weights of the best validation score
        model.set_parameters(best)
    return history


def _the_step(
    model: Module,
    loss: Loss,
    optimizer: Optimizer,
    step: Step | None,
    alpha: float,
    compile: bool,
    distributed: bool,
) -> tuple[Optimizer, Step, StepPlan | None]:
    """The optimizer and step :func:`fit` runs: the captured step, the eager one, the caller's,
    or (across processes) the eager step through a :class:`DistributedOptimizer`; and the
    captured step's plan, from which a backend may capture whole epochs."""
    plan = None
    if distributed:
        if step is not None:
            raise TypeError("fit(distributed=True) makes its own step; got step=")
        if loss.reduction != "mean":
            raise ValueError(
                "fit(distributed=True) averages each rank's gradient by its rows: it needs a "
                f"loss with reduction='mean', got {loss.reduction!r}"
            )
        if isinstance(loss, SampleWeightedLoss):
            raise ValueError(
                "fit(distributed=True) averages each rank's gradient by its rows, not by row "
                f"weights: {loss!r} (sample_weight) trains in one process only"
            )
        if isinstance(optimizer, dist.DistributedOptimizer):  # wrapped again, for fit's rows
            optimizer = optimizer.optimizer
        optimizer = dist.DistributedOptimizer(optimizer)  # its sampler: the run's shares
        # alpha / n_local on each rank, weighted by n_local / n_global: alpha / n_global in all.
        share = alpha / dist.world_size()
        step = functools.partial(train_step, model, loss, optimizer, alpha=share, check=False)
    elif step is None and compile:
        plan = StepPlan(model, loss, optimizer, alpha)  # also what a captured epoch runs
        step = plan.capture()
    elif step is None:
        step = functools.partial(train_step, model, loss, optimizer, alpha=alpha, check=False)
    elif alpha:
        raise TypeError("fit() got step= and alpha=: build the step with its alpha instead")
    return optimizer, step, plan


def _check_ranks_agree(run: _Run, epochs: int, order_rng: Any) -> None:
    """Refuse, on every rank alike, ranks whose steps would not line up."""
    probe = -1.0 if order_rng is None else copy.deepcopy(order_rng).random()  # the next order
    batch = run.bounds[0][1]
    if not dist.all_ranks_equal([run.n, batch, epochs, probe]):
        raise ValueError(
            f"fit(distributed=True): the ranks differ in their data, batch size, epochs or rng "
            f"(rank {dist.rank()}: {run.n} rows, batches of {batch}, {epochs} epochs); every "
            "rank passes the whole data set, the same arguments and the same rng seed"
        )


def _working_data(
    where: Placement, model: Module, loss: Loss, X: Array, Y: Array, what: str
) -> tuple[Array, Array]:
    """``X`` checked against the model (placement, features) and ``Y`` in the loss's working
    form, once, so that the steps can skip every check. A sparse training ``X`` stays on the host
    in CSR form; a sparse validation or eval ``X`` is densified here."""
    sparse = is_sparse(X)
    if sparse and what == "X":
        X = X.tocsr()  # rows are gathered batch by batch: CSR slices them cheaply
    elif sparse:
        X = _densified(where, X)
    else:
        where.check(X, who="fit", what=what)
    try:
        same = namespace_of(Y) is where.xp
    except TypeError:
        same = False
    if not same:
        raise TypeError(
            f"fit expected the targets of {what} as a {where.name} array like {what}, got "
            f"{type(Y).__module__}.{type(Y).__qualname__}"
        )
    if X.ndim != 2 or X.shape[0] == 0:
        raise ValueError(f"fit expected {what} of shape (n, p) with n >= 1, got {tuple(X.shape)}")
    if Y.ndim == 0 or Y.shape[0] != X.shape[0]:
        raise ValueError(
            f"fit expected targets with {X.shape[0]} rows like {what}, got shape {tuple(Y.shape)}"
        )
    first = _densified(where, X[:1]) if is_sparse(X) else X
    model._check_input(first)
    z = where.backend.output_of(lambda x: model._forward(x, False), first)  # width and dtype
    outputs = where.zeros((X.shape[0], *z.shape[1:]))  # a model keeps its placement's dtype
    loss._check_logits(outputs, Y, where.xp)
    return X, loss._prepare_target(outputs, Y, where.xp)


def _densified(where: Placement, rows: Any) -> Array:
    """Rows of a host sparse matrix as a dense array on ``where``."""
    return from_numpy(rows.toarray(), xp=where.xp, dtype=where.dtype, device=where.device)


def _resumed(
    history: History, validation: tuple[Array, Array] | None, eval_set: tuple[Array, Array] | None
) -> History:
    """``history`` with lists for the curves this fit will record."""
    if validation is not None:
        if history.validation_scores is None:
            history.validation_scores = []
        if history.best_score is None:
            history.best_score = -math.inf
    if eval_set is not None:
        if history.eval_loss is None:
            history.eval_loss = []
        if history.eval_scores is None:
            history.eval_scores = []
    history.stopped_early, history.stop_reason = False, ""
    return history


# An epoch's order of rows: the permutation on the device and on the host; None: unshuffled.
_Order = tuple[Array, Any] | None


class _Run:
    """One call of :func:`fit`: the data on the device, the steps and the per-epoch bookkeeping."""

    def __init__(
        self,
        model: Module,
        loss: Loss,
        optimizer: Optimizer,
        step: Step,
        data: tuple[Array, Array],
        batch_size: int,
        validation: tuple[Array, Array] | None,
        eval_set: tuple[Array, Array] | None,
        score: metrics.Score | None,
        distributed: bool,
        plan: StepPlan | None = None,
    ) -> None:
        self.model, self.loss, self.optimizer, self.step = model, loss, optimizer, step
        self.where: Placement = optimizer.placement
        self.xp, self.device = self.where.xp, self.where.device
        self.index_dtype = self.where.index_dtype
        self.X, self.T = data
        self.sparse = is_sparse(self.X)
        self.validation, self.eval_set, self.score = validation, eval_set, score
        self.n = n = self.X.shape[0]
        batch = min(batch_size, n)
        self.bounds = [(s, min(s + batch, n)) for s in range(0, n, batch)]
        # The rows this process steps on: each batch, or (distributed) this rank's share of it,
        # which the sampler also hands the optimizer as the weight of its gradients.
        self.sampler, self.shards, self.ranks = None, self.bounds, 1
        if distributed:
            assert isinstance(optimizer, dist.DistributedOptimizer)
            self.sampler = optimizer.sampler = dist.DistributedSampler(n, batch, shuffle=False)
            shares = [self.sampler.shard(range(s, e)) for s, e in self.bounds]
            self.shards, self.ranks = [(r.start, r.stop) for r in shares], self.sampler.world_size
        # A mean loss times the batch's rows sums the epoch's loss; a summed loss already does.
        self.per_row = loss.reduction == "mean"
        # Where the backend captures a whole epoch of the captured step (JAX), an epoch is one
        # compiled call; sparse rows are densified on the host batch by batch, so step by step.
        captured = None if plan is None or self.sparse else _CapturedEpoch(self, plan)
        self.captured = None if captured is None or captured.compiled is None else captured

    # ---- the epochs
    def epochs(
        self,
        epochs: int,
        history: History,
        rng: Any,
        schedule: LRScheduler | None,
        rule: EarlyStopping | None,
        callbacks: Sequence[Callback],
        bar: EpochProgress | None,
    ) -> dict[str, Array] | None:
        """Up to ``epochs`` epochs; returns the best validation weights of this run, if any."""
        best = None
        for _ in range(epochs):
            order = None
            if rng is not None:  # shuffled on the host, moved once per epoch
                indices = rng.permutation(self.n)
                on_device = from_numpy(
                    indices, xp=self.xp, dtype=self.index_dtype, device=self.device
                )
                order = (on_device, indices)
            logs = self.epoch(history, order, bar)
            if schedule is not None:
                schedule.step()
            new_best, note = self._track(history, logs, rule, schedule)
            if new_best:
                best = self._copy_params()
            if bar is not None:
                bar.end_epoch(logs)
                if note:
                    bar.log(note)
            stop = [c for c in callbacks if c.on_epoch_end(history.n_epochs, logs)]
            if stop and not history.stopped_early:
                history.stopped_early = True
                history.stop_reason = f"{type(stop[0]).__name__} asked to stop."
            if history.stopped_early:
                if bar is not None:
                    bar.log(history.stop_reason)
                break
        return best

    def epoch(self, history: History, order: _Order, bar: EpochProgress | None) -> dict[str, float]:
        """One pass over the data, recorded in ``history``; its values as ``logs``."""
        epoch = history.n_epochs + 1
        lr = self.optimizer.lr
        snapshot = self._snapshot()
        with self.where.floating_point_errors_quiet():
            if self.captured is not None:
                if bar is not None:
                    bar.start_epoch(epoch, 1)  # one call steps the whole epoch
                step_losses, summed, report = self.captured(order)
                if bar is not None:
                    bar.step([summed], self.n)
            else:
                if bar is not None:
                    bar.start_epoch(epoch, len(self.bounds))
                steps = self._steps(order, bar)
                summed = functools.reduce(operator.add, steps)
                report = self._report(summed, self.validation, self.eval_set)
            values = self.where.to_host(report)  # the read
        total, finite, *scores = (float(v) for v in values)
        total, finite = self._agreed([total, finite])
        loss = total / self.n
        if not (math.isfinite(loss) and finite == self.ranks):
            if self.captured is None:
                step_losses = self.xp.stack(steps)
            with self.where.floating_point_errors_quiet():
                self._recover(epoch, snapshot, order, step_losses)
        history.n_epochs, history.samples = epoch, history.samples + self.n
        history.loss.append(loss)
        logs = {"loss": loss, "lr": lr}
        if self.eval_set is not None:
            assert history.eval_loss is not None and history.eval_scores is not None
            logs["eval_loss"], logs["eval_score"] = scores[0], scores[1]
            history.eval_loss.append(scores[0])
            history.eval_scores.append(scores[1])
        if self.validation is not None:
            assert history.validation_scores is not None
            logs["validation_score"] = scores[-1]
            history.validation_scores.append(scores[-1])
        return logs

    def _track(
        self,
        history: History,
        logs: dict[str, float],
        rule: EarlyStopping | None,
        schedule: LRScheduler | None,
    ) -> tuple[bool, str]:
        """Update the best values and the stopping count; whether this epoch's weights are the
        best validation weights so far, and a note for the progress bar (or "")."""
        improved, new_best = True, False
        if self.validation is not None:
            assert history.best_score is not None
            value = logs["validation_score"]
            improved = rule is None or value >= history.best_score + rule.tol
            if value > history.best_score:
                history.best_score, history.best_epoch, new_best = value, history.n_epochs, True
        elif rule is not None:
            value = logs["loss"]
            improved = value <= history.best_loss - rule.tol
            if value < history.best_loss:
                history.best_loss, history.best_epoch = value, history.n_epochs
        note = ""
        if rule is not None:
            history.no_improvement = 0 if improved else history.no_improvement + 1
            if history.no_improvement > rule.n_iter_no_change:
                what = "Validation score" if self.validation is not None else "Training loss"
                stalled = (
                    f"{what} did not improve more than tol={rule.tol} for "
                    f"{rule.n_iter_no_change} consecutive epochs."
                )
                on_stall = getattr(schedule, "on_stall", None)
                if on_stall is not None and on_stall():  # go on at a smaller learning rate
                    history.no_improvement = 0
                    note = f"{stalled} Setting learning rate to {self.optimizer.lr:g}."
                else:
                    history.stopped_early = True
                    history.stop_reason = f"{stalled} Stopping."
        return new_best, note

    def _steps(self, order: _Order, bar: EpochProgress | None) -> list[Array]:
        """Every batch once; each step's summed loss as a 0-d array (no read-back)."""
        out, rows = [], 0
        for s, e in self.shards:
            value = self._step(order, s, e)
            out.append(value * float(e - s) if self.per_row else value)
            rows += e - s
            if bar is not None:
                bar.step(out, rows)
        return out

    def _step(self, order: _Order, s: int, e: int) -> Array:
        """One step on rows ``s:e`` of the epoch's order."""
        if self.sampler is not None:
            self.sampler.rows = e - s  # this rank's weight in the averaged gradient
        x, y = self._batch(order, s, e)
        # On a JAX mesh the rows are split over its devices; elsewhere this passes them through.
        return self.step(dist.shard_batch(x, like=self.where), dist.shard_batch(y, like=self.where))

    def _agreed(self, values: list[float]) -> list[float]:
        """``values`` summed over the ranks (one collective): every rank decides on the same
        numbers. As they are outside distributed training."""
        return values if self.sampler is None else dist.all_reduce_sum(values)

    def _batch(self, order: _Order, s: int, e: int) -> tuple[Array, Array]:
        """Rows ``s:e`` of the epoch's order, gathered on the device (a slice if unshuffled);
        sparse rows are gathered on the host and densified."""
        if order is None:
            x = _densified(self.where, self.X[s:e]) if self.sparse else self.X[s:e, ...]
            return x, self.T[s:e, ...]
        on_device, on_host = order
        idx = on_device[s:e]
        if self.sparse:
            x = _densified(self.where, self.X[on_host[s:e]])
        else:
            x = self.xp.take(self.X, idx, axis=0)
        return x, self.xp.take(self.T, idx, axis=0)

    def _report(
        self,
        summed: Array,
        validation: tuple[Array, Array] | None,
        eval_set: tuple[Array, Array] | None,
    ) -> Array:
        """What an epoch reads back, as one array: the summed loss, whether every weight is
        finite, the eval set's loss and score, the validation score (as far as there are sets)."""
        parts = [summed, self._finite()]
        if eval_set is not None:
            parts += self._evaluate(*eval_set)
        if validation is not None:
            parts.append(self._evaluate(*validation)[1])
        xp, dtype = self.xp, self.where.dtype
        return xp.stack([xp.astype(p, dtype) for p in parts])

    def _evaluate(self, X: Array, T: Array) -> list[Array]:
        """Mean loss and score of the model on prepared data, as 0-d arrays (no read-back)."""
        assert self.score is not None
        z = self.model._forward(X, False)
        value = self.loss._forward(z, T, self.xp)
        self.loss._cache = None  # nothing will be propagated back: let the outputs go
        if not self.per_row:
            value = value / float(X.shape[0])
        return [value, self.score(z, T)]

    # ---- non-finite recovery
    def _finite(self) -> Array:
        """Whether every weight is finite, as a 0-d array."""
        xp = self.xp
        checks = [xp.all(xp.isfinite(v)) for v in self.model.parameters().values()]
        return functools.reduce(xp.logical_and, checks)

    def _copy_params(self) -> dict[str, Array]:
        return {k: self.where.copy(v) for k, v in self.model.parameters().items()}

    def _snapshot(self) -> tuple[dict[str, Array], dict[str, Any]]:
        return self._copy_params(), self.optimizer.state_dict()

    def _restore(self, snapshot: tuple[dict[str, Array], dict[str, Any]]) -> None:
        params, opt_state = snapshot
        self.model.set_parameters({k: self.where.copy(v) for k, v in params.items()})
        self.optimizer.load_state_dict(opt_state)

    def _recover(self, epoch: int, snapshot: Any, order: _Order, step_losses: Array) -> None:
        """Replay the epoch up to the last step that kept loss and weights finite, then raise;
        ``step_losses``: each step's summed loss, a 1-d array."""
        values = self._agreed([float(v) for v in self.where.to_host(step_losses)])
        bad = next((i for i, v in enumerate(values) if not math.isfinite(v)), len(values))
        self._restore(snapshot)
        good, kept = snapshot, 0
        for i, (s, e) in enumerate(self.shards[:bad]):
            self._step(order, s, e)
            # The ranks' weights are bitwise equal (one averaged gradient): they break alike.
            if not bool(self.where.to_host(self._finite())):
                break
            good, kept = self._snapshot(), i + 1
        self._restore(good)
        what = "loss" if bad < len(values) else "weights"
        where = f"step {bad + 1}" if bad < len(values) else f"the update of step {len(values)}"
        raise TrainingError(
            f"training diverged: the {what} became non-finite at epoch {epoch}, {where} of "
            f"{len(self.bounds)}; the model keeps the last finite weights (after {kept} step(s) "
            f"of epoch {epoch}). {TrainingError.advice}"
        )


class _CapturedEpoch:
    """A whole epoch of the captured step as one compiled call, where the backend captures one
    (its table entry's ``capture_epoch``; JAX).

    :meth:`captured_epoch` is the epoch as a pure function: the batches are gathered on the
    device in the epoch's order, the full ones stepped by the backend's ``scan`` over
    :meth:`StepPlan.captured_step`, a short last one stepped after them; then the epoch's
    report (:meth:`_Run._report`) is made with the new weights swapped into the model. So an
    epoch is one call and one read-back, and it compiles once per run.
    """

    def __init__(self, run: _Run, plan: StepPlan) -> None:
        self.run, self.plan = run, plan
        # None: the backend steps an epoch step by step.
        self.compiled = run.where.backend.capture_epoch(self.captured_epoch, run.device)

    def __call__(self, order: _Order) -> tuple[Array, Array, Array]:
        """One epoch in ``order``: each step's summed loss (1-d), their sum and the report, all
        on the device; the model, its gradients and the optimizer are left as the steps leave
        them."""
        run, plan, opt, where = self.run, self.plan, self.plan.optimizer, self.run.where
        assert self.compiled is not None
        # The parameters' dtype: the step count's powers in Adam's bias correction keep it.
        lr, steps = (where.asarray(float(v)) for v in (opt.lr, opt.steps))
        indices = None if order is None else order[0]
        settings = plan.current_settings()  # a callback may have changed one: compiles anew
        params, state, grads, losses, summed, report = self.compiled(
            plan.params(),
            opt.state,
            lr,
            steps,
            run.X,
            run.T,
            indices,
            run.validation,
            run.eval_set,
            settings=settings,
        )
        plan.set_params(params)
        opt.state = state
        plan.set_grads(grads)
        opt.steps += len(run.bounds)
        return losses, summed, report

    def captured_epoch(
        self,
        scan: Scan,
        params: list[Array],
        state: Any,
        lr: Array,
        steps: Array,
        X: Array,
        T: Array,
        order: Array | None,
        validation: tuple[Array, Array] | None,
        eval_set: tuple[Array, Array] | None,
        *,
        settings: Any = None,
    ) -> tuple[list[Array], Any, list[Array], Array, Array, Array]:
        """The epoch as a pure function, for a tracing compiler: (``scan``, parameters,
        optimizer state, learning rate, step count, X, T, order or None, validation and eval
        sets) -> (new parameters, new state, the last gradients, each step's summed loss, their
        sum, the report). ``settings`` (:meth:`StepPlan.settings`) only keys the compilation."""
        run, plan, xp = self.run, self.plan, self.run.xp
        n, b = X.shape[0], run.bounds[0][1]
        full = n // b  # rows full * b onwards: the short last batch
        rows = full * b

        def batch(item: Any) -> tuple[Array, Array]:
            if order is None:  # the rows themselves
                return item  # type: ignore[no-any-return]
            return xp.take(X, item, axis=0), xp.take(T, item, axis=0)

        def step(carry: Any, item: Any) -> tuple[Any, Array]:
            params, state, steps, _ = carry
            x, y = batch(item)
            params, state, steps, grads, value = plan.captured_step(params, state, lr, steps, x, y)
            summed = value * float(x.shape[0]) if run.per_row else value
            return (params, state, steps, grads), summed

        if order is None:
            items: Any = tuple(xp.reshape(a[:rows, ...], (full, b, *a.shape[1:])) for a in (X, T))
        else:
            items = xp.reshape(order[:rows], (full, b))
        grads = [xp.zeros_like(p) for p in params]
        carry, losses = scan(step, (params, state, steps, grads), items)
        if rows < n:
            last = (X[rows:, ...], T[rows:, ...]) if order is None else order[rows:]
            carry, value = step(carry, last)
            losses = xp.concat([losses, xp.reshape(value, (1,))])
        params, state, _, grads = carry
        summed = xp.sum(losses)
        with plan.params_in(params):  # the report on the new weights
            report = run._report(summed, validation, eval_set)
        return params, state, grads, losses, summed, report
