"""The cluster backend: phalanx decides, a cluster engine (Dask, Ray) executes.

phalanx's scheduler keeps every decision (order, retries, rate limits, fail-fast, skips,
run-wide resources); the engine only places each attempt on a worker, where phalanx's own
runners run it (`phalanx.remote`). What the engine is told per attempt: the payload (the
attempt, pickled here, so that what cannot travel fails here, naming it), the worker
resources it needs (those that live on particular machines, such as a GPU), and a
priority that keeps phalanx's start order.

Stopping (timeout, fail-fast, Ctrl-C: the scheduler cancels ``run``): the engine cannot
stop a running task, so phalanx asks the attempt's worker to (`Cluster.stop`) and waits for
the attempt's answer, bounded, before the cancellation goes through: its work has been
killed there by then, and what it printed comes back with it.

A worker lost mid-attempt (killed, its machine gone) ends the attempt ``crashed``; the
engine's own retries are off, so it runs again only if the task's retry policy says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

import cloudpickle

from ..outputfiles import output_paths
from ..remote import CallableOptions, RemoteAttempt, RemoteOutcome, coroutine_runner
from ..results import ErrorInfo, Status
from .base import Attempt, Outcome
from .batch import Batch, BatchResult, ItemResult

#: Seconds a stopped attempt's worker gets, past the grace period, to say it has stopped.
STOP_BOUND = 5.0

#: Seconds a resumed run waits for a killed run's attempts to end on the workers, and how often it looks.
SETTLE_BOUND = 30.0
SETTLE_POLL = 0.1


class WorkerLost(Exception):
    """The worker running an attempt died (or left the cluster) before the attempt ended."""

    def __init__(self, where: str) -> None:
        super().__init__(where)
        self.where = where


class Cluster(Protocol):
    """One cluster engine, as the cluster backend drives it (`DaskCluster`, `RayCluster`)."""

    name: str

    @property
    def slots(self) -> int:
        """How many attempts its workers run at once (the default ``-j``)."""
        ...

    def offered(self) -> list[Mapping[str, float]]:
        """The worker resources each worker offers (``[{"gpu": 2}, {}]``)."""
        ...

    def submit(self, key: str, payload: bytes, resources: Mapping[str, float], order: int) -> Awaitable[RemoteOutcome]:
        """Run ``phalanx.remote.run_remote`` on a worker with the payload; resolves to its
        `RemoteOutcome`, or raises `WorkerLost`. ``order``: lower runs first."""
        ...

    async def stop(self, keys: list[str]) -> None:
        """Ask the workers to stop the attempts with these keys (those not begun never will)."""
        ...

    def forget(self, key: str) -> None:
        """The attempt's answer is no longer wanted (it was stopped and did not answer in time)."""
        ...

    async def running(self) -> dict[str, list[str]]:
        """The keys of the attempts running now, by worker."""
        ...

    async def aclose(self) -> None: ...


@dataclass(frozen=True, slots=True)
class _Sent:
    """What was sent for an attempt: the payload, and for a batch some items could not be
    pickled, which offsets went (the others already failed, in ``unsent``)."""

    payload: bytes
    kept: list[int] | None = None
    unsent: BatchResult | None = None


