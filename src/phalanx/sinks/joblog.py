"""GNU parallel's ``--joblog``: one tab-separated line per finished job, written as it ends.

The nine columns and their formats are GNU parallel's exactly, so tools that read its
joblogs read ours: ``Seq Host Starttime JobRuntime Send Receive Exitval Signal Command``;
Host ``:`` is this machine; Starttime is Unix time with 3 decimals; JobRuntime is
``%10.3f``; a job phalanx killed (timeout, halt, interrupt) has Exitval -1 and Signal 15;
a job that died of a signal by itself has Exitval 0 and that signal (GNU's ``$? >> 8`` and
``$? & 127``). A newline in the command is written as NUL, as GNU does, so that one job is
always one line. Each line is written and flushed before the next job's line, so a kill -9
of phalanx leaves every finished job's line complete.
"""

from __future__ import annotations

import os
import signal as signals
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

from ..events import Event, RunStarted, TaskFinished
from ..results import Status, TaskResult

HEADER = "Seq\tHost\tStarttime\tJobRuntime\tSend\tReceive\tExitval\tSignal\tCommand\n"


@dataclass(frozen=True, slots=True)
class JoblogEntry:
    """One line of a joblog, as read back for ``--resume``."""

    seq: int
    command: str
    exitval: int
    signal: int

    @property
    def succeeded(self) -> bool:
        return self.exitval == 0 and self.signal == 0


def read_joblog(path: Path) -> Iterator[JoblogEntry]:
    """The entries of an existing joblog (ours or GNU parallel's); malformed lines are skipped,
    as a line cut short by a crash of an older tool would be."""
    with open(path, encoding="utf-8", errors="surrogateescape", newline="\n") as source:
        for line in source:
            if not line.endswith("\n"):
                break  # a partial last line: that job's end was never recorded
            fields = line[:-1].split("\t", 8)
            if len(fields) != 9 or not fields[0].isdigit():
                continue
            try:
                yield JoblogEntry(int(fields[0]), fields[8].replace("\0", "\n"), int(fields[6]), int(fields[7]))
            except ValueError:
                continue


class Records(Protocol):
    """Where whole records go: each ``write`` is one complete record. ``empty``: nothing
    was there before (a new file gets its header)."""

    @property
    def empty(self) -> bool: ...

    def write(self, record: bytes) -> None: ...

    def close(self) -> None: ...


class RecordFile:
    """A file of whole records, each written with one ``write(2)`` on an ``O_APPEND`` descriptor.

    No user-space buffer stands between a record and the file, so a kill -9 of phalanx
    leaves every record written complete. Appending to a file that an earlier crash left
    with a partial last record (``complete`` says how many leading bytes are whole
    records) first cuts that partial record off, so no new record is glued to it.
    """

    def __init__(self, path: Path, *, append: bool, complete: Callable[[bytes], int] | None = None) -> None:
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC | (0 if append else os.O_TRUNC)
        self._fd = os.open(path, flags, 0o644)
        try:
            size = os.fstat(self._fd).st_size
            if append and size and complete is not None:
                keep = complete(path.read_bytes())
                if keep < size:
                    os.ftruncate(self._fd, keep)
                    size = keep
        except BaseException:
            os.close(self._fd)
            raise
        self.empty = size == 0

    def write(self, record: bytes) -> None:
        view = memoryview(record)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]

    def close(self) -> None:
        os.close(self._fd)


class StreamRecords:
    """Records to an already open binary stream (``--joblog -``: standard output), flushed one by one."""

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream
        self.empty = True

    def write(self, record: bytes) -> None:
        self._stream.write(record)
        self._stream.flush()

    def close(self) -> None:
        self._stream.flush()


def complete_lines(data: bytes) -> int:
    """How many leading bytes of ``data`` are whole lines."""
    return data.rfind(b"\n") + 1


def exit_columns(result: TaskResult) -> tuple[int, int]:
    """(Exitval, Signal) as GNU parallel records them."""
    if result.status in (Status.TIMED_OUT, Status.CANCELLED):
        return -1, int(signals.SIGTERM)
    if result.signal is not None:
        return result.exit_code or 0, result.signal
    return (result.exit_code if result.exit_code is not None else (0 if result.ok else 1)), 0


class JoblogSink:
    """Writes the joblog; ``describe`` gives a job's (seq, command line) from its task id."""

    def __init__(self, records: Records, describe: Callable[[TaskResult], tuple[int, str]], *, header: bool) -> None:
        self._records = records
        self._describe = describe
        self._started_at = 0.0
        if header:
            records.write(HEADER.encode())

    def handle(self, event: Event) -> None:
        if isinstance(event, RunStarted):
            self._started_at = event.started_at
        elif isinstance(event, TaskFinished) and event.result.attempts:
            self._write(event.result)

    def _write(self, result: TaskResult) -> None:
        seq, command = self._describe(result)
        exitval, signal = exit_columns(result)
        end = result.end or 0.0
        start = self._started_at + end - result.duration
        receive = _size(result.stdout_path)
        command = command.replace("\n", "\0")  # one job, one line
        line = f"{seq}\t:\t{start:.3f}\t{result.duration:10.3f}\t0\t{receive}\t{exitval}\t{signal}\t{command}\n"
        self._records.write(line.encode("utf-8", "surrogateescape"))

    def close(self) -> None:
        self._records.close()


def _size(path: str | None) -> int:
    if path is None:
        return 0
    try:
        return Path(path).stat().st_size
    except OSError:
        return 0
