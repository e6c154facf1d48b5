"""``MLPClassifier`` and ``MLPRegressor``: scikit-learn's estimators, on any array backend.

Parameters mean what they mean in ``sklearn.neural_network.MLPClassifier``/``MLPRegressor``,
plus ``backend``, ``device``, ``dtype``, ``max_grad_norm`` and ``compile`` (train with the
captured step, :func:`portable_mlp.compile_step`; ``False``: the eager step). Training data is
validated on the host once and moved to the device once (sparse ``X``: one batch at a time),
then trained by :func:`portable_mlp.training.fit` (how: :mod:`portable_mlp._fitting`); this
module keeps the scikit-learn protocol, the labels, prediction and the state a checkpoint
stores.

``ConvergenceWarning`` and ``NotFittedError`` are scikit-learn's own classes' subclasses where
scikit-learn is installed; they are made when first used (importing scikit-learn takes seconds).
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from types import ModuleType
from typing import Any

import numpy as np
from numpy.typing import NDArray

from . import _backend, _fitting, _validation, checkpoints, metrics, optim
from . import functional as F
from ._backend import Array, Placement
from .compiled import predict_function
from .layers import Module
from .losses import BCEWithLogitsLoss, CrossEntropyLoss, Loss, MSELoss
from .models import MLP
from .training import TrainingError

# Also ConvergenceWarning and NotFittedError, made on first use by __getattr__.
__all__ = ["MLPClassifier", "MLPRegressor", "TrainingError"]

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


# What prediction makes of the model's outputs z, row by row, on the model's placement: each is
# compiled with the forward pass where the backend compiles (compiled.predict_function).
def _sigmoid(z: Array, where: Placement) -> Array:
    return F.sigmoid(z, xp=where.xp)


def _binary_proba(z: Array, where: Placement) -> Array:
    p = F.sigmoid(z, xp=where.xp)
    return where.xp.concat([1.0 - p, p], axis=1)


def _softmax(z: Array, where: Placement) -> Array:
    return F.softmax(z, xp=where.xp)


def _log_softmax(z: Array, where: Placement) -> Array:
    return F.log_softmax(z, xp=where.xp)


def _log_sigmoid(z: Array, where: Placement, *, both: bool = False) -> Array:
    # log sigmoid(z) = -(max(-z, 0) + log1p(exp(-|z|))); log(1 - sigmoid(z)) likewise in z
    xp = where.xp
    tail = xp.log1p(F.exp_neg_abs(z, xp=xp))
    log_p = -(xp.maximum(-z, 0.0) + tail)
    return xp.concat([-(xp.maximum(z, 0.0) + tail), log_p], axis=1) if both else log_p


def _binary_log_proba(z: Array, where: Placement) -> Array:
    return _log_sigmoid(z, where, both=True)


def _indicators(z: Array, where: Placement) -> Array:
    return where.xp.astype(z > 0, where.index_dtype)


def _positive(z: Array, where: Placement) -> Array:
    return z[:, 0] > 0


def _argmax(z: Array, where: Placement) -> Array:
    return where.xp.argmax(z, axis=1)


def _first_column(z: Array, where: Placement) -> Array:
    return z[:, 0]


class _BaseMLP:
    """What the classifier and the regressor share: parameters, fitted attributes, prediction,
    checkpoints."""

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
        compile: bool = True,
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
        self.compile = compile
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
        _fitting.fit_estimator(self, X, y, sample_weight, eval_set, eval_name)
        return self

    # ------------------------------------------------------------------ prediction
    def _check_fitted(self) -> None:
        if not hasattr(self, "model_"):
            _raise_not_fitted(type(self).__name__)

    def _check_n_features(self, X: Any, what: str = "X") -> None:
        _validation.check_n_features(X, self.n_features_in_, type(self).__name__, what)

    def _outputs(self, X: Any, method: str, then: Any = None) -> Array:
        """``then(z, placement)`` of the model's outputs ``z: (n, k)`` for ``X`` (``z`` itself
        without ``then``), on the model's placement, keeping no activations: ``X`` checked
        (finite, within the model's dtype, its features and their names)."""
        self._check_fitted()
        who = type(self).__name__
        where = self.model_.placement
        if _validation.array_api_dispatch():
            _validation.check_same_namespace(where, X, who, method)
        _validation.check_feature_names(self, X, reset=False)
        predict = predict_function(self.model_, then)
        if not _validation.is_sparse(X):
            return predict(_validation.features_on(where, X, self.n_features_in_, who))
        A = _validation.check_features(X, who=who, limit=where.dtype)
        self._check_n_features(A)
        rows = max(1, _DENSE_BLOCK // A.shape[1])
        blocks = [
            predict(where.asarray(A[s : s + rows].toarray())) for s in range(0, A.shape[0], rows)
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
        est._generator = _fitting.rank_agreed_rng(est.random_state)
        est._optimizer, est._schedule = _fitting.make_optimizer(est)
        return est

    def _extra_state(self) -> dict[str, Any]:
        return {}

    def _load_extra_state(self, fitted: dict[str, Any]) -> None:
        pass

    # Fitted attributes (made by _fitting.init_model or a checkpoint) and subclass hooks
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


# What a checkpoint keeps of a fitted estimator, besides the subclasses' extra state.
_FITTED = (
    "n_features_in_",
    "n_outputs_",
    "best_loss_",
    "n_iter_",
    *(a for a in _fitting.HISTORY if a[0] != "_"),
)


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
        _fitting.partial_fit_estimator(self, X, y, sample_weight, classes)
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

    def _by_kind(self, multilabel: Any, binary: Any, multiclass: Any) -> Any:
        """Of the three, the one for this classifier's outputs (checked fitted first)."""
        self._check_fitted()
        if self._multilabel:
            return multilabel
        return binary if self.n_outputs_ == 1 else multiclass

    def predict_proba(self, X: Any) -> Any:
        """Class probabilities ``(n, n_classes)`` (each label's, for multilabel), in the
        namespace, on the device and in the floating dtype of ``X``."""
        then = self._by_kind(_sigmoid, _binary_proba, _softmax)
        return _validation.like_input(self._outputs(X, "predict_proba", then), X, floating=True)

    def predict_log_proba(self, X: Any) -> Any:
        """The logarithm of :meth:`predict_proba`, computed from the logits (finite where a
        probability rounds to 0)."""
        then = self._by_kind(_log_sigmoid, _binary_log_proba, _log_softmax)
        return _validation.like_input(self._outputs(X, "predict_log_proba", then), X, floating=True)

    def predict(self, X: Any) -> Any:
        """Predicted labels ``(n,)`` (a 0/1 indicator ``(n, k)`` for multilabel), in X's
        namespace (NumPy for NumPy input or string labels)."""
        outputs = self._outputs(X, "predict", self._by_kind(_indicators, _positive, _argmax))
        if self._multilabel:
            return _validation.like_input(outputs, X)
        labels = _validation.decode_labels(self.classes_, outputs)
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
        _fitting.partial_fit_estimator(self, X, y, sample_weight, None)
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
        self._check_fitted()  # before the fitted attributes are read
        column = self.n_outputs_ == 1 and self._y_was_1d
        z = self._outputs(X, "predict", _first_column if column else None)
        return _validation.like_input(z, X, floating=True)

    def score(self, X: Any, y: Any, sample_weight: Any = None) -> float:
        """The coefficient of determination R^2 (averaged over outputs), weighted by
        ``sample_weight``."""
        truth = _validation.as_host(y, "y").astype(float)
        predicted = _validation.as_host(self.predict(X), "predictions").astype(float)
        weights = None if sample_weight is None else _validation.as_host(sample_weight, "w")
        return _backend.to_float(metrics.r2_score(truth, predicted, sample_weight=weights))