class ClusterBackend:
    """A `Backend` that runs every attempt on a cluster through a `Cluster` engine.

    Args:
        cluster: the engine, started.
        worker_resources: the resource names that live on the workers: a task's request
            for them goes to the engine (phalanx's own pool does not count them).
        grace: seconds between SIGTERM and SIGKILL for a stopped command.
        callables: how callables run on the workers' warm processes.
    """

    def __init__(self, cluster: Cluster, *, worker_resources: frozenset[str] = frozenset(), grace: float = 2.0,
                 callables: CallableOptions | None = None) -> None:
        self.cluster = cluster
        self._worker_resources = worker_resources
        self._grace = grace
        self._callables = callables or CallableOptions()
        self._order = itertools.count()
        self._stopped: dict[tuple[str, int], Outcome] = {}
        self._pending_stops: list[str] = []
        self._stopping: asyncio.Future[None] | None = None

    async def run(self, attempt: Attempt) -> Outcome:
        task = attempt.task
        key = f"phalanx-{attempt.run_id}-{task.id}-{attempt.number}"
        # A batch of callables whose worker is lost runs again elsewhere, once: its items run
        # in the worker's warm processes, so none of them killed it (an item that crashes
        # costs its warm process, not the worker); as on this machine's process backend, an
        # item runs at least once. Anything else lost with its worker is the task's to retry.
        again = isinstance(task.action, Batch)
        while True:
            sent = self._payload(key, attempt)
            if isinstance(sent, Outcome):
                return sent
            resources = {name: amount for name, amount in task.resources.items() if name in self._worker_resources}
            answer = asyncio.ensure_future(self.cluster.submit(key, sent.payload, resources, next(self._order)))
            try:
                remote = await asyncio.shield(answer)
            except asyncio.CancelledError:
                await self._stop(key, attempt, answer)
                raise
            except WorkerLost as lost:
                scheduler_lost = lost.where.startswith("(")
                if again and not scheduler_lost:
                    again, key = False, key + "-again"
                    continue
                return Outcome(ok=False, crashed=True, reason=f"WorkerCrashed: the {self.cluster.name} worker "
                               f"{lost.where} running it was lost",
                               worker_address=None if scheduler_lost else lost.where)
            except Exception as error:  # the engine could not run it (the payload would not load there ...)
                info = ErrorInfo.from_exception(error)
                return Outcome(ok=False, reason=f"{self.cluster.name} could not run it: {info}", error=info)
            return self._received(attempt, remote, sent)

    def stopped_outcome(self, attempt: Attempt) -> Outcome | None:
        return self._stopped.pop((attempt.task.id, attempt.number), None)

    async def settle(self, run_ids: Sequence[str], *, bound: float = SETTLE_BOUND) -> None:
        """Wait until no attempt of these (killed) runs still runs on a worker, asking them to
        stop; refuse to go on (`ConfigError`) if one still runs after ``bound`` seconds."""
        from ..errors import ConfigError

        prefixes = tuple(f"phalanx-{run_id}-" for run_id in run_ids)
        deadline = asyncio.get_running_loop().time() + bound
        while True:
            left = {worker: [key for key in keys if key.startswith(prefixes)]
                    for worker, keys in (await self.cluster.running()).items()}
            left = {worker: keys for worker, keys in left.items() if keys}
            if not left:
                return
            if asyncio.get_running_loop().time() > deadline:
                worker, keys = next(iter(left.items()))
                raise ConfigError(f"an attempt of the killed run still runs on {self.cluster.name} worker "
                                  f"{worker} ({keys[0]}) after {bound:g}s: not resuming while it does")
            await self.cluster.stop([key for keys in left.values() for key in keys])
            await asyncio.sleep(SETTLE_POLL)

    async def aclose(self) -> None:
        await self.cluster.aclose()

    # ------------------------------------------------------------------ sending

    def _payload(self, key: str, attempt: Attempt) -> _Sent | Outcome:
        task = attempt.task
        if not task.is_command and not isinstance(task.action, Batch):
            from ..model import is_coroutine_action

            if is_coroutine_action(task.action):
                assert callable(task.action)
                task = replace(task, action=coroutine_runner(task.action))

        def dumps(task: Any) -> bytes:
            blob: bytes = cloudpickle.dumps(RemoteAttempt(key, task, attempt.number, attempt.run_id, self._grace,
                                                   attempt.instances, self._callables))
            return blob

        try:
            return _Sent(dumps(task))
        except Exception as error:
            if not isinstance(task.action, Batch):
                message = (f"task {task.id!r}: its callable or an argument cannot be pickled to send it to the "
                           f"{self.cluster.name} cluster: {type(error).__name__}: {error}")
                return Outcome(ok=False, reason=f"PicklingError: {message}", error=ErrorInfo("PicklingError", message))
        return self._batch_payload(dumps, task)

    @staticmethod
    def _batch_payload(dumps: Any, task: Any) -> _Sent | Outcome:
        """A batch that would not pickle whole: each item that cannot fails alone, the rest go."""
        from .processes import _culprit

        batch: Batch = task.action
        unsent = BatchResult(batch.where)
        kept: list[int] = []
        for offset, item in enumerate(batch.items):
            try:
                cloudpickle.dumps(item)
            except Exception as error:
                culprit = _culprit(item, batch.mode)
                message = (f"{batch.describe(offset)}: an argument of type {type(culprit).__name__} cannot be "
                           f"pickled to send it to a worker process: {type(error).__name__}: {error}")
                unsent.failures[offset] = ItemResult(unsent.positions[offset], Status.FAILED,
                                                     error=ErrorInfo("PicklingError", message))
            else:
                kept.append(offset)
        if not kept:
            return Outcome(ok=True, value=unsent)
        where = batch.where
        smaller = replace(batch, items=[batch.items[o] for o in kept], positions=[where[o] for o in kept])
        try:
            return _Sent(dumps(replace(task, action=smaller)), kept, unsent)
        except Exception as error:
            message = f"the batch cannot be pickled to send it to the cluster: {type(error).__name__}: {error}"
            return Outcome(ok=False, reason=message, error=ErrorInfo("PicklingError", message))

    # ------------------------------------------------------------------ stopping

    async def _stop(self, key: str, attempt: Attempt, answer: asyncio.Future[RemoteOutcome]) -> None:
        """Have the attempt stopped on its worker and wait (bounded) for it to say so; a second
        cancellation while waiting gives up waiting (the request still goes out)."""
        try:
            await asyncio.shield(self._request_stop(key))
            async with asyncio.timeout(self._grace + STOP_BOUND):
                remote = await asyncio.shield(answer)
        except (asyncio.CancelledError, TimeoutError, Exception):
            # Cancelled again (stop at once), or no answer in time: the engine cancels the
            # task too, which the attempt's worker sees as its task no longer wanted.
            answer.cancel()
            self.cluster.forget(key)
            return
        self._stopped[(attempt.task.id, attempt.number)] = replace(
            self._received(attempt, remote, None), ok=False)

    def _request_stop(self, key: str) -> asyncio.Future[None]:
        """Stop requests made in the same step (fail-fast stops many) go out as one message,
        sent by a task of its own: a caller cancelled meanwhile does not hold it back."""
        self._pending_stops.append(key)
        if self._stopping is None:
            self._stopping = asyncio.ensure_future(self._send_stops())
        return self._stopping

    async def _send_stops(self) -> None:
        await asyncio.sleep(0)  # the rest of this step's stops
        keys, self._pending_stops = self._pending_stops, []
        self._stopping = None
        await self.cluster.stop(keys)

    # ------------------------------------------------------------------ receiving

    def _received(self, attempt: Attempt, remote: RemoteOutcome, sent: _Sent | None) -> Outcome:
        """The outcome as if the attempt had run here: its output in this run's files."""
        outcome = remote.outcome
        changes: dict[str, Any] = {"worker_address": remote.worker_address}
        if remote.stdout is not None or remote.stderr is not None:
            os.makedirs(attempt.run_dir, exist_ok=True)  # a --log-dir not made yet: nothing ran here to make it
            out_path, err_path = output_paths(str(attempt.run_dir), attempt.task.id, attempt.number)
            streams = ((out_path, remote.stdout, "stdout_path"), (err_path, remote.stderr, "stderr_path"))
            for path, data, name in streams:
                if data is not None:
                    _write(path, data)
                    changes[name] = path
        if sent is not None and sent.kept is not None and isinstance(outcome.value, BatchResult):
            changes["value"] = _merged(outcome.value, sent)
        return replace(outcome, **changes)


