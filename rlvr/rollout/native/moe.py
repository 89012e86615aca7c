"""Mixture-of-experts MLP for the native decode step: router top-k on the device, experts as grouped GEMMs.

Qwen3-MoE and Mixtral (transformers 5 layout: each layer's experts stacked as gate_up [E, 2I, H] and
down [E, H, I], a router weight [E, H]). Per token: softmax over the router logits in fp32, the top k,
renormalised (Mixtral always, Qwen3 when norm_topk_prob). The k·N (token, expert) assignments are
sorted by expert, run as two `torch._grouped_mm` calls (one group per expert, offsets computed on the
device), and put back in token order; nothing reads a tensor's value on the host, so the step stays
capturable as a CUDA graph. Where grouped GEMMs are not available for the device and dtype, every
expert runs on every token with the routing weight zero off its tokens (the same result, sync-free,
E/k times the work: a fallback for tests, not for speed).

LoRA on the experts (peft's target_parameters: a rank-r adapter per expert) runs as two more grouped
GEMMs per adapted weight, on the same groups: y += s · (x @ A_eᵀ) @ B_eᵀ. It is never merged into a
copy: a copy of every expert would cost the memory of the experts themselves (57 GiB on Qwen3-30B-A3B),
the adapters read ~r/hidden of the experts' bytes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class ExpertLora:
    """One LoRA adapter of a stacked expert weight, as grouped-GEMM operands: y += scaling · (x @ a[e]) @ b[e]
    for the tokens of expert e. The rank is padded with zeros to a multiple of 8 (16-byte rows in bf16,
    which grouped GEMMs need), which adds exact zeros."""

    a: torch.Tensor  # [E, in, r]
    b: torch.Tensor  # [E, r, out]
    scaling: float


@dataclass
class MoeW:
    router: torch.Tensor  # [E, hidden]
    gate_up: torch.Tensor  # [E, 2·I, hidden]: gate rows then up rows
    down: torch.Tensor  # [E, hidden, I]
    top_k: int
    renormalize: bool  # divide the top-k probabilities by their sum
    weights_in_model_dtype: bool  # Qwen3-MoE casts the routing weights to the model dtype; Mixtral keeps fp32
    grouped: bool = True  # experts as torch._grouped_mm (decided when read: `grouped_mm_supported`)
    # gpt-oss: biases everywhere, experts stored [E, in, out], the router soft-maxes its top k logits,
    # and gate/up are interleaved columns combined as (up + 1) · gate · σ(α · gate) after clamping at `limit`.
    router_bias: torch.Tensor | None = None  # [E]
    gate_up_bias: torch.Tensor | None = None  # [E, 2·I]
    down_bias: torch.Tensor | None = None  # [E, hidden]
    transposed: bool = False
    softmax_after_topk: bool = False
    clamped_glu: tuple[float, float] | None = None  # (alpha, limit)
    gate_up_lora: tuple[ExpertLora, ...] = ()  # active adapters of gate_up and of down (peft's target_parameters)
    down_lora: tuple[ExpertLora, ...] = ()

    @property
    def n_experts(self) -> int:
        return self.router.shape[0]

    def read_bytes(self, rows: int = 1) -> float:
        """Bytes of the router and of the experts a step of `rows` tokens reads: the k experts of one token,
        or for several rows the expected number of distinct experts E·(1 − (1 − k/E)^rows) under uniform
        routing (at 64 rows × top 8 of 128, 127 of them: nearly every expert)."""
        per_expert = sum(t[0].numel() * t.element_size() for t in (self.gate_up, self.down))
        per_expert += sum(t[0].numel() * t.element_size() for lora in (*self.gate_up_lora, *self.down_lora)
                          for t in (lora.a, lora.b))
        e = self.n_experts
        touched = e * (1 - (1 - self.top_k / e) ** rows)
        return self.router.numel() * self.router.element_size() + touched * per_expert


def route(moe: MoeW, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """h [N, hidden] → (weights [N, k], experts [N, k]) as HF's top-k routers compute them."""
    logits = F.linear(h, moe.router, moe.router_bias)
    if moe.softmax_after_topk:
        top, experts = torch.topk(logits, moe.top_k, dim=-1)
        return torch.softmax(top, dim=-1, dtype=top.dtype), experts
    probs = torch.softmax(logits.float(), dim=-1)
    weights, experts = torch.topk(probs, moe.top_k, dim=-1)
    if moe.renormalize:
        weights = weights / weights.sum(dim=-1, keepdim=True)
    return (weights.to(h.dtype) if moe.weights_in_model_dtype else weights), experts


