"""Named, shared rate limits: ``50/s``, ``90000/min`` of tokens, with Retry-After pauses and AIMD.

A `Limiters` is pure bookkeeping. The scheduler asks it, at its own clock value ``now``,
whether an attempt may start (`Limiters.try_acquire`) and tells it when one ended
(`Limiters.release`); the limiter never sleeps, never reads a clock and never touches
asyncio, so it is exact on a fake clock and a test can drive it with plain floats.
``now`` must never decrease (it is the scheduler's monotonic loop time).

Each (limit name, key) pair is limited on its own: a key is a provider or a model, and
tasks on different keys do not slow each other down. A use is granted only when all of
these hold:

* pacing (GCRA, "virtual scheduling"): uses are spread one emission interval
  ``period / limit`` apart, with ``burst`` of them allowed at once after a quiet spell.
  A use pays after it is sent, so a first big weighted request is not delayed;
* a hard sliding window: the costs granted in the half-open window ``(now - period, now]``
  never exceed ``limit``, whatever the pacing allowed;
* the key's shared pause (a server's Retry-After) is over;
* for an adaptive limit, fewer attempts are in flight than its AIMD window.

Every wait returned is exact, not a bound: asking again after exactly that long (with
nothing granted meanwhile) is granted, and asking any earlier is refused.
"""

from __future__ import annotations

import math
import re
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from .errors import ConfigError, did_you_mean

#: Milliseconds per period unit: whole numbers, so that "100ms" parses (through a Fraction)
#: to the float nearest 0.1 exactly.
_UNITS: Mapping[str, int] = {
    **dict.fromkeys(("ms", "msec", "millisecond", "milliseconds"), 1),
    **dict.fromkeys(("s", "sec", "secs", "second", "seconds"), 1000),
    **dict.fromkeys(("m", "min", "mins", "minute", "minutes"), 60_000),
    **dict.fromkeys(("h", "hr", "hour", "hours"), 3_600_000),
    **dict.fromkeys(("d", "day", "days"), 86_400_000),
}
#: The units `Rate.__str__` writes, largest first.
_CANONICAL_UNITS = (("d", 86400), ("h", 3600), ("min", 60), ("s", 1))
_NUMBER = r"\d+(?:\.\d*)?|\.\d+"
_RATE = re.compile(rf"\s*({_NUMBER})\s*/\s*({_NUMBER})?\s*([a-z]+)\s*")
_RATE_FORMS = "a rate such as '50/s', '500/min' or '10/2s'"
_LIMIT_KEYS = ("rate", "burst", "weighted", "adaptive", "max_window")
#: Slack for the AIMD window's float sums: a window that rounds to just below a whole number still allows it.
_WINDOW_EPSILON = 1e-9


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _number_text(value: float) -> str:
    """``50``, ``2.5``, ``0.00001``: plain decimal (never ``1e-05``), so it parses back exactly."""
    if value.is_integer():
        return str(int(value))
    from decimal import Decimal  # here, not at import: `phalanx map` starts without it

    return format(Decimal(repr(value)), "f")


def _seconds(count: str | None, unit: str) -> float:
    from fractions import Fraction  # here, not at import: `phalanx map` starts without it

    return float(Fraction(count or 1) * _UNITS[unit] / 1000)


