"""Tests for GGUF export: files transformers loads back to the same logits and tokenizer, the Ollama
Modelfile, one-line errors, and `rlvr export RUN_DIR --gguf f16 --ollama`."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from conftest import CHATML, make_model, make_tokenizer
from families import family_model
from test_export import make_run_dir, randomize_lora_b
from transformers import AutoModelForCausalLM, AutoTokenizer

from rlvr.cli import main
from rlvr.errors import RlvrError
from rlvr.export import parse_quantizations, save_gguf, write_modelfile
from rlvr.export.gguf import _QWEN2_SPLIT
from rlvr.models.loading import attach_lora

CORPUS = ["What is 12 + 30? The answer is 42.", "Hello world, hello tokens!",
          "<reasoning>\n2 + 2 = 4\n</reasoning>\n<answer>\n4\n</answer>"] * 5
SAMPLE = "Hello world 42, naïve café 🙂\n  two  spaces"
CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 12 + 30?"}]
LLAMA3 = ("{{ bos_token }}{% for message in messages %}<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n\n"
          "{{ message['content'] }}<|eot_id|>{% endfor %}"
          "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}")
# Max |Δ logits| of the f16 file vs the merged fp32 model on the chat prompt, as a share of the logits' std: measured
# 0.14%..0.69% for llama/qwen2/qwen3 × seeds 0-3 (std ≈ 0.16) and 0.30%..0.69% for gemma2/gemma3_text/qwen3_moe
# × seeds 0-3 (std ≈ 0.79), f16's rounding of every matrix (2^-11 relative). F16_REL is 1.45× the worst.
F16_REL = 0.01
# What each file must reproduce exactly: the merged model with its matrices rounded as the file stores them (f16, or
# q8_0's 8-bit codes with one f16 scale per 32 weights; routers stay f32) — measured 0.0.
EXACT_ATOL = 1e-5
# transformers' GGUF reader restores only the settings it maps from llama.cpp's keys; the rest take the config class's
# defaults (Gemma: query_pre_attn_scalar 256, soft-capping 50/30, Gemma 3's every-sixth-layer-global pattern;
# Qwen3-MoE: moe_intermediate_size 768). These tiny models use those defaults, so the file can be checked by reading
# it back; llama.cpp reads the keys themselves (test_llama_cpp_metadata_of_gemma_and_moe).
GGUF_READABLE = {
    "gemma2": dict(head_dim=256, query_pre_attn_scalar=256, attn_logit_softcapping=50.0, final_logit_softcapping=30.0,
                   tie_word_embeddings=True),
    "gemma3_text": dict(head_dim=256, query_pre_attn_scalar=256, layer_types=["sliding_attention"] * 2,
                        final_logit_softcapping=None),
    "qwen3_moe": dict(moe_intermediate_size=768),
}


def byte_level_bpe(split: str | None = None, specials=("<|endoftext|>", "<|im_start|>", "<|im_end|>")):
    """A tiny trained byte-level BPE tokenizer with merges: GPT-2/SmolLM2 style, or Qwen2's split regex."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE())
    if split is None:
        tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    else:
        tk.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(split), behavior="isolated"),
                                                    pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=list(specials), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tk.train_from_iterator(CORPUS, trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, eos_token=specials[-1], pad_token=specials[0], bos_token=None)
    tok.chat_template = CHATML
    return tok


