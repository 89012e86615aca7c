"""The native engine in low precision: FP8 row-wise quantisation and matmul, bitsandbytes 4-bit bases
(dequantised copy or inside the step), rollout_dtype, and their rollouts against generate.

FP8 e4m3 keeps 3 mantissa bits: a value's rounding error is at most 2^-4 of it (half an ulp), plus
half the smallest subnormal step (2^-10 of the scale) near zero. NF4 dequantisation is exact
against bitsandbytes' own. GPU-marked tests run on the device machine:
`python -m pytest -m gpu tests/test_native_quant.py`.
"""

from __future__ import annotations

import logging

import pytest
import torch
from conftest import make_model
from test_native_engine import _prompts, _randomize_lora, _rows

from rlvr.config import GRPOConfig
from rlvr.errors import RlvrError
from rlvr.models.forward import completion_logprobs
from rlvr.models.fp8 import (
    FP8_MAX,
    dequantize_fp8_rows,
    fp8_linear,
    fp8_supported,
    quantize_fp8_rows,
    quantize_linears_fp8,
)
from rlvr.models.loading import attach_lora, quantize_linears_4bit
from rlvr.rollout import HFEngine, SamplingParams
from rlvr.rollout.native import NativeEngine
from rlvr.rollout.native import engine as engine_module
from rlvr.rollout.native.families import read_weights
from rlvr.rollout.native.weights import decode_weights

GREEDY = SamplingParams(max_new_tokens=12, do_sample=False)
E4M3_REL = 2.0**-4  # half an ulp of a 3-bit mantissa
E4M3_SUB = 2.0**-10  # half the smallest subnormal step (2^-9), in units of the row scale


def _model(tokenizer, hidden=64, seed=0, init=0.1):
    model = make_model("llama", vocab_size=len(tokenizer), seed=seed, hidden_size=hidden,
                       intermediate_size=2 * hidden, initializer_range=init)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


# ---------------------------------------------------------------------------------------------- FP8


def test_fp8_rows_exact_on_representable_values():
    w = torch.tensor([[1.0, -2.0, 4.0], [0.0, 0.0, 0.0], [-0.5, 0.25, 0.125]])
    q, scale = quantize_fp8_rows(w)
    assert q.dtype == torch.float8_e4m3fn and scale.shape == (3,)
    torch.testing.assert_close(scale, torch.tensor([4.0 / FP8_MAX, 1e-12, 0.5 / FP8_MAX]))
    assert q[0].float().tolist() == [112.0, -224.0, 448.0]  # 1, -2, 4 in units of 4/448: all representable
    torch.testing.assert_close(dequantize_fp8_rows(q, scale), w, rtol=1e-6, atol=0)  # zero row stays zero


def test_fp8_rows_error_within_e4m3_rounding_and_scales_per_row():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(3, 16, 256, generator=g) * torch.logspace(-3, 2, 16)[None, :, None]  # rows of any size
    q, scale = quantize_fp8_rows(w)
    assert scale.shape == (3, 16)
    torch.testing.assert_close(scale, w.abs().amax(-1) / FP8_MAX)
    err = (dequantize_fp8_rows(q, scale) - w).abs()
    assert (err <= E4M3_REL * w.abs() + E4M3_SUB * scale[..., None]).all()
    assert (q.float().abs().amax(-1) == FP8_MAX).all()  # each row's largest value maps to the e4m3 maximum


def test_fp8_linear_is_the_scaled_product_of_both_quantised_operands():
    g = torch.Generator().manual_seed(1)
    x, w, bias = torch.randn(5, 3, 64, generator=g), torch.randn(48, 64, generator=g), torch.randn(48, generator=g)
    q, scale = quantize_fp8_rows(w)
    y = fp8_linear(x, q, scale, bias)
    xq, xs = quantize_fp8_rows(x.reshape(-1, 64))
    exact = dequantize_fp8_rows(xq, xs) @ dequantize_fp8_rows(q, scale).T + bias
    assert y.shape == (5, 3, 48) and y.dtype == x.dtype
    torch.testing.assert_close(y.reshape(-1, 48), exact, rtol=2**-8, atol=2**-8 * exact.abs().max().item())
    rel = (y - (x @ w.T + bias)).norm() / (x @ w.T + bias).norm()
    assert rel < 0.05  # against full precision: a few percent from two e4m3 roundings


