"""`phalanx.amap`: a coroutine (or callable) over many items, on the caller's own event loop.

::

    caller's loop (one loop: an aiohttp or httpx client is bound to it)
    ───────────────────────────────────────────────────────────────────
    items ──> Task per item (at most `LOOKAHEAD` ahead) ──> Scheduler (open-ended)
                                                              │ rate limits, retries,
    async for <── (re-ordered if asked) <── queue <── sinks <─┘ timeouts, fail-fast
                                          results file (one row per item as it ends)

A coroutine function runs on the loop itself (the inline backend); a plain callable goes to
threads or worker processes. Everything a run needs is made when iteration starts and
released when it ends, however it ends (exhausted, ``break``, an exception, cancellation):
the scheduler is stopped, the shared client closed, the results file closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import itertools
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from .backends.base import Backend
from .backends.inline import InlineBackend
from .errors import ConfigError
from .events import Event, Sink, TaskFinished
from .executor import check_timeout, raise_for
from .mapper import item_columns
from .model import RetryPolicy, Task, is_coroutine_action
from .ratelimit import Limiters, Rate, RateLimit
from .results import CancelReason, Status, TaskResult
from .scheduler import Scheduler
from .session import make_run_dir

#: How many tasks per slot are submitted ahead of the results read (ready or waiting for a
#: rate limit): enough that items on other limiter keys are not stuck behind one slow key,
#: few enough that an endless input runs in bounded memory.
LOOKAHEAD = 4

#: What ``retries=N`` means for API calls: exponential backoff from 1 s, full jitter, at most
#: a minute between tries (immediate retries would hit a struggling server again at once).
API_BACKOFF = {"backoff": "exponential", "initial": 1.0, "max": 60.0, "jitter": 1.0}

RateSpec = str | Rate | RateLimit
Rates = RateSpec | Sequence[RateSpec] | Mapping[str, RateSpec]
CallableBackend = Literal["threads", "processes"]


def amap(
    fn: Callable[..., Any],
    items: Iterable[Any] | AsyncIterable[Any],
    *,
    max_workers: int | None = None,
    rate: Rates | None = None,
    key: Callable[[Any], str] | None = None,
    cost: Callable[[Any], float] | None = None,
    adaptive: bool = False,
    retries: int | RetryPolicy = 0,
    timeout: float | None = None,
    ordered: bool = False,
    as_results: bool = False,
    client: Callable[[], Any] | None = None,
    results: str | Path | None = None,
    fsync: bool = False,
    fail_fast: bool = False,
    on_event: Callable[[Event], Any] | None = None,
    backend: CallableBackend = "threads",
) -> AsyncIterator[Any]:
    """``fn`` over ``items`` with at most ``max_workers`` at once; results as they finish.

    ``async for value in phalanx.amap(fetch, urls, max_workers=50, rate="20/s"): ...``

    Args:
        fn: an ``async def`` function (run on this loop) or a plain callable (sent to
            ``backend``); called as ``fn(item)``, or ``fn(item, client)`` with ``client=``.
        items: any iterable or async iterable; read as the run goes, never all at once.
        max_workers: how many run at once (default 100: they mostly wait on the network).
        rate: a rate limit every item is paced by: a spec such as ``"50/s"`` or
            ``"500/min"``, a `RateLimit` (``RateLimit("90000/min", weighted=True)`` for
            tokens per minute), a list of them, or a mapping of names to them. A fresh
            limit never bursts: at 50/s the first request goes now, the next 20 ms later.
        key: the limiter key of an item (a provider, a model): each key has its own rates,
            its own Retry-After pause and its own adaptive window.
        cost: what an item costs the weighted limits (its tokens); 1 if not given.
        adaptive: AIMD concurrency per key: the window grows by one per window of
            successes and halves on a 429, a 503 or a timeout, within [1, max_workers].
        retries: extra attempts for a failed item: a count (exponential backoff from 1 s
            with full jitter, at most 60 s apart) or a `RetryPolicy`. HTTP 408, 429 and 5xx,
            timeouts and connection errors are retried, other 4xx are not; a Retry-After is
            waited out (up to the policy's ``max_retry_after``) by every item on its key.
        timeout: seconds per attempt (0 or None: none); a coroutine over it is cancelled.
        ordered: yield in input order rather than as results finish.
        as_results: yield every item's `TaskResult` (failures included, nothing raised).
            Otherwise a failed item raises its exception where its value would be.
        client: makes the one client every call shares (``aiohttp.ClientSession``,
            ``httpx.AsyncClient``, or any factory, sync or async). Called once when the
            run starts; its result is ``fn``'s second argument; closed when the run ends,
            also when it fails (``async with`` if it is an async context manager, else its
            ``aclose()`` or ``close()``).
        results: a ``.csv`` or ``.jsonl`` file getting one row per item as it finishes:
            the item's own columns (a mapping, such as a CSV row) or ``item``, then
            ``status``, ``attempts``, ``duration``, ``error``, then the fields ``fn``
            returned (a dict). Each row is flushed before the next.
        fsync: also fsync each row (survives a power cut, not just a crash).
        fail_fast: the first item that fails for good cancels the rest. Otherwise a
            failure never cancels its siblings.
        on_event: called with every `Event` (starts, retries, pauses, window changes).
        backend: where a plain (not ``async``) callable runs: ``"threads"`` or ``"processes"``.

    Raises:
        ConfigError: an option is invalid (named in the message), at the call.
    """
    if not callable(fn):
        raise TypeError(f"amap() needs a callable, got {fn!r}")
    if not isinstance(items, Iterable | AsyncIterable):
        raise TypeError(f"amap() needs an iterable or an async iterable of items, got {type(items).__name__}")
    if max_workers is not None and (isinstance(max_workers, bool) or not isinstance(max_workers, int)
                                    or max_workers < 1):
        raise ConfigError(f"max_workers must be a positive integer or None, got {max_workers!r}")
    if backend not in ("threads", "processes"):
        raise ConfigError(f"backend must be 'threads' or 'processes', got {backend!r}")
    in_processes = backend == "processes" and not is_coroutine_action(fn)
    # Coroutines mostly wait on the network (100 is also aiohttp's and httpx's pool size);
    # worker processes are one per CPU.
    workers = max_workers or (_cpus() if in_processes else 100)
    for name, value in (("ordered", ordered), ("as_results", as_results), ("adaptive", adaptive),
                        ("fsync", fsync), ("fail_fast", fail_fast)):
        if not isinstance(value, bool):
            raise ConfigError(f"{name} must be True or False, got {value!r}")
    for name, function in (("key", key), ("cost", cost), ("client", client), ("on_event", on_event)):
        if function is not None and not callable(function):
            raise ConfigError(f"{name} must be callable, got {function!r}")
    limits = rate_limits(rate, adaptive=adaptive)
    if cost is not None and not any(limit.weighted for limit in limits.values()):
        raise ConfigError("cost= is charged to weighted rate limits: add one, e.g. "
                          "rate=[\"50/s\", RateLimit(\"90000/min\", weighted=True)]")
    plan = _Plan(
        fn=fn, items=items, workers=workers, limits=limits, key=key, cost=cost,
        retry=api_retry_policy(retries), timeout=check_timeout(timeout), ordered=ordered,
        as_results=as_results, client=client, results=results, fsync=fsync, fail_fast=fail_fast,
        on_event=on_event, backend=backend,
    )
    return _generate(plan)


def rate_limits(rate: Rates | None, *, adaptive: bool = False) -> dict[str, RateLimit]:
    """Named limits from what ``rate=`` accepts; with ``adaptive``, each is adaptive (and
    with no rate at all, adaptive concurrency alone is one limit of its own)."""
    named: dict[str, RateLimit] = {}
    if rate is None:
        specs: list[tuple[str, RateSpec]] = []
    elif isinstance(rate, str | Rate | RateLimit):
        specs = [("rate", rate)]
    elif isinstance(rate, Mapping):
        specs = [(str(name), spec) for name, spec in rate.items()]
    elif isinstance(rate, Sequence):
        specs = [(f"rate{index or ''}", spec) for index, spec in enumerate(rate)]
    else:
        raise ConfigError(f"rate must be a spec such as '50/s', a RateLimit, or a list of them, got {rate!r}")
    for name, spec in specs:
        limit = RateLimit.of(spec, what=f"rate {name!r}" if len(specs) > 1 else "rate")
        if adaptive and not limit.adaptive:
            limit = RateLimit(limit.rate, burst=limit.burst, weighted=limit.weighted, adaptive=True,
                              max_window=limit.max_window)
        named[name] = limit
    if not named:
        # No rate: still one limit, whose rate never binds, so that a Retry-After pauses every
        # item on its key (and, with adaptive, so that the window has a limit to live in).
        named["calls"] = RateLimit(_UNBOUNDED, burst=_UNBOUNDED.limit, adaptive=adaptive)
    return named


#: A rate no run reaches (a trillion a second): limits that exist only for their pauses and windows.
_UNBOUNDED = Rate(1e12, 1.0)


def api_retry_policy(retries: int | RetryPolicy) -> RetryPolicy:
    """``retries=N`` for API calls: N more attempts with backoff (see `API_BACKOFF`)."""
    if isinstance(retries, RetryPolicy):
        return retries
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise ConfigError(f"retries must be a non-negative integer or a RetryPolicy, got {retries!r}")
    return RetryPolicy(count=retries, **API_BACKOFF)  # type: ignore[arg-type]


class _Plan:
    """The checked options of one `amap` call."""

    def __init__(self, **options: Any) -> None:
        self.fn: Callable[..., Any] = options["fn"]
        self.items: Iterable[Any] | AsyncIterable[Any] = options["items"]
        self.workers: int = options["workers"]
        self.limits: dict[str, RateLimit] = options["limits"]
        self.key: Callable[[Any], str] | None = options["key"]
        self.cost: Callable[[Any], float] | None = options["cost"]
        self.retry: RetryPolicy = options["retry"]
        self.timeout: float | None = options["timeout"]
        self.ordered: bool = options["ordered"]
        self.as_results: bool = options["as_results"]
        self.client: Callable[[], Any] | None = options["client"]
        self.results: str | Path | None = options["results"]
        self.fsync: bool = options["fsync"]
        self.fail_fast: bool = options["fail_fast"]
        self.on_event: Callable[[Event], Any] | None = options["on_event"]
        self.backend: CallableBackend = options["backend"]


class _Collector:
    """The run's own sink: finished results in a queue the iterator reads, which it waits on
    with one plain future (an `asyncio.Queue` getter would cost a task and a wait per result)."""

    def __init__(self, on_event: Callable[[Event], Any] | None) -> None:
        self._on_event = on_event
        self.results: deque[TaskResult] = deque()
        self._waiter: asyncio.Future[None] | None = None

    def handle(self, event: Event) -> None:
        if self._on_event is not None:
            self._on_event(event)
        if isinstance(event, TaskFinished):
            self.results.append(event.result)
            self.wake()

    def wake(self, *_: object) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def next(self, running: asyncio.Future[Any]) -> TaskResult:
        """The next finished result; raises what ended the run if it ended first."""
        while not self.results:
            if running.done():
                running.result()  # the scheduler ended early: raise what ended it
                raise RuntimeError("the run ended with items outstanding")
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
        return self.results.popleft()

    def close(self) -> None:
        return None


async def _generate(plan: _Plan) -> AsyncIterator[Any]:
    async with contextlib.AsyncExitStack() as stack:
        shared = await _open_client(plan.client, stack) if plan.client is not None else None
        args_of = (lambda item: (item, shared)) if plan.client is not None else (lambda item: (item,))
        sinks: list[Sink] = []
        inputs: dict[str, Any] = {}  # task id -> item, while its row may still be written
        if plan.results is not None:
            from .sinks.table import TableSink, TableWriter

            writer = TableWriter(plan.results, fsync=plan.fsync)
            stack.callback(writer.close)
            sinks.append(TableSink(writer, lambda result: item_columns(inputs.get(result.task_id)), id_column=None))
        collector = _Collector(plan.on_event)
        sinks.append(collector)
        backend = _backend(plan)
        stack.push_async_callback(backend.aclose)
        limiters = Limiters(plan.limits, max_window=plan.workers) if plan.limits else None
        run_dir = make_run_dir("phalanx-amap-")
        stack.callback(_remove_dir, run_dir)
        scheduler = Scheduler(
            _empty_graph(), backend_for=lambda task: backend, max_workers=plan.workers, fail_fast=plan.fail_fast,
            sinks=sinks, run_dir=run_dir, open_ended=True, keep_results=False, limiters=limiters,
        )
        running = asyncio.ensure_future(scheduler.run())
        running.add_done_callback(collector.wake)
        feeder = _Feeder(plan, scheduler, args_of, inputs)
        completed = False
        try:
            async for result in _results(plan, feeder, collector, running):
                yield result
            completed = True
        finally:
            feeder.stop()
            if not completed and scheduler.stopping is None:
                scheduler.cancel(CancelReason.INTERRUPT)  # left early (break, an error): stop the rest
            scheduler.close()
            # Wait for the run to wind down (cancelled attempts stopped, RunFinished out).
            if completed:
                await running
            else:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await asyncio.shield(running)


async def _results(plan: _Plan, feeder: _Feeder, collector: _Collector,
                   running: asyncio.Future[Any]) -> AsyncIterator[Any]:
    """The results as the caller wants them: as they finish, or re-ordered by position."""
    waiting: dict[int, TaskResult] = {}
    next_position = 0
    while True:
        await feeder.fill()
        if feeder.outstanding == 0 and feeder.exhausted:
            return
        result = await collector.next(running)
        feeder.delivered(result.task_id)
        if not plan.ordered:
            yield _value(result, plan.as_results)
            continue
        waiting[int(result.task_id)] = result
        while next_position in waiting:
            ready = waiting.pop(next_position)
            next_position += 1
            yield _value(ready, plan.as_results)


def _value(result: TaskResult, as_results: bool) -> Any:
    if as_results:
        return result
    if result.status is Status.SUCCEEDED:
        return result.value
    return raise_for(result)


class _Feeder:
    """Reads the items and submits one task each, keeping `LOOKAHEAD` per slot outstanding."""

    def __init__(self, plan: _Plan, scheduler: Scheduler, args_of: Callable[[Any], tuple[Any, ...]],
                 inputs: dict[str, Any]) -> None:
        self._plan = plan
        self._scheduler = scheduler
        self._args_of = args_of
        self._inputs = inputs
        self._keep_inputs = plan.results is not None
        self._positions = itertools.count()
        self._limit = LOOKAHEAD * plan.workers
        self._sync: Iterator[Any] | None = None
        self._async: AsyncIterator[Any] | None = None
        if isinstance(plan.items, AsyncIterable):
            self._async = aiter(plan.items)
        else:
            self._sync = iter(plan.items)
        self._names = tuple(plan.limits)
        self.outstanding = 0
        self.exhausted = False
        self._stopped = False

    async def fill(self) -> None:
        while not self.exhausted and not self._stopped and self.outstanding < self._limit:
            if self._scheduler.stopping is not None:
                self.exhausted = True  # fail-fast: nothing more is read
                break
            try:
                if self._sync is not None:
                    item = next(self._sync)
                else:
                    assert self._async is not None
                    item = await anext(self._async)
            except (StopIteration, StopAsyncIteration):
                self.exhausted = True
                break
            self._submit(item)
        if self.exhausted:
            self._scheduler.close()

    def _submit(self, item: Any) -> None:
        plan = self._plan
        tid = str(next(self._positions))
        task = Task(
            tid, plan.fn, args=self._args_of(item), timeout=plan.timeout, retry=plan.retry,
            limiter=self._names, limiter_key=str(plan.key(item)) if plan.key is not None else "",
            tokens=float(plan.cost(item)) if plan.cost is not None else 1.0,
        )
        if self._keep_inputs:
            self._inputs[tid] = item
        self._scheduler.submit(task, referable=False)
        self.outstanding += 1

    def delivered(self, tid: str) -> None:
        self.outstanding -= 1
        self._inputs.pop(tid, None)

    def stop(self) -> None:
        self._stopped = True


async def _open_client(factory: Callable[[], Any], stack: contextlib.AsyncExitStack) -> Any:
    """Make the shared client and arrange for it to be closed when the run ends."""
    made = factory()
    if inspect.isawaitable(made):
        made = await made
    if hasattr(made, "__aenter__") and hasattr(made, "__aexit__"):
        return await stack.enter_async_context(made)
    closer = getattr(made, "aclose", None) or getattr(made, "close", None)
    if callable(closer):
        async def close() -> None:
            outcome = closer()
            if inspect.isawaitable(outcome):
                await outcome

        stack.push_async_callback(close)
    return made


def _backend(plan: _Plan) -> Backend:
    if is_coroutine_action(plan.fn):
        return InlineBackend()
    if plan.backend == "processes":
        from .backends.processes import ProcessBackend

        return ProcessBackend(plan.workers)
    from .backends.threads import ThreadBackend

    return ThreadBackend()


def _cpus() -> int:
    from .workers import usable_cpus

    return usable_cpus()[0]


def _empty_graph() -> Any:
    from .model import Graph

    return Graph()


def _remove_dir(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


__all__ = ["amap", "api_retry_policy", "rate_limits"]
