"""pm.fit, the epoch loop, on every backend: batching, stopping, recovery, curves, read-backs."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import numpy as np
import pytest

import portable_mlp as pm
from portable_mlp import metrics

N, P = 50, 4


def _data(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``X: (N, P)`` whose first column numbers the rows, and 0/1 labels ``y: (N, 1)``."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(N, P))
    X[:, 0] = np.arange(N) / N
    y = (X[:, 1] + X[:, 2] > 0).astype(np.float64).reshape(-1, 1)
    return X, y


def _setup(case: Any, dtype: str, *, lr: float = 0.05, seed: int = 0) -> tuple[Any, ...]:
    model = pm.MLP([P, 8, 1], rng=seed, init="xavier_uniform", **case.model_kwargs(dtype))
    return model, pm.BCEWithLogitsLoss(), pm.Adam(model, lr=lr)


def _problem(case: Any, dtype: str) -> tuple[Any, ...]:
    """``(model, loss, optimizer, X, y)`` of a small binary problem on ``case``."""
    X, y = _data()
    return (*_setup(case, dtype), case.array(X, dtype), case.array(y, dtype))


def _host_params(model: Any) -> dict[str, np.ndarray]:
    return {k: pm.to_numpy(v) for k, v in model.parameters().items()}


class _Snapshots:
    """A callback keeping the weights and logs at the end of every epoch."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.params: list[dict[str, np.ndarray]] = []
        self.logs: list[dict[str, float]] = []

    def on_epoch_end(self, epoch: int, logs: Mapping[str, float]) -> bool:
        assert epoch == len(self.params) + 1
        self.params.append(_host_params(self.model))
        self.logs.append(dict(logs))
        return False


def test_fit_trains_and_records_a_history(case: Any, dtype: str) -> None:
    problem = _problem(case, dtype)
    model = problem[0]
    history = pm.fit(*problem, epochs=6, batch_size=16, rng=0)
    assert isinstance(history, pm.History)
    assert history.n_epochs == 6 and len(history.loss) == 6 and history.samples == 6 * N
    assert history.loss[-1] < history.loss[0]
    assert history.validation_scores is None and history.eval_loss is None
    assert not history.stopped_early and history.best_epoch is None
    for v in model.parameters().values():  # the weights stay where they were
        model.placement.check(v, who="the trained model")


def test_each_epoch_steps_over_every_row_once(case: Any) -> None:
    X, _ = _data()
    model, loss = pm.MLP([P, 3, 1], rng=0, **case.model_kwargs("float64")), pm.MSELoss()
    opt = pm.SGD(model, lr=0.01)
    eager = functools.partial(pm.train_step, model, loss, opt, check=False)
    seen: list[tuple[np.ndarray, np.ndarray]] = []

    def step(x: Any, y: Any) -> Any:
        seen.append((pm.to_numpy(x)[:, 0], pm.to_numpy(y)[:, 0]))
        return eager(x, y)

    Xd, Yd = case.array(X, "float64"), case.array(2.0 * X[:, :1], "float64")
    pm.fit(model, loss, opt, Xd, Yd, epochs=3, batch_size=16, rng=1, step=step)
    assert [len(rows) for rows, _ in seen] == [16, 16, 16, 2] * 3
    orders = []
    for epoch in range(3):
        rows = np.concatenate([r for r, _ in seen[4 * epoch : 4 * epoch + 4]])
        targets = np.concatenate([t for _, t in seen[4 * epoch : 4 * epoch + 4]])
        np.testing.assert_array_equal(np.sort(rows), X[:, 0])  # every row, once
        np.testing.assert_array_equal(targets, 2.0 * rows)  # each with its own target
        orders.append(rows)
    assert not np.array_equal(orders[0], orders[1])  # shuffled afresh each epoch
    seen.clear()
    pm.fit(model, loss, opt, Xd, Yd, epochs=1, batch_size=16, shuffle=False, step=step)
    np.testing.assert_array_equal(np.concatenate([r for r, _ in seen]), X[:, 0])


