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


def _raw_logits(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    logits = h @ weight.t()  # in the model dtype: the one (rows × vocab) buffer a chunk allocates
    return logits if bias is None else logits + bias


def _logits(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, temperature: float,
            scale: float = 1.0, softcap: float | None = None) -> torch.Tensor:
    return _head_logits(_raw_logits(h, weight, bias), scale, softcap) / temperature


def _head_logits(raw: torch.Tensor, scale: float, softcap: float | None) -> torch.Tensor:
    """The model's logits in fp32 from lm_head's output: ÷ scale (Granite's logits_scaling), then
    soft-capped as cap · tanh(z / cap) (Gemma 2/3's final_logit_softcapping)."""
    z = raw.float() / scale
    return z if softcap is None else torch.tanh(z / softcap) * softcap


# The per-chunk elementwise math, written so a compiler can fuse each into one pass over the chunk:
# on CUDA they run through torch.compile (fp32 work in registers, one read of the logits), elsewhere eagerly.
def _forward_math(raw: torch.Tensor, targets: torch.Tensor, temperature: float, with_entropy: bool,
                  scale: float, softcap: float | None):
    logits = _head_logits(raw, scale, softcap) / temperature
    lse = torch.logsumexp(logits, dim=-1)
    logp = logits.gather(1, targets[:, None]).squeeze(1) - lse
    if not with_entropy:
        return logp, lse, lse
    probs = torch.exp(logits - lse[:, None])
    return logp, lse, lse - (probs * logits).sum(-1)


def _backward_math(raw: torch.Tensor, targets: torch.Tensor, lse: torch.Tensor, g: torch.Tensor,
                   temperature: float, scale: float, softcap: float | None) -> torch.Tensor:
    # d logp_target / d logits = onehot − softmax, chained through the 1/T scaling, the cap
    # (d cap·tanh(z/cap) / dz = 1 − tanh²) and the 1/scale.
    z = _head_logits(raw, scale, softcap)
    onehot = torch.arange(raw.shape[1], device=raw.device)[None, :] == targets[:, None]
    d = (onehot.float() - torch.exp(z / temperature - lse[:, None])) * (g[:, None] / (temperature * scale))
    if softcap is not None:
        d = d * (1 - torch.square(z / softcap))
    return d.to(raw.dtype)


_compiled: dict = {}


def _fused(fn, x: torch.Tensor):
    if not x.is_cuda:
        return fn
    if fn not in _compiled:
        try:
            _compiled[fn] = torch.compile(fn, dynamic=True)
        except Exception:  # no compiler available: the eager form is the same math
            _compiled[fn] = fn
    return _compiled[fn]


def _autocast_dtype(device: torch.device) -> torch.dtype | None:
    """The dtype autocast would run lm_head's matmul in here, or None when autocast is off."""
    if torch.is_autocast_enabled(device.type):
        return torch.get_autocast_dtype(device.type)
    return None


def _cast(t: torch.Tensor | None, dtype: torch.dtype | None) -> torch.Tensor | None:
    return t if t is None or dtype is None or t.dtype == dtype else t.to(dtype)


class _ChunkedLogprobs(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, temperature, chunk_elements, with_entropy, scale, softcap):
        # hidden [N, H], weight [V, H], targets [N] → logps [N], entropy [N]
        # Under autocast (bf16: true) the matmuls run in the autocast dtype, in backward too: the
        # cast is made explicit here because a custom Function's backward runs outside autocast.
        ctx.compute_dtype = _autocast_dtype(hidden.device)
        with torch.autocast(hidden.device.type, enabled=False):
            return _ChunkedLogprobs._forward(ctx, hidden, weight, bias, targets, temperature, chunk_elements,
                                             with_entropy, scale, softcap)

    @staticmethod
    def _forward(ctx, hidden, weight, bias, targets, temperature, chunk_elements, with_entropy, scale, softcap):
        n = hidden.shape[0]
        cd = ctx.compute_dtype
        saved = (hidden, weight, bias)
        hidden, weight, bias = _cast(hidden, cd), _cast(weight, cd), _cast(bias, cd)
        rows = _chunk_rows(weight.shape[0], chunk_elements)
        logps = torch.empty(n, dtype=torch.float32, device=hidden.device)
        lse = torch.empty(n, dtype=torch.float32, device=hidden.device)
        entropy = torch.empty(n if with_entropy else 0, dtype=torch.float32, device=hidden.device)
        math = _fused(_forward_math, hidden)
        for s in range(0, n, rows):
            raw = _raw_logits(hidden[s : s + rows], weight, bias)
            chunk_logp, chunk_lse, chunk_ent = math(raw, targets[s : s + rows], temperature, with_entropy, scale,
                                                    softcap)
            logps[s : s + rows], lse[s : s + rows] = chunk_logp, chunk_lse
            if with_entropy:
                entropy[s : s + rows] = chunk_ent
        ctx.save_for_backward(*saved, targets, lse)
        ctx.temperature, ctx.rows, ctx.scale, ctx.softcap = temperature, rows, scale, softcap
        ctx.mark_non_differentiable(entropy)
        return logps, entropy

    @staticmethod
    def backward(ctx, grad_logps, _grad_entropy):
        hidden, weight, bias, targets, lse = ctx.saved_tensors
        t, rows, cd = ctx.temperature, ctx.rows, ctx.compute_dtype
        grad_dtype, weight_dtype, bias_dtype = hidden.dtype, weight.dtype, None if bias is None else bias.dtype
        hidden, weight, bias = _cast(hidden, cd), _cast(weight, cd), _cast(bias, cd)
        need_h, need_w, need_b = ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.needs_input_grad[2]
        grad_h = torch.empty(hidden.shape, dtype=grad_dtype, device=hidden.device) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
        grad_b = torch.zeros(weight.shape[0], dtype=torch.float32, device=weight.device) if need_b else None
        math = _fused(_backward_math, hidden)
        for s in range(0, hidden.shape[0], rows):
            h = hidden[s : s + rows]
            raw = _raw_logits(h, weight, bias)
            dlogits = math(raw, targets[s : s + rows], lse[s : s + rows], grad_logps[s : s + rows].float(), t,
                           ctx.scale, ctx.softcap)
            if need_h:
                grad_h[s : s + rows] = dlogits @ weight
            if need_w:
                grad_w += (dlogits.t() @ h).float()
            if need_b:
                grad_b += dlogits.float().sum(0)
        return (
            grad_h,
            grad_w.to(weight_dtype) if need_w else None,
            grad_b.to(bias_dtype) if need_b else None,
            None, None, None, None, None, None,
        )


def chunked_logprobs(
    hidden: torch.Tensor,  # [N, H] last hidden states at the positions that predict `targets`
    weight: torch.Tensor,  # [V, H] lm_head weight
    targets: torch.Tensor,  # [N] token ids
    temperature: float = 1.0,
    bias: torch.Tensor | None = None,  # [V]
    chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
    with_entropy: bool = False,
    scale: float = 1.0,  # the model divides its logits by this (Granite's logits_scaling)
    softcap: float | None = None,  # and soft-caps them (Gemma's final_logit_softcapping)
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """ℓ = log_softmax(z / T)[target] in fp32 with z = h·Wᵀ (÷ scale, soft-capped), and the entropy of
    that distribution if asked."""
    logps, entropy = _ChunkedLogprobs.apply(
        hidden, weight, bias, targets, float(temperature), int(chunk_elements), bool(with_entropy), float(scale),
        None if softcap is None else float(softcap),
    )
    return logps, (entropy if with_entropy else None)


def naive_logprobs(hidden, weight, targets, temperature=1.0, bias=None, scale=1.0, softcap=None):
    """The full-logits reference form, for tests only: holds (N × V) logits."""
    logits = _logits(hidden, weight, bias, temperature, scale, softcap)
    return torch.log_softmax(logits, dim=-1).gather(1, targets[:, None]).squeeze(1)
