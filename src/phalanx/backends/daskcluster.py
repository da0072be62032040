"""Dask distributed as the cluster engine of `ClusterBackend` (``--backend dask``).

phalanx connects to a running scheduler (``--scheduler tcp://HOST:8786``,
``PHALANX_DASK_SCHEDULER``, or ``dask_scheduler`` in the task file) or, without an address,
starts a `distributed.LocalCluster` on this machine for the run: one worker process per CPU,
each with threads enough for ``-j`` attempts at once (a thread only waits on its attempt's
process). Each attempt is one Dask task, `dask_entry`, with the attempt pickled as its one
argument, ``retries=0``, the worker resources it asks for, and a priority that keeps
phalanx's start order.

Dask's own retries must be off: with ``allowed-failures`` above 0, the scheduler silently runs
again a task whose worker died, which phalanx's retry policy alone decides. The embedded
cluster is started with 0; a scheduler phalanx connects to must have been (phalanx asks it
and refuses to run otherwise).

How an attempt on a worker knows it must stop: the coordinator's `stop` runs
`phalanx.remote.request_stop` on every worker (one ``Client.run`` for all the attempts
stopped in the same step); and an attempt whose Dask task is no longer wanted (the
coordinator cancelled it, or has gone: the scheduler forgets a dead client's tasks and tells
their workers) sees its task's state leave "executing" in the worker's own state, which it
reads every 50 ms without a message.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
from collections.abc import Mapping
from typing import Any

from ..errors import ConfigError
from ..remote import RemoteOutcome, request_stop, run_remote
from .cluster import WorkerLost

#: The environment variable naming the scheduler to connect to.
SCHEDULER_VARIABLE = "PHALANX_DASK_SCHEDULER"

#: Seconds to wait for a scheduler to answer, and for a first worker to join it.
CONNECT_TIMEOUT = 30.0

#: A Dask task's states in which it still runs on its worker.
_RUNNING_STATES = frozenset({"executing", "long-running"})

#: A worker's states (`distributed.core.Status` names) in which its tasks go on.
_WORKING = frozenset({"running", "paused"})


def dask_entry(payload: bytes) -> RemoteOutcome:
    """The Dask task: run the pickled `RemoteAttempt` on this worker with phalanx's runners."""
    import cloudpickle
    from distributed import get_worker

    remote = cloudpickle.loads(payload)
    worker = get_worker()
    key = worker.get_current_task()
    tasks = worker.state.tasks

    def should_stop() -> bool:
        state = tasks.get(key)
        if state is None or state.state not in _RUNNING_STATES:
            return True  # cancelled, or its client (phalanx) is gone
        # A worker closing (stopped, or cut off from its scheduler) would otherwise let the
        # command run on until its process exits.
        return worker.status.name not in _WORKING

    return run_remote(remote, should_stop, worker.address)


def _stop_here(keys: list[str]) -> int:
    return request_stop(keys)


def _running_here() -> list[str]:
    from ..remote import Node

    node = Node.current
    return [] if node is None else node.running_keys()


def _allowed_failures(dask_scheduler: Any) -> int:
    return int(dask_scheduler.allowed_failures)


