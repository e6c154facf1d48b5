"""The ``portable-mlp`` command line: ``train``, ``predict``, ``check``, ``info`` and ``export``.

Misuse (an unknown backend, a missing CUDA device, a bad file or column, labels of the wrong kind,
a non-finite hyperparameter, an output folder that does not exist) is a one-line error on stderr
and exit status 2, without a traceback; set ``PORTABLE_MLP_TRACEBACK=1`` to see one. A diverging
run exits with status 1, and so does any error nothing checked for (still one line, naming its
type).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import io
import math
import os
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

from . import __version__, _backend, _io, checkpoints, datasets, distributed, estimator
from ._progress import console
from ._validation import check_class_labels, encode_labels
from .checkpoints import CheckpointError
from .estimator import MLPClassifier, TrainingError
from .layers import ACTIVATIONS
from .optim import OPTIMIZERS


class UsageError(ValueError):
    """A command-line argument that cannot work (reported like any other misuse)."""


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a usage error already printed
        return exc.code if isinstance(exc.code, int) else 2
    try:
        _check_outputs(args)
        status: int = args.run(args)
        return status
    except TrainingError as exc:
        return _fail(args, exc, 1)
    except (
        ValueError,  # BackendError, DataError, CheckpointError, UsageError, bad labels, ...
        TypeError,  # a dtype the backend does not have
        OSError,  # missing files, directories, permissions
    ) as exc:
        return _fail(args, exc, 2)
    except Exception as exc:  # a case the checks missed: still one line, with its type
        return _fail(args, exc, 1, unexpected=True)


def _fail(
    args: argparse.Namespace, exc: BaseException, status: int, unexpected: bool = False
) -> int:
    if os.environ.get("PORTABLE_MLP_TRACEBACK"):
        raise exc
    message = str(exc).splitlines()[0] if str(exc).strip() else type(exc).__name__
    if unexpected:
        message = (
            f"unexpected {type(exc).__name__}: {message} (PORTABLE_MLP_TRACEBACK=1 shows where)"
        )
    print(f"portable-mlp {args.command}: error: {message}", file=sys.stderr)
    return status


class _Parser(argparse.ArgumentParser):
    """argparse with one-line usage errors, like every other misuse (exit status 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")

    def parse_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> argparse.Namespace:
        # argparse reports an unknown option on the top parser; name the command it went with.
        parsed, extra = self.parse_known_args(args, namespace)
        if extra:
            command = getattr(parsed, "command", None)
            prog = f"{self.prog} {command}" if command else self.prog
            message = f"unrecognized arguments: {' '.join(extra)} (see {prog} --help)"
            self.exit(2, f"{prog}: error: {message}\n")
        return parsed


def _check_outputs(args: argparse.Namespace) -> None:
    """Refuse, before any work, an output path whose folder is missing or that is a folder."""
    for option in ("save", "plot", "output"):
        path = getattr(args, option, None)
        if path is None:
            continue
        folder = path.parent
        if not folder.is_dir():
            raise UsageError(f"--{option} {path}: no such directory {str(folder)!r}")
        if path.is_dir():
            raise UsageError(f"--{option} {path}: is a directory; expected a file name")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="portable-mlp",
        description="Train and check multilayer perceptrons with hand-written backprop on any "
        "array backend (NumPy, PyTorch, JAX, CuPy, array-api-strict).",
    )
    parser.add_argument("--version", action="version", version=f"portable-mlp {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = commands.add_parser("train", help="train a classifier on a built-in dataset or a file")
    source = train.add_mutually_exclusive_group()
    source.add_argument(
        "--dataset", choices=datasets.DATASETS, help="a built-in dataset (default: breast_cancer)"
    )
    source.add_argument("--data", type=Path, help="a .csv or .npz file (with --target)")
    train.add_argument("--target", help="the label column of --data")
    _backend_arguments(train)
    train.add_argument(
        "--hidden", type=_sizes, default=(64,), help="hidden layer sizes, e.g. 32,16 (default: 64)"
    )
    train.add_argument("--activation", choices=list(ACTIVATIONS), default="relu")
    train.add_argument("--optimizer", choices=list(OPTIMIZERS), default="adam")
    train.add_argument("--lr", type=_number(float, 0, False), default=1e-3, help="default: 0.001")
    train.add_argument(
        "--epochs",
        type=_number(int, 0, False),
        default=500,
        help="at most: training stops once the loss stalls (default: 500)",
    )
    train.add_argument(
        "--tol",
        type=_number(float, 0, True),
        default=1e-4,
        help="the least improvement of the loss (or, with --early-stopping, the validation "
        "accuracy) that counts (default: 1e-4)",
    )
    train.add_argument(
        "--n-iter-no-change",
        type=_number(int, 0, False),
        default=10,
        help="stop after this many epochs in a row without such improvement (default: 10)",
    )
    train.add_argument(
        "--max-grad-norm",
        type=_number(float, 0, False),
        help="clip the gradients to this global norm (default: no clipping)",
    )
    train.add_argument("--batch-size", type=_number(int, 0, False), default=64, help="default: 64")
    train.add_argument(
        "--alpha", type=_number(float, 0, True), default=1e-4, help="L2 penalty (default: 1e-4)"
    )
    train.add_argument(
        "--test-size", type=_number(float), default=0.2, help="held-out fraction (0.2)"
    )
    train.add_argument(
        "--seed", type=_number(int, 0, True), default=0, help="for weights, split and shuffling"
    )
    train.add_argument(
        "--early-stopping",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="hold out 10%% of the training split, stop when its accuracy stalls and keep the "
        "best weights (default: off, as in scikit-learn)",
    )
    train.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="train with the step captured by the backend (jax.jit, CUDA graphs; default), or "
        "step by step without capture (--no-compile)",
    )
    train.add_argument("--save", type=Path, help="write the trained model to this checkpoint")
    train.add_argument(
        "--plot", type=Path, help="write the training curves: a .png, .jpg, .svg or .pdf file"
    )
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    train.set_defaults(run=_train_on_every_rank)

    predict = commands.add_parser("predict", help="predict with a checkpoint; CSV out")
    predict.add_argument("model", type=Path, help="a checkpoint written by train --save")
    predict.add_argument("data", type=Path, help="a .csv or .npz file with the feature columns")
    predict.add_argument("--output", type=Path, help="the CSV to write (default: stdout)")
    predict.add_argument(
        "--unscaled",
        action="store_true",
        help="use a model saved without a standardizer on the features as they are",
    )
    _backend_arguments(predict)
    predict.set_defaults(run=_predict)

    check = commands.add_parser(
        "check", help="gradient parity against PyTorch autograd on every installed backend"
    )
    check.set_defaults(run=_check)

    info = commands.add_parser("info", help="installed backends and their devices")
    info.set_defaults(run=_info)

    export = commands.add_parser("export", help="write a checkpoint as an ONNX model")
    export.add_argument("model", type=Path, help="a checkpoint written by train --save")
    export.add_argument("output", type=Path, help="the .onnx file to write")
    export.add_argument(
        "--opset", type=_number(int, 0, False), help="default: the one ndonnx builds"
    )
    export.set_defaults(run=_export)
    return parser


