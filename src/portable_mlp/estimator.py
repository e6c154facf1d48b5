"""``MLPClassifier`` and ``MLPRegressor``: scikit-learn's estimators, on any array backend.

Parameters mean what they mean in ``sklearn.neural_network.MLPClassifier``/``MLPRegressor``,
plus ``backend``, ``device`` and ``dtype``. Training data is validated on the host once, moved to
the device once, and mini-batches are gathered there from a host-side shuffled index; the loss is
read back once per epoch (for ``loss_curve_``, the stopping rule and the non-finite check), and
more often only to draw a progress bar.
"""

from __future__ import annotations

import inspect
import math
import warnings
from collections.abc import Sequence
from types import ModuleType
from typing import Any

from . import _backend, checkpoints, datasets
from . import functional as F
from ._backend import Array
from .layers import Module
from .losses import BCEWithLogitsLoss, CrossEntropyLoss, Loss, MSELoss
from .models import MLP
from .optim import (
    OPTIMIZERS,
    SGD,
    Adam,
    ConstantLR,
    CosineAnnealingLR,
    LRScheduler,
    Optimizer,
    StepLR,
)
from .training import train_step

_SCHEDULES = ("constant", "step", "cosine")


class ConvergenceWarning(UserWarning):
    """``max_iter`` epochs ran out before the stopping rule was met."""


