"""Running attempts on a machine phalanx does not run on: the worker side of a cluster backend.

A cluster engine (Dask, Ray) picks the machine and the moment; what runs there is phalanx's
own runners, so that an attempt keeps on a cluster what it has at home::

    phalanx (coordinator) ──RemoteAttempt──> engine task on a worker ──> Node (one per process)
                                                                          ├─ commands: CommandBackend
                                                                          └─ callables: ProcessBackend
    phalanx <───────────────RemoteOutcome (outcome + bounded output)──────┘

* commands run through `CommandBackend`: their own process group, TERM/grace/KILL when
  stopped, output to files here, read back bounded and shipped with the outcome; a
  watchdog (`phalanx.guard`) ends every group should the worker process itself die;
* callables run on warm worker processes of this machine (`ProcessBackend`), so a
  timeout or a cancellation really stops them and a crash costs one item, as locally;
* an engine cannot stop a task it has started (Dask) or only by killing its worker
  (Ray), so the engine's task waits here, polling ``should_stop`` (the coordinator asked,
  or has gone: each engine says how it knows) every `POLL` seconds, and stops the work
  itself when it must, before it returns.

The `Node` lives as long as its process: an event loop on a thread of its own, the
backends made on first use. Engines call `run_remote` from their task threads.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import itertools
import os
import shutil
import socket
import tempfile
import threading
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .backends.base import Attempt, Outcome
from .errors import ConfigError
from .model import Task
from .resources import NO_INSTANCES, Instances
from .results import ErrorInfo

#: Seconds between two looks at ``should_stop`` while an attempt runs.
POLL = 0.05

#: The most of each output stream an attempt ships back: the head and the tail of a longer one.
SHIPPED_BYTES = 4 << 20

#: How many run directories a node keeps when no attempt uses them (each is made again if needed).
_IDLE_RUN_DIRS = 4

#: The attempts the coordinator has asked to stop (by key), not yet ended here.
_stop_requested: dict[str, None] = {}  # an ordered set: the oldest go first past the cap

#: How many stop requests a worker keeps for attempts it is not running: a request reaches
#: every worker, and only the one that runs (or will start) the attempt clears it.
_STOP_REQUESTS_KEPT = 10_000


@dataclass(frozen=True, slots=True)
class CallableOptions:
    """How a run's callables run on a worker's warm processes (the `Executor`'s options)."""

    isolate: bool = False
    start_method: str = "auto"
    initializer: Callable[..., Any] | None = None
    initargs: tuple[Any, ...] = ()
    max_tasks_per_worker: int | None = None


@dataclass(frozen=True, slots=True)
class RemoteAttempt:
    """One attempt, as sent to a worker. ``key`` names it in the engine and in stop requests."""

    key: str
    task: Task
    number: int
    run_id: str
    grace: float = 2.0
    instances: Instances = field(default_factory=lambda: NO_INSTANCES)
    callables: CallableOptions = field(default_factory=CallableOptions)


@dataclass(frozen=True, slots=True)
class RemoteOutcome:
    """What an attempt did on its worker: the outcome (no local paths in it), the output it
    printed (bounded), whether it was stopped before its end, and where it ran."""

    outcome: Outcome
    stdout: bytes | None = None
    stderr: bytes | None = None
    stopped: bool = False
    worker_address: str = ""


def request_stop(keys: list[str]) -> int:
    """Ask this process's attempts with these keys to stop (the engine calls it here on the
    coordinator's behalf). Returns how many of them run here now."""
    _stop_requested.update(dict.fromkeys(keys))
    for old in list(itertools.islice(_stop_requested, max(0, len(_stop_requested) - _STOP_REQUESTS_KEPT))):
        _stop_requested.pop(old, None)
    node = Node.current
    return 0 if node is None else len(set(keys).intersection(node.running_keys()))


def run_remote(remote: RemoteAttempt, should_stop: Callable[[], bool], where: str = "") -> RemoteOutcome:
    """Run one attempt here, to its end or until ``should_stop()`` (also stopped at once if the
    coordinator asked before it began). Called from an engine's task thread; blocks."""
    return Node.get().run(remote, should_stop, where or socket.gethostname())


class Node:
    """This process's runners: an event loop thread with a command backend and process
    backends (one per set of callable options), shared by every engine task here."""

    current: Node | None = None
    _lock = threading.Lock()

    @classmethod
    def get(cls) -> Node:
        with cls._lock:
            if cls.current is None or cls.current._pid != os.getpid():  # a fork gets its own
                cls.current = cls()
            return cls.current

    def __init__(self) -> None:
        from .guard import TaskGuard
        from .watchdog import enabled

        self._pid = os.getpid()
        # An engine's worker process may be a multiprocessing daemon (Dask's are), which
        # multiprocessing forbids to start processes: the callables' warm workers are ours
        # to end (daemons themselves, killed with their group), so the flag is lifted here.
        import multiprocessing

        multiprocessing.current_process()._config["daemon"] = False  # type: ignore[attr-defined]
        self._dir = Path(tempfile.mkdtemp(prefix="phalanx-node-"))
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="phalanx-node", daemon=True)
        self._thread.start()
        # The watchdog ends every group should this process die (a worker killed outright);
        # not a subreaper: that would change the engine's worker process for good.
        self._guard = TaskGuard(watchdog=enabled())
        self._guard.temporary_dir(self._dir)
        self._commands: dict[float, Any] = {}  # a CommandBackend per grace period
        self._processes: dict[CallableOptions, Any] = {}  # a ProcessBackend per set of options
        self._state_lock = threading.Lock()  # the engine's task threads share what follows
        self._users: dict[Path, int] = {}  # a run's directory here -> its attempts running here
        self._idle: list[Path] = []  # run directories no attempt uses now, the latest last
        atexit.register(shutil.rmtree, self._dir, True)  # the watchdog removes it if this process is killed
        self._free_slots: list[int] = []
        self._slots_made = 0
        self.running: set[str] = set()  # the keys of the attempts running here (under the lock)

    # ------------------------------------------------------------------ one attempt

    def run(self, remote: RemoteAttempt, should_stop: Callable[[], bool], where: str) -> RemoteOutcome:
        slot = self._take_slot()
        with self._state_lock:
            self.running.add(remote.key)
        run_dir = self._dir / remote.run_id
        attempt = Attempt(remote.task, remote.number, slot, remote.run_id, run_dir, remote.instances)
        self._enter(run_dir)
        try:
            if remote.key in _stop_requested:
                never = Outcome(ok=False, reason="stopped before it began")
                return RemoteOutcome(never, stopped=True, worker_address=where)
            stop = threading.Event()
            work = asyncio.run_coroutine_threadsafe(self._attempt(attempt, remote, stop), self._loop)
            while True:
                try:
                    outcome, stopped = work.result(timeout=POLL)
                    break
                except concurrent.futures.TimeoutError:
                    if not stop.is_set() and (remote.key in _stop_requested or should_stop()):
                        stop.set()
                except KeyboardInterrupt:
                    # How an engine cancels a running task (Ray): stop the work, then let it through.
                    stop.set()
                    with contextlib.suppress(BaseException):
                        work.result(timeout=remote.grace + 5.0)
                    raise
            return self._shipped(outcome, stopped, where)
        finally:
            with self._state_lock:
                self.running.discard(remote.key)
            _stop_requested.pop(remote.key, None)
            with self._state_lock:
                self._free_slots.append(slot)
            self._leave(run_dir)

    def running_keys(self) -> list[str]:
        """The keys of the attempts running here now (any thread may ask)."""
        with self._state_lock:
            return sorted(self.running)

    def _enter(self, run_dir: Path) -> None:
        """A run's directory here exists while any of its attempts runs here."""
        with self._state_lock:
            count = self._users.get(run_dir, 0)
            if count == 0:
                if run_dir in self._idle:
                    self._idle.remove(run_dir)
                run_dir.mkdir(exist_ok=True)
            self._users[run_dir] = count + 1

    def _leave(self, run_dir: Path) -> None:
        with self._state_lock:
            count = self._users.pop(run_dir) - 1
            if count:
                self._users[run_dir] = count
            elif len(self._users) < _IDLE_RUN_DIRS:
                self._idle.append(run_dir)  # kept a while: a run's next attempt here needs it again
                if len(self._idle) > _IDLE_RUN_DIRS:
                    with contextlib.suppress(OSError):
                        self._idle.pop(0).rmdir()
            else:
                with contextlib.suppress(OSError):
                    run_dir.rmdir()  # the run's last attempt here has gone (its files with it)

    async def _attempt(self, attempt: Attempt, remote: RemoteAttempt, stop: threading.Event) -> tuple[Outcome, bool]:
        """Run the attempt on its backend; stop it (really: the backend kills) once ``stop`` is set."""
        backend = self._backend(remote)
        work = asyncio.ensure_future(backend.run(attempt))
        while not work.done():
            await asyncio.wait({work}, timeout=POLL)
            if stop.is_set() and not work.done():
                work.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await work  # the backend stops the work before the cancellation comes through
                break
        if work.cancelled():
            return backend.stopped_outcome(attempt) or Outcome(ok=False), True
        try:
            return work.result(), False
        except Exception as error:  # a backend bug ends this attempt, not the worker
            return Outcome(ok=False, reason=f"backend error: {error}", error=ErrorInfo.from_exception(error)), False

    def _backend(self, remote: RemoteAttempt) -> Any:
        if remote.task.is_command:
            backend = self._commands.get(remote.grace)
            if backend is None:
                from .backends.command import CommandBackend
                from .backends.outputs import OutputFiles

                backend = self._commands[remote.grace] = CommandBackend(
                    grace=remote.grace, guard=self._guard, outputs=OutputFiles(reuse=False))
            return backend
        options = remote.callables
        backend = self._processes.get(options)
        if backend is None:
            from .backends.processes import ProcessBackend

            backend = self._processes[options] = ProcessBackend(
                1, start_method=options.start_method, initializer=options.initializer, initargs=options.initargs,
                max_tasks_per_worker=options.max_tasks_per_worker, isolate=options.isolate)
        return backend

    def _take_slot(self) -> int:
        with self._state_lock:
            if self._free_slots:
                return self._free_slots.pop()
            self._slots_made += 1
            return self._slots_made

    def _shipped(self, outcome: Outcome, stopped: bool, where: str) -> RemoteOutcome:
        """The outcome with its output files read (bounded) and removed: they are this machine's."""
        stdout, stderr = _take(outcome.stdout_path), _take(outcome.stderr_path)
        if outcome.stdout_path is not None or outcome.stderr_path is not None:
            outcome = replace(outcome, stdout_path=None, stderr_path=None)
        return RemoteOutcome(_picklable(outcome), stdout, stderr, stopped, where)


