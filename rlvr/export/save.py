"""Export a trained model: the LoRA adapter alone, or a standalone folder with the LoRA merged in.

A merged folder is an ordinary transformers checkpoint (config, safetensors, generation config,
tokenizer) that `AutoModelForCausalLM.from_pretrained` and `AutoTokenizer.from_pretrained` load
with no peft installed.

How `save_merged` merges without changing the caller's model: for each LoRA layer it computes
W + ΔW out of place (peft's `get_delta_weight`, in float32) and saves those tensors together with
the untouched ones through an empty (meta-device) copy of the model class. Compared with the
alternatives:
- merge_adapter() → copy → unmerge_adapter() edits the live weights twice, and W + ΔW − ΔW is not
  bit-exact in bf16/fp16, so the caller's model would drift a little with every export;
- a deep copy of the whole model doubles memory (a second 7B model on the GPU);
- reloading the base and the adapter from disk needs the base on disk and a second load.
Here the only new memory is the merged tensors (and the cast copies when dtype differs). Adapters
this arithmetic does not cover (DoRA, LoRA bias, modules_to_save, non-LoRA tuners) fall back to
peft's merge_and_unload on a deep copy. FP8 bases (`model.load_in_fp8`) are dequantised (W = Q · s
per row, in float32) before the adapters are added, and their scales are not written.
"""

from __future__ import annotations

import copy
import re
import shutil
from pathlib import Path

import torch

from rlvr import status
from rlvr.config import ModelConfig, RunConfig, config_from_dict
from rlvr.errors import RlvrError, nearest
from rlvr.models.fp8 import FrozenFP8Linear

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}

_LORA_PARAM = re.compile(r"\.lora_[A-Za-z_]+\.")  # lora_A, lora_B, lora_embedding_A/B parameters
_BASE_LAYER = re.compile(r"(\.base_layer)+\.")  # peft's wrapper levels in a parameter's name


def is_peft_model(model) -> bool:
    """Whether `model` carries peft adapters (a PeftModel, or a model with injected LoRA layers)."""
    return hasattr(model, "peft_config")


# ---------------------------------------------------------------- in-memory models


def save_lora(model, path: str | Path) -> Path:
    """Save the LoRA adapter (adapter_config.json + adapter_model.safetensors) to `path`."""
    if not is_peft_model(model):
        raise RlvrError(
            f"save_lora: the model ({type(model).__name__}) has no LoRA adapter; use save_merged to save "
            "a fully fine-tuned model"
        )
    path = _prepare(path)
    model.save_pretrained(path)
    return path


def save_merged(model, tokenizer, path: str | Path, dtype: str = "float16") -> Path:
    """Write a standalone checkpoint of `model` (LoRA merged in, if any) and `tokenizer` in `dtype`.

    The caller's model is left exactly as it was. A model without adapters is saved as it is,
    cast to `dtype`.
    """
    torch_dtype = _dtype(dtype)
    base = model.get_base_model() if is_peft_model(model) else model
    if _quant_method(base) not in (None, "gguf"):
        raise RlvrError(
            f"save_merged: the model is quantized ({_quant_method(base)}), so its weights cannot be merged "
            "exactly; export the run with `rlvr export RUN_DIR --merged`, which reloads the base in full precision"
        )
    state = merged_state_dict(model)
    state = {k: v.to(torch_dtype) if v.is_floating_point() else v for k, v in state.items()}
    path = _prepare(path)
    _write_checkpoint(base, state, torch_dtype, path)
    tokenizer.save_pretrained(path)
    return path


def merged_state_dict(model) -> dict[str, torch.Tensor]:
    """The plain model's state dict with every active LoRA adapter merged; the model is not changed.

    Unchanged weights are the model's own tensors (not copies); merged ones and dequantised FP8 bases
    are new float32 tensors.
    """
    if not is_peft_model(model):
        return _dense_fp8_bases(dict(model.state_dict()), model)
    if not _plain_lora(model):
        if any(isinstance(m, FrozenFP8Linear) for m in model.modules()):
            raise RlvrError("export: this adapter kind (DoRA, LoRA bias, modules_to_save or another tuner) on an FP8 "
                            "base cannot be merged in memory; use `rlvr export RUN_DIR --merged`, which reloads the "
                            "base in full precision")
        # Rare adapter kinds: peft's own merge is the reference; a throwaway copy keeps ours intact.
        return dict(copy.deepcopy(model).merge_and_unload().state_dict())
    from peft.tuners.lora import LoraLayer, ParamWrapper

    base = model.get_base_model()
    # peft renames a wrapped layer's weight `x.base_layer.weight` and adds `x.lora_A.<name>.weight`; adapted
    # parameters (a mixture of experts' stacked experts) nest one wrapper per parameter: x.base_layer.base_layer.p.
    state = {_BASE_LAYER.sub(".", k): v for k, v in base.state_dict().items() if not _LORA_PARAM.search(k)}
    for name, module in base.named_modules():
        if isinstance(module, ParamWrapper):
            key = _BASE_LAYER.sub(".", f"{name}.") + module.parameter_name
            state[key] = _merged_weight(module, module.get_param())
        elif isinstance(module, LoraLayer):
            state[f"{name}.weight"] = _merged_weight(module, _base_weight(module.get_base_layer()))
    return _dense_fp8_bases(state, base)


