"""The backend module: names, devices, dtypes, moving arrays, and every misuse it refuses."""

from __future__ import annotations

import numpy as np
import pytest

import portable_mlp as pm
from conftest import SELECTED, Case, assert_close
from portable_mlp import _backend


def test_names_and_namespaces(case: Case) -> None:
    xp = pm.namespace(case.backend)
    assert _backend.backend_name(xp) == case.backend
    assert pm.namespace(xp) is xp  # a namespace maps to itself
    assert pm.namespace_of(case.array(np.zeros(2), "float32")) is xp


def test_modules_map_to_their_namespaces() -> None:
    assert pm.namespace(np) is pm.namespace("numpy")
    if "torch" in SELECTED:
        import torch

        assert pm.namespace(torch) is pm.namespace("torch")
    if "array_api_strict" in SELECTED:
        assert pm.namespace("strict") is pm.namespace("array_api_strict")


def test_unknown_backend_lists_the_installed_ones() -> None:
    with pytest.raises(pm.BackendError, match=r"unknown backend 'tensorflow'.*installed: numpy"):
        pm.namespace("tensorflow")


def test_default_dtype_is_the_backends(case: Case) -> None:
    layer = pm.Linear(2, 2, backend=case.backend, device=case.device)
    info = case.xp.__array_namespace_info__()
    assert layer.dtype == info.default_dtypes(device=case.resolved_device)["real floating"]
    assert layer.weight.dtype == layer.dtype


def test_dtype_by_name_and_by_object(case: Case) -> None:
    for dtype in ("float32", "float64"):
        by_name = pm.Linear(2, 2, rng=0, dtype=dtype, backend=case.backend, device=case.device)
        by_object = pm.Linear(
            2, 2, rng=0, dtype=getattr(case.xp, dtype), backend=case.backend, device=case.device
        )
        assert by_name.dtype == by_object.dtype == getattr(case.xp, dtype)
    for bad in ("int32", "float16", "bfloat16"):
        with pytest.raises(TypeError, match=f"dtype must be one of float32, float64, got '{bad}'"):
            pm.Linear(2, 2, dtype=bad, backend=case.backend, device=case.device)
    with pytest.raises(TypeError, match="float32 or float64"):
        pm.Linear(2, 2, dtype=case.xp.int64, backend=case.backend, device=case.device)


def test_device_round_trip(case: Case, dtype: str) -> None:
    host = np.arange(6.0).reshape(2, 3)
    a = case.array(host, dtype)
    assert_close(a, host, case=case, dtype=dtype, tol=0.0)
    copy = pm.to_numpy(a)
    assert copy.dtype == np.dtype(dtype) and np.array_equal(copy, host)


def test_asarray_moves_to_the_model(case: Case, dtype: str) -> None:
    model = pm.MLP([3, 2], **case.model_kwargs(dtype))
    x = pm.asarray(np.ones((4, 3)), like=model)
    assert_close(x, np.ones((4, 3)), case=case, dtype=dtype)
    labels = pm.asarray([0, 1, 1], like=model)
    assert case.xp.isdtype(labels.dtype, "integral")
    assert _backend.device(labels) == case.resolved_device
    assert pm.namespace_of(pm.asarray(x, like=x)) is case.xp


def test_from_numpy_copies(case: Case) -> None:
    host = np.zeros(3)
    a = case.array(host, "float64")
    host[0] = 1.0
    assert pm.to_numpy(a)[0] == 0.0


# --------------------------------------------------------------------------- misuse
def test_wrong_feature_count(case: Case, dtype: str) -> None:
    layer = pm.Linear(4, 3, **case.model_kwargs(dtype))
    x = case.array(np.ones((2, 5)), dtype)
    with pytest.raises(
        ValueError,
        match=r"Linear\(4 -> 3\) expected x of shape \(n, 4\) with 4 features, got \(2, 5\)",
    ):
        layer.forward(x)
    with pytest.raises(ValueError, match=r"got \(4,\)"):
        layer.forward(case.array(np.ones(4), dtype))
    model = pm.MLP([4, 3, 1], **case.model_kwargs(dtype))
    with pytest.raises(ValueError, match="with 4 features, got"):
        model.forward(x)


def test_dtype_mismatch_names_both(case: Case) -> None:
    model = pm.MLP([3, 2], **case.model_kwargs("float32"))
    with pytest.raises(TypeError, match="expected x with dtype float32, got float64"):
        model.forward(case.array(np.ones((1, 3)), "float64"))
    with pytest.raises(TypeError, match="expected x with dtype float32, got int"):
        model.forward(case.array(np.ones((1, 3), dtype=int)))


