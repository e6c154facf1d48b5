"""How the estimators fit: from scikit-learn's parameters and data to :func:`training.fit`.

``fit``/``partial_fit`` of :class:`~portable_mlp.estimator.MLPClassifier` and ``MLPRegressor``
come here. This module checks the data on the host, draws the model and makes the optimizer and
schedule the parameters name, holds out scikit-learn's early-stopping split, and runs
:func:`~portable_mlp.training.fit`, writing its :class:`~portable_mlp.training.History` back
to the estimator's fitted attributes. ``estimator.py`` keeps what scikit-learn sees: the
parameters, the fitted attributes, the labels, prediction and the state a checkpoint stores.
"""

from __future__ import annotations

import math
import warnings
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from . import _backend, _validation, datasets, distributed, optim
from ._backend import Array, Placement
from .losses import SampleWeightedLoss
from .models import MLP
from .training import EarlyStopping, History, fit

if TYPE_CHECKING:
    from .estimator import _BaseMLP

#: Host data for one fit: X (dense or CSR), float targets, row weights (None: all 1).
Data = tuple[Any, NDArray[np.float64], NDArray[np.float64] | None]

# The fitted attributes that go on in training.fit's History: attribute -> History field.
HISTORY = {
    "loss_curve_": "loss",
    "validation_scores_": "validation_scores",
    "eval_loss_curve_": "eval_loss",
    "eval_scores_": "eval_scores",
    "t_": "samples",
    "best_validation_score_": "best_score",
    "_no_improvement": "no_improvement",
}


def fit_estimator(
    est: _BaseMLP, X: Any, y: Any, sample_weight: Any, eval_set: Any, eval_name: str
) -> None:
    """``est.fit``: a fresh model (or, with ``warm_start``, the fitted one and a fresh
    optimizer) trained for up to ``max_iter`` epochs."""
    _validation.check_estimator_params(est)
    warm = est.warm_start and est.__sklearn_is_fitted__()
    where = est.model_.placement if warm else _placement(est, X)
    data, strata = _training_data(est, X, y, sample_weight, where, mode="warm" if warm else "fit")
    if warm:  # a fresh optimizer for each fit, as in scikit-learn
        est._optimizer, est._schedule = make_optimizer(est)
    else:
        init_model(est, data[0].shape[1], where)
    watched = None
    if eval_set is not None:
        X_eval = _validation.check_features(
            eval_set[0], "X_eval", who=type(est).__name__, limit=where.dtype
        )
        est._check_n_features(X_eval, "eval_set X")
        raw, info = est._read_targets(eval_set[1], X_eval.shape[0])
        watched = (X_eval, est._encode(raw, info, mode="partial")[0], None)
    est.eval_loss_curve_ = None if watched is None else []
    est.eval_scores_ = None if watched is None else []
    validation = None
    if est.early_stopping:  # split after the weights are drawn, from the same generator
        data, validation = _split(est, data, strata)
    rule = EarlyStopping(float(est.tol), est.n_iter_no_change)
    epochs = int(est.max_iter)
    history = _train(est, data, epochs, validation, watched, rule, eval_name)
    if validation is not None:
        est.best_loss_ = None
    if not history.stopped_early:
        warnings.warn(
            f"Stochastic Optimizer: Maximum iterations ({epochs}) reached and the "
            "optimization hasn't converged yet.",
            _validation.sklearn_classes()["ConvergenceWarning"],
            stacklevel=3,
        )


def partial_fit_estimator(est: _BaseMLP, X: Any, y: Any, sample_weight: Any, classes: Any) -> None:
    """``est.partial_fit``: one epoch over ``X, y`` (the classifier needs ``classes`` on the
    first call)."""
    _validation.check_estimator_params(est)
    if est.early_stopping:
        raise ValueError("partial_fit does not support early_stopping=True")
    first = not est.__sklearn_is_fitted__()
    if first and est._is_classifier and classes is None:
        raise ValueError("classes must be passed on the first call to partial_fit")
    where = _placement(est, X) if first else est.model_.placement
    mode = "first" if first else "partial"
    data, _ = _training_data(est, X, y, sample_weight, where, mode=mode, classes=classes)
    if first:
        init_model(est, data[0].shape[1], where)
    _train(est, data, 1, rule=EarlyStopping(float(est.tol), est.n_iter_no_change))


