"""Data-parallel training: torch.distributed across processes, a JAX device mesh, Dask recipes.

The multi-process tests launch two ranks of ``distributed_worker.py`` (gloo over loopback, a file
rendezvous in a temporary directory so no port can clash, one thread each) once per session, and
hold them to one process training on the whole global batch. The JAX mesh test runs
``jax_mesh_worker.py`` in a process of its own, because the flag that gives the host two devices
must be set before JAX is imported.
"""

from __future__ import annotations

import functools
import os
import pickle
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import distributed_worker as worker
import portable_mlp as pm
from portable_mlp import distributed as dist
from portable_mlp.testing import selected_backends

SELECTED = selected_backends()  # the backends this run covers (PORTABLE_MLP_BACKEND)

HERE = Path(__file__).resolve().parent
# Float64 data-parallel training against one process: the sums are only regrouped.
RTOL_F64 = 1e-12

SCENARIOS = [s for s in worker.SCENARIOS if s[1] in SELECTED]
FIT_SCENARIOS = worker.FIT_SCENARIOS if "numpy" in SELECTED else []
needs_numpy = pytest.mark.skipif("numpy" not in SELECTED, reason="numpy is not selected")


def _env(**extra: str) -> dict[str, str]:
    """The environment of a child process: this package's source first, loopback, one thread."""
    env = dict(os.environ)
    paths = [str(Path(pm.__file__).resolve().parents[1]), str(HERE)]
    env["PYTHONPATH"] = os.pathsep.join([*paths, env.get("PYTHONPATH", "")])
    env.update(GLOO_SOCKET_IFNAME="lo", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "XLA_FLAGS"):
        env.pop(name, None)
    env.update(extra)
    return env


def _wait(procs: list[subprocess.Popen[str]], what: str) -> None:
    failures = []
    for p in procs:
        try:
            out, err = p.communicate(timeout=180)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            pytest.fail(f"{what} did not finish in 180 s")
        if p.returncode:
            failures.append(f"exit {p.returncode}\n{out}\n{err[-3000:]}")
    assert not failures, f"{what} failed:\n" + "\n".join(failures)


def _load(out: Path, world: int) -> list[dict[str, np.ndarray[Any, Any]]]:
    results = []
    for r in range(world):
        with np.load(out / f"rank{r}.npz") as data:
            results.append(dict(data))
    return results


