r"""The GSM8K reward set of semantics §9: correctness, integer, strict/soft format and XML count.

The values are part of rlvr's contract. Tag names are configurable through `gsm8k_rewards`; the
module-level functions use `<reasoning>` and `<answer>`. Each function's `__name__` is its registry
name (`correctness`, `int`, ...), which is what metrics call it: `rewards/correctness/mean`.

Where §9 leaves a choice, these functions take it as follows:
- the answer is the stripped text of the last complete `<answer>…</answer>` (see `extract_tag`);
  a completion without one gets 0.0 for correctness and integer;
- the ground truth (column `answer`) is compared as stripped text, after `str()`;
- "all digits" means ASCII 0-9 and at least one of them ("-3" and "4.5" are not integers);
- strict format uses the §9 regex verbatim with `re.match` and DOTALL, so Python's `$` also accepts
  one extra final newline; soft format is anchored at the start (`re.match`) and uses DOTALL too, so
  that multi-line reasoning, which strict format accepts, is not rejected by the softer check;
- xml count charges 0.001 per character after the last closing answer tag, except one newline
  directly after it (the one strict format requires), so a perfectly formatted completion scores 0.5.
"""

from __future__ import annotations

import re
from typing import Any

from rlvr.rewards.text import RewardFunc, check_tag, column, completion_text, extract_tag

_DIGITS = re.compile(r"[0-9]+")


def make_correctness_reward(answer_tag: str = "answer") -> RewardFunc:
    """Build the correctness reward for `answer_tag`: 2.0 when its text equals column `answer`."""
    check_tag(answer_tag, "answer_tag")

    def correctness(prompts, completions, completion_ids=None, **columns) -> list[float | None]:
        """2.0 if the answer-tag text equals the ground truth column `answer`, else 0.0.

        >>> correctness_reward(["q", "q"], ["<answer> 4 </answer>", "<answer>5</answer>"], answer=["4", "4"])
        [2.0, 0.0]
        """
        truths = column(columns, "answer", "correctness")
        answers = [extract_tag(completion_text(c), answer_tag) for c in completions]
        return [2.0 if a is not None and a == str(t).strip() else 0.0 for a, t in zip(answers, truths)]

    return _named(correctness, "correctness")


def make_int_reward(answer_tag: str = "answer") -> RewardFunc:
    """Build the integer reward for `answer_tag`: 0.5 when its text is all digits."""
    check_tag(answer_tag, "answer_tag")

    def int_(prompts, completions, completion_ids=None, **columns) -> list[float | None]:
        """0.5 if the answer-tag text is all digits, else 0.0.

        >>> int_reward(["q", "q", "q"], ["<answer>42</answer>", "<answer>4.2</answer>", "42"])
        [0.5, 0.0, 0.0]
        """
        answers = [extract_tag(completion_text(c), answer_tag) for c in completions]
        return [0.5 if a is not None and _DIGITS.fullmatch(a) else 0.0 for a in answers]

    return _named(int_, "int")


def format_patterns(reasoning_tag: str = "reasoning", answer_tag: str = "answer") -> tuple[re.Pattern, re.Pattern]:
    r"""(strict, soft): the §9 format rules for these tags, both used with `re.match` and DOTALL.

    The one definition of "format" in rlvr: the rewards below and evaluation's format metrics use it.

    >>> strict, soft = format_patterns()
    >>> [bool(strict.match(t)) for t in ("<reasoning>\nr\n</reasoning>\n<answer>\n1\n</answer>\n",
    ...                                   "<reasoning>\nr\n</reasoning>\n<answer>\n1\n</answer>")]
    [True, False]
    """
    r, a = _escaped_tags(reasoning_tag, answer_tag)
    strict = re.compile(rf"^<{r}>\n.*?\n</{r}>\n<{a}>\n.*?\n</{a}>\n$", re.DOTALL)
    soft = re.compile(rf"<{r}>.*?</{r}>\s*<{a}>.*?</{a}>", re.DOTALL)
    return strict, soft


