"""Which modules LoRA adapts: the configured names checked against the model's own layout.

rlvr's default names (q/k/v/o and gate/up/down projections) fit Llama-style layouts. Where a model
lays its projections out differently (Phi-3's fused qkv_proj and gate_up_proj, GPT-NeoX's
query_key_value and dense_*), the default becomes every Linear of the decoder (what peft and TRL
call `all-linear`), with one warning line naming the modules adapted. Mixture-of-experts models
keep their experts as fused 3-D parameters, not Linear layers, so LoRA adapts their attention (and
any Linear router) only: the documented default, said in a warning. Names that are not in the model
are a warning when some others are, and a one-line error listing the model's Linear layers when none are.
"""

from __future__ import annotations

import logging

import torch

from rlvr.config import ALL_LINEAR, DEFAULT_LORA_TARGETS
from rlvr.errors import RlvrError

log = logging.getLogger("rlvr")


def linear_leaf_names(model: torch.nn.Module) -> list[str]:
    """Leaf names of the model's Linear layers (bitsandbytes' 4-bit ones included), the output head excluded."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    names: list[str] = []
    for name, mod in model.named_modules():
        leaf = name.rsplit(".", 1)[-1]
        if isinstance(mod, torch.nn.Linear) and mod is not head and leaf not in names:
            names.append(leaf)
    return names


def fused_expert_modules(model: torch.nn.Module) -> list[str]:
    """Class names of modules holding experts as stacked 3-D weights (transformers' MoE layout)."""
    found: list[str] = []
    for mod in model.modules():
        own = [p for p in mod.parameters(recurse=False) if p.dim() == 3]
        if own and type(mod).__name__ not in found:
            found.append(type(mod).__name__)
    return found


def lora_targets(model: torch.nn.Module, wanted: list[str] | str | None) -> list[str]:
    """The leaf module names LoRA adapts in `model` for the configured `wanted` (None = rlvr's default)."""
    linear = linear_leaf_names(model)
    model_name = type(model).__name__
    if wanted is None or list(wanted) == list(DEFAULT_LORA_TARGETS):
        present = [t for t in DEFAULT_LORA_TARGETS if t in linear]
        if len(present) == len(DEFAULT_LORA_TARGETS):
            return present
        missing = [t for t in DEFAULT_LORA_TARGETS if t not in linear]
        log.warning("LoRA: %s has no %s; adapting all its Linear layers instead (%s)%s", model_name,
                    ", ".join(missing), ", ".join(linear), _experts_note(model))
        return linear
    if wanted == ALL_LINEAR or list(wanted) == [ALL_LINEAR]:
        note = _experts_note(model)
        if note:
            log.warning("LoRA: all-linear adapts %s%s", ", ".join(linear), note)
        return linear
    wanted = list(wanted)
    leaves = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    chosen = [t for t in wanted if t in leaves]
    if not chosen:
        raise RlvrError(
            f"none of the LoRA target modules {wanted} exist in {model_name}; its Linear layers are "
            f"{', '.join(linear)}: set model.lora_target_modules to some of them, or to '{ALL_LINEAR}'")
    skipped = [t for t in wanted if t not in leaves]
    if skipped:
        log.warning("LoRA: %s has no %s (skipped); adapting %s", model_name, ", ".join(skipped), ", ".join(chosen))
    return chosen


def _experts_note(model: torch.nn.Module) -> str:
    experts = fused_expert_modules(model)
    if not experts:
        return ""
    return (f"; the experts ({', '.join(experts)}: fused 3-D weights, not Linear layers) and the router are "
            "not adapted (rlvr's default for mixture-of-experts models)")


def adapted_modules(model) -> list[str] | None:
    """The module names the model's active LoRA adapter targets (None without peft adapters)."""
    configs = getattr(model, "peft_config", None)
    if not configs:
        return None
    active = getattr(model, "active_adapter", None)
    cfg = configs.get(active if isinstance(active, str) else next(iter(configs)))
    targets = getattr(cfg, "target_modules", None)
    if targets is None:
        return None
    return sorted(targets) if not isinstance(targets, str) else [targets]
