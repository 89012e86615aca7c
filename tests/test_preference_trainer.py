"""The preference trainers on tiny random models: exact first-step losses (the reference is the
policy before step 1), learning, gradient-accumulation invariance, resume equality, bad inputs."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import make_model, make_tokenizer

from rlvr.errors import RlvrError
from rlvr.models.loading import attach_lora
from rlvr.preference.config import CPOConfig, DPOConfig, KTOConfig, ORPOConfig
from rlvr.preference.trainer import KTOTrainer, PreferenceTrainer


def pairs(n=16):
    """The chosen reply repeats the prompt's digit; the rejected one does not."""
    return [{"prompt": [{"role": "user", "content": f"say {i % 10}"}], "chosen": f"{i % 10}{i % 10}{i % 10}",
             "rejected": f"{(i + 3) % 10}x" + "y" * (i % 4)} for i in range(n)]


def unpaired(n=16):
    return [{"prompt": p["prompt"], "completion": p["chosen"] if i % 2 else p["rejected"], "label": bool(i % 2)}
            for i, p in enumerate(pairs(n))]


def lora_model(tok, seed=0):
    model = attach_lora(make_model("llama", vocab_size=len(tok), seed=seed), 4, 8)
    g = torch.Generator().manual_seed(seed + 1)
    for name, p in model.named_parameters():
        if "lora_B" in name:  # non-zero B: the reference (the policy before step 1) is not the base model
            p.data = torch.randn(p.shape, generator=g) * 0.05
    return model


def common(tmp_path, **kw):
    base = dict(output_dir=str(tmp_path / "run"), per_device_train_batch_size=4, max_steps=3, learning_rate=1e-3,
                logging_steps=1, save_steps=100, lr_scheduler_type="constant")
    base.update(kw)
    return base


def metrics(tmp_path, name="run"):
    return [json.loads(line) for line in open(tmp_path / name / "metrics.jsonl")]


def adapter_state(model):
    return {k: v.detach().clone() for k, v in model.named_parameters() if v.requires_grad}


@pytest.mark.parametrize("cls,kw,first_loss", [
    (DPOConfig, {}, math.log(2)),  # π = π_ref: −log σ(0)
    (DPOConfig, {"loss_type": ["hinge"], "beta": 0.5}, 1.0),  # relu(1 − 0)
    (DPOConfig, {"loss_type": ["ipo"], "beta": 0.25}, 4.0),  # (0 − 1/(2·0.25))²
    (DPOConfig, {"loss_type": ["apo_zero"]}, 1.0),  # 1 − σ(0) + σ(0)
    (KTOConfig, {}, 0.5),  # 1 − σ(0), KL 0
])
def test_first_step_loss_is_exact_and_training_lowers_it(tmp_path, cls, kw, first_loss):
    tok = make_tokenizer()
    args = cls(**common(tmp_path, max_steps=8, learning_rate=3e-3, **kw))
    trainer_cls = KTOTrainer if cls is KTOConfig else PreferenceTrainer
    data = unpaired(8) if cls is KTOConfig else pairs(8)
    result = trainer_cls(lora_model(tok), tok, data, args, show_progress=False).train()
    rows = metrics(tmp_path)
    assert rows[0]["loss"] == pytest.approx(first_loss, abs=1e-5)
    assert rows[0]["rewards/chosen"] == pytest.approx(0.0, abs=1e-5)
    assert rows[-1]["loss"] < rows[0]["loss"]
    assert [r["step"] for r in rows] == list(range(1, 9)) and result["step"] == 8
    if cls is DPOConfig:
        assert rows[-1]["rewards/margins"] > 0 and rows[-1]["rewards/accuracies"] > 0.5
    run = tmp_path / "run"
    assert (run / "final" / "adapter_config.json").is_file()
    assert json.loads((run / "run.json").read_text())["status"] == "finished"


@pytest.mark.parametrize("cls,kw", [(CPOConfig, {}), (CPOConfig, {"loss_type": "simpo", "cpo_alpha": 0.0,
                                                                   "beta": 2.0}), (ORPOConfig, {})])
