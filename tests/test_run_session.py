"""The run session through the CLI and the trainers: a run directory is never mixed with another run,
--resume refuses changed math, identical configs and seeds give identical adapters, one step numbering."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from rlvr.cli import main


@pytest.fixture
def model_dir(tiny_model_dir):
    return tiny_model_dir


def write_config(tmp_path: Path, model_dir: Path, command: str, **train) -> Path:
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({"question": f"{i}+{i}?", "answer": str(2 * i),
                                        "completion": f"<answer>{2 * i}</answer>"}) + "\n" for i in range(12)))
    base = {"output_dir": str(tmp_path / "run"), "max_steps": 2, "per_device_train_batch_size": 4,
            "learning_rate": 1e-2, "optim": "adamw_torch"}
    if command == "train":
        base.update(num_generations=4, max_completion_length=6, save_steps=1)
    config = {"model": {"model_name_or_path": str(model_dir), "dtype": "float32", "lora_rank": 4},
              "data": {"dataset": str(data), "completion_column": "completion", "system_prompt": "Add.",
                       "eval_size": 2},
              "rewards": ["gsm8k"], "train": {**base, **train}}
    path = tmp_path / f"{command}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def cli(capsys, *argv) -> tuple[int, list[str]]:
    code = main(list(argv))
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, [line for line in err.splitlines() if line.strip()]


def assert_one_line_error(code, lines, *needles):
    assert code == 2 and len(lines) == 1 and lines[0].startswith("rlvr: error: "), lines
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


@pytest.mark.parametrize("command", ["sft", "train"])
def test_a_second_run_into_a_run_directory_is_refused_unless_overwrite(tmp_path, capsys, model_dir, command):
    config = write_config(tmp_path, model_dir, command)
    code, lines = cli(capsys, command, str(config))
    assert code == 0
    assert f"rlvr: run directory {tmp_path / 'run'}; watch it with: rlvr dashboard {tmp_path / 'run'}" in lines
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "run").rglob("*")}

    code, lines = cli(capsys, command, str(config))
    assert_one_line_error(code, lines, "already holds a run", "--resume", "--overwrite")
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "run").rglob("*")} == before  # nothing written

    assert cli(capsys, command, str(config), "--overwrite")[0] == 0
    steps = [json.loads(line)["step"] for line in open(tmp_path / "run" / "metrics.jsonl")]
    assert steps == [1, 2]  # one run, not two appended


def test_resume_refuses_changed_math_unless_forced(tmp_path, capsys, model_dir):
    config = write_config(tmp_path, model_dir, "sft", save_steps=1)
    assert cli(capsys, "sft", str(config), "--set", "train.max_steps=1")[0] == 0
    code, lines = cli(capsys, "sft", str(config), "--resume", "--set", "train.learning_rate=0.5",
                      "--set", "train.weight_decay=0.3")
    assert_one_line_error(code, lines, "learning_rate: 0.01 → 0.5", "weight_decay: 0.0 → 0.3", "--force")
    assert [json.loads(line)["step"] for line in open(tmp_path / "run" / "metrics.jsonl")] == [1]

    # max_steps may change: a resumed run goes on to step 2.
    assert cli(capsys, "sft", str(config), "--resume", "--set", "train.learning_rate=0.5", "--force")[0] == 0
    assert [json.loads(line)["step"] for line in open(tmp_path / "run" / "metrics.jsonl")] == [1, 2]


def test_resume_refuses_a_changed_model_before_loading_it(tmp_path, capsys, model_dir):
    config = write_config(tmp_path, model_dir, "sft", save_steps=1)
    assert cli(capsys, "sft", str(config), "--set", "train.max_steps=1")[0] == 0
    assert_one_line_error(*cli(capsys, "sft", str(config), "--resume", "--set", "model.lora_rank=8"),
                          "model.lora_rank: 4 → 8", "--force")


def test_output_dir_that_is_a_file_is_one_line(tmp_path, capsys, model_dir):
    (tmp_path / "taken").write_text("")
    assert_one_line_error(*cli(capsys, "sft", str(write_config(tmp_path, model_dir, "sft")), "--output-dir",
                               str(tmp_path / "taken")), "is an existing file")


def test_force_without_resume_is_one_line(tmp_path, capsys, model_dir):
    assert_one_line_error(*cli(capsys, "sft", str(write_config(tmp_path, model_dir, "sft")), "--force"),
                          "--force goes with --resume")


def test_identical_configs_and_seeds_give_identical_adapter_bytes(tmp_path, capsys, model_dir):
    adapters = []
    for name in ("a", "b", "c"):
        seed = 7 if name != "c" else 8
        config = write_config(tmp_path, model_dir, "sft", output_dir=str(tmp_path / name), seed=seed)
        assert cli(capsys, "sft", str(config))[0] == 0
        adapters.append((tmp_path / name / "final" / "adapter_model.safetensors").read_bytes())
    assert adapters[0] == adapters[1]
    assert adapters[0] != adapters[2]


def test_samples_and_metrics_count_steps_alike(tmp_path, capsys, model_dir):
    config = write_config(tmp_path, model_dir, "train", completions_log_steps=1)
    assert cli(capsys, "train", str(config))[0] == 0
    metrics = [json.loads(line)["step"] for line in open(tmp_path / "run" / "metrics.jsonl")]
    samples = sorted({json.loads(line)["step"] for line in open(tmp_path / "run" / "samples.jsonl")})
    assert metrics == [1, 2] and samples == [1, 2]


def test_ctrl_c_during_sft_saves_and_exits_zero_with_the_resume_command(tmp_path, model_dir):
    config = write_config(tmp_path, model_dir, "sft", max_steps=100000, save_steps=100000)
    proc = subprocess.Popen([sys.executable, "-m", "rlvr", "sft", str(config)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=Path(__file__).parent.parent)
    metrics = tmp_path / "run" / "metrics.jsonl"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        if metrics.is_file() and metrics.read_text().count("\n") >= 2:
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, err[-2000:]
    step = json.loads(out.strip().splitlines()[-1])["step"]
    assert f"resume with: rlvr sft {config} --output-dir {tmp_path / 'run'} --resume" in err
    assert (tmp_path / "run" / "checkpoints" / "latest").read_text().strip() == f"step-{step:06d}"
    assert json.loads((tmp_path / "run" / "run.json").read_text())["status"] == "interrupted"


def test_resume_accepts_the_optimizer_an_8bit_one_fell_back_to(monkeypatch):
    # The run records the optimizer that ran: adamw_8bit on a CPU ran as adamw_torch, and resuming the
    # same config there is no change of math; on a GPU with bitsandbytes it would be.
    import torch

    from rlvr.train import optim
    from rlvr.train.session import math_differences

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert math_differences({"optim": "adamw_torch"}, {"optim": "adamw_8bit"}) == []
    assert math_differences({"optim": "adamw_torch"}, {"optim": "sgd"}) == ["optim: 'adamw_torch' → 'sgd'"]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(optim.importlib.util, "find_spec", lambda name: object())
    assert math_differences({"optim": "adamw_torch"}, {"optim": "adamw_8bit"}) != []
