"""Warnings computed from a run's own metrics, for the failures GRPO falls into without a single error.

Each check is a pure function of metric sequences (one value per logged step, in order) that returns
one warning line, or None. `edge_means` compares the start of a sequence with its end: the mean of its
first w values against the mean of its last w, w = n // 4 between 1 and 10, so a long noisy series is
judged by its ends, not by one step.

- length collapse: mean completion length ends below `ratio` × where it started (GRPO shortening its
  reasoning; on GSM8K with SmolLM2-135M, 195 → 88 tokens while accuracy stayed flat);
- format-only learning: the held-out format share rose by at least FORMAT_MIN_GAIN and ends saturated
  (≥ FORMAT_SATURATED) while held-out accuracy gained less than `ratio` × the format's gain.

`MetricGuards` watches the rows a run logs and says each warning once per run (a resumed run keeps
what it has seen and said).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

log = logging.getLogger("rlvr")

FORMAT_SATURATED = 0.9  # a format share at or above this is saturated: format rewards have little left to teach
FORMAT_MIN_GAIN = 0.2  # format must have risen at least this much for "learned the format" to mean anything
LENGTH_KEYS = ("completions/mean_length", "eval/mean_length")  # training rollouts, held-out evaluation
ACCURACY_KEY, FORMAT_KEY = "eval/accuracy", "eval/format"


def edge_means(values: Sequence[float]) -> tuple[float, float] | None:
    """(mean of the first w values, mean of the last w), w = n // 4 clamped to [1, 10]; None below 2 values.

    >>> edge_means([1.0, 2.0]), edge_means([4, 4, 9, 9, 9, 9, 2, 2])
    ((1.0, 2.0), (4.0, 2.0))
    """
    finite = [float(v) for v in values if v is not None and math.isfinite(v)]
    if len(finite) < 2:
        return None
    w = max(1, min(10, len(finite) // 4))
    return sum(finite[:w]) / w, sum(finite[-w:]) / w


def length_collapse(lengths: Sequence[float], ratio: float) -> str | None:
    """A warning when the mean completion length ends below `ratio` × its start (ratio 0 = off).

    >>> length_collapse([195, 180, 120, 88], 0.5)
    'mean completion length fell from 195.0 to 88.0 tokens (below 0.5× its start)'
    >>> length_collapse([195, 170, 160, 150], 0.5) is None
    True
    """
    ends = edge_means(lengths)
    if not ratio or ends is None:
        return None
    start, end = ends
    if start > 0 and end < ratio * start:
        return f"mean completion length fell from {start:.1f} to {end:.1f} tokens (below {ratio:g}× its start)"
    return None


def format_only_learning(accuracy: Sequence[float], fmt: Sequence[float], ratio: float) -> str | None:
    """A warning when format saturates while accuracy stays flat (ratio 0 = off).

    Fires when format gained ≥ FORMAT_MIN_GAIN and ends ≥ FORMAT_SATURATED, and accuracy gained less
    than `ratio` × the format's gain.

    >>> format_only_learning([0.023, 0.03, 0.033], [0.60, 0.95, 0.99], 0.1)
    'held-out format rose from 60.0% to 99.0% while accuracy moved from 2.3% to 3.3% (less than 0.1× the gain)'
    >>> format_only_learning([0.02, 0.10, 0.15], [0.60, 0.95, 0.99], 0.1) is None
    True
    """
    acc, form = edge_means(accuracy), edge_means(fmt)
    if not ratio or acc is None or form is None:
        return None
    gain = form[1] - form[0]
    if form[1] >= FORMAT_SATURATED and gain >= FORMAT_MIN_GAIN and acc[1] - acc[0] < ratio * gain:
        return (f"held-out format rose from {form[0]:.1%} to {form[1]:.1%} while accuracy moved from {acc[0]:.1%} "
                f"to {acc[1]:.1%} (less than {ratio:g}× the gain)")
    return None


FIXES = {
    "length_collapse": "check the completions in samples.jsonl, lower learning_rate, or keep loss_type dapo/dr_grpo "
                       "with mask_truncated_completions: true (setting: train.guard_length_collapse)",
    "format_only": "weight correctness above the format rewards (reward_weights), set reward_saturation_scaling: "
                   "true, or filter_groups: true with filter_groups_metric: correctness "
                   "(setting: train.guard_format_only)",
}


class MetricGuards:
    """Follows the logged rows and says each guard's warning once (log line, and `warnings()` for run.json)."""

    def __init__(self, length_collapse_ratio: float, format_only_ratio: float):
        self.length_collapse_ratio, self.format_only_ratio = length_collapse_ratio, format_only_ratio
        self.series: dict[str, list[float]] = {k: [] for k in (*LENGTH_KEYS, ACCURACY_KEY, FORMAT_KEY)}
        self.said: dict[str, str] = {}

    def observe(self, step: int, row: dict) -> list[str]:
        """Take one logged row; the warnings that fire for the first time at this step."""
        for key, values in self.series.items():
            value = row.get(key)
            if isinstance(value, (int, float)) and math.isfinite(value):
                values.append(float(value))
        found = {"length_collapse": next((m for key in LENGTH_KEYS
                                          if (m := length_collapse(self.series[key], self.length_collapse_ratio))),
                                         None),
                 "format_only": format_only_learning(self.series[ACCURACY_KEY], self.series[FORMAT_KEY],
                                                     self.format_only_ratio)}
        new = []
        for name, message in found.items():
            if message and name not in self.said:
                self.said[name] = line = f"step {step}: {message}; {FIXES[name]}"
                log.warning(line)
                new.append(line)
        return new

    def warnings(self) -> list[str]:
        return list(self.said.values())

    def state_dict(self) -> dict:
        return {"series": self.series, "said": self.said}

    def load_state_dict(self, state: dict) -> None:
        if state:
            self.series.update({k: list(v) for k, v in state.get("series", {}).items() if k in self.series})
            self.said.update(state.get("said", {}))