def _merged(result: BatchResult, sent: _Sent) -> BatchResult:
    """A batch's result over all its items: those that went, and those that could not."""
    assert sent.kept is not None and sent.unsent is not None
    out = sent.unsent
    for local, offset in enumerate(sent.kept):
        failed = result.failures.get(local)
        if failed is not None:
            out.failures[offset] = failed._replace(position=out.positions[offset])
        out.values[offset] = result.values[local]
        out.durations[offset] = result.durations[local]
        out.pids[offset] = result.pids[local]
    return out


def _write(path: str, data: bytes) -> None:
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(path, flags, 0o600)
    with contextlib.closing(os.fdopen(fd, "wb")) as file:
        file.write(data)


# ---------------------------------------------------------------------------- opening one

#: The cluster engines, by the name ``--backend`` takes.
ENGINES = ("dask", "ray")

#: What phalanx's own pool holds of a worker resource: the engine places those, not phalanx.
UNCOUNTED = 1 << 40


async def open_cluster(engine: str, address: str | None, *, max_workers: int | None = None) -> Cluster:
    """Start (or connect to) the engine's cluster for a run: at ``address``, else at the one
    its environment variable names, else a local cluster for this run alone."""
    if engine == "dask":
        from .daskcluster import SCHEDULER_VARIABLE, DaskCluster

        return await DaskCluster.start(address or os.environ.get(SCHEDULER_VARIABLE) or None, max_workers=max_workers)
    if engine == "ray":
        from .raycluster import ADDRESS_VARIABLE, RayCluster

        cluster: Cluster = await RayCluster.start(address or os.environ.get(ADDRESS_VARIABLE) or None,
                                                  max_workers=max_workers)
        return cluster
    from ..errors import ConfigError

    raise ConfigError(f"unknown cluster backend {engine!r}; one of {', '.join(ENGINES)}")


def unoffered(tasks: Any, worker_resources: frozenset[str], offered: list[Mapping[str, float]]) -> str | None:
    """The first task whose worker resource no worker offers enough of, said in words; None if none."""
    for task in tasks:
        for name, amount in task.resources.items():
            if name not in worker_resources:
                continue
            if not any(worker.get(name, 0) >= amount for worker in offered):
                most = max((worker.get(name, 0) for worker in offered), default=0)
                have = f"the most a worker offers is {most:g}" if most else "no worker offers it"
                return (f"task {task.id!r} needs worker resource {name!r} = {amount:g}, and {have} "
                        f"(workers are started with --resources \"{name}=N\")")
    return None


def pool_capacities(capacities: Mapping[str, Any] | None, worker_resources: frozenset[str]) -> dict[str, Any]:
    """The run's capacities with the worker resources made uncounted: the engine places those."""
    out = dict(capacities or {})
    for name in worker_resources:
        out.setdefault(name, UNCOUNTED)
    return out


async def open_cluster_backend(engine: str, address: str | None, tasks: Any, *, max_workers: int | None,
                               worker_resources: frozenset[str] = frozenset(), grace: float = 2.0,
                               callables: CallableOptions | None = None) -> ClusterBackend:
    """The cluster backend for a run of ``tasks``, refused before anything runs when a task
    needs a worker resource that no worker offers."""
    from ..errors import ResourceError

    cluster = await open_cluster(engine, address, max_workers=max_workers)
    problem = unoffered(tasks, worker_resources, cluster.offered())
    if problem is not None:
        await cluster.aclose()
        raise ResourceError(problem)
    return ClusterBackend(cluster, worker_resources=worker_resources, grace=grace, callables=callables)
