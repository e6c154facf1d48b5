"""MLPClassifier and MLPRegressor: scikit-learn's meaning, on every backend."""

from __future__ import annotations

import pickle
import warnings
from typing import Any

import numpy as np
import pytest

import portable_mlp as pm
from portable_mlp import _backend, datasets
from portable_mlp.testing import Case, assert_close, jax_compilations, selected_backends


@pytest.fixture(scope="module")
def cancer() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    X, y = datasets.load("breast_cancer")
    X_tr, X_te, y_tr, y_te = datasets.train_test_split(X, y, test_size=0.25, rng=0)
    scaler = datasets.Standardizer().fit(X_tr)
    return scaler.transform(X_tr), scaler.transform(X_te), y_tr, y_te


def _fit(clf: Any, X: Any, y: Any) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", pm.ConvergenceWarning)  # short runs on purpose
        return clf.fit(X, y)


def test_classifier_learns_on_every_backend(case: Case, dtype: str, cancer: Any) -> None:
    X_tr, X_te, y_tr, y_te = cancer
    clf = pm.MLPClassifier((16,), max_iter=15, random_state=0, **case.model_kwargs(dtype))
    _fit(clf, X_tr, y_tr)
    assert clf.n_iter_ == 15 and len(clf.loss_curve_) == 15
    assert clf.loss_curve_[-1] < clf.loss_curve_[0]
    assert clf.score(X_te, y_te) >= 0.93
    assert clf.classes_.tolist() == [0, 1] and clf.n_outputs_ == 1
    assert clf.model_.backend == case.backend and clf.model_.device == case.resolved_device
    assert _backend.dtype_name(clf.model_.dtype) == dtype


def test_results_come_back_in_the_inputs_namespace(case: Case, cancer: Any) -> None:
    X_tr, X_te, y_tr, _ = cancer
    clf = _fit(
        pm.MLPClassifier((8,), max_iter=3, random_state=0, **case.model_kwargs("float32")),
        X_tr,
        y_tr,
    )
    on_host = clf.predict_proba(X_te)
    assert isinstance(on_host, np.ndarray) and on_host.shape == (len(X_te), 2)
    np.testing.assert_allclose(on_host.sum(axis=1), 1.0, rtol=1e-6)
    x_dev = case.array(X_te, "float32")
    proba = clf.predict_proba(x_dev)
    assert_close(proba, on_host, case=case, dtype="float32", tol=1e-6)
    labels = clf.predict(x_dev)
    assert pm.namespace_of(labels) is case.xp and _backend.device(labels) == case.resolved_device
    assert np.array_equal(pm.to_numpy(labels), clf.predict(X_te))
    assert isinstance(clf.predict(X_te.tolist()), np.ndarray)  # plain lists give NumPy


def test_fit_accepts_backend_arrays(case: Case, cancer: Any) -> None:
    X_tr, _, y_tr, _ = cancer
    on_host = _fit(
        pm.MLPClassifier((8,), max_iter=2, random_state=1, **case.model_kwargs("float64")),
        X_tr,
        y_tr,
    )
    on_dev = _fit(
        pm.MLPClassifier((8,), max_iter=2, random_state=1, **case.model_kwargs("float64")),
        case.array(X_tr, "float64"),
        case.array(y_tr),
    )
    assert on_dev.loss_curve_ == on_host.loss_curve_


def test_same_seed_same_fit_on_every_backend(case: Case, cancer: Any) -> None:
    X_tr, _, y_tr, _ = cancer
    kw = {"hidden_layer_sizes": (8,), "max_iter": 4, "random_state": 3}
    here = _fit(pm.MLPClassifier(**kw, **case.model_kwargs("float64")), X_tr, y_tr)
    ref = _fit(pm.MLPClassifier(**kw, dtype="float64"), X_tr, y_tr)  # NumPy
    np.testing.assert_allclose(here.loss_curve_, ref.loss_curve_, rtol=1e-10)
    again = _fit(pm.MLPClassifier(**kw, **case.model_kwargs("float64")), X_tr, y_tr)
    assert again.loss_curve_ == here.loss_curve_


