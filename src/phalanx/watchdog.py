"""The watchdog: a process of its own that ends a run's tasks when phalanx dies without doing it.

Each attempt leads its own process group, so a SIGKILL of phalanx (an OOM kill, ``kill -9``,
``timeout -s KILL``, a CI runner cancelling the job by killing phalanx's process group)
leaves every task running, with its temporary run directory. The watchdog is there for
that moment::

    phalanx ──pipe (write end: phalanx's only, close-on-exec)──> watchdog (own session)
       "+ PGID"   a group started (PGID: its leader's pid)
       "- PGID"   it ended
       "d HEX"    a temporary run directory (hex of its path's bytes)
       "done"     a normal end: exit quietly

On end-of-file without "done" (phalanx has died: the kernel closed its end) it SIGTERMs
every recorded group whose leader is still the recorded process, and every process whose
environment carries the run's marker (`procfs`; one scan of /proc finds the daemons that
left their group), waits up to the grace period, SIGKILLs what is left (looking again
until nothing is), removes the registered directories (never a kept ``--log-dir``: it is
never registered) and exits.

A pid is reused once reaped, so a group is known by its leader's start time. Phalanx does
not look it up (a read of /proc costs about as much as the rest of a 1 ms job's handling);
the watchdog does, for the groups still running `RESOLVE_AFTER` after it heard of them,
and takes it only from a process whose parent is phalanx or that carries the run's
marker: a pid reused by then is a later child of phalanx's (a task of the run's too, whose
own "+" follows) or refused. A group that ends sooner never costs the read; one still
unresolved when phalanx dies is recognised by its leader's marker alone.

Messages are batched (`FLUSH_AFTER`): a short job's "+" and "-" cancel out in phalanx's
buffer and are never written; a group that lasts gets its "+" within `FLUSH_AFTER` and its
"-" with the next batch (a leader recorded after its end is found gone, or not its own,
by its start time).

It runs in its own session, so killing phalanx's process group does not kill it too, with
/dev/null for stdout and stderr, so that ``phalanx map ... | head`` sees end-of-file when
phalanx exits. It is started by exec (``python -I -S``), not by a fork of phalanx: phalanx
may have threads by then (sinks, a threads backend, a library caller's own) and a forked
child of a threaded process may only call async-signal-safe functions until it execs;
an exec also leaves it none of phalanx's memory or open files. ``subprocess`` spawns it
with vfork + exec, about a millisecond of phalanx's time; the interpreter's start-up
(tens of milliseconds) happens in the new process, while the run goes on. Once per run.

``PHALANX_WATCHDOG=0`` in the environment turns it off (tests of what ``--resume`` does
after a kill use it).
"""

from __future__ import annotations

import os
import select
import sys
import time

from . import procfs

# The watchdog process imports this module, and what it imports is most of that process's
# start-up, which competes with phalanx's for the CPU: so no typing (mypy knows this name),
# no contextlib or weakref, and signal's C module, without the enums that signal.py builds
# (the enum module alone costs more than the rest of it).
TYPE_CHECKING = False
if TYPE_CHECKING:
    import asyncio
    import signal as signals
    import subprocess
    import weakref
else:
    import _signal as signals

#: Set to "0" to run without a watchdog.
WATCHDOG_VARIABLE = "PHALANX_WATCHDOG"

#: The watchdog waits at most this long between SIGTERM and SIGKILL, whatever the run's grace.
MAX_GRACE = 2.0

#: How long the watchdog keeps looking for marked processes after the SIGKILLs, at most.
_KILL_BOUND = 3.0

#: How long `Watchdog.close` may wait to hand over its last messages to a watchdog that lags.
_CLOSE_BOUND = 1.0

#: A group still running this long after the watchdog heard of it has its leader's start time looked up.
RESOLVE_AFTER = 0.05

#: After each read, the watchdog lets this long's messages gather: one wake-up for many jobs.
_GATHER = 0.01

#: A group's start waits this long at most, in phalanx, to go with the next message (a write
#: per message would cost about as much as the rest of the guard's work for a 1 ms job).
FLUSH_AFTER = 0.01

#: ``python -c`` this, with phalanx's package directory: it runs `main` without the site
#: module (-S, which here costs more than all the rest), ignoring PYTHON* variables (-I), and
#: with a bare module for the package: its __init__ (typing, the lazy API) is of no use here.
_BOOTSTRAP = (
    "import sys; package = type(sys)('phalanx'); package.__path__ = [sys.argv[1]]; sys.modules['phalanx'] = package;"
    " from phalanx.watchdog import main; sys.exit(main(sys.argv[2:]))"
)

