"""What the backend conformance suite runs, and how it drives each backend.

Jobs are described by *specs*, small JSON-able lists interpreted by `job`: the same spec
runs as a Python callable (``job(spec)`` on threads, worker processes, isolated forks) and
as a command (``python conformance_support.py '<spec as JSON>'``, printing the value as
JSON). A test case is therefore written once, as specs and assertions, and each backend
adapter (`BACKENDS`) knows how to run specs and hand back `TaskResult`s. A new backend
(Dask, say) joins the suite by adding one adapter class here.

How worker processes find this module: they do not need to. It registers itself with
``cloudpickle.register_pickle_by_value``, so `job` and everything it uses travel by value
and a worker never imports ``conformance_support``. (multiprocessing gives each new
forkserver or spawn process the parent's ``sys.path`` of the moment, so today a worker
could import it; by value, nothing depends on pytest's import mode or on the workers'
path.)
The command backend runs this file as a script. Subprocess scripts (Ctrl-C, and the thread
backend's crash cases, which take their whole process down) get ``tests/`` on their
``PYTHONPATH``.

Synchronisation is by marker files only: a blocking job writes ``started-<name>`` (its pid
and parent pid) and waits for a ``release`` file; a ``last`` job waits for the other jobs'
``done-<name>`` markers. Every wait is bounded (`BOUND` seconds); sleeps happen only
inside jobs, to simulate work or between polls of a marker file.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    import subprocess

    import psutil

if __name__ != "__main__":  # as a command (python -S, stdlib only) it needs none of this
    import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])

BOUND = 10.0  # seconds: the longest any wait may take
POLL = 0.005  # seconds between two looks at a marker file (inside jobs and tests)
HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "src"

Spec = list[Any]


# ---------------------------------------------------------------------------- jobs


def job(spec: Sequence[Any]) -> Any:
    """Do what the spec says (the one callable every backend runs)."""
    kind, *args = spec
    if kind == "value":  # ["value", x] -> 2x; ["value", x, seconds] sleeps first
        if len(args) > 1:
            time.sleep(args[1])
        return args[0] * 2
    if kind == "raise":  # ["raise", message]
        raise ValueError(args[0])
    if kind == "exit":  # ["exit", code]
        os._exit(args[0])
    if kind == "segv":  # ["segv"]
        import ctypes

        ctypes.string_at(0)
    if kind == "block":  # ["block", dir, name]: say so, wait for release, say so again
        directory, name = Path(args[0]), args[1]
        mark(directory / f"started-{name}", f"{os.getpid()} {os.getppid()}")
        released = wait_for(directory / "release", raise_on_timeout=False)
        mark(directory / f"finished-{name}", "released" if released else "gave up")
        return name
    if kind == "last":  # ["last", dir, names]: finish only once all those are done
        directory, names = Path(args[0]), args[1]
        for name in names:
            wait_for(directory / f"done-{name}", raise_on_timeout=False)
        return "last"
    if kind == "done":  # ["done", dir, name, x]: mark done, return 2x
        mark(Path(args[0]) / f"done-{args[1]}", str(os.getpid()))
        return args[2] * 2
    if kind == "pid":  # ["pid"] -> [pid, parent pid]
        return [os.getpid(), os.getppid()]
    if kind == "same":  # ["same", anything] -> it (arguments that may not pickle)
        return args[0]
    raise ValueError(f"unknown spec {spec!r}")


def mark(path: Path, text: str = "") -> None:
    """Create a marker file atomically (readers never see it half-written)."""
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text)
    os.replace(partial, path)


def wait_for(path: Path, *, bound: float = BOUND, raise_on_timeout: bool = True) -> bool:
    """Wait (bounded) until a marker file exists."""
    deadline = time.monotonic() + bound
    while not path.exists():
        if time.monotonic() > deadline:
            if raise_on_timeout:
                raise AssertionError(f"{path.name} did not appear within {bound:g}s")
            return False
        time.sleep(POLL)
    return True


def started_pid(directory: Path, name: str) -> int:
    """The pid a blocking job wrote when it started (waits for it, bounded)."""
    path = directory / f"started-{name}"
    wait_for(path)
    return int(path.read_text().split()[0])


# ---------------------------------------------------------------------------- processes


def forkserver_pid() -> int | None:
    """The multiprocessing forkserver: a long-lived helper that forks workers, not a worker."""
    from multiprocessing import forkserver

    return getattr(forkserver._forkserver, "_forkserver_pid", None)


def helper_pids() -> set[int]:
    """multiprocessing's own long-lived helpers: the forkserver (which forks the workers)
    and the resource tracker it starts. They live as long as the test process, are not
    workers, and are excluded from leftover checks by pid (and by command line, below,
    should the private attributes move)."""
    from multiprocessing import resource_tracker

    pids = {forkserver_pid(), getattr(resource_tracker._resource_tracker, "_pid", None)}
    return {pid for pid in pids if pid is not None}


def _is_helper(process: psutil.Process) -> bool:
    import psutil

    if process.pid in helper_pids():
        return True
    try:
        command = " ".join(process.cmdline())
    except psutil.Error:
        return False
    if "multiprocessing.forkserver" in command or "multiprocessing.resource_tracker" in command:
        return True
    # The tests' Dask cluster lives as long as the test process: its worker processes, and
    # the watchdog each one's phalanx node starts (it lives as long as its worker).
    workers = TestCluster.worker_pids()
    if process.pid in workers or (process.ppid() in workers and "phalanx.watchdog" in command):
        return True
    if TestRay.started and _is_ray_process(process, command):
        return True
    # A warm worker's keeper (`phalanx._worker`): the warm workers of a Dask worker's node
    # stay between runs (warm), and each keeps its keeper as long as it lives.
    return workers != set() and command == "/bin/sh -c read _; kill -KILL 0" and _is_helper(process.parent())


def alive(pid: int) -> bool:
    """Whether a process runs (a zombie waiting to be reaped counts as gone)."""
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def wait_gone(pids: Iterable[int], *, bound: float = BOUND) -> list[int]:
    """Wait (bounded) for the processes to end; returns those still alive."""
    pids = list(pids)
    deadline = time.monotonic() + bound
    while True:
        left = [pid for pid in pids if alive(pid)]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(POLL)


def descendants(exclude: Iterable[int] = ()) -> list[int]:
    """This process's live descendants, multiprocessing's helpers (not workers) excepted."""
    import psutil

    skip = set(exclude)
    found = []
    for child in psutil.Process().children(recursive=True):
        if child.pid in skip or _is_helper(child):
            continue
        try:
            if child.status() != psutil.STATUS_ZOMBIE:
                found.append(child.pid)
        except psutil.NoSuchProcess:
            pass
    return found


def wait_no_descendants(before: Iterable[int] = (), *, bound: float = BOUND) -> list[int]:
    """Wait (bounded) until no process started since ``before`` runs; returns leftovers."""
    deadline = time.monotonic() + bound
    while True:
        left = descendants(exclude=before)
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(POLL)


def subprocess_env() -> dict[str, str]:
    """An environment whose Python finds phalanx and this module."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(SRC), str(HERE), env.get("PYTHONPATH", "")])
    return env


