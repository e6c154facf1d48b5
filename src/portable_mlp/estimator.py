"""``MLPClassifier`` and ``MLPRegressor``: scikit-learn's estimators, on any array backend.

Parameters mean what they mean in ``sklearn.neural_network.MLPClassifier``/``MLPRegressor``,
plus ``backend``, ``device``, ``dtype`` and ``max_grad_norm``. Training data is validated on the
host once and moved to the device once (sparse ``X``: one batch at a time), then trained by
:func:`portable_mlp.training.fit`; this module keeps the scikit-learn protocol, the labels,
prediction and the state a checkpoint stores.

``ConvergenceWarning`` and ``NotFittedError`` are scikit-learn's own classes' subclasses where
scikit-learn is installed; they are made when first used (importing scikit-learn takes seconds).
"""

from __future__ import annotations

import inspect
import math
import warnings
from collections.abc import Mapping, Sequence
from types import ModuleType
from typing import Any

import numpy as np
from numpy.typing import NDArray

from . import _backend, _validation, checkpoints, datasets, distributed, metrics, optim
from . import functional as F
from ._backend import Array, Placement
from .layers import ACTIVATIONS, Module
from .losses import BCEWithLogitsLoss, CrossEntropyLoss, Loss, MSELoss, SampleWeightedLoss
from .models import MLP
from .training import EarlyStopping, History, TrainingError, fit

# Also ConvergenceWarning and NotFittedError, made on first use by __getattr__.
__all__ = ["MLPClassifier", "MLPRegressor", "TrainingError"]

_SCHEDULES = ("constant", "invscaling", "adaptive", "step", "cosine")
_LAZY = ("ConvergenceWarning", "NotFittedError", "DataConversionWarning")
# A sparse X is predicted in dense blocks of about this many values.
_DENSE_BLOCK = 1 << 22


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return _validation.sklearn_classes()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _raise_not_fitted(who: str) -> None:
    raise _validation.sklearn_classes()["NotFittedError"](
        f"This {who} instance is not fitted yet; call fit() first"
    )


