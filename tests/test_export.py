"""Tests for rlvr.export: adapter saving, merged checkpoints that plain transformers loads, run export."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import yaml
from conftest import make_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from rlvr.config import GRPOConfig, ModelConfig, RunConfig
from rlvr.errors import RlvrError
from rlvr.export import export_run, merged_state_dict, save_lora, save_merged
from rlvr.models.loading import attach_lora, load_adapter

TEXT = "<|im_start|>user\nWhat is 12 + 30?<|im_end|>\n<|im_start|>assistant\n"


def randomize_lora_b(model, seed: int = 1) -> None:
    """peft starts lora_B at zero (a no-op adapter); random values make merging matter."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.2)


@pytest.fixture
def lora_model(tiny_model):
    model = attach_lora(tiny_model, rank=4, alpha=8)
    randomize_lora_b(model)
    return model.eval()


def logits(model, tokenizer) -> torch.Tensor:
    ids = torch.tensor([tokenizer(TEXT).input_ids])
    with torch.no_grad():
        return model(input_ids=ids).logits.float()


def snapshot(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_lora_changes_the_model(lora_model, tokenizer):
    with lora_model.disable_adapter():
        base = logits(lora_model, tokenizer)
    assert (logits(lora_model, tokenizer) - base).abs().max() > 1e-2


def test_merged_folder_loads_with_plain_transformers_and_matches_peft(lora_model, tokenizer, tmp_path):
    expected = logits(lora_model, tokenizer)
    save_merged(lora_model, tokenizer, tmp_path / "merged", dtype="float32")

    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    loaded_tok = AutoTokenizer.from_pretrained(tmp_path / "merged")
    assert not hasattr(loaded, "peft_config")
    assert loaded.dtype == torch.float32
    assert not any("lora" in k or "base_layer" in k for k in loaded.state_dict())
    assert loaded_tok(TEXT).input_ids == tokenizer(TEXT).input_ids
    assert loaded_tok.chat_template == tokenizer.chat_template
    torch.testing.assert_close(logits(loaded.eval(), loaded_tok), expected, atol=1e-4, rtol=0)


def test_save_merged_leaves_the_callers_model_unchanged(lora_model, tokenizer, tmp_path):
    before, before_logits = snapshot(lora_model), logits(lora_model, tokenizer)
    save_merged(lora_model, tokenizer, tmp_path / "merged", dtype="float16")

    after = lora_model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.dtype == torch.float32 for p in lora_model.parameters())
    assert not any(getattr(m, "merged", False) for m in lora_model.modules())
    assert torch.equal(logits(lora_model, tokenizer), before_logits)


def test_float16_export_is_float16_and_close(lora_model, tokenizer, tmp_path):
    save_merged(lora_model, tokenizer, tmp_path / "merged")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    assert loaded.dtype == torch.float16
    assert all(p.dtype == torch.float16 for p in loaded.parameters())
    torch.testing.assert_close(logits(loaded.float().eval(), tokenizer), logits(lora_model, tokenizer),
                               atol=2e-2, rtol=0)


def test_tied_embeddings_merge(tokenizer, tmp_path):
    model = attach_lora(make_model(vocab_size=len(tokenizer), tie_word_embeddings=True), rank=4)
    randomize_lora_b(model)
    save_merged(model.eval(), tokenizer, tmp_path / "merged", dtype="float32")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    assert loaded.lm_head.weight.data_ptr() == loaded.model.embed_tokens.weight.data_ptr()
    torch.testing.assert_close(logits(loaded, tokenizer), logits(model, tokenizer), atol=1e-4, rtol=0)


def test_dora_falls_back_to_peft_merge_on_a_copy(tiny_model, tokenizer, tmp_path):
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(tiny_model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                  use_dora=True))
    randomize_lora_b(model)
    model.eval()
    before = snapshot(model)
    save_merged(model, tokenizer, tmp_path / "merged", dtype="float32")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    torch.testing.assert_close(logits(loaded, tokenizer), logits(model, tokenizer), atol=1e-4, rtol=0)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_full_fine_tuned_model_is_saved_as_is(tiny_model, tokenizer, tmp_path):
    save_merged(tiny_model, tokenizer, tmp_path / "full", dtype="float32")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "full").eval()
    assert torch.equal(logits(loaded, tokenizer), logits(tiny_model.eval(), tokenizer))
    assert merged_state_dict(tiny_model).keys() == tiny_model.state_dict().keys()


