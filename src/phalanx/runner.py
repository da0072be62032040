"""`phalanx.run`: the Python entry point to the engine.

Turns what the caller has (a `Graph`, a list of `Task`s, or HuskyCat's mapping of names to
callables plus a ``deps`` mapping) into a validated graph, picks a backend per task
(commands → subprocesses, ``async def`` → the loop itself, other callables → threads),
runs the `Scheduler`, and returns its `RunReport`.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from .backends.base import Backend
from .backends.cluster import ENGINES, open_cluster_backend, pool_capacities
from .durations import parse_duration
from .errors import ConfigError
from .events import Event, Sink, TaskFinished, TaskRetrying, TaskStarted
from .model import Task
from .ordering import CostModel, OrderingPolicy
from .policy import HaltRule, TimeoutRule
from .ratelimit import Limiters, RateLimit
from .resources import Capacities
from .results import RunReport
from .session import BackendName, StandardBackends, run_session
from .tasksource import TaskSource, build_graph
from .workers import optimal_workers


class _CallbackSink:
    """Adapts ``on_event`` and HuskyCat's ``progress_callback(name, status)`` to the Sink protocol."""

    def __init__(
        self,
        on_event: Callable[[Event], Any] | None,
        progress_callback: Callable[[str, str], Any] | None,
    ) -> None:
        self._on_event = on_event
        self._progress = progress_callback

    def handle(self, event: Event) -> None:
        if self._on_event is not None:
            self._on_event(event)
        if self._progress is not None:
            if isinstance(event, TaskStarted):
                self._progress(event.task_id, "running")
            elif isinstance(event, TaskRetrying):
                self._progress(event.task_id, "retrying")
            elif isinstance(event, TaskFinished):
                self._progress(event.task_id, event.result.status.value)

    def close(self) -> None:
        return None


async def run_async(
    tasks: TaskSource,
    *,
    deps: Mapping[str, Sequence[str]] | None = None,
    max_workers: int | None = None,
    resources: Capacities | None = None,
    fail_fast: bool = False,
    timeout: float | str | None = None,
    backend: BackendName = "auto",
    grace: float = 2.0,
    on_event: Callable[[Event], Any] | None = None,
    progress_callback: Callable[[str, str], Any] | None = None,
    sinks: Iterable[Sink] = (),
    log_dir: str | Path | None = None,
    policy: OrderingPolicy | None = None,
    cost_model: CostModel | None = None,
    seed: int | None = None,
    shuffle: bool = False,
    handle_signals: bool = False,
    halt: HaltRule | None = None,
    start_interval: float = 0.0,
    timeout_for: TimeoutRule | None = None,
    backend_for: Callable[[Task], Backend] | None = None,
    rate_limits: Mapping[str, str | RateLimit] | None = None,
    results: str | Path | None = None,
    fsync: bool = False,
    scheduler: str | None = None,
    worker_resources: Iterable[str] = (),
) -> RunReport:
    """`run` for callers already inside an event loop. Same arguments, same result.

    Front ends may also pass ``halt`` (a rule deciding after each result whether to stop
    now or soon), ``start_interval`` (seconds between starts), ``timeout_for`` (each
    attempt's timeout, asked at its start) and ``backend_for`` (their own backend choice),
    and ``handle_signals`` to turn SIGINT/SIGTERM into a clean stop.
    """
    if timeout is not None and parse_duration(timeout, what="timeout") == 0:
        timeout = None  # 0 means no timeout, as in GNU parallel: there is no default to apply
    graph = build_graph(tasks, deps=deps, timeout=timeout)
    cluster = None
    if backend in ENGINES:
        names = frozenset(worker_resources)
        cluster = await open_cluster_backend(backend, scheduler, graph, max_workers=max_workers,
                                             worker_resources=names, grace=grace)
        resources = pool_capacities(resources, names)
        if max_workers is None:
            max_workers = cluster.cluster.slots
    workers = optimal_workers().count if max_workers is None else max_workers
    all_sinks: list[Sink] = list(sinks)
    limiters = named_limiters(rate_limits, workers)
    if results is not None:
        all_sinks.append(results_sink(results, fsync=fsync))  # before the callbacks: a row is out when they hear
    if on_event is not None or progress_callback is not None:
        all_sinks.append(_CallbackSink(on_event, progress_callback))
    backends = StandardBackends(backend, grace, cluster=cluster)
    return await run_session(
        graph,
        backend_for=backend_for or backends.for_task,
        close_backends=backends.aclose,
        max_workers=workers,
        sinks=all_sinks,
        log_dir=log_dir,
        handle_signals=handle_signals,
        capacities=resources,
        fail_fast=fail_fast,
        policy=policy,
        cost_model=cost_model,
        rng=random.Random(seed),
        seed=(seed if seed is not None else random.randrange(2**32)) if shuffle else None,
        halt=halt,
        start_interval=start_interval,
        timeout_for=timeout_for,
        limiters=limiters,
    )


def named_limiters(rate_limits: Mapping[str, str | RateLimit] | None, max_window: int) -> Limiters | None:
    """The run's named rate limits (``{"openai": "500/min"}``), or None without any."""
    if not rate_limits:
        return None
    if not isinstance(rate_limits, Mapping):
        raise ConfigError(f"rate_limits must map names to rates such as '500/min', got {rate_limits!r}")
    limits = {str(name): RateLimit.of(spec, what=f"rate limit {name!r}") for name, spec in rate_limits.items()}
    return Limiters(limits, max_window=max_window)


