"""Math answer rewards: a graded numeric-proximity score and a symbolic check with math-verify.

Both read the text inside the answer tag when there is one, and the ground truth from column
`answer`. A ground truth that cannot be read as a number (proximity) or as math (math-verify)
scores None: the function does not apply to that sample, and §2 skips None terms.
"""

from __future__ import annotations

import math
import re
import threading
from typing import Any

from rlvr.errors import RlvrError
from rlvr.rewards.text import RewardFunc, check_tag, column, completion_text, extract_tag

# Plain decimals with optional sign and thousands commas: "-3", "1,234", "0.75", ".5".
_NUMBER = re.compile(r"-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|-?\.\d+")

NO_ANSWER_PENALTY = -0.5  # also the floor that far-off numbers approach


def parse_last_number(text: str) -> float | None:
    """The last plain decimal number in `text` (thousands commas allowed), or None.

    >>> parse_last_number("about 1,234.5 apples, not 7")
    7.0
    >>> parse_last_number("no digits") is None
    True
    """
    matches = _NUMBER.findall(text)
    return float(matches[-1].replace(",", "")) if matches else None


def proximity_score(predicted: float, truth: float, scale: float = 0.2) -> float:
    """1.0 when equal, then -0.5 + 1.5·exp(-e/scale) for relative error e = |p - t| / max(|t|, 1).

    The score crosses 0 at e = scale·ln 3 (about 22% off with the default scale) and tends to -0.5,
    the same as giving no number, so a wild guess never beats an honest near miss.

    >>> proximity_score(72, 72)
    1.0
    >>> round(proximity_score(12, 10), 4)
    0.0518
    """
    if math.isclose(predicted, truth, rel_tol=1e-9, abs_tol=1e-12):
        return 1.0
    error = abs(predicted - truth) / max(abs(truth), 1.0)
    return NO_ANSWER_PENALTY + (1.0 - NO_ANSWER_PENALTY) * math.exp(-error / scale)


def make_numeric_proximity_reward(answer_tag: str = "answer", scale: float = 0.2) -> RewardFunc:
    """Build the numeric proximity reward; `scale` is the relative error at which the bonus falls by 1/e."""
    check_tag(answer_tag, "answer_tag")
    if not scale > 0:
        raise RlvrError(f"numeric_proximity scale is {scale!r}: give a positive relative error such as 0.2")

    def numeric_proximity(prompts, completions, completion_ids=None, **columns) -> list[float | None]:
        """Graded score for the predicted number against `answer`: 1.0 exact, down to -0.5.

        The number is the last one inside the answer tag; without a tag, the last one in the text.
        A tag with no number in it, or no number at all, scores -0.5 (not None: a missing answer
        must not be skipped as if it did not count). An unreadable ground truth scores None.

        >>> numeric_proximity_reward(["q"] * 3, ["<answer>72</answer>", "so 72.", "none"], answer=["72"] * 3)
        [1.0, 1.0, -0.5]
        """
        truths = column(columns, "answer", "numeric_proximity")
        return [_proximity_row(completion_text(c), t, answer_tag, scale) for c, t in zip(completions, truths)]

    numeric_proximity.__name__ = numeric_proximity.__qualname__ = "numeric_proximity"
    return numeric_proximity


def _proximity_row(text: str, truth: Any, answer_tag: str, scale: float) -> float | None:
    target = _number_of(truth)
    if target is None:
        return None
    answer = extract_tag(text, answer_tag)
    predicted = parse_last_number(text if answer is None else answer)
    return NO_ANSWER_PENALTY if predicted is None else proximity_score(predicted, target, scale)


def _number_of(truth: Any) -> float | None:
    if isinstance(truth, (int, float)) and not isinstance(truth, bool):
        return float(truth) if math.isfinite(truth) else None
    return parse_last_number(str(truth))


def make_math_verify_reward(answer_tag: str = "answer") -> RewardFunc:
    """Build the math-verify reward: 1.0 when the answer is mathematically equal to `answer`, else 0.0."""
    check_tag(answer_tag, "answer_tag")

    def math_verify(prompts, completions, completion_ids=None, **columns) -> list[float | None]:
        r"""1.0 if math-verify finds the answer equal to `answer`, else 0.0.

        The answer is the answer-tag text, or the whole text when there is no tag. A ground truth
        that math-verify cannot parse scores None.

        >>> math_verify_reward(["q", "q"], [r"<answer>\frac{1}{2}</answer>", "2"], answer=["0.5", "0.5"])
        [1.0, 0.0]
        """
        truths = column(columns, "answer", "math_verify")
        parse, verify = _math_verify_api()
        # math-verify's timeouts use SIGALRM, which only the main thread may set; elsewhere they
        # would raise, so outside the main thread they are turned off (math-verify's own advice).
        seconds = 5 if threading.current_thread() is threading.main_thread() else None
        scores: list[float | None] = []
        for c, t in zip(completions, truths):
            gold = parse(str(t), parsing_timeout=seconds)
            if not gold:
                scores.append(None)
                continue
            text = completion_text(c)
            answer = extract_tag(text, answer_tag)
            predicted = parse(text if answer is None else answer, parsing_timeout=seconds)
            scores.append(1.0 if verify(gold, predicted, timeout_seconds=seconds) else 0.0)
        return scores

    math_verify.__name__ = math_verify.__qualname__ = "math_verify"
    return math_verify


def _math_verify_api() -> tuple[Any, Any]:
    # Imported on first use: it pulls in sympy and the LaTeX parser, which most runs never need.
    try:
        from math_verify import parse, verify
    except ImportError as e:
        raise RlvrError(
            f"reward 'math_verify' needs the math-verify package ({e}); install it: pip install math-verify"
        ) from e
    return parse, verify


numeric_proximity_reward = make_numeric_proximity_reward()
math_verify_reward = make_math_verify_reward()
