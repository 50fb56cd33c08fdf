"""Strict checks of a command line against the command's signature, before the command runs.

python-fire runs a command with the arguments it could match and only then complains about the ones it
could not consume (``--spacin 0.25`` runs ``detect`` with the default spacing, writes every output, then
exits with "Could not consume arg"). :func:`check_command_args` reads the command line the way fire
does (``--flag value``, ``--flag=value``, ``--flag-name`` or ``--flag_name``, ``--flag`` / ``--noflag``
for booleans, one-letter shortcuts, positional arguments in signature order) and raises
:class:`ArgumentError` for

- a flag the command does not take (with a "did you mean" suggestion),
- a positional argument too many, a required argument missing,
- a value of the wrong type (``--radius-um abc``), a bare flag where a value is needed,
- a non-finite number (``inf``, ``nan``) or a number outside the command's declared limits,
- a value that is not one of the declared choices (``--format``),

so that the caller can stop before anything is read or written. ``--help`` / ``-h`` and fire's own
flags after a lone ``--`` are left to fire.

Limits are declared per command and argument, as an interval in the usual notation (``"(0, inf)"``,
``"[0, 1]"``, ``"[1, inf)"``) or as a tuple of accepted strings (compared case-insensitively).
"""

from __future__ import annotations

import difflib
import inspect
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["ArgumentError", "Interval", "check_command_args", "as_flag"]

_HELP_FLAGS = ("-h", "--help")


class ArgumentError(ValueError):
    """A command line argument that does not fit the command's signature or declared limits."""


@dataclass(frozen=True)
class Interval:
    """A closed, open or half-open interval of accepted numbers, e.g. ``Interval.parse("(0, inf)")``."""

    low: float = -math.inf
    high: float = math.inf
    low_closed: bool = True
    high_closed: bool = True

    _PATTERN = re.compile(r"^\s*([\[(])\s*([^,\s]+)\s*,\s*([^,\s\])]+)\s*([\])])\s*$")

    @classmethod
    def parse(cls, text: str) -> Interval:
        """Read ``"[a, b]"``, ``"(a, b)"``, ``"[a, b)"`` or ``"(a, b]"``; ``inf`` / ``-inf`` are unbounded.

        Raises:
            ValueError: ``text`` is not in that notation.
        """
        m = cls._PATTERN.match(text)
        if m is None:
            raise ValueError(f"interval {text!r}: expected the notation '[low, high]', '(low, high)', '[low, high)'")
        try:
            low, high = float(m.group(2)), float(m.group(3))
        except ValueError as e:
            raise ValueError(f"interval {text!r}: the bounds must be numbers or inf ({e})") from e
        return cls(low, high, m.group(1) == "[", m.group(4) == "]")

    def __contains__(self, value: float) -> bool:
        above = value >= self.low if self.low_closed else value > self.low
        below = value <= self.high if self.high_closed else value < self.high
        return above and below

    def describe(self) -> str:
        """``"> 0"``, ``">= 1"``, ``"<= 5"`` or ``"in [0, 1]"``."""
        if math.isinf(self.high) and not math.isinf(self.low):
            return f"{'>=' if self.low_closed else '>'} {self.low:g}"
        if math.isinf(self.low) and not math.isinf(self.high):
            return f"{'<=' if self.high_closed else '<'} {self.high:g}"
        return f"in {'[' if self.low_closed else '('}{self.low:g}, {self.high:g}{']' if self.high_closed else ')'}"


Limit = str | Interval | Sequence[str]
"""An argument's limit: an interval (notation string or :class:`Interval`) or a sequence of accepted strings."""


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _is_flag(arg: str) -> bool:
    # fire's rule: "--anything", or "-" followed by a letter (so "-3" is a value, "-inf" a flag)
    return arg.startswith("--") or re.match(r"^-[a-zA-Z]", arg) is not None


def _annotation_names(param: inspect.Parameter) -> set[str]:
    ann = param.annotation
    if ann is inspect.Parameter.empty:
        return set()
    text = ann if isinstance(ann, str) else getattr(ann, "__name__", str(ann))
    return {part.strip().split("[")[0] for part in str(text).split("|")}


@dataclass
class _Given:
    raw: str | None  # None: a bare flag (``--overlay``); fire passes True
    how: str  # how the user wrote it, for messages: "--spacing", "--nooverlay", "positional argument 2"
    negated: bool = False  # ``--noflag``


