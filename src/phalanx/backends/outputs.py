"""Where a command attempt's stdout and stderr go: files, reused per slot or made per attempt.

Every attempt writes to files in its run directory, never to pipes phalanx must keep up
with: memory stays bounded whatever a job prints, and a background process holding the
files open cannot delay the end of the attempt. Making two files per attempt costs
filesystem metadata (80-600 µs each on an ext4 disk, against the 1 ms a short job takes),
so by default a slot's attempts share one pair (``slot-N.out``/``.err``), truncated before
the next attempt when the last one printed: an attempt that prints nothing costs no
metadata at all. The price is a shorter life: a reused file holds an attempt's output only
until the scheduler has told the sinks of its end (`TaskFinished`, `TaskRetrying`, which it
does before it starts anything else in that slot); a sink that needs the output later
copies it then (``phalanx map -k``'s held jobs), and a run that keeps its outputs (a log
directory, JUnit's earlier attempts read by name) makes files per attempt
(``reuse=False``), named by `phalanx.outputfiles.output_paths`.

A stream phalanx does not capture at all (``phalanx map -u``, output going to
``/dev/null``) goes straight to the descriptor given, as xargs does: no file, no copy.
"""

from __future__ import annotations

import contextlib
import os

from ..outputfiles import output_paths
from .base import Attempt

# Read-write: the same fd later gives the output's tail (fstat + pread), no reopening.
# Always a new file (O_EXCL), never through a symlink (O_NOFOLLOW): the names in a kept log
# directory are predictable, and a link planted at one must not make us write its target.
_OUTPUT_FLAGS = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_OUTPUT_MODE = 0o600

#: How often a name is unlinked and created again when something keeps reappearing there.
_CREATE_TRIES = 3


class AttemptOutput:
    """Where one attempt writes: a descriptor per stream (-1: not captured, the child writes
    to the descriptor the backend passes straight through), their paths (None when not
    captured), and the file the command may write its result to."""

    __slots__ = ("err_fd", "out_fd", "result_absent", "result_path", "slot", "stderr_path", "stdout_path")

    def __init__(self, out_fd: int, err_fd: int, stdout_path: str | None, stderr_path: str | None,
                 result_path: str, slot: _Slot | None) -> None:
        self.out_fd = out_fd
        self.err_fd = err_fd
        self.stdout_path = stdout_path
        self.stderr_path = stderr_path
        self.result_path = result_path
        self.slot = slot  # the reused pair it writes to, given back at the end; None: its own files
        self.result_absent = False  # found missing after the attempt: the next one need not remove it


class _Slot:
    """A slot's reusable pair of output files."""

    __slots__ = ("busy", "dirty", "err_fd", "out_fd", "paths", "result_left")

    def __init__(self, paths: tuple[str, str, str], out_fd: int, err_fd: int) -> None:
        self.paths = paths  # stdout, stderr, result file
        self.out_fd = out_fd
        self.err_fd = err_fd
        self.busy = False
        self.dirty = False  # the last attempt wrote something: truncate before the next
        self.result_left = True  # something may be at the result file's name (unknown: yes)


