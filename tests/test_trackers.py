"""`report_to`: metrics mirrored to TensorBoard (read back from the event files), missing packages reported
as one line before training starts, and the setting validated like every other."""

from __future__ import annotations

import json
import sys

import pytest
from conftest import make_model, make_tokenizer

from rlvr.config import GRPOConfig, SFTConfig, config_from_dict
from rlvr.errors import RlvrError
from rlvr.grpo.trainer import GRPOTrainer
from rlvr.sft.trainer import SFTTrainer
from rlvr.train.trackers import open_tracker, scalars


def count_a(prompts, completions, **kw):
    return [c[0]["content"].count("a") / max(1, len(c[0]["content"])) for c in completions]


def tiny_model(tok):
    model = make_model("llama", vocab_size=len(tok))
    model.generation_config.eos_token_id = tok.eos_token_id
    return model


def grpo_args(tmp_path, **kw):
    return GRPOConfig(**{**dict(output_dir=str(tmp_path / "run"), per_device_train_batch_size=8, num_generations=4,
                                max_completion_length=8, max_steps=2, learning_rate=1e-3, save_steps=100,
                                warmup_ratio=0.0), **kw})


def prompts(n=16):
    return [{"prompt": [{"role": "user", "content": f"q{i}"}], "answer": str(i)} for i in range(n)]


def read_events(log_dir) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_grpo_metrics_reach_tensorboard(tmp_path):
    pytest.importorskip("tensorboard", reason="pip install tensorboard (in the test extra)")
    tok = make_tokenizer()
    GRPOTrainer(tiny_model(tok), tok, [count_a], prompts(), grpo_args(tmp_path, report_to="tensorboard"),
                show_progress=False).train()
    rows = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
    events = read_events(tmp_path / "run" / "tensorboard")
    for key in ("reward", "reward_std", "rewards/count_a/mean", "loss", "learning_rate", "grad_norm",
                "completions/mean_length", "time/rollout", "entropy"):
        assert [s for s, _ in events[key]] == [r["step"] for r in rows], key
        assert [v for _, v in events[key]] == pytest.approx([r[key] for r in rows], rel=1e-6), key
    assert "step" not in events


def test_sft_metrics_reach_tensorboard_and_run_json(tmp_path):
    pytest.importorskip("tensorboard", reason="pip install tensorboard (in the test extra)")
    tok = make_tokenizer()
    data = [{"prompt": [{"role": "user", "content": f"{i}+1?"}], "completion": f"{i + 1}"} for i in range(8)]
    cfg = SFTConfig(output_dir=str(tmp_path / "sft"), per_device_train_batch_size=4, max_steps=2,
                    report_to="tensorboard")
    SFTTrainer(tiny_model(tok), tok, data, cfg, show_progress=False).train()
    rows = [json.loads(line) for line in open(tmp_path / "sft" / "metrics.jsonl")]
    events = read_events(tmp_path / "sft" / "tensorboard")
    assert [v for _, v in events["loss"]] == pytest.approx([r["loss"] for r in rows], rel=1e-6)
    run = json.loads((tmp_path / "sft" / "run.json").read_text())
    assert run["status"] == "finished" and run["trainer"] == "sft" and run["step"] == 2


@pytest.mark.parametrize("backend, package", [("tensorboard", "tensorboard"), ("wandb", "wandb"),
                                              ("trackio", "trackio")])
def test_a_missing_tracker_package_is_one_line_naming_it(tmp_path, monkeypatch, backend, package):
    # None in sys.modules makes `import x` raise ImportError, as if the package were not installed.
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard" if backend == "tensorboard" else backend, None)
    with pytest.raises(RlvrError, match=f"pip install {package}") as e:
        open_tracker(backend, tmp_path, {})
    assert "\n" not in str(e.value)


def test_a_missing_tracker_stops_training_before_it_starts(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)
    tok = make_tokenizer()
    trainer = GRPOTrainer(tiny_model(tok), tok, [count_a], prompts(), grpo_args(tmp_path, report_to="wandb"),
                          show_progress=False)
    with pytest.raises(RlvrError, match="pip install wandb"):
        trainer.train()
    assert not (tmp_path / "run" / "metrics.jsonl").exists() and trainer.global_step == 0


def test_report_to_is_validated():
    for cls in (GRPOConfig, SFTConfig):
        with pytest.raises(RlvrError, match="did you mean 'tensorboard'"):
            cls(report_to="tensorbord").validate()
    with pytest.raises(RlvrError, match="train.report_to"):
        config_from_dict({"train": {"report_to": "mlflow"}})
    assert config_from_dict({"train": {"report_to": "tensorboard"}}).train.report_to == "tensorboard"


def test_only_finite_numbers_are_logged():
    assert scalars({"step": 3, "reward": 1, "kl": None, "loss": float("nan"), "name": "x", "flag": True,
                    "lr": 1e-5}) == {"reward": 1.0, "lr": 1e-5}
