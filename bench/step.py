"""One GRPO step, rlvr against TRL's GRPOTrainer, on the same real-shaped random model, in one run.

Qwen2.5-1.5B shape, bf16, LoRA r16, 8 completions × 512 tokens from 128-token prompts, gradient
checkpointing, beta 0 — the setting of ../shared/anchors/trl_grpo_anchor.py (copied here as
bench/trl_grpo_anchor.py so it travels to the GPU machine). Each system runs in its own process so
peak memory is its own; prints one JSON line with both and the ratios.

    python bench/step.py --out bench/results/step.jsonl            # both systems
    python bench/step.py --system rlvr --steps 3                   # one system, its JSON only
    python bench/step.py --quant nf4 --out bench/results/step.jsonl   # QLoRA: rlvr and TRL on NF4 bases
    python bench/step.py --load-in-fp8 --settings rlvr,rlvr_frugal   # rlvr on an FP8 base; TRL in bf16

--quant nf4 and --load-in-fp8 save the random bf16 model once (with the anchor's tokenizer) to a
temporary folder, and each system loads it as a user does: rlvr through `load_model(load_in_4bit=True
| load_in_fp8=True)` (NF4 with double quantisation, peft's k-bit preparation; or FP8 rows), TRL (NF4
only: it has no FP8 base) through `bench/trl_qlora.py`, the anchor's run on that folder loaded with
BitsAndBytesConfig, TRL's QLoRA setting. rlvr autocasts to bf16 there (`bf16: true`, as TRL's
bf16=True), since k-bit preparation keeps norms, embeddings and the head in fp32.
"""

from __future__ import annotations

import argparse
import datetime
import json
import shutil
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
    from rlvr.models.loading import attach_lora, load_model

    torch.manual_seed(0)
    if a.model_dir:  # NF4 or FP8 bases, loaded as `model.load_in_4bit` / `model.load_in_fp8` load them
        model, _ = load_model(a.model_dir, dtype="bfloat16", lora_rank=16, lora_alpha=16,
                              load_in_4bit=a.quant == "nf4", load_in_fp8=a.load_in_fp8, seed=0)
    else:
        model = attach_lora(make_model(a.shape, torch.bfloat16), 16, 16)
    vocab = model.config.vocab_size
    # The anchor's word-level tokenizer itself: AutoTokenizer would read the saved one as the model
    # type's (Qwen2Tokenizer), which does not split "t10 t11 ..." into its words.
    tok = make_tokenizer(vocab)
    model.generation_config.eos_token_id = vocab - 1
    model.generation_config.pad_token_id = vocab - 2
    prompts = [" ".join(f"t{(j * 7 + k) % 1000 + 10}" for k in range(a.prompt)) for j in range(256)]
    ds = [{"prompt": p} for p in prompts]

    def reward_len(completions, **kw):
        return [float(len(c) % 7) for c in completions]

    args = GRPOConfig(output_dir=tempfile.mkdtemp(), per_device_train_batch_size=a.gens, num_generations=a.gens,
                      max_completion_length=a.completion, max_steps=a.steps, learning_rate=1e-6, beta=0.0,
                      gradient_checkpointing=a.checkpointing, save_steps=10**9, rollout_backend=a.backend,
                      temperature=1.0, log_completions=False, optim="adamw_torch",
                      rollout_merge_lora=a.merge_lora, rollout_dtype=a.rollout_dtype,
                      bf16=a.quant == "nf4", micro_batch_token_budget=a.token_budget,
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
            "quant": a.quant, "load_in_fp8": a.load_in_fp8, "rollout_dtype": a.rollout_dtype,
            "rollout": trainer.engine.describe(), "rollout_stats": _plain(trainer.engine.last_stats),
            "step_seconds": step_seconds,
            "logprob_chunk_elements": args.logprob_chunk_elements,
            "micro_batch_token_budget": args.micro_batch_token_budget,
            "total_seconds": time.perf_counter() - t0,
            "rollout_seconds": [r["time/rollout"] for r in rows], "update_seconds": [r["time/update"] for r in rows],
            "tokens_per_second": [r["tokens_per_second"] for r in rows],
            "peak_gib": torch.cuda.max_memory_allocated() / 2**30, "final_loss": last.get("loss"),
            "estimate_gib": trainer.memory_estimate}


def _plain(stats: dict) -> dict:
    return {k: v for k, v in stats.items() if isinstance(v, (int, float, str, bool, type(None)))}


