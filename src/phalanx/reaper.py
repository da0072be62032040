"""Waiting for and reaping our child processes, in one place, without a thread per child.

`ChildReaper` waits for specific pids only. It never installs a SIGCHLD handler and never
calls ``waitpid(-1)``: user code running in threads may start and wait for its own
subprocesses, and reaping those behind its back would break it.

On Linux (5.3+) each wait is a pidfd (``os.pidfd_open``) watched by the event loop with
``add_reader``: it becomes readable when the process exits, which costs no thread and no
polling. Where pidfds are unavailable (other Unixes, older kernels, seccomp filters that
refuse the call) one shared daemon thread polls the waited-for pids with ``WNOHANG``,
every millisecond at first and backing off to every 50 ms while nothing exits; that
bounds how late a long-running child is noticed, whatever the number of children.

Waiting and reaping are separate steps on purpose. `exited` returns once the child has
exited but leaves it a zombie, so its pid, and thus its process-group id, cannot be
reused yet: the caller can still ``killpg`` the group's leftovers safely and only then
`reap` it. `wait` does both.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import select
import threading
import weakref

#: Poll intervals of the fallback thread, in seconds.
_MIN_POLL = 0.001
_MAX_POLL = 0.05

# waitid(WNOWAIT) lets the fallback see an exit without reaping (not on macOS before 3.13).
_HAVE_WAITID = hasattr(os, "waitid") and hasattr(os, "WNOWAIT")


class ChildReaper:
    """Waits for our child processes on the running event loop, one pid at a time.

    One instance can serve any number of children and any event loop: each wait uses the
    loop it is awaited on. Every wait is cancellation-safe: cancelling it stops watching
    (the pidfd is closed) but never reaps the child, so the caller still owns it and
    decides what to do (typically kill it and wait again).

    Args:
        use_pidfd: use pidfds (the default where ``os.pidfd_open`` exists), or the shared
            polling thread when False. Tests use False to exercise the fallback.
    """

    def __init__(self, *, use_pidfd: bool | None = None) -> None:
        available = hasattr(os, "pidfd_open")
        self._use_pidfd = available if use_pidfd is None else use_pidfd and available

    async def wait(self, pid: int) -> int:
        """Wait for child ``pid`` to exit, reap it and return its raw wait status.

        Decode the status with ``os.waitstatus_to_exitcode``.
        """
        await self.exited(pid)
        return self.reap(pid)

    async def exited(self, pid: int) -> None:
        """Return once child ``pid`` has exited, without reaping it (it stays a zombie)."""
        if self._use_pidfd:
            try:
                pidfd = os.pidfd_open(pid)
            except ProcessLookupError:
                return  # no such process any more: reap() will tell the caller
            except OSError as error:
                if error.errno not in (errno.ENOSYS, errno.EPERM):
                    raise
                self._use_pidfd = False  # the kernel, or a seccomp filter, refuses pidfds
            else:
                try:
                    await _readable(pidfd)
                finally:
                    os.close(pidfd)
                return
        await _poller().exited(pid)

    def reap(self, pid: int) -> int:
        """Reap child ``pid``, which must have exited (see `exited`); return its wait status.

        Raises:
            ChildProcessError: ``pid`` is not our child, or somebody else reaped it.
            RuntimeError: the child is still running.
        """
        poller = _POLLER
        if poller is not None:
            status = poller.take(pid)
            if status is not None:
                return status
        reaped, status = os.waitpid(pid, os.WNOHANG)
        if reaped == 0:
            raise RuntimeError(f"child {pid} has not exited; await exited() before reap()")
        return status


async def _readable(fd: int) -> None:
    """Wait until ``fd`` is readable, watching it only while we wait."""
    loop = asyncio.get_running_loop()
    watcher = _WATCHERS.get(loop)
    if watcher is None:
        watcher = _WATCHERS[loop] = _PidfdWatcher(loop)
    await watcher.readable(fd)


class _PidfdWatcher:
    """The pidfds a loop waits on, in one epoll set of our own that the loop watches.

    A child then costs two ``epoll_ctl`` calls, where an asyncio reader of its own (a
    handle, a selector key, the loop's bookkeeping, in Python) cost about as much as the
    rest of a short job's launch. One-shot: a pidfd reports its exit once, not again at
    every turn of the loop until its waiter runs.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        # No reference to the loop: the loop's entry in _WATCHERS must die with it.
        self._epoll = select.epoll()
        self._waiting: dict[int, asyncio.Future[None]] = {}  # pidfd -> its waiter
        loop.add_reader(self._epoll.fileno(), self._ready)

    async def readable(self, fd: int) -> None:
        ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._epoll.register(fd, select.EPOLLIN | select.EPOLLONESHOT)
        self._waiting[fd] = ready
        try:
            await ready
        finally:
            del self._waiting[fd]
            self._epoll.unregister(fd)

    def _ready(self) -> None:
        for fd, _ in self._epoll.poll(0):
            future = self._waiting.get(fd)
            if future is not None:
                _wake(future)


#: One watcher per event loop (gone with its loop; its epoll closes with it).
_WATCHERS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _PidfdWatcher] = weakref.WeakKeyDictionary()


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():  # it may have been cancelled meanwhile
        future.set_result(None)


