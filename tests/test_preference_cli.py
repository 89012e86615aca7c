"""`rlvr dpo|cpo|orpo|kto CONFIG.yaml` on a tiny model saved to disk: a run, a resume, bad inputs."""

from __future__ import annotations

import json

import pytest
import yaml
from conftest import make_model, make_tokenizer

from rlvr.cli import main


@pytest.fixture
def tiny_dir(tmp_path):
    tok = make_tokenizer()
    model = make_model("llama", vocab_size=len(tok))
    model.save_pretrained(tmp_path / "tiny")
    tok.save_pretrained(tmp_path / "tiny")
    return tmp_path / "tiny"


def write_rows(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def config(tmp_path, tiny_dir, data, **train):
    cfg = {"model": {"model_name_or_path": str(tiny_dir), "lora_rank": 4, "lora_alpha": 8},
           "data": {"dataset": str(data), "eval_size": 0},
           "train": {"output_dir": str(tmp_path / "run"), "per_device_train_batch_size": 4, "max_steps": 2,
                     "logging_steps": 1, "save_steps": 1, **train}}
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


PAIRS = [{"prompt": [{"role": "user", "content": f"say {i}"}], "chosen": [{"role": "assistant", "content": f"{i}"}],
          "rejected": [{"role": "assistant", "content": f"{i + 1}?"}]} for i in range(8)]


@pytest.mark.parametrize("command,train", [("dpo", {"loss_type": "ipo"}), ("cpo", {"loss_type": "simpo",
                                                                                     "cpo_alpha": 0.0}),
                                           ("orpo", {}), ("kto", {})])
def test_each_command_trains_and_resumes(tmp_path, tiny_dir, capsys, command, train):
    path = config(tmp_path, tiny_dir, write_rows(tmp_path / "prefs.jsonl", PAIRS), **train)
    assert main([command, str(path), "--set", "train.max_steps=1"]) == 0
    assert main([command, str(path), "--resume"]) == 0
    rows = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
    assert [r["step"] for r in rows] == [1, 2]
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["status"] == "finished" and (tmp_path / "run" / "final" / "adapter_config.json").is_file()
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["step"] == 2


@pytest.mark.parametrize("rows,message", [
    ([{"prompt": "p", "chosen": "a"}], "row 0: no 'rejected' column"),
    ([{"prompt": "p", "chosen": "a", "rejected": "a"}], "row 0: 'chosen' and 'rejected' are identical"),
    ([{"prompt": "p", "chosen": "a", "rejected": "b"}, {"prompt": "p", "chosen": "", "rejected": "b"}],
     "row 1: 'chosen' is empty"),
])
def test_bad_data_exits_2_with_one_line_before_the_model_loads(tmp_path, capsys, rows, message):
    path = config(tmp_path, tmp_path / "no-such-model", write_rows(tmp_path / "bad.jsonl", rows))
    assert main(["dpo", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("rlvr: error: ") and message in err[-1] and "bad.jsonl" in err[-1]


def test_bad_setting_exits_2(tmp_path, capsys):
    path = config(tmp_path, tmp_path / "m", tmp_path / "d.jsonl", loss_type="sigmoidd")
    assert main(["dpo", str(path)]) == 2
    assert "did you mean 'sigmoid'" in capsys.readouterr().err
