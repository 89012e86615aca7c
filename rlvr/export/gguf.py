"""Write GGUF files (llama.cpp's format, what llama.cpp, Ollama and LM Studio run) from a model with its
LoRA merged in, tokenizer and chat template included.

f16, bf16 and q8_0 are written here with the `gguf` package: the tensor names and the architecture's
metadata keys follow llama.cpp's convert_hf_to_gguf.py, so llama.cpp reads the file as one of its own.
Two details decide whether a file round-trips:
- llama.cpp's llama graph expects Q and K rows in its own RoPE order, so the llama architecture's
  q_proj/k_proj are permuted exactly as convert_hf_to_gguf.py does; transformers' GGUF loader
  (LlamaTensorProcessor) applies the inverse when it reads `attn_q`/`attn_k`. Qwen2/Qwen3 are stored
  as they are, by both.
- the tokenizer goes in as llama.cpp's "gpt2" (byte-level BPE: Qwen, Llama 3, SmolLM2) or "llama"
  (sentencepiece-style BPE with byte fallback: Llama 2, Mistral) vocabulary, with merges, token
  types, special ids and the chat template, which is what both readers rebuild a tokenizer from.
Other types (q4_k_m, q5_k_m, q4_0, ...) go through llama.cpp's own quantizer (llama-cpp-python) from
an f16 file written first, since its k-quant choices per tensor are the reference.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch

from rlvr.errors import RlvrError, nearest
from rlvr.export.gguf_families import (
    ARCHITECTURES,
    add_family_metadata,
    check_representable,
    rope_parameters,
    split_tensors,
    stored_tensor,
)
from rlvr.export.save import announce, is_peft_model, load_run, merged_state_dict, run_system_prompt

log = logging.getLogger("rlvr")

# Types written here with gguf-py; every other one comes from llama.cpp's quantizer.
NATIVE_TYPES = ("f16", "bf16", "q8_0")
EXTRA_HINT = 'pip install "rlvr[gguf]"'

# Pre-tokenizer split patterns llama.cpp knows by name (llama-vocab.cpp), as HF tokenizer.json spells them.
_QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
                r"|\s+(?!\S)|\s+")
_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                 r"|\s*[\r\n]+|\s+(?!\S)|\s+")
_PRE_BY_SPLIT = {_QWEN2_SPLIT: "qwen2", _LLAMA3_SPLIT: "llama-bpe"}
_BYTE_TOKEN = re.compile(r"<0x[0-9A-Fa-f]{2}>")


def quantizer_types() -> list[str]:
    """The types llama.cpp's quantizer makes from an f16 file (q4_k_m, q5_k_m, q4_0, ...)."""
    from gguf import LlamaFileType

    names = [n.removeprefix("MOSTLY_").lower() for n in LlamaFileType.__members__ if n.startswith("MOSTLY_")]
    return [n for n in names if n not in NATIVE_TYPES]


def parse_quantizations(spec: str | Sequence[str]) -> list[str]:
    """'f16,q8_0' or ['f16', 'q8_0'] → checked, de-duplicated names; refuses unknown ones and, when
    llama-cpp-python is missing, the types only its quantizer makes."""
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    names = list(dict.fromkeys(str(s).strip().lower() for s in items if str(s).strip()))
    if not names:
        raise RlvrError("GGUF export: no type given; use e.g. --gguf f16 or --gguf f16,q8_0")
    known = [*NATIVE_TYPES, *quantizer_types()]
    for name in names:
        if name not in known:
            raise RlvrError(f"unknown GGUF type {name!r}{nearest(name, known)}; written directly: "
                            f"{', '.join(NATIVE_TYPES)}; through llama.cpp: q4_k_m, q5_k_m, q6_k, q4_0, ...")
    needs_llama_cpp = [n for n in names if n not in NATIVE_TYPES]
    if needs_llama_cpp and not _has_llama_cpp():
        raise RlvrError(f"GGUF type {needs_llama_cpp[0]} needs llama.cpp's quantizer: {EXTRA_HINT} "
                        f"(installs llama-cpp-python), or use one of {', '.join(NATIVE_TYPES)}")
    return names


def _has_llama_cpp() -> bool:
    import importlib.util

    return importlib.util.find_spec("llama_cpp") is not None


# ---------------------------------------------------------------- public entry point


