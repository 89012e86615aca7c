"""Where rlvr runs something other than what the config asked for, it says so in a warning line and
records what ran."""

from __future__ import annotations

import logging

import pytest
import yaml

from rlvr.cli import main
from rlvr.train.optim import resolve_optim


def test_8bit_adamw_without_cuda_falls_back_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="rlvr"):
        assert resolve_optim("adamw_torch", on_cuda=False) == "adamw_torch"
        assert not caplog.records
        assert resolve_optim("adamw_8bit", on_cuda=False) == "adamw_torch"
    (record,) = caplog.records
    assert record.levelno == logging.WARNING
    assert record.getMessage().startswith("train.optim adamw_8bit needs a CUDA GPU; using adamw_torch")


@pytest.fixture(scope="module")
def base_folder(tmp_path_factory):
    from conftest import make_model, make_tokenizer

    folder = tmp_path_factory.mktemp("base") / "model"
    tok = make_tokenizer()
    model = make_model("llama", vocab_size=len(tok))
    model.generation_config.eos_token_id = tok.eos_token_id
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def test_a_cpu_run_says_and_records_what_it_changed(tmp_path, capsys, caplog, base_folder, monkeypatch):
    monkeypatch.delenv("RLVR_NO_PROGRESS", raising=False)
    config = {"model": {"model_name_or_path": str(base_folder), "lora_rank": 2},
              "data": {"dataset": "builtin:arithmetic", "limit": 4, "eval_size": 0},
              "train": {"optim": "adamw_8bit", "max_steps": 1, "num_generations": 2, "per_device_train_batch_size": 2,
                        "max_completion_length": 2, "max_prompt_length": 118, "rollout_backend": "hf",
                        "save_steps": 100, "log_completions": False}}
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    with caplog.at_level(logging.WARNING, logger="rlvr"):
        assert main(["train", str(path), "--output-dir", str(tmp_path / "run")]) == 0
    err = capsys.readouterr().err.splitlines()
    assert any(line.startswith(f"rlvr: loading {base_folder}") for line in err)
    assert any(line.startswith("rlvr: model loaded in ") for line in err)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(w.startswith("train.optim adamw_8bit needs a CUDA GPU; using adamw_torch instead") for w in warnings)
    # The system prompt and the template take 113 tokens (characters, with the test tokenizer): every
    # arithmetic question is longer than the 5 left.
    assert any(w.startswith("4 of 4 prompts are longer than train.max_prompt_length (118 tokens)") for w in warnings)
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["train"]["optim"] == "adamw_torch"
