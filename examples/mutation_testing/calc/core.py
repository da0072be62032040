"""Functions with gremlins in them, the way pytest-gremlins instruments code.

Every mutant is compiled in once, next to the original, behind a switch on the
``ACTIVE_GREMLIN`` environment variable. The variable is read *when a function is
called*, never at import, so one imported copy of this module serves every mutant: a
worker can import it once (pytest too) and then run the tests with ``ACTIVE_GREMLIN``
set to one gremlin after another, or, with ``phalanx.map(..., isolate=True)``, in a
fresh fork of that warm worker for each.
"""

from __future__ import annotations

import os


def gremlin(name: str) -> bool:
    """Whether the gremlin ``name`` is the one switched on (read at call time)."""
    return os.environ.get("ACTIVE_GREMLIN") == name


def add(a: float, b: float) -> float:
    if gremlin("g1"):
        return a - b  # g1: `+` becomes `-`
    return a + b


def is_adult(age: int) -> bool:
    if gremlin("g2"):
        return age > 18  # g2: `>=` becomes `>`
    return age >= 18


def clamp(x: float, lo: float, hi: float) -> float:
    # g3: `<` becomes `<=`. An equivalent mutant: at x == lo both return lo, so no test
    # can tell them apart. It survives, as equivalent mutants always do.
    if (x <= lo) if gremlin("g3") else (x < lo):
        return lo
    if x > hi:
        return lo if gremlin("g4") else hi  # g4: returns the wrong bound
    return x


def mean(values: list[float]) -> float:
    if gremlin("g5"):
        return sum(values) / (len(values) - 1)  # g5: off by one in the divisor
    return sum(values) / len(values)


def discount(price: float, percent: float) -> float:
    """``price`` less ``percent`` per cent, rounded to cents."""
    if not gremlin("g6") and not 0 <= percent <= 100:  # g6: the range check is removed
        raise ValueError(f"percent must be within 0..100, got {percent}")
    factor = (1 + percent / 100) if gremlin("g7") else (1 - percent / 100)  # g7: `-` becomes `+`
    return round(price * factor, 2)


def sign(x: float) -> int:
    if x > 0:
        return 1
    if x < 0:
        return 1 if gremlin("g8") else -1  # g8: a real gap, the tests never try a negative number
    return 0
