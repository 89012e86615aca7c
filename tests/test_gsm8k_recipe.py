"""The GSM8K recipe (examples/gsm8k_smollm2*.yaml) and bench/gsm8k_recipe.py: the two stages fit together, and
the report takes each stage's last held-out evaluation, the wall times of its calls, and writes the result line
and its chart."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pytest
import yaml

from rlvr.config import GRPOConfig, SFTConfig, load_run_config
from rlvr.rewards.registry import resolve_rewards
from rlvr.rewards.scoring import unique_reward_names

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
import gsm8k_recipe  # noqa: E402


def test_the_two_stages_fit_together():
    sft = load_run_config(ROOT / "examples" / "gsm8k_smollm2_sft.yaml", SFTConfig)
    grpo = load_run_config(ROOT / "examples" / "gsm8k_smollm2.yaml", GRPOConfig)
    assert grpo.model.adapter_path == f"{sft.train.output_dir}/final"
    assert sft.data == grpo.data and sft.data.eval_size == 500 and sft.data.eval_dataset is None  # the last 500
    assert sft.data.dataset == "../shared/data/gsm8k/train.jsonl"
    assert sft.eval == grpo.eval and not grpo.eval.do_sample  # the same greedy evaluation in both
    assert sft.model.model_name_or_path == grpo.model.model_name_or_path == "smollm2-135m-instruct"
    names = unique_reward_names(resolve_rewards(grpo.rewards))
    assert grpo.train.filter_groups_metric in names and len(grpo.train.reward_weights) == len(names)
    assert sft.train.eval_strategy == grpo.train.eval_strategy == "steps"


def test_stage_config_points_both_stages_into_the_run_directory(tmp_path):
    args = argparse.Namespace(
        set=["train.num_generations=4"], run_dir=str(tmp_path), dataset="data.jsonl", limit=16, eval_limit=4,
        max_steps=2, max_new_tokens=16)
    grpo = gsm8k_recipe.stage_config("grpo", args)
    assert grpo.train.output_dir == str(tmp_path / "grpo")
    assert grpo.model.adapter_path == str(tmp_path / "sft" / "final")
    assert (grpo.data.dataset, grpo.data.limit, grpo.eval.limit) == ("data.jsonl", 16, 4)
    assert (grpo.train.max_steps, grpo.train.max_completion_length, grpo.eval.max_new_tokens) == (2, 16, 16)
    assert grpo.train.num_generations == 4
    args.set = []
    assert gsm8k_recipe.stage_config("sft", args).train.output_dir == str(tmp_path / "sft")


def fake_stage(run_dir: Path, stage: str, curve: list[tuple[int, float, float, float]], extra: dict | None = None):
    out = run_dir / stage
    out.mkdir(parents=True)
    lines = []
    for step, acc, fmt, length in curve:
        lines.append({"step": step, "loss": 0.5, "eval/accuracy": acc, "eval/format": fmt, "eval/mean_length": length,
                      "eval/problems": 500})
        lines.append({"step": step + 1, "loss": 0.4})  # a step without an evaluation
    (out / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    (out / "run.json").write_text(json.dumps({"status": "finished", **(extra or {})}))
    (out / "config.yaml").write_text(yaml.safe_dump({"train": {"output_dir": str(out)}}))


def test_the_report_takes_each_stages_last_evaluation_and_sums_the_calls(tmp_path):
    fake_stage(tmp_path, "sft", [(0, 0.0, 0.0, 240.0), (100, 0.02, 0.5, 190.0), (218, 0.024, 0.6, 195.0)])
    fake_stage(tmp_path, "grpo", [(0, 0.024, 0.6, 195.0), (10, 0.03, 0.9, 180.0), (60, 0.04, 0.98, 170.0)],
               {"best": {"metric": "eval/accuracy", "value": 0.04, "step": 60}, "warnings": ["step 9: ..."]})
    calls = [{"stage": "sft", "wall_seconds": 100.0, "device": "H200"},
             {"stage": "grpo", "wall_seconds": 450.0, "device": "H200"},
             {"stage": "grpo", "wall_seconds": 300.5, "device": "H200"}]
    (tmp_path / gsm8k_recipe.CALLS).write_text("".join(json.dumps(c) + "\n" for c in calls))
    result = gsm8k_recipe.summarize(tmp_path)
    assert result["eval_problems"] == 500 and result["base_accuracy"] == 0.0
    assert (result["sft_accuracy"], result["grpo_accuracy"]) == (0.024, 0.04)
    assert result["accuracy_ratio"] == pytest.approx(0.04 / 0.024)
    assert result["wall_seconds"] == {"sft": 100.0, "grpo": 750.5, "training_total": 850.5}
    assert result["goal_met"] is True  # 1.67× in 14 minutes
    assert (result["sft_steps"], result["grpo_steps"], result["grpo_mean_length"]) == (218, 60, 170.0)
    assert [p["step"] for p in result["curves"]["grpo"]] == [0, 10, 60]
    assert result["grpo_best"]["step"] == 60 and result["warnings"]["grpo"] == ["step 9: ..."]

    rc = gsm8k_recipe.main(["--stage", "report", "--run-dir", str(tmp_path), "--results-dir", str(tmp_path / "out"),
                            "--tag", "test"])
    assert rc == 0
    written = list((tmp_path / "out").glob("*-gsm8k-recipe-test.jsonl"))
    assert len(written) == 1 and json.loads(written[0].read_text())["grpo_accuracy"] == 0.04
    assert written[0].with_suffix(".png").stat().st_size > 10_000


def test_the_goal_needs_both_the_ratio_and_the_time(tmp_path):
    fake_stage(tmp_path, "sft", [(218, 0.03, 0.6, 195.0)])
    fake_stage(tmp_path, "grpo", [(60, 0.04, 0.98, 170.0)])
    (tmp_path / gsm8k_recipe.CALLS).write_text(json.dumps({"stage": "grpo", "wall_seconds": 60.0, "device": "x"}))
    assert gsm8k_recipe.summarize(tmp_path)["goal_met"] is False  # 1.33×


def test_a_time_budget_stops_training_with_a_checkpoint_and_the_next_call_resumes(tmp_path):
    import time

    from conftest import make_model, make_tokenizer

    from rlvr.models.loading import attach_lora
    from rlvr.sft.trainer import SFTTrainer

    tok = make_tokenizer()
    data = [{"prompt": [{"role": "user", "content": f"{i}+{i}?"}], "completion": f"it is {2 * i}"} for i in range(8)]

    def trainer():
        cfg = SFTConfig(output_dir=str(tmp_path), per_device_train_batch_size=4, max_steps=10_000, save_steps=10_000,
                        learning_rate=1e-3, warmup_ratio=0.0)
        return SFTTrainer(attach_lora(make_model("llama", vocab_size=len(tok)), 4, 8, seed=0), tok, data, cfg,
                          show_progress=False)

    # The budget may run out before training starts (a loaded machine): the stop waits for the run to catch it.
    with gsm8k_recipe.time_budget(0.5, since=time.perf_counter()):
        first = trainer().train()
    assert first["interrupted"] and 0 < first["step"] < 10_000
    assert (tmp_path / "checkpoints" / "latest").read_text() == f"step-{first['step']:06d}"
    with gsm8k_recipe.time_budget(0.5, since=time.perf_counter()):
        second = trainer().train("latest")
    assert second["interrupted"] and second["step"] > first["step"]
