"""``-j auto``, ``--load`` and ``--memfree``: how many tasks a run may have going at once,
decided again every half second from what the machine is doing.

::

    psutil, /proc ──> MachineSampler.sample() ──> Sample ──┐
                                                            ├──> Governor ──> Decision(workers, reason)
    Scheduler.running() ────────────────────────────────────┘                    │
    Scheduler.set_workers(workers, reason) <── Autoscaler: one timer on the run's loop
        └──> WorkersChanged ──> sinks (live view, progress lines, trace)

The `Governor` is pure: samples in, decisions out, no clock and no psutil, so its rules are
tested with made-up samples. `MachineSampler` is the thin layer that reads the machine, and
`Autoscaler` the glue that runs both on the scheduler's loop. A run without ``-j auto``,
``--load`` or ``--memfree`` has none of it (and imports no psutil for it).

What is measured, and why
-------------------------

CPU, for ``-j auto``: CPU-time differences over the last interval. The machine's busy time on
the CPUs this process may use (``psutil.cpu_times``), less the CPU time of phalanx's own
process tree (phalanx, its live descendants, and what the children it has reaped used), is
what the rest of the machine used. The load average would not do: the kernel's 1-minute
figure is an exponential average of 5-second samples, so it takes most of a minute to show
that a load came or went (a run of short tasks is over by then), and it counts phalanx's own
tasks, so ``-j auto`` would throttle itself with every task it started.

The rules of ``-j auto``, with *c* the usable CPUs and, over each interval, *others* the CPUs
the rest of the machine kept busy, *own* those phalanx's tree did, *idle* = c - others - own:

- start at one task per CPU that nothing else is ready to run on right now (the run queue,
  as ``--load`` counts it; CPU time needs an interval to be measured), at most the maximum;
- grow while at least ``GROW_IDLE`` of the CPUs sat idle and every slot was taken: by as many
  tasks as the idle CPUs fit at the CPU each running task used, at least one and at most
  doubling, so tasks that mostly wait (``sleep``, downloads) double every interval;
- shrink while the CPUs are saturated (less than ``SATURATED_IDLE`` idle) and other programs
  keep at least ``OTHERS_CROWD`` of them busy: to one task per CPU the others leave free, at
  least one fewer each interval, never below one;
- otherwise hold. Between the two idle thresholds lies a band where nothing changes, so the
  count does not flap with the noise of a busy machine; and a run whose own tasks fill the
  CPUs holds too, as that is the aim: CPUs busy about as many as there are.

Memory: ``MemAvailable`` (``psutil.virtual_memory().available``), what can be allocated
without swapping, the page cache the kernel can drop included. GNU parallel adds up MemFree,
Buffers, Cached and SwapCached instead.

``--load MAX`` (GNU parallel's): no new task while the load is at or above MAX. The load, as
GNU parallel counts it from ``ps``, is the number of processes (threads) running, waiting for
a CPU or waiting for a disk right now: ``procs_running`` + ``procs_blocked`` of
``/proc/stat``, less the thread reading it; phalanx's own tasks count, as in GNU. MAX is N,
N.N, N% of the usable CPUs, +N or -N (CPUs plus or minus N); below 0.01 it is 0.01, as in
GNU. Where ``/proc/stat`` is missing the 1-minute load average stands in, slow as it is.

``--memfree SIZE`` (GNU parallel's): no new task while less than SIZE is available. GNU
parallel also kills the youngest job when less than half of SIZE is left, and runs it again
later; phalanx only throttles. Killing a task throws its work away, and running it again
repeats whatever it did outside the machine (a request sent, a file written); a task that
must stay under a size says so with ``memory = ...`` and is killed (and fails) past it.
Under ``-j auto`` the reserve is `default_reserve` (a tenth of the RAM, at most 2 GiB)
unless ``--memfree`` sets another (``--memfree 0``: none).

While either throttle holds, the count is one: no task starts while any runs, and one may
start when none does, so a run always goes on (GNU parallel would wait). The running tasks
are never stopped. With a fixed ``-j N`` the throttles only ever lower the count below N.
"""

from __future__ import annotations

import asyncio
import math
import os
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from .errors import ConfigError
from .events import Event, RunFinished, RunStarted
from .limits import format_size, parse_size
from .workers import usable_cpus

