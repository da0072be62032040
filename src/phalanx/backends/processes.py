"""The process backend: Python callables on warm worker processes, one worker per slot.

::

    scheduler ──attempt(batch, slot k)──> ProcessBackend ──> worker k (a warm process)
        ^                                      │   batch ──> items run one by one
        └──── Outcome(value=BatchResult) <─────┘   <── results, flushed every ~20 ms

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

A worker leads a process group of its own, with whatever its items started in it: killing a
worker means killing its group, and a worker seen to exit (crashed, stopped, recycled) has
its group killed too, so a subprocess an item started never outlives its worker (a keeper
process in the group does the same should the owner not be there to; see `_worker`).

Items whose results the dead worker had computed but not yet sent (at most ~20 ms of
work) run again on the replacement: an item runs at least once, and more than once only
when a sibling killed its worker.

The fast path makes nothing per item: items go out as one pickled list, results come back
as lists of values and arrays of durations, copied into a `BatchResult` by slices; only an
item that does not succeed gets an `ItemResult` of its own.

Children are watched on the event loop (each worker's sentinel fd), never by a thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import pickle
import signal
import sys
import threading
import time
from array import array
from collections.abc import Callable, Iterator, Sequence
from multiprocessing.connection import Connection
from typing import Any

import cloudpickle

from .. import _worker
from .._worker import ONE, STAR, STAR_KW
from ..errors import ConfigError, WorkerInitError
from ..results import ErrorInfo, Status
from .base import Attempt, Outcome
from .batch import Batch, BatchResult, ItemResult, function_key

__all__ = ["ProcessBackend", "WorkerInitError", "default_start_method"]

SUCCEEDED = Status.SUCCEEDED

#: How often a running batch with an item timeout checks the clock.
_TIMEOUT_TICK = 0.01

#: A worker that dies this many times in a row before finishing any item of a batch: the
#: item it would run first is blamed (ends ``crashed``) rather than tried forever.
_FRUITLESS_DEATHS = 3


def default_start_method() -> str:
    """``auto``: forkserver where it exists (Linux), else spawn; never plain fork, which can
    copy a parent's held locks and threads into the worker."""
    return "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"


class _Worker:
    """A live worker process and what the parent knows of it."""

    def __init__(self, process: Any, conn: Connection, shared: Any, slot: int) -> None:
        self.process = process
        self.conn = conn
        self.shared = shared
        self.slot = slot
        self.pid: int = process.pid
        self.functions: dict[str, None] = {}  # the callables it keeps, least recently used first
        self.items_done = 0
        self.messages: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue()
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.gone = asyncio.Event()
        self.exit_code: int | None = None
        self.current: _Chunk | None = None
        self.discarded = False  # killed by us: it may not have exited yet, but it is done for

    @property
    def alive(self) -> bool:
        """Running and usable: not exited, and not being killed (its exit takes milliseconds to
        be seen; meanwhile nothing may be sent to it, or a new attempt would die with it)."""
        return self.exit_code is None and not self.discarded


class _Chunk:
    """One send of (part of) a batch to one worker, and what came back so far."""

    __slots__ = ("batch", "end", "error", "offsets", "reported", "timed_out", "worker_killed")

    def __init__(self, batch: Batch, offsets: Sequence[int]) -> None:
        self.batch = batch
        self.offsets = offsets  # the batch offsets sent, in order: local index -> offset
        self.reported = 0  # local indices below this have a result
        self.timed_out: int | None = None  # the local index stopped for its timeout
        self.worker_killed = False  # we killed the worker (for that timeout)
        self.end = ""  # done, exited, fn-failed, load-failed
        self.error: ErrorInfo | None = None


