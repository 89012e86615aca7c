"""Chunked log-probs equal the naive full-logits computation, values and gradients (fp32, CPU)."""

from __future__ import annotations

import pytest
import torch
from conftest import make_model

from rlvr.grpo.objective import StepShape, aggregate, per_token_loss
from rlvr.models.forward import completion_logprobs
from rlvr.models.logprobs import chunked_logprobs, naive_logprobs


@pytest.mark.parametrize(("scale", "softcap"), [(1.0, None), (4.0, None), (1.0, 3.0), (2.0, 3.0)],
                         ids=["plain", "granite-scale", "gemma-softcap", "both"])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("chunk_elements", [50, 500, 10**9])  # one row per chunk, several, all at once
def test_values_and_gradients_match_naive(temperature, chunk_elements, scale, softcap):
    torch.manual_seed(0)
    h = torch.randn(37, 16, requires_grad=True)
    w = torch.randn(50, 16, requires_grad=True)
    b = torch.randn(50, requires_grad=True)
    t = torch.randint(0, 50, (37,))
    g = torch.randn(37)
    ours, entropy = chunked_logprobs(h, w, t, temperature, bias=b, chunk_elements=chunk_elements, with_entropy=True,
                                     scale=scale, softcap=softcap)
    (ours * g).sum().backward()
    grads = [x.grad.clone() for x in (h, w, b)]
    for x in (h, w, b):
        x.grad = None
    # The head's logits written out: ÷ scale, then cap · tanh(z / cap); autograd differentiates them.
    z = (h @ w.t() + b) / scale
    z = z if softcap is None else softcap * torch.tanh(z / softcap)
    logp_all = torch.log_softmax(z / temperature, dim=-1)
    ref = logp_all.gather(1, t[:, None]).squeeze(1)
    (ref * g).sum().backward()
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
    for mine, theirs in zip(grads, (h.grad, w.grad, b.grad)):
        torch.testing.assert_close(mine, theirs, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(entropy, -(logp_all.exp() * logp_all).sum(-1), atol=1e-4, rtol=1e-4)


def test_frozen_head_gets_no_gradient_buffer():
    h = torch.randn(5, 8, requires_grad=True)
    w = torch.randn(11, 8)
    logps, _ = chunked_logprobs(h, w, torch.randint(0, 11, (5,)))
    logps.sum().backward()
    assert h.grad is not None and w.grad is None


def naive_completion_logprobs(model, prompt_ids, prompt_mask, completion_ids, completion_mask, temperature):
    ids = torch.cat([prompt_ids, completion_ids], 1)
    mask = torch.cat([prompt_mask, completion_mask], 1)
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    logits = model(input_ids=ids, attention_mask=mask, position_ids=pos).logits[:, prompt_ids.shape[1] - 1:-1]
    lp = torch.log_softmax(logits.float() / temperature, -1).gather(-1, completion_ids.unsqueeze(-1)).squeeze(-1)
    return lp * completion_mask


def ragged_batch(vocab=104):
    torch.manual_seed(1)
    prompt_ids = torch.randint(4, vocab, (3, 6))
    prompt_mask = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1], [0, 0, 0, 0, 1, 1]])
    completion_ids = torch.randint(4, vocab, (3, 5))
    completion_mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]])
    return prompt_ids, prompt_mask, completion_ids, completion_mask


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dr_grpo", "dapo"])
@pytest.mark.parametrize("temperature", [1.0, 0.6])
def test_model_loss_gradients_match_full_logits(loss_type, temperature):
    """Through a real model with ragged prompts and completions: same loss, same parameter gradients."""
    model = make_model("qwen2", vocab_size=104)
    batch = ragged_batch()
    adv = torch.tensor([1.0, -0.5, 2.0])
    old = torch.randn(3, 5) * 0.05 - 4.6
    shape = StepShape(num_sequences=3, num_tokens=int(batch[3].sum()), num_micro_batches=1, max_completion_length=5)

    def loss_and_grads(logps):
        out = per_token_loss(logps, old, adv, batch[3].float())
        loss = aggregate(out.loss, batch[3].float(), loss_type, shape)
        model.zero_grad()
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters()]

    ours, _ = completion_logprobs(model, *batch, temperature=temperature, chunk_elements=200)
    ref = naive_completion_logprobs(model, *batch, temperature)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
    loss_a, grads_a = loss_and_grads(ours)
    loss_b, grads_b = loss_and_grads(naive_completion_logprobs(model, *batch, temperature))
    torch.testing.assert_close(loss_a, loss_b)
    for a, b in zip(grads_a, grads_b):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_autocast_bf16_runs_the_head_in_bf16_and_keeps_gradient_dtypes():
    torch.manual_seed(0)
    h = torch.randn(37, 16, requires_grad=True)
    w = torch.randn(50, 16, requires_grad=True)
    t = torch.randint(0, 50, (37,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours, _ = chunked_logprobs(h, w, t, chunk_elements=500)
    ours.sum().backward()
    assert ours.dtype == torch.float32 and h.grad.dtype == torch.float32 and w.grad.dtype == torch.float32
    gh, gw = h.grad.clone(), w.grad.clone()
    h.grad = w.grad = None
    ref = naive_logprobs(h.to(torch.bfloat16), w.to(torch.bfloat16), t)
    ref.sum().backward()
    torch.testing.assert_close(ours, ref, atol=1e-2, rtol=1e-2)  # same bf16 logits, fp32 softmax
    torch.testing.assert_close(gh, h.grad, atol=5e-2, rtol=5e-2)
    torch.testing.assert_close(gw, w.grad, atol=5e-2, rtol=5e-2)
