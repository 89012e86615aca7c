"""Where trl is installed: rlvr's loss equals TRL's GRPOTrainer._compute_loss on the same tensors.

TRL's method is called unbound on a stub holding just the attributes it reads, with the policy
log-probs injected, so no model, dataset or accelerator is built.
"""

from __future__ import annotations

from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from rlvr.grpo.objective import StepShape, aggregate, per_token_loss

trl_grpo = pytest.importorskip("trl.trainer.grpo_trainer")


class _Accelerator:
    num_processes = 1
    sync_gradients = True

    def gather(self, x):
        return x

    gather_for_metrics = gather

    def reduce(self, x, reduction="sum"):
        return x


def trl_loss(logps, old, ref, adv, mask, loss_type, level, beta, max_len):
    entropies = torch.zeros_like(logps)
    stub = SimpleNamespace(
        _get_per_token_logps_and_entropies=lambda *a, **k: (logps, entropies, None),
        aux_loss_enabled=False, top_entropy_quantile=1.0, off_policy_mask_threshold=None,
        importance_sampling_level=level, beta=beta, loss_type=loss_type, epsilon_low=0.2, epsilon_high=0.28,
        use_vllm=False, vllm_importance_sampling_correction=False, model=SimpleNamespace(training=True),
        current_gradient_accumulation_steps=1, max_completion_length=max_len, accelerator=_Accelerator(),
        _entropy_bonus_enabled=False, _metrics=defaultdict(lambda: defaultdict(list)),
        args=SimpleNamespace(delta=None, use_bias_correction_kl=False, steps_per_generation=1),
    )
    b, t = mask.shape
    inputs = {"prompt_ids": torch.zeros(b, 1, dtype=torch.long), "prompt_mask": torch.ones(b, 1, dtype=torch.long),
              "completion_ids": torch.zeros(b, t, dtype=torch.long), "completion_mask": mask,
              "advantages": adv, "old_per_token_logps": old, "num_items_in_batch": mask.sum()}
    if beta:
        inputs["ref_per_token_logps"] = ref
    return trl_grpo.GRPOTrainer._compute_loss(stub, None, inputs)


@pytest.mark.parametrize("loss_type,level", [("grpo", "token"), ("bnpo", "token"), ("dr_grpo", "token"),
                                             ("dapo", "token"), ("grpo", "sequence"), ("dapo", "sequence")])
@pytest.mark.parametrize("beta", [0.0, 0.04])
def test_loss_and_gradient_equal_trl(loss_type, level, beta):
    torch.manual_seed(0)
    b, t = 6, 7
    mask = (torch.rand(b, t) > 0.25).long()
    mask[:, 0] = 1
    old = torch.randn(b, t) * 0.3 - 2
    ref = old + torch.randn(b, t) * 0.1
    adv = torch.randn(b)
    base = old + torch.randn(b, t) * 0.3  # ratios well outside [0.8, 1.28] so clipping matters

    ours_lp = base.clone().requires_grad_()
    out = per_token_loss(ours_lp, old, adv, mask.float(), epsilon_low=0.2, epsilon_high=0.28,
                         importance_sampling_level=level, ref_logps=ref, beta=beta)
    shape = StepShape(num_sequences=b, num_tokens=int(mask.sum()), num_micro_batches=1, max_completion_length=t)
    ours = aggregate(out.loss, mask.float(), loss_type, shape)
    ours.backward()

    theirs_lp = base.clone().requires_grad_()
    theirs = trl_loss(theirs_lp, old, ref, adv, mask.float(), loss_type, level, beta, t)
    theirs.backward()

    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours_lp.grad, theirs_lp.grad, rtol=1e-5, atol=1e-7)
