"""Preference-optimisation losses as functions of per-sequence log-probs: DPO, CPO/SimPO, ORPO, KTO.

Every function takes summed (or, where the method says so, length-averaged) completion log-probs
of the policy and, where the method has one, of the reference, and returns a loss per pair (per
example for KTO). How the per-pair losses become a step loss is `preference_loss`: their sum over
the step's pair count, plus an optional NLL term on the chosen tokens over the step's chosen-token
count, so a step's loss does not depend on how it is split into micro-batches.

The formulas are TRL 1.16's (trl/trainer/dpo_trainer.py `_compute_loss`, trl/experimental/cpo
`cpo_loss`, trl/experimental/orpo `odds_ratio_loss`, trl/trainer/kto_trainer.py `_compute_loss`);
tests/test_preference_losses.py runs TRL's own code on the same tensors, values and gradients.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

# ---------------------------------------------------------------- DPO


@dataclass(frozen=True)
class DPOInputs:
    """The per-pair quantities DPO's loss types are written in; each tensor is [B]."""

    chosen_logps: Tensor  # Σ log π(y_w|x) over the chosen completion's tokens
    rejected_logps: Tensor
    ref_chosen_logps: Tensor  # the same under the reference model
    ref_rejected_logps: Tensor
    chosen_lengths: Tensor  # completion tokens, float
    rejected_lengths: Tensor
    chosen_scores: Tensor  # f'(π/π_ref) of the chosen log-ratio (the log-ratio itself for reverse_kl)
    rejected_scores: Tensor

    @property
    def chosen_logratios(self) -> Tensor:
        return self.chosen_logps - self.ref_chosen_logps

    @property
    def rejected_logratios(self) -> Tensor:
        return self.rejected_logps - self.ref_rejected_logps

    @property
    def delta_score(self) -> Tensor:
        return self.chosen_scores - self.rejected_scores


@dataclass(frozen=True)
class DPOParams:
    beta: float = 0.1
    label_smoothing: float = 0.0
    discopop_tau: float = 0.05


def _smoothed_sigmoid(z: Tensor, eps: float) -> Tensor:
    return -F.logsigmoid(z) * (1 - eps) - F.logsigmoid(-z) * eps


def _sigmoid(x: DPOInputs, p: DPOParams) -> Tensor:
    return -F.logsigmoid(p.beta * x.delta_score)


def _hinge(x: DPOInputs, p: DPOParams) -> Tensor:
    return torch.relu(1 - p.beta * x.delta_score)


def _ipo(x: DPOInputs, p: DPOParams) -> Tensor:
    # Per-token average of the scores (TRL's normalisation, confirmed with the IPO authors), Eq. 17 with τ = β.
    delta = x.chosen_scores / x.chosen_lengths.clamp(min=1.0) - x.rejected_scores / x.rejected_lengths.clamp(min=1.0)
    return (delta - 1 / (2 * p.beta)) ** 2


def _exo_pair(x: DPOInputs, p: DPOParams) -> Tensor:
    # EXO-pref (arXiv 2402.00856, Eq. 16): KL(softmax over {chosen, rejected} ‖ [1-ε, ε]).
    z = p.beta * x.delta_score
    eps = torch.tensor(p.label_smoothing, device=z.device)
    return (torch.sigmoid(z) * (F.logsigmoid(z) - torch.log1p(-eps))
            + torch.sigmoid(-z) * (F.logsigmoid(-z) - torch.log(eps)))


def _nca_pair(x: DPOInputs, p: DPOParams) -> Tensor:
    chosen, rejected = p.beta * x.chosen_logratios, p.beta * x.rejected_logratios
    return -F.logsigmoid(chosen) - 0.5 * F.logsigmoid(-chosen) - 0.5 * F.logsigmoid(-rejected)


def _robust(x: DPOInputs, p: DPOParams) -> Tensor:
    z, eps = p.beta * x.delta_score, p.label_smoothing
    return (-(1 - eps) * F.logsigmoid(z) + eps * F.logsigmoid(-z)) / (1 - 2 * eps)


def _bco_pair(x: DPOInputs, p: DPOParams) -> Tensor:
    return -F.logsigmoid(p.beta * x.chosen_logratios) - F.logsigmoid(-p.beta * x.rejected_logratios)


def _sppo_hard(x: DPOInputs, p: DPOParams) -> Tensor:
    return (x.chosen_logratios - 0.5 / p.beta) ** 2 + (x.rejected_logratios + 0.5 / p.beta) ** 2