#: Seconds between two looks at the machine: short enough to follow a load that comes and goes
#: within a run, long enough that CPU-time differences are more than the clock tick's noise
#: (10 ms per CPU) and sampling costs nothing worth measuring.
INTERVAL = 0.5

#: Grow only while at least this share of the CPUs (and at least half a CPU) sat idle.
GROW_IDLE = 0.15
#: The CPUs count as saturated below this share (and below a fifth of a CPU) idle.
SATURATED_IDLE = 0.05
#: Shrink only while other programs keep at least this share of the CPUs (and half a CPU) busy:
#: less is the machine's background hum, not a load to make room for.
OTHERS_CROWD = 0.10

#: ``-j auto``'s maximum when none is given: this many tasks per usable CPU. The rules above keep
#: CPU-bound tasks near one per CPU whatever the maximum; more leaves room for tasks that
#: mostly wait.
AUTO_PER_CPU = 2

#: Under ``-j auto`` with no ``--memfree``, keep this share of the RAM available, at most `RESERVE_CAP`.
RESERVE_SHARE = 0.10
RESERVE_CAP = 2 * 2**30


@dataclass(frozen=True, slots=True)
class AutoJobs:
    """``-j auto`` (``max_workers`` None: `default_auto_max`) or ``-j auto:N``."""

    max_workers: int | None = None

    def resolve(self) -> int:
        """The most tasks at once."""
        return self.max_workers if self.max_workers is not None else default_auto_max()


@dataclass(frozen=True, slots=True)
class Scaling:
    """How a run's worker count may change while it goes.

    Attributes:
        auto: follow the machine (``-j auto``); False: the run's ``max_workers`` unless a
            throttle holds.
        load: ``--load``: no new task while the load is at or above this; None: no such limit.
        memfree: ``--memfree``: no new task while fewer bytes than this are available; None:
            `default_reserve` under ``auto``, else no such limit; 0: no such limit.
        interval: seconds between two looks at the machine.
    """

    auto: bool = False
    load: float | None = None
    memfree: int | None = None
    interval: float = INTERVAL

    def __post_init__(self) -> None:
        if self.load is not None and not (math.isfinite(self.load) and self.load > 0):
            raise ConfigError(f"load must be a positive number, got {self.load!r}")
        if self.memfree is not None and self.memfree < 0:
            raise ConfigError(f"memfree must be 0 or more bytes, got {self.memfree!r}")
        if not (math.isfinite(self.interval) and self.interval > 0):
            raise ConfigError(f"interval must be a positive number of seconds, got {self.interval!r}")


def default_auto_max() -> int:
    """``-j auto``'s maximum: `AUTO_PER_CPU` tasks per usable CPU."""
    return AUTO_PER_CPU * usable_cpus()[0]


def default_reserve(total_memory: int) -> int:
    """The memory ``-j auto`` keeps available when ``--memfree`` names none."""
    return min(int(total_memory * RESERVE_SHARE), RESERVE_CAP)


# --------------------------------------------------------------------------- parsing


def parse_auto(text: str, *, what: str = "-j") -> AutoJobs | None:
    """``auto`` or ``auto:N`` as an `AutoJobs`; None for anything else (a number, for the caller).

    Raises:
        ConfigError: ``auto:`` followed by anything but a whole number of at least 1.
    """
    if text != "auto" and not text.startswith("auto:"):
        return None
    if text == "auto":
        return AutoJobs()
    number = text[len("auto:"):]
    if not re.fullmatch(r"\d+", number) or int(number) < 1:
        where = f"{what} {text}" if what else repr(text)
        raise ConfigError(f"{where}: expected auto, or auto:N with N the most tasks at once (at least 1)")
    return AutoJobs(int(number))


