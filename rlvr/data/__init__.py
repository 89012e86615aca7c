"""Datasets for rlvr: load rows, turn them into chat examples, tokenize them with chat templates.

An example is a plain dict: `{"prompt": [system, user messages], "answer": "<ground truth>", ...}`
with the source's other columns kept (reward functions receive them as keyword arguments); SFT
examples also carry `"completion"`, the assistant text to learn.

    rows = load_records("openai/gsm8k", subset="main", split="train")   # or "data.jsonl"
    examples = prepare_gsm8k(rows)                # or prepare_examples(rows, "q", "a")
    train, evals = split_train_eval(2000, 200)    # built-in offline arithmetic task
    ids = encode_prompt(tokenizer, examples[0]["prompt"])
"""

from rlvr.data.arithmetic import arithmetic_problems, split_train_eval
from rlvr.data.columns import ANSWER_FORMATS, prepare_examples
from rlvr.data.gsm8k import extract_hash_answer, prepare_gsm8k
from rlvr.data.loading import load_records
from rlvr.data.prompts import SYSTEM_PROMPT, format_completion, make_system_prompt, to_conversation
from rlvr.data.templates import (
    IGNORE_INDEX,
    encode_prompt,
    encode_sft_example,
    fit_prompt,
    fit_prompts,
    has_chat_template,
    render_plain,
)

__all__ = [
    "ANSWER_FORMATS",
    "IGNORE_INDEX",
    "SYSTEM_PROMPT",
    "arithmetic_problems",
    "encode_prompt",
    "encode_sft_example",
    "extract_hash_answer",
    "fit_prompt",
    "fit_prompts",
    "format_completion",
    "has_chat_template",
    "load_records",
    "make_system_prompt",
    "prepare_examples",
    "prepare_gsm8k",
    "render_plain",
    "split_train_eval",
    "to_conversation",
]
