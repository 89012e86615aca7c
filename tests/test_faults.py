"""Runs that survive faults: non-finite steps skipped, kill -9 then --resume, a crash mid-save."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from conftest import make_tokenizer
from safetensors.torch import load_file
from test_grpo_trainer import args, char_score, dataset, lora_model

from rlvr.errors import RlvrError
from rlvr.grpo.trainer import GRPOTrainer


def trainable(model):
    return {k: v.detach().clone() for k, v in model.named_parameters() if v.requires_grad}


def test_nonfinite_steps_are_skipped_counted_and_stop_the_run(tmp_path):
    tok = make_tokenizer()
    trainer = GRPOTrainer(lora_model(tok), tok, [char_score], dataset(), args(tmp_path, max_steps=4),
                          show_progress=False)
    original = trainer._policy_forward
    calls = {"n": 0}

    def poisoned(mb, *args, **kwargs):
        out = original(mb, *args, **kwargs)
        calls["n"] += 1
        return replace(out, logps=out.logps * float("nan")) if calls["n"] <= 2 else out  # first two steps NaN

    trainer._policy_forward = poisoned
    before = trainable(trainer.model)
    trainer.train()
    rows = [__import__("json").loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
    assert [r["skipped_steps"] for r in rows] == [1, 2, 2, 2]
    after = trainable(trainer.model)
    assert any(not torch.equal(before[k], after[k]) for k in before)  # later steps did update
    assert all(torch.isfinite(v).all() for v in after.values())

    always = GRPOTrainer(lora_model(tok), tok, [char_score], dataset(),
                         args(tmp_path / "b", max_steps=10, max_nonfinite_steps=3), show_progress=False)
    always._policy_forward = lambda mb, *args, **kwargs: replace(
        out := original(mb, *args, **kwargs), logps=out.logps * float("nan"))
    with pytest.raises(RlvrError, match="3 optimizer steps in a row"):
        always.train()


RUN = """
import sys
sys.path.insert(0, {tests!r})
from conftest import make_tokenizer
from test_grpo_trainer import args, char_score, dataset, lora_model
from rlvr.grpo.trainer import GRPOTrainer
from pathlib import Path
tok = make_tokenizer()
cfg = args(Path({root!r}), max_steps=12, save_steps=1, steps_per_generation=2, per_device_train_batch_size=4)
GRPOTrainer(lora_model(tok), tok, [char_score], dataset(), cfg, show_progress=False).train({resume!r} or None)
"""


def run_training(root: Path, resume: str = "", kill_after_steps: int | None = None) -> int:
    script = RUN.format(tests=str(Path(__file__).parent), root=str(root), resume=resume)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    if kill_after_steps is not None:
        metrics = root / "run" / "metrics.jsonl"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if metrics.is_file() and metrics.read_text().count("\n") >= kill_after_steps:
                break
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=300)
    return proc.returncode


def test_kill_9_then_resume_ends_with_the_uninterrupted_adapter(tmp_path):
    assert run_training(tmp_path / "full") == 0
    want = load_file(str(tmp_path / "full" / "run" / "final" / "adapter_model.safetensors"))

    killed = tmp_path / "killed"
    code = run_training(killed, kill_after_steps=random.Random().randint(2, 9))
    assert code == -signal.SIGKILL
    assert not (killed / "run" / "final").exists()
    assert run_training(killed, resume="latest") == 0
    got = load_file(str(killed / "run" / "final" / "adapter_model.safetensors"))
    assert want.keys() == got.keys()
    for k in want:
        torch.testing.assert_close(got[k], want[k], atol=1e-6, rtol=1e-5)


def test_crash_during_save_leaves_the_previous_checkpoint_loadable(tmp_path, monkeypatch):
    import rlvr.train.checkpoint as ckpt

    tok = make_tokenizer()
    cfg = args(tmp_path, max_steps=4, save_steps=2)
    trainer = GRPOTrainer(lora_model(tok), tok, [char_score], dataset(), cfg, show_progress=False)
    real_save = torch.save

    def dying_save(obj, path, *a, **kw):
        if "step-000004" in str(path):
            raise OSError("disk died mid-save")
        return real_save(obj, path, *a, **kw)

    monkeypatch.setattr(ckpt.torch, "save", dying_save)
    with pytest.raises(OSError, match="mid-save"):
        trainer.train()
    monkeypatch.setattr(ckpt.torch, "save", real_save)
    root = tmp_path / "run" / "checkpoints"
    assert (root / "latest").read_text() == "step-000002"
    assert not (root / "step-000004").exists()
    resumed = GRPOTrainer(lora_model(tok), tok, [char_score], dataset(), cfg, show_progress=False)
    resumed.train(resume_from_checkpoint="latest")
    assert resumed.global_step == 4


def test_out_of_memory_in_the_update_retries_with_half_micro_batches(tmp_path):
    tok = make_tokenizer()
    trainer = GRPOTrainer(lora_model(tok), tok, [char_score], dataset(), args(tmp_path, max_steps=2),
                          show_progress=False)
    sizes = []
    real = trainer.forward_backward

    def flaky(index, counts, sums):
        sizes.append(index.numel())
        if len(sizes) == 1:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(index, counts, sums)

    trainer.forward_backward = flaky
    trainer.train()
    assert sizes[:3] == [8, 4, 4]
    assert trainer.global_step == 2

    always = GRPOTrainer(lora_model(tok), tok, [char_score], dataset(), args(tmp_path / "b", max_steps=2),
                         show_progress=False)

    def oom(*a):
        raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

    always.forward_backward = oom
    with pytest.raises(RlvrError, match="step 1: out of memory in the update even with half-size micro-batches"):
        always.train()


def test_out_of_memory_in_the_update_discards_the_offloaded_activations(tmp_path):
    """The failed forward's saved layer inputs must not stay in the offloader's slots."""
    from rlvr.models.checkpointing import active_offloader
    from rlvr.models.forward import completion_logprobs

    tok = make_tokenizer()
    trainer = GRPOTrainer(lora_model(tok), tok, [char_score], dataset(),
                          args(tmp_path, max_steps=1, gradient_checkpointing="offload"), show_progress=False)
    real = trainer.forward_backward
    calls = []

    def forward_then_oom(index, counts, sums):
        calls.append(index.numel())
        if len(calls) == 1:
            mb = trainer.batch.rows(index)
            completion_logprobs(trainer.model, mb.prompt_ids, mb.prompt_mask, mb.completion_ids, mb.completion_mask)
            raise torch.OutOfMemoryError("CUDA out of memory (simulated), after the layers saved their inputs")
        return real(index, counts, sums)

    trainer.forward_backward = forward_then_oom
    trainer.train()
    offloader = active_offloader(trainer.model)
    assert offloader is not None and offloader.slots == []


def test_out_of_memory_in_the_rollout_retries_with_half_sub_batches(tmp_path, caplog):
    tok = make_tokenizer()
    trainer = GRPOTrainer(lora_model(tok), tok, [char_score], dataset(), args(tmp_path, max_steps=1),
                          show_progress=False)
    real = trainer.engine._generate_chunk
    seen = []

    def flaky(rows, params, *progress):
        seen.append(len(rows))
        if len(seen) == 1:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(rows, params, *progress)

    trainer.engine._generate_chunk = flaky
    with caplog.at_level("WARNING", logger="rlvr"):
        trainer.train()
    assert seen == [8, 4, 4]  # the round's 8 rows, then halves
    assert "retrying with sub-batches of 4 rows" in caplog.text


def test_native_rollout_retry_halves_the_rows_its_kv_budget_allowed(tmp_path, caplog):
    """The KV budget caps a sub-batch below half the round: the retry must halve that, not rerun it."""
    from rlvr.rollout.native import NativeEngine

    tok = make_tokenizer()
    model = lora_model(tok)
    engine = NativeEngine(model, tok, cuda_graphs=False)
    real = engine._generate_batch
    seen = []

    def flaky(w, rows, params, gen, *progress):
        seen.append(len(rows))
        if len(seen) == 1:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(w, rows, params, gen, *progress)

    engine._generate_batch = flaky
    # 16 rows per round (per_device 8 × 2 steps); a KV budget of 4 rows per sub-batch, below half of 16.
    engine._rows_per_batch = lambda w, params, longest, g, n: min(4, engine.batch_size or 4, n)
    cfg = args(tmp_path, max_steps=1, steps_per_generation=2, gradient_accumulation_steps=2, max_completion_length=4)
    trainer = GRPOTrainer(model, tok, [char_score], dataset(), cfg, engine=engine, show_progress=False)
    with caplog.at_level("WARNING", logger="rlvr"):
        trainer.train()
    assert seen[:2] == [4, 2]
    assert "retrying with sub-batches of 2 rows" in caplog.text


SLOW_SAVE = """
import sys, time
sys.path.insert(0, {tests!r})
import torch
import rlvr.train.checkpoint as ckpt
real = torch.save
def slow(obj, path, *a, **kw):
    if "step-000004" in str(path):
        open({marker!r}, "w").close()
        time.sleep(60)  # killed here, half-way through writing checkpoint 4
    return real(obj, path, *a, **kw)
