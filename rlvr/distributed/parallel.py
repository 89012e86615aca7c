"""Data parallelism applied to a model from outside: replicated adapters or FSDP2-sharded layers.

- LoRA/QLoRA (a few trainable parameters): every rank holds the whole model; the adapters start
  equal (broadcast from rank 0) and their gradients are summed over ranks once per optimizer step
  (`sync_gradients`), after all of the rank's micro-batches — exact, and indifferent to how many
  backward passes each rank ran (token-budget pieces may differ between ranks).
- Full fine-tuning: each decoder layer is wrapped by FSDP2's `fully_shard` (parameters, gradients
  and optimizer state sharded over ranks; bf16 all-gathers and fp32 reduce-scatters on CUDA when
  training in bf16). Embeddings, the final norm and lm_head stay replicated like adapters: the
  chunked log-probs use lm_head's weight directly, outside its forward, so it must be whole.

The model stays the model (no wrapper class): the trainers call `sync_gradients` and
`clip_grad_norm` and nothing else changes for them.
"""

from __future__ import annotations

import contextlib

import torch
import torch.distributed as dist

from rlvr.distributed.collectives import _is_dtensor, all_reduce_gradients, broadcast_parameters
from rlvr.distributed.context import DistContext
from rlvr.errors import RlvrError
from rlvr.models.checkpointing import decoder_layers


def _layers_to_shard(model: torch.nn.Module) -> torch.nn.ModuleList:
    try:
        return decoder_layers(model)
    except RlvrError:
        raise RlvrError(f"{type(model).__name__}: no list of decoder layers to shard with FSDP2; use LoRA, which "
                        "replicates the model instead of sharding it") from None


def shard_full_model(model: torch.nn.Module, ctx: DistContext, bf16: bool = False) -> int:
    """fully_shard every decoder layer (gradients summed, not averaged); returns how many were wrapped."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    policy = MixedPrecisionPolicy()
    if bf16 and ctx.device.type == "cuda":
        policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    layers = _layers_to_shard(model)
    for layer in layers:
        fully_shard(layer, mp_policy=policy)
        # The loss is already each rank's share of the global step loss: sum, don't average
        # (and as a plain SUM: gloo has no PREMUL_SUM, which a divide factor would otherwise use).
        layer.set_gradient_divide_factor(1.0)
        layer.set_force_sum_reduction_for_comms(True)
    return len(layers)


def is_sharded(model: torch.nn.Module) -> bool:
    return any(_is_dtensor(p) for p in model.parameters())


def parallelize(model: torch.nn.Module, ctx: DistContext, full_weights: bool, bf16: bool = False) -> str:
    """Make `model` data-parallel over ctx's ranks; returns 'fsdp', 'replicate' or 'none'."""
    if not ctx.is_distributed:
        return "none"
    mode = "replicate"
    if full_weights:
        shard_full_model(model, ctx, bf16=bf16)
        mode = "fsdp"
    # Everything not sharded (adapters, or embeddings/norm/lm_head) starts as rank 0's copy.
    broadcast_parameters([p for p in model.parameters() if p.requires_grad], ctx)
    return mode


def sync_gradients(model: torch.nn.Module, ctx: DistContext) -> None:
    """Sum the replicated trainable parameters' gradients over ranks (FSDP did the sharded ones)."""
    all_reduce_gradients([p for p in model.parameters() if p.requires_grad], ctx)


def clip_grad_norm(params: list[torch.nn.Parameter], max_norm: float, ctx: DistContext) -> torch.Tensor:
    """torch.nn.utils.clip_grad_norm_ over a mix of sharded (DTensor) and replicated gradients.

    The squared norms of sharded gradients are summed over ranks (the shards are disjoint); those
    of replicated ones are already equal on every rank. Returns the total norm before clipping,
    the same on every rank (non-finite when a gradient is: the trainer then skips the step).
    """
    grads = [p.grad for p in params if p.grad is not None]
    if not any(_is_dtensor(g) for g in grads):
        # Replicated gradients are equal on every rank after sync_gradients: torch's own clip.
        return torch.nn.utils.clip_grad_norm_(params, max_norm)
    sharded = [g.to_local() for g in grads if _is_dtensor(g)]
    whole = [g for g in grads if not _is_dtensor(g)]
    local = sum(torch.linalg.vector_norm(g.float()).pow(2).to(ctx.device) for g in sharded)
    if ctx.is_distributed:
        dist.all_reduce(local, op=dist.ReduceOp.SUM)
    total_sq = local + sum((torch.linalg.vector_norm(g.float()).pow(2).to(ctx.device) for g in whole),
                           torch.zeros((), device=ctx.device))
    total = total_sq.sqrt()
    # As torch.nn.utils.clip_grad_norm_: scale by min(1, max_norm / (norm + 1e-6)).
    coef = torch.clamp(max_norm / (total + 1e-6), max=1.0)
    for g in grads:
        (g.to_local() if _is_dtensor(g) else g).mul_(coef.to(g.device))
    return total


@contextlib.contextmanager
def gathered_for_decoding(model: torch.nn.Module):
    """Whole weights for a rollout under FSDP2: every layer unsharded once, no collective per token.

    Ranks may then run different numbers of forward passes (their completions end at different
    steps); the layers are resharded on exit. Without FSDP this does nothing.
    """
    from torch.distributed.fsdp import FSDPModule

    sharded = [m for m in model.modules() if isinstance(m, FSDPModule)]
    for m in sharded:
        m.unshard()
        m.set_reshard_after_forward(False)
    try:
        yield model
    finally:
        for m in sharded:
            m.reshard()
            m.set_reshard_after_forward(True)
