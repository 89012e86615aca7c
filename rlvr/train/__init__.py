"""Pieces the SFT and GRPO trainers share: optimizer, schedule, checkpoints, run directory, logging."""
