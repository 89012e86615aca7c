"""Data-parallel scaling of GRPO: the same config on 1 GPU and on N GPUs of one node, in one call.

Each run is `torchrun --standalone --nproc-per-node K -m rlvr train CONFIG` with one optimizer step
per round (steps_per_generation = gradient_accumulation_steps), so a step generates, scores and
trains generation_batch_size = per_device_train_batch_size × K × gradient_accumulation_steps
completions: the per-GPU work stays fixed and the global batch grows with K (weak scaling, as
data parallelism is used). A step's time is time/rollout + time/score + time/update from
metrics.jsonl (each the slowest rank's); the first `--warmup` steps (compilation, CUDA graphs)
are left out. Prints one JSON line:
    {"world_size": N, "completions_per_s": ..., "baseline_completions_per_s": ..., "scaling": ...,
     "efficiency": ..., ...}
scaling = completions/s on N GPUs ÷ on 1 GPU (ideal: N); efficiency = scaling ÷ N.

    python bench/scale.py examples/gsm8k_qwen2.5_1.5b.yaml --nproc 2 --steps 8 --out bench/results/DATE-scale.jsonl
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from report import emit

ROOT = Path(__file__).resolve().parent.parent
STEP_TIMES = ("time/rollout", "time/score", "time/update")


def run(config: str, nproc: int, steps: int, out_dir: Path, extra: list[str]) -> list[dict]:
    """One torchrun job; returns its metrics.jsonl records."""
    from rlvr.config import load_run_config

    ga = load_run_config(config).train.gradient_accumulation_steps
    sets = [f"train.max_steps={steps}", f"train.steps_per_generation={ga}", "train.generation_batch_size=null",
            "train.logging_steps=1", f"train.save_steps={10 * steps}", "train.report_to=none", *extra]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           "-m", "rlvr", "train", config, "--output-dir", str(out_dir), "--overwrite"]
    for s in sets:
        cmd += ["--set", s]
    env = {**os.environ, "RLVR_NO_PROGRESS": "1", "PYTHONPATH": str(ROOT)}
    env.setdefault("NCCL_NVLS_ENABLE", "0")  # NVLink multicast stays off
    env.setdefault("TORCH_SYMM_MEM_DISABLE_MULTICAST", "1")
    subprocess.run(cmd, check=True, env=env, cwd=ROOT)
    return [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]


def completions_per_second(records: list[dict], completions_per_step: int, warmup: int) -> float:
    timed = records[warmup:]
    if not timed:
        raise SystemExit(f"no steps left after --warmup {warmup}; raise --steps")
    seconds = sum(sum(r.get(k, 0.0) for k in STEP_TIMES) for r in timed)
    return completions_per_step * len(timed) / seconds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("config")
    p.add_argument("--nproc", type=int, default=2, help="GPUs of the scaled run (the baseline uses 1)")
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--warmup", type=int, default=2, help="first steps left out of the timing")
    p.add_argument("--set", action="append", default=[], help="extra SECTION.KEY=VALUE for both runs")
    p.add_argument("--out")
    args = p.parse_args()
    sys.path.insert(0, str(ROOT))
    from rlvr.config import load_run_config

    train = load_run_config(args.config).train
    per_rank = train.per_device_train_batch_size * train.gradient_accumulation_steps
    result = {"bench": "scale", "date": datetime.date.today().isoformat(), "config": args.config,
              "world_size": args.nproc, "steps": args.steps, "warmup": args.warmup,
              "completions_per_rank_per_step": per_rank}
    with tempfile.TemporaryDirectory() as tmp:
        rates = {}
        for n in (1, args.nproc):
            records = run(args.config, n, args.steps, Path(tmp) / f"n{n}", args.set)
            rates[n] = completions_per_second(records, per_rank * n, args.warmup)
            result[f"memory_peak_gib_{n}"] = max(r.get("memory/peak_gib", 0.0) for r in records)
            result[f"reward_last_{n}"] = records[-1].get("reward")
    result.update(completions_per_s=rates[args.nproc], baseline_completions_per_s=rates[1],
                  scaling=rates[args.nproc] / rates[1], efficiency=rates[args.nproc] / rates[1] / args.nproc)
    emit(result, args.out)


if __name__ == "__main__":
    main()
