"""Soak test: a few hundred GRPO steps on a tiny CPU model with faults injected, then an account.

Faults: a reward function that raises on ~10% of completions and returns NaN on ~5% (run with
reward_errors: skip, so those rows score None and are counted), one optimizer step poisoned with a
NaN loss, and a `kill -9` of the training process at a random step followed by `--resume`. Prints
one JSON line: steps done, faults injected, faults survived, data lost (steps with no metrics line).
    python bench/soak.py --steps 300 --out bench/results/DATE-soak.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from report import emit

CHILD = """
import random, sys
from dataclasses import replace
sys.path.insert(0, {tests!r})
from conftest import make_model, make_tokenizer
from rlvr.config import GRPOConfig
from rlvr.grpo.trainer import GRPOTrainer
from rlvr.models.loading import attach_lora

def flaky(prompts, completions, **kw):
    rng = random.Random(kw["trainer_state"][0]["step"])
    out = []
    for c in completions:
        u = rng.random()
        if u < 0.10:
            out.append(None)   # stands for a raised error: the batch call below raises instead
        elif u < 0.15:
            out.append(float("nan"))
        else:
            out.append(float(sum(map(ord, c[0]["content"])) % 7))
    if any(v is None for v in out):
        raise ValueError("injected reward failure")
    return out

tok = make_tokenizer()
model = make_model("llama", vocab_size=len(tok))
model.generation_config.eos_token_id = tok.eos_token_id
model = attach_lora(model, 4, 8)
data = [{{"prompt": [{{"role": "user", "content": f"q{{i}}"}}], "answer": "1"}} for i in range(64)]
cfg = GRPOConfig(output_dir={run!r}, per_device_train_batch_size=8, num_generations=4, max_steps={steps},
                 max_completion_length=8, save_steps=5, reward_errors="skip", learning_rate=1e-3,
                 max_grad_norm=1.0, warmup_ratio=0.0)
trainer = GRPOTrainer(model, tok, [flaky], data, cfg, show_progress=False)
original = trainer._policy_forward
def poison(mb, *args, **kw):
    out = original(mb, *args, **kw)
    return replace(out, logps=out.logps * float("nan")) if trainer.global_step + 1 == {poison_step} else out
trainer._policy_forward = poison
trainer.train({resume!r} or None)
"""


def launch(run: Path, steps: int, poison_step: int, resume: str = "") -> subprocess.Popen:
    tests = Path(__file__).resolve().parents[1] / "tests"
    script = CHILD.format(tests=str(tests), run=str(run), steps=steps, poison_step=poison_step, resume=resume)
    return subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out")
    a = ap.parse_args()
    rng = random.Random(a.seed)
    run = Path(tempfile.mkdtemp()) / "run"
    kill_at, poison_step = rng.randint(a.steps // 4, 3 * a.steps // 4), rng.randint(2, a.steps // 4)
    t0 = time.perf_counter()
    proc = launch(run, a.steps, poison_step)
    metrics = run / "metrics.jsonl"
    while proc.poll() is None:
        if metrics.is_file() and metrics.read_text().count("\n") >= kill_at:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.02)
    proc.wait()
    killed = proc.returncode == -signal.SIGKILL
    resumed = launch(run, a.steps, poison_step, resume="latest")
    _, err = resumed.communicate()
    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    last_per_step = {r["step"]: r for r in rows}
    reward_errors = sum(r.get("rewards/flaky/errors", 0) for r in last_per_step.values())
    res = {"bench": "soak", "date": datetime.date.today().isoformat(), "steps_asked": a.steps,
           "steps_done": max(last_per_step), "killed_at_step": kill_at if killed else None,
           "poisoned_step": poison_step, "reward_rows_scored_none": int(reward_errors),
           "skipped_nonfinite_steps": last_per_step[max(last_per_step)].get("skipped_steps"),
           "faults_injected": int(reward_errors) + 1 + int(killed),
           "faults_survived": (int(reward_errors) + 1 + int(killed)) if resumed.returncode == 0 else 0,
           "data_lost_steps": len(set(range(1, a.steps + 1)) - set(last_per_step)),
           "final_adapter": (run / "final" / "adapter_model.safetensors").is_file(),
           "exit_code": resumed.returncode, "seconds": round(time.perf_counter() - t0, 1)}
    if resumed.returncode:
        res["stderr"] = err[-500:]
    emit(res, a.out)


if __name__ == "__main__":
    main()
