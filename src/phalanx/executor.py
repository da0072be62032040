"""`Executor`: Python callables on the same scheduler as `phalanx run`, from any thread.

::

    caller's thread                     loop thread (one per Executor)
    ---------------                     ------------------------------
    submit(fn, x) ─── call_soon_threadsafe ──> Scheduler (open-ended) ──> ProcessBackend
    Future <──────── set_result / set_exception <── TaskFinished <──────   (warm workers)
    map(fn, items) ── batches (mapper.py) ──> same path; results re-ordered by the reader
    progress() <──── a snapshot the loop publishes after every event

The loop thread owns every piece of run state (the scheduler, the futures waiting for
their tasks, the map runs, the counters); callers reach it only through the loop
(`Executor._call`), and introspection reads what the loop publishes. A Ctrl-C (or any
exception) inside ``with Executor()`` or while iterating `map` cancels what runs, kills the
workers and leaves no process behind.

The scheduler lets go of every finished call and batch (they are submitted unreferable and
results are not kept), so an Executor kept open for hours runs in bounded memory.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import itertools
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from .backends.base import Backend
from .backends.inline import InlineBackend
from .backends.processes import ProcessBackend
from .backends.threads import ThreadBackend
from .errors import ConfigError, RemoteTraceback, TaskError, TaskTimedOut, WorkerCrashed
from .events import Event, Sink, TaskFinished, TaskRetrying
from .model import Graph, RetryPolicy, Task, is_coroutine_action
from .resources import Capacities
from .results import Status, TaskResult
from .scheduler import Scheduler
from .workers import optimal_workers

if TYPE_CHECKING:
    from .mapper import Partition, Weights
    from .sinks.table import TableWriter

ExecutorBackend = Literal["processes", "threads", "dask", "ray"]

#: A listener the loop calls for each event about one task (map batches): the event, and
#: whether it is the task's last.
Listener = Callable[[TaskFinished | TaskRetrying], None]


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


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What the loop publishes for `Executor.progress` and `Executor.is_warmed_up`."""

    submitted: int = 0
    counts: Mapping[Status, int] = field(default_factory=lambda: dict.fromkeys(Status, 0))
    warmed_up: bool = False
    batches: int = 0