def test_fp8_decode_weights_are_the_merged_weights_quantised_per_row(tokenizer):
    model = attach_lora(_model(tokenizer), rank=4, alpha=8)
    _randomize_lora(model, seed=1)
    w = read_weights(model)
    layer = decode_weights(w, "all", fp8=True).layers[0]
    attn = model.base_model.model.model.layers[0].self_attn
    merged = torch.cat([getattr(attn, n).get_delta_weight("default") + getattr(attn, n).base_layer.weight
                        for n in ("q_proj", "k_proj", "v_proj")])
    assert layer.qkv.weight.dtype == torch.float8_e4m3fn and layer.qkv.scale.shape == (merged.shape[0],)
    deq = dequantize_fp8_rows(layer.qkv.weight, layer.qkv.scale)
    assert ((deq - merged).abs() <= E4M3_REL * merged.abs() + E4M3_SUB * layer.qkv.scale[:, None] + 1e-6).all()
    assert layer.down.scale is not None and layer.gate_up.scale is not None
    plain = decode_weights(read_weights(_model(tokenizer)), None, fp8=True).layers[0]  # no LoRA: stacked anyway
    assert plain.qkv is not None and plain.gate_up is not None and plain.qkv.scale is not None


def test_fp8_on_cpu_warns_once_and_decodes_in_the_model_dtype(tokenizer, caplog):
    model = _model(tokenizer)
    prompts = _prompts(tokenizer)
    with caplog.at_level(logging.WARNING, logger="rlvr"):
        engine = NativeEngine(model, tokenizer, rollout_dtype="fp8")
        out = engine.generate(prompts, 1, GREEDY)
        engine.generate(prompts, 1, GREEDY)
    lines = [r.message for r in caplog.records if "fp8" in r.message]
    assert len(lines) == 1 and "decoding in the model's dtype" in lines[0]
    assert engine.last_stats["rollout_dtype"] == "float32"
    assert _rows(out) == _rows(HFEngine(model, tokenizer).generate(prompts, 1, GREEDY))


def test_fp8_rollout_agrees_with_generate_within_tolerance(tokenizer, monkeypatch):
    """The FP8 decode path itself (torch._scaled_mm runs on CPU too): sampled log-probs stay close to
    the trainer's full-precision ones. (Greedy tokens of a tiny random model are no measure: its
    top two logits are often closer than FP8's rounding.)"""
    monkeypatch.setattr(engine_module, "fp8_supported", lambda device: True)
    model = attach_lora(_model(tokenizer, hidden=128, init=0.02), rank=4, alpha=8)
    _randomize_lora(model, seed=2, std=0.05)
    prompts = _prompts(tokenizer)
    engine = NativeEngine(model, tokenizer, rollout_dtype="fp8", rollout_merge_lora=True)
    params = SamplingParams(max_new_tokens=12, temperature=1.0)
    sampled = engine.generate(prompts, 2, params, seed=0)
    assert engine.last_stats["rollout_dtype"] == "fp8"
    exact, _ = completion_logprobs(model, sampled.prompt_ids, sampled.prompt_mask, sampled.completion_ids,
                                   sampled.completion_mask)
    mask = sampled.completion_mask.bool()
    diff = (sampled.logprobs - exact)[mask].abs()
    assert 0 < diff.mean() < 0.02 and diff.max() < 0.1  # not the exact path, yet within FP8's rounding