#: Watchdogs told "done" that had not exited yet: reaped by a later `Watchdog.close`.
_EXITING: list[subprocess.Popen[bytes]] = []


def enabled() -> bool:
    """Whether runs get a watchdog: on Linux (it reads /proc), unless the environment says no."""
    return sys.platform.startswith("linux") and os.environ.get(WATCHDOG_VARIABLE, "1") != "0"


class Watchdog:
    """Phalanx's end of the watchdog: started at the first message, told "done" by `close`.

    Never blocks the run: messages go through a non-blocking pipe, and what does not fit
    while the watchdog lags waits in memory for the next message. A watchdog that cannot
    be started, or has died, is done without: the run goes on.

    Args:
        token: the run's marker token: the processes the watchdog kills carry it.
        grace: seconds between its SIGTERM and its SIGKILL (at most `MAX_GRACE`).
    """

    def __init__(self, token: str, *, grace: float) -> None:
        self._token = token
        self._grace = min(max(grace, 0.0), MAX_GRACE)
        self._fd: int | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._pending = b""
        self._closed = False
        self._flush_timer: asyncio.TimerHandle | None = None
        _live().add(self)

    @property
    def pid(self) -> int | None:
        """The watchdog's process id, once started."""
        return None if self._process is None else self._process.pid

    def group_started(self, pgid: int) -> None:
        """A process group started: ``pgid`` is its leader, a child of this process.

        Sent with the next message, or `FLUSH_AFTER` later on the running event loop: a
        kill of phalanx meanwhile loses it, and the watchdog then finds the group's
        processes by their marker alone."""
        if self._closed:
            return
        if self._fd is None:
            # Now, not at the deferred flush: a kill of phalanx in the next few milliseconds
            # must find the watchdog there (it sees the pipe close, and finds the marked
            # processes even without this message). With a kept --log-dir there is no
            # temporary directory to announce first, and this is the first message.
            self._send(b"")  # starts it (and writes nothing)
            if self._fd is None:
                return
        self._pending += b"+ %d\n" % pgid
        self._flush_soon()

    def group_ended(self, pgid: int) -> None:
        """The group led by ``pgid`` has ended: told with the next batch, or never, if its
        start is still waiting to be told (the usual case for a short job: no write at all)."""
        if self._closed or self._fd is None:
            return
        started = b"+ %d\n" % pgid
        at = self._pending.rfind(started)
        if at >= 0 and (at == 0 or self._pending[at - 1] == ord("\n")):
            self._pending = self._pending[:at] + self._pending[at + len(started):]
            return
        self._pending += b"- %d\n" % pgid
        self._flush_soon()

    def _flush_soon(self) -> None:
        """Write what is pending `FLUSH_AFTER` from now (at once without an event loop)."""
        if self._flush_timer is not None:
            return
        import asyncio  # here: the watchdog process never loads it

        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no event loop to come back later: now
            self._send(b"")
            return
        self._flush_timer = loop.call_later(FLUSH_AFTER, self._flush)

    def temporary_dir(self, path: str | os.PathLike[str]) -> None:
        """A directory to remove if phalanx dies: the run's own, never one the user keeps."""
        self._send(b"d %s\n" % os.fsencode(os.path.abspath(path)).hex().encode())

    def close(self) -> None:
        """Tell the watchdog the run ended normally (it exits, killing nothing); again: nothing."""
        if self._closed:
            return
        self._closed = True
        if self._flush_timer is not None:
            self._flush_timer.cancel()
            self._flush_timer = None
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            self._pending += b"done\n"
            deadline = time.monotonic() + _CLOSE_BOUND
            while self._pending and self._write(fd):
                left = deadline - time.monotonic()
                if left <= 0 or not select.select([], [fd], [], left)[1]:
                    break  # it does not read: it will see end-of-file, and find nothing left to kill
        finally:
            os.close(fd)
        if self._process is not None:
            _EXITING.append(self._process)
            self._process = None
        _reap_exited()

    def _send(self, line: bytes) -> None:
        """Write ``line`` after whatever is pending, now (starting the watchdog if need be)."""
        if self._closed:
            return
        if self._fd is None:
            self._start()
            if self._fd is None:
                return
        self._pending += line
        self._write(self._fd)

    def _flush(self) -> None:
        self._flush_timer = None
        self._send(b"")

    def _write(self, fd: int) -> bool:
        """Write what is pending, as much as the pipe takes now; whether the watchdog is still there."""
        try:
            written = os.write(fd, self._pending)
        except BlockingIOError:
            return True
        except OSError:  # EPIPE: it died; nothing more to tell it
            self._pending = b""
            return False
        self._pending = self._pending[written:]
        return True

    def _start(self) -> None:
        import subprocess  # here: the watchdog process itself never needs it

        read_end, write_end = os.pipe()  # both close-on-exec: tasks never inherit them
        try:
            package = os.path.dirname(os.path.abspath(__file__))
            self._process = subprocess.Popen(
                [sys.executable, "-I", "-S", "-c", _BOOTSTRAP, package, self._token, repr(self._grace),
                 str(os.getpid())],
                stdin=read_end,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                close_fds=True,
                start_new_session=True,
            )
        except OSError:
            os.close(write_end)
            self._closed = True  # no watchdog for this run; the run itself is unaffected
            return
        finally:
            os.close(read_end)
        os.set_blocking(write_end, False)
        self._fd = write_end

    def _forget_after_fork(self) -> None:
        # A forked child (multiprocessing's fork) must not keep the write end open: the
        # watchdog would not see end-of-file when phalanx dies.
        fd = self._fd
        self._fd, self._process, self._closed = None, None, True
        if fd is None:
            return
        try:
            os.close(fd)
        except OSError:
            return  # not open any more: nothing to let go of