@dataclass(frozen=True, slots=True)
class Rate:
    """At most ``limit`` uses (or tokens, when weighted) per ``period`` seconds.

    Attributes:
        limit: how many per period; positive and finite.
        period: the period in seconds; positive and finite.
    """

    limit: float
    period: float

    def __post_init__(self) -> None:
        for name, value in (("limit", self.limit), ("period", self.period)):
            if not _is_number(value) or not 0 < value < math.inf:
                raise ConfigError(f"rate: {name} must be a positive, finite number, got {value!r}")
            object.__setattr__(self, name, float(value))

    @classmethod
    def parse(cls, spec: str | Rate, *, what: str = "rate") -> Rate:
        """A rate from ``"50/s"``, ``"500/min"``, ``"10/2s"``, ``"1/500ms"``, ``"2.5/s"`` (or a `Rate`).

        Units: ms, s (sec, second), m (min, minute), h (hour), d (day); a number before
        the unit makes the period that many units.

        Raises:
            ConfigError: naming ``what``, if the spec is not such a rate.
        """
        if isinstance(spec, Rate):
            return spec
        match = _RATE.fullmatch(spec) if isinstance(spec, str) else None
        if match is None or match.group(3) not in _UNITS:
            raise ConfigError(f"{what}: expected {_RATE_FORMS}, got {spec!r}")
        from fractions import Fraction

        limit = float(Fraction(match.group(1)))
        period = _seconds(match.group(2), match.group(3))
        if not 0 < limit < math.inf or not 0 < period < math.inf:
            raise ConfigError(f"{what}: a rate's count and period must be positive and finite, got {spec!r}")
        return cls(limit, period)

    def __str__(self) -> str:
        """The canonical short form, which `parse` reads back to an equal `Rate`."""
        return f"{_number_text(self.limit)}/{self._period_text()}"

    def _period_text(self) -> str:
        # A whole number of the largest unit that fits ("2min", "h"), else milliseconds below
        # a second ("500ms"), else plain seconds ("1.5s"); each checked to read back exactly.
        candidates = [(round(self.period / seconds), unit) for unit, seconds in _CANONICAL_UNITS]
        if self.period < 1:
            candidates.append((round(self.period * 1000), "ms"))
        for count, unit in candidates:
            text = "" if count == 1 else str(count)
            if count >= 1 and _seconds(text, unit) == self.period:
                return text + unit
        return _number_text(self.period) + "s"


@dataclass(frozen=True, slots=True, init=False)
class RateLimit:
    """The definition of one named limiter.

    Attributes:
        rate: at most this many per period (a spec such as ``"500/min"`` is parsed).
        burst: how many may go at once after a quiet spell (tokens, when weighted); from 1
            to the rate's limit. The default 1 never bursts: uses are evenly spaced.
        weighted: charge each use its declared cost (tokens per minute) instead of 1.
        adaptive: limit the attempts in flight per key with an AIMD window that halves
            when the server throttles and grows back by about one per window of successes.
        max_window: the AIMD ceiling (and starting window); None for the one the
            `Limiters` was built with.
    """

    rate: Rate
    burst: float = 1
    weighted: bool = False
    adaptive: bool = False
    max_window: int | None = None

    # Written out rather than generated, so that type checkers accept a spec too: RateLimit("500/min").
    def __init__(
        self,
        rate: Rate | str,
        burst: float = 1,
        weighted: bool = False,
        adaptive: bool = False,
        max_window: int | None = None,
    ) -> None:
        parsed, burst = _checked_limit(rate, burst, weighted, adaptive, max_window, "rate limit")
        _set = object.__setattr__
        _set(self, "rate", parsed)
        _set(self, "burst", burst)
        _set(self, "weighted", weighted)
        _set(self, "adaptive", adaptive)
        _set(self, "max_window", max_window)

    @classmethod
    def of(cls, value: str | Rate | RateLimit | Mapping[str, Any], *, what: str) -> RateLimit:
        """A limit from a rate spec (``"500/min"``) or a table as written in TOML,
        ``{rate = "90000/min", burst = 10, weighted = true, adaptive = true, max_window = 8}``.

        Raises:
            ConfigError: naming ``what`` and the offending key.
        """
        if isinstance(value, RateLimit):
            return value
        if isinstance(value, str | Rate):
            return cls(Rate.parse(value, what=what))
        if not isinstance(value, Mapping):
            raise ConfigError(
                f"{what}: expected {_RATE_FORMS}, or a table with {', '.join(_LIMIT_KEYS)}; got {value!r}"
            )
        for key in value:
            if key not in _LIMIT_KEYS:
                guess = did_you_mean(key, _LIMIT_KEYS) if isinstance(key, str) else None
                hint = f"did you mean {guess!r}?" if guess else f"expected {', '.join(_LIMIT_KEYS)}"
                raise ConfigError(f"{what}: unknown key {key!r} ({hint})")
        if "rate" not in value:
            raise ConfigError(f"{what}: missing 'rate' (e.g. rate = \"500/min\")")
        fields: dict[str, Any] = {"burst": 1, "weighted": False, "adaptive": False, "max_window": None, **value}
        fields["rate"] = Rate.parse(fields["rate"], what=f"{what}.rate")
        # Checked here with ``what`` so that a bad value is reported where the user wrote it.
        _checked_limit(what=what, **fields)
        return cls(**fields)