def test_multiclass_and_any_labels(case: Case) -> None:
    X, y = datasets.load("digits")
    X = X[:400] / 16.0
    names = np.array(
        ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    )
    labels = names[y[:400]]
    clf = _fit(
        pm.MLPClassifier(
            (32,),
            max_iter=20,
            random_state=0,
            learning_rate_init=1e-2,
            **case.model_kwargs("float32"),
        ),
        X,
        labels,
    )
    assert clf.classes_.tolist() == sorted(names.tolist()) and clf.n_outputs_ == 10
    predicted = clf.predict(case.array(X, "float32"))
    assert isinstance(predicted, np.ndarray) and predicted.dtype.kind == "U"  # strings stay NumPy
    assert clf.score(X, labels) >= 0.9
    proba = clf.predict_proba(X)
    assert proba.shape == (400, 10)
    assert np.array_equal(clf.classes_[proba.argmax(axis=1)], predicted)


def test_l2_penalty_and_sgd_step_match_torch_autograd() -> None:
    """alpha means scikit-learn's alpha: alpha/2 ||W||^2 / n_batch, weights only."""
    import torch

    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(20, 3)), rng.normal(size=20)
    reg = pm.MLPRegressor(
        (4,),
        solver="sgd",
        momentum=0.0,
        learning_rate_init=0.1,
        alpha=0.7,
        batch_size=20,
        shuffle=False,
        max_iter=1,
        random_state=5,
        dtype="float64",
    )
    _fit(reg, X, y)
    start = pm.MLP(
        [3, 4, 1], "relu", rng=np.random.default_rng(5), init="xavier_uniform", dtype="float64"
    ).parameters()
    t = {k: torch.tensor(v, requires_grad=True) for k, v in start.items()}
    z = torch.relu(torch.tensor(X) @ t["0.weight"] + t["0.bias"]) @ t["2.weight"] + t["2.bias"]
    penalty = 0.5 * 0.7 * (t["0.weight"].square().sum() + t["2.weight"].square().sum()) / 20
    objective = torch.nn.functional.mse_loss(z[:, 0], torch.tensor(y)) + penalty
    objective.backward()
    assert reg.loss_curve_[0] == pytest.approx(objective.item(), rel=1e-12)
    for k, v in reg.model_.parameters().items():
        np.testing.assert_allclose(v, (t[k] - 0.1 * t[k].grad).detach().numpy(), rtol=1e-12)


def test_early_stopping_restores_the_best_weights(case: Case, cancer: Any) -> None:
    X_tr, _, y_tr, _ = cancer
    clf = pm.MLPClassifier(
        (16,),
        early_stopping=True,
        n_iter_no_change=2,
        max_iter=60,
        learning_rate_init=0.05,
        random_state=0,
        **case.model_kwargs("float64"),
    )
    _fit(clf, X_tr, y_tr)
    assert clf.n_iter_ < 60  # it stopped early
    assert clf.best_validation_score_ == max(clf.validation_scores_)
    assert len(clf.validation_scores_) == clf.n_iter_ and clf.best_loss_ is None
    # The model's generator draws the initial weights, then the validation split: rebuild it.
    gen = np.random.default_rng(0)
    pm.MLP([30, 16, 1], rng=gen, init="xavier_uniform")
    rows = range(len(y_tr))
    _, val, _, _ = datasets.train_test_split(rows, y_tr, test_size=0.1, rng=gen, stratify=True)
    assert clf.score(X_tr[val], y_tr[val]) == pytest.approx(clf.best_validation_score_, abs=1e-12)


def test_stops_when_the_loss_stalls_and_warns_when_it_runs_out(cancer: Any) -> None:
    X_tr, _, y_tr, _ = cancer
    clf = pm.MLPClassifier((8,), tol=10.0, n_iter_no_change=2, max_iter=50, random_state=0)
    clf.fit(X_tr, y_tr)  # no warning: the stopping rule ends it
    # epoch 1 improves on inf; epochs 2-4 miss tol, and the count must exceed n_iter_no_change
    assert clf.n_iter_ == 4
    with pytest.warns(pm.ConvergenceWarning, match=r"Maximum iterations \(2\) reached"):
        pm.MLPClassifier((8,), max_iter=2, random_state=0).fit(X_tr, y_tr)


def test_non_finite_loss_stops_with_the_last_finite_weights(case: Case) -> None:
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(64, 4)), rng.normal(size=64) * 1e3
    reg = pm.MLPRegressor(
        (8,),
        solver="sgd",
        momentum=0.0,
        learning_rate_init=10.0,
        batch_size=8,
        max_iter=5,
        random_state=0,
        **case.model_kwargs("float32"),
    )
    with pytest.raises(pm.TrainingError, match=r"non-finite at epoch 1, (step \d+|the update)"):
        reg.fit(X, y)
    for v in reg.model_.parameters().values():
        assert np.isfinite(pm.to_numpy(v)).all()
    assert reg.n_iter_ == 0 and reg.loss_curve_ == []