def _placement(est: _BaseMLP, X: Any) -> Placement:
    """Where a new model lives: with ``X`` under scikit-learn's ``array_api_dispatch`` (in
    ``dtype``, else X's floating dtype), else where ``backend``, ``device`` and ``dtype`` say."""
    xp = _validation.namespace_or_none(X) if _validation.array_api_dispatch() else None
    if xp is None or _validation.is_sparse(X):
        return _backend.placement(est.backend, est.device, est.dtype)
    dtype = est.dtype
    if dtype is None and _backend.isdtype(xp, X.dtype, "real floating"):
        dtype = X.dtype
    return _backend.placement(xp, _backend.device(X), dtype)


def _training_data(
    est: _BaseMLP,
    X: Any,
    y: Any,
    sample_weight: Any,
    where: Placement,
    *,
    mode: str,
    classes: Any = None,
) -> tuple[Data, Any]:
    """Checked host data, and the labels to stratify a split by (or None). ``mode``: ``"fit"``
    and ``"first"`` (a first ``partial_fit``) take classes, outputs and feature names from the
    data; ``"warm"`` and ``"partial"`` check them against the fitted ones."""
    who = type(est).__name__
    _validation.check_y_given(y, who)
    fresh = mode in ("fit", "first")
    if not fresh:
        _validation.check_feature_names(est, X, reset=False)
    X_host = _validation.check_features(X, who=who, limit=where.dtype)
    if not fresh:
        est._check_n_features(X_host)
    raw, info = est._read_targets(y, X_host.shape[0])
    weights = _validation.check_sample_weight(sample_weight, X_host.shape[0])
    if weights is not None and not weights.all():  # a zero weight removes its row exactly
        keep = np.flatnonzero(weights)
        X_host, raw, weights = X_host[keep], raw[keep], weights[keep]
    if weights is not None and (weights == 1.0).all():
        weights = None  # unit weights change nothing: the unweighted loss, exactly
    targets, strata = est._encode(raw, info, mode=mode, classes=classes)
    if fresh:
        _validation.check_feature_names(est, X, reset=True)
    return (X_host, targets, weights), strata


def _split(est: _BaseMLP, data: Data, strata: Any) -> tuple[Data, Data]:
    """scikit-learn's early-stopping split: ``validation_fraction`` of the rows held out."""
    X_host, targets, weights = data
    rows = range(X_host.shape[0])
    train, val, _, _ = datasets.train_test_split(
        rows,
        rows if strata is None else strata,
        test_size=est.validation_fraction,
        rng=est._generator,
        stratify=strata is not None,
    )
    if len(val) < 2:
        raise ValueError(
            "The validation set is too small. Increase 'validation_fraction' or the size of "
            "your dataset."
        )
    held = (X_host[val], targets[val], None if weights is None else weights[val])
    kept = (X_host[train], targets[train], None if weights is None else weights[train])
    return kept, held


def _train(
    est: _BaseMLP,
    data: Data,
    epochs: int,
    validation: Data | None = None,
    watched: Data | None = None,
    rule: EarlyStopping | None = None,
    eval_name: str = "eval",
) -> History:
    """``epochs`` of :func:`~portable_mlp.training.fit` on host data, going on from the
    fitted attributes and written back to them (also when training diverges)."""
    where = est.model_.placement
    weighted = data[2] is not None
    loss = SampleWeightedLoss(est._loss()) if weighted else est._loss()

    def on_device(X: Any, T: Any, w: Any) -> tuple[Any, Array]:
        # dense X moved once; sparse X stays on the host for fit to densify batch by batch
        X_dev = X if _validation.is_sparse(X) else where.asarray(X)
        if weighted:  # the weights travel as one more target column
            T = np.concatenate([T, (np.ones(len(T)) if w is None else w)[:, None]], axis=1)
        return X_dev, where.asarray(T)

    n = data[0].shape[0]
    if isinstance(est._schedule, optim.InvScalingLR):
        est._schedule.samples_per_epoch = n
    history = History(
        **{f: getattr(est, a) for a, f in HISTORY.items()},
        n_epochs=len(est.loss_curve_),
        best_loss=math.inf if est.best_loss_ is None else est.best_loss_,
    )
    start = history.n_epochs
    try:
        fit(
            est.model_,
            loss,
            est._optimizer,
            *on_device(*data),
            epochs=epochs,
            batch_size=min(200 if est.batch_size == "auto" else int(est.batch_size), n),
            shuffle=est.shuffle,
            rng=est._generator,
            schedule=est._schedule,
            validation=None if validation is None else on_device(*validation),
            eval_set=None if watched is None else on_device(*watched),
            early_stopping=rule,
            alpha=est.alpha,
            # A capture is made per call: it pays over many epochs, not over partial_fit's one
            # (on JAX a fresh trace and compilation per call would cost more than it saves).
            compile=bool(est.compile) and epochs > 1,
            progress=bool(est.verbose),
            eval_name=eval_name,
            history=history,
        )
    finally:
        for attribute, name in HISTORY.items():
            setattr(est, attribute, getattr(history, name))
        est.n_iter_ = history.n_epochs - start  # this call's epochs, as in scikit-learn
        if est.best_loss_ is not None:  # None after an early-stopped fit, as in scikit-learn
            est.best_loss_ = history.best_loss
    return history


