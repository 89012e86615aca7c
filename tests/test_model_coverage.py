"""Model coverage: every family rlvr covers, as a tiny random model, through the pipeline (CPU, fp32).

Per family: the native engine's greedy tokens equal transformers.generate's token for token, its
sampled log-probs equal the trainer's (so the engine and the loss agree on the family's head: Gemma's
soft-capping, Granite's logit scaling); one GRPO step runs and records its rollout backend and LoRA
modules; a merged export reloads with the same logits. `bench/coverage.py` runs this file and writes
the README's coverage table from the results, so the table is what these tests show.
"""

from __future__ import annotations

import json

import pytest
import torch
from conftest import make_tokenizer
from families import FAMILIES, family_model

from rlvr.config import GRPOConfig
from rlvr.export.save import save_merged
from rlvr.grpo.trainer import GRPOTrainer
from rlvr.models.forward import completion_logprobs
from rlvr.models.loading import attach_lora
from rlvr.rollout import HFEngine, SamplingParams
from rlvr.rollout.native import NativeEngine

KINDS = list(FAMILIES)
TEXTS = ["hello world, a longer prompt", "a", "the quick brown fox", "1+2="]  # ragged; longer than the windows
GREEDY = SamplingParams(max_new_tokens=12, do_sample=False)


def _model(kind: str, tok, lora: bool = False):
    model = family_model(kind, len(tok))
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    if lora:
        model = attach_lora(model, 4, 8)
        g = torch.Generator().manual_seed(1)
        for name, p in model.named_parameters():
            if "lora_B" in name:  # non-zero B so the adapter changes the model
                p.data = torch.randn(p.shape, generator=g) * 0.1
    return model


def _rows(rollout) -> list[list[int]]:
    return [r[m.bool()].tolist() for r, m in zip(rollout.completion_ids, rollout.completion_mask)]


@pytest.mark.parametrize("kind", KINDS)
def test_native_engine_matches_generate_and_the_trainer(kind):
    tok = make_tokenizer()
    model = _model(kind, tok, lora=True)
    prompts = [tok.encode(t) for t in TEXTS]
    engine = NativeEngine(model, tok, sync_every=4)
    assert engine.backend_name == "native", engine.describe()
    out = engine.generate(prompts, 2, GREEDY)
    assert _rows(out) == _rows(HFEngine(model, tok).generate(prompts, 2, GREEDY))
    sampled = engine.generate(prompts, 2, SamplingParams(max_new_tokens=12, temperature=0.7), seed=3)
    ref, _ = completion_logprobs(model, sampled.prompt_ids, sampled.prompt_mask, sampled.completion_ids,
                                 sampled.completion_mask, temperature=0.7)
    torch.testing.assert_close(sampled.logprobs, ref, atol=1e-4, rtol=0)


def count_a(prompts, completions, **kw):
    return [c[0]["content"].count("a") / 8 for c in completions]


@pytest.mark.parametrize("kind", KINDS)
def test_one_grpo_step(kind, tmp_path):
    tok = make_tokenizer()
    model = _model(kind, tok, lora=True)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    data = [{"prompt": [{"role": "user", "content": f"q{i}"}], "answer": str(i)} for i in range(8)]
    cfg = GRPOConfig(output_dir=str(tmp_path / "run"), per_device_train_batch_size=8, num_generations=4,
                     max_completion_length=6, max_steps=1, learning_rate=1e-2, save_steps=100, warmup_ratio=0.0,
                     logging_steps=1, rollout_backend="native", beta=0.04)
    GRPOTrainer(model, tok, [count_a], data, cfg, show_progress=False).train()
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == 1 and all(torch.isfinite(torch.tensor(metrics[0][k])) for k in ("loss", "kl"))
    changed = [n for n, p in model.named_parameters() if p.requires_grad and not torch.equal(before[n], p)]
    assert changed
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["rollout_backend"] == "native"
    assert run["lora_target_modules"]


@pytest.mark.parametrize("kind", KINDS)
def test_merged_export_reloads_with_equal_logits(kind, tmp_path):
    from transformers import AutoModelForCausalLM

    tok = make_tokenizer()
    model = _model(kind, tok, lora=True).eval()
    ids = torch.tensor([tok.encode("the quick brown fox jumps")])
    with torch.no_grad():
        expected = model(input_ids=ids).logits
    out = save_merged(model, tok, tmp_path / "merged", dtype="float32")
    loaded = AutoModelForCausalLM.from_pretrained(out, attn_implementation="eager").eval()
    assert not any("lora" in k for k in loaded.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=ids).logits, expected, atol=1e-5, rtol=0)
