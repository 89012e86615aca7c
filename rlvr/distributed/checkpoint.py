"""Trainable weights and optimizer state through torch.distributed.checkpoint (DCP).

DCP writes each rank's shards with the global layout beside them (replicated tensors once), and
loads into whatever layout the loading job has: a checkpoint written by 2 ranks of FSDP2 loads on
1 rank or 4, and a replicated LoRA checkpoint loads anywhere. State dicts go through
torch.distributed.checkpoint.state_dict, so parameter names are the model's own (FQNs), never
FSDP's flat buffers; frozen weights (a LoRA model's base) are not written.
Without a process group (one process) DCP runs in-process, so the same files serve both.
"""

from __future__ import annotations

from pathlib import Path

import torch

from rlvr.distributed.context import DistContext

DCP_DIR = "dcp"


def _options(full: bool = False, strict: bool = True):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(ignore_frozen_params=True, full_state_dict=full, cpu_offload=full, strict=strict)


def has_sharded_state(folder: Path) -> bool:
    return (Path(folder) / DCP_DIR / ".metadata").is_file()


def save_sharded_state(folder: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                       ctx: DistContext) -> None:
    """Every rank writes its part of the trainable weights and optimizer state to folder/dcp."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_state, optim_state = get_state_dict(model, optimizer, options=_options())
    dcp.save({"model": model_state, "optim": optim_state}, checkpoint_id=Path(folder) / DCP_DIR,
             no_dist=not ctx.is_distributed)


def load_sharded_state(folder: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                       ctx: DistContext) -> None:
    """Load folder/dcp into this job's layout (any world size), in place."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    model_state, optim_state = get_state_dict(model, optimizer, options=_options())
    state = {"model": model_state, "optim": optim_state}
    dcp.load(state, checkpoint_id=Path(folder) / DCP_DIR, no_dist=not ctx.is_distributed)
    # Not strict: the frozen weights were never written, and stay as loaded.
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"],
                   options=_options(strict=False))


def full_trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Whole (unsharded) trainable tensors on the CPU, e.g. for rank 0 to save a final model.

    Collective under FSDP2: every rank must call it; every rank gets the tensors.
    """
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    return get_model_state_dict(model, options=_options(full=True))
