"""Tokenize prompts and SFT examples with the model's chat template.

Prompts become the ids the rollout engine continues from (chat template with the generation
prompt). SFT examples become (input_ids, labels) with labels on the assistant's reply and the
end-of-turn token only, so the warm-up teaches the answer format and when to stop, not the prompt.
A tokenizer without a chat template gets a plain "system\\n\\nuser\\n\\nAssistant:" rendering.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from rlvr.errors import RlvrError

log = logging.getLogger("rlvr")

IGNORE_INDEX = -100  # label value that torch's cross-entropy skips
ASSISTANT_PREFIX = "Assistant:\n"  # generation prompt of the plain rendering

Prompt = str | Sequence[Mapping[str, Any]]


def has_chat_template(tokenizer: Any) -> bool:
    """Whether the tokenizer carries a chat template (base models often do not)."""
    return bool(getattr(tokenizer, "chat_template", None))


def render_plain(messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True) -> str:
    """A template-free rendering: message contents separated by blank lines, replies marked
    "Assistant:", used when the tokenizer has no chat template."""
    parts = [f"{ASSISTANT_PREFIX}{m['content']}" if m["role"] == "assistant" else str(m["content"]) for m in messages]
    if add_generation_prompt:
        parts.append(ASSISTANT_PREFIX)
    return "\n\n".join(parts)


def encode_prompt(tokenizer: Any, prompt: Prompt) -> list[int]:
    """Token ids of a prompt, ready for generation.

    A message list goes through the chat template with the generation prompt (or `render_plain`
    without a template); a plain string is tokenized as is, with the tokenizer's special tokens.
    """
    if isinstance(prompt, str):
        return list(tokenizer(prompt).input_ids)
    messages = [dict(m) for m in prompt]
    if has_chat_template(tokenizer):
        return _as_ids(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True))
    return list(tokenizer(render_plain(messages)).input_ids)


def fit_prompt(tokenizer: Any, prompt: Prompt, max_length: int | None) -> tuple[list[int], int]:
    """(ids, tokens cut) of a prompt within `max_length` tokens, cutting inside the question only.

    A message list keeps its system prompt and the generation prompt whole; the last user message
    loses tokens from its start (the question's ask is usually at its end) until the rendered prompt
    fits. A plain string keeps its last `max_length` tokens. RlvrError when the rest of the prompt
    alone leaves no room for a single token of the question.
    """
    ids = encode_prompt(tokenizer, prompt)
    if max_length is None or len(ids) <= max_length:
        return ids, 0
    if isinstance(prompt, str):
        return ids[-max_length:], len(ids) - max_length
    messages = [dict(m) for m in prompt]
    users = [i for i, m in enumerate(messages) if m["role"] == "user"]
    if not users:
        raise RlvrError(f"a prompt of {len(ids)} tokens has no user message to shorten to max_prompt_length "
                        f"{max_length}; raise train.max_prompt_length")
    question = users[-1]
    question_ids = list(tokenizer(str(messages[question]["content"]), add_special_tokens=False).input_ids)
    frame = len(encode_prompt(tokenizer, _with_content(messages, question, "")))
    keep = max_length - frame
    while keep >= 1:
        text = tokenizer.decode(question_ids[-keep:], skip_special_tokens=False, clean_up_tokenization_spaces=False)
        ids = encode_prompt(tokenizer, _with_content(messages, question, text))
        if len(ids) <= max_length:
            return ids, len(question_ids) - keep
        keep -= len(ids) - max_length  # tokens merged differently at the cut: drop the excess and retry
    raise RlvrError(f"the system prompt and chat template take {frame} tokens, leaving no room for the question "
                    f"within max_prompt_length {max_length}; raise train.max_prompt_length or shorten "
                    "data.system_prompt")


def fit_prompts(tokenizer: Any, prompts: Sequence[Prompt], max_length: int | None,
                setting: str = "train.max_prompt_length") -> tuple[list[list[int]], list[int]]:
    """`fit_prompt` over a dataset: (ids per prompt, tokens cut per prompt), and one warning line
    saying how many prompts were cut, so nothing is shortened without a word."""
    ids, cut = [], []
    for row, prompt in enumerate(prompts):
        try:
            one, n = fit_prompt(tokenizer, prompt, max_length)
        except RlvrError as e:
            raise RlvrError(f"prompt of row {row}: {e}") from None
        ids.append(one)
        cut.append(n)
    shortened = sum(n > 0 for n in cut)
    if shortened:
        log.warning("%d of %d prompts are longer than %s (%d tokens): their questions were cut from the start "
                    "(%d tokens in all; system prompt and generation prompt kept); raise %s to keep them whole",
                    shortened, len(cut), setting, max_length, sum(cut), setting)
    return ids, cut


def _with_content(messages: list[dict[str, Any]], index: int, content: str) -> list[dict[str, Any]]:
    return [{**m, "content": content} if i == index else m for i, m in enumerate(messages)]


def encode_sft_example(
    tokenizer: Any, prompt: Prompt, completion: str, max_length: int | None = None
) -> tuple[list[int], list[int]]:
    """(input_ids, labels) for SFT on the assistant's reply only.

    labels are IGNORE_INDEX on the prompt, and the token ids on the completion and the end-of-turn
    token after it (e.g. `<|im_end|>`). Both lists are cut to `max_length`; a row whose prompt
    fills `max_length` has no labelled tokens, and callers should drop it.
    """
    prompt_ids = encode_prompt(tokenizer, prompt)
    reply_ids = None
    if not isinstance(prompt, str) and has_chat_template(tokenizer):
        reply_ids = _templated_reply(tokenizer, prompt, prompt_ids, completion)
    if reply_ids is None:
        reply_ids = _plain_reply(tokenizer, completion)
    input_ids = prompt_ids + reply_ids
    labels = [IGNORE_INDEX] * len(prompt_ids) + reply_ids
    if max_length is not None:
        input_ids, labels = input_ids[:max_length], labels[:max_length]
    return input_ids, labels


def _as_ids(result: Any) -> list[int]:
    # transformers 5 returns a BatchEncoding from apply_chat_template by default; 4.x a list.
    if isinstance(result, Mapping):
        result = result["input_ids"]
    if hasattr(result, "tolist"):
        result = result.tolist()
    if result and isinstance(result[0], list):
        result = result[0]
    return list(result)


def _plain_reply(tokenizer: Any, completion: str) -> list[int]:
    ids = list(tokenizer(completion, add_special_tokens=False).input_ids)
    if tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
    return ids


def _templated_reply(
    tokenizer: Any, prompt: Sequence[Mapping[str, Any]], prompt_ids: list[int], completion: str
) -> list[int] | None:
    """The reply's ids as the chat template renders them, through the end-of-turn token.

    None when the templated conversation does not start with the prompt's ids (a template that
    renders earlier turns differently once a reply follows, or a token merge across the boundary).
    """
    messages = [dict(m) for m in prompt] + [{"role": "assistant", "content": completion}]
    full = _as_ids(tokenizer.apply_chat_template(messages, add_generation_prompt=False, tokenize=True))
    if full[: len(prompt_ids)] != prompt_ids:
        return None
    tail = full[len(prompt_ids) :]
    # Look for the reply as given first; templates that trim it are matched on the stripped text.
    end = _reply_end(tokenizer, tail, completion)
    if end is None:
        end = _reply_end(tokenizer, tail, completion.strip())
    if end is None:
        return tail  # the template rewrote the reply text: train on the whole rendered turn
    return tail[: _end_of_turn(tokenizer, tail, end)]


def _reply_end(tokenizer: Any, tail: list[int], text: str) -> int | None:
    """The fewest leading tokens of `tail` whose decoding contains `text`, or None if none do."""

    def covers(k: int) -> bool:
        return text in _decode(tokenizer, tail[:k])

    if not text:
        return 0
    if not covers(len(tail)):
        return None
    # Containment only grows with k, so bisect instead of decoding every prefix.
    lo, hi = 1, len(tail)
    while lo < hi:
        mid = (lo + hi) // 2
        if covers(mid):
            hi = mid
        else:
            lo = mid + 1
    return lo


def _end_of_turn(tokenizer: Any, tail: list[int], end: int) -> int:
    """`end` moved past the end-of-turn token that follows the reply, so the model learns to stop.

    Whitespace the template puts between a trimmed reply and that token is included with it;
    without a special token there, the reply ends at `end`.
    """
    for k in range(end, len(tail)):
        if _is_special(tokenizer, tail[k]):
            return k + 1
        if _decode(tokenizer, [tail[k]]).strip():
            break
    return end


def _decode(tokenizer: Any, ids: list[int]) -> str:
    return tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)


def _is_special(tokenizer: Any, token_id: int) -> bool:
    if token_id in set(tokenizer.all_special_ids):
        return True
    added = getattr(tokenizer, "added_tokens_decoder", {}).get(token_id)
    return bool(added is not None and getattr(added, "special", False))


def pad_batch(rows: list[tuple[list[int], list[int]]], pad_id: int) -> tuple[torch.Tensor, ...]:
    """Right-pad (input_ids, labels) pairs: (input_ids, attention_mask, labels), each [B, T]."""
    width = max(len(ids) for ids, _ in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (x, y) in enumerate(rows):
        ids[i, :len(x)] = torch.tensor(x)
        labels[i, :len(y)] = torch.tensor(y)
        mask[i, :len(x)] = 1
    return ids, mask, labels
