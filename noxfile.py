"""Sessions: ``nox -s tests`` (one per backend), ``lowest``, ``reference``, ``lint``, ``typecheck``.

Each ``tests(<backend>)`` session installs only that backend, plus PyTorch as the reference the
gradients are checked against, and sets ``PORTABLE_MLP_BACKEND`` so a missing backend is an
error rather than a silent skip. ``lowest`` runs the NumPy suite with the package's own
dependencies at the lowest versions pyproject.toml allows.

Environments are made by uv where it is installed (``pip install "nox[uv]"``): every session
still installs all it needs from the project's files, but a package (PyTorch above all) is
downloaded once into uv's cache and hard-linked into each environment, not copied. Without uv,
nox falls back to virtualenv and pip. To pin a torch build, set ``UV_CONSTRAINT`` (and
``PIP_CONSTRAINT`` for the fallback); CI does.
"""

from __future__ import annotations

import shutil
import subprocess

import nox
from packaging.requirements import Requirement

nox.needs_version = ">=2025.2.9"  # nox.project.dependency_groups
nox.options.default_venv_backend = "uv|virtualenv"
nox.options.sessions = ["tests", "lowest", "reference", "lint", "typecheck"]
nox.options.reuse_existing_virtualenvs = True

PYPROJECT = nox.project.load_toml("pyproject.toml")
TEST_DEPS = nox.project.dependency_groups(PYPROJECT, "test")
BACKEND_PACKAGES = {
    "numpy": [],
    "array_api_strict": ["array-api-strict"],
    "torch": [],  # already there as the reference
    "jax": ["jax"],
    "cupy": ["cupy-cuda12x"],
}
# Optional stacks whose tests need a session of their own backend: ONNX export (a checkpoint
# from torch or JAX exports what one from NumPy does) and the Dask recipes (NumPy models).
EXTRAS = {"numpy": "[onnx,dask]", "torch": "[onnx]", "jax": "[onnx]"}
PYTEST = ("pytest", "--ignore=tests/reference")


def _has_nvidia_gpu() -> bool:
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return False
    return subprocess.run([smi, "-L"], capture_output=True, check=False).returncode == 0


def _floors(requirements: list[str]) -> list[str]:
    """``name>=x`` -> ``name==x`` for every requirement with a lower bound."""
    pins = []
    for text in requirements:
        req = Requirement(text)
        lows = [spec.version for spec in req.specifier if spec.operator in (">=", "~=", "==")]
        if lows:
            pins.append(f"{req.name}=={lows[0]}")
    return pins


def _install(session: nox.Session, *packages: str) -> None:
    session.log(
        "installing the package, its test tools and PyTorch (the reference): a first run "
        "downloads PyTorch once into uv's cache (on Linux from PyPI a CUDA build, several GB)"
    )
    session.install(*packages, silent=False)


@nox.session
@nox.parametrize("backend", list(BACKEND_PACKAGES))
def tests(session: nox.Session, backend: str) -> None:
    """The test suite on one backend."""
    if backend == "cupy" and not _has_nvidia_gpu():
        session.skip(
            "cupy: no NVIDIA GPU here (nvidia-smi finds none); run scripts/gpu-check.sh on one"
        )
    package = "." + EXTRAS.get(backend, "")
    _install(session, "-e", package, *TEST_DEPS, *BACKEND_PACKAGES[backend])
    session.run(*PYTEST, *session.posargs, env={"PORTABLE_MLP_BACKEND": backend})


@nox.session
def lowest(session: nox.Session) -> None:
    """The suite on NumPy with the package's dependencies at their declared floors."""
    floors = _floors(PYPROJECT["project"]["dependencies"])
    _install(session, "-e", ".", *TEST_DEPS, *floors)
    names = [pin.split("==")[0] for pin in floors]
    session.run(
        "python",
        "-c",
        "import sys; from importlib.metadata import version; "
        "print('installed:', *(f'{n}=={version(n)}' for n in sys.argv[1:]))",
        *names,
    )
    session.run(*PYTEST, *session.posargs, env={"PORTABLE_MLP_BACKEND": "numpy"})


@nox.session
def reference(session: nox.Session) -> None:
    """The seed's functional API against TensorFlow/Keras gradients, both layouts."""
    session.install("-e", ".", *TEST_DEPS, "tensorflow-cpu", "keras")
    session.run(
        "pytest",
        "tests/reference",
        *session.posargs,
        env={
            "PORTABLE_MLP_BACKEND": "numpy",
            "KERAS_BACKEND": "tensorflow",
            "TF_CPP_MIN_LOG_LEVEL": "2",
        },
    )


@nox.session
def lint(session: nox.Session) -> None:
    """ruff over the package, tests and scripts."""
    session.install("ruff")
    session.run("ruff", "check", ".")


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy (strict) over src/."""
    session.install("-e", ".", "mypy")
    session.run("mypy")


@nox.session
def bench(session: nox.Session) -> None:
    """Timing and memory of a training step against references; not a test, not by default.

    ``nox -s bench -- --quick``: arguments go to benchmarks/bench.py (default --out
    benchmarks/results).
    """
    session.install(
        "-e",
        ".",
        "torch",
        "jax",
        "array-api-strict",
        "scikit-learn",
        "matplotlib",
        "threadpoolctl",
    )
    # A forced OpenBLAS core type or cache size (set for other work on some machines) can pick a
    # slower kernel; the benchmark wants this machine's own, and reports the one that ran.
    env: dict[str, str | None] = {"OPENBLAS_CORETYPE": None, "OPENBLAS_L2_SIZE": None}
    session.run("python", "benchmarks/bench.py", *session.posargs, env=env)