def test_gguf_bases_are_exported_and_bitsandbytes_ones_refused(lora_model, tokenizer, tmp_path):
    # A GGUF base is dequantized on load but keeps a GgufConfig; the export must not carry it.
    base_config = lora_model.get_base_model().config
    base_config.quantization_config = {"quant_method": "gguf"}
    save_merged(lora_model, tokenizer, tmp_path / "merged", dtype="float32")
    assert "quantization_config" not in (tmp_path / "merged" / "config.json").read_text()
    assert base_config.quantization_config == {"quant_method": "gguf"}
    AutoModelForCausalLM.from_pretrained(tmp_path / "merged")

    base_config.quantization_config = {"quant_method": "bitsandbytes"}
    with pytest.raises(RlvrError, match="quantized"):
        save_merged(lora_model, tokenizer, tmp_path / "bnb")


def test_save_lora_round_trips(lora_model, tokenizer, tmp_path):
    path = save_lora(lora_model, tmp_path / "adapter")
    assert (path / "adapter_config.json").is_file()
    fresh = make_model(vocab_size=len(tokenizer))  # same seed: the same base weights
    reloaded = load_adapter(fresh, str(path)).eval()
    torch.testing.assert_close(logits(reloaded, tokenizer), logits(lora_model, tokenizer), atol=1e-6, rtol=0)


def test_save_lora_refuses_a_model_without_adapter(tiny_model, tmp_path):
    with pytest.raises(RlvrError, match="no LoRA adapter"):
        save_lora(tiny_model, tmp_path / "adapter")


def test_save_merged_refuses_an_unknown_dtype(lora_model, tokenizer, tmp_path):
    with pytest.raises(RlvrError, match="float16"):
        save_merged(lora_model, tokenizer, tmp_path / "m", dtype="fp16")


# ---------------------------------------------------------------- export_run


def make_run_dir(tmp_path, tiny_model, tokenizer, lora_model=None):
    """A finished run's folder: config.yaml naming a local base model, and the adapter in final/."""
    base_dir = tmp_path / "base"
    tiny_model.save_pretrained(base_dir)
    tokenizer.save_pretrained(base_dir)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    cfg = RunConfig(model=ModelConfig(model_name_or_path=str(base_dir), lora_rank=4, lora_alpha=8),
                    train=GRPOConfig(output_dir=str(run_dir)))
    (run_dir / "config.yaml").write_text(yaml.safe_dump(dataclasses.asdict(cfg)))
    if lora_model is not None:
        save_lora(lora_model, run_dir / "final")
    return run_dir


def test_export_run_merges_the_final_adapter_into_the_base(tiny_model, tokenizer, tmp_path):
    base_logits = logits(tiny_model.eval(), tokenizer)
    run_dir = make_run_dir(tmp_path, tiny_model, tokenizer)
    lora_model = attach_lora(tiny_model, rank=4, alpha=8)
    randomize_lora_b(lora_model)
    save_lora(lora_model, run_dir / "final")

    out = export_run(run_dir, dtype="float32")
    assert out == run_dir / "merged"
    loaded = AutoModelForCausalLM.from_pretrained(out).eval()
    merged_logits = logits(loaded, AutoTokenizer.from_pretrained(out))
    torch.testing.assert_close(merged_logits, logits(lora_model.eval(), tokenizer), atol=1e-4, rtol=0)
    assert (merged_logits - base_logits).abs().max() > 1e-2


def test_export_run_without_merge_writes_adapter_and_tokenizer(lora_model, tokenizer, tmp_path):
    run_dir = make_run_dir(tmp_path, make_model(vocab_size=len(tokenizer)), tokenizer, lora_model)
    out = export_run(run_dir, merged=False)
    assert (out / "adapter_config.json").is_file() and (out / "adapter_model.safetensors").is_file()
    assert AutoTokenizer.from_pretrained(out)(TEXT).input_ids == tokenizer(TEXT).input_ids


def test_export_run_of_a_full_fine_tuning_run(tiny_model, tokenizer, tmp_path):
    run_dir = make_run_dir(tmp_path, tiny_model, tokenizer)
    tiny_model.save_pretrained(run_dir / "final")
    out = export_run(run_dir, dtype="float32")
    loaded = AutoModelForCausalLM.from_pretrained(out).eval()
    assert torch.equal(logits(loaded, tokenizer), logits(tiny_model.eval(), tokenizer))
    with pytest.raises(RlvrError, match="fully fine-tuned"):
        export_run(run_dir, merged=False)


@pytest.mark.parametrize(("setup", "message"), [
    ("no_dir", "run directory not found"),
    ("no_final", "final/ missing"),
    ("no_config", "config.yaml not found"),
])
def test_export_run_errors_are_one_line(setup, message, tiny_model, tokenizer, tmp_path):
    run_dir = tmp_path / "missing"
    if setup != "no_dir":
        run_dir = make_run_dir(tmp_path, tiny_model, tokenizer)
    if setup == "no_config":
        (run_dir / "config.yaml").unlink()
        (run_dir / "final").mkdir()
        (run_dir / "final" / "adapter_config.json").write_text("{}")
    with pytest.raises(RlvrError, match=message) as info:
        export_run(run_dir)
    assert "\n" not in str(info.value)
