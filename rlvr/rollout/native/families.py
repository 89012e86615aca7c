"""Each model family's layout, read into the engine's `ModelW`: which norms sit where, fused projections,
per-layer attention windows and rope tables, and the family's scalars (`ArchW`).

Dense families: Llama, Mistral, Qwen2, Qwen3, Gemma 2, Gemma 3 (text), Phi-3, OLMo 2, Granite, SmolLM3;
mixture of experts: Qwen3-MoE, Mixtral, gpt-oss (moe.py; gpt-oss's attention sinks in model.py).
The decode step (model.py) reads only `LayerW`/`ArchW` fields, so a family is a reader here, not a
branch there. Phi-3's fused qkv_proj / gate_up_proj are read as row slices (views) of the live weight
and of each LoRA B, so the step and the LoRA merge/fuse code see separate q/k/v and gate/up.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from rlvr.models.forward import base_causal_lm
from rlvr.rollout.native.moe import ExpertLora, MoeW, grouped_mm_supported
from rlvr.rollout.native.weights import ArchW, LayerW, LinearW, ModelW, Unsupported, _linear

DENSE = ("llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3_text", "phi3", "olmo2", "granite", "smollm3")
MIXTURE_OF_EXPERTS = ("qwen3_moe", "mixtral", "gpt_oss")
SUPPORTED_MODEL_TYPES = DENSE + MIXTURE_OF_EXPERTS
# Rope types whose inverse frequencies are fixed (precomputed by HF in rotary_emb.inv_freq);
# "dynamic" and "longrope" change with the sequence length and are left to hf.
SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3", "yarn")
ACTIVATIONS = {"silu": "silu", "gelu_pytorch_tanh": "gelu_tanh"}
LAYER_TYPES = ("full_attention", "sliding_attention")


def check_config(config) -> None:
    """Raise Unsupported unless the config is one this engine computes exactly like HF."""
    if config.model_type not in SUPPORTED_MODEL_TYPES:
        raise Unsupported(f"model_type {config.model_type!r}")
    if _activation(config) not in ACTIVATIONS:
        raise Unsupported(f"hidden activation {_activation(config)!r}")
    other = sorted({t for t in getattr(config, "layer_types", None) or () if t not in LAYER_TYPES})
    if other:
        raise Unsupported(f"layer types {other}")
    if getattr(config, "use_bidirectional_attention", False):
        raise Unsupported("bidirectional attention")


def _activation(config) -> str:
    return getattr(config, "hidden_activation", None) or getattr(config, "hidden_act", "silu")


def layer_window(config, i: int) -> int | None:
    """Layer i's sliding window in tokens (HF: key j visible from query i iff j > i - window), or None."""
    types = getattr(config, "layer_types", None)
    if types:
        return config.sliding_window if types[i] == "sliding_attention" else None
    return getattr(config, "sliding_window", None)


def without_long_windows(w: ModelW, length: int) -> ModelW:
    """`w` with sliding windows that cover `length` cache slots dropped: the same attention, no mask work
    (Mistral's usual 4096-token window on shorter rollouts)."""
    if all(layer.window is None or layer.window < length for layer in w.layers):
        return w
    layers = [replace(layer, window=None) if layer.window is not None and layer.window >= length else layer
              for layer in w.layers]
    return replace(w, layers=layers)


def _norm(mod: torch.nn.Module | None, name: str, gemma: bool) -> torch.Tensor | None:
    """An RMSNorm's weight: as is, or 1 + w in fp32 for Gemma's (1 + w)-scaled norm."""
    if mod is None:
        return None
    if not hasattr(mod, "weight") or not (hasattr(mod, "variance_epsilon") or hasattr(mod, "eps")):
        raise Unsupported(f"{name}: {type(mod).__name__} is not an RMSNorm")
    return 1.0 + mod.weight.float() if gemma else mod.weight


def _eps(mod: torch.nn.Module) -> float:
    return float(getattr(mod, "variance_epsilon", None) or mod.eps)