class _BaseMLP:
    """What the classifier and the regressor share: parameters, the training loop, checkpoints."""

    _is_classifier = False

    def __init__(
        self,
        hidden_layer_sizes: Sequence[int] = (100,),
        activation: str = "relu",
        *,
        solver: str = "adam",
        alpha: float = 1e-4,
        batch_size: int | str = 200,
        learning_rate: str = "constant",
        learning_rate_init: float = 1e-3,
        power_t: float = 0.5,
        max_iter: int = 200,
        shuffle: bool = True,
        random_state: int | None = None,
        tol: float = 1e-4,
        verbose: bool = False,
        warm_start: bool = False,
        momentum: float = 0.9,
        nesterovs_momentum: bool = True,
        early_stopping: bool = False,
        validation_fraction: float = 0.1,
        beta_1: float = 0.9,
        beta_2: float = 0.999,
        epsilon: float = 1e-8,
        n_iter_no_change: int | float = 10,
        max_grad_norm: float | None = None,
        backend: str | ModuleType = "numpy",
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        # Stored as given, as scikit-learn requires (clone() rebuilds from get_params()); only a
        # backend module is kept by its name, so that the estimator copies and pickles.
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.solver = solver
        self.alpha = alpha
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.learning_rate_init = learning_rate_init
        self.power_t = power_t
        self.max_iter = max_iter
        self.shuffle = shuffle
        self.random_state = random_state
        self.tol = tol
        self.verbose = verbose
        self.warm_start = warm_start
        self.momentum = momentum
        self.nesterovs_momentum = nesterovs_momentum
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = epsilon
        self.n_iter_no_change = n_iter_no_change
        self.max_grad_norm = max_grad_norm
        self.backend = _backend_spelling(backend)
        self.device = device
        self.dtype = dtype

    # ------------------------------------------------------------------ scikit-learn protocol
    @classmethod
    def _param_names(cls) -> list[str]:
        sig = inspect.signature(_BaseMLP.__init__)
        return [p for p in sig.parameters if p != "self"]

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """The constructor's parameters, as scikit-learn's ``get_params``."""
        return {name: getattr(self, name) for name in self._param_names()}

    def set_params(self, **params: Any) -> _BaseMLP:
        """Set constructor parameters by name; unknown names are an error."""
        valid = self._param_names()
        for name, value in params.items():
            if name not in valid:
                raise ValueError(
                    f"invalid parameter {name!r} for {type(self).__name__}; "
                    f"valid: {', '.join(valid)}"
                )
            setattr(self, name, _backend_spelling(value) if name == "backend" else value)
        return self

    def __repr__(self) -> str:
        defaults = type(self)().get_params()
        changed = [f"{k}={v!r}" for k, v in self.get_params().items() if v != defaults[k]]
        return f"{type(self).__name__}({', '.join(changed)})"

    def __getstate__(self) -> dict[str, Any]:
        # Device and dtype objects of some backends do not pickle; their spellings do.
        state = dict(self.__dict__)
        if self.device is not None and not isinstance(self.device, (str, int)):
            where = _backend.placement(self.backend, self.device)
            state["device"] = where.device_spec
        if self.dtype is not None and not isinstance(self.dtype, str):
            state["dtype"] = _backend.dtype_name(self.dtype)
        return state

    def __sklearn_tags__(self) -> Any:
        from sklearn import utils

        classifier = self._is_classifier
        return utils.Tags(
            estimator_type="classifier" if classifier else "regressor",
            target_tags=utils.TargetTags(required=True, multi_output=not classifier),
            classifier_tags=utils.ClassifierTags(multi_label=True) if classifier else None,
            regressor_tags=None if classifier else utils.RegressorTags(),
            input_tags=utils.InputTags(sparse=True),
            # Under config_context(array_api_dispatch=True) the model lives with the data.
            array_api_support=True,
        )

    def __sklearn_is_fitted__(self) -> bool:
        return hasattr(self, "model_")

    # ------------------------------------------------------------------ fitted attributes
    @property
    def coefs_(self) -> list[NDArray[Any]]:
        """Each layer's weights ``(p_in, p_out)``, copied to the host on each access."""
        self._check_fitted()
        where = self.model_.placement
        return [where.to_host(layer.weight) for _, layer in self.model_._linears]

    @property
    def intercepts_(self) -> list[NDArray[Any]]:
        """Each layer's biases ``(p_out,)``, copied to the host on each access."""
        self._check_fitted()
        where = self.model_.placement
        return [where.to_host(layer.bias) for _, layer in self.model_._linears]

    @property
    def loss_(self) -> float:
        """The last epoch's mean training loss."""
        self._check_fitted()
        if not self.loss_curve_:
            raise AttributeError(f"{type(self).__name__} has not finished an epoch: no loss_")
        return self.loss_curve_[-1]

    @property
    def n_layers_(self) -> int:
        """Layers counted as scikit-learn does: input, hidden and output."""
        self._check_fitted()
        return len(self.model_.sizes)

    @property
    def out_activation_(self) -> str:
        """What turns the last layer's outputs into predictions (scikit-learn's names)."""
        self._check_fitted()
        return self._out_activation()

    def _out_activation(self) -> str:
        return "identity"

    # ------------------------------------------------------------------ fitting
    def fit(
        self,
        X: Any,
        y: Any,
        sample_weight: Any = None,
        *,
        eval_set: tuple[Any, Any] | None = None,
        eval_name: str = "eval",
    ) -> _BaseMLP:
        """Train on ``X: (n, p)`` and ``y`` for up to ``max_iter`` epochs; returns ``self``.

        ``sample_weight: (n,)`` weights each row's loss (a zero weight removes the row).
        ``eval_set=(X_eval, y_eval)`` is only watched, never learnt from or stopped on: its loss
        and score after every epoch go to ``eval_loss_curve_`` and ``eval_scores_``; the
        progress bar calls it ``eval_name``.
        """
        self._check_params()
        warm = self.warm_start and self.__sklearn_is_fitted__()
        where = self.model_.placement if warm else self._placement(X)
        X_host, targets, weights, strata = self._training_data(
            X, y, sample_weight, where, mode="warm" if warm else "fit"
        )
        if warm:  # a fresh optimizer for each fit, as in scikit-learn
            self._optimizer, self._schedule = self._make_optimizer()
        else:
            self._init_model(X_host.shape[1], where)
        watched = None
        if eval_set is not None:
            X_eval = _validation.check_features(
                eval_set[0], "X_eval", who=type(self).__name__, limit=where.dtype
            )
            self._check_n_features(X_eval, "eval_set X")
            raw, info = self._read_targets(eval_set[1], X_eval.shape[0])
            watched = (X_eval, self._encode(raw, info, mode="partial")[0], None)
        self.eval_loss_curve_ = None if watched is None else []
        self.eval_scores_ = None if watched is None else []
        validation = None
        if self.early_stopping:  # split after the weights are drawn, from the same generator
            X_host, targets, weights, validation = self._split(X_host, targets, weights, strata)
        rule = EarlyStopping(float(self.tol), self.n_iter_no_change)
        epochs = int(self.max_iter)
        history = self._train(
            X_host, targets, weights, epochs, validation, watched, rule, eval_name
        )
        if validation is not None:
            self.best_loss_ = None
        if not history.stopped_early:
            warnings.warn(
                f"Stochastic Optimizer: Maximum iterations ({epochs}) reached and the "
                "optimization hasn't converged yet.",
                _validation.sklearn_classes()["ConvergenceWarning"],
                stacklevel=2,
            )
        return self

    def _partial_fit(self, X: Any, y: Any, sample_weight: Any, classes: Any) -> _BaseMLP:
        """One epoch over ``X, y`` (the classifier needs ``classes`` on the first call)."""
        self._check_params()
        if self.early_stopping:
            raise ValueError("partial_fit does not support early_stopping=True")
        first = not self.__sklearn_is_fitted__()
        if first and self._is_classifier and classes is None:
            raise ValueError("classes must be passed on the first call to partial_fit")
        where = self._placement(X) if first else self.model_.placement
        X_host, targets, weights, _ = self._training_data(
            X, y, sample_weight, where, mode="first" if first else "partial", classes=classes
        )
        if first:
            self._init_model(X_host.shape[1], where)
        rule = EarlyStopping(float(self.tol), self.n_iter_no_change)
        self._train(X_host, targets, weights, 1, rule=rule)
        return self

    def _placement(self, X: Any) -> Placement:
        """Where a new model lives: with ``X`` under scikit-learn's ``array_api_dispatch``
        (in ``dtype``, else X's floating dtype), else where ``backend``, ``device`` and
        ``dtype`` say."""
        xp = _validation.namespace_or_none(X) if _validation.array_api_dispatch() else None
        if xp is None or _validation.is_sparse(X):
            return _backend.placement(self.backend, self.device, self.dtype)
        dtype = self.dtype
        if dtype is None and _backend.isdtype(xp, X.dtype, "real floating"):
            dtype = X.dtype
        return _backend.placement(xp, _backend.device(X), dtype)

    def _training_data(
        self,
        X: Any,
        y: Any,
        sample_weight: Any,
        where: Placement,
        *,
        mode: str,
        classes: Any = None,
    ) -> tuple[Any, NDArray[np.float64], NDArray[np.float64] | None, Any]:
        """Checked host data: ``X`` (dense or CSR), float targets, row weights (None: all 1)
        and the labels to stratify a split by (or None). ``mode``: ``"fit"`` and ``"first"``
        (a first ``partial_fit``) take classes, outputs and feature names from the data;
        ``"warm"`` and ``"partial"`` check them against the fitted ones."""
        who = type(self).__name__
        _validation.check_y_given(y, who)
        fresh = mode in ("fit", "first")
        if not fresh:
            _validation.check_feature_names(self, X, reset=False)
        X_host = _validation.check_features(X, who=who, limit=where.dtype)
        if not fresh:
            self._check_n_features(X_host)
        raw, info = self._read_targets(y, X_host.shape[0])
        weights = _validation.check_sample_weight(sample_weight, X_host.shape[0])
        if weights is not None and not weights.all():  # a zero weight removes its row exactly
            keep = np.flatnonzero(weights)
            X_host, raw, weights = X_host[keep], raw[keep], weights[keep]
        if weights is not None and (weights == 1.0).all():
            weights = None  # unit weights change nothing: the unweighted loss, exactly
        targets, strata = self._encode(raw, info, mode=mode, classes=classes)
        if fresh:
            _validation.check_feature_names(self, X, reset=True)
        return X_host, targets, weights, strata

    def _split(
        self, X_host: Any, targets: Any, weights: Any, strata: Any
    ) -> tuple[Any, Any, Any, tuple[Any, Any, Any]]:
        """scikit-learn's early-stopping split: ``validation_fraction`` of the rows held out."""
        rows = range(X_host.shape[0])
        train, val, _, _ = datasets.train_test_split(
            rows,
            rows if strata is None else strata,
            test_size=self.validation_fraction,
            rng=self._generator,
            stratify=strata is not None,
        )
        if len(val) < 2:
            raise ValueError(
                "The validation set is too small. Increase 'validation_fraction' or the size of "
                "your dataset."
            )
        held = (X_host[val], targets[val], None if weights is None else weights[val])
        kept = None if weights is None else weights[train]
        return X_host[train], targets[train], kept, held

    def _train(
        self,
        X_host: Any,
        targets: NDArray[np.float64],
        weights: NDArray[np.float64] | None,
        epochs: int,
        validation: tuple[Any, Any, Any] | None = None,
        watched: tuple[Any, Any, Any] | None = None,
        rule: EarlyStopping | None = None,
        eval_name: str = "eval",
    ) -> History:
        """``epochs`` of :func:`~portable_mlp.training.fit` on host data, going on from the
        fitted attributes and written back to them (also when training diverges)."""
        where = self.model_.placement
        loss = self._loss() if weights is None else SampleWeightedLoss(self._loss())
        weighted = weights is not None

        def on_device(X: Any, T: Any, w: Any) -> tuple[Any, Array]:
            # dense X moved once; sparse X stays on the host for fit to densify batch by batch
            X_dev = X if _validation.is_sparse(X) else where.asarray(X)
            if weighted:  # the weights travel as one more target column
                T = np.concatenate([T, (np.ones(len(T)) if w is None else w)[:, None]], axis=1)
            return X_dev, where.asarray(T)

        n = X_host.shape[0]
        if isinstance(self._schedule, optim.InvScalingLR):
            self._schedule.samples_per_epoch = n
        best_loss = math.inf if self.best_loss_ is None else self.best_loss_
        history = History(
            **{f: getattr(self, a) for a, f in _HISTORY.items()},
            n_epochs=len(self.loss_curve_),
            best_loss=best_loss,
        )
        start = history.n_epochs
        try:
            fit(
                self.model_,
                loss,
                self._optimizer,
                *on_device(X_host, targets, weights),
                epochs=epochs,
                batch_size=min(200 if self.batch_size == "auto" else int(self.batch_size), n),
                shuffle=self.shuffle,
                rng=self._generator,
                schedule=self._schedule,
                validation=None if validation is None else on_device(*validation),
                eval_set=None if watched is None else on_device(*watched),
                early_stopping=rule,
                alpha=self.alpha,
                # A capture is made per call: it pays over many epochs, not over partial_fit's
                # one (on JAX a fresh trace and compilation per call would cost more than it saves).
                compile=epochs > 1,
                progress=bool(self.verbose),
                eval_name=eval_name,
                history=history,
            )
        finally:
            for attribute, name in _HISTORY.items():
                setattr(self, attribute, getattr(history, name))
            self.n_iter_ = history.n_epochs - start  # this call's epochs, as in scikit-learn
            if self.best_loss_ is not None:  # None after an early-stopped fit, as in scikit-learn
                self.best_loss_ = history.best_loss
        return history

    def _check_params(self) -> None:
        name = type(self).__name__
        _check_choice(name, "solver", self.solver, optim.OPTIMIZERS)
        _check_choice(name, "learning_rate", self.learning_rate, _SCHEDULES)
        _check_choice(name, "activation", self.activation, ACTIVATIONS)
        sizes: Any = self.hidden_layer_sizes
        sizes = [sizes] if _is_int(sizes) else sizes
        if not (isinstance(sizes, Sequence) and all(_is_int(s) and s >= 1 for s in sizes)):
            raise ValueError(f"{name} hidden_layer_sizes must be positive ints, got {sizes!r}")
        batch: Any = self.batch_size
        if not (batch == "auto" or (_is_int(batch) and batch >= 1)):
            raise ValueError(f"{name} batch_size must be 'auto' or an int >= 1, got {batch!r}")
        if not (_is_int(self.max_iter) and self.max_iter >= 1):
            raise ValueError(f"{name} max_iter must be an int >= 1, got {self.max_iter!r}")
        stall = self.n_iter_no_change
        if not ((_is_int(stall) and stall >= 1) or stall == math.inf):
            raise ValueError(f"{name} n_iter_no_change must be an int >= 1 or inf, got {stall!r}")
        for key, interval in (
            ("alpha", "[0, inf)"),
            ("learning_rate_init", "(0, inf)"),
            ("power_t", "[0, inf)"),
            ("tol", "[0, inf)"),
            ("momentum", "[0, 1]"),
            ("validation_fraction", "(0, 1)"),
            ("beta_1", "[0, 1)"),
            ("beta_2", "[0, 1)"),
            ("epsilon", "(0, inf)"),
            ("max_grad_norm", "(0, inf)"),
        ):
            value = getattr(self, key)
            if not (key == "max_grad_norm" and value is None):
                _check_number(name, key, value, interval)

    def _hidden_sizes(self) -> list[int]:
        sizes: Any = self.hidden_layer_sizes
        return [int(sizes)] if _is_int(sizes) else [int(s) for s in sizes]

    def _init_model(self, n_features: int, where: Placement) -> None:
        # One generator per fresh model: the same random_state gives the same fit every time.
        # It draws the initial weights, then the validation split, then each epoch's order.
        self._generator = _rank_agreed_rng(self.random_state)
        self.model_ = MLP(
            [n_features, *self._hidden_sizes(), self.n_outputs_],
            self.activation,
            rng=self._generator,
            init="xavier_uniform",
            placement=where,
        )
        if distributed.is_initialized() and self.model_.placement.mutable:
            distributed.broadcast_parameters(self.model_)  # rank 0's weights, as one process
        self.n_features_in_ = n_features
        self.loss_curve_ = []
        self.validation_scores_ = [] if self.early_stopping else None
        self.eval_loss_curve_ = self.eval_scores_ = None
        self.best_loss_ = math.inf
        self.best_validation_score_ = -math.inf if self.early_stopping else None
        self.n_iter_ = self.t_ = self._no_improvement = 0
        self._optimizer, self._schedule = self._make_optimizer()

    def _make_optimizer(self) -> tuple[optim.Optimizer, optim.LRScheduler]:
        """A fresh optimizer at ``learning_rate_init`` and its learning-rate schedule."""
        opt: optim.Optimizer
        if self.solver == "sgd":
            opt = optim.SGD(
                self.model_,
                lr=self.learning_rate_init,
                momentum=self.momentum,
                nesterov=self.nesterovs_momentum and self.momentum > 0,
                max_grad_norm=self.max_grad_norm,
            )
        else:
            cls = optim.OPTIMIZERS[self.solver]
            assert issubclass(cls, optim.Adam)
            opt = cls(
                self.model_,
                lr=self.learning_rate_init,
                betas=(self.beta_1, self.beta_2),
                eps=self.epsilon,
                weight_decay=0.0,
                max_grad_norm=self.max_grad_norm,
            )
        horizon = int(self.max_iter)
        schedule: optim.LRScheduler
        if self.learning_rate == "invscaling":
            schedule = optim.InvScalingLR(opt, self.power_t, samples=self.t_)
        elif self.learning_rate == "adaptive":
            schedule = optim.AdaptiveLR(opt)
        elif self.learning_rate == "step":
            schedule = optim.StepLR(opt, step_size=max(1, horizon // 3), gamma=0.1)
        elif self.learning_rate == "cosine":
            schedule = optim.CosineAnnealingLR(opt, T_max=horizon)
        else:
            schedule = optim.ConstantLR(opt)
        return opt, schedule

    # ------------------------------------------------------------------ prediction
    def _check_fitted(self) -> None:
        if not hasattr(self, "model_"):
            _raise_not_fitted(type(self).__name__)

    def _check_n_features(self, X: Any, what: str = "X") -> None:
        _validation.check_n_features(X, self.n_features_in_, type(self).__name__, what)

    def _outputs(self, X: Any, method: str) -> Array:
        """The model's outputs ``(n, k)`` for ``X`` on its placement, keeping no activations:
        ``X`` checked (finite, within the model's dtype, its features and their names)."""
        self._check_fitted()
        who = type(self).__name__
        where = self.model_.placement
        if _validation.array_api_dispatch():
            _validation.check_same_namespace(where, X, who, method)
        _validation.check_feature_names(self, X, reset=False)
        if not _validation.is_sparse(X):
            Xd = _validation.features_on(where, X, self.n_features_in_, who)
            return self.model_.forward(Xd, cache=False)
        A = _validation.check_features(X, who=who, limit=where.dtype)
        self._check_n_features(A)
        rows = max(1, _DENSE_BLOCK // A.shape[1])
        blocks = [
            self.model_.forward(where.asarray(A[s : s + rows].toarray()), cache=False)
            for s in range(0, A.shape[0], rows)
        ]
        return blocks[0] if len(blocks) == 1 else where.xp.concat(blocks, axis=0)

    # ------------------------------------------------------------------ checkpoints
    def _checkpoint(self) -> tuple[Module, dict[str, Any]]:
        self._check_fitted()
        params = self.get_params()
        params["backend"] = self.model_.placement.name
        params["device"] = None
        params["dtype"] = None
        fitted = {key: getattr(self, key) for key in _FITTED}
        names = getattr(self, "feature_names_in_", None)
        fitted["feature_names_in_"] = None if names is None else names.tolist()
        return self.model_, {"params": params, "fitted": {**fitted, **self._extra_state()}}

    @classmethod
    def _from_checkpoint(cls, model: Module, state: dict[str, Any]) -> _BaseMLP:
        est = cls(**state["params"])
        where = model.placement  # type: ignore[attr-defined]
        est.backend, est.device, est.dtype = where.name, where.device_spec, where.dtype_name
        est.model_ = model  # type: ignore[assignment]
        fitted = dict(state["fitted"])
        est._load_extra_state(fitted)
        names = fitted.pop("feature_names_in_", None)
        if names is not None:
            est.feature_names_in_ = np.asarray(names, dtype=object)
        # Only the attributes a fitted estimator has: a stored key never replaces a method.
        for key in checkpoints.FITTED_ATTRIBUTES[cls.__name__] & fitted.keys():
            setattr(est, key, fitted[key])
        est._no_improvement = 0
        est._generator = _rank_agreed_rng(est.random_state)
        est._optimizer, est._schedule = est._make_optimizer()
        return est

    def _extra_state(self) -> dict[str, Any]:
        return {}

    def _load_extra_state(self, fitted: dict[str, Any]) -> None:
        pass

    # Fitted attributes (made by _init_model or a checkpoint) and subclass hooks
    n_outputs_: int
    n_features_in_: int
    feature_names_in_: NDArray[np.object_]
    model_: MLP
    loss_curve_: list[float]
    validation_scores_: list[float] | None
    eval_loss_curve_: list[float] | None
    eval_scores_: list[float] | None
    best_loss_: float | None
    best_validation_score_: float | None
    n_iter_: int
    t_: int
    _no_improvement: int
    _generator: Any
    _optimizer: optim.Optimizer
    _schedule: optim.LRScheduler

    def _loss(self) -> Loss:
        raise NotImplementedError

    def _read_targets(self, y: Any, n: int) -> tuple[NDArray[Any], bool]:
        """``y`` checked on the host, and what kind it is (multilabel; a 1-D regression y)."""
        raise NotImplementedError

    def _encode(
        self, raw: NDArray[Any], info: bool, *, mode: str, classes: Any = None
    ) -> tuple[NDArray[np.float64], Any]:
        """Float targets ``(n, k)`` for the loss, and the labels to stratify by (or None)."""
        raise NotImplementedError


def _rank_agreed_rng(random_state: int | None) -> Any:
    """The generator of the initial weights, the validation split and every epoch's order.

    Under ``torchrun`` every rank trains on its share of the same global batches (``batch_size``
    rows over all ranks; :func:`~portable_mlp.training.fit`), so all draw from one seed: without
    ``random_state``, rank 0's fresh seed.
    """
    if random_state is None and distributed.is_initialized():
        random_state = distributed.shared_seed()
    return _backend.host_rng(random_state)


# The fitted attributes that go on in training.fit's History: attribute -> History field.
_HISTORY = {
    "loss_curve_": "loss",
    "validation_scores_": "validation_scores",
    "eval_loss_curve_": "eval_loss",
    "eval_scores_": "eval_scores",
    "t_": "samples",
    "best_validation_score_": "best_score",
    "_no_improvement": "no_improvement",
}
# What a checkpoint keeps of a fitted estimator, besides the subclasses' extra state.
_FITTED = (
    "n_features_in_",
    "n_outputs_",
    "best_loss_",
    "n_iter_",
    *(a for a in _HISTORY if a[0] != "_"),
)


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _check_choice(who: str, key: str, value: Any, choices: Any) -> None:
    if not (isinstance(value, str) and value in choices):
        raise ValueError(f"{who} {key} must be one of {', '.join(choices)}, got {value!r}")


def _check_number(who: str, key: str, value: Any, interval: str) -> None:
    """Refuse anything but a finite real number in ``interval`` (``"[0, 1)"``, ...): NaN and
    infinity never pass, whatever the bounds."""
    low, high = (float(b) for b in interval[1:-1].split(","))
    number = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(
        value, (bool, np.bool_)
    )
    if number and math.isfinite(value):
        above = value >= low if interval[0] == "[" else value > low
        below = value <= high if interval[-1] == "]" else value < high
        if above and below:
            return
    raise ValueError(f"{who} {key} must be a finite number in {interval}, got {value!r}")


def unpipe(obj: Any, metadata: Mapping[str, Any] | None) -> tuple[_BaseMLP, dict[str, Any]]:
    """What :func:`~portable_mlp.checkpoints.save` writes for a fitted scikit-learn
    ``Pipeline`` of a standardizer (``StandardScaler`` or
    :class:`~portable_mlp.datasets.Standardizer`) and one of these estimators: the estimator,
    with the standardizer's statistics and the column names in the metadata, where
    ``portable-mlp predict`` finds them."""
    steps = list(obj.steps)
    names = [type(step).__name__ for _, step in steps]
    if len(steps) != 2 or not isinstance(steps[1][1], _BaseMLP):
        raise TypeError(
            "save() takes a Pipeline of a standardizer and an MLPClassifier or MLPRegressor, "
            f"got one of {names}"
        )
    scaler, est = steps[0][1], steps[1][1]
    est._check_fitted()
    mean, scale = getattr(scaler, "mean_", None), getattr(scaler, "scale_", None)
    if not (isinstance(scaler, datasets.Standardizer) or names[0] == "StandardScaler"):
        raise TypeError(f"save() takes a Pipeline whose first step standardizes, got {names[0]}")
    if mean is None or scale is None:
        raise ValueError(
            f"save() needs the Pipeline's {names[0]} fitted, with a mean and a scale (a "
            "StandardScaler with with_mean=True and with_std=True)"
        )
    stats = {k: _validation.as_host(v, k).tolist() for k, v in (("mean", mean), ("scale", scale))}
    if len(stats["mean"]) != est.n_features_in_:
        raise ValueError(
            f"the Pipeline's {names[0]} has {len(stats['mean'])} features, its "
            f"{names[1]} {est.n_features_in_}"
        )
    user: dict[str, Any] = {"standardizer": stats}
    columns = getattr(scaler, "feature_names_in_", getattr(est, "feature_names_in_", None))
    if columns is not None:
        user["feature_names"] = [str(c) for c in columns]
    return est, {**user, **(metadata or {})}


def _backend_spelling(backend: Any) -> Any:
    """A namespace module given as ``backend`` as its name where the backend table has it."""
    if isinstance(backend, ModuleType):
        try:
            name = _backend.backend_of(_backend.namespace(backend)).name
        except (_backend.BackendError, TypeError):
            return backend  # fit refuses it, saying why
        if name in _backend.TABLE:
            return name
    return backend


class MLPClassifier(_BaseMLP):
    """A multilayer perceptron classifier, as ``sklearn.neural_network.MLPClassifier``.

    Two classes use a single logit and BCE with logits; more use softmax cross-entropy; a label
    indicator matrix ``y: (n, k)`` of 0s and 1s (multilabel) uses ``k`` independent logits with
    BCE, and ``predict`` thresholds each probability at 0.5. Labels may be any values (numbers
    or strings, not both); ``classes_`` holds them sorted.
    """

    _is_classifier = True
    classes_: NDArray[Any]
    _multilabel: bool

    def partial_fit(
        self, X: Any, y: Any, sample_weight: Any = None, classes: Any = None
    ) -> MLPClassifier:
        """One epoch over ``X, y``; ``classes`` (every label there will be) on the first call."""
        self._partial_fit(X, y, sample_weight, classes)
        return self

    def _read_targets(self, y: Any, n: int) -> tuple[NDArray[Any], bool]:
        return _validation.check_class_labels(y, n)

    def _encode(
        self, raw: NDArray[Any], info: bool, *, mode: str, classes: Any = None
    ) -> tuple[NDArray[np.float64], Any]:
        multilabel = info
        if mode in ("fit", "first"):
            self._multilabel = multilabel
            if multilabel:
                self.classes_ = np.arange(raw.shape[1])
                self.n_outputs_ = raw.shape[1]
            else:
                found = raw if mode == "fit" else classes
                self._set_classes(_validation.unique_labels(found))
        elif multilabel != self._multilabel or (multilabel and raw.shape[1] != self.n_outputs_):
            kind = f"{self.n_outputs_} labels (multilabel)" if self._multilabel else "classes"
            raise ValueError(f"y of shape {raw.shape} does not fit the fitted {kind}")
        elif not multilabel:
            self._check_classes(raw, classes, mode)
        if multilabel:
            return raw.astype(np.float64), None
        codes = _validation.encode_labels(raw, self.classes_)
        return _validation.class_targets(codes, self.n_outputs_), raw

    def _check_classes(self, labels: NDArray[Any], classes: Any, mode: str) -> None:
        if mode == "warm":
            found = _validation.unique_labels(labels)
            if not np.array_equal(found, self.classes_):
                raise ValueError(
                    "warm_start can only be used where `y` has the same classes as in the "
                    f"previous call to fit. Previously got {self.classes_.tolist()}, `y` has "
                    f"{found.tolist()}"
                )
        elif classes is not None:
            given = _validation.unique_labels(classes)
            if not np.array_equal(given, self.classes_):
                raise ValueError(
                    f"`classes={given.tolist()}` is not the same as on last call to "
                    f"partial_fit, was: {self.classes_.tolist()}"
                )

    def _set_classes(self, classes: Any) -> None:
        if len(classes) < 2:
            raise ValueError(
                f"{type(self).__name__} needs at least 2 classes in y, got {len(classes)} "
                f"class{'' if len(classes) == 1 else 'es'}: "
                f"{classes.tolist()}"
            )
        self.classes_ = classes
        self.n_outputs_ = 1 if len(classes) == 2 else len(classes)

    def _loss(self) -> Loss:
        return BCEWithLogitsLoss() if self._out_activation() == "logistic" else CrossEntropyLoss()

    def _out_activation(self) -> str:
        return "logistic" if self._multilabel or self.n_outputs_ == 1 else "softmax"

    def predict_proba(self, X: Any) -> Any:
        """Class probabilities ``(n, n_classes)`` (each label's, for multilabel), in the
        namespace, on the device and in the floating dtype of ``X``."""
        z = self._outputs(X, "predict_proba")
        xp = self.model_.xp
        if self._multilabel:
            proba = F.sigmoid(z, xp=xp)
        elif self.n_outputs_ == 1:
            p = F.sigmoid(z, xp=xp)
            proba = xp.concat([1.0 - p, p], axis=1)
        else:
            proba = F.softmax(z, xp=xp)
        return _validation.like_input(proba, X, floating=True)

    def predict_log_proba(self, X: Any) -> Any:
        """The logarithm of :meth:`predict_proba`, computed from the logits (finite where a
        probability rounds to 0)."""
        z = self._outputs(X, "predict_log_proba")
        xp = self.model_.xp
        if self._out_activation() == "softmax":
            return _validation.like_input(F.log_softmax(z, xp=xp), X, floating=True)
        # log sigmoid(z) = -(max(-z, 0) + log1p(exp(-|z|))); log(1 - sigmoid(z)) likewise in z
        tail = xp.log1p(F.exp_neg_abs(z, xp=xp))
        log_p = -(xp.maximum(-z, 0.0) + tail)
        if not self._multilabel:
            log_p = xp.concat([-(xp.maximum(z, 0.0) + tail), log_p], axis=1)
        return _validation.like_input(log_p, X, floating=True)

    def predict(self, X: Any) -> Any:
        """Predicted labels ``(n,)`` (a 0/1 indicator ``(n, k)`` for multilabel), in X's
        namespace (NumPy for NumPy input or string labels)."""
        z = self._outputs(X, "predict")
        xp = self.model_.xp
        if self._multilabel:
            return _validation.like_input(xp.astype(z > 0, self.model_.placement.index_dtype), X)
        labels = _validation.decode_labels(
            self.classes_, z[:, 0] > 0 if self.n_outputs_ == 1 else xp.argmax(z, axis=1)
        )
        return labels if labels.dtype.kind not in "biuf" else _validation.like_input(labels, X)

    def score(self, X: Any, y: Any, sample_weight: Any = None) -> float:
        """Mean accuracy on ``X, y`` (subset accuracy for multilabel), weighted by
        ``sample_weight``."""
        predicted = _validation.as_host(self.predict(X), "predictions")
        truth = _validation.label_values(y)
        weights = None if sample_weight is None else _validation.as_host(sample_weight, "w")
        return _backend.to_float(metrics.accuracy(truth, predicted, sample_weight=weights))

    def _extra_state(self) -> dict[str, Any]:
        return {
            "classes_": self.classes_.tolist(),
            "classes_dtype": self.classes_.dtype.str,
            "_multilabel": self._multilabel,
        }

    def _load_extra_state(self, fitted: dict[str, Any]) -> None:
        fitted["classes_"] = _validation.as_host(fitted["classes_"], "classes_").astype(
            fitted.pop("classes_dtype")
        )
        fitted.setdefault("_multilabel", False)


class MLPRegressor(_BaseMLP):
    """A multilayer perceptron regressor, as ``sklearn.neural_network.MLPRegressor``.

    The loss is the mean squared error (PyTorch's ``MSELoss``; scikit-learn reports half of it).
    """

    _y_was_1d: bool

    def partial_fit(self, X: Any, y: Any, sample_weight: Any = None) -> MLPRegressor:
        """One epoch over ``X, y``."""
        self._partial_fit(X, y, sample_weight, None)
        return self

    def _read_targets(self, y: Any, n: int) -> tuple[NDArray[Any], bool]:
        values = _validation.label_values(y)
        return _validation.check_regression_targets(values, n), values.ndim == 1

    def _encode(
        self, raw: NDArray[Any], info: bool, *, mode: str, classes: Any = None
    ) -> tuple[NDArray[np.float64], Any]:
        if mode in ("fit", "first"):
            self.n_outputs_ = raw.shape[1]
            self._y_was_1d = info
        elif raw.shape[1] != self.n_outputs_:
            raise ValueError(f"y has {raw.shape[1]} outputs, the model has {self.n_outputs_}")
        return raw, None

    def _extra_state(self) -> dict[str, Any]:
        return {"_y_was_1d": self._y_was_1d}

    def _loss(self) -> Loss:
        return MSELoss()

    def predict(self, X: Any) -> Any:
        """Predictions ``(n,)`` (or ``(n, n_outputs)``), in the namespace, on the device and in
        the floating dtype of ``X``."""
        z = self._outputs(X, "predict")
        if self.n_outputs_ == 1 and self._y_was_1d:
            z = z[:, 0]
        return _validation.like_input(z, X, floating=True)

    def score(self, X: Any, y: Any, sample_weight: Any = None) -> float:
        """The coefficient of determination R^2 (averaged over outputs), weighted by
        ``sample_weight``."""
        truth = _validation.as_host(y, "y").astype(float)
        predicted = _validation.as_host(self.predict(X), "predictions").astype(float)
        weights = None if sample_weight is None else _validation.as_host(sample_weight, "w")
        return _backend.to_float(metrics.r2_score(truth, predicted, sample_weight=weights))
