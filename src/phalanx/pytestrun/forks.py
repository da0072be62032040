"""The parent's side: a `Backend` that runs each unit of tests in forks of this process.

One attempt is one unit (`units.Unit`). The backend forks (the child runs
`fork_child.serve`), sends it the unit's test indices, and passes every message to the
`UnitListener` (the pytest plugin, which hands the reports to pytest's own hooks) as it
arrives. A fork that dies before it has run them all, or that is still running at
``unit_timeout``, costs the test it was running: the listener hears that test was lost
and why ("worker crashed: SIGSEGV while running ..."), and the tests after it run in a
fresh fork, as pytest-xdist does. The unit's attempt ends only when every test in it has
a verdict.

With ``keep_forks`` (``--isolate none``) a fork that finished its unit is kept for the
next unit on the same slot (and the same environment): warm, but not isolated.

Stopping: cancelling the attempt (``-x``, Ctrl-C) kills the fork's process group at once
and reaps it before the cancellation goes on: nothing keeps running.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import pytest

from ..backends.base import Attempt, Outcome
from ..durations import format_duration
from ..reaper import ChildReaper
from . import fork_child, wire
from .units import Unit


class UnitListener(Protocol):
    """Hears what the forks of a unit do, in order, on the event loop."""

    def started(self, unit: Unit, message: wire.Started, worker: int) -> None: ...

    def reported(self, unit: Unit, data: dict[str, Any]) -> bool:
        """A report arrived; return whether it is a failure."""
        ...

    def finished(self, unit: Unit, message: wire.Finished) -> None: ...

    def warned(self, unit: Unit, message: wire.Warned) -> None: ...

    def lost(self, unit: Unit, index: int, reason: str, seconds: float) -> None:
        """The test at ``index`` will never report: its fork died or was killed."""
        ...


@dataclass(slots=True)
class _Fork:
    pid: int
    commands: int
    reader: asyncio.StreamReader
    transport: asyncio.ReadTransport
    env: tuple[tuple[str, str], ...]
    closed: bool = field(default=False)

    def close_commands(self) -> None:
        if not self.closed:
            self.closed = True
            os.close(self.commands)


class ForkBackend:
    """Runs units of tests in forks of the pytest session's process (see the module doc).

    Args:
        session: the parent's session, collected: what the forks inherit.
        listener: hears every message.
        units: the units by task id.
        worker_env: the environment a fork on slot N gets (``PHALANX_WORKER``, xdist's).
        unit_timeout: seconds a fork may spend on its part of a unit; None: no limit.
        keep_forks: keep a fork for the slot's next unit (``--isolate none``).
        maxfail: pytest's ``--maxfail`` inside each fork (0: none).
        on_fork_exit: run in each fork just before it ends (saving coverage data).
        fresh: start fresh worker processes instead of forks (`spawned`), with pytest's
            arguments, directory and the collected node ids; kept per slot.
    """

    def __init__(
        self,
        session: pytest.Session,
        listener: UnitListener,
        units: Mapping[str, Unit],
        *,
        worker_env: Callable[[int], Mapping[str, str]],
        unit_timeout: float | None = None,
        keep_forks: bool = False,
        maxfail: int = 0,
        on_fork_exit: Callable[[], None] | None = None,
        fresh: FreshWorkers | None = None,
    ) -> None:
        self._session = session
        self._fresh = fresh
        self._listener = listener
        self._units = units
        self._worker_env = worker_env
        self._timeout = unit_timeout
        self._keep = keep_forks or fresh is not None
        self._maxfail = maxfail
        self._on_fork_exit = on_fork_exit
        self._reaper = ChildReaper()
        self._kept: dict[int, _Fork] = {}
        # Every fork not yet reaped. A fork inherits every fd; one that kept another fork's
        # command pipe open would keep that fork from ever seeing EOF: it closes them first.
        self._live: dict[int, _Fork] = {}

    async def run(self, attempt: Attempt) -> Outcome:
        unit = self._units[attempt.task.id]
        remaining = list(unit.indices)
        failed = False
        lost: list[str] = []
        while remaining:
            fork = self._kept.pop(attempt.worker, None)
            if fork is not None and fork.env != unit.env:
                await self._end(fork, kill=False)
                fork = None
            if fork is None:
                fork = await self._spawn(attempt.worker, unit.env)
            try:
                done, current, why, started = await self._drive(fork, unit, tuple(remaining), attempt.worker)
            except BaseException:
                await self._end(fork, kill=True)
                raise
            failed = failed or why.failed
            if why.complete:
                remaining = []
                if self._keep:
                    self._kept[attempt.worker] = fork
                else:
                    await self._end(fork, kill=False)
                continue
            # The fork ended (or was killed) before its tests were all run.
            status = await self._end(fork, kill=why.timed_out)
            cause = _why_lost(status, why.timed_out, self._timeout)
            if current is not None:
                test = self._session.items[current].nodeid
                self._listener.lost(unit, current, f"{cause} while running {test}", time.monotonic() - started)
                lost.append(test)
                failed = True
            remaining = [index for index in remaining if index not in done and index != current]
            if current is None and remaining and not done:
                # Died before starting any test: it would die again. Say so for each.
                for index in remaining:
                    self._listener.lost(unit, index, f"{cause} before running it", 0.0)
                failed = True
                remaining = []
        reason = None
        if lost:
            reason = f"lost {len(lost)} test(s): " + ", ".join(lost[:3]) + (" ..." if len(lost) > 3 else "")
        elif failed:
            reason = "tests failed"
        return Outcome(ok=not failed, reason=reason)

    def stopped_outcome(self, attempt: Attempt) -> Outcome | None:
        return None

    async def aclose(self) -> None:
        kept, self._kept = self._kept, {}
        for fork in kept.values():
            await self._end(fork, kill=False)

    # ------------------------------------------------------------------ forks

    async def _spawn(self, worker: int, env: tuple[tuple[str, str], ...]) -> _Fork:
        commands_read, commands_write = os.pipe()
        results_read, results_write = os.pipe()
        environment = {**self._worker_env(worker), **dict(env)}
        if self._fresh is not None:
            pid = self._start_fresh(commands_read, results_write, environment)
        else:
            pid = self._fork(commands_read, commands_write, results_read, results_write, environment)
        os.close(commands_read)
        os.close(results_write)
        with contextlib.suppress(OSError):
            os.setpgid(pid, pid)  # the child does it too; whichever runs first
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=2**20)
        transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(results_read, "rb", buffering=0)
        )
        fork = _Fork(pid, commands_write, reader, transport, env)
        self._live[pid] = fork
        return fork

    def _start_fresh(self, commands: int, results: int, environment: Mapping[str, str]) -> int:
        """A fresh interpreter serving the slot (`spawned`), in its own process group."""
        from .spawned import SPEC_VARIABLE, WorkerSpec

        fresh = self._fresh
        assert fresh is not None
        spec = WorkerSpec(
            commands, results, fresh.cwd, list(fresh.args), fresh.nodeids_file, self._maxfail, dict(environment)
        )
        env = {**os.environ, SPEC_VARIABLE: spec.to_env()}
        for fd in (commands, results):
            os.set_inheritable(fd, True)  # only these two: every other fd of ours is close-on-exec
        return os.posix_spawn(
            sys.executable, [sys.executable, "-m", "phalanx.pytestrun.spawned"], env, setpgroup=0,
            # Its terminal output goes nowhere: the parent prints what it reports.
            file_actions=[(os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0)],
        )

    def _fork(
        self, commands_read: int, commands_write: int, results_read: int, results_write: int,
        environment: Mapping[str, str],
    ) -> int:
        pid = os.fork()
        if pid == 0:  # the child: never returns
            try:
                for fd in (commands_write, results_read, *self._other_forks_fds()):
                    with contextlib.suppress(OSError):
                        os.close(fd)
                fork_child.serve(
                    self._session, commands_read, results_write, environment,
                    maxfail=self._maxfail, on_exit=self._on_fork_exit,
                )
            finally:
                os._exit(fork_child.EXIT_INTERNAL)
        return pid

    def _other_forks_fds(self) -> list[int]:
        """The parent's ends of the live forks' pipes that are still open (in a new fork)."""
        fds = []
        for fork in self._live.values():
            if not fork.closed:
                fds.append(fork.commands)
            # The transport closes its pipe itself at EOF: only a pipe still open is ours to close.
            pipe = fork.transport.get_extra_info("pipe")
            if pipe is not None and not pipe.closed:
                fds.append(pipe.fileno())
        return fds

    async def _drive(
        self, fork: _Fork, unit: Unit, indices: tuple[int, ...], worker: int
    ) -> tuple[set[int], int | None, _Why, float]:
        """Give the fork ``indices`` and relay its messages until it is done, dies or times out.

        Returns the indices that finished, the one running at the end (if any), why it
        ended, and when that test started (monotonic).
        """
        done: set[int] = set()
        current: int | None = None
        failed = False
        started = time.monotonic()
        try:
            wire.send_command(fork.commands, indices)
        except OSError:
            return done, None, _Why(failed=False, complete=False, timed_out=False), started
        try:
            async with asyncio.timeout(self._timeout):
                while True:
                    message = await _read(fork.reader)
                    if message is None:
                        return done, current, _Why(failed, complete=False, timed_out=False), started
                    if isinstance(message, wire.Started):
                        current = message.index
                        started = time.monotonic()
                        self._listener.started(unit, message, worker)
                    elif isinstance(message, wire.Reported):
                        failed = self._listener.reported(unit, message.data) or failed
                    elif isinstance(message, wire.Finished):
                        done.add(message.index)
                        current = None
                        self._listener.finished(unit, message)
                    elif isinstance(message, wire.Warned):
                        self._listener.warned(unit, message)
                    else:
                        return done, None, _Why(failed, complete=True, timed_out=False), started
        except TimeoutError:
            return done, current, _Why(failed, complete=False, timed_out=True), started

    async def _end(self, fork: _Fork, *, kill: bool) -> int:
        """Close the fork's pipes and wait for it (after SIGKILL to its group with ``kill``);
        its wait status."""
        fork.close_commands()
        if kill:
            _kill_group(fork.pid)
        try:
            status = await self._reaper.wait(fork.pid)
        except BaseException:
            _kill_group(fork.pid)  # a second cancellation: make sure it ends, then let it through
            with contextlib.suppress(ChildProcessError):
                os.waitpid(fork.pid, 0)
            fork.transport.close()
            self._live.pop(fork.pid, None)
            raise
        # Whatever else is left in its group (a test's own subprocesses) goes with it.
        _kill_group(fork.pid)
        fork.transport.close()
        self._live.pop(fork.pid, None)
        return status


@dataclass(frozen=True, slots=True)
class FreshWorkers:
    """How to start a fresh worker: pytest's arguments and directory as the parent had
    them, and a file of the parent's node ids in collection order (one per line)."""

    args: tuple[str, ...]
    cwd: str
    nodeids_file: str


@dataclass(frozen=True, slots=True)
class _Why:
    failed: bool
    complete: bool
    timed_out: bool


async def _read(reader: asyncio.StreamReader) -> wire.Message | None:
    """The next message, or None at the end of the stream (or a torn last frame)."""
    try:
        header = await reader.readexactly(wire.header_size())
        body = await reader.readexactly(wire.body_size(header))
    except (asyncio.IncompleteReadError, ValueError):
        return None
    return wire.decode(body)


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def _why_lost(status: int, timed_out: bool, timeout: float | None) -> str:
    if timed_out:
        return f"unit timeout ({format_duration(timeout or 0.0)}): killed"
    if os.WIFSIGNALED(status):
        number = os.WTERMSIG(status)
        try:
            name = signal.Signals(number).name
        except ValueError:
            name = f"signal {number}"
        return f"worker crashed: {name}"
    return f"worker exited with status {os.waitstatus_to_exitcode(status)}"
