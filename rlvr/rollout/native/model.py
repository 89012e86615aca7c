"""The decoder as plain functions over `ModelW` and a preallocated KV cache (gpt-fast style).

`prefill` runs the left-padded prompts once and hands each layer's K/V to the caller (who copies
them to the prompt's G completion rows); `decode_one_token` advances every row by one token with
fixed shapes, writing K/V in place at a device-side slot index, so it can be captured as a CUDA graph.
The step is cut only at attention: each piece between two attention calls (a layer's o-proj and MLP,
then the next layer's norm, q/k/v, rope and cache write) is one function, compiled once for all layers.

Numerics follow transformers' Llama/Qwen code: matmuls and attention in the model dtype, RMSNorm in
fp32, rope cos/sin computed in fp32 and cast, logits cast to fp32 before sampling. Positions of
left-padded prompts are cumsum(mask) - 1, as generate() and `completion_logprobs` assign them.

Cache layout: one tensor per layer, [rows, 2, kv_heads, slots, head_dim], K then V (so a step writes
both in one kernel). Every row's prompt occupies slots [0, P) left-padded (pad slots are hidden by an
additive -inf bias) and generated token t sits in slot P + t, the same column for all rows, so one
scalar slot index serves the whole batch.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from rlvr.rollout.native.attention import sdpa_attention
from rlvr.rollout.native.quant import fp8_linear
from rlvr.rollout.native.weights import FusedLoraW, LayerW, LinearW, ModelW

log = logging.getLogger("rlvr")


def linear(x: torch.Tensor, lin: LinearW) -> torch.Tensor:
    """x @ Wᵀ + b, plus each active LoRA adapter's (x @ Aᵀ @ Bᵀ) · scaling, as peft computes it.
    W is a 16/32-bit matrix, an FP8 one with row scales (`quant.fp8_linear`), or a 4-bit base
    dequantised here, for this one matmul."""
    if lin.scale is not None:
        y = fp8_linear(x, lin.weight, lin.scale, lin.bias)
    else:
        y = F.linear(x, lin.dense(), lin.bias)
    if not lin.loras:
        return y
    out_dtype = y.dtype
    for a, b, b_bias, scaling in lin.loras:
        xa = x.to(a.dtype)  # peft runs the adapter in its own dtype (fp32 adapters on a bf16 base)
        y = y + F.linear(F.linear(xa, a), b, b_bias) * scaling
    return y.to(out_dtype)


def fused_lora(x: torch.Tensor, f: FusedLoraW) -> list[torch.Tensor]:
    """Each projection's LoRA output (x @ Aᵀ @ Bᵀ · scaling) from one pair of matmuls, in the adapter dtype."""
    return list((F.linear(F.linear(x.to(f.a.dtype), f.a), f.b) * f.scaling).split(f.splits, dim=-1))


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """HF's RMSNorm: normalise in fp32, cast back, then scale in the model dtype. F.rms_norm (one fused
    kernel on CUDA instead of six) upcasts internally; the weight is applied after the cast, as HF does."""
    return weight * F.rms_norm(x, (x.shape[-1],), eps=eps)


