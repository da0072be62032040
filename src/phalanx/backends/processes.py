"""The process backend: Python callables on warm worker processes, one worker per slot.

::

    scheduler ──attempt(batch, slot k)──> ProcessBackend ──> worker k (a warm process)
        ^                                      │   batch ──> items run one by one
        └──── Outcome(value=[item results]) <──┘   <── results, flushed every ~20 ms

A task's action is a `Batch`: a callable and its items. Each item keeps its own result,
error, timeout and order. Workers start once (forkserver by default), run the
initializer once, and serve batch after batch. What stops work really stops it:

* an item over its timeout: its worker is killed and replaced (with ``isolate``, only the
  forked child running it); the item ends ``timed_out``; the batch's other items go on,
  on the replacement, never lost;
* a worker that dies (``os._exit``, a segfault, SIGKILL from outside, the OOM killer):
  the item it was running ends ``crashed`` naming the signal or exit code, the worker is
  replaced, every other item completes — never ``BrokenProcessPool``;
* a cancelled attempt (fail-fast, Ctrl-C, shutdown): its worker is killed and replaced.

Children are watched on the event loop (each worker's sentinel fd), never by a thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import multiprocessing
import os
import pickle
import signal
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any, NamedTuple

import cloudpickle

from .. import _worker
from ..errors import ConfigError
from ..results import ErrorInfo, Status
from .base import Attempt, Outcome

SUCCEEDED = Status.SUCCEEDED

#: How often a running batch with an item timeout checks the clock.
_TIMEOUT_TICK = 0.01


class ItemResult(NamedTuple):
    """What happened to one item of a batch (a named tuple: a million are cheap to make)."""

    position: int  # the item's index in its map (``index`` would shadow tuple.index)
    status: Status
    value: Any = None
    error: ErrorInfo | None = None
    exception: BaseException | None = None
    duration: float = 0.0
    pid: int | None = None

    @property
    def reason(self) -> str | None:
        return None if self.error is None else str(self.error)


@dataclass(frozen=True, slots=True)
class Batch:
    """The action of a batch task: ``fn`` applied to each item, each with its own result.

    Called in-process (threads, inline), it runs the items one after another and returns
    their `ItemResult`s; the process backend sends it to a worker instead.
    """

    fn: Callable[..., Any]
    items: Sequence[tuple[int, tuple[Any, ...], dict[str, Any]]]
    fn_key: str = field(default="")
    isolate: bool = False
    item_timeout: float | None = None

    def __call__(self) -> list[ItemResult]:
        results = []
        for index, args, kwargs in self.items:
            started = time.monotonic()
            try:
                value = self.fn(*args, **kwargs)
            except Exception as error:
                results.append(
                    ItemResult(index, Status.FAILED, error=ErrorInfo.from_exception(error), exception=error,
                               duration=time.monotonic() - started)
                )
            else:
                results.append(ItemResult(index, Status.SUCCEEDED, value, duration=time.monotonic() - started))
        return results


def function_key(fn: Callable[..., Any]) -> tuple[str, bytes]:
    """A callable pickled once, and a key that names it so workers can cache it."""
    try:
        blob = cloudpickle.dumps(fn)
    except Exception as error:
        raise ConfigError(f"the callable {fn!r} cannot be pickled: {type(error).__name__}: {error}") from None
    return hashlib.blake2b(blob, digest_size=12).hexdigest(), blob


def default_start_method() -> str:
    """``auto``: forkserver where it exists (Linux), else spawn; never plain fork, which can
    copy a parent's held locks and threads into the worker."""
    return "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"


class _Worker:
    """A live worker process and what the parent knows of it."""

    def __init__(self, process: Any, conn: Connection, shared: Any) -> None:
        self.process = process
        self.conn = conn
        self.shared = shared
        self.pid: int = process.pid
        self.functions: set[str] = set()
        self.items_done = 0
        self.messages: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue()
        self.exit_code: int | None = None
        self.killed_for_timeout = False

    @property
    def alive(self) -> bool:
        return self.exit_code is None


