"""What Linux's ``/proc`` says about a process, read the cheap way, and the run markers in an environment.

The orphan sweeper reads these after every attempt and the watchdog reads them for every
process on the machine, so each reader is one ``open`` + ``read`` of one small file, no
psutil: psutil builds an object per process and reads more than we need. Every reader
answers None (or nothing) for a process that is gone or not ours to read, never raises.

The stdlib only, and only `os` of it: the watchdog process imports this module, and its start-up
must stay small (no `dataclasses`, no `typing`: each would cost more than the rest of it).

Markers. Every attempt's environment carries ``PHALANX_MARK``: space-separated entries
``TOKEN:SERIAL``, one per phalanx run the process descends from (an attempt of a phalanx
that is itself a task of another phalanx keeps the outer run's entry first), where TOKEN is
a random string per run and SERIAL numbers the run's attempts. A process "belongs to" a run
when one of its entries has the run's token; to an attempt, when an entry is exactly the
attempt's. The environment a process started with stays in ``/proc/PID/environ`` whatever
it later does with its variables, so a daemon that calls ``setsid`` still carries it; one
that is exec'd with an empty environment (``env -i``) does not, and is found only through
its process group.
"""

from __future__ import annotations

import os

#: The environment variable that marks a run's processes.
MARK_VARIABLE = "PHALANX_MARK"

_MARK_KEY = b"\0" + MARK_VARIABLE.encode() + b"="
_READ_SIZE = 1 << 16


class ProcessInfo:
    """The fields of ``/proc/PID/stat`` the sweeper and the watchdog decide on (read-only).

    ``start_ticks`` is the start time in clock ticks since boot: with the pid, it names one
    process for good (a pid is reused, never with the same start time).

    Written out by hand, not a frozen dataclass: the watchdog process imports this module,
    and ``dataclasses`` (with the ``inspect`` it loads) would more than double its start-up,
    which competes with phalanx's own for the CPU.
    """

    __slots__ = ("pgid", "pid", "ppid", "sid", "start_ticks", "state")

    def __init__(self, *, pid: int, state: str, ppid: int, pgid: int, sid: int, start_ticks: int) -> None:
        self.pid = pid
        self.state = state  # "R", "S", "D", "Z" (zombie: exited, not reaped yet), ...
        self.ppid = ppid
        self.pgid = pgid
        self.sid = sid
        self.start_ticks = start_ticks

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.__slots__)
        return f"ProcessInfo({fields})"

    @property
    def exited(self) -> bool:
        return self.state in ("Z", "X")


def process_info(pid: int) -> ProcessInfo | None:
    """Process ``pid``'s `ProcessInfo`, or None when there is no such process."""
    data = _read(f"/proc/{pid}/stat")
    if data is None:
        return None
    # The command name, in parentheses, may hold spaces and parentheses: fields follow the last ")".
    fields = data[data.rfind(b")") + 2 :].split()
    try:
        return ProcessInfo(
            pid=pid,
            state=fields[0].decode("ascii", "replace"),
            ppid=int(fields[1]),
            pgid=int(fields[2]),
            sid=int(fields[3]),
            start_ticks=int(fields[19]),
        )
    except (IndexError, ValueError):
        return None  # not the format we know: treat it as nothing we can judge


def environment(pid: int) -> bytes:
    """The environment process ``pid`` started with (``NAME=value\\0`` ...), or b"" when
    unreadable: gone, a zombie, a kernel thread, or another user's process."""
    return _read(f"/proc/{pid}/environ", whole=True) or b""


def marks(environ: bytes) -> list[str]:
    """The ``PHALANX_MARK`` entries of an environment as `environment` gives it."""
    data = b"\0" + environ
    start = data.find(_MARK_KEY)
    if start < 0:
        return []
    start += len(_MARK_KEY)
    end = data.find(b"\0", start)
    return data[start : end if end >= 0 else len(data)].decode("ascii", "replace").split()


class Children:
    """This process's children, as its main thread's list has them, read again and again.

    Orphans re-parented to a subreaper go to its main thread (the kernel picks the first
    live thread of the process). The ``children`` file stays open: a ``pread`` from its
    start lists them anew, for a third of the cost of opening it each time. Where the
    kernel lacks the file (built without CONFIG_PROC_CHILDREN), a scan of /proc.
    """

    def __init__(self) -> None:
        self._pid = os.getpid()
        try:
            self._fd: int | None = os.open(f"/proc/{self._pid}/task/{self._pid}/children", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            self._fd = None

    def read(self) -> list[int]:
        fd = self._fd
        if fd is None or os.getpid() != self._pid:  # no such file, or a forked child holds it
            return [info.pid for info in map(process_info, all_pids()) if info is not None and info.ppid == os.getpid()]
        data = os.pread(fd, _READ_SIZE, 0)
        if len(data) == _READ_SIZE:  # thousands of children: read on to the end
            parts = [data]
            while chunk := os.pread(fd, _READ_SIZE, sum(map(len, parts))):
                parts.append(chunk)
            data = b"".join(parts)
        return [int(word) for word in data.split()]

    def close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)


def all_pids() -> list[int]:
    """Every process id in /proc now."""
    try:
        names = os.listdir("/proc")
    except OSError:
        return []
    return [int(name) for name in names if name.isdigit()]


def _read(path: str, *, whole: bool = False) -> bytes | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        data = os.read(fd, _READ_SIZE)
        if whole and data:  # a read may stop short of the end (a page of it): read on to the end
            parts = [data]
            while chunk := os.read(fd, _READ_SIZE):
                parts.append(chunk)
            data = b"".join(parts)
        return data
    except OSError:
        return None
    finally:
        os.close(fd)
