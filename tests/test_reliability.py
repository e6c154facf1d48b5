"""Fault injection: files and inputs that cannot lie (issue 11).

Corrupted, truncated and hostile checkpoints, killed saves, bad data files, command-line misuse
and NumPy's floating-point error state. Every hostile load runs in a subprocess under a memory
limit (``RLIMIT_AS``) and a time limit, so a check that comes too late fails the test instead of
the machine.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import portable_mlp as pm
from portable_mlp import checkpoints, datasets
from portable_mlp import functional as F
from portable_mlp.checkpoints import CheckpointError
from portable_mlp.cli import main
from portable_mlp.datasets import DataError
from portable_mlp.testing import selected_backends
from test_checkpoints import _rewrite, fitted, write_signed

SELECTED = selected_backends()  # the backends this run covers (PORTABLE_MLP_BACKEND)

linux_only = pytest.mark.skipif(
    sys.platform != "linux", reason="RLIMIT_AS, /proc and fork as on Linux"
)
SRC = str(Path(pm.__file__).resolve().parents[1])  # the portable_mlp under test, for children


def _child_env() -> dict[str, str]:
    # One BLAS thread: the memory limit then measures the load, not idle thread stacks.
    return {**os.environ, "PYTHONPATH": SRC, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}


def _same_estimator(a: Any, b: Any) -> bool:
    if type(a) is not type(b) or a.model_.config() != b.model_.config():
        return False
    pa, pb = a.model_.parameters(), b.model_.parameters()
    if any(not np.array_equal(pm.to_numpy(pa[k]), pm.to_numpy(pb[k])) for k in pa):
        return False
    names = ["classes_", "n_features_in_", "n_outputs_", "n_iter_", "t_", "loss_curve_"]
    return all(np.array_equal(getattr(a, n), getattr(b, n)) for n in names) and (
        a.get_params() == b.get_params()
    )


# ---------------------------------------------------------------------------- 1: integrity
def _small_classifier(path: Path) -> Any:
    clf = fitted()  # 4 features, 3 hidden units, 3 string classes
    checkpoints.save(clf, path, metadata={"feature_names": ["a", "b", "c", "d"]})
    return checkpoints.load(path)


def test_every_single_bit_flip_is_refused_or_changes_nothing(tmp_path: Path) -> None:
    """All 8 x size single-bit flips of a small estimator checkpoint."""
    path = tmp_path / "clf.safetensors"
    original = _small_classifier(path)
    data = path.read_bytes()
    outcomes: dict[str, int] = {}
    fd = os.open(path, os.O_RDWR)
    try:
        for bit in range(8 * len(data)):
            at = bit // 8
            os.pwrite(fd, bytes([data[at] ^ (1 << (bit % 8))]), at)  # rewriting the file is slow
            try:
                loaded = checkpoints.load(path)
            except CheckpointError:
                outcome = "refused"
            else:
                outcome = "identical" if _same_estimator(loaded, original) else "DIFFERENT"
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
            os.pwrite(fd, data[at : at + 1], at)
    finally:
        os.close(fd)
    assert "DIFFERENT" not in outcomes, outcomes
    assert outcomes.get("refused", 0) >= 0.99 * 8 * len(data), outcomes


def test_permuted_data_offsets_are_refused(tmp_path: Path) -> None:
    # Two tensors of one size trade places in the header, the data untouched: same file size,
    # a valid safetensors layout, a different model.
    path = tmp_path / "m.safetensors"
    checkpoints.save(pm.MLP([3, 3, 3], rng=0, dtype="float64"), path)
    data = path.read_bytes()
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + n])
    header["0.bias"]["data_offsets"], header["2.bias"]["data_offsets"] = (
        header["2.bias"]["data_offsets"],
        header["0.bias"]["data_offsets"],
    )
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (n - len(text))
    assert len(text) == n
    path.write_bytes(data[:8] + text + data[8 + n :])
    with pytest.raises(CheckpointError, match=r"digest .* does not match"):
        checkpoints.load(path)


def test_truncation_at_every_byte_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "clf.safetensors"
    _small_classifier(path)
    for keep in reversed(range(path.stat().st_size)):
        os.truncate(path, keep)
        with pytest.raises(CheckpointError, match=r"truncated|not a safetensors|header"):
            checkpoints.load(path)


# ---------------------------------------------------------------------------- 9: same bytes
_SAVE_ONE = """
import sys, portable_mlp as pm
model = pm.MLP([3, 5, 2], rng=0, dtype="float32")
meta = {"zeta": [1, 2], "alpha": {"y": 1, "x": 2}, "mid": "m"}
if sys.argv[2] == "reversed":
    meta = dict(reversed(list(meta.items())))