def sentencepiece_bpe():
    """A Llama-2-style tokenizer: '▁' for spaces, <0xNN> byte-fallback tokens, BOS added."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    metaspace = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first", split=False)
    trained = Tokenizer(models.BPE())
    trained.pre_tokenizer = metaspace
    trained.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=150, show_progress=False))
    learned = json.loads(trained.to_str())["model"]
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{i:02X}>" for i in range(256)]
    tokens += [t for t, _ in sorted(learned["vocab"].items(), key=lambda kv: kv[1]) if t not in tokens]
    tk = Tokenizer(models.BPE({t: i for i, t in enumerate(tokens)}, [tuple(m) for m in learned["merges"]],
                              unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tk.pre_tokenizer = metaspace
    tk.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(),
                                    decoders.Strip(" ", 1, 0)])
    tk.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                      special_tokens=[("<s>", 1)])
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    tok.chat_template = LLAMA3.replace("<|start_header_id|>", "[").replace("<|end_header_id|>", "]")
    return tok


def merged_lora_model(kind: str, tokenizer, seed: int = 0):
    if kind in GGUF_READABLE:
        base = family_model(kind, len(tokenizer) + 3, seed=seed, **GGUF_READABLE[kind])
    else:  # transformers reads a qwen3 GGUF with Qwen3Config's default head_dim (128), ignoring attention.key_length.
        extra = {"qwen3": {"head_dim": 128}, "phi3": {"pad_token_id": 0}}.get(kind, {})
        base = make_model(kind, vocab_size=len(tokenizer) + 3, seed=seed, **extra)
    model = attach_lora(base, rank=4, alpha=8)
    randomize_lora_b(model, seed=seed + 1)
    return model.eval()


def f16_rounded(model, dtype: torch.dtype = torch.float16):
    """The merged model with every matrix rounded to f16 (or bf16) as the GGUF stores it; norms, biases and a mixture
    of experts' routers stay f32."""
    return _rounded(model, lambda w: w.to(dtype).float())


def q8_rounded(model):
    """The merged model with every matrix rounded as q8_0 stores it (per 32-value block along a row), routers f32."""
    from gguf import GGMLQuantizationType, quants

    q8 = GGMLQuantizationType.Q8_0
    return _rounded(model, lambda w: torch.from_numpy(quants.dequantize(quants.quantize(w.numpy(), q8), q8)))


def _rounded(model, rounding):
    plain = copy.deepcopy(model)
    plain = plain.merge_and_unload() if hasattr(plain, "peft_config") else plain
    with torch.no_grad():
        for name, p in plain.named_parameters():
            if p.ndim >= 2 and ".mlp.gate." not in name:  # Qwen3-MoE's router: kept f32
                p.copy_(rounding(p.detach().float()).reshape(p.shape))
    return plain.eval()


def logits(model, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits.float()


def load_gguf(path):
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)


KINDS = [("llama", None), ("qwen2", _QWEN2_SPLIT), ("qwen3", None), ("mistral", None), ("phi3", None),
         ("gemma2", None), ("gemma3_text", None), ("qwen3_moe", None)]
GRAPH = {"mistral": "llama", "gemma3_text": "gemma3", "qwen3_moe": "qwen3moe"}  # the class transformers reads back


@pytest.mark.parametrize(("kind", "split"), KINDS, ids=[kind for kind, _ in KINDS])
def test_gguf_round_trips_through_transformers(kind, split, tmp_path):
    tokenizer = byte_level_bpe(split)
    model = merged_lora_model(kind, tokenizer)
    ids = tokenizer.apply_chat_template(CHAT, add_generation_prompt=True, tokenize=True, return_dict=False)
    expected = logits(model, ids)
    before = {k: v.clone() for k, v in model.state_dict().items()}

    f16, q8 = save_gguf(model, tokenizer, tmp_path, ["f16", "q8_0"], name="tiny")
    assert [f16.name, q8.name] == ["tiny-f16.gguf", "tiny-q8_0.gguf"]
    assert q8.stat().st_size < f16.stat().st_size
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the caller's model is untouched

    loaded, loaded_tok = load_gguf(f16)
    assert type(loaded).__name__.lower().startswith(GRAPH.get(kind, kind))  # llama.cpp's graph
    assert not any("lora" in k for k in loaded.state_dict())
    torch.testing.assert_close(logits(loaded, ids), expected, atol=F16_REL * expected.std().item(), rtol=0)
    torch.testing.assert_close(logits(loaded, ids), logits(f16_rounded(model), ids), atol=EXACT_ATOL, rtol=0)
    assert loaded_tok(SAMPLE).input_ids == tokenizer(SAMPLE).input_ids
    assert loaded_tok.decode(loaded_tok(SAMPLE).input_ids) == SAMPLE
    assert loaded_tok.chat_template == tokenizer.chat_template
    assert loaded_tok.eos_token == "<|im_end|>"
    assert loaded_tok.apply_chat_template(CHAT, add_generation_prompt=True, tokenize=True, return_dict=False) == ids

    quantized, _ = load_gguf(q8)
    assert (logits(quantized, ids) - expected).abs().max() > 0
    torch.testing.assert_close(logits(quantized, ids), logits(q8_rounded(model), ids), atol=EXACT_ATOL, rtol=0)


