"""Held-out evaluation while a model trains: `evaluate` on the run's held-out problems, as `eval/...` metrics.

The trainer core (rlvr/train/session.py) calls a `HeldOutEvaluator` after the optimizer steps that
train.eval_strategy / eval_steps name and merges its metrics into that step's metrics.jsonl line. It is
the same evaluation as `rlvr eval` (rlvr/evaluation/evaluate.py: the `eval` section's sampling, seed,
num_samples and k, one batched engine call per eval.batch_size rows), so a curve's last point and
`rlvr eval` of the final adapter agree.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from rlvr.config import RunConfig
from rlvr.errors import RlvrError

# evaluate()'s scalar results that become metrics (pass@k are added per k)
SCALARS = ("accuracy", "format", "soft_format", "mean_reward", "mean_length", "truncated", "problems", "seconds")


def eval_metrics(result: Mapping[str, Any]) -> dict[str, float]:
    """An evaluate() result as flat metrics: eval/accuracy, eval/format, …, eval/pass@k.

    >>> eval_metrics({"accuracy": 0.25, "format": 1.0, "pass_at_k": {"1": {"mean": 0.25, "ci95": [0, 1]}}})
    {'eval/accuracy': 0.25, 'eval/format': 1.0, 'eval/pass@1': 0.25}
    """
    out = {f"eval/{name}": result[name] for name in SCALARS if result.get(name) is not None}
    for k, entry in (result.get("pass_at_k") or {}).items():
        if entry.get("mean") is not None:
            out[f"eval/pass@{k}"] = entry["mean"]
    return out


class HeldOutEvaluator:
    """evaluate() of the run config's `eval` section on `examples`, with the run's rewards (an `Evaluator`)."""

    def __init__(self, cfg: RunConfig, examples: Sequence[Mapping[str, Any]], tokenizer):
        from rlvr.evaluation.run import eval_scoring

        if not examples:
            raise RlvrError("train.eval_strategy: no held-out problems to evaluate; set data.eval_size > 0 or "
                            "data.eval_dataset")
        cfg.eval.validate()
        self.cfg, self.examples, self.tokenizer = cfg, list(examples), tokenizer
        self.scoring = eval_scoring(cfg)
        self.engine, self.engine_model = None, None  # made at the first evaluation, for the model being trained

    def metric_names(self) -> list[str]:
        return [f"eval/{n}" for n in SCALARS] + [f"eval/pass@{k}" for k in self.cfg.eval.k]

    def __call__(self, model, step: int) -> dict[str, float]:
        from rlvr.evaluation.evaluate import evaluate
        from rlvr.evaluation.run import eval_engine

        if self.engine_model is not model:
            self.engine, self.engine_model = eval_engine(self.cfg, model, self.tokenizer), model
        result = evaluate(model, self.tokenizer, self.examples, self.cfg.eval, engine=self.engine,
                          desc=f"eval step {step}", **self.scoring)
        return eval_metrics(result)


def training_evaluator(cfg: RunConfig, tokenizer, examples=None) -> HeldOutEvaluator | None:
    """The evaluator a training stage of `cfg` needs (None when train.eval_strategy is 'no' and there is no
    eval_on_start); `examples` default to the run config's held-out problems."""
    t = cfg.train
    if t.eval_strategy == "no" and not t.eval_on_start:
        return None
    if examples is None:
        from rlvr.data.build import build_datasets

        _, examples = build_datasets(cfg)
    return HeldOutEvaluator(cfg, examples, tokenizer)  # evaluate() applies eval.limit