def _backend_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--backend", default="numpy", help="numpy (default), torch, jax, cupy, array_api_strict"
    )
    parser.add_argument("--device", help="e.g. cpu, cuda, cuda:1 (default: the backend's)")
    parser.add_argument(
        "--dtype",
        choices=("float32", "float64"),
        help="default: the backend's default floating dtype",
    )
    parser.add_argument(
        "--compile-cache",
        metavar="DIR",
        help="where a compiling backend (JAX) keeps its compiled programs between runs, or "
        "'off' (default: $PORTABLE_MLP_COMPILE_CACHE, else portable-mlp/compiled in the user's "
        "cache folder)",
    )


def _sizes(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected sizes like 32,16, got {text!r}") from None
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"sizes must be positive integers, got {text!r}")
    return sizes


def _number(kind: type, bound: float | None = None, inclusive: bool = True) -> Any:
    """An argparse type: a finite ``kind`` (int or float), above ``bound`` where one is given
    (or equal to it, if ``inclusive``). ``nan`` and ``inf`` never pass: as a learning rate or a
    penalty they would only surface, later, as a diverged run."""
    wanted = "a finite float" if kind is float else f"an {kind.__name__}"
    if bound is not None:
        wanted += f" {'>=' if inclusive else '>'} {bound}"

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {wanted}, got {text!r}") from None
        if not math.isfinite(value) or (
            bound is not None and not (value >= bound if inclusive else value > bound)
        ):
            raise argparse.ArgumentTypeError(f"expected {wanted}, got {text!r}")
        return value

    return parse


