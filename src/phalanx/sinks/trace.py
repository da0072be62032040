"""``--trace FILE``: the run as a Chrome trace-event file, for Perfetto and chrome://tracing.

The file is the trace-event format's JSON Object Format::

    {"traceEvents": [...], "displayTimeUnit": "ms", "otherData": {...}}

One process (pid 1) stands for the run, named ``phalanx run <id>``; one thread (tid) per
worker slot, named ``slot N``, so the timeline shows what each slot did and where it sat
idle. Every attempt is one complete event (``"ph": "X"``) on its slot's track, from its
`TaskStarted` to its `TaskRetrying` or `TaskFinished`: named after the task, its category
the attempt's status (``succeeded``, ``failed``, ..., or ``retried`` for an attempt that
failed and ran again), its args ``attempt``, ``status``, ``exit_code`` and ``reason``, and
``worker_address`` for a task's last attempt that ran on a cluster worker (``--backend dask``).
Tasks that hold no slot (``resources = {slots = 0}``) may run side by side, and slices on
one track must not overlap, so they get tracks of their own after the slots (``no slot N``),
reused as they free up.

A task that ended without an attempt running (skipped after a failed dependency, cancelled
before it started or while it waited to retry) is a global instant event (``"ph": "i"``,
``"s": "g"``), so the trace shows when and why it was given up; a run's cancellation
(fail-fast, halt, Ctrl-C) is one too.

When the number of tasks at once changes (``-j auto``, ``--load``, ``--memfree``), a counter
event (``"ph": "C"``) named ``workers`` gives the count in force (a track of its own in the
viewers), and an instant on the run (``"s": "p"``, category ``workers``) gives the reason.

Times (``ts``, ``dur``) are microseconds since the run started (the events' ``at``); the
run's Unix start time is in ``otherData``. The sink keeps one small tuple per attempt and
writes the file once, at close: to a temporary file beside it, then renamed over it
(`whole_file`), so a reader never sees half a trace and a crash leaves any earlier trace in place.
"""

from __future__ import annotations

import heapq
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

from .. import __version__
from ..errors import ConfigError
from ..events import (
    Event,
    RunCancelling,
    RunFinished,
    RunStarted,
    TaskFinished,
    TaskRetrying,
    TaskStarted,
    WorkersChanged,
)
from .wholefile import whole_file

#: The one process of the trace: the run.
PID = 1

#: The category (and status) of an attempt that failed and was tried again.
RETRIED = "retried"

#: The category of an attempt still running when the sink was closed (the run was aborted).
UNFINISHED = "unfinished"


class _Open(NamedTuple):
    """An attempt that is running."""

    attempt: int
    tid: int
    lane: int  # the slot-less track it borrowed (1-based), or 0 if it runs on its slot's
    start: float


class _Slice(NamedTuple):
    """An attempt that ended: one complete event."""

    task_id: str
    attempt: int
    tid: int
    start: float
    end: float
    status: str
    exit_code: int | None
    reason: str | None
    extra: tuple[tuple[str, Any], ...]


class _Instant(NamedTuple):
    """Something with no duration: a task given up without running, the run cancelling."""

    name: str
    at: float
    category: str
    args: tuple[tuple[str, Any], ...]


