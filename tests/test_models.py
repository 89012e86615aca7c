"""Model loading from a local folder, LoRA attachment, dtype, and the errors a user can act on."""

from __future__ import annotations

import pytest
import torch
from conftest import make_model, make_tokenizer

from rlvr.errors import RlvrError
from rlvr.models import load_model
from rlvr.models.loading import resolve_source


@pytest.fixture
def folder(tmp_path):
    tok = make_tokenizer()
    model = make_model("qwen2", vocab_size=len(tok))
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    return tmp_path / "m"


def test_local_folder_with_lora_targets_all_projections(folder):
    model, tok = load_model(str(folder), device="cpu", lora_rank=4, lora_alpha=8)
    assert tok.padding_side == "left" and tok.pad_token is not None
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    for proj in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"):
        assert any(proj in n and "lora_A" in n for n in names), proj
    assert all("lora_" in n for n in names)  # base weights frozen
    assert hasattr(model, "disable_adapter")


def test_full_finetuning_and_dtype(folder):
    model, _ = load_model(str(folder), device="cpu", use_lora=False, dtype="bfloat16")
    params = list(model.parameters())
    assert all(p.requires_grad for p in params)
    assert params[0].dtype == torch.bfloat16


def test_adapter_round_trip(folder, tmp_path):
    model, _ = load_model(str(folder), device="cpu", lora_rank=4)
    for n, p in model.named_parameters():
        if "lora_B" in n:
            p.data.normal_()
    model.save_pretrained(tmp_path / "adapter")
    again, _ = load_model(str(folder), device="cpu", adapter_path=str(tmp_path / "adapter"))
    ids = torch.tensor([[5, 6, 7, 8]])
    torch.testing.assert_close(again(input_ids=ids).logits, model(input_ids=ids).logits)


def test_errors(tmp_path):
    with pytest.raises(RlvrError, match="model path not found"):
        resolve_source("./missing/model")
    with pytest.raises(RlvrError, match="model file not found"):
        resolve_source(str(tmp_path / "x.gguf"))
    with pytest.raises(RlvrError, match="no LoRA adapter"):
        from rlvr.models.loading import load_adapter

        load_adapter(None, str(tmp_path))


def test_4bit_needs_cuda(folder):
    with pytest.raises(RlvrError, match="needs a CUDA GPU"):
        load_model(str(folder), device="cpu", load_in_4bit=True)


def test_lora_targets_missing_is_an_error(folder):
    with pytest.raises(RlvrError, match="lora_target_modules"):
        load_model(str(folder), device="cpu", target_modules=["not_a_layer"])