class ProcessBackend:
    """Runs `Batch` actions (and plain callables, as batches of one) on warm workers.

    Args:
        size: the number of workers (one per scheduler slot).
        start_method: ``auto`` (forkserver on Linux), ``forkserver``, ``spawn`` or ``fork``.
        initializer, initargs: run once in each worker as it starts (import heavy modules here).
        max_tasks_per_worker: replace a worker after it has run this many items.
        max_memory_per_worker: replace a worker whose resident memory exceeds this (bytes),
            checked after each batch.
        isolate: run plain callables (not `Batch`es, which say for themselves) in a fresh
            fork of the worker.
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
        isolate: bool = False,
    ) -> None:
        method = default_start_method() if start_method == "auto" else start_method
        if method not in multiprocessing.get_all_start_methods():
            raise ConfigError(f"start_method {start_method!r} is not available here")
        if max_tasks_per_worker is not None and max_tasks_per_worker < 1:
            raise ConfigError(f"max_tasks_per_worker must be at least 1, got {max_tasks_per_worker}")
        if max_memory_per_worker is not None and max_memory_per_worker < 1:
            raise ConfigError(f"max_memory_per_worker must be a positive number of bytes, got {max_memory_per_worker}")
        self._context = multiprocessing.get_context(method)
        if method == "forkserver":
            self._context.set_forkserver_preload(["phalanx._worker"])
        self.start_method = method
        self._size = size
        try:
            self._setup = cloudpickle.dumps((initializer, tuple(initargs)))
        except Exception as error:
            raise ConfigError(
                f"the initializer or its arguments cannot be pickled to send them to worker processes: "
                f"{type(error).__name__}: {error}"
            ) from None
        self._isolate = isolate
        self._max_tasks = max_tasks_per_worker
        self._max_memory = max_memory_per_worker
        self._workers: dict[int, _Worker] = {}
        self._closing = False
        self.started = 0  # workers started so far (replacements included)
        self.batches = 0  # batches run so far

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

    def running_item(self, slot: int) -> dict[str, Any] | None:
        """The item the slot's worker runs now: its map position, the pid of the process
        running it (the forked child with ``isolate``), the worker's pid, seconds so far."""
        worker = self._workers.get(slot)
        if worker is None or not worker.alive or worker.current is None:
            return None
        local = int(worker.shared[_worker.CURRENT_INDEX])
        chunk = worker.current
        if not 0 <= local < len(chunk.offsets):
            return None
        child = int(worker.shared[_worker.CHILD_PID]) if chunk.batch.isolate else 0
        return {
            "item": chunk.batch.where[chunk.offsets[local]],
            "pid": child or worker.pid,
            "worker_pid": worker.pid,
            "running_for": max(0.0, time.monotonic() - worker.shared[_worker.STARTED_AT]),
        }

    @property
    def warmed_up(self) -> bool:
        ready = [w for w in self._workers.values() if w.alive and w.ready.done() and not w.ready.exception()]
        return len(ready) >= self._size

    async def _worker(self, slot: int) -> _Worker:
        worker = self._workers.get(slot)
        if worker is not None and worker.alive:
            await asyncio.shield(worker.ready)  # another caller may be starting it
            return worker
        if worker is not None:
            await self._discard(worker)  # died while idle (killed from outside), or being killed
        return await self._start(slot)

    async def _start(self, slot: int) -> _Worker:
        if self._closing:
            raise RuntimeError("the process backend is closed")
        loop = asyncio.get_running_loop()
        parent_conn, child_conn = self._context.Pipe(duplex=True)
        shared = self._context.RawArray("d", 3)
        process = self._context.Process(  # type: ignore[attr-defined]
            target=_worker.main,
            args=(child_conn, shared, self._setup, os.getpid()),  # it ends when this process does
            daemon=True,
            name=f"phalanx-worker-{slot}",
        )
        # Starting a process blocks for a moment (fork or a forkserver round trip); the
        # loop can live with it, and the scheduler never starts more than one per slot.
        with _main_module_hidden():
            process.start()
        child_conn.close()
        worker = _Worker(process, parent_conn, shared, slot)
        self._workers[slot] = worker
        self.started += 1
        loop.add_reader(parent_conn.fileno(), self._on_message, worker)
        loop.add_reader(process.sentinel, self._on_exit, worker)
        try:
            await asyncio.shield(worker.ready)
        except BaseException:
            await self._discard(worker)
            raise
        return worker

    def _on_message(self, worker: _Worker) -> None:
        try:
            while worker.conn.poll():
                blob = worker.conn.recv_bytes()
                try:
                    message = _worker.loads(blob)
                except Exception as error:  # only a results message can hold foreign objects
                    message = ("unreadable", ErrorInfo.from_exception(error))
                kind = message[0]
                if kind == "ready":
                    if not worker.ready.done():
                        worker.ready.set_result(None)
                elif kind == "init-failed":
                    if not worker.ready.done():
                        worker.ready.set_exception(WorkerInitError(message[1]))
                else:
                    worker.messages.put_nowait(message)
        except (EOFError, OSError):
            self._forget_reader(worker.conn)

    def _on_exit(self, worker: _Worker) -> None:
        loop = asyncio.get_running_loop()
        loop.remove_reader(worker.process.sentinel)
        self._on_message(worker)  # whatever it sent before dying comes first
        # What its items started (it may have died with them running). Not a kill of its pid,
        # which the forkserver may have reaped and the system handed out again; its group's
        # id stays reserved while any of the group lives (the keeper, at least, until now).
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(worker.pid, signal.SIGKILL)
        worker.process.join(0)
        if worker.process.exitcode is None:
            worker.process.join(1.0)  # the sentinel fired: the status is a moment away at most
        code = worker.process.exitcode
        worker.exit_code = code if code is not None else -signal.SIGKILL
        self._forget_reader(worker.conn)
        if not worker.ready.done():
            info = ErrorInfo("WorkerDied", f"the worker process {_describe_exit(worker.exit_code)} while starting")
            worker.ready.set_exception(WorkerInitError(info))
            worker.ready.exception()  # retrieved: nobody may be waiting any more
        worker.messages.put_nowait(("exited", worker.exit_code))
        worker.gone.set()

    def _forget_reader(self, conn: Connection) -> None:
        with contextlib.suppress(Exception):
            asyncio.get_running_loop().remove_reader(conn.fileno())

    async def _discard(self, worker: _Worker) -> None:
        """Kill a worker (and an isolated item's child) and wait until it is reaped.

        The kills are sent once, by the first caller; from then on the worker is not `alive`,
        so that a slot being refilled waits for it to go and starts a replacement.
        """
        if not worker.discarded:
            child = int(worker.shared[_worker.CHILD_PID])
            if worker.alive:
                _kill_group(worker.pid)
            worker.discarded = True
            if child:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(child, signal.SIGKILL)
        await worker.gone.wait()
        with contextlib.suppress(Exception):
            worker.conn.close()
        if self._workers.get(worker.slot) is worker:
            del self._workers[worker.slot]

    # ------------------------------------------------------------------ batches

    async def run(self, attempt: Attempt) -> Outcome:
        action = attempt.task.action
        slot = max(1, attempt.worker)
        if isinstance(action, Batch):
            return Outcome(ok=True, value=await self.run_batch(slot, action))
        assert callable(action)
        item = (attempt.task.args, dict(attempt.task.kwargs))
        batch = Batch(action, [item], mode=STAR_KW, isolate=self._isolate, label=f"task {attempt.task.id!r}")
        return _single_outcome((await self.run_batch(slot, batch)).item(0))

    async def run_batch(self, slot: int, batch: Batch) -> BatchResult:
        """Run every item of the batch in the slot's worker, replacing it as often as needed."""
        key, fn_blob = batch.fn_key, b""
        if not key:
            key, fn_blob = function_key(batch.fn)
        self.batches += 1
        out = BatchResult(batch.where)
        todo: Sequence[int] = range(len(batch.items))
        packed = False  # each item pickled on its own (after a batch that would not load)
        fruitless = 0
        while todo:
            worker = await self._worker(slot)
            chunk = todo
            if self._max_tasks is not None:
                chunk = todo[: max(1, self._max_tasks - worker.items_done)]
            rest = todo[len(chunk):]
            sent, items_blob, was_packed = _pack(batch, chunk, out, packed)
            if not sent:
                todo = rest
                continue
            known = key in worker.functions
            if not known and not fn_blob:
                _, fn_blob = function_key(batch.fn)
            forget = _remember(worker.functions, key)
            header = _worker.dumps(
                ("batch", key, None if known else fn_blob, batch.mode, batch.isolate, was_packed, forget)
            )
            run = _Chunk(batch, sent)
            worker.current = run
            try:
                try:
                    worker.conn.send_bytes(header)
                    worker.conn.send_bytes(items_blob)
                except OSError:
                    run.end = "exited"  # it died before it got the batch: nothing to blame
                    await self._discard(worker)
                else:
                    del items_blob
                    await self._collect(worker, run, out)
            except BaseException:
                # Cancelled (the work must really stop), or a bug: the worker is mid-batch
                # and out of step with us either way.
                await self._discard(worker)
                raise
            finally:
                worker.current = None
            if run.end == "done":
                todo = rest
            elif run.end == "exited":
                left = [offset for local, offset in enumerate(sent) if local >= run.reported]
                blamed = [offset for offset in left if offset in out.failures]
                fruitless = 0 if run.reported or blamed else fruitless + 1
                left = [offset for offset in left if offset not in out.failures]
                if fruitless >= _FRUITLESS_DEATHS and left:
                    why = f"the worker process died {fruitless} times before it could finish this item"
                    out.failures[left[0]] = ItemResult(
                        out.positions[left[0]], Status.CRASHED,
                        error=ErrorInfo("WorkerCrashed", f"{batch.describe(left[0])}: {why}"),
                    )
                    left, fruitless = left[1:], 0
                todo = [*left, *rest]
            elif run.end == "load-failed" and not was_packed:
                packed = True  # send the same items again, each pickled on its own
            else:  # the callable would not load here (or the results would not): the rest fail
                if run.end == "fn-failed":
                    worker.functions.pop(key, None)
                assert run.error is not None
                for offset in [*sent[run.reported:], *rest]:
                    if offset not in out.failures:
                        error = ErrorInfo(run.error.type, f"{batch.describe(offset)}: {run.error.message}",
                                          run.error.traceback)
                        out.failures[offset] = ItemResult(out.positions[offset], Status.FAILED, error=error)
                todo = []
            await self._maybe_recycle(worker)
        return out

    async def _collect(self, worker: _Worker, run: _Chunk, out: BatchResult) -> None:
        """Gather the chunk's results until it is done or its worker is gone."""
        loop = asyncio.get_running_loop()
        timer: list[asyncio.TimerHandle] = []
        timeout = run.batch.item_timeout

        def tick() -> None:
            self._check_timeout(worker, run)
            timer[0] = loop.call_later(_TIMEOUT_TICK, tick)

        if timeout is not None:
            timer.append(loop.call_later(_TIMEOUT_TICK, tick))
        try:
            while True:
                message = await worker.messages.get()
                kind = message[0]
                if kind == "results":
                    _, start, values_blob, durations, failures = message
                    _record(worker, run, out, start, values_blob, durations, failures)
                elif kind == "exited":
                    run.end = "exited"
                    local = int(worker.shared[_worker.CURRENT_INDEX])
                    if 0 <= local < len(run.offsets) and local >= run.reported:
                        offset = run.offsets[local]
                        seconds = time.monotonic() - worker.shared[_worker.STARTED_AT]
                        if run.timed_out == local:
                            out.failures[offset] = _timed_out(run.batch, offset, out, seconds, worker.pid)
                        elif not run.worker_killed:  # killed by us for another item: just requeue
                            what = f"{run.batch.describe(offset)}: the worker process {_describe_exit(message[1])}"
                            out.failures[offset] = ItemResult(
                                out.positions[offset], Status.CRASHED, error=ErrorInfo("WorkerCrashed", what),
                                duration=seconds, pid=worker.pid, exit_code=message[1],
                            )
                    await self._discard(worker)
                    return
                elif kind in ("done", "fn-failed", "load-failed"):
                    run.end = kind
                    run.error = message[1] if len(message) > 1 else None
                    return
                elif kind == "unreadable":  # cannot happen short of a broken install; never hang on it
                    run.end, run.error = kind, message[1]
                    await self._discard(worker)
                    return
        finally:
            for handle in timer:
                handle.cancel()

    def _check_timeout(self, worker: _Worker, run: _Chunk) -> None:
        if not worker.alive:
            return
        timeout = run.batch.item_timeout
        assert timeout is not None
        local = int(worker.shared[_worker.CURRENT_INDEX])  # the index first, then its start
        if local < 0 or local == run.timed_out:
            return
        if time.monotonic() - worker.shared[_worker.STARTED_AT] <= timeout:
            return
        run.timed_out = local
        child = int(worker.shared[_worker.CHILD_PID])
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if run.batch.isolate and child:
                os.killpg(child, signal.SIGKILL)  # the warm worker lives on
            else:
                run.worker_killed = True
                _kill_group(worker.pid)  # and what the item started

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
        if worker.alive:
            with contextlib.suppress(Exception):
                worker.conn.send_bytes(_worker.dumps(("stop",)))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(2.0):
                    await worker.gone.wait()
        await self._discard(worker)

    def stopped_outcome(self, attempt: Attempt) -> Outcome | None:
        return None  # a stopped item leaves nothing behind

    async def aclose(self) -> None:
        """Stop every worker; none is left running."""
        self._closing = True
        await asyncio.gather(*(self._stop(worker) for worker in list(self._workers.values())))


