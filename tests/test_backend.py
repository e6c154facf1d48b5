"""The backend module: the table of backend facts, placements, moving arrays, and every misuse
it refuses (one misuse per test, each with the message it must give)."""

from __future__ import annotations

import pickle
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import array_api_compat
import numpy as np
import pytest
import torch

import portable_mlp as pm
from portable_mlp._backend import TABLE, placement_arg, placement_of
from portable_mlp.testing import Case, assert_close, cases


def _other_backend(case: Case) -> str:
    """A backend other than ``case``'s that is always here (torch is the test reference)."""
    return "numpy" if case.backend != "numpy" else "torch"


def test_names_and_namespaces(case: Case) -> None:
    xp = pm.namespace(case.backend)
    assert pm.placement(xp).name == case.backend
    assert pm.namespace(xp) is xp  # a namespace maps to itself
    assert pm.namespace_of(case.array(np.zeros(2), "float32")) is xp


def test_modules_map_to_their_namespaces() -> None:
    assert pm.namespace(np) is pm.namespace("numpy")
    assert pm.namespace(torch) is pm.namespace("torch")


def test_strict_has_a_short_name() -> None:
    pytest.importorskip("array_api_strict")
    assert pm.namespace("strict") is pm.namespace("array_api_strict")


def test_unknown_backend_lists_the_installed_ones() -> None:
    with pytest.raises(pm.BackendError, match=r"unknown backend 'tensorflow'.*installed: numpy"):
        pm.namespace("tensorflow")


def test_default_dtype_is_the_backends(case: Case) -> None:
    layer = pm.Linear(2, 2, backend=case.backend, device=case.device)
    info = case.xp.__array_namespace_info__()
    assert layer.dtype == info.default_dtypes(device=case.resolved_device)["real floating"]
    assert layer.weight.dtype == layer.dtype


def test_dtype_by_name_and_by_object(case: Case, dtype: str) -> None:
    by_name = pm.Linear(2, 2, rng=0, dtype=dtype, backend=case.backend, device=case.device)
    by_object = pm.Linear(
        2, 2, rng=0, dtype=getattr(case.xp, dtype), backend=case.backend, device=case.device
    )
    assert by_name.dtype == by_object.dtype == getattr(case.xp, dtype)


@pytest.mark.parametrize("bad", ["int32", "float16", "bfloat16"])
def test_dtype_name_that_is_not_a_float(case: Case, bad: str) -> None:
    with pytest.raises(TypeError, match=f"dtype must be one of float32, float64, got '{bad}'"):
        pm.Linear(2, 2, dtype=bad, backend=case.backend, device=case.device)


def test_dtype_object_that_is_not_a_float(case: Case) -> None:
    with pytest.raises(TypeError, match="dtype must be float32 or float64 of"):
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
    assert array_api_compat.device(labels) == case.resolved_device
    assert pm.namespace_of(pm.asarray(x, like=x)) is case.xp


def test_from_numpy_copies(case: Case) -> None:
    host = np.zeros(3)
    a = case.array(host, "float64")
    host[0] = 1.0
    assert pm.to_numpy(a)[0] == 0.0


# --------------------------------------------------------------------------- the backend table
@pytest.mark.parametrize("name", list(TABLE))
def test_table_entry_answers_for_its_backend(name: str) -> None:
    """Every entry says whether it is installed; an installed one gives its version, devices
    and their names, and each device's plain spelling resolves back to it."""
    entry = TABLE[name]
    if not entry.installed():
        with pytest.raises(pm.BackendError, match=f"{name!r} is not installed.*pip install"):
            pm.namespace(name)
        return
    assert entry.version() not in ("", "-")
    try:
        devices = entry.devices()
    except Exception as exc:  # whatever a missing driver raises (CuPy without CUDA)
        pytest.skip(f"{name} is installed but cannot list its devices: {exc}")
    assert devices, f"{name} lists no device"
    xp = pm.namespace(name)
    for spelling in devices:
        dev = entry.resolve_device(xp, spelling)
        assert entry.describe(dev), f"{name}: no description of {dev}"
        assert entry.resolve_device(xp, entry.device_spec(dev)) == dev
    assert entry.test_devices()[0] == devices[0]  # the default device comes first


def test_cases_cover_a_non_default_device() -> None:
    """array-api-strict's fake device1 stands in for a GPU: a result that lands on the default
    device fails every device check of the suite."""
    pytest.importorskip("array_api_strict")
    found = cases(["array_api_strict"])
    assert [c.label for c in found] == ["array_api_strict-default", "array_api_strict-device1"]
    default, other = (c.resolved_device for c in found)
    assert default == pm.placement("array_api_strict").device and other != default
    assert found[1].placement("float32").device == other


