"""Rules a front end hands the scheduler: when to stop early and how long an attempt may run.

The scheduler alone applies them, on its loop: it asks the halt rule about every task that
ends (the last one included) and the timeout rule when an attempt starts and again after
every task ends, so a limit may follow what has run so far (GNU parallel's ``--timeout
200%``). Sinks only consume events; backends only run attempts.
"""

from __future__ import annotations

from typing import Literal, Protocol

from .model import Task
from .results import TaskResult

#: What a halt rule answers about a task that ended: stop ``"now"`` (cancel what runs),
#: stop ``"soon"`` (start nothing new, let what runs finish), or None (go on).
HaltDecision = Literal["now", "soon"] | None


class HaltRule(Protocol):
    """Decides, after each task ends, whether the run stops early (``--halt``)."""

    def __call__(self, result: TaskResult) -> HaltDecision: ...


class TimeoutRule(Protocol):
    """Each attempt's time limit, which may change while the attempt runs."""

    def limit(self, task: Task) -> float | None:
        """The longest an attempt of ``task`` may run, in seconds (None: no limit).

        Asked when the attempt starts and again after every task ends; a limit already
        passed stops the attempt at once.
        """
        ...

    def observe(self, result: TaskResult) -> None:
        """Learn from a task that ended (called before the limits are asked again)."""
        ...