class DaskCluster:
    """A `Cluster` on Dask distributed: an asynchronous client on phalanx's own event loop."""

    name = "Dask"

    def __init__(self, client: Any, cluster: Any | None, address: str) -> None:
        self.client = client
        self._cluster = cluster  # ours to close (the embedded LocalCluster), or None
        self.address = address
        self._identity: dict[str, Any] = {}  # the scheduler's view of its workers, as of the start
        self._futures: dict[str, Any] = {}
        self._cancels: set[asyncio.Future[Any]] = set()  # cancellations on their way to the scheduler
        self._completed: Any = None  # a distributed.as_completed of the futures not yet answered
        self._collector: asyncio.Future[None] | None = None
        self._waiters: dict[str, asyncio.Future[RemoteOutcome]] = {}

    @classmethod
    async def start(cls, address: str | None, *, max_workers: int | None = None) -> DaskCluster:
        """Connect to the scheduler at ``address``, or start a LocalCluster for ``max_workers``
        attempts at once (default: one per CPU)."""
        try:
            import dask
            import distributed
        except ImportError:
            raise ConfigError("--backend dask needs Dask distributed: pip install 'phalanx[dask]'") from None
        if address is None:
            workers = max(1, os.cpu_count() or 1)
            threads = max(1, math.ceil((max_workers or workers) / workers))
            from .processes import _main_module_hidden

            # Hidden: the worker processes are spawned, and would run a script's body again.
            with dask.config.set({"distributed.scheduler.allowed-failures": 0}), _main_module_hidden():
                cluster = await distributed.LocalCluster(
                    n_workers=workers, threads_per_worker=threads, processes=True, asynchronous=True,
                    dashboard_address=":0", silence_logs=logging.CRITICAL,  # no fixed port to collide on
                )
            client = await distributed.Client(cluster, asynchronous=True)
            self = cls(client, cluster, cluster.scheduler_address)
            await client.wait_for_workers(workers)
            await self._refresh()
            return self
        try:
            # The connect timeout is Dask's own (distributed.comm.timeouts.connect, 30 s).
            client = await distributed.Client(address, asynchronous=True)
        except (OSError, TimeoutError, TypeError, RuntimeError, ValueError) as error:
            # TLS set up on one side only shows as a TypeError or RuntimeError from the comm layer.
            raise ConfigError(f"cannot reach the Dask scheduler at {address}: {type(error).__name__}: "
                              f"{str(error).splitlines()[0] if str(error) else 'no detail'}") from None
        self = cls(client, None, address)
        try:
            allowed = await client.run_on_scheduler(_allowed_failures)
        except Exception:
            allowed = None  # a scheduler that runs no code for clients: its operators answer for it
        if allowed:
            await self.aclose()
            raise ConfigError(
                f"the Dask scheduler at {address} runs a task again when its worker dies ({allowed} time(s)): "
                f"phalanx's retry policy must be the only one; start it with "
                f"DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES=0"
            )
        try:
            await client.wait_for_workers(1, timeout=CONNECT_TIMEOUT)
        except TimeoutError:
            await self.aclose()
            raise ConfigError(f"the Dask scheduler at {address} has no worker") from None
        await self._refresh()
        missing = await self._without_phalanx()
        if missing:
            await self.aclose()
            raise ConfigError(f"the Dask worker {missing[0]} has no phalanx installed ({len(missing)} of "
                              f"{len(self._workers())} workers): install the same phalanx as here on every worker")
        return self

    async def _refresh(self) -> None:
        """Ask the scheduler for its workers now (the client's own copy lags behind at first)."""
        self._identity = await self.client.scheduler.identity(n_workers=-1)

    async def _without_phalanx(self) -> list[str]:
        """The workers that cannot import phalanx (their attempts would fail to load)."""
        try:
            versions = await self.client.get_versions(packages=["phalanx"])
        except Exception:
            return []  # a scheduler that will not say: the first attempt will
        workers = versions.get("workers", {}) or {}
        return sorted(address for address, info in workers.items()
                      if not ((info or {}).get("packages") or {}).get("phalanx"))

    def _workers(self) -> list[Mapping[str, Any]]:
        return list((self._identity.get("workers") or {}).values())

    @property
    def slots(self) -> int:
        return max(1, sum(int(worker.get("nthreads", 1)) for worker in self._workers()))

    def offered(self) -> list[Mapping[str, float]]:
        return [dict(worker.get("resources") or {}) for worker in self._workers()]

    async def submit(self, key: str, payload: bytes, resources: Mapping[str, float], order: int) -> RemoteOutcome:
        from distributed.client import FutureCancelledError
        from distributed.scheduler import KilledWorker

        future = self.client.submit(dask_entry, payload, key=key, pure=False, retries=0, priority=-order,
                                    resources=dict(resources) or None)
        self._futures[key] = future
        try:
            result: RemoteOutcome = await self._result(future)
        except KilledWorker as lost:
            worker = lost.last_worker
            raise WorkerLost(str(getattr(worker, "address", worker))) from None
        except FutureCancelledError as cancelled:
            if "connection-lost" in str(cancelled.reason):  # the scheduler is gone, and the attempt with it
                raise WorkerLost(f"(scheduler {self.address} lost)") from None
            raise
        finally:
            self._futures.pop(key, None)
        return result

    async def _result(self, future: Any) -> RemoteOutcome:
        """The future's result, fetched with those of every other future that finished meanwhile:
        awaiting each future fetches its result in a request of its own (about a millisecond of
        the coordinator's time per attempt); one gather for all that finished together."""
        from distributed import as_completed

        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[RemoteOutcome] = loop.create_future()
        self._waiters[future.key] = waiter
        if self._completed is None:
            self._completed = as_completed()
        self._completed.add(future)
        if self._collector is None or self._collector.done():
            self._collector = asyncio.ensure_future(self._collect())
        try:
            return await waiter
        finally:
            self._waiters.pop(future.key, None)

    async def _collect(self) -> None:
        """Hand each finished future's result (or error) to its waiter, gathering in batches;
        ends when nothing is pending (the next submit starts it again)."""
        assert self._completed is not None
        finished: list[Any] = []
        async for future in self._completed:
            finished.append(future)
            if not self._completed.has_ready():
                batch, finished = finished, []
                await self._deliver(batch)
        if finished:
            await self._deliver(finished)

    async def _deliver(self, futures: list[Any]) -> None:
        done = [future for future in futures if future.status == "finished"]
        results: list[Any] = []
        if done:
            try:
                results = await self.client.gather(done)
            except Exception:  # one result lost meanwhile: fetch them one by one, each with its own error
                results = []
        answered = set()
        if len(results) == len(done):
            for future, result in zip(done, results, strict=True):
                self._settle(future.key, result, None)
                answered.add(future.key)
        for future in futures:
            if future.key in answered:
                continue
            try:
                self._settle(future.key, await future, None)
            except BaseException as error:  # to its waiter, whatever it is (cancellation included)
                self._settle(future.key, None, error)

    def _settle(self, key: str, result: Any, error: BaseException | None) -> None:
        waiter = self._waiters.get(key)
        if waiter is None or waiter.done():
            return
        if error is None:
            waiter.set_result(result)
        else:
            waiter.set_exception(error)

    async def stop(self, keys: list[str]) -> None:
        with contextlib.suppress(Exception):
            await self.client.run(_stop_here, keys, on_error="ignore")

    async def running(self) -> dict[str, list[str]]:
        answers = await self.client.run(_running_here, on_error="ignore")
        return {str(worker): list(keys) for worker, keys in answers.items() if isinstance(keys, list)}

    def forget(self, key: str) -> None:
        future = self._futures.pop(key, None)
        if future is not None:
            cancelling = future.cancel()  # a coroutine, with an asynchronous client
            if asyncio.iscoroutine(cancelling):
                self._cancels.add(task := asyncio.ensure_future(cancelling))
                task.add_done_callback(self._cancels.discard)

    async def aclose(self) -> None:
        with contextlib.suppress(Exception):
            await self.client.close()
        if self._cluster is not None:
            with contextlib.suppress(Exception):
                await self._cluster.close()
