"""`rlvr demo`: the whole workflow on a CPU, offline, in minutes.

The bundled SmolLM2-135M-Instruct on the built-in arithmetic task: evaluate the base model, warm up
with SFT, evaluate, train with GRPO, evaluate again on the same held-out problems, print one table and
write it with its chart (compare.json, compare.png) through the same report as `rlvr eval --compare`.
The settings live in DEMO_CONFIG (mirrored, with comments, in examples/demo.yaml).
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path

from rlvr.config import GRPOConfig, SFTConfig, config_from_dict

# One dict per stage's `train` section; model/data/rewards/eval are shared by all stages.
DEMO_CONFIG: dict = {
    "model": {"model_name_or_path": "smollm2-135m-instruct", "dtype": "float32", "lora_rank": 16, "lora_alpha": 32},
    "data": {"dataset": "builtin:arithmetic", "limit": 400, "eval_size": 48, "seed": 0},
    "rewards": ["gsm8k"],
    "eval": {"max_new_tokens": 48, "batch_size": 48, "seed": 1234, "rollout_backend": "native"},
}
# bf16 autocast: faster forward/backward on CPUs with AVX512-BF16 or AMX; fp32 weights and optimizer kept.
DEMO_SFT: dict = {"output_dir": "sft", "learning_rate": 2e-4, "per_device_train_batch_size": 8,
                  "num_train_epochs": 1.0, "max_length": 256, "bf16": True}
DEMO_GRPO: dict = {"output_dir": "grpo", "learning_rate": 5e-5, "num_generations": 8,
                   "per_device_train_batch_size": 16, "max_steps": 24, "max_completion_length": 48, "bf16": True,
                   # On a CPU the native engine's log-probs equal the trainer's, so the TIS correction's
                   # extra forward pass would buy nothing.
                   "rollout_backend": "native", "vllm_importance_sampling_correction": False,
                   "temperature": 0.8, "beta": 0.0, "save_steps": 5, "warmup_ratio": 0.1,
                   "completions_log_steps": 5}
DEMO_SFT_EXAMPLES = 160  # the first examples warm up; GRPO draws its prompts from the rest


def demo_configs(output_dir: str | Path, seed: int = 0, grpo_steps: int | None = None):
    """(sft RunConfig, grpo RunConfig) for a demo writing under output_dir."""
    out = Path(output_dir)
    base = copy.deepcopy(DEMO_CONFIG)
    base["data"]["seed"] = seed
    # A demo run replaces the previous one in its folder.
    sft = {**base, "train": {**DEMO_SFT, "output_dir": str(out / "sft"), "seed": seed, "overwrite_output_dir": True}}
    grpo_train = {**DEMO_GRPO, "output_dir": str(out / "grpo"), "seed": seed, "overwrite_output_dir": True}
    if grpo_steps is not None:
        grpo_train["max_steps"] = grpo_steps
    grpo = {**base, "train": grpo_train}
    return config_from_dict(sft, SFTConfig, "demo"), config_from_dict(grpo, GRPOConfig, "demo")


def run_demo(output_dir: str | Path = "runs/demo", seed: int = 0, grpo_steps: int | None = None,
             show_progress: bool | None = None) -> dict:
    from rlvr.evaluation import report_comparison, write_result
    from rlvr.models import load_model_from_config
    from rlvr.pipeline import build_datasets, run_eval, run_grpo, run_sft

    started = time.perf_counter()
    sft_cfg, grpo_cfg = demo_configs(output_dir, seed, grpo_steps)
    say = _printer(started)
    say("loading SmolLM2-135M-Instruct (bundled GGUF) with LoRA r16")
    model, tokenizer = load_model_from_config(sft_cfg.model, device="cpu")
    train, evals = build_datasets(sft_cfg)
    results = {}
    # A fresh LoRA adapter's B matrix is zero, so this is exactly the base model.
    say(f"evaluating the base model on {len(evals)} held-out problems")
    results["base"] = run_eval(sft_cfg, model, tokenizer, evals, desc="base")
    say(f"SFT warm-up on {DEMO_SFT_EXAMPLES} worked solutions")
    run_sft(sft_cfg, model, tokenizer, train[:DEMO_SFT_EXAMPLES], show_progress=show_progress)
    results["warm-up"] = run_eval(sft_cfg, model, tokenizer, evals, desc="warm-up")
    say(f"GRPO for {grpo_cfg.train.max_steps} steps ({grpo_cfg.train.num_generations} completions per prompt)")
    run_grpo(grpo_cfg, model, tokenizer, train[DEMO_SFT_EXAMPLES:], show_progress=show_progress)
    results["grpo"] = run_eval(grpo_cfg, model, tokenizer, evals, desc="grpo")
    out = Path(output_dir)
    # The three evaluations above are the comparison: reported as they are, not run again.
    files = report_comparison(results, out)
    write_result(results, out / "results.json")
    written = "results.json, compare.json" + (", compare.png" if files.png else "")
    say(f"done; run directory: {out.resolve()} ({written}, sft/ and grpo/ with metrics.jsonl and adapters)")
    return results


def _printer(started: float):
    def say(message: str) -> None:
        print(f"[{time.perf_counter() - started:6.1f}s] {message}", flush=True)

    return say


def summary(results: dict) -> str:
    return json.dumps({stage: {k: r.get(k) for k in ("accuracy", "format", "mean_reward")}
                       for stage, r in results.items()})