def _aot(x: DPOInputs, p: DPOParams) -> Tensor:
    # Sorts across the batch (here: the micro-batch), as TRL does across its batch.
    policy, _ = torch.sort(x.chosen_logps - x.rejected_logps, dim=0)
    ref, _ = torch.sort(x.ref_chosen_logps - x.ref_rejected_logps, dim=0)
    return _smoothed_sigmoid(p.beta * (policy - ref), p.label_smoothing)


def _aot_unpaired(x: DPOInputs, p: DPOParams) -> Tensor:
    chosen, _ = torch.sort(x.chosen_logratios, dim=0)
    rejected, _ = torch.sort(x.rejected_logratios, dim=0)
    return _smoothed_sigmoid(p.beta * (chosen - rejected), p.label_smoothing)


def _apo_zero(x: DPOInputs, p: DPOParams) -> Tensor:
    return 1 - torch.sigmoid(p.beta * x.chosen_logratios) + torch.sigmoid(p.beta * x.rejected_logratios)


def _apo_down(x: DPOInputs, p: DPOParams) -> Tensor:
    return (torch.sigmoid(p.beta * x.chosen_logratios)
            + 1 - torch.sigmoid(p.beta * (x.chosen_logratios - x.rejected_logratios)))


def _discopop(x: DPOInputs, p: DPOParams) -> Tensor:
    z = p.beta * x.delta_score
    mix = torch.sigmoid(z / p.discopop_tau)
    return -F.logsigmoid(z) * (1 - mix) + torch.exp(-z) * mix


def _sigmoid_norm(x: DPOInputs, p: DPOParams) -> Tensor:
    delta = x.chosen_scores / x.chosen_lengths.clamp(min=1.0) - x.rejected_scores / x.rejected_lengths.clamp(min=1.0)
    return -F.logsigmoid(p.beta * delta)


# loss_type → per-pair loss. "sft" is not here: it is a token-level NLL term (see dpo_nll_weight).
DPO_PAIR_LOSSES: dict[str, Callable[[DPOInputs, DPOParams], Tensor]] = {
    "sigmoid": _sigmoid,
    "hinge": _hinge,
    "ipo": _ipo,
    "exo_pair": _exo_pair,
    "nca_pair": _nca_pair,
    "robust": _robust,
    "bco_pair": _bco_pair,
    "sppo_hard": _sppo_hard,
    "aot": _aot,
    "aot_unpaired": _aot_unpaired,
    "apo_zero": _apo_zero,
    "apo_down": _apo_down,
    "discopop": _discopop,
    "sigmoid_norm": _sigmoid_norm,
}
DPO_LOSS_TYPES = (*DPO_PAIR_LOSSES, "sft")
F_DIVERGENCE_TYPES = ("reverse_kl", "forward_kl", "js_divergence", "alpha_divergence")
# The f-DPO reparameterisation leaves β·log Z(x), which cancels only in a chosen − rejected difference.
F_DIVERGENCE_LOSS_TYPES = ("sigmoid", "sigmoid_norm", "hinge", "ipo", "exo_pair", "robust", "discopop", "sft")


def f_divergence_scores(logratios: Tensor, f_divergence_type: str = "reverse_kl", alpha: float = 0.5) -> Tensor:
    """f'(π/π_ref) of a log-ratio (f-DPO); reverse_kl gives the log-ratio itself."""
    if f_divergence_type == "reverse_kl":
        return logratios
    if f_divergence_type == "forward_kl":
        return 1 - torch.exp(-logratios)
    if f_divergence_type == "js_divergence":
        return math.log(2) + F.logsigmoid(logratios)
    if f_divergence_type == "alpha_divergence":
        if abs(alpha - 1.0) < 1e-6:  # the limit f'(t) → log t
            return logratios
        clamp_max = {torch.float16: 11.0}.get(logratios.dtype, 80.0)  # exp stays finite in the input dtype
        t = torch.clamp(((alpha - 1.0) * logratios).float(), max=clamp_max)
        return (torch.exp(t) - 1.0).to(logratios.dtype) / (alpha - 1.0)
    raise ValueError(f"unknown f_divergence_type {f_divergence_type!r}")


