"""`phalanx.map` and `Executor.map`: items in batches over an `Executor`, results in order.

::

    reader's thread                              loop thread
    ---------------                              -----------
    input ──> batches sized to ~20 ms ──submit──> Scheduler ──> backend (a Batch per task)
      ^           (at most 2 per worker ahead)        │  TaskRetrying: the items that succeeded
      │                                               │  TaskFinished: the batch's last word
    yield <── re-ordered by position <── inbox <──────┘

A map sends its items in batches (one scheduler task each). A batch's results come back
as a `BatchResult` (flat lists of values and durations; an `ItemResult` only for an item
that did not succeed). Retries are the scheduler's: a batch with failed items reports a
failed attempt whose retry runs only those items, after the policy's backoff; the items
that succeeded are handed over at once (`TaskRetrying.value`). The reader puts results in
order and yields them; a batch that succeeded whole is yielded with ``yield from`` over its
values: the success path makes no object per item.

State is split by thread: the reader owns the input, the batch sizes and the count of
batches in flight; the loop owns the listeners and the batches it is running. They meet
only in the inbox queue.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import math
import os
import queue
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

from .backends.base import Attempt, Backend, Outcome
from .backends.batch import ONE, STAR, Batch, BatchResult, ItemResult, function_key
from .errors import ConfigError
from .events import TaskFinished, TaskRetrying
from .executor import Executor, ExecutorBackend, check_timeout, raise_for, retry_policy
from .model import RetryPolicy, Task
from .results import ErrorInfo, Status, TaskResult

Partition = Literal["auto", "round_robin", "weighted"]
Weights = Callable[[Any], float] | Sequence[float]

#: What an automatic batch aims at: enough work to make its overhead negligible, little
#: enough that the workers stay balanced to the end (joblib aims at 0.2-2 s; items here
#: keep their own results and timeouts, so smaller batches cost little).
TARGET_BATCH_SECONDS = 0.02

#: The largest automatic batch.
MAX_BATCH = 100_000

#: A batch's fixed cost (its time beyond its items' own: shipping, queueing, a cluster's
#: round trip) is kept to a tenth of it at most: where that cost is large (Dask: tens of
#: milliseconds a task) batches aim at ten times it rather than at `TARGET_BATCH_SECONDS`.
OVERHEAD_SHARE = 0.1

#: Batches kept in flight per worker, so that no worker waits for its next batch.
BATCHES_PER_WORKER = 2


class _Delivery:
    """What the loop hands the reader: a batch's items that are final, and whether more of
    the same batch will follow (after a retry)."""

    __slots__ = ("attempts", "final", "overhead", "result", "retried", "seconds_per_item")

    def __init__(self, result: BatchResult, retried: frozenset[int], attempts: int, final: bool,
                 seconds_per_item: float | None, overhead: float = 0.0) -> None:
        self.result = result
        self.retried = retried  # offsets that run again: not final here
        self.attempts = attempts
        self.final = final
        self.seconds_per_item = seconds_per_item
        self.overhead = overhead  # seconds of the batch's time not spent in its items


class PartialBatches:
    """Wraps the executor's backend for batches: a batch whose items did not all succeed is a
    failed attempt whose ``retry_action`` is a batch of just those items, so the scheduler's
    retry policy (and backoff) decides whether they run again. It decides nothing itself."""

    def __init__(self, inner: Backend) -> None:
        self._inner = inner

    async def run(self, attempt: Attempt) -> Outcome:
        outcome = await self._inner.run(attempt)
        batch = attempt.task.action
        value = outcome.value
        if not (outcome.ok and isinstance(batch, Batch) and isinstance(value, BatchResult) and value.failures):
            return outcome
        again = _retryable(value)
        if not again:
            return outcome
        retry = replace(batch, items=[batch.items[offset] for offset in again],
                        positions=[batch.where[offset] for offset in again])
        return replace(outcome, ok=False, reason=f"{len(again)} of {len(value)} items failed", retry_action=retry)

    def stopped_outcome(self, attempt: Attempt) -> Outcome | None:
        return self._inner.stopped_outcome(attempt)

    async def aclose(self) -> None:
        await self._inner.aclose()


def _retryable(result: BatchResult) -> list[int]:
    return sorted(offset for offset, item in result.failures.items() if item.status is not Status.CANCELLED)


class MapRun:
    """One `Executor.map`: batches out, results back in order, sizes adapted as it goes."""

    def __init__(
        self,
        executor: Executor,
        fn: Callable[..., Any],
        iterables: tuple[Iterable[Any], ...],
        *,
        ordered: bool,
        timeout: float | None,
        retry: RetryPolicy,
        batch_size: int | Literal["auto"],
        partition: Partition,
        weights: Weights | None,
        star: bool = False,
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
        self._executor = executor
        self._fn = fn
        threads = executor.backend_name == "threads"
        self._key = "" if threads else function_key(fn)[0]
        if star and len(iterables) != 1:
            raise TypeError("starmap() takes one iterable of argument tuples")
        self._mode = STAR if star or len(iterables) > 1 else ONE
        try:
            self._total: int | None = min(len(it) for it in iterables)  # type: ignore[arg-type]
        except TypeError:
            self._total = None
        self._source: Iterator[Any] = iter(iterables[0]) if len(iterables) == 1 else zip(*iterables, strict=False)
        self._ordered = ordered
        # Threads cannot be stopped: a timeout there is the scheduler's, per task, so one item a task.
        self._task_timeout = timeout if threads else None
        self._item_timeout = None if threads else timeout
        self._retry = retry
        self._fixed = None if batch_size == "auto" or self._task_timeout is not None else int(batch_size)
        self._partitions: list[tuple[list[int], list[Any]]] | None = None
        if partition != "auto":
            if self._task_timeout is not None:
                raise ConfigError("fixed partitions and a timeout do not mix on threads (one item a task there)")
            self._partitions = _partition(list(self._source), partition, weights, executor.max_workers, self._mode)
        self._inbox: queue.SimpleQueue[_Delivery] = queue.SimpleQueue()
        self._stopped = threading.Event()  # set from any thread: read no more input
        # The reader's own state.
        self._in_flight = 0  # batches submitted whose last delivery the reader has not taken
        self._pulled = 0  # items read from the input so far
        self._exhausted = False
        self._per_item: float | None = None  # seconds per item, batch overhead included
        self._overhead = 0.0  # a batch's fixed cost, seconds (see OVERHEAD_SHARE)
        self._batch_numbers = itertools.count(1)
        self._map_id = executor.next_id("map")
        # The loop's own state: the batches running, by task id.
        self._live: dict[str, Batch] = {}

    # ------------------------------------------------------------ reader side

    def start(self) -> None:
        self._executor._call(self._executor.maps.add, self)
        try:
            self._fill()
        except BaseException:  # the input raised, or the executor is shutting down
            self.cancel()
            raise

    def stop_reading(self) -> None:
        self._stopped.set()

    def results(self, as_results: bool) -> Iterator[Any]:
        ready_batches: dict[int, BatchResult] = {}  # contiguous batches by first position
        ready_items: dict[int, tuple[ItemResult, int | None, int]] = {}
        next_index = 0
        try:
            while True:
                self._fill()
                if not self._in_flight:
                    break
                delivery = self._wait()
                if delivery.final:
                    self._in_flight -= 1
                if delivery.seconds_per_item is not None:
                    measured = delivery.seconds_per_item
                    self._per_item = measured if self._per_item is None else (self._per_item + measured) / 2
                    self._overhead = (self._overhead + delivery.overhead) / 2 if self._overhead else delivery.overhead
                batch_result, retried, attempts = delivery.result, delivery.retried, delivery.attempts
                positions = batch_result.positions
                contiguous = (isinstance(positions, range) and positions.step == 1 and not retried
                              and attempts == 1)
                if not self._ordered:
                    if contiguous:
                        yield from self._deliver_batch(batch_result, as_results)
                    else:
                        worker = batch_result.worker
                        for offset in range(len(batch_result)):
                            if offset not in retried:
                                yield self._deliver(batch_result.item(offset), worker, attempts, as_results)
                    continue
                if contiguous:
                    if len(batch_result):
                        ready_batches[positions[0]] = batch_result
                else:
                    for offset in range(len(batch_result)):
                        if offset not in retried:
                            entry = (batch_result.item(offset), batch_result.worker, attempts)
                            ready_items[positions[offset]] = entry
                while True:
                    ready = ready_batches.pop(next_index, None)
                    if ready is not None:
                        next_index += len(ready)
                        yield from self._deliver_batch(ready, as_results)
                        continue
                    item_entry = ready_items.pop(next_index, None)
                    if item_entry is None:
                        break
                    next_index += 1
                    yield self._deliver(*item_entry, as_results)
        except BaseException:
            self.cancel()
            raise
        finally:
            executor = self._executor
            if executor._thread.is_alive():
                with contextlib.suppress(RuntimeError):  # the executor stopped meanwhile
                    executor._call(executor.maps.discard, self)

    def cancel(self) -> None:
        """Stop this map: read no more input, cancel its batches in flight."""
        self._stopped.set()
        executor = self._executor
        if executor._thread.is_alive():
            with contextlib.suppress(RuntimeError):  # the executor stopped meanwhile: nothing runs
                executor._call(self._cancel_batches)

    def _deliver_batch(self, batch: BatchResult, as_results: bool) -> Iterator[Any]:
        if not as_results and not batch.failures:
            return iter(batch.values)  # the fast path: no object per item
        return (self._deliver(batch.item(offset), batch.worker, 1, as_results) for offset in range(len(batch)))

    def _deliver(self, item: ItemResult, worker: int | None, attempts: int, as_results: bool) -> Any:
        if item.status is Status.SUCCEEDED and not as_results:
            return item.value
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

    def _wait(self) -> _Delivery:
        while True:
            try:
                return self._inbox.get(timeout=0.1)  # a short wait keeps Ctrl-C responsive
            except queue.Empty:
                if not self._executor._thread.is_alive():
                    raise RuntimeError("the executor's loop thread has stopped") from None

    def _fill(self) -> None:
        """Keep `BATCHES_PER_WORKER` batches per worker in flight (sent in one go: fixed
        partitions then start together, each on a worker of its own when all are free)."""
        if self._exhausted or self._stopped.is_set():
            return
        room = BATCHES_PER_WORKER * self._executor.max_workers - self._in_flight
        if room <= 0:
            return
        chunks: list[tuple[Sequence[int], list[Any]]] = []
        if self._partitions is not None:
            chunks = list(self._partitions)
            self._partitions = None
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
            self._submit(chunks)

    def _next_size(self) -> int:
        if self._fixed is not None:
            return self._fixed
        if self._task_timeout is not None or self._per_item is None:
            return 1  # probe first: one item a batch until a duration is measured
        target = max(TARGET_BATCH_SECONDS, self._overhead / OVERHEAD_SHARE)
        size = min(int(target / max(self._per_item, 1e-7)), MAX_BATCH)
        if self._total is not None:
            # Guided: never more than a share of what is left, so the end stays balanced.
            share = (self._total - self._pulled) / (BATCHES_PER_WORKER * self._executor.max_workers)
            size = min(size, math.ceil(share))
        return max(1, size)

    def _submit(self, chunks: list[tuple[Sequence[int], list[Any]]]) -> None:
        executor = self._executor
        tasks = []
        for positions, items in chunks:
            batch = Batch(self._fn, items, positions=positions, mode=self._mode, fn_key=self._key,
                          isolate=executor.isolate, item_timeout=self._item_timeout)
            tasks.append(Task(f"{self._map_id}-batch-{next(self._batch_numbers)}", batch, timeout=self._task_timeout,
                              retry=self._retry))
        sent = int(executor._call(self._submit_on_loop, tasks))
        self._in_flight += sent
        if sent < len(tasks):
            raise RuntimeError("cannot submit to an Executor after shutdown")

    # ------------------------------------------------------------ loop side

    def _submit_on_loop(self, tasks: list[Task]) -> int:
        """Submit batches (on the loop); returns how many were taken (a closing executor refuses)."""
        executor = self._executor
        for sent, task in enumerate(tasks):
            if self._stopped.is_set():
                return sent
            try:
                executor.submit_on_loop(task, self._on_event, len(task.action.items))  # type: ignore[union-attr]
            except Exception:
                return sent
            self._live[task.id] = task.action  # type: ignore[assignment]
        return len(tasks)

    def _cancel_batches(self) -> None:
        for tid in list(self._live):
            self._executor.cancel_on_loop(tid)

    def _on_event(self, event: TaskFinished | TaskRetrying) -> None:
        """A batch attempt ended (on the loop): count its final items, hand them to the reader."""
        executor = self._executor
        if isinstance(event, TaskRetrying):
            partial = event.value
            if not isinstance(partial, BatchResult):
                return  # the whole batch runs again (on threads, a timed-out item)
            retried = frozenset(_retryable(partial))
            if executor.rows is not None:
                self._write_rows(self._live[event.task_id], partial, event.attempt, skip=retried)
            executor.count(Status.SUCCEEDED, len(partial) - len(partial.failures))
            for offset, item in partial.failures.items():
                if offset not in retried:
                    executor.count(item.status)
            self._inbox.put(_Delivery(partial, retried, event.attempt, False, None))
            return
        result = event.result
        batch = self._live.pop(result.task_id)
        value = result.value
        per_item = None
        overhead = 0.0
        if isinstance(value, BatchResult):
            outcome = value
            if len(outcome) and not outcome.failures and result.attempts == 1:
                per_item = result.duration / len(outcome)
                overhead = max(0.0, result.duration - sum(outcome.durations))
        else:  # the batch as a whole did not run through (cancelled, timed out on threads, no worker)
            outcome = BatchResult.all_failed(batch.where, result.status, _batch_error(result, batch))
        outcome.worker = result.worker
        if executor.rows is not None:
            self._write_rows(batch, outcome, result.attempts)
        executor.count(Status.SUCCEEDED, len(outcome) - len(outcome.failures))
        for item in outcome.failures.values():
            executor.count(item.status)
        self._inbox.put(_Delivery(outcome, frozenset(), result.attempts, True, per_item, overhead))

    def _write_rows(self, batch: Batch, outcome: BatchResult, attempts: int,
                    skip: frozenset[int] = frozenset()) -> None:
        """A results row for each item of ``outcome`` that is final (on the loop)."""
        from .sinks.table import result_row

        writer = self._executor.rows
        assert writer is not None
        offset_of = {position: offset for offset, position in enumerate(batch.where)}
        positions = outcome.positions
        for offset in range(len(outcome)):
            if offset in skip:
                continue
            result = self._deliver(outcome.item(offset), outcome.worker, attempts, True)
            value = result.value
            if isinstance(value, Mapping) and all(isinstance(key, str) for key in value):
                result = replace(result, data=value)
            item = batch.items[offset_of[positions[offset]]]
            writer.write(result_row(result, item_columns(item), id_column=None))


def item_columns(item: Any) -> dict[str, Any]:
    """An item's columns in a results row: its own when it is a row (a mapping), else ``item``."""
    if isinstance(item, Mapping):
        return {str(name): value for name, value in item.items()}
    return {"item": item}


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
    *iterables: Iterable[Any],
    max_workers: int | None = None,
    backend: ExecutorBackend = "processes",
    batch_size: int | Literal["auto"] = "auto",
    partition: Partition = "auto",
    weights: Weights | None = None,
    ordered: bool = True,
    timeout: float | None = None,
    retries: int | RetryPolicy = 0,
    initializer: Callable[..., Any] | None = None,
    initargs: tuple[Any, ...] = (),
    isolate: bool = False,
    start_method: str = "auto",
    max_tasks_per_worker: int | None = None,
    max_memory_per_worker: int | None = None,
    as_results: bool = False,
    results: str | Path | None = None,
    fsync: bool = False,
    scheduler: str | None = None,
) -> Iterator[Any]:
    """``fn`` over ``iterables`` on warm workers, like the built-in ``map`` but in parallel.

    With several iterables, ``fn`` takes one argument from each (``phalanx.map(pow, a, b)``),
    stopping at the shortest. Values come as they are ready, in input order when
    ``ordered``; a failed item raises its exception where its value would be
    (``TaskTimedOut`` for a timeout, ``WorkerCrashed`` when its worker died), like the
    built-in. With ``as_results=True`` it yields each item's `TaskResult` instead and never
    raises for an item. Items are sent in batches sized to about 20 ms of work each (or in
    fixed ``partition``s: see `Executor.map`); each item keeps its own result, timeout and
    order. ``retries`` is a count of extra attempts or a `RetryPolicy` with backoff: a
    failed item runs again after the scheduler's backoff. The workers start on the first
    ``next()`` and stop when the iterator is exhausted, closed or interrupted.

    ``results`` names a ``.csv`` or ``.jsonl`` file that gets one row per item as it ends:
    the item's columns (a mapping, such as a CSV row) or ``item``, then ``status``,
    ``attempts``, ``duration``, ``error``, then the fields ``fn`` returned (a dict);
    ``fsync=True`` also fsyncs each row.

    ``backend="dask"`` (or ``"ray"``) runs the batches on a cluster's workers, in warm
    processes there, with the same per-item results; ``scheduler`` names the cluster (else
    one is started for the map). See `Executor`.

    Raises:
        ConfigError: an option is invalid (named in the message), at the call, before
            anything starts.
        TypeError: ``fn`` is not callable, or there is no iterable.
    """
    return _map(fn, iterables, False, locals())