class ProcessBackend:
    """Runs `Batch` actions (and plain callables, as batches of one) on warm workers.

    Args:
        size: the number of workers (one per scheduler slot).
        start_method: ``auto`` (forkserver on Linux), ``forkserver``, ``spawn`` or ``fork``.
        initializer, initargs: run once in each worker as it starts (import heavy modules here).
        max_tasks_per_worker: replace a worker after it has run this many items.
        max_memory_per_worker: replace a worker whose resident memory exceeds this (bytes).
    """

    def __init__(
        self,
        size: int,
        *,
        start_method: str = "auto",
        initializer: Callable[..., Any] | None = None,
        initargs: tuple[Any, ...] = (),
        max_tasks_per_worker: int | None = None,
        max_memory_per_worker: int | None = None,
    ) -> None:
        method = default_start_method() if start_method == "auto" else start_method
        if method not in multiprocessing.get_all_start_methods():
            raise ConfigError(f"start_method {start_method!r} is not available here")
        if max_tasks_per_worker is not None and max_tasks_per_worker < 1:
            raise ConfigError(f"max_tasks_per_worker must be at least 1, got {max_tasks_per_worker}")
        self._context = multiprocessing.get_context(method)
        if method == "forkserver":
            self._context.set_forkserver_preload(["phalanx._worker"])
        self._size = size
        self._initializer = initializer
        self._initargs = initargs
        self._max_tasks = max_tasks_per_worker
        self._max_memory = max_memory_per_worker
        self._workers: dict[int, _Worker] = {}
        self._functions: dict[int, tuple[str, bytes]] = {}
        self._closing = False
        self.started = 0

    # ------------------------------------------------------------------ workers

    def worker_pids(self) -> list[int]:
        """The pids of the workers alive now."""
        return [w.pid for w in self._workers.values() if w.alive]

    async def warm_up(self) -> None:
        """Start every worker now (running the initializer) instead of on first use."""
        await asyncio.gather(*(self._worker(slot) for slot in range(1, self._size + 1)))

    def pid_of(self, slot: int) -> int | None:
        """The pid of the worker serving a slot, if it is alive."""
        worker = self._workers.get(slot)
        return worker.pid if worker is not None and worker.alive else None

    @property
    def warmed_up(self) -> bool:
        return len([w for w in self._workers.values() if w.alive]) >= self._size

    async def _worker(self, slot: int) -> _Worker:
        worker = self._workers.get(slot)
        if worker is not None:
            if worker.alive:
                return worker
            await self._discard(worker)  # died while idle (killed from outside)
        return await self._start(slot)

    async def _start(self, slot: int) -> _Worker:
        loop = asyncio.get_running_loop()
        parent_conn, child_conn = self._context.Pipe(duplex=True)
        shared = self._context.RawArray("d", 3)
        process = self._context.Process(  # type: ignore[attr-defined]
            target=_worker.main,
            args=(child_conn, shared, self._initializer, self._initargs),
            daemon=True,
            name=f"phalanx-worker-{slot}",
        )
        # Starting a process blocks for a moment (fork or a forkserver round trip); the
        # loop can live with it, and the scheduler never starts more than one per slot.
        with _main_module_hidden():
            process.start()
        child_conn.close()
        worker = _Worker(process, parent_conn, shared)
        self._workers[slot] = worker
        self.started += 1
        loop.add_reader(parent_conn.fileno(), self._on_message, worker)
        loop.add_reader(process.sentinel, self._on_exit, worker)
        message = await worker.messages.get()
        if message[0] == "init-failed":
            await self._discard(worker)
            raise WorkerInitError(message[1])
        if message[0] != "ready":
            await self._discard(worker)
            raise WorkerInitError(ErrorInfo("WorkerDied", _describe_exit(worker.exit_code)))
        return worker

    def _on_message(self, worker: _Worker) -> None:
        try:
            while worker.conn.poll():
                worker.messages.put_nowait(pickle.loads(worker.conn.recv_bytes()))
        except (EOFError, OSError):
            self._forget_reader(worker.conn)

    def _on_exit(self, worker: _Worker) -> None:
        loop = asyncio.get_running_loop()
        loop.remove_reader(worker.process.sentinel)
        self._on_message(worker)  # whatever it sent before dying comes first
        worker.process.join(0)
        worker.exit_code = worker.process.exitcode if worker.process.exitcode is not None else -9
        self._forget_reader(worker.conn)
        worker.messages.put_nowait(("exited", worker.exit_code))

    def _forget_reader(self, conn: Connection) -> None:
        with contextlib.suppress(Exception):
            asyncio.get_running_loop().remove_reader(conn.fileno())

    async def _discard(self, worker: _Worker) -> None:
        """Kill a worker and wait until it is reaped."""
        if worker.alive:
            with contextlib.suppress(ProcessLookupError):
                os.kill(worker.pid, signal.SIGKILL)
            child = int(worker.shared[_worker.CHILD_PID])
            if child:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(child, signal.SIGKILL)
            while worker.alive:
                await worker.messages.get()
        with contextlib.suppress(Exception):
            worker.conn.close()
        for slot, known in list(self._workers.items()):
            if known is worker:
                del self._workers[slot]

    # ------------------------------------------------------------------ batches

    async def run(self, attempt: Attempt) -> Outcome:
        action = attempt.task.action
        if isinstance(action, Batch):
            batch = action
        else:
            assert callable(action)
            batch = Batch(action, [(0, attempt.task.args, dict(attempt.task.kwargs))])
        slot = max(1, attempt.worker)
        results = await self.run_batch(slot, batch)
        if not isinstance(action, Batch):
            return _single_outcome(results[0])
        return Outcome(ok=True, value=results)

    async def run_batch(self, slot: int, batch: Batch) -> list[ItemResult]:
        """Run every item of the batch in the slot's worker, replacing it as often as needed."""
        key, blob = batch.fn_key, b""
        if not key:
            key, blob = function_key(batch.fn)
        results: dict[int, ItemResult] = {}
        remaining = list(batch.items)
        while remaining:
            worker = await self._worker(slot)
            chunk = remaining
            if self._max_tasks is not None:
                chunk = remaining[: max(1, self._max_tasks - worker.items_done)]
            if key not in worker.functions and not blob:
                _, blob = function_key(batch.fn)
            fn_blob = None if key in worker.functions else blob
            try:
                message = _worker.dumps(("batch", key, fn_blob, chunk, batch.isolate))
            except Exception:
                sendable, refused = _pickle_items(chunk)  # find and fail the items that do not pickle
                results.update(refused)
                if not sendable:
                    remaining = remaining[len(chunk):]
                    continue
                message = _worker.dumps(("batch", key, fn_blob, sendable, batch.isolate))
            try:
                worker.conn.send_bytes(message)
            except (BrokenPipeError, OSError):
                await self._discard(worker)
                continue
            worker.functions.add(key)
            try:
                await self._collect(worker, batch, results)
            except asyncio.CancelledError:
                await self._discard(worker)  # the work must really stop
                raise
            remaining = [item for item in remaining if item[0] not in results]
            await self._maybe_recycle(worker)
        return [results[position] for position, _, _ in batch.items]

    async def _collect(self, worker: _Worker, batch: Batch, results: dict[int, ItemResult]) -> None:
        """Gather the batch's results until it is done or its worker is gone."""
        loop = asyncio.get_running_loop()
        timer: list[asyncio.TimerHandle] = []

        def tick() -> None:
            self._check_timeout(worker, batch)
            timer[0] = loop.call_later(_TIMEOUT_TICK, tick)

        if batch.item_timeout is not None:
            timer.append(loop.call_later(_TIMEOUT_TICK, tick))
        try:
            while True:
                message = await worker.messages.get()
                kind = message[0]
                if kind == "results":
                    pid = worker.pid
                    for index, ok, payload, seconds in message[1]:
                        results[index] = (
                            ItemResult(index, SUCCEEDED, payload, None, None, seconds, pid)
                            if ok
                            else _item_result(index, ok, payload, seconds, worker, batch)
                        )
                    worker.items_done += len(message[1])
                elif kind == "done":
                    return
                elif kind == "exited":
                    index = int(worker.shared[_worker.CURRENT_INDEX])
                    if index >= 0 and index not in results:
                        started = worker.shared[_worker.STARTED_AT]
                        results[index] = _lost_item(index, worker, time.monotonic() - started, batch)
                    await self._discard(worker)
                    return
        finally:
            for handle in timer:
                handle.cancel()

    def _check_timeout(self, worker: _Worker, batch: Batch) -> None:
        if not worker.alive:
            return
        assert batch.item_timeout is not None
        index = worker.shared[_worker.CURRENT_INDEX]
        running_for = time.monotonic() - worker.shared[_worker.STARTED_AT]
        if index >= 0 and running_for > batch.item_timeout:
            worker.killed_for_timeout = True
            child = int(worker.shared[_worker.CHILD_PID])
            with contextlib.suppress(ProcessLookupError, PermissionError):
                if batch.isolate and child:
                    os.killpg(child, signal.SIGKILL)  # the warm worker lives on
                else:
                    os.kill(worker.pid, signal.SIGKILL)
            if batch.isolate and child:
                # Give the next item its own clock: the flag is read when the child's death arrives.
                worker.shared[_worker.STARTED_AT] = time.monotonic()

    async def _maybe_recycle(self, worker: _Worker) -> None:
        if not worker.alive:
            return
        too_old = self._max_tasks is not None and worker.items_done >= self._max_tasks
        too_big = False
        if self._max_memory is not None:
            import psutil

            with contextlib.suppress(psutil.Error):
                too_big = psutil.Process(worker.pid).memory_info().rss > self._max_memory
        if too_old or too_big:
            await self._stop(worker)

    async def _stop(self, worker: _Worker) -> None:
        """Ask a worker to leave, and make sure it does."""
        with contextlib.suppress(Exception):
            worker.conn.send_bytes(cloudpickle.dumps(("stop",)))
        try:
            async with asyncio.timeout(2.0):
                while worker.alive:
                    await worker.messages.get()
        except TimeoutError:
            pass
        await self._discard(worker)

    async def aclose(self) -> None:
        """Stop every worker; none is left running."""
        self._closing = True
        await asyncio.gather(*(self._stop(worker) for worker in list(self._workers.values())))