ckpt.torch.save = slow
from conftest import make_tokenizer
from test_grpo_trainer import args, char_score, dataset, lora_model
from rlvr.grpo.trainer import GRPOTrainer
from pathlib import Path
tok = make_tokenizer()
GRPOTrainer(lora_model(tok), tok, [char_score], dataset(), args(Path({root!r}), max_steps=6, save_steps=2),
            show_progress=False).train()
"""


def test_kill_9_mid_save_leaves_the_previous_checkpoint_loadable(tmp_path):
    marker = tmp_path / "saving"
    script = SLOW_SAVE.format(tests=str(Path(__file__).parent), root=str(tmp_path), marker=str(marker))
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not marker.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert marker.exists(), proc.stderr.read()[-2000:] if proc.poll() is not None else "never reached the save"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    root = tmp_path / "run" / "checkpoints"
    assert (root / "latest").read_text() == "step-000002"
    assert (root / ".tmp-step-000004").exists() and not (root / "step-000004").exists()
    tok = make_tokenizer()
    resumed = GRPOTrainer(lora_model(tok), tok, [char_score], dataset(), args(tmp_path, max_steps=6, save_steps=2),
                          show_progress=False)
    resumed.train(resume_from_checkpoint="latest")
    assert resumed.global_step == 6 and (root / "latest").read_text() == "step-000006"