def test_partial_fit_and_warm_start(cancer: Any) -> None:
    X_tr, _, y_tr, _ = cancer
    clf = pm.MLPClassifier((8,), random_state=0)
    with pytest.raises(ValueError, match="classes must be passed on the first call"):
        clf.partial_fit(X_tr, y_tr)
    clf.partial_fit(X_tr[:100], y_tr[:100], classes=[0, 1])
    clf.partial_fit(X_tr[100:], y_tr[100:])
    # n_iter_ counts the last call's epochs, as in scikit-learn; the curve and t_ go on
    assert clf.n_iter_ == 1 and len(clf.loss_curve_) == 2 and clf.t_ == len(X_tr)
    with pytest.raises(ValueError, match="labels not seen before: \\[7\\]"):
        clf.partial_fit(X_tr[:3], [0, 1, 7])
    warm = pm.MLPClassifier((8,), max_iter=3, warm_start=True, random_state=0)
    _fit(warm, X_tr, y_tr)
    first = {k: pm.to_numpy(v) for k, v in warm.model_.parameters().items()}
    _fit(warm, X_tr, y_tr)
    assert warm.n_iter_ == 3 and len(warm.loss_curve_) == 6 and warm.t_ == 6 * len(X_tr)
    assert warm.loss_curve_[3] < warm.loss_curve_[0]  # went on from where it was
    cold = _fit(pm.MLPClassifier((8,), max_iter=3, random_state=0), X_tr, y_tr)
    assert all(
        np.array_equal(first[k], pm.to_numpy(v)) for k, v in cold.model_.parameters().items()
    )


def test_regressor(case: Case) -> None:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 3))
    Y = np.stack([X @ [1.0, -2.0, 0.5], np.sin(X[:, 0])], axis=1)
    reg = _fit(
        pm.MLPRegressor(
            (32,),
            max_iter=60,
            learning_rate_init=1e-2,
            random_state=0,
            **case.model_kwargs("float32"),
        ),
        X,
        Y,
    )
    assert reg.n_outputs_ == 2 and reg.predict(X).shape == (300, 2)
    assert reg.score(X, Y) > 0.95
    single = _fit(
        pm.MLPRegressor((16,), max_iter=5, random_state=0, **case.model_kwargs("float32")),
        X,
        Y[:, 0],
    )
    out = single.predict(case.array(X, "float32"))
    assert tuple(out.shape) == (300,) and pm.namespace_of(out) is case.xp


def test_verbose_shows_progress(capsys: pytest.CaptureFixture[str], cancer: Any) -> None:
    X_tr, _, y_tr, _ = cancer
    _fit(pm.MLPClassifier((4,), max_iter=2, verbose=True, random_state=0), X_tr, y_tr)
    err = capsys.readouterr().err
    assert "epochs" in err and "2/2 loss" in err
    clf = pm.MLPClassifier(
        (4,),
        max_iter=50,
        verbose=True,
        early_stopping=True,
        tol=1.0,
        n_iter_no_change=1,
        random_state=0,
    )
    clf.fit(X_tr, y_tr)
    err = capsys.readouterr().err
    assert "validation" in err and "Validation score did not improve" in err


def test_params_protocol() -> None:
    clf = pm.MLPClassifier((5,), alpha=0.1)
    params = clf.get_params()
    assert params["hidden_layer_sizes"] == (5,) and params["alpha"] == 0.1
    assert params["backend"] == "numpy" and params["batch_size"] == 200
    assert clf.set_params(alpha=0.2, max_iter=7) is clf and clf.alpha == 0.2
    with pytest.raises(ValueError, match="invalid parameter 'alhpa'"):
        clf.set_params(alhpa=1)
    assert repr(clf) == "MLPClassifier(hidden_layer_sizes=(5,), alpha=0.2, max_iter=7)"


def test_works_with_scikit_learn_tooling(cancer: Any) -> None:
    pytest.importorskip("sklearn")
    from sklearn.base import clone
    from sklearn.model_selection import cross_val_score

    X_tr, _, y_tr, _ = cancer
    clf = pm.MLPClassifier((8,), max_iter=20, learning_rate_init=1e-2, random_state=0)
    twin = clone(clf)
    assert twin.get_params() == clf.get_params() and twin is not clf
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", pm.ConvergenceWarning)
        scores = cross_val_score(clf, X_tr, y_tr, cv=3)
    assert scores.shape == (3,) and scores.min() > 0.9