def test_sentencepiece_style_tokenizer_round_trips(tmp_path):
    tokenizer = sentencepiece_bpe()
    model = merged_lora_model("llama", tokenizer)
    (path,) = save_gguf(model, tokenizer, tmp_path / "spm.gguf", "f16")
    loaded, loaded_tok = load_gguf(path)
    for text in (SAMPLE, "[INST] hi [/INST]"):
        assert loaded_tok(text).input_ids == tokenizer(text).input_ids
        assert loaded_tok.decode(loaded_tok(text).input_ids, skip_special_tokens=True) == text.lstrip(" ")
    assert loaded_tok(SAMPLE).input_ids[0] == tokenizer.bos_token_id  # add_bos_token travels
    ids = tokenizer(SAMPLE).input_ids
    torch.testing.assert_close(logits(loaded, ids), logits(f16_rounded(model), ids), atol=EXACT_ATOL, rtol=0)


def test_bf16_and_tied_embeddings(tmp_path):
    tokenizer = byte_level_bpe()
    model = attach_lora(make_model("llama", vocab_size=len(tokenizer), tie_word_embeddings=True), rank=4)
    randomize_lora_b(model)
    model.eval()
    (path,) = save_gguf(model, tokenizer, tmp_path, "bf16")
    loaded, _ = load_gguf(path)
    assert loaded.config.tie_word_embeddings
    ids = tokenizer(SAMPLE).input_ids
    expected = logits(f16_rounded(model, torch.bfloat16), ids)
    torch.testing.assert_close(logits(loaded, ids), expected, atol=EXACT_ATOL, rtol=0)


def test_llama3_rope_scaling_writes_rope_freqs(tmp_path):
    from gguf import GGUFReader

    tokenizer = byte_level_bpe()
    rope = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 64}
    model = make_model("llama", vocab_size=len(tokenizer), rope_parameters=rope)
    (path,) = save_gguf(model, tokenizer, tmp_path, "f16")
    tensors = {t.name: t for t in GGUFReader(path).tensors}
    factors = tensors["rope_freqs.weight"].data
    assert factors.shape == (8,) and factors[0] == 1.0 and factors[-1] == 8.0