def _reap_exited() -> None:
    """Reap the watchdogs that have exited since they were told "done" (by their own pid)."""
    _EXITING[:] = [process for process in _EXITING if process.poll() is None]


#: The watchdogs of this process, for `_after_fork_in_child`.
_LIVE: weakref.WeakSet[Watchdog] | None = None


def _live() -> weakref.WeakSet[Watchdog]:
    global _LIVE
    if _LIVE is None:
        import weakref  # here: made with the first Watchdog, so the watchdog process never loads it

        _LIVE = weakref.WeakSet()
    return _LIVE


def _after_fork_in_child() -> None:
    for watchdog in list(_LIVE or ()):
        watchdog._forget_after_fork()
    _EXITING.clear()  # the parent's children, not ours


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


# ---------------------------------------------------------------------------- the watchdog process


def main(argv: list[str]) -> int:
    """The watchdog process: ``TOKEN GRACE OWNER_PID``; reads phalanx's messages on standard input."""
    token, grace, owner = argv[0], float(argv[1]), int(argv[2])
    signals.signal(signals.SIGINT, signals.SIG_IGN)  # its own session: no terminal's ^C is meant for it
    groups = RecordedGroups(token, owner)
    directories: list[str] = []
    buffered = b""
    while True:
        due = groups.next_due()
        wait = None if due is None else max(due - time.monotonic(), 0.0)
        if select.select([0], [], [], wait)[0]:
            try:
                chunk = os.read(0, 1 << 16)
            except OSError:
                chunk = b""
            if not chunk:
                break
            *lines, buffered = (buffered + chunk).split(b"\n")
            for line in lines:
                if line == b"done":
                    return 0
                _apply(line, groups, directories)
            time.sleep(_GATHER)
        groups.resolve(time.monotonic())
    clean_up(token, groups.final(), directories, grace)
    return 0


class RecordedGroups:
    """The process groups phalanx has running, each known by its leader's start time once
    it has run for `RESOLVE_AFTER` (see the module: which process a start time is taken from)."""

    def __init__(self, token: str, owner: int) -> None:
        self._prefix = token + ":"
        self._owner = owner
        self._pending: dict[int, float] = {}  # pgid -> when heard of, oldest first
        self._resolved: dict[int, int] = {}  # pgid -> its leader's start ticks

    def started(self, pgid: int, now: float) -> None:
        self._resolved.pop(pgid, None)
        self._pending.pop(pgid, None)
        self._pending[pgid] = now

    def ended(self, pgid: int) -> None:
        self._pending.pop(pgid, None)
        self._resolved.pop(pgid, None)

    def next_due(self) -> float | None:
        """When the oldest unresolved group is due for its look-up; None: none is waiting."""
        for heard in self._pending.values():
            return heard + RESOLVE_AFTER
        return None

    def resolve(self, now: float) -> None:
        """Look up the start time of each group heard of `RESOLVE_AFTER` ago or earlier."""
        for pgid, heard in list(self._pending.items()):
            if now - heard < RESOLVE_AFTER:
                break
            del self._pending[pgid]
            info = procfs.process_info(pgid)
            if info is not None and (info.ppid == self._owner or self._marked(pgid)):
                self._resolved[pgid] = info.start_ticks
            # else: gone (and phalanx with it: its "-" never came), the pid perhaps another's

    def final(self) -> dict[int, int]:
        """Phalanx is gone: every group whose leader is still known, by start ticks. The
        unresolved ones count only if their leader carries the run's marker."""
        for pgid in list(self._pending):
            info = procfs.process_info(pgid)
            if info is not None and self._marked(pgid):
                self._resolved[pgid] = info.start_ticks
        self._pending.clear()
        return dict(self._resolved)

    def _marked(self, pid: int) -> bool:
        return any(entry.startswith(self._prefix) for entry in procfs.marks(procfs.environment(pid)))


