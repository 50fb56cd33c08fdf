"""One-line errors of the bundle workflows: the root cause, a few short lines, the full traceback on request."""

from __future__ import annotations

import subprocess
import sys

from mssn_monai.errors import MAX_LINES, root_cause, short_message


def _chain() -> RuntimeError:
    try:
        try:
            raise ValueError("spacing_um must be > 0 um/px, got 0.")
        except ValueError as inner:
            raise RuntimeError("Failed to evaluate ConfigExpression") from inner
    except RuntimeError as outer:
        try:
            raise RuntimeError("while running the workflow")  # implicit chain (__context__)
        except RuntimeError as top:
            assert top.__context__ is outer
            return top


def test_root_cause_follows_explicit_and_implicit_chains():
    top = _chain()
    cause = root_cause(top)
    assert isinstance(cause, ValueError) and "spacing_um" in str(cause)
    assert short_message(top) == "error: ValueError: spacing_um must be > 0 um/px, got 0."
    plain = KeyError("x")
    assert root_cause(plain) is plain


def test_long_messages_are_cut_to_a_few_short_lines():
    msg = "Error(s) in loading state_dict:\n" + "\n".join(f"Missing key {i}: " + "k" * 500 for i in range(40))
    text = short_message(RuntimeError(msg))
    lines = text.splitlines()
    assert len(lines) == MAX_LINES and all(len(line) <= 320 for line in lines)
    assert lines[0] == "error: RuntimeError: Error(s) in loading state_dict:" and text.endswith("(+38 more lines)")
    assert short_message(ValueError()) == "error: ValueError: (no message)"


def test_hook_prints_one_cause_and_exits_1_unless_a_traceback_is_asked_for():
    code = (
        "import mssn_monai.errors as e; e.one_line_errors()\n"
        "try:\n    raise ValueError('no image files in /x')\n"
        "except ValueError as v:\n    raise RuntimeError('wrapped') from v\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 1
    assert r.stderr.splitlines() == [
        "error: ValueError: no image files in /x",
        "(set MSSN_TRACEBACK=1 for the full traceback)",
    ]
    full = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={"MSSN_TRACEBACK": "1"})
    assert full.returncode == 1 and "Traceback" in full.stderr and "wrapped" in full.stderr