def results_sink(path: str | Path, *, fsync: bool = False) -> Sink:
    """A results file (``.csv`` or ``.jsonl``) with one row per task as it ends."""
    from .sinks.table import TableSink, TableWriter

    return TableSink(TableWriter(path, fsync=fsync))


def run(
    tasks: TaskSource,
    *,
    deps: Mapping[str, Sequence[str]] | None = None,
    max_workers: int | None = None,
    resources: Capacities | None = None,
    fail_fast: bool = False,
    timeout: float | str | None = None,
    backend: BackendName = "auto",
    grace: float = 2.0,
    on_event: Callable[[Event], Any] | None = None,
    progress_callback: Callable[[str, str], Any] | None = None,
    sinks: Iterable[Sink] = (),
    log_dir: str | Path | None = None,
    policy: OrderingPolicy | None = None,
    cost_model: CostModel | None = None,
    seed: int | None = None,
    shuffle: bool = False,
    rate_limits: Mapping[str, str | RateLimit] | None = None,
    results: str | Path | None = None,
    fsync: bool = False,
    scheduler: str | None = None,
    worker_resources: Iterable[str] = (),
) -> RunReport:
    """Run tasks in parallel, each the moment its dependencies have succeeded.

    Args:
        tasks: a `Graph`, an iterable of `Task`, or a mapping of names to actions
            (callables, shell strings, argv lists) as in ``{"black": fn, "mypy": fn2}``.
        deps: extra dependencies by name, ``{"mypy": ["black"]}``.
        max_workers: how many tasks run at once (slots); default: the usable CPUs.
        resources: named capacities beyond slots, ``{"db": 1}``, or the names of a
            resource's units, ``{"gpu": ["0", "1"]}``: a task asking for ``{"gpu": 1}``
            gets a unit no other running task holds (`resource_instances` tells it which;
            a command gets ``PHALANX_GPU`` and ``CUDA_VISIBLE_DEVICES``).
        fail_fast: on the first task that fails for good, cancel everything else.
        timeout: a default per-attempt timeout (seconds or ``"2m"``) for tasks that set
            none; None or 0: no timeout. A task's own ``timeout=0`` keeps it without one.
        backend: where callables run: ``"auto"`` (coroutines on the loop, others in
            threads), ``"threads"``, or ``"inline"`` (on the loop itself); or where
            everything runs: ``"dask"`` (a Dask cluster: ``scheduler``, else
            ``PHALANX_DASK_SCHEDULER``, else a LocalCluster started for the run) or
            ``"ray"`` (``scheduler``, else ``PHALANX_RAY_ADDRESS``, else a local Ray).
        scheduler: the cluster to connect to (``tcp://HOST:8786`` for Dask).
        worker_resources: resource names that live on the cluster's workers (a GPU, a
            database): a task's request for them goes to the engine, which places it on a
            worker offering them; a task that no worker can take is refused before the run.
        grace: seconds between SIGTERM and SIGKILL when a command is stopped.
        on_event: called with every `Event` as it happens.
        progress_callback: called as ``(task_id, status)`` with ``"running"``,
            ``"retrying"`` and each terminal status.
        sinks: more event consumers.
        log_dir: keep output files there (default: a temporary directory removed at the end,
            and results keep only the output's tail).
        policy: how ready tasks are ordered (default: priority, critical path, submission).
        cost_model: duration estimates (default: declared ``cost`` only).
        seed: seeds retry jitter (and the shuffle, with ``shuffle``), for repeatable runs.
        shuffle: start the tasks the ordering policy ranks equal in an order shuffled by
            ``seed`` instead of in submission order (``phalanx run --seed``): the same seed
            and graph give the same start order; a shuffle shows up hidden dependencies.
        rate_limits: named rate limits, ``{"openai": "500/min"}`` (or `RateLimit`s); a task
            names those it uses with ``limiter=`` (and ``limiter_key=``, ``tokens=``).
        results: a ``.csv`` or ``.jsonl`` file getting one row per task as it ends: task,
            status, attempts, duration, error, then the fields it returned (a dict, or what
            a command wrote to ``$PHALANX_RESULT_FILE``).
        fsync: also fsync each row of ``results``.

    Returns:
        The `RunReport`: every `TaskResult` by id and the `RunSummary`.

    Raises:
        PhalanxError: the tasks are invalid (cycle, unknown dependency, oversize resource, ...);
            nothing has run.
    """
    return asyncio.run(
        run_async(
            tasks,
            deps=deps,
            max_workers=max_workers,
            resources=resources,
            fail_fast=fail_fast,
            timeout=timeout,
            backend=backend,
            grace=grace,
            on_event=on_event,
            progress_callback=progress_callback,
            sinks=sinks,
            log_dir=log_dir,
            policy=policy,
            cost_model=cost_model,
            seed=seed,
            shuffle=shuffle,
            rate_limits=rate_limits,
            results=results,
            fsync=fsync,
            scheduler=scheduler,
            worker_resources=worker_resources,
        )
    )
