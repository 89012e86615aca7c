"""Run every reward function over a batch: the [N, K] reward table, its weighted total, and metrics.

Semantics §2 and §7. Functions are called with keywords, as TRL calls them:
`fn(prompts=..., completions=..., completion_ids=..., **columns)`, so `def f(completions, **kw)` works.
Sync functions run in the caller's thread one after another; `async def` functions (or any function
returning an awaitable) are then awaited together in one `asyncio.gather`.

Failures (reward_errors):
- a function that raises on the batch is called again once per completion to find the rows that
  fail; "raise" stops with the first such completion, "skip" scores only those rows None;
- a wrong-length (or non-list) return: "raise" stops, "skip" scores the whole batch None for it;
- a value that is not a number: like a raising row;
- nan or inf: scored None in both modes (some functions use nan to mean "does not apply");
- every row scored None for one of these reasons counts in `rewards/<name>/errors`; a plain None
  from the function does not;
- an `RlvrError` raised inside a reward function is a configuration problem (a missing column, a
  missing package) and stops the run in both modes.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from rlvr.errors import RlvrError, nearest
from rlvr.rewards.text import SHARED_ARGUMENTS, RewardFunc, describe_error, short_repr

ERROR_MODES = ("raise", "skip")
_RESERVED = ("prompts", "completions", "completion_ids")
_SKIP_HINT = "or set reward_errors='skip' to score such rows None"


@dataclass
class RewardScores:
    """Rewards for one batch of N completions and K reward functions."""

    per_function: torch.Tensor  # [N, K] float32, NaN where a function gave None
    total: torch.Tensor  # [N] float32, Σ_k w_k·R_ik over non-NaN terms; NaN where all K gave None
    names: list[str]  # [K] metric names, in reward_funcs order, made unique
    metrics: dict[str, float]  # rewards/<name>/mean, rewards/<name>/std (nan-ignoring), rewards/<name>/errors


def score_completions(
    reward_funcs: Sequence[RewardFunc],
    prompts: Sequence[Any],
    completions: Sequence[Any],
    completion_ids: Sequence[Any] | None,
    columns: dict[str, Any],
    weights: Sequence[float] | None = None,
    reward_errors: str = "raise",
    step: int = 0,
) -> RewardScores:
    """Score N completions with K reward functions and combine them with `weights` (default all 1).

    `columns` holds one value per completion for each dataset column, plus the SHARED_ARGUMENTS
    (`trainer_state`, `log_extra`, `log_metric`; see rewards/inputs.py), passed to every call as they are.

    >>> from rlvr.rewards import correctness_reward, int_reward
    >>> s = score_completions([correctness_reward, int_reward], ["q", "q"], ["<answer>4</answer>", "5"],
    ...                       None, {"answer": ["4", "4"]}, weights=[1.0, 2.0])
    >>> s.total.tolist(), s.metrics["rewards/correctness/mean"]
    ([3.0, 0.0], 1.0)
    """
    if reward_errors not in ERROR_MODES:
        hint = nearest(str(reward_errors), ERROR_MODES)
        raise RlvrError(f"reward_errors is {reward_errors!r}{hint}: use 'raise' or 'skip'")
    if not reward_funcs:
        raise RlvrError("no reward functions to score with: name at least one in rewards, e.g. [gsm8k]")
    batch = _Batch(prompts, completions, completion_ids, columns)
    names = unique_reward_names(reward_funcs)
    w = _weights(weights, names)

    outcomes = _settle([_call(fn, batch.kwargs()) for fn in reward_funcs])
    table: list[list[float]] = []  # [K][N]
    metrics: dict[str, float] = {}
    for fn, name, outcome in zip(reward_funcs, names, outcomes):
        values, errors = _score_function(fn, name, outcome, batch, reward_errors, step)
        table.append(values)
        metrics.update(_function_metrics(name, torch.tensor(values, dtype=torch.float64), errors))
        # Functions that score failures 0.0 (the code sandbox) report why in `last_errors`.
        for reason, count in (getattr(fn, "last_errors", None) or {}).items():
            metrics[f"rewards/{name}/errors/{reason}"] = float(count)

    per_function = torch.tensor(table, dtype=torch.float64).reshape(len(names), batch.n).T.contiguous()  # [N, K]
    return RewardScores(
        per_function=per_function.float(),
        total=combine_rewards(per_function, w).float(),
        names=names,
        metrics=metrics,
    )


def reward_name(fn: Any) -> str:
    """The name a reward function is logged under: its `__name__`, else its class name."""
    if isinstance(fn, functools.partial):
        return reward_name(fn.func)
    return getattr(fn, "__name__", None) or type(fn).__name__


def unique_reward_names(funcs: Sequence[Any]) -> list[str]:
    """The names reward functions are logged under, in order: two functions with one name would overwrite
    each other's metrics, so the second becomes name_2."""
    names: list[str] = []
    for fn in funcs:
        base = name = reward_name(fn)
        k = 1
        while name in names:
            k += 1
            name = f"{base}_{k}"
        names.append(name)
    return names


