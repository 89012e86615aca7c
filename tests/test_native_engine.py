"""The native rollout engine against transformers.generate and the trainer's log-probs (CPU, fp32)."""

from __future__ import annotations

import logging

import pytest
import torch
from conftest import make_model

from rlvr.models.forward import completion_logprobs
from rlvr.models.loading import attach_lora
from rlvr.rollout import HFEngine, SamplingParams, make_engine
from rlvr.rollout.native import NativeEngine
from rlvr.rollout.native.families import read_weights
from rlvr.rollout.native.model import decode_one_token, rope_tables
from rlvr.rollout.native.weights import fuse_lora, merge_lora

# False: every adapter as extra matmuls (q/k/v and gate/up fused); True: all adapted matrices merged
# into a round copy; "attention": q/k/v/o merged, MLP adapters fused.
MERGE_MODES, MERGE_IDS = [False, True, "attention"], ["lora-matmuls", "lora-merged", "lora-merge-attention"]

KINDS = ["llama", "qwen2", "qwen3"]
TEXTS = ["hello world", "a", "the quick brown fox", "1+2="]  # ragged on purpose
GREEDY = SamplingParams(max_new_tokens=16, do_sample=False)


def _model(kind: str, tokenizer, **overrides):
    model = make_model(kind, vocab_size=len(tokenizer), initializer_range=0.1, **overrides)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def _prompts(tokenizer) -> list[list[int]]:
    return [tokenizer.encode(t) for t in TEXTS]


def _rows(rollout) -> list[list[int]]:
    """Each completion's tokens under its mask (widths may differ between engines)."""
    return [r[m.bool()].tolist() for r, m in zip(rollout.completion_ids, rollout.completion_mask)]


def _set_mid_eos(model, tokenizer, prompts, params=GREEDY) -> int:
    """Make a token that row 0 greedily emits mid-way an extra EOS id, so row 0 stops early."""
    row = _rows(HFEngine(model, tokenizer).generate(prompts[:1], 1, params))[0]
    step = next(k for k in range(3, len(row)) if row[k] not in row[:k])
    model.generation_config.eos_token_id = [tokenizer.eos_token_id, row[step]]
    return step


def _assert_same(native, ref):
    assert _rows(native) == _rows(ref)
    assert native.is_eos.tolist() == ref.is_eos.tolist()
    assert native.prompt_ids.tolist() == ref.prompt_ids.tolist()


@pytest.mark.parametrize("kind", KINDS)
def test_greedy_matches_hf_generate(kind, tokenizer):
    model = _model(kind, tokenizer)
    prompts = _prompts(tokenizer)
    step = _set_mid_eos(model, tokenizer, prompts)
    ref = HFEngine(model, tokenizer).generate(prompts, 2, GREEDY)
    # Sync every 2 steps with compaction on, so finished rows are dropped mid-round.
    engine = NativeEngine(model, tokenizer, sync_every=2, compact=0.25)
    out = engine.generate(prompts, 2, GREEDY)
    _assert_same(out, ref)
    assert out.is_eos[0] and len(_rows(out)[0]) == step + 1  # row 0 ended at the planted EOS
    assert not out.is_eos.all()  # and others ran to max_new_tokens
    assert engine.last_stats["backend"] == "native" and engine.last_stats["compactions"] > 0


def test_llama3_rope_scaling_and_tied_embeddings(tokenizer):
    rope = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 8}
    model = _model("llama", tokenizer, rope_parameters=rope, tie_word_embeddings=True)
    assert model.model.rotary_emb.rope_type == "llama3"
    prompts = _prompts(tokenizer)
    _assert_same(NativeEngine(model, tokenizer).generate(prompts, 1, GREEDY),
                 HFEngine(model, tokenizer).generate(prompts, 1, GREEDY))


def _randomize_lora(model, seed: int, std: float = 0.3) -> None:
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if "lora_B" in name:
            p.data.copy_(torch.randn(p.shape, generator=g) * std)


