"""The few collectives the trainers need, each a no-op in a one-process run.

Gradients are summed, not averaged: every micro-batch's loss is already its share of the whole
step's loss (semantics §5, with the step's counts taken over all ranks), so the sum over ranks is
the step's gradient, exactly as one process accumulating the same micro-batches gets it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import torch
import torch.distributed as dist

from rlvr.distributed.context import DistContext

REDUCE_OPS = ("mean", "sum", "min", "max")


def _group_by_kind(tensors: list[torch.Tensor]) -> dict[tuple, list[int]]:
    groups: dict[tuple, list[int]] = {}
    for i, t in enumerate(tensors):
        groups.setdefault((t.dtype, t.device), []).append(i)
    return groups


def all_reduce_gradients(params: Iterable[torch.nn.Parameter], ctx: DistContext) -> None:
    """Sum .grad of replicated parameters over ranks, one flat buffer per dtype and device.

    A parameter without a gradient on this rank contributes zeros (another rank may have one).
    DTensor parameters (FSDP2-sharded) are skipped: FSDP reduces those itself.
    """
    if not ctx.is_distributed:
        return
    params = [p for p in params if not _is_dtensor(p)]
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    for (_, device), idx in _group_by_kind(grads).items():
        flat = torch.cat([grads[i].reshape(-1) for i in idx])
        on_wire = flat.to(ctx.device)
        dist.all_reduce(on_wire, op=dist.ReduceOp.SUM)
        flat = on_wire.to(device)
        offset = 0
        for i in idx:
            n = grads[i].numel()
            summed = flat[offset:offset + n].view_as(params[i])
            if params[i].grad is None:
                params[i].grad = summed.clone()
            else:
                params[i].grad.copy_(summed)
            offset += n


def broadcast_parameters(params: Iterable[torch.nn.Parameter], ctx: DistContext, src: int = 0) -> None:
    """Copy rank `src`'s values into every rank's parameters (replicated weights start equal)."""
    if not ctx.is_distributed:
        return
    with torch.no_grad():
        for p in params:
            if _is_dtensor(p):
                continue
            buf = p.data.to(ctx.device)
            dist.broadcast(buf, src=src)
            p.data.copy_(buf.to(p.device))


def gather_rows(t: torch.Tensor, ctx: DistContext, pad_side: str = "right", pad_value: float = 0) -> torch.Tensor:
    """Every rank's rows of `t` ([n_r] or [n_r, w_r]), concatenated in rank order.

    Ranks may differ in n_r and (for 2-D tensors) in w_r: columns are padded to the widest on
    `pad_side` ('left' for left-padded prompts) with `pad_value`, rows trimmed back after the gather.
    """
    if not ctx.is_distributed:
        return t
    if t.dtype == torch.bool:  # not every backend reduces or gathers bool
        return gather_rows(t.to(torch.uint8), ctx, pad_side, pad_value).bool()
    if pad_side not in ("left", "right"):
        raise ValueError(f"pad_side must be 'left' or 'right', got {pad_side!r}")
    shape = torch.tensor([t.shape[0], t.shape[1] if t.dim() == 2 else 1], device=ctx.device)
    shapes = [torch.zeros_like(shape) for _ in range(ctx.world_size)]
    dist.all_gather(shapes, shape)
    rows = [int(s[0]) for s in shapes]
    width = max(int(s[1]) for s in shapes)
    local = t.to(ctx.device)
    if t.dim() == 2 and t.shape[1] < width:
        pad = (width - t.shape[1], 0) if pad_side == "left" else (0, width - t.shape[1])
        local = torch.nn.functional.pad(local, pad, value=pad_value)
    if t.shape[0] < max(rows):
        local = torch.cat([local, local.new_full((max(rows) - t.shape[0], *local.shape[1:]), pad_value)])
    parts = [torch.empty_like(local) for _ in range(ctx.world_size)]
    dist.all_gather(parts, local.contiguous())
    return torch.cat([part[:n] for part, n in zip(parts, rows)]).to(t.device)


def all_reduce_sum(values: list[float], ctx: DistContext) -> list[float]:
    """Element-wise sums over ranks (float64), e.g. a step's sequence and token counts."""
    if not ctx.is_distributed:
        return list(values)
    buf = torch.tensor(values, dtype=torch.float64, device=ctx.device)
    dist.all_reduce(buf, op=dist.ReduceOp.SUM)
    return buf.tolist()


def any_rank(flag: bool, ctx: DistContext) -> bool:
    """True on every rank when it is true on any (a stop request seen by one rank stops all at one step)."""
    if not ctx.is_distributed:
        return flag
    buf = torch.tensor([1 if flag else 0], device=ctx.device)
    dist.all_reduce(buf, op=dist.ReduceOp.MAX)
    return bool(buf.item())


def reduce_metric_values(per_rank: list[Mapping[str, float]], ops: Mapping[str, str]) -> dict[str, float]:
    """Combine the ranks' metric dicts key by key: ops[key] in REDUCE_OPS, 'mean' by default.

    A key some ranks lack is reduced over the ranks that have it; NaN values are left out.
    """
    keys: list[str] = []
    for metrics in per_rank:
        keys += [k for k in metrics if k not in keys]
    out = {}
    for key in keys:
        op = ops.get(key, "mean")
        if op not in REDUCE_OPS:
            raise ValueError(f"metric op for {key!r} must be one of {REDUCE_OPS}, got {op!r}")
        values = [float(m[key]) for m in per_rank if key in m and not math.isnan(float(m[key]))]
        if not values:
            out[key] = math.nan
        elif op == "sum":
            out[key] = math.fsum(values)
        elif op == "min":
            out[key] = min(values)
        elif op == "max":
            out[key] = max(values)
        else:
            out[key] = math.fsum(values) / len(values)
    return out


def reduce_metrics(metrics: Mapping[str, float], ctx: DistContext, ops: Mapping[str, str] | None = None
                   ) -> dict[str, float]:
    """The metrics of the whole job, identical on every rank (see reduce_metric_values)."""
    if not ctx.is_distributed:
        return dict(metrics)
    return reduce_metric_values(gather_objects(dict(metrics), ctx), ops or {})


def gather_objects(obj, ctx: DistContext) -> list:
    """Every rank's `obj` (picklable), in rank order, on every rank."""
    if not ctx.is_distributed:
        return [obj]
    out: list = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def barrier(ctx: DistContext) -> None:
    if ctx.is_distributed:
        dist.barrier()


def _is_dtensor(t: torch.Tensor) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(t, DTensor)
