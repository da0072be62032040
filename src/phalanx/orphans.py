"""Processes that escape an attempt's process group: made our children, found, killed and reaped.

Killing an attempt's process group reaches everything it started, except what left the
group: ``setsid sh -c 'server &'`` starts a new session, which no ``killpg`` reaches. As a
*child subreaper* (``prctl(PR_SET_CHILD_SUBREAPER)``, Linux) phalanx inherits every
orphan below it instead of init: a daemon whose parent exits becomes our child. After
each attempt's leader exits and its group has been SIGKILLed, `OrphanSweeper.ended` looks
at our children (one ``pread`` of ``/proc/self/task/PID/children``: a few microseconds
while nothing escaped), kills those that carry the marker of an attempt that has ended
(`procfs` explains the markers), waits for them to exit, and looks again (their own
children are ours now), until none is left; then it reaps them by pid. One that carries
a running attempt's marker is left to that attempt's end.

What we reap, and why that never takes a child some user thread owns (a thread waiting
for its own ``subprocess`` would get ECHILD): only

1. a child we killed because it carried the run's marker of an attempt that has ended
   (a user's own subprocess does not carry the random token of this run);
2. a child whose process group is that of an attempt whose leader we have not reaped yet
   (the leader, a zombie at worst, keeps the group id from being reused);
3. a zombie in the session or process group of a child of case 1 seen in the same sweep
   (that child, unreaped until the sweep ends, keeps those ids from being reused; our own
   session and group are never counted);
4. a zombie we had seen alive with the marker of an attempt that was still running then;
5. a zombie in a session that is neither ours nor its own: a child we (any thread) fork
   is in our session or leads a new one, and no call joins another session, so it can
   only be an orphan re-parented to us, which no thread waits for.

A re-parented orphan that led its own session (``setsid``'s child) and exited before any
sweep saw it alive fits none of these: it looks like a thread's ``start_new_session``
child. It stays a zombie until phalanx exits (init then reaps it). A process that dropped
its environment and left the group is not found alive either: it is left running.
"""

from __future__ import annotations

import errno
import os
import select
import signal
import sys
import time

from . import procfs

#: PR_SET_CHILD_SUBREAPER, from <linux/prctl.h>.
_PR_SET_CHILD_SUBREAPER = 36

#: The longest one sweep waits for the processes it SIGKILLed to exit (a process in
#: uninterruptible sleep, on a dead NFS server, can take any time: it is reaped later).
_EXIT_BOUND = 1.0

#: At most this many rounds of "kill the layer we see, wait, look again" per sweep: the
#: depth of a tree of daemons, far beyond what a task starts.
_ROUNDS = 64


def become_subreaper() -> bool:
    """Make this process a child subreaper (Linux); whether it is one now.

    Changes the whole process for its lifetime: the command line does it, a library
    caller only if it asks to (`TaskGuard`).
    """
    if not sys.platform.startswith("linux"):
        return False
    import ctypes  # here: only runs that contain their tasks pay for loading it

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