#: How many callables a worker keeps loaded (a loop of ``submit(lambda: ...)`` makes a new one each time).
_FUNCTIONS_KEPT = 32


def _remember(functions: dict[str, None], key: str) -> list[str]:
    """Note that the worker holds ``key`` now; the keys it must forget to stay within bounds."""
    functions.pop(key, None)
    functions[key] = None
    forget = []
    while len(functions) > _FUNCTIONS_KEPT:
        oldest = next(iter(functions))
        del functions[oldest]
        forget.append(oldest)
    return forget


def _record(
    worker: _Worker, run: _Chunk, out: BatchResult, start: int, values_blob: bytes, durations_bytes: bytes,
    failures: dict[int, Any],
) -> None:
    """Copy a group of results into the batch's arrays (by slices when the chunk is contiguous)."""
    pid = worker.pid
    durations = array("d")
    durations.frombytes(durations_bytes)
    count = len(durations)
    try:
        values: list[Any] = _worker.loads(values_blob)
    except Exception as error:  # values of a class this process cannot import
        values = [None] * count
        info = ErrorInfo.from_exception(error)
        for local in range(start, start + count):
            failures.setdefault(local, ("unreadable", info))
    offsets = run.offsets
    if isinstance(offsets, range) and offsets.step == 1:
        first = offsets.start + start
        out.values[first:first + count] = values
        out.durations[first:first + count] = durations
        out.pids[first:first + count] = array("q", [pid]) * count
    else:
        for local in range(count):
            offset = offsets[start + local]
            out.values[offset] = values[local]
            out.durations[offset] = durations[local]
            out.pids[offset] = pid
    for local, payload in failures.items():
        offset = offsets[local]
        out.values[offset] = None
        out.failures[offset] = _failure(run, out, offset, local, payload, durations[local - start], pid)
    run.reported = start + count
    worker.items_done += count


