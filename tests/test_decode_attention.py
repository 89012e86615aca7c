"""The split-cache decode attention kernel against torch's SDPA, and how the work is split."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from rlvr.rollout.native.attention import DecodeAttention, num_splits, sdpa_attention

# (rows, KV heads, query heads per KV head, head dim, cache slots, attended length)
CASES = [(3, 2, 6, 64, 320, 300), (2, 1, 4, 16, 128, 70), (4, 2, 6, 128, 640, 640), (5, 2, 1, 32, 256, 193)]


def _inputs(b, kv, g, d, s, kv_len, dtype=torch.float32, device="cpu"):
    gen = torch.Generator().manual_seed(b * 100 + s)
    q, k, v = (torch.randn(shape, generator=gen).to(device, dtype)
               for shape in ((b, kv, g, d), (b, kv, s, d), (b, kv, s, d)))
    bias = torch.zeros(b, s)
    bias[0, :5] = float("-inf")  # left padding
    bias[-1, : min(kv_len // 2, 150)] = float("-inf")  # a row whose first split is all padding
    bias[:, kv_len - 1] = float("-inf")  # the slot being written is not attended yet
    return q, k, v, bias.to(device, dtype)


def test_num_splits_fills_the_gpu_but_keeps_splits_long():
    assert num_splits(128, 640, 132) == 3  # two waves want 3 programs per (row, head); 640 // 128 allows 5
    assert num_splits(128, 200, 132) == 1  # too short to split
    assert num_splits(8, 4096, 132) == 32  # few rows, long cache: many splits
    assert num_splits(1024, 4096, 132) == 1  # the rows alone fill the GPU


def test_cpu_uses_sdpa():
    q, k, v, bias = _inputs(*CASES[0])
    out = DecodeAttention()(q, k, v, bias, CASES[0][-1], 0.125)
    torch.testing.assert_close(out, sdpa_attention(q, k, v, bias, CASES[0][-1], 0.125), atol=0, rtol=0)


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="needs triton (its interpreter runs on CPU)")
def test_kernel_in_triton_interpreter_matches_sdpa():
    """The kernels' arithmetic, run by Triton's CPU interpreter (which must be chosen before import)."""
    script = textwrap.dedent(f"""
        import torch, sys
        sys.path.insert(0, {os.path.dirname(__file__)!r})
        from test_decode_attention import CASES, _inputs
        from rlvr.rollout.native.attention import sdpa_attention, triton_attention
        for case in CASES:
            q, k, v, bias = _inputs(*case)
            kv_len, scale = case[-1], case[3] ** -0.5
            ref = sdpa_attention(q, k, v, bias, kv_len, scale)
            out = triton_attention(q, k, v, bias, kv_len, scale)
            torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
        print("ok")
    """)
    env = dict(os.environ, TRITON_INTERPRET="1")
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("case", CASES)
def test_kernel_on_cuda_matches_sdpa(case, dtype):
    from rlvr.rollout.native.attention import triton_attention

    q, k, v, bias = _inputs(*case, dtype=dtype, device="cuda")
    kv_len, scale = case[-1], case[3] ** -0.5
    ref = sdpa_attention(q.float(), k.float(), v.float(), bias.float(), kv_len, scale)
    out = triton_attention(q, k, v, bias, kv_len, scale)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(out.float(), ref, atol=tol, rtol=tol)