@pytest.fixture(scope="module")
def gloo_run(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, np.ndarray[Any, Any]]]:
    """Two ranks, every selected scenario, joined through a file rendezvous."""
    import torch  # noqa: F401 (the reference; always installed with the tests)

    if not SCENARIOS:
        pytest.skip("no backend of the multi-process scenarios is selected")
    tmp = tmp_path_factory.mktemp("gloo")
    names = ",".join([*(s[0] for s in SCENARIOS), *FIT_SCENARIOS])
    procs = [
        subprocess.Popen(
            [sys.executable, str(HERE / "distributed_worker.py"), str(tmp), str(tmp / "rdv")],
            env=_env(RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE="2", SCENARIOS=names),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for r in range(2)
    ]
    _wait(procs, "the 2-rank gloo run")
    return _load(tmp, 2)


@functools.cache
def reference(name: str) -> dict[str, Any]:
    """One process, the whole global batch of every step, the L2 term with the global batch."""
    _, backend, opt_name, rows_by = next(s for s in worker.SCENARIOS if s[0] == name)
    model, optimizer = worker.make(backend, opt_name, seed=100)  # rank 0's seed
    sampler = dist.DistributedSampler(
        worker.N, worker.BATCH, seed=worker.SEED, rank=0, world_size=1
    )
    alpha = worker.ALPHA if rows_by == "sampler" else 0.0
    curve = worker.train(model, optimizer, sampler, "sampler", alpha)
    return {"params": worker.params(model), "curve": np.asarray(curve)}


def _assert_matches_reference(result: dict[str, Any], name: str) -> None:
    ref = reference(name)
    for key, expected in ref["params"].items():
        got = result[f"{name}/end/{key}"]
        scale = np.max(np.abs(expected))
        np.testing.assert_allclose(
            got, expected, rtol=RTOL_F64, atol=RTOL_F64 * scale, err_msg=f"{name} {key}"
        )
    np.testing.assert_allclose(result[f"{name}/curve"], ref["curve"], rtol=RTOL_F64)


# --------------------------------------------------------------------------------------------
# Two processes over gloo
# --------------------------------------------------------------------------------------------
def test_ranks_end_bitwise_equal(gloo_run: list[dict[str, Any]]) -> None:
    first, second = gloo_run
    assert first.keys() == second.keys()
    for key in first:
        assert np.array_equal(first[key], second[key]), f"ranks differ in {key}"


@pytest.mark.parametrize("scenario", [s[0] for s in SCENARIOS])
def test_matches_one_process_on_the_global_batch(
    gloo_run: list[dict[str, Any]], scenario: str
) -> None:
    """255 rows in batches of 64 over 2 ranks (shards of 32/32, and 32/31 at the end), the L2
    term included: the same model as one process, to float64 rounding."""
    _assert_matches_reference(gloo_run[0], scenario)


def test_broadcast_parameters_gives_rank_0s_weights(gloo_run: list[dict[str, Any]]) -> None:
    name, backend, opt_name, _ = SCENARIOS[0]
    rank0, _ = worker.make(backend, opt_name, seed=100)
    rank1, _ = worker.make(backend, opt_name, seed=101)
    for key, expected in worker.params(rank0).items():
        if key.endswith("weight"):  # biases start at zero everywhere
            assert not np.array_equal(worker.params(rank1)[key], expected)  # they started apart
        for r, result in enumerate(gloo_run):
            assert np.array_equal(result[f"{name}/start/{key}"], expected), f"rank {r} {key}"


def test_broadcast_parameters_refuses_models_that_differ(gloo_run: list[dict[str, Any]]) -> None:
    for result in gloo_run:
        assert str(result["mismatch"]) == "broadcast_parameters(): the ranks' models differ"


def test_fit_refuses_ranks_that_would_not_line_up(gloo_run: list[dict[str, Any]]) -> None:
    for result in gloo_run:
        assert str(result["fit-mismatch"]) == (
            "fit(distributed=True): the ranks differ in their data, batch size, epochs or rng"
        )


def test_all_reduce_mean_weights_each_rank_and_sum_adds(gloo_run: list[dict[str, Any]]) -> None:
    for result in gloo_run:
        assert result["mean"] == pytest.approx(
            (1 * 1 + 2 * 2) / 3, rel=1e-15
        )  # value r+1, weight r+1
        np.testing.assert_allclose(result["means"], [0.5, 5.0], rtol=1e-15)
        assert list(result["sums"]) == [1.0, 2.0]


@functools.cache
def fit_reference(name: str) -> dict[str, Any]:
    """A fit scenario in this process, outside any process group: one process."""
    assert not dist.is_initialized()
    return worker.fit_scenario(name)


# fit-unseeded draws rank 0's fresh seed: held only to the ranks being bitwise equal.
@pytest.mark.parametrize("scenario", [s for s in FIT_SCENARIOS if s != "fit-unseeded"])
def test_fit_and_estimator_match_one_process(gloo_run: list[dict[str, Any]], scenario: str) -> None:
    """pm.fit and MLPClassifier.fit under a process group: 255 rows in global batches of 64
    (shards of 32/32, then 32/31), the L2 term, the stopping rules and divergence, as one
    process has them; the ranks stop, and fail, at the same epoch and step."""
    ref = fit_reference(scenario)
    for r, result in enumerate(gloo_run):
        got = {k.partition("/")[2]: v for k, v in result.items() if k.startswith(f"{scenario}/")}
        assert got.keys() == ref.keys(), f"rank {r}"
        for key, expected in ref.items():
            if expected.dtype.kind in "iU":  # epochs run, the divergence message
                assert np.array_equal(got[key], expected), f"rank {r} {scenario} {key}"
                continue
            scale = np.max(np.abs(expected)) if key.startswith("end/") else 0.0
            np.testing.assert_allclose(
                got[key], expected, rtol=1e-10, atol=1e-10 * scale, err_msg=f"rank {r} {key}"
            )
    if scenario in ("fit-stopping", "fit-validation"):
        assert 3 <= int(ref["n_iter"]) < 200  # it did stop early, after some epochs
    if scenario == "fit-diverging":
        assert "non-finite at epoch 1, step 2 of 4" in str(ref["error"])


def test_torchrun_launch(tmp_path: Path) -> None:
    """The real launcher: init() reads torchrun's environment (env:// rendezvous)."""
    import torch  # noqa: F401 (the reference; always installed with the tests)

    if "numpy" not in SELECTED:
        pytest.skip("the torchrun run uses the numpy backend")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    proc = subprocess.Popen(
        [*cmd, str(HERE / "distributed_worker.py"), str(tmp_path)],
        env=_env(SCENARIOS="numpy-adam"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    _wait([proc], "torchrun --standalone --nproc-per-node 2")
    first, second = _load(tmp_path, 2)
    assert int(first["world"]) == 2
    for key in first:
        assert np.array_equal(first[key], second[key]), f"ranks differ in {key}"
    _assert_matches_reference(first, "numpy-adam")


@needs_numpy
def test_cli_train_under_torchrun(tmp_path: Path) -> None:
    """`torchrun ... -m portable_mlp train` trains data-parallel: the model one process saves,
    within float64 rounding, and one report (rank 0's)."""
    common = ["train", "--dataset", "digits", "--dtype", "float64", "--epochs", "3", "--quiet"]
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node"]
    runs = {
        "torchrun": [*launch, "2", "-m", "portable_mlp", *common],
        "one": [sys.executable, "-m", "portable_mlp", *common],
    }
    procs = {
        name: subprocess.Popen(
            [*cmd, "--save", str(tmp_path / f"{name}.safetensors")],
            env=_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name, cmd in runs.items()
    }
    outputs = {name: p.communicate(timeout=180)[0] for name, p in procs.items()}
    for name, p in procs.items():
        assert p.returncode == 0, f"{name}: exit {p.returncode}\n{outputs[name]}"
    for name, out in outputs.items():
        assert out.count("digits: MLP 64-64-10") == 1, f"{name}:\n{out}"
        assert out.count("saved ") == 1, f"{name}:\n{out}"
    many, one = (pm.load(tmp_path / f"{n}.safetensors") for n in ("torchrun", "one"))
    assert many.n_iter_ == one.n_iter_ == 3
    for key, expected in worker.params(one.model_).items():
        got = worker.params(many.model_)[key]
        scale = np.max(np.abs(expected))
        np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-10 * scale, err_msg=key)


@pytest.mark.parametrize(("backend", "world"), [("gloo", 2), ("nccl", 1)])
def test_cuda_tensors(tmp_path: Path, backend: str, world: int) -> None:
    """On a GPU: gloo carries CUDA tensors between 2 ranks; NCCL runs with world size 1."""
    import torch

    if not torch.cuda.is_available() or "torch" not in SELECTED:
        pytest.skip("needs the torch backend and a CUDA device")
    env = {"TORCH_DEVICE": "cuda", "DIST_BACKEND": backend, "SCENARIOS": "torch-sgd,torch-adam"}
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                str(HERE / "distributed_worker.py"),
                str(tmp_path),
                str(tmp_path / "r"),
            ],
            env=_env(RANK=str(r), LOCAL_RANK="0", WORLD_SIZE=str(world), **env),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for r in range(world)
    ]
    _wait(procs, f"the {world}-rank {backend} run over CUDA tensors")
    results = _load(tmp_path, world)
    for key in results[0]:
        assert all(np.array_equal(results[0][key], r[key]) for r in results), key
    for name in ("torch-sgd", "torch-adam"):  # against one process on the CPU
        _assert_matches_reference(results[0], name)


# --------------------------------------------------------------------------------------------
# One process: everything passes through
# --------------------------------------------------------------------------------------------
def test_one_process_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert dist.init() is False
    assert not dist.is_initialized()
    assert (dist.rank(), dist.world_size()) == (0, 1)
    assert dist.all_reduce_mean(2.5, weight=3) == 2.5
    assert dist.all_reduce_mean([1.0, 2.0]) == [1.0, 2.0]
    assert dist.all_reduce_sum([1.0, 2.0]) == [1.0, 2.0]
    assert dist.all_ranks_equal([1.0, 2.0])
    assert dist.shared_seed(7) == 7
    assert dist.shared_seed() != dist.shared_seed()  # fresh draws
    dist.barrier()
    dist.shutdown()

    X, y = worker.data()
    models = []
    for wrap in (False, True):
        model, optimizer = worker.make("numpy", "adam", seed=0)
        dist.broadcast_parameters(model)
        opt = dist.DistributedOptimizer(optimizer) if wrap else optimizer
        for _ in range(2):
            pm.train_step(model, pm.CrossEntropyLoss(), opt, X, y, alpha=0.1)
        models.append(worker.params(model))
    for key in models[0]:
        assert np.array_equal(models[0][key], models[1][key])


@needs_numpy
def test_fit_distributed_alone_is_the_plain_fit() -> None:
    """fit(distributed=True) outside a process group: the eager step with every row, the same
    epochs, curves and weights as the plain (captured) fit."""
    X, y = worker.data()
    runs = []
    for distributed in (None, True):
        model, optimizer = worker.make("numpy", "adam", seed=0)
        Xd, yd = pm.asarray(X, like=model), pm.asarray(y, like=model)
        history = pm.fit(
            model,
            pm.CrossEntropyLoss(),
            optimizer,
            Xd[:200],
            yd[:200],
            epochs=3,
            batch_size=worker.BATCH,
            rng=1,
            alpha=worker.ALPHA,
            validation=(Xd[200:], yd[200:]),
            distributed=distributed,
        )
        runs.append((history, worker.params(model)))
    (plain, plain_params), (alone, alone_params) = runs
    assert alone.loss == plain.loss and alone.validation_scores == plain.validation_scores
    for key, value in plain_params.items():
        assert np.array_equal(alone_params[key], value), key


@needs_numpy
def test_fit_distributed_refuses_what_it_cannot_average() -> None:
    X, y = worker.data()
    model, optimizer = worker.make("numpy", "sgd", seed=0)
    step = pm.compile_step(model, pm.CrossEntropyLoss(), optimizer)
    with pytest.raises(TypeError, match="makes its own step"):
        pm.fit(model, pm.CrossEntropyLoss(), optimizer, X, y, epochs=1, step=step, distributed=True)
    summed = pm.CrossEntropyLoss(reduction="sum")
    with pytest.raises(ValueError, match="reduction='mean', got 'sum'"):
        pm.fit(model, summed, optimizer, X, y, epochs=1, distributed=True)


def test_init_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    monkeypatch.delenv("MASTER_PORT", raising=False)
    with pytest.raises(RuntimeError, match="no MASTER_ADDR or MASTER_PORT"):
        dist.init()
    monkeypatch.setenv("RANK", "2")
    with pytest.raises(ValueError, match="rank 2 of 2"):
        dist.init()
    monkeypatch.setenv("RANK", "one")
    with pytest.raises(RuntimeError, match="integer RANK, got 'one'"):
        dist.init()


def test_distributed_optimizer_reads_and_writes_through() -> None:
    model, optimizer = worker.make("numpy", "sgd", seed=0)
    wrapped = dist.DistributedOptimizer(optimizer)
    schedule = pm.StepLR(wrapped, step_size=1, gamma=0.5)
    schedule.step()
    assert optimizer.lr == wrapped.lr == 0.05
    assert wrapped.model is model and wrapped.placement is optimizer.placement
    X, y = worker.data()
    pm.train_step(model, pm.CrossEntropyLoss(), wrapped, X, y)
    assert wrapped.steps == optimizer.steps == 1
    assert wrapped.state is optimizer.state and "0.weight" in wrapped.state  # momentum buffers
    snapshot = wrapped.state_dict()
    wrapped.steps = 5
    wrapped.load_state_dict(snapshot)
    assert optimizer.steps == 1
    with pytest.raises(TypeError, match="already wrapped"):
        dist.DistributedOptimizer(wrapped)  # type: ignore[arg-type]


def test_distributed_optimizer_needs_the_sampler_to_have_drawn() -> None:
    """A bound sampler that has not yielded a batch cannot say this rank's rows."""
    model, optimizer = worker.make("numpy", "sgd", seed=0)
    sampler = dist.DistributedSampler(10, 4, rank=0, world_size=1)
    wrapped = dist.DistributedOptimizer(optimizer, sampler=sampler)
    grads = {k: np.zeros_like(v) for k, v in model.parameters().items()}
    with pytest.raises(RuntimeError, match="before its sampler yielded a batch"):
        wrapped.all_reduce_gradients(grads)


# --------------------------------------------------------------------------------------------
# The sampler
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("n", "batch", "world", "drop_last"),
    [(255, 64, 2, False), (255, 64, 3, True), (11, 4, 3, False)],
)
def test_sampler_splits_every_global_batch(n: int, batch: int, world: int, drop_last: bool) -> None:
    samplers = [
        dist.DistributedSampler(n, batch, seed=5, drop_last=drop_last, rank=r, world_size=world)
        for r in range(world)
    ]
    for s in samplers:
        s.set_epoch(1)
    parts = [list(s) for s in samplers]
    batches = samplers[0].global_batches()
    assert all(len(p) == len(batches) == len(samplers[0]) for p in parts)
    for step, batch_rows in enumerate(batches):
        shards = [p[step] for p in parts]
        assert np.array_equal(np.concatenate(shards), batch_rows)  # disjoint, in order, complete
        sizes = [len(s) for s in shards]
        assert max(sizes) - min(sizes) <= 1 and min(sizes) >= 1
    seen = np.concatenate(batches)
    assert len(np.unique(seen)) == len(seen)
    assert len(seen) == (n // batch * batch if drop_last else n)
    assert samplers[-1].rows == len(parts[-1][-1])
    assert samplers[-1].global_rows == len(batches[-1])


def test_sampler_shuffles_per_epoch_the_same_on_every_rank() -> None:
    a = dist.DistributedSampler(100, 10, seed=1, rank=0, world_size=2)
    b = dist.DistributedSampler(100, 10, seed=1, rank=1, world_size=2)
    first = a.global_batches()
    assert all(np.array_equal(x, y) for x, y in zip(first, b.global_batches(), strict=True))
    a.set_epoch(1)
    assert not np.array_equal(np.concatenate(first), np.concatenate(a.global_batches()))
    ordered = dist.DistributedSampler(10, 4, shuffle=False, rank=0, world_size=1)
    assert np.array_equal(np.concatenate(ordered.global_batches()), np.arange(10))


def test_sampler_refuses_a_rank_without_rows() -> None:
    with pytest.raises(ValueError, match="last batch of 1 rows"):
        dist.DistributedSampler(257, 64, rank=0, world_size=2)
    with pytest.raises(ValueError, match="smaller than the world size"):
        dist.DistributedSampler(100, 1, rank=0, world_size=2)
    with pytest.raises(ValueError, match="rank 2 of 2"):
        dist.DistributedSampler(100, 10, rank=2, world_size=2)
    with pytest.raises(ValueError, match="no full batch"):
        dist.DistributedSampler(10, 16, drop_last=True, rank=0, world_size=1)
    assert len(dist.DistributedSampler(257, 64, drop_last=True, rank=0, world_size=2)) == 4


# --------------------------------------------------------------------------------------------
# JAX: a device mesh, never torch.distributed
# --------------------------------------------------------------------------------------------
needs_jax = pytest.mark.skipif("jax" not in SELECTED, reason="the jax backend is not selected")


@needs_jax
def test_jax_mesh_matches_one_device(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, str(HERE / "jax_mesh_worker.py"), str(tmp_path)],
        env=_env(XLA_FLAGS="--xla_force_host_platform_device_count=2"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    _wait([proc], "the JAX mesh run")
    with np.load(tmp_path / "mesh.npz") as data:
        result = dict(data)
    for opt in ("sgd", "adam"):
        assert list(result[f"{opt}/x_shards"]) == [2, 2, 2]
        assert list(result[f"{opt}/x_shard_rows"]) == [32, 32, 63]  # split, split, whole
        assert int(result[f"{opt}/param_devices"]) == 2 and bool(result[f"{opt}/param_replicated"])
        assert str(result[f"{opt}/placement"]) == (
            "Placement('jax', device='mesh(batch=2; cpu:0, cpu:1)', dtype='float64')"
        )
    # pm.fit splits each batch whose rows the 2 devices divide: 64 rows, then 63 kept whole.
    assert list(result["fit/split"]) == [True, False, True, False]
    for opt in ("sgd", "adam", "fit"):
        for key in ("0.weight", "0.bias", "2.weight", "2.bias"):
            expected = result[f"{opt}/one/{key}"]
            np.testing.assert_allclose(
                result[f"{opt}/mesh/{key}"],
                expected,
                rtol=RTOL_F64,
                atol=RTOL_F64 * np.max(np.abs(expected)),
                err_msg=f"{opt} {key}",
            )


@needs_jax
def test_jax_is_refused_by_the_torch_path() -> None:
    model = pm.MLP([3, 4, 2], rng=0, backend="jax")
    with pytest.raises(pm.BackendError, match="device mesh"):
        dist.DistributedOptimizer(pm.SGD(model))
    with pytest.raises(pm.BackendError, match="immutable"):
        dist.broadcast_parameters(model)


@needs_jax
def test_jax_mesh_placement_spelling() -> None:
    import jax

    mesh = jax.make_mesh((1,), ("batch",))
    where = pm.placement("jax", mesh)
    spelled = f"mesh(batch=1; {pm.placement('jax').device_spec})"
    assert where.device_spec == spelled
    assert pm.placement("jax", spelled) is where
    assert pm.placement("jax", "mesh(batch=1)") is where
    assert pickle.loads(pickle.dumps(where)) is where
    model = pm.MLP([3, 4, 2], rng=0, placement=where)
    x = dist.shard_batch(pm.asarray(np.ones((2, 3)), like=model), like=model)
    assert x.sharding.mesh.shape == {"batch": 1}
    with pytest.raises(pm.BackendError, match="cannot read the JAX mesh"):
        pm.placement("jax", "mesh(batch)")
    with pytest.raises(pm.BackendError, match="needs 4 devices"):
        pm.placement("jax", f"mesh(batch=4; {pm.placement('jax').device_spec})")


def test_shard_batch_leaves_other_backends_alone() -> None:
    model = pm.MLP([3, 4, 2], rng=0)
    x = np.ones((4, 3))
    assert dist.shard_batch(x, like=model) is x


# --------------------------------------------------------------------------------------------
# Dask: data larger than memory, around a NumPy model
# --------------------------------------------------------------------------------------------
def _pickling_blocker() -> str | None:
    try:
        pickle.dumps(pm.MLP([3, 4, 2]))
    except Exception as exc:  # the exact error is the reason
        return (
            f"models do not pickle yet ({type(exc).__name__}: {exc}): Linear.xp and "
            "Optimizer.xp hold the namespace module, Linear._linear a closure over it and the "
            "activations' _xp the module; dask's process and distributed schedulers need it"
        )
    return None


def _dask_data() -> tuple[Any, Any, Any, Any]:
    da = pytest.importorskip("dask.array")
    pytest.importorskip("dask_ml")
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 4))
    y = (X[:, 0] + X[:, 1] > 0).astype(np.int64)
    return X, y, da.from_array(X, chunks=(50, 4)), da.from_array(y, chunks=50)