# ---------------------------------------------------------------------------- train
def _train_on_every_rank(args: argparse.Namespace) -> int:
    """``train``, data-parallel when ``torchrun`` launched it: every rank trains its share of
    each global batch (``--batch-size`` rows over all ranks), rank 0 reports and writes."""
    distributed.init()  # torchrun's process group; nothing under plain python
    try:
        if args.device == "cuda" and distributed.is_initialized():
            args.device = f"cuda:{distributed.local_rank()}"  # one GPU per process
        return _train(args)
    finally:
        distributed.shutdown()


def _train(args: argparse.Namespace) -> int:
    if args.data is None and args.target is not None:
        raise UsageError("--target goes with --data")
    if args.data is not None and args.target is None:
        raise UsageError("--data needs --target COLUMN, the label column")
    if not 0.0 < args.test_size < 1.0:
        raise UsageError(f"--test-size must be in (0, 1), got {args.test_size}")
    if args.plot is not None:
        _plot_format(args.plot)  # fail before training, not after
    if args.data is not None:
        X, y, names = datasets.load_file(args.data, args.target)
        source = str(args.data)
    else:
        name = args.dataset or "breast_cancer"
        X, y, names = (*datasets.load(name), datasets.feature_names(name))
        source = name
    assert y is not None
    labels, _ = check_class_labels(y, X.shape[0])
    X_train, X_test, y_train, y_test = datasets.train_test_split(
        X, labels, test_size=args.test_size, rng=args.seed
    )
    scaler = datasets.Standardizer().fit(X_train, feature_names=names)  # the training split only
    X_train, X_test = scaler.transform(X_train), scaler.transform(X_test)
    clf = MLPClassifier(
        args.hidden,
        args.activation,
        solver=args.optimizer,
        alpha=args.alpha,
        batch_size=args.batch_size,
        learning_rate_init=args.lr,
        max_iter=args.epochs,
        tol=args.tol,
        n_iter_no_change=args.n_iter_no_change,
        max_grad_norm=args.max_grad_norm,
        compile=args.compile,
        random_state=args.seed,
        early_stopping=args.early_stopping,
        verbose=not args.quiet,
        backend=args.backend,
        device=args.device,
        dtype=args.dtype,
    )
    _prepare_backend(args, args.dtype)
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UserWarning)  # ConvergenceWarning is one
        try:  # the test split is watched for the curves only
            clf.fit(X_train, y_train, eval_set=(X_test, y_test), eval_name="test")
        except TrainingError as exc:  # advice in the command line's terms
            clip = "a smaller --max-grad-norm" if args.max_grad_norm else "--max-grad-norm 1"
            advice = f"Try a smaller --lr (it was {args.lr:g}) or {clip}."
            raise TrainingError(str(exc).replace(TrainingError.advice, advice)) from None
    seconds = time.perf_counter() - start
    if distributed.rank() != 0:  # the ranks hold the same model: one report, one file
        return 0
    _report(clf, source, (X_train, y_train), (X_test, y_test), seconds)
    for w in caught:
        if issubclass(w.category, estimator.ConvergenceWarning):
            print(f"note: {w.message} (raise --epochs?)", file=sys.stderr)
    if args.save is not None:
        meta = {"standardizer": scaler.to_dict(), "feature_names": names, "source": source}
        checkpoints.save(clf, args.save, metadata=meta)
        print(f"saved {args.save}")
    if args.plot is not None:
        _plot(clf, args.plot, source)
        print(f"plotted {args.plot}")
    return 0


