"""Precision by capability: bf16 autocast only where the device computes bf16 natively."""

from __future__ import annotations

import logging

import pytest
import torch

from rlvr.models import precision


@pytest.fixture
def cpu(monkeypatch):
    def set_cpu(capability: str, bf16: bool = False, amx: bool = False):
        monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: bf16)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)

    return set_cpu


def test_avx2_cpu_computes_in_fp32_and_says_why_once(cpu, caplog):
    cpu("AVX2")
    with caplog.at_level(logging.INFO, logger="rlvr"):
        p = precision.resolve_precision("cpu", requested_bf16=True)
    assert p.autocast_dtype is None
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "AVX2" in lines[0] and "fp32" in lines[0] and "bf16: true" in lines[0]
    assert precision.describe_precision("cpu", True) == lines[0]
    assert "no native bf16" in precision.describe_precision("cpu", False)


@pytest.mark.parametrize("bf16,amx", [(True, False), (False, True)])
def test_cpu_with_native_bf16_autocasts_when_asked(cpu, caplog, bf16, amx):
    cpu("AVX512", bf16=bf16, amx=amx)
    with caplog.at_level(logging.INFO, logger="rlvr"):
        p = precision.resolve_precision("cpu", requested_bf16=True)
    assert p.autocast_dtype == torch.bfloat16 and not caplog.records
    with p.autocast():
        out = torch.ones(2, 2) @ torch.ones(2, 2)
    assert out.dtype == torch.bfloat16
    assert precision.resolve_precision("cpu", requested_bf16=False).autocast_dtype is None


def test_cuda_bf16_is_as_asked(cpu):
    cpu("AVX2")
    assert precision.choose_precision("cuda", True).autocast_dtype == torch.bfloat16
    assert precision.choose_precision("cuda", False).autocast_dtype is None


def test_trainer_forward_passes_use_the_chosen_precision(cpu, tmp_path):
    """On a CPU without native bf16, bf16: true trains in fp32: the losses equal a bf16: false run's."""
    from conftest import make_model, make_tokenizer

    from rlvr.config import SFTConfig
    from rlvr.sft.trainer import SFTTrainer

    cpu("AVX2")
    tok = make_tokenizer()
    data = [{"prompt": [{"role": "user", "content": "1+1?"}], "completion": "2"}] * 4
    losses = []
    for bf16 in (True, False):
        trainer = SFTTrainer(make_model("llama", vocab_size=len(tok)), tok, data,
                             SFTConfig(output_dir=str(tmp_path / str(bf16)), max_steps=1, bf16=bf16,
                                       per_device_train_batch_size=4), show_progress=False)
        assert trainer.precision.autocast_dtype is None
        losses.append(trainer.train()["loss"])
    assert losses[0] == losses[1]
