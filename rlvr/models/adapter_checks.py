"""Does a saved LoRA adapter fit a model? Checked from the adapter's files before peft loads it.

peft answers an adapter from another base (other module names or sizes) or of another rank with a
long traceback from deep inside load_state_dict; these checks read adapter_config.json and the
tensor shapes in adapter_model.safetensors (no tensor data) and say in one line what differs and
what to set. An adapter whose config names another base but whose shapes fit loads with a warning:
the name alone does not prove a mismatch (a hub id and a local copy of the same model differ as
strings), while shapes that do not fit always do.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from rlvr.errors import RlvrError

log = logging.getLogger("rlvr")

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
_PEFT_PREFIX = "base_model.model."  # how peft names the wrapped model in saved keys


def adapter_shapes(folder: str | Path) -> dict[str, tuple[int, ...]]:
    """Saved tensor name → shape, read from the safetensors header only; {} without that file."""
    path = Path(folder) / ADAPTER_WEIGHTS
    if not path.is_file():
        return {}
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return {key: tuple(f.get_slice(key).get_shape()) for key in f.keys()}


def check_adapter_fits(model: torch.nn.Module, folder: str | Path) -> None:
    """RlvrError (one line) when the adapter in `folder` cannot load into `model`.

    A plain model is checked for the adapted modules and their input/output sizes; a model that
    already carries LoRA layers (resuming a run) is checked tensor for tensor against them, which
    also catches a changed lora_rank.
    """
    folder = Path(folder)
    config = read_adapter_config(folder)
    shapes = adapter_shapes(folder)
    trained_on = config.get("base_model_name_or_path")
    origin = f" (it was trained on '{trained_on}')" if trained_on else ""
    live = _live_lora_shapes(model)
    if live:
        _check_against_live(folder, config, shapes, live, origin)
        return
    modules = dict(_base(model).named_modules())
    missing = sorted({_module_of(k) for k in shapes if _is_lora_matrix(k) and _module_of(k) not in modules})
    if missing:
        raise RlvrError(f"the adapter in {folder} adapts {len(missing)} modules this model does not have (e.g. "
                        f"'{missing[0]}'){origin}; load it with the base model it was trained on "
                        "(model.model_name_or_path)")
    for key, shape in shapes.items():
        if not _is_lora_matrix(key):
            continue
        name = _module_of(key)
        sizes = _in_out_features(modules[name])
        if sizes is None:
            continue
        expected = sizes[0] if ".lora_A." in key else sizes[1]
        got = shape[1] if ".lora_A." in key else shape[0]
        if got != expected:
            side = "input" if ".lora_A." in key else "output"
            raise RlvrError(f"the adapter in {folder} does not fit this model: '{name}' has {side} size {expected} "
                            f"here but {got} in the adapter{origin}; load it with the base model it was trained "
                            "on (model.model_name_or_path)")


def warn_if_other_base(model: torch.nn.Module, folder: str | Path) -> str | None:
    """A warning line (logged and returned) when the adapter's config names a base model other than
    `model`'s; None when the names agree or either is unknown."""
    trained_on = read_adapter_config(Path(folder)).get("base_model_name_or_path")
    loaded = getattr(getattr(_base(model), "config", None), "name_or_path", None)
    if not trained_on or not loaded or _same_name(trained_on, loaded):
        return None
    message = (f"the adapter in {folder} was trained on '{trained_on}' but the model is '{loaded}'; if these "
               f"are not the same model the adapter is meaningless: set model.model_name_or_path: {trained_on}")
    log.warning(message)
    return message


def _same_name(a: str, b: str) -> bool:
    # A hub id, its local download and a moved folder share the last path component.
    return Path(a.rstrip("/\\")).name.lower() == Path(b.rstrip("/\\")).name.lower()


def read_adapter_config(folder: str | Path) -> dict:
    """adapter_config.json of a saved adapter; RlvrError when it is missing or not JSON."""
    folder = Path(folder)
    path = folder / ADAPTER_CONFIG
    if not path.is_file():
        raise RlvrError(f"no LoRA adapter at {folder} ({ADAPTER_CONFIG} missing); point model.adapter_path at "
                        "a folder saved by rlvr sft/train")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise RlvrError(f"{path} is not valid JSON ({e}); save the adapter again") from None
    if not isinstance(config, dict):
        raise RlvrError(f"{path} is not a JSON object; save the adapter again")
    return config


def _check_against_live(folder: Path, config: dict, shapes: dict, live: dict, origin: str) -> None:
    missing = sorted(_module_of(k) for k in shapes if _is_lora_matrix(k) and k not in live)
    if missing:
        raise RlvrError(f"the adapter in {folder} adapts {len(missing)} modules this run's LoRA does not (e.g. "
                        f"'{missing[0]}'){origin}; set model.lora_target_modules (and lora_target_parameters) "
                        "as when it was saved")
    untrained = sorted(_module_of(k) for k in live if _is_lora_matrix(k) and k not in shapes)
    if shapes and untrained:
        raise RlvrError(f"this run's LoRA adapts {len(untrained)} modules the adapter in {folder} has no weights "
                        f"for (e.g. '{untrained[0]}'); set model.lora_target_modules (and lora_target_parameters) "
                        "as when it was saved")
    for key, shape in shapes.items():
        if key in live and live[key] != shape:
            rank_now = live[key][0] if ".lora_A." in key else live[key][1]
            rank_saved = shape[0] if ".lora_A." in key else shape[1]
            if rank_now != rank_saved:
                raise RlvrError(f"the adapter in {folder} has LoRA rank {config.get('r', rank_saved)} but this "
                                f"run builds rank {rank_now}; set model.lora_rank: {rank_saved} to load it")
            raise RlvrError(f"the adapter in {folder} does not fit this model: '{key}' is {list(shape)} there and "
                            f"{list(live[key])} here{origin}; load it with the base model it was trained on")


def _live_lora_shapes(model: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    """Saved-key → shape of the model's own (default) LoRA matrices; {} for a model without LoRA."""
    if not hasattr(model, "peft_config"):
        return {}
    from peft import get_peft_model_state_dict

    return {k: tuple(v.shape) for k, v in get_peft_model_state_dict(model).items()}


def _base(model: torch.nn.Module) -> torch.nn.Module:
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _is_lora_matrix(key: str) -> bool:
    return ".lora_A." in key or ".lora_B." in key


def _module_of(key: str) -> str:
    """'base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight' → 'model.layers.0.self_attn.q_proj';
    peft's nested parameter wrappers ('...mlp.experts.base_layer.lora_A.weight') → the module they wrap."""
    name = key.split(".lora_", 1)[0].replace(".base_layer", "")
    return name[len(_PEFT_PREFIX):] if name.startswith(_PEFT_PREFIX) else name


def _in_out_features(module: torch.nn.Module) -> tuple[int, int] | None:
    if hasattr(module, "in_features") and hasattr(module, "out_features"):
        return module.in_features, module.out_features
    weight = getattr(module, "weight", None)
    if type(module).__name__ == "Conv1D" and weight is not None:  # GPT-2 style: weight is [in, out]
        return tuple(weight.shape)
    return None
