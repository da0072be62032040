"""Holding a command to its `Limits`: set up before it starts, watched while it runs, judged when it ends.

    CommandBackend.run ── confine(limits) ──> Confinement
      before spawn   a cgroup (cgroups.TaskCgroup) for memory, cpus, max_procs where phalanx
                     can make one; what it cannot hold falls back (below)
      in the child   (Popen's preexec_fn, after fork, before exec) `in_child`: join the
                     cgroups, sched_setaffinity, setrlimit - so all the task forks is bound
      while it runs  MemoryWatch polls each attempt's MemoryGuard every 50 ms:
                       CgroupMemory  the kernel holds the cap; the guard reads its OOM-kill count
                       PolledMemory  the RSS of the leader's process tree (psutil) vs the limit
                     over -> the backend SIGKILLs the process group
      at the end     `reason(returncode)`: "memory limit exceeded (512 MB)", "cpu time limit
                     exceeded (60 s)", or None for the command's own verdict; `release()`
                     removes the cgroup once nothing is left in it

Fallbacks, each warned about once on stderr where it changes what the limit means:
``cpus`` without a CPU controller is CPU affinity to ``ceil(cpus)`` CPUs; ``max_procs``
without a pids controller is ``RLIMIT_NPROC`` (every process of the user counts; root is
exempt). ``PHALANX_CGROUPS=0`` takes every fallback on purpose.

Memory is judged the same either way: a task whose tree went over its limit fails with
the reason, whichever process the kernel chose to kill and however the leader then exited.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import os
import signal
import sys
from collections.abc import Callable
from typing import Any, Protocol

from .cgroups import CPU, MEMORY, PIDS, TaskCgroup
from .limits import Limits, format_seconds, format_size

try:
    import resource
except ImportError:  # not on Windows; neither are process groups
    resource = None  # type: ignore[assignment]

#: How often the memory of running attempts is looked at. A task allocating 500 MB/s
#: gets about 25 MB past its limit between two looks on the RSS-polling path.
POLL_INTERVAL = 0.05

#: The limits this module enforces (``max_output`` is the output capture's).
ENFORCED = ("memory", "cpus", "cpu_time", "max_procs", "open_files", "address_space")

#: Seconds of CPU a process may go on using after SIGXCPU before the kernel SIGKILLs it.
_CPU_GRACE = 1

_warned: set[str] = set()
_affinity_turn = itertools.count()


def confines(limits: Limits) -> bool:
    """Whether ``limits`` set anything this module enforces (else: the fast path)."""
    return any(getattr(limits.in_force(), key) is not None for key in ENFORCED)


class MemoryGuard(Protocol):
    """How one attempt's memory limit is held: a cgroup, or polling. Interchangeable."""

    def attach(self, pid: int) -> None:
        """The attempt's leader has started as ``pid`` (its process group)."""
        ...

    def exceeded(self) -> bool:
        """Polled while the attempt runs: whether its tree is over the limit."""
        ...

    def exceeded_at_end(self, leader_killed: bool) -> bool:
        """Once the attempt's processes are dead (``leader_killed``: its leader by SIGKILL):
        whether the limit was hit since the last poll."""
        ...

    def kill(self) -> None:
        """SIGKILL the processes it holds to the limit, those that left the process group too."""
        ...


class CgroupMemory:
    """The kernel holds the cap (memory.max / memory.limit_in_bytes) and OOM-kills at it."""

    def __init__(self, cgroup: TaskCgroup) -> None:
        self._cgroup = cgroup

    def attach(self, pid: int) -> None:
        pass

    def exceeded(self) -> bool:
        kills = self._cgroup.oom_kills()
        return bool(kills)

    def exceeded_at_end(self, leader_killed: bool) -> bool:
        kills = self._cgroup.oom_kills()
        if kills is not None:
            return kills > 0
        # A kernel that does not count OOM kills (v1 before 4.13): a leader killed by SIGKILL
        # in a cgroup that hit its cap is the OOM killer's work as far as we can tell.
        return leader_killed and self._cgroup.memory_limit_hits() > 0

    def kill(self) -> None:
        self._cgroup.kill()