def _split(lin: LinearW, sizes: list[int]) -> list[LinearW]:
    """Row slices of a fused projection (views of its weight, bias and each adapter's B; a 4-bit
    base is dequantised into a copy first: its packed codes do not slice by rows)."""
    parts, start, weight = [], 0, lin.dense()
    for n in sizes:
        rows = slice(start, start + n)
        parts.append(LinearW(weight[rows], None if lin.bias is None else lin.bias[rows],
                             [(a, b[rows], None if bb is None else bb[rows], s) for a, b, bb, s in lin.loras]))
        start += n
    return parts


def _rope_tables(config, rotary) -> tuple[tuple, dict[str, int] | None]:
    """((inv_freq, scaling) per table, {layer_type: table}) — one table unless the model has one per
    layer type (Gemma 3: local and global)."""
    if rotary is None:
        raise Unsupported("no rotary embedding")
    if hasattr(rotary, "layer_types"):  # Gemma 3: a rope per layer type
        tables, index = [], {}
        for t in rotary.layer_types:
            if rotary.rope_type[t] not in SUPPORTED_ROPE_TYPES:
                raise Unsupported(f"rope type {rotary.rope_type[t]!r}")
            index[t] = len(tables)
            tables.append((getattr(rotary, f"{t}_inv_freq").float(), float(getattr(rotary, f"{t}_attention_scaling"))))
        return tuple(tables), index
    if getattr(rotary, "rope_type", None) not in SUPPORTED_ROPE_TYPES:
        raise Unsupported(f"rope type {getattr(rotary, 'rope_type', None)!r}")
    return ((rotary.inv_freq.float(), float(getattr(rotary, "attention_scaling", 1.0))),), None


def _layer_rope(config, i: int, index: dict[str, int] | None) -> int | None:
    if index is not None:
        return index[config.layer_types[i]]
    no_rope = getattr(config, "no_rope_layers", None)  # SmolLM3: 1 = rope, 0 = NoPE
    return None if no_rope is not None and not no_rope[i] else 0


def _arch(config, lm, embed, dtype: torch.dtype, gemma: bool, extra_ropes: tuple) -> ArchW:
    t = config.model_type
    if gemma:
        scale = getattr(embed, "scalar_embed_scale", config.hidden_size ** 0.5)
        embed_scale = float(torch.tensor(scale, dtype=dtype))  # HF multiplies by the scale in the model dtype
    else:
        embed_scale = float(getattr(config, "embedding_multiplier", 1.0))
    attn_scale = None
    if gemma:
        attn_scale = config.query_pre_attn_scalar ** -0.5
    elif t == "granite":
        attn_scale = float(config.attention_multiplier)
    return ArchW(embed_scale=embed_scale, residual_scale=float(getattr(config, "residual_multiplier", 1.0)),
                 attn_scale=attn_scale, attn_softcap=getattr(config, "attn_logit_softcapping", None),
                 logit_softcap=getattr(config, "final_logit_softcapping", None),
                 logit_scale=float(getattr(config, "logits_scaling", 1.0)),
                 act=ACTIVATIONS[_activation(config)], gemma_norm=gemma, extra_ropes=extra_ropes)


def _attention(config, attn, p: str, hq: int, hk: int, d: int) -> tuple[LinearW, LinearW, LinearW]:
    if hasattr(attn, "qkv_proj"):  # Phi-3
        return tuple(_split(_linear(attn.qkv_proj, f"{p}.qkv_proj"), [hq * d, hk * d, hk * d]))
    return (_linear(attn.q_proj, f"{p}.q_proj"), _linear(attn.k_proj, f"{p}.k_proj"),
            _linear(attn.v_proj, f"{p}.v_proj"))