def _dense_fp8_bases(state: dict[str, torch.Tensor], model) -> dict[str, torch.Tensor]:
    """`state` with each FP8 base's weight dequantised (unless a merge already replaced it) and its
    row scales dropped: the plain Linear layers of the model's class."""
    for name, module in model.named_modules():
        if isinstance(module, FrozenFP8Linear):
            key = name.removesuffix(".base_layer")
            del state[f"{key}.weight_scale"]
            if state[f"{key}.weight"].dtype == module.weight.dtype:
                state[f"{key}.weight"] = module.dequantized_weight()
    return state


def _base_weight(base) -> torch.Tensor:
    """A LoRA layer's base weight, dequantised when the base is an FP8 one."""
    return base.dequantized_weight() if isinstance(base, FrozenFP8Linear) else base.weight


def _quant_method(base) -> str | None:
    """The model's quantization method ('bitsandbytes', 'gguf', ...) or None."""
    qcfg = getattr(base.config, "quantization_config", None)
    if qcfg is None:
        return None
    method = qcfg.get("quant_method") if isinstance(qcfg, dict) else getattr(qcfg, "quant_method", None)
    return str(getattr(method, "value", method))


def _plain_lora(model) -> bool:
    """Whether W + Σ get_delta_weight covers every adapter: plain LoRA on weights only."""
    from peft import LoraConfig

    for cfg in model.peft_config.values():
        if not isinstance(cfg, LoraConfig) or cfg.use_dora or getattr(cfg, "lora_bias", False):
            return False
        if cfg.modules_to_save or getattr(cfg, "trainable_token_indices", None):
            return False
    return True


def _merged_weight(module, weight: torch.Tensor) -> torch.Tensor:
    """`weight` (the base of a LoRA layer or adapted parameter) plus its pending adapters, in float32."""
    weight = weight.detach()
    adapters = set(module.lora_A) | set(module.lora_embedding_A)
    # Adapters already merged by the caller are in `weight`; adding them again would double them.
    pending = [a for a in module.active_adapters if a in adapters and a not in module.merged_adapters]
    if not pending:
        return weight
    merged = weight.float()  # float32 sum, so a bf16 base does not lose the small ΔW
    for adapter in pending:
        merged = merged + module.get_delta_weight(adapter).detach().float()
    return merged


def _write_checkpoint(base, state: dict[str, torch.Tensor], dtype: torch.dtype, path: Path) -> None:
    """Save `state` as a checkpoint of base's class and config through an empty copy of the model.

    transformers' save_pretrained does the format work (tied weights, sharding, config, generation
    config); a meta-device instance costs no memory, and `assign=True` puts our tensors in it as
    they are instead of copying.
    """
    config = copy.deepcopy(base.config)
    config.dtype = dtype  # what from_pretrained(dtype="auto") loads it as
    # A GGUF base is dequantized on load; left in, its GgufConfig would claim the export is GGUF.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    with torch.device("meta"):
        empty = type(base)(config)
    empty.load_state_dict(state, strict=True, assign=True)
    empty.tie_weights()
    if getattr(base, "generation_config", None) is not None:
        empty.generation_config = copy.deepcopy(base.generation_config)
    empty.save_pretrained(path)


# ---------------------------------------------------------------- run directories


def export_run(run_dir: str | Path, merged: bool = True, dtype: str = "float16") -> Path:
    """Export a finished run: `run_dir/merged` (merged checkpoint), or `run_dir/lora` (adapter and
    tokenizer) when merged=False. Returns the folder written.

    The base model named in run_dir/config.yaml is loaded on the CPU in float32, so the merge is
    exact and needs no GPU (4 bytes per parameter of RAM); a 4-bit training run is merged into the
    full-precision base. A full fine-tuning run's `final` folder is the model itself.
    """
    run_dir, final = _check_run_dir(Path(run_dir))
    _dtype(dtype)  # refuse a bad dtype before loading anything
    if not merged:
        if not (final / "adapter_config.json").is_file():
            raise RlvrError(f"{final} holds a fully fine-tuned model, not a LoRA adapter; export it with merged=True "
                            "(rlvr export RUN_DIR --merged)")
        return _copy_adapter(final, _run_config(run_dir).model, run_dir / "lora")
    model, tokenizer = load_run(run_dir)
    return save_merged(model, tokenizer, run_dir / "merged", dtype=dtype)