class Executor:
    """Run callables on warm workers, through phalanx's scheduler.

    Args:
        max_workers: workers (and scheduler slots); default: `optimal_workers`.
        backend: ``"processes"`` (warm worker processes), ``"threads"``, or a cluster:
            ``"dask"`` (batches run on a Dask cluster's workers, in warm processes there)
            or ``"ray"``; the cluster is ``scheduler``, else the one its environment
            variable names (``PHALANX_DASK_SCHEDULER``, ``PHALANX_RAY_ADDRESS``), else a
            local one started for this executor. ``max_workers`` defaults to its slots.
        start_method: ``"auto"`` (forkserver on Linux), ``"forkserver"``, ``"spawn"``, ``"fork"``.
        initializer, initargs: run once in each worker process (import heavy modules
            there); with threads, once, when the executor starts.
        max_tasks_per_worker: replace a worker process after this many items.
        max_memory_per_worker: replace a worker process whose RSS exceeds this many bytes
            (checked after each batch).
        isolate: fork a fresh child of a warm worker for every item (no state leaks, and a
            process an item starts ends with the item; without it, with the item's worker).
        timeout: default seconds per task or item; over it, the work is stopped (with
            threads it cannot be: the task ends ``timed_out`` and its thread is abandoned).
        retries: default extra attempts for a failed task or item: a count, or a
            `RetryPolicy` with its backoff (retries wait on the scheduler's timers).
        resources: named capacities beyond the worker slots, for tasks submitted with
            `submit_task` that request them (``{"gpu": 1}``); a list of names declares a
            resource's units (``{"gpu": ["0", "1"]}``), each held by one task at a time (a
            thread or ``async def`` task reads its own with `resource_instances`).
        rate_limits: named rate limits (``{"openai": "500/min"}``) for tasks submitted with
            `submit_task` that name them (``Task(..., limiter="openai")``).
        results: a ``.csv`` or ``.jsonl`` file getting one row per call or map item as it
            ends (status, attempts, duration, error, the fields returned); one writer owns
            it, whichever threads submit. ``fsync``: also fsync each row.
        scheduler: with ``backend="dask"`` or ``"ray"``, the cluster to connect to
            (``tcp://HOST:8786``; a Ray ``HOST:6379``).

    ``async def`` functions are accepted too: they run on the executor's own event loop
    (its thread), not in a worker.

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
        retries: int | RetryPolicy = 0,
        resources: Capacities | None = None,
        rate_limits: Mapping[str, Any] | None = None,
        results: str | Path | None = None,
        fsync: bool = False,
        scheduler: str | None = None,
    ) -> None:
        if backend not in ("processes", "threads", "dask", "ray"):
            raise ConfigError(f"backend must be 'processes', 'threads', 'dask' or 'ray', got {backend!r}")
        if backend in ("dask", "ray") and max_memory_per_worker is not None:
            raise ConfigError(f"max_memory_per_worker is not offered with backend={backend!r}")
        if scheduler is not None and backend not in ("dask", "ray"):
            raise ConfigError("scheduler= is for backend='dask' or 'ray'")
        if backend == "threads":
            for name, value in (("isolate", isolate), ("max_tasks_per_worker", max_tasks_per_worker),
                                ("max_memory_per_worker", max_memory_per_worker)):
                if value:
                    raise ConfigError(f"{name} needs backend='processes' (threads share one process)")
            if start_method != "auto":
                raise ConfigError("start_method needs backend='processes'")
        if max_workers is not None and (
            isinstance(max_workers, bool) or not isinstance(max_workers, int) or max_workers < 1
        ):
            raise ConfigError(f"max_workers must be a positive integer or None, got {max_workers!r}")
        opened = None
        if backend in ("dask", "ray"):
            from .remote import CallableOptions

            callables = CallableOptions(isolate, start_method, initializer, tuple(initargs), max_tasks_per_worker)
            opened = _open_cluster(backend, scheduler, max_workers, callables)
            max_workers = max_workers or opened.backend.cluster.slots
        self.max_workers = max_workers or optimal_workers(backend if backend == "threads" else "processes").count
        self.backend_name = backend
        self.isolate = isolate
        self.timeout = check_timeout(timeout)
        self.retry = retry_policy(retries)
        self._backend: Backend
        if opened is not None:
            self._backend = opened.backend
        elif backend == "processes":
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
        from .mapper import PartialBatches

        self._batches_backend = PartialBatches(self._backend)
        self._inline = InlineBackend()  # async def functions run on the loop itself
        from .runner import named_limiters

        limiters = named_limiters(rate_limits, self.max_workers)
        self.rows: TableWriter | None = None
        sinks: list[Sink] = []
        if results is not None:
            from .sinks.table import TableWriter

            self.rows = TableWriter(results, fsync=fsync)
            sinks.append(_CallRows(self, self.rows))  # first: it asks whether a task is a map batch
        sinks.append(_Events(self))
        # Owned by the loop thread: written and read there only.
        self._futures: dict[str, concurrent.futures.Future[Any]] = {}
        self._listeners: dict[str, Listener] = {}
        self._counts = dict.fromkeys(Status, 0)
        self._submitted = 0
        self._batches = 0
        self.maps: set[Any] = set()  # the map runs in progress (mapper.MapRun), on the loop
        # Published by the loop for other threads (replaced whole, never mutated).
        self._snapshot = Snapshot(warmed_up=backend == "threads")
        self._ids = itertools.count(1)  # next() is atomic under the GIL: ids from any thread
        # Only commands write to a run directory, and an Executor runs none: it is never created.
        self._run_dir = Path(tempfile.gettempdir()) / f"phalanx-executor-{id(self):x}"
        self._loop = opened.loop if opened is not None else asyncio.new_event_loop()
        self._scheduler = Scheduler(
            Graph(),
            backend_for=self._backend_for,
            max_workers=self.max_workers,
            capacities=resources,
            sinks=sinks,
            run_dir=self._run_dir,
            open_ended=True,
            keep_results=False,
            limiters=limiters,
        )
        self._closed = threading.Event()
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
            try:
                await self._backend.aclose()
            finally:
                if self.rows is not None:
                    self.rows.close()

    def _backend_for(self, task: Task) -> Backend:
        if task.is_command:
            raise ConfigError(f"task {task.id!r}: an Executor runs callables; use phalanx.run for commands")
        if is_coroutine_action(task.action):
            return self._inline
        return self._batches_backend

    def is_map_task(self, tid: str) -> bool:
        """Whether a task is a map batch (its items get rows of their own) (on the loop)."""
        return tid in self._listeners

    def _on_event(self, event: Event) -> None:
        """Resolve futures and feed map runs as their tasks end or retry (on the loop)."""
        if isinstance(event, TaskFinished | TaskRetrying):
            listener = self._listeners.get(event.task_id)
            if listener is not None:
                if isinstance(event, TaskFinished):
                    del self._listeners[event.task_id]
                listener(event)
            elif isinstance(event, TaskFinished):
                self._resolve(event.result)
        self._publish()

    def _resolve(self, result: TaskResult) -> None:
        future = self._futures.pop(result.task_id, None)
        if future is None:
            return
        self.count(result.status)
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

    def count(self, status: Status, n: int = 1) -> None:
        """Count ended calls and map items (on the loop)."""
        self._counts[status] += n

    def _publish(self) -> None:
        backend = self._backend
        warmed = not isinstance(backend, ProcessBackend) or backend.warmed_up
        self._snapshot = Snapshot(self._submitted, dict(self._counts), warmed, self._batches)

    def submit_on_loop(self, task: Task, listener: Listener, items: int) -> None:
        """Submit a map batch (on the loop): ``listener`` gets its events, ``items`` counts
        towards `progress`'s total."""
        self._scheduler.submit(task, referable=False)
        self._listeners[task.id] = listener
        self._submitted += items
        self._batches += 1

    def cancel_on_loop(self, tid: str) -> bool:
        """Cancel one task (on the loop)."""
        return self._scheduler.cancel_task(tid)

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

    def check_open(self) -> None:
        if self._closed.is_set():
            raise RuntimeError("cannot submit to an Executor after shutdown")

    def next_id(self, prefix: str) -> str:
        return f"{prefix}-{next(self._ids)}"

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> concurrent.futures.Future[Any]:
        """Run ``fn(*args, **kwargs)`` and return a `concurrent.futures.Future` of its value."""
        task = Task(self.next_id("call"), fn, args=args, kwargs=kwargs, timeout=self.timeout, retry=self.retry)
        return self._submit(task, referable=False)

    def submit_task(self, task: Task) -> concurrent.futures.Future[Any]:
        """Submit a `Task` with everything the scheduler offers (deps on earlier task ids,
        priority, resources, retries, timeout); the future gets its value."""
        return self._submit(task, referable=True)

    def _submit(self, task: Task, *, referable: bool) -> concurrent.futures.Future[Any]:
        self.check_open()
        if task.is_command:
            raise ConfigError(f"task {task.id!r}: an Executor runs callables; use phalanx.run for commands")
        if (self.backend_name == "threads" and not isinstance(task.action, _ThreadCall)
                and not is_coroutine_action(task.action)):
            task = dataclasses.replace(task, action=_ThreadCall(task.action))  # type: ignore[arg-type]
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        if referable:
            self._call(self._submit_call, task, future, referable)  # a bad task raises here
        else:
            # A plain call cannot be refused (its id is new, it has no dependencies): hand it
            # to the loop without waiting for it there, so a caller can submit quickly.
            try:
                self._loop.call_soon_threadsafe(self._submit_quietly, task, future)
            except RuntimeError:
                raise RuntimeError("cannot submit to an Executor after shutdown") from None
        future.add_done_callback(lambda f, tid=task.id: self._on_future_done(f, tid))  # type: ignore[misc]
        return future

    def _submit_quietly(self, task: Task, future: concurrent.futures.Future[Any]) -> None:
        try:
            self._submit_call(task, future, False)
        except BaseException as error:  # the executor closed meanwhile
            with contextlib.suppress(concurrent.futures.InvalidStateError):
                future.set_exception(error)

    def _submit_call(self, task: Task, future: concurrent.futures.Future[Any], referable: bool) -> None:
        self._scheduler.submit(task, referable=referable)
        self._futures[task.id] = future
        self._submitted += 1
        self._publish()

    def _on_future_done(self, future: concurrent.futures.Future[Any], tid: str) -> None:
        """A future the caller cancelled stops its task (a no-op once the task has ended)."""
        if future.cancelled() and not self._loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop has just closed: nothing runs any more
                self._loop.call_soon_threadsafe(self._scheduler.cancel_task, tid)

    def map(
        self,
        fn: Callable[..., Any],
        *iterables: Iterable[Any],
        ordered: bool = True,
        timeout: float | None = None,
        retries: int | RetryPolicy | None = None,
        batch_size: int | Literal["auto"] = "auto",
        partition: Partition = "auto",
        weights: Weights | None = None,
        as_results: bool = False,
        star: bool = False,
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
            retries: extra attempts for a failed item (default: the executor's); only the
                failed items of a batch run again, after the policy's backoff.
            star: each item is an argument tuple, ``fn(*item)`` (what `starmap` does).

        The work starts at once; later batches are sent as results are read (at most two
        batches per worker ahead of the reader), and the scheduler lets go of each batch
        once it is read, so an endless input runs in bounded memory.
        """
        from .mapper import MapRun

        self.check_open()
        run = MapRun(
            self, fn, iterables,
            ordered=ordered,
            timeout=self.timeout if timeout is None else check_timeout(timeout),
            retry=self.retry if retries is None else retry_policy(retries),
            batch_size=batch_size,
            partition=partition,
            weights=weights,
            star=star,
        )
        run.start()
        return run.results(as_results)

    def starmap(
        self,
        fn: Callable[..., Any],
        iterable: Iterable[Iterable[Any]],
        **options: Any,
    ) -> Iterator[Any]:
        """`map` with each item an argument tuple: ``fn(*item)``, like `itertools.starmap`."""
        return self.map(fn, iterable, star=True, **options)

    @staticmethod
    def as_completed(futures: Iterable[concurrent.futures.Future[Any]]) -> Iterator[concurrent.futures.Future[Any]]:
        """The futures as they complete (`concurrent.futures.as_completed`)."""
        return concurrent.futures.as_completed(list(futures))

    def cancel_all(self) -> int:
        """Cancel every task and map item that has not ended (running ones are stopped);
        returns how many tasks (map batches count one each) were cancelled."""
        if self._thread.is_alive():
            with contextlib.suppress(RuntimeError):  # stopped meanwhile: nothing left to cancel
                return int(self._call(self._cancel_everything))
        return 0

    def _cancel_everything(self) -> int:
        cancelled = 0
        for run in list(self.maps):
            run.stop_reading()  # no more input is read, no retry is sent
        for tid, future in list(self._futures.items()):
            cancelled += self._scheduler.cancel_task(tid)
            future.cancel()  # at once: a running task's end (its worker killed) comes later
        for tid in list(self._listeners):
            cancelled += self._scheduler.cancel_task(tid)
        return cancelled

    @property
    def is_running(self) -> bool:
        """Whether any submitted task or map item has not ended yet."""
        snapshot = self._snapshot
        return snapshot.submitted > sum(snapshot.counts.values())

    @property
    def is_warmed_up(self) -> bool:
        """Whether every worker process has started and run the initializer."""
        return self._snapshot.warmed_up

    def warm_up(self) -> None:
        """Start every worker now rather than on first use (raises if one cannot start)."""
        if isinstance(self._backend, ProcessBackend):
            backend = self._backend

            async def warm() -> None:
                await backend.warm_up()
                self._publish()

            asyncio.run_coroutine_threadsafe(warm(), self._loop).result()

    def worker_pids(self) -> list[int]:
        """The pids of the worker processes alive now (none with threads)."""
        backend = self._backend
        return list(self._call(backend.worker_pids)) if isinstance(backend, ProcessBackend) else []

    def stats(self) -> dict[str, int]:
        """Counters: ``batches`` (map batches sent, retries not included), ``workers_started``
        (worker processes started, replacements included), ``abandoned_threads`` (thread
        tasks given up on after a timeout or cancellation while their thread ran on)."""
        return dict(self._call(self._stats))

    def _stats(self) -> dict[str, int]:
        backend = self._backend
        return {
            "batches": self._batches,
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
        import os

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
        snapshot = self._snapshot
        completed = sum(snapshot.counts.values())
        return {"completed": completed, "total": snapshot.submitted, "running": snapshot.submitted - completed,
                "counts": {status.value: n for status, n in snapshot.counts.items()}}

    def held_tasks(self) -> int:
        """How many tasks the scheduler holds state for now (bounded in an open run)."""
        return int(self._call(self._scheduler.held))

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop taking tasks; with ``cancel_futures`` cancel what has not ended; with
        ``wait`` block until everything has ended and every worker is gone."""
        if not self._closed.is_set():
            if cancel_futures:
                self.cancel_all()
            self._closed.set()
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


class _CallRows:
    """The results file's sink: a row for each call that ends (map items get theirs from the
    map run, a row an item)."""

    def __init__(self, executor: Executor, writer: TableWriter) -> None:
        from .sinks.table import TableSink

        self._executor = executor
        self._sink = TableSink(writer, id_column="task")

    def handle(self, event: Event) -> None:
        if isinstance(event, TaskFinished) and self._executor.is_map_task(event.task_id):
            return
        self._sink.handle(event)

    def close(self) -> None:
        return None  # the executor closes the file once its loop has ended


class _Events:
    """The executor's sink: hands every event to the loop-side state (on the loop)."""

    def __init__(self, executor: Executor) -> None:
        self._executor = executor

    def handle(self, event: Event) -> None:
        self._executor._on_event(event)

    def close(self) -> None:
        return None


def check_timeout(timeout: float | None) -> float | None:
    """A per-task timeout in seconds; ``0`` or None means none."""
    if timeout is None or timeout == 0:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout < 0:
        raise ConfigError(f"timeout must be a non-negative number of seconds, got {timeout!r}")
    return float(timeout)


def retry_policy(retries: int | RetryPolicy) -> RetryPolicy:
    """``retries=N`` (N more attempts, at once) or a full `RetryPolicy` (with backoff)."""
    if isinstance(retries, RetryPolicy):
        return retries
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise ConfigError(f"retries must be a non-negative integer or a RetryPolicy, got {retries!r}")
    return RetryPolicy(count=retries)


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



@dataclass
class _OpenedCluster:
    backend: Any  # the ClusterBackend
    loop: asyncio.AbstractEventLoop


def _open_cluster(engine: str, address: str | None, max_workers: int | None, callables: Any) -> Any:
    """The cluster backend of an Executor, opened on the loop its thread will run: on a
    thread of its own here, so that a caller inside a running event loop can make one."""
    from .backends.cluster import open_cluster_backend

    loop = asyncio.new_event_loop()
    outcome: list[Any] = []

    def open_it() -> None:
        try:
            outcome.append(loop.run_until_complete(
                open_cluster_backend(engine, address, (), max_workers=max_workers, callables=callables)))
        except BaseException as error:
            outcome.append(error)

    thread = threading.Thread(target=open_it, name="phalanx-cluster-start")
    thread.start()
    thread.join()
    if isinstance(outcome[0], BaseException):
        loop.close()
        raise outcome[0]
    return _OpenedCluster(outcome[0], loop)
