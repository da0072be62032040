"""The code a warm worker process runs: receive batches, run their items, send results back.

Kept small and import-light: a worker imports this module, cloudpickle, and whatever the
user's initializer and callables need, once, and then serves batch after batch.

Protocol (pickled tuples over a `multiprocessing` connection; one batch is two messages):

    parent -> worker  ("batch", fn_key, fn_blob_or_None, mode, isolate, packed, keys_to_forget)
                      (fn_blob is the pickled pair (fn, code_origins(fn)))
                      items_blob                      the items, pickled on their own
                      ("stop",)
    worker -> parent  ("ready", pid)                  after the initializer ran
                      ("init-failed", ErrorInfo)
                      ("results", start, values, durations, failures)   flushed every ~20 ms
                      ("done",)                       the batch is over
                      ("fn-failed", ErrorInfo)        the callable could not be loaded here
                      ("load-failed", ErrorInfo)      the items could not be unpickled here

Items travel as they are: one argument each (``mode`` ONE, ``fn(item)``), an argument
tuple (STAR, ``fn(*item)``) or an ``(args, kwargs)`` pair (STAR_KW). With ``packed`` each
item is a pickle of its own, loaded just before it runs, so that an item that cannot be
unpickled here fails alone. A ``results`` message covers the items ``start ..
start + len(values) - 1`` of the batch (their indices in the list sent): their values (None
for a failure), their durations (an ``array('d')`` as bytes) and the failures by index, each
``("raised", ErrorInfo, exception_blob_or_None)``, ``("died", exit_code)`` (an isolated
item's child died) or ``("unpicklable", what, type_name, error)`` (a returned value that
cannot be sent back). Nothing is made per succeeded item that the parent would have to
unpack one by one.

Before each item the worker writes its start time (``time.monotonic``, the parent's clock)
and then its index into a small shared array, and with ``isolate`` the pid of the child
running it: the parent reads it to know which item a dead worker was running and how long
an item has run, without a message per item. Between items (while sending results) the
index is IDLE, so a worker that dies or is slow to send is never taken for a slow item.

A worker does not outlive the process that owns it (the "owner", which made the
`ProcessBackend`), however that process ends, SIGKILL included. A daemon thread sleeps in
``poll()`` on a pidfd of the owner and on multiprocessing's parent sentinel (a pipe whose
write end only the owner holds); when either fires it SIGKILLs the process group of the
isolated item running now, if any, and ends the worker. It costs nothing per item: it never
wakes until then. The forkserver ends when its liveness pipe reaches end-of-file, that is
when every holder of the write end is gone; CPython gives every process it forks a copy, so
a worker closes its copy first thing.

Whatever an item starts (``subprocess.Popen``, ``os.system``, their own children, a
grandchild that outlived its parent) goes when its worker goes, never later. A worker leads
a process group of its own, which all of that joins (short of asking for a group or session
of its own), and starts a *keeper* in it first thing: a shell that does nothing but wait
for the worker to exit, however it exits, and then SIGKILL the group, itself included. The
owner kills the group too when it kills a worker (an item's timeout, a cancel) and when it
sees one exit; the keeper covers what the owner cannot see, such as the death signal that
ends a worker after the owner died. An item that returns leaves what it started to its
worker (like a module global, it may be meant for the next items): it goes when the worker
does, at the end of the run at the latest. With ``isolate`` it goes when the item ends.
Neither costs anything per item. A worker's standard input is ``/dev/null``: from a group
of its own, a child reading a terminal would be stopped (SIGTTIN), and the owner's input is
not the items' to take.
"""

from __future__ import annotations

import contextlib
import gc
import multiprocessing
import os
import pickle
import select
import signal
import subprocess
import sys
import threading
import time
import warnings
from array import array
from collections.abc import Callable, Iterator
from multiprocessing.connection import Connection
from typing import Any, cast

import cloudpickle

from .results import ErrorInfo

#: Shared array slots.
CURRENT_INDEX, STARTED_AT, CHILD_PID = 0, 1, 2
IDLE = -1.0

#: How an item's arguments are applied: ``fn(item)``, ``fn(*item)``, ``fn(*args, **kwargs)``.
ONE, STAR, STAR_KW = 0, 1, 2

#: Results are sent in groups at most this old, so fast items cost one message per many.
_FLUSH_SECONDS = 0.02


#: The exit status of a worker that ended because its owner died (nobody is left to read it).
_OWNER_GONE = 70

_prctl: Any = None


