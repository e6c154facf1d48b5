"""The captured step (``pm.compile_step``) against the eager ``pm.train_step``, on every backend.

The eager step is the reference: after the same steps on two copies of a model, parameters,
gradients, optimizer state and losses agree to CAPTURED_TOL. CUDA-graph paths run only where a
CUDA device is present; elsewhere their tests skip and say so.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

import portable_mlp as pm
from portable_mlp._backend import namespace_of
from portable_mlp.compiled import StepPlan
from portable_mlp.losses import SampleWeightedLoss
from portable_mlp.testing import (
    Case,
    assert_close,
    cases,
    jax_compilations,
    selected_backends,
)

SELECTED = selected_backends()  # the backends this run covers (PORTABLE_MLP_BACKEND)

# Captured against eager, relative (stated once): the same operations, possibly fused or
# reordered by a compiler.
CAPTURED_TOL = {"float64": 1e-12, "float32": 1e-5}
N, SIZES = 12, [5, 7, 3]


@dataclass(frozen=True)
class Config:
    """One training setup: optimizer, loss and targets, activation, clipping, L2, schedule."""

    optimizer: Callable[[pm.Module], pm.optim.Optimizer]
    loss: Callable[[], pm.Loss]
    target: str  # "binary" floats (n, k), "labels" ints (n,), "probs" rows (n, k), "ints" (n, k)
    activation: str = "relu"
    alpha: float = 0.0
    schedule: Callable[[pm.optim.Optimizer], pm.optim.LRScheduler] | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)


CONFIGS = {
    "sgd-bce-relu": Config(lambda m: pm.SGD(m, lr=0.1), pm.BCEWithLogitsLoss, "binary"),
    "nesterov-wd-clip-ce-labels-tanh-l2-steplr": Config(
        lambda m: pm.SGD(
            m, lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01, max_grad_norm=0.5
        ),
        pm.CrossEntropyLoss,
        "labels",
        "tanh",
        alpha=0.1,
        schedule=lambda o: pm.StepLR(o, step_size=2, gamma=0.5),
    ),
    "adam-wd-ce-probs-gelu-l2-cosine": Config(
        lambda m: pm.Adam(m, lr=0.01, weight_decay=0.01),
        pm.CrossEntropyLoss,
        "probs",
        "gelu",
        alpha=0.05,
        schedule=lambda o: pm.CosineAnnealingLR(o, T_max=5),
    ),
    "adamw-clip-mse-sigmoid": Config(
        lambda m: pm.AdamW(m, lr=0.01, max_grad_norm=0.1), pm.MSELoss, "probs", "sigmoid"
    ),
    "momentum-bce-int-targets-leaky-l2": Config(
        lambda m: pm.SGD(m, lr=0.1, momentum=0.5),
        pm.BCEWithLogitsLoss,
        "ints",
        "leaky_relu",
        alpha=0.01,
    ),
    "adam-sum-mse-identity": Config(
        lambda m: pm.Adam(m, lr=0.05, betas=(0.8, 0.9)),
        lambda: pm.MSELoss(reduction="sum"),
        "probs",
        "identity",
    ),
}


def _batch(case: Case, dtype: str, target: str, seed: int, n: int = N) -> tuple[Any, Any]:
    rng = np.random.default_rng(seed)
    x = case.array(rng.normal(size=(n, SIZES[0])), dtype)
    k = SIZES[-1]
    if target == "labels":
        return x, case.array(rng.integers(0, k, size=n))
    if target == "ints":
        return x, case.array(rng.integers(0, 2, size=(n, k)))
    if target == "binary":
        return x, case.array(rng.integers(0, 2, size=(n, k)).astype(float), dtype)
    p = rng.random(size=(n, k))
    return x, case.array(p / p.sum(axis=1, keepdims=True), dtype)


def _pair(case: Case, dtype: str, config: Config) -> tuple[Any, ...]:
    """Two identical (model, loss, optimizer, schedule) setups."""
    out = []
    for _ in range(2):
        model = pm.MLP(SIZES, config.activation, rng=0, **case.model_kwargs(dtype))
        opt = config.optimizer(model)
        sched = config.schedule(opt) if config.schedule else None
        out.append((model, config.loss(), opt, sched))
    return tuple(out)


def _assert_same_state(
    eager: tuple[Any, ...], captured: tuple[Any, ...], case: Case, dtype: str, what: str
) -> None:
    (m1, _, o1, _), (m2, _, o2, _) = eager, captured
    tol = CAPTURED_TOL[dtype]
    for name, a, b in (
        ("parameter", m1.parameters(), m2.parameters()),
        ("gradient", m1.gradients(), m2.gradients()),
    ):
        assert a.keys() == b.keys()
        for k in a:
            expected = pm.to_numpy(a[k])
            assert_close(b[k], expected, case=case, dtype=dtype, tol=tol, what=f"{what} {name} {k}")
    assert o2.steps == o1.steps, f"{what}: step count {o2.steps} != {o1.steps}"
    assert o2.lr == o1.lr
    for key, state in o1.state.items():
        for name, a in state.items():
            assert_close(
                o2.state[key][name],
                pm.to_numpy(a),
                case=case,
                dtype=dtype,
                tol=tol,
                what=f"{what} state {key}.{name}",
            )


@pytest.mark.parametrize("name", CONFIGS)
def test_captured_step_equals_eager_step(case: Case, dtype: str, name: str) -> None:
    config = CONFIGS[name]
    eager, captured = _pair(case, dtype, config)
    m1, l1, o1, s1 = eager
    m2, l2, o2, s2 = captured
    step = pm.compile_step(m2, l2, o2, alpha=config.alpha)
    x, y = _batch(case, dtype, config.target, seed=0)
    for i in range(10):
        v1 = pm.train_step(m1, l1, o1, x, y, alpha=config.alpha)
        v2 = step(x, y)
        assert_close(
            v2, pm.to_numpy(v1), case=case, dtype=dtype, tol=CAPTURED_TOL[dtype], what=f"loss {i}"
        )
        if s1 is not None and i % 2:  # a new learning rate every other step
            s1.step()
            s2.step()
    _assert_same_state(eager, captured, case, dtype, name)


@pytest.mark.parametrize(
    "name", ["nesterov-wd-clip-ce-labels-tanh-l2-steplr", "momentum-bce-int-targets-leaky-l2"]
)
def test_fit_uses_the_captured_step_and_matches_the_eager_loop(
    case: Case, dtype: str, name: str
) -> None:
    """``fit``'s default (the captured step) trains to what ``compile=False`` trains to."""
    config = CONFIGS[name]
    (m1, l1, o1, s1), (m2, l2, o2, s2) = _pair(case, dtype, config)
    x, y = _batch(case, dtype, config.target, seed=5, n=37)  # a short last batch too
    runs = (((m1, l1, o1, s1), False), ((m2, l2, o2, s2), True))
    histories = [
        pm.fit(
            *parts[:3],
            x,
            y,
            epochs=3,
            batch_size=16,
            rng=0,
            schedule=parts[3],
            alpha=config.alpha,
            compile=captured,
        )
        for parts, captured in runs
    ]
    np.testing.assert_allclose(histories[1].loss, histories[0].loss, rtol=CAPTURED_TOL[dtype])
    _assert_same_state((m1, l1, o1, s1), (m2, l2, o2, s2), case, dtype, "fit")


