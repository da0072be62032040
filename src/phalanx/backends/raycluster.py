"""Ray as the cluster engine of `ClusterBackend` (``--backend ray``).

phalanx connects to a running Ray cluster (``--scheduler HOST:6379``, ``ray://HOST:10001``
or ``auto``; else ``PHALANX_RAY_ADDRESS``) or, without an address, starts a local Ray for
the run: as many CPUs as the machine has, or as ``-j`` asks if more (an attempt's task only
waits on its attempt's process). A process that has initialised Ray itself (a library
caller) has its Ray used as it is, and left running.

Each attempt is one Ray task, `ray_entry`, with the attempt pickled as its one argument,
one CPU, and the worker resources it asks for (``CPU``, ``GPU`` and ``memory`` as Ray's own
keywords, other names as custom ``resources``). Ray's own retries are off (``max_retries=0``,
``retry_exceptions=False``): phalanx's retry policy is the only one. Ray has no priorities:
phalanx submits each attempt when its scheduler decides it starts.

Where an attempt ran (``worker_address``): ``ray://<node ip>/worker-<worker id, 8 hex>/pid-<pid>``,
as Ray's own logs name the worker process.

How an attempt on a worker knows it must stop: `RayCluster.stop` cancels its task
(``ray.cancel(force=False)``), which sets the task's cancelled flag, read every 50 ms
(``should_stop``), and interrupts the worker's main thread, which only notes it while the
attempt runs (taken as a KeyboardInterrupt, it would lose the stopped attempt's output): the
attempt is stopped there like any other and its answer comes back with what it printed. A
coordinator that has gone takes its tasks with it: Ray kills the worker processes of a dead
driver, and the Node's watchdog then ends every command they ran.

A worker lost mid-attempt (killed, out of memory, its node gone) ends the attempt
``crashed``. Which worker it was, Ray does not say; an attempt that runs longer than a poll
notes it in the cluster's key-value store (one write, one delete), for the coordinator to
read should the attempt be lost.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import signal
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from ..errors import ConfigError
from ..remote import RemoteAttempt, RemoteOutcome, run_remote
from .cluster import WorkerLost

_log = logging.getLogger(__name__)

#: The environment variable naming the Ray cluster to connect to.
ADDRESS_VARIABLE = "PHALANX_RAY_ADDRESS"

#: Seconds to wait for a Ray cluster to answer at an address.
CONNECT_TIMEOUT = 30.0

#: Seconds a Ray address gets to accept a connection before phalanx asks Ray to connect.
PROBE_TIMEOUT = 5.0

#: Seconds to wait for a local Ray to start, and for phalanx's Ray to shut down.
START_TIMEOUT = 60.0

#: The key-value namespace of the notes saying where a running attempt is.
NOTES = "phalanx"

#: Where a lost attempt ran, when it left no note (lost in its first poll, or the store unreachable);
#: in parentheses: not an address (the result then names no worker).
UNKNOWN_WORKER = "(unknown)"

#: The environment of the worker processes running attempts. A Ray worker that exits (its
#: driver gone, or forced) SIGKILLs its child processes first: each command's group leader,
#: but not the rest of its group, and the Node's watchdog, which would have ended the groups.
#: Without that, the watchdog sees the worker die and ends every group (TERM, grace, KILL).
#: Given to the job when phalanx connects (its prestarted workers then serve), and to each
#: task, which makes the same environment in a job that did not have it (a caller's Ray).
RUNTIME_ENV = {"env_vars": {"RAY_kill_child_processes_on_worker_exit": "false"}}

#: Ray's own resource names, asked for with keywords of their own rather than in ``resources``.
_KEYWORDS = {"CPU": "num_cpus", "GPU": "num_gpus", "memory": "memory"}


# ---------------------------------------------------------------------------- the worker side


def ray_entry(payload: bytes) -> RemoteOutcome:
    """The Ray task: run the pickled `RemoteAttempt` on this worker with phalanx's runners."""
    import cloudpickle

    remote: RemoteAttempt = cloudpickle.loads(payload)
    watch = _Watch(remote.key, _where())
    with _interrupts_noted() if watch.flagged else contextlib.nullcontext():
        try:
            return run_remote(remote, watch, watch.where)
        finally:
            watch.done()


