"""One run of the scheduler as a front end needs it: a run directory, signals turned into a
clean stop, and every backend and sink closed at the end, whatever happened.

`phalanx.run` and `phalanx map` both start their runs here, so neither front end imports
the other.
"""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import signal
import tempfile
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from .events import Sink
from .model import Graph, Task, is_coroutine_action
from .results import CancelReason, RunReport
from .scheduler import Scheduler

if TYPE_CHECKING:
    from .autoscale import Scaling
    from .backends.base import Backend
    from .guard import AttemptGuard
    from .ordering import CostModel, OrderingPolicy
    from .policy import HaltRule, TimeoutRule
    from .ratelimit import Limiters
    from .resources import Capacities

BackendName = Literal["auto", "threads", "inline", "dask", "ray"]


class StandardBackends:
    """One instance of each backend a run needs, made on first use, closed at the end:
    commands as subprocesses, ``async def`` on the loop itself, other callables in threads
    (or all callables on the loop with ``"inline"``)."""

    def __init__(self, callables: BackendName, grace: float,
                 on_spawn: Callable[[str, str, int, int], None] | None = None,
                 guard: AttemptGuard | None = None, reuse_output_files: bool = False,
                 cluster: Backend | None = None) -> None:
        """``cluster``: the cluster backend (``--backend dask``) that runs every task.

        ``reuse_output_files``: commands share a pair of output files per slot, each
        attempt's output there only until its end has been told to the sinks
        (`phalanx.backends.outputs`); False: files per attempt, kept until the run ends."""
        self._reuse_output_files = reuse_output_files
        self._callables = callables
        self._grace = grace
        self._on_spawn = on_spawn
        self._guard = guard  # for the commands: see phalanx.guard
        self._made: dict[str, Backend] = {}
        if cluster is not None:
            self._made["cluster"] = cluster

    def for_task(self, task: Task) -> Backend:
        cluster = self._made.get("cluster")
        if cluster is not None:
            return cluster
        if task.is_command:
            kind = "command"
        elif self._callables == "inline" or is_coroutine_action(task.action):
            kind = "inline"
        else:
            kind = "threads"
        backend = self._made.get(kind)
        if backend is None:
            backend = self._made[kind] = self._make(kind)
        return backend

    def _make(self, kind: str) -> Backend:
        # Each imported here: a run pays for the backends its tasks use (phalanx map, only commands).
        if kind == "command":
            from .backends.command import CommandBackend
            from .backends.outputs import OutputFiles

            return CommandBackend(grace=self._grace, on_spawn=self._on_spawn, guard=self._guard,
                                  outputs=OutputFiles(reuse=self._reuse_output_files))
        if kind == "inline":
            from .backends.inline import InlineBackend

            return InlineBackend()
        from .backends.threads import ThreadBackend

        return ThreadBackend()

    async def aclose(self) -> None:
        for backend in self._made.values():
            await backend.aclose()


def make_run_dir(prefix: str = "phalanx-") -> Path:
    """A fresh directory only this user can enter (``mkdtemp``: a name nobody can plant
    links at in advance, mode 0700)."""
    return Path(tempfile.mkdtemp(prefix=prefix))


async def run_session(
    graph: Graph,
    *,
    backend_for: Callable[[Task], Backend],
    close_backends: Callable[[], Awaitable[None]],
    max_workers: int,
    sinks: Iterable[Sink] = (),
    log_dir: str | Path | None = None,
    handle_signals: bool = False,
    capacities: Capacities | None = None,
    fail_fast: bool = False,
    policy: OrderingPolicy | None = None,
    cost_model: CostModel | None = None,
    rng: random.Random | None = None,
    seed: int | None = None,
    halt: HaltRule | None = None,
    start_interval: float = 0.0,
    timeout_for: TimeoutRule | None = None,
    limiters: Limiters | None = None,
    on_temporary_dir: Callable[[Path], None] | None = None,
    scaling: Scaling | None = None,
) -> RunReport:
    """Run ``graph`` to the end and return its report.

    Without ``log_dir`` the output files live in a temporary run directory removed at the
    end, and the results keep only the output's tail (``on_temporary_dir`` hears of it
    first: the watchdog removes it if phalanx is killed). With ``handle_signals``, SIGINT and
    SIGTERM stop the run cleanly (exit 130 / 143 follow from the report). With ``scaling``
    (``-j auto``, ``--load``, ``--memfree``), the number of tasks at once follows the machine,
    up to ``max_workers`` (`phalanx.autoscale`).
    """
    all_sinks = list(sinks)
    autoscaler = None
    if scaling is not None:
        from .autoscale import Autoscaler

        # Last among the sinks: the others hear RunStarted before the starting count.
        autoscaler = Autoscaler(scaling, max_workers)
        all_sinks.append(autoscaler)
    temporary = log_dir is None
    run_dir = make_run_dir() if log_dir is None else Path(log_dir)
    if temporary and on_temporary_dir is not None:
        on_temporary_dir(run_dir)
    try:
        scheduler = Scheduler(
            graph, backend_for=backend_for, max_workers=max_workers, capacities=capacities, fail_fast=fail_fast,
            policy=policy, cost_model=cost_model, sinks=all_sinks, run_dir=run_dir, rng=rng, halt=halt,
            start_interval=start_interval, timeout_for=timeout_for, limiters=limiters, seed=seed,
        )
        if autoscaler is not None:
            autoscaler.govern(scheduler)
    except BaseException:
        # Bad input: nothing ran; leave nothing behind either (files the sinks opened, the run directory).
        try:
            close_all(all_sinks)
        finally:
            if temporary:
                shutil.rmtree(run_dir, ignore_errors=True)
        raise
    loop = asyncio.get_running_loop()
    installed: list[signal.Signals] = []
    if handle_signals:
        handled = ((signal.SIGINT, CancelReason.INTERRUPT), (signal.SIGTERM, CancelReason.TERMINATE))
        for signum, reason in handled:
            loop.add_signal_handler(signum, scheduler.cancel, reason)
            installed.append(signum)
    try:
        report = await scheduler.run()
        if temporary:
            # The output files go with the temporary run directory: keep only the tails.
            results = {
                tid: result if result.stdout_path is None and result.stderr_path is None
                else replace(result, stdout_path=None, stderr_path=None)
                for tid, result in report.results.items()
            }
            report = replace(report, results=results)
        return report
    finally:
        for signum in installed:
            loop.remove_signal_handler(signum)
        await close_backends()
        try:
            close_all(all_sinks)
        finally:
            if temporary and os.path.isdir(run_dir):
                shutil.rmtree(run_dir, ignore_errors=True)


def close_all(sinks: Iterable[Sink]) -> None:
    """Close every sink, even when one fails (each owns a file that must be flushed);
    the first failure is raised afterwards."""
    error: Exception | None = None
    for sink in sinks:
        try:
            sink.close()
        except Exception as raised:
            error = error or raised
    if error is not None:
        raise error
