"""The error hierarchy: every error phalanx raises for bad input is a `PhalanxError`.

Each subclass is also the matching builtin (a cycle is a `ValueError`, an unknown
dependency a `KeyError`-free `ValueError`), so callers that catch builtins keep working.
Errors carry what they are about as attributes (task id, file, line, the cycle as a list),
and their message says what to do. A location (file and line) is attached by the
front end that knows it (`config.py`), never guessed by the model.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .results import ErrorInfo, TaskResult


class PhalanxError(Exception):
    """Base of every error phalanx raises for bad input or bad usage.

    Attributes:
        task_id: the task the error is about, if any.
        file: the task file the error was found in, if any.
        line: the 1-based line in ``file``, if known.
    """

    def __init__(
        self,
        message: str,
        *,
        task_id: str | None = None,
        file: str | None = None,
        line: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.task_id = task_id
        self.file = file
        self.line = line

    def located(self, file: str, line: int | None) -> PhalanxError:
        """Attach a file and line (kept if already set) and return self."""
        if self.file is None:
            self.file = file
        if self.line is None:
            self.line = line
        return self

    def __str__(self) -> str:
        where = ""
        if self.file is not None:
            where = f"{self.file}:{self.line}: " if self.line is not None else f"{self.file}: "
        return where + self.message


class ConfigError(PhalanxError, ValueError):
    """A task file or option is malformed (syntax, unknown key, wrong type)."""


class DurationError(ConfigError):
    """A duration such as a timeout could not be parsed or is negative."""


class DuplicateTaskError(PhalanxError, ValueError):
    """Two tasks share one id."""


class UnknownDependencyError(PhalanxError, ValueError):
    """A task depends on an id that no task has.

    Attributes:
        dependency: the unknown id.
        suggestion: the closest existing id, if one is close.
    """

    def __init__(
        self, task_id: str, dependency: str, known: Iterable[str], **where: str | int | None
    ) -> None:
        self.dependency = dependency
        self.suggestion = did_you_mean(dependency, known)
        hint = f" (did you mean {self.suggestion!r}?)" if self.suggestion else ""
        super().__init__(
            f"task {task_id!r} depends on unknown task {dependency!r}{hint}",
            task_id=task_id,
            **where,  # type: ignore[arg-type]
        )


class CycleError(PhalanxError, ValueError):
    """The dependencies form a cycle.

    Attributes:
        cycle: the ids on the cycle, first id repeated at the end (``a -> b -> a``).
    """

    def __init__(self, cycle: Sequence[str]) -> None:
        self.cycle = list(cycle)
        super().__init__(
            "dependency cycle: " + " -> ".join(self.cycle), task_id=self.cycle[0]
        )


class ResourceError(PhalanxError, ValueError):
    """A task asks for a resource that does not exist or exceeds its capacity."""


class SelectionError(PhalanxError, ValueError):
    """A ``--select`` pattern names no task."""


def did_you_mean(word: str, known: Iterable[str]) -> str | None:
    """The closest of ``known`` to ``word``, if any is close enough to suggest."""
    import difflib  # only on the error path: keeps start-up light

    matches = difflib.get_close_matches(word, list(known), n=1, cutoff=0.6)
    return matches[0] if matches else None


class TaskError(PhalanxError):
    """A task or item did not succeed; raised where its value would have been.

    Attributes:
        result: the full `TaskResult` (status, error with the remote traceback, worker).
    """

    def __init__(self, result: TaskResult) -> None:
        what = result.reason or result.status.value
        named = what.split(": ", 1)[-1].startswith(("item ", "task "))  # the reason names it already
        super().__init__(what if named else f"{result.task_id}: {what}", task_id=result.task_id)
        self.result = result


class TaskTimedOut(TaskError, TimeoutError):
    """The task or item ran over its timeout and was stopped."""


class WorkerCrashed(TaskError):
    """The worker process running the task or item died (the signal or exit code is in the message)."""


class WorkerInitError(PhalanxError, RuntimeError):
    """A worker could not start: its initializer raised, or it died while starting.

    Attributes:
        error: what went wrong in the worker, with its traceback.
    """

    def __init__(self, error: ErrorInfo) -> None:
        super().__init__(f"a worker could not start: {error}")
        self.error = error


class RemoteTraceback(PhalanxError):
    """The traceback of an exception raised in a worker, attached as ``__cause__``."""

    def __init__(self, text: str) -> None:
        super().__init__(text)

    def __str__(self) -> str:
        return "\n" + self.message
