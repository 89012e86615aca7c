"""FP8 weights with one scale per output row: the quantiser, the FP8 matmul, and the frozen FP8 Linear
that `model.load_in_fp8` puts in place of a decoder's Linear layers (the native engine decodes with
the same quantiser and matmul: `rlvr.rollout.native.quant`).

A weight W [out, in] is stored as Q = W / s in float8 e4m3 with one fp32 scale s per output row
(s = amax(|W_row|) / 448, the e4m3 maximum), so W ≈ Q · s: a value's rounding error is at most
2^-4 of it (half an ulp of a 3-bit mantissa), plus 2^-10 · s near zero (half the smallest
subnormal step). The FP8 matmul quantises its input the same way per row (token) on the fly and
runs one `torch._scaled_mm` with both row-wise scales (fp32 accumulation).

Why a module of our own for the frozen base (`FrozenFP8Linear`) rather than a library's:
- torchao's float8 (Float8WeightOnlyConfig, Float8Linear) is the well-kept implementation, but it is
  not a dependency of rlvr, and peft's LoRA wraps torchao weights for int8 only (peft 0.21,
  `TorchaoLoraLinear`); its row-wise float8 path calls the same `torch._scaled_mm` as here;
- transformers' FineGrainedFP8 (FP8Linear, with an input backward for adapters) scales per 128×128
  block or per tensor and runs its matmul as a Triton kernel fetched from the Hugging Face hub
  through the `kernels` package: CUDA with network access only;
- what LoRA needs is small: a frozen weight, and one autograd function whose backward needs only the
  FP8 weight and its scales, so neither a 16-bit copy of W nor the layer's input is kept for the
  backward pass (autograd through `F.linear(x, dequantised W)` would keep a 16-bit copy of every
  layer's W alive until backward: the memory FP8 was meant to save).
It subclasses `torch.nn.Linear`, so peft's default LoRA dispatch wraps it (also when an adapter is
loaded from disk), and it has a `compute_dtype`, which peft reads for the adapters' dtype.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

log = logging.getLogger("rlvr")

FP8 = torch.float8_e4m3fn
FP8_MAX = float(torch.finfo(FP8).max)  # 448
MIN_SCALE = 1e-12  # an all-zero row gets this scale instead of 0 (no 0/0)
FP8_MIN_CAPABILITY = (8, 9)  # Ada / Hopper: the first GPUs with FP8 tensor cores
# Hopper's fast FP8 accumulation (partial sums not promoted to fp32 as often): faster, less exact.
# Off by default; bench/rollout.py --fp8-fast-accum measures it.
FP8_FAST_ACCUM = False
# MoE routers stay in the model dtype: a token's expert choice jumps with rounding (FP8 rollouts keep them too).
ROUTER_NAMES = ("gate", "router")


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
        y = y + bias.to(y.dtype)
    return y.reshape(*lead, -1)


def fp8_supported(device: torch.device) -> bool:
    """Whether `device` has FP8 matmuls (CUDA compute capability ≥ 8.9)."""
    return device.type == "cuda" and torch.cuda.get_device_capability(device) >= FP8_MIN_CAPABILITY


class FrozenFP8Matmul(torch.autograd.Function):
    """y = x @ (Q · s)ᵀ + b with a frozen FP8 weight: the backward gives x its gradient through the
    dequantised weight (made there, one layer at a time) and nothing to Q, s or b. Only Q and s, the
    module's own tensors, are saved for backward."""

    @staticmethod
    def forward(ctx, x, weight, scale, bias, scaled_mm: bool):
        ctx.save_for_backward(weight, scale)
        return frozen_fp8_forward(x, weight, scale, bias, scaled_mm)

    @staticmethod
    def backward(ctx, grad_y):
        weight, scale = ctx.saved_tensors
        grad_x = grad_y @ dequantize_fp8_rows(weight, scale, grad_y.dtype)  # [..., out] @ [out, in]
        return grad_x, None, None, None, None


def frozen_fp8_forward(x, weight, scale, bias, scaled_mm: bool) -> torch.Tensor:
    """`fp8_linear` on FP8 tensor cores, or the weight dequantised to x's dtype for this one matmul."""
    if scaled_mm:
        return fp8_linear(x, weight, scale, bias)
    return F.linear(x, dequantize_fp8_rows(weight, scale, x.dtype), None if bias is None else bias.to(x.dtype))