@pytest.mark.parametrize("merge", MERGE_MODES, ids=MERGE_IDS)
@pytest.mark.parametrize("kind", ["llama", "qwen2", "qwen3"])
def test_lora_adapter_is_applied_and_refreshed(kind, merge, tokenizer):
    model = attach_lora(_model(kind, tokenizer), rank=4, alpha=8)
    prompts = _prompts(tokenizer)
    engine = make_engine("native", model, tokenizer, rollout_merge_lora=merge)
    assert isinstance(engine, NativeEngine) and engine.fallback is None
    hf = HFEngine(model, tokenizer)
    base = engine.generate(prompts, 1, GREEDY)  # B = 0: the base model

    _randomize_lora(model, seed=1)
    first = engine.generate(prompts, 1, GREEDY)
    _assert_same(first, hf.generate(prompts, 1, GREEDY))
    assert _rows(first) != _rows(base)

    _randomize_lora(model, seed=2)  # the optimizer changed the adapter: the next round must see it
    second = engine.generate(prompts, 1, GREEDY)
    _assert_same(second, hf.generate(prompts, 1, GREEDY))
    assert _rows(second) != _rows(first)

    with model.disable_adapter():  # the reference policy
        _assert_same(engine.generate(prompts, 1, GREEDY), base)


@pytest.mark.parametrize("merge", MERGE_MODES, ids=MERGE_IDS)
@pytest.mark.parametrize("kind", ["llama", "qwen3"])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_logprobs_match_trainer(kind, temperature, merge, tokenizer):
    model = attach_lora(_model(kind, tokenizer), rank=4)
    _randomize_lora(model, seed=3)
    prompts = _prompts(tokenizer)
    params = SamplingParams(max_new_tokens=12, temperature=temperature, top_p=0.9, top_k=20)
    out = NativeEngine(model, tokenizer, rollout_merge_lora=merge).generate(prompts, 3, params, seed=0)
    ref, _ = completion_logprobs(model, out.prompt_ids, out.prompt_mask, out.completion_ids, out.completion_mask,
                                 temperature=temperature)
    assert out.logprobs.shape == out.completion_mask.shape
    assert (out.logprobs[out.completion_mask == 0] == 0).all()
    torch.testing.assert_close(out.logprobs, ref, atol=1e-4, rtol=0)


def test_seeded_sampling_is_reproducible(tokenizer):
    model = _model("qwen2", tokenizer)
    prompts = _prompts(tokenizer)
    params = SamplingParams(max_new_tokens=12, temperature=1.0, min_p=0.05, repetition_penalty=1.2)
    engine = NativeEngine(model, tokenizer)
    a = engine.generate(prompts, 4, params, seed=7)
    b = engine.generate(prompts, 4, params, seed=7)
    c = engine.generate(prompts, 4, params, seed=8)
    assert torch.equal(a.completion_ids, b.completion_ids) and torch.equal(a.logprobs, b.logprobs)
    assert not torch.equal(a.completion_ids, c.completion_ids)
    rows = _rows(a)
    assert len({tuple(r) for r in rows[:4]}) > 1  # G samples of one prompt differ


def test_sub_batches_under_tiny_kv_budget(tokenizer):
    model = _model("qwen3", tokenizer)
    prompts = _prompts(tokenizer)
    _set_mid_eos(model, tokenizer, prompts)
    full = NativeEngine(model, tokenizer).generate(prompts, 3, GREEDY)
    # One row's cache is 2 · 2 layers · 2 heads · 64 slots · 16 · 4 B = 32 KiB, plus sampling buffers.
    engine = NativeEngine(model, tokenizer, kv_budget_bytes=100_000)
    small = engine.generate(prompts, 3, GREEDY)
    assert engine.last_stats["sub_batches"] > 1 and engine.last_stats["rows_per_batch"] < 12
    _assert_same(small, full)
    _assert_same(small, HFEngine(model, tokenizer).generate(prompts, 3, GREEDY))


