"""GNU parallel's ``--joblog``: one tab-separated line per finished job, written as it ends.

The nine columns and their formats are GNU parallel's exactly, so tools that read its
joblogs read ours: ``Seq Host Starttime JobRuntime Send Receive Exitval Signal Command``;
Host ``:`` is this machine (a job run on a cluster worker, ``--backend dask``, has that
worker's address, as GNU parallel names the ``--sshlogin`` a job ran on); Starttime is Unix
time with 3 decimals; JobRuntime is ``%10.3f``; a job phalanx killed (timeout, halt) has
Exitval -1 and Signal 15; a job that died of a signal by itself has Exitval 0 and that
signal (GNU's ``$? >> 8`` and ``$? & 127``). A job phalanx stopped because phalanx itself
was interrupted (SIGINT) or terminated (SIGTERM) did not finish: it gets no line, so
``--resume`` runs it again, as GNU parallel does. A newline in the command is written as
NUL, as GNU does, so that one job is always one line. Each line is written and flushed
before the next job's line, so a kill -9 of phalanx leaves every finished job's line complete.

This module also holds what every record-keeping sink shares: `Records` (where whole
records go, small ones in one write, large ones assembled in a private temporary file
first) and `Recorded` (which finished jobs get a record).
"""

from __future__ import annotations

import errno
import os
import signal as signals
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

from ..events import Event, RunCancelling, RunStarted, TaskFinished
from ..results import CancelReason, Status, TaskResult

HEADER = "Seq\tHost\tStarttime\tJobRuntime\tSend\tReceive\tExitval\tSignal\tCommand\n"

#: The most a sink holds of a job's output or of a record at once, in bytes.
CHUNK = 1 << 20

#: Stops after which the jobs phalanx cancelled are unfinished, not failed: the run was
#: stopped from outside, so ``--resume`` must run them again. (A halt or a timeout is the
#: run's own verdict on a job: those are recorded, as GNU parallel records them.)
_UNFINISHED = frozenset({CancelReason.INTERRUPT, CancelReason.TERMINATE})


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


class Recorded:
    """Which finished jobs a record-keeping sink (joblog, results) records.

    Every job that ran, except those phalanx stopped on an interrupt or a terminate: they
    were cut short, not done, and a record would make ``--resume`` skip them. The reason
    is the most severe stop announced so far (a halt that an interrupt overtakes counts as
    the interrupt, if the scheduler announces it).
    """

    def __init__(self) -> None:
        self._stop: CancelReason | None = None

    def result(self, event: Event) -> TaskResult | None:
        """The result to record for ``event``, or None; call it with every event."""
        if isinstance(event, RunCancelling):
            self._stop = event.reason if self._stop is None else max(self._stop, event.reason)
            return None
        if not isinstance(event, TaskFinished) or not event.result.attempts:
            return None
        if event.result.status is Status.CANCELLED and self._stop in _UNFINISHED:
            return None
        return event.result


class Records(Protocol):
    """Where whole records go. ``empty``: nothing was there before (a new file gets its
    header). ``scratch_dir``: where a record too large to hold in memory is assembled."""

    @property
    def empty(self) -> bool: ...

    @property
    def scratch_dir(self) -> str: ...

    def write(self, record: bytes) -> None:
        """Write one complete record."""

    def write_file(self, source: BinaryIO) -> None:
        """Write one complete record: the whole content of ``source``, from its start."""

    def close(self) -> None: ...


def write_record(records: Records, pieces: Iterable[bytes]) -> None:
    """Write the record made of ``pieces`` (each at most about `CHUNK` bytes).

    A small record is joined in memory and written with one write. A larger one (a job
    that printed a gigabyte) is first written in full to a private temporary file and
    only then copied to the records: nothing reaches them until the record is complete,
    so a failure while it is made (an output file that cannot be read) leaves no partial
    record, and the window in which a crash could leave one is the copy alone, which the
    repair on ``--resume`` (`RecordFile`'s ``complete``) undoes.
    """
    held: list[bytes] = []
    size = 0
    remaining = iter(pieces)
    for piece in remaining:
        held.append(piece)
        size += len(piece)
        if size > CHUNK:
            break
    else:
        records.write(b"".join(held))
        return
    # tempfile opens it O_EXCL | O_NOFOLLOW, mode 0600 (or O_TMPFILE: no name at all), and
    # it is gone when closed, even if we fail.
    with tempfile.TemporaryFile(dir=records.scratch_dir, buffering=0) as spill:
        try:
            for piece in held:
                write_all(spill.fileno(), piece)
            held.clear()
            for piece in remaining:
                write_all(spill.fileno(), piece)
        except OSError as error:
            if error.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
                raise  # an output that cannot be read, say
            # No room to assemble the record (a full disk, a file-size limit): the records' failure.
            raise OSError(error.errno, error.strerror, getattr(records, "path", None)) from error
        spill.seek(0)
        records.write_file(spill)


