"""Model loading says what it does on stderr (every command, GGUF files included), and transformers' own
bars show a long load on a terminal only; RLVR_NO_PROGRESS silences all of it."""

from __future__ import annotations

import sys

import pytest
import yaml
from transformers.utils import logging as hf_logging

from rlvr.cli import _quiet_libraries, main
from rlvr.models.loading import load_model


def test_rlvr_eval_says_when_it_loads_the_model(tiny_model_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("RLVR_NO_PROGRESS", raising=False)
    config = tmp_path / "eval.yaml"
    config.write_text(yaml.safe_dump({"model": {"model_name_or_path": str(tiny_model_dir)},
                                      "data": {"dataset": "builtin:arithmetic", "eval_size": 2},
                                      "rewards": ["correctness"],
                                      "eval": {"max_new_tokens": 2, "rollout_backend": "hf"}}))
    assert main(["eval", str(config)]) == 0
    err = capsys.readouterr().err.splitlines()
    assert f"rlvr: loading {tiny_model_dir} ..." in err
    assert any(line.startswith("rlvr: model loaded in ") and line.endswith(" s on cpu") for line in err)

    monkeypatch.setenv("RLVR_NO_PROGRESS", "1")
    assert main(["eval", str(config)]) == 0
    assert "loading" not in capsys.readouterr().err


def test_a_gguf_load_says_it_dequantises(tmp_path, capsys, monkeypatch):
    from test_export_gguf import byte_level_bpe, merged_lora_model

    from rlvr.export import save_gguf

    monkeypatch.delenv("RLVR_NO_PROGRESS", raising=False)
    tok = byte_level_bpe()
    (path,) = save_gguf(merged_lora_model("llama", tok), tok, tmp_path / "tiny.gguf", quantization=["f16"])
    capsys.readouterr()
    load_model(str(path), use_lora=False, device="cpu")
    err = capsys.readouterr().err.splitlines()
    assert f"rlvr: loading {path} (GGUF {path.name}, dequantised to float32) ..." in err
    assert any(line.startswith("rlvr: model loaded in ") for line in err)


@pytest.mark.parametrize(("tty", "no_progress", "bars"), [(True, False, True), (True, True, False),
                                                          (False, False, False)])
def test_transformers_bars_show_on_a_terminal_only(tty, no_progress, bars, monkeypatch):
    for name in ("RLVR_NO_PROGRESS", "TQDM_DISABLE"):  # set then deleted: the test's end restores them
        monkeypatch.setenv(name, "1")
        monkeypatch.delenv(name)
    if no_progress:
        monkeypatch.setenv("RLVR_NO_PROGRESS", "1")
    monkeypatch.setattr(sys.stderr, "isatty", lambda: tty)
    before = hf_logging.is_progress_bar_enabled()
    try:
        _quiet_libraries()
        assert hf_logging.is_progress_bar_enabled() is bars
    finally:
        (hf_logging.enable_progress_bar if before else hf_logging.disable_progress_bar)()