def starmap(
    fn: Callable[..., Any],
    iterable: Iterable[Iterable[Any]],
    *,
    max_workers: int | None = None,
    backend: ExecutorBackend = "processes",
    batch_size: int | Literal["auto"] = "auto",
    partition: Partition = "auto",
    weights: Weights | None = None,
    ordered: bool = True,
    timeout: float | None = None,
    retries: int | RetryPolicy = 0,
    initializer: Callable[..., Any] | None = None,
    initargs: tuple[Any, ...] = (),
    isolate: bool = False,
    start_method: str = "auto",
    max_tasks_per_worker: int | None = None,
    max_memory_per_worker: int | None = None,
    as_results: bool = False,
    results: str | Path | None = None,
    fsync: bool = False,
    scheduler: str | None = None,
) -> Iterator[Any]:
    """`map` with each item an argument tuple, ``fn(*item)``, like `itertools.starmap`."""
    return _map(fn, (iterable,), True, locals())


_EXECUTOR_OPTIONS = ("max_workers", "backend", "start_method", "initializer", "initargs", "max_tasks_per_worker",
                     "max_memory_per_worker", "isolate", "timeout", "retries", "results", "fsync", "scheduler")
_MAP_OPTIONS = ("ordered", "batch_size", "partition", "weights", "as_results")


