"""The (train, eval) examples of a run config: built-in task, or a dataset file / hub set."""

from __future__ import annotations

from rlvr.config import RunConfig
from rlvr.data.answers import extract_hash_answer
from rlvr.data.arithmetic import split_train_eval
from rlvr.data.columns import prepare_examples
from rlvr.data.loading import load_records
from rlvr.data.prompts import format_completion, make_system_prompt
from rlvr.errors import RlvrError, nearest

BUILTIN_TASKS = ("arithmetic",)
DEFAULT_BUILTIN_TRAIN = 1000


def system_prompt_of(cfg: RunConfig) -> str:
    d = cfg.data
    return d.system_prompt if d.system_prompt is not None else make_system_prompt(d.reasoning_tag, d.answer_tag)


def build_datasets(cfg: RunConfig) -> tuple[list[dict], list[dict]]:
    """(train, eval) examples; eval is held out from train."""
    d = cfg.data
    system_prompt = system_prompt_of(cfg)
    if d.dataset.startswith("builtin:"):
        task = d.dataset.split(":", 1)[1]
        if task not in BUILTIN_TASKS:
            raise RlvrError(f"data.dataset: unknown built-in task '{task}'{nearest(task, BUILTIN_TASKS)}; "
                            f"built-in tasks: {', '.join('builtin:' + t for t in BUILTIN_TASKS)}")
        return split_train_eval(d.limit or DEFAULT_BUILTIN_TRAIN, d.eval_size, seed=d.seed,
                                system_prompt=system_prompt, reasoning_tag=d.reasoning_tag,
                                answer_tag=d.answer_tag)
    examples = _prepare(load_records(d.dataset, d.split, d.subset), cfg, system_prompt, d.dataset)
    if d.eval_dataset:
        evals = _prepare(load_records(d.eval_dataset, d.split, d.subset), cfg, system_prompt, d.eval_dataset)
        evals = evals[:d.eval_size] if d.eval_size else evals
        train = examples
    elif d.eval_size and len(examples) > d.eval_size:
        train, evals = examples[:-d.eval_size], examples[-d.eval_size:]
    else:
        train, evals = examples, []
    if d.limit:
        train = train[:d.limit]
    return train, evals


def _prepare(records: list[dict], cfg: RunConfig, system_prompt: str, where: str) -> list[dict]:
    d = cfg.data
    examples = prepare_examples(records, d.prompt_column, d.answer_column, system_prompt, d.answer_format,
                                where=where, completion_column=d.completion_column)
    if d.completion_column is None and d.answer_format == "gsm8k":
        # GSM8K's answer field is a worked solution: it becomes the SFT target in the tag format.
        for ex, row in zip(examples, records):
            reasoning = str(row[d.answer_column]).split("####")[0].strip()
            ex["completion"] = format_completion(reasoning, extract_hash_answer(str(row[d.answer_column])) or "",
                                                 d.reasoning_tag, d.answer_tag)
    return examples
