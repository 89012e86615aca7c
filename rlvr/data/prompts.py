"""System prompts and the reasoning/answer tag format that the format rewards check.

The default format is the widely used GSM8K recipe (grpo-semantics §9):

    <reasoning>
    ...
    </reasoning>
    <answer>
    ...
    </answer>

Tag names are parameters so a task can use e.g. `<think>`; the reward functions must be built with
the same names.
"""

from __future__ import annotations


def make_system_prompt(reasoning_tag: str = "reasoning", answer_tag: str = "answer") -> str:
    """The system prompt asking for the reasoning/answer tag format with the given tag names."""
    return (
        "Respond in the following format:\n"
        f"<{reasoning_tag}>\n...\n</{reasoning_tag}>\n"
        f"<{answer_tag}>\n...\n</{answer_tag}>"
    )


SYSTEM_PROMPT = make_system_prompt()


def format_completion(reasoning: str, answer: str, reasoning_tag: str = "reasoning", answer_tag: str = "answer") -> str:
    """An assistant reply in the tag format; it matches the strict-format regex of §9.

    >>> format_completion("2 + 2 = 4", "4")
    '<reasoning>\\n2 + 2 = 4\\n</reasoning>\\n<answer>\\n4\\n</answer>\\n'
    """
    return f"<{reasoning_tag}>\n{reasoning}\n</{reasoning_tag}>\n<{answer_tag}>\n{answer}\n</{answer_tag}>\n"


def to_conversation(question: str, system_prompt: str | None = SYSTEM_PROMPT) -> list[dict[str, str]]:
    """A chat prompt: the system message (left out when `system_prompt` is empty) and the question."""
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    messages.append({"role": "user", "content": question})
    return messages