def _prepare_backend(args: argparse.Namespace, dtype: str | None) -> None:
    """The backend imported and set up before any array is made or timed: float64 where the
    backend must be told (JAX; a shell user cannot call jax.config.update), and the folder where
    a compiling backend keeps its programs, so that a second run does not compile again."""
    entry = _backend.backend_of(_backend.namespace(args.backend))
    if dtype == "float64":
        entry.enable_float64()
    folder = args.compile_cache or os.environ.get("PORTABLE_MLP_COMPILE_CACHE")
    if folder is None:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        folder = os.path.join(base, "portable-mlp", "compiled")
    if folder != "off":
        try:
            entry.keep_compiled(folder)
        except OSError as exc:  # a run without the cache is slower, not wrong
            print(f"note: compiling afresh, not keeping compiled programs: {exc}", file=sys.stderr)
    _backend.placement(args.backend, args.device, dtype)  # refused here, if it is wrong


def _report(
    clf: MLPClassifier, source: str, train: tuple[Any, Any], test: tuple[Any, Any], seconds: float
) -> None:
    from rich.table import Table

    model = clf.model_
    title = (
        f"{source}: MLP {'-'.join(map(str, model.sizes))} on {model.backend} "
        f"({model.device}, {_backend.dtype_name(model.dtype)}), {clf.n_iter_} epochs "
        f"in {seconds:.2f} s"
    )
    print(title)
    table = Table()
    for column in ("split", "samples", "loss", "accuracy"):
        table.add_column(column, justify="left" if column == "split" else "right")
    for split, (X, y) in (("train", train), ("test", test)):
        proba = clf.predict_proba(X)
        table.add_row(
            split, str(len(y)), f"{_log_loss(clf, proba, y):.4f}", f"{clf.score(X, y):.4f}"
        )
    console().print(table)


def _log_loss(clf: MLPClassifier, proba: Any, y: Any) -> float:
    """Mean cross-entropy of predicted probabilities, clipped like scikit-learn's log_loss."""
    codes = encode_labels(y, clf.classes_)
    p = np.clip(proba[np.arange(len(codes)), codes], 1e-15, 1.0)
    return float(-np.mean(np.log(p)))


def _matplotlib() -> Any:
    try:
        matplotlib = importlib.import_module("matplotlib")
    except ImportError:
        raise UsageError(
            "--plot needs matplotlib: pip install matplotlib (or portable-mlp[plot])"
        ) from None
    matplotlib.use("Agg")
    return importlib.import_module("matplotlib.pyplot")


# The formats --plot writes, by file suffix (matplotlib's names).
_PLOT_FORMATS = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".svg": "svg", ".pdf": "pdf"}


def _plot_format(path: Path) -> str:
    """The image format of ``path`` if it can be written here, else a UsageError saying why."""
    fmt = _PLOT_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise UsageError(f"--plot {path}: expected a .png, .jpg, .svg or .pdf file name")
    _matplotlib()
    if fmt == "jpeg" and importlib.util.find_spec("PIL") is None:
        raise UsageError(f"--plot {path}: JPEG needs Pillow (pip install pillow); or write .png")
    return fmt


