"""The run directory: resolved config, metrics.jsonl, sample completions, and a progress bar."""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path

from rlvr.errors import RlvrError


def prepare_run_dir(path: str | Path) -> Path:
    """Create the folder and prove it is writable now, not after an hour of training."""
    run_dir = Path(path)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise RlvrError(f"output directory {run_dir} is not writable ({e.strerror}); set train.output_dir "
                        "to a folder you can write") from None
    return run_dir


def _clean(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class JsonlWriter:
    """Appends one JSON object per line and flushes, so a reader never waits for a buffer."""

    def __init__(self, path: Path):
        self.path = path
        self._f = open(path, "a", buffering=1)

    def write(self, record: dict) -> None:
        self._f.write(json.dumps({k: _clean(v) for k, v in record.items()}) + "\n")
        self._f.flush()

    def close(self) -> None:
        self._f.close()


PLAIN_EVERY_S = 30.0  # seconds between plain progress lines in a log file


class Progress:
    """A rich progress bar with the latest metrics beside it on a terminal; elsewhere (a log file,
    CI) one plain line at most every PLAIN_EVERY_S seconds. `enabled=False` or RLVR_NO_PROGRESS
    silences both."""

    def __init__(self, total: int, description: str, enabled: bool | None = None, initial: int = 0):
        self._bar = None
        self._plain = enabled is None and not sys.stderr.isatty()
        self._total, self._done, self._description = total, initial, description
        self._last, self._ended = time.monotonic(), False  # _ended: the plain line at the total was printed
        if os.environ.get("RLVR_NO_PROGRESS") is not None:
            self._plain, enabled = False, False
        if enabled is None:
            enabled = sys.stderr.isatty()
        if enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
            from rich.progress import Progress as RichProgress

            self._bar = RichProgress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                     TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
                                     transient=False)
            self._bar.start()
            self._task = self._bar.add_task(description, total=total, completed=initial, info="")

    def update(self, advance: int = 1, info: str = "") -> None:
        self._done += advance
        if self._bar is not None:
            self._bar.update(self._task, advance=advance, info=info)
        elif self._plain and (time.monotonic() - self._last > PLAIN_EVERY_S or
                              (self._done == self._total and not self._ended)):
            self._last, self._ended = time.monotonic(), self._done == self._total
            print(f"{self._description} {self._done}/{self._total} {info}", file=sys.stderr, flush=True)

    def note(self, info: str) -> None:
        """Show where the current item is (e.g. a long rollout) without advancing; in a log file only
        once PLAIN_EVERY_S seconds have passed since the last line, so short work prints nothing."""
        self.update(0, info)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()


# ---------------------------------------------------------------- run.json: what a dashboard reads

RUN_FILE = "run.json"
RUN_STATUSES = ("running", "finished", "failed", "interrupted")


def write_json_atomic(path: str | Path, record: dict) -> None:
    """Write under a temporary name in the same folder, then rename: a reader sees the old file or
    the new one, never half of one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as f:
        json.dump(record, f, indent=1, default=str)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def library_versions() -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str | None] = {"python": sys.version.split()[0]}
    for name in ("rlvr", "torch", "transformers", "peft"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def model_name(model) -> str | None:
    """The hub id or folder a (peft-wrapped) model was loaded from, when it says."""
    config = getattr(model, "config", None)  # a peft model forwards this to the base model's
    return getattr(config, "name_or_path", None) or getattr(config, "model_type", None)


def run_details(model, engine=None) -> dict:
    """What rlvr chose for the user, for run.json: the modules LoRA adapts and the rollout backend
    that actually samples (with the reason when the native engine fell back to transformers.generate)."""
    from rlvr.models.lora_targets import adapted_modules

    details: dict = {"lora_target_modules": adapted_modules(model)}
    if engine is not None:
        details.update(rollout_backend=getattr(engine, "backend_name", None),
                       rollout=engine.describe() if hasattr(engine, "describe") else None)
    return details


def _now() -> str:
    from datetime import datetime

    return datetime.now().astimezone().isoformat(timespec="seconds")


class RunStatus:
    """run.json: trainer, model, versions, config, start time and status (running / finished / failed /
    interrupted), rewritten atomically at the start and the end of a run."""

    def __init__(self, run_dir: str | Path, trainer: str, config: dict, model: str | None = None,
                 total_steps: int | None = None, resumed_from_step: int | None = None,
                 details: dict | None = None):
        import socket

        self.path = Path(run_dir) / RUN_FILE
        self.record = {"status": "running", "trainer": trainer, "model": model, "started_at": _now(),
                       "ended_at": None, "step": resumed_from_step or 0, "total_steps": total_steps,
                       "resumed_from_step": resumed_from_step, "error": None, "pid": os.getpid(),
                       "host": socket.gethostname(), "versions": library_versions(), "config": config,
                       **(details or {})}
        write_json_atomic(self.path, self.record)

    def note(self, **fields) -> None:
        """Record fields in run.json now, for a dashboard or a script: the guards' `warnings`
        (rlvr/train/guards.py), the `best` evaluation so far (metric, value, step)."""
        self.record.update(fields)
        write_json_atomic(self.path, self.record)

    def end(self, status: str, step: int | None = None, error: str | None = None) -> None:
        if status not in RUN_STATUSES:
            raise ValueError(f"unknown run status {status!r}")
        self.record.update(status=status, ended_at=_now(), error=error)
        if step is not None:
            self.record["step"] = step
        try:
            write_json_atomic(self.path, self.record)
        except OSError:  # a full disk must not hide the error that ended the run
            pass

    def end_on_exception(self, exc: BaseException, step: int | None = None) -> None:
        """Ctrl-C that reached the trainer as KeyboardInterrupt is an interruption; anything else a failure."""
        if isinstance(exc, KeyboardInterrupt):
            self.end("interrupted", step)
        else:
            self.end("failed", step, error=f"{type(exc).__name__}: {exc}"[:2000])
