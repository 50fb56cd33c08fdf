"""One-line errors for the bundle's workflows (``python -m monai.bundle run ...``).

MONAI's config parser wraps an error raised inside an expression in its own ``RuntimeError`` chain, so
a bad input (an empty input folder, ``--spacing_um 0``, a model file that does not fit) ends in a
traceback of 50-100 lines whose cause is at the bottom. :func:`one_line_errors`, the first expression of
each workflow's ``initialize`` section, installs an exception hook that prints only the innermost cause,
in at most :data:`MAX_LINES` short lines (Python then exits with status 1). ``MSSN_TRACEBACK=1`` in the
environment keeps Python's full traceback.
"""

from __future__ import annotations

import os
import sys
from types import TracebackType
from typing import Final

__all__ = ["one_line_errors", "root_cause", "short_message", "MAX_LINES"]

MAX_LINES: Final[int] = 3
"""Lines of the cause's message shown (a state-dict mismatch lists every key otherwise)."""

_MAX_CHARS: Final[int] = 300


def root_cause(error: BaseException) -> BaseException:
    """The innermost exception of an explicit (``raise ... from``) or implicit chain."""
    seen = {id(error)}
    while True:
        nxt = error.__cause__ or error.__context__
        if nxt is None or id(nxt) in seen:
            return error
        seen.add(id(nxt))
        error = nxt


def short_message(error: BaseException) -> str:
    """``"error: <Type>: <message>"``: the root cause's first :data:`MAX_LINES` non-empty lines, each shortened."""
    cause = root_cause(error)
    lines = [line.strip() for line in str(cause).splitlines() if line.strip()] or ["(no message)"]
    shown = [line if len(line) <= _MAX_CHARS else line[: _MAX_CHARS - 3] + "..." for line in lines[:MAX_LINES]]
    more = f" (+{len(lines) - MAX_LINES} more lines)" if len(lines) > MAX_LINES else ""
    return f"error: {type(cause).__name__}: " + "\n  ".join(shown) + more


def _hook(kind: type[BaseException], error: BaseException, tb: TracebackType | None) -> None:
    if issubclass(kind, KeyboardInterrupt):
        sys.__excepthook__(kind, error, tb)
        return
    print(short_message(error), file=sys.stderr)
    print("(set MSSN_TRACEBACK=1 for the full traceback)", file=sys.stderr)


def one_line_errors() -> bool:
    """Install the one-line exception hook (unless ``MSSN_TRACEBACK=1``); returns whether it was installed."""
    if os.environ.get("MSSN_TRACEBACK", "") not in ("", "0"):
        return False
    sys.excepthook = _hook
    return True