class _Poller:
    """The fallback: one daemon thread polling the pids that coroutines are waiting for."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._wakeup = threading.Event()
        self._waiters: dict[int, list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]]] = {}
        # Statuses of children the thread had to reap to see them exit (no waitid), kept
        # until reap() takes them, even if the coroutine that waited was cancelled.
        self._reaped: dict[int, int] = {}
        self._thread: threading.Thread | None = None

    async def exited(self, pid: int) -> None:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        entry = (loop, future)
        with self._lock:
            self._waiters.setdefault(pid, []).append(entry)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="phalanx-reaper", daemon=True)
                self._thread.start()
        self._wakeup.set()  # poll the new pid now, not after the current backoff
        try:
            await future
        finally:
            with self._lock:
                entries = self._waiters.get(pid)
                if entries is not None and entry in entries:
                    entries.remove(entry)
                    if not entries:
                        del self._waiters[pid]

    def take(self, pid: int) -> int | None:
        with self._lock:
            return self._reaped.pop(pid, None)

    def _run(self) -> None:
        delay: float | None = None  # None: nothing to watch, sleep until woken
        while True:
            if self._wakeup.wait(delay):
                self._wakeup.clear()
                delay = _MIN_POLL
            with self._lock:
                pids = list(self._waiters)
            exited = [pid for pid in pids if self._has_exited(pid)]
            with self._lock:
                for pid in exited:
                    for loop, future in self._waiters.pop(pid, ()):
                        with contextlib.suppress(RuntimeError):  # that loop is closed
                            loop.call_soon_threadsafe(_wake, future)
                remaining = bool(self._waiters)
            if not remaining:
                delay = None
            elif exited or delay is None:
                delay = _MIN_POLL
            else:
                delay = min(delay * 2, _MAX_POLL)

    def _has_exited(self, pid: int) -> bool:
        try:
            if _HAVE_WAITID:
                return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
            with self._lock:
                if pid in self._reaped:
                    return True
            reaped, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return True  # not waitable any more: reap() will raise for the caller
        if reaped == 0:
            return False
        with self._lock:
            self._reaped[pid] = status
        return True


_POLLER: _Poller | None = None
_POLLER_LOCK = threading.Lock()


def _poller() -> _Poller:
    global _POLLER
    with _POLLER_LOCK:
        if _POLLER is None:
            _POLLER = _Poller()
        return _POLLER


def _forget_poller() -> None:
    # A forked child has none of its parent's threads or children.
    global _POLLER
    _POLLER = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_poller)