def test_reference_free_methods_train_with_their_metrics(tmp_path, cls, kw):
    tok = make_tokenizer()
    args = cls(**common(tmp_path, max_steps=6, learning_rate=3e-3, **kw))
    PreferenceTrainer(lora_model(tok), tok, pairs(8), args, show_progress=False).train()
    rows = metrics(tmp_path)
    assert rows[-1]["loss"] < rows[0]["loss"]
    assert all(math.isfinite(r["loss"]) for r in rows)
    assert {"rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "logps/chosen",
            "logps/rejected", "grad_norm", "learning_rate"} <= rows[0].keys()
    assert ("nll_loss" in rows[0]) == (kw.get("cpo_alpha", 1.0) > 0)  # SimPO (cpo_alpha 0) has no NLL term
    assert ("log_odds_ratio" in rows[0]) == (cls is ORPOConfig)


def trained(tmp_path, name, cls, per_device, ga, steps=2, **kw):
    tok = make_tokenizer()
    model = lora_model(tok)
    args = cls(**common(tmp_path, output_dir=str(tmp_path / name), per_device_train_batch_size=per_device,
                        gradient_accumulation_steps=ga, max_steps=steps, **kw))
    trainer_cls = KTOTrainer if cls is KTOConfig else PreferenceTrainer
    trainer_cls(model, tok, unpaired(16) if cls is KTOConfig else pairs(16), args, show_progress=False).train()
    return adapter_state(model), metrics(tmp_path, name)


@pytest.mark.parametrize("cls,kw", [(DPOConfig, {"loss_type": ["sigmoid", "sft"]}), (ORPOConfig, {}),
                                    (KTOConfig, {})])
def test_gradient_accumulation_4x2_equals_2x4_equals_8x1(tmp_path, cls, kw):
    whole, whole_rows = trained(tmp_path, "a", cls, 8, 1, **kw)
    for per_device, ga in ((4, 2), (2, 4)):
        split, rows = trained(tmp_path, f"b{ga}", cls, per_device, ga, **kw)
        for k in whole:
            torch.testing.assert_close(split[k], whole[k], atol=1e-6, rtol=1e-4)
        for want, got in zip(whole_rows, rows):
            assert got["loss"] == pytest.approx(want["loss"], rel=1e-5, abs=1e-6)
    assert whole_rows[0]["loss"] != whole_rows[1]["loss"]


@pytest.mark.parametrize("cls", [DPOConfig, KTOConfig])
def test_resume_ends_with_the_uninterrupted_adapter(tmp_path, cls):
    full, _ = trained(tmp_path, "full", cls, 4, 1, steps=4, save_steps=2)
    trained(tmp_path, "cut", cls, 4, 1, steps=2, save_steps=2)
    tok = make_tokenizer()
    model = lora_model(tok)
    for p in model.parameters():
        if p.requires_grad:  # other adapter weights: they, and the reference log-probs, come from the checkpoint
            p.data.normal_()
    args = cls(**common(tmp_path, output_dir=str(tmp_path / "cut"), per_device_train_batch_size=4, max_steps=4,
                        save_steps=2))
    trainer_cls = KTOTrainer if cls is KTOConfig else PreferenceTrainer
    trainer_cls(model, tok, unpaired(16) if cls is KTOConfig else pairs(16), args,
                show_progress=False).train(resume_from_checkpoint="latest")
    resumed = adapter_state(model)
    for k in full:
        torch.testing.assert_close(resumed[k], full[k], atol=1e-6, rtol=1e-5)
    assert [r["step"] for r in metrics(tmp_path, "cut")] == [1, 2, 3, 4]


def test_bad_inputs_are_one_line_errors(tmp_path):
    tok = make_tokenizer()
    model = lora_model(tok)
    with pytest.raises(RlvrError, match="KTOTrainer"):
        PreferenceTrainer(model, tok, pairs(4), KTOConfig(**common(tmp_path)))
    with pytest.raises(RlvrError, match="needs a KTOConfig"):
        KTOTrainer(model, tok, unpaired(4), DPOConfig(**common(tmp_path)))
    with pytest.raises(RlvrError, match="raise max_length"):
        PreferenceTrainer(model, tok, pairs(4), DPOConfig(**common(tmp_path, max_length=5)))