class OutputFiles:
    """Hands each attempt its output files, and takes them back.

    Args:
        reuse: share one pair of files per slot (see the module doc); False: two new files
            per attempt, named after the task and attempt, kept after it.
        stdout_to, stderr_to: a descriptor that stream goes to directly, uncaptured (the
            attempt's outcome then has no path and no tail for it); None: captured.
    """

    def __init__(self, *, reuse: bool = False, stdout_to: int | None = None, stderr_to: int | None = None) -> None:
        self._reuse = reuse
        self.stdout_to = stdout_to
        self.stderr_to = stderr_to
        self._run_dirs: dict[str, str] = {}  # as given -> absolute, once created
        self._slots: dict[tuple[str, int], _Slot] = {}

    def open(self, attempt: Attempt) -> AttemptOutput:
        """The attempt's output files, empty and ready (raises OSError if they cannot be made)."""
        run_dir = self._run_dir(str(attempt.run_dir))
        if self._reuse and attempt.worker > 0:
            slot = self._slot(run_dir, attempt.worker)
            if slot is not None:
                stdout, stderr, result = slot.paths
                if slot.result_left:  # else nothing is there: the last attempt's was read and removed
                    _remove(result)
                    slot.result_left = False
                return AttemptOutput(slot.out_fd, slot.err_fd, None if slot.out_fd < 0 else stdout,
                                     None if slot.err_fd < 0 else stderr, result, slot)
        stdout, stderr = output_paths(run_dir, attempt.task.id, attempt.number)
        result = stdout[: -len(".out")] + ".result.json"
        # A kept log directory may hold an earlier run's result file: it must not pass for
        # this attempt's data. Whatever is at that name goes (a planted symlink: the link,
        # not its target); the command makes its own.
        _remove(result)
        out_fd = -1 if self.stdout_to is not None else _create(stdout)
        try:
            err_fd = -1 if self.stderr_to is not None else _create(stderr)
        except OSError:
            if out_fd >= 0:
                os.close(out_fd)
            raise
        return AttemptOutput(out_fd, err_fd, None if out_fd < 0 else stdout, None if err_fd < 0 else stderr,
                             result, None)

    def child_fds(self, output: AttemptOutput) -> tuple[int, int]:
        """The descriptors the attempt's process gets as its stdout and stderr."""
        out = output.out_fd if output.out_fd >= 0 else self.stdout_to
        err = output.err_fd if output.err_fd >= 0 else self.stderr_to
        assert out is not None and err is not None
        return out, err

    def done(self, output: AttemptOutput) -> None:
        """The attempt is over (its outcome made): its own files are closed, a slot's pair is
        free again (emptied when the slot's next attempt takes it)."""
        slot = output.slot
        if slot is None:
            for fd in (output.out_fd, output.err_fd):
                if fd >= 0:
                    os.close(fd)
            return
        slot.busy = False
        slot.dirty = True
        slot.result_left = not output.result_absent

    def close(self) -> None:
        """Close every slot's files (the run directory and its files are the run's to remove)."""
        for slot in self._slots.values():
            for fd in (slot.out_fd, slot.err_fd):
                if fd >= 0:
                    os.close(fd)
        self._slots.clear()

    def _slot(self, run_dir: str, worker: int) -> _Slot | None:
        """The worker slot's pair, emptied, marked busy; None if it is busy (a task needing no
        slot shares the number of one) or cannot be made: the attempt gets its own files."""
        slot = self._slots.get((run_dir, worker))
        if slot is None:
            stem = os.path.join(run_dir, f"slot-{worker}")
            paths = (f"{stem}.out", f"{stem}.err", f"{stem}.result.json")
            out_fd = -1
            try:
                out_fd = -1 if self.stdout_to is not None else _create(paths[0])
                err_fd = -1 if self.stderr_to is not None else _create(paths[1])
            except OSError:
                if out_fd >= 0:
                    os.close(out_fd)  # the first was made, the second not
                return None
            slot = self._slots[(run_dir, worker)] = _Slot(paths, out_fd, err_fd)
        elif slot.busy:
            return None
        elif slot.dirty:
            for fd in (slot.out_fd, slot.err_fd):
                # The child shares our file offset (one open file description): back to 0 too.
                if fd >= 0 and os.lseek(fd, 0, os.SEEK_END):
                    os.ftruncate(fd, 0)
                    os.lseek(fd, 0, os.SEEK_SET)
            slot.dirty = False
        slot.busy = True
        return slot

    def _run_dir(self, key: str) -> str:
        run_dir = self._run_dirs.get(key)
        if run_dir is None:
            # Absolute, because the command runs in task.cwd and must find its result file.
            run_dir = os.path.abspath(key)
            # Private when we create it (the output of commands can be sensitive); an existing
            # directory (a kept --log-dir) keeps its mode. Only the last level gets 0o700.
            os.makedirs(run_dir, mode=0o700, exist_ok=True)
            self._run_dirs[key] = run_dir
        return run_dir


def _remove(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _create(path: str) -> int:
    """Open a new, empty output file at ``path`` (mode 0o600), replacing whatever is there.

    The first try costs one ``open``; only if something is there (an earlier run's file in a
    kept log directory, or a planted symlink) is it unlinked - the link itself, never its
    target - and the name created again, exclusively: O_EXCL|O_NOFOLLOW never writes through
    a link, even one planted again between the unlink and the open.
    """
    for _ in range(_CREATE_TRIES - 1):
        try:
            return os.open(path, _OUTPUT_FLAGS, _OUTPUT_MODE)
        except FileExistsError:
            _remove(path)
    return os.open(path, _OUTPUT_FLAGS, _OUTPUT_MODE)
