"""Fixtures of the test matrix that :mod:`portable_mlp.testing` builds: ``case`` (every selected
backend on each of its test devices), ``dtype`` (float32, float64) and ``selected_backends``.

``PORTABLE_MLP_BACKEND=torch`` (a comma-separated list) limits a run to some backends; nox's
``tests(<backend>)`` sessions set it. A backend that is asked for but missing is an error, not a
silent skip. Test modules import what they need from ``portable_mlp.testing``, never from here.
"""

from __future__ import annotations

import os

import pytest

import portable_mlp as pm
from portable_mlp._backend import TABLE
from portable_mlp.testing import DTYPES, Case, cases, selected_backends

try:
    SELECTED = selected_backends()
except pm.BackendError as exc:
    raise pytest.UsageError(f"PORTABLE_MLP_BACKEND: {exc}") from exc

for _name in SELECTED:
    TABLE[_name].enable_float64()  # before any float64 array is made

# The command line run in-process keeps JAX's compiled programs in the user's cache folder by
# default, which would switch JAX's disk cache on for the rest of the session; the tests of that
# cache run the command in a process of its own.
os.environ["PORTABLE_MLP_COMPILE_CACHE"] = "off"

CASES = cases(SELECTED)


@pytest.fixture(params=CASES, ids=[c.label for c in CASES])
def case(request: pytest.FixtureRequest) -> Case:
    c: Case = request.param
    if c.skip:
        pytest.skip(c.skip)
    return c


@pytest.fixture(params=DTYPES)
def dtype(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="session")
def selected() -> list[str]:
    """The backends this run covers."""
    return list(SELECTED)