def dpo_inputs(
    chosen_logps: Tensor,  # [B]
    rejected_logps: Tensor,  # [B]
    ref_chosen_logps: Tensor,  # [B]
    ref_rejected_logps: Tensor,  # [B]
    chosen_lengths: Tensor,  # [B]
    rejected_lengths: Tensor,  # [B]
    f_divergence_type: str = "reverse_kl",
    f_alpha_divergence_coef: float = 0.5,
) -> DPOInputs:
    return DPOInputs(
        chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps,
        chosen_lengths.float(), rejected_lengths.float(),
        f_divergence_scores(chosen_logps - ref_chosen_logps, f_divergence_type, f_alpha_divergence_coef),
        f_divergence_scores(rejected_logps - ref_rejected_logps, f_divergence_type, f_alpha_divergence_coef),
    )


def dpo_pair_losses(x: DPOInputs, loss_type: list[str], loss_weights: list[float] | None,
                    params: DPOParams) -> Tensor:  # [B]
    """Σ_k w_k ℓ_k per pair over the pair-level loss types (MPO-style combinations included)."""
    weights = loss_weights or [1.0] * len(loss_type)
    total = torch.zeros_like(x.chosen_logps)
    for name, weight in zip(loss_type, weights):
        if name != "sft":
            total = total + weight * DPO_PAIR_LOSSES[name](x, params)
    return total


def dpo_nll_weight(loss_type: list[str], loss_weights: list[float] | None) -> float:
    """The weight of the chosen tokens' NLL term: loss_type "sft" (RPO-style) adds it with its weight."""
    weights = loss_weights or [1.0] * len(loss_type)
    return float(sum(w for name, w in zip(loss_type, weights) if name == "sft"))


def dpo_rewards(x: DPOInputs, beta: float) -> tuple[Tensor, Tensor]:
    """TRL's logged implicit rewards β·log(π/π_ref) of chosen and rejected, [B] each, detached."""
    return beta * x.chosen_logratios.detach(), beta * x.rejected_logratios.detach()


# ---------------------------------------------------------------- CPO / SimPO

CPO_LOSS_TYPES = ("sigmoid", "hinge", "ipo", "simpo", "alphapo")


def cpo_uses_average(loss_type: str) -> bool:
    """CPO's ipo and simpo compare length-averaged log-probs; the others summed ones."""
    return loss_type in ("ipo", "simpo")


def alphapo_rewards(logps: Tensor, alpha: float) -> Tensor:
    """AlphaPO's reward shape r = (1 − p^(−α)) / α of a log-prob; α = 0 keeps the log-prob."""
    if alpha == 0.0:
        return logps
    return (1 - torch.exp(logps).pow(-alpha)) / alpha


def cpo_pair_losses(
    chosen_logps: Tensor,  # [B] summed, or averaged when cpo_uses_average(loss_type)
    rejected_logps: Tensor,  # [B]
    loss_type: str = "sigmoid",
    beta: float = 0.1,
    label_smoothing: float = 0.0,
    simpo_gamma: float = 0.5,
    alpha: float = 0.0,
) -> tuple[Tensor, Tensor, Tensor]:  # losses, chosen rewards, rejected rewards: [B] each
    """CPO's preference term (reference-free); SimPO is loss_type "simpo" with cpo_alpha 0."""
    chosen, rejected = alphapo_rewards(chosen_logps, alpha), alphapo_rewards(rejected_logps, alpha)
    logits = chosen - rejected
    if loss_type == "simpo":
        losses = _smoothed_sigmoid(beta * (logits - simpo_gamma / beta), label_smoothing)
    elif loss_type == "sigmoid":
        losses = _smoothed_sigmoid(beta * logits, label_smoothing)
    elif loss_type == "hinge":
        losses = torch.relu(1 - beta * logits)
    elif loss_type == "ipo":
        losses = (logits - 1 / (2 * beta)) ** 2
    else:
        raise ValueError(f"unknown CPO loss_type {loss_type!r}")
    return losses, beta * chosen.detach(), beta * rejected.detach()


# ---------------------------------------------------------------- ORPO


def log1mexp(x: Tensor) -> Tensor:
    """log(1 − eˣ) for x < 0, branching at −ln 2 to avoid cancellation."""
    return torch.where(x < -math.log(2), torch.log1p(-torch.exp(x)), torch.log(-torch.expm1(x)))


