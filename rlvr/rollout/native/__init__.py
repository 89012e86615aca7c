"""The native rollout backend (`rollout_backend: native`): static KV cache, CUDA-graph decode, training weights."""

from rlvr.rollout.native.engine import NativeEngine

__all__ = ["NativeEngine"]
