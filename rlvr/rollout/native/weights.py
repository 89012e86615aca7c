"""Read a transformers decoder's weights for the native engine, without copying them.

`families.read_weights` walks the HF module tree (under a peft wrapper too) and returns references to the
live parameters: the decode step reads exactly the tensors the optimizer updates. A LoRA-wrapped
Linear contributes its base weight plus (A, B, scaling) of each active adapter, applied as two
extra small matmuls (x @ Aᵀ @ Bᵀ · scaling), so nothing is merged and there is no second copy.
A bitsandbytes 4-bit base contributes its packed codes and block scales (`quant.Packed4bitW`), an FP8
training base (`model.load_in_fp8`) its e4m3 codes and row scales (`quant.Fp8W`): both "packed".
It is called at the start of every generate(), so adapters switched on/off or replaced are seen.

`decode_weights` turns that into what one round decodes with: LoRA merged into copies (or fused),
packed bases dequantised into copies (or left packed, dequantised inside the step), everything cast
to the rollout dtype, and with FP8 every layer matrix quantised per row (an FP8 base without a merged
adapter used as it is).

Anything this reader does not understand raises `Unsupported`, and the engine falls back to hf.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch

from rlvr.models.fp8 import FrozenFP8Linear, quantize_fp8_rows
from rlvr.rollout.native.moe import MoeW, grouped_mm_supported
from rlvr.rollout.native.quant import Fp8W, Packed4bitW, is_packed_4bit, packed_4bit

PROJECTIONS = ("q", "k", "v", "o", "gate", "up", "down")  # a LayerW's own matrices (gate/up/down None on MoE)


class Unsupported(Exception):
    """The model uses something the native engine does not implement."""


@dataclass
class LinearW:
    weight: torch.Tensor | None  # [out, in]; float8 e4m3 when `scale` is set; None when `packed` is
    bias: torch.Tensor | None = None  # [out]
    # One (A [r, in], B [out, r], B's bias or None, scaling) per active LoRA adapter.
    loras: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, float]] = field(default_factory=list)
    scale: torch.Tensor | None = None  # [out] fp32: FP8 weight = weight · scale per row
    packed: Packed4bitW | Fp8W | None = None  # a 4-bit or FP8 base, dequantised when used (FP8: or as it is)

    def dense_rows(self) -> int:
        return self.packed.shape[0] if self.weight is None else self.weight.shape[0]

    def dense(self) -> torch.Tensor:
        """The weight as a dense matrix (dequantising a packed base); not for FP8 decode copies."""
        return self.packed.dequantize() if self.weight is None else self.weight

    def bytes(self) -> int:
        n = self.packed.bytes() if self.weight is None else self.weight.numel() * self.weight.element_size()
        if self.scale is not None:
            n += self.scale.numel() * 4
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

    @property
    def has_packed(self) -> bool:
        """Whether some layer matrix is a 4-bit or FP8 base."""
        return any(lin is not None and lin.packed is not None
                   for layer in self.layers for lin in (getattr(layer, n) for n in PROJECTIONS))

    @property
    def packed_kind(self) -> str | None:
        """'4bit' or 'fp8': what the packed bases are (None without any)."""
        return next((lin.packed.kind for layer in self.layers for lin in (getattr(layer, n) for n in PROJECTIONS)
                     if lin is not None and lin.packed is not None), None)

    def kv_bytes_per_token(self) -> int:
        """Bytes of K and V cached per token over all layers."""
        return 2 * len(self.layers) * self.n_kv_heads * self.head_dim * self.embed.element_size()

    def weight_bytes(self, rows: int = 1) -> float:
        """Bytes one decode step of `rows` tokens reads from the weights (the embedding only via the tied head;
        a mixture of experts' layer the experts the step's tokens are routed to: `MoeW.read_bytes`)."""
        n = self.lm_head.bytes() + sum(t.numel() * t.element_size() for t in (self.norm,))
        for layer in self.layers:
            n += sum(getattr(layer, name).bytes() for name in used_projections(layer))
            n += layer.moe.read_bytes(rows) if layer.moe is not None else 0
        return n


def _merged(lin: LinearW) -> LinearW:
    """A copy with every adapter folded in: W + scaling · B @ A (see `_stacked`)."""
    return _stacked([lin])


def _stacked(lins: list[LinearW]) -> LinearW:
    """Merged copies of `lins` stacked along the output dim (one matmul instead of several), made
    with one kernel per matrix: the bases copied into one tensor, then each adapter added in place
    by `addmm_` (W += scaling · B @ A, accumulated in fp32 and rounded once to W's dtype; adapters
    kept in another dtype, e.g. fp32 over a bf16 base, are cast to W's for the product)."""
    weight = torch.cat([lin.dense() for lin in lins]) if len(lins) > 1 else lins[0].dense().clone()
    biases, row = [], 0
    for lin in lins:
        rows = weight[row:row + lin.dense_rows()]
        bias = None if lin.bias is None else lin.bias.float()
        for a, b, b_bias, scaling in lin.loras:
            rows.addmm_(b.to(weight.dtype), a.to(weight.dtype), alpha=scaling)
            if b_bias is not None:
                bias = scaling * b_bias.float() if bias is None else bias + scaling * b_bias.float()
        biases.append(bias)
        row += rows.shape[0]
    if all(b is None for b in biases):
        return LinearW(weight)
    return LinearW(weight, torch.cat([torch.zeros(lin.dense_rows(), device=weight.device) if b is None else b
                                      for lin, b in zip(lins, biases)]).to(weight.dtype))


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
    layers = [_merge_layer(layer, scope) for layer in w.layers]
    return replace(w, layers=layers, lm_head=_merged(w.lm_head) if w.lm_head.loras else w.lm_head)


def _merge_layer(layer: LayerW, scope: str) -> LayerW:
    attn, mlp = [layer.q, layer.k, layer.v], [layer.gate, layer.up]
    qkv = _stacked(attn) if any(lin.loras for lin in attn) else None
    merged = replace(layer, qkv=qkv, o=_merged(layer.o) if layer.o.loras else layer.o)
    if scope == "all" and layer.moe is None:
        gate_up = _stacked(mlp) if any(lin.loras for lin in mlp) else None
        return replace(merged, gate_up=gate_up, down=_merged(layer.down) if layer.down.loras else layer.down)
    return _fuse_layer(merged, attention=False)


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
    return replace(lin, loras=[])


def decode_weights(w: ModelW, scope: str | None, dtype: torch.dtype | None = None, fp8: bool = False,
                   keep_packed: bool = False) -> ModelW:
    """The weights one round decodes with, made layer by layer (so at most one layer's temporaries
    exist at a time): cast to `dtype` (the norms, embedding, head and 16-bit matrices; a packed base
    then dequantises to it), packed bases dequantised into copies unless `keep_packed` (then the step
    dequantises each matrix when it uses it, and adapters are never merged: merging needs the
    dense copy), LoRA merged into copies of the adapted matrices (`scope`, as `merge_lora`) or run
    fused (`fuse_lora`), and with `fp8` every layer matrix quantised per row into an FP8 copy
    (q/k/v and gate/up stacked when no unmerged adapter reads them), except an FP8 base that no
    adapter is merged into: decoded as it is (with `keep_packed` too). The head stays in `dtype`:
    the sampled log-probs come from it."""
    if dtype is not None and dtype != w.dtype:
        w = _cast(w, dtype)
    if keep_packed and w.has_packed:
        scope = None
    layers = []
    for layer in w.layers:
        layer = _merge_layer(layer, scope) if scope else _fuse_layer(layer)  # merging dequantises on the fly
        if fp8 and not keep_packed:
            layer = _fp8_layer(layer)
        elif fp8:  # 4-bit bases stay packed; FP8 bases (adapters unmerged) go to fp8_linear as they are
            layer = replace(layer, **{n: _fp8_base(getattr(layer, n)) for n in used_projections(layer)})
        elif not keep_packed:  # only what the step reads: q/k/v stay packed references once merged into qkv
            layer = replace(layer, **{n: _unpacked(getattr(layer, n)) for n in used_projections(layer)})
        layers.append(layer)
    lm_head = _unpacked(w.lm_head)
    return replace(w, layers=layers, lm_head=_merged(lm_head) if scope and lm_head.loras else lm_head)


def _unpacked(lin: LinearW) -> LinearW:
    return lin if lin.packed is None else replace(lin, weight=lin.packed.dequantize(), packed=None)


def _fp8_layer(layer: LayerW) -> LayerW:
    """Every matrix of the layer as an FP8 copy with row scales; q/k/v and gate/up stacked first
    where nothing but their own (possibly merged) weights reads them, unless they are FP8 bases
    (decoded as they are, no copy). A MoE layer's router and experts stay in the rollout dtype (only
    its attention matrices are FP8)."""
    attn, mlp = [layer.q, layer.k, layer.v], [layer.gate, layer.up]
    if layer.qkv is None and layer.qkv_lora is None and _stackable(attn):
        layer = replace(layer, qkv=_stacked(attn))
    if layer.moe is None and layer.gate_up is None and layer.gate_up_lora is None and _stackable(mlp):
        layer = replace(layer, gate_up=_stacked(mlp))
    return replace(layer, **{n: _fp8(getattr(layer, n)) for n in used_projections(layer)})


def _stackable(lins: list[LinearW]) -> bool:
    return not any(lin.loras or isinstance(lin.packed, Fp8W) for lin in lins)


def used_projections(layer: LayerW) -> list[str]:
    """The LayerW matrices the decode step reads: the stacked copies where they exist, else their
    parts (a MoE layer's experts are not LinearW: only its attention matrices are listed)."""
    names = ["o"]
    names += ["qkv"] if layer.qkv is not None else ["q", "k", "v"]
    if layer.moe is None:
        names += ["down"]
        names += ["gate_up"] if layer.gate_up is not None else ["gate", "up"]
    return names


def _fp8(lin: LinearW) -> LinearW:
    if isinstance(lin.packed, Fp8W) and not lin.loras:
        return _fp8_base(lin)
    weight, scale = quantize_fp8_rows(lin.dense())
    return replace(lin, weight=weight, scale=scale, packed=None)


def _fp8_base(lin: LinearW) -> LinearW:
    """An FP8 base as an FP8 decode matrix: the training weight's own codes and scales (no copy)."""
    if not isinstance(lin.packed, Fp8W):
        return lin
    return replace(lin, weight=lin.packed.data, scale=lin.packed.scale, packed=None)


def _cast(w: ModelW, dtype: torch.dtype) -> ModelW:
    """`w` with its floating tensors in `dtype` (each tensor cast once: a tied head stays shared);
    LoRA adapters keep their dtype (the step casts around them), 4-bit bases dequantise to `dtype`."""
    done: dict[int, torch.Tensor] = {}

    def t(x: torch.Tensor | None) -> torch.Tensor | None:
        if x is None or x.dtype == dtype:
            return x
        if id(x) not in done:
            done[id(x)] = x.to(dtype)
        return done[id(x)]

    def lin(m: LinearW | None) -> LinearW | None:
        if m is None:
            return None
        packed = None if m.packed is None else replace(m.packed, dtype=dtype)
        return replace(m, weight=t(m.weight), bias=t(m.bias), packed=packed)

    def moe(m: MoeW | None) -> MoeW | None:
        if m is None:
            return None
        gate_up = t(m.gate_up)
        loras = lambda ls: tuple(replace(lo, a=t(lo.a), b=t(lo.b)) for lo in ls)  # noqa: E731
        return replace(m, router=t(m.router), gate_up=gate_up, down=t(m.down), router_bias=t(m.router_bias),
                       gate_up_bias=t(m.gate_up_bias), down_bias=t(m.down_bias),
                       grouped=grouped_mm_supported(gate_up), gate_up_lora=loras(m.gate_up_lora),
                       down_lora=loras(m.down_lora))

    # Gemma's norm weights hold 1 + w in fp32 (applied before the cast back): they stay fp32.
    nrm = (lambda x: x) if w.arch.gemma_norm else t
    layers = [replace(layer, input_norm=nrm(layer.input_norm), post_norm=nrm(layer.post_norm),
                      q_norm=nrm(layer.q_norm), k_norm=nrm(layer.k_norm), attn_out_norm=nrm(layer.attn_out_norm),
                      mlp_out_norm=nrm(layer.mlp_out_norm), sinks=t(layer.sinks), moe=moe(layer.moe),
                      **{n: lin(getattr(layer, n)) for n in PROJECTIONS})
              for layer in w.layers]
    return replace(w, embed=t(w.embed), norm=nrm(w.norm), lm_head=lin(w.lm_head), layers=layers)


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
        base = _plain_linear(mod.base_layer, name)
        if getattr(mod, "lora_variant", None) or any(getattr(mod, "use_dora", {}).values()):
            raise Unsupported(f"{name}: DoRA / LoRA variants")
        if mod.disable_adapters:
            if mod.merged:
                raise Unsupported(f"{name}: adapters disabled while merged")
            return base
        if mod.merged:
            return base
        loras = [(mod.lora_A[a].weight, mod.lora_B[a].weight, mod.lora_B[a].bias, float(mod.scaling[a]))
                 for a in mod.active_adapters if a in mod.lora_A]
        return replace(base, loras=loras)
    return _plain_linear(mod, name)


def _plain_linear(mod: torch.nn.Module, name: str) -> LinearW:
    """A torch Linear with float weights, a bitsandbytes Linear4bit (its packed 4-bit weight) or an FP8
    base (its codes and row scales)."""
    if type(mod).__name__ == "Linear4bit" and is_packed_4bit(mod.weight):
        return LinearW(None, mod.bias, packed=packed_4bit(mod.weight))
    if isinstance(mod, FrozenFP8Linear):
        return LinearW(None, mod.bias, packed=Fp8W(mod.weight, mod.weight_scale, mod.compute_dtype))
    if type(mod) is not torch.nn.Linear:
        raise Unsupported(f"{name}: {type(mod).__name__} is not a plain Linear")
    if not mod.weight.is_floating_point():
        raise Unsupported(f"{name}: {mod.weight.dtype} weights")
    return LinearW(mod.weight, mod.bias)


def _rms_weight(mod: torch.nn.Module, name: str) -> torch.Tensor:
    if not hasattr(mod, "weight") or not hasattr(mod, "variance_epsilon"):
        raise Unsupported(f"{name}: {type(mod).__name__} is not an RMSNorm")
    return mod.weight