def _plot(clf: MLPClassifier, path: Path, source: str) -> None:
    """Loss and accuracy per epoch: training, the held-out test split (watched, never used to
    decide anything) and, with early stopping, the validation split it stops on and the epoch
    whose weights it kept."""
    plt = _matplotlib()
    epochs = range(1, len(clf.loss_curve_) + 1)
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(10, 4.2))
    fig.suptitle(
        f"{source}: MLP {'-'.join(map(str, clf.model_.sizes))} ({clf.solver}), "
        f"{clf.model_.placement.describe()}"
    )
    loss_ax.plot(epochs, clf.loss_curve_, label="training")
    if clf.eval_loss_curve_:
        loss_ax.plot(epochs, clf.eval_loss_curve_, label="test (held out)")
        acc_ax.plot(epochs, clf.eval_scores_, label="test (held out)", color="tab:orange")
    if clf.validation_scores_:
        acc_ax.plot(epochs, clf.validation_scores_, label="validation", color="tab:green")
        kept = 1 + int(np.argmax(clf.validation_scores_))  # the first best: the weights kept
        for ax in (loss_ax, acc_ax):
            ax.axvline(kept, color="grey", linestyle="--", label=f"weights kept (epoch {kept})")
    loss_ax.set(xlabel="epoch", ylabel="loss", title="loss", yscale="log")
    acc_ax.set(xlabel="epoch", ylabel="accuracy", title="accuracy")
    for ax in (loss_ax, acc_ax):
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    with _io.atomic_writer(path) as f:
        fig.savefig(f, format=_plot_format(path), dpi=120)
    plt.close(fig)


# ---------------------------------------------------------------------------- predict
def _predict(args: argparse.Namespace) -> int:
    _prepare_backend(args, args.dtype or checkpoints.stored_dtype(args.model))
    clf = checkpoints.load(args.model, backend=args.backend, device=args.device, dtype=args.dtype)
    if not isinstance(clf, MLPClassifier):
        raise CheckpointError(
            f"{args.model}: holds a {type(clf).__name__}, not a trained classifier"
        )
    names, scaler = _preprocessing(args.model, checkpoints.read_metadata(args.model))
    if scaler is None and not args.unscaled:
        raise UsageError(
            f"{args.model} holds no standardizer, so the scale of its features is unknown: save "
            "it with one (pm.save(make_pipeline(StandardScaler(), clf), path)), or pass "
            "--unscaled if it takes the features as they are"
        )
    if names is None and hasattr(clf, "feature_names_in_"):
        names = clf.feature_names_in_.tolist()
    X, _, _ = datasets.load_file(args.data, features=names)
    if scaler is not None:
        X = scaler.transform(X)
    proba = clf.predict_proba(X)
    labels = clf.classes_[proba.argmax(axis=1)]
    text = io.StringIO()
    text.write(",".join(["prediction", *(f"proba_{c}" for c in clf.classes_)]) + "\n")
    for label, row in zip(labels, proba, strict=True):
        text.write(",".join([str(label), *(f"{p:.6g}" for p in row)]) + "\n")
    if args.output is None:
        sys.stdout.write(text.getvalue())
    else:
        _io.write_atomic(args.output, text.getvalue().encode())
        print(f"wrote {len(labels)} predictions to {args.output}", file=sys.stderr)
    return 0


def _preprocessing(
    path: Path, meta: dict[str, Any]
) -> tuple[list[str] | None, datasets.Standardizer | None]:
    """The feature columns and the standardizer that ``train --save`` stored with a model."""
    names = meta.get("feature_names")
    if names is not None and not (
        isinstance(names, list) and all(isinstance(n, str) for n in names)
    ):
        raise CheckpointError(f"{path}: metadata feature_names is not a list of column names")
    stored = meta.get("standardizer")
    if stored is None:
        return names, None
    if not isinstance(stored, dict):
        raise CheckpointError(f"{path}: metadata standardizer is not a JSON object")
    try:
        return names, datasets.Standardizer.from_dict(stored)
    except (ValueError, TypeError) as exc:
        raise CheckpointError(f"{path}: metadata standardizer: {exc}") from None


