"""Rollout speed on a CPU: native engine vs transformers.generate on the bundled SmolLM2-135M.

The demo's setting: 4 built-in arithmetic prompts × G=4, 48 new tokens, temperature 0.8, fp32,
LoRA r16. Each engine runs twice (the first warms up); prints one JSON line.
    python bench/cpu_rollout.py --out bench/results/DATE-cpu-rollout.jsonl
"""

from __future__ import annotations

import argparse
import datetime
import os
import time

import torch
from report import emit

from rlvr.data import encode_prompt, split_train_eval
from rlvr.models import load_model
from rlvr.rollout import SamplingParams, make_engine


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out")
    a = ap.parse_args()
    model, tok = load_model("smollm2-135m-instruct", lora_rank=16, lora_alpha=32, device="cpu", dtype="float32")
    train, _ = split_train_eval(16, 0, seed=0)
    prompts = [encode_prompt(tok, e["prompt"]) for e in train[:4]]
    params = SamplingParams(max_new_tokens=48, temperature=0.8)
    res = {"bench": "cpu_rollout", "model": "SmolLM2-135M-Instruct", "rows": 16, "new_tokens": 48,
           "threads": torch.get_num_threads(), "cpus": os.cpu_count(), "torch": torch.__version__,
           "date": datetime.date.today().isoformat()}
    for name in ("hf", "native"):
        engine = make_engine(name, model, tok)
        for _ in range(2):
            t0 = time.perf_counter()
            out = engine.generate(prompts, 4, params, seed=1)
            dt = time.perf_counter() - t0
        tokens = int(out.completion_mask.sum())
        res[f"{name}_tok_per_s"] = round(tokens / dt, 1)
    res["speedup_vs_hf"] = round(res["native_tok_per_s"] / res["hf_tok_per_s"], 2)
    emit(res, a.out)


if __name__ == "__main__":
    main()