def test_dask_incremental_equals_a_partial_fit_loop() -> None:
    X, y, dX, dy = _dask_data()
    from dask_ml.wrappers import Incremental

    clf = pm.MLPClassifier(hidden_layer_sizes=(8,), random_state=0)
    fitted = Incremental(clf, shuffle_blocks=False).fit(dX, dy, classes=[0, 1]).estimator_
    loop = pm.MLPClassifier(hidden_layer_sizes=(8,), random_state=0)
    for s in range(0, 200, 50):
        loop.partial_fit(X[s : s + 50], y[s : s + 50], classes=[0, 1])
    for key, value in loop.model_.parameters().items():
        assert np.array_equal(pm.to_numpy(fitted.model_.parameters()[key]), pm.to_numpy(value))


def test_dask_parallel_post_fit_predicts_as_numpy() -> None:
    X, y, dX, _ = _dask_data()
    from dask_ml.wrappers import ParallelPostFit

    clf = pm.MLPClassifier(hidden_layer_sizes=(8,), random_state=0)
    for s in range(0, 200, 50):
        clf.partial_fit(X[s : s + 50], y[s : s + 50], classes=[0, 1])
    wrapped = ParallelPostFit(clf)
    assert np.array_equal(wrapped.predict(dX).compute(), clf.predict(X))
    assert np.array_equal(wrapped.predict_proba(dX).compute(), clf.predict_proba(X))