def _die_with_parent(sig: int = signal.SIGKILL) -> None:
    """Ask Linux to send ``sig`` to this process if its parent dies, however it dies (0: don't)."""
    global _prctl
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(Exception):
        if _prctl is None:  # looked up once per worker: its forked children reuse it
            import ctypes

            _prctl = ctypes.CDLL(None, use_errno=True).prctl
        PR_SET_PDEATHSIG = 1
        _prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0)


def _release_forkserver() -> None:
    """Close this worker's copy of the forkserver's liveness pipe.

    The server exits when the write end of that pipe is closed everywhere. The owner holds
    one; CPython's forkserver (``_serve_one``) hands another to every process it forks, as
    ``_forkserver._forkserver_alive_fd``: as long as one worker kept it, the server - and
    through it every worker - would outlive the owner. Nothing in a worker needs it (a
    forkserver the worker's own code starts is a new one, with a pipe of its own).
    """
    module = sys.modules.get("multiprocessing.forkserver")
    server = getattr(module, "_forkserver", None)
    if server is None or getattr(server, "_inherited_fds", None) is None:
        return  # not started by a forkserver (spawn, fork): there is no such copy
    fd = getattr(server, "_forkserver_alive_fd", None)
    if isinstance(fd, int):
        server._forkserver_alive_fd = None
        with contextlib.suppress(OSError):
            os.close(fd)


def _watch_owner(owner: int, slots: Any) -> None:
    """End this worker (and its isolated item's process group) soon after ``owner`` dies.

    Two signs, either enough: a pidfd of the owner becomes readable when it exits (exact,
    Linux 5.3+), and multiprocessing's parent sentinel reaches end-of-file when the last
    copy of its write end closes (portable; only the owner holds it, except that processes
    the owner forks without exec inherit it: then the pidfd answers first). Checking the
    sentinel too also covers an owner that died, its pid reused, before the pidfd opened.
    """
    fds: list[int] = []
    if owner > 0 and hasattr(os, "pidfd_open"):
        try:
            fds.append(os.pidfd_open(owner))
        except ProcessLookupError:
            os._exit(_OWNER_GONE)  # gone already
        except OSError:
            pass  # no pidfds here (an old kernel, a seccomp filter): the sentinel alone
    parent = multiprocessing.parent_process()
    if parent is not None:
        with contextlib.suppress(ValueError, AttributeError):
            fds.append(parent.sentinel)
    if not fds:
        return
    poller = select.poll()  # not select(): the fds may be above FD_SETSIZE
    for fd in fds:
        poller.register(fd, select.POLLIN)
    watcher = threading.Thread(
        target=_owner_watch, args=(poller, len(fds), slots), name="phalanx-owner-watch", daemon=True
    )
    watcher.start()


def _owner_watch(poller: select.poll, count: int, slots: Any) -> None:
    """The watcher thread: asleep in ``poll()`` (the GIL released) until the owner is gone."""
    while True:
        events = poller.poll()
        if any(not event & select.POLLNVAL for _, event in events):
            break  # readable or hung up: the owner has exited
        for fd, _ in events:  # closed under us by the user's code: stop watching it
            poller.unregister(fd)
            count -= 1
        if count == 0:
            return
    # The item's child is the leader of its own group: everything the item started goes too.
    child = int(slots[CHILD_PID])
    if child > 0:
        with contextlib.suppress(OSError):
            os.killpg(child, signal.SIGKILL)
    os._exit(_OWNER_GONE)


def _stdin_from_devnull() -> None:
    """Give file descriptor 0 to ``/dev/null`` (multiprocessing only replaces ``sys.stdin``)."""
    with contextlib.suppress(OSError):
        null = os.open(os.devnull, os.O_RDONLY)
        if null != 0:
            os.dup2(null, 0)
            os.close(null)