def orpo_pair_losses(
    chosen_logps: Tensor,  # [B] length-averaged log-probs
    rejected_logps: Tensor,  # [B]
    beta: float = 0.1,
) -> tuple[Tensor, Tensor]:  # losses −β·log σ(log odds ratio), log odds ratio: [B] each
    """ORPO's odds-ratio term (arXiv 2403.07691, Eqs. 4 and 7), computed in fp32."""
    chosen, rejected = chosen_logps.float(), rejected_logps.float()
    log_odds = (chosen - rejected) - (log1mexp(chosen) - log1mexp(rejected))
    return -beta * F.logsigmoid(log_odds), log_odds


# ---------------------------------------------------------------- KTO

KTO_LOSS_TYPES = ("kto", "apo_zero_unpaired")


def kto_uses_kl(loss_type: str) -> bool:
    return loss_type == "kto"


def kto_kl(kl_logps: Tensor, ref_kl_logps: Tensor) -> Tensor:  # [M] each → scalar
    """KTO's reference point: mean log-ratio of mismatched (prompt, completion) pairs, ≥ 0, no gradient."""
    return (kl_logps - ref_kl_logps).mean().detach().clamp(min=0)


def kto_losses(
    logps: Tensor,  # [N] summed completion log-probs under the policy
    ref_logps: Tensor,  # [N] under the reference
    desirable: Tensor,  # [N] bool: the label column
    kl: Tensor | float = 0.0,  # kto_kl(...) for loss_type "kto"
    loss_type: str = "kto",
    beta: float = 0.1,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
) -> tuple[Tensor, Tensor]:  # weighted losses, rewards β·log(π/π_ref): [N] each
    """KTO (arXiv 2402.01306, Eq. 7) or unpaired APO-zero, per example, in the examples' order."""
    logratios = logps - ref_logps
    z = beta * logratios
    if loss_type == "kto":
        desirable_loss = 1 - torch.sigmoid(z - beta * kl)
        undesirable_loss = 1 - torch.sigmoid(beta * kl - z)
    elif loss_type == "apo_zero_unpaired":
        desirable_loss, undesirable_loss = 1 - torch.sigmoid(z), torch.sigmoid(z)
    else:
        raise ValueError(f"unknown KTO loss_type {loss_type!r}")
    losses = torch.where(desirable, desirable_weight * desirable_loss, undesirable_weight * undesirable_loss)
    return losses, z.detach()


# ---------------------------------------------------------------- the step loss and its metrics


def preference_loss(
    pair_losses: Tensor,  # [B] this micro-batch's per-pair (per-example) losses
    num_pairs: int,  # pairs (examples) in the whole optimizer step
    chosen_logps: Tensor | None = None,  # [B] summed chosen log-probs, for the NLL term
    nll_weight: float = 0.0,
    num_chosen_tokens: int = 1,  # chosen completion tokens in the whole optimizer step
) -> Tensor:
    """This micro-batch's share of the step loss: mean over the step's pairs, plus w·NLL per chosen token.

    Summed over the micro-batches of a step it is mean(ℓ) + w·(−Σ log π(chosen tokens) / N_tokens),
    TRL's per-batch loss when the step is one micro-batch, and the same however the step is split.
    """
    loss = pair_losses.sum() / max(1, num_pairs)
    if nll_weight and chosen_logps is not None:
        loss = loss - nll_weight * chosen_logps.sum() / max(1, num_chosen_tokens)
    return loss


@dataclass
class PreferenceStats:
    """Per-pair (per-example) metric values gathered over a step; `means()` gives TRL's metric names."""

    values: dict[str, list[Tensor]] = field(default_factory=dict)

    def add(self, **named: Tensor) -> None:
        for name, tensor in named.items():
            self.values.setdefault(name, []).append(tensor.detach().float().reshape(-1).cpu())

    def means(self) -> dict[str, float]:
        out = {}
        for name, parts in self.values.items():
            t = torch.cat(parts)
            if t.numel():
                out[name] = t.mean().item()
        if "rewards/chosen" in out and "rewards/rejected" in out and "rewards/margins" not in out:
            out["rewards/margins"] = out["rewards/chosen"] - out["rewards/rejected"]  # KTO: unpaired
        return out


def pair_reward_stats(chosen_rewards: Tensor, rejected_rewards: Tensor) -> dict[str, Tensor]:
    """rewards/chosen, rewards/rejected, rewards/accuracies, rewards/margins per pair ([B] each)."""
    return {
        "rewards/chosen": chosen_rewards,
        "rewards/rejected": rejected_rewards,
        "rewards/accuracies": (chosen_rewards > rejected_rewards).float(),
        "rewards/margins": chosen_rewards - rejected_rewards,
    }
