"""Rollout engines: the interface, the transformers.generate reference backend, and the factory."""

import logging

from rlvr.rollout.engine import MemoryPlan, Rollout, RolloutEngine, SamplingParams
from rlvr.rollout.hf import HFEngine


def resolve_backend(backend: str, model) -> str:
    """'auto' is the native engine on CUDA and transformers.generate elsewhere."""
    if backend != "auto":
        return backend
    return "native" if next(model.parameters()).is_cuda else "hf"


def make_engine(backend: str, model, tokenizer, rollout_merge_lora: bool | str | None = None,
                rollout_dtype: str = "auto", **kwargs) -> RolloutEngine:
    """The engine for `rollout_backend`; backends are picked here, not by branches in the trainer."""
    backend = resolve_backend(backend, model)
    if backend == "hf":
        if rollout_dtype != "auto":
            logging.getLogger("rlvr").warning("rollout_dtype %s applies to the native engine only; "
                                              "transformers.generate decodes in the model's dtype", rollout_dtype)
        return HFEngine(model, tokenizer, **kwargs)
    if backend == "native":
        from rlvr.rollout.native import NativeEngine  # imported here: only this backend needs it

        return NativeEngine(model, tokenizer, rollout_merge_lora=rollout_merge_lora, rollout_dtype=rollout_dtype,
                            **kwargs)
    raise ValueError(f"unknown rollout_backend {backend!r}")


__all__ = ["HFEngine", "MemoryPlan", "Rollout", "RolloutEngine", "SamplingParams", "make_engine", "resolve_backend"]
