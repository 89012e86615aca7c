"""Group-relative advantages (semantics §2): pure functions of reward tensors."""

from __future__ import annotations

import torch

EPS = 1e-4


def _nanstd(x: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Bessel-corrected std ignoring NaN; NaN where fewer than two finite values."""
    valid = ~torch.isnan(x)
    n = valid.sum(dim=dim) if dim is not None else valid.sum()
    mean = torch.nanmean(x, dim=dim, keepdim=dim is not None)
    sq = torch.where(valid, (x - mean) ** 2, torch.zeros_like(x))
    total = sq.sum(dim=dim) if dim is not None else sq.sum()
    return torch.where(n > 1, (total / (n - 1).clamp(min=1)).sqrt(), torch.full_like(total, float("nan")))


def combine_rewards(per_function: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """r_i = Σ_k w_k R_ik with NaN terms skipped; NaN where every function gave None.

    per_function: [N, K]  → [N]
    """
    if weights is None:
        weights = torch.ones(per_function.shape[1], dtype=per_function.dtype)
    weighted = per_function * weights.to(per_function)
    all_nan = torch.isnan(per_function).all(dim=1)
    total = torch.nansum(weighted, dim=1)
    return torch.where(all_nan, torch.full_like(total, float("nan")), total)


def group_advantages(rewards: torch.Tensor, num_generations: int, scale_rewards: str = "group") -> torch.Tensor:
    """A per completion from combined rewards; rows of one prompt are adjacent.

    rewards: [N] with N = prompts × G, NaN for rows with no reward  → [N], NaN replaced by 0.
    scale_rewards: "group" (A = (r − μ_g)/(σ_g + eps)), "batch" (σ over the round), "none".
    """
    grouped = rewards.view(-1, num_generations)  # [P, G]
    mean = torch.nanmean(grouped, dim=1, keepdim=True)
    centred = grouped - mean
    if scale_rewards == "group":
        std = _nanstd(grouped, dim=1).unsqueeze(1)
        adv = centred / (std + EPS)
    elif scale_rewards == "batch":
        adv = centred / (_nanstd(rewards) + EPS)
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
    group_std = _nanstd(grouped, dim=1)
    # A group whose rewards are all equal (std 0, or undefined because ≤ 1 reward is known) teaches nothing.
    zero = torch.nan_to_num(group_std, nan=0.0) < 1e-8
    return {
        "reward": torch.nanmean(rewards).item(),
        "reward_std": torch.nanmean(group_std).item() if (~torch.isnan(group_std)).any() else 0.0,
        "frac_reward_zero_std": zero.float().mean().item(),
    }
