"""Low-precision weights for the native decode step: FP8 matrices with row-wise scales, and 4-bit
(bitsandbytes NF4/FP4) bases read without going through bitsandbytes' Linear4bit forward.

FP8: every layer matrix as float8 e4m3 with one scale per output row, the decode matmul quantising
its input per token, through `torch._scaled_mm`: the quantiser and the matmul are `rlvr.models.fp8`'s,
the same that `model.load_in_fp8` stores a training base with. torchao's float8 row-wise inference
path calls the same `torch._scaled_mm`, so it would add a dependency, not speed. An FP8 training base
(`FrozenFP8Linear`) is read as `Fp8W` (its codes and scales, no copy): an FP8 rollout decodes with
it as it is where no adapter is merged into it, other rollouts dequantise it as they do a 4-bit base.

4-bit: `Packed4bitW` holds what bitsandbytes' `dequantize_4bit` kernel needs, with the double-quantised
block scales (`compress_statistics`) expanded once when the weights are read, so a dequantisation is
one registered torch op (`torch.ops.bitsandbytes.dequantize_4bit`): traceable by torch.compile and
capturable in a CUDA graph.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import ClassVar

import torch

from rlvr.models.fp8 import dequantize_fp8_rows

log = logging.getLogger("rlvr")


@dataclass
class Packed4bitW:
    """A bitsandbytes 4-bit weight as the dequantisation kernel takes it."""

    kind: ClassVar[str] = "4bit"
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


@dataclass
class Fp8W:
    """An FP8 training base (`rlvr.models.fp8.FrozenFP8Linear`): its e4m3 codes and row scales, read
    in place, with the same interface as `Packed4bitW`."""

    kind: ClassVar[str] = "fp8"
    data: torch.Tensor  # [out, in] float8 e4m3
    scale: torch.Tensor  # [out] fp32
    dtype: torch.dtype  # the compute dtype the weight dequantises to

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.data.shape)

    def dequantize(self) -> torch.Tensor:  # [out, in] in `dtype`
        return dequantize_fp8_rows(self.data, self.scale, self.dtype)

    def numel(self) -> int:
        return self.data.numel()

    def bytes(self) -> int:
        return self.data.numel() + self.scale.numel() * 4