def _alternate(case: Case, dtype: str, compile_step: Callable[..., Any]) -> None:
    """Mixing the captured and the eager step, two batch shapes, a new learning rate, rebound
    parameters and a restored optimizer snapshot: always what the eager step alone leaves."""
    config = Config(lambda m: pm.Adam(m, lr=0.02, max_grad_norm=1.0), pm.CrossEntropyLoss, "labels")
    eager, captured = _pair(case, dtype, config)
    m1, l1, o1, _ = eager
    m2, l2, o2, _ = captured
    step = compile_step(m2, l2, o2, alpha=0.01)
    batches = [_batch(case, dtype, "labels", seed=s, n=N - s % 2) for s in range(3)]
    snapshots = []
    for i in range(12):
        x, y = batches[i % 3]
        v1 = pm.train_step(m1, l1, o1, x, y, alpha=0.01)
        if i % 3 == 2:
            pm.train_step(m2, l2, o2, x, y, alpha=0.01)
        else:
            v2 = step(x, y)
            assert_close(v2, pm.to_numpy(v1), case=case, dtype=dtype, tol=CAPTURED_TOL[dtype])
        _assert_same_state(eager, captured, case, dtype, f"step {i}")
        if i == 4:  # a schedule's new rate, and parameters rebound to equal copies
            o1.lr = o2.lr = 0.005
            m2.set_parameters(
                {k: case.xp.asarray(v, copy=True) for k, v in m2.parameters().items()}
            )
        if i == 6:
            snapshots = [o1.state_dict(), o2.state_dict()]
        if i == 9:  # both back to step 7's optimizer state (rebinding every state array)
            o1.load_state_dict(snapshots[0])
            o2.load_state_dict(snapshots[1])


