"""Preference data in TRL's formats, checked up front, and a built-in offline preference set.

Paired rows (DPO, CPO/SimPO, ORPO) are `{"prompt", "chosen", "rejected"}`, plain text or
conversational (the prompt a list of messages, chosen/rejected each a list holding one assistant
message); with no prompt column, the prompt is the longest common prefix of chosen and rejected
(TRL's implicit-prompt format). Unpaired rows (KTO) are `{"prompt", "completion", "label"}`; paired
rows given to KTO are unpaired, as TRL does. Either way a row becomes `prompt` (text or messages)
and plain-text completions, ready for `rlvr.data.templates.encode_sft_example`.

`build_preference_dataset(cfg)` gives a run config's training rows: a preference set in TRL's format
(file or hub id), or `builtin:arithmetic`, whose training problems become pairs while its held-out
problems stay the evaluation set (so `rlvr eval --compare` reads a preference run like any other).
`arithmetic_preference_pairs` turns the built-in arithmetic task's examples into pairs: chosen = the
correct worked solution, rejected = the same solution with a slip in its last result (or the right
work with a wrong answer copied out).
"""

from __future__ import annotations

import random
import re
from collections.abc import Mapping, Sequence
from typing import Any

from rlvr.config import RunConfig
from rlvr.data.build import build_datasets
from rlvr.data.loading import load_records
from rlvr.errors import RlvrError

PAIRED_COLUMNS = ("prompt", "chosen", "rejected")
UNPAIRED_COLUMNS = ("prompt", "completion", "label")


def _is_messages(value: Any) -> bool:
    return isinstance(value, Sequence) and not isinstance(value, str) and all(
        isinstance(m, Mapping) and "role" in m and "content" in m for m in value)


def _completion_text(value: Any, column: str, where: str) -> str:
    """A completion column as text: a string, or a list of exactly one assistant message."""
    if isinstance(value, str):
        return value
    if _is_messages(value):
        if len(value) == 1 and value[0]["role"] == "assistant":
            return str(value[0]["content"])
        roles = [m["role"] for m in value]
        raise RlvrError(f"{where}: '{column}' holds messages with roles {roles}; it must be one assistant message "
                        f"after the prompt (put earlier turns in 'prompt')")
    raise RlvrError(f"{where}: '{column}' is {type(value).__name__}; expected text or a list with one assistant "
                    f"message")


def _split_implicit_prompt(chosen: Any, rejected: Any, where: str) -> tuple[Any, Any, Any]:
    """(prompt, chosen, rejected) from full chosen/rejected conversations (or texts) sharing a prompt."""
    n = 0
    while n < min(len(chosen), len(rejected)) and chosen[n] == rejected[n]:
        n += 1
    if _is_messages(chosen) and _is_messages(rejected):
        while n > 0 and chosen[n - 1]["role"] == "assistant":  # the prompt ends before an assistant turn
            n -= 1
        if n == 0:
            raise RlvrError(f"{where}: no 'prompt' column and chosen/rejected share no leading messages; add a "
                            f"'prompt' column (TRL's format: prompt, chosen, rejected)")
        return list(chosen[:n]), list(chosen[n:]), list(rejected[n:])
    if isinstance(chosen, str) and isinstance(rejected, str) and n > 0:
        return chosen[:n], chosen[n:], rejected[n:]
    raise RlvrError(f"{where}: no 'prompt' column and chosen/rejected share no prefix to take it from; add a "
                    f"'prompt' column (TRL's format: prompt, chosen, rejected)")


def _missing(row: Mapping, needed: Sequence[str], where: str, fmt: str) -> None:
    absent = [c for c in needed if c not in row]
    if absent:
        raise RlvrError(f"{where}: no {', '.join(repr(c) for c in absent)} column (found {sorted(row)}); {fmt}")


def _prompt(value: Any, where: str) -> Any:
    if isinstance(value, str) or _is_messages(value):
        return value if isinstance(value, str) else [dict(m) for m in value]
    raise RlvrError(f"{where}: 'prompt' is {type(value).__name__}; expected text or a list of messages")


def prepare_preference_pairs(records: Sequence[Mapping[str, Any]], where: str = "data") -> list[dict[str, Any]]:
    """Rows in TRL's paired format → `{"prompt", "chosen", "rejected"}` with text completions, checked.

    Refused with one line naming the row: a missing chosen/rejected column, an empty completion, and
    chosen identical to rejected (the pair carries no preference).
    """
    if not records:
        raise RlvrError(f"{where}: the preference dataset is empty; check data.dataset and data.split")
    fmt = "preference data needs 'chosen' and 'rejected' columns (and usually 'prompt'), TRL's paired format"
    pairs = []
    for i, row in enumerate(records):
        at = f"{where} row {i}"
        _missing(row, ("chosen", "rejected"), at, fmt)
        chosen, rejected = row["chosen"], row["rejected"]
        prompt = row.get("prompt")
        if prompt is None:
            prompt, chosen, rejected = _split_implicit_prompt(chosen, rejected, at)
        chosen, rejected = _completion_text(chosen, "chosen", at), _completion_text(rejected, "rejected", at)
        for column, text in (("chosen", chosen), ("rejected", rejected)):
            if not text.strip():
                raise RlvrError(f"{at}: '{column}' is empty; every pair needs a non-empty chosen and rejected "
                                f"completion (drop or fix the row)")
        if chosen == rejected:
            raise RlvrError(f"{at}: 'chosen' and 'rejected' are identical, so the pair states no preference; "
                            f"drop the row or fix one of them")
        extra = {k: v for k, v in row.items() if k not in PAIRED_COLUMNS}
        pairs.append({**extra, "prompt": _prompt(prompt, at), "chosen": chosen, "rejected": rejected})
    return pairs