def _map(fn: Callable[..., Any], iterables: tuple[Iterable[Any], ...], star: bool,
         options: dict[str, Any]) -> Iterator[Any]:
    """Check every option now (a generator would check them only at the first ``next()``),
    then return the generator that starts the workers."""
    if not callable(fn):
        raise TypeError(f"map() needs a callable, got {fn!r}")
    if not iterables:
        raise TypeError("map() needs at least one iterable")
    executor_options = {name: options[name] for name in _EXECUTOR_OPTIONS}
    map_options = {name: options[name] for name in _MAP_OPTIONS}
    check_options(**executor_options, **map_options)
    return _generate(fn, iterables, star, executor_options, map_options)


def _generate(fn: Callable[..., Any], iterables: tuple[Iterable[Any], ...], star: bool,
              executor_options: dict[str, Any], map_options: dict[str, Any]) -> Iterator[Any]:
    executor = Executor(**executor_options)
    failed = True
    try:
        yield from executor.map(fn, *iterables, star=star, **map_options)
        failed = False
    finally:
        executor.shutdown(wait=True, cancel_futures=failed)


def check_options(
    *,
    max_workers: Any = None,
    backend: Any = "processes",
    start_method: Any = "auto",
    initializer: Any = None,
    initargs: Any = (),
    max_tasks_per_worker: Any = None,
    max_memory_per_worker: Any = None,
    isolate: Any = False,
    timeout: Any = None,
    retries: Any = 0,
    ordered: Any = True,
    batch_size: Any = "auto",
    partition: Any = "auto",
    weights: Any = None,
    as_results: Any = False,
    results: Any = None,
    fsync: Any = False,
    scheduler: Any = None,
) -> None:
    """Refuse a bad option with a message that names it (the same checks `Executor` makes)."""
    def positive_int(name: str, value: Any, *, optional: bool) -> None:
        if value is None and optional:
            return
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            what = "a positive integer or None" if optional else "a positive integer"
            raise ConfigError(f"{name} must be {what}, got {value!r}")

    positive_int("max_workers", max_workers, optional=True)
    positive_int("max_tasks_per_worker", max_tasks_per_worker, optional=True)
    positive_int("max_memory_per_worker", max_memory_per_worker, optional=True)
    if backend not in ("processes", "threads", "dask", "ray"):
        raise ConfigError(f"backend must be 'processes', 'threads', 'dask' or 'ray', got {backend!r}")
    if not isinstance(start_method, str):
        raise ConfigError(f"start_method must be a string, got {start_method!r}")
    if initializer is not None and not callable(initializer):
        raise ConfigError(f"initializer must be callable, got {initializer!r}")
    if not isinstance(initargs, tuple):
        raise ConfigError(f"initargs must be a tuple, got {initargs!r}")
    check_timeout(timeout)
    retry_policy(retries)
    if batch_size != "auto":
        positive_int("batch_size", batch_size, optional=False)
    if partition not in ("auto", "round_robin", "weighted"):
        raise ConfigError(f"partition must be 'auto', 'round_robin' or 'weighted', got {partition!r}")
    if results is not None and not isinstance(results, str | os.PathLike):
        raise ConfigError(f"results must be a file name (.csv or .jsonl), got {results!r}")
    for name, value in (("ordered", ordered), ("isolate", isolate), ("as_results", as_results), ("fsync", fsync)):
        if not isinstance(value, bool):
            raise ConfigError(f"{name} must be True or False, got {value!r}")