def gemma_sentencepiece():
    """A Gemma-style tokenizer: '▁' for spaces by a normalizer (no prefix space), byte fallback, BOS added."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    trained = Tokenizer(models.BPE())
    trained.normalizer = normalizers.Replace(" ", "\u2581")
    trained.pre_tokenizer = pre_tokenizers.Split("\u2581", behavior="merged_with_previous")
    trained.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=150, show_progress=False))
    learned = json.loads(trained.to_str())["model"]
    tokens = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"]
    tokens += [f"<0x{i:02X}>" for i in range(256)]
    tokens += [t for t, _ in sorted(learned["vocab"].items(), key=lambda kv: kv[1]) if t not in tokens]
    tk = Tokenizer(models.BPE({t: i for i, t in enumerate(tokens)}, [tuple(m) for m in learned["merges"]],
                              unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tk.normalizer = normalizers.Replace(" ", "\u2581")
    tk.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()])
    tk.post_processor = processors.TemplateProcessing(single="<bos> $A", pair="<bos> $A <bos> $B",
                                                      special_tokens=[("<bos>", 2)])
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>", bos_token="<bos>", eos_token="<eos>",
                                  pad_token="<pad>", additional_special_tokens=["<start_of_turn>", "<end_of_turn>"])
    tok.chat_template = ("{{ bos_token }}{% for m in messages %}<start_of_turn>{{ m['role'] }}\n{{ m['content'] }}"
                         "<end_of_turn>\n{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}")
    return tok


def test_gemma_sentencepiece_tokenizer_round_trips(tmp_path):
    tokenizer = gemma_sentencepiece()
    model = family_model("gemma2", len(tokenizer), **GGUF_READABLE["gemma2"]).eval()
    (path,) = save_gguf(model, tokenizer, tmp_path / "gemma.gguf", "f16")
    loaded, loaded_tok = load_gguf(path)
    assert type(loaded_tok).__name__ == "GemmaTokenizer"  # transformers' reader builds Gemma's own class
    for text in (SAMPLE, "What is 12 + 30?  two  spaces", " leading space"):
        assert loaded_tok(text).input_ids == tokenizer(text).input_ids
        assert loaded_tok.decode(loaded_tok(text).input_ids, skip_special_tokens=True) == text
    chat = [{"role": "user", "content": "What is 12 + 30?"}]
    ids = tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=True, return_dict=False)
    assert loaded_tok.apply_chat_template(chat, add_generation_prompt=True, tokenize=True, return_dict=False) == ids
    torch.testing.assert_close(logits(loaded, ids), logits(f16_rounded(model), ids), atol=EXACT_ATOL, rtol=0)


def test_llama_cpp_metadata_of_gemma_and_moe(tmp_path):
    """What llama.cpp reads and transformers' reader does not: soft-capping, windows, the Gemma 3 layer pattern,
    expert counts; norms stored as 1 + w, the router f32 in a q8_0 file, the fused experts split."""
    from gguf import GGMLQuantizationType, GGUFReader, quants

    def read(kind, qtype="f16", **overrides):
        model = family_model(kind, 300, **overrides).eval()
        (path,) = save_gguf(model, byte_level_bpe(), tmp_path / f"{kind}-{qtype}.gguf", qtype)
        reader = GGUFReader(path)
        fields = {k: f.contents() for k, f in reader.fields.items()}
        return model, fields, {t.name: t for t in reader.tensors}

    model, fields, tensors = read("gemma2", **GGUF_READABLE["gemma2"], sliding_window=8)
    assert fields["gemma2.attn_logit_softcapping"] == 50.0 and fields["gemma2.final_logit_softcapping"] == 30.0
    assert fields["gemma2.attention.sliding_window"] == 8 and "output.weight" not in tensors
    norm = model.model.layers[0].post_feedforward_layernorm.weight.detach()
    assert torch.equal(torch.from_numpy(tensors["blk.0.post_ffw_norm.weight"].data.copy()), norm + 1)
    _, fields, _ = read("gemma3_text", head_dim=256, query_pre_attn_scalar=256, final_logit_softcapping=None)
    assert fields["gemma3.attention.sliding_window_pattern"] == [True, False]  # the family's [sliding, full]
    assert fields["gemma3.rope.freq_base"] == 1e6  # the global layers' base (llama.cpp: 10000 on the local ones)
    model, fields, tensors = read("qwen3_moe", "q8_0")
    assert (fields["qwen3moe.expert_count"], fields["qwen3moe.expert_used_count"],
            fields["qwen3moe.expert_feed_forward_length"]) == (4, 2, 32)
    assert tensors["blk.0.ffn_gate_inp.weight"].tensor_type == GGMLQuantizationType.F32
    experts = model.model.layers[1].mlp.experts
    for name, part in (("gate", 0), ("up", 1)):
        stored = tensors[f"blk.1.ffn_{name}_exps.weight"]
        assert tuple(stored.shape[::-1]) == (4, 32, 64)  # GGUF lists dims innermost first
        assert stored.tensor_type == GGMLQuantizationType.Q8_0
        values = torch.from_numpy(quants.dequantize(stored.data, stored.tensor_type)).reshape(4, 32, 64)
        torch.testing.assert_close(values, experts.gate_up_proj.detach().chunk(2, dim=1)[part], atol=2e-3, rtol=0)


@pytest.mark.parametrize(("kind", "overrides", "message"), [
    ("gemma2", dict(GGUF_READABLE["gemma2"], tie_word_embeddings=False), "uses the embedding as its output head"),
    ("gemma2", dict(tie_word_embeddings=True), "scales queries by 1/√24 but llama.cpp's gemma2 graph uses"),
    ("gemma3_text", dict(query_pre_attn_scalar=16), "soft-capping \\(final_logit_softcapping\\)"),
    ("qwen3_moe", dict(norm_topk_prob=False), "un-normalised top-k routing weights"),
    ("qwen3_moe", dict(mlp_only_layers=[0]), "dense MLP layers"),
    ("mixtral", {}, "does not support model type 'mixtral'"),
    ("gpt_oss", {}, "does not support model type 'gpt_oss'"),
])
def test_what_llama_cpp_cannot_compute_is_refused_in_one_line(kind, overrides, message, tmp_path):
    model = family_model(kind, 300, **overrides)
    with pytest.raises(RlvrError, match=message) as info:
        save_gguf(model, byte_level_bpe(), tmp_path, "f16")
    assert "\n" not in str(info.value)
    assert not list(tmp_path.iterdir())


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize(("spec", "message"), [
    ("q8", "did you mean 'q8_0'"),
    ("f16,fp16", "did you mean 'f16'"),
    ("", "no type given"),
])
def test_unknown_gguf_types_are_one_line_errors(spec, message):
    with pytest.raises(RlvrError, match=message) as info:
        parse_quantizations(spec)
    assert "\n" not in str(info.value)


def test_llama_cpp_types_need_the_extra(monkeypatch):
    import rlvr.export.gguf as gguf_export

    monkeypatch.setattr(gguf_export, "_has_llama_cpp", lambda: False)
    with pytest.raises(RlvrError, match=r'pip install "rlvr\[gguf\]"') as info:
        parse_quantizations("f16,q4_k_m")
    assert "\n" not in str(info.value)
    assert parse_quantizations(["F16", " q8_0", "f16"]) == ["f16", "q8_0"]


def test_unsupported_architecture_is_a_one_line_error(tmp_path):
    tokenizer = byte_level_bpe()
    model = make_model("olmo2", vocab_size=len(tokenizer))
    expected = "does not support model type 'olmo2'.*llama, mistral, qwen2, qwen3, phi3, gemma2, gemma3_text, qwen3_moe"
    with pytest.raises(RlvrError, match=expected) as info:
        save_gguf(model, tokenizer, tmp_path, "f16")
    assert "\n" not in str(info.value)
    assert not list(tmp_path.iterdir())


def test_unsupported_tokenizer_is_a_one_line_error(tmp_path):
    tokenizer = make_tokenizer()  # character-level WordLevel: no llama.cpp vocabulary type describes it
    with pytest.raises(RlvrError, match="supports BPE tokenizers.*WordLevel") as info:
        save_gguf(make_model("llama", vocab_size=len(tokenizer)), tokenizer, tmp_path, "f16")
    assert "\n" not in str(info.value)


# ---------------------------------------------------------------- Ollama


def test_modelfile_for_chatml(tmp_path):
    tokenizer = byte_level_bpe()
    gguf = tmp_path / "tiny-f16.gguf"
    gguf.write_bytes(b"")
    text = write_modelfile(gguf, tokenizer, system="Answer in <answer> tags.").read_text()
    assert "FROM ./tiny-f16.gguf\n" in text
    assert 'TEMPLATE """{{- if .System }}<|im_start|>system\n{{ .System }}<|im_end|>' in text
    assert "{{- range $i, $_ := .Messages }}" in text and "<|im_start|>assistant\n" in text
    assert 'PARAMETER stop "<|im_start|>"\nPARAMETER stop "<|im_end|>"\n' in text
    assert 'SYSTEM """Answer in <answer> tags."""' in text