@contextlib.contextmanager
def _main_module_hidden() -> Iterator[None]:
    """Start workers without re-running the user's main script in them.

    multiprocessing's spawn and forkserver methods import ``__main__`` again in every new
    process, which runs a script's top level (or fails without an ``if __name__ ==
    "__main__"`` guard). phalanx ships callables with cloudpickle, so workers never need
    the main module: hide it while the process starts.
    """
    main = sys.modules.get("__main__")
    if main is None:
        yield
        return
    saved: dict[str, Any] = {name: main.__dict__[name] for name in ("__file__", "__spec__") if name in main.__dict__}
    main.__dict__.pop("__file__", None)
    main.__dict__["__spec__"] = None
    try:
        yield
    finally:
        main.__dict__.pop("__spec__", None)
        main.__dict__.update(saved)


class WorkerInitError(RuntimeError):
    """A worker could not start: its initializer raised, or it died while starting."""

    def __init__(self, error: ErrorInfo) -> None:
        super().__init__(f"a worker could not start: {error}")
        self.error = error


def _pickle_items(
    items: list[tuple[int, tuple[Any, ...], dict[str, Any]]],
) -> tuple[list[tuple[int, tuple[Any, ...], dict[str, Any]]], dict[int, ItemResult]]:
    """The items that can be sent, and a failed result for each that cannot be pickled."""
    sendable = []
    refused: dict[int, ItemResult] = {}
    for item in items:
        try:
            cloudpickle.dumps(item)
            sendable.append(item)
        except Exception as error:
            culprit = _unpicklable_part(item)
            message = (
                f"item {item[0]}: an argument of type {type(culprit).__name__} cannot be pickled "
                f"to send it to a worker process: {error}"
            )
            refused[item[0]] = ItemResult(item[0], Status.FAILED, error=ErrorInfo("PicklingError", message))
    return sendable, refused