def test_fp8_on_a_moe_model_quantises_attention_keeps_experts_and_warns_once(tokenizer, monkeypatch, caplog):
    """Experts stay in the rollout dtype (the same tensors), attention matrices go FP8, one warning says
    so, and the sampled log-probs stay within FP8's rounding of the trainer's."""
    from families import family_model

    monkeypatch.setattr(engine_module, "fp8_supported", lambda device: True)
    # Small weights: with the default init FP8's rounding can flip a token's expert choice (a jump, not noise).
    model = family_model("qwen3_moe", len(tokenizer), num_experts_per_tok=2, initializer_range=0.02)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    w = read_weights(model)
    layer = decode_weights(w, None, fp8=True).layers[0]
    assert layer.qkv.weight.dtype == torch.float8_e4m3fn and layer.o.scale is not None
    assert layer.gate_up is None and layer.moe.gate_up is w.layers[0].moe.gate_up
    with caplog.at_level(logging.WARNING, logger="rlvr"):
        engine = NativeEngine(model, tokenizer, rollout_dtype="fp8")
        sampled = engine.generate(_prompts(tokenizer), 2, SamplingParams(max_new_tokens=8, temperature=1.0), seed=0)
        engine.generate(_prompts(tokenizer), 1, GREEDY)
    assert len([r for r in caplog.records if "experts stay" in r.message]) == 1
    exact, _ = completion_logprobs(model, sampled.prompt_ids, sampled.prompt_mask, sampled.completion_ids,
                                   sampled.completion_mask)
    diff = (sampled.logprobs - exact)[sampled.completion_mask.bool()].abs()
    assert 0 < diff.mean() < 0.02 and diff.max() < 0.1


def test_rollout_dtype_cast_covers_family_fields(tokenizer):
    """A bfloat16 rollout of an fp32 model casts the MoE router and experts and the output norms too,
    keeping Gemma's fp32 (1 + w) norms as they are."""
    from families import family_model

    moe = decode_weights(read_weights(family_model("qwen3_moe", len(tokenizer))), None, torch.bfloat16).layers[0]
    assert {moe.moe.router.dtype, moe.moe.gate_up.dtype, moe.moe.down.dtype, moe.q.weight.dtype} == {torch.bfloat16}
    gemma = decode_weights(read_weights(family_model("gemma2", len(tokenizer))), None, torch.bfloat16)
    assert gemma.layers[0].attn_out_norm.dtype == torch.float32 and gemma.norm.dtype == torch.float32
    assert gemma.layers[0].q.weight.dtype == torch.bfloat16 and gemma.embed.dtype == torch.bfloat16


def _agreement(a, b) -> float:
    """Share of the reference's greedy tokens that `a` reproduces before the first divergence, per row."""
    same = total = 0
    for ra, rb in zip(_rows(a), _rows(b)):
        k = next((i for i, (x, y) in enumerate(zip(ra, rb)) if x != y), min(len(ra), len(rb)))
        same, total = same + k, total + len(rb)
    return same / max(1, total)


def test_rollout_dtype_is_validated():
    GRPOConfig(rollout_dtype="fp8").validate()
    with pytest.raises(RlvrError, match="rollout_dtype"):
        GRPOConfig(rollout_dtype="float8").validate()


# ---------------------------------------------------------------------------------------------- 4-bit


def _nf4_pair(tokenizer, dtype=torch.float32):
    """A LoRA model with NF4 bases and the same model with those bases dequantised into plain Linears."""
    bnbf = pytest.importorskip("bitsandbytes.functional")
    q = attach_lora(quantize_linears_4bit(_model(tokenizer), dtype), rank=4, alpha=8)
    _randomize_lora(q, seed=5, std=0.1)
    dense = attach_lora(_model(tokenizer), rank=4, alpha=8)
    dense.load_state_dict({k: v for k, v in q.state_dict().items() if "lora" in k}, strict=False)
    for (_, mod), (_, twin) in zip(q.named_modules(), dense.named_modules()):
        if type(mod).__name__ == "Linear4bit":
            twin.weight.data.copy_(bnbf.dequantize_4bit(mod.weight.data, mod.weight.quant_state))
    return q, dense