def _moe(config, mlp, p: str) -> MoeW:
    """The sparse block: the router (Qwen3-MoE's / Mixtral's `gate`, gpt-oss's `router`) and the stacked
    experts, plain parameters or adapted by peft's parameter wrappers (`_param_adapters`; quantized experts
    are left to hf). An adapted router is merged into a copy here (it is [E, hidden]: small); the experts'
    adapters run in the step (moe.py)."""
    experts, expert_loras = _param_adapters(mlp.experts)
    router, router_loras = _param_adapters(getattr(mlp, "router", None) or mlp.gate)
    tensors = (getattr(experts, "gate_up_proj", None), getattr(experts, "down_proj", None),
               getattr(router, "weight", None))
    if not all(type(t) is torch.nn.Parameter and t.is_floating_point() for t in tensors):
        raise Unsupported(f"{p}.mlp: {type(experts).__name__} / {type(router).__name__} (quantized experts)")
    if getattr(config, "shared_expert_intermediate_size", 0):
        raise Unsupported("shared experts")
    if set(router_loras) - {"weight"} or set(expert_loras) - {"gate_up_proj", "down_proj"}:
        raise Unsupported(f"{p}.mlp: LoRA on {sorted(set(router_loras) | set(expert_loras))}")
    gpt_oss = config.model_type == "gpt_oss"
    router_weight = router.weight
    if router_loras.get("weight"):
        with torch.no_grad():
            router_weight = router.weight + sum(s * b @ a for a, b, s in router_loras["weight"])
    return MoeW(router=router_weight, gate_up=experts.gate_up_proj, down=experts.down_proj,
                top_k=config.num_experts_per_tok,
                renormalize=bool(getattr(config, "norm_topk_prob", True)) and not gpt_oss,
                weights_in_model_dtype=config.model_type != "mixtral",
                grouped=grouped_mm_supported(experts.gate_up_proj),
                router_bias=getattr(router, "bias", None), gate_up_bias=getattr(experts, "gate_up_proj_bias", None),
                down_bias=getattr(experts, "down_proj_bias", None), transposed=gpt_oss, softmax_after_topk=gpt_oss,
                clamped_glu=(float(experts.alpha), float(experts.limit)) if gpt_oss else None,
                gate_up_lora=_expert_loras(expert_loras.get("gate_up_proj", []), experts.gate_up_proj),
                down_lora=_expert_loras(expert_loras.get("down_proj", []), experts.down_proj))


def _param_adapters(module: torch.nn.Module) -> tuple[torch.nn.Module, dict[str, list]]:
    """The module under peft's parameter wrappers (one per adapted parameter, nested), and per parameter
    name each active adapter as (A [r·E, in], B [out, r·E], scaling): none when adapters are disabled or
    merged into the weights."""
    adapters: dict[str, list] = {}
    while hasattr(module, "parameter_name") and hasattr(module, "lora_A") and hasattr(module, "base_layer"):
        if not module.disable_adapters and not module.merged:
            adapters[module.parameter_name] = [
                (module.lora_A[a].weight, module.lora_B[a].weight, float(module.scaling[a]))
                for a in module.active_adapters if a in module.lora_A]
        module = module.base_layer
    return module, adapters


def _expert_loras(adapters: list, weight: torch.Tensor) -> tuple[ExpertLora, ...]:
    """peft's per-expert factors of a stacked weight as grouped-GEMM operands: A [r·E, in] holds expert e's
    A_e in rows e·r…(e+1)·r, B [out, r·E] its B_e in columns e, e+E, … (peft's `get_delta_weight`)."""
    n, out = weight.shape[0], []
    for a, b, scaling in adapters:
        r = a.shape[0] // n
        pad = -r % 8
        a_t = a.detach().reshape(n, r, -1).transpose(1, 2)  # [E, in, r]
        b_t = b.detach().reshape(b.shape[0], r, n).permute(2, 1, 0)  # [E, r, out]
        if pad:
            a_t = torch.nn.functional.pad(a_t, (0, pad))
            b_t = torch.nn.functional.pad(b_t, (0, 0, 0, pad))
        out.append(ExpertLora(a=a_t.to(weight.dtype), b=b_t.to(weight.dtype).contiguous(), scaling=scaling))
    return tuple(out)


