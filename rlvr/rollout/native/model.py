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
from functools import partial

import torch
import torch.nn.functional as F

from rlvr.models.fp8 import fp8_linear
from rlvr.rollout.native.attention import sdpa_attention
from rlvr.rollout.native.moe import moe_mlp
from rlvr.rollout.native.weights import FusedLoraW, LayerW, LinearW, ModelW

log = logging.getLogger("rlvr")


def linear(x: torch.Tensor, lin: LinearW) -> torch.Tensor:
    """x @ Wᵀ + b, plus each active LoRA adapter's (x @ Aᵀ @ Bᵀ) · scaling, as peft computes it.
    W is a 16/32-bit matrix, an FP8 one with row scales (`rlvr.models.fp8.fp8_linear`), or a 4-bit base
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


def norm(w: ModelW, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The model's RMSNorm: HF's Llama one, or Gemma's (scaled by the fp32 1 + w before the cast)."""
    if w.arch.gemma_norm:
        return (F.rms_norm(x.float(), (x.shape[-1],), eps=w.eps) * weight).to(x.dtype)
    return rms_norm(x, weight, w.eps)


def rope_tables(w: ModelW, max_pos: int) -> tuple[torch.Tensor, torch.Tensor]:  # [R, max_pos, D_rot] each
    """cos/sin of each rope table (`LayerW.rope` picks one) for positions 0..max_pos-1, computed in
    fp32 like HF's rotary embedding, then cast."""
    pos = torch.arange(max_pos, device=w.device, dtype=torch.float32)
    cos, sin = [], []
    for inv_freq, scaling in ((w.inv_freq, w.rope_scaling), *w.arch.extra_ropes):
        freqs = pos[:, None] * inv_freq.to(w.device)[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        cos.append((emb.cos() * scaling).to(w.dtype))
        sin.append((emb.sin() * scaling).to(w.dtype))
    return torch.stack(cos), torch.stack(sin)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def _rope(x: torch.Tensor, cos: torch.Tensor | None, sin: torch.Tensor | None) -> torch.Tensor:
    """x [B, T, n, D] with cos/sin [B, T, 1, D_rot]: the first D_rot dims rotate (partial rope, Phi-3
    style), the rest pass; None = no rope on this layer (NoPE)."""
    if cos is None:
        return x
    rd = cos.shape[-1]
    if rd == x.shape[-1]:
        return x * cos + _rotate_half(x) * sin
    rot = x[..., :rd]
    return torch.cat((rot * cos + _rotate_half(rot) * sin, x[..., rd:]), dim=-1)


def _qk_norm(w: ModelW, layer: LayerW, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """RMSNorm of q and k [B, T, n, D]: over each head (Qwen3, Gemma 3) or over all heads (OLMo 2)."""
    if layer.q_norm.shape[-1] == q.shape[-1]:
        return norm(w, q, layer.q_norm), norm(w, k, layer.k_norm)
    return (norm(w, q.flatten(-2), layer.q_norm).view_as(q), norm(w, k.flatten(-2), layer.k_norm).view_as(k))


def _act(w: ModelW, gate: torch.Tensor) -> torch.Tensor:
    return F.silu(gate) if w.arch.act == "silu" else F.gelu(gate, approximate="tanh")


def _cap(x: torch.Tensor, cap: float | None) -> torch.Tensor:
    """Soft-capping: cap · tanh(x / cap) (Gemma 2's attention scores, Gemma 2/3's logits)."""
    return x if cap is None else torch.tanh(x / cap) * cap


def attn_scale(w: ModelW) -> float:
    return w.arch.attn_scale if w.arch.attn_scale is not None else w.head_dim ** -0.5


def eager_attention(cap: float | None, sinks: torch.Tensor | None) -> Callable:
    """Decode attention as HF's eager code computes it, for what SDPA cannot do: soft-capped scores
    (Gemma 2) and attention sinks (gpt-oss: a per-head logit that joins the softmax and is dropped)."""
    def attention(q, k_cache, v_cache, kv_bias, kv_len: int, scale: float) -> torch.Tensor:
        scores = _cap(q @ k_cache[:, :, :kv_len].transpose(-1, -2) * scale, cap) + kv_bias[:, None, None, :kv_len]
        heads = None if sinks is None else sinks.view(1, q.shape[1], q.shape[2], 1)  # [1, KV, G, 1]
        return _softmax_with_sinks(scores, heads, q.dtype) @ v_cache[:, :, :kv_len]
    return attention


def _softmax_with_sinks(scores: torch.Tensor, sinks: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
    """softmax over the last dim in fp32; with sinks (each head's sink logit, shaped to broadcast against
    scores[..., :1]) one more column joins the softmax and is dropped after (HF subtracts the row max
    first, as here)."""
    if sinks is None:
        return torch.softmax(scores, dim=-1, dtype=torch.float32).to(dtype)
    sink = sinks.to(scores.dtype).expand(*scores.shape[:-1], 1)
    combined = torch.cat([scores, sink], dim=-1)
    combined = combined - combined.max(dim=-1, keepdim=True).values
    return torch.softmax(combined, dim=-1, dtype=combined.dtype)[..., :-1].to(dtype)


def window_bias(kv_bias: torch.Tensor, slot: torch.Tensor, window: int, kv_len: int) -> torch.Tensor:
    """kv_bias [B, S] restricted to the `window` newest slots up to `slot` ([B, kv_len]). A row's tokens sit in
    consecutive slots, so slot distance is position distance (HF: key j visible from i iff j > i - window)."""
    cols = torch.arange(kv_len, device=kv_bias.device)
    return kv_bias[:, :kv_len].masked_fill((cols <= slot - window)[None, :], float("-inf"))


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
    if layer.q_norm is not None:  # Qwen3, Gemma 3, OLMo 2: RMSNorm before rope
        q, k = _qk_norm(w, layer, q, k)
        q, k = _rope(q, cos, sin), _rope(k, cos, sin)
    elif layer.qkv is not None and cos is not None:  # q and k heads are adjacent: rotate them in one pass
        q, k = _rope(qkv[:, :, :hq + hk], cos, sin).split([hq, hk], dim=2)
    else:
        q, k = _rope(q, cos, sin), _rope(k, cos, sin)
    return q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)


def _residual(w: ModelW, x: torch.Tensor, out: torch.Tensor, out_norm: torch.Tensor | None) -> torch.Tensor:
    """x + the block's output, normed first where the family norms outputs (Gemma, OLMo 2), scaled (Granite)."""
    if out_norm is not None:
        out = norm(w, out, out_norm)
    return x + (out * w.arch.residual_scale if w.arch.residual_scale != 1.0 else out)


def _finish_layer(w: ModelW, layer: LayerW, x: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
    """Residual after attention ([B, T, H*D] → o_proj), then the gated MLP block."""
    x = _residual(w, x, linear(attn, layer.o), layer.attn_out_norm)
    h = x if layer.post_norm is None else norm(w, x, layer.post_norm)
    if layer.moe is not None:
        return _residual(w, x, moe_mlp(layer.moe, h, partial(_act, w)), layer.mlp_out_norm)
    if layer.gate_up is not None:
        gate, up = linear(h, layer.gate_up).chunk(2, dim=-1)
    else:
        gate, up = linear(h, layer.gate), linear(h, layer.up)
        if layer.gate_up_lora is not None:
            dg, du = fused_lora(h, layer.gate_up_lora)
            gate, up = (gate + dg).to(gate.dtype), (up + du).to(up.dtype)
    return _residual(w, x, linear(_act(w, gate) * up, layer.down), layer.mlp_out_norm)


def _head(w: ModelW, x: torch.Tensor) -> torch.Tensor:  # [B, hidden] → [B, V] fp32
    logits = linear(norm(w, x, w.norm), w.lm_head)
    if w.arch.logit_scale != 1.0:
        logits = logits / w.arch.logit_scale
    return _cap(logits, w.arch.logit_softcap).float()


def _embed(w: ModelW, tok: torch.Tensor) -> torch.Tensor:
    x = F.embedding(tok, w.embed)
    return x * w.arch.embed_scale if w.arch.embed_scale != 1.0 else x


def _attn_in_norm(w: ModelW, layer: LayerW, x: torch.Tensor) -> torch.Tensor:
    return x if layer.input_norm is None else norm(w, x, layer.input_norm)


def _rope_at(layer: LayerW, cos_table: torch.Tensor, sin_table: torch.Tensor, pos: torch.Tensor):
    """The layer's cos/sin at `pos` ([B] or [n, P]), broadcast over heads; (None, None) for NoPE."""
    if layer.rope is None:
        return None, None
    return cos_table[layer.rope][pos].unsqueeze(-2), sin_table[layer.rope][pos].unsqueeze(-2)


def prefill_attention(q, k, v, allowed: torch.Tensor, scale: float, softcap: float | None,
                      sinks: torch.Tensor | None = None) -> torch.Tensor:
    """q [n, H, P, D], k/v [n, KV, P, D] repeated to H, allowed [n, 1, P, P] bool."""
    if softcap is None and sinks is None:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, scale=scale)
    scores = _cap(q @ k.transpose(-1, -2) * scale, softcap).masked_fill(~allowed, float("-inf"))
    return _softmax_with_sinks(scores, None if sinks is None else sinks.view(1, -1, 1, 1), q.dtype) @ v


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
    causal = torch.ones(p, p, dtype=torch.bool, device=ids.device).tril()
    eye = torch.eye(p, dtype=torch.bool, device=ids.device)
    rows = torch.arange(p, device=ids.device)

    def allowed_mask(window: int | None) -> torch.Tensor:  # [n, 1, P, P]
        # Each query sees earlier real tokens (the `window` newest ones on a sliding layer); a pad query
        # sees itself, so no row is fully masked (a fully masked softmax gives NaN, which would reach
        # the cache and poison 0·NaN sums later).
        seen = causal if window is None else causal & (rows[:, None] - rows[None, :] < window)
        return ((seen & valid[:, None, :]) | eye)[:, None]

    masks = {window: allowed_mask(window) for window in {layer.window for layer in w.layers}}
    group = w.n_heads // w.n_kv_heads
    x = _embed(w, ids)
    for i, layer in enumerate(w.layers):
        cos, sin = _rope_at(layer, cos_table, sin_table, pos)  # [n, P, 1, D]
        q, k, v = _qkv(w, layer, _attn_in_norm(w, layer, x), cos, sin)
        store_kv(i, k, v)
        o = prefill_attention(q, k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1),
                              masks[layer.window], attn_scale(w), w.arch.attn_softcap, layer.sinks)
        x = _finish_layer(w, layer, x, o.transpose(1, 2).reshape(n, p, -1))
    return _head(w, x[:, -1])


def _attn_in(w: ModelW, layer: LayerW, x: torch.Tensor, pos: torch.Tensor, cos_table: torch.Tensor,
             sin_table: torch.Tensor, kv_cache: torch.Tensor, slot: torch.Tensor):
    """Norm, q/k/v and rope at `pos` for one decode token; writes k and v into the layer's cache
    column `slot` and returns q as [B, KV, group, D]: GQA without repeating the cache, the `group`
    query heads sharing a KV head become that head's query rows (HF maps query head h to KV head
    h // group)."""
    b = x.shape[0]
    cos, sin = _rope_at(layer, cos_table, sin_table, pos[:, None])  # [B, 1, 1, D]
    q, k, v = _qkv(w, layer, _attn_in_norm(w, layer, x), cos, sin)
    # index_put with a device-side slot (as gpt-fast writes its cache): inductor does it in place,
    # k and v in one write fused with rope, instead of two index_copy kernels per layer.
    kv_cache[:, :, :, slot] = torch.stack((k, v), dim=1)
    return q.reshape(b, w.n_kv_heads, w.n_heads // w.n_kv_heads, w.head_dim)


def _first(w: ModelW, layer: LayerW, tok: torch.Tensor, pos: torch.Tensor, cos_table: torch.Tensor,
           sin_table: torch.Tensor, kv_cache: torch.Tensor, slot: torch.Tensor, kv_bias: torch.Tensor):
    """Embedding, then layer 0's attention input; opens cache column `slot` to every row's attention."""
    kv_bias.index_fill_(1, slot, 0.0)
    x = _embed(w, tok)[:, None]  # [B, 1, hidden]
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
    layers = w.layers
    biases = {None: kv_bias}  # per sliding window: kv_bias with the older slots masked
    x, q = fns.first(w, layers[0], tok, pos, cos_table, sin_table, kv_cache[0], slot, kv_bias)
    for i, layer in enumerate(layers):
        if layer.window not in biases:
            biases[layer.window] = window_bias(kv_bias, slot, layer.window, kv_len)
        attention = fns.attention
        if w.arch.attn_softcap is not None or layer.sinks is not None:
            attention = eager_attention(w.arch.attn_softcap, layer.sinks)
        o = attention(q, kv_cache[i][:, 0], kv_cache[i][:, 1], biases[layer.window], kv_len, attn_scale(w))
        if i + 1 < len(layers):
            x, q = fns.between(w, layer, layers[i + 1], x, o, pos, cos_table, sin_table,
                               kv_cache[i + 1], slot)
    return fns.last(w, layers[-1], x, o, pos, slot)
