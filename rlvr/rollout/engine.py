"""The rollout engine interface: prompts in, G completions each out, with the loss mask.

A backend turns a batch of tokenized prompts into completions. The trainer and the evaluator only
see the `RolloutEngine` protocol (generate, memory_plan, reduce_batch) and `Rollout`, so a faster
backend plugs in by config. A long generate reports where it is through an optional callback
(`RolloutProgress`), at the host checks the backend makes anyway.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch


@dataclass(frozen=True)
class SamplingParams:
    """How completions are sampled. Field names follow TRL's GRPOConfig."""

    max_new_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    min_p: float = 0.0  # 0 = off
    repetition_penalty: float = 1.0
    do_sample: bool = True  # False = greedy
    stop_strings: tuple[str, ...] = ()


@dataclass
class Rollout:
    """Completions for a batch of prompts, one row per completion (prompt i's G rows are adjacent).

    completion_ids are right-padded with pad_token_id; completion_mask is 1 on generated tokens up
    to and including EOS (the loss mask of semantics §4 before mask_truncated_completions).
    """

    prompt_ids: torch.Tensor  # [N, P] left-padded
    prompt_mask: torch.Tensor  # [N, P]
    completion_ids: torch.Tensor  # [N, C] right-padded
    completion_mask: torch.Tensor  # [N, C]
    is_eos: torch.Tensor  # [N] bool: the row ended with EOS (or a stop string) before max_new_tokens
    logprobs: torch.Tensor | None = None  # [N, C] ℓ^roll under the sampling temperature, if known

    @property
    def lengths(self) -> torch.Tensor:  # [N]
        return self.completion_mask.sum(dim=1)


@dataclass(frozen=True)
class RolloutProgress:
    """Where one generate call is: `rows_done` of its `rows` completions have ended (EOS, a stop string,
    or the token limit at the end of their sub-batch) and `tokens` have been decoded in all. Both only
    grow, and the last report of a call has rows_done == rows."""

    rows_done: int
    rows: int
    tokens: int

    def describe(self) -> str:
        return f"rollout {self.rows_done}/{self.rows} completions, {self.tokens} tokens"


ProgressCallback = Callable[[RolloutProgress], None]


class ProgressTally:
    """A generate call's progress over its sub-batches: a sub-batch reports its own counts, which are
    added to those of the sub-batches before it."""

    def __init__(self, rows: int, callback: ProgressCallback):
        self.rows, self.callback = rows, callback
        self.rows_before = self.tokens_before = 0

    def report(self, rows_done: int, tokens: int) -> None:
        """The current sub-batch's counts so far."""
        self.callback(RolloutProgress(self.rows_before + rows_done, self.rows, self.tokens_before + tokens))

    def end_sub_batch(self, rows: int, tokens: int) -> None:
        """The current sub-batch is done: all its `rows` ended, after `tokens` tokens."""
        self.rows_before += rows
        self.tokens_before += tokens
        self.report(0, 0)


@dataclass(frozen=True)
class MemoryPlan:
    """What a round's rollout holds besides the training weights (for the memory estimate).

    rollout_merge_lora: the config's vocabulary, resolved: True when every LoRA-adapted matrix gets a
    merged decode copy, 'attention' when only q/k/v/o do, False when adapters run as extra matmuls.
    rollout_dtype: the native decode step's matrices as resolved (config `ROLLOUT_DTYPES`: 'fp8' makes
    an FP8 copy of every layer matrix, 'auto' a dequantised copy of 4-bit bases), None when the
    engine decodes from the training weights as they are (hf).
    """

    rollout_merge_lora: bool | str = False
    rollout_dtype: str | None = None


class RolloutEngine(Protocol):
    """`backend_name` says which backend actually samples ('native' or 'hf': the native engine falls
    back to hf for models it does not implement); `describe()` says it in one line, with the reason
    for a fallback. Trainers record both (run.json `rollout_backend`)."""

    backend_name: str

    def describe(self) -> str:
        ...

    def generate(
        self,
        prompt_ids: list[list[int]],
        num_generations: int,
        params: SamplingParams,
        seed: int | None = None,
        progress: ProgressCallback | None = None,
    ) -> Rollout:
        """Sample `num_generations` completions for each prompt (token ids, no padding). `progress`, when
        given, is called with a RolloutProgress whenever the backend checks on the batch anyway (the
        native engine every sync_every decode steps, never an extra host sync per token) and once at
        the end."""
        ...

    def memory_plan(self) -> MemoryPlan:
        """What the rollout will hold besides the weights."""
        ...

    def reduce_batch(self) -> int | None:
        """After an out of memory: halve the rows per sub-batch of the last generate; returns the new
        size, or None when it was one row already."""
        ...


def halve_rows(rows_used: int | None) -> int | None:
    """The sub-batch size after an out of memory at `rows_used` rows, or None at one row."""
    if not rows_used or rows_used < 2:
        return None
    return rows_used // 2
