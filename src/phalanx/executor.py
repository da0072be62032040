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

A map sends its items in batches (one scheduler task each). The batch's results come back
as a `BatchResult` (flat lists of values and durations; an `ItemResult` only for an item
that did not succeed), are checked for retries on the loop thread (a retry is sent at once,
whether or not anyone is reading), and are handed to the reading thread, which puts them
in order and yields them. A batch that succeeded whole is yielded with ``yield from`` over
its values: the success path makes no object per item.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import heapq
import itertools
import math
import os
import queue
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from .backends.base import Backend
from .backends.batch import ONE, STAR, Batch, BatchResult, ItemResult, function_key
from .backends.processes import ProcessBackend
from .backends.threads import ThreadBackend
from .errors import ConfigError
from .events import Event, TaskFinished
from .model import Graph, RetryPolicy, Task
from .results import ErrorInfo, Status, TaskResult
from .scheduler import Scheduler

ExecutorBackend = Literal["processes", "threads"]
Partition = Literal["auto", "round_robin", "weighted"]
Weights = Callable[[Any], float] | Sequence[float]

#: What an automatic batch aims at: enough work to make its overhead negligible, little
#: enough that the workers stay balanced to the end (joblib aims at 0.2-2 s; items here
#: keep their own results and timeouts, so smaller batches cost little).
TARGET_BATCH_SECONDS = 0.02

#: The largest automatic batch.
MAX_BATCH = 100_000