def test_repetition_penalty_matches_hf(tokenizer):
    model = _model("llama", tokenizer)
    prompts = _prompts(tokenizer)
    params = SamplingParams(max_new_tokens=16, do_sample=False, repetition_penalty=1.5)
    out = NativeEngine(model, tokenizer).generate(prompts, 1, params)
    _assert_same(out, HFEngine(model, tokenizer).generate(prompts, 1, params))
    assert _rows(out) != _rows(NativeEngine(model, tokenizer).generate(prompts, 1, GREEDY))


def test_stop_strings_match_hf(tokenizer):
    model = _model("llama", tokenizer)
    prompts = _prompts(tokenizer)
    text = tokenizer.decode(_rows(HFEngine(model, tokenizer).generate(prompts[:1], 1, GREEDY))[0])
    params = SamplingParams(max_new_tokens=16, do_sample=False, stop_strings=(text[4:6],))
    out = NativeEngine(model, tokenizer, sync_every=2).generate(prompts, 1, params)
    _assert_same(out, HFEngine(model, tokenizer).generate(prompts, 1, params))
    assert out.is_eos[0] and tokenizer.decode(_rows(out)[0]).endswith(text[4:6])


def test_unsupported_architecture_falls_back_to_hf(tokenizer, caplog):
    model = make_model("gpt2", vocab_size=len(tokenizer))
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    with caplog.at_level(logging.INFO, logger="rlvr"):
        engine = NativeEngine(model, tokenizer)
    assert engine.fallback is not None
    assert any("transformers.generate instead" in r.message for r in caplog.records)
    out = engine.generate(_prompts(tokenizer), 1, GREEDY)
    _assert_same(out, HFEngine(model, tokenizer).generate(_prompts(tokenizer), 1, GREEDY))
    assert engine.last_stats["backend"] == "hf"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("merge", MERGE_MODES, ids=MERGE_IDS)
@pytest.mark.parametrize("kind", KINDS)
def test_cuda_graph_decode_matches_hf(kind, merge, tokenizer):
    """The captured decode path (fp32 on CUDA) against HF generate and the trainer's log-probs."""
    model = attach_lora(_model(kind, tokenizer), rank=4).cuda()
    _randomize_lora(model, seed=4)
    prompts = _prompts(tokenizer)
    _set_mid_eos(model, tokenizer, prompts)
    engine = NativeEngine(model, tokenizer, sync_every=4, kv_bucket=64, rollout_merge_lora=merge)
    out = engine.generate(prompts, 2, SamplingParams(max_new_tokens=80, do_sample=False))
    assert engine.last_stats["graphs"] and engine.last_stats["graphs_captured"] >= 2
    _assert_same(out, HFEngine(model, tokenizer).generate(prompts, 2, SamplingParams(max_new_tokens=80,
                                                                                      do_sample=False)))
    params = SamplingParams(max_new_tokens=40, temperature=0.7, top_p=0.9, repetition_penalty=1.1)
    a = engine.generate(prompts, 4, params, seed=1)
    b = engine.generate(prompts, 4, params, seed=1)
    assert torch.equal(a.completion_ids, b.completion_ids)
    ref, _ = completion_logprobs(model, a.prompt_ids, a.prompt_mask, a.completion_ids, a.completion_mask,
                                 temperature=0.7)
    torch.testing.assert_close(a.logprobs, ref, atol=1e-4, rtol=0)


