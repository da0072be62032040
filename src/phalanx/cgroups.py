"""A cgroup per task: its memory cap, CPU quota and process limit, and the kernel's word on OOM kills.

phalanx makes a task's cgroup as a child of its own cgroup (``phalanx-<pid>-<n>``), in each
hierarchy that has a controller the task's limits need, and the task's process joins it in
the child, before exec, so that everything it ever forks is inside. Nothing is assumed
about the machine; each controller is looked for in turn:

- cgroup v2 (the unified hierarchy): usable for a controller only when our own cgroup
  already enables it for its children (``cgroup.subtree_control``), i.e. it was delegated
  to us and switched on. phalanx never enables controllers itself: in a cgroup that holds
  processes (ours holds phalanx) the kernel refuses it anyway.
- cgroup v1: a hierarchy mounted with that controller, where our cgroup's directory
  accepts a new child (typically as root, or in a container that gives us the hierarchy).

Where a controller is missing, or making the directory fails, `TaskCgroup.create` leaves
that limit out and the caller falls back (an RSS poller for memory, CPU affinity for cpus,
``RLIMIT_NPROC`` for processes). ``PHALANX_CGROUPS=0`` in the environment turns cgroups off
altogether, to use the fallbacks on purpose (tests cover both paths on one machine so).

A task's cgroup is removed once its processes are dead; one that is still busy is retried
a few times, then left for the sweep of stale ``phalanx-<pid>-*`` cgroups (of phalanx
processes no longer alive) that runs the first time cgroups are looked for.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import itertools
import os
import re
import signal
from collections.abc import Iterator
from dataclasses import dataclass

#: The controllers phalanx uses, by the limit they hold: memory, cpus, max_procs.
MEMORY, CPU, PIDS = "memory", "cpu", "pids"
CONTROLLERS = (MEMORY, CPU, PIDS)

#: The CFS period phalanx uses for a CPU quota where it sets one (the kernel's default).
_CPU_PERIOD_US = 100_000
#: The smallest quota the kernel accepts (1 ms a period).
_MIN_QUOTA_US = 1_000

_OURS = re.compile(r"phalanx-(\d+)-\d+")
_names = itertools.count(1)
_unusable: set[str] = set()  # controllers whose cgroup could not be made: not tried again


def cgroups_enabled() -> bool:
    """False when ``PHALANX_CGROUPS`` is ``0`` (or ``false``, ``no``, ``off``): use the fallbacks."""
    return os.environ.get("PHALANX_CGROUPS", "1").strip().lower() not in ("0", "false", "no", "off")


def available(controller: str) -> bool:
    """Whether phalanx can give a task a cgroup with ``controller`` here (as far as it can tell
    without making one: creating it may still fail, and then it falls back)."""
    return cgroups_enabled() and controller not in _unusable and controller in _hierarchies()


@dataclass(frozen=True, slots=True)
class _Hierarchy:
    """Where our own cgroup is in the hierarchy that holds a controller."""

    version: int  # 1 or 2
    directory: str


@dataclass(slots=True)
class TaskCgroup:
    """One task's cgroups: one directory per v1 hierarchy it uses, or one v2 directory.

    Attributes:
        controllers: the controllers it holds a limit in (a subset of what was asked for).
        join_fds: its ``cgroup.procs`` files, open for writing (close-on-exec): the child
            writes "0" to each before exec (`join`), which moves it in.
    """

    controllers: frozenset[str]
    directories: dict[str, _Hierarchy]  # controller -> its directory
    join_fds: tuple[int, ...]

    @classmethod
    def create(cls, *, memory: int | None = None, cpus: float | None = None,
               max_procs: int | None = None) -> TaskCgroup | None:
        """A new cgroup holding whichever of these limits phalanx can set here, or None for none.

        Args:
            memory: bytes (the kernel's OOM killer acts at the cap; no swap beyond it).
            cpus: a share of CPUs, as a CFS quota.
            max_procs: processes and threads at once.
        """
        if not cgroups_enabled():
            return None
        wanted = {MEMORY: memory, CPU: cpus, PIDS: max_procs}
        made: dict[str, _Hierarchy] = {}  # our cgroup's directory -> the task's directory under it
        directories: dict[str, _Hierarchy] = {}
        name = f"phalanx-{os.getpid()}-{next(_names)}"
        for controller, value in wanted.items():
            own = _hierarchies().get(controller)
            if value is None or own is None or controller in _unusable:
                continue
            mine = made.get(own.directory)
            if mine is None:
                mine = _Hierarchy(own.version, os.path.join(own.directory, name))
                try:
                    os.mkdir(mine.directory, 0o755)
                except OSError:
                    _unusable.add(controller)  # not ours to make children in: fall back from now on
                    continue
                made[own.directory] = mine
            try:
                _set_limit(mine, controller, value)
            except OSError:
                continue  # the kernel refuses this value (above our own quota, ...): this task falls back
            directories[controller] = mine
        for unused in {d.directory for d in made.values()} - {d.directory for d in directories.values()}:
            with contextlib.suppress(OSError):
                os.rmdir(unused)
        if not directories:
            return None
        fds: list[int] = []
        try:
            for directory in {d.directory for d in directories.values()}:
                fds.append(os.open(os.path.join(directory, "cgroup.procs"), os.O_WRONLY | os.O_CLOEXEC))
        except OSError:
            for fd in fds:
                os.close(fd)
            cgroup = cls(frozenset(), directories, ())
            cgroup.remove()
            return None
        return cls(frozenset(directories), directories, tuple(fds))

    def join(self) -> None:
        """Move the calling process into the task's cgroups. Runs in the child, before exec."""
        for fd in self.join_fds:
            os.write(fd, b"0")  # "0": the writer itself

    def joined(self) -> None:
        """The child has started (or failed to): the parent's copies of the join files go."""
        for fd in self.join_fds:
            os.close(fd)
        self.join_fds = ()

    def oom_kills(self) -> int | None:
        """How many of its processes the kernel's OOM killer killed; None if the kernel does
        not say (v1 before Linux 4.13) or it holds no memory limit."""
        memory = self.directories.get(MEMORY)
        if memory is None:
            return None
        name = "memory.events" if memory.version == 2 else "memory.oom_control"
        return _field(os.path.join(memory.directory, name), "oom_kill")

    def memory_limit_hits(self) -> int:
        """How often its memory reached the cap (v1 ``memory.failcnt``; v2 ``max`` events)."""
        memory = self.directories.get(MEMORY)
        if memory is None:
            return 0
        if memory.version == 2:
            return _field(os.path.join(memory.directory, "memory.events"), "max") or 0
        return _number(os.path.join(memory.directory, "memory.failcnt")) or 0

    def process_limit_hits(self) -> int:
        """How often a fork was refused because it held ``max_procs`` processes."""
        pids = self.directories.get(PIDS)
        return 0 if pids is None else _field(os.path.join(pids.directory, "pids.events"), "max") or 0

    def kill(self) -> None:
        """SIGKILL every process still in it (those that left the task's process group too)."""
        for directory in self._directories():
            if os.path.exists(os.path.join(directory, "cgroup.kill")):  # v2, Linux 5.14+: no pid races
                with contextlib.suppress(OSError):
                    _write(os.path.join(directory, "cgroup.kill"), "1")
                continue
            for pid in _pids(directory):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)

    def remove(self) -> bool:
        """Remove its directories; False while some still hold (dying) processes: try again later."""
        self.joined()
        done = True
        for directory in self._directories():
            try:
                os.rmdir(directory)
            except OSError as error:
                # Busy: processes still in it, try again. Anything else (gone already, taken
                # away from us) another try would not change.
                done = done and error.errno != errno.EBUSY
        return done

    def _directories(self) -> list[str]:
        return sorted({d.directory for d in self.directories.values()})


