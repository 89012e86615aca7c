"""The trainer core: what SFT, GRPO and every later trainer share, so each only says how to build
its batches and the loss of one micro-batch.

    train()                        the trainer's loop, inside `with self.open_session() as run:`
      → train_step(micro_batches)  here: counts, forward_backward per micro-batch, the optimizer step
          → forward_backward(mb)   the trainer: forward under self.autocast(), loss, self.backward(loss)
      → run.end_step(...)          session.py: metrics, progress, checkpoints, signals

A subclass implements `count(mb) -> (sequences, loss tokens)`, `forward_backward(mb, counts, sums) ->
float` (its share of the step loss, already backpropagated), optionally `halve(mb)` (the out-of-memory
retry) and `checkpoint_state` / `restore_checkpoint` (what its checkpoints add). Held-out evaluation
during training (`evaluator`, on the schedule of train.eval_strategy) and the metric guards are the
session's, so every trainer gets them alike.
"""

from __future__ import annotations

import time

import torch

from rlvr.distributed.collectives import reduce_metrics
from rlvr.distributed.context import check_model_device, init_distributed
from rlvr.distributed.parallel import parallelize
from rlvr.models.checkpointing import discard_offloaded_activations, enable_checkpointing
from rlvr.models.precision import resolve_precision
from rlvr.train.guards import MetricGuards
from rlvr.train.periodic_eval import Evaluator
from rlvr.train.run_dir import run_details
from rlvr.train.session import RunSession
from rlvr.train.update import OptimizerUpdate, StepCounts, step_counts


def prepare_model(model: torch.nn.Module, args) -> torch.nn.Module:
    """What is applied to the model from outside the trainer, once per stage: activation checkpointing
    in the mode this stage asks for (replacing an earlier stage's), train mode. (Data parallelism is
    applied earlier, in TrainerCore.__init__, before the optimizer is built.)"""
    enable_checkpointing(model, args.gradient_checkpointing)
    # from_pretrained leaves a model in eval mode, where checkpointing (and dropout) is off.
    model.train()
    return model


class TrainerCore:
    kind = "train"  # run.json's trainer name
    label = "train"  # the progress bar's
    metric_ops: dict[str, str] = {}  # how a step's metric sums combine over ranks when not by "sum"

    def __init__(self, model: torch.nn.Module, args, total_steps: int, show_progress: bool | None = None,
                 evaluator: Evaluator | None = None, guards: MetricGuards | None = None,
                 steps_per_epoch: int | None = None):
        self.model, self.args, self.total_steps, self.show_progress = model, args, total_steps, show_progress
        # evaluator: held-out evaluation after the steps train.eval_strategy names (the session runs it);
        # steps_per_epoch: what eval_strategy "epoch" counts; guards: warnings from the logged metrics.
        self.evaluator, self.guards, self.steps_per_epoch = evaluator, guards, steps_per_epoch
        self.device = next(model.parameters()).device
        self.precision = resolve_precision(self.device, args.bf16)
        # Under torchrun: join the job, and make the model data-parallel before the optimizer sees its
        # parameters (FSDP2 replaces a sharded layer's parameters). Outside torchrun both do nothing.
        self.dist = init_distributed(self.device.type, args.ddp_timeout)
        check_model_device(self.dist, self.device)
        self.parallelism = parallelize(model, self.dist, full_weights=not hasattr(model, "peft_config"),
                                       bf16=self.precision.autocast_dtype == torch.bfloat16)
        self.update = OptimizerUpdate(model, args, total_steps, self.device,
                                      on_oom=lambda: discard_offloaded_activations(model), dist=self.dist)
        self.global_step = 0
        self.session: RunSession | None = None

    # ------------------------------------------------------------------ for subclasses

    def autocast(self):
        """The forward passes' autocast (bf16 only where the device computes it natively)."""
        return self.precision.autocast()

    def backward(self, loss: torch.Tensor) -> None:
        self.update.backward(loss)

    def count(self, micro_batch) -> tuple[int, int]:
        raise NotImplementedError

    def forward_backward(self, micro_batch, counts: StepCounts, sums: dict) -> float:
        raise NotImplementedError

    def halve(self, micro_batch) -> list:
        """Two halves of a micro-batch of row indices (override for other micro-batch types)."""
        return [h for h in micro_batch.chunk(2) if h.numel()]

    def checkpoint_state(self) -> tuple[dict, dict]:
        return {}, {}

    def run_details(self) -> dict:
        """What rlvr chose for the user (adapted modules, …), recorded in run.json."""
        return run_details(self.model)

    def restore_checkpoint(self, state: dict, path) -> None:
        pass

    # ------------------------------------------------------------------ the core

    def open_session(self, resume: str | None = None, force: bool = False) -> RunSession:
        prepare_model(self.model, self.args)
        session = RunSession(self, self.kind, self.args, self.model, self.update, self.total_steps, self.label,
                             self.show_progress, details=self.run_details(), dist=self.dist, evaluator=self.evaluator,
                             guards=self.guards, steps_per_epoch=self.steps_per_epoch).open(resume, force)
        self.global_step = session.step
        self.session = session
        return session

    def request_stop(self) -> None:
        """What Ctrl-C / SIGTERM do: finish this step, save a checkpoint, return from train()."""
        self.session.request_stop()

    def train_step(self, micro_batches: list) -> dict:
        """One optimizer step over `micro_batches`: metric sums (with 'loss'), grad_norm, learning_rate…"""
        t0 = time.perf_counter()
        metrics = self.update.run(self._accumulate, micro_batches, self.halve, step=self.global_step + 1)
        self.global_step += 1
        metrics["time/update"] = time.perf_counter() - t0
        return metrics

    def _accumulate(self, micro_batches: list) -> dict:
        counts = step_counts([self.count(mb) for mb in micro_batches], self.dist)
        sums: dict = {"loss": 0.0}
        for mb in micro_batches:
            sums["loss"] += self.forward_backward(mb, counts, sums)
        # Each rank's sums are its shares of the global step (weighted by global counts): they add up.
        return reduce_metrics(sums, self.dist, {**{k: "sum" for k in sums}, **self.metric_ops})
