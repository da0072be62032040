"""What `phalanx map` prints: each job's output, grouped (default), in input order (``-k``),
tagged (``--tag``/``--tagstring``), or line by line as it comes (``--line-buffer``).

Jobs write to files while they run; grouped output is copied from those files in one piece
when the job ends, so two jobs' output never interleave. Every copy goes a bounded chunk
at a time, so a job printing a gigabyte costs no more memory than one printing a line.
With ``--retries`` only the last attempt's output is printed, as GNU parallel does.

The files are a slot's, reused by its next job (`phalanx.backends.outputs`), so a job held
back by ``-k`` behind an earlier one has its output copied (in the kernel) into one spool
file until its turn (`Spool`): the only copy phalanx makes, and only of output it must wait
to print.
"""

from __future__ import annotations

import asyncio
import errno
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import BinaryIO

from ..events import Event, RunCancelling, RunFinished, RunStarted, TaskFinished, TaskRetrying, TaskStarted
from ..outputfiles import output_paths
from ..results import CancelReason, TaskResult

_CHUNK = 1 << 20
_POLL_SECONDS = 0.02  # how often --line-buffer looks for new lines


_LINE_START = re.compile(rb"(?<=[\r\n])(?=.)", re.DOTALL)

# Where a line starts as ``bytes.splitlines`` cuts lines ("\r\n" is one line end, not two).
_SPLITLINES_START = re.compile(rb"(?:(?<=\n)|(?<=\r)(?!\n))(?=.)", re.DOTALL)


def tag_lines(data: bytes, prefix: bytes, *, crlf: bool) -> bytes:
    """``data`` with ``prefix`` after every line end that something follows in it: after
    every ``\\r`` and ``\\n`` (GNU parallel's grouped output), or, with ``crlf``, after a
    ``\\r\\n`` as one line end (how ``bytes.splitlines`` cuts lines, ``--line-buffer``'s).

    Three ``bytes.replace`` passes in C, where a regex would test every byte or call a
    function for every line (20 million for a gigabyte of short lines); a prefix that
    holds a line end itself would be touched by them, so it takes the regex.
    """
    if b"\r" in prefix or b"\n" in prefix:
        return (_SPLITLINES_START if crlf else _LINE_START).sub(lambda _: prefix, data)
    tagged = data.replace(b"\n", b"\n" + prefix).replace(b"\r", b"\r" + prefix)
    if crlf:
        # A "\r" then prefix then "\n" was a "\r\n" (the prefix was put in after the "\r").
        tagged = tagged.replace(b"\r" + prefix + b"\n", b"\r\n")
    # Nothing follows a line end at the very end (yet): the next line's prefix waits for it.
    return tagged[: len(tagged) - len(prefix)] if data.endswith((b"\n", b"\r")) else tagged


