"""FP8 row-wise matmul against bf16 at decode shapes: is the kernel what limits an FP8 rollout?

For each (rows, in, out) of a model's decode step, times F.linear in bf16, torch._scaled_mm on
pre-quantised operands (the kernel alone), and fp8.fp8_linear (activation quantised per row on the
fly, as the engine runs it) eager and compiled, each with and without fast accumulation. One JSON
line per shape, microseconds per call (CUDA events over `--iters` calls, after a warm-up). The
fp8_linear timings run outside a CUDA graph, so they include launch time; the engine's do not.

    python bench/fp8_matmul.py --shape llama-3.1-8b --rows 64
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from report import emit
from rollout import SHAPES

from rlvr.models import fp8


def timed_us(iters: int, fn, *args, **kwargs) -> float:
    for _ in range(3):
        fn(*args, **kwargs)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        fn(*args, **kwargs)
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) * 1000 / iters


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", choices=sorted(SHAPES), default="llama-3.1-8b")
    ap.add_argument("--rows", type=int, default=64)
    ap.add_argument("--iters", type=int, default=200)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    s = SHAPES[args.shape]
    h, inter = s["hidden_size"], s["intermediate_size"]
    head = h // s["num_attention_heads"]
    qkv = (s["num_attention_heads"] + 2 * s["num_key_value_heads"]) * head
    x16 = torch.randn(args.rows, h, device="cuda", dtype=torch.bfloat16)
    xi = torch.randn(args.rows, inter, device="cuda", dtype=torch.bfloat16)
    compiled = torch.compile(fp8.fp8_linear, fullgraph=True)
    for name, k, n in (("qkv", h, qkv), ("o", h, h), ("gate_up", h, 2 * inter), ("down", inter, h)):
        x = x16 if k == h else xi
        w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * 0.02
        wq, ws = fp8.quantize_fp8_rows(w)
        xq, xs = fp8.quantize_fp8_rows(x)
        row = {"shape": args.shape, "matrix": name, "rows": args.rows, "in": k, "out": n,
               "bf16_us": timed_us(args.iters, F.linear, x, w),
               "bf16_bytes_bound_us": n * k * 2 / 4.8e12 * 1e6, "fp8_bytes_bound_us": n * k / 4.8e12 * 1e6}
        for fast in (False, True):
            tag = "_fast" if fast else ""
            row[f"scaled_mm{tag}_us"] = timed_us(args.iters, torch._scaled_mm, xq, wq.t(), scale_a=xs[:, None],
                                                 scale_b=ws[None, :], out_dtype=torch.bfloat16, use_fast_accum=fast)
            fp8.FP8_FAST_ACCUM = fast
            row[f"fp8_linear{tag}_us"] = timed_us(args.iters, fp8.fp8_linear, x, wq, ws)
            row[f"fp8_linear_compiled{tag}_us"] = timed_us(args.iters, compiled, x, wq, ws)
        fp8.FP8_FAST_ACCUM = False
        emit({k2: round(v, 2) if isinstance(v, float) else v for k2, v in row.items()}, args.out)


if __name__ == "__main__":
    main()
