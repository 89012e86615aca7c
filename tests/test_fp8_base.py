"""`model.load_in_fp8`: the frozen base's Linear layers in float8 e4m3 with a scale per row, LoRA on top
(models/fp8.py), through loading, peft, the trainer, the native engine, the memory estimate and export.

Tolerances: e4m3 keeps 3 mantissa bits, so a weight's rounding error is at most 2^-4 of it plus 2^-10
of its row scale (test_native_quant.py checks the quantiser's bound). On the tiny model here (hidden
64, weights of std 0.02, LoRA r4 with B of std 0.05) that moves the LoRA gradients by 3.5–4.2%
(relative L2, three seeds), 4.2–5.6% when the activations are quantised too (`torch._scaled_mm`);
the tests allow 8% and 10%, and cosine ≥ 0.998.
"""

from __future__ import annotations

import copy
import logging

import pytest
import torch
from conftest import make_model, make_tokenizer
from test_native_engine import _prompts, _rows

from rlvr.config import ModelConfig
from rlvr.errors import RlvrError
from rlvr.models import load_model
from rlvr.models.forward import completion_logprobs
from rlvr.models.fp8 import FP8_MAX, FrozenFP8Linear, fp8_supported, quantize_fp8_rows, quantize_linears_fp8
from rlvr.models.loading import attach_lora
from rlvr.rollout import HFEngine, SamplingParams
from rlvr.rollout.native import NativeEngine
from rlvr.rollout.native import engine as engine_module
from rlvr.rollout.native.families import read_weights
from rlvr.rollout.native.weights import decode_weights