# ---------------------------------------------------------------------------- the tests' cluster


class TestCluster:
    """The Dask cluster the conformance suite runs the ``dask`` backends on: a
    ``LocalCluster(n_workers=2, processes=True)`` started once (by the suite's session
    fixture, before any leftover check takes its "before"), closed at the end."""

    _cluster: Any = None

    @classmethod
    def address(cls) -> str:
        if cls._cluster is None:
            import logging

            import dask
            import distributed

            # phalanx's retry policy must be the only one (phalanx refuses a scheduler without this).
            with dask.config.set({"distributed.scheduler.allowed-failures": 0}):
                cls._cluster = distributed.LocalCluster(
                    n_workers=2, threads_per_worker=2, processes=True, dashboard_address=":0",
                    silence_logs=logging.CRITICAL)
        return str(cls._cluster.scheduler_address)

    @classmethod
    def worker_pids(cls) -> set[int]:
        """The pids of the cluster's worker processes now (a killed one is restarted)."""
        if cls._cluster is None:
            return set()
        pids = set()
        for nanny in list(cls._cluster.workers.values()):
            process = getattr(nanny, "process", None)
            pid = getattr(getattr(process, "process", None), "pid", None)
            if pid is not None:
                pids.add(int(pid))
        return pids

    @classmethod
    def wait_for_workers(cls, count: int = 2) -> None:
        """Wait (bounded) until the cluster has ``count`` workers again (after a kill)."""
        from distributed import Client

        with Client(cls.address(), timeout=BOUND) as client:
            client.wait_for_workers(count, timeout=BOUND)

    @classmethod
    def close(cls) -> None:
        if cls._cluster is not None:
            cls._cluster.close()
            cls._cluster = None


