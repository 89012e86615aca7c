"""The per-token GRPO objective and its aggregation (semantics §4–§5), as functions of tensors.

Shapes: B completions in a micro-batch, T completion tokens. Every function here is pure; the
trainer decides which tensors to pass (ℓ^old = None when the policy cannot have moved).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

TIS_MODES = ("token_truncate", "token_mask", "sequence_truncate", "sequence_mask")


def _masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (x * mask).sum() / mask.sum().clamp(min=1)


def importance_log_weights(
    logps: torch.Tensor,  # [B, T] ℓ, with grad
    old_logps: torch.Tensor,  # [B, T] ℓ^old, no grad
    mask: torch.Tensor,  # [B, T]
    level: str = "token",
) -> torch.Tensor:  # [B, T] or [B, 1]
    """log w: per token, or GSPO's length-normalised sequence value broadcast to its tokens."""
    log_ratio = logps - old_logps
    if level == "token":
        return log_ratio
    if level == "sequence":
        return ((log_ratio * mask).sum(-1) / mask.sum(-1).clamp(min=1)).unsqueeze(-1)
    raise ValueError(f"importance_sampling_level must be 'token' or 'sequence', got {level!r}")


def tis_weights(
    old_logps: torch.Tensor,  # [B, T] ℓ^old from the trainer
    rollout_logps: torch.Tensor,  # [B, T] ℓ^roll from the rollout engine
    mask: torch.Tensor,  # [B, T]
    mode: str = "token_truncate",
    cap: float = 2.0,
) -> torch.Tensor:  # [B, T] or [B, 1]
    """ρ correcting the rollout engine / trainer mismatch (truncated or masked importance sampling)."""
    delta = (old_logps - rollout_logps).detach()
    if mode.startswith("token"):
        rho = torch.exp(delta)
    elif mode.startswith("sequence"):
        rho = torch.exp((delta * mask).sum(-1, keepdim=True))
    else:
        raise ValueError(f"vllm_importance_sampling_mode must be one of {TIS_MODES}, got {mode!r}")
    if mode.endswith("truncate"):
        return rho.clamp(max=cap)
    return torch.where(rho > cap, torch.zeros_like(rho), rho)


def k3_kl(logps: torch.Tensor, ref_logps: torch.Tensor) -> torch.Tensor:
    """d_t = exp(ℓ^ref − ℓ) − (ℓ^ref − ℓ) − 1: non-negative, unbiased for KL(π‖π_ref)."""
    diff = ref_logps - logps
    return torch.exp(diff) - diff - 1


@dataclass
class TokenLoss:
    loss: torch.Tensor  # [B, T] L_t before masking/aggregation
    log_weights: torch.Tensor  # [B, T] or [B, 1], detached, for clip metrics
    kl: torch.Tensor | None  # [B, T] d_t, detached


def per_token_loss(
    logps: torch.Tensor,  # [B, T]
    old_logps: torch.Tensor | None,  # [B, T]; None → ℓ^old = sg(ℓ), ratio exactly 1
    advantages: torch.Tensor,  # [B]
    mask: torch.Tensor,  # [B, T]
    *,
    epsilon_low: float = 0.2,
    epsilon_high: float | None = None,
    delta: float | None = None,
    importance_sampling_level: str = "token",
    ref_logps: torch.Tensor | None = None,  # [B, T], needed when beta > 0
    beta: float = 0.0,
    tis: torch.Tensor | None = None,  # [B, T] or [B, 1] ρ from tis_weights
) -> TokenLoss:
    """L_t = −min(w·A, clip(w)·A), then ·ρ (TIS), then + β·d_t (semantics §4)."""
    if old_logps is None:
        old_logps = logps.detach()
    eps_high = epsilon_low if epsilon_high is None else epsilon_high
    log_w = importance_log_weights(logps, old_logps, mask, importance_sampling_level)
    w = torch.exp(log_w)
    clipped = torch.clamp(w, 1 - epsilon_low, 1 + eps_high)
    unclipped = w if delta is None else torch.clamp(w, max=delta)
    adv = advantages.unsqueeze(-1)
    loss = -torch.min(unclipped * adv, clipped * adv)
    if tis is not None:
        loss = loss * tis
    kl = None
    if beta != 0.0:
        if ref_logps is None:
            raise ValueError("beta > 0 needs ref_logps")
        kl_t = k3_kl(logps, ref_logps)
        loss = loss + beta * kl_t
        kl = kl_t.detach()
    # A [B, 1] sequence weight broadcasts against [B, T] above; expand so callers see one shape.
    return TokenLoss(loss=loss.expand_as(mask) if loss.shape != mask.shape else loss,
                     log_weights=log_w.detach(), kl=kl)


