"""The workflow's stages as functions of a RunConfig: data, SFT warm-up, GRPO, evaluation.

The CLI and the demo call these; a Python user can too. Each stage writes into its own run
directory and returns a plain dict.
"""

from __future__ import annotations

import logging
import os
import sys
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


def check_output_dir(path: str | Path) -> None:
    """Refuse an output_dir that is a file (or lies under one) before anything loads."""
    path = Path(path)
    for folder in (path, *path.parents):
        if folder.exists():
            if not folder.is_dir():
                where = "is" if folder == path else f"lies under {folder}, which is"
                raise RlvrError(f"train.output_dir {path} {where} an existing file, not a folder; choose "
                                "another --output-dir")
            return


def check_model_paths(cfg: RunConfig) -> None:
    """A missing or wrong model path or adapter folder is refused before the data and the model load."""
    from rlvr.models.adapter_checks import read_adapter_config
    from rlvr.models.loading import resolve_source

    resolve_source(cfg.model.model_name_or_path, cfg.model.gguf_file)
    if cfg.model.adapter_path:
        read_adapter_config(cfg.model.adapter_path)


def check_rewards(cfg: RunConfig) -> None:
    """Import the rewards now (a typo in 'module:function' or 'file.py:function' costs a second, not a model load)."""
    from rlvr.rewards.registry import resolve_rewards

    resolve_rewards(cfg.rewards, reasoning_tag=cfg.data.reasoning_tag, answer_tag=cfg.data.answer_tag)


def resolve_optimizer(cfg: RunConfig, model) -> None:
    """Set train.optim to the optimizer that will run (the 8-bit ones fall back to adamw_torch without
    bitsandbytes on CUDA, with a warning), so config.yaml and run.json record it."""
    from rlvr.train.optim import resolve_optim

    cfg.train.optim = resolve_optim(cfg.train.optim, next(model.parameters()).is_cuda)


def load_model_with_status(cfg: RunConfig):
    """load_model_from_config with a line before and after on stderr: a large model takes minutes."""
    import time

    from rlvr.models import load_model_from_config

    m = cfg.model
    adapter = f" with the adapter {m.adapter_path}" if m.adapter_path else ""
    announce(f"loading {m.model_name_or_path}{adapter} ...")
    start = time.perf_counter()
    model, tokenizer = load_model_from_config(m)
    device = next(model.parameters()).device
    announce(f"model loaded in {time.perf_counter() - start:.1f} s on {device}")
    return model, tokenizer


def announce(message: str) -> None:
    """One status line on stderr; RLVR_NO_PROGRESS silences it as it does the progress bars."""
    if os.environ.get("RLVR_NO_PROGRESS") is None:
        print(f"rlvr: {message}", file=sys.stderr, flush=True)


def run_sft(cfg: RunConfig, model=None, tokenizer=None, train=None, show_progress: bool | None = None) -> dict:
    from rlvr.sft import SFTTrainer

    # Everything that can be checked without the model first: a bad column fails in a second.
    if model is None:
        check_model_paths(cfg)
    if train is None:
        train, _ = build_datasets(cfg)
    check_output_dir(cfg.train.output_dir)
    if model is None:
        model, tokenizer = load_model_with_status(cfg)
    resolve_optimizer(cfg, model)
    trainer = SFTTrainer(model, tokenizer, train, cfg.train, show_progress=show_progress)
    write_config(cfg, cfg.train.output_dir)
    return trainer.train()


def run_grpo(cfg: RunConfig, model=None, tokenizer=None, train=None, resume: str | None = None,
             show_progress: bool | None = None) -> dict:
    from rlvr.grpo.trainer import GRPOTrainer

    # Everything that can be checked without the model first: a bad column or reward fails in a second.
    if model is None:
        check_model_paths(cfg)
    if train is None:
        train, _ = build_datasets(cfg)
    check_rewards(cfg)
    check_output_dir(cfg.train.output_dir)
    if model is None:
        model, tokenizer = load_model_with_status(cfg)
    resolve_optimizer(cfg, model)
    trainer = GRPOTrainer(model, tokenizer, cfg.rewards, train, cfg.train, reasoning_tag=cfg.data.reasoning_tag,
                          answer_tag=cfg.data.answer_tag, show_progress=show_progress)
    write_config(cfg, cfg.train.output_dir)  # after the trainer's checks (e.g. prompts that cannot fit)
    return trainer.train(resume_from_checkpoint=resume)


def run_eval(cfg: RunConfig, model=None, tokenizer=None, examples=None, desc: str = "eval") -> dict:
    from rlvr.evaluation import evaluate
    from rlvr.rewards.registry import resolve_rewards

    if model is None:
        check_model_paths(cfg)
    if examples is None:
        _, examples = build_datasets(cfg)
    if not examples:
        raise RlvrError("no evaluation examples: set data.eval_size > 0 or data.eval_dataset")
    funcs = resolve_rewards(cfg.rewards, reasoning_tag=cfg.data.reasoning_tag, answer_tag=cfg.data.answer_tag)
    if model is None:
        model, tokenizer = load_model_with_status(cfg)
    from rlvr.rollout import make_engine

    engine = make_engine(cfg.eval.rollout_backend, model, tokenizer, batch_size=cfg.eval.batch_size)
    return evaluate(model, tokenizer, examples, cfg.eval, reward_funcs=funcs, engine=engine,
                    reasoning_tag=cfg.data.reasoning_tag, answer_tag=cfg.data.answer_tag, desc=desc)
