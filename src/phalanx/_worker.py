"""The code a warm worker process runs: receive batches, run their items, send results back.

Kept small and import-light: a worker imports this module, cloudpickle, and whatever the
user's initializer and callables need, once, and then serves batch after batch.

Protocol (cloudpickled tuples over a `multiprocessing` connection):

    parent -> worker  ("batch", fn_key, fn_or_None, [(index, args, kwargs) ...], isolate)
                      ("stop",)
    worker -> parent  ("ready", pid)                         after the initializer ran
                      ("results", [(index, ok, payload, seconds) ...])   flushed every ~20 ms
                      ("done",)                              the batch is over
                      ("init-failed", ErrorInfo)

``payload`` is the returned value, or for a failure an `ErrorInfo` plus (when it pickles)
the exception itself. Before each item the worker writes the item's index, its start time
(``time.monotonic``, the same clock as the parent's) and, with ``isolate``, the pid of the
child running it into a small shared array: the parent reads it to know which item a dead
worker was running and how long an item has run, without a message per item.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import signal
import sys
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any, cast

import cloudpickle

from .results import ErrorInfo

#: Shared array slots.
CURRENT_INDEX, STARTED_AT, CHILD_PID = 0, 1, 2
IDLE = -1.0

#: Results are sent in groups at most this old, so fast items cost one message per many.
_FLUSH_SECONDS = 0.02


def _die_with_parent() -> None:
    """Ask Linux to SIGKILL this worker if the phalanx process dies, however it dies."""
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(Exception):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def failure(error: BaseException) -> tuple[ErrorInfo, bytes | None]:
    """An exception as data, plus the exception itself pickled if it can be."""
    info = ErrorInfo.from_exception(error)
    try:
        blob: bytes | None = cloudpickle.dumps(error)
    except Exception:
        blob = None
    return info, blob


def main(
    conn: Connection,
    shared: Any,
    initializer: Callable[..., Any] | None,
    initargs: tuple[Any, ...],
) -> None:
    """Serve batches until told to stop or the parent goes away."""
    # Ctrl-C reaches the whole process group; the parent decides what happens to workers.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Started by the forkserver, a worker's parent is the server, which exits when phalanx
    # does: the death signal then reaches the worker too.
    _die_with_parent()
    shared[CURRENT_INDEX] = IDLE
    if initializer is not None:
        try:
            initializer(*initargs)
        except BaseException as error:  # report anything, even SystemExit, then stop
            conn.send_bytes(cloudpickle.dumps(("init-failed", ErrorInfo.from_exception(error))))
            return
    conn.send_bytes(cloudpickle.dumps(("ready", os.getpid())))
    functions: dict[str, Callable[..., Any]] = {}
    while True:
        try:
            message = pickle.loads(conn.recv_bytes())
        except (EOFError, OSError):
            return  # the parent is gone
        if message[0] == "stop":
            return
        _, fn_key, fn_blob, items, isolate = message
        if fn_blob is not None:
            functions[fn_key] = cloudpickle.loads(fn_blob)
        fn = functions[fn_key]
        run_batch = _run_isolated if isolate else _run_here
        run_batch(conn, shared, fn, items)
        shared[CURRENT_INDEX] = IDLE
        conn.send_bytes(dumps(("done",)))


def dumps(message: Any) -> bytes:
    """Plain pickle when it can (much faster for data), cloudpickle when it must
    (lambdas, closures, classes defined in ``__main__``)."""
    try:
        return pickle.dumps(message, pickle.HIGHEST_PROTOCOL)
    except Exception:
        return cast(bytes, cloudpickle.dumps(message, pickle.HIGHEST_PROTOCOL))


def _send(conn: Connection, results: list[tuple[int, bool, Any, float]]) -> None:
    try:
        blob = dumps(("results", results))
    except Exception:
        # Some returned value does not pickle: send them one by one to fail only those.
        blob = cloudpickle.dumps(("results", [_picklable(result) for result in results]))
    conn.send_bytes(blob)


def _picklable(result: tuple[int, bool, Any, float]) -> tuple[int, bool, Any, float]:
    index, ok, payload, seconds = result
    try:
        cloudpickle.dumps(payload)
        return result
    except Exception as error:
        what = "return value" if ok else "exception"
        info = ErrorInfo(
            type="PicklingError",
            message=f"item {index}: its {what} of type {type(payload).__name__} cannot be pickled: {error}",
        )
        return index, False, (info, None), seconds


def _run_here(conn: Connection, shared: Any, fn: Callable[..., Any], items: list[Any]) -> None:
    pending: list[tuple[int, bool, Any, float]] = []
    last_flush = time.monotonic()
    for index, args, kwargs in items:
        started = time.monotonic()
        shared[STARTED_AT] = started
        shared[CURRENT_INDEX] = index
        try:
            pending.append((index, True, fn(*args, **kwargs), time.monotonic() - started))
        except Exception as error:
            pending.append((index, False, failure(error), time.monotonic() - started))
        now = time.monotonic()
        if now - last_flush >= _FLUSH_SECONDS:
            _send(conn, pending)
            pending = []
            last_flush = now
    if pending:
        _send(conn, pending)


def _run_isolated(conn: Connection, shared: Any, fn: Callable[..., Any], items: list[Any]) -> None:
    """Fork a fresh child of this warm process for every item: nothing leaks between items."""
    for index, args, kwargs in items:
        read_fd, write_fd = os.pipe()
        started = time.monotonic()
        shared[STARTED_AT] = started
        shared[CURRENT_INDEX] = index
        pid = os.fork()
        if pid == 0:  # the child: run the item, write its outcome, leave without cleanup
            os.close(read_fd)
            os.setpgid(0, 0)
            try:
                outcome: tuple[bool, Any] = (True, fn(*args, **kwargs))
            except BaseException as error:
                outcome = (False, failure(error))
            try:
                blob = cloudpickle.dumps(outcome)
            except Exception:
                blob = cloudpickle.dumps(_picklable((index, *outcome, 0.0))[1:3])
            with os.fdopen(write_fd, "wb") as pipe:
                pipe.write(blob)
            os._exit(0)
        os.close(write_fd)
        shared[CHILD_PID] = pid
        with os.fdopen(read_fd, "rb") as pipe:
            blob = pipe.read()
        _, status = os.waitpid(pid, 0)
        shared[CHILD_PID] = 0
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)  # whatever the item started must not outlive it
        seconds = time.monotonic() - started
        if blob:
            ok, payload = cloudpickle.loads(blob)
            _send(conn, [(index, ok, payload, seconds)])
        else:
            # The child died before it could answer: tell the parent how.
            code = os.waitstatus_to_exitcode(status)
            _send(conn, [(index, False, ("died", code), seconds)])