def test_4bit_bases_read_and_dequantise_like_bitsandbytes(tokenizer):
    q, dense = _nf4_pair(tokenizer)
    w = read_weights(q)
    assert w.has_packed and w.layers[0].q.weight is None and w.layers[0].q.loras
    twin = read_weights(dense)
    for layer, ref in zip(w.layers, twin.layers):
        for n in ("q", "k", "v", "o", "gate", "up", "down"):
            assert torch.equal(getattr(layer, n).packed.dequantize(), getattr(ref, n).weight)
    copy = decode_weights(w, "all")
    ref = decode_weights(twin, "all")
    assert copy.layers[1].qkv.packed is None and torch.equal(copy.layers[1].qkv.weight, ref.layers[1].qkv.weight)


def test_4bit_fused_projections_are_split_after_dequantising(tokenizer):
    """Phi-3's fused qkv_proj / gate_up_proj as NF4: read as row slices of the dequantised matrix, and
    the rollout matches bitsandbytes' own forward."""
    bnbf = pytest.importorskip("bitsandbytes.functional")
    from families import family_model

    q = quantize_linears_4bit(family_model("phi3", len(tokenizer)), torch.float32)
    q.generation_config.eos_token_id = tokenizer.eos_token_id
    attn = q.model.layers[0].self_attn.qkv_proj
    w = read_weights(q)
    stacked = torch.cat([w.layers[0].q.weight, w.layers[0].k.weight, w.layers[0].v.weight])
    assert torch.equal(stacked, bnbf.dequantize_4bit(attn.weight.data, attn.weight.quant_state))
    prompts = _prompts(tokenizer)
    engine = NativeEngine(q, tokenizer)
    out = engine.generate(prompts, 1, GREEDY)
    assert engine.fallback is None
    assert _rows(out) == _rows(HFEngine(q, tokenizer).generate(prompts, 1, GREEDY))


@pytest.mark.parametrize("mode", ["copy", "step"])
def test_4bit_rollout_equals_the_dequantised_model(tokenizer, mode):
    q, dense = _nf4_pair(tokenizer)
    prompts = _prompts(tokenizer)
    engine = NativeEngine(q, tokenizer, dequantize_4bit=mode)
    out = engine.generate(prompts, 2, GREEDY)
    assert engine.fallback is None and engine.last_stats["quant"] == f"4bit-{mode}"
    ref = NativeEngine(dense, tokenizer).generate(prompts, 2, GREEDY)
    assert _rows(out) == _rows(ref)
    torch.testing.assert_close(out.logprobs, ref.logprobs, atol=1e-5, rtol=0)
    assert _rows(out) == _rows(HFEngine(q, tokenizer).generate(prompts, 2, GREEDY))  # bitsandbytes' own forward


def test_memory_estimate_counts_the_4bit_decode_copy(tokenizer):
    pytest.importorskip("bitsandbytes")
    from rlvr.grpo.memory import estimate_memory
    from rlvr.rollout import MemoryPlan

    q, _ = _nf4_pair(tokenizer, torch.bfloat16)
    cfg = GRPOConfig(per_device_train_batch_size=8, num_generations=4)
    numel = sum(p.quant_state.shape.numel() for p in q.parameters() if hasattr(p, "quant_state"))
    assert estimate_memory(q, cfg, 16, MemoryPlan(True, "auto"))["decode_copy"] == round(numel * 2 / 2**30, 3)
    assert estimate_memory(q, cfg, 16, MemoryPlan(True, "fp8"))["decode_copy"] == round(numel / 2**30, 3)
    assert estimate_memory(q, cfg, 16, MemoryPlan(False, None))["decode_copy"] == 0  # hf: no decode copy


# ---------------------------------------------------------------------------------------------- GPU

CASES = [("16bit", "fp8", None), ("nf4", "auto", "copy"), ("nf4", "auto", "step"), ("nf4", "fp8", "copy"),
         ("fp8", "auto", "copy"), ("fp8", "fp8", "copy"), ("fp8", "fp8", "step")]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize(("base", "rollout_dtype", "mode"), CASES, ids=["-".join(map(str, c)) for c in CASES])
