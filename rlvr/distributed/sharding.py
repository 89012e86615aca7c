"""How a round and an optimizer step are divided between ranks: pure index arithmetic.

The schedule is global, as in TRL: a round holds generation_batch_size =
per_device_train_batch_size × world_size × steps_per_generation completions; rank r *generates*
the contiguous block r of the round's completion slots, and after the round's tensors are gathered
every rank holds the whole round. The round is shuffled and cut into micro-batches of
per_device_train_batch_size exactly as one process would; an optimizer step takes the next
gradient_accumulation_steps × world_size micro-batches and rank r trains on the r-th run of
gradient_accumulation_steps of them. So a step is made of the same micro-batches whatever the world
size, and N ranks × GA k takes the same optimizer step as 1 rank × GA N·k (every loss type,
bnpo included).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

from rlvr.errors import RlvrError

T = TypeVar("T")
_SEED_MIX = 0x9E3779B97F4A7C15  # 2^64 / golden ratio: spreads rank seeds apart
_SEED_MASK = 2**63 - 1


def rank_seed(seed: int, rank: int) -> int:
    """The seed rank `rank` uses for what it draws alone (its rollout's sampling).

    Rank 0 keeps `seed`, so a one-process torchrun run draws exactly what the plain run draws;
    the other ranks' seeds are fixed functions of (seed, rank), so a run is reproducible at a
    given world size.
    """
    if rank == 0:
        return seed
    return (seed ^ (rank * _SEED_MIX)) & _SEED_MASK


def check_generation_batch(generation_batch_size: int, per_device_train_batch_size: int, world_size: int) -> None:
    """Every rank generates, and trains on, whole micro-batches of the round."""
    per_step = per_device_train_batch_size * world_size
    if generation_batch_size % per_step:
        raise RlvrError(
            f"train.generation_batch_size ({generation_batch_size}) is not a multiple of "
            f"per_device_train_batch_size × world size ({per_device_train_batch_size} × {world_size} = {per_step}); "
            "set steps_per_generation instead (generation_batch_size = per_device_train_batch_size × world size × "
            "steps_per_generation) or change the number of processes")


def completion_slots(num_completions: int, world_size: int, rank: int) -> range:
    """The round's completion slots rank `rank` generates (slot i belongs to prompt i // G)."""
    if num_completions % world_size:
        raise RlvrError(f"a round of {num_completions} completions does not split evenly over {world_size} "
                        "processes; make generation_batch_size a multiple of the number of processes")
    share = num_completions // world_size
    return range(rank * share, (rank + 1) * share)


def rollout_request(slots: range, num_generations: int) -> tuple[list[int], int]:
    """(prompt positions in the round, completions per prompt) that fill exactly `slots`.

    When the block starts and ends on group boundaries the rank asks for its whole groups
    (G per prompt); otherwise a group straddles two ranks and each asks for its part one row per
    slot (the prompt repeated, 1 completion each). Advantages are computed after the gather, over
    whole groups, so the split changes nothing in the loss.
    """
    if slots.start % num_generations == 0 and slots.stop % num_generations == 0:
        return list(range(slots.start // num_generations, slots.stop // num_generations)), num_generations
    return [slot // num_generations for slot in slots], 1


def rank_micro_batches(step_micro_batches: Sequence[T], gradient_accumulation_steps: int, world_size: int,
                       rank: int) -> list[T]:
    """This rank's share of one optimizer step's gradient_accumulation_steps × world_size micro-batches."""
    expected = gradient_accumulation_steps * world_size
    if len(step_micro_batches) != expected:
        raise ValueError(f"a step has {len(step_micro_batches)} micro-batches, expected "
                         f"gradient_accumulation_steps × world_size = {expected}")
    return list(step_micro_batches[rank * gradient_accumulation_steps:(rank + 1) * gradient_accumulation_steps])