def test_cases_skip_a_backend_that_cannot_list_its_devices(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """CuPy without a CUDA driver: one case, with the reason to skip it, not an error."""

    @dataclass(frozen=True)
    class NoDriver:
        name: str = "nodriver"

        def test_devices(self) -> list[Any]:
            raise RuntimeError("cudaErrorNoDevice: no CUDA-capable device is detected")

    monkeypatch.setitem(TABLE, "nodriver", NoDriver())  # type: ignore[arg-type]
    (found,) = cases(["nodriver"])
    assert found.skip is not None and "cudaErrorNoDevice" in found.skip


def test_selected_backends_refuse_a_missing_one() -> None:
    from portable_mlp.testing import selected_backends

    assert selected_backends("numpy, torch") == ["numpy", "torch"]
    with pytest.raises(pm.BackendError, match="unknown backend 'tensorflow'"):
        selected_backends("numpy,tensorflow")


# --------------------------------------------------------------------------- placements
def test_placement_is_made_once(case: Case, dtype: str) -> None:
    p = case.placement(dtype)
    assert pm.placement(case.backend, case.device, dtype) is p  # cached
    assert pm.placement(case.xp, case.resolved_device, getattr(case.xp, dtype)) is p
    assert pm.placement(p) is p
    assert placement_of(case.array(np.ones(2), dtype)) == p
    model = pm.MLP([3, 2], **case.model_kwargs(dtype))
    assert model.placement is p and model.layers[0].placement is p


def test_placement_equality_is_by_value(case: Case) -> None:
    f32, f64 = case.placement("float32"), case.placement("float64")
    assert f32 != f64 and f32.with_dtype("float64") == f64
    assert pm.placement(f32, dtype="float64") == f64
    assert hash(f32.with_dtype("float64")) == hash(f64)
    assert f32 != pm.placement(_other_backend(case), dtype="float32")


def test_placement_describes_itself(case: Case, dtype: str) -> None:
    p = case.placement(dtype)
    assert p.describe() == f"{case.backend} on {p.backend.describe(p.device)}, {dtype}"
    assert repr(p).startswith(f"Placement({case.backend!r}, device=")
    assert p.name == case.backend and p.dtype_name == dtype


def test_placement_pickles_as_its_spelling(case: Case, dtype: str) -> None:
    p = case.placement(dtype)
    again = pickle.loads(pickle.dumps(p))
    assert again == p and again.device == p.device and again.dtype == p.dtype


def test_placement_moves_arrays_there_and_back(case: Case, dtype: str) -> None:
    p = case.placement(dtype)
    host = np.arange(6.0).reshape(3, 2)
    assert_close(p.asarray(host), host, placement=p, tol=0.0)
    assert np.array_equal(p.to_host(p.asarray(host)), host)
    assert_close(p.zeros((2, 3)), np.zeros((2, 3)), placement=p, tol=0.0)
    labels = p.asarray(np.array([2, 0, 1]))
    assert labels.dtype == p.index_dtype
    p.sync(labels)  # waits, returns nothing


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ({"backend": "torch"}, "pass placement= or backend=/device=/dtype=, not both"),
        ({"dtype": "float64"}, "pass placement= or backend=/device=/dtype=, not both"),
        ({"device": "cpu"}, "pass placement= or backend=/device=/dtype=, not both"),
    ],
    ids=["backend", "dtype", "device"],
)
def test_placement_arg_refuses_both_forms(given: dict[str, Any], message: str) -> None:
    shorthands: dict[str, Any] = {"backend": "numpy", "device": None, "dtype": None, **given}
    with pytest.raises(TypeError, match=message):
        placement_arg(pm.placement("numpy"), **shorthands)
    with pytest.raises(TypeError, match=message):
        pm.Linear(2, 2, placement=pm.placement("numpy"), **given)


def test_placement_arg_takes_only_a_placement() -> None:
    with pytest.raises(TypeError, match="placement must be a Placement, got str"):
        pm.Linear(2, 2, placement="numpy")  # type: ignore[arg-type]


def test_placement_on_another_device_is_refused() -> None:
    pytest.importorskip("array_api_strict")
    p = pm.placement("array_api_strict", "device1")
    with pytest.raises(pm.BackendError, match="is not on device 'CPU_DEVICE'"):
        pm.placement(p, "CPU_DEVICE")


# Placement.check: each refusal names what was expected and what came (array, message).
CHECK_MISUSE: dict[str, Callable[[Case], tuple[Any, str]]] = {
    "dtype": lambda c: (
        c.array(np.ones(2), "float64"),
        "who expected x with dtype float32, got float64",
    ),
    "integers": lambda c: (
        c.array(np.ones(2, dtype=int)),
        "who expected x with dtype float32, got int",
    ),
    "not an array": lambda c: (
        [1.0, 2.0],
        f"who expected x as a {c.backend} array, got builtins.list",
    ),
    "backend": lambda c: (
        pm.placement(_other_backend(c), dtype="float32").asarray(np.ones(2)),
        rf"who expected x as a {c.backend} array \(like its parameters\), "
        rf"got a {_other_backend(c)} array",
    ),
}


