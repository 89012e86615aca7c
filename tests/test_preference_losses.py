"""Each preference loss equals TRL 1.16's own code on the same tensors: values and gradients.

TRL's methods are called unbound on a stub that holds just the attributes they read, with the
model's per-token log-probs (or the per-sequence log-probs) injected, so no model, dataset or
accelerator is built: DPOTrainer._compute_loss (every loss_type, f-divergences, loss_weights),
KTOTrainer._compute_loss (kto with its KL term, apo_zero_unpaired), CPOTrainer.get_batch_loss_metrics
(sigmoid, hinge, ipo, simpo, AlphaPO) and ORPOTrainer.get_batch_loss_metrics.
"""

from __future__ import annotations

from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from rlvr.preference.losses import (
    DPO_LOSS_TYPES,
    DPOParams,
    PreferenceStats,
    cpo_pair_losses,
    cpo_uses_average,
    dpo_inputs,
    dpo_nll_weight,
    dpo_pair_losses,
    dpo_rewards,
    kto_kl,
    kto_losses,
    orpo_pair_losses,
    pair_reward_stats,
    preference_loss,
)

trl_dpo = pytest.importorskip("trl.trainer.dpo_trainer")
trl_kto = pytest.importorskip("trl.trainer.kto_trainer")
trl_cpo = pytest.importorskip("trl.experimental.cpo.cpo_trainer")
trl_orpo = pytest.importorskip("trl.experimental.orpo.orpo_trainer")


class _Accelerator:
    device = torch.device("cpu")
    num_processes = 1

    def gather(self, x):
        return x

    gather_for_metrics = gather


def _stub(**attrs):
    return SimpleNamespace(model=SimpleNamespace(training=True), accelerator=_Accelerator(), aux_loss_enabled=False,
                           _metrics=defaultdict(lambda: defaultdict(list)), _total_train_tokens=0, _tp_size=1,
                           **attrs)


def _fake_model(per_token_by_input: dict):
    """A 'model' returning the injected per-token log-probs of whichever input_ids it is given."""

    def forward(input_ids, labels=None, **_):
        logps = per_token_by_input[id(input_ids)]
        zeros = torch.zeros_like(logps).detach()
        return SimpleNamespace(log_probs=logps, entropy=zeros, mean_logits=zeros, is_top1=zeros.bool())

    return forward


def _token_data(rows: int, width: int, seed: int):
    """Per-token log-probs [rows, width-1] (a leaf), their completion mask [rows, width] (prompt = column 0)."""
    g = torch.Generator().manual_seed(seed)
    shift_mask = torch.ones(rows, width - 1)
    for i in range(rows):  # lengths 2 … width-1, right padding
        shift_mask[i, int(torch.randint(2, width, (1,), generator=g)):] = 0
    completion_mask = torch.cat([torch.zeros(rows, 1), shift_mask], dim=1).long()
    per_token = -torch.rand(rows, width - 1, generator=g) * 0.6 - 0.05
    return per_token, shift_mask, completion_mask


def _dpo_case(b=6, width=9, seed=0):
    per_token, shift_mask, completion_mask = _token_data(2 * b, width, seed)
    g = torch.Generator().manual_seed(seed + 1)
    sums = (per_token * shift_mask).sum(1)
    ref = sums + torch.randn(2 * b, generator=g) * 0.8
    return per_token, shift_mask, completion_mask, ref


def trl_dpo_loss(per_token_leaf, shift_mask, completion_mask, ref, cfg: dict):
    b = per_token_leaf.shape[0] // 2
    input_ids = torch.zeros(completion_mask.shape, dtype=torch.long)
    stub = _stub(beta=cfg.get("beta", 0.1), precompute_ref_logps=True, loss_types=cfg["loss_type"],
                 loss_weights=cfg.get("loss_weights") or [1.0] * len(cfg["loss_type"]), ld_alpha=None,
                 f_divergence_type=cfg.get("f_divergence_type", "reverse_kl"),
                 f_alpha_divergence_coef=cfg.get("f_alpha_divergence_coef", 0.5),
                 label_smoothing=cfg.get("label_smoothing", 0.0), use_weighting=False,
                 args=SimpleNamespace(discopop_tau=cfg.get("discopop_tau", 0.05)))
    inputs = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids),
              "completion_mask": completion_mask, "ref_chosen_logps": ref[:b], "ref_rejected_logps": ref[b:]}
    model = _fake_model({id(input_ids): per_token_leaf * shift_mask})
    loss = trl_dpo.DPOTrainer._compute_loss(stub, model, inputs, False)
    return loss, {k: v[-1] for k, v in stub._metrics["train"].items()}


