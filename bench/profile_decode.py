"""Where a native decode step's GPU time goes: kernels grouped by name, per decode step.

Runs the native engine without CUDA graphs (so each kernel is visible to the profiler) on the
bench/rollout.py model, and prints one JSON line: the kernel time and count per decode step and the
top kernels by GPU time per step (the difference of an N- and a 2N-token round, divided by N).
Eager launches add host gaps that graphs remove, so read the kernel
times, not the wall time.

    python bench/profile_decode.py --shape qwen2.5-1.5b --batch 64 --out bench/results/profile.json
"""

from __future__ import annotations

import argparse
import collections
import datetime
from pathlib import Path
from types import SimpleNamespace

import torch
from report import emit
from rollout import MERGE, SHAPES, build_model

from rlvr.rollout import SamplingParams
from rlvr.rollout.native import NativeEngine


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", choices=sorted(SHAPES), default="qwen2.5-1.5b")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--group", type=int, default=8)
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--merge", choices=sorted(MERGE), default="all")
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--top", type=int, default=30)
    ap.add_argument("--attention", choices=["triton", "sdpa"], default=None,
                    help="decode attention kernel (default: the engine's, sdpa)")
    ap.add_argument("--max-autotune", action="store_true",
                    help="let inductor time Triton GEMM templates against cuBLAS in the compiled step pieces")
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()
    if a.max_autotune:
        from torch._inductor import config as inductor_config

        inductor_config.max_autotune_gemm = True

    model, config = build_model(a.shape, torch.device("cuda"), torch.bfloat16)
    tokenizer = SimpleNamespace(pad_token_id=0, eos_token_id=None, decode=lambda ids: "")
    prompts = torch.randint(1, config.vocab_size, (a.batch // a.group, a.prompt),
                            generator=torch.Generator().manual_seed(1)).tolist()
    engine = NativeEngine(model, tokenizer, cuda_graphs=False, rollout_merge_lora=MERGE[a.merge],
                          compile=not a.no_compile, attention=a.attention)

    def kernels_of_round(new_tokens: int) -> dict[str, list[float]]:
        params = SamplingParams(max_new_tokens=new_tokens, temperature=1.0)
        engine.generate(prompts, a.group, params, seed=0)  # warm-up and compile
        torch.cuda.synchronize()
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            engine.generate(prompts, a.group, params, seed=0)
            torch.cuda.synchronize()
        kernels: dict[str, list[float]] = collections.defaultdict(list)
        for ev in prof.events():
            if ev.device_type == torch.autograd.DeviceType.CUDA:
                kernels[ev.name].append(ev.device_time_total)
        return kernels

    # Two rounds, N and 2N tokens: their difference is N decode steps without the round's one-off work
    # (LoRA merge, prefill, first sample), which a single round would spread over its steps.
    short, long = kernels_of_round(a.new_tokens), kernels_of_round(2 * a.new_tokens)
    steps = a.new_tokens
    per_step = {name: ((sum(long[name]) - sum(short.get(name, []))) / steps,
                       (len(long[name]) - len(short.get(name, []))) / steps) for name in long}
    top = sorted(per_step.items(), key=lambda kv: -kv[1][0])[: a.top]
    emit({
        "bench": "profile_decode", "shape": a.shape, "batch": a.batch, "merge_lora": a.merge,
        "compile": not a.no_compile, "max_autotune": a.max_autotune,
        "attention": a.attention or "default", "decode_steps": steps,
        "kernel_us_per_step": round(sum(us for us, _ in per_step.values()), 1),
        "kernels_per_step": round(sum(n for _, n in per_step.values()), 1),
        "top": [{"name": name[:90], "us_per_step": round(us, 1), "calls_per_step": round(n, 1)}
                for name, (us, n) in top],
        "device": torch.cuda.get_device_name(), "torch": torch.__version__,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }, str(a.out) if a.out else None)


if __name__ == "__main__":
    main()
