"""Over-long prompts are cut inside the question, never in the system prompt or the generation prompt."""

from __future__ import annotations

import logging

import pytest

from rlvr.data import encode_prompt, fit_prompt, fit_prompts, to_conversation
from rlvr.errors import RlvrError


def conversation(question: str):
    return to_conversation(question, "Answer in tags.")


def test_a_prompt_that_fits_is_unchanged(tokenizer):
    prompt = conversation("What is 2 + 3?")
    ids = encode_prompt(tokenizer, prompt)
    assert fit_prompt(tokenizer, prompt, len(ids)) == (ids, 0)
    assert fit_prompt(tokenizer, prompt, None) == (ids, 0)


def test_the_question_loses_its_start_and_the_rest_is_kept(tokenizer):
    # One character is one token with the test tokenizer, so the cut is exact.
    prompt = conversation("0123456789 What is 2 + 3?")
    full = encode_prompt(tokenizer, prompt)
    ids, cut = fit_prompt(tokenizer, prompt, len(full) - 11)
    assert cut == 11
    assert ids == encode_prompt(tokenizer, conversation("What is 2 + 3?"))
    text = tokenizer.decode(ids)
    assert "Answer in tags." in text and text.endswith("<|im_start|>assistant\n")


def test_no_room_for_the_question_is_refused(tokenizer):
    prompt = conversation("What is 2 + 3?")
    frame = len(encode_prompt(tokenizer, conversation("")))
    assert fit_prompt(tokenizer, prompt, frame + 1)[1] == len("What is 2 + 3?") - 1
    with pytest.raises(RlvrError, match="leaving no room for the question within max_prompt_length"):
        fit_prompt(tokenizer, prompt, frame)


def test_a_string_prompt_keeps_its_end(tokenizer):
    ids = encode_prompt(tokenizer, "abcdefgh")
    assert fit_prompt(tokenizer, "abcdefgh", 3) == (ids[-3:], len(ids) - 3)


def test_fit_prompts_counts_and_warns_once(tokenizer, caplog):
    prompts = [conversation("short"), conversation("x" * 40), conversation("y" * 50)]
    limit = len(encode_prompt(tokenizer, conversation("z" * 20)))
    with caplog.at_level(logging.WARNING, logger="rlvr"):
        ids, cut = fit_prompts(tokenizer, prompts, limit)
    assert cut == [0, 20, 30]
    assert all(len(i) <= limit for i in ids) and ids[0] == encode_prompt(tokenizer, prompts[0])
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and warnings[0].startswith("2 of 3 prompts are longer than train.max_prompt_length")


def test_fit_prompts_names_the_row_it_cannot_fit(tokenizer):
    prompts = [conversation("a"), conversation("b" * 30)]
    limit = len(encode_prompt(tokenizer, conversation("a")))
    with pytest.raises(RlvrError, match="^prompt of row 0: the system prompt"):
        fit_prompts(tokenizer, prompts, limit - 1)