def parse_load(text: str, *, what: str = "--load") -> float:
    """``--load``: N, N.N, N% of the usable CPUs, +N or -N (CPUs plus or minus N), as GNU
    parallel reads it (its ``-j`` forms); below 0.01 it is 0.01.

    Raises:
        ConfigError: none of those forms.
    """
    match = re.fullmatch(r"([+-])(\d+)|(\d+)%|(\d+(?:\.\d+)?)", text.strip())
    if match is None:
        raise ConfigError(f"{what} {text}: expected N, N%, +N or -N (processes ready to run; % and +/- of the CPUs)")
    sign, offset, percent, number = match.groups()
    if number is not None:
        load = float(number)
    else:
        cpus = usable_cpus()[0]
        if percent is not None:
            load = cpus * int(percent) / 100
        else:
            load = cpus + int(offset) if sign == "+" else cpus - int(offset)
    return max(0.01, load)


def parse_memfree(text: str, *, what: str = "--memfree", size: Callable[[str], int] | None = None) -> int:
    """``--memfree``: a size (``size`` reads it; default the task file's units, 512MB, 2GiB),
    or 0 for no reserve at all (not even ``-j auto``'s own).

    Raises:
        ConfigError: not a size.
    """
    if text.strip() == "0":
        return 0
    if size is not None:
        return size(text)
    return parse_size(text, what=what)


# --------------------------------------------------------------------------- the decisions


@dataclass(frozen=True, slots=True)
class Sample:
    """One look at the machine. The CPU figures are running totals in CPU-seconds: only the
    difference between two samples means anything.

    Attributes:
        cpus: how many CPUs ``cpu_total`` and ``cpu_busy`` cover (those phalanx may use).
        cpu_total: CPU-seconds those CPUs have been through, busy or idle.
        cpu_busy: of which busy (not idle, not waiting for a disk).
        own_cpu: CPU-seconds phalanx's own process tree has used.
        load: processes running or waiting for a CPU or a disk now, less the sampler; None
            where unknown.
        available: bytes of memory available without swapping.
        total_memory: bytes of RAM.
        own_load: of ``load``, phalanx's own: its other threads and its descendants running
            or waiting for a CPU or a disk.
    """

    cpus: int
    cpu_total: float
    cpu_busy: float
    own_cpu: float
    load: float | None
    available: int
    total_memory: int
    own_load: float = 0.0


@dataclass(frozen=True, slots=True)
class Reading:
    """What the machine did between two samples, in CPUs (1.0: one CPU busy all along)."""

    cpus: int
    others: float  # kept busy by other programs
    own: float  # kept busy by phalanx's own process tree

    @property
    def idle(self) -> float:
        return max(0.0, self.cpus - self.others - self.own)


def reading(before: Sample, after: Sample) -> Reading | None:
    """The CPU use between two samples; None when no CPU time passed between them.

    Own use is read at a slightly different moment than the machine's, and a process that
    left phalanx's tree takes its time with it: it is kept within 0 and the busy time.
    """
    span = after.cpu_total - before.cpu_total
    if span <= 0:
        return None
    scale = after.cpus / span  # CPU-seconds over the interval -> CPUs
    busy = min(float(after.cpus), max(0.0, (after.cpu_busy - before.cpu_busy) * scale))
    own = min(busy, max(0.0, (after.own_cpu - before.own_cpu) * scale))
    return Reading(after.cpus, busy - own, own)


@dataclass(frozen=True, slots=True)
class Decision:
    """The worker count to have from now on, and why, in words."""

    workers: int
    reason: str