def test_checkpoint_round_trip(case: Case, tmp_path: Any, cancer: Any) -> None:
    X_tr, X_te, y_tr, _ = cancer
    labels = np.where(y_tr == 1, "benign", "malignant")
    clf = _fit(
        pm.MLPClassifier((8,), max_iter=3, random_state=0, **case.model_kwargs("float32")),
        X_tr,
        labels,
    )
    pm.save(clf, tmp_path / "clf.safetensors")
    back = pm.load(tmp_path / "clf.safetensors", backend="numpy")
    assert isinstance(back, pm.MLPClassifier) and back.classes_.tolist() == ["benign", "malignant"]
    assert back.loss_curve_ == clf.loss_curve_ and back.n_iter_ == 3
    np.testing.assert_allclose(back.predict_proba(X_te), clf.predict_proba(X_te), rtol=1e-5)
    assert np.array_equal(back.predict(X_te), clf.predict(X_te))
    again = pm.load(tmp_path / "clf.safetensors", **case.model_kwargs("float32"))
    assert np.array_equal(again.predict_proba(X_te), clf.predict_proba(X_te))
    back.partial_fit(X_tr, labels)  # it can go on training
    assert back.n_iter_ == 1 and len(back.loss_curve_) == 4


def test_estimator_misuse(cancer: Any) -> None:
    X_tr, _, y_tr, _ = cancer
    for kwargs, message in [
        ({"solver": "lbfgs"}, "solver must be one of sgd, adam, adamw, got 'lbfgs'"),
        ({"learning_rate": "optimal"}, "learning_rate must be one of constant, invscaling, adap"),
        ({"hidden_layer_sizes": (0,)}, "hidden_layer_sizes must be positive"),
        ({"batch_size": 0}, "batch_size must be 'auto' or an int >= 1"),
        ({"validation_fraction": 1.0}, r"validation_fraction must be a finite number in \(0, 1\)"),
        ({"activation": "swish"}, "activation must be one of relu, sigmoid, logistic, tanh"),
        ({"backend": "tensorflow"}, "unknown backend 'tensorflow'"),
    ]:
        with pytest.raises(ValueError, match=message):
            pm.MLPClassifier(**kwargs).fit(X_tr, y_tr)
    clf = pm.MLPClassifier((4,))
    with pytest.raises(pm.NotFittedError, match="not fitted yet"):
        clf.predict(X_tr)
    with pytest.raises(ValueError, match="Unknown label type: continuous"):
        clf.fit(X_tr, y_tr + 0.5)
    with pytest.raises(ValueError, match="needs at least 2 classes in y, got 1"):
        clf.fit(X_tr, np.zeros(len(X_tr)))
    with pytest.raises(ValueError, match="different numbers of samples: 426 and 3"):
        clf.fit(X_tr, y_tr[:3])
    bad = X_tr.copy()
    bad[3, 2] = np.nan
    with pytest.raises(ValueError, match=r"Input X contains NaN \(first at row 3, column 2\)"):
        clf.fit(bad, y_tr)
    _fit(clf.set_params(max_iter=1), X_tr, y_tr)
    with pytest.raises(ValueError, match="X has 5 features, but MLPClassifier is expecting 30"):
        clf.predict(X_tr[:, :5])


