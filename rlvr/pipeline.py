"""The workflow's stages as functions of a RunConfig: data, SFT warm-up, GRPO, DPO/CPO/ORPO/KTO, evaluation.

The CLI and the demo call these; a Python user can too. Each stage writes into its own run
directory and returns a plain dict.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import yaml

from rlvr.config import RunConfig, to_dict
from rlvr.data.build import BUILTIN_TASKS, DEFAULT_BUILTIN_TRAIN, build_datasets, system_prompt_of
from rlvr.evaluation.during_training import training_evaluator
from rlvr.evaluation.run import run_eval

log = logging.getLogger("rlvr")

__all__ = ["BUILTIN_TASKS", "DEFAULT_BUILTIN_TRAIN", "build_datasets", "run_eval", "run_grpo", "run_preference",
           "run_sft", "system_prompt_of", "write_config"]


def write_config(cfg: RunConfig, run_dir: str | Path) -> None:
    """The whole resolved config, so a run can be exported or repeated from its folder alone."""
    if os.environ.get("RANK", "0") != "0":  # under torchrun, rank 0 alone writes into the run directory
        return
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    (Path(run_dir) / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))


def run_sft(cfg: RunConfig, model=None, tokenizer=None, train=None, show_progress: bool | None = None,
            resume: str | None = None, force: bool = False, eval_examples=None) -> dict:
    """SFT on `train` (default: the run config's training examples); with train.eval_strategy, evaluated on
    `eval_examples` (default: its held-out problems) during training. So are the stages below."""
    from rlvr.sft import SFTTrainer

    model, tokenizer, train, evals = _training_inputs(cfg, model, tokenizer, train, resume, force, eval_examples)
    trainer = SFTTrainer(model, tokenizer, train, cfg.train, show_progress=show_progress,
                         evaluator=training_evaluator(cfg, tokenizer, evals))
    write_config(cfg, cfg.train.output_dir)  # after the trainer's own checks
    return trainer.train(resume, force)


def run_grpo(cfg: RunConfig, model=None, tokenizer=None, train=None, resume: str | None = None,
             show_progress: bool | None = None, force: bool = False, eval_examples=None) -> dict:
    from rlvr.grpo.trainer import GRPOTrainer

    model, tokenizer, train, evals = _training_inputs(cfg, model, tokenizer, train, resume, force, eval_examples)
    trainer = GRPOTrainer(model, tokenizer, cfg.rewards, train, cfg.train, reasoning_tag=cfg.data.reasoning_tag,
                          answer_tag=cfg.data.answer_tag, show_progress=show_progress,
                          evaluator=training_evaluator(cfg, tokenizer, evals))
    write_config(cfg, cfg.train.output_dir)  # after the trainer's checks (e.g. prompts that cannot fit)
    return trainer.train(resume_from_checkpoint=resume, force=force)


def run_preference(cfg: RunConfig, model=None, tokenizer=None, train=None, show_progress: bool | None = None,
                   resume: str | None = None, force: bool = False, eval_examples=None) -> dict:
    """DPO, CPO/SimPO, ORPO or KTO, by the type of cfg.train (rlvr/preference/config.py)."""
    from rlvr.data.preferences import build_preference_dataset
    from rlvr.preference.config import KTOConfig
    from rlvr.preference.trainer import KTOTrainer, PreferenceTrainer

    unpaired = isinstance(cfg.train, KTOConfig)
    if train is None:
        train = build_preference_dataset(cfg, unpaired)
    model, tokenizer, train, evals = _training_inputs(cfg, model, tokenizer, train, resume, force, eval_examples)
    trainer = (KTOTrainer if unpaired else PreferenceTrainer)(model, tokenizer, train, cfg.train,
                                                               show_progress=show_progress,
                                                               evaluator=training_evaluator(cfg, tokenizer, evals))
    write_config(cfg, cfg.train.output_dir)  # after the trainer's own checks
    return trainer.train(resume, force)


def _training_inputs(cfg: RunConfig, model, tokenizer, train, resume: str | None, force: bool, evals=None):
    """Everything that can be checked without the model first — the run directory (and the checkpoint
    to resume), the model and adapter paths, the data, the rewards — so a bad column or a reward typo fails
    in a second, not after the model has loaded; then the model (its new LoRA seeded by train.seed), the
    optimizer that will really run. Returns (model, tokenizer, train, held-out examples or None)."""
    from rlvr.train.session import check_run_start

    t = cfg.train
    check_run_start(t, resume, force, model_config=to_dict(cfg.model))
    if model is None:
        check_model_paths(cfg)
    if train is None:
        train, built = build_datasets(cfg)
        evals = built if evals is None else evals
    if hasattr(t, "reward_weights"):  # GRPO; SFT has no rewards
        check_rewards(cfg)
    if model is None:
        from rlvr.models import load_model_from_config

        model, tokenizer = load_model_from_config(cfg.model, seed=t.seed)
    resolve_optimizer(cfg, model)
    return model, tokenizer, train, evals


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