def our_dpo_loss(per_token_leaf, shift_mask, ref, cfg: dict):
    b = per_token_leaf.shape[0] // 2
    sums, lengths = (per_token_leaf * shift_mask).sum(1), shift_mask.sum(1)
    x = dpo_inputs(sums[:b], sums[b:], ref[:b], ref[b:], lengths[:b], lengths[b:],
                   cfg.get("f_divergence_type", "reverse_kl"), cfg.get("f_alpha_divergence_coef", 0.5))
    params = DPOParams(cfg.get("beta", 0.1), cfg.get("label_smoothing", 0.0), cfg.get("discopop_tau", 0.05))
    pair = dpo_pair_losses(x, cfg["loss_type"], cfg.get("loss_weights"), params)
    nll = dpo_nll_weight(cfg["loss_type"], cfg.get("loss_weights"))
    loss = preference_loss(pair, b, sums[:b], nll, int(lengths[:b].sum()))
    stats = PreferenceStats()
    stats.add(**pair_reward_stats(*dpo_rewards(x, params.beta)), **{"logps/chosen": sums[:b],
                                                                      "logps/rejected": sums[b:]})
    return loss, stats.means()


DPO_CASES = [{"loss_type": [name]} for name in DPO_LOSS_TYPES if name not in ("robust", "exo_pair", "aot")] + [
    {"loss_type": ["robust"], "label_smoothing": 0.1},
    {"loss_type": ["exo_pair"], "label_smoothing": 1e-3},
    {"loss_type": ["aot"], "label_smoothing": 0.2},
    {"loss_type": ["aot_unpaired"], "label_smoothing": 0.1, "beta": 0.5},
    {"loss_type": ["sigmoid"], "beta": 0.5, "f_divergence_type": "forward_kl"},
    {"loss_type": ["sigmoid"], "f_divergence_type": "js_divergence"},
    {"loss_type": ["ipo"], "f_divergence_type": "alpha_divergence", "f_alpha_divergence_coef": 0.3},
    {"loss_type": ["hinge"], "beta": 2.0},
    {"loss_type": ["discopop"], "beta": 0.3, "discopop_tau": 0.2},
    {"loss_type": ["sigmoid", "bco_pair", "sft"], "loss_weights": [0.8, 0.2, 1.0]},  # MPO
    {"loss_type": ["sigmoid", "sft"]},  # RPO
]


@pytest.mark.parametrize("cfg", DPO_CASES, ids=lambda c: "-".join(c["loss_type"]) + ("-f" if "f_divergence_type"
                                                                                      in c else ""))
def test_dpo_loss_gradient_and_metrics_equal_trl(cfg):
    per_token, shift_mask, completion_mask, ref = _dpo_case()
    ours_leaf, theirs_leaf = per_token.clone().requires_grad_(), per_token.clone().requires_grad_()
    ours, our_metrics = our_dpo_loss(ours_leaf, shift_mask, ref, cfg)
    theirs, their_metrics = trl_dpo_loss(theirs_leaf, shift_mask, completion_mask, ref, cfg)
    ours.backward()
    theirs.backward()
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours_leaf.grad, theirs_leaf.grad, rtol=1e-5, atol=1e-7)
    assert ours_leaf.grad.abs().sum() > 0
    for name in ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "logps/chosen",
                 "logps/rejected"):
        assert our_metrics[name] == pytest.approx(their_metrics[name], rel=1e-5, abs=1e-6), name


def test_dpo_sigmoid_by_hand():
    # One pair: chosen log-ratio 1.0, rejected −1.0, β 0.5 → −log σ(0.5 · 2) = log(1 + e⁻¹).
    one = torch.tensor([1.0])
    x = dpo_inputs(torch.tensor([-2.0]), torch.tensor([-5.0]), torch.tensor([-3.0]), torch.tensor([-4.0]), one, one)
    loss = dpo_pair_losses(x, ["sigmoid"], None, DPOParams(beta=0.5))
    assert loss.item() == pytest.approx(torch.log1p(torch.exp(torch.tensor(-1.0))).item(), abs=1e-7)