@pytest.mark.parametrize("misuse", CHECK_MISUSE)
def test_placement_check_names_both_sides(case: Case, misuse: str) -> None:
    x, message = CHECK_MISUSE[misuse](case)
    with pytest.raises(TypeError, match=message):
        case.placement("float32").check(x, who="who")


def test_placement_check_refuses_another_device(case: Case) -> None:
    """Checked on each backend that has a second device here (array-api-strict's device1, a
    GPU next to torch's CPU): arrays are never moved implicitly."""
    others = [
        c for c in cases([case.backend]) if not c.skip and c.resolved_device != case.resolved_device
    ]
    if not others:
        pytest.skip(f"{case.backend} has one device here")
    x = others[0].array(np.ones((1, 3)), "float64")
    model = pm.MLP([3, 2], **case.model_kwargs("float64"))
    with pytest.raises(
        ValueError, match=r"expected x on device .+, got an array on device"
    ) as info:
        model.forward(x)
    message = str(info.value)
    assert str(case.resolved_device) in message and str(others[0].resolved_device) in message


# --------------------------------------------------------------------------- Dask is refused
def test_dask_by_name_is_refused_with_the_reason() -> None:
    pytest.importorskip("dask.array")
    with pytest.raises(pm.BackendError, match="Dask arrays cannot hold a model's parameters"):
        pm.namespace("dask")


def test_dask_namespace_is_refused_with_the_reason() -> None:
    da = pytest.importorskip("dask.array")
    xp = array_api_compat.array_namespace(da.ones(3))
    with pytest.raises(pm.BackendError, match="in-place updates do not reach the array"):
        pm.Linear(2, 2, backend=xp)


def test_dask_array_as_like_is_refused_with_the_reason() -> None:
    da = pytest.importorskip("dask.array")
    with pytest.raises(pm.BackendError, match="Dask arrays cannot hold a model's parameters"):
        pm.asarray(np.ones(3), like=da.ones(3))


def test_dask_input_to_a_numpy_model_is_refused() -> None:
    da = pytest.importorskip("dask.array")
    with pytest.raises(TypeError, match=r"expected x as a numpy array .*dask"):
        pm.MLP([3, 2]).forward(da.ones((2, 3)))


# --------------------------------------------------------------------------- misuse
def test_wrong_feature_count(case: Case, dtype: str) -> None:
    layer = pm.Linear(4, 3, **case.model_kwargs(dtype))
    with pytest.raises(
        ValueError,
        match=r"Linear\(4 -> 3\) expected x of shape \(n, 4\) with 4 features, got \(2, 5\)",
    ):
        layer.forward(case.array(np.ones((2, 5)), dtype))


def test_one_dimensional_input(case: Case, dtype: str) -> None:
    layer = pm.Linear(4, 3, **case.model_kwargs(dtype))
    with pytest.raises(ValueError, match=r"expected x of shape \(n, 4\) .*got \(4,\)"):
        layer.forward(case.array(np.ones(4), dtype))


def test_wrong_feature_count_to_a_model(case: Case, dtype: str) -> None:
    model = pm.MLP([4, 3, 1], **case.model_kwargs(dtype))
    with pytest.raises(ValueError, match=r"with 4 features, got \(2, 5\)"):
        model.forward(case.array(np.ones((2, 5)), dtype))


@pytest.mark.parametrize(
    ("data", "got"),
    [(np.ones((1, 3)), "float64"), (np.ones((1, 3), dtype=int), "int")],
    ids=["float64", "integers"],
)
def test_dtype_mismatch_names_both(case: Case, data: np.ndarray, got: str) -> None:
    model = pm.MLP([3, 2], **case.model_kwargs("float32"))
    x = case.array(data, "float64" if data.dtype.kind == "f" else None)
    with pytest.raises(TypeError, match=f"expected x with dtype float32, got {got}"):
        model.forward(x)


def test_backend_mix_names_both(case: Case) -> None:
    other = _other_backend(case)
    model = pm.MLP([3, 2], **case.model_kwargs("float32"))
    x = pm.placement(other, dtype="float32").asarray(np.ones((1, 3)))
    with pytest.raises(
        TypeError, match=f"expected x as a {case.backend} array .*got a {other} array"
    ):
        model.forward(x)


def test_a_list_is_not_an_array(case: Case) -> None:
    model = pm.MLP([3, 2], **case.model_kwargs("float32"))
    with pytest.raises(TypeError, match=f"expected x as a {case.backend} array, got builtins.list"):
        model.forward([[1.0, 2.0, 3.0]])


