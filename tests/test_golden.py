"""Golden losses: a few steps of a tiny seeded SFT run and GRPO run must reproduce stored numbers.

The numbers in tests/golden/*.json were recorded from the trainers as they were before the shared
trainer core (rlvr/train/update.py, session.py) replaced their hand-written loops; a refactor that
changes any loss, gradient norm or reward by more than 1e-6 fails here.

Regenerate (only when a change to the math is intended, and say so in the commit):
    PYTHONPATH=$PWD python tests/test_golden.py --regenerate
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from conftest import make_model, make_tokenizer  # noqa: E402

GOLDEN = Path(__file__).parent / "golden"
KEYS = {"sft": ("loss", "grad_norm", "learning_rate"), "grpo": ("loss", "grad_norm", "reward", "learning_rate")}


def _lora(tok, seed=0):
    from rlvr.models.loading import attach_lora

    model = make_model("llama", vocab_size=len(tok), seed=seed)
    model.generation_config.eos_token_id = tok.eos_token_id
    model = attach_lora(model, 4, 8)
    g = torch.Generator().manual_seed(seed + 1)
    for name, p in model.named_parameters():
        if "lora_B" in name or "lora_A" in name:  # fixed values: independent of how LoRA is initialised
            p.data = torch.randn(p.shape, generator=g) * 0.05
    return model


def _metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in open(run_dir / "metrics.jsonl")]


def run_sft(out: Path) -> list[dict]:
    from rlvr.config import SFTConfig
    from rlvr.sft.trainer import SFTTrainer

    tok = make_tokenizer()
    data = [{"prompt": [{"role": "user", "content": f"what is {i}+{i}?"}], "completion": f"it is {2 * i}"}
            for i in range(12)]
    cfg = SFTConfig(output_dir=str(out), per_device_train_batch_size=4, gradient_accumulation_steps=2, max_steps=3,
                    learning_rate=1e-2, warmup_ratio=0.0, seed=3)
    SFTTrainer(_lora(tok), tok, data, cfg, show_progress=False).train()
    return [{k: m[k] for k in KEYS["sft"]} for m in _metrics(out)]


def _char_score(prompts, completions, **kw):
    return [float(sum(map(ord, c[0]["content"])) % 7) for c in completions]


def run_grpo(out: Path) -> list[dict]:
    from rlvr.config import GRPOConfig
    from rlvr.grpo.trainer import GRPOTrainer

    tok = make_tokenizer()
    data = [{"prompt": [{"role": "user", "content": f"q{i}"}], "answer": str(i)} for i in range(16)]
    cfg = GRPOConfig(output_dir=str(out), per_device_train_batch_size=8, num_generations=4, max_completion_length=8,
                     max_steps=3, learning_rate=1e-3, warmup_ratio=0.0, max_grad_norm=1.0, save_steps=100,
                     beta=0.05, num_iterations=2, optim="adamw_torch", rollout_backend="hf", seed=5)
    GRPOTrainer(_lora(tok), tok, [_char_score], data, cfg, show_progress=False).train()
    return [{k: m[k] for k in KEYS["grpo"]} for m in _metrics(out)]


RUNS = {"sft": run_sft, "grpo": run_grpo}


@pytest.mark.parametrize("name", sorted(RUNS))
def test_golden_losses(name, tmp_path):
    torch.manual_seed(0)
    got = RUNS[name](tmp_path / name)
    want = json.loads((GOLDEN / f"{name}.json").read_text())
    assert len(got) == len(want)
    for step, (g, w) in enumerate(zip(got, want), start=1):
        for key in w:
            assert g[key] == pytest.approx(w[key], rel=1e-6, abs=1e-6), f"{name} step {step} {key}"


if __name__ == "__main__" and "--regenerate" in sys.argv:
    import tempfile

    for name, run in RUNS.items():
        with tempfile.TemporaryDirectory() as tmp:
            torch.manual_seed(0)
            rows = run(Path(tmp) / name)
        (GOLDEN / f"{name}.json").write_text(json.dumps(rows, indent=1) + "\n")
        print(name, rows)
