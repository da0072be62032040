"""Results: what happened to each task (`TaskResult`) and to the run (`RunSummary`, `RunReport`).

All immutable. A `TaskResult` is made once, when its task reaches its one terminal status;
times are seconds since the run started (so a fake clock gives exact numbers).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from ._records import fast_init

_EMPTY: Mapping[str, Any] = MappingProxyType({})


class Status(enum.Enum):
    """The terminal status of a task; each task ends in exactly one."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    CRASHED = "crashed"
    SKIPPED = "skipped"
    CANCELLED = "cancelled"

    @property
    def ok(self) -> bool:
        return self is Status.SUCCEEDED

    def __str__(self) -> str:
        return self.value


class CancelReason(enum.IntEnum):
    """Why a run stopped starting tasks. The order here matters: it is the severity."""

    FAIL_FAST = 1
    HALT = 2
    INTERRUPT = 3  # SIGINT / Ctrl-C
    TERMINATE = 4  # SIGTERM

    @property
    def label(self) -> str:
        return self.name.lower().replace("_", "-")


@dataclass(frozen=True, slots=True)
class ErrorInfo:
    """An exception as data: its type, message and the traceback where it was raised."""

    type: str
    message: str
    traceback: str = ""

    @classmethod
    def from_exception(cls, error: BaseException) -> ErrorInfo:
        import traceback

        return cls(
            type=type(error).__qualname__,
            message=str(error),
            traceback="".join(traceback.format_exception(error)),
        )

    def __str__(self) -> str:
        return f"{self.type}: {self.message}" if self.message else self.type


@dataclass(frozen=True, slots=True)
class StreamCut:
    """One output stream that printed more than ``max_output``: what it printed, what is kept.

    The file keeps the stream's first ``head`` bytes and its last ``kept - head`` bytes; the
    ``dropped`` bytes between them were counted and thrown away.
    """

    printed: int
    kept: int
    head: int

    @property
    def dropped(self) -> int:
        return self.printed - self.kept

    def to_dict(self) -> dict[str, int]:
        return {"printed": self.printed, "kept": self.kept, "dropped": self.dropped, "head": self.head}


@dataclass(frozen=True, slots=True)
class OutputCut:
    """A command's output cut to its ``max_output`` cap: per stream, None for one kept whole."""

    cap: int
    stdout: StreamCut | None = None
    stderr: StreamCut | None = None

    def describe(self) -> str:
        """``output cut: stdout 2.15 GB printed, 10 MB kept`` (each stream that was cut), in
        the units the cap is written in: powers of 1024 (``1.5 GiB printed, 1 MiB kept``) for
        a cap that is a whole number of them but not of powers of 1000."""
        binary = self.cap % 1000 != 0 and self.cap % 1024 == 0
        parts = [f"{name} {_size(cut.printed, binary)} printed, {_size(cut.kept, binary)} kept"
                 for name, cut in (("stdout", self.stdout), ("stderr", self.stderr)) if cut is not None]
        return "output cut: " + "; ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return {
            "cap": self.cap,
            "stdout": None if self.stdout is None else self.stdout.to_dict(),
            "stderr": None if self.stderr is None else self.stderr.to_dict(),
        }


_DECIMAL_UNITS = (("TB", 10**12), ("GB", 10**9), ("MB", 10**6), ("kB", 10**3))
_BINARY_UNITS = (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10))


def _size(size: int, binary: bool) -> str:
    """``204.8 MB``, ``3.07 MB``, ``2 GB``, ``512 B`` (or ``1.5 GiB``): at most two decimals."""
    for unit, factor in _BINARY_UNITS if binary else _DECIMAL_UNITS:
        if size >= factor:
            return f"{size / factor:.2f}".rstrip("0").rstrip(".") + f" {unit}"
    return f"{size} B"


