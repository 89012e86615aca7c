"""A memory estimate for one GRPO step, printed before training and checked by bench/step.py.

Peak = what stays (weights, adapters, their gradients, optimizer state) + the larger of the two
phases: the rollout (KV cache, and the decode copy when the native engine makes one: merged LoRA,
dequantised 4-bit or FP8 bases, FP8 matrices) and the update (checkpointed activations, one layer's
recompute, the chunked loss workspace).
"""

from __future__ import annotations

import torch

from rlvr.models.fp8 import FP8
from rlvr.rollout.engine import MemoryPlan

GIB = 2**30


def _param_bytes(params) -> int:
    return sum(p.numel() * p.element_size() for p in params)


ATTENTION_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj")
# Every decoder-layer matrix: Llama's names, and Phi-3's fused qkv_proj / gate_up_proj.
LAYER_PROJECTIONS = (*ATTENTION_PROJECTIONS, "gate_proj", "up_proj", "down_proj", "qkv_proj", "gate_up_proj")


def _base_layers(model) -> list[torch.nn.Module]:
    """The base layer of every decoder-layer matrix (under a LoRA wrapper too)."""
    return [m.base_layer if hasattr(m, "base_layer") else m for name, m in model.named_modules()
            if name.rsplit(".", 1)[-1] in LAYER_PROJECTIONS]


def _numel(weight: torch.Tensor) -> int:
    state = getattr(weight, "quant_state", None)  # a bitsandbytes 4-bit weight: its logical size
    return int(torch.Size(state.shape).numel()) if state is not None else weight.numel()


def _packed_dtype(layer: torch.nn.Module) -> torch.dtype | None:
    """The compute dtype of a 4-bit (bitsandbytes) or FP8 (`FrozenFP8Linear`) base; None for a plain one."""
    state = getattr(layer.weight, "quant_state", None)
    if state is not None:
        return state.dtype
    return layer.compute_dtype if layer.weight.dtype == FP8 else None


def decode_copy_bytes(model, rollout: MemoryPlan) -> int:
    """Bytes of the native engine's per-round decode copy: with rollout_dtype fp8 every layer matrix
    at 1 byte per value; else every 4-bit or FP8 base dequantised to its compute dtype, and the adapted
    16-bit matrices of the merge scope at their own size. (The engine dequantises packed bases inside
    the step instead, with no copy, when this does not fit half the free memory: see its log line.)"""
    layers = _base_layers(model)
    packed = [(layer, dtype) for layer in layers if (dtype := _packed_dtype(layer)) is not None]
    if rollout.rollout_dtype == "fp8":
        return sum(_numel(layer.weight) for layer in layers)
    n = 0 if rollout.rollout_dtype is None else sum(_numel(layer.weight) * dtype.itemsize for layer, dtype in packed)
    if rollout.rollout_merge_lora and not packed:
        only_attention = rollout.rollout_merge_lora == "attention"
        adapted = [m.base_layer.weight for name, m in model.named_modules()
                   if hasattr(m, "lora_A") and hasattr(m, "base_layer")
                   and (not only_attention or name.rsplit(".", 1)[-1] in ATTENTION_PROJECTIONS)]
        n += _param_bytes(adapted)
    return n


def estimate_memory(model, args, prompt_length: int, rollout: MemoryPlan) -> dict[str, float]:
    """GiB per component; `prompt_length` is the longest tokenized prompt, `rollout` the engine's
    memory plan (its resolved rollout_merge_lora and rollout_dtype: `decode_copy_bytes`)."""
    cfg = model.config
    layers, hidden = cfg.num_hidden_layers, cfg.hidden_size
    heads = cfg.num_attention_heads
    kv_heads = getattr(cfg, "num_key_value_heads", heads) or heads
    head_dim = getattr(cfg, "head_dim", None) or hidden // heads
    inter = getattr(cfg, "intermediate_size", 4 * hidden)
    params = list(model.parameters())
    trainable = [p for p in params if p.requires_grad]
    base = [p for p in params if not p.requires_grad]
    act_bytes = base[0].element_size() if base else trainable[0].element_size()
    packed = [p for p in base if getattr(p, "quant_state", None) is not None]
    if args.bf16 or packed:  # a 4-bit model computes in its (16-bit) compute dtype
        act_bytes = 2
    seq = prompt_length + args.max_completion_length
    rows_round = args.resolved_generation_batch_size
    rows_micro = args.per_device_train_batch_size
    optim_bytes_per_param = 2 if args.optim.endswith("8bit") and torch.cuda.is_available() else 8

    est = {
        "weights": _param_bytes(base) / GIB,
        "adapters": _param_bytes(trainable) / GIB,
        "gradients": _param_bytes(trainable) / GIB,
        "optimizer": sum(p.numel() for p in trainable) * optim_bytes_per_param / GIB,
        "kv_cache": rows_round * seq * layers * 2 * kv_heads * head_dim * act_bytes / GIB,
        "decode_copy": decode_copy_bytes(model, rollout) / GIB,
    }
    tokens = rows_micro * seq
    saved_per_layer = tokens * hidden * act_bytes  # the layer input kept by checkpointing
    one_layer = tokens * (4 * hidden + 3 * inter) * act_bytes  # its recompute: attention in/out, MLP
    est["activations"] = (layers * saved_per_layer + one_layer if args.gradient_checkpointing
                          else layers * (saved_per_layer + one_layer)) / GIB
    est["loss_workspace"] = args.logprob_chunk_elements * (2 * act_bytes + 4) / GIB
    fixed = est["weights"] + est["adapters"] + est["gradients"] + est["optimizer"]
    rollout = est["kv_cache"] + est["decode_copy"]
    update = est["activations"] + est["loss_workspace"]
    est["peak"] = fixed + max(rollout, update)
    return {k: round(v, 3) for k, v in est.items()}


def format_estimate(est: dict[str, float]) -> str:
    parts = ", ".join(f"{k.replace('_', ' ')} {v:.2f}" for k, v in est.items() if k != "peak")
    return f"memory estimate: peak {est['peak']:.2f} GiB ({parts})"