class PolledMemory:
    """The RSS of the leader and all its descendants, summed (psutil), against the limit."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._pid: int | None = None
        self._members: list[Any] = []  # the tree as last seen: psutil.Process objects, leader first
        self.peak = 0  # the most RSS seen, in bytes

    def attach(self, pid: int) -> None:
        self._pid = pid

    def exceeded(self) -> bool:
        if self._pid is None:
            return False
        rss, self._members = _rss(_tree(self._pid))
        self.peak = max(self.peak, rss)
        return rss > self._limit

    def exceeded_at_end(self, leader_killed: bool) -> bool:
        return False  # only a poll sees the tree; the backend knows when one said so

    def kill(self) -> None:
        import psutil

        for member in self._members[1:]:  # the leader is the backend's to kill (its group)
            with contextlib.suppress(psutil.Error):
                member.kill()  # psutil refuses if the pid is another process's since the poll


def tree_rss(pid: int) -> int:
    """The summed RSS of ``pid`` and its descendants (shared pages count once per process)."""
    return _rss(_tree(pid))[0]


def _rss(pids: list[int]) -> tuple[int, list[Any]]:
    """The summed RSS of these processes, and those of them that still run (psutil.Process)."""
    import psutil  # here: only tasks with a memory limit and no cgroup pay for it

    total = 0
    members = []
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            member = psutil.Process(pid)
            total += member.memory_info().rss
            members.append(member)
    return total, members


def _tree(pid: int) -> list[int]:
    """``pid`` and its descendants. On Linux each process's ``children`` files are read: a few
    reads for a small tree, where psutil walks all of /proc (about 2 ms) to find a parent's children."""
    members = [pid]
    if _PROC_CHILDREN:
        for parent in members:  # the list grows while we walk it
            with contextlib.suppress(OSError, ValueError):
                for thread in os.listdir(f"/proc/{parent}/task"):
                    with open(f"/proc/{parent}/task/{thread}/children", encoding="ascii") as file:
                        members.extend(int(child) for child in file.read().split())
        return members
    import psutil

    with contextlib.suppress(psutil.Error):
        members.extend(child.pid for child in psutil.Process(pid).children(recursive=True))
    return members


_PROC_CHILDREN = os.path.exists(f"/proc/{os.getpid()}/task/{os.getpid()}/children")


class MemoryWatch:
    """Polls the memory guards of all running attempts on one timer of the event loop
    (no thread, no task per attempt); the timer runs only while something is watched."""

    def __init__(self, interval: float = POLL_INTERVAL) -> None:
        self._interval = interval
        self._watched: dict[MemoryGuard, Callable[[], None]] = {}
        self._timer: asyncio.TimerHandle | None = None

    def watch(self, guard: MemoryGuard, on_exceeded: Callable[[], None]) -> None:
        """Poll ``guard`` until `unwatch`; call ``on_exceeded`` once, the first time it is over."""
        self._watched[guard] = on_exceeded
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self._interval, self._poll)

    def unwatch(self, guard: MemoryGuard) -> None:
        self._watched.pop(guard, None)
        if not self._watched and self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _poll(self) -> None:
        self._timer = None
        exceeded = []
        for guard, on_exceeded in list(self._watched.items()):
            try:
                over = guard.exceeded()
            except OSError:
                over = False  # a file that vanished under us: the attempt is ending anyway
            if over:
                del self._watched[guard]
                exceeded.append(on_exceeded)
        if self._watched:  # armed first: a failing callback must not end the watch of the others
            self._timer = asyncio.get_running_loop().call_later(self._interval, self._poll)
        for on_exceeded in exceeded:
            on_exceeded()


class Confinement:
    """One attempt's limits, made ready to apply (`confine` makes one).

    Attributes:
        memory: how its memory limit is held, or None without one.
        memory_exceeded: a poll found it over its memory limit (the backend killed it).
    """

    def __init__(self, limits: Limits, cgroup: TaskCgroup | None, rlimits: tuple[tuple[int, int, int], ...]) -> None:
        self.limits = limits
        self.memory_exceeded = False
        self.cgroup = cgroup
        held = cgroup.controllers if cgroup is not None else frozenset()
        self.memory: MemoryGuard | None = None
        if limits.memory is not None:
            self.memory = CgroupMemory(cgroup) if cgroup is not None and MEMORY in held else PolledMemory(limits.memory)
        self._affinity: set[int] | None = None
        if limits.cpus is not None and CPU not in held:
            self._affinity = _cores_for(limits.cpus)
        self._rlimits = rlimits
        self._leader_cpu: float | None = None  # CPU seconds the leader had used when it exited

    def in_child(self) -> None:
        """Apply the limits to the calling process: Popen's ``preexec_fn``, in the child before exec.

        Only what was prepared in the parent is done here (no imports, no Python locks):
        the child of a threaded parent must not need a lock another thread held at the fork.
        """
        if self.cgroup is not None:
            self.cgroup.join()
        if self._affinity is not None:
            os.sched_setaffinity(0, self._affinity)
        for which, soft, hard in self._rlimits:
            resource.setrlimit(which, (soft, hard))

    def started(self, pid: int) -> None:
        """The leader is running as ``pid`` (or it failed to start: then call `release` only)."""
        if self.cgroup is not None:
            self.cgroup.joined()
        if self.memory is not None:
            self.memory.attach(pid)

    def leader_exited(self, pid: int) -> None:
        """The leader has exited and is not reaped yet: note what the verdict will need."""
        if self.limits.cpu_time is None:
            return
        import psutil

        with contextlib.suppress(psutil.Error):
            times = psutil.Process(pid).cpu_times()  # a zombie's are still there until the reap
            self._leader_cpu = times.user + times.system

    def reason(self, returncode: int, shell: bool) -> str | None:
        """Why the attempt failed when one of its limits is why; None to keep the command's own reason.

        Call once its processes are dead and before `release`.
        """
        if self.limits.memory is not None and self.memory is not None and (
            self.memory_exceeded or self.memory.exceeded_at_end(leader_killed=returncode == -signal.SIGKILL)
        ):
            return f"memory limit exceeded ({format_size(self.limits.memory)})"
        if self.limits.cpu_time is not None and (
            returncode == -signal.SIGXCPU
            or (shell and returncode == 128 + signal.SIGXCPU)
            # It ignored SIGXCPU and the kernel SIGKILLed it at the hard limit:
            or (returncode == -signal.SIGKILL and (self._leader_cpu or 0) >= math.ceil(self.limits.cpu_time))
        ):
            return f"cpu time limit exceeded ({format_seconds(self.limits.cpu_time)})"
        if returncode > 0 and self.cgroup is not None and self.cgroup.process_limit_hits():
            return f"exit code {returncode} (a fork was refused: max_procs = {self.limits.max_procs})"
        return None

    def kill_leftovers(self) -> None:
        """SIGKILL what is still in the task's cgroup: processes that left its process group."""
        if self.cgroup is not None:
            self.cgroup.kill()

    def release(self) -> bool:
        """Remove the task's cgroup; False if it still holds dying processes (call again later)."""
        return self.cgroup is None or self.cgroup.remove()


