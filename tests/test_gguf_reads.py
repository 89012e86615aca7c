"""Loading a GGUF parses it once (transformers alone parses it three times) and gives the same model."""

from __future__ import annotations

import gguf
import torch
from test_export_gguf import byte_level_bpe, load_gguf, merged_lora_model

from rlvr.export import save_gguf
from rlvr.models.loading import load_model


def test_load_model_parses_a_gguf_once_and_loads_what_transformers_loads(tmp_path, monkeypatch):
    tokenizer = byte_level_bpe()
    (path,) = save_gguf(merged_lora_model("llama", tokenizer), tokenizer, tmp_path, "f16")
    parses = []
    make_reader = gguf.GGUFReader

    def counting_reader(*args, **kwargs):
        parses.append(args[0])
        return make_reader(*args, **kwargs)

    monkeypatch.setattr(gguf, "GGUFReader", counting_reader)
    model, tok = load_model(str(path.parent), gguf_file=path.name, dtype="float32", use_lora=False, device="cpu")
    assert len(parses) == 1
    assert gguf.GGUFReader is counting_reader  # restored after the load

    expected, expected_tok = load_gguf(path)  # transformers on its own: tokenizer, config and tensors
    assert len(parses) == 4
    got, want = model.state_dict(), expected.state_dict()
    assert got.keys() == want.keys()
    assert all(torch.equal(got[k], want[k]) for k in want)
    assert tok("Hello world 42").input_ids == expected_tok("Hello world 42").input_ids