def rope_tables(w: ModelW, max_pos: int) -> tuple[torch.Tensor, torch.Tensor]:  # [max_pos, D] each
    """cos/sin for positions 0..max_pos-1, computed in fp32 like HF's rotary embedding, then cast."""
    pos = torch.arange(max_pos, device=w.device, dtype=torch.float32)
    freqs = pos[:, None] * w.inv_freq.to(w.device)[None, :]
    emb = torch.cat((freqs, freqs), dim=-1)
    return (emb.cos() * w.rope_scaling).to(w.dtype), (emb.sin() * w.rope_scaling).to(w.dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [B, T, n, D] with cos/sin [B, T, 1, D]."""
    return x * cos + _rotate_half(x) * sin


def _qkv(w: ModelW, layer: LayerW, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
    """h [B, T, hidden], cos/sin [B, T, 1, D] → q [B, H, T, D], k and v [B, KV, T, D], rope applied."""
    b, t, _ = h.shape
    hq, hk, d = w.n_heads, w.n_kv_heads, w.head_dim
    if layer.qkv is not None:  # merged decode copy: one matmul for q, k and v
        qkv = linear(h, layer.qkv).view(b, t, hq + 2 * hk, d)
        q, k, v = qkv.split([hq, hk, hk], dim=2)
    else:
        q, k, v = linear(h, layer.q), linear(h, layer.k), linear(h, layer.v)
        if layer.qkv_lora is not None:
            dq, dk, dv = fused_lora(h, layer.qkv_lora)
            q, k, v = (q + dq).to(q.dtype), (k + dk).to(k.dtype), (v + dv).to(v.dtype)
        q, k, v = q.view(b, t, hq, d), k.view(b, t, hk, d), v.view(b, t, hk, d)
    if layer.q_norm is not None:  # Qwen3: RMSNorm over each head before rope
        q, k = _rope(rms_norm(q, layer.q_norm, w.eps), cos, sin), _rope(rms_norm(k, layer.k_norm, w.eps), cos, sin)
    elif layer.qkv is not None:  # q and k heads are adjacent: rotate them in one pass
        q, k = _rope(qkv[:, :, :hq + hk], cos, sin).split([hq, hk], dim=2)
    else:
        q, k = _rope(q, cos, sin), _rope(k, cos, sin)
    return q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)


def _finish_layer(w: ModelW, layer: LayerW, x: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
    """Residual after attention ([B, T, H*D] → o_proj), then the SwiGLU MLP block."""
    x = x + linear(attn, layer.o)
    h = rms_norm(x, layer.post_norm, w.eps)
    if layer.gate_up is not None:
        gate, up = linear(h, layer.gate_up).chunk(2, dim=-1)
    else:
        gate, up = linear(h, layer.gate), linear(h, layer.up)
        if layer.gate_up_lora is not None:
            dg, du = fused_lora(h, layer.gate_up_lora)
            gate, up = (gate + dg).to(gate.dtype), (up + du).to(up.dtype)
    return x + linear(F.silu(gate) * up, layer.down)


def _head(w: ModelW, x: torch.Tensor) -> torch.Tensor:  # [B, hidden] → [B, V] fp32
    return linear(rms_norm(x, w.norm, w.eps), w.lm_head).float()


def prefill(
    w: ModelW,
    ids: torch.Tensor,  # [n, P] left-padded prompts
    mask: torch.Tensor,  # [n, P]
    cos_table: torch.Tensor,  # [max_pos, D]
    sin_table: torch.Tensor,
    store_kv: Callable[[int, torch.Tensor, torch.Tensor], None],  # (layer, k, v [n, KV, P, D])
) -> torch.Tensor:  # [n, V] fp32 logits of each prompt's first completion token
    n, p = ids.shape
    valid = mask.bool()
    pos = (mask.long().cumsum(-1) - 1).clamp(min=0)
    cos, sin = cos_table[pos][:, :, None], sin_table[pos][:, :, None]  # [n, P, 1, D]
    causal = torch.ones(p, p, dtype=torch.bool, device=ids.device).tril()
    # Each query sees earlier real tokens; a pad query sees itself, so no row is fully masked
    # (a fully masked softmax gives NaN, which would reach the cache and poison 0·NaN sums later).
    allowed = (causal & valid[:, None, :]) | torch.eye(p, dtype=torch.bool, device=ids.device)
    allowed = allowed[:, None]  # [n, 1, P, P]
    group = w.n_heads // w.n_kv_heads
    x = F.embedding(ids, w.embed)
    for i, layer in enumerate(w.layers):
        q, k, v = _qkv(w, layer, rms_norm(x, layer.input_norm, w.eps), cos, sin)
        store_kv(i, k, v)
        o = F.scaled_dot_product_attention(q, k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1),
                                           attn_mask=allowed, scale=w.head_dim ** -0.5)
        x = _finish_layer(w, layer, x, o.transpose(1, 2).reshape(n, p, -1))
    return _head(w, x[:, -1])


def _attn_in(w: ModelW, layer: LayerW, x: torch.Tensor, pos: torch.Tensor, cos_table: torch.Tensor,
             sin_table: torch.Tensor, kv_cache: torch.Tensor, slot: torch.Tensor):
    """Norm, q/k/v and rope at `pos` for one decode token; writes k and v into the layer's cache
    column `slot` and returns q as [B, KV, group, D]: GQA without repeating the cache, the `group`
    query heads sharing a KV head become that head's query rows (HF maps query head h to KV head
    h // group)."""
    b = x.shape[0]
    cos, sin = cos_table[pos][:, None, None], sin_table[pos][:, None, None]  # [B, 1, 1, D]
    q, k, v = _qkv(w, layer, rms_norm(x, layer.input_norm, w.eps), cos, sin)
    # index_put with a device-side slot (as gpt-fast writes its cache): inductor does it in place,
    # k and v in one write fused with rope, instead of two index_copy kernels per layer.
    kv_cache[:, :, :, slot] = torch.stack((k, v), dim=1)
    return q.reshape(b, w.n_kv_heads, w.n_heads // w.n_kv_heads, w.head_dim)


def _first(w: ModelW, layer: LayerW, tok: torch.Tensor, pos: torch.Tensor, cos_table: torch.Tensor,
           sin_table: torch.Tensor, kv_cache: torch.Tensor, slot: torch.Tensor, kv_bias: torch.Tensor):
    """Embedding, then layer 0's attention input; opens cache column `slot` to every row's attention."""
    kv_bias.index_fill_(1, slot, 0.0)
    x = F.embedding(tok, w.embed)[:, None]  # [B, 1, hidden]
    return x, _attn_in(w, layer, x, pos, cos_table, sin_table, kv_cache, slot)


def _between(w: ModelW, layer: LayerW, nxt: LayerW, x: torch.Tensor, attn: torch.Tensor, pos: torch.Tensor,
             cos_table: torch.Tensor, sin_table: torch.Tensor, kv_cache: torch.Tensor, slot: torch.Tensor):
    """Everything from one layer's attention output to the next layer's query: one compiled piece
    per layer boundary, so the residual add, the next norm and rope fuse across it."""
    x = _finish_layer(w, layer, x, attn.reshape(x.shape[0], 1, -1))
    return x, _attn_in(w, nxt, x, pos, cos_table, sin_table, kv_cache, slot)


def _last(w: ModelW, layer: LayerW, x: torch.Tensor, attn: torch.Tensor, pos: torch.Tensor,
          slot: torch.Tensor) -> torch.Tensor:
    """The last layer's finish and the head; advances `pos` and `slot` for the next step."""
    pos.add_(1)
    slot.add_(1)
    return _head(w, _finish_layer(w, layer, x, attn.reshape(x.shape[0], 1, -1))[:, 0])


@dataclass(frozen=True)
class DecodeFns:
    """The pieces of a decode step between its attention calls. `compiled()` fuses each piece's
    elementwise work (norms, rope, cache writes, residuals, SwiGLU, LoRA adds) into a few kernels
    with torch.compile: one compile per piece serves every layer (same shapes, weights passed as
    inputs), and attention stays out so the cache length can change without recompiling. Eager by
    default (CPU, tests)."""

    first: Callable = _first
    between: Callable = _between
    last: Callable = _last
    attention: Callable = sdpa_attention  # (q, k_cache, v_cache, kv_bias, kv_len, scale) → [B, KV, G, D]

    @staticmethod
    def compiled(attention: Callable = sdpa_attention) -> DecodeFns:
        return DecodeFns(first=Compiled(_first), between=Compiled(_between), last=Compiled(_last),
                         attention=attention)


class Compiled:
    """torch.compile(fn), falling back to fn for good (one log line) if compiling fails: a faster
    step is an optimisation, never a reason to fail a round."""

    def __init__(self, fn: Callable):
        self.fn = fn
        # Default mode: no inductor CUDA graphs, since the engine captures the whole step itself.
        self.compiled: Callable | None = torch.compile(fn, fullgraph=True, dynamic=None)

    def __call__(self, *args):
        if self.compiled is not None:
            try:
                return self.compiled(*args)
            except torch.OutOfMemoryError:
                raise
            except Exception as e:  # noqa: BLE001 - inductor/dynamo errors have no common base class
                log.warning("native rollout: torch.compile of %s failed (%s); running it eagerly",
                            self.fn.__name__, str(e).splitlines()[0][:200] if str(e) else type(e).__name__)
                self.compiled = None
        return self.fn(*args)


EAGER = DecodeFns()


def decode_one_token(
    w: ModelW,
    tok: torch.Tensor,  # [B] the tokens to feed
    pos: torch.Tensor,  # [B] their positions
    slot: torch.Tensor,  # [1] the cache column they are written to
    kv_cache: Sequence[torch.Tensor],  # per layer [B, 2, KV, S, D]: K then V
    kv_bias: torch.Tensor,  # [B, S] additive: 0 on slots to attend to, -inf elsewhere (incl. `slot`)
    kv_len: int,  # attend over slots [0, kv_len) only; > slot
    cos_table: torch.Tensor,
    sin_table: torch.Tensor,
    fns: DecodeFns = EAGER,
) -> torch.Tensor:  # [B, V] fp32 logits of the next token
    """One decode step with static shapes and no host sync (capturable). Updates the cache and
    `kv_bias` in place and advances `pos` and `slot` by one."""
    d = w.head_dim
    layers = w.layers
    x, q = fns.first(w, layers[0], tok, pos, cos_table, sin_table, kv_cache[0], slot, kv_bias)
    for i, layer in enumerate(layers):
        o = fns.attention(q, kv_cache[i][:, 0], kv_cache[i][:, 1], kv_bias, kv_len, d ** -0.5)
        if i + 1 < len(layers):
            x, q = fns.between(w, layer, layers[i + 1], x, o, pos, cos_table, sin_table,
                               kv_cache[i + 1], slot)
    return fns.last(w, layers[-1], x, o, pos, slot)
