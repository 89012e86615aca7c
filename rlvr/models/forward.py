"""Run a causal LM over prompt + completion and return the completion tokens' log-probs.

The decoder body and lm_head are called separately so the log-probs go through
`chunked_logprobs` and no (tokens × vocab) logits tensor is ever built.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rlvr.models.logprobs import DEFAULT_CHUNK_ELEMENTS, chunked_logprobs
from rlvr.models.moe import router_aux_loss


def base_causal_lm(model: torch.nn.Module) -> torch.nn.Module:
    """The *ForCausalLM under a peft wrapper (LoRA layers stay injected in it)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def head_transform(lm: torch.nn.Module) -> dict:
    """What the model does to lm_head's output before the softmax, as chunked_logprobs' keywords:
    Granite divides by logits_scaling, Gemma 2/3 soft-cap with final_logit_softcapping."""
    config = lm.config
    return {"scale": float(getattr(config, "logits_scaling", None) or 1.0),
            "softcap": getattr(config, "final_logit_softcapping", None)}


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that skip left padding, as generate() assigns them, so ℓ matches the rollout's."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


@dataclass
class PolicyForward:
    logps: torch.Tensor  # [B, C] fp32, 0 where completion_mask is 0
    entropy: torch.Tensor | None  # [B, C], when asked for
    aux_loss: torch.Tensor | None  # scalar: the router's load-balancing loss (models/moe.py), when asked for


def policy_forward(
    model: torch.nn.Module,
    prompt_ids: torch.Tensor,  # [B, P] left-padded
    prompt_mask: torch.Tensor,  # [B, P]
    completion_ids: torch.Tensor,  # [B, C] right-padded
    completion_mask: torch.Tensor,  # [B, C]
    temperature: float = 1.0,
    with_entropy: bool = False,
    chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
    with_aux_loss: bool = False,
) -> PolicyForward:
    """One forward over prompt + completion: the completion tokens' log-probs, optionally their entropy
    and (a mixture of experts) the load-balancing loss of the router logits over the unpadded tokens,
    as TRL gets `outputs.aux_loss` from the model with `output_router_logits=True`."""
    lm = base_causal_lm(model)
    input_ids = torch.cat([prompt_ids, completion_ids], dim=1)
    attention_mask = torch.cat([prompt_mask, completion_mask], dim=1)
    router = {"output_router_logits": True} if with_aux_loss else {}
    out = lm.get_decoder()(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids_from_mask(attention_mask),
        use_cache=False,
        **router,
    )
    hidden = out.last_hidden_state
    p = prompt_ids.shape[1]
    # Position t predicts token t+1: the completion's tokens are predicted from P-1 … P+C-2.
    hidden = hidden[:, p - 1 : -1]
    active = completion_mask.bool()
    head = lm.get_output_embeddings()
    logps, entropy = chunked_logprobs(
        hidden[active], head.weight, completion_ids[active], temperature,
        bias=getattr(head, "bias", None), chunk_elements=chunk_elements, with_entropy=with_entropy,
        **head_transform(lm),
    )
    out_logps = torch.zeros(completion_ids.shape, dtype=torch.float32, device=hidden.device)
    out_logps = out_logps.masked_scatter(active, logps)
    ent = None
    if with_entropy:
        ent = torch.zeros_like(out_logps).masked_scatter(active, entropy)
    aux = router_aux_loss(lm, out.router_logits, attention_mask) if with_aux_loss else None
    return PolicyForward(out_logps, ent, aux)


def completion_logprobs(
    model: torch.nn.Module,
    prompt_ids: torch.Tensor,  # [B, P] left-padded
    prompt_mask: torch.Tensor,  # [B, P]
    completion_ids: torch.Tensor,  # [B, C] right-padded
    completion_mask: torch.Tensor,  # [B, C]
    temperature: float = 1.0,
    with_entropy: bool = False,
    chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
) -> tuple[torch.Tensor, torch.Tensor | None]:  # [B, C] each, 0 where completion_mask is 0
    out = policy_forward(model, prompt_ids, prompt_mask, completion_ids, completion_mask, temperature,
                         with_entropy, chunk_elements)
    return out.logps, out.entropy


def labelled_logprobs(
    model: torch.nn.Module,
    input_ids: torch.Tensor,  # [B, T] right-padded
    attention_mask: torch.Tensor,  # [B, T]
    labels: torch.Tensor,  # [B, T], -100 where not trained
    chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
) -> torch.Tensor:  # [n_labelled] log-probs of the labelled tokens, in order
    """Log-probs of every labelled token given its prefix: SFT's loss is minus their mean."""
    lm = base_causal_lm(model)
    hidden = lm.get_decoder()(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
    targets = labels[:, 1:]
    active = targets != -100
    head = lm.get_output_embeddings()
    logps, _ = chunked_logprobs(hidden[:, :-1][active], head.weight, targets[active], 1.0,
                                bias=getattr(head, "bias", None), chunk_elements=chunk_elements,
                                **head_transform(lm))
    return logps
