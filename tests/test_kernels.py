"""Backend fast paths give what the portable forms give, and a training step never reads back."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import portable_mlp as pm
from portable_mlp import _backend
from portable_mlp import functional as F
from portable_mlp.testing import Case, assert_close


def _data(case: Case, dtype: str) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(9, 5))
    x[0, :3] = 0.0  # the kink: both forms must give 0 there
    return {
        "x": case.array(x, dtype),
        "W": case.array(rng.normal(size=(5, 4)), dtype),
        "b": case.array(rng.normal(size=4), dtype),
        "dy": case.array(rng.normal(size=(9, 5)), dtype),
    }


def test_kernels_match_the_portable_forms(case: Case, dtype: str) -> None:
    """Every backend's kernels (its fast paths or the portable defaults) give the portable
    results, on its device and in its dtype; torch has its own, measured to matter."""
    where = pm.placement(case.backend, case.device, dtype)
    kernels = where.kernels
    portable = _backend.portable_kernels(where.xp, mutable=where.mutable)
    if case.backend == "torch":  # the backend these were measured to matter on
        assert kernels.linear is not portable.linear
    d = _data(case, dtype)
    x, W, b, dy = d["x"], d["W"], d["b"], d["dy"]
    for bias in (b, None):
        expected = pm.to_numpy(F.linear(x, W, bias))
        assert_close(kernels.linear(x, W, bias), expected, case=case, dtype=dtype)
    for columns in (4, 1):  # one column: the last layer of a single output
        g = case.xp.asarray(dy[:, :columns], copy=True)
        for bias, input_grad in ((True, True), (False, False)):
            got = kernels.linear_backward(g, x, W[:, :columns], bias, input_grad)
            want = F.linear_backward(g, x, W[:, :columns], bias=bias, input_grad=input_grad)
            for a, e in zip(got, want, strict=True):
                assert (a is None) == (e is None)
                if e is not None:
                    assert_close(a, pm.to_numpy(e), case=case, dtype=dtype)
    y = kernels.relu(x)
    assert_close(y, pm.to_numpy(F.relu(x)), case=case, dtype=dtype, tol=0.0)
    assert_close(
        kernels.relu_backward(dy, y),
        pm.to_numpy(F.relu_backward(dy, y)),
        case=case,
        dtype=dtype,
        tol=0.0,
    )
    for axis in (0, None):
        total = kernels.sum(x, axis)
        assert_close(total, pm.to_numpy(case.xp.sum(x, axis=axis)), case=case, dtype=dtype, tol=0.0)
        assert total.ndim == (0 if axis is None else 1)
    rng = np.random.default_rng(1)
    extremes = np.array([[-3.0, -0.0, 0.0, 2.5], [-1e4, 1e4, 30.0, -30.0]])
    large = rng.normal(scale=5.0, size=(130, 64))  # past the size where torch's selection changes
    for z_host in (extremes, large):
        z = case.array(z_host, dtype)
        t = case.array(rng.integers(0, 2, size=z_host.shape).astype(float), dtype)
        e = F.exp_neg_abs(z)
        for reduction in ("mean", "sum", "none"):
            for fast, reference in (
                (kernels.bce_with_logits, F.bce_with_logits),
                (kernels.bce_with_logits_backward, F.bce_with_logits_backward),
            ):
                expected = reference(z, t, reduction=reduction)  # type: ignore[operator]
                assert_close(
                    fast(z, t, e, reduction), pm.to_numpy(expected), case=case, dtype=dtype, tol=0.0
                )
    params = [case.xp.asarray(W, copy=True), case.xp.asarray(b, copy=True)]
    updated = kernels.add_scaled(params, [W, b], -0.5)
    assert_close(updated[0], pm.to_numpy(W) * 0.5, case=case, dtype=dtype)
    assert_close(updated[1], pm.to_numpy(b) * 0.5, case=case, dtype=dtype)
    # in place exactly where the backend's arrays are mutable
    assert all((u is p) == where.mutable for u, p in zip(updated, params, strict=True))


def test_branch_free_selections_are_exact(case: Case, dtype: str) -> None:
    """The arithmetic selections give bit for bit what a ``where`` gives."""
    xp = case.xp
    z_host = np.array([[-3.0, -0.0, 0.0, 2.5, -1e4, 1e4, 30.0, -30.0]])
    z = case.array(z_host, dtype)
    e = xp.exp(-xp.abs(z))
    s = 1.0 / (1.0 + e)
    assert_close(
        F.sigmoid(z), pm.to_numpy(xp.where(z >= 0, s, e * s)), case=case, dtype=dtype, tol=0.0
    )
    y = case.array(np.array([[1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 1.0, 0.0]]), dtype)
    tail = e / (1.0 + e)
    expected = xp.where(z >= 0, (1.0 - y) - tail, tail - y)
    assert_close(
        F.bce_with_logits_backward(z, y, reduction="sum"),
        pm.to_numpy(expected),
        case=case,
        dtype=dtype,
        tol=0.0,
    )
    assert_close(
        F.leaky_relu(z, 0.1),
        pm.to_numpy(xp.where(z > 0, z, 0.1 * z)),
        case=case,
        dtype=dtype,
        tol=0.0,
    )


@pytest.mark.parametrize(
    "make_optimizer",
    [
        lambda m: pm.SGD(m, lr=0.1),
        lambda m: pm.SGD(m, lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-3),
        lambda m: pm.Adam(m, lr=1e-3, max_grad_norm=1.0),
        lambda m: pm.AdamW(m, lr=1e-3),
    ],
    ids=["sgd", "sgd-nesterov", "adam-clip", "adamw"],
)
@pytest.mark.parametrize("loss_name", ["bce_with_logits", "cross_entropy", "mse"])
def test_training_steps_run_on_torch_meta_device(make_optimizer: Any, loss_name: str) -> None:
    """torch's meta device has shapes but no values: reading one back raises. Whole training
    steps (forward, loss, backward, L2 term, clipping, optimizer update) run there, so none
    reads a value back to the host, i.e. none would make a GPU wait."""
    model = pm.MLP([6, 5, 3], rng=0, backend="torch", device="meta", dtype="float32")
    rng = np.random.default_rng(0)
    x = pm.asarray(rng.normal(size=(4, 6)), like=model)
    y_host = (
        rng.integers(0, 3, size=4) if loss_name == "cross_entropy" else rng.uniform(size=(4, 3))
    )
    y = pm.asarray(y_host, like=model)
    loss = pm.losses.LOSSES[loss_name]()
    opt = make_optimizer(model)
    for _ in range(2):
        value = pm.train_step(model, loss, opt, x, y, alpha=1e-4)
    assert value.device.type == "meta"
    assert all(p.device.type == "meta" for p in model.parameters().values())
    with pytest.raises(RuntimeError, match="meta tensors"):
        float(value)  # the meta device really refuses to read back


def test_set_up_arrays_are_the_portable_ones(case: Case, dtype: str) -> None:
    """The arrays a backend makes without computing (on JAX, without compiling): zeros and
    copies on the placement, and the shape and dtype of a function's outputs."""
    where = case.placement(dtype)
    z = where.zeros((3, 2))
    where.check(z, who="zeros")  # namespace, dtype and device
    assert tuple(z.shape) == (3, 2)
    assert_close(z, np.zeros((3, 2)), case=case, dtype=dtype, tol=0.0)
    x = case.array(np.arange(6.0).reshape(3, 2), dtype)
    c = where.copy(x)
    where.check(c, who="copy")
    assert c is not x
    assert_close(c, pm.to_numpy(x), case=case, dtype=dtype, tol=0.0)
    if where.mutable:  # a copy, not a view: writing to x leaves it as it was
        x[...] = 7.0
        assert_close(c, np.arange(6.0).reshape(3, 2), case=case, dtype=dtype, tol=0.0)
    W = case.array(np.ones((2, 5)), dtype)
    out = where.backend.output_of(lambda a: a @ W, x)
    assert tuple(out.shape) == (1, 5)
    assert _backend.dtype_name(out.dtype) == dtype
