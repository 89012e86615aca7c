"""Supervised warm-up on the assistant's tokens only."""

from rlvr.sft.trainer import SFTTrainer

__all__ = ["SFTTrainer"]