def _failure(run: _Chunk, out: BatchResult, offset: int, local: int, payload: Any, seconds: float,
             pid: int) -> ItemResult:
    """The `ItemResult` of a failure the worker reported."""
    batch = run.batch
    position = out.positions[offset]
    kind = payload[0]
    if kind == "raised":
        _, info, blob = payload
        exception = None
        if blob is not None:
            with contextlib.suppress(Exception):
                exception = cloudpickle.loads(blob)
        return ItemResult(position, Status.FAILED, error=info, exception=exception, duration=seconds, pid=pid)
    if kind == "died":  # an isolated item's child died: stopped for its timeout, or of its own accord
        if run.timed_out == local:
            return _timed_out(batch, offset, out, seconds, pid)
        info = ErrorInfo("WorkerCrashed", f"{batch.describe(offset)}: its process {_describe_exit(payload[1])}")
        return ItemResult(position, Status.CRASHED, error=info, duration=seconds, pid=pid, exit_code=payload[1])
    if kind == "unpicklable":
        _, what, type_name, problem = payload
        message = f"{batch.describe(offset)}: its {what} of type {type_name} cannot be pickled to send back: {problem}"
        return ItemResult(position, Status.FAILED, error=ErrorInfo("PicklingError", message), duration=seconds, pid=pid)
    info = payload[1]
    message = f"{batch.describe(offset)}: its return value cannot be unpickled here: {info}"
    return ItemResult(position, Status.FAILED, error=ErrorInfo("UnpicklingError", message, info.traceback),
                      duration=seconds, pid=pid)


