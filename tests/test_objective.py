"""Semantics §4–§5: the per-token objective, TIS, KL and aggregation, on hand-made tensors."""

import math

import pytest
import torch

from rlvr.grpo.objective import (
    StepShape,
    aggregate,
    clip_metric_share,
    clip_metrics,
    importance_log_weights,
    k3_kl,
    per_token_loss,
    tis_weights,
)

LOG15 = math.log(1.5)


def loss_for(log_ratio: float, adv: float, **kw) -> float:
    lp = torch.tensor([[log_ratio]])
    out = per_token_loss(lp, torch.zeros(1, 1), torch.tensor([adv]), torch.ones(1, 1), **kw)
    return out.loss.item()


def test_clipping_takes_the_pessimistic_branch():
    assert loss_for(LOG15, 1.0) == pytest.approx(-1.2)  # w=1.5 clipped to 1.2 for A>0
    assert loss_for(LOG15, -1.0) == pytest.approx(1.5)  # unclipped w for A<0 is the min
    assert loss_for(math.log(0.5), -1.0) == pytest.approx(0.8)  # w=0.5 clipped to 0.8 for A<0
    assert loss_for(math.log(0.5), 1.0) == pytest.approx(-0.5)


def test_epsilon_high_and_delta():
    assert loss_for(LOG15, 1.0, epsilon_high=0.28) == pytest.approx(-1.28)
    assert loss_for(LOG15, -1.0, delta=1.4) == pytest.approx(1.4)  # two-sided: unclipped branch capped
    assert loss_for(LOG15, 1.0, delta=1.4) == pytest.approx(-1.2)


def test_no_old_logps_means_ratio_one_with_policy_gradient():
    lp = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    out = per_token_loss(lp, None, torch.tensor([2.0]), torch.ones(1, 2))
    torch.testing.assert_close(out.loss, torch.tensor([[-2.0, -2.0]]))
    out.loss.sum().backward()
    torch.testing.assert_close(lp.grad, torch.tensor([[-2.0, -2.0]]))  # d(−w·A)/dℓ = −A at w = 1


def test_gspo_sequence_weight_is_length_normalised_and_broadcast():
    lp = torch.tensor([[0.2, 0.4, 9.0]], requires_grad=True)
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    lw = importance_log_weights(lp, torch.zeros(1, 3), mask, "sequence")
    assert lw.shape == (1, 1)
    assert lw.item() == pytest.approx(0.3)
    out = per_token_loss(lp, torch.zeros(1, 3), torch.tensor([1.0]), mask, importance_sampling_level="sequence",
                         epsilon_low=0.5)
    torch.testing.assert_close(out.loss, torch.full((1, 3), -math.exp(0.3)))
    (out.loss * mask).sum().backward()
    # The sequence weight's gradient reaches every active token: 2 tokens × w × 1/2 each.
    torch.testing.assert_close(lp.grad, torch.tensor([[-math.exp(0.3), -math.exp(0.3), 0.0]]))


def test_tis_modes():
    old = torch.tensor([[math.log(3.0), math.log(1.5)]])
    roll = torch.zeros(1, 2)
    mask = torch.ones(1, 2)
    torch.testing.assert_close(tis_weights(old, roll, mask, "token_truncate", 2.0), torch.tensor([[2.0, 1.5]]))
    torch.testing.assert_close(tis_weights(old, roll, mask, "token_mask", 2.0), torch.tensor([[0.0, 1.5]]))
    torch.testing.assert_close(tis_weights(old, roll, mask, "sequence_truncate", 2.0), torch.tensor([[2.0]]))
    torch.testing.assert_close(tis_weights(old, roll, mask, "sequence_mask", 5.0), torch.tensor([[4.5]]))


def test_kl_k3_and_order_of_tis_then_kl():
    assert k3_kl(torch.tensor(0.0), torch.tensor(math.log(2.0))).item() == pytest.approx(1 - math.log(2.0))
    lp = torch.zeros(1, 1)
    out = per_token_loss(lp, None, torch.tensor([1.0]), torch.ones(1, 1), beta=0.5,
                         ref_logps=torch.full((1, 1), math.log(2.0)), tis=torch.full((1, 1), 0.5))
    # L = ρ·(−w·A) + β·d = 0.5·(−1) + 0.5·(1 − ln 2)
    assert out.loss.item() == pytest.approx(-0.5 + 0.5 * (1 - math.log(2.0)))
    assert out.kl.item() == pytest.approx(1 - math.log(2.0))


LOSS = torch.tensor([[1.0, 2.0, 3.0, 4.0], [10.0, 20.0, 0.0, 0.0]])
MASK = torch.tensor([[1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 0.0, 0.0]])


@pytest.mark.parametrize("loss_type,expected", [
    ("grpo", (2.5 + 15.0) / 2),
    ("bnpo", 40.0 / 6),
    ("dr_grpo", 40.0 / (2 * 8)),
    ("dapo", 40.0 / 6),
])
def test_aggregation_values(loss_type, expected):
    shape = StepShape(num_sequences=2, num_tokens=6, num_micro_batches=1, max_completion_length=8)
    assert aggregate(LOSS, MASK, loss_type, shape).item() == pytest.approx(expected)


def test_all_masked_batch_gives_zero_not_nan():
    shape = StepShape(num_sequences=2, num_tokens=0, num_micro_batches=1, max_completion_length=4)
    for loss_type in ("grpo", "bnpo", "dr_grpo", "dapo"):
        assert aggregate(LOSS, torch.zeros_like(MASK), loss_type, shape).item() == 0.0


