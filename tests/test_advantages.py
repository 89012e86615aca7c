"""Semantics §2: combined rewards and group-relative advantages on hand-made tensors."""

import math

import pytest
import torch

from rlvr.grpo.advantages import EPS, group_advantages, normalize_scale_rewards, reward_stats
from rlvr.rewards.scoring import combine_rewards, nanstd

nan = float("nan")


def test_group_scaling_uses_bessel_std():
    r = torch.tensor([1.0, 2.0, 3.0, 4.0, 0.0, 0.0, 0.0, 2.0])
    a = group_advantages(r, 4, "group")
    std1 = math.sqrt((1.5**2 * 2 + 0.5**2 * 2) / 3)
    std2 = math.sqrt((0.5**2 * 3 + 1.5**2) / 3)
    expected = [(x - 2.5) / (std1 + EPS) for x in (1, 2, 3, 4)] + [(x - 0.5) / (std2 + EPS) for x in (0, 0, 0, 2)]
    torch.testing.assert_close(a, torch.tensor(expected))


def test_batch_scaling_divides_by_round_std():
    r = torch.tensor([1.0, 3.0, 10.0, 14.0])
    a = group_advantages(r, 2, "batch")
    std = torch.tensor([1.0, 3.0, 10.0, 14.0]).std().item()
    torch.testing.assert_close(a, torch.tensor([-1.0, 1.0, -2.0, 2.0]) / (std + EPS))


def test_none_scaling_only_centres():
    a = group_advantages(torch.tensor([1.0, 3.0, 10.0, 14.0]), 2, "none")
    torch.testing.assert_close(a, torch.tensor([-1.0, 1.0, -2.0, 2.0]))


def test_equal_reward_group_has_zero_advantage_and_counts_as_zero_std():
    r = torch.tensor([2.0, 2.0, 2.0, 1.0, 0.0, 1.0])
    a = group_advantages(r, 3, "group")
    assert a[:3].abs().max() == 0
    assert a[3:].abs().max() > 0
    assert reward_stats(r, 3)["frac_reward_zero_std"] == pytest.approx(0.5)


def test_nan_rewards_are_ignored_in_group_stats_and_get_zero_advantage():
    r = torch.tensor([1.0, nan, 3.0, 5.0])
    a = group_advantages(r, 4, "none")
    torch.testing.assert_close(a, torch.tensor([-2.0, 0.0, 0.0, 2.0]))
    assert not torch.isnan(group_advantages(r, 4, "group")).any()


def test_nanstd_is_bessel_corrected_and_ignores_nan():
    x = torch.tensor([[1.0, nan, 3.0, 5.0], [2.0, nan, nan, nan]])
    torch.testing.assert_close(nanstd(x, dim=1)[0], torch.tensor(2.0))
    assert math.isnan(nanstd(x, dim=1)[1].item())
    assert nanstd(x).item() == pytest.approx(torch.tensor([1.0, 3.0, 5.0, 2.0]).std().item())


def test_combine_rewards_weights_and_skips_none():
    per_fn = torch.tensor([[1.0, 2.0], [nan, 2.0], [nan, nan]])
    total = combine_rewards(per_fn, torch.tensor([0.5, 2.0]))
    assert total[0].item() == pytest.approx(4.5)
    assert total[1].item() == pytest.approx(4.0)
    assert math.isnan(total[2].item())


def test_scale_rewards_accepts_trl_booleans():
    assert normalize_scale_rewards(True) == "group"
    assert normalize_scale_rewards(False) == "none"
    assert normalize_scale_rewards("batch") == "batch"