def test_step_and_train_step_can_alternate(case: Case, dtype: str) -> None:
    _alternate(case, dtype, pm.compile_step)


# Settings changed between steps: (step before which they change, optimizer's, loss's).
CHANGES: dict[str, tuple[Callable[[pm.Module], Any], list[tuple[int, dict[str, Any], str]]]] = {
    "sgd": (
        lambda m: pm.SGD(m, lr=0.1),
        [
            (3, {"momentum": 0.9, "max_grad_norm": 0.5}, "mean"),
            (6, {"nesterov": True, "weight_decay": 0.01}, "sum"),
            (8, {"momentum": 0.0, "nesterov": False, "max_grad_norm": None}, "mean"),
        ],
    ),
    "adam": (
        lambda m: pm.Adam(m, lr=0.01),
        [
            (3, {"betas": (0.5, 0.9), "eps": 1e-3}, "mean"),
            (6, {"weight_decay": 0.1, "max_grad_norm": 0.05}, "mean"),
        ],
    ),
}


def _changing(case: Case, dtype: str, name: str, compile_step: Callable[..., Any]) -> None:
    """Optimizer and loss settings changed between steps (momentum switched on, clipping,
    Nesterov, weight decay, betas, the loss's reduction): the captured step honours each
    change as the eager step does."""
    make, changes = CHANGES[name]
    eager, captured = _pair(case, dtype, Config(make, pm.CrossEntropyLoss, "labels"))
    step = compile_step(captured[0], captured[1], captured[2], alpha=0.01)
    x, y = _batch(case, dtype, "labels", seed=0)
    for i in range(10):
        for at, settings, reduction in changes:
            if i == at:
                for _, loss, opt, _ in (eager, captured):
                    for k, v in settings.items():
                        setattr(opt, k, v)
                    loss.reduction = reduction
        v1 = pm.train_step(eager[0], eager[1], eager[2], x, y, alpha=0.01)
        v2 = step(x, y)
        assert_close(v2, pm.to_numpy(v1), case=case, dtype=dtype, tol=CAPTURED_TOL[dtype])
        _assert_same_state(eager, captured, case, dtype, f"{name} step {i}")


@pytest.mark.parametrize("name", CHANGES)
def test_a_changed_setting_is_captured_anew(case: Case, dtype: str, name: str) -> None:
    _changing(case, dtype, name, pm.compile_step)


def _emulated_capture(plan: StepPlan, captured: list[Any] | None = None) -> Any:
    """A stand-in for a CUDA-graph capture on the CPU: recording runs nothing (its effects are
    undone), and a replay writes the step's outputs into the recorded ones. A replay under
    other optimizer or loss settings than recorded fails, as a real graph would run the old
    values; ``captured`` collects the settings of each capture."""

    def capture(body: Callable[[], Any], warmup: Callable[[], None]) -> Any:
        recorded = plan.settings()
        if captured is not None:
            captured.append(recorded)
        warmup()
        mutated = plan.params() + [a for s in plan.optimizer.state.values() for a in s.values()]
        saved = [plan.xp.asarray(a, copy=True) for a in mutated]
        value, grads = body()
        for a, b in zip(mutated, saved, strict=True):
            a[...] = b

        def replay() -> None:
            assert plan.settings() == recorded, "a graph replayed under changed settings"
            new_value, new_grads = body()
            value[...] = new_value
            for a, b in zip(grads, new_grads, strict=True):
                a[...] = b

        return replay, (value, grads)

    return capture


def test_graph_bookkeeping_with_an_emulated_capture(dtype: str) -> None:
    """The CUDA-graph step's static buffers, device scalars and rebinding, on torch's CPU."""
    if "torch" not in SELECTED:
        pytest.skip("torch is not among this run's backends")

    def graphed(model: Any, loss: Any, opt: Any, *, alpha: float) -> Any:
        plan = StepPlan(model, loss, opt, alpha)
        captures.append([])
        step = plan.graphed(_emulated_capture(plan, captures[-1]))
        steps.append(step)
        return step

    steps: list[Any] = []
    captures: list[list[Any]] = []
    _alternate(Case("torch", "cpu", "torch-cpu"), dtype, graphed)
    assert len(steps[0].graphs) == 2  # one per batch shape
    _changing(Case("torch", "cpu", "torch-cpu"), dtype, "sgd", graphed)
    assert len(captures[1]) == 1 + len(CHANGES["sgd"][1])  # captured anew at each change
    assert len(steps[1].graphs) == 1  # the graphs of old settings dropped


