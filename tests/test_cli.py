"""The ``portable-mlp`` command line, run in-process through ``main``."""

from __future__ import annotations

import csv
import re
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
    capsys: pytest.CaptureFixture[str], selected: list[str]
) -> None:
    status, out, _ = _run(capsys, "check")
    assert status == 0
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
