"""Mirror metrics.jsonl to an experiment tracker (`report_to: tensorboard | wandb | trackio | none`).

metrics.jsonl stays the source of truth (the dashboard reads it); a tracker receives the same numbers
for people who already keep their runs elsewhere. Each backend is imported only when chosen, and a
missing package is reported when training starts, not after the first step.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Protocol

from rlvr.config import REPORT_TO
from rlvr.errors import RlvrError

PIP_PACKAGE = {"tensorboard": "tensorboard", "wandb": "wandb", "trackio": "trackio"}


class Tracker(Protocol):
    def log(self, metrics: dict, step: int) -> None: ...

    def close(self) -> None: ...


def scalars(metrics: dict) -> dict[str, float]:
    """The plottable values of a metrics record: finite numbers, without the step itself."""
    out = {}
    for key, value in metrics.items():
        if key == "step" or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if math.isfinite(value):
            out[key] = float(value)
    return out


class NullTracker:
    def log(self, metrics: dict, step: int) -> None:
        pass

    def close(self) -> None:
        pass


class TensorBoardTracker:
    """Event files in RUN_DIR/tensorboard (`tensorboard --logdir RUN_DIR/tensorboard`)."""

    def __init__(self, run_dir: Path, config: dict):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"))
        self.writer.add_text("config", "\n".join(f"    {k}: {v}" for k, v in config.items()))

    def log(self, metrics: dict, step: int) -> None:
        for key, value in scalars(metrics).items():
            self.writer.add_scalar(key, value, step)
        self.writer.flush()  # a live `tensorboard` should see each step, not each buffer

    def close(self) -> None:
        self.writer.close()


class WandbTracker:
    """One wandb run per run directory; project from WANDB_PROJECT (default 'rlvr')."""

    def __init__(self, run_dir: Path, config: dict):
        import wandb

        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "rlvr"), name=run_dir.name, config=config,
                              dir=str(run_dir))

    def log(self, metrics: dict, step: int) -> None:
        self.run.log(scalars(metrics), step=step)

    def close(self) -> None:
        self.run.finish()


class TrackioTracker:
    """trackio's local dashboard; project from TRACKIO_PROJECT (default 'rlvr')."""

    def __init__(self, run_dir: Path, config: dict):
        import trackio

        self.trackio = trackio
        self.run = trackio.init(project=os.environ.get("TRACKIO_PROJECT", "rlvr"), name=run_dir.name, config=config)

    def log(self, metrics: dict, step: int) -> None:
        self.trackio.log(scalars(metrics), step=step)

    def close(self) -> None:
        self.trackio.finish()


BACKENDS = {"tensorboard": TensorBoardTracker, "wandb": WandbTracker, "trackio": TrackioTracker}


def open_tracker(report_to: str | None, run_dir: str | Path, config: dict) -> Tracker:
    """The tracker named by `report_to`; a missing package is one RlvrError naming what to install."""
    if report_to in (None, "none"):
        return NullTracker()
    if report_to not in BACKENDS:
        raise RlvrError(f"train.report_to: {report_to!r} is not one of {', '.join(REPORT_TO)}")
    try:
        return BACKENDS[report_to](Path(run_dir), config)
    except ImportError as e:
        raise RlvrError(f"train.report_to: {report_to} needs the '{PIP_PACKAGE[report_to]}' package "
                        f"({e}); pip install {PIP_PACKAGE[report_to]}, or set report_to: none") from None
