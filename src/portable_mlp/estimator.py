"""``MLPClassifier`` and ``MLPRegressor``: scikit-learn's estimators, on any array backend.

Parameters mean what they mean in ``sklearn.neural_network.MLPClassifier``/``MLPRegressor``,
plus ``backend``, ``device`` and ``dtype``. Training data is validated on the host once, moved to
the device once and trained by :func:`portable_mlp.training.fit`; this module keeps the
scikit-learn protocol, the labels, prediction and the state a checkpoint stores.
"""

from __future__ import annotations

import inspect
import math
import warnings
from collections.abc import Sequence
from types import ModuleType
from typing import Any

from . import _backend, _validation, checkpoints, datasets, distributed, metrics, optim
from . import functional as F
from ._backend import Array
from .layers import Module
from .losses import BCEWithLogitsLoss, CrossEntropyLoss, Loss, MSELoss
from .models import MLP
from .training import EarlyStopping, History, TrainingError, fit

__all__ = ["ConvergenceWarning", "MLPClassifier", "MLPRegressor", "NotFittedError", "TrainingError"]

_SCHEDULES = ("constant", "step", "cosine")


class ConvergenceWarning(UserWarning):
    """``max_iter`` epochs ran out before the stopping rule was met."""


class NotFittedError(AttributeError):
    """A method that needs a fitted estimator was called before ``fit``."""


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
        n_iter_no_change: int = 10,
        max_grad_norm: float | None = None,
        backend: str | ModuleType = "numpy",
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        # Stored as given, as scikit-learn requires (clone() rebuilds from get_params()).
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.solver = solver
        self.alpha = alpha
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.learning_rate_init = learning_rate_init
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
        self.backend = backend
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
            setattr(self, name, value)
        return self

    def __repr__(self) -> str:
        defaults = type(self)().get_params()
        changed = [f"{k}={v!r}" for k, v in self.get_params().items() if v != defaults[k]]
        return f"{type(self).__name__}({', '.join(changed)})"

    def __sklearn_tags__(self) -> Any:
        from sklearn import utils

        return utils.Tags(
            estimator_type="classifier" if self._is_classifier else "regressor",
            target_tags=utils.TargetTags(required=True),
            classifier_tags=utils.ClassifierTags() if self._is_classifier else None,
            regressor_tags=None if self._is_classifier else utils.RegressorTags(),
            input_tags=utils.InputTags(),
        )

    # ------------------------------------------------------------------ fitting
    def fit(self, X: Any, y: Any, *, eval_set: tuple[Any, Any] | None = None) -> _BaseMLP:
        """Train on ``X: (n, p)`` and ``y`` for up to ``max_iter`` epochs; returns ``self``.

        ``eval_set=(X_eval, y_eval)`` is only watched, never learnt from or stopped on: its loss
        and score after every epoch go to ``eval_loss_curve_`` and ``eval_scores_``.
        """
        self._check_params()
        X_host = _validation.check_features(X)
        warm = self.warm_start and hasattr(self, "model_")
        targets, strata = self._targets(y, X_host.shape[0], fitting=not warm)
        if not warm or self.n_features_in_ != X_host.shape[1]:
            self._init_model(X_host.shape[1])
        watched = None
        if eval_set is not None:
            X_eval = _validation.check_features(eval_set[0], "X_eval")
            self._check_n_features(X_eval, "eval_set X")
            T_eval, _ = self._targets(eval_set[1], X_eval.shape[0], fitting=False)
            watched = (self._on_device(X_eval), self._on_device(T_eval))
        self.eval_loss_curve_ = None if watched is None else []
        self.eval_scores_ = None if watched is None else []
        validation = None
        if self.early_stopping:  # split after the weights are drawn, from the same generator
            rows = range(X_host.shape[0])
            train, val, _, _ = datasets.train_test_split(
                rows,
                rows if strata is None else strata,
                test_size=self.validation_fraction,
                rng=self._generator,
                stratify=strata is not None,
            )
            validation = (self._on_device(X_host[val]), self._on_device(targets[val]))
            X_host, targets = X_host[train], targets[train]
        rule = EarlyStopping(self.tol, int(self.n_iter_no_change))
        epochs = int(self.max_iter)
        history = self._train(X_host, targets, epochs, validation, watched, rule)
        if validation is not None:
            self.best_loss_ = None
        if not history.stopped_early:
            warnings.warn(
                f"Stochastic Optimizer: Maximum iterations ({epochs}) reached and the "
                "optimization hasn't converged yet.",
                ConvergenceWarning,
                stacklevel=2,
            )
        return self

    def partial_fit(self, X: Any, y: Any, classes: Any = None) -> _BaseMLP:
        """One epoch over ``X, y`` (the classifier needs ``classes`` on the first call)."""
        self._check_params()
        X_host = _validation.check_features(X)
        first = not hasattr(self, "model_")
        if first:
            self._first_partial_fit(y, X_host.shape[0], classes)
        else:
            self._check_n_features(X_host)
        targets, _ = self._targets(y, X_host.shape[0], fitting=False)
        if first:
            self._init_model(X_host.shape[1])
        self._train(X_host, targets, 1)
        return self

    def _train(
        self,
        X_host: Any,
        targets: Any,
        epochs: int,
        validation: tuple[Array, Array] | None = None,
        watched: tuple[Array, Array] | None = None,
        rule: EarlyStopping | None = None,
    ) -> History:
        """``epochs`` of :func:`~portable_mlp.training.fit` on host data, going on from the
        fitted attributes and written back to them (also when training diverges)."""
        n = X_host.shape[0]
        best_loss = math.inf if self.best_loss_ is None else self.best_loss_
        history = History(**{f: getattr(self, a) for a, f in _HISTORY.items()}, best_loss=best_loss)
        try:
            fit(
                self.model_,
                self._loss(),
                self._optimizer,
                self._on_device(X_host),  # moved once
                self._on_device(targets),
                epochs=epochs,
                batch_size=min(200 if self.batch_size == "auto" else int(self.batch_size), n),
                shuffle=self.shuffle,
                rng=self._generator,
                schedule=self._make_schedule(epochs),
                validation=validation,
                eval_set=watched,
                early_stopping=rule,
                alpha=self.alpha,
                progress=self.verbose,
                history=history,
            )
        finally:
            for attribute, name in _HISTORY.items():
                setattr(self, attribute, getattr(history, name))
            if self.best_loss_ is not None:  # None after an early-stopped fit, as in scikit-learn
                self.best_loss_ = history.best_loss
        return history

    def _check_params(self) -> None:
        batch = self.batch_size
        whole = isinstance(batch, int) and not isinstance(batch, bool) and batch >= 1
        checks = {  # parameter: (whether it is valid, what was expected)
            "solver": (self.solver in optim.OPTIMIZERS, f"one of {', '.join(optim.OPTIMIZERS)}"),
            "learning_rate": (self.learning_rate in _SCHEDULES, f"one of {', '.join(_SCHEDULES)}"),
            "hidden_layer_sizes": (min(self._hidden_sizes(), default=1) >= 1, "positive"),
            "max_iter": (int(self.max_iter) >= 1, ">= 1"),
            "n_iter_no_change": (int(self.n_iter_no_change) >= 1, ">= 1"),
            "alpha": (self.alpha >= 0, ">= 0"),
            "validation_fraction": (0.0 < self.validation_fraction < 1.0, "in (0, 1)"),
            "batch_size": (batch == "auto" or whole, "'auto' or an int >= 1"),
        }
        for key, (valid, expected) in checks.items():
            if not valid:
                raise ValueError(
                    f"{type(self).__name__} {key} must be {expected}, got {getattr(self, key)!r}"
                )

    def _hidden_sizes(self) -> list[int]:
        sizes = self.hidden_layer_sizes
        return [int(sizes)] if isinstance(sizes, int) else [int(s) for s in sizes]

    def _init_model(self, n_features: int) -> None:
        # One generator per fresh model: the same random_state gives the same fit every time.
        # It draws the initial weights, then the validation split, then each epoch's order.
        self._generator = _rank_agreed_rng(self.random_state)
        self.model_ = MLP(
            [n_features, *self._hidden_sizes(), self.n_outputs_],
            self.activation,
            rng=self._generator,
            backend=self.backend,
            device=self.device,
            dtype=self.dtype,
            init="xavier_uniform",
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
        self._optimizer = self._make_optimizer()

    def _make_optimizer(self) -> optim.Optimizer:
        if self.solver == "sgd":
            return optim.SGD(
                self.model_,
                lr=self.learning_rate_init,
                momentum=self.momentum,
                nesterov=self.nesterovs_momentum and self.momentum > 0,
                max_grad_norm=self.max_grad_norm,
            )
        cls = optim.OPTIMIZERS[self.solver]
        assert issubclass(cls, optim.Adam)
        return cls(
            self.model_,
            lr=self.learning_rate_init,
            betas=(self.beta_1, self.beta_2),
            eps=self.epsilon,
            weight_decay=0.0,
            max_grad_norm=self.max_grad_norm,
        )

    def _make_schedule(self, epochs: int) -> optim.LRScheduler:
        if self.learning_rate == "step":
            return optim.StepLR(self._optimizer, step_size=max(1, epochs // 3), gamma=0.1)
        if self.learning_rate == "cosine":
            return optim.CosineAnnealingLR(self._optimizer, T_max=epochs)
        return optim.ConstantLR(self._optimizer)

    # ------------------------------------------------------------------ prediction
    def _check_fitted(self) -> None:
        if not hasattr(self, "model_"):
            raise NotFittedError(
                f"This {type(self).__name__} instance is not fitted yet; call fit() first"
            )

    def _check_n_features(self, X: Any, what: str = "X") -> None:
        _validation.check_n_features(X, self.n_features_in_, type(self).__name__, what)

    def _logits(self, X: Any) -> Array:
        """Forward pass of ``X`` on the model's device, keeping no activations."""
        self._check_fitted()
        where = self.model_.placement
        Xd = _validation.features_on(where, X, self.n_features_in_, type(self).__name__)
        return self.model_.forward(Xd, cache=False)

    def _on_device(self, host: Any) -> Array:
        """A float64 host array as the model's dtype on its device."""
        return self.model_.placement.asarray(host)

    # ------------------------------------------------------------------ checkpoints
    def _checkpoint(self) -> tuple[Module, dict[str, Any]]:
        self._check_fitted()
        params = self.get_params()
        params["backend"] = self.model_.placement.name
        params["device"] = None
        params["dtype"] = None
        fitted = {key: getattr(self, key) for key in _FITTED}
        return self.model_, {"params": params, "fitted": {**fitted, **self._extra_state()}}

    @classmethod
    def _from_checkpoint(cls, model: Module, state: dict[str, Any]) -> _BaseMLP:
        est = cls(**state["params"])
        est.backend, est.device, est.dtype = model.backend, model.device, model.dtype  # type: ignore[attr-defined]
        est.model_ = model  # type: ignore[assignment]
        fitted = dict(state["fitted"])
        est._load_extra_state(fitted)
        # Only the attributes a fitted estimator has: a stored key never replaces a method.
        for key in checkpoints.FITTED_ATTRIBUTES[cls.__name__] & fitted.keys():
            setattr(est, key, fitted[key])
        est._no_improvement = 0
        est._generator = _rank_agreed_rng(est.random_state)
        est._optimizer = est._make_optimizer()
        return est

    def _extra_state(self) -> dict[str, Any]:
        return {}

    def _load_extra_state(self, fitted: dict[str, Any]) -> None:
        pass

    # Fitted attributes (made by _init_model or a checkpoint) and subclass hooks
    n_outputs_: int
    n_features_in_: int
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

    def _loss(self) -> Loss:
        raise NotImplementedError

    def _targets(self, y: Any, n: int, *, fitting: bool) -> tuple[Any, Any]:
        """Float targets (n, k) for the loss, and the labels to stratify by (or None)."""
        raise NotImplementedError

    def _first_partial_fit(self, y: Any, n: int, classes: Any) -> None:
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
    "n_iter_": "n_epochs",
    "t_": "samples",
    "best_validation_score_": "best_score",
    "_no_improvement": "no_improvement",
}
# What a checkpoint keeps of a fitted estimator, besides the subclasses' extra state.
_FITTED = ("n_features_in_", "n_outputs_", "best_loss_", *(a for a in _HISTORY if a[0] != "_"))


class MLPClassifier(_BaseMLP):
    """A multilayer perceptron classifier, as ``sklearn.neural_network.MLPClassifier``.

    Two classes use a single logit and BCE with logits; more use softmax cross-entropy. Labels
    may be any values (numbers or strings); ``classes_`` holds them sorted.
    """

    _is_classifier = True

    def _first_partial_fit(self, y: Any, n: int, classes: Any) -> None:
        if classes is None:
            raise ValueError("classes must be passed on the first call to partial_fit")
        self._set_classes(_validation.unique_labels(classes))

    def _set_classes(self, classes: Any) -> None:
        if len(classes) < 2:
            raise ValueError(
                f"{type(self).__name__} needs at least 2 classes in y, got {len(classes)}: "
                f"{classes.tolist()}"
            )
        self.classes_ = classes
        self.n_outputs_ = 1 if len(classes) == 2 else len(classes)

    def _targets(self, y: Any, n: int, *, fitting: bool) -> tuple[Any, Any]:
        labels = _validation.check_class_labels(y, n)
        if fitting:
            self._set_classes(_validation.unique_labels(labels))
        codes = _validation.encode_labels(labels, self.classes_)
        return _validation.class_targets(codes, self.n_outputs_), labels

    def _loss(self) -> Loss:
        return BCEWithLogitsLoss() if self.n_outputs_ == 1 else CrossEntropyLoss()

    def predict_proba(self, X: Any) -> Any:
        """Class probabilities ``(n, n_classes)``, in the namespace (and device) of ``X``."""
        z = self._logits(X)
        xp = self.model_.xp
        if self.n_outputs_ == 1:
            p = F.sigmoid(z, xp=xp)
            proba = xp.concat([1.0 - p, p], axis=1)
        else:
            proba = F.softmax(z, xp=xp)
        return _validation.like_input(proba, X)

    def predict(self, X: Any) -> Any:
        """Predicted labels ``(n,)``, in X's namespace (NumPy for NumPy input or string labels)."""
        z = self._logits(X)
        xp = self.model_.xp
        labels = _validation.decode_labels(
            self.classes_, z[:, 0] > 0 if self.n_outputs_ == 1 else xp.argmax(z, axis=1)
        )
        return labels if labels.dtype.kind not in "biuf" else _validation.like_input(labels, X)

    def score(self, X: Any, y: Any) -> float:
        """Mean accuracy on ``X, y``."""
        predicted = _validation.as_host(self.predict(X), "predictions")
        return _backend.to_float(metrics.accuracy(_validation.as_host(y, "y"), predicted))

    def _extra_state(self) -> dict[str, Any]:
        return {"classes_": self.classes_.tolist(), "classes_dtype": self.classes_.dtype.str}

    def _load_extra_state(self, fitted: dict[str, Any]) -> None:
        fitted["classes_"] = _validation.as_host(fitted["classes_"], "classes_").astype(
            fitted.pop("classes_dtype")
        )


class MLPRegressor(_BaseMLP):
    """A multilayer perceptron regressor, as ``sklearn.neural_network.MLPRegressor``.

    The loss is the mean squared error (PyTorch's ``MSELoss``; scikit-learn reports half of it).
    """

    def _first_partial_fit(self, y: Any, n: int, classes: Any) -> None:
        self._set_outputs(y, n)

    def _set_outputs(self, y: Any, n: int) -> None:
        self.n_outputs_ = _validation.check_regression_targets(y, n).shape[1]
        self._y_was_1d = _validation.as_host(y, "y").ndim == 1

    def _extra_state(self) -> dict[str, Any]:
        return {"_y_was_1d": self._y_was_1d}

    def _targets(self, y: Any, n: int, *, fitting: bool) -> tuple[Any, Any]:
        if fitting:
            self._set_outputs(y, n)
        targets = _validation.check_regression_targets(y, n)
        if targets.shape[1] != self.n_outputs_:
            raise ValueError(f"y has {targets.shape[1]} outputs, the model has {self.n_outputs_}")
        return targets, None

    def _loss(self) -> Loss:
        return MSELoss()

    def predict(self, X: Any) -> Any:
        """Predictions ``(n,)`` (or ``(n, n_outputs)``), in the namespace of ``X``."""
        z = self._logits(X)
        if self.n_outputs_ == 1 and self._y_was_1d:
            z = z[:, 0]
        return _validation.like_input(z, X)

    def score(self, X: Any, y: Any) -> float:
        """The coefficient of determination R^2 (averaged over outputs)."""
        truth = _validation.as_host(y, "y").astype(float)
        predicted = _validation.as_host(self.predict(X), "predictions").astype(float)
        return _backend.to_float(metrics.r2_score(truth, predicted))