def test_a_seed_gives_the_same_fit_and_a_history_goes_on(case: Any) -> None:
    X, y = _data()
    runs = []
    for parts in ((4,), (4,), (2, 2)):
        model, loss, opt = _setup(case, "float64")
        Xd, yd = case.array(X, "float64"), case.array(y, "float64")
        rng, history = np.random.default_rng(7), None
        for epochs in parts:
            history = pm.fit(
                model, loss, opt, Xd, yd, epochs=epochs, batch_size=8, rng=rng, history=history
            )
        assert history is not None and history.n_epochs == 4 and len(history.loss) == 4
        runs.append((history.loss, _host_params(model)))
    for losses, params in runs[1:]:
        assert losses == runs[0][0]
        for k, v in params.items():
            np.testing.assert_array_equal(v, runs[0][1][k])


def test_early_stopping_restores_the_best_weights(case: Any) -> None:
    X, _ = _data()
    rng = np.random.default_rng(1)
    X_val = rng.normal(size=(30, P))
    model = pm.MLP([P, 8, 1], rng=0, init="xavier_uniform", **case.model_kwargs("float64"))
    opt = pm.Adam(model, lr=0.05)
    # Learning y = x1 makes the fit to y = -x1 (the validation set) worse and worse: the best
    # validation score comes early and the rule then stops.
    snapshots = _Snapshots(model)
    history = pm.fit(
        model,
        pm.MSELoss(),
        opt,
        case.array(X, "float64"),
        case.array(X[:, 1:2], "float64"),
        epochs=40,
        batch_size=10,
        rng=0,
        validation=(case.array(X_val, "float64"), case.array(-X_val[:, 1:2], "float64")),
        early_stopping=pm.EarlyStopping(tol=0.0, n_iter_no_change=2),
        callbacks=[snapshots],
    )
    scores = history.validation_scores
    assert scores is not None and len(scores) == history.n_epochs < 40
    assert history.stopped_early and "Validation score did not improve" in history.stop_reason
    assert history.best_epoch == int(np.argmax(scores)) + 1 < history.n_epochs
    assert history.best_score == max(scores)
    assert [s["validation_score"] for s in snapshots.logs] == scores
    best = snapshots.params[history.best_epoch - 1]
    for k, v in _host_params(model).items():
        np.testing.assert_array_equal(v, best[k])


def test_the_stopping_rule_watches_the_training_loss_without_validation(case: Any) -> None:
    rule = pm.EarlyStopping(tol=10.0, n_iter_no_change=2)
    history = pm.fit(*_problem(case, "float64"), epochs=50, rng=0, early_stopping=rule)
    # epoch 1 improves on inf; epochs 2-4 miss tol, and the count must exceed n_iter_no_change
    assert history.n_epochs == 4 and history.stopped_early
    assert history.best_epoch == 1 + int(np.argmin(history.loss)) and history.best_loss == min(
        history.loss
    )
    assert "Training loss did not improve" in history.stop_reason


def test_divergence_keeps_the_last_finite_weights(case: Any) -> None:
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(64, P)), rng.normal(size=(64, 1)) * 1e3
    model = pm.MLP([P, 8, 1], rng=0, init="xavier_uniform", **case.model_kwargs("float32"))
    loss, opt = pm.MSELoss(), pm.SGD(model, lr=10.0)
    eager = functools.partial(pm.train_step, model, loss, opt, check=False)
    trace: list[tuple[float, dict[str, np.ndarray]]] = []  # each step's loss and weights after

    def step(x: Any, t: Any) -> Any:
        value = eager(x, t)
        trace.append((float(pm.to_numpy(value)), _host_params(model)))
        return value

    start = _host_params(model)
    Xd, yd = case.array(X, "float32"), case.array(y, "float32")
    with pytest.raises(pm.TrainingError) as info:
        pm.fit(model, loss, opt, Xd, yd, epochs=5, batch_size=8, shuffle=False, step=step)
    first_pass = trace[:8]  # the loop then replays the epoch to find the last finite weights
    bad = next((i for i, (v, _) in enumerate(first_pass) if not np.isfinite(v)), 8)
    finite = [all(np.isfinite(w).all() for w in p.values()) for _, p in first_pass[:bad]]
    kept = finite.index(False) if False in finite else bad
    where = f"step {bad + 1}" if bad < 8 else "the update of step 8"
    assert f"non-finite at epoch 1, {where} of 8" in str(info.value)
    assert f"after {kept} step(s) of epoch 1" in str(info.value)
    expected = start if kept == 0 else first_pass[kept - 1][1]
    for k, v in _host_params(model).items():
        assert np.isfinite(v).all()
        np.testing.assert_array_equal(v, expected[k])