def save_gguf(model, tokenizer, path: str | Path, quantization: str | Sequence[str] = ("f16",),
              name: str | None = None) -> list[Path]:
    """Write one GGUF file per type in `quantization` for `model` (LoRA merged in, if any) and `tokenizer`.

    `path` is a folder (files `<name>-<type>.gguf`, name defaulting to the folder's name) or, for a
    single type, a file ending in .gguf. The caller's model is not changed. Returns the files written,
    in the order of `quantization`.
    """
    types = parse_quantizations(quantization)
    base = model.get_base_model() if is_peft_model(model) else model
    arch = _architecture(base.config)
    check_representable(base.config, arch)
    vocab = tokenizer_vocab(tokenizer, base.config.vocab_size)  # refuse an unsupported tokenizer before merging
    path = Path(path)
    targets = _targets(path, types, name)
    model_name = name or (path.stem if path.suffix == ".gguf" else path.name) or "model"
    state = merged_state_dict(model)
    write = partial(_write, config=base.config, arch=arch, state=state, vocab=vocab, tokenizer=tokenizer,
                    name=model_name)
    # Types written here go first, so an f16 file asked for can feed llama.cpp's quantizer.
    order = sorted(range(len(types)), key=lambda i: types[i] not in NATIVE_TYPES)
    f16_source = targets[types.index("f16")] if "f16" in types else None
    temporary = None
    try:
        for i in order:
            qtype, target = types[i], targets[i]
            if qtype in NATIVE_TYPES:
                write(target, qtype=qtype)
            else:
                if f16_source is None:  # one temporary f16 file serves every llama.cpp type
                    temporary = f16_source = target.with_name(f"{model_name}.f16-source.gguf")
                    write(temporary, qtype="f16")
                _quantize_with_llama_cpp(f16_source, target, qtype)
            announce(f"wrote {target} ({target.stat().st_size / 2**20:.1f} MiB)")
    finally:
        if temporary is not None:
            temporary.unlink(missing_ok=True)
    return targets


def export_run_gguf(run_dir: str | Path, quantization: str | Sequence[str] = ("f16",), ollama: bool = False,
                    loaded: tuple | None = None) -> list[Path]:
    """GGUF files of a finished run in run_dir/gguf/ (`<run name>-<type>.gguf`), and with `ollama` a Modelfile
    beside them (`Modelfile` for the first type, `Modelfile.<type>` for the others) whose SYSTEM is the run's
    system prompt. `loaded` is load_run(run_dir)'s result when the caller already has it. Returns every file written.
    """
    from rlvr.export.ollama import write_modelfile

    run_dir = Path(run_dir)
    types = parse_quantizations(quantization)  # refuse a bad type before loading the model
    model, tokenizer = loaded if loaded is not None else load_run(run_dir)
    files = save_gguf(model, tokenizer, run_dir / "gguf", types, name=run_dir.resolve().name)
    if not ollama:
        return files
    system, eos_ids = run_system_prompt(run_dir), _generation_eos_ids(model)
    modelfiles = []
    for i, (qtype, gguf_file) in enumerate(zip(types, files)):
        target = gguf_file.parent / ("Modelfile" if i == 0 else f"Modelfile.{qtype}")
        modelfiles.append(write_modelfile(gguf_file, tokenizer, system=system, eos_token_ids=eos_ids, path=target))
        announce(f"wrote {target} (ollama create {run_dir.resolve().name} -f {target})")
    return files + modelfiles


def _generation_eos_ids(model) -> list[int]:
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    return [] if eos is None else [eos] if isinstance(eos, int) else list(eos)


def _targets(path: Path, types: list[str], name: str | None) -> list[Path]:
    if path.suffix == ".gguf":
        if len(types) > 1:
            raise RlvrError(f"{path}: one file name given for {len(types)} GGUF types; give a folder instead")
        folder, files = path.parent, [path]
    else:
        folder = path
        files = [path / f"{name or path.name or 'model'}-{t}.gguf" for t in types]
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RlvrError(f"cannot create the export folder {folder} ({e.strerror}); choose a writable path") from None
    return files


# ---------------------------------------------------------------- architecture and tensors