def _parse_like_fire(command: str, args: Sequence[str], names: Sequence[str]) -> tuple[dict[str, _Given], list[str]]:
    """Split ``args`` into keyword values and positional arguments exactly as fire's ``_ParseKeywordArgs``."""
    given: dict[str, _Given] = {}
    positional: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if not _is_flag(arg):
            positional.append(arg)
            i += 1
            continue
        has_equals = "=" in arg
        stripped = arg.lstrip("-")
        key, value = stripped.split("=", 1) if has_equals else (stripped, None)
        key = key.replace("-", "_")
        bare = not has_equals and (i + 1 == len(args) or _is_flag(args[i + 1]))
        shown = arg.split("=", 1)[0]
        if key in names:
            name, negated = key, False
        elif bare and key.startswith("no") and key[2:] in names:
            name, negated = key[2:], True
        elif len(key) == 1 and key.isalpha():
            matches = [n for n in names if n[0] == key]
            if len(matches) > 1:
                options = ", ".join(_flag(n) for n in matches)
                raise ArgumentError(f"{shown}: ambiguous for {command!r}, it could be any of {options}")
            if not matches:
                raise ArgumentError(f"{shown}: no such flag for {command!r}{_suggest(key, names)}")
            name, negated = matches[0], False
        else:
            if i > 0 and _is_flag(args[i - 1]) and _is_number(arg):  # "--spacing -inf": fire reads "-inf" as a flag
                raise ArgumentError(f"{args[i - 1].split('=', 1)[0]}: expected a finite number, got {arg!r}")
            raise ArgumentError(f"{shown}: no such flag for {command!r}{_suggest(key, names)}")
        if bare:
            given[name] = _Given(None, shown, negated)
            i += 1
        elif has_equals:
            given[name] = _Given(value, shown)
            i += 1
        else:
            given[name] = _Given(args[i + 1], shown)
            i += 2
    return given, positional


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _suggest(key: str, names: Sequence[str]) -> str:
    close = difflib.get_close_matches(key, names, n=1, cutoff=0.6)
    if not close:
        close = [n for n in names if n.startswith(key) or key.startswith(n)][:1]
    if close:
        return f" (did you mean {_flag(close[0])}?)"
    return f" (it takes {', '.join(_flag(n) for n in names)})"


def _check_value(name: str, param: inspect.Parameter, given: _Given, limit: Limit | None) -> None:
    from fire.parser import DefaultParseValue

    flag = _flag(name)
    types = _annotation_names(param)
    optional = "None" in types or param.default is None
    is_bool = "bool" in types or isinstance(param.default, bool)
    if given.negated and not is_bool:
        raise ArgumentError(f"{given.how}: {flag} is not a true/false flag")
    if given.raw is None:  # a bare flag: fire passes True (False for --noflag)
        if is_bool:
            return
        raise ArgumentError(f"{flag}: expected a value after the flag, got none")
    raw = given.raw
    try:
        value = DefaultParseValue(raw)
    except Exception:  # noqa: BLE001 - fire passes what it cannot parse on as the string
        value = raw
    if value is None:
        if optional:
            return
        raise ArgumentError(f"{flag}: expected a value, got {raw!r} (this argument cannot be None)")
    if is_bool:
        if not isinstance(value, bool):
            raise ArgumentError(
                f"{flag}: expected True or False (or the bare flag {flag} / --no{name.replace('_', '-')}), got {raw!r}"
            )
        return
    if "float" in types or "int" in types:
        want_int = "float" not in types
        kind = "an integer" if want_int else "a number"
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ArgumentError(f"{flag}: expected {kind}, got {raw!r}")
        if isinstance(value, str):  # "inf", "nan", "Infinity" reach the command as text and become floats there
            try:
                value = float(value)
            except ValueError:
                raise ArgumentError(f"{flag}: expected {kind}, got {raw!r}") from None
        if not math.isfinite(value):
            raise ArgumentError(f"{flag}: expected a finite number, got {raw!r}")
        if want_int and not isinstance(value, int):
            raise ArgumentError(f"{flag}: expected an integer, got {raw!r}")
        if limit is not None and not isinstance(limit, (str, Interval)):
            limit = None  # choices only apply to text
        if limit is not None:
            interval = Interval.parse(limit) if isinstance(limit, str) else limit
            if value not in interval:
                raise ArgumentError(f"{flag}: expected a number {interval.describe()}, got {raw!r}")
        return
    if isinstance(value, (list, tuple, dict)) and "tuple" not in types and "list" not in types:
        raise ArgumentError(
            f"{flag}: expected one value, got {raw!r} (read as a {type(value).__name__}; quote it to pass a text "
            "with commas or brackets)"
        )
    if limit is not None and not isinstance(limit, (str, Interval)):
        choices = [str(c) for c in limit]
        text = str(value).strip().lower()
        if text not in (c.lower() for c in choices):
            close = difflib.get_close_matches(text, choices, n=1, cutoff=0.5)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ArgumentError(
                f"{flag}: unknown {name.replace('_', ' ')} {raw!r}, expected one of {', '.join(choices)}{hint}"
            )


