"""The test matrix: every installed backend, on its default and a non-default device, in float32
and float64. NumPy (through PyTorch autograd in float64) is the reference all are held to.

``PORTABLE_MLP_BACKEND=torch`` (a comma-separated list) limits a run to some backends; nox's
``tests(<backend>)`` sessions set it. A backend that is asked for but missing is an error, not a
silent skip.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

import portable_mlp as pm
from portable_mlp import _backend
from portable_mlp.testing import relative_error

# Relative error allowed against float64 autograd, by the dtype of the computation (stated once).
TOL = {"float64": 1e-10, "float32": 1e-4}
DTYPES = ("float32", "float64")


def _selected() -> list[str]:
    env = os.environ.get("PORTABLE_MLP_BACKEND", "").strip()
    if not env:
        return _backend.installed_backends()
    names = [n.strip() for n in env.split(",") if n.strip()]
    for name in names:
        if name not in _backend.BACKENDS:
            raise pytest.UsageError(f"PORTABLE_MLP_BACKEND names unknown backend {name!r}")
        importlib.import_module({"jax": "jax.numpy"}.get(name, name))  # missing: a loud error
    return names


SELECTED = _selected()

if "jax" in SELECTED:
    import jax

    # float64 on JAX needs this before any array is made.
    jax.config.update("jax_enable_x64", True)


@dataclass(frozen=True)
class Case:
    """One backend on one device."""

    backend: str
    device: Any  # what users pass as device= (None: the default)
    label: str
    skip: str | None = None

    @property
    def xp(self) -> Any:
        return pm.namespace(self.backend)

    def array(self, a: Any, dtype: str | None = None) -> Any:
        """A host array on this case's backend and device: floats as ``dtype``, ints as ints."""
        a = np.asarray(a)
        info = self.xp.__array_namespace_info__().default_dtypes(device=self.resolved_device)
        if dtype is not None:
            dt = _backend.resolve_dtype(self.xp, dtype, self.resolved_device)
        elif a.dtype.kind in "iu":
            dt = info["integral"]
        else:
            raise ValueError(f"pass dtype= for {a.dtype} data")
        return _backend.from_numpy(a, xp=self.xp, dtype=dt, device=self.resolved_device)

    @property
    def resolved_device(self) -> Any:
        return _backend.resolve_device(self.xp, self.device)

    def model_kwargs(self, dtype: str) -> dict[str, Any]:
        return {"backend": self.backend, "device": self.device, "dtype": dtype}


def _cases() -> list[Case]:
    cases = []
    for name in SELECTED:
        if name == "numpy":
            cases.append(Case("numpy", None, "numpy"))
        elif name == "array_api_strict":
            cases.append(Case(name, None, "strict-default"))
            # A non-default device: any result that lands elsewhere fails the device checks.
            cases.append(Case(name, "device1", "strict-device1"))
        elif name == "torch":
            import torch

            cases.append(Case("torch", "cpu", "torch-cpu"))
            if torch.cuda.is_available():
                cases.append(Case("torch", "cuda", "torch-cuda"))
        elif name == "jax":
            import jax

            cases.append(Case("jax", None, f"jax-{jax.default_backend()}"))
        elif name == "cupy":
            import cupy

            try:
                cupy.cuda.runtime.getDeviceCount()
                reason = None
            except Exception as exc:  # CUDARuntimeError and friends when no driver/GPU
                reason = f"CuPy is installed but no CUDA device is usable: {exc}"
            cases.append(Case("cupy", None, "cupy-cuda", reason))
    return cases


CASES = _cases()


@pytest.fixture(params=CASES, ids=[c.label for c in CASES])
def case(request: pytest.FixtureRequest) -> Case:
    c: Case = request.param
    if c.skip:
        pytest.skip(c.skip)
    return c


@pytest.fixture(params=DTYPES)
def dtype(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def assert_close(
    actual: Any, expected: Any, *, case: Case, dtype: str, tol: float | None = None, what: str = ""
) -> None:
    """``actual`` is an array of ``case``'s namespace, ``dtype`` and device, close to ``expected``.

    ``expected`` is a NumPy array (or a number) computed independently, usually in float64.
    """
    assert pm.namespace_of(actual) is case.xp, f"{what}: namespace {pm.namespace_of(actual)}"
    assert _backend.dtype_name(actual.dtype) == dtype, (
        f"{what}: dtype {actual.dtype}, expected {dtype}"
    )
    assert _backend.device(actual) == case.resolved_device, (
        f"{what}: device {_backend.device(actual)}, expected {case.resolved_device}"
    )
    expected = np.asarray(expected)
    assert tuple(actual.shape) == expected.shape, (
        f"{what}: shape {tuple(actual.shape)} vs {expected.shape}"
    )
    err = relative_error(pm.to_numpy(actual), expected)
    limit = TOL[dtype] if tol is None else tol
    assert err <= limit, f"{what}: relative error {err:.3e} > {limit:.0e}"


def randomize(
    model: Any, case: Case, dtype: str, seed: int = 1, *, biases_only: bool = False
) -> None:
    """Give every parameter (or only the biases, which start at zero) N(0, 1) values.

    N(0, 1) weights in a deep, wide stack make logits of thousands, and saturated losses then
    cancel to gradients that are zero up to rounding: use ``biases_only`` there.
    """
    rng = np.random.default_rng(seed)
    model.set_parameters(
        {
            k: case.array(rng.normal(size=tuple(v.shape)), dtype)
            if not biases_only or k.endswith("bias")
            else v
            for k, v in model.parameters().items()
        }
    )


def away_from_zero(a: np.ndarray, margin: float = 0.05) -> np.ndarray:
    """Move values off the kink of ReLU-like functions, where finite differences are meaningless."""
    return np.where(np.abs(a) < margin, np.sign(a + 1e-12) * margin, a)