def test_compiled_decode_step_equals_eager(tokenizer):
    """torch.compile'd step pieces (the CUDA default) sample the same tokens as the eager step."""
    model = make_model("qwen2", vocab_size=len(tokenizer))
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model = attach_lora(model, 4, 8)
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.05, generator=torch.Generator().manual_seed(3))
    prompts = [tokenizer.encode("hello"), tokenizer.encode("a longer prompt")]
    params = SamplingParams(max_new_tokens=12, temperature=0.8, top_p=0.9, top_k=20, min_p=0.02,
                            repetition_penalty=1.1)
    eager = NativeEngine(model, tokenizer, compile=False).generate(prompts, 3, params, seed=5)
    from torch._dynamo.utils import counters

    compiled_engine = NativeEngine(model, tokenizer, compile=True)
    graphs_before = counters["stats"]["unique_graphs"]
    compiled = compiled_engine.generate(prompts, 3, params, seed=5)
    assert compiled_engine._fns[0].between.compiled is not None  # compiled, not fallen back to eager
    # One graph per piece (first layer in, between layers, last layer and head, sampling) serves every layer and step:
    # a compile per layer would cost minutes on a real model.
    assert counters["stats"]["unique_graphs"] - graphs_before <= 4
    compiled_engine.generate(prompts, 3, params, seed=6)  # a second round of the same shape: no recompile
    assert counters["stats"]["unique_graphs"] - graphs_before <= 4
    assert torch.equal(compiled.completion_ids, eager.completion_ids)
    torch.testing.assert_close(compiled.logprobs, eager.logprobs, atol=1e-5, rtol=1e-5)


def _decode_logits(w, vocab: int, seed: int = 0) -> torch.Tensor:
    """One decode step from an empty-but-one-slot cache, for comparing weight layouts."""
    b, slots = 3, 8
    g = torch.Generator().manual_seed(seed)
    kv = [torch.randn(b, 2, w.n_kv_heads, slots, w.head_dim, generator=g) for _ in w.layers]
    bias = torch.zeros(b, slots)
    cos, sin = rope_tables(w, 16)
    tok = torch.randint(0, vocab, (b,), generator=g)
    return decode_one_token(w, tok, torch.tensor([3, 4, 5]), torch.tensor([5]), kv, bias, 6, cos, sin)


@pytest.mark.parametrize("kind", ["llama", "qwen3"])
def test_fused_and_partly_merged_lora_compute_what_separate_adapters_do(kind, tokenizer):
    model = attach_lora(_model(kind, tokenizer), rank=4, alpha=8)
    _randomize_lora(model, seed=5)
    w = read_weights(model)
    reference = _decode_logits(w, len(tokenizer))
    fused = fuse_lora(w)
    layer = fused.layers[0]
    assert layer.qkv_lora is not None and layer.gate_up_lora is not None
    assert not layer.q.loras and not layer.gate.loras and layer.o.loras and layer.down.loras
    assert layer.q.weight is w.layers[0].q.weight  # the base matrices are not copied
    torch.testing.assert_close(_decode_logits(fused, len(tokenizer)), reference, atol=1e-5, rtol=1e-5)
    partly = merge_lora(w, "attention")
    layer = partly.layers[0]
    assert layer.qkv is not None and not layer.o.loras and layer.gate_up_lora is not None and layer.down.loras
    assert layer.gate.weight is w.layers[0].gate.weight
    torch.testing.assert_close(_decode_logits(partly, len(tokenizer)), reference, atol=1e-5, rtol=1e-5)


def test_two_active_adapters_are_not_fused(tokenizer):
    from peft import LoraConfig

    model = attach_lora(_model("llama", tokenizer), rank=4, alpha=8)
    model.add_adapter("second", LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "k_proj", "v_proj"]))
    model.base_model.set_adapter(["default", "second"])
    _randomize_lora(model, seed=6)
    w = read_weights(model)
    fused = fuse_lora(w)
    assert fused.layers[0].qkv_lora is None and len(fused.layers[0].q.loras) == 2  # left as they were
    assert fused.layers[0].gate_up_lora is not None  # only "default" adapts the MLP
    torch.testing.assert_close(_decode_logits(fused, len(tokenizer)), _decode_logits(w, len(tokenizer)),
                               atol=1e-5, rtol=1e-5)
