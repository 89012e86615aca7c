"""One base config for the trainer core: every trainer's config extends TrainerCoreConfig, each core field
is declared once, and each trainer keeps its own defaults."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest
import torch
from conftest import make_model, make_tokenizer

from rlvr.config import GRPOConfig, SFTConfig, TrainerCoreConfig, trainer_defaults
from rlvr.preference.config import CPOConfig, DPOConfig, KTOConfig, ORPOConfig

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = [GRPOConfig, SFTConfig, DPOConfig, CPOConfig, ORPOConfig, KTOConfig]
CORE = [f.name for f in dataclasses.fields(TrainerCoreConfig)]
TRAINER_CONFIGS = {"TrainerCoreConfig", "PreferenceTrainingConfig", *(cls.__name__ for cls in CONFIGS)}


def test_every_core_field_is_declared_once():
    declared: dict[str, list[str]] = {}
    for path in (ROOT / "rlvr" / "config.py", ROOT / "rlvr" / "preference" / "config.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and node.name in TRAINER_CONFIGS:
                for stmt in node.body:
                    if isinstance(stmt, ast.AnnAssign) and stmt.target.id in CORE:
                        declared.setdefault(stmt.target.id, []).append(node.name)
    assert declared == {name: ["TrainerCoreConfig"] for name in CORE}
    for cls in CONFIGS:
        assert issubclass(cls, TrainerCoreConfig)
        assert [f.name for f in dataclasses.fields(cls)][:len(CORE)] == CORE


@pytest.mark.parametrize(("cls", "defaults"), [
    (GRPOConfig, dict(output_dir="runs/grpo", learning_rate=5e-6, optim="adamw_8bit", adam_beta2=0.99,
                      weight_decay=0.1, max_grad_norm=0.1, lr_scheduler_type="cosine", warmup_ratio=0.1,
                      num_train_epochs=1.0, logging_steps=1, save_steps=50, save_total_limit=2)),
    (SFTConfig, dict(output_dir="runs/sft", learning_rate=2e-4, optim="adamw_torch", adam_beta2=0.999,
                     warmup_ratio=0.03, num_train_epochs=1.0, logging_steps=1, save_steps=100, save_total_limit=2)),
    (DPOConfig, dict(output_dir="runs/dpo", learning_rate=1e-6, optim="adamw_torch", num_train_epochs=3.0,
                     logging_steps=10, save_steps=500, save_total_limit=None)),
    (KTOConfig, dict(output_dir="runs/kto", learning_rate=1e-6, logging_steps=10)),
])
def test_each_trainer_keeps_its_defaults(cls, defaults):
    config = cls()
    assert {name: getattr(config, name) for name in defaults} == defaults
    assert config.max_nonfinite_steps == 5 and config.ddp_timeout == 1800 and config.report_to == "none"


def test_trainer_defaults_only_sets_fields_a_base_declares():
    with pytest.raises(TypeError, match="learning_rat is not a field"):
        @dataclasses.dataclass
        @trainer_defaults(learning_rat=1e-3)
        class Typo(TrainerCoreConfig):
            pass


@pytest.mark.parametrize("cls", CONFIGS)
@pytest.mark.parametrize(("setting", "message"), [({"max_steps": 0}, "train.max_steps: 0 is not a number of steps"),
                                                  ({"learning_rate": 0}, "train.learning_rate must be > 0"),
                                                  ({"logprob_chunk_elements": 0}, "logprob_chunk_elements must be > 0"),
                                                  ({"optim": "adamw_9bit"}, "train.optim: 'adamw_9bit'")])
def test_the_core_fields_are_checked_alike_in_every_trainer(cls, setting, message):
    from rlvr.errors import RlvrError

    with pytest.raises(RlvrError, match=message):
        cls(**setting).validate()


def test_sft_computes_its_log_probs_in_chunks_of_logprob_chunk_elements(tmp_path, monkeypatch):
    import rlvr.sft.trainer as sft
    from rlvr.models.forward import labelled_logprobs

    seen = []

    def spy(*args):
        seen.append(args[-1])
        return labelled_logprobs(*args)

    monkeypatch.setattr(sft, "labelled_logprobs", spy)
    tok = make_tokenizer()
    data = [{"prompt": [{"role": "user", "content": f"{i}+{i}?"}], "completion": f"<answer>{2 * i}</answer>"}
            for i in range(8)]
    losses = []
    for chunk in (1 << 26, len(tok)):  # the default, and one row of logits at a time
        torch.manual_seed(0)
        cfg = SFTConfig(output_dir=str(tmp_path / str(chunk)), per_device_train_batch_size=4, max_steps=2,
                        logprob_chunk_elements=chunk, optim="adamw_torch")
        result = sft.SFTTrainer(make_model("llama", vocab_size=len(tok)), tok, data, cfg, show_progress=False).train()
        losses.append(result["loss"])
    assert set(seen) == {1 << 26, len(tok)}
    assert losses[1] == pytest.approx(losses[0], rel=1e-5)
