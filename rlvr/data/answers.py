"""Ground-truth extraction of the answer formats (grpo-semantics §9)."""

from __future__ import annotations


def extract_hash_answer(text: str) -> str | None:
    """The ground truth after `####` with commas removed, or None when there is no `####`.

    >>> extract_hash_answer("48 / 2 = 24 clips\\n#### 1,024")
    '1024'
    """
    if not isinstance(text, str) or "####" not in text:
        return None
    # Split on the last marker: a worked solution could mention "####" before the final line.
    return text.rsplit("####", 1)[1].strip().replace(",", "")