class TraceSink:
    """Collects the run's attempts and writes them as a trace-event JSON file at close.

    Args:
        path: the file to write; its directory must exist (checked now, not after the run).
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        directory = self.path.parent
        # Checked before the run: finding out at the end of an hour-long run would lose the trace.
        if not directory.is_dir():
            raise ConfigError(f"trace file {str(self.path)!r}: directory {str(directory)!r} does not exist")
        if self.path.is_dir():
            raise ConfigError(f"trace file {str(self.path)!r} is a directory: name a file in it")
        self._started: RunStarted | None = None
        self._finished: RunFinished | None = None
        self._open: dict[str, _Open] = {}
        self._slices: list[_Slice] = []
        self._instants: list[_Instant] = []
        self._workers: list[tuple[float, int, str]] = []  # (at, count in force, why)
        self._free_lanes: list[int] = []  # a heap: the lowest free lane is reused first
        self._lanes = 0
        self._last = 0.0  # the latest time seen, where attempts still open at close end
        self._closed = False

    # ------------------------------------------------------------------ events

    def handle(self, event: Event) -> None:
        self._last = max(self._last, event.at)
        if isinstance(event, TaskStarted):
            self._start(event)
        elif isinstance(event, TaskRetrying):
            running = self._open.pop(event.task_id, None)
            if running is not None:
                delay: tuple[tuple[str, Any], ...] = (("retry_delay", event.delay),)
                self._end(event.task_id, running, event.at, RETRIED, None, event.reason, delay)
        elif isinstance(event, TaskFinished):
            result = event.result
            running = self._open.pop(result.task_id, None)
            if running is not None:
                status, code = result.status.value, result.exit_code
                extra: tuple[tuple[str, Any], ...] = () if result.signal is None else (("signal", result.signal),)
                if result.worker_address is not None:
                    extra += (("worker_address", result.worker_address),)
                self._end(result.task_id, running, event.at, status, code, result.reason, extra)
            else:
                args = (
                    ("status", result.status.value),
                    ("attempts", result.attempts),
                    ("reason", result.reason),
                    ("blocked_by", result.blocked_by),
                )
                self._instants.append(_Instant(result.task_id, event.at, result.status.value, args))
        elif isinstance(event, RunStarted):
            self._started = event
        elif isinstance(event, RunCancelling):
            label = event.reason.label
            self._instants.append(_Instant(f"cancelling ({label})", event.at, "run", (("reason", label),)))
        elif isinstance(event, RunFinished):
            self._finished = event
        elif isinstance(event, WorkersChanged):
            self._workers.append((event.at, event.workers, event.reason))

    def _start(self, event: TaskStarted) -> None:
        lane = 0
        tid = event.worker
        if tid <= 0:
            # A task holding no slot: it may overlap others, so it borrows a track of its own.
            if self._free_lanes:
                lane = heapq.heappop(self._free_lanes)
            else:
                self._lanes += 1
                lane = self._lanes
            tid = self._lane_base + lane
        self._open[event.task_id] = _Open(event.attempt, tid, lane, event.at)

    def _end(
        self,
        task_id: str,
        running: _Open,
        at: float,
        status: str,
        exit_code: int | None,
        reason: str | None,
        extra: tuple[tuple[str, Any], ...],
    ) -> None:
        if running.lane:
            heapq.heappush(self._free_lanes, running.lane)
        self._slices.append(
            _Slice(task_id, running.attempt, running.tid, running.start, at, status, exit_code, reason, extra)
        )

    @property
    def _lane_base(self) -> int:
        """Slot-less tracks come after the slots' (tids 1..max_workers)."""
        return self._started.max_workers if self._started is not None else 0

    # ------------------------------------------------------------------ output

    def close(self) -> None:
        """Write the trace file (once). Without a `RunStarted` nothing ran (the tasks were
        refused), and nothing is written."""
        if self._closed:
            return
        self._closed = True
        if self._started is None:
            return
        for task_id, running in self._open.items():  # the run was aborted mid-attempt
            self._end(task_id, running, self._last, UNFINISHED, None, "still running when the run ended", ())
        self._open.clear()
        self._write()

    def _write(self) -> None:
        with whole_file(self.path) as fd, open(fd, "w", encoding="utf-8", closefd=False) as out:
            # One event a line, streamed: the events are never all held as dictionaries at once.
            out.write('{"traceEvents": [\n')
            for index, record in enumerate(self._events()):
                if index:
                    out.write(",\n")
                out.write(json.dumps(record, separators=(",", ":")))
            out.write('\n],\n"displayTimeUnit": "ms",\n"otherData": ')
            out.write(json.dumps(self._other_data()))
            out.write("}\n")

    def _events(self) -> Iterator[dict[str, Any]]:
        started = self._started
        assert started is not None
        yield _metadata("process_name", 0, {"name": f"phalanx run {started.run_id}"})
        for tid in sorted({piece.tid for piece in self._slices}):
            name = f"slot {tid}" if tid <= self._lane_base else f"no slot {tid - self._lane_base}"
            yield _metadata("thread_name", tid, {"name": name})
            # Viewers sort tracks by name otherwise, putting "slot 10" before "slot 2".
            yield _metadata("thread_sort_index", tid, {"sort_index": tid})
        for piece in self._slices:
            start = _microseconds(piece.start)
            args: dict[str, Any] = {
                "attempt": piece.attempt,
                "status": piece.status,
                "exit_code": piece.exit_code,
                "reason": piece.reason,
            }
            args.update(piece.extra)
            yield {
                "name": piece.task_id,
                "cat": piece.status,
                "ph": "X",
                "ts": start,
                # From the rounded ends, so that slices that touch on a track never overlap.
                "dur": max(0.0, round(_microseconds(piece.end) - start, 3)),
                "pid": PID,
                "tid": piece.tid,
                "args": args,
            }
        for instant in self._instants:
            yield {
                "name": instant.name,
                "cat": instant.category,
                "ph": "i",
                "s": "g",
                "ts": _microseconds(instant.at),
                "pid": PID,
                "tid": 0,
                "args": dict(instant.args),
            }
        for at, workers, reason in self._workers:
            ts = _microseconds(at)
            yield {"name": "workers", "ph": "C", "ts": ts, "pid": PID, "args": {"workers": workers}}
            yield {"name": f"workers {workers}", "cat": "workers", "ph": "i", "s": "p", "ts": ts, "pid": PID,
                   "tid": 0, "args": {"workers": workers, "reason": reason}}

    def _other_data(self) -> dict[str, Any]:
        started = self._started
        assert started is not None
        data: dict[str, Any] = {
            "tool": f"phalanx {__version__}",
            "run_id": started.run_id,
            "started_at": started.started_at,
            "total": started.total,
            "max_workers": started.max_workers,
        }
        if self._finished is not None:
            summary = self._finished.report.summary
            data["wall_time"] = summary.wall_time
            data["counts"] = {status.value: count for status, count in summary.counts.items()}
            data["flaky"] = summary.flaky
            data["cancelled_by"] = None if summary.cancelled_by is None else summary.cancelled_by.label
        return data


def _metadata(name: str, tid: int, args: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "ph": "M", "ts": 0, "pid": PID, "tid": tid, "args": args}


def _microseconds(seconds: float) -> float:
    """Seconds as microseconds, kept to the nanosecond (the format allows fractions)."""
    return round(seconds * 1e6, 3)
