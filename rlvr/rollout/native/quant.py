"""Low-precision weights for the native decode step: FP8 matrices with row-wise scales, and 4-bit
(bitsandbytes NF4/FP4) bases read without going through bitsandbytes' Linear4bit forward.

FP8: a weight W [out, in] is stored as Q = W / s in float8 e4m3 with one fp32 scale s per output row
(s = amax(|W_row|) / 448, the e4m3 maximum), so W ≈ Q · s. A decode matmul quantises its input the
same way per row (token) on the fly and runs one `torch._scaled_mm` with both row-wise scales
(fp32 accumulation, output in the activation dtype). torchao's float8 row-wise inference path
calls the same `torch._scaled_mm`, so it would add a dependency, not speed.

4-bit: `Packed4bitW` holds what bitsandbytes' `dequantize_4bit` kernel needs, with the double-quantised
block scales (`compress_statistics`) expanded once when the weights are read, so a dequantisation is
one registered torch op (`torch.ops.bitsandbytes.dequantize_4bit`): traceable by torch.compile and
capturable in a CUDA graph.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

log = logging.getLogger("rlvr")

FP8 = torch.float8_e4m3fn
FP8_MAX = float(torch.finfo(FP8).max)  # 448
MIN_SCALE = 1e-12  # an all-zero row gets this scale instead of 0 (no 0/0)
FP8_MIN_CAPABILITY = (8, 9)  # Ada / Hopper: the first GPUs with FP8 tensor cores
# Hopper's fast FP8 accumulation (partial sums not promoted to fp32 as often): faster, less exact.
# Off by default; bench/rollout.py --fp8-fast-accum measures it.
FP8_FAST_ACCUM = False


def quantize_fp8_rows(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """w [..., out, in] → (q in float8 e4m3, same shape; scale [..., out] fp32), w ≈ q · scale per row."""
    scale = (w.abs().amax(dim=-1).float() / FP8_MAX).clamp(min=MIN_SCALE)
    q = (w.float() / scale[..., None]).clamp(-FP8_MAX, FP8_MAX).to(FP8)
    return q, scale


def dequantize_fp8_rows(q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The inverse of `quantize_fp8_rows` (up to its rounding): q · scale per row, in `dtype`."""
    return (q.float() * scale[..., None]).to(dtype)


def fp8_linear(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor,
               bias: torch.Tensor | None = None) -> torch.Tensor:
    """x [..., in] @ (weight · scale)ᵀ + bias, with x quantised to e4m3 per row on the fly: one
    `torch._scaled_mm` (fp32 accumulation, row-wise scales on both sides), output in x's dtype."""
    lead = x.shape[:-1]
    xq, x_scale = quantize_fp8_rows(x.reshape(-1, x.shape[-1]))
    # Row-wise scaling on CUDA takes a bf16 output only; other activation dtypes are cast back.
    y = torch._scaled_mm(xq, weight.t(), scale_a=x_scale[:, None], scale_b=scale[None, :],
                         out_dtype=torch.bfloat16, use_fast_accum=FP8_FAST_ACCUM and x.is_cuda)
    y = y.to(x.dtype)
    if bias is not None:
        y = y + bias
    return y.reshape(*lead, -1)


def fp8_supported(device: torch.device) -> bool:
    """Whether `device` has FP8 matmuls (CUDA compute capability ≥ 8.9)."""
    return device.type == "cuda" and torch.cuda.get_device_capability(device) >= FP8_MIN_CAPABILITY


@dataclass
class Packed4bitW:
    """A bitsandbytes 4-bit weight as the dequantisation kernel takes it."""

    data: torch.Tensor  # packed uint8, two 4-bit codes per byte
    absmax: torch.Tensor  # fp32 scale per block of `blocksize` values (double quantisation undone)
    blocksize: int
    quant_type: str  # "nf4" or "fp4"
    shape: tuple[int, int]  # [out, in]
    dtype: torch.dtype  # the compute dtype the weight dequantises to

    def dequantize(self) -> torch.Tensor:  # [out, in] in `dtype`
        return torch.ops.bitsandbytes.dequantize_4bit.default(
            self.data, self.absmax, self.blocksize, self.quant_type, list(self.shape), self.dtype)

    def numel(self) -> int:
        return self.shape[0] * self.shape[1]

    def bytes(self) -> int:
        return self.data.numel() * self.data.element_size() + self.absmax.numel() * 4


def is_packed_4bit(weight: torch.Tensor) -> bool:
    """A bitsandbytes Params4bit that has been quantised (it carries a quant_state) in the standard
    layout (not the AVX-512 CPU repacking bitsandbytes applies on some CPUs)."""
    state = getattr(weight, "quant_state", None)
    return (type(weight).__name__ == "Params4bit" and state is not None
            and not getattr(state, "packing_format_for_cpu", False))


def packed_4bit(weight: torch.Tensor) -> Packed4bitW:
    """The kernel inputs of a quantised bitsandbytes Params4bit (nested block scales expanded)."""
    import bitsandbytes.functional as bnbf  # only 4-bit models get here, and they imported it

    state = weight.quant_state
    absmax = state.absmax
    if state.nested:
        absmax = bnbf.dequantize_blockwise(state.absmax, state.state2) + state.offset
    return Packed4bitW(data=weight.data, absmax=absmax.float(), blocksize=state.blocksize,
                       quant_type=state.quant_type, shape=tuple(state.shape), dtype=state.dtype)