@dataclass(frozen=True)
class StepShape:
    """What aggregation needs to know about the whole optimizer step S (all micro-batches)."""

    num_sequences: int  # |S|
    num_tokens: int  # active tokens in S (Σ m)
    num_micro_batches: int
    max_completion_length: int


def _grpo(masked: torch.Tensor, mask: torch.Tensor, step: StepShape, micro_batch_tokens: int | None) -> torch.Tensor:
    per_seq = masked.sum(-1) / mask.sum(-1).clamp(min=1)  # each sequence's token mean, then over S
    return per_seq.sum() / max(1, step.num_sequences)


def _bnpo(masked: torch.Tensor, mask: torch.Tensor, step: StepShape, micro_batch_tokens: int | None) -> torch.Tensor:
    tokens = mask.sum().clamp(min=1) if micro_batch_tokens is None else max(1, micro_batch_tokens)
    return masked.sum() / tokens / max(1, step.num_micro_batches)  # token mean per micro-batch


def _dr_grpo(masked: torch.Tensor, mask: torch.Tensor, step: StepShape, micro_batch_tokens: int | None) -> torch.Tensor:
    return masked.sum() / max(1, step.num_sequences * step.max_completion_length)  # a constant normaliser


def _dapo(masked: torch.Tensor, mask: torch.Tensor, step: StepShape, micro_batch_tokens: int | None) -> torch.Tensor:
    return masked.sum() / max(1, step.num_tokens)  # token mean over S


# loss_type → aggregation; the config's choices for train.loss_type are these keys.
AGGREGATIONS = {"grpo": _grpo, "bnpo": _bnpo, "dr_grpo": _dr_grpo, "dapo": _dapo}
LOSS_TYPES = tuple(AGGREGATIONS)


def aggregate(loss: torch.Tensor, mask: torch.Tensor, loss_type: str, step: StepShape,
              micro_batch_tokens: int | None = None) -> torch.Tensor:
    """This micro-batch's share of the step loss; the shares of S sum to the step's loss.

    Summing shares (not averaging micro-batch means) is what makes grpo, dr_grpo and dapo
    independent of how S is split into micro-batches (semantics §5). bnpo normalises by its
    micro-batch's tokens: when a micro-batch is run in pieces (a token budget), pass the whole
    micro-batch's count as micro_batch_tokens so the pieces add up to its loss.
    """
    if loss_type not in AGGREGATIONS:
        raise ValueError(f"loss_type must be one of {LOSS_TYPES}, got {loss_type!r}")
    return AGGREGATIONS[loss_type](loss * mask, mask, step, micro_batch_tokens)


def router_aux_share(piece_tokens: int, micro_batch_tokens: int, step: StepShape) -> float:
    """The weight of one forward's router aux loss in the step loss. TRL adds coef · aux / GA for each
    micro-batch, so the step holds the mean over its micro-batches (every rank's, in a data-parallel run);
    a micro-batch run in pieces (a token budget) splits its weight by the pieces' unpadded tokens."""
    return piece_tokens / max(1, micro_batch_tokens) / max(1, step.num_micro_batches)


def clip_metrics(
    log_weights: torch.Tensor,  # [B, T] (token level) or [B, 1] (sequence level, GSPO)
    advantages: torch.Tensor,  # [B]
    mask: torch.Tensor,  # [B, T]
    epsilon_low: float,
    epsilon_high: float | None,
) -> dict[str, float]:
    """Share of weights outside the trust region on the side that clips, as TRL 1.16 counts it.

    Token-level weights are averaged over active tokens; a sequence-level weight is one value per
    sequence, so it is averaged over the B sequences (a long sequence counts once, not per token).
    """
    eps_high = epsilon_low if epsilon_high is None else epsilon_high
    w = torch.exp(log_weights)
    adv = advantages.unsqueeze(-1)
    low = ((w < 1 - epsilon_low) & (adv < 0)).float()
    high = ((w > 1 + eps_high) & (adv > 0)).float()
    region = torch.maximum(low, high)
    per_sequence = log_weights.shape[-1] == 1 and mask.shape[-1] != 1

    def mean(x: torch.Tensor) -> float:
        return (x.mean() if per_sequence else _masked_mean(x.expand_as(mask), mask)).item()

    return {"clip_ratio/low_mean": mean(low), "clip_ratio/high_mean": mean(high),
            "clip_ratio/region_mean": mean(region)}


def clip_metric_share(log_weights: torch.Tensor, mask: torch.Tensor, step: StepShape) -> float:
    """This micro-batch's share of the step's clip metrics: its sequences' share at sequence level,
    its tokens' share at token level (what `clip_metrics` averages over)."""
    if log_weights.shape[-1] == 1 and mask.shape[-1] != 1:
        return mask.shape[0] / max(1, step.num_sequences)
    return mask.sum().item() / max(1, step.num_tokens)
