"""SIGTERM (and Ctrl-C) finish the current step, save a checkpoint and exit cleanly."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

SCRIPT = """
import sys
sys.path.insert(0, {tests!r})
from conftest import make_model, make_tokenizer
from rlvr.config import GRPOConfig
from rlvr.grpo.trainer import GRPOTrainer
tok = make_tokenizer()
model = make_model("llama", vocab_size=len(tok))
model.generation_config.eos_token_id = tok.eos_token_id
reward = lambda prompts, completions, **kw: [float(len(c[0]["content"]) % 3) for c in completions]
data = [{{"prompt": [{{"role": "user", "content": f"q{{i}}"}}], "answer": "1"}} for i in range(64)]
cfg = GRPOConfig(output_dir={run!r}, per_device_train_batch_size=8, num_generations=4, max_steps=100000,
                 max_completion_length=8, save_steps=100000)
out = GRPOTrainer(model, tok, [reward], data, cfg, show_progress=False).train()
print("interrupted", out["interrupted"], out["step"])
"""


def test_sigterm_saves_a_checkpoint_and_exits_zero(tmp_path):
    run = tmp_path / "run"
    script = SCRIPT.format(tests=str(Path(__file__).parent), run=str(run))
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        metrics = run / "metrics.jsonl"
        if metrics.is_file() and metrics.read_text().count("\n") >= 2:
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-2000:]
    step = int(out.split("interrupted True ")[1].split()[0])
    latest = (run / "checkpoints" / "latest").read_text().strip()
    assert latest == f"step-{step:06d}"
    assert (run / "checkpoints" / latest / "trainer_state.json").is_file()
