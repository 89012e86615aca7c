"""Who this process is in a torchrun job: rank, world size, device, backend.

torchrun (torch.distributed.run) starts one process per device and tells each its place through
RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT; `init_distributed` reads them, picks the
device (cuda:LOCAL_RANK on a GPU machine, else the CPU) and the backend (NCCL for CUDA, gloo for
the CPU) and joins the process group. Without those variables it returns the single-process
context, so every caller can use one code path.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from rlvr.errors import RlvrError

# NVLink multicast (NVLS) and symmetric-memory multicast are never enabled by rlvr (they have hung
# collectives on shared machines); set before any NCCL communicator exists, unless the user chose.
NO_MULTICAST_ENV = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1"}
DEVICE_TYPES = ("cuda", "cpu")
DEFAULT_TIMEOUT_S = 1800.0  # TRL's ddp_timeout default


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str | None = None  # None: one process, no process group
    timeout_s: float = DEFAULT_TIMEOUT_S

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0 alone writes metrics, samples, run.json, trackers and final weights."""
        return self.rank == 0


def launched_by_torchrun(environ=os.environ) -> bool:
    return "RANK" in environ and "WORLD_SIZE" in environ


def env_world_size(environ=os.environ) -> int:
    """WORLD_SIZE as torchrun sets it, 1 outside torchrun (how the batch arithmetic learns it)."""
    value = environ.get("WORLD_SIZE", "1")
    try:
        size = int(value)
    except ValueError:
        raise RlvrError(f"WORLD_SIZE={value!r} is not a number; launch with torchrun, which sets it") from None
    if size < 1:
        raise RlvrError(f"WORLD_SIZE={size} must be at least 1; launch with torchrun, which sets it")
    return size


def set_no_multicast_env(environ=os.environ) -> None:
    for key, value in NO_MULTICAST_ENV.items():
        environ.setdefault(key, value)


def pick_device_type(requested: str | None, cuda_available: bool) -> str:
    """'cuda' when there is a GPU, else 'cpu'; a requested type must be available."""
    if requested is None:
        return "cuda" if cuda_available else "cpu"
    if requested not in DEVICE_TYPES:
        raise RlvrError(f"device {requested!r} is not one of {DEVICE_TYPES}; pick one of them")
    if requested == "cuda" and not cuda_available:
        raise RlvrError("device 'cuda' was asked for but torch sees no GPU; install a CUDA build of torch "
                        "or run on the CPU (gloo)")
    return requested


def backend_for(device_type: str, nccl_available: bool) -> str:
    """NCCL for CUDA tensors, gloo for CPU tensors (one-line error when NCCL is missing)."""
    if device_type == "cuda":
        if not nccl_available:
            raise RlvrError("torch.distributed was built without NCCL, which multi-GPU training needs; install a "
                            "CUDA build of torch from pytorch.org (or run on the CPU, where gloo is used)")
        # gloo alongside NCCL carries the CPU-side agreement (device check, object gathers).
        return "cpu:gloo,cuda:nccl"
    return "gloo"


def check_same_device_type(device_types: list[str]) -> None:
    """Every rank must train on the same kind of device (NCCL cannot talk to a CPU rank)."""
    kinds = sorted(set(device_types))
    if len(kinds) > 1:
        where = ", ".join(f"rank {r}: {t}" for r, t in enumerate(device_types))
        raise RlvrError(f"ranks run on different device types ({where}); run every rank on a GPU "
                        "(one per process, e.g. --nproc-per-node = GPUs per node) or every rank on the CPU")


def init_distributed(device_type: str | None = None, timeout_s: float = DEFAULT_TIMEOUT_S,
                     environ=os.environ) -> DistContext:
    """Join torchrun's process group (or return the one-process context outside torchrun)."""
    kind = pick_device_type(device_type, torch.cuda.is_available())
    if not launched_by_torchrun(environ):
        return DistContext(device=torch.device("cuda" if kind == "cuda" else "cpu"), timeout_s=timeout_s)
    rank, world = int(environ["RANK"]), env_world_size(environ)
    local_rank = int(environ.get("LOCAL_RANK", "0"))
    if kind == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise RlvrError(f"rank {rank}: LOCAL_RANK {local_rank} but this node has {torch.cuda.device_count()} "
                            "GPU(s); start at most one process per GPU (--nproc-per-node)")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if dist.is_initialized():  # a second call (the CLI joined, now a trainer asks): the same context
        return DistContext(rank=rank, world_size=world, local_rank=local_rank, device=device,
                           backend=str(dist.get_backend()), timeout_s=timeout_s)
    set_no_multicast_env(environ)
    backend = backend_for(kind, dist.is_nccl_available())
    dist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout_s),
                            device_id=device if kind == "cuda" else None)
    ctx = DistContext(rank=rank, world_size=world, local_rank=local_rank, device=device, backend=backend,
                      timeout_s=timeout_s)
    agree_on_device_type(ctx, kind)
    return ctx


def check_model_device(ctx: DistContext, device: torch.device) -> None:
    """The model of rank r must sit on rank r's device (cuda:LOCAL_RANK), not where it happened to load."""
    # One process (no torchrun) trains wherever its model is: cuda:1 as well as cuda:0 or "cuda".
    other_gpu = ctx.world_size > 1 and device.type == "cuda" and device.index not in (None, ctx.device.index)
    if device.type != ctx.device.type or other_gpu:
        raise RlvrError(f"rank {ctx.rank}: the model is on {device} but this rank trains on {ctx.device}; load it "
                        "after rlvr joined the process group (torch.cuda.set_device(LOCAL_RANK)) or on that device")


def default_store() -> dist.Store:
    """The key-value store the process group was formed through (torchrun's agent hosts it, so it
    outlives a worker that dies); used for agreement that must not depend on the device backend."""
    return dist.distributed_c10d._get_default_store()


def agree_on_device_type(ctx: DistContext, device_type: str, tag: str = "device") -> None:
    """Every rank posts its device type in the store and reads the others'; a mix is refused on every rank.

    Through the store, not a collective: a CUDA rank would route a collective to NCCL and a CPU rank to
    gloo, and the two would never meet.
    """
    if not ctx.is_distributed:
        return
    store = default_store()
    store.set(f"rlvr/{tag}/{ctx.rank}", device_type)
    check_same_device_type([store.get(f"rlvr/{tag}/{r}").decode() for r in range(ctx.world_size)])


def shutdown(ctx: DistContext) -> None:
    if ctx.is_distributed and dist.is_initialized():
        dist.destroy_process_group()