def init_model(est: _BaseMLP, n_features: int, where: Placement) -> None:
    """A fresh model of ``n_features`` inputs on ``where``, its optimizer and empty curves."""
    # One generator per fresh model: the same random_state gives the same fit every time.
    # It draws the initial weights, then the validation split, then each epoch's order.
    est._generator = rank_agreed_rng(est.random_state)
    sizes: Any = est.hidden_layer_sizes
    hidden = [int(sizes)] if _validation.is_int(sizes) else [int(s) for s in sizes]
    est.model_ = MLP(
        [n_features, *hidden, est.n_outputs_],
        est.activation,
        rng=est._generator,
        init="xavier_uniform",
        placement=where,
    )
    if distributed.is_initialized() and est.model_.placement.mutable:
        distributed.broadcast_parameters(est.model_)  # rank 0's weights, as one process
    est.n_features_in_ = n_features
    est.loss_curve_ = []
    est.validation_scores_ = [] if est.early_stopping else None
    est.eval_loss_curve_ = est.eval_scores_ = None
    est.best_loss_ = math.inf
    est.best_validation_score_ = -math.inf if est.early_stopping else None
    est.n_iter_ = est.t_ = est._no_improvement = 0
    est._optimizer, est._schedule = make_optimizer(est)


def make_optimizer(est: _BaseMLP) -> tuple[optim.Optimizer, optim.LRScheduler]:
    """A fresh optimizer at ``learning_rate_init`` and its learning-rate schedule."""
    opt: optim.Optimizer
    if est.solver == "sgd":
        opt = optim.SGD(
            est.model_,
            lr=est.learning_rate_init,
            momentum=est.momentum,
            nesterov=est.nesterovs_momentum and est.momentum > 0,
            max_grad_norm=est.max_grad_norm,
        )
    else:
        cls = optim.OPTIMIZERS[est.solver]
        assert issubclass(cls, optim.Adam)
        opt = cls(
            est.model_,
            lr=est.learning_rate_init,
            betas=(est.beta_1, est.beta_2),
            eps=est.epsilon,
            weight_decay=0.0,
            max_grad_norm=est.max_grad_norm,
        )
    horizon = int(est.max_iter)
    schedule: optim.LRScheduler
    if est.learning_rate == "invscaling":
        schedule = optim.InvScalingLR(opt, est.power_t, samples=est.t_)
    elif est.learning_rate == "adaptive":
        schedule = optim.AdaptiveLR(opt)
    elif est.learning_rate == "step":
        schedule = optim.StepLR(opt, step_size=max(1, horizon // 3), gamma=0.1)
    elif est.learning_rate == "cosine":
        schedule = optim.CosineAnnealingLR(opt, T_max=horizon)
    else:
        schedule = optim.ConstantLR(opt)
    return opt, schedule


def rank_agreed_rng(random_state: int | None) -> Any:
    """The generator of the initial weights, the validation split and every epoch's order.

    Under ``torchrun`` every rank trains on its share of the same global batches (``batch_size``
    rows over all ranks; :func:`~portable_mlp.training.fit`), so all draw from one seed: without
    ``random_state``, rank 0's fresh seed.
    """
    if random_state is None and distributed.is_initialized():
        random_state = distributed.shared_seed()
    return _backend.host_rng(random_state)