def check_reward_weights(weights: Sequence[float] | None, funcs: Sequence[Any]) -> None:
    """Refuse weights that do not fit the reward functions now, not after a model load and a rollout."""
    _weights(weights, unique_reward_names(funcs))


def _weights(weights: Sequence[float] | None, names: list[str]) -> torch.Tensor:
    if weights is None:
        return torch.ones(len(names), dtype=torch.float64)
    if len(weights) != len(names):
        raise RlvrError(
            f"reward_weights has {len(weights)} values for {len(names)} reward functions "
            f"({', '.join(names)}): give one weight per function, in the same order"
        )
    try:
        values = [float(x) for x in weights]
    except (TypeError, ValueError) as e:
        raise RlvrError(f"reward_weights {list(weights)!r} are not all numbers: give floats") from e
    if not all(math.isfinite(x) for x in values):
        raise RlvrError(f"reward_weights {values} contain nan or inf: give finite numbers")
    return torch.tensor(values, dtype=torch.float64)


def combine_rewards(per_function: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """r_i = Σ_k w_k R_ik with NaN terms skipped; NaN where every function gave None (§2).

    per_function: [N, K] → [N], in per_function's dtype; weights: [K] (default all 1).

    >>> combine_rewards(torch.tensor([[1.0, 2.0], [float("nan"), 2.0]]), torch.tensor([0.5, 2.0])).tolist()
    [4.5, 4.0]
    """
    if weights is None:
        weights = torch.ones(per_function.shape[1], dtype=per_function.dtype)
    total = torch.nansum(per_function * weights.to(per_function), dim=1)  # [N]
    return total.masked_fill(torch.isnan(per_function).all(dim=1), math.nan)


def nanstd(x: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Bessel-corrected std ignoring NaN (TRL's nanstd); NaN where fewer than two values are known.

    >>> nanstd(torch.tensor([1.0, float("nan"), 3.0])).item(), nanstd(torch.tensor([[1.0, float("nan")]]), 1).tolist()
    (1.4142135381698608, [nan])
    """
    valid = ~torch.isnan(x)
    n = valid.sum(dim=dim) if dim is not None else valid.sum()
    mean = torch.nanmean(x, dim=dim, keepdim=dim is not None)
    sq = torch.where(valid, (x - mean) ** 2, torch.zeros_like(x))
    total = sq.sum(dim=dim) if dim is not None else sq.sum()
    return torch.where(n > 1, (total / (n - 1).clamp(min=1)).sqrt(), torch.full_like(total, math.nan))


def per_function_metrics(per_function: torch.Tensor, names: Sequence[str]) -> dict[str, float]:
    """rewards/<name>/mean and rewards/<name>/std over the rows of an [N, K] reward table (NaN ignored).

    >>> per_function_metrics(torch.tensor([[1.0, 0.0], [3.0, float("nan")]]), ["a", "b"])
    {'rewards/a/mean': 2.0, 'rewards/a/std': 1.4142135623730951, 'rewards/b/mean': 0.0, 'rewards/b/std': nan}
    """
    out: dict[str, float] = {}
    for k, name in enumerate(names):
        values = per_function[:, k].double()
        out.update({f"rewards/{name}/mean": torch.nanmean(values).item(), f"rewards/{name}/std": nanstd(values).item()})
    return out


def _function_metrics(name: str, values: torch.Tensor, errors: int) -> dict[str, float]:
    # values: [N] float64, NaN for None. The std is Bessel-corrected like the group std of §2.
    return {f"rewards/{name}/mean": torch.nanmean(values).item(), f"rewards/{name}/std": nanstd(values).item(),
            f"rewards/{name}/errors": float(errors)}


class _Batch:
    """The keyword arguments for one batch, checked, and their one-row slices for retries."""

    def __init__(self, prompts, completions, completion_ids, columns: dict[str, Any]) -> None:
        self.n = len(completions)
        self.completions = completions
        self.base = {"prompts": prompts, "completions": completions, "completion_ids": completion_ids}
        self.columns = dict(columns)
        self._check()

    def _check(self) -> None:
        for key in _RESERVED:
            if key in self.columns:
                raise RlvrError(f"dataset column '{key}' clashes with the reward function argument '{key}'; rename it")
        sized = {"prompts": self.base["prompts"], **self.columns}
        if self.base["completion_ids"] is not None:
            sized["completion_ids"] = self.base["completion_ids"]
        for key, values in sized.items():
            if key in SHARED_ARGUMENTS:
                continue
            if not hasattr(values, "__len__") or len(values) != self.n:
                got = f"{len(values)} values" if hasattr(values, "__len__") else f"a {type(values).__name__}"
                raise RlvrError(
                    f"reward input '{key}' has {got} for {self.n} completions: "
                    "give one value per completion (repeat each prompt's columns for its G completions)"
                )

    def kwargs(self) -> dict[str, Any]:
        return {**self.base, **self.columns}

    def row(self, i: int) -> dict[str, Any]:
        # Slicing (not indexing) keeps every argument a length-1 list, or a [1, C] tensor.
        sliced = {k: (v if v is None else v[i : i + 1]) for k, v in self.base.items()}
        cols = {k: (v if k in SHARED_ARGUMENTS else v[i : i + 1]) for k, v in self.columns.items()}
        return {**sliced, **cols}


@dataclass
class _Failed:
    error: BaseException


def _call(fn: Any, kwargs: dict[str, Any]) -> Any:
    """fn(**kwargs): its result, an awaitable still to run, or _Failed."""
    try:
        return fn(**kwargs)
    except Exception as e:
        return _Failed(e)


def _settle(outcomes: list[Any]) -> list[Any]:
    """Replace every awaitable in `outcomes` by its result (or _Failed), all awaited in one gather."""
    pending = [i for i, o in enumerate(outcomes) if inspect.isawaitable(o)]
    if not pending:
        return outcomes
    results = _run_on_reward_loop(_gather([outcomes[i] for i in pending]))
    settled = list(outcomes)
    for i, result in zip(pending, results):
        if isinstance(result, BaseException) and not isinstance(result, Exception):
            raise result  # KeyboardInterrupt, cancellation: not a reward error
        settled[i] = _Failed(result) if isinstance(result, BaseException) else result
    return settled


async def _gather(awaitables: list[Any]) -> list[Any]:
    return await asyncio.gather(*awaitables, return_exceptions=True)


_loop: asyncio.AbstractEventLoop | None = None
_loop_lock = threading.Lock()


def _run_on_reward_loop(coro: Any) -> Any:
    """Run `coro` on rlvr's reward event loop and wait for it, from any thread.

    One long-lived loop on a daemon thread, not asyncio.run per batch: async clients that a reward
    function keeps between calls (an httpx.AsyncClient for a judge model) are bound to the loop they
    were first used on and fail on a fresh one. It also works when the caller's own thread already
    runs a loop (a notebook), where asyncio.run would refuse.
    """
    global _loop
    with _loop_lock:
        if _loop is None or _loop.is_closed():
            _loop = asyncio.new_event_loop()
            threading.Thread(target=_loop.run_forever, name="rlvr-async-rewards", daemon=True).start()
        loop = _loop
    return asyncio.run_coroutine_threadsafe(coro, loop).result()


def _score_function(fn: Any, name: str, outcome: Any, batch: _Batch, mode: str, step: int) -> tuple[list[float], int]:
    """One function's N values (NaN for None) and how many rows were lost to errors."""
    if isinstance(outcome, _Failed):
        _reraise_config_error(name, step, outcome.error)
        return _score_row_by_row(fn, name, outcome.error, batch, mode, step)
    values = _as_list(outcome)
    if values is None or len(values) != batch.n:
        if mode == "raise":
            got = f"a {type(outcome).__name__}, not a list," if values is None else f"{len(values)} values"
            raise RlvrError(
                f"reward function '{name}' returned {got} for {batch.n} completions at step {step}: "
                f"return one float or None per completion, {_SKIP_HINT}"
            )
        return [math.nan] * batch.n, batch.n
    scored = [_value(v, name, i, batch, mode, step) for i, v in enumerate(values)]
    return [x for x, _ in scored], sum(err for _, err in scored)


def _score_row_by_row(
    fn: Any, name: str, batch_error: BaseException, batch: _Batch, mode: str, step: int
) -> tuple[list[float], int]:
    # The batch call raised: calling once per completion finds the rows at fault, so "raise" can
    # name the completion and "skip" loses only those rows.
    outcomes = _settle([_call(fn, batch.row(i)) for i in range(batch.n)])
    for i, outcome in enumerate(outcomes):
        if isinstance(outcome, _Failed):
            _reraise_config_error(name, step, outcome.error)
            if mode == "raise":
                raise RlvrError(
                    f"reward function '{name}' raised {describe_error(outcome.error)} at step {step} "
                    f"on completion {i} {short_repr(batch.completions[i])}: fix the function, {_SKIP_HINT}"
                ) from outcome.error
    if mode == "raise":
        raise RlvrError(
            f"reward function '{name}' raised {describe_error(batch_error)} at step {step} on a batch of "
            f"{batch.n} completions though no single one reproduces it: fix the function, {_SKIP_HINT}"
        ) from batch_error
    values, errors = [], 0
    for i, outcome in enumerate(outcomes):
        row = None if isinstance(outcome, _Failed) else _as_list(outcome)
        if row is None or len(row) != 1:
            values.append(math.nan)
            errors += 1
            continue
        value, error = _value(row[0], name, i, batch, mode, step)
        values.append(value)
        errors += error
    return values, errors


def _value(v: Any, name: str, i: int, batch: _Batch, mode: str, step: int) -> tuple[float, int]:
    """One returned value as (float, error count): None -> NaN; nan/inf -> NaN and an error."""
    if v is None:
        return math.nan, 0
    try:
        if isinstance(v, (str, bytes)):
            raise TypeError(v)
        x = float(v)
    except (TypeError, ValueError):
        if mode == "raise":
            raise RlvrError(
                f"reward function '{name}' returned {short_repr(v, 40)} for completion {i} "
                f"{short_repr(batch.completions[i])} at step {step}: return a float or None, {_SKIP_HINT}"
            ) from None
        return math.nan, 1
    return (x, 0) if math.isfinite(x) else (math.nan, 1)


def _as_list(outcome: Any) -> list[Any] | None:
    """The returned values as a list, or None when the return is not a sequence of values."""
    if outcome is None or isinstance(outcome, (str, bytes, dict)):
        return None
    try:
        return list(outcome)
    except TypeError:
        return None


def _reraise_config_error(name: str, step: int, error: BaseException) -> None:
    if isinstance(error, RlvrError):
        raise RlvrError(f"reward function '{name}' at step {step}: {error}") from error
