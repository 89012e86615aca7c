"""The native engine's mixture-of-experts block against transformers' own (Qwen3-MoE, Mixtral, gpt-oss's
biased, transposed experts with the clamped GLU), and under CUDA graphs."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from conftest import make_tokenizer
from families import family_model

from rlvr.models.forward import completion_logprobs
from rlvr.rollout import SamplingParams
from rlvr.rollout.native import NativeEngine
from rlvr.rollout.native import moe as moe_module
from rlvr.rollout.native.families import read_weights
from rlvr.rollout.native.model import _act


@pytest.mark.parametrize("kind", ["qwen3_moe", "mixtral", "gpt_oss"])
@pytest.mark.parametrize("grouped", [True, False], ids=["grouped-mm", "dense-fallback"])
def test_moe_block_equals_transformers(kind, grouped):
    model = family_model(kind, 104, num_experts_per_tok=2)
    w = read_weights(model)
    h = torch.randn(3, 7, 64) * 2  # 21 tokens: several per expert, some experts possibly idle
    with torch.no_grad():
        ref = model.model.layers[0].mlp(h)
        ref = ref[0] if isinstance(ref, tuple) else ref  # gpt-oss also returns its router scores
        ours = moe_module.moe_mlp(replace(w.layers[0].moe, grouped=grouped), h, lambda g: _act(w, g))
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)


def test_routing_weights_and_experts():
    """Hand-made router: token 0 prefers experts 2 then 0, token 1 experts 1 then 3."""
    router = torch.tensor([[1.0, 0.0], [0.0, 3.0], [2.0, 0.0], [0.0, 2.0]])
    moe = moe_module.MoeW(router=router, gate_up=torch.zeros(4, 2, 2), down=torch.zeros(4, 2, 1), top_k=2,
                          renormalize=True, weights_in_model_dtype=False)
    weights, experts = moe_module.route(moe, torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    assert experts.tolist() == [[2, 0], [1, 3]]
    e = torch.e
    torch.testing.assert_close(weights, torch.tensor([[e / (e + 1), 1 / (e + 1)], [e / (e + 1), 1 / (e + 1)]]))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("kind", ["qwen3_moe", "mixtral", "gpt_oss"])
def test_moe_decode_step_under_cuda_graphs(kind):
    """bf16 on the GPU (grouped GEMMs where the GPU has them): the captured step gives the tokens the
    eager step gives, and log-probs within bf16 tolerance of the trainer's."""
    tok = make_tokenizer()
    model = family_model(kind, len(tok)).to("cuda", torch.bfloat16)
    model.generation_config.eos_token_id = tok.eos_token_id
    prompts = [tok.encode(t) for t in ["hello world", "a", "the quick brown fox", "1+2="]]
    params = SamplingParams(max_new_tokens=48, temperature=0.8)
    graphed = NativeEngine(model, tok, sync_every=8, kv_bucket=64)
    a = graphed.generate(prompts, 4, params, seed=5)
    assert graphed.last_stats["graphs"] and graphed.last_stats["graphs_captured"] >= 1
    b = NativeEngine(model, tok, sync_every=8, kv_bucket=64, cuda_graphs=False, compile=True).generate(
        prompts, 4, params, seed=5)
    assert torch.equal(a.completion_ids, b.completion_ids)
    ref, _ = completion_logprobs(model, a.prompt_ids, a.prompt_mask, a.completion_ids, a.completion_mask,
                                 temperature=0.8)
    assert (a.logprobs - ref).abs().max() < 0.1  # bf16 model, different kernels: tolerance, not equality
