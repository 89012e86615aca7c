"""The workflow's stages as functions of a RunConfig: data, SFT warm-up, GRPO, evaluation.

The CLI and the demo call these; a Python user can too. Each stage writes into its own run
directory and returns a plain dict.
"""

from __future__ import annotations

import logging
from pathlib import Path

import yaml

from rlvr.config import RunConfig, to_dict
from rlvr.data.build import BUILTIN_TASKS, DEFAULT_BUILTIN_TRAIN, build_datasets, system_prompt_of
from rlvr.evaluation.run import run_eval

log = logging.getLogger("rlvr")

__all__ = ["BUILTIN_TASKS", "DEFAULT_BUILTIN_TRAIN", "build_datasets", "run_eval", "run_grpo", "run_sft",
           "system_prompt_of", "write_config"]


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
