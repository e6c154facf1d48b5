"""The one module that calls ``torch.distributed``: the collectives of multi-process training.

torch.distributed (gloo on CPU, NCCL on CUDA) carries the collectives for NumPy, array-api-strict,
torch and CuPy arrays. Each array is handed over without a copy: NumPy through
``torch.from_numpy``, array-api-strict and CuPy through DLPack, torch tensors as they are; the
collective then works in place on the caller's buffer. JAX arrays are refused: DLPack would
share a buffer JAX treats as immutable, and JAX has its own collectives (a device mesh; see
:mod:`portable_mlp.distributed`).

torch is imported only when a process group is made or used, so single-process code never pays
for it.
"""

from __future__ import annotations

import datetime
import sys
from typing import Any

from . import Array, BackendError, Placement

_JAX_REFUSED = (
    "JAX arrays cannot go through torch.distributed: DLPack shares their buffer and the "
    "in-place all-reduce would mutate an array JAX treats as immutable. Train JAX models "
    "data-parallel on a device mesh instead: pm.MLP(..., backend='jax', device=mesh) with "
    "batches split by pm.distributed.shard_batch (XLA inserts the all-reduces), and "
    "jax.distributed.initialize() across hosts"
)


def _dist() -> Any:  # torch.distributed (Any where torch is not installed for the type check)
    try:
        import torch.distributed as dist
    except ImportError as exc:
        raise BackendError(
            "multi-process training needs torch, whose torch.distributed carries the "
            f"collectives ({exc}); pip install torch"
        ) from exc
    if not dist.is_available():
        raise BackendError("this torch build has no torch.distributed support")
    return dist


def is_initialized() -> bool:
    """Whether this process is in a process group (without importing torch when it is not)."""
    dist = sys.modules.get("torch.distributed")
    return dist is not None and bool(dist.is_available()) and bool(dist.is_initialized())


def init_process_group(
    backend: str | None,
    *,
    init_method: str,
    rank: int,
    world_size: int,
    local_rank: int,
    timeout_s: float | None,
) -> str:
    """Join the process group; returns the torch.distributed backend string used."""
    dist = _dist()
    import torch

    cuda = torch.cuda.is_available()
    if backend is None:
        # One group that routes host tensors through gloo and CUDA tensors through NCCL, so a
        # NumPy model and a CUDA model train under the same launcher.
        backend = "cpu:gloo,cuda:nccl" if cuda else "gloo"
    if cuda and "nccl" in backend:
        # NCCL binds each process to one GPU; torchrun's LOCAL_RANK picks it.
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
    kwargs: dict[str, Any] = {}
    if timeout_s is not None:
        kwargs["timeout"] = datetime.timedelta(seconds=timeout_s)
    dist.init_process_group(
        backend, init_method=init_method, rank=rank, world_size=world_size, **kwargs
    )
    return backend


def rank() -> int:
    return int(_dist().get_rank()) if is_initialized() else 0


def world_size() -> int:
    return int(_dist().get_world_size()) if is_initialized() else 1


def barrier() -> None:
    if is_initialized():
        _dist().barrier()


def destroy() -> None:
    if is_initialized():
        _dist().destroy_process_group()


# --------------------------------------------------------------------------------------------
# Arrays as torch tensors, sharing memory
# --------------------------------------------------------------------------------------------
_SUPPORTED = ("numpy", "array_api_strict", "torch", "cupy")


def check_supported(where: Placement) -> None:
    """Refuse, before any collective, a placement whose arrays cannot go through torch."""
    if where.name == "jax":
        raise BackendError(_JAX_REFUSED)
    if where.name not in _SUPPORTED:
        raise BackendError(
            f"torch.distributed collectives take {', '.join(_SUPPORTED)} arrays, not "
            f"{where.describe()}"
        )


def _shared_tensor(x: Array, where: Placement) -> Any:
    """A torch tensor over ``x``'s own buffer: what a collective writes, ``x`` holds."""
    import torch

    check_supported(where)
    if where.name == "numpy":
        return torch.from_numpy(x)
    if where.name == "torch":
        return x
    return torch.utils.dlpack.from_dlpack(x)  # array_api_strict (any of its devices), CuPy


def _after_collective(x: Array, tensor: Any, where: Placement) -> None:
    """Order the caller's later work on ``x`` after the collective that wrote it."""
    if where.name == "cupy" and tensor.is_cuda:
        import cupy
        import torch

        # NCCL ran on torch's stream; CuPy's stream waits for it on the device, not the host.
        done = cupy.cuda.Event()
        done.record(cupy.cuda.ExternalStream(torch.cuda.current_stream().cuda_stream))
        cupy.cuda.get_current_stream().wait_event(done)


def all_reduce_sum_(x: Array, where: Placement) -> Array:
    """Sum ``x`` (a contiguous 1-D array) over every rank, in place; returns ``x``."""
    tensor = _shared_tensor(x, where)
    _dist().all_reduce(tensor)
    _after_collective(x, tensor, where)
    return x


def broadcast_(x: Array, where: Placement, src: int = 0) -> Array:
    """Overwrite ``x`` (a contiguous 1-D array) with rank ``src``'s, in place; returns ``x``."""
    tensor = _shared_tensor(x, where)
    _dist().broadcast(tensor, src)
    _after_collective(x, tensor, where)
    return x


def all_reduce_host(values: list[float], op: str = "sum") -> list[float]:
    """Python floats reduced over every rank (``"sum"`` or ``"max"``), in float64."""
    dist = _dist()
    import torch

    device = "cpu"
    if dist.get_backend() == "nccl":  # an NCCL-only group has no host path
        device = f"cuda:{torch.cuda.current_device()}"
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op={"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX}[op])
    return [float(v) for v in tensor.cpu().tolist()]