#: Batches kept in flight per worker, so that no worker waits for its next batch.
BATCHES_PER_WORKER = 2


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
        what = result.reason or result.status.value
        named = what.split(": ", 1)[-1].startswith(("item ", "task "))  # the reason names it already
        super().__init__(what if named else f"{result.task_id}: {what}")
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
        if result.error is not None and result.error.traceback and error.__cause__ is None:
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
        initializer, initargs: run once in each worker process (import heavy modules
            there); with threads, once, when the executor starts.
        max_tasks_per_worker: replace a worker process after this many items.
        max_memory_per_worker: replace a worker process whose RSS exceeds this many bytes
            (checked after each batch).
        isolate: fork a fresh child of a warm worker for every item (no state leaks).
        timeout: default seconds per task or item; over it, the work is stopped (with
            threads it cannot be: the task ends ``timed_out`` and its thread is abandoned).
        retries: default extra attempts for a failed task or item.
        resources: named capacities beyond the worker slots, for tasks submitted with
            `submit_task` that request them (``{"gpu": 1}``).

    Futures from `submit` stay pending until their task ends: ``Future.cancel()`` works
    until then and stops the task if it is running (its worker is replaced).
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
        resources: Mapping[str, float] | None = None,
    ) -> None:
        if backend not in ("processes", "threads"):
            raise ConfigError(f"backend must be 'processes' or 'threads', got {backend!r}")
        if backend == "threads":
            for name, value in (("isolate", isolate), ("max_tasks_per_worker", max_tasks_per_worker),
                                ("max_memory_per_worker", max_memory_per_worker)):
                if value:
                    raise ConfigError(f"{name} needs backend='processes' (threads share one process)")
            if start_method != "auto":
                raise ConfigError("start_method needs backend='processes'")
        if max_workers is not None and (isinstance(max_workers, bool) or max_workers < 1):
            raise ConfigError(f"max_workers must be a positive integer, got {max_workers!r}")
        if timeout is not None and timeout <= 0:
            raise ConfigError(f"timeout must be a positive number of seconds, got {timeout!r}")
        self.max_workers = max_workers or optimal_workers(backend).count
        self.backend_name = backend
        self.isolate = isolate
        self.timeout = timeout
        self.retries = RetryPolicy(count=retries).count  # validated
        self._backend: Backend
        if backend == "processes":
            self._backend = ProcessBackend(
                self.max_workers,
                start_method=start_method,
                initializer=initializer,
                initargs=initargs,
                max_tasks_per_worker=max_tasks_per_worker,
                max_memory_per_worker=max_memory_per_worker,
                isolate=isolate,
            )
        else:
            if initializer is not None:
                initializer(*initargs)  # threads share this process: once is once per worker
            self._backend = ThreadBackend()
        self._futures: dict[str, concurrent.futures.Future[Any]] = {}
        self._listeners: dict[str, Callable[[TaskResult], None]] = {}
        self._maps: set[_MapRun] = set()
        self._counts = dict.fromkeys(Status, 0)
        self._submitted = 0
        self._batches_sent = 0
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        # Only commands write to a run directory, and an Executor runs none: it is never
        # created (so an executor that dies with its process leaves nothing on disk).
        self._run_dir = Path(tempfile.gettempdir()) / f"phalanx-executor-{os.getpid()}-{id(self):x}"
        self._loop = asyncio.new_event_loop()
        self._scheduler = Scheduler(
            Graph(),
            backend_for=self._backend_for,
            max_workers=self.max_workers,
            capacities=resources,
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
        listener = self._listeners.pop(result.task_id, None)
        if listener is not None:
            listener(result)
            return
        future = self._futures.pop(result.task_id, None)
        if future is None:
            return
        with self._lock:
            self._counts[result.status] += 1
        try:
            if result.status is Status.CANCELLED:
                future.cancel()
            elif result.ok:
                future.set_result(result.value)
            else:
                try:
                    raise_for(result)
                except _Raised as wrapped:
                    future.set_exception(wrapped.error)
                except BaseException as error:
                    future.set_exception(error)
        except concurrent.futures.InvalidStateError:
            pass  # the caller cancelled it meanwhile

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

        try:
            self._loop.call_soon_threadsafe(call)
        except RuntimeError:
            raise RuntimeError("the executor has shut down") from None
        while True:
            try:
                return done.result(timeout=1.0)
            except concurrent.futures.TimeoutError:
                if not self._thread.is_alive():
                    raise RuntimeError("the executor's loop thread has stopped") from None

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
        if task.is_command:
            raise ConfigError(f"task {task.id!r}: an Executor runs callables; use phalanx.run for commands")
        if self.backend_name == "threads" and not isinstance(task.action, _ThreadCall):
            task = dataclasses.replace(task, action=_ThreadCall(task.action))  # type: ignore[arg-type]
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self._futures[task.id] = future
        try:
            self._call(self._scheduler.submit, task)
        except BaseException:
            self._futures.pop(task.id, None)
            raise
        with self._lock:
            self._submitted += 1
        future.add_done_callback(lambda f, tid=task.id: self._on_future_done(f, tid))  # type: ignore[misc]
        return future

    def _on_future_done(self, future: concurrent.futures.Future[Any], tid: str) -> None:
        """A future the caller cancelled stops its task (a no-op once the task has ended)."""
        if future.cancelled() and tid in self._futures and not self._loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop has just closed: nothing runs any more
                self._loop.call_soon_threadsafe(self._scheduler.cancel_task, tid)

    def map(
        self,
        fn: Callable[..., Any],
        *iterables: Iterable[Any],
        ordered: bool = True,
        timeout: float | None = None,
        retries: int | None = None,
        batch_size: int | Literal["auto"] = "auto",
        partition: Partition = "auto",
        weights: Weights | None = None,
        as_results: bool = False,
    ) -> Iterator[Any]:
        """Like the built-in ``map``, in parallel: values as they are ready (in input order
        when ``ordered``); a failed item raises where its value would be. With
        ``as_results`` it yields `TaskResult`s instead and never raises for an item.

        Args:
            batch_size: ``"auto"`` sizes batches to about 20 ms of work from the durations
                measured so far; an integer fixes it.
            partition: ``"auto"`` (batches as above, handed out as workers free up),
                ``"round_robin"`` (the items dealt into one fixed partition per worker:
                item i to partition i mod workers) or ``"weighted"`` (one partition per
                worker, balanced by ``weights``: heaviest item first to the lightest
                partition). Fixed partitions read all the items first.
            weights: each item's cost for ``"weighted"``: a callable of the item (of the
                argument tuple with several iterables) or a sequence in item order.

        The work starts at once; later batches are sent as results are read (at most two
        batches per worker ahead of the reader), so an endless input is fine.
        """
        self._check_open()
        run = _MapRun(
            self, fn, iterables,
            ordered=ordered,
            timeout=self.timeout if timeout is None else timeout,
            retries=self.retries if retries is None else RetryPolicy(count=retries).count,
            batch_size=batch_size,
            partition=partition,
            weights=weights,
        )
        run.start()
        return run.results(as_results)

    @staticmethod
    def as_completed(futures: Iterable[concurrent.futures.Future[Any]]) -> Iterator[concurrent.futures.Future[Any]]:
        """The futures as they complete (`concurrent.futures.as_completed`)."""
        return concurrent.futures.as_completed(list(futures))

    def cancel_all(self) -> int:
        """Cancel every task and map item that has not ended (running ones are stopped);
        returns how many tasks (map batches count one each) were cancelled."""
        with self._lock:
            maps = list(self._maps)
        for run in maps:
            run.cancelled = True  # no more input is read, no retry is sent
        if self._thread.is_alive():
            return int(self._call(self._cancel_everything))
        return 0

    def _cancel_everything(self) -> int:
        cancelled = 0
        for tid, future in list(self._futures.items()):
            cancelled += self._scheduler.cancel_task(tid)
            future.cancel()  # at once: a running task's end (its worker killed) comes later
        for tid in list(self._listeners):
            cancelled += self._scheduler.cancel_task(tid)
        return cancelled

    @property
    def is_running(self) -> bool:
        """Whether any submitted task or map item has not ended yet."""
        return bool(self._futures or self._listeners)

    @property
    def is_warmed_up(self) -> bool:
        """Whether every worker process has started and run the initializer."""
        backend = self._backend
        return not isinstance(backend, ProcessBackend) or backend.warmed_up

    def warm_up(self) -> None:
        """Start every worker now rather than on first use (raises if one cannot start)."""
        if isinstance(self._backend, ProcessBackend):
            backend = self._backend
            asyncio.run_coroutine_threadsafe(backend.warm_up(), self._loop).result()

    def worker_pids(self) -> list[int]:
        """The pids of the worker processes alive now (none with threads)."""
        backend = self._backend
        return list(self._call(backend.worker_pids)) if isinstance(backend, ProcessBackend) else []

    def stats(self) -> dict[str, int]:
        """Counters: ``batches`` (map batches sent, retries included), ``workers_started``
        (worker processes started, replacements included), ``abandoned_threads`` (thread
        tasks given up on after a timeout or cancellation while their thread ran on)."""
        backend = self._backend
        with self._lock:
            batches = self._batches_sent
        return {
            "batches": batches,
            "workers_started": backend.started if isinstance(backend, ProcessBackend) else 0,
            "abandoned_threads": backend.abandoned if isinstance(backend, ThreadBackend) else 0,
        }

    def active_tasks(self) -> list[dict[str, Any]]:
        """The tasks running now: ``task_id``, ``worker`` (slot), ``pid`` (the process running
        it: the worker, its forked child with ``isolate``, this process with threads),
        ``running_for`` (seconds); for a map batch also ``item`` (the position of the item
        running now, processes only), ``worker_pid`` and the item's own ``running_for``."""
        return list(self._call(self._active))

    def _active(self) -> list[dict[str, Any]]:
        backend = self._backend
        now = self._scheduler.now()
        active = []
        for tid, slot, started in self._scheduler.running():
            entry: dict[str, Any] = {"task_id": tid, "worker": slot, "running_for": now - started}
            if isinstance(backend, ProcessBackend):
                entry["pid"] = entry["worker_pid"] = backend.pid_of(slot)
                entry.update(backend.running_item(slot) or {})
            else:
                entry["pid"] = entry["worker_pid"] = os.getpid()
            active.append(entry)
        return active

    def progress(self) -> dict[str, Any]:
        """Tasks and map items: ``completed``, ``total`` (so far: a map's input is read as it
        goes), ``running`` (not yet ended) and ``counts`` by status of the completed ones."""
        with self._lock:
            counts = {status.value: n for status, n in self._counts.items()}
            completed = sum(self._counts.values())
            return {"completed": completed, "total": self._submitted, "running": self._submitted - completed,
                    "counts": counts}

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop taking tasks; with ``cancel_futures`` cancel what has not ended; with
        ``wait`` block until everything has ended and every worker is gone."""
        if not self._closed:
            if cancel_futures:
                self.cancel_all()
            self._closed = True
            if not self._loop.is_closed():
                with contextlib.suppress(RuntimeError):  # the loop is already gone
                    self._loop.call_soon_threadsafe(self._scheduler.close)
        if wait and threading.current_thread() is not self._thread:  # not from a task's callback
            self._thread.join()

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> None:
        # Any exception (Ctrl-C included) leaving the block cancels the work in flight.
        self.shutdown(wait=True, cancel_futures=kind is not None)


class _Raised(Exception):
    """Carries what a thread task raised that the thread backend would not catch."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(f"{type(error).__qualname__} raised in a thread task")
        self.error = error


class _ThreadCall:
    """A callable submitted to the thread backend, guarded so that whatever it raises ends
    its task: a ``SystemExit`` (not an ``Exception``) or an exception whose message cannot
    be formatted would otherwise end the thread without a word, and its future would never
    resolve. What it raised is what the future raises."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn
        self.__qualname__ = getattr(fn, "__qualname__", repr(fn))

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return self.fn(*args, **kwargs)
        except Exception as error:
            try:
                str(error)
            except Exception:
                raise _Raised(error) from None
            raise
        except BaseException as error:
            raise _Raised(error) from None


class _MapRun:
    """One `Executor.map`: batches out, results back in order, sizes adapted as it goes.

    The reading thread pulls input and submits batches (`_fill`); the loop thread takes
    each finished batch (`_finished`), sends retries at once, counts the final items, and
    queues the batch for the reader, which orders and yields (`results`).
    """

    def __init__(
        self,
        executor: Executor,
        fn: Callable[..., Any],
        iterables: tuple[Iterable[Any], ...],
        *,
        ordered: bool,
        timeout: float | None,
        retries: int,
        batch_size: int | Literal["auto"],
        partition: Partition,
        weights: Weights | None,
    ) -> None:
        if not iterables:
            raise TypeError("map() needs at least one iterable")
        if batch_size != "auto" and (isinstance(batch_size, bool) or not isinstance(batch_size, int)
                                     or batch_size < 1):
            raise ConfigError(f"batch_size must be 'auto' or a positive integer, got {batch_size!r}")
        if partition not in ("auto", "round_robin", "weighted"):
            raise ConfigError(f"partition must be 'auto', 'round_robin' or 'weighted', got {partition!r}")
        if partition == "weighted" and weights is None:
            raise ConfigError("partition='weighted' needs weights= (a callable of the item, or a sequence)")
        if weights is not None and partition != "weighted":
            raise ConfigError("weights= is for partition='weighted'")
        if timeout is not None and timeout <= 0:
            raise ConfigError(f"timeout must be a positive number of seconds, got {timeout!r}")
        self._executor = executor
        self._fn = fn
        threads = executor.backend_name == "threads"
        self._key = "" if threads else function_key(fn)[0]
        self._mode = ONE if len(iterables) == 1 else STAR
        try:
            self._total: int | None = min(len(it) for it in iterables)  # type: ignore[arg-type]
        except TypeError:
            self._total = None
        self._source: Iterator[Any] = iter(iterables[0]) if len(iterables) == 1 else zip(*iterables, strict=False)
        self._ordered = ordered
        self._timeout = timeout
        # Threads cannot be stopped: a timeout there is the scheduler's, per task, so one item a task.
        self._task_timeout = timeout if threads else None
        self._item_timeout = None if threads else timeout
        self._retries = retries
        self._fixed = None if batch_size == "auto" or self._task_timeout is not None else int(batch_size)
        self._partitions: list[tuple[list[int], list[Any]]] | None = None
        if partition != "auto":
            if self._task_timeout is not None:
                raise ConfigError("fixed partitions and a timeout do not mix on threads (one item a task there)")
            self._partitions = _partition(list(self._source), partition, weights, executor.max_workers, self._mode)
        self._inbox: queue.SimpleQueue[tuple[BatchResult, frozenset[int]]] = queue.SimpleQueue()
        self._in_flight = 0  # batches submitted whose result the reader has not taken (under the lock)
        self._pulled = 0  # items read from the input so far
        self._exhausted = False
        self.cancelled = False
        self._per_item: float | None = None  # seconds per item, batch overhead included
        self._batch_numbers = itertools.count(1)
        self._map_id = f"map-{next(executor._ids)}"
        self._attempts: dict[int, int] = {}  # position -> attempts, for retried items only
        self._batches: dict[str, Batch] = {}  # in flight, by task id

    # ------------------------------------------------------------ reader side

    def start(self) -> None:
        with self._executor._lock:
            self._executor._maps.add(self)
        try:
            self._fill()
        except BaseException:  # the input raised, or the executor is shutting down
            self.cancel()
            with self._executor._lock:
                self._executor._maps.discard(self)
            raise

    def results(self, as_results: bool) -> Iterator[Any]:
        executor = self._executor
        ready_batches: dict[int, BatchResult] = {}  # contiguous batches by first position
        ready_items: dict[int, tuple[ItemResult, int | None]] = {}
        next_index = 0
        try:
            while True:
                self._fill()
                with executor._lock:
                    if not self._in_flight:
                        break
                batch_result, retried = self._wait()
                with executor._lock:
                    self._in_flight -= 1
                positions = batch_result.positions
                contiguous = isinstance(positions, range) and positions.step == 1 and not retried
                if not self._ordered:
                    if contiguous:
                        yield from self._deliver_batch(batch_result, as_results)
                    else:
                        worker = batch_result.worker
                        for offset in range(len(batch_result)):
                            if offset not in retried:
                                yield self._deliver(batch_result.item(offset), worker, as_results=as_results)
                    continue
                if contiguous:
                    if len(batch_result):
                        ready_batches[positions[0]] = batch_result
                else:
                    for offset in range(len(batch_result)):
                        if offset not in retried:
                            ready_items[positions[offset]] = (batch_result.item(offset), batch_result.worker)
                while True:
                    ready = ready_batches.pop(next_index, None)
                    if ready is not None:
                        next_index += len(ready)
                        yield from self._deliver_batch(ready, as_results)
                        continue
                    entry = ready_items.pop(next_index, None)
                    if entry is None:
                        break
                    next_index += 1
                    yield self._deliver(*entry, as_results=as_results)
        except BaseException:
            self.cancel()
            raise
        finally:
            with executor._lock:
                executor._maps.discard(self)

    def cancel(self) -> None:
        """Stop this map: read no more input, cancel its batches in flight."""
        self.cancelled = True
        executor = self._executor
        if executor._thread.is_alive():
            executor._call(self._cancel_batches)

    def _cancel_batches(self) -> None:
        for tid in list(self._batches):
            self._executor._scheduler.cancel_task(tid)

    def _deliver_batch(self, batch: BatchResult, as_results: bool) -> Iterator[Any]:
        if not as_results and not batch.failures:
            return iter(batch.values)  # the fast path: no object per item
        return (self._deliver(batch.item(offset), batch.worker, as_results=as_results) for offset in range(len(batch)))

    def _deliver(self, item: ItemResult, worker: int | None = None, *, as_results: bool) -> Any:
        if item.status is Status.SUCCEEDED and not as_results:
            return item.value
        attempts = self._attempts.get(item.position, 1)
        code = item.exit_code
        result = TaskResult(
            task_id=str(item.position),
            status=item.status,
            attempts=attempts,
            flaky=item.status is Status.SUCCEEDED and attempts > 1,
            reason=item.reason,
            exit_code=code if code is not None and code >= 0 else None,
            signal=-code if code is not None and code < 0 else None,
            error=item.error,
            value=item.value,
            duration=item.duration,
            busy_time=item.duration,
            worker=worker,
            pid=item.pid,
            exception=item.exception,
        )
        return result if as_results else raise_for(result)

    def _wait(self) -> tuple[BatchResult, frozenset[int]]:
        while True:
            try:
                return self._inbox.get(timeout=0.1)  # a short wait keeps Ctrl-C responsive
            except queue.Empty:
                if not self._executor._thread.is_alive():
                    raise RuntimeError("the executor's loop thread has stopped") from None

    def _fill(self) -> None:
        """Keep `BATCHES_PER_WORKER` batches per worker in flight (sent in one go: fixed
        partitions then start together, each on a worker of its own when all are free)."""
        executor = self._executor
        if self._exhausted or self.cancelled:
            return
        with executor._lock:
            room = BATCHES_PER_WORKER * executor.max_workers - self._in_flight
        if room <= 0:
            return
        chunks: list[tuple[Sequence[int], list[Any]]] = []
        if self._partitions is not None:
            chunks = list(self._partitions)
            self._exhausted = True
        while len(chunks) < room and not self._exhausted:
            items = list(itertools.islice(self._source, self._next_size()))
            if not items:
                self._exhausted = True
                break
            first = self._pulled
            self._pulled += len(items)
            chunks.append((range(first, first + len(items)), items))
        if chunks:
            self._submit(chunks, first_attempt=True)

    def _next_size(self) -> int:
        if self._fixed is not None:
            return self._fixed
        if self._task_timeout is not None or self._per_item is None:
            return 1  # probe first: one item a batch until a duration is measured
        size = min(int(TARGET_BATCH_SECONDS / max(self._per_item, 1e-7)), MAX_BATCH)
        if self._total is not None:
            # Guided: never more than a share of what is left, so the end stays balanced.
            share = (self._total - self._pulled) / (BATCHES_PER_WORKER * self._executor.max_workers)
            size = min(size, math.ceil(share))
        return max(1, size)

    def _submit(self, chunks: list[tuple[Sequence[int], list[Any]]], *, first_attempt: bool = False) -> None:
        """Send batches (from the reader's thread, or from the loop for a retry)."""
        executor = self._executor
        tasks = []
        for positions, items in chunks:
            batch = Batch(self._fn, items, positions=positions, mode=self._mode, fn_key=self._key,
                          isolate=executor.isolate, item_timeout=self._item_timeout)
            task = Task(f"{self._map_id}-batch-{next(self._batch_numbers)}", batch, timeout=self._task_timeout)
            self._batches[task.id] = batch
            executor._listeners[task.id] = self._finished
            tasks.append(task)
        with executor._lock:
            self._in_flight += len(tasks)
            if first_attempt:
                executor._submitted += sum(len(items) for _, items in chunks)
            executor._batches_sent += len(tasks)
        executor._call(self._submit_on_loop, tasks)

    def _submit_on_loop(self, tasks: list[Task]) -> None:
        executor = self._executor
        sent = 0
        try:
            for task in tasks:
                executor._scheduler.submit(task)
                sent += 1
        finally:
            for task in tasks[sent:]:  # refused (the executor is closing): forget them
                executor._listeners.pop(task.id, None)
                self._batches.pop(task.id, None)
                with executor._lock:
                    self._in_flight -= 1

    # ------------------------------------------------------------ loop side

    def _finished(self, result: TaskResult) -> None:
        """A batch ended (on the loop thread): send its retries, count, hand it to the reader."""
        batch = self._batches.pop(result.task_id)
        value = result.value
        if isinstance(value, BatchResult):
            outcome = value
            if len(outcome) and result.ok:
                measured = result.duration / len(outcome)
                self._per_item = measured if self._per_item is None else (self._per_item + measured) / 2
        else:  # the batch as a whole did not run through (cancelled, timed out on threads, no worker)
            outcome = BatchResult.all_failed(batch.where, result.status, _batch_error(result, batch))
        outcome.worker = result.worker
        executor = self._executor
        retried: frozenset[int] = frozenset()
        if outcome.failures and self._retries and not self.cancelled and not executor._closed:
            again = [
                offset for offset, item in outcome.failures.items()
                if item.status is not Status.CANCELLED and self._attempts.get(item.position, 1) <= self._retries
            ]
            if again:
                positions = [batch.where[offset] for offset in again]
                try:
                    self._submit([(positions, [batch.items[offset] for offset in again])])
                except Exception:
                    pass  # the executor is closing: these failures are final
                else:
                    retried = frozenset(again)
                    for position in positions:
                        self._attempts[position] = self._attempts.get(position, 1) + 1
        with executor._lock:
            counts = executor._counts
            for offset, item in outcome.failures.items():
                if offset not in retried:
                    counts[item.status] += 1
            counts[Status.SUCCEEDED] += len(outcome) - len(outcome.failures)
        self._inbox.put((outcome, retried))


def _batch_error(result: TaskResult, batch: Batch) -> ErrorInfo:
    """What every item of a batch that did not run through gets as its error."""
    what = batch.describe(0) if len(batch.items) == 1 else f"{len(batch.items)} items"
    if result.status is Status.TIMED_OUT:  # on threads, where a batch is one item
        after = (result.reason or "").removeprefix("timed out after ") or "its timeout"
        return ErrorInfo("TimeoutError", f"{what} timed out after {after}; its thread was abandoned "
                                         "(a thread cannot be stopped)")
    if result.status is Status.CANCELLED:
        return ErrorInfo("Cancelled", f"{what}: {result.reason or 'cancelled'}")
    if result.error is not None:
        return ErrorInfo(result.error.type, f"{what}: {result.error.message}", result.error.traceback)
    return ErrorInfo(result.status.value.capitalize(), f"{what}: {result.reason or result.status.value}")


def _partition(
    items: list[Any], how: Partition, weights: Weights | None, parts: int, mode: int
) -> list[tuple[list[int], list[Any]]]:
    """Fixed partitions: (positions, items) for each, at most ``parts`` of them, none empty."""
    parts = max(1, min(parts, len(items)))
    if how == "round_robin":
        chosen = [list(range(k, len(items), parts)) for k in range(parts)]
    else:
        if callable(weights):
            costs = [float(weights(item)) for item in items]
        else:
            costs = [float(cost) for cost in weights or ()]
            if len(costs) != len(items):
                raise ConfigError(f"weights has {len(costs)} entries for {len(items)} items")
        if any(math.isnan(cost) or cost < 0 for cost in costs):
            raise ConfigError("weights must be non-negative numbers")
        # Longest processing time first: the heaviest item goes to the lightest partition.
        loads = [(0.0, k) for k in range(parts)]
        chosen = [[] for _ in range(parts)]
        for position in sorted(range(len(items)), key=lambda p: (-costs[p], p)):
            load, k = heapq.heappop(loads)
            chosen[k].append(position)
            heapq.heappush(loads, (load + costs[position], k))
        chosen = [sorted(positions) for positions in chosen if positions]
    return [(positions, [items[p] for p in positions]) for positions in chosen]


def map(
    fn: Callable[..., Any],
    items: Iterable[Any],
    *,
    max_workers: int | None = None,
    backend: ExecutorBackend = "processes",
    batch_size: int | Literal["auto"] = "auto",
    partition: Partition = "auto",
    weights: Weights | None = None,
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
    sized to about 20 ms of work each (or in fixed ``partition``s: see `Executor.map`);
    each item keeps its own result, timeout and order. The workers are stopped when the
    iterator is exhausted, closed or interrupted.
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
        yield from executor.map(fn, items, ordered=ordered, batch_size=batch_size, partition=partition,
                                weights=weights, as_results=as_results)
        failed = False
    finally:
        executor.shutdown(wait=True, cancel_futures=failed)