def trl_kto_loss(leaf, kl_leaf, shift_mask, kl_shift_mask, completion_mask, kl_completion_mask, ref, ref_kl, labels,
                 cfg):
    calc_kl = cfg["loss_type"] == "kto"
    stub = _stub(beta=cfg["beta"], precompute_ref_logps=True, loss_type=cfg["loss_type"],
                 desirable_weight=cfg["desirable_weight"], undesirable_weight=cfg["undesirable_weight"],
                 calculate_KL=calc_kl)
    stub._compute_kl_logps = lambda model, batch: trl_kto.KTOTrainer._compute_kl_logps(stub, model, batch)
    input_ids = torch.zeros(completion_mask.shape, dtype=torch.long)
    kl_ids = torch.zeros(kl_completion_mask.shape, dtype=torch.long)
    inputs = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids),
              "completion_mask": completion_mask, "label": labels, "ref_logps": ref}
    if calc_kl:
        inputs.update(KL_input_ids=kl_ids, KL_attention_mask=torch.ones_like(kl_ids),
                      KL_completion_mask=kl_completion_mask, ref_KL_logps=ref_kl)
    model = _fake_model({id(input_ids): leaf * shift_mask, id(kl_ids): kl_leaf * kl_shift_mask})
    loss = trl_kto.KTOTrainer._compute_loss(stub, model, inputs, False)
    return loss, {k: v[-1] for k, v in stub._metrics["train"].items()}


@pytest.mark.parametrize("cfg", [
    {"loss_type": "kto", "beta": 0.1, "desirable_weight": 1.0, "undesirable_weight": 1.0},
    {"loss_type": "kto", "beta": 0.5, "desirable_weight": 1.33, "undesirable_weight": 0.7},
    {"loss_type": "apo_zero_unpaired", "beta": 0.2, "desirable_weight": 1.0, "undesirable_weight": 2.0},
])
def test_kto_loss_gradient_and_metrics_equal_trl(cfg):
    n, width = 8, 9
    per_token, shift_mask, completion_mask = _token_data(n, width, seed=3)
    kl_token, kl_shift_mask, kl_completion_mask = _token_data(n, width, seed=4)
    labels = torch.tensor([True, False, True, True, False, False, True, False])
    g = torch.Generator().manual_seed(5)
    ref = (per_token * shift_mask).sum(1) + torch.randn(n, generator=g)
    ref_kl = (kl_token * kl_shift_mask).sum(1) - 0.5 + torch.randn(n, generator=g) * 0.3  # KL > 0

    ours_leaf = per_token.clone().requires_grad_()
    sums = (ours_leaf * shift_mask).sum(1)
    kl = kto_kl((kl_token * kl_shift_mask).sum(1), ref_kl) if cfg["loss_type"] == "kto" else 0.0
    losses, rewards = kto_losses(sums, ref, labels, kl, cfg["loss_type"], cfg["beta"], cfg["desirable_weight"],
                                 cfg["undesirable_weight"])
    ours = preference_loss(losses, n)
    ours.backward()

    theirs_leaf = per_token.clone().requires_grad_()
    theirs, metrics = trl_kto_loss(theirs_leaf, kl_token, shift_mask, kl_shift_mask, completion_mask,
                                   kl_completion_mask, ref, ref_kl, labels, cfg)
    theirs.backward()
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours_leaf.grad, theirs_leaf.grad, rtol=1e-5, atol=1e-7)
    stats = PreferenceStats()
    stats.add(**{"rewards/chosen": rewards[labels], "rewards/rejected": rewards[~labels]})
    for name, value in stats.means().items():
        assert value == pytest.approx(metrics[name], rel=1e-5, abs=1e-6), name
    if cfg["loss_type"] == "kto":
        assert float(kl) == pytest.approx(metrics["kl"]) and float(kl) > 0


def _nll(chosen_per_token, chosen_mask):
    return -(chosen_per_token * chosen_mask).sum() / chosen_mask.sum()


