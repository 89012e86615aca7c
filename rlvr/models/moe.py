"""What training needs to know of a mixture-of-experts model: its router's load-balancing loss.

As TRL's GRPOTrainer (1.16) does it: a model whose config has `output_router_logits` (Qwen3-MoE,
Mixtral, gpt-oss, ...) returns its router logits when asked, and the loss the model's own code computes
from them (transformers' `load_balancing_loss_func` in the model's module: Switch Transformer's
E · Σ_e f_e · P_e over the unpadded tokens of the batch) is added to the objective with weight
`router_aux_loss_coef`, which defaults to the model config's own coefficient.
"""

from __future__ import annotations

import sys

import torch

from rlvr.errors import RlvrError


def is_mixture_of_experts(lm: torch.nn.Module) -> bool:
    """Whether the model returns router logits when asked (TRL's test: `output_router_logits` in its config)."""
    return hasattr(lm.config.get_text_config(), "output_router_logits")


def router_aux_loss_coef(lm: torch.nn.Module, coef: float | None) -> float:
    """The aux loss weight a run uses: `coef` as set, else the model config's own (0 where it declares none).
    A non-zero coefficient on a model without a router is refused, as TRL refuses it."""
    config = lm.config.get_text_config()
    if coef is None:
        return float(getattr(config, "router_aux_loss_coef", 0.0)) if is_mixture_of_experts(lm) else 0.0
    if coef and not is_mixture_of_experts(lm):
        raise RlvrError(f"train.router_aux_loss_coef is {coef} but {type(lm).__name__} is not a mixture of experts "
                        "(it has no router logits); remove the setting or set it to 0")
    return float(coef)


def router_aux_loss(lm: torch.nn.Module, router_logits: tuple[torch.Tensor, ...],
                    attention_mask: torch.Tensor) -> torch.Tensor:
    """The model's load-balancing loss of one forward's router logits (one [tokens, experts] tensor per
    layer), computed by the model's own transformers code over the tokens `attention_mask` keeps."""
    module = sys.modules[type(lm).__module__]
    loss_fn = getattr(module, "load_balancing_loss_func", None)
    if loss_fn is None:
        raise RlvrError(f"{type(lm).__name__} returns router logits but its module has no load_balancing_loss_func; "
                        "set train.router_aux_loss_coef: 0")
    return loss_fn(router_logits, lm.num_experts, lm.num_experts_per_tok, attention_mask)
