"""One GRPO step, rlvr against TRL's GRPOTrainer, on the same real-shaped random model, in one run.

Qwen2.5-1.5B shape, bf16, LoRA r16, 8 completions × 512 tokens from 128-token prompts, gradient
checkpointing, beta 0 — the setting of ../shared/anchors/trl_grpo_anchor.py (copied here as
bench/trl_grpo_anchor.py so it travels to the GPU machine). Each system runs in its own process so
peak memory is its own; prints one JSON line with both and the ratios.

    python bench/step.py --out bench/results/step.jsonl            # both systems
    python bench/step.py --system rlvr --steps 3                   # one system, its JSON only
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from report import emit

HERE = Path(__file__).resolve().parent


def run_rlvr(a) -> dict:
    sys.path.insert(0, str(HERE))
    from trl_grpo_anchor import make_model, make_tokenizer

    from rlvr.config import GRPOConfig
    from rlvr.grpo.trainer import GRPOTrainer
    from rlvr.models.loading import attach_lora

    torch.manual_seed(0)
    model = make_model(a.shape, torch.bfloat16)
    vocab = model.config.vocab_size
    tok = make_tokenizer(vocab)
    model.generation_config.eos_token_id = vocab - 1
    model.generation_config.pad_token_id = vocab - 2
    model = attach_lora(model, 16, 16)
    prompts = [" ".join(f"t{(j * 7 + k) % 1000 + 10}" for k in range(a.prompt)) for j in range(256)]
    ds = [{"prompt": p} for p in prompts]

    def reward_len(completions, **kw):
        return [float(len(c) % 7) for c in completions]

    args = GRPOConfig(output_dir=tempfile.mkdtemp(), per_device_train_batch_size=a.gens, num_generations=a.gens,
                      max_completion_length=a.completion, max_steps=a.steps, learning_rate=1e-6, beta=0.0,
                      gradient_checkpointing=a.checkpointing, save_steps=10**9, rollout_backend=a.backend,
                      temperature=1.0, log_completions=False, optim="adamw_torch",
                      rollout_merge_lora=a.merge_lora,
                      micro_batch_token_budget=a.token_budget,
                      **({"logprob_chunk_elements": a.logprob_chunk} if a.logprob_chunk else {}))
    trainer = GRPOTrainer(model, tok, [reward_len], ds, args, show_progress=False)
    torch.cuda.reset_peak_memory_stats()
    steps: list[float] = []
    original = trainer.make_round

    def timed_round(i):
        # A step here is a whole round (one optimizer step per round in this setting): rollout, scoring, update.
        steps.append(time.perf_counter())
        return original(i)

    trainer.make_round = timed_round
    t0 = time.perf_counter()
    last = trainer.train()
    torch.cuda.synchronize()
    ends = steps[1:] + [time.perf_counter()]
    step_seconds = [e - s for s, e in zip(steps, ends)]
    rows = [json.loads(line) for line in open(Path(args.output_dir) / "metrics.jsonl")]
    return {"system": "rlvr", "backend": a.backend, "merge_lora": a.merge_lora, "checkpointing": a.checkpointing,
            "step_seconds": step_seconds,
            "logprob_chunk_elements": args.logprob_chunk_elements,
            "micro_batch_token_budget": args.micro_batch_token_budget,
            "total_seconds": time.perf_counter() - t0,
            "rollout_seconds": [r["time/rollout"] for r in rows], "update_seconds": [r["time/update"] for r in rows],
            "tokens_per_second": [r["tokens_per_second"] for r in rows],
            "peak_gib": torch.cuda.max_memory_allocated() / 2**30, "final_loss": last.get("loss"),
            "estimate_gib": trainer.memory_estimate}


def run_trl(a) -> dict:
    cmd = [sys.executable, str(HERE / "trl_grpo_anchor.py"), "--shape", a.shape, "--completion", str(a.completion),
           "--prompt", str(a.prompt), "--gens", str(a.gens), "--steps", str(a.steps)]
    out = subprocess.run(cmd, capture_output=True, text=True)
    line = [x for x in out.stdout.splitlines() if x.startswith("{")]
    if out.returncode or not line:
        return {"system": "trl", "error": (out.stderr or out.stdout)[-600:]}
    res = json.loads(line[-1])
    res["system"] = "trl"
    return res


def child(a, system: str, merge_lora: str, extra: tuple[str, ...] = ()) -> dict:
    cmd = [sys.executable, __file__, "--system", system, "--shape", a.shape, "--completion", str(a.completion),
           "--prompt", str(a.prompt), "--gens", str(a.gens), "--steps", str(a.steps), "--backend", a.backend,
           "--merge-lora", merge_lora, *extra]
    out = subprocess.run(cmd, capture_output=True, text=True)
    line = [x for x in out.stdout.splitlines() if x.startswith("{")]
    if out.returncode or not line:
        return {"system": system, "error": (out.stderr or out.stdout)[-600:]}
    return json.loads(line[-1])


def steady(seconds: list[float]) -> float:
    """Median step time after the first (which pays one-time warm-up and allocation)."""
    return statistics.median(seconds[1:] if len(seconds) > 1 else seconds)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--system", choices=["both", "rlvr", "trl"], default="both")
    ap.add_argument("--shape", default="qwen2.5-1.5b")
    ap.add_argument("--completion", type=int, default=512)
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--gens", type=int, default=8)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--backend", default="native")
    ap.add_argument("--merge-lora", choices=["all", "attention", "none"], default="all",
                    help="rlvr only: fold LoRA into a decode copy of all adapted matrices (fastest, most memory), "
                         "of q/k/v/o only, or none (adapters as extra matmuls)")
    ap.add_argument("--checkpointing", choices=["true", "offload"], default="true", help="rlvr only")
    ap.add_argument("--logprob-chunk", type=int, default=None, help="rlvr only: logprob_chunk_elements")
    ap.add_argument("--token-budget", type=int, default=None, help="rlvr only: micro_batch_token_budget")
    ap.add_argument("--settings", default="rlvr,rlvr_unmerged,rlvr_attention_merged",
                    help="with --system both: which rlvr settings to run beside TRL")
    ap.add_argument("--out")
    a = ap.parse_args()
    a.merge_lora = {"all": True, "attention": "attention", "none": False}[a.merge_lora]
    a.checkpointing = True if a.checkpointing == "true" else "offload"
    if a.system == "rlvr":
        print(json.dumps(run_rlvr(a)))
        return
    if a.system == "trl":
        print(json.dumps(run_trl(a)))
        return
    res = {"bench": "step", "shape": a.shape, "completion": a.completion, "prompt": a.prompt, "gens": a.gens,
           "steps": a.steps, "device": torch.cuda.get_device_name(), "torch": torch.__version__,
           "date": datetime.date.today().isoformat()}
    settings = {"rlvr": ("all", ()), "rlvr_unmerged": ("none", ()),
                # The frugal setting: q/k/v/o merged only, offloaded checkpointing, a smaller loss chunk.
                "rlvr_attention_merged": ("attention", ("--checkpointing", "offload",
                                                        "--logprob-chunk", str(1 << 24))),
                # The same, its update in two pieces of four completions (half the activations).
                "rlvr_frugal": ("attention", ("--checkpointing", "offload", "--logprob-chunk", str(1 << 24),
                                              "--token-budget", str(4 * (a.prompt + a.completion))))}
    chosen = [n for n in a.settings.split(",") if n]
    for name in chosen:
        res[name] = child(a, "rlvr", *settings[name])
    res["trl"] = run_trl(a)
    t = res["trl"]
    for name in chosen:
        r = res[name]
        if "step_seconds" in r and "step_seconds" in t:
            res[f"{name}_step_s"], res["trl_step_s"] = steady(r["step_seconds"]), steady(t["step_seconds"])
            res[f"{name}_step_time_ratio"] = round(res[f"{name}_step_s"] / res["trl_step_s"], 4)
            res[f"{name}_peak_memory_ratio"] = round(r["peak_gib"] / t["peak_gib"], 3)
    emit(res, a.out)


if __name__ == "__main__":
    main()
