"""Optimizer and learning-rate schedule, with TRL's names for their settings."""

from __future__ import annotations

import importlib.util
import logging
import math

import torch

from rlvr.errors import RlvrError

log = logging.getLogger("rlvr")

EIGHT_BIT_OPTIMS = ("adamw_8bit", "paged_adamw_8bit")


def trainable_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def build_optimizer(params, optim: str, lr: float, betas: tuple[float, float], eps: float,
                    weight_decay: float) -> torch.optim.Optimizer:
    """AdamW; the 8-bit variants need bitsandbytes and a CUDA device, else plain AdamW (with a warning)."""
    params = list(params)
    optim = resolve_optim(optim, any(p.is_cuda for p in params))
    if optim in EIGHT_BIT_OPTIMS:
        import bitsandbytes as bnb

        cls = bnb.optim.PagedAdamW8bit if optim.startswith("paged") else bnb.optim.AdamW8bit
        return cls(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
    return torch.optim.AdamW(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)


def effective_optim(optim: str, on_cuda: bool) -> str:
    """The optimizer that will run: an 8-bit one needs bitsandbytes on CUDA, else adamw_torch."""
    if optim in EIGHT_BIT_OPTIMS and not (on_cuda and importlib.util.find_spec("bitsandbytes") is not None):
        return "adamw_torch"
    return optim


def resolve_optim(optim: str, on_cuda: bool) -> str:
    """effective_optim, with a warning when it is not the one asked for."""
    if effective_optim(optim, on_cuda) != optim:
        need = "bitsandbytes (pip install bitsandbytes)" if on_cuda else "a CUDA GPU"
        log.warning("train.optim %s needs %s; using adamw_torch instead (set optim: adamw_torch to silence this)",
                    optim, need)
        return "adamw_torch"
    return optim


def grad_scaler(model: torch.nn.Module, device: torch.device):
    """A loss scaler when the model computes in float16 (fp16 gradients underflow without one), else None.

    Trainable parameters must be fp32 (LoRA adapters are, peft upcasts them): the scaler unscales
    into them, and fp16 master weights would lose the small updates anyway.
    """
    if not any(p.dtype == torch.float16 for p in model.parameters()):
        return None
    if any(p.requires_grad and p.dtype == torch.float16 for p in model.parameters()):
        raise RlvrError("float16 training needs float32 trainable weights: use LoRA (its adapters are float32), "
                        "or model.dtype: bfloat16 / float32 for full fine-tuning")
    return torch.amp.GradScaler(device.type)


def lr_lambda(kind: str, warmup_steps: int, total_steps: int):
    """Multiplier of the base lr at step s: linear warmup, then cosine/linear decay to 0, or constant."""

    def f(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        if kind == "constant":
            return 1.0
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        progress = min(1.0, progress)
        if kind == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        return 1.0 - progress

    return f


def build_scheduler(optimizer, kind: str, warmup_ratio: float, total_steps: int):
    warmup = math.ceil(warmup_ratio * total_steps)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(kind, warmup, total_steps))
