"""The ``portable-mlp`` command line, run in-process through ``main``."""

from __future__ import annotations

import csv
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import portable_mlp as pm
from portable_mlp import datasets
from portable_mlp.cli import main
from portable_mlp.testing import selected_backends

TRAINING_BACKENDS = [b for b in ("numpy", "torch", "jax") if b in selected_backends()]


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def _test_accuracy(out: str) -> float:
    match = re.search(r"test\s*│\s*\d+\s*│\s*[\d.]+\s*│\s*([\d.]+)", out)
    assert match, out
    return float(match.group(1))


@pytest.mark.parametrize("backend", TRAINING_BACKENDS)
@pytest.mark.parametrize("dataset", ["breast_cancer", "digits"])
def test_train_defaults_reach_the_bar(
    capsys: pytest.CaptureFixture[str], dataset: str, backend: str
) -> None:
    status, out, _ = _run(capsys, "train", "--dataset", dataset, "--backend", backend, "--quiet")
    assert status == 0
    assert _test_accuracy(out) >= 0.95
    assert f"on {backend}" in out


def _csv(path: Path) -> Path:
    X, y = datasets.load("breast_cancer")
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["diagnosis", *datasets.feature_names("breast_cancer")])
        for row, label in zip(X, y, strict=True):
            writer.writerow([["malignant", "benign"][label], *row])
    return path