def _pack(
    batch: Batch, chunk: Sequence[int], out: BatchResult, packed: bool
) -> tuple[Sequence[int], bytes, bool]:
    """The offsets sent, their items pickled, and whether each item is a pickle of its own.

    One pickle for the whole list when it can; otherwise (or after a batch the worker could
    not load) one pickle per item, so that an item that cannot be sent fails alone, with a
    message naming it and the type of the argument at fault.
    """
    items = batch.items
    if isinstance(chunk, range) and chunk.step == 1 and isinstance(items, list):
        selected = items[chunk.start:chunk.stop]
    else:
        selected = [items[offset] for offset in chunk]
    if not packed:
        try:
            return chunk, _worker.dumps(selected), False
        except Exception:
            pass
    sent: list[int] = []
    blobs: list[bytes] = []
    for offset, item in zip(chunk, selected, strict=True):
        try:
            blobs.append(_worker.dumps(item))
        except Exception as error:
            culprit = _culprit(item, batch.mode)
            message = (
                f"{batch.describe(offset)}: an argument of type {type(culprit).__name__} cannot be pickled "
                f"to send it to a worker process: {type(error).__name__}: {error}"
            )
            out.failures[offset] = ItemResult(out.positions[offset], Status.FAILED,
                                              error=ErrorInfo("PicklingError", message))
        else:
            sent.append(offset)
    return sent, pickle.dumps(blobs, pickle.HIGHEST_PROTOCOL), True


