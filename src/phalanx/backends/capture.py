"""Capped output: a command's stdout and stderr kept to ``max_output`` bytes each.

Without a cap the command backend hands the child its two output files and never touches
a byte of them (the fast path). With one, each stream is a pipe that the event loop drains:

    child ──pipe──> loop (add_reader) ──┬──> output file: the first half of the cap, as it comes
                                        └──> ring file: the latest half, overwritten in a circle
    attempt ends ──> read what the pipe holds, stop reading ──> file = head [+ marker] + tail

What is kept is the head and the tail. A failing command's error is usually at its end,
and what it did first (the command echoed, versions, the configuration it read) is often
what explains it; the middle of a flood is what matters least. The bytes between are
counted and dropped, and the result says how many (`OutputCut`). `phalanx run` puts a
marker line between head and tail, so that whoever reads the file sees the seam;
`phalanx map` puts none, as its standard output must be the job's own bytes. Until the
head is full, the file grows as the command writes, so whatever follows it as it grows
(``--line-buffer``) sees the output as it comes; what follows the head lands at the end.

Why pipes rather than punching holes in the files behind the writer
(``fallocate(PUNCH_HOLE)``): a punched file keeps its apparent size, so every reader then
walks through gigabytes of zeros and the tail is found at the wrong end; the disk used is
only as bounded as the punching is frequent (a writer at 2 GB/s outruns any polling
interval); and not every file system or platform has it. A pipe bounds both memory and
disk exactly, and only capped tasks pay for it: each byte is copied through phalanx, and
the command's writes wait while the loop is busy.

Bounds: memory, one read buffer of `CHUNK` bytes per thread running a loop; disk, the cap
per stream (plus the marker), and for a moment at the end the ring file beside its copy
(half the cap again).

The end of an attempt never waits for the pipe: once the leader has exited and its group
has been killed, what the pipe holds is read without blocking and the pipe is closed. A
process that outlived its task (``kill_leftovers=False``, or one that left the process
group) and writes after that gets EPIPE (SIGPIPE) where, uncapped, it would have gone on
writing to the file.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import os
import tempfile
import threading
from typing import IO

from ..results import OutputCut, StreamCut

#: The most one read takes from a pipe, and the pipe's size where the kernel allows it:
#: fewer wake-ups of the loop than the default 64 KiB, and small enough that a user's 256
#: pipes of it stay within Linux's default pipe-user-pages-soft (64 MiB), past which
#: unprivileged users' new pipes are cut to one page.
CHUNK = 1 << 18

#: Reads of what is left in a pipe once its attempt has ended, at most: a writer that
#: outlived the attempt must not keep the loop there.
_DRAIN_READS = 8

#: copy_file_range's errors that mean "not here" (another file system, an old kernel).
_NO_COPY_RANGE = frozenset((errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.EPERM))

_local = threading.local()


def _buffer() -> bytearray:
    """This thread's read buffer: each loop reads into one buffer, whatever the number of pipes."""
    buffer: bytearray | None = getattr(_local, "buffer", None)
    if buffer is None:
        buffer = _local.buffer = bytearray(CHUNK)
    return buffer


class OutputCapture:
    """Both output streams of one capped attempt.

    Use: make it, start the child with `child_fds` as its stdout and stderr, `start` (or
    only `close`, if the child did not start), `finish` once the attempt's process group
    is dead, and `close` in any case.

    Args:
        cap: the most bytes each stream keeps (at least 1).
        out_fd, err_fd: the output files, open for reading and writing, empty.
        run_dir: where the ring files go (nameless, gone when closed).
        marker: put a line saying what was cut between the head and the tail.

    Raises:
        OSError: no pipe could be made (too many open files).
    """

    def __init__(self, cap: int, out_fd: int, err_fd: int, run_dir: str, *, marker: bool = True) -> None:
        if cap < 1:
            raise ValueError(f"the output cap must be at least 1 byte, got {cap!r}")
        self._cap = cap
        stdout = _CappedStream("stdout", out_fd, cap, run_dir, marker=marker)
        try:
            stderr = _CappedStream("stderr", err_fd, cap, run_dir, marker=marker)
        except BaseException:
            stdout.close()
            raise
        self._streams = (stdout, stderr)

    @property
    def child_fds(self) -> tuple[int, int]:
        """The write ends of the pipes: the child's stdout and stderr."""
        return self._streams[0].write_fd, self._streams[1].write_fd

    def start(self) -> None:
        """The child has started: let go of our copies of its ends, read on the running loop."""
        loop = asyncio.get_running_loop()
        for stream in self._streams:
            stream.start(loop)

    def finish(self) -> OutputCut | None:
        """Read what the pipes hold without waiting, close them and put the files together.

        Call it once nothing that should be heard is left: the leader has exited and its
        group has been killed. Returns what was cut, or None if every byte was kept.
        """
        stdout, stderr = (stream.finish() for stream in self._streams)
        if stdout is None and stderr is None:
            return None
        return OutputCut(self._cap, stdout=stdout, stderr=stderr)

    def close(self) -> None:
        """Stop reading and release the pipes and ring files (again: nothing)."""
        for stream in self._streams:
            stream.close()