def grouped_mm_supported(x: torch.Tensor) -> bool:
    """Whether torch._grouped_mm runs here without reading the offsets on the host: CPU, or bf16 on the GPUs
    its CUTLASS kernels are built for (Hopper sm90, datacenter Blackwell sm100). Elsewhere torch falls back
    to a loop over the groups that copies the offsets to the host: a sync, which no CUDA graph can capture."""
    if not hasattr(torch, "_grouped_mm"):
        return False
    if x.device.type == "cpu":
        return True
    return (x.device.type == "cuda" and x.dtype == torch.bfloat16
            and torch.cuda.get_device_capability(x.device)[0] in (9, 10))


def moe_mlp(moe: MoeW, h: torch.Tensor, act) -> torch.Tensor:
    """The MoE block on h [..., hidden] (act: the gate activation), in h's dtype."""
    shape = h.shape
    x = h.reshape(-1, shape[-1])
    weights, experts = route(moe, x)
    if moe.grouped:
        y = _grouped(moe, x, weights, experts, act)
    else:
        y = _dense(moe, x, weights, experts, act)
    return y.reshape(shape)


def _glu(moe: MoeW, gate_up: torch.Tensor, act) -> torch.Tensor:
    if moe.clamped_glu is None:
        gate, up = gate_up.chunk(2, dim=-1)
        return act(gate) * up
    alpha, limit = moe.clamped_glu
    gate, up = gate_up[..., ::2].clamp(max=limit), gate_up[..., 1::2].clamp(min=-limit, max=limit)
    return (up + 1) * (gate * torch.sigmoid(gate * alpha))


def _as_mat_b(moe: MoeW, weight: torch.Tensor) -> torch.Tensor:
    """[E, in, out] for x @ W per group (HF stores [E, out, in] except gpt-oss)."""
    return weight if moe.transposed else weight.transpose(-1, -2)


def _grouped(moe: MoeW, x: torch.Tensor, weights: torch.Tensor, experts: torch.Tensor, act) -> torch.Tensor:
    n, k = experts.shape
    flat = experts.reshape(-1)  # assignment a = token a // k, its (a % k)-th expert
    order = torch.argsort(flat, stable=True)
    counts = torch.zeros(moe.n_experts, dtype=torch.int32, device=x.device)
    counts.scatter_add_(0, flat, torch.ones_like(flat, dtype=torch.int32))
    offsets = torch.cumsum(counts, 0, dtype=torch.int32)  # end of each expert's group; no host read
    xs = x[order // k]  # [N·k, hidden], grouped by expert
    gate_up = _grouped_linear(xs, _as_mat_b(moe, moe.gate_up), moe.gate_up_lora, offsets)
    if moe.gate_up_bias is not None:
        gate_up = gate_up + moe.gate_up_bias[flat[order]]
    ys = _grouped_linear(_glu(moe, gate_up, act), _as_mat_b(moe, moe.down), moe.down_lora, offsets)  # [N·k, hidden]
    if moe.down_bias is not None:
        ys = ys + moe.down_bias[flat[order]]
    y = torch.empty_like(ys).index_copy_(0, order, ys).view(n, k, -1)  # back to (token, slot) order
    return (y * weights[..., None]).sum(dim=1).to(x.dtype)


def _grouped_linear(xs: torch.Tensor, weight: torch.Tensor, loras: tuple[ExpertLora, ...],
                    offsets: torch.Tensor) -> torch.Tensor:
    """xs [rows, in] grouped by expert (group e ends at offsets[e]) times its expert's weight [E, in, out],
    plus each adapter's low-rank update on the same groups."""
    y = torch._grouped_mm(xs, weight, offs=offsets)
    for lora in loras:
        low = torch._grouped_mm(torch._grouped_mm(xs, lora.a, offs=offsets), lora.b, offs=offsets)
        y = y + low * lora.scaling
    return y


def _dense(moe: MoeW, x: torch.Tensor, weights: torch.Tensor, experts: torch.Tensor, act) -> torch.Tensor:
    out = torch.zeros(x.shape, dtype=weights.dtype if not moe.weights_in_model_dtype else x.dtype, device=x.device)
    for e in range(moe.n_experts):
        w_e = (weights * (experts == e)).sum(dim=-1, keepdim=True)  # [N, 1], 0 where e is not chosen
        gate_up = _expert_linear(moe, x, moe.gate_up[e], _row(moe.gate_up_bias, e), moe.gate_up_lora, e)
        y = _expert_linear(moe, _glu(moe, gate_up, act), moe.down[e], _row(moe.down_bias, e), moe.down_lora, e)
        out = out + y * w_e
    return out.to(x.dtype)


def _expert_linear(moe: MoeW, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                   loras: tuple[ExpertLora, ...], e: int) -> torch.Tensor:
    y = (x @ weight + (0 if bias is None else bias)) if moe.transposed else F.linear(x, weight, bias)
    for lora in loras:
        y = y + (x @ lora.a[e]) @ lora.b[e] * lora.scaling
    return y


def _row(t: torch.Tensor | None, e: int) -> torch.Tensor | None:
    return None if t is None else t[e]