@pytest.mark.skipif(_pickling_blocker() is not None, reason=str(_pickling_blocker()))
@pytest.mark.parametrize(
    "backend", [b for b in ("numpy", "torch", "array_api_strict") if b in SELECTED]
)
def test_models_and_estimators_pickle(backend: str) -> None:
    """What dask's process and distributed schedulers do with a model: pickle it."""
    X, y = worker.data()
    model, optimizer = worker.make(backend, "adam", seed=0)
    pm.train_step(
        model,
        pm.CrossEntropyLoss(),
        optimizer,
        pm.asarray(X, like=model),
        pm.asarray(y, like=model),
    )
    copy, opt_copy = pickle.loads(pickle.dumps((model, optimizer)))
    assert copy.placement == model.placement and opt_copy.model is copy
    for key, value in worker.params(model).items():
        assert np.array_equal(worker.params(copy)[key], value)
    np.testing.assert_array_equal(
        pm.to_numpy(copy.forward(pm.asarray(X, like=copy))),
        pm.to_numpy(model.forward(pm.asarray(X, like=model))),
    )
    clf = pm.MLPClassifier(hidden_layer_sizes=(8,), random_state=0, max_iter=2, backend=backend)
    with pytest.warns(pm.ConvergenceWarning):
        clf.fit(X, y)
    assert np.array_equal(pickle.loads(pickle.dumps(clf)).predict_proba(X), clf.predict_proba(X))


