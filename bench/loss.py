"""GRPO loss forward+backward: eager full logits vs rlvr's chunked log-probs vs Liger's fused loss.

Same hidden states, lm_head and completions for each; prints one JSON line with each method's extra
peak memory (over the inputs already on the GPU) and median time, and the ratios to eager.
Shape defaults: B=8, T=4096, H=1536, V=151,936 (Qwen2.5-1.5B's head), bf16, lm_head frozen (LoRA).
Usage: python bench/loss.py [--batch 8 --seq 4096 --hidden 1536 --vocab 151936 --out FILE]
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import time

import torch
from report import emit

from rlvr.grpo.objective import StepShape, aggregate, per_token_loss
from rlvr.models.logprobs import chunked_logprobs


def grpo_loss_from_logps(logps, old, adv, mask):
    out = per_token_loss(logps, old, adv, mask)
    shape = StepShape(num_sequences=mask.shape[0], num_tokens=int(mask.sum()), num_micro_batches=1,
                      max_completion_length=mask.shape[1])
    return aggregate(out.loss, mask, "dapo", shape)


def eager(h, w, ids, old, adv, mask):
    logits = (h @ w.t()).float()  # [B, T, V]: what a plain implementation holds
    logps = torch.log_softmax(logits, dim=-1).gather(-1, ids.unsqueeze(-1)).squeeze(-1)
    return grpo_loss_from_logps(logps, old, adv, mask)


def chunked(h, w, ids, old, adv, mask):
    b, t, hd = h.shape
    logps, _ = chunked_logprobs(h.reshape(-1, hd), w, ids.reshape(-1))
    return grpo_loss_from_logps(logps.view(b, t), old, adv, mask)


def liger_fn():
    from liger_kernel.chunked_loss import LigerFusedLinearGRPOLoss

    loss_mod = LigerFusedLinearGRPOLoss(beta=0.0, use_ref_model=False, loss_type="dapo")

    def liger(h, w, ids, old, adv, mask):
        return loss_mod(h, w, ids, mask, adv, old_per_token_logps=old)[0]

    return liger


def measure(fn, h0, w, ids, old, adv, mask, repeats):
    times, extra = [], 0.0
    for i in range(repeats + 1):
        h = h0.detach().clone().requires_grad_()
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        loss = fn(h, w, ids, old, adv, mask)
        loss.backward()
        torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        if i:  # the first run warms up (allocator, autotuning, compilation)
            times.append(dt)
            extra = max(extra, (torch.cuda.max_memory_allocated() - base) / 2**30)
        del h, loss
    return {"extra_peak_gib": round(extra, 3), "median_s": round(statistics.median(times), 5)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=4096)
    ap.add_argument("--hidden", type=int, default=1536)
    ap.add_argument("--vocab", type=int, default=151936)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--methods", default="eager,chunked,liger")
    ap.add_argument("--out")
    a = ap.parse_args()
    torch.manual_seed(0)
    dev, dt = "cuda", torch.bfloat16
    h0 = torch.randn(a.batch, a.seq, a.hidden, device=dev, dtype=dt)
    w = (torch.randn(a.vocab, a.hidden, device=dev, dtype=dt) * a.hidden**-0.5)
    ids = torch.randint(0, a.vocab, (a.batch, a.seq), device=dev)
    old = torch.randn(a.batch, a.seq, device=dev) * 0.1 - 12
    adv = torch.randn(a.batch, device=dev)
    mask = torch.ones(a.batch, a.seq, device=dev)
    fns = {"eager": eager, "chunked": chunked}
    res = {"bench": "loss", "batch": a.batch, "seq": a.seq, "hidden": a.hidden, "vocab": a.vocab, "dtype": "bf16",
           "device": torch.cuda.get_device_name(), "torch": torch.__version__,
           "date": datetime.date.today().isoformat()}
    for name in a.methods.split(","):
        try:
            fn = liger_fn() if name == "liger" else fns[name]
            res[name] = measure(fn, h0, w, ids, old, adv, mask, a.repeats)
        except Exception as e:  # a missing wheel or an OOM is a result, not a crash
            res[name] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"}
        torch.cuda.empty_cache()
    if "extra_peak_gib" in res.get("eager", {}):
        for name in ("chunked", "liger"):
            if "extra_peak_gib" in res.get(name, {}):
                ours, ref = res[name], res["eager"]
                res[f"{name}_memory_ratio_vs_eager"] = round(ours["extra_peak_gib"] / ref["extra_peak_gib"], 4)
                res[f"{name}_time_ratio_vs_eager"] = round(ours["median_s"] / ref["median_s"], 3)
    emit(res, a.out)


if __name__ == "__main__":
    main()