def test_a_device_without_float64() -> None:
    pytest.importorskip("array_api_strict")
    with pytest.raises(pm.BackendError, match="does not support float64"):
        pm.Linear(2, 2, backend="array_api_strict", device="no_float64", dtype="float64")


def test_an_unknown_device(case: Case) -> None:
    with pytest.raises(pm.BackendError, match=r"'gpu7'.*device|device.*'gpu7'"):
        pm.Linear(2, 2, backend=case.backend, device="gpu7")


def test_an_unknown_device_lists_the_devices() -> None:
    pytest.importorskip("array_api_strict")
    with pytest.raises(
        pm.BackendError, match=r"'gpu7' is not a array_api_strict device; expected one of \["
    ):
        pm.Linear(2, 2, backend="array_api_strict", device="gpu7")


def test_layers_of_one_model_must_agree_in_width(case: Case) -> None:
    with pytest.raises(
        ValueError,
        match=r"layer 2 Linear\(5 -> 1\) expected 5 features, but the layer before it gives 4",
    ):
        pm.Sequential(
            pm.Linear(3, 4, **case.model_kwargs("float32")),
            pm.ReLU(),
            pm.Linear(5, 1, **case.model_kwargs("float32")),
        )


def test_layers_of_one_model_must_agree_in_dtype(case: Case) -> None:
    with pytest.raises(ValueError, match=r"Sequential layers disagree: .*float32.*float64"):
        pm.Sequential(
            pm.Linear(3, 4, **case.model_kwargs("float32")),
            pm.Linear(4, 1, **case.model_kwargs("float64")),
        )


def test_a_model_is_made_of_modules() -> None:
    with pytest.raises(TypeError, match="Sequential layer 0 must be a Module, got function"):
        pm.Sequential(lambda v: v)  # type: ignore[arg-type]


BEFORE_FORWARD: dict[str, tuple[type[Exception], str, Callable[[Case], Any]]] = {
    "linear backward": (
        RuntimeError,
        r"Linear\(3 -> 2\).backward\(\) called before forward\(\)",
        lambda c: pm.Linear(3, 2, **c.model_kwargs("float64")).backward(
            c.array(np.ones((1, 2)), "float64")
        ),
    ),
    "activation backward": (
        RuntimeError,
        r"ReLU\(\).backward\(\) called before forward\(\)",
        lambda c: pm.ReLU().backward(c.array(np.ones((1, 2)), "float64")),
    ),
    "gradients": (
        RuntimeError,
        r"gradients\(\) called before backward",
        lambda c: pm.MLP([3, 2], **c.model_kwargs("float64")).gradients(),
    ),
}


@pytest.mark.parametrize("misuse", BEFORE_FORWARD)
def test_out_of_order_calls(case: Case, misuse: str) -> None:
    error, message, call = BEFORE_FORWARD[misuse]
    with pytest.raises(error, match=message):
        call(case)


def test_upstream_gradient_of_the_wrong_shape(case: Case) -> None:
    model = pm.MLP([3, 2], **case.model_kwargs("float64"))
    model.forward(case.array(np.ones((1, 3)), "float64"))
    with pytest.raises(ValueError, match=r"expected dy of shape \(1, 2\), got \(2, 2\)"):
        model.backward(case.array(np.ones((2, 2)), "float64"))


@pytest.mark.parametrize(
    ("build", "error", "message"),
    [
        (lambda: pm.Linear(0, 3), ValueError, "Linear p_in must be a positive int, got 0"),
        (lambda: pm.Linear(2, True), ValueError, "Linear p_out must be a positive int, got True"),
        (lambda: pm.Linear(2, 3, rng="seed"), TypeError, "rng must be an int seed"),
        (
            lambda: pm.MLP([2, 3, 1], activation="swish"),
            ValueError,
            "unknown activation 'swish'; expected one of relu",
        ),
        (lambda: pm.MLP([2]), ValueError, "at least an input and an output size"),
        (
            lambda: pm.Linear(2, 2, device="cuda"),
            pm.BackendError,
            "NumPy arrays live on the 'cpu' device, not 'cuda'",
        ),
    ],
    ids=["p_in", "p_out", "rng", "activation", "sizes", "numpy-device"],
)
def test_bad_constructor_argument(
    build: Callable[[], Any], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        build()


def test_cuda_asked_for_without_a_gpu() -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    with pytest.raises(pm.BackendError, match="torch sees no CUDA device"):
        pm.Linear(2, 2, backend="torch", device="cuda")


def test_jax_float64_needs_x64(selected: list[str]) -> None:
    if "jax" not in selected:
        pytest.skip("JAX is not in this run")
    import jax

    jax.config.update("jax_enable_x64", False)
    try:
        with pytest.raises(pm.BackendError, match="jax_enable_x64"):
            pm.Linear(2, 2, backend="jax", dtype="float64")
    finally:
        jax.config.update("jax_enable_x64", True)
