"""The run session every trainer shares: the run directory and its guard, run.json, metrics and
samples JSONL, trackers, the progress bar, Ctrl-C / SIGTERM, atomic checkpoints and --resume.

A trainer opens a session around its loop and reports each finished optimizer step to it; the
session decides when to log, when to save and when to stop. What only one trainer knows (GRPO's
round in progress, say) comes in through the trainer's `checkpoint_state` / `restore_checkpoint`.
All writing into the run directory happens here (a data-parallel run writes from rank 0 only:
`writes=False` on the others).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import signal
import socket
from pathlib import Path
from typing import Protocol

import torch

from rlvr.distributed.collectives import any_rank, barrier, gather_objects
from rlvr.distributed.context import DistContext, env_world_size
from rlvr.distributed.parallel import gathered_for_decoding, is_sharded
from rlvr.errors import RlvrError
from rlvr.train.checkpoint import (
    BEST,
    load_checkpoint,
    load_trainable,
    resolve_checkpoint,
    save_best,
    save_checkpoint,
    save_trainable,
)
from rlvr.train.guards import MetricGuards
from rlvr.train.optim import effective_optim
from rlvr.train.periodic_eval import BestModel, Evaluator, eval_due, eval_interval
from rlvr.train.run_dir import JsonlWriter, Progress, RunStatus, model_name, prepare_run_dir
from rlvr.train.trackers import open_tracker

log = logging.getLogger("rlvr")

# What a run leaves in its directory; config.yaml alone (written before training starts) is not a run.
RUN_PRODUCTS = ("run.json", "metrics.jsonl", "samples.jsonl", "checkpoints", "final", BEST, "memory_estimate.json",
                "tensorboard")

# Settings that change what is logged, saved or how it is computed, never the numbers a step produces:
# a resumed run may change these. max_steps / num_train_epochs may change to lengthen a run.
NON_MATH_SETTINGS = frozenset({
    "output_dir", "logging_steps", "save_steps", "save_total_limit", "resume_from_checkpoint", "report_to",
    "log_completions", "completions_log_steps", "overwrite_output_dir", "max_steps", "num_train_epochs",
    "gradient_checkpointing", "micro_batch_token_budget", "logprob_chunk_elements", "rollout_backend",
    "rollout_merge_lora", "max_nonfinite_steps", "reward_errors", "attn_implementation", "trust_remote_code",
    "ddp_timeout", "eval_strategy", "eval_steps", "eval_on_start", "metric_for_best_model", "greater_is_better",
    "load_best_model_at_end", "guard_length_collapse", "guard_format_only",
})


def run_products(run_dir: str | Path) -> list[str]:
    run_dir = Path(run_dir)
    return [name for name in RUN_PRODUCTS if (run_dir / name).exists()]


def check_output_dir(output_dir: str | Path, resume: str | None, overwrite: bool) -> None:
    """Refuse to start a new run in a folder that holds another run, unless resuming or overwriting.

    Called before anything is loaded or written (the CLI calls it first; the session again)."""
    found = run_products(output_dir)
    if found and not resume and not overwrite:
        raise RlvrError(f"output directory {output_dir} already holds a run ({', '.join(found)}); continue it "
                        "with --resume, replace it with --overwrite, or pick another --output-dir")
    path = Path(output_dir)
    for folder in (path, *path.parents):  # the nearest existing folder on the path must be a folder
        if folder.exists():
            if not folder.is_dir():
                where = "is" if folder == path else f"lies under {folder}, which is"
                raise RlvrError(f"output directory {path} {where} an existing file, not a folder; choose "
                                "another --output-dir")
            break


def check_run_start(args, resume: str | None = None, force: bool = False,
                    model_config: dict | None = None) -> Path | None:
    """Everything that can refuse a run before a model loads: the output directory (check_output_dir)
    and, when resuming, the checkpoint and the settings that changed since it (the train section's, and
    the model section's against the run's config.yaml when `model_config` is given). Returns the
    checkpoint."""
    resume = resume or args.resume_from_checkpoint
    check_output_dir(args.output_dir, resume, getattr(args, "overwrite_output_dir", False))
    if not resume:
        return None
    path = resolve_checkpoint(Path(args.output_dir), resume)
    saved = json.loads((path / "trainer_state.json").read_text())
    differences = math_differences(per_step_batch(saved.get("config", {}), saved.get("world_size", 1)),
                                   per_step_batch(dataclasses.asdict(args), env_world_size()))
    run_config = Path(args.output_dir) / "config.yaml"
    if model_config is not None and run_config.is_file():
        import yaml

        saved_model = (yaml.safe_load(run_config.read_text()) or {}).get("model") or {}
        differences += math_differences(saved_model, model_config, prefix="model.")
    if differences and not force:
        raise RlvrError(f"--resume: the config changed since {path.name} in ways that change the math "
                        f"({'; '.join(differences)}); restore them, or add --force to resume anyway")
    if differences:
        log.warning("resuming despite config changes: %s", "; ".join(differences))
    return path


def clear_run(run_dir: Path) -> None:
    for name in RUN_PRODUCTS:
        path = run_dir / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def per_step_batch(config: dict, world_size: int) -> dict:
    """A train config with the accumulation settings scaled to the whole job: resuming on another number
    of ranks changes no math when per_device_train_batch_size stays and gradient_accumulation_steps ×
    world size (and steps_per_generation × world size) stay, e.g. 2 ranks × GA 1 → 1 rank × GA 2."""
    if world_size == 1 or "gradient_accumulation_steps" not in config:
        return config
    out = {**config, "gradient_accumulation_steps": config["gradient_accumulation_steps"] * world_size}
    if config.get("steps_per_generation") is not None:
        out["steps_per_generation"] = config["steps_per_generation"] * world_size
    return out


def math_differences(saved: dict, new: dict, prefix: str = "") -> list[str]:
    """'key: saved → new' for every setting the checkpoint recorded that changes the math of a step (a key it
    did not record, e.g. from an older rlvr or a hand-made checkpoint, cannot be compared)."""
    out = []
    for key in sorted(saved):
        if key in NON_MATH_SETTINGS or saved.get(key) == new.get(key):
            continue
        if key == "optim" and saved.get(key) == effective_optim(new.get(key), torch.cuda.is_available()):
            continue  # the run recorded the optimizer that ran (an 8-bit one falls back without CUDA)
        out.append(f"{prefix}{key}: {saved.get(key)!r} → {new.get(key)!r}")
    return out


class Checkpointed(Protocol):
    """What a trainer adds to the session's checkpoints."""

    def checkpoint_state(self) -> tuple[dict, dict]:
        """(JSON-able state, {file name: object for torch.save}) of the trainer at this step."""
        ...

    def restore_checkpoint(self, state: dict, path: Path) -> None:
        """Take back what checkpoint_state saved (files are read from `path`)."""
        ...