class Governor:
    """The rules of the module's docstring: samples in, worker counts out. Pure: no clock, no I/O.

    Args:
        scaling: ``-j auto``, ``--load``, ``--memfree``.
        max_workers: the most tasks at once (``-j N``, or ``-j auto``'s maximum).
        cpus: the usable CPUs (*c*).
    """

    def __init__(self, scaling: Scaling, max_workers: int, cpus: int) -> None:
        if max_workers < 1 or cpus < 1:
            raise ValueError(f"max_workers and cpus must be at least 1, got {max_workers} and {cpus}")
        self.scaling = scaling
        self.max_workers = max_workers
        self.cpus = cpus
        self._base = max_workers  # the count without throttles: -j N, or -j auto's own
        self._reason = ""
        self._throttled: tuple[str, str] | None = None  # which throttle holds, and why
        self._last: Sample | None = None

    @property
    def base(self) -> int:
        """The count the rules of ``-j auto`` (or ``-j N``) want, throttles aside."""
        return self._base

    def start(self, sample: Sample | None) -> Decision:
        """The count to start the run with (``sample`` None: nothing could be read)."""
        self._last = sample
        if self.scaling.auto:
            self._base = min(self.max_workers, self.cpus)
            self._reason = f"-j auto starts at one per CPU ({self.cpus}), at most {self.max_workers}"
            # Phalanx's own (its watchdog starting, say) are no reason to start lower.
            load = max(0.0, sample.load - sample.own_load) if sample is not None and sample.load is not None else 0.0
            if load >= 1:
                free = max(1, self.cpus - round(load))
                if free < self._base:
                    self._base = free
                    self._reason = f"-j auto starts at one per CPU free: {_number(load)} processes ready to run"
        return self._decide(sample)

    def decide(self, sample: Sample | None, running: int) -> Decision:
        """The count after another look at the machine; ``running``: the attempts running now.
        ``sample`` None: nothing could be read this time, the count stays."""
        if sample is None:
            return self._decide(None)
        before, self._last = self._last, sample
        if self.scaling.auto and before is not None:
            use = reading(before, sample)
            if use is not None:
                self.step(use, running)
        return self._decide(sample)

    def step(self, use: Reading, running: int) -> None:
        """``-j auto``'s rules for one interval's CPU use (``running``: attempts running now)."""
        cpus, base = use.cpus, self._base
        idle = use.idle
        growing = self._throttled is None and running >= base and base < self.max_workers
        if growing and idle >= max(0.5, GROW_IDLE * cpus):
            per_task = use.own / max(running, 1)
            # As many more as the idle CPUs fit at what each running task uses: at least one, at most doubling.
            more = base if per_task * base <= idle else max(1, math.floor(idle / per_task))
            self._base = min(self.max_workers, base + more)
            self._reason = f"{_number(idle)} of {cpus} CPUs idle"
        elif idle < max(0.2, SATURATED_IDLE * cpus) and use.others >= max(0.5, OTHERS_CROWD * cpus) and base > 1:
            left = math.floor(cpus - use.others + 0.05)  # 0.05: 1.96 CPUs left is 2, not 1
            self._base = max(1, min(base - 1, left))
            self._reason = f"other programs keep {_number(use.others)} of {cpus} CPUs busy"

    def _decide(self, sample: Sample | None) -> Decision:
        if sample is not None:
            holding = self._throttle(sample)
            if holding is None and self._throttled is not None:
                self._reason = self._lifted(self._throttled, sample)
            self._throttled = holding
        return Decision(self._effective(), self._throttled[1] if self._throttled is not None else self._reason)

    def _effective(self) -> int:
        return 1 if self._throttled is not None else self._base

    def _reserve(self, sample: Sample) -> tuple[int, str] | None:
        """The memory to keep available, and who asked for it; None: no limit."""
        memfree = self.scaling.memfree
        if memfree is None and self.scaling.auto:
            return default_reserve(sample.total_memory), "-j auto's reserve"
        return (memfree, "--memfree") if memfree else None

    def _throttle(self, sample: Sample) -> tuple[str, str] | None:
        """Which throttle holds now ("memory" or "load") and why, in words; None: neither."""
        reserve = self._reserve(sample)
        if reserve is not None and sample.available < reserve[0]:
            size, source = format_size(sample.available), format_size(reserve[0])
            return "memory", f"{size} of memory available < {source} ({reserve[1]})"
        limit = self.scaling.load
        if limit is not None and sample.load is not None and sample.load >= limit:
            return "load", f"load {_number(sample.load)} >= {_number(limit)} (--load)"
        return None

    def _lifted(self, held: tuple[str, str], sample: Sample) -> str:
        """Why the count is back up: the throttle that held no longer does."""
        if held[0] == "load":
            return f"load {_number(sample.load or 0.0)} < {_number(self.scaling.load or 0.0)} (--load)"
        return f"{format_size(sample.available)} of memory available again"


def _number(value: float) -> str:
    """A load or a number of CPUs as a reason shows it: ``2``, ``1.5``, ``0.01``."""
    return f"{value:.2f}".rstrip("0").rstrip(".") if value < 1 else f"{value:.1f}".removesuffix(".0")


# --------------------------------------------------------------------------- the machine


class Sampler(Protocol):
    """What the `Autoscaler` reads the machine with (`MachineSampler`, or a test's script)."""

    @property
    def cpus(self) -> int: ...

    def sample(self) -> Sample: ...


