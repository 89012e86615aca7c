"""Dynamic sampling (DAPO's filter_groups): train only on groups whose rewards differ.

A group whose G rewards are all equal has zero advantage everywhere (semantics §2): it costs a rollout
and a forward/backward and teaches nothing, and with a small model on a hard task (most groups all
wrong) it is most of the round. With `filter_groups`, the trainer draws generation batches until the
round holds prompts_per_round groups with reward variance (on `filter_groups_metric`: the combined
reward or one reward function), at most `max_num_gen_batches` of them, and keeps the first
prompts_per_round such groups in the order drawn. When the limit is reached first, groups without
variance fill the rest, so a round always has generation_batch_size rows: micro-batches and steps
keep their sizes, and the loss's normalisers (the step's sequences and tokens, semantics §5) count
exactly the rows trained on. Pure functions of tensors and lists; the loop is in trainer.py.
"""

from __future__ import annotations

import torch

from rlvr.grpo.advantages import zero_std_groups

__all__ = ["group_rows", "select_groups", "zero_std_groups"]


def select_groups(informative: list[bool], needed: int) -> list[int]:
    """The groups a round keeps: the first `needed` informative ones in the order drawn, topped up with the
    first uninformative ones when there are too few; returned in the order drawn.

    >>> select_groups([False, True, True, False, True], 2), select_groups([False, True, False], 2)
    ([1, 2], [0, 1])
    """
    chosen = [g for g, ok in enumerate(informative) if ok][:needed]
    fill = [g for g, ok in enumerate(informative) if not ok][:needed - len(chosen)]
    return sorted(chosen + fill)


def group_rows(groups: list[int], num_generations: int) -> torch.Tensor:
    """Row indices of `groups` (each group's G rows, in order).

    >>> group_rows([1, 3], 2).tolist()
    [2, 3, 6, 7]
    """
    g = torch.tensor(groups, dtype=torch.long).unsqueeze(1)
    return (g * num_generations + torch.arange(num_generations)).reshape(-1)