def confine(limits: Limits) -> Confinement:
    """The confinement of an attempt with these limits.

    Raises:
        ValueError: a limit this process cannot grant its child (an rlimit above its own
            hard limit, without the privilege to raise it): the message is the reason.
    """
    limits = limits.in_force()  # a limit set to 0 was set only to lift a default
    cgroup = TaskCgroup.create(memory=limits.memory, cpus=limits.cpus, max_procs=limits.max_procs)
    try:
        rlimits = _rlimits(limits, pids_held=cgroup is not None and PIDS in cgroup.controllers)
    except ValueError:
        if cgroup is not None:
            cgroup.remove()
        raise
    return Confinement(limits, cgroup, rlimits)


def _cores_for(cpus: float) -> set[int] | None:
    """``ceil(cpus)`` of the CPUs we may run on, a different window for each task so that
    tasks spread over the machine instead of sharing the first CPU; None where affinity is
    not available (then the limit is not enforced, with a warning)."""
    if not hasattr(os, "sched_setaffinity"):
        _warn_once("cpus-none", "cpus: neither a cgroup CPU quota nor CPU affinity is available here; "
                   "the limit is not enforced")
        return None
    _warn_once("cpus-affinity", "cpus: no cgroup CPU quota is available to phalanx here; a task with "
               "cpus = N is held to ceil(N) CPUs with CPU affinity instead of a share of CPU time")
    allowed = sorted(os.sched_getaffinity(0))
    count = min(len(allowed), math.ceil(cpus))
    start = next(_affinity_turn) * count % len(allowed)
    return {allowed[(start + i) % len(allowed)] for i in range(count)}


def _rlimits(limits: Limits, *, pids_held: bool) -> tuple[tuple[int, int, int], ...]:
    """(resource, soft, hard) for each rlimit the limits ask for, checked against our own."""
    if resource is None:
        if any(getattr(limits, key) is not None for key in ("cpu_time", "max_procs", "open_files", "address_space")):
            raise ValueError("cpu_time, max_procs, open_files and address_space need POSIX rlimits")
        return ()
    wanted: list[tuple[str, int, int, int]] = []
    if limits.cpu_time is not None:
        seconds = math.ceil(limits.cpu_time)
        # SIGXCPU at the limit; SIGKILL a little later for a process that ignores it.
        wanted.append(("cpu_time", resource.RLIMIT_CPU, seconds, seconds + _CPU_GRACE))
    if limits.max_procs is not None and not pids_held:
        if os.geteuid() == 0:
            _warn_once("max-procs-root", "max_procs: no cgroup pids controller is available to phalanx here, "
                       "and RLIMIT_NPROC does not bind root: the limit is not enforced")
        else:
            _warn_once("max-procs-user", "max_procs: no cgroup pids controller is available to phalanx here; "
                       "RLIMIT_NPROC counts all your processes, not only the task's")
        wanted.append(("max_procs", resource.RLIMIT_NPROC, limits.max_procs, limits.max_procs))
    if limits.open_files is not None:
        wanted.append(("open_files", resource.RLIMIT_NOFILE, limits.open_files, limits.open_files))
    if limits.address_space is not None:
        wanted.append(("address_space", resource.RLIMIT_AS, limits.address_space, limits.address_space))
    checked = []
    for key, which, soft, hard in wanted:
        _, our_hard = resource.getrlimit(which)
        # Only a privileged process may raise a hard limit; the child cannot say why it failed.
        if our_hard != resource.RLIM_INFINITY and hard > our_hard and os.geteuid() != 0:
            raise ValueError(f"cannot apply {key} = {getattr(limits, key)!r}: above this process's own "
                             f"hard limit ({our_hard})")
        checked.append((which, soft, hard))
    return tuple(checked)


def _warn_once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        with contextlib.suppress(OSError, ValueError):
            sys.stderr.write(f"phalanx: warning: {message}\n")
            sys.stderr.flush()
