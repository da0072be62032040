"""Duration history: how long each task usually takes, learnt from the runs in the journal.

Each key (a task's id; for ``phalanx map``, its command template) has an exponentially
weighted moving average of its succeeded attempts' durations: ``new = a * d + (1 - a) * old``
with ``a = 0.3``, so the estimate follows a task that got slower within a few runs while
one odd run moves it only part of the way. Failed attempts do not count: a command that
fails at once says nothing about how long its work takes.

`HistoryCosts` is the scheduler's `CostModel` with history: a declared ``cost`` first, else
the history's estimate, else unknown; the critical path then follows measured durations.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass

from .journal import Journal
from .model import Task

#: The weight of the newest duration in the moving estimate.
ALPHA = 0.3


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    """One key's estimate: ``samples`` durations went into it, the last at ``updated_at`` (Unix time)."""

    key: str
    estimate: float
    samples: int
    updated_at: float


class DurationHistory:
    """The per-key moving estimates, in the journal's ``durations`` table.

    `JournalSink` feeds it as tasks succeed, in a transaction that records a task's end (a
    second's worth of durations at a time, `phalanx.journal.HISTORY_EVERY`), so the history
    never counts a task the journal does not have as ended.
    """

    def __init__(self, journal: Journal, *, alpha: float = ALPHA) -> None:
        if not 0 < alpha <= 1:
            raise ValueError(f"alpha must be in (0, 1], got {alpha!r}")
        self._journal = journal
        self._alpha = alpha

    def observe(self, key: str, seconds: float, *, db: sqlite3.Connection | None = None) -> None:
        """Fold one succeeded attempt's duration into ``key``'s estimate (the first one is
        the estimate). ``db``: the connection of a transaction already open on the journal."""
        if not seconds >= 0:  # also refuses NaN
            raise ValueError(f"a duration must be a non-negative number, got {seconds!r}")
        if db is None:
            with self._journal.transaction() as db:
                self._observe(db, key, seconds)
        else:
            self._observe(db, key, seconds)

    def _observe(self, db: sqlite3.Connection, key: str, seconds: float) -> None:
        # One statement: two runs feeding the same journal cannot lose each other's update.
        db.execute(
            "INSERT INTO durations (key, estimate, samples, updated_at) VALUES (?, ?, 1, ?)"
            " ON CONFLICT (key) DO UPDATE SET estimate = ? * excluded.estimate + (1 - ?) * durations.estimate,"
            " samples = durations.samples + 1, updated_at = excluded.updated_at",
            (key, seconds, time.time(), self._alpha, self._alpha),
        )

    def estimate(self, key: str) -> float | None:
        """``key``'s estimated seconds, or None if it never succeeded."""
        rows = self._journal.query("SELECT estimate FROM durations WHERE key = ?", (key,))
        return float(rows[0][0]) if rows else None

    def estimates(self) -> dict[str, float]:
        """Every key's estimate (one query, for planning a whole graph)."""
        return {str(key): float(value) for key, value in self._journal.query("SELECT key, estimate FROM durations")}

    def entries(self) -> list[HistoryEntry]:
        """Every key's entry, by key."""
        rows = self._journal.query("SELECT key, estimate, samples, updated_at FROM durations ORDER BY key")
        return [HistoryEntry(str(key), float(value), int(samples), float(at)) for key, value, samples, at in rows]

    def clear(self, key: str | None = None) -> int:
        """Forget ``key`` (or every key); how many entries went."""
        with self._journal.transaction() as db:
            if key is None:
                return db.execute("DELETE FROM durations").rowcount
            return db.execute("DELETE FROM durations WHERE key = ?", (key,)).rowcount


class HistoryCosts:
    """A `CostModel`: a task's declared ``cost``, else its history's estimate, else None.

    The estimates are read once, at the first question: the scheduler asks about every
    task when a run starts, and one query beats one per task.

    Args:
        history: the duration history.
        key: a task's history key (default: its id; ``phalanx map`` gives its template).
    """

    def __init__(self, history: DurationHistory, *, key: Callable[[Task], str] | None = None) -> None:
        self._history = history
        self._key = key
        self._known: dict[str, float] | None = None

    def estimate(self, task: Task) -> float | None:
        if task.cost is not None:
            return task.cost
        if self._known is None:
            self._known = self._history.estimates()
        return self._known.get(task.id if self._key is None else self._key(task))
