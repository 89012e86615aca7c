"""One GRPO round as plain tensors: what the rollout, scoring and advantages produce for the update."""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import torch

from rlvr.distributed.collectives import gather_rows
from rlvr.distributed.context import DistContext


@dataclass
class RoundBatch:
    """Everything the update needs for a round's N = prompts × G completions (rows of a prompt adjacent)."""

    prompt_ids: torch.Tensor  # [N, P] left-padded
    prompt_mask: torch.Tensor  # [N, P]
    completion_ids: torch.Tensor  # [N, C] right-padded
    completion_mask: torch.Tensor  # [N, C] loss mask m (after mask_truncated_completions)
    advantages: torch.Tensor  # [N]
    old_logps: torch.Tensor | None = None  # [N, C] ℓ^old, when the policy can move before use
    ref_logps: torch.Tensor | None = None  # [N, C] ℓ^ref, when beta > 0
    rollout_logps: torch.Tensor | None = None  # [N, C] ℓ^roll, when the engine reports it

    def rows(self, index: torch.Tensor) -> RoundBatch:
        """The given rows, with columns that are padding in every chosen row cut away."""
        pm = self.prompt_mask[index]
        cm = self.completion_mask[index]
        first = int((pm.sum(0) > 0).float().argmax()) if pm.any() else pm.shape[1] - 1
        last = max(1, int(cm.sum(0).nonzero().max()) + 1) if cm.any() else 1

        def cut(t, prompt=False):
            if t is None:
                return None
            t = t[index]
            return t[:, first:] if prompt else (t[:, :last] if t.dim() == 2 else t)

        return RoundBatch(
            prompt_ids=cut(self.prompt_ids, True), prompt_mask=cut(self.prompt_mask, True),
            completion_ids=cut(self.completion_ids), completion_mask=cut(self.completion_mask),
            advantages=self.advantages[index], old_logps=cut(self.old_logps),
            ref_logps=cut(self.ref_logps), rollout_logps=cut(self.rollout_logps),
        )

    def to_state(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_state(cls, state: dict, device) -> RoundBatch:
        return cls(**{k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in state.items()})


def gather_round(batch: RoundBatch, ctx: DistContext) -> RoundBatch:
    """Every rank's rows of a round, concatenated in rank order (prompts left-padded, the rest right-padded
    to the widest rank's). Padding carries mask 0, so it changes no log-prob and no loss."""
    def rows(t, side="right"):
        return None if t is None else gather_rows(t, ctx, pad_side=side)

    return RoundBatch(prompt_ids=rows(batch.prompt_ids, "left"), prompt_mask=rows(batch.prompt_mask, "left"),
                      completion_ids=rows(batch.completion_ids), completion_mask=rows(batch.completion_mask),
                      advantages=rows(batch.advantages), old_logps=rows(batch.old_logps),
                      ref_logps=rows(batch.ref_logps), rollout_logps=rows(batch.rollout_logps))


def cat_batches(batches: list[RoundBatch]) -> RoundBatch:
    """Rows of several batches in order (prompts left-padded, the rest right-padded to the widest; padding
    has mask 0, so it changes no log-prob and no loss)."""
    if len(batches) == 1:
        return batches[0]

    def cat(name: str, side: str = "right"):
        parts = [getattr(b, name) for b in batches]
        if any(p is None for p in parts):
            return None
        if parts[0].dim() == 1:
            return torch.cat(parts)
        width = max(p.shape[1] for p in parts)
        pad = (lambda p: (width - p.shape[1], 0)) if side == "left" else (lambda p: (0, width - p.shape[1]))
        return torch.cat([torch.nn.functional.pad(p, pad(p)) for p in parts])

    return RoundBatch(**{f.name: cat(f.name, "left" if f.name.startswith("prompt") else "right")
                         for f in fields(RoundBatch)})


@dataclass
class DrawnRows:
    """Generation batches as drawn, before the update's log-probs: every rank's rows gathered (rows of a
    prompt adjacent), with their rewards and what the metrics and sample log need."""

    batch: RoundBatch  # advantages not yet computed, ℓ^old / ℓ^ref not yet computed
    total: torch.Tensor  # [N] weighted reward (NaN = no reward)
    per_function: torch.Tensor  # [N, K] each reward function's (NaN = None)
    lengths: torch.Tensor  # [N] completion tokens (before mask_truncated_completions)
    is_eos: torch.Tensor  # [N] bool
    example_index: list[int]  # [N] the training example each row answers
    records: list[dict]  # [N] prompt / completion text (and `extra` columns) for samples.jsonl
    metrics: dict = field(default_factory=dict)  # of the draw (rollout and scoring times, errors); {} once combined

    def select(self, rows: torch.Tensor) -> DrawnRows:
        """The given rows, in that order (padding columns kept)."""
        take = rows.tolist()
        b = self.batch
        pick = (lambda t: None if t is None else t[rows.to(t.device)])
        return DrawnRows(RoundBatch(*(pick(getattr(b, f.name)) for f in fields(RoundBatch))), self.total[rows],
                         self.per_function[rows], self.lengths[rows], self.is_eos[rows],
                         [self.example_index[i] for i in take], [self.records[i] for i in take])

    @staticmethod
    def cat(parts: list[DrawnRows]) -> DrawnRows:
        if len(parts) == 1:
            return parts[0]
        return DrawnRows(cat_batches([p.batch for p in parts]), torch.cat([p.total for p in parts]),
                         torch.cat([p.per_function for p in parts]), torch.cat([p.lengths for p in parts]),
                         torch.cat([p.is_eos for p in parts]), [i for p in parts for i in p.example_index],
                         [r for p in parts for r in p.records])
