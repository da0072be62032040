"""`Executor` and `phalanx.map`: Python callables on the same scheduler as `phalanx run`.

::

    caller's thread                     loop thread (one per Executor)
    ---------------                     ------------------------------
    submit(fn, x) ─── call_soon_threadsafe ──> Scheduler (open-ended) ──> ProcessBackend
    Future <──────── set_result / set_exception <── TaskFinished sink <──   (warm workers)
    map(fn, items) ── batches, sized to ~20 ms of work ──> same path; results re-ordered

The scheduler owns all run state on its loop; the caller's thread only submits and waits.
A Ctrl-C (or any exception) inside ``with Executor()`` or while iterating `map` cancels
what runs, kills the workers and leaves no process behind.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import os
import queue
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from .backends.base import Backend
from .backends.processes import Batch, ItemResult, ProcessBackend, function_key
from .backends.threads import ThreadBackend
from .errors import ConfigError
from .events import Event, TaskFinished
from .model import Graph, RetryPolicy, Task
from .results import Status, TaskResult
from .scheduler import Scheduler

ExecutorBackend = Literal["processes", "threads"]

#: What an automatic batch aims at: enough work to make its overhead negligible, little
#: enough that the workers stay balanced to the end (joblib aims at 0.2-2 s; items here
#: keep their own results and timeouts, so smaller batches cost little).
TARGET_BATCH_SECONDS = 0.02


@dataclass(frozen=True, slots=True)
class WorkerChoice:
    """What ``max_workers=None`` picks, and why."""

    count: int
    reason: str


def optimal_workers(backend: ExecutorBackend = "processes") -> WorkerChoice:
    """The worker count ``max_workers=None`` gives, with the reason in words."""
    try:
        cpus = len(os.sched_getaffinity(0))
        source = "CPUs this process may run on (sched_getaffinity)"
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
        source = "CPUs (os.cpu_count)"
    if backend == "threads":
        count = min(32, cpus + 4)
        return WorkerChoice(count, f"{count} = min(32, {cpus} {source} + 4): threads mostly wait on I/O")
    return WorkerChoice(cpus, f"{cpus} = the {source}: one process per CPU for CPU-bound work")


class TaskError(Exception):
    """A task or item did not succeed; raised where its value would have been.

    Attributes:
        result: the full `TaskResult` (status, error with the remote traceback, worker).
    """

    def __init__(self, result: TaskResult) -> None:
        super().__init__(f"{result.task_id}: {result.reason or result.status.value}")
        self.result = result


class TaskTimedOut(TaskError, TimeoutError):
    """The item ran over its timeout and was stopped."""


class WorkerCrashed(TaskError):
    """The worker process running the item died (the signal or exit code is in the message)."""


class RemoteTraceback(Exception):
    """The traceback of an exception raised in a worker, attached as ``__cause__``."""

    def __init__(self, text: str) -> None:
        super().__init__(text)

    def __str__(self) -> str:
        return "\n" + str(self.args[0])


def raise_for(result: TaskResult) -> Any:
    """The value of a succeeded result; otherwise raise the task's exception (or a TaskError)."""
    if result.status is Status.SUCCEEDED:
        return result.value
    if result.status is Status.FAILED and result.exception is not None:
        error = result.exception
        if result.error is not None and result.error.traceback:
            error.__cause__ = RemoteTraceback(result.error.traceback)
        raise error
    kind = {Status.TIMED_OUT: TaskTimedOut, Status.CRASHED: WorkerCrashed}.get(result.status, TaskError)
    raise kind(result)


