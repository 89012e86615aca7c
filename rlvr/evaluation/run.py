"""Evaluation as a stage of a run config: its held-out examples, model, rewards and engine."""

from __future__ import annotations

from rlvr.config import RunConfig
from rlvr.data.build import build_datasets
from rlvr.errors import RlvrError


def eval_rewards(cfg: RunConfig) -> tuple[list, list[float] | None]:
    """(reward functions, weights) as training weighs them (the train section's reward_weights; an SFT
    config has none), checked before any model loads: a typo costs a second, not a load."""
    from rlvr.rewards.registry import resolve_rewards
    from rlvr.rewards.scoring import check_reward_weights

    funcs = resolve_rewards(cfg.rewards, reasoning_tag=cfg.data.reasoning_tag, answer_tag=cfg.data.answer_tag)
    weights = getattr(cfg.train, "reward_weights", None)
    check_reward_weights(weights, funcs)
    return funcs, weights


def run_eval(cfg: RunConfig, model=None, tokenizer=None, examples=None, desc: str = "eval") -> dict:
    from rlvr.evaluation.evaluate import evaluate
    from rlvr.models import load_model_from_config

    if examples is None:
        _, examples = build_datasets(cfg)
    if not examples:
        raise RlvrError("no evaluation examples: set data.eval_size > 0 or data.eval_dataset")
    funcs, weights = eval_rewards(cfg)
    if model is None:
        model, tokenizer = load_model_from_config(cfg.model)
    return evaluate(model, tokenizer, examples, cfg.eval, engine=eval_engine(cfg, model, tokenizer),
                    desc=desc, **eval_scoring(cfg, funcs, weights))


def eval_engine(cfg: RunConfig, model, tokenizer):
    """The rollout engine evaluations of this run config decode with (eval.rollout_backend, eval.batch_size)."""
    from rlvr.rollout import make_engine

    return make_engine(cfg.eval.rollout_backend, model, tokenizer, batch_size=cfg.eval.batch_size)


def eval_scoring(cfg: RunConfig, funcs=None, weights=None) -> dict:
    """evaluate()'s scoring arguments: the run's reward functions and tags, weighed as training weighs them
    (`eval_rewards`; pass its result when already checked)."""
    if funcs is None:
        funcs, weights = eval_rewards(cfg)
    return {"reward_funcs": funcs, "reasoning_tag": cfg.data.reasoning_tag, "answer_tag": cfg.data.answer_tag,
            "reward_weights": weights}