@pytest.mark.parametrize("cfg", [
    {"loss_type": "sigmoid", "beta": 0.1, "label_smoothing": 0.0, "simpo_gamma": 0.5, "alpha": 0.0, "cpo_alpha": 1.0},
    {"loss_type": "sigmoid", "beta": 0.3, "label_smoothing": 0.1, "simpo_gamma": 0.5, "alpha": 0.0, "cpo_alpha": 0.5},
    {"loss_type": "hinge", "beta": 0.1, "label_smoothing": 0.0, "simpo_gamma": 0.5, "alpha": 0.0, "cpo_alpha": 1.0},
    {"loss_type": "ipo", "beta": 0.1, "label_smoothing": 0.0, "simpo_gamma": 0.5, "alpha": 0.0, "cpo_alpha": 1.0},
    {"loss_type": "simpo", "beta": 2.0, "label_smoothing": 0.0, "simpo_gamma": 0.5, "alpha": 0.0, "cpo_alpha": 0.0},
    {"loss_type": "simpo", "beta": 2.0, "label_smoothing": 0.0, "simpo_gamma": 1.0, "alpha": 0.0, "cpo_alpha": 0.5},
    {"loss_type": "simpo", "beta": 2.0, "label_smoothing": 0.0, "simpo_gamma": 0.5, "alpha": 0.2, "cpo_alpha": 0.0},
])
def test_cpo_and_simpo_equal_trl(cfg):
    b, width = 5, 8
    per_token, shift_mask, _ = _token_data(2 * b, width, seed=7)
    lengths = shift_mask.sum(1)

    def logps(leaf):
        sums = (leaf * shift_mask).sum(1)
        return sums / lengths if cpo_uses_average(cfg["loss_type"]) else sums

    ours_leaf = per_token.clone().requires_grad_()
    lp = logps(ours_leaf)
    pair, chosen_r, rejected_r = cpo_pair_losses(lp[:b], lp[b:], cfg["loss_type"], cfg["beta"],
                                                 cfg["label_smoothing"], cfg["simpo_gamma"], cfg["alpha"])
    ours = preference_loss(pair, b, (ours_leaf * shift_mask).sum(1)[:b], cfg["cpo_alpha"], int(lengths[:b].sum()))
    ours.backward()

    theirs_leaf = per_token.clone().requires_grad_()
    lp = logps(theirs_leaf)
    nll = _nll(theirs_leaf[:b], shift_mask[:b]) if cfg["cpo_alpha"] else torch.tensor(0.0)
    stub = _stub(**cfg)
    stub.cpo_loss = lambda c, r: trl_cpo.CPOTrainer.cpo_loss(stub, c, r)
    stub.concatenated_forward = lambda model, batch: (lp[:b], lp[b:], torch.zeros(1), torch.zeros(1), nll)
    theirs, metrics = trl_cpo.CPOTrainer.get_batch_loss_metrics(stub, None, {})
    theirs.backward()
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours_leaf.grad, theirs_leaf.grad, rtol=1e-5, atol=1e-7)
    stats = PreferenceStats()
    stats.add(**pair_reward_stats(chosen_r, rejected_r))
    for name, value in stats.means().items():
        assert value == pytest.approx(metrics[name], rel=1e-5, abs=1e-6), name


@pytest.mark.parametrize("beta", [0.1, 0.25])
def test_orpo_equals_trl(beta, monkeypatch):
    b, width = 5, 8
    per_token, shift_mask, _ = _token_data(2 * b, width, seed=9)
    lengths = shift_mask.sum(1)

    ours_leaf = per_token.clone().requires_grad_()
    sums = (ours_leaf * shift_mask).sum(1)
    pair, log_odds = orpo_pair_losses(sums[:b] / lengths[:b], sums[b:] / lengths[b:], beta)
    ours = preference_loss(pair, b, sums[:b], 1.0, int(lengths[:b].sum()))
    ours.backward()

    theirs_leaf = per_token.clone().requires_grad_()
    avg = (theirs_leaf * shift_mask).sum(1) / lengths
    # rlvr's NLL term covers the chosen completion's tokens (see rlvr/preference/losses.py, orpo); it is
    # injected as TRL's nll_loss, the rest of TRL's combination runs as is.
    nll = _nll(theirs_leaf[:b], shift_mask[:b])
    stub = _stub(beta=beta)
    stub.odds_ratio_loss = lambda c, r: trl_orpo.ORPOTrainer.odds_ratio_loss(stub, c, r)
    stub.concatenated_forward = lambda model, batch: (avg[:b], avg[b:], torch.zeros(1), torch.zeros(1), nll)
    monkeypatch.setattr(trl_orpo, "is_torch_xla_available", lambda: False)
    theirs, metrics = trl_orpo.ORPOTrainer.get_batch_loss_metrics(stub, None, {})
    theirs.backward()
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours_leaf.grad, theirs_leaf.grad, rtol=1e-5, atol=1e-7)
    assert log_odds.mean().item() == pytest.approx(metrics["log_odds_chosen"], rel=1e-5)


def test_preference_loss_is_the_same_however_a_step_is_split():
    # Two micro-batches of a step add up to the one-batch loss, NLL term included (GA invariance).
    torch.manual_seed(0)
    pair, chosen, lengths = torch.rand(6), -torch.rand(6) * 5, torch.tensor([3, 5, 2, 7, 4, 1])
    whole = preference_loss(pair, 6, chosen, 0.7, int(lengths.sum()))
    parts = sum(preference_loss(pair[s], 6, chosen[s], 0.7, int(lengths.sum())) for s in (slice(0, 2), slice(2, 6)))
    torch.testing.assert_close(whole, parts)
    assert whole.item() == pytest.approx(pair.mean().item() - 0.7 * chosen.sum().item() / 22, rel=1e-6)
