"""Durations as users write them: ``90``, ``1.5``, ``"90s"``, ``"2m"``, ``"1m30s"``, ``"250ms"``."""

from __future__ import annotations

import math
import re

from .errors import DurationError

_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|m|h|d)")


def parse_duration(value: object, *, what: str = "duration") -> float:
    """Seconds for a duration given as a number or a string with units.

    Args:
        value: a non-negative int/float (seconds) or a string such as ``"2m"``,
            ``"1h30m"``, ``"250ms"`` or ``"12.5"``.
        what: the name of the setting, used in the error message.

    Raises:
        DurationError: the value is not a duration, is negative, or is not finite.
    """
    if isinstance(value, bool):
        raise DurationError(f"{what}: expected a duration such as 30, \"90s\" or \"2m\", got {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        seconds = _parse_text(value.strip(), what)
    else:
        raise DurationError(
            f"{what}: expected a duration such as 30, \"90s\" or \"2m\", got {value!r}"
        )
    if not math.isfinite(seconds) or seconds < 0:
        raise DurationError(f"{what}: must be a non-negative, finite duration, got {value!r}")
    return seconds


def _parse_text(text: str, what: str) -> float:
    try:
        return float(text)
    except ValueError:
        pass
    position = 0
    total = 0.0
    for match in _PART.finditer(text):
        if match.start() != position or not match.group(0):
            break
        total += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        position = match.end()
    if position != len(text) or not text:
        raise DurationError(
            f"{what}: {text!r} is not a duration (use a number of seconds or units "
            "ms, s, m, h, d, e.g. \"90s\", \"2m\", \"1m30s\")"
        )
    return total


def format_duration(seconds: float) -> str:
    """A short human form: ``0.003s``, ``1.25s``, ``2m05s``, ``1h02m``."""
    if seconds < 10:
        return f"{seconds:.3f}s" if seconds < 1 else f"{seconds:.2f}s"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"