def test_a_history_keeps_the_epochs_before_a_divergence(case: Any) -> None:
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(32, P)), rng.normal(size=(32, 1))
    model = pm.MLP([P, 8, 1], rng=0, init="xavier_uniform", **case.model_kwargs("float32"))
    loss, opt = pm.MSELoss(), pm.SGD(model, lr=1e-3)
    Xd, yd = case.array(X, "float32"), case.array(y, "float32")
    history = pm.fit(model, loss, opt, Xd, yd, epochs=2, batch_size=8, rng=0)
    opt.lr = 1e3
    bad_y = case.array(y * 1e6, "float32")
    with pytest.raises(pm.TrainingError, match="at epoch 3, "):
        pm.fit(model, loss, opt, Xd, bad_y, epochs=2, batch_size=8, rng=0, history=history)
    assert history.n_epochs == 2 and len(history.loss) == 2
    for v in model.parameters().values():
        assert np.isfinite(pm.to_numpy(v)).all()


def test_eval_curves_are_recorded_and_never_stop_training(case: Any) -> None:
    X_ev, y_ev = _data(seed=3)
    problem = _problem(case, "float64")
    snapshots = _Snapshots(problem[0])
    Xe, ye = case.array(X_ev, "float64"), case.array(y_ev, "float64")
    history = pm.fit(
        *problem, epochs=5, batch_size=16, rng=0, eval_set=(Xe, ye), callbacks=[snapshots]
    )
    assert history.n_epochs == 5 and not history.stopped_early
    assert history.eval_loss is not None and history.eval_scores is not None
    assert len(history.eval_loss) == len(history.eval_scores) == 5
    for epoch, params in enumerate(snapshots.params):
        check = pm.MLP([P, 8, 1], **case.model_kwargs("float64"))
        check.set_parameters({k: case.array(v, "float64") for k, v in params.items()})
        z = check.forward(Xe, cache=False)
        expected_loss = pm.to_numpy(pm.BCEWithLogitsLoss()(z, ye))
        hits = (pm.to_numpy(z) > 0) == (y_ev > 0.5)
        assert history.eval_loss[epoch] == pytest.approx(float(expected_loss), rel=1e-12)
        assert history.eval_scores[epoch] == pytest.approx(float(hits.mean()), rel=1e-12)
        assert snapshots.logs[epoch]["eval_score"] == history.eval_scores[epoch]


def _count_read_backs(monkeypatch: pytest.MonkeyPatch, model: Any, fake: Any = None) -> list[int]:
    """Count every transfer to the host through the backend (fake: what the transfer returns)."""
    entry = type(model.placement.backend)
    real = entry.to_host
    calls: list[int] = []

    def counting(self: Any, x: Any) -> np.ndarray:
        calls.append(1)
        return real(self, x) if fake is None else fake(x)

    monkeypatch.setattr(entry, "to_host", counting)
    return calls