def _is_ray_process(process: psutil.Process, command: str) -> bool:
    """One of the tests' Ray's own processes (they come and go as Ray pleases): its daemons
    and workers, and the watchdog of a worker's phalanx node (it lives as long as its worker)."""
    import psutil

    if command.startswith("ray::") or f"{os.sep}ray{os.sep}" in command:
        return True
    if "phalanx.watchdog" in command:
        try:
            return " ".join(process.parent().cmdline()).startswith("ray::")
        except (psutil.Error, AttributeError):
            return False
    return False


class TestRay:
    """The Ray the conformance suite runs the ``ray`` backends on: a local Ray initialised in
    the test process (phalanx uses a process's own Ray as it is; scripts connect by address)."""

    started = False

    @classmethod
    def address(cls) -> str:
        import ray

        if not ray.is_initialized():
            import logging

            from phalanx.backends.raycluster import RUNTIME_ENV

            ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR,
                     runtime_env=RUNTIME_ENV)
            cls.started = True
        return str(ray.get_runtime_context().gcs_address)

    @classmethod
    def close(cls) -> None:
        if cls.started:
            import ray

            ray.shutdown()
            cls.started = False


def cluster_address(engine: str) -> str:
    return TestCluster.address() if engine == "dask" else TestRay.address()


# ---------------------------------------------------------------------------- adapters


@dataclass
class Handle:
    """A run in progress: its results as they come (bounded waits), all of them, a way to
    cancel it, and (Python only) what runs now and the worker pids."""

    stream: Callable[[], Iterator[Any]]
    cancel: Callable[[], None]
    active: Callable[[], list[dict[str, Any]]]
    worker_pids: Callable[[], list[int]]

    def results(self) -> list[Any]:
        return list(self.stream())


class PythonBackend:
    """`phalanx.Executor` / `phalanx.map` with a given backend and options."""

    kind = "python"

    def __init__(self, name: str, backend: Literal["processes", "threads", "dask", "ray"], **options: Any) -> None:
        self.name = name
        self.backend = backend
        self._options = options

    @property
    def options(self) -> dict[str, Any]:
        """The executor options this adapter adds (the tests' cluster's address for Dask)."""
        if self.backend in ("dask", "ray"):
            return {**self._options, "scheduler": cluster_address(self.backend)}
        return self._options

    @property
    def processes(self) -> bool:
        return self.backend in ("processes", "dask", "ray")

    @property
    def isolate(self) -> bool:
        return bool(self.options.get("isolate"))

    def executor(self, max_workers: int = 2, **options: Any) -> Any:
        import phalanx

        return phalanx.Executor(max_workers, backend=self.backend, **{**self.options, **options})

    def start(self, specs: list[Spec], *, ordered: bool = True, timeout: float | None = None,
              batch_size: int | str = "auto", max_workers: int = 2, **options: Any) -> Handle:
        """``Executor.map(job, specs, as_results=True)``: it starts at once."""
        executor = self.executor(max_workers, timeout=timeout, **options)
        iterator = executor.map(job, specs, ordered=ordered, batch_size=batch_size, as_results=True)

        def stream() -> Iterator[Any]:
            try:
                yield from iterator
            finally:
                executor.shutdown(wait=True)

        def cancel() -> None:
            executor.cancel_all()

        return Handle(stream, cancel, executor.active_tasks, executor.worker_pids)

    def run(self, specs: list[Spec], **options: Any) -> list[Any]:
        return self.start(specs, **options).results()

    def value(self, result: Any) -> Any:
        return result.value

    def error_text(self, result: Any) -> str:
        """Where a failed job's traceback is."""
        return str(result.error.traceback)


