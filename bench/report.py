"""How every bench script reports: one JSON line on stdout, appended to --out when given."""

from __future__ import annotations

import json
from pathlib import Path


def emit(result: dict, out: str | None) -> None:
    line = json.dumps(result)
    print(line)
    if out:
        with open(Path(out), "a") as f:
            f.write(line + "\n")
