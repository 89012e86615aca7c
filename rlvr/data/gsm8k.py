"""GSM8K: ground-truth extraction and example preparation (grpo-semantics §9).

A GSM8K `answer` field is a worked solution whose last line is `#### <number>`; the ground truth
is the text after `####` with thousands separators removed, e.g. "#### 1,200" -> "1200".
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from rlvr.data.answers import extract_hash_answer
from rlvr.data.columns import prepare_examples
from rlvr.data.prompts import SYSTEM_PROMPT

__all__ = ["extract_hash_answer", "prepare_gsm8k"]


def prepare_gsm8k(
    records: Iterable[Mapping[str, Any]], system_prompt: str | None = SYSTEM_PROMPT
) -> list[dict[str, Any]]:
    """GSM8K rows (question, answer) as examples with a chat `prompt` and the `answer` ground truth."""
    return prepare_examples(
        records,
        prompt_column="question",
        answer_column="answer",
        system_prompt=system_prompt,
        answer_format="gsm8k",
        where="GSM8K dataset",
    )
