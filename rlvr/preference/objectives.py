"""Each preference method as a function of a micro-batch's log-probs: its loss terms and its metrics.

An objective maps the policy's (and the reference's) per-sequence log-probs to per-pair losses, the
weight of the NLL term on the chosen tokens, and per-pair metric values under TRL's names; the
trainer turns those into the micro-batch's share of the step loss with `preference_loss`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor

from rlvr.preference.config import CPOConfig, DPOConfig, KTOConfig, ORPOConfig
from rlvr.preference.losses import (
    DPOParams,
    cpo_pair_losses,
    cpo_uses_average,
    dpo_inputs,
    dpo_nll_weight,
    dpo_pair_losses,
    dpo_rewards,
    kto_losses,
    orpo_pair_losses,
    pair_reward_stats,
)


@dataclass(frozen=True)
class PairLogps:
    """A micro-batch's pairs; each tensor is [B]. ref_* are None for reference-free methods."""

    chosen: Tensor  # Σ log π over the chosen completion
    rejected: Tensor
    chosen_lengths: Tensor
    rejected_lengths: Tensor
    ref_chosen: Tensor | None = None
    ref_rejected: Tensor | None = None


@dataclass(frozen=True)
class LossTerms:
    pair_losses: Tensor  # [B] (KTO: per example)
    nll_weight: float  # weight of −Σ log π(chosen tokens) / chosen tokens of the step
    stats: dict[str, Tensor]  # per-pair metric values, TRL's names


def _logps_stats(chosen: Tensor, rejected: Tensor) -> dict[str, Tensor]:
    return {"logps/chosen": chosen, "logps/rejected": rejected}


def dpo_terms(x: PairLogps, cfg: DPOConfig) -> LossTerms:
    inputs = dpo_inputs(x.chosen, x.rejected, x.ref_chosen, x.ref_rejected, x.chosen_lengths, x.rejected_lengths,
                        cfg.f_divergence_type, cfg.f_alpha_divergence_coef)
    params = DPOParams(cfg.beta, cfg.label_smoothing, cfg.discopop_tau)
    losses = dpo_pair_losses(inputs, cfg.loss_type, cfg.loss_weights, params)
    stats = {**pair_reward_stats(*dpo_rewards(inputs, cfg.beta)), **_logps_stats(x.chosen, x.rejected)}
    return LossTerms(losses, dpo_nll_weight(cfg.loss_type, cfg.loss_weights), stats)


def cpo_terms(x: PairLogps, cfg: CPOConfig) -> LossTerms:
    chosen, rejected = x.chosen, x.rejected
    if cpo_uses_average(cfg.loss_type):
        chosen, rejected = chosen / x.chosen_lengths.clamp(min=1), rejected / x.rejected_lengths.clamp(min=1)
    losses, chosen_r, rejected_r = cpo_pair_losses(chosen, rejected, cfg.loss_type, cfg.beta, cfg.label_smoothing,
                                                   cfg.simpo_gamma, cfg.alpha)
    return LossTerms(losses, cfg.cpo_alpha, {**pair_reward_stats(chosen_r, rejected_r),
                                             **_logps_stats(chosen, rejected)})


def orpo_terms(x: PairLogps, cfg: ORPOConfig) -> LossTerms:
    """ORPO: the NLL term covers the chosen completion's tokens, as the paper's L_SFT (Eq. 6) and CPO do;
    TRL's ORPOTrainer also counts the prompt's tokens in it."""
    chosen, rejected = x.chosen / x.chosen_lengths.clamp(min=1), x.rejected / x.rejected_lengths.clamp(min=1)
    losses, log_odds = orpo_pair_losses(chosen, rejected, cfg.beta)
    stats = {**pair_reward_stats(cfg.beta * chosen.detach(), cfg.beta * rejected.detach()),
             **_logps_stats(chosen, rejected), "log_odds_ratio": -losses.detach() / cfg.beta,
             "log_odds_chosen": log_odds}
    return LossTerms(losses, 1.0, stats)


PAIR_OBJECTIVES: dict[str, Callable[[PairLogps, object], LossTerms]] = {
    "dpo": dpo_terms,
    "cpo": cpo_terms,
    "orpo": orpo_terms,
}
NEEDS_REFERENCE = ("dpo", "kto")


def kto_terms(logps: Tensor, ref_logps: Tensor, desirable: Tensor, kl: Tensor | float, cfg: KTOConfig) -> LossTerms:
    losses, rewards = kto_losses(logps, ref_logps, desirable, kl, cfg.loss_type, cfg.beta, cfg.desirable_weight,
                                 cfg.undesirable_weight)
    stats = {"rewards/chosen": rewards[desirable], "rewards/rejected": rewards[~desirable],
             "logps/chosen": logps[desirable], "logps/rejected": logps[~desirable]}
    return LossTerms(losses, 0.0, stats)