def test_train_save_plot_predict(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    data = _csv(tmp_path / "cancer.csv")
    model, png = tmp_path / "model.safetensors", tmp_path / "curves.png"
    status, out, err = _run(
        capsys,
        "train",
        "--data",
        str(data),
        "--target",
        "diagnosis",
        "--hidden",
        "16,8",
        "--epochs",
        "30",
        "--optimizer",
        "sgd",
        "--lr",
        "0.05",
        "--save",
        str(model),
        "--plot",
        str(png),
        "--quiet",
    )
    assert status == 0, err
    assert "MLP 30-16-8-1" in out and _test_accuracy(out) >= 0.9
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    clf = pm.load(model)
    assert isinstance(clf, pm.MLPClassifier) and len(clf.eval_scores_) == clf.n_iter_
    out_csv = tmp_path / "pred.csv"
    status, _, err = _run(capsys, "predict", str(model), str(data), "--output", str(out_csv))
    assert status == 0 and "wrote 569 predictions" in err
    with out_csv.open() as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["prediction", "proba_benign", "proba_malignant"]
    with data.open() as f:
        truth = [r[0] for r in csv.reader(f)][1:]
    accuracy = np.mean([r[0] == t for r, t in zip(rows[1:], truth, strict=True)])
    assert accuracy > 0.9
    assert all(abs(float(r[1]) + float(r[2]) - 1) < 1e-5 for r in rows[1:])
    status, out, _ = _run(capsys, "predict", str(model), str(data))  # to stdout
    assert status == 0 and out.splitlines()[1:] == [",".join(r) for r in rows[1:]]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train", "--backend", "tensorflow"], "unknown backend 'tensorflow'; expected one of"),
        (["train", "--data", "/no/such.csv", "--target", "y"], "/no/such.csv: no such file"),
        (["train", "--data", "{csv}", "--target", "nope"], "no target column 'nope'"),
        (["train", "--data", "{csv}"], "--data needs --target"),
        (["train", "--data", "{csv}", "--target", "mean radius"], "non-numeric value 'malignant'"),
        (["train", "--test-size", "1.5"], "--test-size must be in (0, 1)"),
        (["predict", "{csv}", "{csv}"], "not a safetensors"),
    ],
)
def test_misuse_is_one_line_and_status_2(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, argv: list[str], message: str
) -> None:
    data = str(_csv(tmp_path / "cancer.csv"))
    status, _, err = _run(
        capsys,
        *[a.replace("{csv}", data) for a in argv],
        "--quiet" if argv[0] == "train" else "--dtype=float64",
    )
    assert status == 2
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_continuous_labels_are_refused(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    data = tmp_path / "reg.csv"
    rng = np.random.default_rng(0)
    rows = "\n".join(f"{a:.3f},{b:.3f},{a + b:.3f}" for a, b in rng.normal(size=(20, 2)))
    data.write_text("a,b,price\n" + rows + "\n")
    status, _, err = _run(capsys, "train", "--data", str(data), "--target", "price", "--quiet")
    assert status == 2 and "Unknown label type: continuous" in err
    assert len(err.strip().splitlines()) == 1


def test_no_cuda_device_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    status, _, err = _run(capsys, "train", "--backend", "torch", "--device", "cuda", "--quiet")
    assert status == 2 and "torch sees no CUDA device" in err


def test_diverging_run_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = _run(capsys, "train", "--optimizer", "sgd", "--lr", "1e30", "--quiet")
    assert status == 1 and "training diverged" in err


def test_check_reports_every_installed_backend(
    capsys: pytest.CaptureFixture[str], selected: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "200")  # a wide terminal: the table keeps to 80 by itself
    status, out, _ = _run(capsys, "check")
    assert status == 0
    assert max(len(line) for line in out.splitlines()) <= 80, out
    for backend in selected:
        if backend != "cupy":
            assert backend[:8] in out
    assert "FAIL" not in out and out.count("pass") >= 2 * len([b for b in selected if b != "cupy"])


def test_info_lists_backends(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = _run(capsys, "info")
    assert status == 0 and "numpy" in out and "cupy" in out


def test_python_dash_m() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "portable_mlp", "--version"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert done.stdout.strip() == f"portable-mlp {pm.__version__}"


# ---------------------------------------------------------------------------- train, as a newcomer
def test_default_train_ends_cleanly(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = _run(capsys, "train", "--quiet")
    assert status == 0 and err == ""  # converged: no "Maximum iterations" note
    assert _test_accuracy(out) == 0.9912 and "277 epochs" in out


def test_progress_names_the_test_split(capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = _run(capsys, "train", "--epochs", "2")
    assert (
        status == 0 and re.search(r"2/2 loss [\d.]+, test [\d.]+", err) and "validation" not in err
    )


def test_no_compile_trains_with_the_eager_step(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--no-compile`` reaches the estimator: no step is captured, and the run is the same."""
    from portable_mlp.compiled import StepPlan

    made = []
    real = StepPlan.capture
    monkeypatch.setattr(StepPlan, "capture", lambda plan: made.append(1) or real(plan))
    argv = ("train", "--epochs", "3", "--hidden", "8")
    captured = _run(capsys, *argv)
    assert captured[0] == 0 and len(made) == 1
    eager = _run(capsys, *argv, "--no-compile")
    assert eager[0] == 0 and len(made) == 1
    table = [line for line in captured[1].splitlines() if "│" in line]
    assert table and table == [line for line in eager[1].splitlines() if "│" in line]


def test_stopping_and_clipping_flags(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = _run(capsys, "train", "--tol", "10", "--n-iter-no-change", "2", "--quiet")
    assert status == 0 and "4 epochs" in out and err == ""  # epoch 1 improves on inf only
    status, _, err = _run(capsys, "train", "--optimizer", "sgd", "--lr", "1e30", "--quiet")
    assert status == 1 and "Try a smaller --lr (it was 1e+30) or --max-grad-norm 1." in err
    argv = ("train", "--optimizer", "sgd", "--lr", "1e38", "--max-grad-norm", "0.5", "--quiet")
    status, _, err = _run(capsys, *argv, "--dtype", "float32")  # clipped, but beyond float32
    assert status == 1 and "or a smaller --max-grad-norm." in err
    status, _, err = _run(capsys, "train", "--max-grad-norm", "0", "--quiet")
    assert status == 2 and "argument --max-grad-norm: expected a finite float > 0" in err


def test_plot_title_kept_epoch_and_formats(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("matplotlib")
    from matplotlib.figure import Figure

    figures: list[Figure] = []
    savefig = Figure.savefig
    monkeypatch.setattr(
        Figure, "savefig", lambda f, *a, **k: figures.append(f) or savefig(f, *a, **k)
    )
    jpg = tmp_path / "curves.jpg"
    argv = ("train", "--early-stopping", "--n-iter-no-change", "3", "--lr", "0.01", "--quiet")
    status, out, _ = _run(capsys, *argv, "--plot", str(jpg))
    assert status == 0 and jpg.read_bytes()[:3] == b"\xff\xd8\xff"  # a JPEG
    (fig,) = figures
    assert fig.get_suptitle() == "breast_cancer: MLP 30-64-1 (adam), numpy on cpu, float64"
    clf_epochs = int(re.search(r"(\d+) epochs", out).group(1))
    for ax in fig.axes:  # the epoch whose weights early stopping kept, marked on both
        (kept,) = [line for line in ax.get_lines() if "weights kept" in line.get_label()]
        assert 1 <= kept.get_xdata()[0] < clf_epochs
    status, out, err = _run(capsys, "train", "--plot", str(tmp_path / "curves.gif"))
    assert status == 2 and out == "" and len(err.strip().splitlines()) == 1
    assert "expected a .png, .jpg, .svg or .pdf file name" in err


def test_integer_labels_stay_integers(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    X, y = datasets.load("breast_cancer")
    data = tmp_path / "ints.csv"
    with data.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["label", *datasets.feature_names("breast_cancer")])
        writer.writerows([3 * label + 1, *row] for row, label in zip(X, y, strict=True))
    model = tmp_path / "m.safetensors"
    argv = ("train", "--data", str(data), "--target", "label", "--epochs", "5", "--quiet")
    assert _run(capsys, *argv, "--save", str(model))[0] == 0
    status, out, _ = _run(capsys, "predict", str(model), str(data))
    rows = out.splitlines()
    assert status == 0 and rows[0] == "prediction,proba_1,proba_4"
    assert {r.split(",")[0] for r in rows[1:]} == {"1", "4"}


def test_predict_needs_the_standardizer(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    pd = pytest.importorskip("pandas")
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    data = _csv(tmp_path / "cancer.csv")
    X, y = datasets.load("breast_cancer")
    labels = np.array(["malignant", "benign"])[y]
    clf = pm.MLPClassifier((16,), max_iter=50, random_state=0)
    bare = tmp_path / "bare.safetensors"
    with pytest.warns(pm.ConvergenceWarning):
        pm.save(clf.fit(datasets.Standardizer().fit_transform(X), labels), bare)
    status, out, err = _run(capsys, "predict", str(bare), str(data))
    assert status == 2 and out == "" and len(err.strip().splitlines()) == 1
    assert "holds no standardizer" in err and "--unscaled" in err
    features = tmp_path / "features.csv"  # without stored names: the model's columns only
    np.savetxt(
        features,
        datasets.Standardizer().fit_transform(X),
        delimiter=",",
        comments="",
        header=",".join(datasets.feature_names("breast_cancer")),
    )
    status, out, _ = _run(capsys, "predict", str(bare), str(features), "--unscaled")
    predicted = [row.split(",")[0] for row in out.splitlines()[1:]]
    assert status == 0 and np.mean(np.array(predicted) == labels) > 0.95
    raw = tmp_path / "raw.csv"
    names = datasets.feature_names("breast_cancer")
    np.savetxt(raw, X, delimiter=",", comments="", header=",".join(names))
    frame = pd.DataFrame(X, columns=names)
    # A DataFrame's columns are stored and picked from the file; else the file is the features.
    for scaler, fit_on, rows in (
        (StandardScaler(), frame, data),
        (datasets.Standardizer(), X, raw),
    ):
        pipe = make_pipeline(scaler, pm.MLPClassifier((16,), max_iter=50, random_state=0))
        with pytest.warns(pm.ConvergenceWarning):
            pipe.fit(fit_on, labels)
        path = tmp_path / f"{type(scaler).__name__}.safetensors"
        pm.save(pipe, path)
        status, out, _ = _run(capsys, "predict", str(path), str(rows))
        predicted = [row.split(",")[0] for row in out.splitlines()[1:]]
        assert status == 0 and np.mean(np.array(predicted) == labels) > 0.95
        assert np.array_equal(pm.load(path).predict(X[:5]), pipe[-1].predict(X[:5]))


@pytest.mark.skipif("jax" not in selected_backends(), reason="JAX is not in this run")
def test_float64_on_jax_from_a_shell(tmp_path: Path) -> None:
    # A fresh process: this one may have enabled float64 on JAX already (the test matrix does).
    model, data = tmp_path / "m.safetensors", _csv(tmp_path / "cancer.csv")
    cli = [sys.executable, "-m", "portable_mlp"]
    train = [*cli, "train", "--backend", "jax", "--dtype", "float64", "--epochs", "3", "--quiet"]
    for argv in (
        [*train, "--save", str(model)],
        [*cli, "predict", str(model), str(data), "--backend", "jax"],
    ):
        done = subprocess.run(argv, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
    code = (
        "import portable_mlp as pm\n"
        "try:\n"
        f"    pm.load({str(model)!r}, backend='jax')\n"
        "except pm.BackendError as exc:\n"
        "    print(exc)\n"
        f"back = pm.load({str(model)!r}, backend='jax', dtype='float32')\n"
        "print(back.model_.placement.dtype_name)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "holds a float64 model" in done.stdout and "dtype='float32'" in done.stdout
    assert done.stdout.strip().endswith("float32")  # the dtype name of the loaded model


def test_an_unknown_option_is_one_line_naming_its_command(
    capsys: pytest.CaptureFixture[str],
) -> None:
    status, out, err = _run(capsys, "train", "--bogus", "1")
    assert status == 2 and out == ""
    assert err == (
        "portable-mlp train: error: unrecognized arguments: --bogus 1 "
        "(see portable-mlp train --help)\n"
    )


@pytest.mark.skipif("jax" not in selected_backends(), reason="JAX is not in this run")
def test_jax_keeps_its_compiled_programs_between_runs(tmp_path: Path) -> None:
    folder = tmp_path / "compiled"
    train = [sys.executable, "-m", "portable_mlp", "train", "--backend", "jax", "--epochs", "2"]
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "xdg")}
    env.pop("PORTABLE_MLP_COMPILE_CACHE")
    counts = []
    for _ in range(2):
        argv = [*train, "--quiet", "--compile-cache", str(folder)]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=300, env=env)
        assert done.returncode == 0, done.stderr
        counts.append(len(list(folder.iterdir())))
    # The second run finds every program it needs: it compiles, and so writes, nothing new.
    assert counts[0] > 0 and counts[1] == counts[0]
    assert folder.stat().st_mode & 0o077 == 0  # the user's own: JAX runs what it finds there
    assert not (tmp_path / "xdg").exists()  # the option, not the default folder
    # By default the user's cache folder; "off" keeps nothing.
    for option, made in (([], True), (["--compile-cache", "off"], False)):
        shutil.rmtree(tmp_path / "xdg", ignore_errors=True)
        done = subprocess.run(
            [*train, "--quiet", *option], capture_output=True, text=True, timeout=300, env=env
        )
        assert done.returncode == 0, done.stderr
        assert (tmp_path / "xdg" / "portable-mlp" / "compiled").is_dir() == made


def test_a_backend_that_does_not_compile_keeps_nothing(tmp_path: Path) -> None:
    folder = tmp_path / "compiled"
    status = main(["train", "--epochs", "2", "--quiet", "--compile-cache", str(folder)])
    assert status == 0 and not folder.exists()


@pytest.mark.skipif("jax" not in selected_backends(), reason="JAX is not in this run")
@pytest.mark.parametrize("problem", ["shared", "unmakeable"])
def test_a_compile_cache_that_cannot_be_trusted_or_made_is_skipped(
    tmp_path: Path, problem: str
) -> None:
    if problem == "shared":
        folder = tmp_path / "shared"
        folder.mkdir()
        folder.chmod(0o777)  # others could plant programs there
    else:
        (tmp_path / "a-file").write_text("not a folder\n")  # refused even to root
        folder = tmp_path / "a-file" / "compiled"
    argv = [sys.executable, "-m", "portable_mlp", "train", "--backend", "jax", "--epochs", "2"]
    argv += ["--quiet", "--compile-cache", str(folder)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr  # trained, without the cache
    assert "note: compiling afresh, not keeping compiled programs" in done.stderr
    assert str(folder) in done.stderr
    assert not folder.exists() or not any(folder.iterdir())
