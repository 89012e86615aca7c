"""Group-relative advantages (semantics §2): pure functions of reward tensors."""

from __future__ import annotations

import torch

from rlvr.rewards.scoring import nanstd

EPS = 1e-4


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


def reward_stats(rewards: torch.Tensor, num_generations: int) -> dict[str, float]:
    """reward, reward_std (mean of per-group stds, as TRL logs) and frac_reward_zero_std."""
    grouped = rewards.view(-1, num_generations)
    group_std = nanstd(grouped, dim=1)
    # A group whose rewards are all equal (std 0, or undefined because ≤ 1 reward is known) teaches nothing.
    zero = torch.nan_to_num(group_std, nan=0.0) < 1e-8
    return {
        "reward": torch.nanmean(rewards).item(),
        "reward_std": torch.nanmean(group_std).item() if (~torch.isnan(group_std)).any() else 0.0,
        "frac_reward_zero_std": zero.float().mean().item(),
    }
