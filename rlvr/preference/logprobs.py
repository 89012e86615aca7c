"""Per-sequence completion log-probs through the chunked path (never a tokens × vocab tensor).

`sequence_logprobs` sums the labelled tokens' log-probs of each row; `reference_logprobs` runs it
once over a whole dataset without gradients, length-sorted, before training: the reference model
of DPO and KTO is the policy as it is before the first optimizer step (for a fresh LoRA adapter,
whose B matrices are zero, that is the adapter-disabled model; from a warm-up adapter it is the
warm-up policy, as TRL's "ref" adapter copy), so it is never kept or run again.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence

import torch

from rlvr.data.templates import IGNORE_INDEX, pad_batch
from rlvr.models.forward import labelled_logprobs
from rlvr.models.logprobs import DEFAULT_CHUNK_ELEMENTS
from rlvr.preference.batches import Encoded, length_sorted_micro_batches


def sequence_logprobs(
    model: torch.nn.Module,
    input_ids: torch.Tensor,  # [B, T] right-padded
    attention_mask: torch.Tensor,  # [B, T]
    labels: torch.Tensor,  # [B, T], IGNORE_INDEX off the completion
    chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
) -> tuple[torch.Tensor, torch.Tensor]:  # Σ log π(completion tokens) [B] fp32, completion tokens [B]
    logps = labelled_logprobs(model, input_ids, attention_mask, labels, chunk_elements)  # [n_labelled]
    active = labels[:, 1:] != IGNORE_INDEX
    rows = active.nonzero()[:, 0]  # row of each labelled token, in the order labelled_logprobs returns them
    sums = torch.zeros(input_ids.shape[0], dtype=logps.dtype, device=logps.device).index_add(0, rows, logps)
    return sums, active.sum(1)


def rows_logprobs(model: torch.nn.Module, rows: Sequence[Encoded], pad_id: int,
                  chunk_elements: int = DEFAULT_CHUNK_ELEMENTS) -> tuple[torch.Tensor, torch.Tensor]:
    """`sequence_logprobs` of encoded rows, padded into one batch on the model's device."""
    device = next(model.parameters()).device
    ids, mask, labels = (t.to(device) for t in pad_batch(list(rows), pad_id))
    return sequence_logprobs(model, ids, mask, labels, chunk_elements)


@torch.no_grad()
def reference_logprobs(model: torch.nn.Module, rows: Sequence[Encoded], pad_id: int, batch_size: int,
                       chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
                       autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
                       progress: Callable[[int], None] | None = None) -> torch.Tensor:
    """Σ log π(completion) of every row under `model` as it is now: [len(rows)] fp32 on the CPU, rows' order."""
    was_training = model.training
    model.eval()
    out = torch.zeros(len(rows), dtype=torch.float32)
    costs = [len(ids) for ids, _ in rows]
    try:
        for batch in length_sorted_micro_batches(range(len(rows)), costs, batch_size):
            with autocast():
                sums, _ = rows_logprobs(model, [rows[i] for i in batch], pad_id, chunk_elements)
            out[torch.tensor(batch)] = sums.float().cpu()
            if progress is not None:
                progress(len(batch))
    finally:
        model.train(was_training)
    return out