def check_command_args(
    argv: Sequence[str],
    commands: Mapping[str, Callable[..., Any]],
    limits: Mapping[str, Mapping[str, Limit]] | None = None,
) -> None:
    """Check a command line ``[command, arg, ...]`` against the command's signature and declared limits.

    Nothing is run or imported beyond python-fire's value parser. A command line that asks for help
    (``--help`` / ``-h``), names no known command, or holds fire's own flags after ``--`` is checked only
    up to what fire does itself (fire then shows the help or the list of commands).

    Args:
        argv: the arguments after the program name, e.g. ``["detect", "--input", "a.png", "--out", "o"]``.
        commands: command name -> function (its signature lists the flags, types and defaults).
        limits: command name -> argument name (with underscores) -> an interval (``"(0, inf)"``,
            ``"[0, 1]"``, an :class:`Interval`) for numbers, or a sequence of accepted strings.

    Raises:
        ArgumentError: (a ``ValueError``) an unknown or ambiguous flag, a positional argument too many, a
            missing required argument, a value of the wrong type, a non-finite or out-of-range number, or
            a value that is not one of the choices; the message is one line that names the flag.
    """
    argv = [str(a) for a in argv]
    if not argv or argv[0] not in commands:
        return
    command, args = argv[0], argv[1:]
    if "--" in args:
        cut = len(args) - 1 - args[::-1].index("--")
        args, fire_flags = args[:cut], args[cut + 1 :]
        if any(a in _HELP_FLAGS for a in fire_flags):
            return
    if any(a in _HELP_FLAGS for a in args):
        return
    params = [
        p
        for p in inspect.signature(commands[command]).parameters.values()
        if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    ]
    names = [p.name for p in params]
    given, positional = _parse_like_fire(command, args, names)
    for p in params:  # fire fills the arguments not given by name from the positional ones, in order
        if p.name not in given and positional and p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD:
            given[p.name] = _Given(positional.pop(0), f"positional argument for {_flag(p.name)}")
    if positional:
        raise ArgumentError(
            f"{positional[0]!r}: unexpected argument for {command!r} (all of its arguments "
            f"{', '.join(_flag(n) for n in names)} already have a value)"
        )
    missing = [p.name for p in params if p.default is inspect.Parameter.empty and p.name not in given]
    if missing:
        raise ArgumentError(
            f"{_flag(missing[0])}: missing, {command!r} needs {' and '.join(_flag(n) for n in missing)}"
        )
    command_limits = (limits or {}).get(command, {})
    for p in params:
        if p.name in given:
            _check_value(p.name, p, given[p.name], command_limits.get(p.name))


_TRUE = ("true", "yes", "on", "1")
_FALSE = ("false", "no", "off", "0")


def as_flag(value: Any, name: str) -> bool:
    """A boolean setting of a bundle config as given on the ``monai.bundle`` command line, or refused.

    ``python -m monai.bundle run ... --resume false`` passes the *string* ``"false"`` (python-fire reads
    only ``False`` as a boolean), which Python takes as true: the configs read every boolean through
    this function so that ``false``, ``no``, ``off`` and ``0`` mean false whatever their case.

    Args:
        value: a bool, ``0`` / ``1``, or one of the strings above (or ``true``, ``yes``, ``on``, ``1``).
        name: the config key, for the message.

    Raises:
        ArgumentError: any other value (the message names the key).
    """
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
        return value.strip().lower() in _TRUE
    raise ArgumentError(f"{name} must be true or false, got {value!r}.")