def test_backend_mix_names_both(case: Case) -> None:
    other = (
        "numpy" if case.backend != "numpy" else next((b for b in SELECTED if b != "numpy"), None)
    )
    if other is None:
        pytest.skip("needs a second backend to mix with")
    model = pm.MLP([3, 2], **case.model_kwargs("float32"))
    x = pm.asarray(np.ones((1, 3)), like=pm.Linear(1, 1, backend=other, dtype="float32"))
    with pytest.raises(
        TypeError, match=f"expected x as a {case.backend} array .*got a {other} array"
    ):
        model.forward(x)
    with pytest.raises(TypeError, match=f"expected x as a {case.backend} array, got builtins.list"):
        model.forward([[1.0, 2.0, 3.0]])


def test_device_mismatch_names_both() -> None:
    if "array_api_strict" not in SELECTED:
        pytest.skip("array-api-strict's fake devices stand in for a GPU here")
    import array_api_strict as xp

    model = pm.MLP([3, 2], backend="array_api_strict", device="device1", dtype="float64")
    x = xp.ones((1, 3), dtype=xp.float64)  # on the default device
    with pytest.raises(
        ValueError, match=r"expected x on device .*device1.*, got an array on device .*CPU_DEVICE"
    ):
        model.forward(x)
    with pytest.raises(pm.BackendError, match="does not support float64"):
        pm.Linear(2, 2, backend="array_api_strict", device="no_float64", dtype="float64")
    with pytest.raises(pm.BackendError, match="not a array_api_strict device"):
        pm.Linear(2, 2, backend="array_api_strict", device="gpu7")


def test_layers_of_one_model_must_agree(case: Case) -> None:
    with pytest.raises(
        ValueError,
        match=r"layer 2 Linear\(5 -> 1\) expected 5 features, but the layer before it gives 4",
    ):
        pm.Sequential(
            pm.Linear(3, 4, **case.model_kwargs("float32")),
            pm.ReLU(),
            pm.Linear(5, 1, **case.model_kwargs("float32")),
        )
    with pytest.raises(ValueError, match=r"Sequential layers disagree: .*float32.*float64"):
        pm.Sequential(
            pm.Linear(3, 4, **case.model_kwargs("float32")),
            pm.Linear(4, 1, **case.model_kwargs("float64")),
        )
    with pytest.raises(TypeError, match="Sequential layer 0 must be a Module, got function"):
        pm.Sequential(lambda v: v)  # type: ignore[arg-type]


def test_backward_before_forward(case: Case) -> None:
    layer = pm.Linear(3, 2, **case.model_kwargs("float64"))
    with pytest.raises(
        RuntimeError, match=r"Linear\(3 -> 2\).backward\(\) called before forward\(\)"
    ):
        layer.backward(case.array(np.ones((1, 2)), "float64"))
    with pytest.raises(RuntimeError, match="before forward"):
        pm.ReLU().backward(case.array(np.ones((1, 2)), "float64"))
    model = pm.MLP([3, 2], **case.model_kwargs("float64"))
    with pytest.raises(RuntimeError, match="gradients\\(\\) called before backward"):
        model.gradients()
    model.forward(case.array(np.ones((1, 3)), "float64"))
    with pytest.raises(ValueError, match=r"expected dy of shape \(1, 2\), got \(2, 2\)"):
        model.backward(case.array(np.ones((2, 2)), "float64"))


def test_bad_constructor_arguments() -> None:
    with pytest.raises(ValueError, match="Linear p_in must be a positive int, got 0"):
        pm.Linear(0, 3)
    with pytest.raises(TypeError, match="rng must be an int seed"):
        pm.Linear(2, 3, rng="seed")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown activation 'swish'; expected one of relu"):
        pm.MLP([2, 3, 1], activation="swish")
    with pytest.raises(ValueError, match="at least an input and an output size"):
        pm.MLP([2])
    with pytest.raises(pm.BackendError, match="NumPy arrays live on the 'cpu' device, not 'cuda'"):
        pm.Linear(2, 2, device="cuda")


def test_cuda_asked_for_without_a_gpu() -> None:
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    with pytest.raises(pm.BackendError, match="torch sees no CUDA device"):
        pm.Linear(2, 2, backend="torch", device="cuda")


def test_jax_float64_needs_x64() -> None:
    if "jax" not in SELECTED:
        pytest.skip("JAX is not in this run")
    import jax

    jax.config.update("jax_enable_x64", False)
    try:
        with pytest.raises(pm.BackendError, match="jax_enable_x64"):
            pm.Linear(2, 2, backend="jax", dtype="float64")
    finally:
        jax.config.update("jax_enable_x64", True)
