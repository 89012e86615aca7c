"""What rlvr chooses for a model's layout: LoRA targets, attention implementation, export, rollout backend."""

from __future__ import annotations

import dataclasses
import logging

import pytest
import yaml
from conftest import make_model, make_tokenizer
from families import family_model

from rlvr.config import GRPOConfig, ModelConfig, RunConfig
from rlvr.errors import RlvrError
from rlvr.export.save import load_run
from rlvr.models import load_model
from rlvr.models.loading import attach_lora
from rlvr.models.lora_targets import adapted_modules, lora_targets
from rlvr.rollout.native import NativeEngine
from rlvr.train.run_dir import run_details

DEFAULT = ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]


@pytest.mark.parametrize(("kind", "expected", "warns"), [
    ("llama", DEFAULT, False),
    ("phi3", ["down_proj", "gate_up_proj", "o_proj", "qkv_proj"], True),
    ("gpt_neox", ["dense", "dense_4h_to_h", "dense_h_to_4h", "query_key_value"], True),
    ("qwen3_moe", ["k_proj", "o_proj", "q_proj", "v_proj", "experts.down_proj", "experts.gate_up_proj"], True),
])
def test_default_lora_targets_follow_the_layout(kind, expected, warns, caplog):
    model = make_model(kind, vocab_size=104) if kind in ("llama", "gpt_neox") else family_model(kind, 104)
    with caplog.at_level(logging.WARNING, logger="rlvr"):
        lora = attach_lora(model, rank=4)
    assert adapted_modules(lora) == expected
    lines = [r.getMessage() for r in caplog.records]
    assert bool(lines) == warns
    if warns:
        assert len(lines) == 1 and all(name in lines[0] for name in expected if "." not in name)
    if kind == "qwen3_moe":
        assert "experts" in lines[0] and "lora_target_parameters" in lines[0] and "router only when named" in lines[0]


def test_all_linear_is_peft_and_trls_spelling():
    model = make_model("llama", vocab_size=104)
    assert sorted(lora_targets(model, "all-linear")) == DEFAULT
    assert sorted(lora_targets(model, ["all-linear"])) == DEFAULT  # lm_head is never adapted
    ModelConfig(lora_target_modules="all-linear").validate()
    with pytest.raises(RlvrError, match="all-linear"):
        ModelConfig(lora_target_modules="q_proj").validate()


def test_missing_targets_error_lists_the_models_linear_layers(caplog):
    model = make_model("gpt_neox", vocab_size=104)
    with pytest.raises(RlvrError, match="query_key_value, dense, dense_h_to_4h, dense_4h_to_h"):
        lora_targets(model, ["q_proj", "v_proj"])
    with caplog.at_level(logging.WARNING, logger="rlvr"):
        assert lora_targets(model, ["query_key_value", "q_proj"]) == ["query_key_value"]
    assert "q_proj (skipped)" in caplog.records[0].getMessage()


def _save(model, tmp_path):
    tok = make_tokenizer()
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    return tmp_path / "m"


@pytest.mark.parametrize("kind", ["gemma2", "gpt_oss"])
def test_unsupported_sdpa_becomes_eager_with_one_warning(kind, tmp_path, caplog):
    folder = _save(family_model(kind, len(make_tokenizer())), tmp_path)
    with caplog.at_level(logging.WARNING, logger="rlvr"):
        model, _ = load_model(str(folder), device="cpu", attn_implementation="sdpa", lora_rank=4)
    assert model.config._attn_implementation == "eager"
    assert [r.getMessage() for r in caplog.records if "attn_implementation" in r.getMessage()] == [
        f"model.attn_implementation 'sdpa' is not supported by {type(model.get_base_model()).__name__}; "
        "using 'eager' (set model.attn_implementation to choose)"]


@pytest.mark.parametrize(("kind", "attn"), [("llama", "eager"), ("gemma2", "sdpa")])
def test_export_loads_the_run_with_its_attn_implementation(kind, attn, tmp_path):
    tok = make_tokenizer()
    base = family_model(kind, len(tok))
    folder = _save(base, tmp_path)
    run_dir = tmp_path / "run"
    cfg = RunConfig(model=ModelConfig(model_name_or_path=str(folder), lora_rank=4, attn_implementation=attn),
                    train=GRPOConfig(output_dir=str(run_dir)))
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text(yaml.safe_dump(dataclasses.asdict(cfg)))
    attach_lora(base, rank=4).save_pretrained(run_dir / "final")
    model, _ = load_run(run_dir)
    assert model.config._attn_implementation == "eager"  # llama: as the run asked; gemma2: what it supports


def test_native_fallback_warns_once_and_is_recorded(caplog):
    tok = make_tokenizer()
    model = attach_lora(make_model("gpt2", vocab_size=len(tok)), rank=4, target_modules=["c_attn"])
    with caplog.at_level(logging.WARNING, logger="rlvr"):
        engine = NativeEngine(model, tok)
    assert [r.levelno for r in caplog.records] == [logging.WARNING]
    assert "model_type 'gpt2'" in caplog.records[0].getMessage()
    assert engine.backend_name == "hf" and "fell back: model_type 'gpt2'" in engine.describe()
    details = run_details(model, engine)
    assert details["rollout_backend"] == "hf" and details["lora_target_modules"] == ["c_attn"]
    assert NativeEngine(make_model("llama", vocab_size=len(tok)), tok).backend_name == "native"