def _take(path: str | None) -> bytes | None:
    """A file's bytes (its head and tail past `SHIPPED_BYTES`; None if empty), the file removed."""
    if path is None:
        return None
    try:
        with open(path, "rb") as file:
            size = os.fstat(file.fileno()).st_size
            if size == 0:
                data = None  # nothing printed: nothing to ship, no file to write at home
            elif size <= SHIPPED_BYTES:
                data = file.read()
            else:
                half = SHIPPED_BYTES // 2
                head = file.read(half)
                file.seek(size - half)
                cut = size - 2 * half
                data = head + b"\n[phalanx: %d bytes of output left out on the worker]\n" % cut + file.read()
    except OSError:
        return None
    with contextlib.suppress(OSError):
        os.unlink(path)
    return data


def _picklable(outcome: Outcome) -> Outcome:
    """The outcome without the live exception object when that would not travel back."""
    if outcome.exception is None:
        return outcome
    import cloudpickle

    try:
        cloudpickle.dumps(outcome.exception)
    except Exception:
        return replace(outcome, exception=None)
    return outcome


def coroutine_runner(function: Callable[..., Coroutine[Any, Any, Any]]) -> Callable[..., Any]:
    """An ``async def`` task's action as a plain callable for a worker: its own event loop."""
    return _RunCoroutine(function)


@dataclass(frozen=True, slots=True)
class _RunCoroutine:
    function: Callable[..., Coroutine[Any, Any, Any]]

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return asyncio.run(self.function(*args, **kwargs))


def refuse_unpicklable(task: Task) -> None:
    """Fail early, naming the task, when its action cannot travel to a worker."""
    if task.is_command:
        return
    import cloudpickle

    try:
        cloudpickle.dumps((task.action, task.args, dict(task.kwargs)))
    except Exception as error:
        raise ConfigError(
            f"task {task.id!r}: its callable or arguments cannot be pickled to send them to the cluster: "
            f"{type(error).__name__}: {error}"
        ) from None