# ---------------------------------------------------------------------------- check
def _check(args: argparse.Namespace) -> int:
    from rich import box
    from rich.table import Table

    from .testing import TOLERANCE, parity_report, reference_missing

    missing = reference_missing()
    if missing:
        raise UsageError(f"check needs {missing}")

    for entry in _backend.TABLE.values():  # float64 where it must be enabled, before any array
        if entry.installed():
            entry.enable_float64()
    # Within 80 columns: no outer border, short headers, and what is long (a GPU's name, why a
    # row was skipped) in notes under the table.
    table = Table(
        title="gradients against PyTorch autograd (float64)",
        box=box.SIMPLE_HEAD,
        show_edge=False,
        pad_edge=False,
        collapse_padding=True,
    )
    for column in ("backend", "device", "dtype", "rel. error", "worst", "limit", "result"):
        table.add_column(column, justify="right" if column in ("rel. error", "limit") else "left")
    failed = False
    notes: dict[str, None] = {}  # in order, once each
    for name, device in _usable_devices():
        label, _, model = _device_label(name, device).partition(" (")
        if model:
            notes[f"{label}: {model.rstrip(')')}"] = None
        for dtype in ("float64", "float32"):
            try:
                errors = parity_report(name, device, dtype)
            except (ValueError, TypeError) as exc:  # e.g. a device without float64
                notes[f"{name} on {label}, {dtype}: skipped: {str(exc).splitlines()[0]}"] = None
                table.add_row(name, label, dtype, "-", "-", "-", "skipped")
                continue
            worst = max(errors, key=lambda k: errors[k])
            ok = errors[worst] <= TOLERANCE[dtype]
            failed |= not ok
            table.add_row(
                name,
                label,
                dtype,
                f"{errors[worst]:.2e}",
                worst,
                f"{TOLERANCE[dtype]:.0e}",
                "pass" if ok else "FAIL",
            )
    console().print(table)
    for note in notes:
        console().print(note, soft_wrap=False)
    return 1 if failed else 0


def _usable_devices() -> list[tuple[str, Any]]:
    """(backend, device) pairs that can run here: each backend's default, plus CUDA devices."""
    found: list[tuple[str, Any]] = []
    for name, status, devices in _backends():
        if status == "ok":
            found.extend((name, d) for d in devices)
    return found


# ---------------------------------------------------------------------------- info
def _backends() -> list[tuple[str, str, list[Any]]]:
    """(backend, status, devices to test) for every backend this library knows."""
    rows: list[tuple[str, str, list[Any]]] = []
    for name, entry in _backend.TABLE.items():
        if not entry.installed():
            rows.append((name, "not installed", []))
            continue
        try:
            devices = entry.test_devices()
        except Exception as exc:  # a CUDA library with no driver raises its own errors
            rows.append((name, f"no usable device ({str(exc).splitlines()[0]})", []))
            continue
        rows.append((name, "ok", devices) if devices else (name, "no usable device", []))
    return rows


def _info(args: argparse.Namespace) -> int:
    from rich.table import Table

    table = Table(title=f"portable-mlp {__version__}: backends")
    for column in ("backend", "version", "status", "devices"):
        table.add_column(column)
    for name, status, devices in _backends():
        entry = _backend.TABLE[name]
        version = entry.version() if entry.installed() else "-"
        table.add_row(name, version, status, ", ".join(_device_label(name, d) for d in devices))
    console().print(table)
    return 0


def _device_label(name: str, device: Any) -> str:
    return _backend.TABLE[name].describe(device)


# ---------------------------------------------------------------------------- export
def _export(args: argparse.Namespace) -> int:
    from .export import export_onnx

    try:
        proto = export_onnx(args.model, args.output, opset=args.opset)
    except ImportError as exc:  # the [onnx] extra is not installed: say what to install
        raise UsageError(str(exc)) from None
    (x,) = proto.graph.input
    dims = ", ".join(d.dim_param or str(d.dim_value) for d in x.type.tensor_type.shape.dim)
    outputs = ", ".join(o.name for o in proto.graph.output)
    opset = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    print(f"wrote {args.output}: {x.name} ({dims}) -> {outputs}, ONNX opset {opset}")
    return 0