def run_trl(a) -> dict:
    """The anchor's TRL run: bf16 LoRA, or with --quant nf4 its QLoRA setting on the saved model."""
    script = ["trl_qlora.py", "--model-dir", a.model_dir] if a.quant == "nf4" else ["trl_grpo_anchor.py"]
    cmd = [sys.executable, str(HERE / script[0]), *script[1:], "--shape", a.shape, "--completion", str(a.completion),
           "--prompt", str(a.prompt), "--gens", str(a.gens), "--steps", str(a.steps)]
    out = subprocess.run(cmd, capture_output=True, text=True)
    line = [x for x in out.stdout.splitlines() if x.startswith("{")]
    if out.returncode or not line:
        return {"system": "trl", "error": (out.stderr or out.stdout)[-600:]}
    res = json.loads(line[-1])
    res.update(system="trl", quant=a.quant)
    return res


def child(a, system: str, merge_lora: str, extra: tuple[str, ...] = ()) -> dict:
    cmd = [sys.executable, __file__, "--system", system, "--shape", a.shape, "--completion", str(a.completion),
           "--prompt", str(a.prompt), "--gens", str(a.gens), "--steps", str(a.steps), "--backend", a.backend,
           "--merge-lora", merge_lora, "--quant", a.quant, "--rollout-dtype", a.rollout_dtype, *extra,
           *(["--load-in-fp8"] if a.load_in_fp8 else []), *(["--model-dir", a.model_dir] if a.model_dir else [])]
    out = subprocess.run(cmd, capture_output=True, text=True)
    line = [x for x in out.stdout.splitlines() if x.startswith("{")]
    if out.returncode or not line:
        return {"system": system, "error": (out.stderr or out.stdout)[-600:]}
    return json.loads(line[-1])


def save_model_dir(a) -> str:
    """The anchor's random bf16 model and tokenizer in a temporary folder, for the systems to load
    quantised as a user does (from_pretrained with a quantisation config needs weights on disk)."""
    sys.path.insert(0, str(HERE))
    from trl_grpo_anchor import make_model, make_tokenizer

    torch.manual_seed(0)
    model = make_model(a.shape, torch.bfloat16)
    folder = tempfile.mkdtemp(prefix=f"rlvr-step-{a.shape}-")
    model.save_pretrained(folder)
    make_tokenizer(model.config.vocab_size).save_pretrained(folder)  # load_model loads one (run_rlvr uses its own)
    del model
    torch.cuda.empty_cache()
    return folder


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
    ap.add_argument("--quant", choices=["none", "nf4"], default="none",
                    help="nf4: QLoRA (NF4 bases, double quantisation) for rlvr and TRL alike")
    ap.add_argument("--load-in-fp8", action="store_true", help="rlvr only: model.load_in_fp8 (FP8 base, LoRA on top)")
    ap.add_argument("--rollout-dtype", choices=["auto", "bfloat16", "float16", "fp8"], default="auto",
                    help="rlvr only: train.rollout_dtype")
    ap.add_argument("--model-dir", default=None, help="(set by the parent run) the saved model to load quantised")
    ap.add_argument("--out")
    a = ap.parse_args()
    if a.quant == "nf4" and a.load_in_fp8:
        ap.error("--quant nf4 and --load-in-fp8 are two kinds of base: choose one")
    a.merge_lora = {"all": True, "attention": "attention", "none": False}[a.merge_lora]
    a.checkpointing = True if a.checkpointing == "true" else "offload"
    made_dir = a.model_dir is None and (a.quant == "nf4" or (a.load_in_fp8 and a.system != "trl"))
    if made_dir:
        a.model_dir = save_model_dir(a)
    try:
        if a.system == "both":
            run_both(a)
        else:
            emit(run_rlvr(a) if a.system == "rlvr" else run_trl(a), a.out)  # children: no --out, stdout only
    finally:
        if made_dir:
            shutil.rmtree(a.model_dir, ignore_errors=True)


def run_both(a) -> None:
    res = {"bench": "step", "shape": a.shape, "completion": a.completion, "prompt": a.prompt, "gens": a.gens,
           "steps": a.steps, "quant": a.quant, "load_in_fp8": a.load_in_fp8, "rollout_dtype": a.rollout_dtype,
           "device": torch.cuda.get_device_name(), "torch": torch.__version__,
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