class OrphanSweeper:
    """Finds, kills and reaps the processes of ended attempts that are now our children.

    Only useful in a child subreaper. Call `started` for each attempt's leader once it is
    spawned, and `ended` once it has exited (not reaped yet) and its group was SIGKILLed;
    `sweep` once more at the end. One event loop's thread calls it.

    Args:
        token: the run's marker token (`procfs` markers).
    """

    def __init__(self, token: str) -> None:
        self._prefix = token + ":"
        self._leaders: dict[int, str] = {}  # running attempts: leader pid -> its marker entry
        self._seen: dict[int, str] = {}  # orphans seen alive with a running attempt's marker
        self._unreaped: set[int] = set()  # killed by an earlier sweep, not exited when it ended
        self._own_group = os.getpgid(0)
        self._own_session = os.getsid(0)
        self._children = procfs.Children()
        #: Our children that are never swept (the watchdog).
        self.spared: set[int] = set()

    def started(self, entry: str, pid: int) -> None:
        """Attempt ``entry`` (its marker entry, ``TOKEN:SERIAL``) runs as process group ``pid``."""
        self._leaders[pid] = entry

    def ended(self, pid: int) -> None:
        """The attempt led by ``pid`` has ended: its leader has exited but is not reaped,
        and its group has been SIGKILLed. Kill and reap what is left of it."""
        if self._leaders.pop(pid, None) is not None:
            self.sweep(ended_group=pid)

    def sweep(self, ended_group: int | None = None) -> None:
        """Kill every child that carries the marker of an attempt no longer running, reap
        it and what else is provably ours (see the module), wait for all of it (bounded)."""
        current = self._children.read()
        if not self._unreaped and all(
            pid in self._leaders or pid == ended_group or pid in self.spared for pid in current
        ):
            return  # nothing escaped: the usual case, after one read
        running = set(self._leaders.values())
        # Group ids whose leader we have not reaped: no other group can have them.
        groups = set(self._leaders)
        if ended_group is not None:
            groups.add(ended_group)
        victims = set(self._unreaped)  # reaped only at the end: their ids stay taken meanwhile
        sessions: set[int] = set()
        deadline = time.monotonic() + _EXIT_BOUND
        for round_number in range(_ROUNDS):
            if round_number:
                current = self._children.read()
            if self._seen:
                # One no longer our child was reaped by somebody else (a stray os.wait()):
                # its pid may be another process's soon.
                listed = set(current)
                self._seen = {pid: entry for pid, entry in self._seen.items() if pid in listed}
            fresh = self._victims(current, running, groups, sessions, ended_group, victims)
            if not fresh:
                break
            victims.update(fresh)
            if not _wait_exited(fresh, deadline):
                break  # still dying after the bound: reaped by a later sweep
        self._reap(victims)

    def close(self) -> None:
        """The last `sweep` is done: let go of what it reads."""
        self._children.close()

    def _victims(
        self,
        current: list[int],
        running: set[str],
        groups: set[int],
        sessions: set[int],
        ended_group: int | None,
        victims: set[int],
    ) -> list[int]:
        """One look at our children: the new ones to kill (killed here) or reap."""
        fresh: list[int] = []
        zombies: list[procfs.ProcessInfo] = []
        for pid in current:
            if pid in self._leaders or pid == ended_group or pid in victims or pid in self.spared:
                continue
            info = procfs.process_info(pid)
            if info is None:
                continue
            if info.exited:
                zombies.append(info)
                continue
            entry = self._entry_of(pid)
            if entry is None:
                # In the ended attempt's group without the marker (env -i): SIGKILLed with
                # the group, let it die and reap it. Anything else unmarked is not ours.
                if info.pgid == ended_group:
                    fresh.append(pid)
                continue
            if entry in running:
                self._seen[pid] = entry  # a running attempt's: its own end will deal with it
                continue
            try:
                os.kill(pid, signal.SIGKILL)  # our child: its pid cannot be reused before we reap it
            except PermissionError:
                continue  # a set-user-id program we may not signal: not ours to end
            fresh.append(pid)
            if info.sid != self._own_session:
                sessions.add(info.sid)
            if info.pgid != self._own_group:
                groups.add(info.pgid)
        for info in zombies:
            if info.pid in self._seen or info.pgid in groups or info.sid in sessions or self._adopted(info):
                fresh.append(info.pid)
        return fresh

    def _adopted(self, info: procfs.ProcessInfo) -> bool:
        """Whether a child can only be an orphan re-parented to us: it is in a session that
        is neither ours nor its own. A child we fork is in our session or leads a new one
        (``setsid``); no call joins another session, so no thread of ours spawned it."""
        return info.sid != self._own_session and info.sid != info.pid

    def _entry_of(self, pid: int) -> str | None:
        """This run's marker entry in process ``pid``'s environment, if it has one."""
        for entry in procfs.marks(procfs.environment(pid)):
            if entry.startswith(self._prefix):
                return entry
        return None

    def _reap(self, victims: set[int]) -> None:
        unreaped = set()
        for pid in victims:
            try:
                reaped, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                reaped = pid  # somebody else reaped it: nothing left to do
            if reaped == 0:
                unreaped.add(pid)
            else:
                self._seen.pop(pid, None)
        self._unreaped = unreaped


def _wait_exited(pids: list[int], deadline: float) -> bool:
    """Wait until each of our children ``pids`` has exited (without reaping), at most until
    ``deadline``; whether they all have. A pidfd per child where the kernel has them."""
    pidfds: list[int] = []
    try:
        if hasattr(os, "pidfd_open"):
            for pid in pids:
                try:
                    pidfds.append(os.pidfd_open(pid))
                except ProcessLookupError:
                    continue  # reaped already by somebody else
                except OSError as error:
                    if error.errno not in (errno.ENOSYS, errno.EPERM):
                        raise
                    return _poll_exited(pids, deadline)
            return _wait_readable(pidfds, deadline)
        return _poll_exited(pids, deadline)
    finally:
        for fd in pidfds:
            os.close(fd)


def _wait_readable(pidfds: list[int], deadline: float) -> bool:
    """A pidfd becomes readable when its process exits."""
    waiting = set(pidfds)
    poller = select.poll()
    for fd in pidfds:
        poller.register(fd, select.POLLIN)
    while waiting:
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        for fd, _ in poller.poll(left * 1000):
            waiting.discard(fd)
            poller.unregister(fd)
    return True


def _poll_exited(pids: list[int], deadline: float) -> bool:
    """The fallback without pidfds: ``waitid(WNOWAIT)`` each child, backing off."""
    waiting = list(pids)
    pause = 0.0005
    while True:
        waiting = [pid for pid in waiting if not _has_exited(pid)]
        left = deadline - time.monotonic()
        if not waiting or left <= 0:
            return not waiting
        time.sleep(min(pause, left))
        pause = min(pause * 2, 0.02)


def _has_exited(pid: int) -> bool:
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True
