"""The GRPO loop on tiny random models: learning, resume, gradient accumulation, every loss variant."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import make_model, make_tokenizer

from rlvr.config import GRPOConfig
from rlvr.grpo.trainer import GRPOTrainer
from rlvr.models.loading import attach_lora


def count_a(prompts, completions, **kw):
    """Trivially learnable: the share of 'a' characters in the completion."""
    texts = [c[0]["content"] for c in completions]
    return [t.count("a") / max(1, len(t)) for t in texts]


def char_score(prompts, completions, **kw):
    """Varied within every group, so advantages (and gradients) are never all zero."""
    return [float(sum(map(ord, c[0]["content"])) % 7) for c in completions]


def dataset(n=32):
    return [{"prompt": [{"role": "user", "content": f"q{i}"}], "answer": str(i)} for i in range(n)]


def lora_model(tok, seed=0):
    model = make_model("llama", vocab_size=len(tok), seed=seed)
    model.generation_config.eos_token_id = tok.eos_token_id
    model = attach_lora(model, 4, 8)
    g = torch.Generator().manual_seed(seed + 1)
    for name, p in model.named_parameters():
        if "lora_B" in name:  # non-zero B so gradients reach A and the adapter matters
            p.data = torch.randn(p.shape, generator=g) * 0.05
    return model


def args(tmp_path, **kw):
    base = dict(output_dir=str(tmp_path / "run"), per_device_train_batch_size=8, num_generations=4,
                max_completion_length=8, max_steps=4, learning_rate=1e-3, save_steps=100, warmup_ratio=0.0,
                max_grad_norm=1.0, logging_steps=1)
    base.update(kw)
    return GRPOConfig(**base)


def read_metrics(path):
    return [json.loads(line) for line in open(path)]


def test_reward_rises_on_a_learnable_reward(tmp_path):
    tok = make_tokenizer()
    model = make_model("llama", vocab_size=len(tok))
    model.generation_config.eos_token_id = tok.eos_token_id
    cfg = args(tmp_path, max_steps=24, learning_rate=1e-2, max_completion_length=16, gradient_accumulation_steps=2)
    GRPOTrainer(model, tok, [count_a], dataset(64), cfg, show_progress=False).train()
    rewards = [m["reward"] for m in read_metrics(tmp_path / "run" / "metrics.jsonl")]
    assert len(rewards) == 24
    assert sum(rewards[-4:]) / 4 > sum(rewards[:4]) / 4 + 0.3


def test_metrics_and_run_directory(tmp_path):
    tok = make_tokenizer()
    cfg = args(tmp_path, beta=0.1, num_iterations=2, completions_log_steps=1)
    result = GRPOTrainer(lora_model(tok), tok, [count_a], dataset(), cfg, show_progress=False).train()
    rows = read_metrics(tmp_path / "run" / "metrics.jsonl")
    for key in ("reward", "reward_std", "rewards/count_a/mean", "rewards/count_a/std", "frac_reward_zero_std",
                "completions/mean_length", "completions/min_length", "completions/max_length",
                "completions/clipped_ratio", "kl", "entropy", "clip_ratio/low_mean", "clip_ratio/high_mean",
                "clip_ratio/region_mean", "loss", "grad_norm", "learning_rate", "time/rollout", "time/score",
                "time/update", "tokens_per_second", "memory/peak_gib"):
        assert key in rows[-1], key
    assert rows[-1]["kl"] >= 0
    assert (tmp_path / "run" / "final" / "adapter_config.json").is_file()
    samples = [json.loads(line) for line in open(tmp_path / "run" / "samples.jsonl")]
    assert samples and {"prompt", "completion", "reward", "advantage", "rewards"} <= set(samples[0])
    assert result["step"] == 4


@pytest.mark.parametrize("variant", [
    dict(loss_type="grpo"), dict(loss_type="bnpo"), dict(loss_type="dr_grpo"), dict(loss_type="dapo"),
    dict(importance_sampling_level="sequence", num_iterations=2), dict(epsilon_high=0.28, delta=1.5),
    dict(scale_rewards="batch"), dict(scale_rewards=False), dict(mask_truncated_completions=True),
    dict(top_k=5, top_p=0.9, min_p=0.05, repetition_penalty=1.1, temperature=0.7), dict(bf16=True),
])
def test_every_variant_trains_with_finite_metrics(tmp_path, variant):
    tok = make_tokenizer()
    cfg = args(tmp_path, max_steps=2, **variant)
    result = GRPOTrainer(lora_model(tok), tok, [count_a], dataset(), cfg, show_progress=False).train()
    assert torch.isfinite(torch.tensor(result["loss"]))
    assert torch.isfinite(torch.tensor(result["grad_norm"]))


def odd_prompts_only(prompts, completions, answer, **kw):
    """Varied within groups of odd-numbered prompts, constant (0) for even ones: dynamic sampling drops those."""
    return [float(sum(map(ord, c[0]["content"])) % 97) if int(a) % 2 else 0.0 for c, a in zip(completions, answer)]


def captured_grads(tmp_path, micro, ga, rewards=(char_score,), **kw):
    tok = make_tokenizer()
    model = lora_model(tok)
    cfg = args(tmp_path, per_device_train_batch_size=micro, gradient_accumulation_steps=ga, loss_type="dapo",
               steps_per_generation=8 // micro, **kw)
    trainer = GRPOTrainer(model, tok, list(rewards), dataset(), cfg, show_progress=False)
    grads = []
    trainer.update.optimizer.step = lambda: grads.append(
        [p.grad.clone() for p in trainer.model.parameters() if p.requires_grad])
    trainer.batch, metrics, _ = trainer.make_round(0)
    # The same 8 completions in the same order, split 4 × 2 or 1 × 8.
    order = torch.arange(8)
    trainer.train_step([order[s:s + micro] for s in range(0, 8, micro)])
    return grads[0], metrics


@pytest.mark.parametrize("setting", [
    dict(),
    # dynamic sampling: the round is drawn from two generation batches, only odd prompts' groups kept
    dict(rewards=[odd_prompts_only], filter_groups=True, max_num_gen_batches=8),
    dict(rewards=[char_score, odd_prompts_only], reward_saturation_scaling=True),
])
def test_gradient_accumulation_4x2_equals_1x8_through_the_model(tmp_path, setting):
    whole, metrics = captured_grads(tmp_path / "a", 8, 1, **setting)
    split, _ = captured_grads(tmp_path / "b", 2, 4, **setting)
    if "filter_groups" in setting:
        assert metrics["filter_groups/generation_batches"] > 1 and metrics["frac_reward_zero_std"] == 0
    assert sum(g.abs().sum() for g in whole) > 0
    for a, b in zip(whole, split):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-4)


def adapter_state(model):
    return {k: v.detach().clone() for k, v in model.named_parameters() if v.requires_grad}


def test_resume_mid_round_matches_an_uninterrupted_run(tmp_path):
    tok = make_tokenizer()
    # Two optimizer steps per round (steps_per_generation 2 > GA 1), so step 3 is inside a round
    # and ℓ^old is in play.
    common = dict(max_steps=6, save_steps=3, steps_per_generation=2, per_device_train_batch_size=4)
    full = lora_model(tok)
    GRPOTrainer(full, tok, [char_score], dataset(), args(tmp_path / "full", **common), show_progress=False).train()

    first = lora_model(tok)
    trainer = GRPOTrainer(first, tok, [char_score], dataset(), args(tmp_path / "cut", **common), show_progress=False)
    original = trainer.train_step

    def stop_after_three(*a, **kw):
        out = original(*a, **kw)
        if trainer.global_step == 3:
            trainer.request_stop()  # what SIGINT does
        return out

    trainer.train_step = stop_after_three
    result = trainer.train()
    assert result["interrupted"] and result["step"] == 3
    assert (tmp_path / "cut" / "run" / "checkpoints" / "step-000003" / "round.pt").is_file()

    resumed = lora_model(tok)
    GRPOTrainer(resumed, tok, [char_score], dataset(), args(tmp_path / "cut", **common),
                 show_progress=False).train(resume_from_checkpoint="latest")
    want, got = adapter_state(full), adapter_state(resumed)
    assert want.keys() == got.keys()
    for k in want:
        torch.testing.assert_close(got[k], want[k], atol=1e-6, rtol=1e-5)
    start = adapter_state(lora_model(tok))
    assert any(not torch.equal(start[k], want[k]) for k in want)


def test_native_rollouts_report_tis_ratios_near_one(tmp_path):
    """On CPU fp32 the native engine's ℓ^roll equals the trainer's ℓ^old, so every TIS ratio is ~1."""
    tok = make_tokenizer()
    cfg = args(tmp_path, max_steps=2, rollout_backend="native")
    GRPOTrainer(lora_model(tok), tok, [char_score], dataset(), cfg, show_progress=False).train()
    last = read_metrics(tmp_path / "run" / "metrics.jsonl")[-1]
    for name in ("min", "mean", "max"):
        assert abs(last[f"sampling/importance_sampling_ratio/{name}"] - 1.0) < 1e-3


def test_memory_estimate_is_written_and_adds_up(tmp_path):
    tok = make_tokenizer()
    trainer = GRPOTrainer(lora_model(tok), tok, [char_score], dataset(), args(tmp_path, max_steps=1),
                          show_progress=False)
    trainer.train()
    est = json.loads((tmp_path / "run" / "memory_estimate.json").read_text())
    weights = sum(p.numel() * 4 for p in trainer.model.parameters() if not p.requires_grad) / 2**30
    assert est["weights"] == pytest.approx(weights, abs=1e-3)
    fixed = est["weights"] + est["adapters"] + est["gradients"] + est["optimizer"]
    phases = max(est["kv_cache"] + est["decode_copy"], est["activations"] + est["loss_workspace"])
    assert est["peak"] == pytest.approx(fixed + phases, abs=2e-3)
    assert est["decode_copy"] == 0.0  # hf backend on CPU: no merged copy


def step_with_masked_rows(tmp_path, monkeypatch, skip: bool, **kw):
    """One step on a round whose rows 1, 2 and 5 are masked out of the loss entirely (as
    mask_truncated_completions masks truncated completions): (grads, metrics, rows forwarded)."""
    import rlvr.grpo.trainer as trainer_module

    if not skip:
        monkeypatch.setattr(trainer_module, "rows_in_the_loss", lambda index, mask: index)
    tok = make_tokenizer()
    cfg = args(tmp_path, per_device_train_batch_size=4, gradient_accumulation_steps=2, steps_per_generation=2, **kw)
    trainer = GRPOTrainer(lora_model(tok), tok, [char_score], dataset(), cfg, show_progress=False)
    grads, forwarded = [], []
    trainer.update.optimizer.step = lambda: grads.append(
        [p.grad.clone() for p in trainer.model.parameters() if p.requires_grad])
    policy_forward = trainer._policy_forward
    trainer._policy_forward = lambda mb, *args, **kwargs: (forwarded.append(mb.completion_ids.shape[0]),
                                                           policy_forward(mb, *args, **kwargs))[1]
    trainer.batch, _, _ = trainer.make_round(0)
    trainer.batch.completion_mask[[1, 2, 5]] = 0
    metrics = trainer.train_step([torch.arange(0, 4), torch.arange(4, 8)])
    return grads[0], metrics, forwarded


@pytest.mark.parametrize("variant", [dict(loss_type="grpo"), dict(loss_type="bnpo"), dict(loss_type="dr_grpo"),
                                     dict(loss_type="dapo"), dict(importance_sampling_level="sequence")],
                         ids=["grpo", "bnpo", "dr_grpo", "dapo", "gspo"])
def test_rows_masked_out_of_the_loss_are_not_forwarded_and_change_nothing(tmp_path, monkeypatch, variant):
    grads, metrics, forwarded = step_with_masked_rows(tmp_path / "skip", monkeypatch, True, **variant)
    monkeypatch.undo()
    all_grads, all_metrics, all_forwarded = step_with_masked_rows(tmp_path / "all", monkeypatch, False, **variant)
    assert all_forwarded == [4, 4] and forwarded == [2, 3]
    assert sum(g.abs().sum() for g in grads) > 0
    for a, b in zip(grads, all_grads):
        torch.testing.assert_close(a, b, atol=1e-7, rtol=1e-5)
    for key in ("loss", "entropy", "clip_ratio/low_mean", "clip_ratio/high_mean", "clip_ratio/region_mean"):
        assert metrics[key] == pytest.approx(all_metrics[key], rel=1e-5, abs=1e-7), key
