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


class Progress:
    """A rich progress bar with the latest metrics beside it on a terminal; elsewhere (a log file,
    CI) one plain line at most every 30 s. `enabled=False` or RLVR_NO_PROGRESS silences both."""

    def __init__(self, total: int, description: str, enabled: bool | None = None, initial: int = 0):
        self._bar = None
        self._plain = enabled is None and not sys.stderr.isatty()
        self._total, self._done, self._description = total, initial, description
        self._last = time.monotonic()
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
        elif self._plain and (time.monotonic() - self._last > 30 or self._done == self._total):
            self._last = time.monotonic()
            print(f"{self._description} {self._done}/{self._total} {info}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