def _architecture(config) -> str:
    model_type = getattr(config, "model_type", None)
    if model_type not in ARCHITECTURES:
        hint = nearest(str(model_type), ARCHITECTURES)
        raise RlvrError(f"GGUF export does not support model type {model_type!r}{hint}; supported: "
                        f"{', '.join(ARCHITECTURES)} (or export --merged and convert with llama.cpp)")
    return ARCHITECTURES[model_type]


def _head_dim(config) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def _rope(config) -> dict:
    """transformers ≥5 keeps theta and scaling in rope_parameters, earlier versions in rope_theta/rope_scaling."""
    params = rope_parameters(config)
    params.setdefault("rope_theta", getattr(config, "rope_theta", 10000.0))
    params["rope_type"] = params.get("rope_type") or params.get("type") or "default"
    return params


def _tensor_plan(config, arch: str, state: dict[str, torch.Tensor]) -> list[tuple[str, str]]:
    """(gguf name, state key) for every tensor the GGUF holds, in llama.cpp's tensor names."""
    from gguf import MODEL_ARCH_NAMES, get_tensor_name_map

    arch_id = next(k for k, v in MODEL_ARCH_NAMES.items() if v == arch)
    names = get_tensor_name_map(arch_id, config.num_hidden_layers)
    tied = bool(getattr(config, "tie_word_embeddings", False))
    plan = []
    for key in state:
        if key.endswith("rotary_emb.inv_freq") or (tied and key == "lm_head.weight"):
            continue  # recomputed by every reader; a tied head is the embedding (no output tensor)
        split = split_tensors(key)
        if split is not None:
            plan += [(gguf_name, key) for gguf_name in split]
            continue
        gguf_name = names.get_name(key, try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            raise RlvrError(f"GGUF export: no llama.cpp name for tensor {key} of this {arch} model; "
                            "export --merged and convert with llama.cpp's convert_hf_to_gguf.py")
        if not gguf_name.endswith((".weight", ".bias")):  # a bare parameter (stacked experts) is a weight
            gguf_name += ".weight"
        plan.append((gguf_name, key))
    return plan


def _permute_qk(weight: np.ndarray, n_head: int) -> np.ndarray:
    """convert_hf_to_gguf.py's LlamaModel.permute: interleaved → half-split RoPE row order per head."""
    return (weight.reshape(n_head, 2, weight.shape[0] // n_head // 2, *weight.shape[1:])
            .swapaxes(1, 2).reshape(weight.shape))


def _tensor_data(gguf_name: str, tensor: torch.Tensor, config, arch: str) -> np.ndarray:
    data = stored_tensor(gguf_name, tensor, arch).detach().to(device="cpu", dtype=torch.float32).numpy()
    if arch == "llama" and (".attn_q." in gguf_name or ".attn_k." in gguf_name):
        heads = config.num_attention_heads
        if ".attn_k." in gguf_name:
            heads = getattr(config, "num_key_value_heads", None) or heads
        data = _permute_qk(data, heads)
    return data


def _ggml_type(qtype: str, data_shape: tuple[int, ...], gguf_name: str = ""):
    """Tensor type for one tensor: norms, biases and a mixture of experts' router stay f32 as llama.cpp keeps
    them (a rounded router picks other experts); q8_0 needs rows that are whole 32-value blocks, so a tensor
    with other rows falls back to f16 (convert_hf_to_gguf.py does too)."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    if len(data_shape) < 2 or ".ffn_gate_inp." in gguf_name:
        return GGMLQuantizationType.F32
    if qtype == "bf16":
        return GGMLQuantizationType.BF16
    if qtype == "q8_0" and data_shape[-1] % GGML_QUANT_SIZES[GGMLQuantizationType.Q8_0][0] == 0:
        return GGMLQuantizationType.Q8_0
    return GGMLQuantizationType.F16


def _llama3_rope_factors(config, rope: dict) -> np.ndarray:
    """The rope_freqs tensor llama.cpp needs for Llama 3.1+'s 'llama3' RoPE scaling (as convert_hf_to_gguf.py)."""
    dim = _head_dim(config)
    freqs = 1.0 / (rope["rope_theta"] ** (np.arange(0, dim, 2, dtype=np.float32) / dim))
    factor = rope.get("factor", 8.0)
    low, high = rope.get("low_freq_factor", 1.0), rope.get("high_freq_factor", 4.0)
    old_context = rope.get("original_max_position_embeddings", 8192)
    out = []
    for freq in freqs:
        wavelen = 2 * math.pi / freq
        if wavelen < old_context / high:
            out.append(1.0)
        elif wavelen > old_context / low:
            out.append(factor)
        else:
            smooth = (old_context / wavelen - low) / (high - low)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return np.asarray(out, dtype=np.float32)


# ---------------------------------------------------------------- writing


def _write(target: Path, config, arch: str, state: dict[str, torch.Tensor], vocab: GGUFVocab, tokenizer,
           qtype: str, name: str) -> None:
    """Stream one file: all tensor infos first (sizes are known from shapes), then one tensor at a time,
    so only a single converted tensor is in memory beside the model. Written under a temporary name and
    renamed when complete, so an interrupted export never leaves a truncated .gguf behind."""
    from gguf import GGMLQuantizationType, GGUFWriter, quants

    from rlvr.train.run_dir import Progress

    plan = _tensor_plan(config, arch, state)
    extra = _extra_tensors(config, arch)
    partial_file = target.with_name(target.name + ".partial")
    writer = GGUFWriter(partial_file, arch)
    try:
        _add_model_metadata(writer, config, arch, qtype, name)
        vocab.add_to(writer, tokenizer)
        for gguf_name, key in plan:
            shape = tuple(stored_tensor(gguf_name, state[key], arch).shape)
            _add_info(writer, gguf_name, shape, _ggml_type(qtype, shape, gguf_name))
        for gguf_name, data in extra:
            _add_info(writer, gguf_name, data.shape, GGMLQuantizationType.F32)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        progress = Progress(len(plan) + len(extra), f"GGUF {qtype}")
        for gguf_name, key in plan:
            data = _tensor_data(gguf_name, state[key], config, arch)
            writer.write_tensor_data(quants.quantize(data, _ggml_type(qtype, data.shape, gguf_name)))
            progress.update(info=gguf_name)
        for _, data in extra:
            writer.write_tensor_data(data)
            progress.update()
        progress.close()
        writer.close()
        os.replace(partial_file, target)
    except OSError as e:
        raise RlvrError(f"cannot write {target} ({e.strerror}); check the free disk space and permissions") from None
    finally:
        writer.close()
        partial_file.unlink(missing_ok=True)


def _add_info(writer, gguf_name: str, shape: tuple[int, ...], ggml_type) -> None:
    from gguf import quants

    byte_shape = quants.quant_shape_to_byte_shape(shape, ggml_type)
    writer.add_tensor_info(gguf_name, byte_shape, np.dtype(np.uint8), int(np.prod(byte_shape)), raw_dtype=ggml_type)


def _extra_tensors(config, arch: str) -> list[tuple[str, np.ndarray]]:
    rope = _rope(config)
    if arch == "llama" and rope["rope_type"] == "llama3":
        return [("rope_freqs.weight", _llama3_rope_factors(config, rope))]
    return []


def _add_model_metadata(writer, config, arch: str, qtype: str, name: str) -> None:
    from gguf import GGML_QUANT_VERSION, LlamaFileType

    writer.add_name(name)
    writer.add_file_type(int(getattr(LlamaFileType, f"MOSTLY_{qtype.upper()}")))
    writer.add_quantization_version(GGML_QUANT_VERSION)
    writer.add_vocab_size(config.vocab_size)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(getattr(config, "num_key_value_heads", None) or config.num_attention_heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    head_dim = _head_dim(config)
    writer.add_rope_dimension_count(head_dim)
    # llama.cpp assumes hidden/heads per head unless told; Qwen3 (and some Llamas) use another head_dim.
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    _add_rope(writer, config)
    add_family_metadata(writer, config, arch)


def _add_rope(writer, config) -> None:
    from gguf import RopeScalingType

    rope = _rope(config)
    writer.add_rope_freq_base(float(rope["rope_theta"]))
    kind = rope["rope_type"]
    if kind in ("default", "llama3"):  # llama3's factors travel as the rope_freqs tensor
        return
    if kind not in ("linear", "yarn"):
        raise RlvrError(f"GGUF export does not support RoPE scaling {kind!r}; supported: none, linear, yarn, llama3")
    writer.add_rope_scaling_type(RopeScalingType.LINEAR if kind == "linear" else RopeScalingType.YARN)
    writer.add_rope_scaling_factor(float(rope.get("factor", 1.0)))
    if "original_max_position_embeddings" in rope:
        writer.add_rope_scaling_orig_ctx_len(int(rope["original_max_position_embeddings"]))


# ---------------------------------------------------------------- tokenizer


@dataclass
class GGUFVocab:
    """A tokenizer as llama.cpp's tokenizer.ggml.* keys describe it."""

    model: str  # "gpt2" (byte-level BPE) or "llama" (sentencepiece-style BPE)
    pre: str  # llama.cpp's pre-tokenizer name
    tokens: list[str]
    types: list[int]
    merges: list[str]
    scores: list[float] | None = None
    add_space_prefix: bool | None = None

    def add_to(self, writer, tokenizer) -> None:
        writer.add_tokenizer_model(self.model)
        writer.add_tokenizer_pre(self.pre)
        writer.add_token_list(self.tokens)
        writer.add_token_types(self.types)
        if self.scores is not None:
            writer.add_token_scores(self.scores)
        writer.add_token_merges(self.merges)
        if self.add_space_prefix is not None:
            writer.add_add_space_prefix(self.add_space_prefix)
        for key, setter in (("bos", writer.add_bos_token_id), ("eos", writer.add_eos_token_id),
                            ("unk", writer.add_unk_token_id), ("pad", writer.add_pad_token_id)):
            token_id = getattr(tokenizer, f"{key}_token_id", None)
            if token_id is not None:
                setter(int(token_id))
        add_bos, add_eos = _adds_special_tokens(tokenizer)
        writer.add_add_bos_token(add_bos)
        writer.add_add_eos_token(add_eos)
        template = getattr(tokenizer, "chat_template", None)
        if isinstance(template, dict):
            writer.add_chat_template([{"name": k, "template": v} for k, v in template.items()])
        elif template:
            writer.add_chat_template(template)


def tokenizer_vocab(tokenizer, n_vocab: int) -> GGUFVocab:
    """The GGUF description of a fast (tokenizers) BPE tokenizer, padded to the model's `n_vocab` rows."""
    spec = _tokenizer_json(tokenizer)
    model = spec.get("model") or {}
    if model.get("type") != "BPE":
        raise RlvrError(f"GGUF export supports BPE tokenizers (byte-level like Qwen/Llama 3/SmolLM2, or sentencepiece-"
                        f"style like Llama 2); this tokenizer's model is {model.get('type')}")
    vocab = tokenizer.backend_tokenizer.get_vocab(with_added_tokens=True)
    if vocab and max(vocab.values()) >= n_vocab:
        raise RlvrError(f"the tokenizer has ids up to {max(vocab.values())} but the model's embedding has {n_vocab} "
                        "rows; resize the embeddings (model.resize_token_embeddings) before exporting")
    added = {t["id"]: t for t in spec.get("added_tokens") or []}
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges") or []]
    tokens = [f"[PAD{i}]" for i in range(n_vocab)]
    for token, index in vocab.items():
        tokens[index] = token
    present = set(vocab.values())
    if model.get("byte_fallback"):
        return _sentencepiece_vocab(spec, tokens, present, added, merges, tokenizer.unk_token_id)
    if not _nodes(spec.get("pre_tokenizer"), "ByteLevel"):
        raise RlvrError("GGUF export supports byte-level BPE or sentencepiece-style (byte fallback) tokenizers; "
                        "this BPE tokenizer is neither")
    types = [_token_type(i, present, added) for i in range(n_vocab)]
    return GGUFVocab("gpt2", _bpe_pre(spec), tokens, types, merges)


def _tokenizer_json(tokenizer) -> dict:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise RlvrError(f"GGUF export needs a fast tokenizer (tokenizers library); {type(tokenizer).__name__} "
                        "is not one")
    return json.loads(backend.to_str())


def _token_type(index: int, present: set[int], added: dict) -> int:
    from gguf import TokenType

    if index not in present:
        return TokenType.UNUSED
    if index in added:
        return TokenType.CONTROL if added[index].get("special") else TokenType.USER_DEFINED
    return TokenType.NORMAL


def _sentencepiece_vocab(spec: dict, tokens: list[str], present: set[int], added: dict, merges: list[str],
                         unk_id: int | None) -> GGUFVocab:
    """Llama-2-style: '▁' for spaces, <0xNN> byte tokens. llama.cpp's sentencepiece tokenizer merges the pair
    with the highest score first, so a token's score is minus the rank of the merge that makes it."""
    from gguf import TokenType

    rank: dict[str, int] = {}
    for i, merge in enumerate(merges):
        rank.setdefault(merge.replace(" ", ""), i)
    scores, types = [], []
    for i, token in enumerate(tokens):
        kind = _token_type(i, present, added)
        if i == unk_id:
            kind = TokenType.UNKNOWN
        elif i in present and _BYTE_TOKEN.fullmatch(token):  # llama.cpp's byte fallback looks these up by type
            kind = TokenType.BYTE
        types.append(kind)
        scores.append(-float(rank[token]) if token in rank else (-float(len(merges) + i) if kind == 1 else 0.0))
    parts = [spec.get("normalizer"), spec.get("pre_tokenizer")]
    if "\u2581" not in json.dumps(parts, ensure_ascii=False):
        raise RlvrError("GGUF export: this byte-fallback BPE tokenizer does not mark spaces with '\u2581' as "
                        "sentencepiece does; it cannot be described as a llama.cpp vocabulary")
    # Llama 2 style: a Prepend normalizer; newer files: Metaspace(prepend_scheme=first|always).
    metaspace = _nodes(parts, "Metaspace")
    prefix = bool(_nodes(parts, "Prepend")) or any(m.get("prepend_scheme") in ("first", "always")
                                                     or m.get("add_prefix_space") for m in metaspace)
    return GGUFVocab("llama", "default", tokens, types, merges, scores=scores, add_space_prefix=prefix)


def _nodes(tree, kind: str) -> list[dict]:
    """Every component of type `kind` in a tokenizer.json subtree (Sequence nesting included)."""
    if isinstance(tree, list):
        return [n for item in tree for n in _nodes(item, kind)]
    if not isinstance(tree, dict):
        return []
    own = [tree] if tree.get("type") == kind else []
    return own + [n for value in tree.values() if isinstance(value, (dict, list)) for n in _nodes(value, kind)]


def _bpe_pre(spec: dict) -> str:
    """llama.cpp's name for how text is split before BPE (llama-vocab.cpp picks its split regex by this name)."""
    pre = spec.get("pre_tokenizer")
    splits = [n["pattern"]["Regex"] for n in _nodes(pre, "Split")
              if isinstance(n.get("pattern"), dict) and "Regex" in n["pattern"]]
    if not splits:
        # ByteLevel's own GPT-2 regex, after single digits are split off (SmolLM2's tokenizer.json) or not.
        return "smollm" if any(d.get("individual_digits") for d in _nodes(pre, "Digits")) else "gpt-2"
    if splits[0] in _PRE_BY_SPLIT:
        return _PRE_BY_SPLIT[splits[0]]
    log.warning("GGUF export: the tokenizer's pre-tokenizer split is not one llama.cpp names (qwen2, llama-bpe, "
                "gpt-2, smollm); readers will split text with their default, so some token ids may differ")
    return "default"


def _adds_special_tokens(tokenizer) -> tuple[bool, bool]:
    """Whether encoding adds BOS / EOS (llama.cpp adds them itself when the file says so)."""
    plain = tokenizer.encode("a", add_special_tokens=False)
    full = tokenizer.encode("a")
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    add_bos = bos is not None and len(full) > len(plain) and full[0] == bos
    add_eos = eos is not None and len(full) > len(plain) and full[-1] == eos
    return add_bos, add_eos


# ---------------------------------------------------------------- llama.cpp's quantizer


def _quantize_with_llama_cpp(source: Path, target: Path, qtype: str) -> None:
    """llama.cpp's quantizer (its per-tensor k-quant choices are the reference) from an f16 GGUF."""
    import llama_cpp
    from gguf import LlamaFileType

    announce(f"quantizing to {qtype} with llama.cpp")
    partial_file = target.with_name(target.name + ".partial")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = int(getattr(LlamaFileType, f"MOSTLY_{qtype.upper()}"))
    params.nthread = os.cpu_count() or 1
    try:
        status = llama_cpp.llama_model_quantize(str(source).encode(), str(partial_file).encode(), params)
        if status == 0:
            os.replace(partial_file, target)
    finally:
        partial_file.unlink(missing_ok=True)
    if status != 0:
        raise RlvrError(f"llama.cpp could not quantize to {qtype} (status {status}); try another type or f16/q8_0")