def prepare_unpaired_examples(records: Sequence[Mapping[str, Any]], where: str = "data") -> list[dict[str, Any]]:
    """Rows for KTO → `{"prompt", "completion", "label"}`; paired rows are unpaired (chosen True, rejected False)."""
    if not records:
        raise RlvrError(f"{where}: the KTO dataset is empty; check data.dataset and data.split")
    if "chosen" in records[0] and "rejected" in records[0]:
        examples = []
        for pair in prepare_preference_pairs(records, where):
            examples.append({"prompt": pair["prompt"], "completion": pair["chosen"], "label": True})
            examples.append({"prompt": pair["prompt"], "completion": pair["rejected"], "label": False})
        return examples
    fmt = ("KTO data needs TRL's unpaired format (prompt, completion, label) or the paired one "
           "(prompt, chosen, rejected)")
    examples = []
    for i, row in enumerate(records):
        at = f"{where} row {i}"
        _missing(row, UNPAIRED_COLUMNS, at, fmt)
        label = row["label"]
        if not isinstance(label, bool) and label not in (0, 1):
            raise RlvrError(f"{at}: 'label' is {label!r}; use true (desirable) or false (undesirable)")
        completion = _completion_text(row["completion"], "completion", at)
        if not completion.strip():
            raise RlvrError(f"{at}: 'completion' is empty; every example needs a non-empty completion")
        extra = {k: v for k, v in row.items() if k not in UNPAIRED_COLUMNS}
        examples.append({**extra, "prompt": _prompt(row["prompt"], at), "completion": completion,
                         "label": bool(label)})
    return examples


# ---------------------------------------------------------------- the built-in arithmetic preference set


def wrong_solution(completion: str, answer: str, rng: random.Random, answer_tag: str = "answer") -> str:
    """`completion` with a wrong final answer: a slip in the last result line (and the answer copied from it),
    or, one time in four, the right work and a wrong answer. The answer must be an integer."""
    right = int(answer)
    offset = rng.randint(1, 9)
    wrong = right - offset if right - offset >= 0 and rng.random() < 0.5 else right + offset
    answer_block = re.compile(rf"(<{re.escape(answer_tag)}>\s*){re.escape(answer)}(\s*</{re.escape(answer_tag)}>)")
    if not answer_block.search(completion):
        raise RlvrError(f"wrong_solution: the completion has no <{answer_tag}>{answer}</{answer_tag}> block to alter")
    text = answer_block.sub(lambda m: f"{m.group(1)}{wrong}{m.group(2)}", completion, count=1)
    if rng.random() < 0.75:
        # The last "= <answer>" of the reasoning becomes the same wrong value, so the slip is in the work.
        head, sep, tail = text.rpartition(f"= {answer}\n")
        if sep:
            text = f"{head}= {wrong}\n{tail}"
    return text


def arithmetic_preference_pairs(examples: Sequence[Mapping[str, Any]], seed: int = 0,
                                answer_tag: str = "answer") -> list[dict[str, Any]]:
    """Pairs from examples with a correct worked `completion` and its integer `answer` (the built-in task's).

    chosen = the correct solution, rejected = `wrong_solution` of it; the other columns are kept, so
    the pairs still carry `answer` for evaluation.
    """
    rng = random.Random(seed)
    pairs = []
    for ex in examples:
        pair = {k: v for k, v in ex.items() if k != "completion"}
        pair["chosen"] = ex["completion"]
        pair["rejected"] = wrong_solution(ex["completion"], str(ex["answer"]), rng, answer_tag)
        pairs.append(pair)
    return pairs


def build_preference_dataset(cfg: RunConfig, unpaired: bool = False) -> list[dict[str, Any]]:
    """The training rows of a preference run: pairs, or (KTO) unpaired examples, checked."""
    d = cfg.data
    if d.dataset.startswith("builtin:"):
        train, _ = build_datasets(cfg)  # the held-out problems never become pairs
        rows = arithmetic_preference_pairs(train, seed=d.seed, answer_tag=d.answer_tag)
    else:
        rows = load_records(d.dataset, d.split, d.subset)
        if d.limit:
            rows = rows[:d.limit]
    return prepare_unpaired_examples(rows, d.dataset) if unpaired else prepare_preference_pairs(rows, d.dataset)