class MachineSampler:
    """Reads this machine: psutil for CPU times and memory, ``/proc`` for the run queue and
    for phalanx's own process tree (a few small reads where psutil would walk all of /proc to
    find a process's children; psutil where there is no /proc).

    The CPU figures cover the CPUs this process may run on (its affinity); with all of them,
    the machine's totals.
    """

    def __init__(self) -> None:
        import psutil  # here: only a run with -j auto, --load or --memfree pays for it

        self._psutil = psutil
        self._cpus = usable_cpus()[0]
        try:
            mine = sorted(os.sched_getaffinity(0))
        except (AttributeError, OSError):
            mine = []
        self._subset = mine if mine and len(mine) < (psutil.cpu_count() or len(mine)) else None
        self._tick = float(os.sysconf("SC_CLK_TCK")) if hasattr(os, "sysconf") else 100.0
        self._proc = os.path.exists(f"/proc/{os.getpid()}/task/{os.getpid()}/children")

    @property
    def cpus(self) -> int:
        return self._cpus

    def sample(self) -> Sample:
        total, busy = self._cpu_times()
        memory = self._psutil.virtual_memory()
        own_cpu, own_load = self.own()
        return Sample(
            cpus=self._cpus,
            cpu_total=total,
            cpu_busy=busy,
            own_cpu=own_cpu,
            load=current_load(),
            available=int(memory.available),
            total_memory=int(memory.total),
            own_load=own_load,
        )

    def _cpu_times(self) -> tuple[float, float]:
        psutil = self._psutil
        if self._subset is None:
            every = [psutil.cpu_times()]
        else:
            per_cpu = psutil.cpu_times(percpu=True)
            every = [per_cpu[i] for i in self._subset if i < len(per_cpu)]
        total = busy = 0.0
        for times in every:
            # As psutil's cpu_percent counts: guest time is already in user (and nice).
            whole = sum(times) - getattr(times, "guest", 0.0) - getattr(times, "guest_nice", 0.0)
            total += whole
            busy += whole - times.idle - getattr(times, "iowait", 0.0)
        return total, busy

    def own(self) -> tuple[float, float]:
        """Phalanx's own process tree: the CPU-seconds it has used (this process, its live
        descendants, and the children it reaped, whose own reaped children the kernel adds to
        theirs), and how many of its threads and processes run or wait for a CPU or a disk
        now (the thread asking left out)."""
        mine = os.times()
        cpu = mine.user + mine.system + mine.children_user + mine.children_system
        if self._proc:
            me, asking = os.getpid(), threading.get_native_id()
            load = sum(_state(f"/proc/{me}/task/{tid}/stat")[0] for tid in _threads(me) if tid != asking)
            for pid in _descendants(me):
                running, used = _state(f"/proc/{pid}/stat")
                load += running
                cpu += used / self._tick
            return cpu, load
        psutil = self._psutil
        try:
            children = psutil.Process().children(recursive=True)
        except psutil.Error:
            return cpu, 0.0
        load = 0
        for child in children:
            try:
                with child.oneshot():
                    times = child.cpu_times()
                    load += child.status() in (psutil.STATUS_RUNNING, psutil.STATUS_DISK_SLEEP)
            except psutil.Error:
                continue  # gone since: its time is with whoever reaped it
            cpu += times.user + times.system + times.children_user + times.children_system
        return cpu, load


def _state(path: str) -> tuple[int, int]:
    """From a ``/proc/.../stat`` file: 1 if the process (or thread) runs or waits for a CPU or
    a disk, else 0; and its CPU time with its reaped children's, in clock ticks. (0, 0) for one
    that is gone: its time is with whoever reaped it."""
    try:
        with open(path, "rb") as file:
            data = file.read()
    except OSError:
        return 0, 0
    # The fields after the command name (which may hold spaces and parentheses): the state
    # first; utime, stime, cutime and cstime 12th to 15th.
    fields = data[data.rfind(b")") + 2 :].split()
    try:
        return int(fields[0] in (b"R", b"D")), sum(int(field) for field in fields[11:15])
    except (IndexError, ValueError):
        return 0, 0