def _lead_own_group() -> None:
    """Lead a process group of our own, with a keeper in it that kills it once we are gone."""
    with contextlib.suppress(OSError):
        os.setpgid(0, 0)
    if os.getpgrp() != os.getpid():
        return  # no group of our own: never kill the one we are in (the owner's, its shell's)
    # The keeper is a shell (a fork of this process would hold on to a copy of its memory)
    # reading a pipe whose write end only we hold: it is not inheritable, so no program an
    # item runs gets it; only a fork without exec would (an isolated item's child, which
    # dies with us; an item's own os.fork(), which delays the keeper until it exits).
    # End of file means we have exited, however we did: it SIGKILLs the group, itself too.
    read_end, write_end = os.pipe()
    try:
        keeper = subprocess.Popen(["/bin/sh", "-c", "read _; kill -KILL 0"], stdin=read_end,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    except OSError:
        os.close(write_end)  # no shell: the owner's kills will have to do
    else:
        _keeper.append((keeper, write_end))
    finally:
        os.close(read_end)


#: The keeper and the write end of its pipe, held for as long as the worker lives.
_keeper: list[tuple[subprocess.Popen[bytes], int]] = []


if sys.version_info >= (3, 12):

    def _fork() -> int:
        # The owner watcher is a second thread, asleep in poll() and holding no lock: the
        # fork is safe, and the warning CPython 3.12+ gives for it (an error under -W error) is not.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            return os.fork()

else:
    _fork = os.fork


def failure(error: BaseException) -> tuple[str, ErrorInfo, bytes | None]:
    """An exception as data (``("raised", ErrorInfo, blob)``), with the exception itself
    pickled if it can be, and comes back (an exception whose ``__init__`` wants other
    arguments than its ``args`` pickles, then fails to unpickle)."""
    info = describe_error(error)
    try:
        blob: bytes | None = cloudpickle.dumps(error)
        cloudpickle.loads(blob)
    except Exception:
        blob = None
    return "raised", info, blob


def apply(fn: Callable[..., Any], item: Any, mode: int) -> Any:
    """Call ``fn`` on one item as ``mode`` says."""
    if mode == ONE:
        return fn(item)
    if mode == STAR:
        return fn(*item)
    args, kwargs = item
    return fn(*args, **kwargs)


def loads(blob: bytes) -> Any:
    """Unpickle without the cyclic GC: a big batch of tuples would otherwise set off full
    collections over and over while it is read (the GC scans every new container)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        return pickle.loads(blob)
    finally:
        if enabled:
            gc.enable()


def dumps(message: Any) -> bytes:
    """Plain pickle when it can (much faster for data), cloudpickle when it must
    (lambdas, closures, classes defined in ``__main__``)."""
    try:
        return pickle.dumps(message, pickle.HIGHEST_PROTOCOL)
    except Exception:
        return cast(bytes, cloudpickle.dumps(message, pickle.HIGHEST_PROTOCOL))


def main(conn: Connection, shared: Any, setup: bytes, owner: int = 0) -> None:
    """Serve batches until told to stop or the parent goes away.

    ``setup`` is the initializer and its arguments, cloudpickled by the parent (so a lambda
    or a function of the user's ``__main__`` works, which multiprocessing's own pickling of
    a process's arguments would refuse or, worse, look up by name in the wrong module).
    ``owner`` is the pid of the process that started this worker for its `ProcessBackend`.
    """
    # Ctrl-C is the owner's to handle: it decides what happens to workers.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _release_forkserver()  # first: until then the forkserver cannot see the owner go
    _stdin_from_devnull()
    _lead_own_group()
    slots: Any = memoryview(shared).cast("B").cast("d")  # faster than the ctypes array
    slots[CURRENT_INDEX] = IDLE
    slots[CHILD_PID] = 0
    _watch_owner(owner, slots)
    # Also a death signal from the parent: the forkserver, which now exits when the owner
    # does (or the owner itself with spawn and fork). Unlike the watcher it needs no GIL,
    # so it ends even a worker whose item holds the GIL in C code for minutes.
    _die_with_parent()
    try:
        initializer, initargs = pickle.loads(setup)
        if initializer is not None:
            initializer(*initargs)
    except BaseException as error:  # report anything, even SystemExit, then stop
        conn.send_bytes(cloudpickle.dumps(("init-failed", describe_error(error))))
        return
    conn.send_bytes(cloudpickle.dumps(("ready", os.getpid())))
    functions: dict[str, Callable[..., Any]] = {}
    while True:
        try:
            message = pickle.loads(conn.recv_bytes())
            if message[0] == "stop":
                return
            items_blob = conn.recv_bytes()
        except (EOFError, OSError):
            return  # the parent is gone
        _, fn_key, fn_blob, mode, isolate, packed, forget = message
        for key in forget:
            functions.pop(key, None)
        try:
            if fn_blob is not None:
                shipped, origins = cloudpickle.loads(fn_blob)
                functions[fn_key] = restore_filenames(shipped, origins)
            fn = functions[fn_key]
        except BaseException as error:
            conn.send_bytes(dumps(("fn-failed", _error_info(error, "the callable cannot be loaded in the worker"))))
            continue
        try:
            items = loads(items_blob)
        except BaseException as error:
            conn.send_bytes(dumps(("load-failed", _error_info(error, "the items cannot be loaded in the worker"))))
            continue
        del items_blob
        run_batch = _run_isolated if isolate else _run_here
        run_batch(conn, slots, fn, items, mode, packed)
        slots[CURRENT_INDEX] = IDLE
        del items
        conn.send_bytes(dumps(("done",)))


def _error_info(error: BaseException, what: str) -> ErrorInfo:
    info = describe_error(error)
    return ErrorInfo(info.type, f"{what}: {info.message}", info.traceback)


def describe_error(error: BaseException) -> ErrorInfo:
    """`ErrorInfo.from_exception`, even for an exception whose message cannot be formatted."""
    try:
        return ErrorInfo.from_exception(error)
    except Exception as problem:
        return ErrorInfo(type(error).__qualname__, f"(its message could not be formatted: {problem!r})")


def _send(conn: Connection, start: int, values: list[Any], durations: array[float], failures: dict[int, Any]) -> None:
    # The values are a pickle of their own inside the message: should the parent fail to
    # unpickle them (a class it cannot import), it still knows which items they were.
    try:
        values_blob = dumps(values)
    except Exception:
        # Some returned value does not pickle: fail only those items.
        for offset, value in enumerate(values):
            index = start + offset
            if index not in failures:
                problem = _unpicklable(value, "return value")
                if problem is not None:
                    values[offset] = None
                    failures[index] = problem
        values_blob = dumps(values)
    conn.send_bytes(dumps(("results", start, values_blob, durations.tobytes(), failures)))


def _unpicklable(value: Any, what: str) -> tuple[str, str, str, str] | None:
    """``("unpicklable", what, type name, error)`` if ``value`` cannot be sent back."""
    try:
        cloudpickle.dumps(value)
        return None
    except Exception as error:
        return "unpicklable", what, type(value).__name__, f"{type(error).__name__}: {error}"


def _items(items: list[Any], packed: bool) -> Iterator[Any]:
    return iter(items) if not packed else (_Packed(blob) for blob in items)


class _Packed:
    """An item pickled on its own, loaded when it runs (inside the item's own error handling)."""

    __slots__ = ("blob",)

    def __init__(self, blob: bytes) -> None:
        self.blob = blob


def _run_here(
    conn: Connection, slots: Any, fn: Callable[..., Any], items: list[Any], mode: int, packed: bool
) -> None:
    monotonic = time.monotonic
    values: list[Any] = []
    durations = array("d")
    failures: dict[int, Any] = {}
    start = 0
    last_flush = monotonic()
    for index, item in enumerate(_items(items, packed)):
        started = monotonic()
        slots[STARTED_AT] = started  # the start first: the parent reads the index first
        slots[CURRENT_INDEX] = index
        try:
            value = apply(fn, pickle.loads(item.blob) if packed else item, mode)
        except BaseException as error:
            value = None
            failures[index] = failure(error)
        ended = monotonic()
        values.append(value)
        durations.append(ended - started)
        if ended - last_flush >= _FLUSH_SECONDS:
            slots[CURRENT_INDEX] = IDLE
            _send(conn, start, values, durations, failures)
            start = index + 1
            values, durations, failures = [], array("d"), {}
            last_flush = monotonic()
    if values:
        slots[CURRENT_INDEX] = IDLE
        _send(conn, start, values, durations, failures)


def _run_isolated(
    conn: Connection, slots: Any, fn: Callable[..., Any], items: list[Any], mode: int, packed: bool
) -> None:
    """Fork a fresh child of this warm process for every item: nothing leaks between items.

    The parent's death signal is off meanwhile: should the owner die, the watcher thread
    must be the one to end this worker, after it killed the item's process group (the
    worker waits in system calls here, GIL released: the watcher always gets to run).
    """
    _die_with_parent(0)
    try:
        _fork_each(conn, slots, fn, items, mode, packed)
    finally:
        _die_with_parent()


def _fork_each(
    conn: Connection, slots: Any, fn: Callable[..., Any], items: list[Any], mode: int, packed: bool
) -> None:
    for index, item in enumerate(_items(items, packed)):
        read_fd, write_fd = os.pipe()
        started = time.monotonic()
        slots[STARTED_AT] = started
        slots[CURRENT_INDEX] = index
        parent = os.getpid()
        pid = _fork()
        if pid == 0:  # the child: run the item, write its outcome, leave without cleanup
            _child(conn, parent, read_fd, write_fd, fn, item, mode, packed)
        with contextlib.suppress(OSError):
            os.setpgid(pid, pid)  # here too: the group must exist before anyone may kill it
        slots[CHILD_PID] = pid
        os.close(write_fd)
        with os.fdopen(read_fd, "rb") as pipe:
            blob = pipe.read()
        _, status = os.waitpid(pid, 0)
        slots[CHILD_PID] = 0
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)  # whatever the item started must not outlive it
        seconds = time.monotonic() - started
        slots[CURRENT_INDEX] = IDLE
        durations = array("d", [seconds])
        if blob:
            ok, payload = pickle.loads(blob)
            _send(conn, index, [payload if ok else None], durations, {} if ok else {index: payload})
        else:
            # The child died before it could answer: tell the parent how.
            _send(conn, index, [None], durations, {index: ("died", os.waitstatus_to_exitcode(status))})


def _child(
    conn: Connection, parent: int, read_fd: int, write_fd: int, fn: Callable[..., Any], item: Any, mode: int,
    packed: bool,
) -> None:
    try:
        os.close(read_fd)
        conn.close()
        with contextlib.suppress(OSError):
            os.setpgid(0, 0)
        _die_with_parent()  # the warm worker killed from outside takes its item's child along
        if os.getppid() != parent:
            return  # it died before the death signal was armed
        try:
            outcome: tuple[bool, Any] = (True, apply(fn, pickle.loads(item.blob) if packed else item, mode))
        except BaseException as error:
            outcome = (False, failure(error))
        try:
            blob = dumps(outcome)
        except Exception:  # a failure is always picklable: only a returned value can be at fault
            blob = dumps((False, _unpicklable(outcome[1], "return value")))
        with os.fdopen(write_fd, "wb") as pipe:
            pipe.write(blob)
    finally:
        # os._exit skips the interpreter's cleanup, flushing included: what the item
        # printed into a buffered (piped) stdout would be lost.
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(0)


#: cloudpickle names the file of every function it ships by value "<dynamic-code>" (for
#: deterministic payloads), so a worker's traceback would say ``File "<dynamic-code>"``
#: with no source line. The parent sends where each such function's code came from, and the
#: worker puts the names back: tracebacks then show the user's file, line and source.
_DYNAMIC = "<dynamic-code>"
_ORIGINS_KEPT = 256


def code_origins(fn: Any) -> dict[tuple[str, int], str]:
    """The files of the code of ``fn`` and of the functions it reaches through its globals
    and closure: ``(co_name, co_firstlineno) -> co_filename``."""
    origins: dict[tuple[str, int], str] = {}
    for function in _reachable_functions(fn):
        for code in _codes(function.__code__):
            origins.setdefault((code.co_name, code.co_firstlineno), code.co_filename)
    return origins


def restore_filenames(fn: Any, origins: dict[tuple[str, int], str]) -> Any:
    """Give the functions cloudpickle shipped by value their files back (see `code_origins`)."""
    if origins:
        for function in _reachable_functions(fn):
            code = function.__code__
            if code.co_filename == _DYNAMIC:
                with contextlib.suppress(AttributeError, TypeError, ValueError):
                    function.__code__ = _renamed(code, origins)
    return fn


def _reachable_functions(fn: Any) -> list[Any]:
    seen: dict[int, Any] = {}
    todo = [getattr(fn, "__func__", fn)]
    while todo and len(seen) < _ORIGINS_KEPT:
        function = todo.pop()
        code = getattr(function, "__code__", None)
        if code is None or id(function) in seen:
            continue
        seen[id(function)] = function
        namespace = getattr(function, "__globals__", {})
        todo.extend(namespace[name] for name in code.co_names if name in namespace)
        for cell in getattr(function, "__closure__", None) or ():
            with contextlib.suppress(ValueError):  # an empty cell
                todo.append(cell.cell_contents)
    return list(seen.values())


def _codes(code: Any) -> Iterator[Any]:
    yield code
    for const in code.co_consts:
        if hasattr(const, "co_code"):
            yield from _codes(const)


def _renamed(code: Any, origins: dict[tuple[str, int], str]) -> Any:
    filename = origins.get((code.co_name, code.co_firstlineno), code.co_filename)
    consts = tuple(_renamed(const, origins) if hasattr(const, "co_code") else const for const in code.co_consts)
    return code.replace(co_filename=filename, co_consts=consts)

