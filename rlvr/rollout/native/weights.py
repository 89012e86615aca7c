"""Read a transformers decoder's weights for the native engine, without copying them.

`families.read_weights` walks the HF module tree (under a peft wrapper too) and returns references to the
live parameters: the decode step reads exactly the tensors the optimizer updates. A LoRA-wrapped
Linear contributes its base weight plus (A, B, scaling) of each active adapter, applied as two
extra small matmuls (x @ Aᵀ @ Bᵀ · scaling), so nothing is merged and there is no second copy.
It is called at the start of every generate(), so adapters switched on/off or replaced are seen.

Anything this reader does not understand raises `Unsupported`, and the engine falls back to hf.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch

from rlvr.rollout.native.moe import MoeW


class Unsupported(Exception):
    """The model uses something the native engine does not implement."""


@dataclass
class LinearW:
    weight: torch.Tensor  # [out, in]
    bias: torch.Tensor | None = None  # [out]
    # One (A [r, in], B [out, r], B's bias or None, scaling) per active LoRA adapter.
    loras: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, float]] = field(default_factory=list)

    def bytes(self) -> int:
        n = self.weight.numel() * self.weight.element_size()
        for a, b, _, _ in self.loras:
            n += a.numel() * a.element_size() + b.numel() * b.element_size()
        return n


@dataclass
class FusedLoraW:
    """One adapter over projections that read the same input (q/k/v, or gate/up), applied as two
    matmuls for all of them instead of two each: x @ [A_1; A_2; …]ᵀ, then a block-diagonal B. The
    off-diagonal zeros add exact zeros, so each output is what its own x @ Aᵀ @ Bᵀ gives; the base
    weights stay separate references (no copy). Costs ΣR × Σout of B, e.g. 0.2 MB per layer for
    q/k/v at r 16 on a 1.5B model."""

    a: torch.Tensor  # [ΣR, in]
    b: torch.Tensor  # [Σout, ΣR] block-diagonal
    scaling: torch.Tensor  # [Σout] each projection's LoRA scaling, applied after B as peft does
    splits: list[int]  # each projection's out size


@dataclass
class LayerW:
    input_norm: torch.Tensor | None  # [hidden]; None: attention reads the residual stream as is (OLMo 2)
    q: LinearW
    k: LinearW
    v: LinearW
    o: LinearW
    post_norm: torch.Tensor | None  # [hidden], the norm before the MLP; None in OLMo 2
    gate: LinearW | None  # None on a mixture-of-experts layer (`moe`)
    up: LinearW | None
    down: LinearW | None
    q_norm: torch.Tensor | None = None  # [head_dim], Qwen3: RMSNorm on each head
    k_norm: torch.Tensor | None = None
    qkv: LinearW | None = None  # q, k, v stacked [(H + 2·KV)·D, hidden], when merged copies exist
    gate_up: LinearW | None = None  # gate, up stacked [2·inter, hidden]
    qkv_lora: FusedLoraW | None = None  # q/k/v adapters fused (then q, k, v carry no loras of their own)
    gate_up_lora: FusedLoraW | None = None
    # Family extras (families.py): norms of the attention and MLP outputs (Gemma 2/3, OLMo 2), the
    # sliding window in tokens (None = full attention) and which rope table the layer uses (None = NoPE).
    attn_out_norm: torch.Tensor | None = None
    mlp_out_norm: torch.Tensor | None = None
    window: int | None = None
    rope: int | None = 0
    moe: MoeW | None = None  # router and experts, in place of gate/up/down (moe.py)
    sinks: torch.Tensor | None = None  # [H] gpt-oss: a per-head logit in every softmax, attending to nothing


@dataclass(frozen=True)
class ArchW:
    """A family's scalars; the defaults are Llama's (families.py reads them from the config)."""

    embed_scale: float = 1.0  # embeddings × this (Gemma: √hidden rounded to the model dtype; Granite)
    residual_scale: float = 1.0  # each block's output × this before the residual add (Granite)
    attn_scale: float | None = None  # softmax scale; None = head_dim ** -0.5
    attn_softcap: float | None = None  # cap · tanh(scores / cap) before the mask (Gemma 2)
    logit_softcap: float | None = None  # the same on the final logits (Gemma 2/3)
    logit_scale: float = 1.0  # logits ÷ this (Granite)
    act: str = "silu"  # silu | gelu_tanh
    gemma_norm: bool = False  # RMSNorm scaled by (1 + w) in fp32 before the cast (norm weights hold 1 + w)
    extra_ropes: tuple = ()  # ((inv_freq, attention_scaling), ...) of rope tables 1, 2, … (Gemma 3 local)


@dataclass
class ModelW:
    embed: torch.Tensor  # [V_in, hidden]
    layers: list[LayerW]
    norm: torch.Tensor  # [hidden]
    lm_head: LinearW  # weight [V, hidden]; the embedding itself when tied
    n_heads: int
    n_kv_heads: int
    head_dim: int
    eps: float
    inv_freq: torch.Tensor  # [head_dim / 2] fp32
    rope_scaling: float  # HF's attention_scaling, multiplies cos/sin (1 except yarn)
    arch: ArchW = field(default_factory=ArchW)

    @property
    def dtype(self) -> torch.dtype:
        return self.embed.dtype

    @property
    def device(self) -> torch.device:
        return self.embed.device

    @property
    def vocab_size(self) -> int:
        return self.lm_head.weight.shape[0]

    def kv_bytes_per_token(self) -> int:
        """Bytes of K and V cached per token over all layers."""
        return 2 * len(self.layers) * self.n_kv_heads * self.head_dim * self.embed.element_size()

    def weight_bytes(self) -> int:
        """Bytes one decode step reads from the weights (the embedding only via the tied head)."""
        n = self.lm_head.bytes() + sum(t.numel() * t.element_size() for t in (self.norm,))
        for layer in self.layers:
            n += sum(lin.bytes() for lin in (layer.q, layer.k, layer.v, layer.o, layer.gate, layer.up, layer.down)
                     if lin is not None)
            n += layer.moe.active_bytes() if layer.moe is not None else 0  # the k experts a token uses
        return n


def _merged(lin: LinearW) -> LinearW:
    """A copy with every adapter folded in: W + scaling · B @ A (summed in fp32, cast to W's dtype)."""
    weight = lin.weight.float()
    bias = None if lin.bias is None else lin.bias.float()
    for a, b, b_bias, scaling in lin.loras:
        weight = weight + scaling * (b.float() @ a.float())
        if b_bias is not None:
            bias = scaling * b_bias.float() if bias is None else bias + scaling * b_bias.float()
    return LinearW(weight.to(lin.weight.dtype), None if bias is None else bias.to(lin.weight.dtype))


def _stacked(lins: list[LinearW]) -> LinearW:
    """Merged copies of `lins` stacked along the output dim (one matmul instead of several)."""
    merged = [_merged(lin) for lin in lins]
    biases = [m.bias if m.bias is not None else torch.zeros_like(m.weight[:, 0]) for m in merged]
    has_bias = any(m.bias is not None for m in merged)
    return LinearW(torch.cat([m.weight for m in merged]), torch.cat(biases) if has_bias else None)


MERGE_SCOPES = ("all", "attention")


def merge_lora(w: ModelW, scope: str = "all") -> ModelW:
    """Decode weights with LoRA folded into copies of only the adapted matrices.

    Each step then runs one matmul per projection instead of three, and q/k/v and gate/up, when
    copied anyway, are stacked so they take one matmul each: far fewer kernels per token. Costs the
    memory of the adapted matrices for the duration of the round; refreshed every generate() call.
    scope "attention" copies only q/k/v/o (about an eighth of a Llama/Qwen layer's weights) and runs
    the MLP adapters fused (`fuse_lora`): most of the kernel saving at a fraction of the memory.
    """
    if scope not in MERGE_SCOPES:
        raise ValueError(f"merge scope must be one of {MERGE_SCOPES}, got {scope!r}")
    layers = []
    for layer in w.layers:
        attn, mlp = [layer.q, layer.k, layer.v], [layer.gate, layer.up]
        qkv = _stacked(attn) if any(lin.loras for lin in attn) else None
        merged = replace(layer, qkv=qkv, o=_merged(layer.o) if layer.o.loras else layer.o)
        if scope == "all" and layer.moe is None:
            gate_up = _stacked(mlp) if any(lin.loras for lin in mlp) else None
            merged = replace(merged, gate_up=gate_up,
                             down=_merged(layer.down) if layer.down.loras else layer.down)
        else:
            merged = _fuse_layer(merged, attention=False)
        layers.append(merged)
    return replace(w, layers=layers, lm_head=_merged(w.lm_head) if w.lm_head.loras else w.lm_head)


def fuse_lora(w: ModelW) -> ModelW:
    """Decode weights with the q/k/v adapters and the gate/up adapters each run as one fused pair
    of matmuls (`FusedLoraW`): 4 kernels fewer per layer than an adapter per projection, no copy of
    any base matrix. Projections whose adapters cannot be fused (several adapters, a LoRA bias,
    different adapter dtypes) keep their own."""
    return replace(w, layers=[_fuse_layer(layer) for layer in w.layers])


def _fuse_layer(layer: LayerW, attention: bool = True) -> LayerW:
    if attention and layer.qkv is None:
        fused = _fused([layer.q, layer.k, layer.v])
        if fused is not None:
            layer = replace(layer, qkv_lora=fused, q=_base(layer.q), k=_base(layer.k), v=_base(layer.v))
    if layer.gate_up is None and layer.moe is None:
        fused = _fused([layer.gate, layer.up])
        if fused is not None:
            layer = replace(layer, gate_up_lora=fused, gate=_base(layer.gate), up=_base(layer.up))
    return layer


def _base(lin: LinearW) -> LinearW:
    return LinearW(lin.weight, lin.bias)


def _fused(lins: list[LinearW]) -> FusedLoraW | None:
    if any(len(lin.loras) != 1 or lin.loras[0][2] is not None for lin in lins):
        return None
    a_s = [lin.loras[0][0] for lin in lins]
    b_s = [lin.loras[0][1] for lin in lins]
    if len({t.dtype for t in a_s + b_s}) != 1:
        return None
    ranks, outs = [a.shape[0] for a in a_s], [b.shape[0] for b in b_s]
    block = torch.zeros(sum(outs), sum(ranks), dtype=b_s[0].dtype, device=b_s[0].device)
    row = col = 0
    for b, out, r in zip(b_s, outs, ranks):
        block[row:row + out, col:col + r] = b
        row, col = row + out, col + r
    scaling = torch.cat([torch.full((out,), lin.loras[0][3], dtype=torch.float32, device=block.device)
                         for lin, out in zip(lins, outs)]).to(block.dtype)
    return FusedLoraW(a=torch.cat(a_s), b=block, scaling=scaling, splits=outs)


def _linear(mod: torch.nn.Module, name: str) -> LinearW:
    """The weight, bias and active LoRA adapters of a Linear or a peft lora.Linear wrapping one."""
    if hasattr(mod, "base_layer") and hasattr(mod, "lora_A"):
        base = mod.base_layer
        if type(base) is not torch.nn.Linear:
            raise Unsupported(f"{name}: LoRA over {type(base).__name__} (quantized?)")
        if getattr(mod, "lora_variant", None) or any(getattr(mod, "use_dora", {}).values()):
            raise Unsupported(f"{name}: DoRA / LoRA variants")
        if mod.disable_adapters:
            if mod.merged:
                raise Unsupported(f"{name}: adapters disabled while merged")
            return LinearW(base.weight, base.bias)
        if mod.merged:
            return LinearW(base.weight, base.bias)
        loras = [(mod.lora_A[a].weight, mod.lora_B[a].weight, mod.lora_B[a].bias, float(mod.scaling[a]))
                 for a in mod.active_adapters if a in mod.lora_A]
        return LinearW(base.weight, base.bias, loras)
    if type(mod) is not torch.nn.Linear:
        raise Unsupported(f"{name}: {type(mod).__name__} is not a plain Linear")
    if not mod.weight.is_floating_point():
        raise Unsupported(f"{name}: {mod.weight.dtype} weights")
    return LinearW(mod.weight, mod.bias)


def _rms_weight(mod: torch.nn.Module, name: str) -> torch.Tensor:
    if not hasattr(mod, "weight") or not hasattr(mod, "variance_epsilon"):
        raise Unsupported(f"{name}: {type(mod).__name__} is not an RMSNorm")
    return mod.weight
