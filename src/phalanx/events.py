"""Events: the only way anything leaves the scheduler while a run is going.

The scheduler publishes immutable event records; sinks (console, journal, JUnit, trace,
progress bars, user callbacks) consume them. Adding an output touches no engine code.
Times (`at`) are seconds since the run started.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from ._records import fast_init
from .results import CancelReason, RunReport, TaskResult


@dataclass(frozen=True, slots=True)
class RunStarted:
    run_id: str
    total: int
    max_workers: int
    started_at: float  # Unix time
    at: float = 0.0


@fast_init
@dataclass(frozen=True, slots=True)
class TaskStarted:
    task_id: str
    attempt: int
    worker: int
    at: float


@fast_init
@dataclass(frozen=True, slots=True)
class TaskRetrying:
    """An attempt failed and another will run after ``delay`` seconds.

    ``value`` is what the failed attempt returned, if anything: for a batch of items, the
    items that did succeed (the retry runs only the others).
    """

    task_id: str
    attempt: int  # the attempt that failed
    delay: float
    reason: str
    at: float
    value: Any = None


@fast_init
@dataclass(frozen=True, slots=True)
class TaskFinished:
    result: TaskResult
    at: float

    @property
    def task_id(self) -> str:
        return self.result.task_id


@dataclass(frozen=True, slots=True)
class RunCancelling:
    """The run stopped starting tasks (fail-fast, halt, or a signal)."""

    reason: CancelReason
    at: float


@dataclass(frozen=True, slots=True)
class RunFinished:
    report: RunReport
    at: float


@dataclass(frozen=True, slots=True)
class RateLimitPaused:
    """Every task on a rate limit's key waits ``seconds`` (a server's Retry-After), not only
    the task that was told to: requests already sent go on."""

    limiter: str
    key: str
    seconds: float
    at: float


@dataclass(frozen=True, slots=True)
class ConcurrencyChanged:
    """An adaptive rate limit's window (how many attempts on the key may run at once) changed."""

    limiter: str
    key: str
    window: int
    at: float


@dataclass(frozen=True, slots=True)
class WorkersChanged:
    """The number of tasks the run may have going at once changed (``-j auto`` adapting to
    the machine's load and free memory, or `Scheduler.set_workers`).

    Attributes:
        workers: the slots in force from now on (at most the run's ``max_workers``).
        reason: why, in words ("load 3.1 > 2", "machine idle").
    """

    workers: int
    reason: str
    at: float


Event = (
    RunStarted | TaskStarted | TaskRetrying | TaskFinished | RunCancelling | RunFinished
    | RateLimitPaused | ConcurrencyChanged | WorkersChanged
)


class Sink(Protocol):
    """Anything that consumes events: the plug-in point for every output.

    ``handle`` runs on the scheduler's loop, so it must be quick and must not block;
    a sink that writes files writes and flushes each record as it comes, so a crash
    loses nothing already reported.
    """

    def handle(self, event: Event) -> None: ...

    def close(self) -> None: ...
