"""What a GGUF file of each model family holds beyond the Llama layout, as llama.cpp's convert_hf_to_gguf.py
writes it, and what llama.cpp's graph for the family cannot compute (refused in one line).

- Gemma 2 / Gemma 3 (text): norm weights stored as 1 + w (llama.cpp multiplies by the stored weight;
  transformers' reader subtracts the 1 again), soft-capping and the sliding window as metadata, Gemma 3's
  per-layer window pattern; llama.cpp scales queries by 1/√head_dim (or 1/√(hidden/heads) for the 27B sizes)
  and keeps Gemma 3's local rope base at 10000, so other settings are refused.
- Qwen3-MoE: transformers' fused `experts.gate_up_proj` [E, 2·I, H] is written as llama.cpp's separate
  `ffn_gate_exps` and `ffn_up_exps` [E, I, H] (transformers' reader joins them again), the router as
  `ffn_gate_inp`, the expert counts as metadata; llama.cpp renormalises the top-k weights and puts experts
  in every layer, so other settings are refused.
Families llama.cpp knows but transformers' GGUF reader cannot read back (Mixtral is llama.cpp's llama graph
with experts, gpt-oss's experts, OLMo 2, Granite, SmolLM3) are not exported: the round trip is how an
export is checked.
"""

from __future__ import annotations

import re

import torch

from rlvr.errors import RlvrError

# model_type → llama.cpp architecture name (gguf.MODEL_ARCH_NAMES values)
# Mistral is llama.cpp's llama graph (convert_hf_to_gguf.py writes it so; its sliding window is not stored).
ARCHITECTURES = {"llama": "llama", "mistral": "llama", "qwen2": "qwen2", "qwen3": "qwen3", "phi3": "phi3",
                 "gemma2": "gemma2", "gemma3_text": "gemma3", "qwen3_moe": "qwen3moe"}
GEMMA = ("gemma2", "gemma3")
_FUSED_EXPERTS = re.compile(r"model\.layers\.(\d+)\.mlp\.experts\.gate_up_proj")


def check_representable(config, arch: str) -> None:
    """RlvrError (one line) when llama.cpp's graph for `arch` would compute another model than `config`'s."""
    model_type = config.model_type
    fix = "export --merged instead"
    if arch in GEMMA:
        heads = config.num_attention_heads
        scalar = getattr(config, "query_pre_attn_scalar", None)
        if scalar is not None and scalar not in (config.head_dim, config.hidden_size // heads):
            raise RlvrError(f"GGUF export: this {model_type} model scales queries by 1/√{scalar} but llama.cpp's "
                            f"{arch} graph uses 1/√head_dim ({config.head_dim}) or 1/√(hidden/heads); {fix}")
    if arch == "gemma2" and not config.tie_word_embeddings:
        raise RlvrError("GGUF export: llama.cpp's gemma2 graph uses the embedding as its output head but this model's "
                        f"lm_head is its own (tie_word_embeddings: false); {fix}")
    if arch == "gemma3":
        caps = [n for n in ("attn_logit_softcapping", "final_logit_softcapping") if getattr(config, n, None)]
        local = (getattr(config, "rope_parameters", None) or {}).get("sliding_attention", {}).get("rope_theta", 10000)
        if caps or local != 10000:
            what = f"soft-capping ({', '.join(caps)})" if caps else f"a local rope base of {local}"
            raise RlvrError(f"GGUF export: this gemma3_text model has {what}, which llama.cpp's gemma3 graph does "
                            f"not compute; {fix}")
    if arch == "qwen3moe":
        dense = list(getattr(config, "mlp_only_layers", None) or []) or getattr(config, "decoder_sparse_step", 1) != 1
        if dense or not getattr(config, "norm_topk_prob", True):
            what = "dense MLP layers" if dense else "un-normalised top-k routing weights (norm_topk_prob: false)"
            raise RlvrError(f"GGUF export: this qwen3_moe model has {what}, which llama.cpp's qwen3moe graph does not "
                            f"compute; {fix}")


def rope_parameters(config) -> dict:
    """The rope settings of the global layers (Gemma 3 keeps one set per layer type; llama.cpp stores those)."""
    params = dict(getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {})
    return dict(params.get("full_attention", params))


def add_family_metadata(writer, config, arch: str) -> None:
    """The keys llama.cpp reads for the family besides the Llama ones (gguf.py writes those)."""
    if arch in GEMMA:
        writer.add_sliding_window(int(config.sliding_window))
    if arch == "gemma2":
        writer.add_attn_logit_softcapping(float(config.attn_logit_softcapping))
        writer.add_final_logit_softcapping(float(config.final_logit_softcapping))
    if arch == "gemma3":
        writer.add_sliding_window_pattern([t == "sliding_attention" for t in config.layer_types])
    if arch == "qwen3moe":
        writer.add_expert_count(config.num_experts)
        writer.add_expert_used_count(config.num_experts_per_tok)
        writer.add_expert_feed_forward_length(config.moe_intermediate_size)


def split_tensors(key: str) -> list[str] | None:
    """The llama.cpp tensors one state-dict tensor becomes when it is not one of them (None: it is): a
    fused experts' gate_up → ffn_gate_exps and ffn_up_exps."""
    from gguf import MODEL_TENSOR, TENSOR_NAMES

    match = _FUSED_EXPERTS.fullmatch(key)
    if match is None:
        return None
    bid = int(match.group(1))
    return [TENSOR_NAMES[t].format(bid=bid) + ".weight" for t in (MODEL_TENSOR.FFN_GATE_EXP, MODEL_TENSOR.FFN_UP_EXP)]


def stored_tensor(gguf_name: str, tensor: torch.Tensor, arch: str) -> torch.Tensor:
    """What the file stores under `gguf_name` for the model's `tensor`: a fused experts' gate or up half, a
    Gemma norm's 1 + w (float32), else the tensor itself."""
    if ".ffn_gate_exps." in gguf_name or ".ffn_up_exps." in gguf_name:
        gate, up = tensor.chunk(2, dim=1)
        return gate if ".ffn_gate_exps." in gguf_name else up
    if arch in GEMMA and gguf_name.endswith("norm.weight"):
        return tensor.float() + 1
    return tensor