def test_modelfile_for_llama3_and_unknown_templates(tmp_path):
    tokenizer = byte_level_bpe(specials=("<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                                         "<|eot_id|>"))
    tokenizer.chat_template = LLAMA3
    text = write_modelfile(tmp_path / "m.gguf", tokenizer, eos_token_ids=[tokenizer.pad_token_id]).read_text()
    assert "<|start_header_id|>{{ .Role }}<|end_header_id|>\n\n{{ .Content }}" in text
    for stop in ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<|begin_of_text|>"):
        assert f"PARAMETER stop {json.dumps(stop)}" in text
    assert "SYSTEM" not in text

    tokenizer.chat_template = "{% for m in messages %}### {{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    text = write_modelfile(tmp_path / "m.gguf", tokenizer).read_text()
    assert "TEMPLATE" not in text.replace("# No TEMPLATE", "") and "# No TEMPLATE" in text
    assert 'PARAMETER stop "<|eot_id|>"' in text


PHI3 = ("{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")


def test_modelfile_for_phi3_and_not_for_phi4(tmp_path):
    tokenizer = byte_level_bpe(specials=("<|endoftext|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"))
    tokenizer.chat_template = ("{% if messages[0]['role'] != 'system' %}<|system|>\nBe exact.<|end|>\n{% endif %}"
                               + PHI3)
    text = write_modelfile(tmp_path / "m.gguf", tokenizer).read_text()
    assert "{{ if .System }}<|system|>\n{{ .System }}<|end|>" in text.replace("{{- if", "{{ if")
    assert "<|{{ .Role }}|>\n{{ .Content }}" in text and "<|assistant|>\n{{ end }}" in text
    for stop in ("<|end|>", "<|user|>", "<|assistant|>"):
        assert f"PARAMETER stop {json.dumps(stop)}" in text
    assert 'SYSTEM """Be exact."""' in text
    tokenizer.chat_template = ("{% for m in messages %}<|im_start|>{{ m['role'] }}<|im_sep|>{{ m['content'] }}"
                               "<|im_end|>{% endfor %}")
    assert "# No TEMPLATE" in write_modelfile(tmp_path / "m.gguf", tokenizer).read_text()


def test_modelfile_takes_the_templates_default_system_prompt(tmp_path):
    tokenizer = byte_level_bpe()
    tokenizer.chat_template = ("{% if messages[0]['role'] != 'system' %}<|im_start|>system\nYou are SmolLM.<|im_end|>\n"
                               "{% endif %}" + CHATML)
    assert 'SYSTEM """You are SmolLM."""' in write_modelfile(tmp_path / "m.gguf", tokenizer).read_text()


# ---------------------------------------------------------------- rlvr export RUN_DIR --gguf


def test_cli_export_gguf_with_ollama(tmp_path, capsys):
    tokenizer = byte_level_bpe()
    base = make_model("llama", vocab_size=len(tokenizer))
    run_dir = make_run_dir(tmp_path, base, tokenizer)
    lora = attach_lora(make_model("llama", vocab_size=len(tokenizer)), rank=4, alpha=8)
    randomize_lora_b(lora)
    lora.save_pretrained(run_dir / "final")

    assert main(["export", str(run_dir), "--gguf", "f16,q8_0", "--ollama", "--merged", "--dtype", "float32"]) == 0
    out = run_dir / "gguf"
    assert sorted(p.name for p in out.iterdir()) == ["Modelfile", "Modelfile.q8_0", "run-f16.gguf", "run-q8_0.gguf"]
    modelfile = (out / "Modelfile").read_text()
    assert "FROM ./run-f16.gguf" in modelfile and "FROM ./run-q8_0.gguf" in (out / "Modelfile.q8_0").read_text()
    assert "<answer>" in modelfile  # the run's system prompt (the default reasoning/answer format)
    ids = tokenizer(SAMPLE).input_ids
    merged = AutoModelForCausalLM.from_pretrained(run_dir / "merged").eval()
    loaded, _ = load_gguf(out / "run-f16.gguf")
    torch.testing.assert_close(logits(loaded, ids), logits(f16_rounded(merged), ids), atol=EXACT_ATOL, rtol=0)
    assert "run-f16.gguf" in capsys.readouterr().out


@pytest.mark.parametrize(("argv", "message"), [
    ([], "choose what to write"),
    (["--ollama"], "--ollama writes a Modelfile beside GGUF files"),
    (["--gguf", "q8"], "did you mean 'q8_0'"),
    (["--merged", "--private"], "--private applies to --push-to-hub"),
])
def test_cli_export_errors_are_one_line(argv, message, tmp_path, capsys):
    assert main(["export", str(tmp_path), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("rlvr: error:") and message in err and "\n" not in err