def test_fit_captures_the_step_once_and_partial_fit_never(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A capture pays over many epochs: ``fit`` makes one per call, ``partial_fit`` (one epoch
    a call, where JAX would trace and compile anew each time) uses the eager step."""
    from portable_mlp.compiled import StepPlan

    made = []
    real = StepPlan.capture

    def counting(plan: StepPlan) -> Any:
        made.append(1)
        return real(plan)

    monkeypatch.setattr(StepPlan, "capture", counting)
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(40, 3)), rng.integers(0, 2, size=40)
    clf = pm.MLPClassifier((4,), max_iter=3, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # three epochs do not converge
        clf.fit(X, y)
    assert len(made) == 1
    for _ in range(3):
        clf.partial_fit(X, y)
    assert len(made) == 1
    # compile=False: no capture, and the eager step trains to the same weights.
    eager = pm.MLPClassifier((4,), max_iter=3, random_state=0, compile=False)
    again = pm.MLPClassifier((4,), max_iter=3, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        eager.fit(X, y)
        assert len(made) == 1
        again.fit(X, y)
        assert len(made) == 2
    np.testing.assert_allclose(eager.loss_curve_, again.loss_curve_, rtol=1e-12)
    mine, theirs = eager.coefs_ + eager.intercepts_, again.coefs_ + again.intercepts_
    for a, b in zip(mine, theirs, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-15)
    assert eager.get_params()["compile"] is False
    with pytest.raises(ValueError, match="MLPClassifier compile must be True or False, got 'no'"):
        pm.MLPClassifier(compile="no").fit(X, y)


# ---------------------------------------------------------------------------- prediction
def _predictions_by_hand(est: Any, X: np.ndarray) -> dict[str, np.ndarray]:
    """What each prediction method gives, computed from the eager forward pass."""
    F, xp = pm.functional, est.model_.xp
    z = est.model_.forward(est.model_.placement.asarray(X), cache=False)
    host = pm.to_numpy
    if isinstance(est, pm.MLPRegressor):
        return {"predict": host(z[:, 0] if est._y_was_1d else z)}
    if est._multilabel:
        return {
            "predict_proba": host(F.sigmoid(z, xp=xp)),
            "predict_log_proba": np.log(host(F.sigmoid(z, xp=xp))),
            "predict": (host(z) > 0).astype(int),
        }
    if est.n_outputs_ == 1:
        p = host(F.sigmoid(z, xp=xp))
        proba = np.concatenate([1 - p, p], axis=1)
    else:
        proba = host(F.softmax(z, xp=xp))
    return {
        "predict_proba": proba,
        "predict_log_proba": np.log(proba),
        "predict": est.classes_[np.argmax(proba, axis=1)],
    }


def test_predictions_equal_the_eager_forward(case: Case, dtype: str) -> None:
    """Every prediction method and output kind (binary, multiclass, multilabel, regression),
    through the compiled prediction where the backend compiles, equals the eager forward."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(30, 4))
    targets = {
        "binary": rng.integers(0, 2, size=30),
        "multiclass": rng.integers(0, 3, size=30),
        "multilabel": rng.integers(0, 2, size=(30, 3)),
    }
    kwargs = dict(max_iter=3, random_state=0, **case.model_kwargs(dtype))
    fitted = [_fit(pm.MLPClassifier((5,), **kwargs), X, y) for y in targets.values()]
    fitted.append(_fit(pm.MLPRegressor((5,), **kwargs), X, X[:, 0]))
    tol = {"float64": 1e-12, "float32": 1e-5}[dtype]
    for est in fitted:
        for n in (7, 30, 7):  # two batch shapes, the first again
            for method, expected in _predictions_by_hand(est, X[:n]).items():
                got = pm.to_numpy(getattr(est, method)(X[:n]))  # NumPy in, NumPy out
                what = f"{type(est).__name__} {est.n_outputs_} {method} n={n}"
                if method == "predict" and not isinstance(est, pm.MLPRegressor):
                    assert np.array_equal(got, expected), what
                else:  # values of order 1: relative and absolute alike
                    np.testing.assert_allclose(got, expected, rtol=tol, atol=tol, err_msg=what)
        # The prediction functions kept on the model are left out of a pickle, and remade.
        assert "_predictions" in est.model_.__dict__
        again = pickle.loads(pickle.dumps(est))
        assert "_predictions" not in again.model_.__dict__
        np.testing.assert_array_equal(pm.to_numpy(again.predict(X)), pm.to_numpy(est.predict(X)))


def test_jax_prediction_compiles_once_per_method_and_shape() -> None:
    """On JAX a prediction is one compiled call: a new batch shape compiles one program per
    method (not one per operation), a shape seen before compiles nothing, and the estimator
    still pickles."""
    if "jax" not in selected_backends():
        pytest.skip("JAX is not among this run's backends")
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(40, 4)), rng.integers(0, 3, size=40)
    clf = _fit(pm.MLPClassifier((5,), max_iter=2, random_state=0, backend="jax"), X, y)
    methods = (clf.predict_proba, clf.predict_log_proba, clf.predict)
    with jax_compilations() as compiled:
        for method in methods:
            method(X[:11])
        assert compiled == ["jit(predict)"] * 3, compiled
        for method in methods:
            method(X[:11])
        clf.score(X[:11], y[:11])
        assert len(compiled) == 3, compiled
    again = pickle.loads(pickle.dumps(clf))
    np.testing.assert_array_equal(again.predict_proba(X[:11]), clf.predict_proba(X[:11]))
