"""Which modules LoRA adapts: the configured names checked against the model's own layout.

rlvr's default names (q/k/v/o and gate/up/down projections) fit Llama-style layouts. Where a model
lays its projections out differently (Phi-3's fused qkv_proj and gate_up_proj, GPT-NeoX's
query_key_value and dense_*), the default becomes every Linear of the decoder (what peft and TRL
call `all-linear`), with one warning line naming the modules adapted. Names that are not in the model
are a warning when some others are, and a one-line error listing the model's Linear layers when none are.

Mixtures of experts keep their experts as fused 3-D parameters, not Linear layers (transformers 5:
`experts.gate_up_proj` [E, 2·I, H] and `experts.down_proj`, gpt-oss's stored [E, in, out]), which peft
adapts as parameters (`target_parameters`, TRL's `lora_target_parameters`): a rank-r adapter per expert.
rlvr's default adapts every expert's gate/up and down weights beside the attention, and leaves the
router frozen (as Unsloth does: a router that drifts moves tokens between experts mid-training); the
router is adapted when named (`mlp.gate.weight` in Qwen3-MoE and Mixtral, `mlp.router.weight` in gpt-oss),
and `lora_target_parameters: []` adapts the attention only.
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


def expert_parameter_names(model: torch.nn.Module) -> list[str]:
    """'<module leaf>.<parameter>' of every stacked 3-D expert weight (e.g. experts.gate_up_proj), once each."""
    names: list[str] = []
    for module_name, mod in model.named_modules():
        leaf = module_name.rsplit(".", 1)[-1]
        for param_name, p in mod.named_parameters(recurse=False):
            if p.dim() == 3 and f"{leaf}.{param_name}" not in names:
                names.append(f"{leaf}.{param_name}")
    return names


def router_parameter_names(model: torch.nn.Module) -> list[str]:
    """'<block>.<router>.weight' of a mixture of experts' routers (mlp.gate.weight, mlp.router.weight), once each."""
    names: list[str] = []
    for module_name, mod in model.named_modules():
        router = getattr(mod, "router", None) or getattr(mod, "gate", None)
        if hasattr(mod, "experts") and isinstance(router, torch.nn.Module) and hasattr(router, "weight"):
            leaf = module_name.rsplit(".", 1)[-1]
            name = f"{leaf}.{'router' if getattr(mod, 'router', None) is router else 'gate'}.weight"
            if name not in names:
                names.append(name)
    return names


def lora_target_parameters(model: torch.nn.Module, wanted: list[str] | None, dropout: float = 0.0) -> list[str]:
    """The parameters LoRA adapts as parameters (peft's target_parameters) for the configured `wanted`
    (None = rlvr's default: every stacked expert weight, routers frozen; [] = none)."""
    experts = expert_parameter_names(model)
    chosen = experts if wanted is None else list(wanted)
    if not chosen:
        return []
    if wanted is not None:
        params = [name for name, _ in model.named_parameters()]
        found = [t for t in chosen if any(n == t or n.endswith(f".{t}") for n in params)]
        if not found:
            candidates = experts + router_parameter_names(model)
            raise RlvrError(f"none of the LoRA target parameters {chosen} exist in {type(model).__name__}; "
                            + (f"its expert and router weights are {', '.join(candidates)}" if candidates else
                               "it has no stacked expert weights")
                            + ": set model.lora_target_parameters to some of them, or to [] for none")
        skipped = [t for t in chosen if t not in found]
        if skipped:
            log.warning("LoRA: %s has no parameter %s (skipped); adapting %s", type(model).__name__,
                        ", ".join(skipped), ", ".join(found))
        chosen = found
    if dropout:
        raise RlvrError(f"LoRA on parameters ({', '.join(chosen)}) cannot use dropout (peft's ParamWrapper); set "
                        "model.lora_dropout: 0, or model.lora_target_parameters: [] to adapt the attention only")
    return chosen


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
    return (f"; the experts ({', '.join(experts)}: fused 3-D weights, not Linear layers) are adapted through "
            "model.lora_target_parameters (default: all of them), the router only when named there")


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
    parameters = sorted(getattr(cfg, "target_parameters", None) or [])
    return (sorted(targets) if not isinstance(targets, str) else [targets]) + parameters