class FrozenFP8Linear(torch.nn.Linear):
    """A frozen Linear whose weight is float8 e4m3 [out, in] with an fp32 scale per output row
    (`weight_scale` [out]); the bias, if any, stays in `compute_dtype`. With `scaled_mm` the matmul
    runs on FP8 tensor cores (`fp8_linear`: the input quantised per token), else the weight is
    dequantised to the input's dtype for each matmul. Nothing in it trains."""

    def __init__(self, weight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None,
                 compute_dtype: torch.dtype, scaled_mm: bool = False):
        torch.nn.Module.__init__(self)  # not nn.Linear's: it would allocate a full-precision weight
        self.out_features, self.in_features = weight.shape
        self.weight = torch.nn.Parameter(weight, requires_grad=False)
        self.weight_scale = torch.nn.Parameter(scale, requires_grad=False)
        self.bias = None if bias is None else torch.nn.Parameter(bias, requires_grad=False)
        self.compute_dtype = compute_dtype  # peft makes the adapters in this dtype
        self.scaled_mm = scaled_mm

    @classmethod
    def from_linear(cls, linear: torch.nn.Linear, compute_dtype: torch.dtype,
                    scaled_mm: bool = False) -> FrozenFP8Linear:
        q, scale = quantize_fp8_rows(linear.weight.detach())
        bias = None if linear.bias is None else linear.bias.detach().to(compute_dtype)
        return cls(q, scale, bias, compute_dtype, scaled_mm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and x.requires_grad:
            return FrozenFP8Matmul.apply(x, self.weight, self.weight_scale, self.bias, self.scaled_mm)
        return frozen_fp8_forward(x, self.weight, self.weight_scale, self.bias, self.scaled_mm)

    def dequantized_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return dequantize_fp8_rows(self.weight.detach(), self.weight_scale.detach(), dtype)

    def reset_parameters(self) -> None:  # nn.Linear's would re-initialise the frozen weight
        pass

    def _apply(self, fn, recurse=True):
        # .to(dtype), .half(), .float() cast every floating tensor, float8 included: the codes would become
        # numbers without their scale, and the scales would be rounded. Here only the device may change.
        return super()._apply(lambda t: t.to(fn(t[:0]).device), recurse)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"float8_e4m3fn rows, compute_dtype={str(self.compute_dtype).removeprefix('torch.')}, "
                f"scaled_mm={self.scaled_mm}")


def quantize_linears_fp8(model: torch.nn.Module, compute_dtype: torch.dtype,
                         device: torch.device | None = None, scaled_mm: bool | None = None) -> torch.nn.Module:
    """Replace every Linear of the decoder (not lm_head, not an MoE router) by a `FrozenFP8Linear`, each
    moved to `device` before it is quantised (so the device never holds more than one 16-bit matrix).
    scaled_mm: matmuls through `torch._scaled_mm` (default: where `device` has FP8 tensor cores)."""
    device = torch.device(device) if device is not None else next(model.parameters()).device
    if scaled_mm is None:
        scaled_mm = fp8_supported(device)
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is not torch.nn.Linear or name == "lm_head" or name in ROUTER_NAMES:
                continue
            setattr(parent, name, FrozenFP8Linear.from_linear(child.to(device), compute_dtype, scaled_mm))
    return model


def describe_fp8_base(model: torch.nn.Module) -> str:
    """One line: how many layers are FP8, their bytes against 16-bit, and how their matmuls run."""
    layers = [m for m in model.modules() if isinstance(m, FrozenFP8Linear)]
    if not layers:
        return "no FP8 layers"
    fp8_bytes = sum(m.weight.numel() + 4 * m.weight_scale.numel() for m in layers)
    bf16_bytes = sum(2 * m.weight.numel() for m in layers)
    how = ("torch._scaled_mm on FP8 tensor cores" if layers[0].scaled_mm else
           "the weight dequantised per matmul (no FP8 matmuls on this device)")
    return (f"model.load_in_fp8: {len(layers)} Linear layers in float8 e4m3 with row scales "
            f"({_size(fp8_bytes)} instead of {_size(bf16_bytes)} in bf16); matmuls through {how}")


def _size(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**29 else f"{n / 2**20:.1f} MiB"
