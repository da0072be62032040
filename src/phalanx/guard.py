"""Keeping a run's task processes from outliving it, whatever they do and however phalanx ends.

Three layers, each for what the one before cannot reach:

- the command backend kills each attempt's process group when its leader exits, or when
  the attempt is stopped (timeout, fail-fast, Ctrl-C);
- as a child subreaper phalanx inherits what left the group (``setsid`` daemons) and, once
  the attempt has ended, kills and reaps it (`orphans.OrphanSweeper`): found by the
  marker every attempt's environment carries (`procfs`);
- the watchdog, a process of its own, ends the groups and the marked processes when
  phalanx itself is killed outright (`watchdog`); failing that too (the watchdog killed
  as well), the next ``--resume`` stops the groups the journal has as running.

The command line turns on all of it (`TaskGuard.for_command_line`). A library caller opts
in, since being a subreaper changes the calling process for good::

    guard = TaskGuard(subreaper=True, watchdog=True)
    backend = CommandBackend(guard=guard)
    ...  # run, then
    guard.close()
"""

from __future__ import annotations

import itertools
import os
from typing import Protocol

from . import procfs
from .orphans import OrphanSweeper, become_subreaper
from .watchdog import Watchdog, enabled

_MARK_KEY = procfs.MARK_VARIABLE.encode()


class AttemptGuard(Protocol):
    """What the command backend tells a guard about each attempt's process group."""

    def marked(self, env: dict[bytes, bytes]) -> int:
        """Mark the environment an attempt is about to start with; returns the attempt's serial."""
        ...

    def spawned(self, serial: int, pid: int) -> None:
        """The attempt ``serial`` runs as process ``pid``, the leader of its own group."""
        ...

    def ended(self, pid: int) -> None:
        """The leader ``pid`` has exited, not reaped yet, and its group was SIGKILLed."""
        ...


class TaskGuard:
    """An `AttemptGuard`: marks each attempt, sweeps its escaped processes once it ends
    (as a subreaper), and keeps a watchdog informed.

    Args:
        subreaper: make this process a child subreaper (Linux) and sweep after each attempt.
        watchdog: start a watchdog (at the first message) for when this process is killed.
        grace: the watchdog's time between SIGTERM and SIGKILL (capped, see `watchdog`).
    """

    def __init__(self, *, subreaper: bool = False, watchdog: bool = False, grace: float = 2.0) -> None:
        #: The run's marker token: every attempt's environment carries ``TOKEN:SERIAL``.
        self.token = os.urandom(8).hex()
        # A phalanx that is itself a task of another keeps the outer run's entries first,
        # so that the outer run still finds what this one starts.
        inherited = os.environb.get(_MARK_KEY)
        self._mark_head = (inherited + b" " if inherited else b"") + self.token.encode() + b":"
        self._serials = itertools.count(1)
        self._sweeper = OrphanSweeper(self.token) if subreaper and become_subreaper() else None
        self._watchdog = Watchdog(self.token, grace=grace) if watchdog else None

    @classmethod
    def for_command_line(cls, *, grace: float) -> TaskGuard:
        """What `phalanx run` and `phalanx map` use: all of it (``PHALANX_WATCHDOG=0``: no
        watchdog), except the subreaper when a host program calls the command line in its own
        process (click's test runner, say): that would change the host for good."""
        from . import _entry

        return cls(subreaper=_entry.running_as_program, watchdog=enabled(), grace=grace)

    @property
    def watchdog_pid(self) -> int | None:
        return None if self._watchdog is None else self._watchdog.pid

    def marked(self, env: dict[bytes, bytes]) -> int:
        serial = next(self._serials)
        env[_MARK_KEY] = self._mark_head + b"%d" % serial
        return serial

    def spawned(self, serial: int, pid: int) -> None:
        if self._sweeper is not None:
            self._sweeper.started(f"{self.token}:{serial}", pid)
        if self._watchdog is not None:
            self._watchdog.group_started(pid)

    def ended(self, pid: int) -> None:
        if self._watchdog is not None:
            self._watchdog.group_ended(pid)
            if self._sweeper is not None and not self._sweeper.spared:
                self._spare_watchdog()  # started by its first message, if not before
        if self._sweeper is not None:
            self._sweeper.ended(pid)

    def temporary_dir(self, path: str | os.PathLike[str]) -> None:
        """The run's temporary directory: the watchdog removes it if phalanx dies."""
        if self._watchdog is not None:
            self._watchdog.temporary_dir(path)
            self._spare_watchdog()  # started by now: the command line registers one first

    def close(self) -> None:
        """The run is over: sweep what its ended attempts left, and dismiss the watchdog."""
        if self._sweeper is not None:
            self._sweeper.sweep()
            self._sweeper.close()
            self._sweeper = None
        if self._watchdog is not None:
            self._watchdog.close()

    def _spare_watchdog(self) -> None:
        # Our child, but never the sweeper's to look at: it would read it after every attempt.
        pid = self.watchdog_pid
        if self._sweeper is not None and pid is not None:
            self._sweeper.spared.add(pid)