class RunSession:
    """One training run's directory and bookkeeping; use as `with RunSession(...) as run:`."""

    def __init__(self, trainer: Checkpointed, kind: str, args, model, update, total_steps: int,
                 label: str, show_progress: bool | None = None, writes: bool = True, details: dict | None = None,
                 dist: DistContext | None = None, evaluator: Evaluator | None = None,
                 guards: MetricGuards | None = None, steps_per_epoch: int | None = None):
        self.trainer, self.kind, self.args, self.model, self.update = trainer, kind, args, model, update
        self.dist = dist or DistContext()
        # Held-out evaluation after the steps the schedule names (periodic_eval.py), best/ when it improves.
        self.evaluator, self.guards, self.steps_per_epoch = evaluator, guards, steps_per_epoch
        self.best = BestModel.from_args(args)
        self.eval_every = eval_interval(args.eval_steps, args.logging_steps, total_steps)
        self.total_steps, self.label, self.show_progress = total_steps, label, show_progress
        self.writes = writes and self.dist.is_main  # rank 0 alone writes into the run directory
        self.details = details  # what rlvr chose for the user (run_details), recorded in run.json
        self.run_dir = Path(args.output_dir)
        self.stop_requested = False
        self._stop_signal = False  # seen by this rank; becomes stop_requested at the next step's end
        self.step = 0
        self.last: dict = {}
        self._closers: list = []
        self._previous_handlers: dict = {}

    # ------------------------------------------------------------------ start

    def open(self, resume: str | None = None, force: bool = False) -> RunSession:
        """Prepare (or check) the run directory, restore a checkpoint when resuming, open the writers.
        Returns the step to continue from (0 for a new run) in `self.step`."""
        a = self.args
        checkpoint = check_run_start(a, resume, force)
        self._check_evaluation()
        barrier(self.dist)  # every rank has checked the run directory before rank 0 writes into it
        if self.writes:
            prepare_run_dir(self.run_dir)
            if getattr(a, "overwrite_output_dir", False) and checkpoint is None:
                clear_run(self.run_dir)
        if checkpoint is not None:
            self.step = self._resume(checkpoint)
        config = dataclasses.asdict(a)
        devices = gather_objects(f"{socket.gethostname()}:{self.update.device}", self.dist)
        if self.writes:
            self.tracker = open_tracker(a.report_to, self.run_dir, config)  # a missing package fails before any file
            self.status = RunStatus(self.run_dir, self.kind, config, model_name(self.model), self.total_steps,
                                    resumed_from_step=self.step or None,
                                    details={**(self.details or {}), "world_size": self.dist.world_size,
                                             "devices": devices, **self._evaluation_record()})
            self.metrics_log = JsonlWriter(self.run_dir / "metrics.jsonl")
            self.samples_log = JsonlWriter(self.run_dir / "samples.jsonl")
            self._closers = [self.metrics_log.close, self.samples_log.close, self.tracker.close]
        self.progress = Progress(self.total_steps, self.label, self.show_progress if self.writes else False,
                                 initial=self.step)
        self._catch_stop_signals()
        if self.evaluator is not None and a.eval_on_start and self.step == 0:
            try:  # the starting model, as step 0
                self._write_row(0, self.evaluate(0))
            except BaseException as e:
                self.__exit__(type(e), e, e.__traceback__)
                raise
        return self

    def _evaluation_record(self) -> dict:
        """run.json's best evaluation and guard warnings so far (a resumed run's too)."""
        out = {"best": self.best.state_dict()} if self.best.step is not None else {}
        if self.guards is not None and self.guards.warnings():
            out["warnings"] = self.guards.warnings()
        return out

    def _check_evaluation(self) -> None:
        """What periodic evaluation needs, refused before anything trains."""
        a = self.args
        if (a.eval_strategy != "no" or a.eval_on_start) and self.evaluator is None:
            raise RlvrError("train.eval_strategy / eval_on_start: this trainer was given nothing to evaluate; "
                            "run it through rlvr.pipeline (which builds the held-out evaluator from the run config) "
                            "or pass evaluator=")
        if self.evaluator is None:
            return
        names = self.evaluator.metric_names()
        if a.eval_strategy != "no" and self.best.metric not in names:
            raise RlvrError(f"train.metric_for_best_model: {self.best.metric!r} is not an evaluation metric; "
                            f"choose one of {', '.join(names)}")
        if a.load_best_model_at_end and is_sharded(self.model):
            raise RlvrError("train.load_best_model_at_end with full fine-tuning on several processes (FSDP2) is not "
                            "supported; set it to false (best/ is still saved) or use LoRA")

    def _resume(self, path: Path) -> int:
        state = load_checkpoint(path, self.model, self.update.optimizer, self.update.scheduler, self.dist)
        self.update.load_state_dict(state.get("update", state))
        self.best.load_state_dict(state.get("best", {}))
        if self.guards is not None:
            self.guards.load_state_dict(state.get("guards", {}))
        self.trainer.restore_checkpoint(state.get("trainer", {}), path)
        log.info("resumed from %s at step %d", path, state["global_step"])
        return state["global_step"]

    def __enter__(self) -> RunSession:
        return self

    # ------------------------------------------------------------------ each step

    def steps_left(self) -> bool:
        return self.step < self.total_steps

    def wants_more(self) -> bool:
        """Steps left and no stop requested (a stop finishes the step under way, then saves)."""
        return self.steps_left() and not self.stop_requested

    def log_samples(self, step: int, samples: list[dict]) -> None:
        if self.writes:
            for s in samples:
                self.samples_log.write({"step": step, **s})

    def note(self, info: str) -> None:
        """Where the step under way is (e.g. its rollout), beside the progress bar; nothing is logged."""
        self.progress.note(info)

    def write_json(self, name: str, record: dict) -> None:
        if self.writes:
            (self.run_dir / name).write_text(json.dumps(record, indent=1))

    def end_step(self, step: int, metrics: dict, info: str = "", can_save: bool = True) -> None:
        """Step `step` (counted from 1) is done: log it, save when due or when stopping."""
        self.step = step
        # A signal seen by one rank stops every rank after this same step (the flag the loop reads
        # changes only here, on every rank alike).
        self.stop_requested = any_rank(self.stop_requested or self._stop_signal, self.dist)
        evaluated = self.evaluator is not None and eval_due(step, self.total_steps, self.args.eval_strategy,
                                                             self.eval_every, self.steps_per_epoch)
        if evaluated:
            metrics = {**metrics, **self.evaluate(step)}
        self.last = {"step": step, **metrics}
        if evaluated or step % self.args.logging_steps == 0 or step == self.total_steps:
            self._write_row(step, metrics)
        self.progress.update(1, info)
        if self.stop_requested or step % self.args.save_steps == 0 or step == self.total_steps:
            self.save()

    def _write_row(self, step: int, metrics: dict) -> None:
        """One metrics.jsonl line (an evaluation's eval/... in its step's line); the guards read it too."""
        row = {"step": step, **metrics}
        if self.writes and self.guards is not None and self.guards.observe(step, row):
            self.status.note(warnings=self.guards.warnings())
        if self.writes:
            self.metrics_log.write(row)
            self.tracker.log(row, step)

    def evaluate(self, step: int) -> dict:
        """The evaluator's metrics for the model as it is after `step`; best/ saved when the metric improves."""
        with gathered_for_decoding(self.model):  # FSDP2: whole layers for the rollout; else nothing
            metrics = self.evaluator(self.model, step)
        if self.best.update(step, metrics):
            save_best(self.model, self.run_dir, self.best.state_dict(), self.dist)
            if self.writes:
                self.status.note(best=self.best.state_dict())
            log.info("step %d: %s %.4g is the best so far; saved %s/", step, self.best.metric, self.best.value, BEST)
        if self.best.value is not None:
            metrics = {**metrics, "eval/best_step": self.best.step}
        return metrics

    def save(self) -> Path | None:
        """checkpoints/step-N, atomically: weights, optimizer, schedule, RNG, the update's and the trainer's state."""
        trainer_state, files = self.trainer.checkpoint_state()
        state = {"global_step": self.step, "update": self.update.state_dict(), "trainer": trainer_state,
                 "config": dataclasses.asdict(self.args), "world_size": self.dist.world_size,
                 "best": self.best.state_dict()}
        if self.guards is not None:
            state["guards"] = self.guards.state_dict()
        if not self.writes and not self.dist.is_distributed:
            return None
        # Every rank of a job takes part (FSDP2 shards are written by their ranks); rank 0 writes the rest.
        return save_checkpoint(self.run_dir, self.step, self.model, self.update.optimizer, self.update.scheduler,
                               state, keep=self.args.save_total_limit, extra=files, dist=self.dist)

    # ------------------------------------------------------------------ end

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc is None and (self.writes or self.dist.is_distributed):
                self._load_best_at_end()
                save_trainable(self.model, self.run_dir / "final", self.dist)
        except BaseException as e:
            exc = e
            raise
        finally:
            self.progress.close()
            for close in self._closers:
                close()
            self._restore_signals()
            if self.writes:
                if exc is None:
                    self.status.end("interrupted" if self.stop_requested else "finished", self.step)
                else:
                    self.status.end_on_exception(exc, self.step)

    def _load_best_at_end(self) -> None:
        """load_best_model_at_end: a finished run's model becomes best/'s (so final/ is the best)."""
        if not self.args.load_best_model_at_end or self.stop_requested or self.best.step is None:
            return
        if self.best.step != self.step:
            load_trainable(self.model, self.run_dir / BEST)
        log.info("loaded the best model (step %d, %s %.4g) for final/", self.best.step, self.best.metric,
                 self.best.value)

    def result(self) -> dict:
        out = {**self.last, "step": self.step, "interrupted": self.stop_requested, "run_dir": str(self.run_dir)}
        if self.best.step is not None:
            out.update(best_step=self.best.step, best_metric=self.best.value)
        return out

    # ------------------------------------------------------------------ signals

    def _catch_stop_signals(self) -> None:
        """Ctrl-C and SIGTERM finish the current step and save, unless someone else handles them."""
        for sig, default in ((signal.SIGINT, signal.default_int_handler), (signal.SIGTERM, signal.SIG_DFL)):
            try:
                if signal.getsignal(sig) is default:
                    self._previous_handlers[sig] = signal.signal(sig, self.request_stop)
            except ValueError:  # not the main thread: signals stay with the caller
                pass

    def request_stop(self, *_) -> None:
        log.warning("interrupt: finishing this step, saving a checkpoint, then stopping")
        self._stop_signal = True
        if not self.dist.is_distributed:
            self.stop_requested = True

    def _restore_signals(self) -> None:
        for sig, handler in self._previous_handlers.items():
            signal.signal(sig, handler)
        self._previous_handlers = {}


__all__ = ["RUN_PRODUCTS", "Checkpointed", "RunSession", "check_output_dir", "check_run_start", "math_differences"]