def _counted_traces(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, ...]]:
    """The batch shape of every trace of the captured step from now on (a list that grows)."""
    traces = []
    original = StepPlan.captured_step

    def counted(self: StepPlan, *args: Any, **kwargs: Any) -> Any:
        traces.append(tuple(args[-2].shape))  # runs only while jax.jit traces
        return original(self, *args, **kwargs)

    monkeypatch.setattr(StepPlan, "captured_step", counted)
    return traces


def test_jax_traces_once_per_batch_shape(monkeypatch: pytest.MonkeyPatch) -> None:
    if "jax" not in SELECTED:
        pytest.skip("JAX is not among this run's backends")
    traces = _counted_traces(monkeypatch)
    case = Case("jax", None, "jax")
    model = pm.MLP(SIZES, rng=0, **case.model_kwargs("float32"))
    loss, opt = pm.CrossEntropyLoss(), pm.Adam(model, lr=0.01)
    sched = pm.CosineAnnealingLR(opt, T_max=20)
    step = pm.compile_step(model, loss, opt)
    x, y = _batch(case, "float32", "labels", seed=0)
    for _ in range(20):  # new step count and learning rate every time
        step(x, y)
        sched.step()
    assert traces == [(N, SIZES[0])], traces
    short = _batch(case, "float32", "labels", seed=1, n=5)  # an epoch's last, short batch
    step(*short)
    step(x, y)
    step(*short)
    assert traces == [(N, SIZES[0]), (5, SIZES[0])], traces
    assert opt.steps == 23
    # A changed setting traces anew, once; the old value back takes the old trace.
    opt.betas = (0.5, 0.9)
    step(x, y)
    step(x, y)
    opt.betas = (0.9, 0.999)
    step(x, y)
    assert traces == [(N, SIZES[0]), (5, SIZES[0]), (N, SIZES[0])], traces


