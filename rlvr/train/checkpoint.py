"""Checkpoints that survive a crash mid-save.

A checkpoint is written to a temporary folder, fsynced, and renamed into place; the `latest` pointer
moves (by an atomic rename of a small file) only after that. A crash at any moment leaves the
previous checkpoint loadable.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import torch

from rlvr.distributed.checkpoint import (
    full_trainable_state,
    has_sharded_state,
    load_sharded_state,
    save_sharded_state,
)
from rlvr.distributed.collectives import barrier
from rlvr.distributed.context import DistContext
from rlvr.distributed.parallel import is_sharded
from rlvr.errors import RlvrError

LATEST = "latest"
BEST = "best"  # the run directory's folder for the model with the best evaluation so far
BEST_RECORD = "best_metric.json"  # inside it: metric, value, step


def rng_state() -> dict:
    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_trainable(model, folder: Path, dist: DistContext | None = None) -> None:
    """The adapter in peft format, or the full weights when there is no adapter (rank 0 writes).

    FSDP2-sharded weights are gathered whole first: every rank must call this then."""
    ctx = dist or DistContext()
    if is_sharded(model):
        state = full_trainable_state(model)  # collective
        if ctx.is_main:
            model.save_pretrained(folder, state_dict=state, safe_serialization=True)
        barrier(ctx)
        return
    if not ctx.is_main:
        return
    if hasattr(model, "peft_config"):
        model.save_pretrained(folder)
    else:
        model.save_pretrained(folder, safe_serialization=True)


def save_best(model, run_dir: Path, record: dict, dist: DistContext | None = None) -> Path:
    """best/ (the adapter, or the full weights, with best_metric.json), replaced atomically enough that a crash
    leaves the old best/ or the new one: written under a temporary name, then swapped in by two renames."""
    ctx = dist or DistContext()
    final, tmp, old = run_dir / BEST, run_dir / f".tmp-{BEST}", run_dir / f".old-{BEST}"
    if ctx.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
    save_trainable(model, tmp, ctx)  # every rank takes part when the weights are sharded
    if ctx.is_main:
        (tmp / BEST_RECORD).write_text(json.dumps(record, indent=1))
        _fsync_tree(tmp)
        shutil.rmtree(old, ignore_errors=True)
        if final.exists():
            os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    barrier(ctx)
    return final


def load_trainable(model, folder: Path) -> None:
    """Put the weights save_trainable wrote in `folder` back into `model` (an adapter, or full weights)."""
    if hasattr(model, "peft_config"):
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        from rlvr.models.adapter_checks import check_adapter_fits

        check_adapter_fits(model, folder)  # e.g. a changed lora_rank: one line, not a size-mismatch traceback
        set_peft_model_state_dict(model, load_file(str(folder / "adapter_model.safetensors")))
    else:
        from transformers import AutoModelForCausalLM

        loaded = AutoModelForCausalLM.from_pretrained(folder)
        model.load_state_dict(loaded.state_dict())


def _fsync_tree(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            with open(path, "rb") as f:
                os.fsync(f.fileno())


def save_checkpoint(run_dir: Path, step: int, model, optimizer, scheduler, trainer_state: dict,
                    keep: int | None = None, extra: dict | None = None, dist: DistContext | None = None) -> Path:
    """Write checkpoints/step-N atomically; `extra` maps file names to objects saved with torch.save.

    Every rank calls this. Replicated weights (one process, or LoRA on several) are written by rank 0
    in peft / transformers format with the optimizer's state_dict; FSDP2-sharded weights and their
    optimizer state by every rank through DCP (checkpoint/dcp, loadable on any number of ranks).
    Rank 0 renames the folder into place only after every rank has written its part.
    """
    ctx = dist or DistContext()
    sharded = is_sharded(model)
    ckpt_root = run_dir / "checkpoints"
    final = ckpt_root / f"step-{step:06d}"
    tmp = ckpt_root / f".tmp-step-{step:06d}"
    if ctx.is_main:
        ckpt_root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    barrier(ctx)
    if sharded:
        save_sharded_state(tmp, model, optimizer, ctx)
    if ctx.is_main:
        if not sharded:
            save_trainable(model, tmp / "model")
        torch.save({"optimizer": None if sharded else optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                    "rng": rng_state()}, tmp / "training_state.pt")
        for name, obj in (extra or {}).items():
            torch.save(obj, tmp / name)
        (tmp / "trainer_state.json").write_text(json.dumps(trainer_state, indent=1))
    barrier(ctx)  # every rank's shards are on disk
    if ctx.is_main:
        _fsync_tree(tmp)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        pointer_tmp = ckpt_root / f".{LATEST}.tmp"
        pointer_tmp.write_text(final.name)
        os.replace(pointer_tmp, ckpt_root / LATEST)
        if keep:
            _prune(ckpt_root, keep)
    return final


def _prune(ckpt_root: Path, keep: int) -> None:
    done = sorted(p for p in ckpt_root.glob("step-*") if p.is_dir())
    for old in done[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def resolve_checkpoint(run_dir: Path, which: str) -> Path:
    """`which` is 'latest' (the run directory's newest complete checkpoint) or a checkpoint folder."""
    if which == LATEST:
        pointer = run_dir / "checkpoints" / LATEST
        if not pointer.is_file():
            raise RlvrError(f"--resume: no checkpoint in {run_dir}/checkpoints; start without --resume")
        path = run_dir / "checkpoints" / pointer.read_text().strip()
    else:
        path = Path(which)
    if not (path / "trainer_state.json").is_file():
        raise RlvrError(f"--resume: {path} is not a complete checkpoint (trainer_state.json missing)")
    return path


def load_checkpoint(path: Path, model, optimizer, scheduler, dist: DistContext | None = None) -> dict:
    """Restore weights, optimizer, schedule and RNG in place; return the trainer state.

    A DCP checkpoint (written by FSDP2 ranks) loads into this job's layout, sharded or not."""
    model_dir = path / "model"
    if has_sharded_state(path):
        load_sharded_state(path, model, optimizer, dist or DistContext())
    elif is_sharded(model):
        raise RlvrError(f"--resume: {path} holds whole weights written by one process; FSDP2 resumes from a "
                        "checkpoint written under torchrun (checkpoint/dcp); resume this one on one process")
    else:
        load_trainable(model, model_dir)
    state = torch.load(path / "training_state.pt", weights_only=False)
    if state["optimizer"] is not None:  # None: it is in the DCP files
        optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    set_rng_state(state["rng"])
    return json.loads((path / "trainer_state.json").read_text())