def test_a_wrapped_optimizer_is_captured_like_the_eager_step(case: Any) -> None:
    """The averaging sits in the optimizer's ``update``, which every step (eager or captured)
    calls: ``compile_step`` takes a wrapped optimizer, and outside a process group both steps
    leave what the plain optimizer leaves."""
    if not pm.placement(case.backend, case.device).mutable:
        pytest.skip("JAX trains data-parallel on a mesh, not through DistributedOptimizer")
    rng = np.random.default_rng(3)
    x = case.array(rng.normal(size=(9, 3)), "float64")
    y = case.array(rng.integers(0, 2, size=(9, 1)).astype(float), "float64")
    models = [pm.MLP([3, 4, 1], rng=0, **case.model_kwargs("float64")) for _ in range(2)]
    plain = pm.Adam(models[0], lr=0.05)
    wrapped = dist.DistributedOptimizer(pm.Adam(models[1], lr=0.05))
    step = pm.compile_step(models[1], pm.BCEWithLogitsLoss(), wrapped, alpha=0.01)
    for _ in range(3):
        pm.train_step(models[0], pm.BCEWithLogitsLoss(), plain, x, y, alpha=0.01)
        step(x, y)
    assert wrapped.steps == plain.steps == 3
    for key, value in models[0].parameters().items():
        np.testing.assert_allclose(
            pm.to_numpy(models[1].parameters()[key]), pm.to_numpy(value), rtol=1e-12
        )
