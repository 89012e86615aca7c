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


def run_sft(cfg: RunConfig, model=None, tokenizer=None, train=None, show_progress: bool | None = None,
            resume: str | None = None, force: bool = False) -> dict:
    from rlvr.sft import SFTTrainer

    model, tokenizer, train = _training_inputs(cfg, model, tokenizer, train, resume, force)
    return SFTTrainer(model, tokenizer, train, cfg.train, show_progress=show_progress).train(resume, force)


def run_grpo(cfg: RunConfig, model=None, tokenizer=None, train=None, resume: str | None = None,
             show_progress: bool | None = None, force: bool = False) -> dict:
    from rlvr.grpo.trainer import GRPOTrainer

    model, tokenizer, train = _training_inputs(cfg, model, tokenizer, train, resume, force)
    trainer = GRPOTrainer(model, tokenizer, cfg.rewards, train, cfg.train, reasoning_tag=cfg.data.reasoning_tag,
                          answer_tag=cfg.data.answer_tag, show_progress=show_progress)
    return trainer.train(resume_from_checkpoint=resume, force=force)


def _training_inputs(cfg: RunConfig, model, tokenizer, train, resume: str | None, force: bool):
    """The run directory (and the checkpoint to resume) checked, then the data (a bad column fails in a
    second, not after the model has loaded), then the model (its new LoRA seeded by train.seed), then
    config.yaml."""
    from rlvr.models import load_model_from_config
    from rlvr.train.session import check_run_start

    t = cfg.train
    check_run_start(t, resume, force, model_config=to_dict(cfg.model))
    if train is None:
        train, _ = build_datasets(cfg)
    if model is None:
        model, tokenizer = load_model_from_config(cfg.model, seed=t.seed)
    write_config(cfg, t.output_dir)
    return model, tokenizer, train