class _Watch:
    """``should_stop`` of an attempt on a Ray worker: its task's cancelled flag. Its first call
    (the attempt has run a poll's time) also notes where the attempt runs, for the coordinator
    to tell which worker it was should the worker be lost.

    A Ray older than that flag (``RuntimeContext.is_canceled``) has ``flagged`` false: a
    cancellation then comes only as a KeyboardInterrupt, which remote.py's Node takes as a
    stop (the stopped attempt's output is lost)."""

    def __init__(self, key: str, where: str) -> None:
        import ray

        self.key = key
        self.where = where
        self._cancelled: Callable[[], bool] | None = getattr(ray.get_runtime_context(), "is_canceled", None)
        self.flagged = self._cancelled is not None
        self._noted = False

    def __call__(self) -> bool:
        if not self._noted:
            self._noted = True
            with contextlib.suppress(Exception):  # without the note only the lost worker's name is lost
                from ray.experimental import internal_kv

                internal_kv._internal_kv_put(self.key, self.where, namespace=NOTES)
        return self._cancelled is not None and bool(self._cancelled())

    def done(self) -> None:
        if self._noted:
            with contextlib.suppress(Exception):
                from ray.experimental import internal_kv

                internal_kv._internal_kv_del(self.key, namespace=NOTES)


_here: tuple[int, str] | None = None


def _where() -> str:
    """This worker process, as phalanx names it (see the module's docstring)."""
    global _here
    if _here is None or _here[0] != os.getpid():
        import ray

        worker = ray.get_runtime_context().get_worker_id()
        _here = (os.getpid(), f"ray://{ray.util.get_node_ip_address()}/worker-{worker[:8]}/pid-{os.getpid()}")
    return _here[1]


@contextlib.contextmanager
def _interrupts_noted() -> Iterator[None]:
    """While an attempt runs, an interrupt of the task's thread (how ``ray.cancel`` reaches a
    running task, its cancelled flag set first) changes nothing but that flag's being read:
    the attempt is stopped through ``should_stop`` and answers with its output. Ray runs a
    task on its worker's main thread, where alone a handler can be set; elsewhere remote.py's
    own handling of a KeyboardInterrupt stops the attempt (its output then lost)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, _noted)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _noted(signum: int, frame: Any) -> None:
    """The cancelled flag says it already: nothing to do here."""


_entry: Any = None


def _remote_entry() -> Any:
    """`ray_entry` as a Ray remote function, made on first use (importing this module does not import Ray)."""
    global _entry
    if _entry is None:
        import ray

        _entry = ray.remote(num_cpus=1, max_retries=0, retry_exceptions=False, runtime_env=RUNTIME_ENV)(ray_entry)
    return _entry


def _placement(resources: Mapping[str, float]) -> dict[str, Any]:
    """The options of a task asking for these worker resources."""
    options: dict[str, Any] = {}
    custom: dict[str, float] = {}
    for name, amount in resources.items():
        if name in _KEYWORDS:
            options[_KEYWORDS[name]] = amount
        else:
            custom[name] = amount
    if custom:
        options["resources"] = custom
    return options


# ---------------------------------------------------------------------------- the coordinator side


class _Session:
    """The Ray phalanx started or connected to in this process, shared by the runs that use
    it at once and shut down when the last one closes.

    ``ray.init`` runs on a thread of its own that lives until the shutdown: the processes of
    a local Ray die with the thread that started them (Linux's parent-death signal, which
    follows the thread), and a run may be opened on a short-lived thread (an `Executor`)."""

    def __init__(self, address: str | None, options: dict[str, Any]) -> None:
        self.address = address
        self.users = 1
        self.closing = False
        self.ready: concurrent.futures.Future[None] = concurrent.futures.Future()
        self.closed: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._close = threading.Event()
        self._options = options
        threading.Thread(target=self._keep, name="phalanx-ray", daemon=True).start()

    def _keep(self) -> None:
        import ray

        try:
            ray.init(address=self.address, **self._options)
        except BaseException as error:  # Ray gives up connecting with SystemExit: not the run's to end
            if not isinstance(error, Exception):
                error = ConnectionError(f"Ray gave up ({type(error).__name__}: {error})")
            self.ready.set_exception(error)
            self._gone()
            return
        restore = _errors_off_stdout()
        self.ready.set_result(None)
        self._close.wait()
        try:
            ray.shutdown()
        finally:
            restore()
            self._gone()

    def close(self) -> None:
        self._close.set()

    def _gone(self) -> None:
        global _session
        with _lock:
            if _session is self:
                _session = None
        self.closed.set_result(None)


_lock = threading.Lock()
_session: _Session | None = None


def _errors_off_stdout() -> Callable[[], None]:
    """Keep the driver's stdout phalanx's (``phalanx run --json``): Ray prints the cluster's
    error messages for the job there ("A worker died or was killed ...", each time phalanx
    reports a ``crashed`` attempt itself). They go to this module's logger instead, while
    phalanx's Ray is connected; returns what undoes it."""
    try:
        from ray._private import worker
    except ImportError:
        return lambda: None
    printing = getattr(worker, "print_to_stdstream", None)
    if printing is None:
        return lambda: None

    def diverted(data: dict[str, Any], ignore_prefix: bool) -> None:
        if data.get("pid") == "raylet" and not data.get("is_err"):
            for line in data.get("lines", ()):
                _log.info("%s", line)
            return
        printing(data, ignore_prefix)

    worker.print_to_stdstream = diverted
    return lambda: setattr(worker, "print_to_stdstream", printing)


