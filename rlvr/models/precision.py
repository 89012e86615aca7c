"""Which dtype the forward passes autocast to, chosen by what the device computes natively.

bf16 autocast halves activation memory and speeds up matmuls where the hardware has bf16 units
(CUDA; CPUs with AVX512-BF16 or AMX). A CPU without them (AVX2, most laptops and CI machines)
emulates bf16 several times slower than fp32, so there rlvr computes in fp32 and says so in one line.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass

import torch

log = logging.getLogger("rlvr")


def cpu_capability() -> str:
    """torch's word for this CPU's vector unit: 'AVX2', 'AVX512', 'DEFAULT', ..."""
    return torch.backends.cpu.get_cpu_capability()


def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX tiles: the CPUs whose bf16 matmuls are not emulated."""
    cpu = torch.cpu
    return bool(getattr(cpu, "_is_avx512_bf16_supported", lambda: False)()
                or getattr(cpu, "_is_amx_tile_supported", lambda: False)())


@dataclass(frozen=True)
class Precision:
    """The autocast dtype of forward passes (None: the weights' own dtype) and why it was chosen."""

    device_type: str
    autocast_dtype: torch.dtype | None
    reason: str

    def autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.autocast_dtype)


def choose_precision(device: torch.device | str, requested_bf16: bool) -> Precision:
    """bf16 autocast where asked and native; on a CPU, only where it has bf16 units (else fp32)."""
    device = torch.device(device)
    if device.type == "cpu":
        capability = cpu_capability()
        if not cpu_has_native_bf16():
            why = (f"this CPU ({capability}) has no native bf16 (AVX512-BF16 or AMX), where bf16 is emulated and "
                   "slower than fp32")
            if requested_bf16:
                return Precision("cpu", None, f"bf16: true ignored: {why}; computing in fp32")
            return Precision("cpu", None, f"computing in fp32: {why}")
        if requested_bf16:
            return Precision("cpu", torch.bfloat16, f"bf16 autocast: this CPU ({capability}) has native bf16")
        return Precision("cpu", None, "fp32 (bf16: false)")
    if requested_bf16:
        return Precision(device.type, torch.bfloat16, f"bf16 autocast on {device.type}")
    return Precision(device.type, None, "the weights' dtype (bf16: false)")


def resolve_precision(device: torch.device | str, requested_bf16: bool) -> Precision:
    """choose_precision, logging the one line when rlvr does not do what was asked."""
    p = choose_precision(device, requested_bf16)
    if requested_bf16 and p.autocast_dtype is None:
        log.warning("%s", p.reason)
    return p


def describe_precision(device: torch.device | str, requested_bf16: bool) -> str:
    """One line saying what forward passes compute in, for the demo and the logs."""
    return choose_precision(device, requested_bf16).reason