def _mlp(mlp, p: str) -> tuple[LinearW, LinearW, LinearW]:
    if hasattr(mlp, "gate_up_proj") and isinstance(mlp.gate_up_proj, torch.nn.Module):  # Phi-3
        gate_up = _linear(mlp.gate_up_proj, f"{p}.gate_up_proj")
        half = gate_up.dense_rows() // 2
        gate, up = _split(gate_up, [half, half])
    elif hasattr(mlp, "gate_proj"):
        gate, up = _linear(mlp.gate_proj, f"{p}.gate_proj"), _linear(mlp.up_proj, f"{p}.up_proj")
    else:
        raise Unsupported(f"{p}.mlp: {type(mlp).__name__}")
    return gate, up, _linear(mlp.down_proj, f"{p}.down_proj")


def read_layer(config, layer, i: int, hq: int, hk: int, d: int, gemma: bool, rope: int | None) -> LayerW:
    p = f"layers.{i}"
    attn = layer.self_attn
    q, k, v = _attention(config, attn, p, hq, hk, d)
    moe = _moe(config, layer.mlp, p) if hasattr(layer.mlp, "experts") else None
    gate, up, down = _mlp(layer.mlp, p) if moe is None else (None, None, None)
    norm = lambda name: _norm(getattr(layer, name, None), f"{p}.{name}", gemma)  # noqa: E731
    sandwich = hasattr(layer, "post_feedforward_layernorm")  # Gemma 2/3, OLMo 2: outputs normed too
    return LayerW(
        input_norm=norm("input_layernorm"), q=q, k=k, v=v, o=_linear(attn.o_proj, f"{p}.o_proj"),
        post_norm=norm("pre_feedforward_layernorm") if sandwich else norm("post_attention_layernorm"),
        gate=gate, up=up, down=down,
        q_norm=_norm(getattr(attn, "q_norm", None), f"{p}.q_norm", gemma),
        k_norm=_norm(getattr(attn, "k_norm", None), f"{p}.k_norm", gemma),
        attn_out_norm=norm("post_attention_layernorm") if sandwich else None,
        mlp_out_norm=norm("post_feedforward_layernorm") if sandwich else None,
        window=layer_window(config, i), rope=rope, moe=moe, sinks=getattr(attn, "sinks", None),
    )


def read_weights(model: torch.nn.Module) -> ModelW:
    """References to `model`'s live weights (a *ForCausalLM, possibly inside a peft PeftModel)."""
    lm = base_causal_lm(model)
    config = lm.config
    check_config(config)
    inner = lm.get_decoder()
    tables, rope_index = _rope_tables(config, getattr(inner, "rotary_emb", None))
    embed = inner.embed_tokens
    if not isinstance(embed, torch.nn.Embedding) or (type(embed) is not torch.nn.Embedding
                                                    and not hasattr(embed, "scalar_embed_scale")):
        raise Unsupported(f"embed_tokens is {type(embed).__name__}")
    gemma = config.model_type.startswith("gemma")
    hq, hk = config.num_attention_heads, config.num_key_value_heads
    d = getattr(config, "head_dim", None) or config.hidden_size // hq
    layers = [read_layer(config, layer, i, hq, hk, d, gemma, _layer_rope(config, i, rope_index))
              for i, layer in enumerate(inner.layers)]
    (inv_freq, rope_scaling), *extra = tables
    return ModelW(
        embed=embed.weight, layers=layers, norm=_norm(inner.norm, "norm", gemma),
        lm_head=_linear(lm.get_output_embeddings(), "lm_head"), n_heads=hq, n_kv_heads=hk, head_dim=d,
        eps=_eps(inner.norm), inv_freq=inv_freq, rope_scaling=rope_scaling,
        arch=_arch(config, lm, embed, embed.weight.dtype, gemma, tuple(extra)),
    )