class TrainingError(FloatingPointError):
    """The loss or the weights became non-finite; the model keeps its last finite weights."""


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
        from sklearn.utils import (
            ClassifierTags,
            InputTags,
            RegressorTags,
            Tags,
            TargetTags,
        )

        return Tags(
            estimator_type="classifier" if self._is_classifier else "regressor",
            target_tags=TargetTags(required=True),
            classifier_tags=ClassifierTags() if self._is_classifier else None,
            regressor_tags=None if self._is_classifier else RegressorTags(),
            input_tags=InputTags(),
        )

    # ------------------------------------------------------------------ fitting
    def fit(self, X: Any, y: Any, *, eval_set: tuple[Any, Any] | None = None) -> _BaseMLP:
        """Train on ``X: (n, p)`` and ``y`` for up to ``max_iter`` epochs; returns ``self``.

        ``eval_set=(X_eval, y_eval)`` is only watched, never learnt from or stopped on: its loss
        and score after every epoch go to ``eval_loss_curve_`` and ``eval_scores_``.
        """
        self._check_params()
        X_host = datasets.check_features(X)
        warm = self.warm_start and hasattr(self, "model_")
        targets, strata = self._targets(y, X_host.shape[0], fitting=not warm)
        if not warm or self.n_features_in_ != X_host.shape[1]:
            self._init_model(X_host.shape[1])
        evaluation = None
        if eval_set is not None:
            X_eval = datasets.check_features(eval_set[0], "X_eval")
            if X_eval.shape[1] != self.n_features_in_:
                raise ValueError(
                    f"eval_set X has {X_eval.shape[1]} features, X has {self.n_features_in_}"
                )
            T_eval, _ = self._targets(eval_set[1], X_eval.shape[0], fitting=False)
            evaluation = (self._on_device(X_eval), self._on_device(T_eval))
        self.eval_loss_curve_ = None if evaluation is None else []
        self.eval_scores_ = None if evaluation is None else []
        self._train(
            X_host,
            targets,
            strata,
            epochs=int(self.max_iter),
            incremental=False,
            evaluation=evaluation,
        )
        return self

    def partial_fit(self, X: Any, y: Any, classes: Any = None) -> _BaseMLP:
        """One epoch over ``X, y`` (the classifier needs ``classes`` on the first call)."""
        self._check_params()
        X_host = datasets.check_features(X)
        first = not hasattr(self, "model_")
        if first:
            self._first_partial_fit(y, X_host.shape[0], classes)
        elif X_host.shape[1] != self.n_features_in_:
            raise ValueError(
                f"X has {X_host.shape[1]} features, but {type(self).__name__} was fitted with "
                f"{self.n_features_in_}"
            )
        targets, strata = self._targets(y, X_host.shape[0], fitting=False)
        if first:
            self._init_model(X_host.shape[1])
        self._train(X_host, targets, strata, epochs=1, incremental=True)
        return self

    def _check_params(self) -> None:
        name = type(self).__name__
        if self.solver not in OPTIMIZERS:
            raise ValueError(
                f"{name} solver must be one of {', '.join(OPTIMIZERS)}, got {self.solver!r} "
                "(lbfgs is not offered)"
            )
        if self.learning_rate not in _SCHEDULES:
            raise ValueError(
                f"{name} learning_rate must be one of {', '.join(_SCHEDULES)}, "
                f"got {self.learning_rate!r}"
            )
        sizes = self._hidden_sizes()
        if any(s < 1 for s in sizes):
            raise ValueError(
                f"{name} hidden_layer_sizes must be positive, got {self.hidden_layer_sizes!r}"
            )
        for key in ("max_iter", "n_iter_no_change"):
            if int(getattr(self, key)) < 1:
                raise ValueError(f"{name} {key} must be >= 1, got {getattr(self, key)!r}")
        if self.alpha < 0:
            raise ValueError(f"{name} alpha must be >= 0, got {self.alpha!r}")
        if not 0.0 < self.validation_fraction < 1.0:
            raise ValueError(
                f"{name} validation_fraction must be in (0, 1), got {self.validation_fraction!r}"
            )
        if self.batch_size != "auto" and (
            isinstance(self.batch_size, bool)
            or not isinstance(self.batch_size, int)
            or self.batch_size < 1
        ):
            raise ValueError(
                f"{name} batch_size must be 'auto' or an int >= 1, got {self.batch_size!r}"
            )

    def _hidden_sizes(self) -> list[int]:
        sizes = self.hidden_layer_sizes
        return [int(sizes)] if isinstance(sizes, int) else [int(s) for s in sizes]

    def _init_model(self, n_features: int) -> None:
        # One generator per fresh model: the same random_state gives the same fit every time.
        self._generator = _backend.host_rng(self.random_state)
        sizes = [n_features, *self._hidden_sizes(), self.n_outputs_]
        self.model_ = MLP(
            sizes,
            self.activation,
            rng=self._rng(),
            backend=self.backend,
            device=self.device,
            dtype=self.dtype,
            init="xavier_uniform",
        )
        self.n_features_in_ = n_features
        self.loss_curve_: list[float] = []
        self.validation_scores_: list[float] | None = [] if self.early_stopping else None
        self.eval_loss_curve_ = None
        self.eval_scores_ = None
        self.best_loss_: float | None = math.inf
        self.best_validation_score_: float | None = -math.inf if self.early_stopping else None
        self.n_iter_ = 0
        self.t_ = 0
        self._no_improvement = 0
        self._optimizer = self._make_optimizer()

    def _rng(self) -> Any:
        return self._generator

    def _make_optimizer(self) -> Optimizer:
        if self.solver == "sgd":
            return SGD(
                self.model_,
                lr=self.learning_rate_init,
                momentum=self.momentum,
                nesterov=self.nesterovs_momentum and self.momentum > 0,
                max_grad_norm=self.max_grad_norm,
            )
        cls = OPTIMIZERS[self.solver]
        assert issubclass(cls, Adam)
        return cls(
            self.model_,
            lr=self.learning_rate_init,
            betas=(self.beta_1, self.beta_2),
            eps=self.epsilon,
            weight_decay=0.0,
            max_grad_norm=self.max_grad_norm,
        )

    def _make_schedule(self, epochs: int) -> LRScheduler:
        if self.learning_rate == "step":
            return StepLR(self._optimizer, step_size=max(1, epochs // 3), gamma=0.1)
        if self.learning_rate == "cosine":
            return CosineAnnealingLR(self._optimizer, T_max=epochs)
        return ConstantLR(self._optimizer)

    # ------------------------------------------------------------------ the training loop
    def _train(
        self,
        X_host: Any,
        targets: Any,
        strata: Any,
        *,
        epochs: int,
        incremental: bool,
        evaluation: tuple[Array, Array] | None = None,
    ) -> None:
        """``targets``: float (n, k) for the loss; ``strata``: labels to stratify by, or None."""
        model = self.model_
        validation = None
        if self.early_stopping and not incremental:
            rows = range(X_host.shape[0])
            train, val, _, _ = datasets.train_test_split(
                rows,
                rows if strata is None else strata,
                test_size=self.validation_fraction,
                rng=self._rng(),
                stratify=strata is not None,
            )
            validation = (self._on_device(X_host[val]), self._on_device(targets[val]))
            X_host, targets = X_host[train], targets[train]
        X, T = self._on_device(X_host), self._on_device(targets)  # moved once
        progress = _Progress(epochs) if self.verbose else None
        try:
            best_params = self._epochs(X, T, validation, evaluation, epochs, incremental, progress)
        finally:
            if progress is not None:
                progress.close()
        if validation is not None:
            self.best_loss_ = None
            if best_params is not None:  # restore the weights of the best validation score
                model.set_parameters(best_params)

    def _epochs(
        self,
        X: Array,
        T: Array,
        validation: tuple[Array, Array] | None,
        evaluation: tuple[Array, Array] | None,
        epochs: int,
        incremental: bool,
        progress: _Progress | None,
    ) -> dict[str, Array] | None:
        """Up to ``epochs`` passes with the stopping rule; returns the best weights (early stop)."""
        xp, dev = self.model_.xp, self.model_.device
        n = X.shape[0]
        batch = min(200 if self.batch_size == "auto" else int(self.batch_size), n)
        bounds = [(s, min(s + batch, n)) for s in range(0, n, batch)]
        loss = self._loss()
        schedule = self._make_schedule(epochs)
        index_dtype = xp.__array_namespace_info__().default_dtypes(device=dev)["indexing"]
        best_params = None
        for _ in range(epochs):
            order = None
            if self.shuffle:  # shuffled on the host, moved once per epoch
                order = _backend.from_numpy(
                    self._rng().permutation(n), xp=xp, dtype=index_dtype, device=dev
                )
            snapshot = self._snapshot()
            if progress is not None:
                progress.start_epoch(self.n_iter_ + 1, len(bounds))
            with self.model_.placement.floating_point_errors_quiet():
                step_losses = self._epoch(X, T, order, bounds, loss, progress)
            epoch_loss = _backend.to_float(_sum(step_losses)) / n  # the one read-back per epoch
            if not (math.isfinite(epoch_loss) and self._weights_finite()):
                with self.model_.placement.floating_point_errors_quiet():
                    self._recover(snapshot, X, T, order, bounds, loss, step_losses)
            self.n_iter_ += 1
            self.t_ += n
            self.loss_curve_.append(epoch_loss)
            schedule.step()
            if evaluation is not None:
                assert self.eval_loss_curve_ is not None and self.eval_scores_ is not None
                eval_loss, eval_score = self._evaluate(*evaluation)
                self.eval_loss_curve_.append(eval_loss)
                self.eval_scores_.append(eval_score)
            improved = True
            if validation is not None:
                score = self._evaluate(*validation)[1]
                assert (
                    self.validation_scores_ is not None and self.best_validation_score_ is not None
                )
                self.validation_scores_.append(score)
                improved = score >= self.best_validation_score_ + self.tol
                if score > self.best_validation_score_:
                    self.best_validation_score_ = score
                    best_params = self._copy_params()
            elif not incremental:
                assert self.best_loss_ is not None
                improved = epoch_loss <= self.best_loss_ - self.tol
                self.best_loss_ = min(self.best_loss_, epoch_loss)
            if progress is not None:
                progress.end_epoch(epoch_loss, self.validation_scores_ or self.eval_scores_)
            if incremental:
                continue
            self._no_improvement = 0 if improved else self._no_improvement + 1
            if self._no_improvement > self.n_iter_no_change:
                if progress is not None:
                    what = "Validation score" if validation is not None else "Training loss"
                    progress.log(
                        f"{what} did not improve more than tol={self.tol} for "
                        f"{self.n_iter_no_change} consecutive epochs. Stopping."
                    )
                return best_params
        if not incremental:
            warnings.warn(
                f"Stochastic Optimizer: Maximum iterations ({epochs}) reached and the "
                "optimization hasn't converged yet.",
                ConvergenceWarning,
                stacklevel=4,
            )
        return best_params

    def _epoch(
        self,
        X: Array,
        T: Array,
        order: Array | None,
        bounds: list[tuple[int, int]],
        loss: Loss,
        progress: _Progress | None = None,
    ) -> list[Array]:
        """One pass over the data; returns each step's summed loss as 0-d arrays (no sync)."""
        out = []
        for s, e in bounds:
            out.append(self._step(*self._batch(X, T, order, s, e), loss) * float(e - s))
            if progress is not None:
                progress.step(out, e)
        return out

    def _batch(
        self, X: Array, T: Array, order: Array | None, s: int, e: int
    ) -> tuple[Array, Array]:
        """Rows ``s:e`` of the epoch's order, gathered on the device (a slice if unshuffled)."""
        if order is None:
            return X[s:e, ...], T[s:e, ...]
        idx = order[s:e]
        xp = self.model_.xp
        return xp.take(X, idx, axis=0), xp.take(T, idx, axis=0)

    def _step(self, xb: Array, tb: Array, loss: Loss) -> Array:
        """forward, loss, backward, L2 penalty, update; returns the batch's mean loss (0-d)."""
        # The data were checked once in fit(), and tb is already in the loss's working form.
        return train_step(self.model_, loss, self._optimizer, xb, tb, alpha=self.alpha, check=False)

    # ------------------------------------------------------------------ non-finite recovery
    def _copy_params(self) -> dict[str, Array]:
        xp = self.model_.xp
        return {k: xp.asarray(v, copy=True) for k, v in self.model_.parameters().items()}

    def _snapshot(self) -> tuple[dict[str, Array], dict[str, Any]]:
        return self._copy_params(), self._optimizer.state_dict()

    def _restore(self, snapshot: tuple[dict[str, Array], dict[str, Any]]) -> None:
        params, opt_state = snapshot
        xp = self.model_.xp
        self.model_.set_parameters({k: xp.asarray(v, copy=True) for k, v in params.items()})
        self._optimizer.load_state_dict(opt_state)

    def _weights_finite(self) -> bool:
        """Whether every weight is finite: one read-back for all parameters."""
        xp = self.model_.xp
        finite = None
        for v in self.model_.parameters().values():
            ok = xp.all(xp.isfinite(v))
            finite = ok if finite is None else xp.logical_and(finite, ok)
        return bool(_backend.to_numpy(finite))

    def _recover(
        self,
        snapshot: Any,
        X: Array,
        T: Array,
        order: Array | None,
        bounds: list[tuple[int, int]],
        loss: Loss,
        step_losses: list[Array],
    ) -> None:
        """Replay the epoch up to the last step that kept loss and weights finite, then raise."""
        values = [_backend.to_float(v) for v in step_losses]
        bad = next((i for i, v in enumerate(values) if not math.isfinite(v)), len(values))
        self._restore(snapshot)
        good = snapshot
        kept = 0
        for i, (s, e) in enumerate(bounds[:bad]):
            self._step(*self._batch(X, T, order, s, e), loss)
            if not self._weights_finite():
                break
            good, kept = self._snapshot(), i + 1
        self._restore(good)
        epoch = self.n_iter_ + 1
        what = "loss" if bad < len(values) else "weights"
        where = f"step {bad + 1}" if bad < len(values) else f"the update of step {len(values)}"
        raise TrainingError(
            f"training diverged: the {what} became non-finite at epoch {epoch}, {where} of "
            f"{len(bounds)}; the model keeps the last finite weights (after {kept} step(s) of "
            f"epoch {epoch}). Try a smaller learning_rate_init or set max_grad_norm."
        )

    # ------------------------------------------------------------------ prediction
    def _check_fitted(self) -> None:
        if not hasattr(self, "model_"):
            raise NotFittedError(
                f"This {type(self).__name__} instance is not fitted yet; call fit() first"
            )

    def _logits(self, X: Any) -> Array:
        """Forward pass of ``X`` on the model's device, keeping no activations."""
        self._check_fitted()
        model = self.model_
        in_place = (
            _namespace_or_none(X) is model.xp
            and _backend.device(X) == model.device
            and X.dtype == model.dtype
            and X.ndim == 2
        )
        # Already where the model is: no copy, no transfer. Otherwise checked and moved once.
        Xd = X if in_place else datasets.check_features(X)
        if Xd.shape[1] != self.n_features_in_:
            raise ValueError(
                f"X has {Xd.shape[1]} features, but {type(self).__name__} was fitted with "
                f"{self.n_features_in_}"
            )
        if not in_place:
            Xd = _backend.from_numpy(Xd, xp=model.xp, dtype=model.dtype, device=model.device)
        return model.forward(Xd, cache=False)

    def _evaluate(self, X: Array, T: Array) -> tuple[float, float]:
        """Loss and score (accuracy or R^2) of the model on encoded data already on the device."""
        raise NotImplementedError

    def _on_device(self, host: Any) -> Array:
        """A float64 host array as the model's dtype on its device."""
        model = self.model_
        return _backend.from_numpy(host, xp=model.xp, dtype=model.dtype, device=model.device)

    # ------------------------------------------------------------------ checkpoints
    def _checkpoint(self) -> tuple[Module, dict[str, Any]]:
        self._check_fitted()
        params = self.get_params()
        params["backend"] = self.model_.placement.name
        params["device"] = None
        params["dtype"] = None
        state = {
            "params": params,
            "fitted": {
                "n_features_in_": self.n_features_in_,
                "n_outputs_": self.n_outputs_,
                "n_iter_": self.n_iter_,
                "t_": self.t_,
                "loss_curve_": self.loss_curve_,
                "validation_scores_": self.validation_scores_,
                "best_loss_": self.best_loss_,
                "best_validation_score_": self.best_validation_score_,
                "eval_loss_curve_": self.eval_loss_curve_,
                "eval_scores_": self.eval_scores_,
                **self._extra_state(),
            },
        }
        return self.model_, state

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
        est._generator = _backend.host_rng(est.random_state)
        est._optimizer = est._make_optimizer()
        return est

    def _extra_state(self) -> dict[str, Any]:
        return {}

    def _load_extra_state(self, fitted: dict[str, Any]) -> None:
        pass

    # Subclass hooks
    n_outputs_: int
    model_: MLP
    eval_loss_curve_: list[float] | None
    eval_scores_: list[float] | None

    def _loss(self) -> Loss:
        raise NotImplementedError

    def _targets(self, y: Any, n: int, *, fitting: bool) -> tuple[Any, Any]:
        """Float targets (n, k) for the loss, and the labels to stratify by (or None)."""
        raise NotImplementedError

    def _first_partial_fit(self, y: Any, n: int, classes: Any) -> None:
        raise NotImplementedError


class MLPClassifier(_BaseMLP):
    """A multilayer perceptron classifier, as ``sklearn.neural_network.MLPClassifier``.

    Two classes use a single logit and BCE with logits; more use softmax cross-entropy. Labels
    may be any values (numbers or strings); ``classes_`` holds them sorted.
    """

    _is_classifier = True

    def _first_partial_fit(self, y: Any, n: int, classes: Any) -> None:
        if classes is None:
            raise ValueError("classes must be passed on the first call to partial_fit")
        self._set_classes(datasets.unique_labels(classes))

    def _set_classes(self, classes: Any) -> None:
        if len(classes) < 2:
            raise ValueError(
                f"{type(self).__name__} needs at least 2 classes in y, got {len(classes)}: "
                f"{classes.tolist()}"
            )
        self.classes_ = classes
        self.n_outputs_ = 1 if len(classes) == 2 else len(classes)

    def _targets(self, y: Any, n: int, *, fitting: bool) -> tuple[Any, Any]:
        labels = datasets.check_class_labels(y, n)
        if fitting:
            self._set_classes(datasets.unique_labels(labels))
        codes = datasets.encode_labels(labels, self.classes_)
        return datasets.class_targets(codes, self.n_outputs_), labels

    def _loss(self) -> Loss:
        return BCEWithLogitsLoss() if self.n_outputs_ == 1 else CrossEntropyLoss()

    def _evaluate(self, X: Array, T: Array) -> tuple[float, float]:
        xp = self.model_.xp
        z = self.model_.forward(X, cache=False)
        if self.n_outputs_ == 1:
            loss = F.bce_with_logits(z, T, xp=xp)
            hit = (z[:, 0] > 0) == (T[:, 0] > 0.5)
        else:
            loss = F.cross_entropy(F.log_softmax(z, xp=xp), T, xp=xp)
            hit = xp.argmax(z, axis=1) == xp.argmax(T, axis=1)
        accuracy = xp.mean(xp.astype(hit, self.model_.dtype))
        return _backend.to_float(loss), _backend.to_float(accuracy)

    def predict_proba(self, X: Any) -> Any:
        """Class probabilities ``(n, n_classes)``, in the namespace (and device) of ``X``."""
        z = self._logits(X)
        xp = self.model_.xp
        if self.n_outputs_ == 1:
            p = F.sigmoid(z, xp=xp)
            proba = xp.concat([1.0 - p, p], axis=1)
        else:
            proba = F.softmax(z, xp=xp)
        return _like_input(proba, X)

    def predict(self, X: Any) -> Any:
        """Predicted labels ``(n,)``, in X's namespace (NumPy for NumPy input or string labels)."""
        z = self._logits(X)
        xp = self.model_.xp
        labels = datasets.decode_labels(
            self.classes_, z[:, 0] > 0 if self.n_outputs_ == 1 else xp.argmax(z, axis=1)
        )
        return labels if labels.dtype.kind not in "biuf" else _like_input(labels, X)

    def score(self, X: Any, y: Any) -> float:
        """Mean accuracy on ``X, y``."""
        return datasets.accuracy(self.predict(X), y)

    def _extra_state(self) -> dict[str, Any]:
        return {"classes_": self.classes_.tolist(), "classes_dtype": self.classes_.dtype.str}

    def _load_extra_state(self, fitted: dict[str, Any]) -> None:
        fitted["classes_"] = datasets.as_host(fitted["classes_"], "classes_").astype(
            fitted.pop("classes_dtype")
        )


class MLPRegressor(_BaseMLP):
    """A multilayer perceptron regressor, as ``sklearn.neural_network.MLPRegressor``.

    The loss is the mean squared error (PyTorch's ``MSELoss``; scikit-learn reports half of it).
    """

    def _first_partial_fit(self, y: Any, n: int, classes: Any) -> None:
        self._set_outputs(y, n)

    def _set_outputs(self, y: Any, n: int) -> None:
        self.n_outputs_ = datasets.check_regression_targets(y, n).shape[1]
        self._y_was_1d = datasets.as_host(y, "y").ndim == 1

    def _extra_state(self) -> dict[str, Any]:
        return {"_y_was_1d": self._y_was_1d}

    def _targets(self, y: Any, n: int, *, fitting: bool) -> tuple[Any, Any]:
        if fitting:
            self._set_outputs(y, n)
        targets = datasets.check_regression_targets(y, n)
        if targets.shape[1] != self.n_outputs_:
            raise ValueError(f"y has {targets.shape[1]} outputs, the model has {self.n_outputs_}")
        return targets, None

    def _loss(self) -> Loss:
        return MSELoss()

    def _evaluate(self, X: Array, T: Array) -> tuple[float, float]:
        xp = self.model_.xp
        pred = self.model_.forward(X, cache=False)
        residual = xp.sum((T - pred) ** 2, axis=0)
        total = xp.sum((T - xp.mean(T, axis=0)) ** 2, axis=0)
        r2 = xp.mean(1.0 - residual / total)
        return _backend.to_float(F.mse(pred, T, xp=xp)), _backend.to_float(r2)

    def predict(self, X: Any) -> Any:
        """Predictions ``(n,)`` (or ``(n, n_outputs)``), in the namespace of ``X``."""
        z = self._logits(X)
        if self.n_outputs_ == 1 and self._y_was_1d:
            z = z[:, 0]
        return _like_input(z, X)

    def score(self, X: Any, y: Any) -> float:
        """The coefficient of determination R^2 (averaged over outputs)."""
        return datasets.r2_score(self.predict(X), y)


# ---------------------------------------------------------------------------- helpers
def _namespace_or_none(x: Any) -> ModuleType | None:
    try:
        return _backend.namespace_of(x)
    except TypeError:
        return None


def _like_input(result: Any, X_in: Any) -> Any:
    """``result`` in the namespace and on the device of the user's input ``X_in`` (NumPy for
    NumPy arrays and plain sequences)."""
    x_xp = _namespace_or_none(X_in)
    if x_xp is None or _backend.backend_of(x_xp).is_host:
        return datasets.as_host(result, "result")
    if _namespace_or_none(result) is x_xp and _backend.device(result) == _backend.device(X_in):
        return result
    return _backend.from_numpy(
        datasets.as_host(result, "result"), xp=x_xp, device=_backend.device(X_in)
    )


def _console() -> Any:
    from rich.console import Console

    return Console(stderr=True)


def _sum(arrays: list[Array]) -> Array:
    total = arrays[0]
    for a in arrays[1:]:
        total = total + a
    return total


class _Progress:
    """Progress of one fit (rich): a bar over the epochs with the last loss (and validation
    score), and under it a bar over the current epoch's steps with the running loss."""

    def __init__(self, epochs: int) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        self._bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
            console=_console(),
        )
        self._epochs = self._bar.add_task("epochs", total=epochs, info="")
        self._steps = self._bar.add_task("steps", total=1, info="", visible=False)
        self._every = 1
        self._bar.start()

    def start_epoch(self, epoch: int, steps: int) -> None:
        self._bar.reset(
            self._steps, total=steps, description=f"epoch {epoch}", info="", visible=True
        )
        self._every = max(1, steps // 10)

    def step(self, step_losses: list[Any], samples: int) -> None:
        """One more step; ``step_losses`` are the summed losses so far over ``samples`` rows."""
        if len(step_losses) % self._every == 0:  # reading the loss syncs: only now and then
            running = _backend.to_float(_sum(step_losses)) / samples
            self._bar.update(self._steps, advance=1, info=f"loss {running:.4f}")
        else:
            self._bar.update(self._steps, advance=1)

    def end_epoch(self, loss: float, scores: list[float] | None) -> None:
        info = f"loss {loss:.4f}" + (f", validation {scores[-1]:.4f}" if scores else "")
        self._bar.update(self._epochs, advance=1, info=info)

    def log(self, message: str) -> None:
        self._bar.console.print(message)

    def close(self) -> None:
        self._bar.update(self._steps, visible=False)
        self._bar.stop()