@pytest.mark.parametrize("loss_type", ["grpo", "dr_grpo", "dapo"])
@pytest.mark.parametrize("level", ["token", "sequence"])
def test_gradient_accumulation_invariance(loss_type, level):
    """GA 4 × micro-batch 2 gives the same gradient as 1 × 8 (semantics §5)."""
    torch.manual_seed(0)
    lp = (torch.randn(8, 6) * 0.1 - 1).requires_grad_()
    old = lp.detach() + torch.randn(8, 6) * 0.1
    adv = torch.randn(8)
    mask = (torch.rand(8, 6) > 0.3).float()
    mask[:, 0] = 1

    def grad(splits):
        lp.grad = None
        tokens = int(mask.sum())
        shape = StepShape(num_sequences=8, num_tokens=tokens, num_micro_batches=len(splits), max_completion_length=6)
        for idx in splits:
            out = per_token_loss(lp[idx], old[idx], adv[idx], mask[idx], importance_sampling_level=level)
            aggregate(out.loss, mask[idx], loss_type, shape).backward()
        return lp.grad.clone()

    whole = grad([torch.arange(8)])
    split = grad([torch.arange(i, i + 2) for i in range(0, 8, 2)])
    torch.testing.assert_close(whole, split)
    assert whole.abs().sum() > 0


def test_bnpo_depends_on_micro_batch_and_equals_grpo_at_size_one():
    shape1 = StepShape(num_sequences=2, num_tokens=6, num_micro_batches=2, max_completion_length=4)
    per_row = [aggregate(LOSS[i:i + 1], MASK[i:i + 1], "bnpo", shape1) for i in range(2)]
    grpo = aggregate(LOSS, MASK, "grpo", StepShape(2, 6, 1, 4))
    assert sum(per_row).item() == pytest.approx(grpo.item())


def test_clip_metrics_count_only_the_clipping_side():
    lw = torch.log(torch.tensor([[1.5, 0.5, 1.0, 1.5]]))
    m = clip_metrics(lw, torch.tensor([1.0]), torch.ones(1, 4), 0.2, None)
    assert m["clip_ratio/high_mean"] == pytest.approx(0.5)
    assert m["clip_ratio/low_mean"] == 0.0  # w < 0.8 with A > 0 does not clip
    m = clip_metrics(lw, torch.tensor([-1.0]), torch.ones(1, 4), 0.2, None)
    assert m["clip_ratio/low_mean"] == pytest.approx(0.25)
    assert m["clip_ratio/region_mean"] == pytest.approx(0.25)


def _trl_clip_metrics(coef_1, advantages, mask, eps_low, eps_high):
    """TRL 1.16 GRPOTrainer._compute_loss's clip_ratio metrics, copied verbatim (one process)."""
    advantages = advantages.unsqueeze(1)

    def global_masked_mean(x):
        if x.shape[1] == 1:  # when importance_sampling_level == "sequence": one value per sequence
            local_sum, local_count = x.sum(), torch.tensor(float(x.shape[0]), device=x.device)
        else:
            local_sum, local_count = (x * mask).sum(), mask.sum().float()
        return (local_sum / local_count.clamp(min=1.0)).item()

    is_low_clipped = (coef_1 < 1 - eps_low) & (advantages < 0)
    is_high_clipped = (coef_1 > 1 + eps_high) & (advantages > 0)
    is_region_clipped = is_low_clipped | is_high_clipped
    return {"clip_ratio/low_mean": global_masked_mean(is_low_clipped.float()),
            "clip_ratio/high_mean": global_masked_mean(is_high_clipped.float()),
            "clip_ratio/region_mean": global_masked_mean(is_region_clipped.float())}


def test_sequence_level_clip_metrics_count_sequences():
    # GSPO: one weight per sequence. Row 0 (6 tokens) clips high, row 1 (1 token) clips low, row 2
    # (1 token) does not clip: 1 of 3 sequences each side, not 6 of 8 / 1 of 8 tokens.
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 0, 0, 0, 0, 0], [1, 0, 0, 0, 0, 0]])
    lw = torch.log(torch.tensor([[1.5], [0.5], [1.0]]))
    m = clip_metrics(lw, torch.tensor([1.0, -1.0, 1.0]), mask, 0.2, None)
    assert m == {"clip_ratio/low_mean": pytest.approx(1 / 3), "clip_ratio/high_mean": pytest.approx(1 / 3),
                 "clip_ratio/region_mean": pytest.approx(2 / 3)}
    shape = StepShape(num_sequences=12, num_tokens=40, num_micro_batches=4, max_completion_length=6)
    assert clip_metric_share(lw, mask, shape) == pytest.approx(3 / 12)
    assert clip_metric_share(torch.zeros(3, 6), mask, shape) == pytest.approx(8 / 40)


@pytest.mark.parametrize("level", ["token", "sequence"])
def test_clip_metrics_equal_trl_formula(level):
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        mask = (torch.rand(5, 7, generator=g) < 0.7).long()
        mask[:, 0] = 1
        lw = torch.randn(5, 7 if level == "token" else 1, generator=g) * 0.3
        adv = torch.randn(5, generator=g)
        ours = clip_metrics(lw, adv, mask, 0.2, 0.28)
        trl = _trl_clip_metrics(torch.exp(lw), adv, mask, 0.2, 0.28)
        assert ours == pytest.approx(trl, abs=1e-7)