def test_jax_leaves_a_small_models_gradients_packed_until_read(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """JAX packs a small model's gradients into one output: they are unpacked, once, when first
    read, and equal the eager step's; a copy or pickle taken right after a step holds them; an
    eager step replaces them; a model above the bound gets them one by one."""
    if "jax" not in SELECTED:
        pytest.skip("JAX is not among this run's backends")
    import copy
    import pickle

    from portable_mlp._backend import _PACKED_GRADIENTS_MAX

    unpacks = []
    real = StepPlan.unpacked
    monkeypatch.setattr(StepPlan, "unpacked", lambda *a: unpacks.append(1) or real(*a))
    case = Case("jax", None, "jax")
    config = Config(lambda m: pm.Adam(m, lr=0.01), pm.CrossEntropyLoss, "labels")
    eager, captured = _pair(case, "float32", config)
    model, loss, opt, _ = captured
    step = pm.compile_step(model, loss, opt)
    leaves = [leaf for _, leaf, _ in model._slots]
    x, y = _batch(case, "float32", "labels", seed=0)
    for _ in range(2):
        step(x, y)
        pm.train_step(*eager[:3], x, y)
    assert all(leaf._pending is not None for leaf in leaves) and not unpacks
    _assert_same_state(eager, captured, case, "float32", "packed")  # reads every gradient
    assert unpacks == [1] and all(leaf._pending is None for leaf in leaves)
    for make_copy in (copy.deepcopy, lambda m: pickle.loads(pickle.dumps(m))):
        step(x, y)
        pm.train_step(*eager[:3], x, y)
        assert all(leaf._pending is not None for leaf in leaves)
        copied = make_copy(model)
        for k, g in eager[0].gradients().items():
            expected = pm.to_numpy(g)
            got = copied.gradients()[k]
            assert_close(got, expected, case=case, dtype="float32", tol=1e-5, what=f"copy {k}")
    step(x, y)
    pm.train_step(model, loss, opt, x, y)  # an eager step after a packed one: its own
    assert all(leaf._pending is None for leaf in leaves) and len(unpacks) == 3
    step(x, y)  # a layer's own backward after a packed step: the others' unpacking keeps it
    dy = case.array(np.ones((N, leaves[-1].p_out)), "float32")
    leaves[-1].forward(case.array(np.ones((N, leaves[-1].p_in)), "float32"))
    leaves[-1].backward(dy)
    own = pm.to_numpy(leaves[-1].grads["weight"])
    leaves[0].grads  # noqa: B018 -- unpacks the step's gradients into the other layers
    assert len(unpacks) == 4 and all(leaf._pending is None for leaf in leaves)
    np.testing.assert_array_equal(pm.to_numpy(leaves[-1].grads["weight"]), own)
    big = pm.MLP([200, 90, 1], rng=0, **case.model_kwargs("float32"))
    assert sum(p.size for p in big.parameters().values()) > _PACKED_GRADIENTS_MAX
    big_step = pm.compile_step(big, pm.BCEWithLogitsLoss(), pm.SGD(big, lr=0.1))
    rng = np.random.default_rng(0)
    xb, yb = (case.array(a, "float32") for a in (rng.normal(size=(8, 200)), np.ones((8, 1))))
    big_step(xb, yb)
    assert all(leaf._pending is None for _, leaf, _ in big._slots)


# ---------------------------------------------------------------------------- the captured epoch
def _captures_epochs(case: Case) -> bool:
    """Whether ``case``'s backend captures whole epochs in ``fit`` (the others step them)."""
    if case.skip:
        return False
    epoch = lambda *a, settings=None: None  # noqa: E731
    return case.placement().backend.capture_epoch(epoch, case.resolved_device) is not None


EPOCH_CASES = [c for c in cases(SELECTED) if _captures_epochs(c)]


@pytest.fixture(params=EPOCH_CASES, ids=[c.label for c in EPOCH_CASES])
def epoch_case(request: pytest.FixtureRequest) -> Case:
    """Each case of this run whose backend captures whole epochs (JAX)."""
    c: Case = request.param
    return c


def _fit_both(
    case: Case,
    dtype: str,
    config: Config,
    sample_weight: bool = False,
    callbacks_of: Callable[[Any], list[Any]] = lambda opt: [],
    **kwargs: Any,
) -> tuple[tuple[Any, ...], tuple[Any, ...], list[pm.History]]:
    """The same fit through the per-step captured step (``step=``) and through the captured
    epoch (``compile=True``); the two setups and their histories. ``callbacks_of(optimizer)``:
    each fit's callbacks."""
    per_step, per_epoch = _pair(case, dtype, config)
    x, y = _batch(case, dtype, config.target, seed=5, n=37)  # 2 full batches and a short one
    xv, yv = _batch(case, dtype, config.target, seed=6, n=11)
    xe, ye = _batch(case, dtype, config.target, seed=8, n=9)
    if sample_weight:  # the rows' weights as one more target column
        x, y = (case.array(pm.to_numpy(a), dtype) for a in (x, y))
        weights = np.random.default_rng(7).uniform(0.1, 2.0, size=(37, 1))
        y = case.array(np.concatenate([pm.to_numpy(y), weights], axis=1), dtype)
        yv = case.array(np.concatenate([pm.to_numpy(yv), np.ones((11, 1))], axis=1), dtype)
        ye = case.array(np.concatenate([pm.to_numpy(ye), np.full((9, 1), 0.5)], axis=1), dtype)
    histories = []
    for (model, loss, opt, schedule), captured in ((per_step, False), (per_epoch, True)):
        if sample_weight:
            loss = SampleWeightedLoss(loss)
        step = None if captured else pm.compile_step(model, loss, opt, alpha=config.alpha)
        histories.append(
            pm.fit(
                model,
                loss,
                opt,
                x,
                y,
                epochs=3,
                batch_size=16,
                schedule=schedule,
                validation=(xv, yv),
                eval_set=(xe, ye),
                alpha=config.alpha if captured else 0.0,
                step=step,
                callbacks=callbacks_of(opt),
                **kwargs,
            )
        )
    return per_step, per_epoch, histories


@pytest.mark.parametrize("name", CONFIGS)
def test_the_captured_epoch_equals_the_captured_step(
    epoch_case: Case, dtype: str, name: str
) -> None:
    """Every optimizer, loss, activation, clipping, L2 and schedule: an epoch captured whole
    leaves the weights, gradients, optimizer state and curves that its steps one by one leave."""
    case = epoch_case
    config = CONFIGS[name]
    per_step, per_epoch, histories = _fit_both(case, dtype, config, rng=0)
    tol = CAPTURED_TOL[dtype]
    for curve in ("loss", "validation_scores", "eval_loss", "eval_scores"):
        expected = getattr(histories[0], curve)
        np.testing.assert_allclose(getattr(histories[1], curve), expected, rtol=tol, err_msg=curve)
    _assert_same_state(per_step, per_epoch, case, dtype, name)


@pytest.mark.parametrize("shuffle", [True, False])
def test_the_captured_epoch_with_sample_weights(
    epoch_case: Case, dtype: str, shuffle: bool
) -> None:
    case = epoch_case
    config = Config(lambda m: pm.Adam(m, lr=0.02), pm.MSELoss, "probs", alpha=0.1)
    per_step, per_epoch, histories = _fit_both(
        case, dtype, config, sample_weight=True, rng=3, shuffle=shuffle
    )
    np.testing.assert_allclose(histories[1].loss, histories[0].loss, rtol=CAPTURED_TOL[dtype])
    np.testing.assert_allclose(
        histories[1].eval_scores, histories[0].eval_scores, rtol=CAPTURED_TOL[dtype]
    )
    _assert_same_state(per_step, per_epoch, case, dtype, "sample weights")


def test_the_captured_epoch_honours_settings_changed_by_a_callback(
    epoch_case: Case, dtype: str
) -> None:
    """A callback switching momentum and clipping on after epoch 1: the captured epoch compiles
    anew and trains as the steps one by one do."""

    class Tune:
        def __init__(self, opt: Any) -> None:
            self.opt = opt

        def on_epoch_end(self, epoch: int, logs: Any) -> None:
            if epoch == 1:
                self.opt.momentum, self.opt.max_grad_norm = 0.9, 0.5

    config = Config(lambda m: pm.SGD(m, lr=0.05), pm.CrossEntropyLoss, "labels", alpha=0.01)
    per_step, per_epoch, histories = _fit_both(
        epoch_case,
        dtype,
        config,
        rng=0,
        callbacks_of=lambda opt: [Tune(opt)],
    )
    np.testing.assert_allclose(histories[1].loss, histories[0].loss, rtol=CAPTURED_TOL[dtype])
    assert per_epoch[2].momentum == 0.9 and per_epoch[2].state  # the momentum buffers are made
    _assert_same_state(per_step, per_epoch, epoch_case, dtype, "tuned")


def test_a_diverging_captured_epoch_names_the_step_of_the_per_step_loop(epoch_case: Case) -> None:
    """Divergence inside a captured epoch: the same error, step and kept weights as stepping."""
    case = epoch_case
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(60, SIZES[0])), rng.normal(size=(60, SIZES[-1])) * 1e3
    results = []
    for captured in (False, True):
        model = pm.MLP(SIZES, rng=0, **case.model_kwargs("float32"))
        loss, opt = pm.MSELoss(), pm.SGD(model, lr=10.0)
        step = None if captured else pm.compile_step(model, loss, opt)
        x, t = case.array(X, "float32"), case.array(y, "float32")
        with pytest.raises(pm.TrainingError) as info:
            pm.fit(model, loss, opt, x, t, epochs=3, batch_size=8, rng=0, step=step)
        results.append((str(info.value), model.parameters()))
    assert "became non-finite at epoch 1, " in results[0][0]
    assert results[1][0] == results[0][0]
    for k, v in results[0][1].items():
        expected = pm.to_numpy(v)
        assert np.isfinite(expected).all()
        assert_close(results[1][1][k], expected, case=case, dtype="float32", tol=1e-5, what=k)


