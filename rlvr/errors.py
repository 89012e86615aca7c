"""User-facing errors: one line that says what is wrong, where, and how to fix it.

The CLI prints these without a traceback and exits non-zero; anything else that escapes is a bug.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class RlvrError(Exception):
    """An error the user can act on. The message is one line: what, where, how to fix."""


def nearest(name: str, choices: Iterable[str]) -> str:
    """A ' (did you mean X?)' suffix for the closest known name, or '' when nothing is close."""
    match = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{match[0]}'?)" if match else ""
