"""Dynamic sampling (filter_groups) and reward_saturation_scaling: which groups a round keeps, that the round keeps
its size (so micro-batches, steps and the loss's normalisers are those of the rows trained on), and how a
saturated reward's weight shrinks. Gradient-accumulation invariance with both: tests/test_grpo_trainer.py."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import make_tokenizer
from test_grpo_trainer import args, dataset, lora_model, odd_prompts_only

from rlvr.errors import RlvrError
from rlvr.grpo.advantages import group_advantages, saturation_scales, zero_std_groups
from rlvr.grpo.dynamic_sampling import group_rows, select_groups
from rlvr.grpo.trainer import GRPOTrainer
from rlvr.rewards.scoring import combine_rewards

G = 4


def trainer(tmp_path, rewards=(odd_prompts_only,), **kw):
    tok = make_tokenizer()
    cfg = args(tmp_path, per_device_train_batch_size=16, num_generations=G, **kw)  # 4 prompts per round
    return GRPOTrainer(lora_model(tok), tok, list(rewards), dataset(), cfg, show_progress=False)


# ---------------------------------------------------------------- pure functions


def test_zero_std_groups_and_the_groups_a_round_keeps():
    rewards = torch.tensor([1.0, 1.0, 1.0, 1.0, 0.0, 2.0, 0.0, 0.0, math.nan, 3.0, math.nan, math.nan])
    assert zero_std_groups(rewards, 4).tolist() == [True, False, True]  # the last has one known reward
    informative = [False, True, False, True, True, False, True]
    assert select_groups(informative, 3) == [1, 3, 4]
    assert select_groups(informative, 6) == [0, 1, 2, 3, 4, 6]  # four with variance, topped up in order
    assert select_groups([True, True], 2) == [0, 1]
    assert group_rows([0, 2], 3).tolist() == [0, 1, 2, 6, 7, 8]


def test_saturation_scales_shrink_a_saturated_reward_and_keep_a_rare_one():
    # One group of 8: one correct answer (2.0), seven in the format (0.5), one out of it.
    correctness = [2.0] + [0.0] * 7
    fmt = [0.5] * 7 + [0.0]
    table = torch.tensor([correctness, fmt]).T  # [8, 2]
    scales = saturation_scales(table)
    assert scales.tolist() == [0.875, 0.125]  # 1 − 1/8, 1 − 7/8
    scaled = combine_rewards(table.double(), scales.double())
    assert scaled.tolist() == [1.8125] + [0.0625] * 6 + [0.0]
    # The format miss weighed as much as the one correct answer's gain before; now about 1/29 of it.
    plain = combine_rewards(table.double())
    assert (plain[1] - plain[7]) / (plain[0] - plain[1]) == 0.25
    assert (scaled[1] - scaled[7]) / (scaled[0] - scaled[1]) == pytest.approx(0.0625 / 1.75)
    # NaN (None) rows are left out of the share; a reward equal everywhere gets 0; an all-None one too.
    with_none = torch.tensor([[1.0, 0.5, math.nan], [0.0, 0.5, math.nan], [math.nan, 0.5, math.nan]])
    assert saturation_scales(with_none).tolist() == [0.5, 0.0, 0.0]


# ---------------------------------------------------------------- through the trainer


def first_odd_prompts(t: GRPOTrainer, needed: int) -> tuple[list[int], int]:
    """The first `needed` odd-numbered prompts in draw order, and how many generation batches hold them."""
    found, draws = [], 0
    while len(found) < needed:
        found += [i for i in t.round_indices(draws) if i % 2]
        draws += 1
    return found[:needed], draws


def test_filter_groups_keeps_the_first_groups_with_variance_and_the_round_size(tmp_path):
    t = trainer(tmp_path, filter_groups=True, max_num_gen_batches=8)
    want, draws = first_odd_prompts(t, 4)
    assert draws > 1  # the first generation batch alone would not do
    rows, drawn, metrics = t.draw_round(0)
    assert rows.example_index[::G] == want and len(rows.example_index) == 16
    assert t.draw_index == draws and metrics["filter_groups/generation_batches"] == draws
    assert metrics["filter_groups/filled_groups"] == 0
    # The same round, ready for the update: 16 rows, every group with non-zero advantages.
    t2 = trainer(tmp_path / "b", filter_groups=True, max_num_gen_batches=8)
    batch, round_metrics, samples = t2.make_round(0)
    assert batch.completion_ids.shape[0] == 16 and batch.advantages.shape == (16,)
    assert (batch.advantages.view(-1, G).abs().sum(1) > 0).all()
    assert round_metrics["frac_reward_zero_std"] == 0.0
    assert len(t2.micro_batches(batch, 0)) == t2.args.resolved_steps_per_generation
    assert [s["prompt"] for s in samples[::G]] == [f"q{i}" for i in want[:2]]


def test_filter_groups_fills_with_zero_variance_groups_when_the_draws_run_out(tmp_path):
    """max_num_gen_batches 1: the round is the first generation batch as it is, exactly as without filtering."""
    plain = trainer(tmp_path / "plain")
    filtered = trainer(tmp_path / "filtered", filter_groups=True, max_num_gen_batches=1)
    evens = sum(1 for i in plain.round_indices(0) if i % 2 == 0)
    assert evens > 0  # some groups have no variance, so the round has to be filled
    a, _, _ = plain.make_round(0)
    b, metrics, _ = filtered.make_round(0)
    assert metrics["filter_groups/filled_groups"] == evens and metrics["filter_groups/generation_batches"] == 1
    for name in ("prompt_ids", "completion_ids", "completion_mask", "advantages"):
        torch.testing.assert_close(getattr(b, name), getattr(a, name), rtol=0, atol=0)
    plain.batch, filtered.batch = a, b
    order = torch.arange(16)
    assert plain.train_step([order[:8], order[8:]])["loss"] == filtered.train_step([order[:8], order[8:]])["loss"]


def test_filter_groups_on_one_reward_function(tmp_path):
    def constant(prompts, completions, **kw):
        return [1.0] * len(completions)

    t = trainer(tmp_path, rewards=(constant, odd_prompts_only), filter_groups=True,
                filter_groups_metric="odd_prompts_only", max_num_gen_batches=8)
    rows, _, _ = t.draw_round(0)
    assert rows.example_index[::G] == first_odd_prompts(t, 4)[0]
    with pytest.raises(RlvrError, match="filter_groups_metric: 'odd_prompt' is neither 'reward' nor .*did you mean "
                                        "'odd_prompts_only'"):
        trainer(tmp_path / "x", filter_groups=True, filter_groups_metric="odd_prompt")


def test_a_resumed_run_draws_the_prompts_the_uninterrupted_run_draws(tmp_path):
    t = trainer(tmp_path, filter_groups=True, max_num_gen_batches=8)
    t.make_round(0)
    state, _ = t.checkpoint_state()
    assert state["draw_index"] == t.draw_index > 1
    resumed = trainer(tmp_path / "r", filter_groups=True, max_num_gen_batches=8)
    resumed.restore_checkpoint(state, tmp_path)
    assert resumed.draw_index == t.draw_index
    # A checkpoint written before dynamic sampling (no draw_index) drew one batch per round.
    resumed.restore_checkpoint({"round_index": 3, "step_in_round": 0}, tmp_path)
    assert resumed.draw_index == 3


def scripted(values_per_row):
    def fn(prompts, completions, **kw):
        return [values_per_row[i % G] for i in range(len(completions))]

    fn.__name__ = "scripted"
    return fn


def test_the_trainer_scales_saturated_rewards_when_asked(tmp_path):
    first_correct = scripted([2.0, 0.0, 0.0, 0.0])
    first_correct.__name__ = "correct"
    last_unformatted = scripted([0.5, 0.5, 0.5, 0.0])
    last_unformatted.__name__ = "formatted"
    rewards = (first_correct, last_unformatted)
    plain, _, _ = trainer(tmp_path / "a", rewards=rewards, scale_rewards="none").make_round(0)
    batch, metrics, _ = trainer(tmp_path / "b", rewards=rewards, scale_rewards="none",
                                reward_saturation_scaling=True, reward_weights=[1.0, 2.0]).make_round(0)
    assert metrics["rewards/correct/scale"] == 0.75 and metrics["rewards/formatted/scale"] == 0.25
    # scaled weights 0.75 and 2 × 0.25: totals [1.5 + 0.25, 0.25, 0.25, 0] per group, advantages r − mean
    want = group_advantages(torch.tensor([1.75, 0.25, 0.25, 0.0] * 4), G, "none")
    torch.testing.assert_close(batch.advantages, want)
    torch.testing.assert_close(plain.advantages, group_advantages(torch.tensor([2.5, 0.5, 0.5, 0.0] * 4), G, "none"))
    assert metrics["reward"] == pytest.approx((3.0 + 1.0 + 1.0 + 0.0) / 4)  # logged rewards stay unscaled
