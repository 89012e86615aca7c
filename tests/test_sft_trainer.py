"""SFT on the shared trainer core: checkpoints and resume equality, non-finite steps skipped."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import make_model, make_tokenizer

from rlvr.config import SFTConfig
from rlvr.errors import RlvrError
from rlvr.models.loading import attach_lora
from rlvr.sft.trainer import SFTTrainer


def dataset(n=12):
    return [{"prompt": [{"role": "user", "content": f"{i}+{i}?"}], "completion": f"it is {2 * i}"} for i in range(n)]


def lora_model(tok):
    model = make_model("llama", vocab_size=len(tok))
    return attach_lora(model, 4, 8, dropout=0.1, seed=0)  # dropout: the RNG state must resume too


def sft_args(run_dir, **kw):
    base = dict(output_dir=str(run_dir), per_device_train_batch_size=4, gradient_accumulation_steps=2, max_steps=4,
                learning_rate=1e-2, warmup_ratio=0.0, save_steps=2, seed=3)
    base.update(kw)
    return SFTConfig(**base)


def adapter(model):
    return {k: v.detach().clone() for k, v in model.named_parameters() if v.requires_grad}


def test_resumed_sft_ends_with_the_uninterrupted_adapter(tmp_path):
    tok = make_tokenizer()
    full = lora_model(tok)
    SFTTrainer(full, tok, dataset(), sft_args(tmp_path / "full"), show_progress=False).train()

    cut = SFTTrainer(lora_model(tok), tok, dataset(), sft_args(tmp_path / "cut"), show_progress=False)
    step = cut.train_step

    def stop_after_one(*a):
        out = step(*a)
        cut.request_stop()  # what SIGINT does: this step finishes and is saved
        return out

    cut.train_step = stop_after_one
    result = cut.train()
    assert result["interrupted"] and result["step"] == 1
    assert (tmp_path / "cut" / "checkpoints" / "latest").read_text() == "step-000001"

    resumed = lora_model(tok)
    torch.manual_seed(1234)  # a different global RNG: the checkpoint's must be restored
    out = SFTTrainer(resumed, tok, dataset(), sft_args(tmp_path / "cut"), show_progress=False).train("latest")
    assert out["step"] == 4 and not out["interrupted"]
    want, got = adapter(full), adapter(resumed)
    for k in want:
        torch.testing.assert_close(got[k], want[k], atol=1e-6, rtol=1e-5, msg=k)
    steps = [json.loads(line)["step"] for line in open(tmp_path / "cut" / "metrics.jsonl")]
    assert steps == [1, 2, 3, 4]


def test_nonfinite_sft_steps_are_skipped_counted_and_stop_the_run(tmp_path):
    tok = make_tokenizer()
    trainer = SFTTrainer(lora_model(tok), tok, dataset(), sft_args(tmp_path / "a", gradient_accumulation_steps=1),
                         show_progress=False)
    real = trainer.forward_backward
    calls = []

    def poisoned(mb, counts, sums):
        calls.append(1)
        loss = real(mb, counts, sums)
        return float("nan") if len(calls) <= 2 else loss  # the first two steps

    trainer.forward_backward = poisoned
    before = adapter(trainer.model)
    trainer.train()
    rows = [json.loads(line) for line in open(tmp_path / "a" / "metrics.jsonl")]
    assert [r["skipped_steps"] for r in rows] == [1, 2, 2, 2]
    after = adapter(trainer.model)
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert all(torch.isfinite(v).all() for v in after.values())

    always = SFTTrainer(lora_model(tok), tok, dataset(), sft_args(tmp_path / "b", max_nonfinite_steps=3,
                                                                  max_steps=10), show_progress=False)
    always.forward_backward = lambda mb, counts, sums: real(mb, counts, sums) * float("nan")
    with pytest.raises(RlvrError, match="step 3: 3 optimizer steps in a row"):
        always.train()
    assert json.loads((tmp_path / "b" / "run.json").read_text())["status"] == "failed"


def test_sft_optim_typo_is_refused():
    with pytest.raises(RlvrError, match="train.optim: 'adamw_troch'.*did you mean 'adamw_torch'"):
        SFTConfig(optim="adamw_troch").validate()