def _set_limit(cgroup: _Hierarchy, controller: str, value: float) -> None:
    """Write one limit into a task's new cgroup (raises OSError where the kernel refuses it)."""
    path = cgroup.directory
    if controller == MEMORY:
        if cgroup.version == 2:
            _write(os.path.join(path, "memory.max"), str(int(value)))
            _write_if_present(os.path.join(path, "memory.swap.max"), "0")  # no swapping past the cap
            _write_if_present(os.path.join(path, "memory.oom.group"), "1")  # an OOM kill takes the whole task
        else:
            _write(os.path.join(path, "memory.limit_in_bytes"), str(int(value)))
            # Memory plus swap at the same cap: no swapping past it (present only with swap accounting).
            with contextlib.suppress(OSError):
                _write_if_present(os.path.join(path, "memory.memsw.limit_in_bytes"), str(int(value)))
    elif controller == CPU:
        if cgroup.version == 2:
            _write(os.path.join(path, "cpu.max"), f"{_quota(value, _CPU_PERIOD_US)} {_CPU_PERIOD_US}")
        else:
            period = _number(os.path.join(path, "cpu.cfs_period_us")) or _CPU_PERIOD_US
            _write(os.path.join(path, "cpu.cfs_quota_us"), str(_quota(value, period)))
    else:
        _write(os.path.join(path, "pids.max"), str(int(value)))


