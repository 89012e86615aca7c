"""Text helpers shared by the reward functions: completion text and tagged answers.

This is the leaf module of `rlvr.rewards`, so the `RewardFunc` type lives here too.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from rlvr.errors import RlvrError

# fn(prompts, completions, completion_ids=None, **columns) -> list[float | None], or a coroutine of
# it for `async def` functions (semantics §7).
RewardFunc = Callable[..., list[float | None] | Awaitable[list[float | None]]]

# Keyword arguments passed to every call as they are, not one value per completion (rewards/inputs.py).
SHARED_ARGUMENTS = ("trainer_state", "log_extra", "log_metric")


def completion_text(completion: Any) -> str:
    """The text of one completion: a plain string, or a conversational list of messages.

    Conversational completions are `[{"role": "assistant", "content": text}]`; when several
    assistant messages are present (tool use) their contents are joined with newlines, and messages
    of other roles (tool results) are left out. Content given as parts keeps only the text parts.

    >>> completion_text("<answer>4</answer>")
    '<answer>4</answer>'
    >>> completion_text([{"role": "assistant", "content": "<answer>4</answer>"}])
    '<answer>4</answer>'
    """
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        completion = [completion]
    if isinstance(completion, (list, tuple)) and all(isinstance(m, dict) for m in completion):
        said = [m for m in completion if m.get("role", "assistant") == "assistant"]
        return "\n".join(_content_text(m.get("content")) for m in said)
    raise RlvrError(
        f"completion {short_repr(completion)} is a {type(completion).__name__}: reward functions take a "
        "string or a list of {'role': 'assistant', 'content': text} messages; check the prompt format"
    )


def _content_text(content: Any) -> str:
    # Multimodal chat templates give content as [{"type": "text", "text": ...}, ...].
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    return str(content)


def extract_tag(text: str, tag: str) -> str | None:
    """The stripped text inside the last complete `<tag>…</tag>`, or None when there is none.

    The last closing tag is paired with the nearest opening tag before it, so a format example
    echoed in the reasoning does not shadow the final answer.

    >>> extract_tag("<answer> 42 </answer>", "answer")
    '42'
    >>> extract_tag("<answer>42", "answer") is None
    True
    """
    opening, closing = f"<{tag}>", f"</{tag}>"
    end = text.rfind(closing)
    if end < 0:
        return None
    start = text.rfind(opening, 0, end)
    if start < 0:
        return None
    return text[start + len(opening) : end].strip()


def check_tag(tag: str, field: str) -> str:
    """Return `tag` if it is a usable bare tag name, else raise a one-line RlvrError naming `field`."""
    if not isinstance(tag, str) or not tag.strip():
        raise RlvrError(f"{field} is {tag!r}: give a non-empty tag name such as 'answer'")
    if "<" in tag or ">" in tag or "/" in tag:
        bare = tag.strip("</>")
        raise RlvrError(f"{field} is {tag!r}: give the bare tag name without brackets, e.g. {bare!r}")
    return tag


def column(columns: dict[str, Any], name: str, reward: str) -> list[Any]:
    """The per-completion values of dataset column `name`, or a one-line RlvrError saying it is missing."""
    if name not in columns:
        have = ", ".join(sorted(k for k in columns if k not in SHARED_ARGUMENTS)) or "none"
        raise RlvrError(
            f"reward '{reward}' needs a dataset column '{name}' (columns given: {have}); "
            "add or rename the column in the dataset config"
        )
    return columns[name]


def short_repr(value: Any, limit: int = 80) -> str:
    """repr(value) on one line, cut to `limit` characters for error messages."""
    text = repr(value).replace("\n", "\\n")  # some reprs (tensors, objects) span lines
    return text if len(text) <= limit else text[: limit - 1] + "…"


def describe_error(error: BaseException, limit: int = 200) -> str:
    """'TypeName: first line of the message', cut to `limit` characters, for one-line errors."""
    lines = str(error).strip().splitlines()
    text = f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"
