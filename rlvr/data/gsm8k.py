"""GSM8K: ground-truth extraction and example preparation (grpo-semantics §9).

A GSM8K `answer` field is a worked solution whose last line is `#### <number>`; the ground truth
is the text after `####` with thousands separators removed, e.g. "#### 1,200" -> "1200".
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from rlvr.data.prompts import SYSTEM_PROMPT


def extract_hash_answer(text: str) -> str | None:
    """The ground truth after `####` with commas removed, or None when there is no `####`.

    >>> extract_hash_answer("48 / 2 = 24 clips\\n#### 1,024")
    '1024'
    """
    if not isinstance(text, str) or "####" not in text:
        return None
    # Split on the last marker: a worked solution could mention "####" before the final line.
    return text.rsplit("####", 1)[1].strip().replace(",", "")


def prepare_gsm8k(
    records: Iterable[Mapping[str, Any]], system_prompt: str | None = SYSTEM_PROMPT
) -> list[dict[str, Any]]:
    """GSM8K rows (question, answer) as examples with a chat `prompt` and the `answer` ground truth."""
    # Imported here because columns.py imports extract_hash_answer from this module.
    from rlvr.data.columns import prepare_examples

    return prepare_examples(
        records,
        prompt_column="question",
        answer_column="answer",
        system_prompt=system_prompt,
        answer_format="gsm8k",
        where="GSM8K dataset",
    )
