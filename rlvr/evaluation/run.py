"""Evaluation as a stage of a run config: its held-out examples, model, rewards and engine."""

from __future__ import annotations

from rlvr.config import RunConfig
from rlvr.data.build import build_datasets
from rlvr.errors import RlvrError


def run_eval(cfg: RunConfig, model=None, tokenizer=None, examples=None, desc: str = "eval") -> dict:
    from rlvr.evaluation.evaluate import evaluate
    from rlvr.models import load_model_from_config

    if examples is None:
        _, examples = build_datasets(cfg)
    if not examples:
        raise RlvrError("no evaluation examples: set data.eval_size > 0 or data.eval_dataset")
    if model is None:
        model, tokenizer = load_model_from_config(cfg.model)
    return evaluate(model, tokenizer, examples, cfg.eval, engine=eval_engine(cfg, model, tokenizer),
                    desc=desc, **eval_scoring(cfg))


def eval_engine(cfg: RunConfig, model, tokenizer):
    """The rollout engine evaluations of this run config decode with (eval.rollout_backend, eval.batch_size)."""
    from rlvr.rollout import make_engine

    return make_engine(cfg.eval.rollout_backend, model, tokenizer, batch_size=cfg.eval.batch_size)


def eval_scoring(cfg: RunConfig) -> dict:
    """evaluate()'s scoring arguments: the run's reward functions and tags, weighed as training weighs them
    (GRPOConfig.reward_weights; an SFT or preference config has none)."""
    from rlvr.rewards.registry import resolve_rewards

    funcs = resolve_rewards(cfg.rewards, reasoning_tag=cfg.data.reasoning_tag, answer_tag=cfg.data.answer_tag)
    return {"reward_funcs": funcs, "reasoning_tag": cfg.data.reasoning_tag, "answer_tag": cfg.data.answer_tag,
            "reward_weights": getattr(cfg.train, "reward_weights", None)}