class RayCluster:
    """A `Cluster` on Ray: this process is the cluster's driver."""

    name = "Ray"

    def __init__(self, ray: Any, session: _Session | None) -> None:
        self._ray = ray
        self._session = session  # the Ray phalanx opened (ours to release), or None: the caller's
        self._refs: dict[str, Any] = {}

    @classmethod
    async def start(cls, address: str | None, *, max_workers: int | None = None) -> RayCluster:
        """Connect to the Ray cluster at ``address``, or start a local Ray for ``max_workers``
        attempts at once (default: one per CPU); use the process's Ray if it has one."""
        global _session
        try:
            import ray
        except ImportError:
            raise ConfigError("--backend ray needs Ray: pip install 'phalanx[ray]'") from None
        if address is not None:
            await _probe(address)
        while True:
            with _lock:
                session = _session
                if session is not None and session.closing:
                    closed = session.closed  # a shutdown under way: start again once it is done
                elif session is not None:
                    if address is not None and address != session.address:
                        raise ConfigError(f"this process is connected to Ray at {session.address or 'a local Ray'}; "
                                          f"it cannot connect to {address} too")
                    session.users += 1
                    break
                elif ray.is_initialized():
                    return cls(ray, None)
                else:
                    session = _session = _Session(address, _init_options(address, max_workers))
                    break
            try:
                async with asyncio.timeout(START_TIMEOUT):
                    await asyncio.shield(asyncio.wrap_future(closed))
            except TimeoutError:
                raise ConfigError("an earlier run's Ray in this process has not ended (it is still shutting "
                                  "down or trying to connect)") from None
        self = cls(ray, session)
        where = f"the Ray cluster at {address}" if address else "a local Ray"
        bound = CONNECT_TIMEOUT if address else START_TIMEOUT
        try:
            async with asyncio.timeout(bound):
                await asyncio.shield(asyncio.wrap_future(session.ready))
        except TimeoutError:
            await self.aclose()
            raise ConfigError(f"cannot start or reach {where}: no answer within {bound:g} s") from None
        except asyncio.CancelledError:
            await self.aclose()
            raise
        except Exception as error:
            await self.aclose()
            raise ConfigError(f"cannot start or reach {where}: {error}") from None
        return self

    @property
    def slots(self) -> int:
        return max(1, int(self._ray.cluster_resources().get("CPU", 1)))

    def offered(self) -> list[Mapping[str, float]]:
        return [
            {name: float(amount) for name, amount in node.get("Resources", {}).items()
             if not name.startswith("node:") and name != "object_store_memory"}
            for node in self._ray.nodes() if node.get("Alive")
        ]

    async def submit(self, key: str, payload: bytes, resources: Mapping[str, float], order: int) -> RemoteOutcome:
        from ray import exceptions

        entry = _remote_entry()
        options = _placement(resources)
        ref = (entry.options(**options) if options else entry).remote(payload)
        self._refs[key] = ref
        lost = (exceptions.WorkerCrashedError, exceptions.NodeDiedError, exceptions.LocalRayletDiedError,
                exceptions.OutOfMemoryError, exceptions.ObjectLostError)
        try:
            result: RemoteOutcome = await ref
        except lost:
            raise WorkerLost(await _lost_where(key)) from None
        finally:
            self._refs.pop(key, None)
        return result

    async def stop(self, keys: list[str]) -> None:
        for key in keys:
            ref = self._refs.get(key)
            if ref is not None:
                with contextlib.suppress(Exception):
                    self._ray.cancel(ref, force=False)

    async def running(self) -> dict[str, list[str]]:
        # The attempts of a coordinator that has gone need no waiting for: Ray ends the
        # worker processes of a driver that has gone, and with each its Node's watchdog ends
        # what the attempts ran (TERM, the grace, KILL). What this coordinator runs, it knows.
        return {}

    def forget(self, key: str) -> None:
        # Asked to stop, it did not answer in time: its worker process goes, and with it
        # (the Node's watchdog) whatever the attempt still ran.
        ref = self._refs.pop(key, None)
        if ref is not None:
            with contextlib.suppress(Exception):
                self._ray.cancel(ref, force=True)

    async def aclose(self) -> None:
        session, self._session = self._session, None
        if session is None:
            return
        with _lock:
            session.users -= 1
            last = session.users == 0
            if last:
                session.closing = True
        if last:
            session.close()
            if not session.ready.done():
                return  # still connecting (given up on): its thread shuts it down once connected
            with contextlib.suppress(Exception):
                async with asyncio.timeout(START_TIMEOUT):
                    await asyncio.shield(asyncio.wrap_future(session.closed))


