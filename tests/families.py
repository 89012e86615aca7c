"""Tiny random models of every family rlvr covers (2 layers, hidden 64), built from transformers configs.

Shared by the coverage test (tests/test_model_coverage.py) and the unit tests of model-specific code.
Sliding windows are set shorter than the test sequences so the window is exercised.
"""

from __future__ import annotations

import torch

# model_type → config overrides on top of the common tiny shape.
FAMILIES: dict[str, dict] = {
    "llama": {},
    "mistral": {"sliding_window": 4096},  # the usual setting, far longer than the sequences
    "qwen2": {},
    "qwen3": {"head_dim": 16},
    "gemma2": {"head_dim": 16, "query_pre_attn_scalar": 24, "sliding_window": 8, "attn_logit_softcapping": 5.0,
               "final_logit_softcapping": 3.0},
    "gemma3_text": {"head_dim": 16, "query_pre_attn_scalar": 24, "sliding_window": 8,
                    "layer_types": ["sliding_attention", "full_attention"], "final_logit_softcapping": 3.0},
    "phi3": {},
    "olmo2": {},
    "granite": {"embedding_multiplier": 3.0, "residual_multiplier": 0.5, "attention_multiplier": 0.2,
                "logits_scaling": 2.0},
    "smollm3": {"no_rope_layers": [1, 0]},
    "qwen3_moe": {"head_dim": 16, "num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 32,
                  "norm_topk_prob": True},
    "mixtral": {"num_local_experts": 4, "num_experts_per_tok": 2},
    "gpt_oss": {"head_dim": 16, "num_local_experts": 4, "num_experts_per_tok": 2, "sliding_window": 8,
                "layer_types": ["sliding_attention", "full_attention"]},
}


def family_config(kind: str, vocab_size: int, **overrides):
    from transformers import AutoConfig

    cfg = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
               num_key_value_heads=2, vocab_size=vocab_size, max_position_embeddings=512,
               tie_word_embeddings=False, initializer_range=0.1, pad_token_id=1, bos_token_id=None,
               eos_token_id=3)
    cfg.update(FAMILIES[kind])
    cfg.update(overrides)
    return AutoConfig.for_model(kind, **cfg)


def family_model(kind: str, vocab_size: int, seed: int = 0, **overrides):
    """A tiny random fp32 model of family `kind`, with the attention implementation transformers supports for it."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    config = family_config(kind, vocab_size, **overrides)
    model_cls = AutoModelForCausalLM._model_mapping[type(config)]
    attn = "sdpa" if model_cls._supports_sdpa else "eager"
    return AutoModelForCausalLM.from_config(config, dtype=torch.float32, attn_implementation=attn)