GRAD_REL, GRAD_REL_SCALED_MM, GRAD_COS = 0.08, 0.10, 0.998
GREEDY = SamplingParams(max_new_tokens=12, do_sample=False)
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _e4m3_reference(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Row-wise e4m3 quantisation written out in float64: scale = row amax / 448, each value → the
    nearest of the 253 finite e4m3 numbers (enumerated from the 256 bit patterns)."""
    grid = torch.arange(256, dtype=torch.uint8).view(torch.float8_e4m3fn).double()
    grid = grid[grid.isfinite()].unique()
    scale = w.double().abs().amax(-1) / FP8_MAX
    v = w.double() / scale[:, None]
    q = grid[(v[..., None] - grid).abs().argmin(-1)]
    return q, scale


def _fp8_and_fp32_lora(seed: int = 0, init: float = 0.02, dtype=torch.float32, device="cpu"):
    """(LoRA model on the base in `dtype`, the same LoRA on that base in FP8): identical fp32 adapters,
    non-zero B."""
    tok = make_tokenizer()
    base = make_model("llama", vocab_size=len(tok), seed=seed, initializer_range=init).to(device, dtype)
    base.generation_config.eos_token_id = tok.eos_token_id
    ref = attach_lora(copy.deepcopy(base), rank=4, alpha=8, seed=seed)
    g = torch.Generator().manual_seed(seed)
    for name, p in ref.named_parameters():
        if "lora_B" in name:
            p.data.copy_(torch.randn(p.shape, generator=g) * 0.05)
    fp8 = attach_lora(quantize_linears_fp8(base, dtype), rank=4, alpha=8, seed=seed)
    fp8.load_state_dict({k: v for k, v in ref.state_dict().items() if "lora_" in k}, strict=False)
    return ref, fp8, tok


def _lora_grads(model, ids: torch.Tensor) -> torch.Tensor:
    model.zero_grad()
    logits = model(input_ids=ids).logits.float()
    loss = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten())
    loss.backward()
    return torch.cat([p.grad.flatten() for p in model.parameters() if p.requires_grad])


def _set_scaled_mm(model, on: bool) -> None:
    for m in model.modules():
        if isinstance(m, FrozenFP8Linear):
            m.scaled_mm = on


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return torch.nn.functional.cosine_similarity(a, b, dim=0).item()


# ---------------------------------------------------------------------------------------------- the layer


def test_fp8_rows_match_a_float64_reference_quantiser():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(32, 96, generator=g) * torch.logspace(-4, 1, 32)[:, None]  # rows of very different sizes
    q, scale = quantize_fp8_rows(w)
    ref_q, ref_scale = _e4m3_reference(w)
    torch.testing.assert_close(scale.double(), ref_scale, rtol=1e-6, atol=0)  # one scale per row
    assert (q.double() == ref_q).float().mean() > 0.999  # the fp32 division may flip a value sitting on a midpoint
    assert ((q.double() - ref_q).abs() <= 2.0**-3 * ref_q.abs()).all()  # and then by one e4m3 step at most


def test_frozen_linear_computes_with_its_dequantised_weight():
    """Rows of powers of two (times 7/8 of their maximum): representable in e4m3 after the row scale,
    so the weight survives exactly and the layer is x @ Wᵀ + b."""
    lin = torch.nn.Linear(4, 3)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, -2.0, 4.0, 0.5], [0.0, 0.0, 0.0, 0.0], [-0.25, 0.125, 2.0, 8.0]]))
        lin.bias.copy_(torch.tensor([0.1, -0.2, 0.3]))
    layer = FrozenFP8Linear.from_linear(lin, torch.float32)
    assert layer.weight.dtype == torch.float8_e4m3fn and layer.weight_scale.shape == (3,)
    assert not any(p.requires_grad for p in layer.parameters())
    torch.testing.assert_close(layer.dequantized_weight(), lin.weight.detach(), rtol=0, atol=0)
    x = torch.tensor([[1.0, 2.0, 3.0, 4.0], [-1.0, 0.5, 0.0, 2.0]])
    torch.testing.assert_close(layer(x), lin(x).detach(), rtol=1e-6, atol=1e-6)


def test_input_gradient_is_through_the_dequantised_weight_and_nothing_else_is_saved():
    g = torch.Generator().manual_seed(2)
    layer = FrozenFP8Linear.from_linear(torch.nn.Linear(48, 32), torch.float32)
    x = torch.randn(5, 7, 48, generator=g, requires_grad=True)
    grad_y = torch.randn(5, 7, 32, generator=g)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        y = layer(x)
    y.backward(grad_y)
    torch.testing.assert_close(x.grad, grad_y @ layer.dequantized_weight(), rtol=1e-6, atol=1e-6)
    # Only the layer's own FP8 codes and scales are kept for backward (no 16-bit W, not the input).
    assert {t.data_ptr() for t in saved} == {layer.weight.data_ptr(), layer.weight_scale.data_ptr()}


def test_dtype_casts_move_but_never_convert_fp8_weights():
    layer = FrozenFP8Linear.from_linear(torch.nn.Linear(16, 8), torch.float32)
    q, scale = layer.weight.detach().clone(), layer.weight_scale.detach().clone()
    torch.nn.Sequential(layer).to(torch.bfloat16).half().float()
    assert layer.weight.dtype == torch.float8_e4m3fn and layer.weight_scale.dtype == torch.float32
    assert torch.equal(layer.weight.view(torch.uint8), q.view(torch.uint8)) and torch.equal(layer.weight_scale, scale)


def test_scaled_mm_path_is_the_product_of_both_quantised_operands():
    g = torch.Generator().manual_seed(3)
    layer = FrozenFP8Linear.from_linear(torch.nn.Linear(64, 48), torch.float32, scaled_mm=True)
    x = torch.randn(6, 64, generator=g)
    xq, xs = quantize_fp8_rows(x)
    exact = (xq.float() * xs[:, None]) @ layer.dequantized_weight().T + layer.bias
    y = layer(x)
    torch.testing.assert_close(y, exact, rtol=2**-8, atol=2**-8 * exact.abs().max().item())


# ---------------------------------------------------------------------------------------------- LoRA on it


def test_lora_wraps_fp8_bases_with_fp32_adapters():
    _, fp8, _ = _fp8_and_fp32_lora()
    q = fp8.base_model.model.model.layers[0].self_attn.q_proj
    assert type(q).__name__ == "Linear" and isinstance(q.base_layer, FrozenFP8Linear)
    trainable = {n: p for n, p in fp8.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n and p.dtype == torch.float32 for n, p in trainable.items())
    assert fp8.base_model.model.lm_head.weight.dtype == torch.float32  # the head stays in the model dtype


@pytest.mark.parametrize("seed", [0, 1])
def test_lora_gradients_with_the_fp8_base_agree_with_the_fp32_base(seed):
    ref, fp8, tok = _fp8_and_fp32_lora(seed)
    ids = torch.randint(4, len(tok), (4, 24), generator=torch.Generator().manual_seed(seed))
    exact = _lora_grads(ref, ids)
    dequantised = _lora_grads(fp8, ids)
    assert 0 < _rel(dequantised, exact) < GRAD_REL and _cos(dequantised, exact) > GRAD_COS
    _set_scaled_mm(fp8, True)  # torch._scaled_mm has a CPU kernel too: the activations quantised per token
    scaled = _lora_grads(fp8, ids)
    assert 0 < _rel(scaled, exact) < GRAD_REL_SCALED_MM and _cos(scaled, exact) > GRAD_COS
    # The FP8 base's gradients are exactly those of an fp32 base holding its dequantised weights.
    twin = copy.deepcopy(ref)
    for (_, a), (_, b) in zip(twin.named_modules(), fp8.named_modules()):
        if isinstance(b, FrozenFP8Linear):
            a.weight.data.copy_(b.dequantized_weight())
    _set_scaled_mm(fp8, False)
    torch.testing.assert_close(_lora_grads(fp8, ids), _lora_grads(twin, ids), rtol=1e-6, atol=1e-7)


def test_one_grpo_step_trains_the_adapters_on_an_fp8_base(tmp_path):
    from test_grpo_trainer import args, char_score, dataset, read_metrics

    from rlvr.grpo.trainer import GRPOTrainer

    def bits(p: torch.Tensor) -> torch.Tensor:  # FP8 codes compared byte for byte
        return p.detach().view(torch.uint8).clone() if p.dtype == torch.float8_e4m3fn else p.detach().clone()

    _, model, tok = _fp8_and_fp32_lora()
    before = {n: bits(p) for n, p in model.named_parameters()}
    cfg = args(tmp_path, max_steps=1, gradient_checkpointing=True, optim="adamw_torch")
    GRPOTrainer(model, tok, [char_score], dataset(8), cfg, show_progress=False).train()
    row = read_metrics(tmp_path / "run" / "metrics.jsonl")[0]
    assert torch.isfinite(torch.tensor(row["loss"])) and row["grad_norm"] > 0
    changed = {n for n, p in model.named_parameters() if not torch.equal(bits(p), before[n])}
    assert changed == {n for n, p in model.named_parameters() if p.requires_grad}  # every adapter; the base untouched


# ---------------------------------------------------------------------------------------------- loading


@pytest.fixture
def folder(tmp_path):
    tok = make_tokenizer()
    make_model("qwen2", vocab_size=len(tok)).save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    return tmp_path / "m"


def _linear_bytes(model) -> int:
    """Bytes of the parameters and buffers of the decoder's Linear layers (the head excluded)."""
    return sum(t.numel() * t.element_size() for name, m in model.named_modules()
               if isinstance(m, torch.nn.Linear) and not name.endswith("lm_head")
               for t in [*m.parameters(recurse=False), *m.buffers(recurse=False)])


def test_load_in_fp8_halves_the_frozen_base_against_bf16(folder):
    bf16, _ = load_model(str(folder), device="cpu", dtype="bfloat16", use_lora=False)
    fp8, _ = load_model(str(folder), device="cpu", dtype="bfloat16", load_in_fp8=True, lora_rank=4)
    layers = [m for m in fp8.modules() if isinstance(m, FrozenFP8Linear)]
    assert len(layers) == 2 * len(PROJECTIONS)  # every projection of both layers (not the head)
    values = sum(m.weight.numel() for m in layers)
    rows = sum(m.out_features for m in layers)
    biases = sum(m.bias.numel() for m in layers if m.bias is not None)  # Qwen2's q/k/v biases stay bf16
    assert _linear_bytes(bf16) == 2 * values + 2 * biases
    base_bytes = sum(t.numel() * t.element_size() for m in layers for t in m.parameters())
    assert base_bytes == values + 4 * rows + 2 * biases  # 1 byte per weight, 4 per row scale
    assert base_bytes < 0.6 * _linear_bytes(bf16)  # half, plus the scales (4 bytes per row of 64 weights)
    assert all(m.compute_dtype == torch.bfloat16 for m in layers)


def test_load_in_fp8_refuses_what_it_cannot_do(folder):
    with pytest.raises(RlvrError, match="load_in_fp8 and model.load_in_4bit are both set"):
        ModelConfig(load_in_fp8=True, load_in_4bit=True).validate()
    with pytest.raises(RlvrError, match="use_lora is false"):
        ModelConfig(load_in_fp8=True, use_lora=False).validate()
    with pytest.raises(RlvrError, match="both set"):
        load_model(str(folder), device="cpu", load_in_fp8=True, load_in_4bit=True)


def test_load_in_fp8_logs_how_it_computes(folder, caplog):
    with caplog.at_level(logging.INFO, logger="rlvr"):
        load_model(str(folder), device="cpu", load_in_fp8=True, lora_rank=4)
    lines = [r.message for r in caplog.records if "load_in_fp8" in r.message]
    assert len(lines) == 1 and "14 Linear layers" in lines[0] and "dequantised per matmul" in lines[0]


def test_an_adapter_saved_on_an_fp8_base_loads_back_onto_one(folder, tmp_path):
    model, _ = load_model(str(folder), device="cpu", load_in_fp8=True, lora_rank=4, seed=0)
    for name, p in model.named_parameters():
        if "lora_B" in name:
            p.data.normal_(std=0.1)
    model.save_pretrained(tmp_path / "adapter")
    again, _ = load_model(str(folder), device="cpu", load_in_fp8=True, adapter_path=str(tmp_path / "adapter"))
    assert isinstance(again.base_model.model.model.layers[0].mlp.down_proj.base_layer, FrozenFP8Linear)
    ids = torch.tensor([[5, 6, 7, 8]])
    torch.testing.assert_close(again(input_ids=ids).logits, model(input_ids=ids).logits, rtol=0, atol=0)


def test_merged_export_dequantises_the_fp8_base(tmp_path):
    from transformers import AutoModelForCausalLM

    from rlvr.export import save_merged

    _, fp8, tok = _fp8_and_fp32_lora()
    out = save_merged(fp8, tok, tmp_path / "merged", dtype="float32")
    plain = AutoModelForCausalLM.from_pretrained(out)
    assert not any(isinstance(m, FrozenFP8Linear) for m in plain.modules())
    q = fp8.base_model.model.model.layers[1].self_attn.q_proj
    expected = q.base_layer.dequantized_weight() + q.get_delta_weight("default")
    torch.testing.assert_close(plain.model.layers[1].self_attn.q_proj.weight, expected.detach())
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    torch.testing.assert_close(plain(input_ids=ids).logits, fp8(input_ids=ids).logits.detach(), rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------------------------------- native engine


def test_native_engine_reads_the_fp8_base_and_matches_generate():
    """fp32, no FP8 matmuls: the engine dequantises the base into its decode copy, as the layer
    dequantises it per matmul, so greedy tokens equal generate's."""
    _, fp8, tok = _fp8_and_fp32_lora(init=0.1)
    w = read_weights(fp8)
    assert w.packed_kind == "fp8" and w.layers[0].q.weight is None and w.layers[0].q.loras
    prompts = _prompts(tok)
    engine = NativeEngine(fp8, tok)
    out = engine.generate(prompts, 2, GREEDY)
    assert engine.fallback is None and engine.last_stats["quant"] == "fp8-copy"
    assert _rows(out) == _rows(HFEngine(fp8, tok).generate(prompts, 2, GREEDY))
    step = NativeEngine(fp8, tok, dequantize_4bit="step")
    assert _rows(step.generate(prompts, 2, GREEDY)) == _rows(out) and step.last_stats["quant"] == "fp8-step"


def test_fp8_rollout_uses_an_unadapted_fp8_base_as_it_is(monkeypatch):
    monkeypatch.setattr(engine_module, "fp8_supported", lambda device: True)
    _, fp8, tok = _fp8_and_fp32_lora()
    base_q = fp8.base_model.model.model.layers[0].self_attn.q_proj.base_layer
    with fp8.disable_adapter():
        plain = decode_weights(read_weights(fp8), None, fp8=True).layers[0]
    assert plain.q.weight.data_ptr() == base_q.weight.data_ptr() and plain.q.scale is base_q.weight_scale
    merged = decode_weights(read_weights(fp8), "all", fp8=True).layers[0]  # adapters merged: a new FP8 copy
    assert merged.qkv.weight.dtype == torch.float8_e4m3fn and merged.qkv.weight.data_ptr() != base_q.weight.data_ptr()
    for mode in ("copy", "step"):  # merged copy; or the base as it is with the adapters as extra matmuls
        engine = NativeEngine(fp8, tok, rollout_dtype="fp8", dequantize_4bit=mode)
        sampled = engine.generate(_prompts(tok), 2, SamplingParams(max_new_tokens=12, temperature=1.0), seed=0)
        assert engine.last_stats["rollout_dtype"] == "fp8" and engine.last_stats["quant"] == f"fp8-{mode}"
        exact, _ = completion_logprobs(fp8, sampled.prompt_ids, sampled.prompt_mask, sampled.completion_ids,
                                       sampled.completion_mask)
        diff = (sampled.logprobs - exact)[sampled.completion_mask.bool()].abs()
        assert 0 < diff.mean() < 0.02 and diff.max() < 0.1  # activations quantised per token: FP8 rounding only


def test_memory_estimate_counts_the_fp8_base_and_its_decode_copy():
    from rlvr.config import GRPOConfig
    from rlvr.grpo.memory import estimate_memory
    from rlvr.rollout import MemoryPlan

    _, fp8, _ = _fp8_and_fp32_lora()
    layers = [m for m in fp8.modules() if isinstance(m, FrozenFP8Linear)]
    numel = sum(m.weight.numel() for m in layers)
    cfg = GRPOConfig(per_device_train_batch_size=8, num_generations=4)
    est = estimate_memory(fp8, cfg, 16, MemoryPlan(True, "auto"))
    frozen = sum(p.numel() * p.element_size() for p in fp8.parameters() if not p.requires_grad)
    assert est["weights"] == round(frozen / 2**30, 3)
    assert est["decode_copy"] == round(numel * 4 / 2**30, 3)  # dequantised to the fp32 compute dtype
    assert estimate_memory(fp8, cfg, 16, MemoryPlan(True, "fp8"))["decode_copy"] == round(numel / 2**30, 3)


# ---------------------------------------------------------------------------------------------- GPU


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() or not fp8_supported(torch.device("cuda")),
                    reason="needs a CUDA GPU with FP8 matmuls (compute capability >= 8.9)")
def test_cuda_lora_gradients_through_scaled_mm_agree_with_the_bf16_base():
    """bf16 on the GPU: LoRA gradients with the FP8 base (torch._scaled_mm forward on FP8 tensor
    cores) against the bf16 base, within the CPU test's tolerance."""
    ref, fp8, tok = _fp8_and_fp32_lora(0, dtype=torch.bfloat16, device="cuda")
    assert all(m.scaled_mm for m in fp8.modules() if isinstance(m, FrozenFP8Linear))  # chosen by the device
    ids = torch.randint(4, len(tok), (4, 32), generator=torch.Generator().manual_seed(0)).cuda()
    exact, scaled = _lora_grads(ref, ids).float(), _lora_grads(fp8, ids).float()
    print(f"cuda scaled_mm: rel {_rel(scaled, exact):.4f} cos {_cos(scaled, exact):.5f}")
    assert _rel(scaled, exact) < GRAD_REL_SCALED_MM and _cos(scaled, exact) > GRAD_COS