def test_jax_compiles_an_epoch_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """One trace of each batch shape and one compilation of the epoch, in the first epoch;
    nothing at all compiles in the epochs after it (schedule, validation and eval set on)."""
    if "jax" not in SELECTED:
        pytest.skip("JAX is not among this run's backends")

    traces = _counted_traces(monkeypatch)

    class AtEpochEnd:
        def __init__(self, compiled: list[str]) -> None:
            self.compiled, self.counts = compiled, list[int]()

        def on_epoch_end(self, epoch: int, logs: Any) -> None:
            self.counts.append(len(self.compiled))

    case = Case("jax", None, "jax")
    config = CONFIGS["adam-wd-ce-probs-gelu-l2-cosine"]
    (model, loss, opt, schedule), _ = _pair(case, "float32", config)
    x, y = _batch(case, "float32", config.target, seed=5, n=37)
    xv, yv = _batch(case, "float32", config.target, seed=6, n=11)
    with jax_compilations() as compiled:
        at_end = AtEpochEnd(compiled)
        pm.fit(
            model,
            loss,
            opt,
            x,
            y,
            epochs=4,
            batch_size=16,
            rng=0,
            schedule=schedule,
            alpha=config.alpha,
            validation=(xv, yv),
            eval_set=(xv, yv),
            callbacks=[at_end],
        )
    assert traces == [(16, SIZES[0]), (5, SIZES[0])], traces
    assert compiled.count("jit(captured_epoch)") == 1, compiled
    assert "jit(captured_step)" not in compiled, compiled
    assert at_end.counts[1:] == [at_end.counts[0]] * 3, (at_end.counts, compiled)
    assert opt.steps == 4 * 3


