"""What reward functions are called with, as TRL 1.16's GRPOTrainer calls them (semantics §7).

TRL calls `fn(prompts=..., completions=..., completion_ids=..., **reward_kwargs)` where
reward_kwargs are
- every dataset column except `prompt`, `completion` and `completion_ids`, one value per completion
  (so neither the dataset's own `completion` column nor the SFT target rlvr keeps there is passed);
- `trainer_state`: the trainer's one `transformers.TrainerState` (global_step, epoch, max_steps,
  num_train_epochs, ...), the same object on every call, not a value per row;
- `log_extra(column, values)`: extra columns for the logged completions (one value per completion);
- `log_metric(name, value)`: a scalar metric, averaged over the calls of a logging step and logged
  under `name` beside the built-in metrics.
A plain-text prompt gets plain-text completions; a conversational one (a list of messages) gets
`[{"role": "assistant", "content": text}]`.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

from transformers import TrainerState

# Columns TRL never passes to reward functions as columns (they are the arguments themselves).
NOT_COLUMNS = ("prompt", "completion", "completion_ids")


def reward_inputs(rows: Sequence[Mapping[str, Any]], texts: Sequence[str]) -> tuple[list, list, dict[str, list]]:
    """(prompts, completions, columns) for one completion per row, as TRL passes them.

    >>> p, c, cols = reward_inputs([{"prompt": "2+2=", "answer": "4", "completion": "sft"}], ["4"])
    >>> p, c, cols
    (['2+2='], ['4'], {'answer': ['4']})
    >>> reward_inputs([{"prompt": [{"role": "user", "content": "hi"}]}], ["yo"])[1]
    [[{'role': 'assistant', 'content': 'yo'}]]
    """
    prompts = [row["prompt"] for row in rows]
    completions = [text if isinstance(prompt, str) else [{"role": "assistant", "content": text}]
                   for prompt, text in zip(prompts, texts)]
    keys = dict.fromkeys(key for row in rows for key in row if key not in NOT_COLUMNS)
    return prompts, completions, {key: [row.get(key) for row in rows] for key in keys}


def new_trainer_state(max_steps: int = 0, num_train_epochs: float = 0, logging_steps: int = 1,
                      save_steps: int = 0, train_batch_size: int | None = None) -> TrainerState:
    """The `trainer_state` object reward functions get; the trainer moves global_step and epoch."""
    return TrainerState(max_steps=max_steps, num_train_epochs=num_train_epochs, logging_steps=logging_steps,
                        save_steps=save_steps, train_batch_size=train_batch_size, global_step=0, epoch=0.0)


class RewardLog:
    """`log_extra` and `log_metric` for the reward functions of one batch, and what they logged."""

    def __init__(self) -> None:
        self.extra: dict[str, list[Any]] = defaultdict(list)
        self.values: dict[str, list[float]] = defaultdict(list)

    def log_extra(self, column: str, values: list) -> None:
        """Add `values` (one per completion) to the extra column `column` of the logged samples."""
        self.extra[column].extend(values)

    def log_metric(self, name: str, value: float) -> None:
        """Log a scalar under `name`; the values of one batch are averaged."""
        self.values[name].append(value)

    def hooks(self) -> dict[str, Any]:
        """The keyword arguments that give reward functions these two methods."""
        return {"log_extra": self.log_extra, "log_metric": self.log_metric}

    def metrics(self) -> dict[str, float]:
        """{name: mean of the values logged under it}.

        >>> log = RewardLog(); log.log_metric("x", 1.0); log.log_metric("x", 2.0); log.metrics()
        {'x': 1.5}
        """
        return {name: (sum(v) / len(v) if v else math.nan) for name, v in self.values.items()}

    def extra_of(self, row: int) -> dict[str, Any]:
        """The extra columns' values for completion `row` (columns logged for fewer rows skip it)."""
        return {column: values[row] for column, values in self.extra.items() if row < len(values)}
