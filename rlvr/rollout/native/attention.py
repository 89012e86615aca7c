"""Decode attention: one query token per row against its KV cache, split over the cache (flash-decoding).

At decode time attention reads the cache and little else, so its speed is the bandwidth it keeps
busy. A batch of 64 rows with 2 KV heads gives a fused SDPA kernel 128 (row, head) tiles, one wave
on an H100's 132 SMs each walking the whole cache, with query tiles padded from 6 to 64 rows; here
each (row, KV head) is cut into `splits` pieces of the cache that run in parallel and a second small
kernel merges their partial softmaxes. The `group` query heads that share a KV head are one tile
(GQA without repeating the cache).

`DecodeAttention` runs these Triton kernels on CUDA and torch's SDPA everywhere else (CPU, head
sizes the kernel does not take); both compute softmax(q·kᵀ·scale + bias)·v over slots [0, kv_len).
The engine uses it only when asked (`attention="triton"`): on an H200 at 64 rows × 640 slots it was
no faster than cuDNN's SDPA; long caches with few rows are where splitting should pay (unmeasured).
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs: SDPA serves
    triton = None

log = logging.getLogger("rlvr")

BLOCK = 64  # cache slots per inner step
MIN_SLOTS_PER_SPLIT = 128  # below this a split costs more in launch and merge than it saves


def sdpa_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, kv_bias: torch.Tensor,
                   kv_len: int, scale: float) -> torch.Tensor:
    """The reference: q [B, KV, G, D], caches [B, KV, S, D], kv_bias [B, S] → [B, KV, G, D]."""
    return F.scaled_dot_product_attention(q, k_cache[:, :, :kv_len], v_cache[:, :, :kv_len],
                                          attn_mask=kv_bias[:, None, None, :kv_len], scale=scale)


def triton_supported(q: torch.Tensor) -> bool:
    d, g = q.shape[-1], q.shape[-2]
    return (triton is not None and q.is_cuda and d in (16, 32, 64, 128, 256) and g <= 64
            and q.dtype in (torch.bfloat16, torch.float16, torch.float32))


def num_splits(rows_heads: int, kv_len: int, sms: int) -> int:
    """Enough splits for about two waves of programs, each at least MIN_SLOTS_PER_SPLIT slots long."""
    want = max(1, _cdiv(2 * sms, rows_heads))
    return max(1, min(want, kv_len // MIN_SLOTS_PER_SPLIT))


def triton_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, kv_bias: torch.Tensor,
                     kv_len: int, scale: float) -> torch.Tensor:
    """Same contract as `sdpa_attention`, as a split-cache Triton kernel and a merge kernel."""
    b, kv, g, d = q.shape
    sms = torch.cuda.get_device_properties(q.device).multi_processor_count if q.is_cuda else 132
    splits = num_splits(b * kv, kv_len, sms)
    split_len = _cdiv(_cdiv(kv_len, splits), BLOCK) * BLOCK  # a multiple of BLOCK
    splits = _cdiv(kv_len, split_len)
    gp = max(16, triton.next_power_of_2(g))  # tl.dot needs at least 16 rows
    acc = torch.empty(b, kv, splits, gp, d, dtype=torch.float32, device=q.device)
    m = torch.empty(b, kv, splits, gp, dtype=torch.float32, device=q.device)
    lse = torch.empty_like(m)
    out = torch.empty_like(q)
    _split_kernel[(b * kv, splits)](
        q, k_cache, v_cache, kv_bias, acc, m, lse, kv_len, split_len, scale,
        q.stride(0), q.stride(1), q.stride(2), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2), kv_bias.stride(0),
        KV=kv, G=g, GP=gp, D=d, BLOCK=BLOCK, IEEE=q.dtype == torch.float32, num_warps=4, num_stages=2)
    _merge_kernel[(b * kv,)](acc, m, lse, out, out.stride(0), out.stride(1), out.stride(2),
                             KV=kv, G=g, GP=gp, D=d, SPLITS=splits, SP=triton.next_power_of_2(splits),
                             num_warps=4)
    return out


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


class DecodeAttention:
    """The engine's attention: Triton where it applies, SDPA otherwise, and SDPA for good (one log
    line) if the kernel ever fails to build or run: speed is never a reason to fail a round."""

    def __init__(self, use_triton: bool = True):
        self.use_triton = use_triton and triton is not None

    def __call__(self, q, k_cache, v_cache, kv_bias, kv_len: int, scale: float) -> torch.Tensor:
        if self.use_triton and triton_supported(q):
            try:
                return triton_attention(q, k_cache, v_cache, kv_bias, kv_len, scale)
            except torch.OutOfMemoryError:
                raise
            except Exception as e:  # noqa: BLE001 - triton compile errors have no common base class
                log.warning("native rollout: Triton decode attention failed (%s); using SDPA",
                            str(e).splitlines()[0][:200] if str(e) else type(e).__name__)
                self.use_triton = False
        return sdpa_attention(q, k_cache, v_cache, kv_bias, kv_len, scale)


if triton is not None:

    @triton.jit
    def _split_kernel(Q, K, V, Bias, Acc, M, L, kv_len, split_len, scale,
                      sq_b, sq_h, sq_g, sk_b, sk_h, sk_s, sv_b, sv_h, sv_s, sbias_b,
                      KV: tl.constexpr, G: tl.constexpr, GP: tl.constexpr, D: tl.constexpr,
                      BLOCK: tl.constexpr, IEEE: tl.constexpr):
        """One (row, KV head, split): an online softmax over slots [start, end) for its G query heads."""
        bh = tl.program_id(0)
        sp = tl.program_id(1)
        b = bh // KV
        h = bh % KV
        rows = tl.arange(0, GP)
        cols = tl.arange(0, D)
        q = tl.load(Q + b * sq_b + h * sq_h + rows[:, None] * sq_g + cols[None, :], mask=rows[:, None] < G, other=0.0)
        start = sp * split_len
        end = tl.minimum(start + split_len, kv_len)
        m_i = tl.full([GP], float("-inf"), tl.float32)
        l_i = tl.zeros([GP], tl.float32)
        acc = tl.zeros([GP, D], tl.float32)
        for s0 in range(start, end, BLOCK):
            s = s0 + tl.arange(0, BLOCK)
            valid = s < end
            k = tl.load(K + b * sk_b + h * sk_h + s[:, None] * sk_s + cols[None, :], mask=valid[:, None], other=0.0)
            if IEEE:
                qk = tl.dot(q, tl.trans(k), input_precision="ieee")
            else:
                qk = tl.dot(q, tl.trans(k))
            bias = tl.load(Bias + b * sbias_b + s, mask=valid, other=float("-inf")).to(tl.float32)
            qk = qk * scale + bias[None, :]
            m_new = tl.maximum(m_i, tl.max(qk, 1))
            # A block of only masked slots leaves m at -inf: shift by 0 then, so exp gives 0, not NaN.
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
            p = tl.exp(qk - m_safe[:, None])
            alpha = tl.exp(m_i - m_safe)
            l_i = l_i * alpha + tl.sum(p, 1)
            v = tl.load(V + b * sv_b + h * sv_h + s[:, None] * sv_s + cols[None, :], mask=valid[:, None], other=0.0)
            if IEEE:
                acc = acc * alpha[:, None] + tl.dot(p, v, input_precision="ieee")
            else:
                acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
            m_i = m_new
        base = bh * tl.num_programs(1) + sp
        tl.store(Acc + (base * GP + rows[:, None]) * D + cols[None, :], acc)
        tl.store(M + base * GP + rows, m_i)
        tl.store(L + base * GP + rows, l_i)

    @triton.jit
    def _merge_kernel(Acc, M, L, Out, so_b, so_h, so_g, KV: tl.constexpr, G: tl.constexpr, GP: tl.constexpr,
                      D: tl.constexpr, SPLITS: tl.constexpr, SP: tl.constexpr):
        """Merge one (row, KV head)'s split partials: Σ e^(m_i - M)·acc_i / Σ e^(m_i - M)·l_i."""
        bh = tl.program_id(0)
        b = bh // KV
        h = bh % KV
        sps = tl.arange(0, SP)
        rows = tl.arange(0, GP)
        cols = tl.arange(0, D)
        in_range = sps < SPLITS
        idx = (bh * SPLITS + sps[:, None]) * GP + rows[None, :]  # [SP, GP]
        m = tl.load(M + idx, mask=in_range[:, None], other=float("-inf"))
        l_part = tl.load(L + idx, mask=in_range[:, None], other=0.0)
        m_all = tl.max(m, 0)
        m_all = tl.where(m_all == float("-inf"), 0.0, m_all)
        w = tl.exp(m - m_all[None, :])  # [SP, GP]
        denom = tl.sum(w * l_part, 0)
        acc = tl.load(Acc + idx[:, :, None] * D + cols[None, None, :], mask=in_range[:, None, None], other=0.0)
        o = tl.sum(acc * w[:, :, None], 0) / denom[:, None]
        tl.store(Out + b * so_b + h * so_h + rows[:, None] * so_g + cols[None, :], o.to(Out.dtype.element_ty),
                 mask=rows[:, None] < G)
