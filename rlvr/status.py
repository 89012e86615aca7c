"""One-line status messages on stderr for slow steps (a model load, a file written), so a long command
shows where it is. RLVR_NO_PROGRESS silences them as it does the progress bars."""

from __future__ import annotations

import os
import sys


def announce(message: str, prefix: str = "rlvr") -> None:
    if os.environ.get("RLVR_NO_PROGRESS") is None:
        print(f"{prefix}: {message}", file=sys.stderr, flush=True)
