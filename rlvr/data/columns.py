"""Turn raw dataset rows into examples: a chat `prompt`, a ground-truth `answer`, other columns kept.

Column problems are found before any work starts, and reported with the config key that fixes
them, because a wrong column name is the most common first-run mistake with a new dataset.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal

from rlvr.data.answers import extract_hash_answer
from rlvr.data.prompts import SYSTEM_PROMPT, to_conversation
from rlvr.errors import RlvrError, nearest

log = logging.getLogger("rlvr")

AnswerFormat = Literal["raw", "gsm8k"]

# answer_format -> parser of the raw answer cell; None means the cell has no usable answer
ANSWER_FORMATS: dict[str, Callable[[str], str | None]] = {
    "raw": lambda text: text.strip(),
    "gsm8k": extract_hash_answer,
}


def prepare_examples(
    records: Iterable[Mapping[str, Any]],
    prompt_column: str = "question",
    answer_column: str = "answer",
    system_prompt: str | None = SYSTEM_PROMPT,
    answer_format: AnswerFormat = "raw",
    where: str = "dataset",
    completion_column: str | None = None,
) -> list[dict[str, Any]]:
    """Examples `{"prompt": [messages] | str, "answer": str, ...other columns}` from raw rows.

    The prompt column holds either the question text or a ready message list (kept as is, with
    the system prompt put first when it has none). A column named `prompt` is TRL's prompt and used
    as TRL uses it: plain text stays plain text (no chat template, no system prompt; reward
    functions get strings) and messages stay exactly as given. `answer_format="gsm8k"` takes the text after
    `####`. With `completion_column` set, its text is copied to `"completion"` (SFT data).
    `where` names the data in error messages.
    """
    if answer_format not in ANSWER_FORMATS:
        raise RlvrError(
            f"answer_format '{answer_format}'{nearest(answer_format, ANSWER_FORMATS)} is unknown; "
            f"use one of {', '.join(ANSWER_FORMATS)}"
        )
    rows = list(records)
    if not rows:
        raise RlvrError(f"{where} has no rows; point `dataset` at a non-empty dataset")
    if prompt_column not in rows[0] and "prompt" in rows[0]:
        log.warning("%s has no column '%s' but a TRL-style 'prompt' column: using it as the prompt", where,
                    prompt_column)
        prompt_column = "prompt"
    _check_columns(rows[0], where, prompt_column=prompt_column, answer_column=answer_column)
    if completion_column is not None:
        _check_columns(rows[0], where, completion_column=completion_column)

    parse_answer = ANSWER_FORMATS[answer_format]
    examples = []
    for index, row in enumerate(rows):
        example = dict(row)
        example["prompt"] = _to_messages(row, index, prompt_column, system_prompt, where)
        example["answer"] = _to_answer(row, index, answer_column, parse_answer, answer_format, where)
        if completion_column is not None:
            example["completion"] = str(_cell(row, index, completion_column, where))
        examples.append(example)
    return examples


def _check_columns(row: Mapping[str, Any], where: str, **columns: str) -> None:
    available = list(row)
    for key, column in columns.items():
        if column not in row:
            raise RlvrError(
                f"{where} has no column '{column}'{nearest(column, available)}; "
                f"available columns: {', '.join(available)}; set `{key}` to the right one"
            )


def _cell(row: Mapping[str, Any], index: int, column: str, where: str) -> Any:
    value = row.get(column)
    if value is None:
        raise RlvrError(f"{where} row {index} has no value in column '{column}'; fix or drop that row")
    return value


def _to_messages(
    row: Mapping[str, Any], index: int, column: str, system_prompt: str | None, where: str
) -> list[dict[str, Any]] | str:
    value = _cell(row, index, column, where)
    if column == "prompt" and (isinstance(value, str) or _is_conversation(value)):
        return value if isinstance(value, str) else [dict(m) for m in value]  # TRL's prompt, as TRL uses it
    if isinstance(value, str):
        if not value.strip():
            raise RlvrError(f"{where} row {index}: column '{column}' is an empty question; fill in or drop that row")
        return to_conversation(value, system_prompt)
    if _is_conversation(value):
        messages = [dict(m) for m in value]
        if not any(str(m["content"]).strip() for m in messages if m["role"] == "user"):
            raise RlvrError(f"{where} row {index}: column '{column}' has no user message with text; "
                            "fill in or drop that row")
        if system_prompt and not any(m["role"] == "system" for m in messages):
            messages.insert(0, {"role": "system", "content": system_prompt})
        return messages
    raise RlvrError(
        f"{where} row {index}: column '{column}' holds {type(value).__name__}, not a question string "
        "or a list of {role, content} messages; set `prompt_column` to the question column"
    )


def _is_conversation(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(_is_message(m) for m in value)


def _is_message(value: Any) -> bool:
    return isinstance(value, Mapping) and "role" in value and "content" in value


def _to_answer(
    row: Mapping[str, Any],
    index: int,
    column: str,
    parse: Callable[[str], str | None],
    answer_format: str,
    where: str,
) -> str:
    raw = str(_cell(row, index, column, where))
    answer = parse(raw)
    if not answer:
        shown = raw if len(raw) <= 60 else raw[:57] + "..."
        hint = "fix or drop that row"
        if answer_format == "gsm8k":
            hint = "set `answer_format: raw` if the column holds final answers"
        raise RlvrError(
            f"{where} row {index}: column '{column}' gives no {answer_format} answer from {shown!r}; {hint}"
        )
    return answer