def _checked_limit(
    rate: object, burst: object, weighted: object, adaptive: object, max_window: object, what: str
) -> tuple[Rate, float]:
    """The parsed rate and the burst as a float, once every field has been checked."""
    if not isinstance(rate, str | Rate):
        raise ConfigError(f"{what}: rate must be {_RATE_FORMS}, got {rate!r}")
    rate = Rate.parse(rate, what=f"{what}.rate")
    if rate.limit < 1:
        # Nothing of cost 1 could ever go: the sliding window would refuse it forever.
        raise ConfigError(f"{what}: {rate} allows less than one use per period; scale both up, e.g. '1/2s'")
    if not isinstance(burst, int | float) or isinstance(burst, bool) or not 1 <= burst <= rate.limit:
        raise ConfigError(f"{what}: burst must be a number from 1 to the rate's limit ({rate}), got {burst!r}")
    for name, flag in (("weighted", weighted), ("adaptive", adaptive)):
        if not isinstance(flag, bool):
            raise ConfigError(f"{what}: {name} must be true or false, got {flag!r}")
    if max_window is not None and (not isinstance(max_window, int) or isinstance(max_window, bool) or max_window < 1):
        raise ConfigError(f"{what}: max_window must be a positive integer, got {max_window!r}")
    return rate, float(burst)


class Use(NamedTuple):
    """One task's claim on one limiter (a named tuple: tuples of uses key the scheduler's
    gates, and a tuple hashes in C).

    Attributes:
        name: the limiter's name.
        key: which of its keys (a provider, a model); "" for the one shared key.
        cost: what one attempt is charged on a weighted limiter (tokens); an unweighted
            limiter charges 1 whatever it says.
    """

    name: str
    key: str = ""
    cost: float = 1.0


@dataclass(frozen=True, slots=True)
class WindowChanged:
    """An adaptive key's window (attempts allowed in flight) changed; the scheduler reports it."""

    name: str
    key: str
    window: int


@dataclass(frozen=True, slots=True)
class Paused:
    """A key started or extended a shared pause: nothing on it starts before ``until``.

    Attributes:
        until: the clock value the pause ends at.
        seconds: how long from the moment it was set (``until - now``).
    """

    name: str
    key: str
    until: float
    seconds: float


@dataclass(frozen=True, slots=True)
class _Limit:
    """A `RateLimit` with what the algorithm needs precomputed."""

    limit: float
    period: float
    interval: float  # seconds per unit of cost: GCRA's emission interval T
    tolerance: float  # how far ahead of its schedule a key may run: (burst - 1) * T
    weighted: bool
    adaptive: bool
    ceiling: int
    rate: Rate
    name: str = ""
    unbounded: bool = False  # a rate no run reaches: the limit is there for its pauses and window


#: Rates above this many a second are never reached: such a limit keeps no schedule.
UNBOUNDED_PER_SECOND = 1e9


@dataclass(slots=True)
class _Key:
    """The mutable state of one (name, key)."""

    window: float  # the AIMD window as a float; attempts allowed in flight are its floor
    tat: float = -math.inf  # GCRA's theoretical arrival time
    log: deque[tuple[float, float]] = field(default_factory=deque)  # (grant time, cost) within the last period
    total: float = 0.0  # the sum of the costs in ``log``
    in_flight: int = 0
    paused_until: float = -math.inf
    last_decrease: float = -math.inf  # when the window was last halved
    key: str = ""

    def expire(self, now: float, period: float) -> None:
        """Forget the grants that left the window ``(now - period, now]``."""
        log = self.log
        while log and log[0][0] + period <= now:
            self.total -= log.popleft()[1]
        if not log:
            self.total = 0.0  # no float residue left over from the subtractions

    def window_opens(self, cost: float, limit: float, period: float) -> float:
        """The earliest time the sliding window has room for ``cost`` (the log is expired).

        Replays exactly the subtractions `expire` will make, so that at the time returned
        the check is passed to the last bit, not merely approximately."""
        total = self.total
        for index, (granted, spent) in enumerate(self.log):
            total = 0.0 if index == len(self.log) - 1 else total - spent
            if total + cost <= limit:
                return granted + period
        return -math.inf  # there was room already

    @property
    def allowed_in_flight(self) -> int:
        return int(self.window + _WINDOW_EPSILON)


def _wait_until(now: float, target: float) -> float:
    """Seconds from ``now`` to ``target``, rounded up so that ``now + wait >= target`` in floats."""
    if target <= now:
        return 0.0
    wait = target - now
    while now + wait < target:
        wait = math.nextafter(wait, math.inf)
    return wait


