"""Group-relative advantages (semantics §2), and the reward weights' saturation scaling: pure functions of
reward tensors."""

from __future__ import annotations

import torch

from rlvr.rewards.scoring import nanstd

EPS = 1e-4
ZERO_STD = 1e-8  # a group's rewards whose std is below this are all equal
SATURATION_TOL = 1e-6  # a reward within this of the round's best counts as the best


def group_advantages(rewards: torch.Tensor, num_generations: int, scale_rewards: str = "group") -> torch.Tensor:
    """A per completion from combined rewards; rows of one prompt are adjacent.

    rewards: [N] with N = prompts × G, NaN for rows with no reward  → [N], NaN replaced by 0.
    scale_rewards: "group" (A = (r − μ_g)/(σ_g + eps)), "batch" (σ over the round), "none".
    """
    grouped = rewards.view(-1, num_generations)  # [P, G]
    mean = torch.nanmean(grouped, dim=1, keepdim=True)
    centred = grouped - mean
    if scale_rewards == "group":
        std = nanstd(grouped, dim=1).unsqueeze(1)
        adv = centred / (std + EPS)
    elif scale_rewards == "batch":
        adv = centred / (nanstd(rewards) + EPS)
    elif scale_rewards == "none":
        adv = centred
    else:
        raise ValueError(f"scale_rewards must be 'group', 'batch' or 'none', got {scale_rewards!r}")
    return torch.nan_to_num(adv.reshape(-1), nan=0.0)


def normalize_scale_rewards(value: str | bool) -> str:
    """TRL accepts True/False for scale_rewards; map them to the string modes."""
    if value is True:
        return "group"
    if value is False:
        return "none"
    return value


def zero_std_groups(rewards: torch.Tensor, num_generations: int) -> torch.Tensor:
    """[N] rewards (rows of a prompt adjacent, NaN = no reward) → [P] bool: the group's rewards are all equal
    (std 0, or undefined because fewer than two are known), so it teaches nothing.

    >>> zero_std_groups(torch.tensor([1.0, 1.0, 0.0, 2.0, 3.0, float("nan")]), 2).tolist()
    [True, False, True]
    """
    std = nanstd(rewards.view(-1, num_generations), dim=1)
    return torch.nan_to_num(std, nan=0.0) < ZERO_STD


def saturation_scales(per_function: torch.Tensor) -> torch.Tensor:
    """[N, K] rewards of a round (NaN = None) → [K] factors 1 − s_k, s_k = the share of the round's scored
    completions whose reward k equals the round's best reward k (reward_saturation_scaling).

    A reward nearly everyone already gets (a learned format) is scaled towards 0, so its leftover
    variance (the odd miss, xml_count's tail) stops outweighing the rewards still being learned; one
    that few get (correctness at 3%) keeps nearly its whole weight. A reward equal over the whole round
    gets 0: it changes no advantage anyway.

    >>> saturation_scales(torch.tensor([[2.0, 0.5], [0.0, 0.5], [0.0, 0.5], [0.0, 0.0]])).tolist()
    [0.75, 0.25]
    """
    known = ~torch.isnan(per_function)
    best = torch.where(known, per_function, torch.full_like(per_function, -torch.inf)).amax(dim=0)  # [K]
    at_best = known & (per_function >= best - SATURATION_TOL)
    share = at_best.sum(0).to(per_function.dtype) / known.sum(0).clamp(min=1)
    return torch.where(known.any(0), 1.0 - share, torch.zeros_like(share))


def reward_stats(rewards: torch.Tensor, num_generations: int) -> dict[str, float]:
    """reward, reward_std (mean of per-group stds, as TRL logs) and frac_reward_zero_std."""
    grouped = rewards.view(-1, num_generations)
    group_std = nanstd(grouped, dim=1)
    zero = zero_std_groups(rewards, num_generations)
    return {
        "reward": torch.nanmean(rewards).item(),
        "reward_std": torch.nanmean(group_std).item() if (~torch.isnan(group_std)).any() else 0.0,
        "frac_reward_zero_std": zero.float().mean().item(),
    }
