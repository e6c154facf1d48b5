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

from . import _backend, datasets
from . import functional as F
from .layers import MLP, Module
from .losses import BCEWithLogitsLoss, CrossEntropyLoss, Loss, MSELoss
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

Array = Any
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
        from sklearn.utils import (  # type: ignore[import-untyped]
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
    def fit(self, X: Any, y: Any) -> _BaseMLP:
        """Train on ``X: (n, p)`` and ``y`` for up to ``max_iter`` epochs; returns ``self``."""
        self._check_params()
        X_host = datasets.check_features(X)
        warm = self.warm_start and hasattr(self, "model_")
        targets, strata = self._targets(y, X_host.shape[0], fitting=not warm)
        if not warm or self.n_features_in_ != X_host.shape[1]:
            self._init_model(X_host.shape[1])
        self._train(X_host, targets, strata, epochs=int(self.max_iter), incremental=False)
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
        self, X_host: Any, targets: Any, strata: Any, *, epochs: int, incremental: bool
    ) -> None:
        """``targets``: float (n, k) for the loss; ``strata``: labels to stratify by, or None."""
        model = self.model_
        xp, dev = model.xp, model.device
        if self.early_stopping and not incremental:
            rows = range(X_host.shape[0])
            train, val, _, _ = datasets.train_test_split(
                rows,
                rows if strata is None else strata,
                test_size=self.validation_fraction,
                rng=self._rng(),
                stratify=strata is not None,
            )
            X_val = _backend.from_numpy(X_host[val], xp=xp, dtype=model.dtype, device=dev)
            y_val = self._targets_on_device(targets[val])
            X_host, targets = X_host[train], targets[train]
        n = X_host.shape[0]
        X = _backend.from_numpy(X_host, xp=xp, dtype=model.dtype, device=dev)  # moved once
        T = self._targets_on_device(targets)
        batch = min(200 if self.batch_size == "auto" else int(self.batch_size), n)
        loss = self._loss()
        schedule = self._make_schedule(epochs)
        index_dtype = xp.__array_namespace_info__().default_dtypes(device=dev)["indexing"]
        best_params = None
        for _ in range(epochs):
            order = self._rng().permutation(n) if self.shuffle else None
            order_dev = (
                None
                if order is None
                else _backend.from_numpy(order, xp=xp, dtype=index_dtype, device=dev)
            )
            bounds = [(s, min(s + batch, n)) for s in range(0, n, batch)]
            snapshot = self._snapshot()
            with _backend.floating_point_errors_checked_by_caller(xp):
                step_losses = self._epoch(X, T, order_dev, bounds, loss)
            total = step_losses[0]
            for value in step_losses[1:]:
                total = total + value
            epoch_loss = _backend.to_float(total) / n  # the one read-back per epoch
            if not (math.isfinite(epoch_loss) and self._weights_finite()):
                with _backend.floating_point_errors_checked_by_caller(xp):
                    self._recover(snapshot, X, T, order_dev, bounds, loss, step_losses)
            self.n_iter_ += 1
            self.t_ += n
            self.loss_curve_.append(epoch_loss)
            schedule.step()
            stop = False
            if self.early_stopping and not incremental:
                score = self._score_on_device(X_val, y_val)
                assert self.validation_scores_ is not None
                self.validation_scores_.append(score)
                best = self.best_validation_score_
                assert best is not None
                self._no_improvement = self._no_improvement + 1 if score < best + self.tol else 0
                if score > best:
                    self.best_validation_score_ = score
                    best_params = self._copy_params()
                stop = self._no_improvement > self.n_iter_no_change
            elif not incremental:
                best_loss = self.best_loss_
                assert best_loss is not None
                self._no_improvement = (
                    self._no_improvement + 1 if epoch_loss > best_loss - self.tol else 0
                )
                self.best_loss_ = min(best_loss, epoch_loss)
                stop = self._no_improvement > self.n_iter_no_change
            if self.verbose:
                extra = (
                    f", validation score {self.validation_scores_[-1]:.4f}"
                    if self.validation_scores_
                    else ""
                )
                _console().log(f"Epoch {self.n_iter_}: loss {epoch_loss:.6f}{extra}")
            if stop:
                if self.verbose:
                    what = "Validation score" if self.early_stopping else "Training loss"
                    _console().log(
                        f"{what} did not improve more than tol={self.tol} for "
                        f"{self.n_iter_no_change} consecutive epochs. Stopping."
                    )
                break
        else:
            if not incremental:
                warnings.warn(
                    f"Stochastic Optimizer: Maximum iterations ({epochs}) reached and the "
                    "optimization hasn't converged yet.",
                    ConvergenceWarning,
                    stacklevel=3,
                )
        if self.early_stopping and not incremental:
            self.best_loss_ = None
            if best_params is not None:  # restore the weights of the best validation score
                model.set_parameters(best_params)

    def _epoch(
        self, X: Array, T: Array, order: Array | None, bounds: list[tuple[int, int]], loss: Loss
    ) -> list[Array]:
        """One pass over the data; returns each step's summed loss as 0-d arrays (no sync)."""
        progress = _Progress(len(bounds), self.n_iter_ + 1) if self.verbose else None
        xp = self.model_.xp
        out = []
        for s, e in bounds:
            if order is None:
                xb, tb = X[s:e, ...], T[s:e, ...]
            else:
                idx = order[s:e]
                xb, tb = xp.take(X, idx, axis=0), xp.take(T, idx, axis=0)
            out.append(self._step(xb, tb, loss) * float(e - s))
            if progress is not None:
                progress.advance(out, e)
        if progress is not None:
            progress.close()
        return out

    def _step(self, xb: Array, tb: Array, loss: Loss) -> Array:
        """forward, loss, backward, L2 penalty, update; returns the batch's mean loss (0-d)."""
        model = self.model_
        xp = model.xp
        value = loss._forward(model._forward(xb, True), tb, xp)
        model._backward(loss.backward(), False)
        grads = model.gradients()
        if self.alpha:
            # scikit-learn's L2 term: alpha/2 ||W||^2 / batch, on weights only, in loss and grads.
            scale = float(self.alpha) / xb.shape[0]
            params = model.parameters()
            penalty = None
            for key, W in params.items():
                if key.endswith("weight"):
                    grads = {**grads, key: grads[key] + scale * W}
                    s = xp.sum(W * W)
                    penalty = s if penalty is None else penalty + s
            value = value + (0.5 * scale) * penalty
        self._optimizer.step(grads)
        return value

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
        xp = self.model_.xp
        return all(
            bool(_backend.to_numpy(xp.all(xp.isfinite(v))))
            for v in self.model_.parameters().values()
        )

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
        xp = self.model_.xp
        for i, (s, e) in enumerate(bounds[:bad]):
            idx = order[s:e] if order is not None else None
            xb = X[s:e, ...] if idx is None else xp.take(X, idx, axis=0)
            tb = T[s:e, ...] if idx is None else xp.take(T, idx, axis=0)
            self._step(xb, tb, loss)
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

    def _score_on_device(self, X: Array, y: Array) -> float:
        raise NotImplementedError

    def _targets_on_device(self, targets: Any) -> Array:
        model = self.model_
        return _backend.from_numpy(targets, xp=model.xp, dtype=model.dtype, device=model.device)

    # ------------------------------------------------------------------ checkpoints
    def _checkpoint(self) -> tuple[Module, dict[str, Any]]:
        self._check_fitted()
        params = self.get_params()
        params["backend"] = _backend.backend_name(self.model_.xp)
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
        for key, value in fitted.items():
            setattr(est, key, value)
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

    def _score_on_device(self, X: Array, y: Array) -> float:
        """Accuracy of the logits of ``X`` against encoded targets ``y``, one read-back."""
        xp = self.model_.xp
        z = self.model_.forward(X, cache=False)
        if self.n_outputs_ == 1:
            hit = (z[:, 0] > 0) == (y[:, 0] > 0.5)
        else:
            hit = xp.argmax(z, axis=1) == xp.argmax(y, axis=1)
        return _backend.to_float(xp.mean(xp.astype(hit, self.model_.dtype)))

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

    def _score_on_device(self, X: Array, y: Array) -> float:
        xp = self.model_.xp
        pred = self.model_.forward(X, cache=False)
        residual = xp.sum((y - pred) ** 2, axis=0)
        total = xp.sum((y - xp.mean(y, axis=0)) ** 2, axis=0)
        return _backend.to_float(xp.mean(1.0 - residual / total))

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
    if x_xp is None or _backend.backend_name(x_xp) == "numpy":
        return datasets.as_host(result, "result")
    if _namespace_or_none(result) is x_xp and _backend.device(result) == _backend.device(X_in):
        return result
    return _backend.from_numpy(
        datasets.as_host(result, "result"), xp=x_xp, device=_backend.device(X_in)
    )


def _console() -> Any:
    from rich.console import Console

    return Console(stderr=True)


class _Progress:
    """A per-epoch progress bar (rich) with the running loss, refreshed about ten times."""

    def __init__(self, total: int, epoch: int) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        self._bar = Progress(
            TextColumn(f"epoch {epoch}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[loss]}"),
            TimeElapsedColumn(),
            console=_console(),
            transient=True,
        )
        self._task = self._bar.add_task("train", total=total, loss="")
        self._every = max(1, total // 10)
        self._bar.start()

    def advance(self, step_losses: list[Any], samples: int) -> None:
        """One more step; ``step_losses`` are the summed losses so far over ``samples`` rows."""
        if len(step_losses) % self._every == 0:  # reading the loss syncs: only now and then
            total = step_losses[0]
            for value in step_losses[1:]:
                total = total + value
            text = f"loss {_backend.to_float(total) / samples:.4f}"
            self._bar.update(self._task, advance=1, loss=text)
        else:
            self._bar.update(self._task, advance=1)

    def close(self) -> None:
        self._bar.stop()
