"""Progress inside a long rollout: the engines' progress callback, and the lines a trainer and an
evaluation show with it (plain lines in a log, none under RLVR_NO_PROGRESS)."""

from __future__ import annotations

import re

import pytest
import torch
from conftest import make_model, make_tokenizer

from rlvr.config import EvalConfig, GRPOConfig
from rlvr.evaluation.evaluate import evaluate
from rlvr.grpo.trainer import GRPOTrainer
from rlvr.rollout import HFEngine, SamplingParams
from rlvr.rollout.native import NativeEngine

TEXTS = ["hello world", "a", "the quick brown fox", "1+2="]
SAMPLED = SamplingParams(max_new_tokens=24, do_sample=True)


def _model(tok):
    model = make_model("llama", vocab_size=len(tok), initializer_range=0.1)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    return model


def _hf(model, tok) -> HFEngine:
    engine = HFEngine(model, tok, batch_size=3)
    engine.progress_every = 4
    return engine


ENGINES = {  # several sub-batches each; the native one compacts too
    "native": lambda m, tok: NativeEngine(m, tok, sync_every=4, kv_budget_bytes=300_000),
    "hf": _hf,
}


@pytest.mark.parametrize("backend", list(ENGINES))
def test_progress_grows_to_the_rollout_totals(backend):
    tok = make_tokenizer()
    model = _model(tok)
    prompts = [tok.encode(t) for t in TEXTS]
    reports = []
    out = ENGINES[backend](model, tok).generate(prompts, 2, SAMPLED, seed=0, progress=reports.append)
    assert len(reports) >= 3  # heard from during the rollout, not only at its end
    assert {r.rows for r in reports} == {8}
    done, tokens = [r.rows_done for r in reports], [r.tokens for r in reports]
    assert done == sorted(done) and tokens == sorted(tokens)
    assert done[-1] == 8
    assert tokens[-1] == int(out.completion_mask.sum())  # every decoded token, through EOS
    assert 0 < tokens[len(tokens) // 2] < tokens[-1]
    # Listening changes nothing that is sampled.
    again = ENGINES[backend](model, tok).generate(prompts, 2, SAMPLED, seed=0)
    assert torch.equal(again.completion_ids, out.completion_ids)


def test_native_engine_reports_only_at_its_host_checks():
    tok = make_tokenizer()
    reports = []
    NativeEngine(_model(tok), tok, sync_every=4).generate([tok.encode("hello")], 1, SAMPLED, seed=0,
                                                          progress=reports.append)
    # 23 decode steps: at most one report per check (steps 4, 8, ..., 20) and one at the end.
    assert 1 <= len(reports) <= 6


def _train(tmp_path, tok):
    cfg = GRPOConfig(output_dir=str(tmp_path / "run"), per_device_train_batch_size=8, num_generations=4,
                     max_completion_length=8, max_steps=2, learning_rate=1e-3, logging_steps=1, save_steps=100)
    data = [{"prompt": [{"role": "user", "content": f"q{i}"}], "answer": str(i)} for i in range(16)]
    GRPOTrainer(_model(tok), tok, [lambda prompts, completions, **kw: [1.0] * len(completions)], data, cfg).train()


def test_training_shows_the_rollout_in_a_log_and_not_under_rlvr_no_progress(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("rlvr.train.run_dir.PLAIN_EVERY_S", 0.0)  # a rollout "long" enough for a line
    monkeypatch.delenv("RLVR_NO_PROGRESS", raising=False)
    tok = make_tokenizer()
    _train(tmp_path / "a", tok)
    lines = capsys.readouterr().err.splitlines()
    assert any(re.fullmatch(r"GRPO 0/2 rollout 8/8 completions, \d+ tokens", line) for line in lines), lines
    assert any(re.fullmatch(r"GRPO 1/2 rollout 8/8 completions, \d+ tokens", line) for line in lines), lines

    monkeypatch.setenv("RLVR_NO_PROGRESS", "1")
    _train(tmp_path / "b", tok)
    assert "rollout" not in capsys.readouterr().err


def test_evaluation_counts_completions_and_tokens_while_it_decodes(capsys, monkeypatch):
    monkeypatch.setattr("rlvr.train.run_dir.PLAIN_EVERY_S", 0.0)
    monkeypatch.delenv("RLVR_NO_PROGRESS", raising=False)
    tok = make_tokenizer()
    model = _model(tok)
    examples = [{"prompt": t, "answer": "1"} for t in TEXTS]
    cfg = EvalConfig(num_samples=2, k=[1], do_sample=True, max_new_tokens=24, batch_size=8)
    engine = NativeEngine(model, tok, sync_every=4)
    result = evaluate(model, tok, examples, cfg, engine=engine, desc="eval")
    lines = [tuple(map(int, m.groups())) for line in capsys.readouterr().err.splitlines()
             if (m := re.fullmatch(r"eval (\d+)/8 (\d+) tokens", line))]
    assert len(lines) >= 3
    assert lines == sorted(lines)
    assert lines[-1] == (8, round(result["mean_length"] * 8))

    monkeypatch.setenv("RLVR_NO_PROGRESS", "1")
    evaluate(model, tok, examples, cfg, engine=engine, desc="eval")
    assert capsys.readouterr().err == ""