def load_run(run_dir: str | Path):
    """(model, tokenizer) of a finished run: its base in float32 on the CPU with final/'s adapter attached
    (not merged), or final/ itself for a full fine-tuning run. What export_run and the GGUF export start from."""
    run_dir, final = _check_run_dir(Path(run_dir))
    model_cfg = _run_config(run_dir).model
    return _load_final(final, model_cfg, (final / "adapter_config.json").is_file())


def run_system_prompt(run_dir: str | Path) -> str | None:
    """The system prompt the run trained with (its config's data section, resolved as training resolves
    it), or None when the config has no data section or asks for none."""
    run_dir = Path(run_dir)
    raw = _read_run_yaml(run_dir)
    if "data" not in raw:
        return None
    data = _run_config(run_dir).data
    if data.system_prompt is not None:
        return data.system_prompt or None
    from rlvr.data.prompts import make_system_prompt

    return make_system_prompt(data.reasoning_tag, data.answer_tag)


def _check_run_dir(run_dir: Path) -> tuple[Path, Path]:
    if not run_dir.is_dir():
        raise RlvrError(f"run directory not found: {run_dir}; pass the output_dir of an rlvr train or sft run")
    final = run_dir / "final"
    if not final.is_dir() and not any((run_dir / name).exists() for name in ("config.yaml", "run.json")):
        raise RlvrError(f"{run_dir} is not a run directory (no config.yaml, run.json or final/); pass the "
                        "output_dir of an rlvr train or sft run")
    if not final.is_dir():
        raise RlvrError(
            f"no trained model in {run_dir} (final/ missing): the run has not finished; let it finish, or "
            "resume it with train.resume_from_checkpoint: latest"
        )
    if not (final / "adapter_config.json").is_file() and not (final / "config.json").is_file():
        raise RlvrError(f"{final} has neither adapter_config.json nor config.json; it is not a saved model")
    return run_dir, final


def _read_run_yaml(run_dir: Path) -> dict:
    import yaml

    path = run_dir / "config.yaml"
    if not path.is_file():
        raise RlvrError(f"{path} not found: export needs the run's resolved config to find the base model; "
                        "export a folder written by rlvr train or sft")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise RlvrError(f"{path}: not valid YAML ({getattr(e, 'problem', e)})") from None
    if not isinstance(raw, dict):
        raise RlvrError(f"{path}: expected a mapping with a model section")
    return raw


def _run_config(run_dir: Path) -> RunConfig:
    # train_cls=None: the train section (GRPO or SFT) is not needed to find the model.
    return config_from_dict(_read_run_yaml(run_dir), train_cls=None, where=str(run_dir / "config.yaml"))


def _load_final(final: Path, model_cfg: ModelConfig, adapter: bool):
    """The run's model in float32 on the CPU, with the attention implementation the run trained with."""
    from rlvr.models.loading import load_causal_lm, load_model, load_tokenizer, resolve_source

    if adapter:
        return load_model(model_cfg.model_name_or_path, gguf_file=model_cfg.gguf_file, dtype="float32",
                          use_lora=False, adapter_path=str(final), device="cpu",
                          attn_implementation=model_cfg.attn_implementation,
                          trust_remote_code=model_cfg.trust_remote_code)
    announce(f"loading the fine-tuned model {final} ...")
    model = load_causal_lm(str(final), None, dtype=torch.float32, attn_implementation=model_cfg.attn_implementation,
                           trust_remote_code=model_cfg.trust_remote_code)
    source, gguf = resolve_source(model_cfg.model_name_or_path, model_cfg.gguf_file)
    return model, load_tokenizer(source, gguf, model_cfg.trust_remote_code)


def _copy_adapter(final: Path, model_cfg: ModelConfig, out: Path) -> Path:
    from rlvr.models.loading import load_tokenizer, resolve_source

    source, gguf = resolve_source(model_cfg.model_name_or_path, model_cfg.gguf_file)
    tokenizer = load_tokenizer(source, gguf, model_cfg.trust_remote_code)
    out = _prepare(out)
    shutil.copytree(final, out, dirs_exist_ok=True)
    tokenizer.save_pretrained(out)
    return out


# ---------------------------------------------------------------- helpers


def _dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise RlvrError(f"export dtype {name!r} is not one of {', '.join(DTYPES)}{nearest(str(name), DTYPES)}")
    return DTYPES[name]


def announce(message: str) -> None:
    """One line on stderr per slow step (a file written, an upload), so a long export shows where it is."""
    status.announce(message, "rlvr export")


def _prepare(path: str | Path) -> Path:
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RlvrError(f"cannot create the export folder {path} ({e.strerror}); choose a writable path") from None
    return path
