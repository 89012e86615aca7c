"""One GRPO round as plain tensors: what the rollout, scoring and advantages produce for the update."""

from __future__ import annotations

from dataclasses import dataclass, fields

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