def _threads(pid: int) -> list[int]:
    try:
        return [int(name) for name in os.listdir(f"/proc/{pid}/task")]
    except (OSError, ValueError):
        return []


def _descendants(pid: int) -> list[int]:
    """The live descendants of ``pid``, from each of their threads' ``children`` files."""
    found: list[int] = []
    parents = [pid]
    for parent in parents:  # the list grows while we walk it
        for thread in _threads(parent):
            try:
                with open(f"/proc/{parent}/task/{thread}/children", "rb") as file:
                    children = [int(word) for word in file.read().split()]
            except (OSError, ValueError):
                continue
            found.extend(children)
            parents.extend(children)
    return found


def current_load() -> float | None:
    """Processes (threads) running, waiting for a CPU or waiting for a disk right now, less
    the one reading (GNU parallel's ``--load`` measure); the 1-minute load average where
    ``/proc/stat`` is missing; None if neither can be read."""
    try:
        with open("/proc/stat", "rb") as file:
            data = file.read()
    except OSError:
        try:
            return os.getloadavg()[0]
        except (AttributeError, OSError):
            return None
    running = re.search(rb"^procs_running (\d+)", data, re.MULTILINE)
    blocked = re.search(rb"^procs_blocked (\d+)", data, re.MULTILINE)
    if running is None:
        return None
    return float(max(0, int(running.group(1)) + (int(blocked.group(1)) if blocked else 0) - 1))


# --------------------------------------------------------------------------- on the run's loop


class Governed(Protocol):
    """What the `Autoscaler` needs of the scheduler."""

    def set_workers(self, workers: int, reason: str = "") -> int: ...

    def running(self) -> list[tuple[str, int, float]]: ...


class Autoscaler:
    """Runs a `Governor` on the run's loop: a look at the machine every ``interval``, and the
    scheduler's worker count set from it (which tells the sinks, with `WorkersChanged`).

    It is one of the scheduler's sinks only to hear when the run starts and ends, and it
    must be the last of them: the starting count is set when it hears `RunStarted`, before
    any task has started, and every other sink must have heard `RunStarted` before the
    `WorkersChanged` that follows. `phalanx.session.run_session` puts it there.

    Args:
        scaling: ``-j auto``, ``--load``, ``--memfree``.
        max_workers: the most tasks at once (the scheduler's ``max_workers``).
        sampler: what reads the machine (default: a `MachineSampler`, made at the start).
    """

    def __init__(self, scaling: Scaling, max_workers: int, *, sampler: Sampler | None = None) -> None:
        self._scaling = scaling
        self._max_workers = max_workers
        self._sampler = sampler
        self._scheduler: Governed | None = None
        self._governor: Governor | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._closed = False

    def govern(self, scheduler: Governed) -> None:
        """The scheduler whose count to set (made after this, with this among its sinks)."""
        self._scheduler = scheduler

    @property
    def governor(self) -> Governor | None:
        """The rules at work, once the run has started."""
        return self._governor

    def handle(self, event: Event) -> None:
        if isinstance(event, RunStarted):
            self._start()
        elif isinstance(event, RunFinished):
            self._stop()

    def close(self) -> None:
        self._stop()

    def _start(self) -> None:
        if self._scheduler is None or self._closed:
            return
        if self._sampler is None:
            self._sampler = MachineSampler()
        self._governor = Governor(self._scaling, self._max_workers, self._sampler.cpus)
        self._apply(self._governor.start(self._look()))
        self._schedule()

    def _tick(self) -> None:
        self._timer = None
        if self._closed or self._scheduler is None or self._governor is None:
            return
        self._apply(self._governor.decide(self._look(), len(self._scheduler.running())))
        self._schedule()

    def _look(self) -> Sample | None:
        assert self._sampler is not None
        try:
            return self._sampler.sample()
        except Exception:  # a /proc file that vanished, psutil refusing: skip this look, keep the count
            return None

    def _apply(self, decision: Decision) -> None:
        assert self._scheduler is not None
        self._scheduler.set_workers(decision.workers, decision.reason)

    def _schedule(self) -> None:
        if not self._closed:
            self._timer = asyncio.get_running_loop().call_later(self._scaling.interval, self._tick)

    def _stop(self) -> None:
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