@fast_init
@dataclass(frozen=True, slots=True)
class TaskResult:
    """What happened to one task.

    Attributes:
        task_id: the task.
        status: its terminal status.
        flaky: it succeeded, but only after at least one failed attempt.
        attempts: how many attempts ran (0 for skipped or never-started tasks).
        reason: why it did not succeed, in words (``exit code 2``, ``timed out after 5s``,
            ``dependency 'black' failed``), or None.
        exit_code: the command's exit status, if it exited.
        signal: the signal that ended the command, if any.
        error: the exception a callable raised, with its traceback.
        value: what a callable returned.
        data: structured data the task reported (``PHALANX_RESULT_FILE`` or a returned mapping).
        start: when the first attempt started, in seconds since the run started.
        end: when the task reached its terminal status, in seconds since the run started.
        duration: the last attempt's running time in seconds.
        busy_time: the running time of all attempts together.
        worker: the slot number the last attempt ran in (``PHALANX_WORKER``).
        pid: the process id of the last attempt, for commands and process workers.
        blocked_by: for a skipped task, the task whose failure caused the skip.
        stdout_tail, stderr_tail: the end of the last attempt's output.
        stdout_path, stderr_path: files with its whole output (kept when a log dir is given),
            or as much of it as ``max_output`` keeps.
        output_cut: how much of the last attempt's output ``max_output`` cut, per stream;
            None when nothing was cut. `note` says it in words.
        worker_address: the cluster worker the last attempt ran on (``--backend dask``:
            the Dask worker's address); None when it ran on this machine.
        exception: the exception object a callable raised, when it could be brought back
            (so `phalanx.map` can raise it where the value would be); not part of `to_dict`.
    """

    task_id: str
    status: Status
    flaky: bool = False
    attempts: int = 0
    reason: str | None = None
    exit_code: int | None = None
    signal: int | None = None
    error: ErrorInfo | None = None
    value: Any = None
    data: Mapping[str, Any] = field(default_factory=lambda: _EMPTY)
    start: float | None = None
    end: float | None = None
    duration: float = 0.0
    busy_time: float = 0.0
    worker: int | None = None
    pid: int | None = None
    blocked_by: str | None = None
    stdout_tail: str = ""
    stderr_tail: str = ""
    stdout_path: str | None = None
    stderr_path: str | None = None
    exception: BaseException | None = field(default=None, repr=False, compare=False)
    output_cut: OutputCut | None = None
    worker_address: str | None = None

    @property
    def ok(self) -> bool:
        """Whether the task succeeded (flaky or not)."""
        return self.status is Status.SUCCEEDED

    @property
    def note(self) -> str | None:
        """What people should know beside the status, such as ``output cut: stdout 2.15 GB
        printed, 10 MB kept``; None when there is nothing to say."""
        return None if self.output_cut is None else self.output_cut.describe()

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dictionary (the value is included only if JSON can hold it)."""
        out: dict[str, Any] = {
            "task_id": self.task_id,
            "status": self.status.value,
            "flaky": self.flaky,
            "attempts": self.attempts,
            "reason": self.reason,
            "exit_code": self.exit_code,
            "signal": self.signal,
            "error": None
            if self.error is None
            else {"type": self.error.type, "message": self.error.message, "traceback": self.error.traceback},
            "data": dict(self.data),
            "start": self.start,
            "end": self.end,
            "duration": self.duration,
            "busy_time": self.busy_time,
            "worker": self.worker,
            "pid": self.pid,
            "blocked_by": self.blocked_by,
            "stdout_tail": self.stdout_tail,
            "stderr_tail": self.stderr_tail,
            "output_cut": None if self.output_cut is None else self.output_cut.to_dict(),
            "note": self.note,
        }
        if self.worker_address is not None:
            out["worker_address"] = self.worker_address
        if isinstance(self.value, str | int | float | bool | type(None) | list | dict):
            out["value"] = self.value
        return out


@dataclass(frozen=True, slots=True)
class RunSummary:
    """What the whole run did, and how well it used its workers.

    Attributes:
        total: number of tasks.
        counts: tasks by terminal status (every status present, zeros included).
        flaky: succeeded tasks that needed a retry.
        wall_time: seconds from the run's start to its end.
        busy_time: seconds of task running time, all attempts added up.
        max_workers: the slot capacity (``-j``).
        achieved_parallelism: busy_time / wall_time (the sequential sum over wall time).
        max_concurrency: the most attempts that ran at once.
        critical_path: the ids on the longest chain of measured durations.
        critical_path_time: its length in seconds.
        lower_bound: max(critical_path_time, busy_time / max_workers): no schedule of these
            durations on these workers could finish sooner.
        slowest: the slowest tasks as (id, seconds), slowest first, at most five.
        data_totals: the numeric fields of tasks' reported data, summed over tasks.
        started_at: the run's start as a Unix timestamp.
        cancelled_by: why the run stopped early, if it did.
        halted_by: the task whose result stopped the run (fail-fast or halt), if any.
    """

    total: int
    counts: Mapping[Status, int]
    flaky: int
    wall_time: float
    busy_time: float
    max_workers: int
    achieved_parallelism: float
    max_concurrency: int
    critical_path: tuple[str, ...]
    critical_path_time: float
    lower_bound: float
    slowest: tuple[tuple[str, float], ...]
    data_totals: Mapping[str, float]
    started_at: float
    cancelled_by: CancelReason | None = None
    halted_by: str | None = None

    @property
    def speedup(self) -> float:
        """How many times faster than running the tasks one after another."""
        return self.achieved_parallelism

    @property
    def efficiency(self) -> float:
        """lower_bound / wall_time: 1.0 means no schedule could have done better."""
        return self.lower_bound / self.wall_time if self.wall_time > 0 else 1.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "counts": {status.value: n for status, n in self.counts.items()},
            "flaky": self.flaky,
            "wall_time": self.wall_time,
            "busy_time": self.busy_time,
            "max_workers": self.max_workers,
            "achieved_parallelism": self.achieved_parallelism,
            "max_concurrency": self.max_concurrency,
            "critical_path": list(self.critical_path),
            "critical_path_time": self.critical_path_time,
            "lower_bound": self.lower_bound,
            "slowest": [list(item) for item in self.slowest],
            "data_totals": dict(self.data_totals),
            "started_at": self.started_at,
            "cancelled_by": None if self.cancelled_by is None else self.cancelled_by.label,
            "halted_by": self.halted_by,
        }


@dataclass(frozen=True, slots=True, repr=False)
class RunReport:
    """Every task's result, by id, in the graph's order, and the run's summary."""

    results: Mapping[str, TaskResult]
    summary: RunSummary

    def __repr__(self) -> str:
        # Not every result: asyncio's Runner reprs the main task, result included, when it
        # restores SIGINT's handler, and the repr of a million results takes minutes.
        counts = ", ".join(f"{status.value} {n}" for status, n in self.summary.counts.items() if n)
        return f"RunReport({len(self.results)} results; {counts or 'no tasks'}; wall {self.summary.wall_time:.3f} s)"

    def __getitem__(self, task_id: str) -> TaskResult:
        return self.results[task_id]

    @property
    def ok(self) -> bool:
        """Whether every task succeeded."""
        return all(result.ok for result in self.results.values())

    @property
    def exit_code(self) -> int:
        """The exit status `phalanx run` uses: 0 all succeeded, 1 some did not,
        130 interrupted (SIGINT), 143 terminated (SIGTERM)."""
        if self.summary.cancelled_by is CancelReason.INTERRUPT:
            return 130
        if self.summary.cancelled_by is CancelReason.TERMINATE:
            return 143
        return 0 if self.ok else 1

    def by_status(self, status: Status) -> list[TaskResult]:
        return [result for result in self.results.values() if result.status is status]

    def to_dict(self) -> dict[str, Any]:
        return {
            "summary": self.summary.to_dict(),
            "results": [result.to_dict() for result in self.results.values()],
        }