def test_one_read_back_per_epoch(case: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    X_ev, y_ev = _data(seed=3)
    problem = _problem(case, "float64")
    sets = {
        "validation": (case.array(X_ev[:20], "float64"), case.array(y_ev[:20], "float64")),
        "eval_set": (case.array(X_ev[20:], "float64"), case.array(y_ev[20:], "float64")),
    }
    calls = _count_read_backs(monkeypatch, problem[0])
    history = pm.fit(
        *problem,
        epochs=4,
        batch_size=8,
        rng=0,
        alpha=1e-3,
        early_stopping=pm.EarlyStopping(tol=-1.0),  # always improving: runs all 4 epochs
        **sets,
    )
    assert history.n_epochs == 4
    assert len(calls) == 4  # loss, finiteness, validation and eval values together


def test_the_loop_reads_back_nothing_else_on_torch_meta(monkeypatch: pytest.MonkeyPatch) -> None:
    """Meta tensors hold no data: any float(), bool() or .item() in the loop would raise."""
    import torch  # noqa: F401 (the reference; always installed with the tests)

    model = pm.MLP([P, 8, 3], rng=0, backend="torch", device="meta", dtype="float32")
    loss, opt = pm.CrossEntropyLoss(), pm.Adam(model, max_grad_norm=1.0)
    X, y = pm.asarray(np.zeros((N, P)), like=model), pm.asarray(np.zeros(N, dtype=int), like=model)
    Xv, yv = X[:10, ...], y[:10]
    # What the one read-back of an epoch returns: loss, all finite, eval loss and score, score.
    calls = _count_read_backs(monkeypatch, model, lambda x: np.array([1.0, 1.0, 0.5, 0.5, 0.5]))
    history = pm.fit(
        model,
        loss,
        opt,
        X,
        y,
        epochs=3,
        batch_size=16,
        rng=0,
        alpha=1e-4,
        validation=(Xv, yv),
        eval_set=(Xv, yv),
        early_stopping=pm.EarlyStopping(),
        schedule=pm.StepLR(opt, step_size=1),
    )
    assert len(calls) == 3 and history.n_epochs == 3
    assert history.loss == [1.0 / N] * 3 and history.validation_scores == [0.5] * 3


def test_a_callback_can_stop_training(case: Any) -> None:
    problem = _problem(case, "float32")

    class StopAtTwo:
        def __init__(self) -> None:
            self.epochs: list[int] = []

        def on_epoch_end(self, epoch: int, logs: Mapping[str, float]) -> bool:
            self.epochs.append(epoch)
            assert set(logs) == {"loss", "lr"}
            return epoch == 2

    watcher = _Snapshots(problem[0])
    stopper = StopAtTwo()
    history = pm.fit(*problem, epochs=10, rng=0, callbacks=[stopper, watcher])
    assert history.n_epochs == 2 and stopper.epochs == [1, 2] and len(watcher.params) == 2
    assert history.stopped_early and history.stop_reason == "StopAtTwo asked to stop."


def test_labels_are_taken_once_in_the_loss_form(case: Any) -> None:
    """Integer labels for cross-entropy train exactly as their one-hot rows do."""
    X, _ = _data()
    labels = np.arange(N) % 3
    runs = []
    for Y in (case.array(labels), case.array(np.eye(3)[labels], "float64")):
        model = pm.MLP([P, 8, 3], rng=0, **case.model_kwargs("float64"))
        opt = pm.SGD(model, lr=0.1)
        runs.append(
            pm.fit(
                model,
                pm.CrossEntropyLoss(),
                opt,
                case.array(X, "float64"),
                Y,
                epochs=2,
                rng=0,
                eval_set=(case.array(X, "float64"), Y),
            )
        )
    assert runs[0].loss == runs[1].loss and runs[0].eval_scores == runs[1].eval_scores


def _misuse_cases() -> list[Any]:
    """(name, arguments changed from a good call, error, message) for fit."""

    def short_targets(case: Any, X: np.ndarray, y: np.ndarray, step: Any) -> dict[str, Any]:
        return {"Y": case.array(y[:3], "float64")}

    def foreign_X(case: Any, X: np.ndarray, y: np.ndarray, step: Any) -> dict[str, Any]:
        # NumPy data for a model elsewhere; float32 data for a float64 NumPy model.
        return {"X": X if case.backend != "numpy" else X.astype(np.float32)}

    def host_targets(case: Any, X: np.ndarray, y: np.ndarray, step: Any) -> dict[str, Any]:
        return {"Y": y.tolist()}

    def no_epochs(case: Any, X: np.ndarray, y: np.ndarray, step: Any) -> dict[str, Any]:
        return {"epochs": 0}

    def step_and_alpha(case: Any, X: np.ndarray, y: np.ndarray, step: Any) -> dict[str, Any]:
        return {"step": step, "alpha": 0.1}

    return [
        pytest.param(short_targets, ValueError, r"targets with 50 rows like X, got shape \(3, 1\)"),
        pytest.param(foreign_X, TypeError, r"fit expected X (as a \w+ array|with dtype float64)"),
        pytest.param(host_targets, TypeError, r"fit expected the targets of X as a \w+ array"),
        pytest.param(no_epochs, ValueError, "epochs >= 1 and batch_size >= 1, got 0, 200"),
        pytest.param(step_and_alpha, TypeError, "got step= and alpha="),
    ]


@pytest.mark.parametrize(("change", "error", "message"), _misuse_cases())
def test_fit_misuse(case: Any, change: Any, error: type, message: str) -> None:
    X, y = _data()
    model, loss, opt = _setup(case, "float64")
    step = functools.partial(pm.train_step, model, loss, opt, check=False)
    args: dict[str, Any] = {"X": case.array(X, "float64"), "Y": case.array(y, "float64")}
    args["epochs"] = 1
    args.update(change(case, X, y, step))
    with pytest.raises(error, match=message):
        pm.fit(model, loss, opt, args.pop("X"), args.pop("Y"), **args)


# ---------------------------------------------------------------------------- metrics
def test_metrics_on_every_backend(case: Any, dtype: str) -> None:
    rng = np.random.default_rng(0)
    truth, pred = rng.normal(size=(40, 2)), rng.normal(size=(40, 2))
    r2 = metrics.r2_score(case.array(truth, dtype), case.array(pred, dtype))
    residual = ((truth - pred) ** 2).sum(axis=0)
    expected = np.mean(1 - residual / ((truth - truth.mean(axis=0)) ** 2).sum(axis=0))
    assert pm.namespace_of(r2) is case.xp and r2.shape == ()
    assert float(pm.to_numpy(r2)) == pytest.approx(
        expected, rel=1e-5 if dtype == "float32" else 1e-12
    )
    labels, guesses = rng.integers(0, 3, size=40), rng.integers(0, 3, size=40)
    acc = metrics.accuracy(case.array(labels), case.array(guesses))  # default float dtype
    assert float(pm.to_numpy(acc)) == pytest.approx(np.mean(labels == guesses), rel=1e-6)
    as_column = metrics.accuracy(case.array(labels.reshape(-1, 1)), case.array(guesses))
    assert float(pm.to_numpy(as_column)) == float(pm.to_numpy(acc))


def test_accuracy_of_string_labels_and_the_default_scores() -> None:
    names = np.array(["a", "b", "c", "a"])
    assert float(metrics.accuracy(names, np.array(["a", "b", "a", "a"]))) == 0.75
    assert metrics.for_loss(pm.MSELoss()) is not metrics.for_loss(pm.CrossEntropyLoss())
    z, onehot = np.array([[2.0, 0.0], [0.0, 1.0]]), np.array([[1.0, 0.0], [1.0, 0.0]])
    assert float(metrics.for_loss(pm.CrossEntropyLoss())(z, onehot)) == 0.5
    assert float(metrics.for_loss(pm.BCEWithLogitsLoss())(z[:, :1] - 1, onehot[:, :1])) == 0.5

    class Hinge(pm.Loss):
        pass

    with pytest.raises(TypeError, match="no default score for Hinge"):
        metrics.for_loss(Hinge())