def _init_options(address: str | None, max_workers: int | None) -> dict[str, Any]:
    """``ray.init``'s options: quiet (phalanx reports what happens), and for a local Ray the CPUs."""
    options: dict[str, Any] = {"log_to_driver": False, "logging_level": logging.ERROR, "runtime_env": RUNTIME_ENV}
    if address is None:
        options.update(num_cpus=max(os.cpu_count() or 1, max_workers or 0), include_dashboard=False)
    return options


async def _probe(address: str) -> None:
    """Refuse at once a ``HOST:PORT`` nothing answers on: ``ray.init`` would try for minutes,
    then end the process."""
    if "://" in address or address in ("auto", "local"):
        return  # Ray client's own connection, or Ray's own look-up
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"a Ray address is HOST:PORT (the head node's GCS), ray://HOST:PORT or auto, "
                          f"got {address!r}")
    try:
        connection = await asyncio.wait_for(asyncio.open_connection(host.strip("[]"), int(port)), PROBE_TIMEOUT)
    except (OSError, TimeoutError) as error:
        raise ConfigError(f"cannot reach the Ray cluster at {address}: {error or type(error).__name__}") from None
    connection[1].close()


async def _lost_where(key: str) -> str:
    """Where the lost attempt ran, from its note (read once, then removed)."""

    def look() -> str | None:
        from ray.experimental import internal_kv

        note = internal_kv._internal_kv_get(key, namespace=NOTES)
        if note is None:
            return None
        internal_kv._internal_kv_del(key, namespace=NOTES)
        return bytes(note).decode()

    try:
        async with asyncio.timeout(5.0):
            return await asyncio.to_thread(look) or UNKNOWN_WORKER
    except Exception:
        return UNKNOWN_WORKER