def test_cuda_fp8_and_4bit_rollouts_against_generate(tokenizer, base, rollout_dtype, mode):
    """Captured decode on bf16 weights in FP8, on NF4 bases (copy or in-step, bf16 or FP8) and on FP8 bases
    (`model.load_in_fp8`: dequantised copy, merged FP8 copy, or the base as it is), against generate on
    the same model: greedy agreement and the sampled log-probs against the trainer's."""
    model = _model(tokenizer, hidden=256, init=0.02).to(torch.bfloat16).cuda()
    if base == "nf4":
        pytest.importorskip("bitsandbytes")
        model = quantize_linears_4bit(model, torch.bfloat16)
    if base == "fp8":
        if not fp8_supported(model.device):
            pytest.skip("needs FP8 matmuls (compute capability >= 8.9)")
        model = quantize_linears_fp8(model, torch.bfloat16)  # the trainer's forward: torch._scaled_mm
    model = attach_lora(model, rank=8, alpha=16)
    _randomize_lora(model, seed=6, std=0.02)
    prompts = _prompts(tokenizer)
    params = SamplingParams(max_new_tokens=48, do_sample=False)
    engine = NativeEngine(model, tokenizer, sync_every=4, kv_bucket=64, dequantize_4bit=mode,
                          rollout_dtype=rollout_dtype)
    out = engine.generate(prompts, 2, params)
    kind = {"nf4": "4bit", "fp8": "fp8"}.get(base)
    assert engine.last_stats["graphs"] and engine.last_stats["quant"] == (mode and f"{kind}-{mode}")
    assert engine.last_stats["rollout_dtype"] == ("fp8" if rollout_dtype == "fp8" else "bfloat16")
    ref = HFEngine(model, tokenizer).generate(prompts, 2, params)
    agreement = _agreement(out, ref)
    sampled = engine.generate(prompts, 4, SamplingParams(max_new_tokens=32, temperature=1.0), seed=0)
    exact, _ = completion_logprobs(model, sampled.prompt_ids, sampled.prompt_mask, sampled.completion_ids,
                                   sampled.completion_mask)
    diff = (sampled.logprobs - exact.float())[sampled.completion_mask.bool()].abs()
    print(f"{base} {rollout_dtype} {mode}: greedy agreement {agreement:.3f}, |logprob diff| mean "
          f"{diff.mean():.4f} max {diff.max():.4f}")
    # A tiny random model's top logits are close, so greedy paths part early even from rounding alone
    # (bf16 here: merged LoRA rounds differently from generate's separate adapter matmuls). Measured on
    # the H200: 0.48 for NF4 in bf16 (copy and step alike), 0.19 for NF4 in FP8. An FP8 base's trainer
    # forward quantises activations too, so even a bf16 rollout of it is held to FP8's bounds.
    fp8_level = rollout_dtype == "fp8" or base == "fp8"
    assert agreement >= (0.15 if fp8_level else 0.4)
    assert diff.mean() < (0.05 if fp8_level else 0.02)


def test_trainer_logs_the_gap_between_rollout_and_trainer_logprobs(tmp_path, tokenizer):
    """sampling/logprob_diff/mean: ~0 for the exact fp32 native engine, clearly above 0 for FP8."""
    from test_grpo_trainer import args, count_a, dataset, lora_model, read_metrics

    from rlvr.grpo.trainer import GRPOTrainer

    gaps = {}
    for rollout_dtype in ("auto", "fp8"):
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(engine_module, "fp8_supported", lambda device: True)
            cfg = args(tmp_path / rollout_dtype, max_steps=1, rollout_backend="native", rollout_dtype=rollout_dtype)
            GRPOTrainer(lora_model(tokenizer), tokenizer, [count_a], dataset(8), cfg, show_progress=False).train()
        gaps[rollout_dtype] = read_metrics(tmp_path / rollout_dtype / "run" / "metrics.jsonl")[0][
            "sampling/logprob_diff/mean"]
    assert 0 <= gaps["auto"] < 1e-4 < gaps["fp8"]