def _unpicklable_part(item: tuple[int, tuple[Any, ...], dict[str, Any]]) -> Any:
    for value in (*item[1], *item[2].values()):
        try:
            cloudpickle.dumps(value)
        except Exception:
            return value
    return item


def _item_result(index: int, ok: bool, payload: Any, seconds: float, worker: _Worker, batch: Batch) -> ItemResult:
    if ok:
        return ItemResult(index, Status.SUCCEEDED, payload, duration=seconds, pid=worker.pid)
    if isinstance(payload, tuple) and len(payload) == 2 and payload[0] == "died":
        # An isolated item's child died: killed by us for its timeout, or of its own accord.
        if worker.killed_for_timeout:
            worker.killed_for_timeout = False
            return _timed_out(index, seconds, worker, batch)
        info = ErrorInfo("WorkerCrashed", f"item {index}: {_describe_exit(payload[1])}")
        return ItemResult(index, Status.CRASHED, error=info, duration=seconds, pid=worker.pid)
    info, blob = payload
    exception = None
    if blob is not None:
        with contextlib.suppress(Exception):
            exception = cloudpickle.loads(blob)
    return ItemResult(index, Status.FAILED, error=info, exception=exception, duration=seconds, pid=worker.pid)


def _timed_out(index: int, seconds: float, worker: _Worker, batch: Batch) -> ItemResult:
    info = ErrorInfo("TimeoutError", f"item {index} timed out after {batch.item_timeout:g}s; its work was stopped")
    return ItemResult(index, Status.TIMED_OUT, error=info, duration=seconds, pid=worker.pid)


def _lost_item(index: int, worker: _Worker, seconds: float, batch: Batch) -> ItemResult:
    if worker.killed_for_timeout:
        return _timed_out(index, seconds, worker, batch)
    info = ErrorInfo("WorkerCrashed", f"item {index}: the worker process {_describe_exit(worker.exit_code)}")
    return ItemResult(index, Status.CRASHED, error=info, duration=seconds, pid=worker.pid)


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "died"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        hint = {"SIGKILL": " (killed from outside, or by the OOM killer)", "SIGSEGV": " (a segfault)"}.get(name, "")
        return f"was killed by {name}{hint}"
    return f"exited with code {code}"


def _single_outcome(item: ItemResult) -> Outcome:
    if item.status is Status.SUCCEEDED:
        from .calls import succeeded

        return succeeded(item.value)
    return Outcome(ok=False, crashed=item.status is Status.CRASHED, reason=item.reason, error=item.error,
                   pid=item.pid, exception=item.exception)


