"""The workflow's stages as functions of a RunConfig: data, SFT warm-up, GRPO, evaluation.

The CLI and the demo call these; a Python user can too. Each stage writes into its own run
directory and returns a plain dict.
"""

from __future__ import annotations

import logging
from pathlib import Path

import yaml

from rlvr.config import RunConfig, to_dict
from rlvr.data import (
    extract_hash_answer,
    format_completion,
    load_records,
    make_system_prompt,
    prepare_examples,
    split_train_eval,
)
from rlvr.errors import RlvrError, nearest

log = logging.getLogger("rlvr")

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


def write_config(cfg: RunConfig, run_dir: str | Path) -> None:
    """The whole resolved config, so a run can be exported or repeated from its folder alone."""
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    (Path(run_dir) / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))


def run_sft(cfg: RunConfig, model=None, tokenizer=None, train=None, show_progress: bool | None = None) -> dict:
    from rlvr.models import load_model_from_config
    from rlvr.sft import SFTTrainer

    # Data first: a bad column should fail in a second, not after the model has loaded.
    if train is None:
        train, _ = build_datasets(cfg)
    if model is None:
        model, tokenizer = load_model_from_config(cfg.model)
    write_config(cfg, cfg.train.output_dir)
    return SFTTrainer(model, tokenizer, train, cfg.train, show_progress=show_progress).train()


def run_grpo(cfg: RunConfig, model=None, tokenizer=None, train=None, resume: str | None = None,
             show_progress: bool | None = None) -> dict:
    from rlvr.grpo.trainer import GRPOTrainer
    from rlvr.models import load_model_from_config

    # Data first: a bad column should fail in a second, not after the model has loaded.
    if train is None:
        train, _ = build_datasets(cfg)
    if model is None:
        model, tokenizer = load_model_from_config(cfg.model)
    write_config(cfg, cfg.train.output_dir)
    trainer = GRPOTrainer(model, tokenizer, cfg.rewards, train, cfg.train, reasoning_tag=cfg.data.reasoning_tag,
                          answer_tag=cfg.data.answer_tag, show_progress=show_progress)
    return trainer.train(resume_from_checkpoint=resume)


def run_eval(cfg: RunConfig, model=None, tokenizer=None, examples=None, desc: str = "eval") -> dict:
    from rlvr.evaluation import evaluate
    from rlvr.models import load_model_from_config
    from rlvr.rewards.registry import resolve_rewards

    if examples is None:
        _, examples = build_datasets(cfg)
    if not examples:
        raise RlvrError("no evaluation examples: set data.eval_size > 0 or data.eval_dataset")
    if model is None:
        model, tokenizer = load_model_from_config(cfg.model)
    from rlvr.rollout import make_engine

    funcs = resolve_rewards(cfg.rewards, reasoning_tag=cfg.data.reasoning_tag, answer_tag=cfg.data.answer_tag)
    engine = make_engine(cfg.eval.rollout_backend, model, tokenizer, batch_size=cfg.eval.batch_size)
    # Weighed as training weighs them (GRPOConfig.reward_weights; an SFT config has none).
    return evaluate(model, tokenizer, examples, cfg.eval, reward_funcs=funcs, engine=engine,
                    reasoning_tag=cfg.data.reasoning_tag, answer_tag=cfg.data.answer_tag, desc=desc,
                    reward_weights=getattr(cfg.train, "reward_weights", None))
