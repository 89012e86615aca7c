"""Rollout engines: the interface, the transformers.generate reference backend, and the factory."""

from rlvr.rollout.engine import Rollout, RolloutEngine, SamplingParams
from rlvr.rollout.hf import HFEngine


def make_engine(backend: str, model, tokenizer, **kwargs) -> RolloutEngine:
    """The engine for `rollout_backend`; backends are picked here, not by branches in the trainer."""
    if backend == "hf":
        return HFEngine(model, tokenizer, **kwargs)
    raise ValueError(f"unknown rollout_backend {backend!r}")


__all__ = ["HFEngine", "Rollout", "RolloutEngine", "SamplingParams", "make_engine"]