class Executor:
    """Run callables on warm workers, through phalanx's scheduler.

    Args:
        max_workers: workers (and scheduler slots); default: `optimal_workers`.
        backend: ``"processes"`` (warm worker processes) or ``"threads"``.
        start_method: ``"auto"`` (forkserver on Linux), ``"forkserver"``, ``"spawn"``, ``"fork"``.
        initializer, initargs: run once in each worker (import heavy modules there).
        max_tasks_per_worker: replace a worker after this many items.
        max_memory_per_worker: replace a worker whose RSS exceeds this many bytes.
        isolate: fork a fresh child of a warm worker for every item (no state leaks).
        timeout: default seconds per task or item; over it, the work is stopped.
        retries: default extra attempts for a failed task.
    """

    def __init__(
        self,
        max_workers: int | None = None,
        *,
        backend: ExecutorBackend = "processes",
        start_method: str = "auto",
        initializer: Callable[..., Any] | None = None,
        initargs: tuple[Any, ...] = (),
        max_tasks_per_worker: int | None = None,
        max_memory_per_worker: int | None = None,
        isolate: bool = False,
        timeout: float | None = None,
        retries: int = 0,
    ) -> None:
        if backend not in ("processes", "threads"):
            raise ConfigError(f"backend must be 'processes' or 'threads', got {backend!r}")
        if isolate and backend != "processes":
            raise ConfigError("isolate=True needs backend='processes'")
        self.max_workers = max_workers or optimal_workers(backend).count
        self.backend_name = backend
        self.isolate = isolate
        self.timeout = timeout
        self.retries = retries
        self._backend: Backend
        if backend == "processes":
            self._backend = ProcessBackend(
                self.max_workers,
                start_method=start_method,
                initializer=initializer,
                initargs=initargs,
                max_tasks_per_worker=max_tasks_per_worker,
                max_memory_per_worker=max_memory_per_worker,
            )
        else:
            self._backend = ThreadBackend()
        self._run_dir = Path(tempfile.mkdtemp(prefix="phalanx-executor-"))
        self._futures: dict[str, concurrent.futures.Future[Any]] = {}
        self._listeners: dict[str, Callable[[TaskResult], None]] = {}
        self._counts = dict.fromkeys(Status, 0)
        self._submitted = 0
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._scheduler = Scheduler(
            Graph(),
            backend_for=self._backend_for,
            max_workers=self.max_workers,
            sinks=[self],
            run_dir=self._run_dir,
            open_ended=True,
        )
        self._closed = False
        self._thread = threading.Thread(target=self._serve, name="phalanx-executor", daemon=True)
        self._started = threading.Event()
        self._thread.start()
        self._started.wait()

    # ------------------------------------------------------------ loop thread

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._started.set()
        try:
            self._loop.run_until_complete(self._run())
        finally:
            self._loop.close()

    async def _run(self) -> None:
        try:
            await self._scheduler.run()
        finally:
            await self._backend.aclose()

    def _backend_for(self, task: Task) -> Backend:
        if task.is_command:
            raise ConfigError(f"task {task.id!r}: an Executor runs callables; use phalanx.run for commands")
        return self._backend

    def handle(self, event: Event) -> None:
        """The sink side: resolve futures and feed map runs as tasks end (on the loop)."""
        if not isinstance(event, TaskFinished):
            return
        result = event.result
        with self._lock:
            self._counts[result.status] += 1
        listener = self._listeners.pop(result.task_id, None)
        if listener is not None:
            listener(result)
            return
        future = self._futures.pop(result.task_id, None)
        if future is None:
            return
        if result.status is Status.CANCELLED:
            future.cancel()
        elif result.ok:
            future.set_result(result.value)
        else:
            try:
                raise_for(result)
            except BaseException as error:
                future.set_exception(error)

    def close(self) -> None:
        return None

    # ------------------------------------------------------------ caller side

    def _call(self, function: Callable[..., Any], *args: Any) -> Any:
        """Run ``function(*args)`` on the loop thread and return its result."""
        if threading.current_thread() is self._thread:
            return function(*args)
        done: concurrent.futures.Future[Any] = concurrent.futures.Future()

        def call() -> None:
            try:
                done.set_result(function(*args))
            except BaseException as error:
                done.set_exception(error)

        self._loop.call_soon_threadsafe(call)
        return done.result()

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("cannot submit to an Executor after shutdown")

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> concurrent.futures.Future[Any]:
        """Run ``fn(*args, **kwargs)`` and return a `concurrent.futures.Future` of its value."""
        task = Task(
            f"call-{next(self._ids)}",
            fn,
            args=args,
            kwargs=kwargs,
            timeout=self.timeout,
            retry=RetryPolicy(count=self.retries),
        )
        return self.submit_task(task)

    def submit_task(self, task: Task) -> concurrent.futures.Future[Any]:
        """Submit a `Task` with everything the scheduler offers (deps on earlier task ids,
        priority, resources, retries, timeout); the future gets its value."""
        self._check_open()
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self._futures[task.id] = future
        try:
            self._call(self._scheduler.submit, task)
        except BaseException:
            self._futures.pop(task.id, None)
            raise
        with self._lock:
            self._submitted += 1
        return future

    def map(
        self,
        fn: Callable[..., Any],
        *iterables: Iterable[Any],
        ordered: bool = True,
        timeout: float | None = None,
        retries: int | None = None,
        batch_size: int | Literal["auto"] = "auto",
        as_results: bool = False,
    ) -> Iterator[Any]:
        """Like the built-in ``map``, in parallel: values as they are ready (in input order
        when ``ordered``); a failed item raises where its value would be. With
        ``as_results`` it yields `TaskResult`s instead and never raises for an item."""
        self._check_open()
        run = _MapRun(self, fn, zip(*iterables, strict=False), ordered=ordered,
                      timeout=self.timeout if timeout is None else timeout,
                      retries=self.retries if retries is None else retries, batch_size=batch_size)
        return run.results(as_results)

    @staticmethod
    def as_completed(futures: Iterable[concurrent.futures.Future[Any]]) -> Iterator[concurrent.futures.Future[Any]]:
        """The futures as they complete (`concurrent.futures.as_completed`)."""
        return concurrent.futures.as_completed(list(futures))

    def cancel_all(self) -> int:
        """Cancel every task that has not ended (running ones are stopped); returns how many."""
        ids = list(self._futures) + list(self._listeners)
        return sum(1 for tid in ids if self._call(self._scheduler.cancel_task, tid))

    @property
    def is_running(self) -> bool:
        """Whether any submitted task has not ended yet."""
        return bool(self._futures or self._listeners)

    @property
    def is_warmed_up(self) -> bool:
        """Whether every worker process has started and run the initializer."""
        backend = self._backend
        return not isinstance(backend, ProcessBackend) or backend.warmed_up

    def warm_up(self) -> None:
        """Start every worker now rather than on first use."""
        if isinstance(self._backend, ProcessBackend):
            backend = self._backend
            asyncio.run_coroutine_threadsafe(backend.warm_up(), self._loop).result()

    def worker_pids(self) -> list[int]:
        """The pids of the worker processes alive now."""
        backend = self._backend
        return self._call(backend.worker_pids) if isinstance(backend, ProcessBackend) else []

    def active_tasks(self) -> list[dict[str, Any]]:
        """The tasks running now: id, worker slot, worker pid and seconds running."""
        return list(self._call(self._active))

    def _active(self) -> list[dict[str, Any]]:
        backend = self._backend
        now = self._scheduler.now()
        active = []
        for tid, slot, started in self._scheduler.running():
            pid = backend.pid_of(slot) if isinstance(backend, ProcessBackend) else os.getpid()
            active.append({"task_id": tid, "worker": slot, "pid": pid, "running_for": now - started})
        return active

    def progress(self) -> dict[str, Any]:
        """Completed and total tasks, and counts by status."""
        with self._lock:
            counts = {status.value: n for status, n in self._counts.items()}
            completed = sum(self._counts.values())
            return {"completed": completed, "total": self._submitted, "counts": counts}

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop taking tasks; with ``cancel_futures`` cancel what has not ended; with
        ``wait`` block until everything has ended and every worker is gone."""
        if not self._closed:
            self._closed = True
            if cancel_futures:
                self.cancel_all()
            self._loop.call_soon_threadsafe(self._scheduler.close)
        if wait:
            self._thread.join()
            shutil.rmtree(self._run_dir, ignore_errors=True)

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> None:
        # Any exception (Ctrl-C included) leaving the block cancels the work in flight.
        self.shutdown(wait=True, cancel_futures=kind is not None)


class _MapRun:
    """One `Executor.map`: batches out, results back in order, sizes adapted as it goes."""

    def __init__(
        self,
        executor: Executor,
        fn: Callable[..., Any],
        items: Iterator[tuple[Any, ...]],
        *,
        ordered: bool,
        timeout: float | None,
        retries: int,
        batch_size: int | Literal["auto"],
    ) -> None:
        self._executor = executor
        self._fn = fn
        self._key = function_key(fn)[0] if executor.backend_name == "processes" else ""
        self._items = enumerate(items)
        self._ordered = ordered
        self._timeout = timeout
        self._retries = retries
        self._fixed = None if batch_size == "auto" else int(batch_size)
        if self._fixed is not None and self._fixed < 1:
            raise ConfigError(f"batch_size must be 'auto' or a positive integer, got {batch_size!r}")
        self._inbox: queue.SimpleQueue[TaskResult] = queue.SimpleQueue()
        self._in_flight = 0
        self._exhausted = False
        self._size = 1
        self._seconds_per_item: float | None = None
        self._batches = itertools.count(1)
        self._map_id = f"map-{next(executor._ids)}"
        self._attempts: dict[int, int] = {}
        self._pending_retry: list[tuple[int, tuple[Any, ...], dict[str, Any]]] = []
        # Arguments are kept until an item is final (a retry needs them again).
        self._arguments: dict[int, tuple[tuple[Any, ...], dict[str, Any]]] = {}
        self._indices: dict[str, list[int]] = {}  # batch task id -> its items

    def results(self, as_results: bool) -> Iterator[Any]:
        executor = self._executor
        done: dict[int, ItemResult] = {}
        next_index = 0
        try:
            self._fill()
            while self._in_flight or self._pending_retry:
                self._fill()
                batch_result = self._wait()
                self._in_flight -= 1
                for item in self._unpack(batch_result):
                    if item.status is not Status.SUCCEEDED and self._attempts.get(item.position, 1) <= self._retries:
                        self._attempts[item.position] = self._attempts.get(item.position, 1) + 1
                        self._pending_retry.append((item.position, *self._arguments[item.position]))
                        continue
                    self._arguments.pop(item.position, None)
                    if not self._ordered:
                        yield self._deliver(item, as_results)
                        continue
                    done[item.position] = item
                while next_index in done:
                    yield self._deliver(done.pop(next_index), as_results)
                    next_index += 1
        except BaseException:
            executor.cancel_all()
            raise

    def _deliver(self, item: ItemResult, as_results: bool) -> Any:
        if item.status is Status.SUCCEEDED and not as_results:
            return item.value  # the fast path: no result record per item
        result = TaskResult(
            task_id=str(item.position),
            status=item.status,
            attempts=self._attempts.get(item.position, 1),
            flaky=item.status is Status.SUCCEEDED and self._attempts.get(item.position, 1) > 1,
            reason=item.reason,
            error=item.error,
            value=item.value,
            duration=item.duration,
            busy_time=item.duration,
            pid=item.pid,
            exception=item.exception,
        )
        return result if as_results else raise_for(result)

    def _fill(self) -> None:
        """Keep two batches per worker in flight, so no worker waits for the next one."""
        while self._in_flight < 2 * self._executor.max_workers:
            chunk = self._pending_retry[: self._next_size()]
            del self._pending_retry[: len(chunk)]
            if not chunk and not self._exhausted:
                for index, args in itertools.islice(self._items, self._next_size()):
                    chunk.append((index, tuple(args), {}))
                    self._arguments[index] = (tuple(args), {})
                if not chunk:
                    self._exhausted = True
            if not chunk:
                return
            self._submit(chunk)

    def _next_size(self) -> int:
        if self._fixed is not None:
            return self._fixed
        if self._seconds_per_item is None:
            return 1  # probe first: one item a batch until a duration is measured
        size = TARGET_BATCH_SECONDS / max(self._seconds_per_item, 1e-7)
        return max(1, min(int(size), 100_000))

    def _submit(self, chunk: list[tuple[int, tuple[Any, ...], dict[str, Any]]]) -> None:
        executor = self._executor
        batch = Batch(self._fn, chunk, fn_key=self._key, isolate=executor.isolate, item_timeout=self._timeout)
        task = Task(f"{self._map_id}-batch-{next(self._batches)}", batch)
        self._indices[task.id] = [index for index, _, _ in chunk]
        executor._listeners[task.id] = self._inbox.put
        executor._call(executor._scheduler.submit, task)
        with executor._lock:
            executor._submitted += 1
        self._in_flight += 1

    def _wait(self) -> TaskResult:
        while True:
            try:
                return self._inbox.get(timeout=0.1)  # a short wait keeps Ctrl-C responsive
            except queue.Empty:
                continue

    def _unpack(self, batch_result: TaskResult) -> list[ItemResult]:
        batch = self._indices.pop(batch_result.task_id, [])
        if batch_result.ok and isinstance(batch_result.value, list):
            items: list[ItemResult] = batch_result.value
            took = sum(item.duration for item in items)
            if items:
                measured = took / len(items)
                previous = self._seconds_per_item
                self._seconds_per_item = measured if previous is None else (previous + measured) / 2
            return items
        # The batch as a whole did not run (cancelled, or its worker could not start).
        return [ItemResult(index, batch_result.status, error=batch_result.error) for index in batch]


def map(
    fn: Callable[..., Any],
    items: Iterable[Any],
    *,
    max_workers: int | None = None,
    backend: ExecutorBackend = "processes",
    batch_size: int | Literal["auto"] = "auto",
    ordered: bool = True,
    timeout: float | None = None,
    retries: int = 0,
    initializer: Callable[..., Any] | None = None,
    initargs: tuple[Any, ...] = (),
    isolate: bool = False,
    start_method: str = "auto",
    max_tasks_per_worker: int | None = None,
    max_memory_per_worker: int | None = None,
    as_results: bool = False,
) -> Iterator[Any]:
    """``fn`` over ``items`` on warm workers, like the built-in ``map`` but in parallel.

    Values come as they are ready, in input order when ``ordered``; a failed item raises its
    exception where its value would be (``TaskTimedOut`` for a timeout, ``WorkerCrashed``
    when its worker died), like the built-in. With ``as_results=True`` it yields each
    item's `TaskResult` instead and never raises for an item. Items are sent in batches
    sized to about 20 ms of work each; each item keeps its own result, timeout and order.
    The workers are stopped when the iterator is exhausted, closed or interrupted.
    """
    executor = Executor(
        max_workers,
        backend=backend,
        start_method=start_method,
        initializer=initializer,
        initargs=initargs,
        max_tasks_per_worker=max_tasks_per_worker,
        max_memory_per_worker=max_memory_per_worker,
        isolate=isolate,
        timeout=timeout,
        retries=retries,
    )
    failed = True
    try:
        yield from executor.map(fn, items, ordered=ordered, batch_size=batch_size, as_results=as_results)
        failed = False
    finally:
        executor.shutdown(wait=True, cancel_futures=failed)