def write_all(fd: int, data: bytes | memoryview) -> None:
    """Write all of ``data`` to ``fd`` (os.write may write less than asked)."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def read_chunks(source: BinaryIO, limit: int | None = None) -> Iterator[bytes]:
    """``source`` from its current position, `CHUNK` bytes at a time, ``limit`` bytes at most."""
    left = limit
    while left is None or left > 0:
        chunk = source.read(CHUNK if left is None else min(CHUNK, left))
        if not chunk:
            return
        if left is not None:
            left -= len(chunk)
        yield chunk


class RecordFile:
    """A file of whole records on an ``O_APPEND`` descriptor, without a user-space buffer.

    A record of up to `CHUNK` bytes is written with one ``write(2)``, so a kill -9 of
    phalanx leaves every record written complete; a larger one is copied from the
    temporary file it was assembled in, in chunks. Appending to a file that an earlier
    crash left with a partial last record (``complete`` reads the file and says how many
    leading bytes are whole records) first cuts that partial record off, so no new record
    is glued to it.
    """

    def __init__(self, path: Path, *, append: bool, complete: Callable[[BinaryIO], int] | None = None) -> None:
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC | (0 if append else os.O_TRUNC)
        self._fd = os.open(path, flags, 0o644)
        self.path = os.fspath(path)  # named in the errors of writes that fail
        # Next to the file: the same file system (a fast copy, and its space, not /tmp's).
        self.scratch_dir = os.path.dirname(os.path.realpath(path))
        try:
            size = os.fstat(self._fd).st_size
            if append and size and complete is not None:
                with open(path, "rb") as source:
                    keep = complete(source)
                if keep < size:
                    os.ftruncate(self._fd, keep)
                    size = keep
        except BaseException:
            os.close(self._fd)
            raise
        self.empty = size == 0

    def write(self, record: bytes) -> None:
        try:
            write_all(self._fd, record)
        except OSError as error:  # a full disk, a file-size limit: say which file
            raise OSError(error.errno, error.strerror, self.path) from error

    def write_file(self, source: BinaryIO) -> None:
        try:
            for chunk in read_chunks(source):
                write_all(self._fd, chunk)
        except OSError as error:
            raise OSError(error.errno, error.strerror, self.path) from error

    def close(self) -> None:
        os.close(self._fd)


class StreamRecords:
    """Records to an already open binary stream (``--joblog -``: standard output), flushed one by one."""

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream
        self.empty = True
        self.scratch_dir = tempfile.gettempdir()

    def write(self, record: bytes) -> None:
        self._stream.write(record)
        self._stream.flush()

    def write_file(self, source: BinaryIO) -> None:
        for chunk in read_chunks(source):
            self._stream.write(chunk)
        self._stream.flush()

    def close(self) -> None:
        self._stream.flush()


def complete_lines(source: BinaryIO) -> int:
    """How many leading bytes of ``source`` are whole lines: up to its last newline, looked
    for backwards from the end, a chunk at a time."""
    end = source.seek(0, os.SEEK_END)
    while end > 0:
        start = max(0, end - CHUNK)
        source.seek(start)
        chunk = source.read(end - start)
        newline = chunk.rfind(b"\n")
        if newline >= 0:
            return start + newline + 1
        end = start
    return 0


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
        self._recorded = Recorded()
        if header:
            records.write(HEADER.encode())

    def handle(self, event: Event) -> None:
        if isinstance(event, RunStarted):
            self._started_at = event.started_at
        elif (result := self._recorded.result(event)) is not None:
            self._write(result)

    def _write(self, result: TaskResult) -> None:
        seq, command = self._describe(result)
        exitval, signal = exit_columns(result)
        end = result.end or 0.0
        start = self._started_at + end - result.duration
        receive = _size(result.stdout_path)
        command = command.replace("\n", "\0")  # one job, one line
        host = ":" if result.worker_address is None else _field(result.worker_address)
        line = f"{seq}\t{host}\t{start:.3f}\t{result.duration:10.3f}\t0\t{receive}\t{exitval}\t{signal}\t{command}\n"
        self._records.write(line.encode("utf-8", "surrogateescape"))

    def close(self) -> None:
        self._records.close()


def _field(text: str) -> str:
    """``text`` as one joblog field: no tab or line end can split the line (an address has
    none, but the line must stay nine fields whatever a backend reports)."""
    return "".join(" " if char in "\t\n\r" else char for char in text) or ":"


def _size(path: str | None) -> int:
    if path is None:
        return 0
    try:
        return Path(path).stat().st_size
    except OSError:
        return 0