def _apply(line: bytes, groups: RecordedGroups, directories: list[str]) -> None:
    kind, _, rest = line.partition(b" ")
    try:
        if kind == b"+":
            groups.started(int(rest), time.monotonic())
        elif kind == b"-":
            groups.ended(int(rest))
        elif kind == b"d":
            directories.append(os.fsdecode(bytes.fromhex(rest.decode("ascii"))))
    except ValueError:
        pass  # not a message this watchdog knows


def clean_up(token: str, groups: dict[int, int], directories: list[str], grace: float) -> None:
    """What the watchdog does when phalanx has died: stop every process of the run, then
    remove its temporary directories."""
    prefix = token + ":"
    targets = {pgid for pgid, ticks in groups.items() if _leads(pgid, ticks)}
    victims = _scan(prefix, targets)
    for pgid in targets:
        _signal_group(pgid, signals.SIGTERM)
    for pid, ticks in victims.items():
        _signal(pid, ticks, signals.SIGTERM)
    deadline = time.monotonic() + grace
    pause = 0.005
    while time.monotonic() < deadline and any(_alive(pid, ticks) for pid, ticks in victims.items()):
        time.sleep(min(pause, max(deadline - time.monotonic(), 0)))
        pause = min(pause * 2, 0.05)
    # SIGKILL what is left, and look again: something may have forked meanwhile. A SIGKILLed
    # process shows its environment until it is gone: it is found again until then.
    deadline = time.monotonic() + _KILL_BOUND
    while True:
        targets = {pgid for pgid in targets if _leads(pgid, groups[pgid])}
        for pgid in targets:
            _signal_group(pgid, signals.SIGKILL)
        for pid, ticks in victims.items():
            _signal(pid, ticks, signals.SIGKILL)
        found = _scan(prefix, targets)
        if not found or time.monotonic() > deadline:
            break
        victims.update(found)
        time.sleep(0.01)
    import shutil  # here: only a watchdog that has work to do loads it

    for directory in directories:
        shutil.rmtree(directory, ignore_errors=True)


def _scan(prefix: str, groups: set[int]) -> dict[int, int]:
    """Every live process (not us) in one of ``groups`` or carrying a marker entry that
    starts with ``prefix``: pid -> start ticks."""
    found: dict[int, int] = {}
    me = os.getpid()
    for pid in procfs.all_pids():
        if pid == me:
            continue
        info = procfs.process_info(pid)
        if info is None or info.exited:
            continue
        if info.pgid in groups or any(entry.startswith(prefix) for entry in procfs.marks(procfs.environment(pid))):
            found[pid] = info.start_ticks
    return found


def _leads(pgid: int, ticks: int) -> bool:
    """Whether the process ``pgid`` is the recorded leader (same start time) and still leads
    its group: only then is the group id surely still that group's."""
    info = procfs.process_info(pgid)
    return info is not None and info.start_ticks == ticks and info.pgid == pgid


def _alive(pid: int, ticks: int) -> bool:
    info = procfs.process_info(pid)
    return info is not None and info.start_ticks == ticks and not info.exited


def _signal_group(pgid: int, number: int) -> None:
    try:
        os.killpg(pgid, number)
    except (ProcessLookupError, PermissionError):
        return  # gone already, or not ours to signal


def _signal(pid: int, ticks: int, number: int) -> None:
    """Signal process ``pid`` if it is still the one that started at ``ticks``.

    Through a pidfd where there are pidfds: opened before the check, it names the process
    checked, so a pid reused between the check and the signal is never hit."""
    try:
        pidfd: int | None = os.pidfd_open(pid)
    except (AttributeError, OSError):
        pidfd = None
    try:
        if not _alive(pid, ticks):
            return
        try:
            if pidfd is None:
                os.kill(pid, number)
            else:
                signals.pidfd_send_signal(pidfd, number)
        except (ProcessLookupError, PermissionError):
            pass
    finally:
        if pidfd is not None:
            os.close(pidfd)