def _culprit(item: Any, mode: int) -> Any:
    """The innermost part of an item's arguments that cannot be pickled."""
    if mode == ONE:
        arguments: list[Any] = [item]
    elif mode == STAR:
        arguments = list(item)
    else:
        arguments = [*item[0], *item[1].values()]
    for argument in arguments:
        found = _unpicklable_part(argument, depth=4)
        if found is not None:
            return found
    return item


def _unpicklable_part(value: Any, depth: int) -> Any:
    try:
        cloudpickle.dumps(value)
        return None
    except Exception:
        pass
    if depth > 0:
        parts: list[Any] = []
        if isinstance(value, list | tuple | set | frozenset):
            parts = list(value)
        elif isinstance(value, dict):
            parts = [*value.keys(), *value.values()]
        elif hasattr(value, "__dict__") and isinstance(vars(value), dict):
            parts = list(vars(value).values())
        for part in parts:
            found = _unpicklable_part(part, depth - 1)
            if found is not None:
                return found
    return value


def _timed_out(batch: Batch, offset: int, out: BatchResult, seconds: float, pid: int) -> ItemResult:
    message = f"{batch.describe(offset)} timed out after {batch.item_timeout:g}s; its work was stopped"
    return ItemResult(out.positions[offset], Status.TIMED_OUT, error=ErrorInfo("TimeoutError", message),
                      duration=seconds, pid=pid)


def _kill_group(pid: int) -> None:
    """SIGKILL a worker and its process group: whatever its items started goes with it."""
    # Its group's id is its pid: while it runs, no other group can have that id.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, signal.SIGKILL)  # a worker killed before it could make its group


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
    code = item.exit_code
    return Outcome(
        ok=False, crashed=item.status is Status.CRASHED, reason=item.reason, error=item.error, pid=item.pid,
        exception=item.exception, exit_code=code if code is not None and code >= 0 else None,
        signal=-code if code is not None and code < 0 else None,
    )


# Executors start workers from their own loop threads, maybe at the same moment: the first
# to come hides ``__main__``'s attributes and the last to leave puts them back, so that no
# worker starts with them visible and none are put back while another start needs them
# hidden (nor is the None another left there "restored").
_main_lock = threading.Lock()
_main_users = 0
_main_saved: tuple[Any, dict[str, Any]] | None = None  # the module, and what it had


@contextlib.contextmanager
def _main_module_hidden() -> Iterator[None]:
    """Start workers without re-running the user's main script in them.

    multiprocessing's spawn and forkserver methods import ``__main__`` again in every new
    process, which runs a script's top level (or fails without an ``if __name__ ==
    "__main__"`` guard). phalanx ships callables with cloudpickle, so workers never need
    the main module: hide it while the process starts.
    """
    global _main_users, _main_saved
    with _main_lock:
        if _main_users == 0:
            main = sys.modules.get("__main__")
            if main is not None:
                names = ("__file__", "__spec__")
                _main_saved = main, {name: main.__dict__[name] for name in names if name in main.__dict__}
                main.__dict__.pop("__file__", None)
                main.__dict__["__spec__"] = None
        _main_users += 1
    try:
        yield
    finally:
        with _main_lock:
            _main_users -= 1
            if _main_users == 0 and _main_saved is not None:
                main, saved = _main_saved
                main.__dict__.pop("__spec__", None)
                main.__dict__.update(saved)
                _main_saved = None
