"""The optimizer step every trainer shares: accumulate micro-batches, unscale, clip, skip what is not
finite, step, schedule; out of memory, retry once with every micro-batch halved.

A trainer supplies the work of one micro-batch (forward, loss, backward) as a function; this module
owns everything around it, so SFT, GRPO and the preference trainers to come behave the same on a
NaN, an fp16 overflow or an OOM.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from rlvr.distributed.collectives import all_reduce_sum
from rlvr.distributed.context import DistContext
from rlvr.distributed.parallel import clip_grad_norm, sync_gradients
from rlvr.errors import RlvrError
from rlvr.train.optim import build_optimizer, build_scheduler, grad_scaler, trainable_parameters

log = logging.getLogger("rlvr")


@dataclass(frozen=True)
class StepCounts:
    """What an optimizer step's loss is normalised by: its sequences and loss tokens, all micro-batches."""

    num_sequences: int
    num_tokens: int
    num_micro_batches: int


def step_counts(per_micro_batch: Sequence[tuple[int, int]], dist: DistContext | None = None) -> StepCounts:
    """The step's (sequences, tokens) summed over its micro-batches, and over all ranks.

    The one place the normalisers of a step are computed: a data-parallel run all-reduces these sums
    here, so every rank divides by the global counts (semantics §5: S is all micro-batches, all ranks).
    """
    local = [sum(s for s, _ in per_micro_batch), sum(t for _, t in per_micro_batch), len(per_micro_batch)]
    sequences, tokens, micro_batches = (int(v) for v in all_reduce_sum(local, dist or DistContext()))
    return StepCounts(num_sequences=sequences, num_tokens=tokens, num_micro_batches=micro_batches)


def peak_memory_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux reports KiB


def free_accelerator_memory() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


class OptimizerUpdate:
    """Optimizer, schedule, loss scaler and the step's fault handling for the trainable parameters.

    `args` has TRL's names: optim, learning_rate, adam_beta1/2, adam_epsilon, weight_decay,
    lr_scheduler_type, warmup_ratio, max_grad_norm, max_nonfinite_steps. `on_oom` runs after an out
    of memory, before the retry (e.g. to drop the activation offloader's pinned slots).
    """

    def __init__(self, model: torch.nn.Module, args, total_steps: int, device: torch.device,
                 on_oom: Callable[[], None] | None = None, dist: DistContext | None = None):
        self.model, self.device, self.on_oom = model, device, on_oom
        self.dist = dist or DistContext(device=device)
        self.max_grad_norm, self.max_nonfinite_steps = args.max_grad_norm, args.max_nonfinite_steps
        self.optimizer = build_optimizer(trainable_parameters(model), args.optim, args.learning_rate,
                                         (args.adam_beta1, args.adam_beta2), args.adam_epsilon, args.weight_decay)
        self.scheduler = build_scheduler(self.optimizer, args.lr_scheduler_type, args.warmup_ratio, total_steps)
        self.scaler = grad_scaler(model, device)
        self.nonfinite_steps = self.nonfinite_in_a_row = self.amp_overflow_steps = 0

    def backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def run(self, accumulate: Callable[[list], dict], micro_batches: list, halve: Callable[[object], list],
            step: int) -> dict:
        """accumulate(micro_batches) runs forward and backward over them and returns metric sums with
        'loss'; then one optimizer step. Out of memory, retried once with halve() applied to each."""
        try:
            sums = accumulate(micro_batches)
        except torch.OutOfMemoryError:
            self._drop_partial_step()
            if self.dist.is_distributed:
                # A retry on one rank alone would put its collectives out of step with the others'.
                raise RlvrError(
                    f"rank {self.dist.rank}, step {step}: out of memory in the update (peak "
                    f"{peak_memory_gib(self.device):.1f} GiB); lower per_device_train_batch_size or "
                    "max_completion_length, set gradient_checkpointing: true, or load_in_4bit: true") from None
            halves = [h for mb in micro_batches for h in halve(mb)]
            log.warning("step %d: out of memory in the update; retrying with %d micro-batches of half the size",
                        step, len(halves))
            try:
                sums = accumulate(halves)
            except torch.OutOfMemoryError:
                self._drop_partial_step()
                raise RlvrError(
                    f"step {step}: out of memory in the update even with half-size micro-batches "
                    f"(peak {peak_memory_gib(self.device):.1f} GiB); lower per_device_train_batch_size or "
                    "max_completion_length, set gradient_checkpointing: true, or load_in_4bit: true") from None
        return {**sums, **self.step(sums["loss"], step)}

    def _drop_partial_step(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        if self.on_oom is not None:
            self.on_oom()
        free_accelerator_memory()

    def step(self, loss: float, step: int) -> dict:
        """Unscale, clip, and step unless the loss or the gradient norm is not finite; schedule."""
        # Replicated gradients summed over ranks first, so every rank unscales, clips and decides alike.
        sync_gradients(self.model, self.dist)
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        grad_norm = clip_grad_norm(trainable_parameters(self.model), self.max_grad_norm, self.dist)
        lr = self.scheduler.get_last_lr()[0]
        finite = bool(torch.isfinite(grad_norm)) and math.isfinite(loss)
        overflow = self.scaler is not None and not finite and math.isfinite(loss)
        if finite:
            if self.scaler is not None:
                self.scaler.step(self.optimizer)
            else:
                self.optimizer.step()
            self.nonfinite_in_a_row = 0
        elif overflow and self.scaler.get_scale() >= 1.0:
            # fp16 gradients overflowed at this loss scale: the scaler lowers it and the step is
            # skipped, as every fp16 trainer does; not a fault unless the scale collapses.
            self.amp_overflow_steps += 1
            log.info("step %d: fp16 gradient overflow at loss scale %g; step skipped, scale lowered",
                     step, self.scaler.get_scale())
        else:
            # A NaN/inf loss or gradient would poison the weights and the optimizer state: skip it.
            self.nonfinite_steps += 1
            self.nonfinite_in_a_row += 1
            log.warning("step %d: non-finite loss or gradient norm, update skipped (%d in a row)",
                        step, self.nonfinite_in_a_row)
            if self.nonfinite_in_a_row >= self.max_nonfinite_steps:
                self.optimizer.zero_grad(set_to_none=True)
                raise RlvrError(
                    f"step {step}: {self.nonfinite_in_a_row} optimizer steps in a row had a non-finite loss or "
                    "gradient; lower learning_rate, check the loss inputs (e.g. the reward functions' values), "
                    "or use dtype float32 / bf16 instead of float16")
        if self.scaler is not None:
            self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        metrics = {"grad_norm": grad_norm.item(), "learning_rate": lr, "skipped_steps": self.nonfinite_steps}
        if self.scaler is not None:
            metrics.update({"amp/loss_scale": self.scaler.get_scale(), "amp/overflow_steps": self.amp_overflow_steps})
        return metrics

    # ------------------------------------------------------------------ checkpoints

    def state_dict(self) -> dict:
        """What a checkpoint needs besides the weights (the optimizer and schedule go in training_state.pt)."""
        state = {"nonfinite_steps": self.nonfinite_steps, "amp_overflow_steps": self.amp_overflow_steps}
        if self.scaler is not None:
            state["grad_scaler"] = self.scaler.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        self.nonfinite_steps = state.get("nonfinite_steps", 0)
        self.amp_overflow_steps = state.get("amp_overflow_steps", 0)
        if self.scaler is not None and "grad_scaler" in state:
            self.scaler.load_state_dict(state["grad_scaler"])
