"""A report written whole or not at all: the one way the end-of-run reports reach their file.

`whole_file` hands out a descriptor to a new temporary file beside the target and renames it
over the target once everything is written (and synced), so a reader, or a crash half-way,
sees the old report or the new one, never half of one. The JUnit, HTML and trace reports
all go through it.

A target that exists and is not a regular file (``/dev/stdout``, ``/dev/full``, a FIFO a
reader waits on) is written into instead: renaming over it would replace the device node
itself for root (``--junit /dev/stdout`` would then leave a regular file at /dev/stdout for
every later process) and fail for anyone else. A write that fails says which file (the
error's ``filename``), so the command line can name it in one line.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from collections.abc import Iterator

__all__ = ["whole_file"]


@contextlib.contextmanager
def whole_file(path: str | os.PathLike[str]) -> Iterator[int]:
    """A descriptor to write ``path``'s new content to; on a clean exit it is in place, whole.

    Raises:
        OSError: the file cannot be created or written (``ENOSPC``, ``EFBIG``, ``EACCES``...),
            with ``filename`` set to ``path``; the old report, if any, is left as it was.
    """
    target = os.fspath(path)
    try:
        if _written_into(target):
            fd = os.open(target, os.O_WRONLY | os.O_CLOEXEC)
            try:
                yield fd
            finally:
                os.close(fd)
            return
        temporary, fd = _create_temporary(os.path.dirname(os.path.abspath(target)), os.path.basename(target))
        try:
            try:
                yield fd
                os.fsync(fd)  # the rename must not publish a file whose content is still in flight
            finally:
                os.close(fd)
            os.replace(temporary, target)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise
    except OSError as error:
        if error.filename == target:
            raise
        # The temporary file's name (or none, for a failed write) would mean nothing to whoever
        # asked for ``target``.
        raise OSError(error.errno, error.strerror, target) from error


def _written_into(target: str) -> bool:
    """Whether ``target`` is something other than a regular file (a device, a FIFO): written
    into, never replaced. A symbolic link counts as what it points to."""
    try:
        return not stat.S_ISREG(os.stat(target).st_mode)
    except (FileNotFoundError, NotADirectoryError):
        return False


def _create_temporary(directory: str, name: str) -> tuple[str, int]:
    """A new file next to the report, to be renamed over it: created ``O_EXCL | O_NOFOLLOW``
    (never through a planted link) with the usual mode (0666 less the umask, as the report
    itself would get; ``mkstemp``'s 0600 would make the report private)."""
    while True:
        temporary = os.path.join(directory, f".{name}.{secrets.token_hex(6)}.tmp")
        try:
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
            return temporary, os.open(temporary, flags, 0o666)
        except FileExistsError:
            continue