class Limiters:
    """The run's named rate limiters and the state of each (name, key).

    Args:
        limits: the definitions by name.
        max_window: the AIMD ceiling of adaptive limits that do not set their own
            (the run's concurrency is a natural choice).
    """

    def __init__(self, limits: Mapping[str, RateLimit], *, max_window: int) -> None:
        if not isinstance(max_window, int) or isinstance(max_window, bool) or max_window < 1:
            raise ConfigError(f"max_window must be a positive integer, got {max_window!r}")
        self._limits: dict[str, _Limit] = {}
        for name, limit in limits.items():
            if not isinstance(name, str) or not name:
                raise ConfigError(f"a rate limit's name must be a non-empty string, got {name!r}")
            if not isinstance(limit, RateLimit):
                raise ConfigError(f"rate limit {name!r}: expected a RateLimit, got {type(limit).__name__}")
            interval = limit.rate.period / limit.rate.limit
            self._limits[name] = _Limit(
                limit=limit.rate.limit,
                period=limit.rate.period,
                interval=interval,
                tolerance=(limit.burst - 1) * interval,
                weighted=limit.weighted,
                adaptive=limit.adaptive,
                ceiling=limit.max_window if limit.max_window is not None else max_window,
                rate=limit.rate,
                name=name,
                unbounded=limit.rate.limit / limit.rate.period >= UNBOUNDED_PER_SECOND,
            )
        self._keys: dict[tuple[str, str], _Key] = {}
        self._resolved: dict[tuple[Use, ...], tuple[tuple[_Limit, _Key, float], ...]] = {}
        self._now = 0.0  # the latest clock value seen, for a `pause` that is not told the time

    def names(self) -> frozenset[str]:
        """The names of the defined limiters."""
        return frozenset(self._limits)

    def uses(self, names: Sequence[str], key: str = "", cost: float = 1.0) -> tuple[Use, ...]:
        """A task's uses of the limiters ``names`` on ``key``: its cost on the weighted ones, 1 on
        the others (so that equal claims are equal, hashable tuples). Unknown names are kept for
        `check` to report."""
        return tuple(
            Use(name, key, cost if name not in self._limits or self._limits[name].weighted else 1.0)
            for name in names
        )

    def check(self, uses: Sequence[Use]) -> None:
        """Check, before a task is accepted, that its uses could ever be granted.

        Raises:
            ConfigError: an unknown limiter, a cost that is not positive and finite, or a
                weighted cost above what the limiter allows in one period.
        """
        self._claims(uses)

    def try_acquire(self, uses: Sequence[Use], now: float) -> float:
        """Take all the uses at once if they are all allowed at ``now``.

        Returns:
            0.0 when granted (tokens spent, attempt counted in flight); otherwise nothing
            is recorded and the result is the exact wait before asking again (the longest
            over the uses), or ``math.inf`` when a full adaptive window is in the way
            (ask again after a release).
        """
        self._now = max(self._now, now)
        claims = self._resolve(uses)
        wait = 0.0
        for limit, state, cost in claims:
            wait = max(wait, self._wait(limit, state, cost, now))
            if wait == math.inf:
                return wait
        if wait > 0:
            return wait
        for limit, state, cost in claims:
            state.in_flight += 1
            if limit.unbounded:
                continue  # only its pauses and window count: no schedule to keep
            # Pay after: the use goes now and pushes the schedule of the next one back.
            state.tat = max(state.tat, now) + cost * limit.interval
            state.log.append((now, cost))
            state.total += cost
        return 0.0

    def release(
        self, uses: Sequence[Use], started: float, now: float, *, throttled: bool, retry_after: float | None
    ) -> list[WindowChanged | Paused]:
        """The attempt granted at ``started`` ended at ``now``.

        Args:
            throttled: the attempt got a 429/503 or timed out: adaptive windows halve
                (once per round trip: a throttle from an attempt that started no later than
                the last halving is old news and is ignored, as in TCP).
            retry_after: seconds the server asked to wait (capped by the caller): every
                key of the uses pauses until ``now + retry_after``.

        Returns:
            What changed, for the scheduler to report: pauses started or extended, and
            adaptive windows whose whole number changed.
        """
        self._now = max(self._now, now)
        changes: list[WindowChanged | Paused] = []
        for limit, state, _cost in self._resolve(uses):
            name, key = limit.name, state.key
            state.in_flight = max(0, state.in_flight - 1)
            if retry_after is not None and retry_after > 0:
                paused = self.pause(name, key, now + retry_after, now=now)
                if paused is not None:
                    changes.append(paused)
            if not limit.adaptive:
                continue
            before = state.allowed_in_flight
            if not throttled:
                state.window = min(float(limit.ceiling), state.window + 1 / state.window)
            elif started > state.last_decrease:
                state.window = max(1.0, state.window / 2)
                state.last_decrease = now
            if state.allowed_in_flight != before:
                changes.append(WindowChanged(name, key, state.allowed_in_flight))
        return changes

    def pause(self, name: str, key: str, until: float, *, now: float | None = None) -> Paused | None:
        """Hold every use of (name, key) back until ``until`` (a pause never shortens).

        Args:
            now: the current time, for `Paused.seconds`; by default the latest clock
                value this `Limiters` was given.

        Returns:
            The pause if it started or grew, else None.
        """
        self._limit(name)
        state = self._key(name, key)
        if not until > state.paused_until:
            return None
        state.paused_until = until
        return Paused(name, key, until, max(0.0, until - (self._now if now is None else now)))

    def window(self, name: str, key: str) -> int | None:
        """The attempts (name, key) may have in flight now, or None if the limit is not adaptive."""
        limit = self._limit(name)
        if not limit.adaptive:
            return None
        state = self._keys.get((name, key))
        return limit.ceiling if state is None else state.allowed_in_flight

    def paused_until(self, name: str, key: str) -> float:
        """When the shared pause of (name, key) ends; ``-math.inf`` if it was never paused."""
        self._limit(name)
        state = self._keys.get((name, key))
        return -math.inf if state is None else state.paused_until

    def _limit(self, name: str) -> _Limit:
        limit = self._limits.get(name)
        if limit is None:
            defined = ", ".join(sorted(self._limits)) or "none"
            raise ConfigError(f"unknown rate limit {name!r} (defined: {defined})")
        return limit

    def _key(self, name: str, key: str) -> _Key:
        state = self._keys.get((name, key))
        if state is None:
            state = self._keys[name, key] = _Key(window=float(self._limits[name].ceiling), key=key)
        return state

    def _resolve(self, uses: Sequence[Use]) -> tuple[tuple[_Limit, _Key, float], ...]:
        """`_claims` with each (name, key) resolved to its limit and state, memoised: the
        tasks of one run mostly share a few tuples of uses (the cache is bounded)."""
        key = tuple(uses)
        resolved = self._resolved.get(key)
        if resolved is None:
            resolved = tuple((self._limits[name], self._key(name, k), cost)
                             for (name, k), cost in self._claims(uses).items())
            if len(self._resolved) >= 10_000:
                self._resolved.clear()
            self._resolved[key] = resolved
        return resolved

    def _claims(self, uses: Sequence[Use]) -> dict[tuple[str, str], float]:
        """The cost charged to each (name, key), uses of the same one added up (so that two
        uses in one task cannot each pass alone and together break the limit).

        Raises:
            ConfigError: as `check` documents.
        """
        claims: dict[tuple[str, str], float] = {}
        for use in uses:
            limit = self._limit(use.name)
            if not _is_number(use.cost) or not 0 < use.cost < math.inf:
                raise ConfigError(f"rate limit {use.name!r}: a cost must be positive and finite, got {use.cost!r}")
            charge = use.cost if limit.weighted else 1.0
            claims[use.name, use.key] = claims.get((use.name, use.key), 0.0) + charge
        for (name, _key), cost in claims.items():
            limit = self._limits[name]
            if cost > limit.limit:
                raise ConfigError(
                    f"costs {_number_text(cost)}, more than rate limit {name!r} allows in one period ({limit.rate})"
                )
        return claims

    def _wait(self, limit: _Limit, state: _Key, cost: float, now: float) -> float:
        """The exact wait before ``cost`` may go on this key (0.0 if now), recording nothing."""
        if limit.adaptive and state.in_flight >= state.allowed_in_flight:
            return math.inf
        if limit.unbounded:
            return _wait_until(now, state.paused_until) if state.paused_until > now else 0.0
        state.expire(now, limit.period)
        target = max(state.paused_until, state.tat - limit.tolerance)
        if state.total + cost > limit.limit:
            target = max(target, state.window_opens(cost, limit.limit, limit.period))
        return _wait_until(now, target)
