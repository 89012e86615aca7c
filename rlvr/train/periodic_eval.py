"""Held-out evaluation while training: when it is due, and the best model so far.

The trainer core calls an `Evaluator` (rlvr/evaluation/during_training.py is the one the pipeline gives
it: the run config's `eval` section on its held-out problems, through the rollout engine) after the
optimizer steps this schedule names, merges what it returns (`eval/...` metrics) into that step's
metrics row, and keeps `best/` when `metric_for_best_model` improves. Settings are transformers'
TrainingArguments names (rlvr/config.py TrainerCoreConfig); the differences from transformers: the last
step is always evaluated (so a run ends with a measured model), and `eval_on_start` counts as step 0
for the best model (a run that only makes the model worse keeps its start as best/).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

EVAL_PREFIX = "eval/"


class Evaluator(Protocol):
    """Evaluates the model being trained; returns flat `eval/...` metrics."""

    def metric_names(self) -> list[str]:
        """The keys __call__ returns (checked against metric_for_best_model before training)."""
        ...

    def __call__(self, model, step: int) -> dict[str, float]:
        ...


def eval_interval(eval_steps: int | float | None, logging_steps: int, total_steps: int) -> int:
    """Optimizer steps between evaluations: eval_steps (a float < 1 is a share of the run), else logging_steps.

    >>> eval_interval(None, 5, 100), eval_interval(20, 1, 100), eval_interval(0.25, 1, 10)
    (5, 20, 3)
    """
    if eval_steps is None:
        return max(1, logging_steps)
    if eval_steps < 1:
        return max(1, math.ceil(eval_steps * total_steps))
    return int(eval_steps)


def eval_due(step: int, total_steps: int, strategy: str, interval: int, steps_per_epoch: int | None) -> bool:
    """Whether optimizer step `step` (from 1) is followed by an evaluation.

    >>> [s for s in range(1, 11) if eval_due(s, 10, "steps", 4, None)]
    [4, 8, 10]
    >>> [s for s in range(1, 8) if eval_due(s, 7, "epoch", 1, 3)], eval_due(5, 10, "no", 1, None)
    ([3, 6, 7], False)
    """
    if strategy == "no":
        return False
    if step == total_steps:
        return True
    every = interval if strategy == "steps" else max(1, steps_per_epoch or total_steps)
    return step % every == 0


def best_metric_key(name: str) -> str:
    """metric_for_best_model as a metrics key: 'accuracy' and 'eval_accuracy' (transformers' spelling)
    mean 'eval/accuracy'.

    >>> best_metric_key("accuracy"), best_metric_key("eval_accuracy"), best_metric_key("eval/pass@4")
    ('eval/accuracy', 'eval/accuracy', 'eval/pass@4')
    """
    name = name.strip()
    if name.startswith(EVAL_PREFIX):
        return name
    return EVAL_PREFIX + name.removeprefix("eval_")


@dataclass
class BestModel:
    """The best value of one metric so far and the step it was measured after (strictly better replaces it)."""

    metric: str
    greater_is_better: bool
    value: float | None = None
    step: int | None = None

    @classmethod
    def from_args(cls, args) -> BestModel:
        key = best_metric_key(args.metric_for_best_model)
        greater = args.greater_is_better
        if greater is None:  # transformers' rule
            greater = not key.endswith("loss")
        return cls(metric=key, greater_is_better=greater)

    def improves(self, value: float | None) -> bool:
        if value is None or not math.isfinite(value):
            return False
        if self.value is None:
            return True
        return value > self.value if self.greater_is_better else value < self.value

    def update(self, step: int, metrics: dict) -> bool:
        """Record `metrics[self.metric]` measured after `step`; True when it is the new best."""
        value = metrics.get(self.metric)
        if not self.improves(value):
            return False
        self.value, self.step = float(value), step
        return True

    def state_dict(self) -> dict:
        return {"metric": self.metric, "value": self.value, "step": self.step}

    def load_state_dict(self, state: dict) -> None:
        # A resumed run keeps its best so far, unless it now follows another metric.
        if state and state.get("metric") == self.metric:
            self.value, self.step = state.get("value"), state.get("step")