class _ChunkReader:
    """Chunks as a file's ``read``, for `copy_tagged` (which reads `_CHUNK` at a time)."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks

    def read(self, size: int = -1) -> bytes:
        return next(self._chunks, b"")


def copy_tagged(source: BinaryIO | _ChunkReader, stream: BinaryIO, prefix: bytes) -> None:
    """Copy a file to a stream, ``prefix`` at the start of every line.

    As GNU parallel's grouped output: a line starts at the beginning, and after every
    newline or carriage return that something follows (so a progress line redrawn with
    ``\r`` is tagged each time).
    """
    if not prefix:
        shutil.copyfileobj(source, stream, _CHUNK)
        return
    at_line_start = True
    while chunk := source.read(_CHUNK):
        if at_line_start:
            stream.write(prefix)
        stream.write(tag_lines(chunk, prefix, crlf=False))
        at_line_start = chunk[-1:] in (b"\n", b"\r")


def read_range(source: BinaryIO, start: int, end: int) -> Iterator[bytes]:
    """Bytes ``start`` to ``end`` of a file, at most `_CHUNK` at a time."""
    source.seek(start)
    while start < end:
        chunk = source.read(min(_CHUNK, end - start))
        if not chunk:
            return
        start += len(chunk)
        yield chunk


def copy_lines(chunks: Iterator[bytes], stream: BinaryIO, prefix: bytes) -> None:
    """Copy whole lines to a stream, ``prefix`` before each (``--line-buffer``'s tagging).

    Lines as ``bytes.splitlines`` cuts them, which is how whole lines were always printed:
    ended by ``\\n``, ``\\r\\n`` or a lone ``\\r``. A ``\\r`` at the end of a chunk may be half
    of a ``\\r\\n``, so it waits for the next chunk.
    """
    if not prefix:
        for chunk in chunks:
            stream.write(chunk)
        return
    at_line_start = True
    held = b""
    for chunk in chunks:
        data = held + chunk
        held = b"\r" if data.endswith(b"\r") else b""
        data = data[: len(data) - len(held)]
        if data:
            if at_line_start:
                stream.write(prefix)
            stream.write(tag_lines(data, prefix, crlf=True))
            # A "\r" it ends with is followed by the held "\r", not a "\n": it ends a line too.
            at_line_start = data.endswith((b"\n", b"\r"))
    if held:
        stream.write(prefix + held if at_line_start else held)


class Spool:
    """Output held back for later, copied out of files about to be reused: one file, written
    at its end, emptied whenever nothing is held (made at the first output held)."""

    def __init__(self, directory: str) -> None:
        self._directory = directory
        self._fd = -1
        self._size = 0
        self._held = 0

    def keep(self, path: str | None) -> tuple[int, int] | None:
        """Copy the file at ``path`` to the spool: where it is, as (offset, length); None if
        there is nothing (no path, no file, empty)."""
        if path is None:
            return None
        try:
            source = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            length = os.fstat(source).st_size
            if length == 0:
                return None
            if self._fd < 0:
                self._fd = os.open(self._directory, os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o600) \
                    if hasattr(os, "O_TMPFILE") else _named_temporary(self._directory)
            offset = self._size
            _copy_range(source, self._fd, length, offset)
        finally:
            os.close(source)
        self._size += length
        self._held += 1
        return offset, length

    def chunks(self, where: tuple[int, int]) -> Iterator[bytes]:
        """The bytes kept at ``where``, `_CHUNK` at a time."""
        offset, length = where
        end = offset + length
        while offset < end:
            chunk = os.pread(self._fd, min(_CHUNK, end - offset), offset)
            if not chunk:
                return
            offset += len(chunk)
            yield chunk

    def release(self) -> None:
        """One output kept is printed: once none is left, the spool is emptied."""
        self._held -= 1
        if self._held == 0 and self._size:
            os.ftruncate(self._fd, 0)
            self._size = 0

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def _named_temporary(directory: str) -> int:
    """A temporary file in ``directory`` with no name left (where O_TMPFILE is unknown)."""
    fd, path = tempfile.mkstemp(dir=directory)
    os.unlink(path)
    return fd


def _copy_range(source: int, target: int, length: int, offset: int) -> None:
    """Copy ``length`` bytes from the start of ``source`` to ``target`` at ``offset``: in the
    kernel where it can (copy_file_range), else a chunk at a time."""
    done = 0
    if hasattr(os, "copy_file_range"):
        try:
            while done < length:
                copied = os.copy_file_range(source, target, length - done, done, offset + done)
                if copied == 0:
                    break  # the file is shorter than it was: copy what there is
                done += copied
            return
        except OSError as error:
            if error.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
                raise
    while done < length:
        chunk = os.pread(source, min(_CHUNK, length - done), done)
        if not chunk:
            return
        os.pwrite(target, chunk, offset + done)
        done += len(chunk)


@dataclass(frozen=True, slots=True)
class _Spooled:
    """A finished job held back by ``-k``, its output in the spool."""

    result: TaskResult
    stdout: tuple[int, int] | None
    stderr: tuple[int, int] | None

    @property
    def task_id(self) -> str:
        return self.result.task_id


@dataclass(slots=True)
class _LiveFile:
    """How far ``--line-buffer`` got in one output file of a running job."""

    printed: int = 0  # bytes printed (always up to a line end until the job ends)
    scanned: int = 0  # bytes looked at for a line end: never read twice for one


@dataclass(slots=True)
class _LiveJob:
    """A running job whose output ``--line-buffer`` prints as it comes."""

    attempt: int
    files: tuple[_LiveFile, _LiveFile] = field(default_factory=lambda: (_LiveFile(), _LiveFile()))


class MapOutput:
    """Prints jobs' stdout and stderr.

    Args:
        out, err: where the jobs' stdout and stderr go (binary streams).
        seq_of: a job's sequence number from its task id.
        order: with ``-k``, every job's sequence number in input order; None otherwise.
        tag: the prefix for a job's lines (``--tag``), or None.
        line_buffer: print complete lines while jobs run instead of whole outputs at the end.
        ungroup: with ``line_buffer``, print whatever a job wrote, whole lines or not
            (``-u``; meant without ``order`` and ``tag``).
        run_dir: where jobs' output files are (needed for ``line_buffer``).
        on_broken_pipe: called once when a stream's reader has gone (``| head``); nothing
            more is printed after that.
        spool_dir: the jobs' output files are reused once their end has been told (see the
            module doc): output held back by ``order`` is copied to a spool in this directory.
            None: the files stay, held jobs are printed from them.
        halt_now: ``--halt now,...``: with ``order``, once the halt comes nothing more is
            printed, as GNU parallel does (the jobs it kills and the finished jobs held
            behind them are dropped).
    """

    def __init__(
        self,
        out: BinaryIO,
        err: BinaryIO,
        *,
        seq_of: Callable[[str], int],
        order: list[int] | None = None,
        tag: Callable[[str], bytes] | None = None,
        line_buffer: bool = False,
        ungroup: bool = False,
        run_dir: str | None = None,
        on_broken_pipe: Callable[[], None] | None = None,
        halt_now: bool = False,
        around_write: Callable[[], AbstractContextManager[object]] | None = None,
        spool_dir: str | None = None,
    ) -> None:
        self.around_write = around_write
        self._spool = None if spool_dir is None else Spool(spool_dir)
        self._halt_now = halt_now
        self._halted = False
        self._on_broken_pipe = on_broken_pipe
        self.broken_pipe = False
        self._out = out
        self._err = err
        self._seq_of = seq_of
        self._tag = tag
        self._order = order
        self._next = 0  # index into order of the next job to print
        self._held: dict[int, TaskResult | _Spooled | None] = {}
        self._line_buffer = line_buffer
        self._ungroup = ungroup
        self._run_dir = run_dir
        self._live: dict[str, _LiveJob] = {}  # task id -> its attempt printing now
        self._started: dict[int, str] = {}  # seq -> task id, for --line-buffer with -k
        self._poller: asyncio.TimerHandle | None = None

    def handle(self, event: Event) -> None:
        if isinstance(event, RunCancelling):
            if event.reason is CancelReason.HALT and self._halt_now and self._order is not None:
                self._halted = True
        elif self._halted:
            return
        elif isinstance(event, TaskFinished):
            self._finished(event.result)
        elif self._line_buffer and isinstance(event, TaskStarted):
            self._live[event.task_id] = _LiveJob(event.attempt)
            self._started[self._seq_of(event.task_id)] = event.task_id
            self._schedule_poll()
        elif self._line_buffer and isinstance(event, TaskRetrying):
            self._live.pop(event.task_id, None)
        elif isinstance(event, RunStarted | RunFinished):
            return

    def _finished(self, result: TaskResult) -> None:
        if self._line_buffer and self._order is None:
            self._poll_one(result.task_id, final=True)
            return
        if self._line_buffer:
            self._held[self._seq_of(result.task_id)] = result if result.attempts else None
            self._advance_live()
            return
        if self._order is None:
            self._print(result)
            return
        seq = self._seq_of(result.task_id)
        if self._next < len(self._order) and self._order[self._next] == seq:
            if result.attempts:
                self._print(result)  # its turn: straight from its files
            self._next += 1
        else:
            self._held[seq] = self._hold(result) if result.attempts else None
        while self._next < len(self._order) and self._order[self._next] in self._held:
            held = self._held.pop(self._order[self._next])
            if held is not None:
                self._print(held)
            self._next += 1

    def _hold(self, result: TaskResult) -> TaskResult | _Spooled:
        """A job that must wait for its turn: its output copied out of files about to be reused."""
        if self._spool is None:
            return result
        return _Spooled(result, self._spool.keep(result.stdout_path), self._spool.keep(result.stderr_path))

    def _print(self, item: TaskResult | _Spooled) -> None:
        if isinstance(item, _Spooled):
            prefix = self._tag(item.result.task_id) if self._tag else b""
            assert self._spool is not None
            for where, stream in ((item.stdout, self._out), (item.stderr, self._err)):
                if where is not None:
                    if not self.broken_pipe:
                        self._write(_ChunkReader(self._spool.chunks(where)), stream, prefix)
                    self._spool.release()
            return
        result = item
        prefix = self._tag(result.task_id) if self._tag else b""
        for path, stream in ((result.stdout_path, self._out), (result.stderr_path, self._err)):
            if path is None or self.broken_pipe:
                continue
            try:
                if os.stat(path).st_size == 0:
                    continue  # the usual case for a job that succeeds: one stat, no file object
                source = open(path, "rb")  # noqa: SIM115 - closed below; a missing file is no output
            except OSError:
                continue
            with source:
                self._write(source, stream, prefix)

    def _write(self, source: BinaryIO | _ChunkReader, stream: BinaryIO, prefix: bytes) -> None:
        try:
            with self._writing():
                copy_tagged(source, stream, prefix)
                stream.flush()
        except BrokenPipeError:
            self._pipe_broke()

    def _writing(self) -> AbstractContextManager[object]:
        return nullcontext() if self.around_write is None else self.around_write()

    def _pipe_broke(self) -> None:
        if not self.broken_pipe:
            self.broken_pipe = True
            if self._on_broken_pipe is not None:
                self._on_broken_pipe()

    # --line-buffer: read what running jobs have written so far, print whole lines.

    def _schedule_poll(self) -> None:
        if self._poller is None:
            loop = asyncio.get_running_loop()
            self._poller = loop.call_later(_POLL_SECONDS, self._poll_all)

    def _poll_all(self) -> None:
        self._poller = None
        if self._halted:
            return
        if self._order is None:
            for task_id in list(self._live):
                self._poll_one(task_id, final=False)
        else:
            self._advance_live()
        if self._live:
            self._schedule_poll()

    def _advance_live(self) -> None:
        """``--line-buffer -k``: the first job in order not yet printed prints live; each
        job after it, once it is first, prints what it has held back, then goes live."""
        assert self._order is not None
        while self._next < len(self._order):
            seq = self._order[self._next]
            if seq not in self._held:
                task_id = self._started.get(seq)
                if task_id is not None:
                    self._poll_one(task_id, final=False)
                return
            held = self._held.pop(seq)
            if held is not None:
                self._poll_one(held.task_id, final=True)
            self._next += 1

    def _poll_one(self, task_id: str, *, final: bool) -> None:
        job = self._live.get(task_id)
        if job is None or self._run_dir is None:
            return
        prefix = self._tag(task_id) if self._tag else b""
        paths = output_paths(self._run_dir, task_id, job.attempt)
        for path, stream, progress in zip(paths, (self._out, self._err), job.files, strict=True):
            self._print_new(path, stream, progress, prefix, final=final)
        if final:
            del self._live[task_id]

    def _print_new(self, path: str, stream: BinaryIO, progress: _LiveFile, prefix: bytes, *, final: bool) -> None:
        """Print what a job wrote since the last poll: its whole lines, or everything once it has ended."""
        try:
            source = open(path, "rb", buffering=0)  # noqa: SIM115 - closed below; a missing file is no output
        except OSError:
            return
        with source:
            whole = final or self._ungroup
            end = os.fstat(source.fileno()).st_size if whole else _last_line_end(source, progress)
            if end <= progress.printed:
                return
            start, progress.printed = progress.printed, end
            if self.broken_pipe:
                return
            try:
                with self._writing():
                    copy_lines(read_range(source, start, end), stream, prefix)
                    stream.flush()
            except BrokenPipeError:
                self._pipe_broke()

    def close(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
        if self._order is not None and not self._halted:
            # A halt or an interrupt can leave gaps: print what did finish, in order.
            for seq in self._order[self._next :]:
                held = self._held.pop(seq, None)
                if held is not None and self._line_buffer:
                    self._poll_one(held.task_id, final=True)
                elif held is not None:
                    self._print(held)
        for stream in (self._out, self._err):
            try:
                stream.flush()
            except BrokenPipeError:
                self._pipe_broke()
        if self._spool is not None:
            self._spool.close()


def _last_line_end(source: BinaryIO, progress: _LiveFile) -> int:
    """Where the job's whole lines end now (where printing stopped, if no line ended since),
    from what was not yet scanned.

    Only what the job wrote since the last poll is read, up to the size the file has now
    (a job writing faster than we read cannot keep us here), so a long line still being
    written costs one read of each byte, not a read of the whole line at every poll.
    """
    end = progress.printed
    size = os.fstat(source.fileno()).st_size
    for chunk in read_range(source, progress.scanned, size):
        newline = chunk.rfind(b"\n")
        if newline >= 0:
            end = progress.scanned + newline + 1
        progress.scanned += len(chunk)
    return end