class _CappedStream:
    """One stream: its pipe, its output file's head, its ring file for the tail."""

    def __init__(self, name: str, file_fd: int, cap: int, run_dir: str, *, marker: bool) -> None:
        self._name = name
        self._file_fd = file_fd
        self._run_dir = run_dir
        self._marker = marker
        self._head_size = cap // 2
        self._ring_size = cap - self._head_size  # at least 1
        self._read_fd: int | None
        self._read_fd, self.write_fd = os.pipe()  # both close-on-exec; Popen dup2s ours to 1 or 2
        os.set_blocking(self._read_fd, False)
        set_size = getattr(fcntl, "F_SETPIPE_SZ", None)  # Linux only
        if set_size is not None:
            with contextlib.suppress(OSError):  # refused past pipe-max-size or the user's quota: keep 64 KiB
                fcntl.fcntl(self._read_fd, set_size, CHUNK)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ring: IO[bytes] | None = None  # made when the head is full
        self._printed = 0  # bytes read from the pipe
        self._head_written = 0  # bytes of the head in the file
        self._failed = False  # a write failed (a full disk): from then on, only counted
        self._done = False
        self._cut: StreamCut | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._close_write_end()
        assert self._read_fd is not None
        self._loop = loop
        loop.add_reader(self._read_fd, self._on_readable)

    def _on_readable(self) -> None:
        if not self._read_once():
            self._stop_reading()  # end of file: every writer has closed its end

    def _read_once(self) -> bool:
        """Read what the pipe holds, up to `CHUNK`, and keep it; False at end of file (or on
        an error reading, which ends it as well)."""
        assert self._read_fd is not None
        buffer = _buffer()
        try:
            count = os.readv(self._read_fd, [buffer])
        except BlockingIOError:
            return True
        except OSError:
            return False
        if count:
            with memoryview(buffer) as view:
                self._keep(view[:count])
        return count > 0

    def _keep(self, data: memoryview) -> None:
        """Write what was read where it belongs: the head, else the ring; only count it after a failed write."""
        start = self._printed
        self._printed += len(data)
        if self._failed:
            return
        try:
            if start < self._head_size:
                head = data[: self._head_size - start]
                _pwrite_all(self._file_fd, head, start)
                self._head_written += len(head)
                data, start = data[len(head):], start + len(head)
            if data:
                self._to_ring(data, start)
        except OSError:
            self._failed = True  # the disk is full: keep the head written so far, count the rest

    def _to_ring(self, data: memoryview, index: int) -> None:
        """Byte ``index`` of the stream (past the head) goes to ``(index - head) % ring size``."""
        if self._ring is None:
            # Nameless where the system allows (O_TMPFILE): nothing to clean up, nothing to collide with.
            self._ring = tempfile.TemporaryFile(dir=self._run_dir)  # noqa: SIM115 - closed in close()
        size = self._ring_size
        if len(data) > size:  # only its last bytes can be part of the tail
            index += len(data) - size
            data = data[-size:]
        offset = (index - self._head_size) % size
        first = min(len(data), size - offset)
        _pwrite_all(self._ring.fileno(), data[:first], offset)
        if first < len(data):
            _pwrite_all(self._ring.fileno(), data[first:], 0)

    def finish(self) -> StreamCut | None:
        if self._done:
            return self._cut
        self._done = True
        self._stop_reading()
        if self._read_fd is not None:
            for _ in range(_DRAIN_READS):  # never until end of file: a live writer would keep us here
                before = self._printed
                if not self._read_once() or self._printed == before:
                    break
        self._close_read_end()
        self._cut = self._assemble()
        self._close_ring()
        return self._cut

    def _assemble(self) -> StreamCut | None:
        """Put the tail after the head in the file (and the marker between, if bytes were dropped)."""
        head, printed = self._head_size, self._printed
        if self._failed:
            with contextlib.suppress(OSError):
                os.ftruncate(self._file_fd, self._head_written)
            return StreamCut(printed=printed, kept=self._head_written, head=self._head_written)
        past_head = printed - head
        if past_head <= 0:
            return None  # all of it is in the file already
        assert self._ring is not None
        ring = self._ring.fileno()
        try:
            if past_head <= self._ring_size:  # the ring never went round: it holds the rest, in order
                _copy(ring, 0, past_head, self._file_fd, head)
                return None
            offset = head
            dropped = past_head - self._ring_size
            if self._marker:
                marker = self._marker_line(dropped)
                _pwrite_all(self._file_fd, memoryview(marker), offset)
                offset += len(marker)
            oldest = past_head % self._ring_size  # where the ring's oldest byte is
            _copy(ring, oldest, self._ring_size - oldest, self._file_fd, offset)
            _copy(ring, 0, oldest, self._file_fd, offset + self._ring_size - oldest)
        except OSError:  # a full disk: the head alone, and say so in the counts
            with contextlib.suppress(OSError):
                os.ftruncate(self._file_fd, head)
            return StreamCut(printed=printed, kept=head, head=head)
        return StreamCut(printed=printed, kept=head + self._ring_size, head=head)

    def _marker_line(self, dropped: int) -> bytes:
        # On a line of its own: after a newline of its own if the head ends mid-line.
        ends_line = self._head_size == 0 or os.pread(self._file_fd, 1, self._head_size - 1) == b"\n"
        line = (f"[phalanx: {dropped} bytes of {self._name} cut here by max_output; kept: the first "
                f"{self._head_size} bytes and the last {self._ring_size}]\n")
        return (line if ends_line else "\n" + line).encode()

    def _stop_reading(self) -> None:
        if self._loop is not None and self._read_fd is not None:
            self._loop.remove_reader(self._read_fd)
        self._loop = None

    def _close_read_end(self) -> None:
        fd, self._read_fd = self._read_fd, None
        if fd is not None:
            os.close(fd)

    def _close_write_end(self) -> None:
        fd, self.write_fd = self.write_fd, -1
        if fd >= 0:
            os.close(fd)

    def _close_ring(self) -> None:
        ring, self._ring = self._ring, None
        if ring is not None:
            ring.close()

    def close(self) -> None:
        self._stop_reading()
        self._close_read_end()
        self._close_write_end()
        self._close_ring()


def _pwrite_all(fd: int, data: memoryview, offset: int) -> None:
    while data:
        written = os.pwrite(fd, data, offset)
        if written <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        data, offset = data[written:], offset + written


def _copy(source: int, start: int, count: int, target: int, offset: int) -> None:
    """Copy ``count`` bytes of file ``source`` from ``start`` to file ``target`` at ``offset``:
    in the kernel where it can (copy_file_range: no byte through phalanx; a reflink on file
    systems that have them), else a buffer at a time."""
    copy_range = getattr(os, "copy_file_range", None)
    while count > 0 and copy_range is not None:
        try:
            copied = copy_range(source, target, count, start, offset)
        except OSError as error:
            if error.errno not in _NO_COPY_RANGE:
                raise
            break
        if copied <= 0:
            break
        start, offset, count = start + copied, offset + copied, count - copied
    buffer = _buffer()
    with memoryview(buffer) as view:
        while count > 0:
            got = os.preadv(source, [view[: min(count, len(buffer))]], start)
            if got <= 0:
                raise OSError(errno.EIO, f"the ring file ended {count} bytes early")
            _pwrite_all(target, view[:got], offset)
            start, offset, count = start + got, offset + got, count - got