pm.save(model, sys.argv[1], metadata=meta)
"""


def test_one_model_always_saves_to_the_same_bytes(tmp_path: Path) -> None:
    # In separate processes (each with its own hash seeds) and with the caller's metadata in
    # another order.
    files = []
    for i, order in enumerate(["given", "reversed", "given"]):
        files.append(tmp_path / f"m{i}.safetensors")
        subprocess.run(
            [sys.executable, "-c", _SAVE_ONE, str(files[-1]), order],
            env={**_child_env(), "PYTHONHASHSEED": str(i)},
            check=True,
            timeout=120,
        )
    assert len({f.read_bytes() for f in files}) == 1


# ---------------------------------------------------------------------------- 2, 4, 5: bounded
_HARNESS = """
import json, os, resource, signal, sys, time
import portable_mlp.estimator  # imported before the limit: what is measured is the load
from portable_mlp import checkpoints

cases, seconds, extra = json.loads(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
size = int(open("/proc/self/status").read().split("VmSize:")[1].split()[0]) * 1024
resource.setrlimit(resource.RLIMIT_AS, (size + extra, size + extra))

def too_long(*_):
    raise TimeoutError("over the time limit")

signal.signal(signal.SIGALRM, too_long)
for name, how, path in cases:
    start = time.perf_counter()
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        (checkpoints.load if how == "load" else checkpoints.read_metadata)(path)
        outcome = ["loaded", ""]
    except BaseException as exc:
        outcome = [type(exc).__name__, " ".join(str(exc).split())[:300]]
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    print(json.dumps([name, *outcome, time.perf_counter() - start]), flush=True)
"""
# Beyond the address space the interpreter already holds: plenty for a small model, a hundredth
# of what the hostile configs below would have allocated.
MEMORY_LIMIT = 256 * 2**20
TIME_LIMIT_S = 3.0


def _header(path: Path) -> tuple[dict[str, str], dict[str, Any], bytes]:
    data = path.read_bytes()
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + n])
    return header.pop("__metadata__"), header, data[8 + n :]


def _edit_state(path: Path, out: Path, edit: Any) -> None:
    """``out``: ``path`` with its estimator state edited by ``edit(state)``, signed again."""
    meta, entries, data = _header(path)
    state = json.loads(meta["estimator"])
    edit(state)
    write_signed(out, {**meta, "estimator": json.dumps(state)}, entries, data)


def _hostile_files(tmp: Path) -> list[tuple[str, str, str]]:
    """(name, "load" or "meta", path) of every hostile file; all but the last few are signed,
    so what refuses them is the check they aim at, not the digest."""
    model = tmp / "model.safetensors"
    checkpoints.save(pm.MLP([4, 3, 3], rng=0, dtype="float32"), model)
    clf = tmp / "clf.safetensors"
    _small_classifier(clf)
    cases: list[tuple[str, str, str]] = []

    def config_case(name: str, config: Any) -> None:
        out = tmp / f"{name}.safetensors"
        out.write_bytes(model.read_bytes())
        text = config if isinstance(config, str) else json.dumps(config)
        _rewrite(out, metadata={"config": text})
        cases.append((name, "load", str(out)))

    def raw_case(name: str, meta: dict[str, str], entries: dict[str, Any], data: bytes) -> None:
        out = tmp / f"{name}.safetensors"
        write_signed(out, meta, entries, data)
        cases.append((name, "load", str(out)))

    def state_case(name: str, edit: Any) -> None:
        out = tmp / f"{name}.safetensors"
        _edit_state(clf, out, edit)
        cases.append((name, "load", str(out)))

    # The config asks for far more than the file holds (2: 8 s and 2.2 GB; a MemoryError).
    config_case(
        "sizes 4,12000,12000,3",
        {"type": "MLP", "sizes": [4, 12000, 12000, 3], "activation": "relu", "bias": True},
    )
    config_case(
        "sizes 4,1e12,3",
        {"type": "MLP", "sizes": [4, 10**12, 3], "activation": "relu", "bias": True},
    )
    config_case("Linear 1e12", {"type": "Linear", "p_in": 10**12, "p_out": 10**12, "bias": True})
    linear = json.dumps({"type": "Linear", "p_in": 4, "p_out": 3, "bias": True})
    deep = '{"type": "Sequential", "layers": [' * 5000 + linear + "]}" * 5000
    config_case("Sequential nested 5000 deep", deep)
    config_case(
        "unknown config key",
        {"type": "MLP", "sizes": [4, 3, 3], "activation": "relu", "bias": True, "init": "normal"},
    )
    for what, value in [
        ("sizes", ["4", 3, 3]),
        ("sizes", [4, 3.0, 3]),
        ("sizes", [4, True, 3]),
        ("sizes", [4, -3, 3]),
        ("bias", "yes"),
        ("activation", "__import__"),
    ]:
        config = {"type": "MLP", "sizes": [4, 3, 3], "activation": "relu", "bias": True}
        config_case(f"config {what}={value!r}", {**config, what: value})
    # The header claims tensors far larger than the file (2: allocating them first).
    meta, entries, data = _header(model)
    raw_case(
        "tensor 12000x12000",
        meta,
        {
            **entries,
            "0.weight": {
                "dtype": "F32",
                "shape": [12000, 12000],
                "data_offsets": [0, 4 * 12000 * 12000],
            },
        },
        data,
    )
    raw_case(
        "tensor 1e12",
        meta,
        {"0.weight": {"dtype": "F32", "shape": [10**12], "data_offsets": [0, 4 * 10**12]}},
        data,
    )
    raw_case(
        "offsets overlap",
        meta,
        {
            k: {**v, "data_offsets": [0, v["data_offsets"][1] - v["data_offsets"][0]]}
            for k, v in entries.items()
        },
        data,
    )
    raw_case("header not an object", meta, {"0.weight": [1, 2, 3]}, data)
    # Metadata nested deeper than any parser's stack.
    raw_case(
        "user metadata 100000 deep", {**meta, "user": "[" * 100_000 + "]" * 100_000}, entries, data
    )
    cases.append(("user metadata 100000 deep (read_metadata)", "meta", cases[-1][2]))
    # 4: the estimator state.
    state_case("state sets predict", lambda s: s["fitted"].update(predict=1))
    state_case("state sets __class__", lambda s: s["fitted"].update(__class__="MLPRegressor"))
    state_case("state unknown parameter", lambda s: s["params"].update(loss="log"))
    state_case("state n_outputs_ 5", lambda s: s["fitted"].update(n_outputs_=5))
    state_case(
        "state classes_ unsorted", lambda s: s["fitted"].update(classes_=["cat", "bee", "ant"])
    )
    state_case(
        "state classes_ repeated", lambda s: s["fitted"].update(classes_=["ant", "ant", "cat"])
    )
    state_case("state 2 classes for 3 outputs", lambda s: s["fitted"].update(classes_=["a", "b"]))
    state_case(
        "state classes_dtype <U1e8", lambda s: s["fitted"].update(classes_dtype="<U100000000")
    )
    state_case("state classes_dtype V8", lambda s: s["fitted"].update(classes_dtype="|V8"))
    state_case("state classes_dtype int", lambda s: s["fitted"].update(classes_dtype=8))
    state_case(
        "state mixed classes",
        lambda s: s["fitted"].update(classes_=[1, "b", 2.5], classes_dtype="|O"),
    )
    state_case("state regressor's", lambda s: s["fitted"].update(_y_was_1d=True))
    state_case("state n_iter_ 'three'", lambda s: s["fitted"].update(n_iter_="three"))
    state_case("state alpha nan", lambda s: s["params"].update(alpha=math.nan))
    state_case("state max_iter 1e308", lambda s: s["params"].update(max_iter=1e308))
    state_case("state hidden sizes differ", lambda s: s["params"].update(hidden_layer_sizes=[7]))
    state_case(
        "state nested 900 deep", lambda s: s["fitted"].update(t_=json.loads("[" * 900 + "]" * 900))
    )
    state_case("state empty", lambda s: s.clear())
    # 5: what is not a regular file, and a 2 GiB (sparse) file that is mostly not a checkpoint.
    cases.append(("/dev/zero", "load", "/dev/zero"))
    fifo = tmp / "fifo.safetensors"
    os.mkfifo(fifo)
    cases.append(("FIFO", "load", str(fifo)))
    cases.append(("FIFO (read_metadata)", "meta", str(fifo)))
    cases.append(("directory", "load", str(tmp)))
    sparse = tmp / "sparse.safetensors"
    sparse.write_bytes(model.read_bytes())
    os.truncate(sparse, 2 * 2**30)
    cases.append(("2 GiB sparse", "load", str(sparse)))
    huge_header = tmp / "huge-header.safetensors"
    huge_header.write_bytes((2**31).to_bytes(8, "little") + b"{" + b" " * 100)
    os.truncate(huge_header, 2**31 + 8)
    cases.append(("2 GiB header (sparse)", "load", str(huge_header)))
    return cases


@linux_only
def test_hostile_files_are_refused_within_memory_and_time_limits(tmp_path: Path) -> None:
    cases = _hostile_files(tmp_path)
    done = subprocess.run(
        [sys.executable, "-c", _HARNESS, json.dumps(cases), str(TIME_LIMIT_S), str(MEMORY_LIMIT)],
        env=_child_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    results = {line[0]: line[1:] for line in map(json.loads, done.stdout.splitlines())}
    assert set(results) == {name for name, _, _ in cases}, done.stderr[-2000:]
    wrong = {
        name: result
        for name, result in results.items()
        if result[0] != "CheckpointError" or result[2] > TIME_LIMIT_S
    }
    assert not wrong, json.dumps(wrong, indent=1)
    for name, (_, message, _) in results.items():
        path = next(p for n, _, p in cases if n == name)
        assert message.startswith(path), (name, message)


def test_a_state_key_never_replaces_a_method(tmp_path: Path) -> None:
    # Even past the schema (a future key it forgets), only known attributes are ever set.
    est = fitted()
    model, state = est._checkpoint()
    state["fitted"]["predict"] = "not a method"
    clean = pm.MLPClassifier._from_checkpoint(model, state)
    assert callable(clean.predict)


# ---------------------------------------------------------------------------- 9: killed saves
_KILLER = """
import json, os, random, signal, sys, time
import numpy as np
import portable_mlp as pm
from portable_mlp import checkpoints

folder, trials, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
path = os.path.join(folder, "m.safetensors")
models = [pm.MLP([16, 256, 256, 4], rng=1, dtype="float64"), pm.MLP([16, 8, 4], rng=2)]
checkpoints.save(models[0], path)
rng = random.Random(seed)
outcomes = []
for _ in range(trials):
    pid = os.fork()
    if pid == 0:  # the child saves the two models in turn until it is killed
        for i in range(10**9):
            checkpoints.save(models[i % 2], path)
    time.sleep(rng.uniform(0.002, 0.04))
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    try:
        loaded = checkpoints.load(path)
        which = [
            k for k, m in enumerate(models)
            if loaded.config() == m.config() and all(
                np.array_equal(loaded.parameters()[p], v) for p, v in m.parameters().items())
        ]
        outcome = "old or new" if which else "OTHER MODEL"
    except Exception as exc:
        outcome = f"{type(exc).__name__}: {exc}"
    temps = sum(name.endswith(".tmp") for name in os.listdir(folder))
    outcomes.append([outcome, temps])
print(json.dumps(outcomes))
"""


@linux_only
def test_killed_saves_leave_the_old_or_new_model_and_no_temporary_files(tmp_path: Path) -> None:
    trials = 30
    done = subprocess.run(
        [sys.executable, "-c", _KILLER, str(tmp_path), str(trials), "11"],
        env=_child_env(),
        capture_output=True,
        text=True,
        timeout=100,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    outcomes = json.loads(done.stdout)
    assert [o for o, _ in outcomes] == ["old or new"] * trials, outcomes
    # The leftovers of killed saves: a minute later, the next save removes them all.
    leftovers = [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    an_hour_ago = time.time() - 3600
    for p in leftovers:
        os.utime(p, (an_hour_ago, an_hour_ago))
    checkpoints.save(pm.MLP([2, 2], rng=0), tmp_path / "m.safetensors")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]


def test_stale_temporary_files_and_only_they_are_removed(tmp_path: Path) -> None:
    from portable_mlp import _io

    def temp(name: str, age: float) -> Path:
        p = tmp_path / name
        p.write_bytes(b"partial")
        os.utime(p, (time.time() - age, time.time() - age))
        return p

    dead = 2**22 + 12345  # above Linux's default pid_max: no such process
    gone = [
        temp(f".m.bin.{dead}.{'a' * 16}.tmp", 120),
        temp(f".m.bin.{os.getpid()}.{'b' * 16}.tmp", 2 * 86400),
    ]
    kept = [
        temp(f".m.bin.{dead}.{'c' * 16}.tmp", 5),  # a writer elsewhere may still be at work
        temp(f".m.bin.{os.getpid()}.{'d' * 16}.tmp", 120),  # a live writer's
        temp(f".other.bin.{dead}.{'e' * 16}.tmp", 120),  # another target's
        temp(".m.bin.notes.tmp", 120),  # not a name the writer makes
    ]
    _io.write_atomic(tmp_path / "m.bin", b"new")
    assert not any(p.exists() for p in gone)
    assert all(p.exists() for p in kept)
    assert (tmp_path / "m.bin").read_bytes() == b"new"


def test_a_write_into_a_missing_folder_names_the_target(tmp_path: Path) -> None:
    target = tmp_path / "missing" / "m.safetensors"
    with pytest.raises(FileNotFoundError) as info:
        checkpoints.save(pm.MLP([2, 2], rng=0), target)
    assert str(target) in str(info.value) and ".tmp" not in str(info.value)


# ---------------------------------------------------------------------------- 10: seterr
SETERR_BACKENDS = [b for b in ("numpy", "array_api_strict") if b in SELECTED]


def _stable_forms(backend: str, dtype: str) -> dict[str, np.ndarray]:
    """Every stable form's forward and backward over logits across the underflow range."""
    p = pm.placement(backend, None, dtype)
    top = 120.0 if dtype == "float32" else 760.0
    grid = np.concatenate([np.linspace(-top, top, 1200), [-1e4, 1e4, -3e38, 3e38, 0.0, 0.0]])
    z = p.asarray(grid.reshape(-1, 3))
    y = p.asarray((np.arange(grid.size).reshape(-1, 3) % 2).astype(float))
    labels = p.asarray(np.arange(z.shape[0]) % 3)
    dy = p.asarray(np.full(z.shape, 0.3))
    out: dict[str, Any] = {}
    sig = pm.Sigmoid()
    out["sigmoid"], out["sigmoid backward"] = sig(z), sig.backward(dy)
    bce = pm.BCEWithLogitsLoss()
    out["bce"], out["bce backward"] = bce(z, y), bce.backward()
    ce = pm.CrossEntropyLoss()
    out["ce"], out["ce backward"] = ce(z, labels), ce.backward()
    out["softmax"], out["log_softmax"] = F.softmax(z), F.log_softmax(z)
    return {k: p.to_host(v) for k, v in out.items()}


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("backend", SETERR_BACKENDS)
def test_stable_forms_never_raise_underflow_under_seterr_raise(backend: str, dtype: str) -> None:
    expected = _stable_forms(backend, dtype)
    with np.errstate(all="raise"):
        got = _stable_forms(backend, dtype)
    for key, value in expected.items():
        assert np.array_equal(got[key], value), key  # the same values, bit for bit
    assert np.isfinite(expected["bce"]) and expected["sigmoid"].min() == 0.0  # the range is hit
    # Overflow still raises where the caller asked for it: only underflow is quiet.
    p = pm.placement(backend, None, dtype)
    with np.errstate(over="raise"), pytest.raises(FloatingPointError, match="overflow"):
        p.xp.exp(p.asarray(np.array([1e4])))


# ---------------------------------------------------------------------------- 6: duplicates
def test_repeated_feature_names_are_refused(tmp_path: Path) -> None:
    csv = tmp_path / "ab.csv"
    csv.write_text("a,b,y\n1,2,0\n3,4,1\n")
    with pytest.raises(DataError, match="features name the same column more than once: a"):
        datasets.load_file(csv, features=["a", "a", "b"])
    with pytest.raises(DataError, match="target column 'y' cannot be a feature"):
        datasets.load_file(csv, "y", features=["a", "y"])
    npz = tmp_path / "ab.npz"
    np.savez(npz, X=np.ones((2, 3)), feature_names=np.array(["a", "b", "a"]))
    with pytest.raises(DataError, match="feature_names name the same column more than once: a"):
        datasets.load_file(npz)
    np.savez(npz, X=np.ones((2, 3)))
    with pytest.raises(DataError, match="features name the same column more than once: x1"):
        datasets.load_file(npz, features=["x0", "x1", "x1"])


# ---------------------------------------------------------------------------- 7: overflow
def test_standardizer_overflow_is_one_clear_error_naming_the_column(tmp_path: Path) -> None:
    csv = tmp_path / "big.csv"
    csv.write_text("small,big,y\n1,1.7e308,0\n2,-1.7e308,1\n3,1e308,0\n")
    X, _, names = datasets.load_file(csv, "y")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # not one NumPy warning on the way
        with pytest.raises(DataError, match=r"fit: X\[:, 1\] overflows float64 .*1\.7e\+308"):
            datasets.Standardizer().fit(X)
        with pytest.raises(DataError, match=r"fit: column 'big' overflows"):
            datasets.Standardizer().fit(X, feature_names=names)
        scaler = datasets.Standardizer().fit(X[:, :1])  # fits; transform overflows
        with pytest.raises(DataError, match=r"transform: X\[:, 0\] overflows"):
            scaler.transform(np.array([[1.7e308]]))


def test_mixed_number_and_text_labels_are_refused(tmp_path: Path) -> None:
    csv = tmp_path / "mixed.csv"
    csv.write_text("a,label\n1,1\n2,a\n3,2.5\n")
    with pytest.raises(
        DataError,
        match=r"label column 'label' mixes numbers \('1' at row 1\) "
        r"and text \('a' at row 2\)",
    ):
        datasets.load_file(csv, "label")


# ---------------------------------------------------------------------------- 8: the CLI
def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


@pytest.fixture(scope="module")
def predict_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A classifier saved as ``train --save`` does, its data, and broken variants of both."""
    tmp = tmp_path_factory.mktemp("cli")
    rng = np.random.default_rng(0)
    X = rng.normal(size=(30, 2))
    y = (X[:, 0] > 0).astype(int)
    data = tmp / "data.csv"
    data.write_text("a,b,y\n" + "".join(f"{a},{b},{t}\n" for (a, b), t in zip(X, y, strict=True)))
    files = {"data": data}
    scaler = datasets.Standardizer().fit(X)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", pm.ConvergenceWarning)
        clf = pm.MLPClassifier((4,), max_iter=2, random_state=0).fit(scaler.transform(X), y)
    files["model"] = tmp / "model.safetensors"
    meta = {"standardizer": scaler.to_dict(), "feature_names": ["a", "b"], "source": "t"}
    checkpoints.save(clf, files["model"], metadata=meta)
    flipped = bytearray(files["model"].read_bytes())
    flipped[-3] ^= 0x10
    files["flipped"] = tmp / "flipped.safetensors"
    files["flipped"].write_bytes(bytes(flipped))
    files["huge"] = tmp / "huge.safetensors"
    files["huge"].write_bytes(files["model"].read_bytes())
    config = {"type": "MLP", "sizes": [2, 10**12, 1], "activation": "relu", "bias": True}
    _rewrite(files["huge"], metadata={"config": json.dumps(config)})
    for name, user in [
        ("bad-names", {**meta, "feature_names": "a,b"}),
        ("bad-scaler", {**meta, "standardizer": {"mean": [0.0], "scale": [-1.0]}}),
    ]:
        files[name] = tmp / f"{name}.safetensors"
        files[name].write_bytes(files["model"].read_bytes())
        _rewrite(files[name], metadata={"user": json.dumps(user)})
    files["mixed"] = tmp / "mixed.csv"
    files["mixed"].write_text(
        "a,b,y\n" + "".join(f"{i},{i},{'x' if i % 2 else i}\n" for i in range(20))
    )
    files["overflow"] = tmp / "overflow.csv"
    files["overflow"].write_text(
        "a,wide,y\n" + "".join(f"{i},{(-1) ** i * 1.7e308},{i % 2}\n" for i in range(20))
    )
    files["dir"] = tmp
    return files


CLI_MISUSE = [
    (["train", "--lr", "inf"], "argument --lr: expected a finite float > 0, got 'inf'"),
    (["train", "--lr", "nan"], "argument --lr: expected a finite float > 0, got 'nan'"),
    (["train", "--lr", "0"], "argument --lr: expected a finite float > 0, got '0'"),
    (["train", "--alpha", "nan"], "argument --alpha: expected a finite float >= 0, got 'nan'"),
    (["train", "--alpha=-inf"], "argument --alpha: expected a finite float >= 0"),
    (["train", "--alpha", "-1"], "argument --alpha: expected a finite float >= 0, got '-1'"),
    (["train", "--test-size", "nan"], "argument --test-size: expected a finite float, got 'nan'"),
    (["train", "--test-size", "inf"], "argument --test-size: expected a finite float"),
    (["train", "--seed", "-1"], "argument --seed: expected an int >= 0, got '-1'"),
    (["train", "--epochs", "0"], "argument --epochs: expected an int > 0, got '0'"),
    (["train", "--batch-size", "1e3"], "argument --batch-size: expected an int > 0"),
    (["train", "--hidden", "4,0"], "argument --hidden: sizes must be positive"),
    (["train", "--no-such-option"], "unrecognized arguments: --no-such-option"),
    (["predict"], "the following arguments are required: model, data"),
    (
        ["train", "--save", "{tmp}/missing/m.safetensors"],
        "--save {tmp}/missing/m.safetensors: no such directory",
    ),
    (["train", "--plot", "{tmp}/missing/c.png"], "--plot {tmp}/missing/c.png: no such directory"),
    (["train", "--save", "{dir}"], "is a directory; expected a file name"),
    (
        ["predict", "{model}", "{data}", "--output", "{tmp}/missing/p.csv"],
        "--output {tmp}/missing/p.csv: no such directory",
    ),
    (["predict", "{flipped}", "{data}"], "digest of its contents does not match"),
    (
        ["predict", "{huge}", "{data}"],
        "tensor '0.weight' has shape (2, 4), the config expects (2, 1000000000000)",
    ),
    (["predict", "{bad-names}", "{data}"], "feature_names is not a list of column names"),
    (
        ["predict", "{bad-scaler}", "{data}"],
        "metadata standardizer: mean must be finite and scale finite and positive",
    ),
    (
        ["train", "--data", "{mixed}", "--target", "y"],
        "label column 'y' mixes numbers ('0' at row 1) and text ('x' at row 2)",
    ),
    (["train", "--data", "{overflow}", "--target", "y"], "column 'wide' overflows float64"),
]


@pytest.mark.parametrize(("argv", "message"), CLI_MISUSE, ids=[" ".join(a) for a, _ in CLI_MISUSE])
def test_cli_misuse_is_one_line_and_status_2(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    predict_files: dict[str, Path],
    argv: list[str],
    message: str,
) -> None:
    def fill(text: str) -> str:
        for key, path in {**predict_files, "tmp": tmp_path}.items():
            text = text.replace(f"{{{key}}}", str(path))
        return text

    start = time.perf_counter()
    status, out, err = _run(capsys, *map(fill, argv), *(["--quiet"] if argv[0] == "train" else []))
    assert status == 2, err
    assert fill(message) in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert out == ""  # refused before any work: nothing trained, nothing written
    assert time.perf_counter() - start < 30
    assert not (tmp_path / "missing").exists()


# The command line with 1 GiB of address space: reading /dev/zero must not get that far.
_CLI_LIMITED = """
import resource, sys
resource.setrlimit(resource.RLIMIT_AS, (2**30, 2**30))
from portable_mlp.cli import main
sys.exit(main(sys.argv[1:]))
"""


@linux_only
@pytest.mark.parametrize("special", ["/dev/zero", "FIFO"])
def test_cli_refuses_what_is_not_a_file_at_once(
    special: str, tmp_path: Path, predict_files: dict[str, Path]
) -> None:
    # In a subprocess: reading /dev/zero or opening a FIFO in-process would never end.
    path = special
    if special == "FIFO":
        path = str(tmp_path / "model.safetensors")
        os.mkfifo(path)
    done = subprocess.run(
        [sys.executable, "-c", _CLI_LIMITED, "predict", path, str(predict_files["data"])],
        env=_child_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    kind = "a character device" if special == "/dev/zero" else "a FIFO"
    assert done.returncode == 2, done.stderr[-2000:]
    assert (
        done.stderr == f"portable-mlp predict: error: {path}: is {kind}, not a regular file; "
        "a checkpoint is a file\n"
    )