def _quota(cpus: float, period: int) -> int:
    return max(_MIN_QUOTA_US, round(cpus * period))


@functools.cache
def _hierarchies() -> dict[str, _Hierarchy]:
    """Our own cgroup's directory for each controller phalanx could use (v2 first), found once."""
    try:
        with open("/proc/self/cgroup", encoding="utf-8") as file:
            memberships = [line.rstrip("\n").split(":", 2) for line in file if line.count(":") >= 2]
        with open("/proc/self/mountinfo", encoding="utf-8") as file:
            mounts = list(_cgroup_mounts(file))
    except OSError:
        return {}  # not Linux, or no /proc: no cgroups
    v1: dict[str, _Hierarchy] = {}
    v2: dict[str, _Hierarchy] = {}
    for _hierarchy_id, controllers, path in memberships:
        names = set(controllers.split(",")) if controllers else set()
        for fstype, root, mountpoint, options in mounts:
            directory = _inside(mountpoint, root, path)
            if directory is None or not os.path.isdir(directory):
                continue
            if fstype == "cgroup2" and not names:
                for controller in _enabled_for_children(directory):
                    v2.setdefault(controller, _Hierarchy(2, directory))
            elif fstype == "cgroup" and names and names <= options:
                for controller in names & set(CONTROLLERS):
                    v1.setdefault(controller, _Hierarchy(1, directory))
    found = v1 | v2  # where a controller is delegated to us in v2, that wins
    _sweep({where.directory for where in found.values()})
    return found


def _cgroup_mounts(lines: Iterator[str]) -> Iterator[tuple[str, str, str, set[str]]]:
    """(fstype, root, mount point, super options) of each cgroup mount in a mountinfo."""
    for line in lines:
        before, _, after = line.partition(" - ")
        fields, tail = before.split(), after.split()
        if len(fields) < 5 or len(tail) < 3 or tail[0] not in ("cgroup", "cgroup2"):
            continue
        yield tail[0], _unescape(fields[3]), _unescape(fields[4]), set(tail[2].split(","))


def _unescape(text: str) -> str:
    """mountinfo writes spaces, tabs, newlines and backslashes as octal escapes (``\\040``)."""
    return re.sub(r"\\([0-7]{3})", lambda match: chr(int(match.group(1), 8)), text)


def _inside(mountpoint: str, root: str, path: str) -> str | None:
    """The directory of cgroup ``path`` under a mount of the hierarchy's ``root``, if it shows it."""
    relative = os.path.relpath(path, root)
    if relative == os.pardir or relative.startswith(os.pardir + os.sep):
        return None  # our cgroup is outside what this mount shows
    return os.path.normpath(os.path.join(mountpoint, relative))


def _enabled_for_children(directory: str) -> list[str]:
    try:
        with open(os.path.join(directory, "cgroup.subtree_control"), encoding="ascii") as file:
            return [name for name in file.read().split() if name in CONTROLLERS]
    except OSError:
        return []


def _sweep(directories: set[str]) -> None:
    """Remove empty task cgroups that phalanx processes no longer alive left behind (killed outright)."""
    for directory in directories:
        try:
            names = os.listdir(directory)
        except OSError:
            continue
        for name in names:
            match = _OURS.fullmatch(name)
            if match is None or _alive(int(match.group(1))):
                continue
            with contextlib.suppress(OSError):  # busy (something still runs in it) or not ours to remove
                os.rmdir(os.path.join(directory, name))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _pids(directory: str) -> list[int]:
    try:
        with open(os.path.join(directory, "cgroup.procs"), encoding="ascii") as file:
            return [int(word) for word in file.read().split()]
    except OSError:
        return []


def _write(path: str, text: str) -> None:
    with open(path, "w", encoding="ascii") as file:
        file.write(text)


def _write_if_present(path: str, text: str) -> None:
    if os.path.exists(path):
        _write(path, text)


def _number(path: str) -> int | None:
    try:
        with open(path, encoding="ascii") as file:
            return int(file.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _field(path: str, key: str) -> int | None:
    """The value of ``key`` in a flat-keyed cgroup file (``oom_kill 1`` lines), or None."""
    try:
        with open(path, encoding="ascii") as file:
            for line in file:
                name, _, value = line.partition(" ")
                if name == key:
                    return int(value)
    except (OSError, ValueError):
        return None
    return None