class CommandBackend:
    """`phalanx.run` with command tasks: ``python conformance_support.py '<spec>'`` (here, or
    on the tests' Dask cluster with ``cluster="dask"``)."""

    kind = "command"
    processes = True
    isolate = False

    def __init__(self, cluster: str | None = None) -> None:
        self.cluster = cluster
        self.name = "command" if cluster is None else f"{cluster}-command"

    def run_options(self) -> dict[str, Any]:
        """What `phalanx.run` is given to run on the cluster (nothing to run here)."""
        if self.cluster is None:
            return {}
        return {"backend": self.cluster, "scheduler": cluster_address(self.cluster)}

    def task(self, index: int, spec: Spec, timeout: float | None) -> Any:
        import phalanx

        # -S: the job needs the standard library only, and starts faster without site.
        argv = (sys.executable, "-S", str(Path(__file__).resolve()), json.dumps(spec))
        return phalanx.Task(str(index), argv, timeout=timeout)

    def start(self, specs: list[Spec], *, ordered: bool = True, timeout: float | None = None,
              batch_size: int | str = "auto", max_workers: int = 2, **options: Any) -> Handle:
        """``phalanx.run_async`` on a thread of its own; cancel() cancels it as Ctrl-C would."""
        import asyncio
        import queue
        import threading

        import phalanx

        tasks = [self.task(index, spec, timeout) for index, spec in enumerate(specs)]
        finished: queue.SimpleQueue[Any] = queue.SimpleQueue()  # results in the order tasks end
        loop = asyncio.new_event_loop()
        main: list[asyncio.Task[Any]] = []

        def on_event(event: Any) -> None:
            if isinstance(event, phalanx.TaskFinished):
                finished.put(event.result)

        async def go() -> Any:
            main.append(asyncio.current_task())  # type: ignore[arg-type]
            return await phalanx.run_async(tasks, max_workers=max_workers, on_event=on_event, grace=0.5,
                                           **self.run_options())

        outcome: list[BaseException | None] = []

        def serve() -> None:
            try:
                loop.run_until_complete(go())
                outcome.append(None)
            except BaseException as error:
                outcome.append(error)
            finally:
                loop.close()

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()

        def stream() -> Iterator[Any]:
            seen = []
            for _ in tasks:
                result = finished.get(timeout=BOUND)
                if ordered:
                    seen.append(result)
                else:
                    yield result
            thread.join(BOUND)
            assert not thread.is_alive(), "phalanx.run did not end in time"
            if outcome and outcome[0] is not None and not isinstance(outcome[0], asyncio.CancelledError):
                raise outcome[0]
            yield from sorted(seen, key=lambda result: int(result.task_id))

        def cancel() -> None:
            deadline = time.monotonic() + BOUND
            while not main and time.monotonic() < deadline:
                time.sleep(POLL)
            loop.call_soon_threadsafe(main[0].cancel)

        return Handle(stream, cancel, list, list)

    def run(self, specs: list[Spec], **options: Any) -> list[Any]:
        return self.start(specs, **options).results()

    def value(self, result: Any) -> Any:
        return json.loads(result.stdout_tail)

    def error_text(self, result: Any) -> str:
        return str(result.stderr_tail)


BACKENDS: dict[str, Any] = {
    "threads": PythonBackend("threads", "threads"),
    "processes": PythonBackend("processes", "processes"),
    "processes-isolate": PythonBackend("processes-isolate", "processes", isolate=True),
    "command": CommandBackend(),
    "dask": PythonBackend("dask", "dask"),
    "dask-command": CommandBackend("dask"),
    "ray": PythonBackend("ray", "ray"),
    "ray-command": CommandBackend("ray"),
}


# ---------------------------------------------------------------------------- subprocesses


def run_script(source: str, *args: str, bound: float = BOUND) -> subprocess.CompletedProcess[str]:
    """Run a Python script in a subprocess (bounded), phalanx and this module importable."""
    import subprocess

    return subprocess.run(
        [sys.executable, "-c", source, *args], env=subprocess_env(), capture_output=True, text=True,
        timeout=bound, check=False,
    )


def interrupt_when_started(
    source: str, directory: Path, names: Sequence[str], *args: str
) -> tuple[int, str, list[int]]:
    """Start a script in a process group of its own, wait until the named jobs have
    started, press Ctrl-C (SIGINT to the group, as a terminal does), and wait for it to end.

    Returns its exit status, its stderr and the pids of every process it had started
    (its descendants just before the interrupt, and the pids the jobs wrote).
    """
    import signal
    import subprocess

    import psutil

    process = subprocess.Popen(
        [sys.executable, "-c", source, str(directory), *args], env=subprocess_env(), process_group=0,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        pids = {started_pid(directory, name) for name in names}
        with contextlib.suppress(psutil.NoSuchProcess):
            pids |= {child.pid for child in psutil.Process(process.pid).children(recursive=True)}
        started = time.monotonic()
        os.killpg(process.pid, signal.SIGINT)
        _, stderr = process.communicate(timeout=BOUND)
        assert time.monotonic() - started <= BOUND
        return process.returncode, stderr, sorted(pids)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


if __name__ == "__main__":  # the command backend's job: python conformance_support.py '<spec>'
    print(json.dumps(job(json.loads(sys.argv[1]))))