def _misuse(case: Case) -> list[tuple[str, Any, Any]]:
    """(what, x, y) batches the eager step refuses (the model is float64)."""
    x, y = _batch(case, "float64", "labels", seed=0)
    bad = [
        ("features", case.array(np.ones((N, SIZES[0] + 1)), "float64"), y),
        ("1-d x", case.array(np.ones(SIZES[0]), "float64"), y),
        ("dtype", case.array(np.ones((N, SIZES[0])), "float32"), y),
        ("labels count", x, case.array(np.zeros(N + 1, dtype=np.int64))),
        ("labels dtype", x, case.array(np.zeros(N), "float64")),
        ("list y", x, [0] * N),
    ]
    if case.backend != "numpy":
        bad.append(("numpy x", np.ones((N, SIZES[0])), y))
        bad.append(("numpy y", x, np.zeros(N, dtype=np.int64)))
    if case.backend == "array_api_strict":  # strict has a second device
        other = Case(case.backend, "device1" if case.device is None else None, "other")
        bad.append(("x device", other.array(np.ones((N, SIZES[0])), "float64"), y))
        bad.append(("y device", x, other.array(np.zeros(N, dtype=np.int64))))
    return bad


def test_misuse_gives_the_eager_error(case: Case) -> None:
    model = pm.MLP(SIZES, rng=0, **case.model_kwargs("float64"))
    opt = pm.SGD(model, lr=0.1)
    step = pm.compile_step(model, pm.CrossEntropyLoss(), opt)
    step(*_batch(case, "float64", "labels", seed=0))  # the quick check now knows a good batch
    before = {k: pm.to_numpy(v) for k, v in model.parameters().items()}
    for what, x, y in _misuse(case):
        with pytest.raises((TypeError, ValueError)) as eager:
            pm.train_step(model, pm.CrossEntropyLoss(), opt, x, y)
        with pytest.raises(type(eager.value)) as captured:
            step(x, y)
        assert str(captured.value) == str(eager.value), what
    for k, v in model.parameters().items():  # nothing was updated
        np.testing.assert_array_equal(pm.to_numpy(v), before[k])
    assert opt.steps == 1


def test_compile_step_refuses_mismatched_parts() -> None:
    model, other = pm.MLP(SIZES, rng=0), pm.MLP(SIZES, rng=1)
    with pytest.raises(ValueError, match="the optimizer updates"):
        pm.compile_step(model, pm.MSELoss(), pm.SGD(other))
    with pytest.raises(TypeError, match="expected loss as a Loss, got str"):
        pm.compile_step(model, "mse", pm.SGD(model))  # type: ignore[arg-type]


def test_a_single_layer_compiles() -> None:
    layer, twin = pm.Linear(3, 2, rng=0, dtype="float64"), pm.Linear(3, 2, rng=0, dtype="float64")
    o1, o2 = pm.SGD(layer, lr=0.1, momentum=0.9), pm.SGD(twin, lr=0.1, momentum=0.9)
    step = pm.compile_step(twin, pm.MSELoss(), o2, alpha=0.5)
    x, y = np.ones((4, 3)), np.zeros((4, 2))
    for _ in range(3):
        pm.train_step(layer, pm.MSELoss(), o1, x, y, alpha=0.5)
        step(x, y)
    for k in ("weight", "bias"):
        np.testing.assert_array_equal(twin.parameters()[k], layer.parameters()[k])
        np.testing.assert_array_equal(twin.gradients()[k], layer.gradients()[k])


def test_torch_meta_device_step_reads_nothing_back() -> None:
    """Meta tensors hold no values: any read-back in the step would raise."""
    import torch

    model = pm.MLP(SIZES, rng=0, backend="torch", device="meta", dtype="float32")
    opt = pm.Adam(model, lr=0.01, max_grad_norm=1.0)
    step = pm.compile_step(model, pm.CrossEntropyLoss(), opt, alpha=0.1)
    x = torch.empty((N, SIZES[0]), device="meta")
    y = torch.empty((N,), dtype=torch.int64, device="meta")
    value = step(x, y)
    assert value.device.type == "meta"
    assert value.shape == ()
    assert opt.steps == 1


