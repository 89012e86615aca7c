"""Evaluate a model on held-out problems: accuracy, format compliance, reward, pass@k, length.

Every model compared (base, SFT warm-up, GRPO) is run on the same problems with the same
EvalConfig, so the same seeds and sampling settings; the result is a plain JSON-serialisable dict,
and `comparison_table` puts several of them side by side.

Choices made here:
- a sample is correct when the text of its last complete `<answer>…</answer>` equals the example's
  `answer` after `normalize_answer` (whitespace collapsed, commas dropped, a leading '$' and a
  trailing '.0' removed), so "1,000" and "$1000.0" both match "1000";
- format and soft format are the rules of the `strict_format` and `soft_format` rewards (semantics
  §9, `rlvr.rewards.gsm8k.format_patterns`): a completion has the format exactly when that reward
  gives it 0.5;
- prompts go to the engine in chunks of batch_size // num_samples problems, chunk i seeded with
  `seed + index of its first problem`, so a rerun with the same config reproduces every sample;
- lengths count generated tokens up to and including EOS (the loss mask's length).
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rlvr.config import EvalConfig
from rlvr.data.templates import encode_prompt
from rlvr.errors import RlvrError
from rlvr.evaluation.passk import pass_at_k, pass_at_k_interval
from rlvr.rewards.gsm8k import format_patterns
from rlvr.rewards.inputs import RewardLog, new_trainer_state, reward_inputs
from rlvr.rewards.registry import resolve_rewards
from rlvr.rewards.scoring import score_completions
from rlvr.rewards.text import extract_tag
from rlvr.rollout import HFEngine, SamplingParams
from rlvr.rollout.engine import RolloutProgress
from rlvr.train.run_dir import Progress

NUM_SHOWN = 3  # sample completions kept in the result, one per problem

_TRAILING_ZERO = re.compile(r"(\d)\.0+$")


# ---------------------------------------------------------------- scoring one completion


def normalize_answer(text: Any) -> str:
    """The form answers are compared in: whitespace collapsed, commas dropped, no leading '$' or
    trailing '.0'.

    >>> normalize_answer(" $1,000.0 "), normalize_answer("3.50"), normalize_answer("a  b")
    ('1000', '3.50', 'a b')
    """
    s = " ".join(str(text).split()).replace(",", "")
    s = s.removeprefix("$").strip()
    return _TRAILING_ZERO.sub(r"\1", s)


def is_correct(text: str, truth: Any, answer_tag: str = "answer") -> bool:
    """Whether the answer-tag text of `text` equals `truth` after `normalize_answer`.

    >>> is_correct("<answer>\\n1,234\\n</answer>", "1234"), is_correct("1234", "1234")
    (True, False)
    """
    answer = extract_tag(text, answer_tag)
    return answer is not None and truth is not None and normalize_answer(answer) == normalize_answer(truth)


# ---------------------------------------------------------------- the evaluation


def evaluate(
    model,
    tokenizer,
    examples: Sequence[Mapping[str, Any]],
    cfg: EvalConfig,
    reward_funcs: Sequence[Any] | None = None,
    engine=None,
    reasoning_tag: str = "reasoning",
    answer_tag: str = "answer",
    desc: str = "eval",
    reward_weights: Sequence[float] | None = None,
) -> dict:
    """Generate cfg.num_samples completions per problem and score them; returns a JSON-ready dict.

    `examples` are `{"prompt": str | [messages], "answer": ..., other columns}`; the other columns
    are passed to the reward functions. `reward_funcs` are specs for `resolve_rewards` (default: the
    gsm8k set with these tags) and `mean_reward` is their `reward_weights`-weighted total. `engine`
    is any RolloutEngine (default: HFEngine on `model` with cfg.batch_size rows per call). The
    result is not written anywhere: pass it to `write_result` (e.g. to cfg.output).
    """
    cfg.validate()
    strict, soft = format_patterns(reasoning_tag, answer_tag)
    examples = _select(examples, cfg.limit)
    funcs = resolve_rewards(list(reward_funcs) if reward_funcs is not None else ["gsm8k"],
                            reasoning_tag=reasoning_tag, answer_tag=answer_tag)
    engine = engine if engine is not None else HFEngine(model, tokenizer, batch_size=cfg.batch_size)
    n = cfg.num_samples

    start = time.perf_counter()
    prompt_ids = [encode_prompt(tokenizer, ex["prompt"]) for ex in examples]
    ids, finished = _generate(engine, prompt_ids, cfg, desc)
    texts = [tokenizer.decode(row, skip_special_tokens=True) for row in ids]
    seconds = time.perf_counter() - start

    truths = [ex["answer"] for ex in examples for _ in range(n)]
    correct = [is_correct(t, truth, answer_tag) for t, truth in zip(texts, truths)]
    strict_ok = [strict.match(t) is not None for t in texts]
    soft_ok = [soft.match(t) is not None for t in texts]
    mean_reward, per_function = _rewards(funcs, reward_weights, examples, n, texts, ids)
    return _json_safe({
        "desc": desc,
        "problems": len(examples),
        "samples_per_problem": n,
        "completions": len(texts),
        "accuracy": _mean(correct),
        "format": _mean(strict_ok),
        "soft_format": _mean(soft_ok),
        "mean_reward": mean_reward,
        "rewards": per_function,
        "pass_at_k": _pass_at_k(correct, n, cfg.k),
        "mean_length": _mean([len(row) for row in ids]),
        "truncated": _mean([not f for f in finished]),
        "seconds": seconds,
        "config": dataclasses.asdict(cfg),
        "samples": _samples(examples, texts, correct, strict_ok, ids, n),
    })


def _select(examples: Sequence[Mapping[str, Any]], limit: int | None) -> list[Mapping[str, Any]]:
    chosen = list(examples)[:limit] if limit is not None else list(examples)
    if not chosen:
        raise RlvrError("eval: no problems to evaluate; check the eval dataset (data.eval_dataset, "
                        "data.eval_size) and eval.limit")
    for i, ex in enumerate(chosen):
        missing = [key for key in ("prompt", "answer") if key not in ex]
        if missing:
            raise RlvrError(f"eval example {i} has no {' or '.join(repr(m) for m in missing)} "
                            f"(keys: {', '.join(map(str, ex))}); prepare the data with rlvr.data first")
    return chosen


def _generate(engine, prompt_ids: list[list[int]], cfg: EvalConfig, desc: str) -> tuple[list[list[int]], list[bool]]:
    """Each completion's token ids (through EOS, no padding) and whether it ended before the limit."""
    params = SamplingParams(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p,
                            do_sample=cfg.do_sample)
    per_call = max(1, cfg.batch_size // cfg.num_samples)  # problems per call: about batch_size rows
    ids: list[list[int]] = []
    finished: list[bool] = []
    progress = CallsProgress(len(prompt_ids) * cfg.num_samples, desc)
    try:
        for first in range(0, len(prompt_ids), per_call):
            chunk = prompt_ids[first:first + per_call]
            rollout = engine.generate(chunk, cfg.num_samples, params, seed=cfg.seed + first, progress=progress)
            rows = rollout.completion_ids.cpu().tolist()  # [rows, C]
            masks = rollout.completion_mask.cpu().tolist()  # [rows, C]
            ids.extend([t for t, keep in zip(row, mask) if keep] for row, mask in zip(rows, masks))
            finished.extend(bool(x) for x in rollout.is_eos.cpu().tolist())
            progress.end_call(len(rows))
    finally:
        progress.close()
    return ids, finished


class CallsProgress(Progress):
    """A progress bar in completions over several generate calls, moved while each call decodes (one
    call may be the whole evaluation): pass it as the calls' progress callback."""

    def __init__(self, total: int, description: str):
        super().__init__(total, description)
        self.rows_before = self.tokens_before = 0  # of the calls that ended
        self.shown, self.call_tokens = 0, 0

    def __call__(self, p: RolloutProgress) -> None:
        self.call_tokens = p.tokens
        self._show(self.rows_before + p.rows_done)

    def end_call(self, rows: int) -> None:
        self.rows_before += rows
        self.tokens_before, self.call_tokens = self.tokens_before + self.call_tokens, 0
        self._show(self.rows_before)  # also for an engine that reported nothing

    def _show(self, done: int) -> None:
        self.update(done - self.shown, f"{self.tokens_before + self.call_tokens} tokens")
        self.shown = done


def _rewards(funcs, weights, examples, n: int, texts: list[str],
             ids: list[list[int]]) -> tuple[float | None, dict[str, float | None]]:
    """(mean weighted total, {function name: mean}) over every completion."""
    # The arguments training gives (a TrainerState at step 0, working log hooks whose output is dropped).
    prompts, completions, columns = reward_inputs([ex for ex in examples for _ in range(n)], texts)
    columns.update(trainer_state=new_trainer_state(), **RewardLog().hooks())
    scores = score_completions(funcs, prompts, completions, ids, columns, weights=weights,
                               reward_errors="raise", step=0)
    present = [v for v in scores.total.tolist() if not math.isnan(v)]
    per_function = {name: scores.metrics[f"rewards/{name}/mean"] for name in scores.names}
    return (sum(present) / len(present) if present else None), per_function


def _pass_at_k(correct: list[bool], n: int, ks: Sequence[int]) -> dict[str, dict]:
    counts = [sum(correct[i:i + n]) for i in range(0, len(correct), n)]  # correct samples per problem
    out = {}
    for k in ks:
        per_problem = [pass_at_k(n, c, k) for c in counts]
        low, high = pass_at_k_interval(per_problem)
        out[str(k)] = {"mean": _mean(per_problem), "ci95": [low, high]}
    return out


def _samples(examples, texts, correct, strict_ok, ids, n: int) -> list[dict]:
    return [
        {"prompt": _prompt_text(ex["prompt"]), "answer": ex["answer"], "completion": texts[i * n],
         "correct": correct[i * n], "format": strict_ok[i * n], "length": len(ids[i * n])}
        for i, ex in enumerate(examples[:NUM_SHOWN])
    ]


def _prompt_text(prompt: Any) -> str:
    """The question a reader needs: the last user message of a conversation, or the string."""
    if isinstance(prompt, str):
        return prompt
    users = [m.get("content", "") for m in prompt if m.get("role") == "user"]
    return str(users[-1]) if users else str(prompt)


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def _json_safe(value: Any) -> Any:
    """Nested dicts/lists with nan/inf as None and tuples as lists, so json.dumps never fails."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


# ---------------------------------------------------------------- reports


def write_result(result: Mapping[str, Any], path: str | Path) -> Path:
    """Write one result as indented JSON (parent folders created); returns the path."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(_json_safe(result), indent=2) + "\n")
    except OSError as e:
        raise RlvrError(f"cannot write the eval result to {path} ({e.strerror}); set eval.output to a "
                        "writable path") from None
    return path


def comparison_table(results: Mapping[str, Mapping[str, Any]]):
    """A rich Table with one row per stage (e.g. base, warm-up, GRPO) and one column per metric."""
    from rich.table import Table

    ks = sorted({int(k) for r in results.values() for k in r.get("pass_at_k", {})})
    table = Table(title="evaluation")
    table.add_column("stage", style="bold")
    for name in ("accuracy", "format", "mean reward", *[f"pass@{k} (95% CI)" for k in ks], "mean length"):
        table.add_column(name, justify="right")
    for stage, r in results.items():
        passes = [_pass_cell(r.get("pass_at_k", {}).get(str(k))) for k in ks]
        table.add_row(stage, _percent(r.get("accuracy")), _percent(r.get("format")),
                      _number(r.get("mean_reward"), 3), *passes, _number(r.get("mean_length"), 1))
    return table


def print_comparison(results: Mapping[str, Mapping[str, Any]], console=None) -> None:
    """Print `comparison_table(results)` to `console` (default: a new rich Console on stdout)."""
    from rich.console import Console

    (console or Console()).print(comparison_table(results))


def _percent(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}%"


def _number(value: float | None, digits: int) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _pass_cell(entry: Mapping[str, Any] | None) -> str:
    if not entry or entry.get("mean") is None:
        return "–"
    low, high = entry["ci95"]
    return f"{entry['mean']:.3f} [{low:.2f}, {high:.2f}]"