def make_strict_format_reward(reasoning_tag: str = "reasoning", answer_tag: str = "answer") -> RewardFunc:
    """Build the strict format reward: 0.5 when the whole completion has the §9 newline layout."""
    pattern, _ = format_patterns(reasoning_tag, answer_tag)

    def strict_format(prompts, completions, completion_ids=None, **columns) -> list[float | None]:
        r"""0.5 if the completion matches `^<reasoning>\n.*?\n</reasoning>\n<answer>\n.*?\n</answer>\n$`.

        >>> strict_format_reward(["q"], ["<reasoning>\nr\n</reasoning>\n<answer>\n1\n</answer>\n"])
        [0.5]
        >>> strict_format_reward(["q"], ["<reasoning>r</reasoning><answer>1</answer>"])
        [0.0]
        """
        return [0.5 if pattern.match(completion_text(c)) else 0.0 for c in completions]

    return _named(strict_format, "strict_format")


def make_soft_format_reward(reasoning_tag: str = "reasoning", answer_tag: str = "answer") -> RewardFunc:
    """Build the soft format reward: 0.5 when the completion starts with reasoning then answer tags."""
    _, pattern = format_patterns(reasoning_tag, answer_tag)

    def soft_format(prompts, completions, completion_ids=None, **columns) -> list[float | None]:
        r"""0.5 if the completion matches `<reasoning>.*?</reasoning>\s*<answer>.*?</answer>` from its start.

        >>> soft_format_reward(["q", "q"], ["<reasoning>r</reasoning> <answer>1</answer>", "<answer>1"])
        [0.5, 0.0]
        """
        return [0.5 if pattern.match(completion_text(c)) else 0.0 for c in completions]

    return _named(soft_format, "soft_format")


def make_xml_count_reward(reasoning_tag: str = "reasoning", answer_tag: str = "answer") -> RewardFunc:
    """Build the XML count reward: 0.125 per well-placed tag, minus 0.001 per character after the answer."""
    r, a = check_tag(reasoning_tag, "reasoning_tag"), check_tag(answer_tag, "answer_tag")
    pieces = (f"<{r}>\n", f"\n</{r}>\n", f"\n<{a}>\n", f"\n</{a}>")
    closing = f"</{a}>"

    def xml_count(prompts, completions, completion_ids=None, **columns) -> list[float | None]:
        r"""+0.125 for each tag line present exactly once, -0.001 per character after `</answer>`.

        >>> xml_count_reward(["q"], ["<reasoning>\nr\n</reasoning>\n<answer>\n1\n</answer>\n"])
        [0.5]
        >>> xml_count_reward(["q"], ["<reasoning>\nr\n</reasoning>\n<answer>\n1\n</answer>\nBye!"])
        [0.496]
        """
        return [_xml_score(completion_text(c), pieces, closing) for c in completions]

    return _named(xml_count, "xml_count")


def _xml_score(text: str, pieces: tuple[str, ...], closing: str) -> float:
    once = sum(1 for p in pieces if text.count(p) == 1)
    end = text.rfind(closing)
    tail = text[end + len(closing) :] if end >= 0 else ""
    # The newline that strict format requires after the closing tag is not "trailing text".
    if tail.startswith("\n"):
        tail = tail[1:]
    # Rounded so that e.g. 0.5 - 0.004 reads 0.496, not 0.49600000000000005, in logs and doctests.
    return round(0.125 * once - 0.001 * len(tail), 6)


def gsm8k_rewards(reasoning_tag: str = "reasoning", answer_tag: str = "answer") -> list[RewardFunc]:
    """The five §9 rewards for the given tag names, in the order correctness, int, strict_format,
    soft_format, xml_count.

    >>> [f.__name__ for f in gsm8k_rewards("start_working_out", "SOLUTION")]
    ['correctness', 'int', 'strict_format', 'soft_format', 'xml_count']
    """
    return [
        make_correctness_reward(answer_tag),
        make_int_reward(answer_tag),
        make_strict_format_reward(reasoning_tag, answer_tag),
        make_soft_format_reward(reasoning_tag, answer_tag),
        make_xml_count_reward(reasoning_tag, answer_tag),
    ]


def _escaped_tags(reasoning_tag: str, answer_tag: str) -> tuple[str, str]:
    check_tag(reasoning_tag, "reasoning_tag")
    check_tag(answer_tag, "answer_tag")
    return re.escape(reasoning_tag), re.escape(answer_tag)


def _named(fn: Any, name: str) -> RewardFunc:
    # The name is what metrics and error messages show, so it matches the registry name.
    fn.__name__ = name
    fn.__qualname__ = name
    return fn


correctness_reward, int_reward, strict_format_reward, soft_format_reward, xml_count_reward = gsm8k_rewards()
