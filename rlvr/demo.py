"""`rlvr demo`: the whole workflow on a CPU, offline, in minutes.

The bundled SmolLM2-135M-Instruct on the built-in arithmetic task: evaluate the base model, warm up
with SFT, evaluate, train with GRPO, evaluate again on the same held-out problems, print one table and
write it with its chart (compare.json, compare.png) through the same report as `rlvr eval --compare`.
The settings live in DEMO_CONFIG (mirrored, with comments, in examples/demo.yaml and demo_sft.yaml).

What keeps it within minutes on a 2-core CPU (every update costs about linearly in prompt +
completion tokens): a one-line system prompt instead of the format recipe (about 45 prompt tokens
instead of 64), completions capped just above the longest worked solution, and greedy evaluations
of all held-out problems in one batch of the native engine. Each stage's wall and process CPU time
go to timings.json in the run directory.
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path

from rlvr.config import GRPOConfig, SFTConfig, config_from_dict

# The longest worked solution of the built-in task is 43 tokens (two steps with three-digit numbers).
DEMO_COMPLETION_TOKENS = 44

# One dict per stage's `train` section; model/data/rewards/eval are shared by all stages.
DEMO_CONFIG: dict = {
    "model": {"model_name_or_path": "smollm2-135m-instruct", "dtype": "float32", "lora_rank": 16, "lora_alpha": 32},
    "data": {"dataset": "builtin:arithmetic", "limit": 400, "eval_size": 100, "seed": 0,
             "system_prompt": "Reply in <reasoning> and <answer> tags."},
    # Correctness (2.0) and the strict layout (0.5) only: with the full gsm8k set (int, soft format and
    # XML-count rewards too) GRPO sometimes learned `<reasoning>17</reasoning><answer>32</answer>`,
    # paid for by the easy rewards, and lost accuracy (bench/results/2026-12-03-demo-sweep-h200.jsonl).
    "rewards": ["correctness", "strict_format"],
    "eval": {"max_new_tokens": DEMO_COMPLETION_TOKENS, "batch_size": 128, "seed": 1234, "rollout_backend": "native"},
}
# `bf16` (autocast, fp32 weights and optimizer kept) is the demo's one precision switch, the same in
# both stages: asked for, and granted by the trainer core only where the CPU computes bf16 natively
# (AVX512-BF16 or AMX); AVX2-only CPUs (most laptops, CI machines) emulate it several times slower than
# fp32, so there the core computes in fp32 and says why (rlvr/models/precision.py).
DEMO_SFT: dict = {"output_dir": "sft", "learning_rate": 2e-4, "per_device_train_batch_size": 8,
                  "num_train_epochs": 1.0, "max_length": 128, "bf16": True}
DEMO_GRPO: dict = {"output_dir": "grpo", "learning_rate": 1e-4, "num_generations": 8,
                   "per_device_train_batch_size": 16, "max_steps": 16,
                   "max_completion_length": DEMO_COMPLETION_TOKENS, "bf16": True,
                   # On a CPU the native engine's log-probs equal the trainer's, so the TIS correction's
                   # extra forward pass would buy nothing.
                   "rollout_backend": "native", "vllm_importance_sampling_correction": False,
                   # Truncated completions (no EOS within 44 tokens) are left out of the loss, as in DAPO:
                   # without this, GRPO rewarded correct answers followed by repeated closing tags, and the
                   # strict format collapsed to 0% (a 7-setting sweep on 2026-12-03; bench/results/).
                   # Sampling at 0.7 with lr 1e-4 raised held-out accuracy over the warm-up for each of 14
                   # seeds (+4 to +19 points; 1.0 and 2e-4 lost accuracy for 2 of 4: the same sweep file).
                   "temperature": 0.7, "mask_truncated_completions": True,
                   "beta": 0.0, "optim": "adamw_torch", "save_steps": 8,
                   "warmup_ratio": 0.1, "completions_log_steps": 4}
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

    out = Path(output_dir)
    sft_cfg, grpo_cfg = demo_configs(output_dir, seed, grpo_steps)
    clock = StageClock()
    say = clock.say
    say("loading SmolLM2-135M-Instruct (bundled GGUF) with LoRA r16; "
        f"precision: {precision_of(sft_cfg.train)}")
    model, tokenizer = load_model_from_config(sft_cfg.model, device="cpu")
    train, evals = build_datasets(sft_cfg)
    clock.end("load")
    results = {}
    # A fresh LoRA adapter's B matrix is zero, so this is exactly the base model.
    say(f"evaluating the base model on {len(evals)} held-out problems (greedy)")
    results["base"] = run_eval(sft_cfg, model, tokenizer, evals, desc="base")
    write_result(results, out / "results.json")  # a demo stopped later keeps what it measured
    clock.end("base eval")
    say(f"SFT warm-up on {DEMO_SFT_EXAMPLES} worked solutions")
    run_sft(sft_cfg, model, tokenizer, train[:DEMO_SFT_EXAMPLES], show_progress=show_progress)
    clock.end("warm-up (SFT)")
    results["warm-up"] = run_eval(sft_cfg, model, tokenizer, evals, desc="warm-up")
    write_result(results, out / "results.json")
    clock.end("warm-up eval")
    say(f"GRPO for {grpo_cfg.train.max_steps} steps ({grpo_cfg.train.num_generations} completions per prompt)")
    run_grpo(grpo_cfg, model, tokenizer, train[DEMO_SFT_EXAMPLES:], show_progress=show_progress)
    clock.end("grpo")
    results["grpo"] = run_eval(grpo_cfg, model, tokenizer, evals, desc="grpo")
    clock.end("grpo eval")
    # The three evaluations above are the comparison: reported as they are, not run again.
    files = report_comparison(results, out)
    write_result(results, out / "results.json")
    clock.end("report")
    clock.write(out / "timings.json")
    written = "results.json, compare.json" + (", compare.png" if files.png else "") + ", timings.json"
    say(f"done; run directory: {out.resolve()} ({written}, sft/ and grpo/ with metrics.jsonl and adapters)")
    return results


def precision_of(train_cfg) -> str:
    """What the demo's stages compute in on this CPU (the core's choice for `bf16`, with its reason)."""
    from rlvr.models.precision import describe_precision

    return describe_precision("cpu", train_cfg.bf16)


class StageClock:
    """Wall and process CPU seconds (all threads, user + sys) of consecutive stages, printed as they end."""

    def __init__(self):
        self.started = self._last = (time.perf_counter(), time.process_time())
        self.stages: dict[str, dict[str, float]] = {}

    def say(self, message: str) -> None:
        print(f"[{time.perf_counter() - self.started[0]:6.1f}s] {message}", flush=True)

    def end(self, stage: str) -> dict[str, float]:
        now = (time.perf_counter(), time.process_time())
        self.stages[stage] = {"wall_seconds": round(now[0] - self._last[0], 2),
                              "cpu_seconds": round(now[1] - self._last[1], 2)}
        self._last = now
        t = self.stages[stage]
        self.say(f"{stage}: {t['wall_seconds']:.1f}s wall, {t['cpu_seconds']:.1f}s CPU")
        return t

    def total(self) -> dict[str, float]:
        return {"wall_seconds": round(self._last[0] - self.started[0], 2),
                "cpu_seconds": round(self._last[1] - self.started[1], 2)}

    def write(self, path: Path) -> None:
        path.write_text(json.dumps({"stages": self.stages, "total": self.total()}, indent=2) + "\n")


def summary(results: dict) -> str:
    return json.dumps({stage: {k: r.get(k) for k in ("accuracy", "format", "mean_reward")}
                       for stage, r in results.items()})
