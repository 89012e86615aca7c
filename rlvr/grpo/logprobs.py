"""Log-probabilities of chosen tokens without ever holding a (tokens × vocab) tensor.

`chunked_logprobs` pushes hidden states through lm_head a chunk of rows at a time inside an
autograd.Function: log-sum-exp in fp32, temperature applied, and each chunk's logits recomputed in
backward instead of saved. Peak extra memory is one chunk of logits, whatever the sequence length.
"""

from __future__ import annotations

import torch

# One chunk of fp32 logits is at most this many elements (256 MiB); rows per chunk = this // vocab.
DEFAULT_CHUNK_ELEMENTS = 1 << 26


def _chunk_rows(vocab: int, chunk_elements: int) -> int:
    return max(1, chunk_elements // vocab)


def _logits(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, temperature: float) -> torch.Tensor:
    logits = h @ weight.t()
    if bias is not None:
        logits = logits + bias
    return logits.float() / temperature


class _ChunkedLogprobs(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, temperature, chunk_elements, with_entropy):
        # hidden [N, H], weight [V, H], targets [N] → logps [N], entropy [N]
        n = hidden.shape[0]
        rows = _chunk_rows(weight.shape[0], chunk_elements)
        logps = torch.empty(n, dtype=torch.float32, device=hidden.device)
        lse = torch.empty(n, dtype=torch.float32, device=hidden.device)
        entropy = torch.empty(n if with_entropy else 0, dtype=torch.float32, device=hidden.device)
        for s in range(0, n, rows):
            logits = _logits(hidden[s : s + rows], weight, bias, temperature)
            chunk_lse = torch.logsumexp(logits, dim=-1)
            lse[s : s + rows] = chunk_lse
            logps[s : s + rows] = logits.gather(1, targets[s : s + rows, None]).squeeze(1) - chunk_lse
            if with_entropy:
                probs = torch.softmax(logits, dim=-1)
                entropy[s : s + rows] = chunk_lse - (probs * logits).sum(-1)
        ctx.save_for_backward(hidden, weight, bias, targets, lse)
        ctx.temperature, ctx.rows = temperature, rows
        ctx.mark_non_differentiable(entropy)
        return logps, entropy

    @staticmethod
    def backward(ctx, grad_logps, _grad_entropy):
        hidden, weight, bias, targets, lse = ctx.saved_tensors
        t, rows = ctx.temperature, ctx.rows
        need_h, need_w, need_b = ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.needs_input_grad[2]
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
        grad_b = torch.zeros(weight.shape[0], dtype=torch.float32, device=weight.device) if need_b else None
        for s in range(0, hidden.shape[0], rows):
            h = hidden[s : s + rows]
            g = grad_logps[s : s + rows].float()
            logits = _logits(h, weight, bias, t)
            # d logp_target / d logits = onehot − softmax; chain through the 1/T scaling.
            dlogits = torch.exp(logits - lse[s : s + rows, None]).mul_(-g[:, None])
            dlogits.scatter_add_(1, targets[s : s + rows, None], g[:, None])
            dlogits = dlogits.div_(t).to(hidden.dtype)
            if need_h:
                grad_h[s : s + rows] = dlogits @ weight
            if need_w:
                grad_w += (dlogits.t() @ h).float()
            if need_b:
                grad_b += dlogits.float().sum(0)
        return (
            grad_h,
            grad_w.to(weight.dtype) if need_w else None,
            grad_b.to(bias.dtype) if need_b else None,
            None, None, None, None,
        )


def chunked_logprobs(
    hidden: torch.Tensor,  # [N, H] last hidden states at the positions that predict `targets`
    weight: torch.Tensor,  # [V, H] lm_head weight
    targets: torch.Tensor,  # [N] token ids
    temperature: float = 1.0,
    bias: torch.Tensor | None = None,  # [V]
    chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
    with_entropy: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """ℓ = log_softmax(h·Wᵀ / T)[target] in fp32, and the entropy of that distribution if asked."""
    logps, entropy = _ChunkedLogprobs.apply(
        hidden, weight, bias, targets, float(temperature), int(chunk_elements), bool(with_entropy)
    )
    return logps, (entropy if with_entropy else None)


def naive_logprobs(hidden, weight, targets, temperature=1.0, bias=None):
    """The full-logits reference form, for tests only: holds (N × V) logits."""
    logits = _logits(hidden, weight, bias, temperature)
    return torch.log_softmax(logits, dim=-1).gather(1, targets[:, None]).squeeze(1)