def test_torch_cpu_runs_small_steps_on_one_thread_and_restores_the_count() -> None:
    """A step whose matrix products are small runs on one intra-op thread (MKL's threading costs
    small products more than it saves); the caller's thread count is back afterwards, also after
    a refused batch, and a large step keeps it."""
    torch = pytest.importorskip("torch")
    if "torch" not in SELECTED:
        pytest.skip("torch is not among this run's backends")
    seen: list[int] = []

    class Recording(pm.MSELoss):
        def _forward(self, z: Any, target: Any, xp: Any) -> Any:
            seen.append(torch.get_num_threads())
            return super()._forward(z, target, xp)

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        for sizes, n, threads in (([1024, 1024, 3], 2, 2), ([5, 7, 3], 12, 1)):
            model = pm.MLP(sizes, rng=0, backend="torch", dtype="float32")
            step = pm.compile_step(model, Recording(), pm.SGD(model, lr=0.1))
            x, y = torch.ones((n, sizes[0])), torch.zeros((n, sizes[-1]))
            step(x, y)
            assert seen.pop() == threads, sizes
            assert torch.get_num_threads() == 2
        with pytest.raises(ValueError, match="expected y with the shape of z"):  # in the step
            step(x, torch.zeros((n, sizes[-1] + 1)))
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


# ---------------------------------------------------------------------------- CUDA graphs
def _cuda_cases() -> list[Any]:
    return [
        pytest.param("torch", id="torch-cuda"),
        pytest.param("cupy", id="cupy-cuda"),
    ]


def _require_cuda(backend: str) -> Case:
    if backend == "torch":
        import torch

        if not torch.cuda.is_available():
            pytest.skip("no CUDA device here: the torch CUDA-graph step is untested on this run")
        return Case("torch", "cuda", "torch-cuda")
    cupy = pytest.importorskip(
        "cupy", reason="CuPy is not installed: its CUDA-graph step is untested"
    )
    try:
        cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # CUDARuntimeError and friends where there is no driver
        pytest.skip(f"no CUDA device for CuPy here ({exc}): its CUDA-graph step is untested")
    return Case("cupy", None, "cupy-cuda")


@pytest.mark.parametrize("backend", _cuda_cases())
def test_cuda_graph_replays_and_keeps_each_loss(backend: str) -> None:
    """One graph per batch shape; losses returned earlier are not overwritten by later replays;
    a schedule's new learning rate reaches the replay."""
    case = _require_cuda(backend)
    config = Config(
        lambda m: pm.Adam(m, lr=0.01, max_grad_norm=1.0),
        pm.BCEWithLogitsLoss,
        "binary",
        schedule=lambda o: pm.CosineAnnealingLR(o, T_max=4),
    )
    eager, captured = _pair(case, "float32", config)
    m1, l1, o1, s1 = eager
    m2, l2, o2, s2 = captured
    step = pm.compile_step(m2, l2, o2, alpha=0.01)
    long, short = _batch(case, "float32", "binary", 0), _batch(case, "float32", "binary", 1, n=5)
    eager_losses, captured_losses = [], []
    for i in range(8):
        x, y = long if i % 3 else short
        eager_losses.append(pm.train_step(m1, l1, o1, x, y, alpha=0.01))
        captured_losses.append(step(x, y))
        s1.step()
        s2.step()
    _assert_same_state(eager, captured, case, "float32", "after 8 steps")
    for i, (a, b) in enumerate(zip(captured_losses, eager_losses, strict=True)):
        assert_close(a, pm.to_numpy(b), case=case, dtype="float32", tol=1e-5, what=f"loss {i}")
    graphs = getattr(step, "graphs", {})
    assert len(graphs) == 2, f"expected one graph per batch shape, got {len(graphs)}"


def test_jax_fit_compiles_only_its_epoch(monkeypatch: pytest.MonkeyPatch) -> None:
    """The set-up around the captured epoch (the optimizer's zeros, the snapshot copies, the
    check of the outputs' shape, moving the learning rate) compiles nothing: on shapes no other
    test uses, a whole fit compiles its epoch and nothing else."""
    if "jax" not in SELECTED:
        pytest.skip("JAX is not among this run's backends")
    case = Case("jax", None, "jax")
    rng = np.random.default_rng(0)
    x, y = (case.array(rng.normal(size=(29, k)), "float32") for k in (23, 3))
    xv, yv = (case.array(rng.normal(size=(7, k)), "float32") for k in (23, 3))
    namespace_of(x)  # array-api-compat's first look at a JAX array compiles, once a process
    with jax_compilations() as compiled:
        model = pm.MLP([23, 7, 3], rng=0, **case.model_kwargs("float32"))
        opt = pm.Adam(model, lr=0.01)
        pm.fit(
            model,
            pm.MSELoss(),
            opt,
            x,
            y,
            epochs=3,
            batch_size=8,
            rng=0,
            validation=(xv, yv),
            eval_set=(xv, yv),
        )
    assert compiled == ["jit(captured_epoch)"], compiled
