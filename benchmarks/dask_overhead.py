"""phalanx on a Dask cluster next to native ``client.map``, and the same work on phalanx's local backends.

One ``distributed.LocalCluster`` for the whole run: 2 worker processes (``processes=True``) of
T threads each (``--threads``, default 2: S = 2T slots), no dashboard, and
``distributed.scheduler.allowed-failures = 0`` (phalanx refuses a scheduler that retries on
its own). Its start-up is not timed. A synchronous ``distributed.Client`` on it runs the
native anchors; phalanx connects to it by address (``scheduler=cluster.scheduler_address``)
in each call, as a user's program does, so every phalanx-on-Dask row includes phalanx's own
connection to the scheduler (and its close); the connection alone is timed too and shown
below the table. Two workloads:

* ``commands``: 2,000 short commands, ``["true", "1"]`` .. ``["true", "2000"]``, argv lists
  exec'd without a shell on every engine. ``true`` rather than ``sh -c ...``: a shell adds
  the same fork and exec to every engine and only dilutes the difference measured, which is
  the engine's own cost per command (the arguments make every command distinct, as real ones
  are). Engines:

  - ``client.map``: ``client.gather(client.map(run_one, commands, pure=False))`` where
    ``run_one`` is ``subprocess.run(argv, capture_output=True)``, what a Dask user writes;
    the reference of the ratios;
  - ``phalanx.run dask -j S``: ``phalanx.run([Task(id, argv) ...], backend="dask",
    scheduler=addr, max_workers=S)``, S the cluster's threads (phalanx's default there); each
    command runs through phalanx's command runner on the worker (its own process group,
    output to files shipped back, a watchdog), one Dask task per command;
  - ``phalanx.run dask -j 2S``: the same with twice as many attempts in flight, so that a
    worker thread finds its next task already there while phalanx handles the last answer;
  - local, for scale: ``phalanx.run(..., max_workers=2)`` with no cluster, ``xargs -P 2 -n 1
    true`` and ``parallel --will-cite -j 2 true`` (if installed), the lines on standard input
    (those two are commands of their own, timed from outside, start-up included).

* ``callables``: 20,000 trivial calls of a module-level ``inc(x) = x + 1``. Engines:

  - ``client.map``: ``client.gather(client.map(inc, range(n), pure=False))``, the reference;
  - ``phalanx.map dask``: ``list(phalanx.map(inc, range(n), backend="dask", scheduler=addr))``
    (automatic batches, one Dask task per batch, run on a warm process of the worker);
  - ``Executor.map dask (connected)``: ``list(executor.map(inc, range(n)))`` on an
    ``Executor(backend="dask", scheduler=addr)`` opened once before the rounds: the same
    without the connection, as the native client has none to make;
  - local, for scale: ``phalanx.map(..., backend="processes", max_workers=2)`` (worker start-up
    included) and ``backend="threads", max_workers=2``.

Native maps use ``pure=False``: with Dask's default keys (a hash of the function and its
argument) a round would reuse the keys of the round before, and get results the scheduler
may still hold instead of running anything. Between two timed runs the benchmark waits
(bounded) until the scheduler holds no task, so that one run's clean-up does not land in the
next. Every result is checked: each command exited 0 (phalanx: the run's summary counts every
task succeeded), each callable's results sum right; a row with tasks that did not succeed
shows how many, and the exit status is then 1.

Before the rounds, an untimed check runs every engine on a tenth of the items: it warms the
workers as a long-lived cluster is warm (phalanx's runners and warm processes on each
worker, Dask's own caches). Python's bytecode cache is on for every process started
(``PYTHONDONTWRITEBYTECODE`` removed, ``PYTHONPYCACHEPREFIX`` a temp directory): an
installed phalanx has its ``.pyc`` files, while an editable checkout in an environment that
sets ``PYTHONDONTWRITEBYTECODE`` would compile its modules again in every new process.

Each round runs every engine once per workload, in an order rotated from round to round; the
table shows the median of the rounds (5; ``--quick``: 1 round, a tenth of the items): seconds,
microseconds per task (item), the ratio to ``client.map`` (below 1: faster than native), and
the fastest round, which other load on the machine disturbs less (the load average is
printed at start and end). Targets, on the medians, phalanx's whole calls (connection
included; the ratio without it in the verdict line):

* callables: ``phalanx.map`` on Dask at most 1.0x native ``client.map``;
* commands: ``phalanx.run`` on Dask at ``-j S`` at most 1.2x native ``client.map``.

The exit status is 0 whether or not the targets are met (this is a report); it is 1 if an
engine fails a task or returns wrong results. Run it from the repository root (it needs
``distributed``; a full run takes about 13 minutes on 2 cores, native ``client.map`` of the
calls about 35 s a round of it)::

    python benchmarks/dask_overhead.py                 # 5 rounds, 2,000 commands and 20,000 calls
    python benchmarks/dask_overhead.py --quick         # 1 round, a tenth of the items: a smoke test
    python benchmarks/dask_overhead.py --workload callables --rounds 3 --threads 1
"""

from __future__ import annotations

import argparse
import importlib.metadata
import logging
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any

import phalanx
from phalanx import Task

WORKERS = 2  # Dask worker processes, and the local engines' workers
COMMANDS, CALLS = 2_000, 20_000
TARGET_CALLS, TARGET_COMMANDS = 1.0, 1.2

#: Seconds to wait for the scheduler to forget a run's tasks before the next run starts.
SETTLE_BOUND = 10.0

NATIVE = "client.map"


# ------------------------------------------------------------------------ the work


def inc(x: int) -> int:
    return x + 1


def run_one(argv: list[str]) -> int:
    """One command as a Dask user runs it: its exit status, its output captured."""
    return subprocess.run(argv, capture_output=True, check=False).returncode


def commands(count: int) -> list[list[str]]:
    return [["true", str(i)] for i in range(1, count + 1)]


# ----------------------------------------------------------------------- the engines


@dataclass(frozen=True, slots=True)
class Engine:
    """A way to run a workload: ``run(count)`` runs ``count`` items and returns how many of
    them did not succeed (0: all did, and their results were checked)."""

    name: str
    run: Callable[[int], int]


@dataclass(frozen=True, slots=True)
class Setup:
    """What the engines run on: the native client, the scheduler's address, the Executor
    opened once (callables, connection excluded) and the cluster's slots."""

    client: Any
    address: str
    executor: phalanx.Executor
    slots: int


def native_commands(setup: Setup) -> Callable[[int], int]:
    def run(count: int) -> int:
        codes = setup.client.gather(setup.client.map(run_one, commands(count), pure=False))
        return len([code for code in codes if code != 0]) + count - len(codes)

    return run


def phalanx_commands(address: str | None, max_workers: int) -> Callable[[int], int]:
    def run(count: int) -> int:
        tasks = [Task(id=f"c{argv[1]}", action=argv) for argv in commands(count)]
        if address is None:
            report = phalanx.run(tasks, max_workers=max_workers)
        else:
            report = phalanx.run(tasks, backend="dask", scheduler=address, max_workers=max_workers)
        failed = [result for result in report.results.values() if result.status is not phalanx.Status.SUCCEEDED]
        if failed:
            print(f"  {failed[0].task_id}: {failed[0].status.value}: {(failed[0].reason or '')[:300]}", file=sys.stderr)
        return count - report.summary.counts[phalanx.Status.SUCCEEDED]

    return run


def tool_commands(argv: list[str]) -> Callable[[int], int]:
    def run(count: int) -> int:
        lines = "".join(f"{i}\n" for i in range(1, count + 1))
        done = subprocess.run(argv, input=lines, text=True, capture_output=True, check=False)
        return 0 if done.returncode == 0 else count  # these tools tell only that some job failed

    return run


def _checked(results: Sequence[int], count: int) -> int:
    """How many calls did not come back right: all of them if the sum is wrong."""
    if len(results) == count and sum(results) == count * (count + 1) // 2:
        return 0
    return count


def native_calls(setup: Setup) -> Callable[[int], int]:
    def run(count: int) -> int:
        return _checked(setup.client.gather(setup.client.map(inc, range(count), pure=False)), count)

    return run


def phalanx_calls(**options: Any) -> Callable[[int], int]:
    def run(count: int) -> int:
        return _checked(list(phalanx.map(inc, range(count), **options)), count)

    return run


def executor_calls(setup: Setup) -> Callable[[int], int]:
    def run(count: int) -> int:
        return _checked(list(setup.executor.map(inc, range(count))), count)

    return run


def command_engines(setup: Setup) -> list[Engine]:
    slots = setup.slots
    engines = [
        Engine(NATIVE, native_commands(setup)),
        Engine(f"phalanx.run dask -j {slots}", phalanx_commands(setup.address, slots)),
        Engine(f"phalanx.run dask -j {2 * slots}", phalanx_commands(setup.address, 2 * slots)),
        Engine(f"phalanx.run local -j {WORKERS}", phalanx_commands(None, WORKERS)),
        Engine(f"xargs -P {WORKERS}", tool_commands(["xargs", "-P", str(WORKERS), "-n", "1", "true"])),
    ]
    if shutil.which("parallel"):
        argv = ["parallel", "--will-cite", "-j", str(WORKERS), "true"]
        engines.append(Engine(f"parallel -j {WORKERS}", tool_commands(argv)))
    return engines


def call_engines(setup: Setup) -> list[Engine]:
    return [
        Engine(NATIVE, native_calls(setup)),
        Engine("phalanx.map dask", phalanx_calls(backend="dask", scheduler=setup.address)),
        Engine("Executor.map dask (connected)", executor_calls(setup)),
        Engine(f"phalanx.map processes -j {WORKERS}", phalanx_calls(backend="processes", max_workers=WORKERS)),
        Engine(f"phalanx.map threads -j {WORKERS}", phalanx_calls(backend="threads", max_workers=WORKERS)),
    ]


# ------------------------------------------------------------------------ measuring


@dataclass(frozen=True, slots=True)
class Timing:
    """One run: its items, its seconds, and how many of its items did not succeed."""

    items: int
    seconds: float
    failed: int = 0


def _scheduler_tasks(dask_scheduler: Any) -> int:
    return len(dask_scheduler.tasks)


def settle(client: Any) -> None:
    """Wait (bounded) until the scheduler holds no task: the last run's futures released and
    forgotten, so that its clean-up is not timed in the next run."""
    deadline = time.monotonic() + SETTLE_BOUND
    while client.run_on_scheduler(_scheduler_tasks) and time.monotonic() < deadline:
        time.sleep(0.02)  # polling a remote count: there is nothing to wait on


def time_engine(engine: Engine, count: int, client: Any) -> Timing:
    settle(client)
    started = time.perf_counter()
    try:
        failed = engine.run(count)
    except Exception as error:  # a map raises for its first failed item: the whole run failed
        print(f"  {engine.name}: {type(error).__name__}: {str(error)[:300]}", file=sys.stderr)
        return Timing(count, math.nan, count)
    return Timing(count, time.perf_counter() - started, failed)


@dataclass(frozen=True, slots=True)
class Connect:
    """phalanx's connection to the scheduler alone: opening an Executor on it, and closing it."""

    open: float
    close: float


def time_connect(address: str) -> Connect:
    started = time.perf_counter()
    executor = phalanx.Executor(backend="dask", scheduler=address)
    opened = time.perf_counter()
    executor.shutdown()
    return Connect(opened - started, time.perf_counter() - opened)


Plan = list[tuple[str, int, list[Engine]]]


def check(plan: Plan, client: Any) -> None:
    """Every engine once on a tenth of the items, untimed: it must run them all (and it warms
    the workers)."""
    for work, count, engines in plan:
        for engine in engines:
            timing = time_engine(engine, max(1, count // 10), client)
            if timing.failed:
                print(f"check: {engine.name} on {work}: {timing.failed} of {timing.items} did not succeed",
                      file=sys.stderr)


def measure(plan: Plan, rounds: int, client: Any, address: str) -> tuple[dict[tuple[str, str], list[Timing]],
                                                                          list[Connect]]:
    """Timings by (work, engine), every engine once per workload per round, rotated; and a
    connection timed per round."""
    timings: dict[tuple[str, str], list[Timing]] = {}
    connects: list[Connect] = []
    for number in range(rounds):
        settle(client)
        connects.append(time_connect(address))
        for work, count, engines in plan:
            shift = number % len(engines)
            for engine in engines[shift:] + engines[:shift]:
                timing = time_engine(engine, count, client)
                timings.setdefault((work, engine.name), []).append(timing)
                print(f"round {number + 1}/{rounds} {work:9} {engine.name:32} {timing.seconds:8.3f}s "
                      f"{timing.seconds / count * 1e6:9.1f} µs/task"
                      + (f"  {timing.failed} not succeeded" if timing.failed else ""), file=sys.stderr, flush=True)
    return timings, connects


# ------------------------------------------------------------------------ reporting


def table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(cell) for cell in column) for column in zip(headers, *rows, strict=True)]
    lines = [headers, ["-" * width for width in widths], *rows]
    return "\n".join(
        "  ".join(cell.ljust(width) if i < 2 else cell.rjust(width)
                  for i, (cell, width) in enumerate(zip(line, widths, strict=True)))
        for line in lines
    )


def _median(values: list[float]) -> float:
    kept = [value for value in values if not math.isnan(value)]
    return statistics.median(kept) if kept else math.nan


def _fastest(values: list[float]) -> float:
    kept = [value for value in values if not math.isnan(value)]
    return min(kept) if kept else math.nan


def report(plan: Plan, timings: dict[tuple[str, str], list[Timing]], connects: list[Connect],
           slots: int) -> tuple[str, bool]:
    """The table (medians, the fastest round), the connection, the verdicts; and whether every
    task of every run succeeded."""
    median = {key: _median([t.seconds for t in runs]) for key, runs in timings.items()}
    fastest = {key: _fastest([t.seconds for t in runs]) for key, runs in timings.items()}
    rows: list[list[str]] = []
    all_ok = True
    for work, count, engines in plan:
        for engine in engines:
            key = (work, engine.name)
            failed = sum(t.failed for t in timings[key])
            all_ok = all_ok and not failed
            rows.append([work, engine.name, f"{median[key]:.3f}", f"{median[key] / count * 1e6:.1f}",
                         f"{median[key] / median[work, NATIVE]:.2f}", f"{fastest[key]:.3f}",
                         f"{fastest[key] / fastest[work, NATIVE]:.2f}", str(failed)])
    headers = ["work", "engine", "seconds", "µs/task", f"x {NATIVE}", "fastest s", "x (fastest)", "not ok"]
    opened = statistics.median(c.open for c in connects)
    closed = statistics.median(c.close for c in connects)
    lines = [table(headers, rows), "",
             f"phalanx's connection to the scheduler (Executor(backend='dask', scheduler=...), median of "
             f"{len(connects)}): open {opened:.3f} s, close {closed:.3f} s; every phalanx-on-Dask row but "
             f"'Executor.map dask (connected)' includes both", ""]

    def verdict(label: str, work: str, engine: str, target: float) -> None:
        if (work, engine) not in median:
            return
        ratio = median[work, engine] / median[work, NATIVE]
        without = (median[work, engine] - opened - closed) / median[work, NATIVE]
        best = fastest[work, engine] / fastest[work, NATIVE]
        lines.append(f"target {label}: {'PASS' if ratio <= target else 'MISS'} ({ratio:.2f}; without the "
                     f"connection {without:.2f}; fastest rounds {best:.2f})")

    verdict(f"callables: phalanx.map on Dask <= {TARGET_CALLS:g}x {NATIVE}", "callables", "phalanx.map dask",
            TARGET_CALLS)
    verdict(f"commands: phalanx.run on Dask -j {slots} <= {TARGET_COMMANDS:g}x {NATIVE}", "commands",
            f"phalanx.run dask -j {slots}", TARGET_COMMANDS)
    return "\n".join(lines), all_ok


def _load() -> str:
    return " ".join(f"{load:.2f}" for load in os.getloadavg())


@contextmanager
def dask_cluster(threads: int) -> Iterator[tuple[Any, str]]:
    """The LocalCluster (untimed start-up) and a synchronous client on it."""
    import dask
    import distributed

    with dask.config.set({"distributed.scheduler.allowed-failures": 0}):
        cluster = distributed.LocalCluster(n_workers=WORKERS, threads_per_worker=threads, processes=True,
                                           dashboard_address=None, silence_logs=logging.ERROR)
    try:
        with distributed.Client(cluster) as client:
            client.wait_for_workers(WORKERS, timeout=60)
            yield client, cluster.scheduler_address
    finally:
        cluster.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=5, help="rounds per engine (default 5; the median counts)")
    parser.add_argument("--quick", action="store_true", help="1 round, a tenth of the items: a smoke test")
    parser.add_argument("--threads", type=int, default=2, help="threads per Dask worker process (default 2)")
    parser.add_argument("--workload", choices=["commands", "callables"], help="run only this workload")
    args = parser.parse_args(argv)
    rounds = 1 if args.quick else args.rounds
    if rounds < 1 or args.threads < 1:
        parser.error("--rounds and --threads must be at least 1")
    scale = 10 if args.quick else 1

    cache = tempfile.mkdtemp(prefix="dask-overhead-pycache-")
    # Before any process starts: the cluster's workers, and phalanx's, inherit it.
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    os.environ["PYTHONPYCACHEPREFIX"] = cache
    notes = [f"{WORKERS} Dask worker processes x {args.threads} thread(s), {os.cpu_count()} CPUs, Python "
             f"{sys.version.split()[0]}, phalanx from {os.path.dirname(phalanx.__file__)}, median of {rounds} "
             f"round(s); cluster start-up not timed", f"load average at start: {_load()}"]
    try:
        with ExitStack() as stack:
            client, address = stack.enter_context(dask_cluster(args.threads))
            notes.append(f"distributed {importlib.metadata.version('distributed')}, scheduler {address}")
            executor = stack.enter_context(phalanx.Executor(backend="dask", scheduler=address))
            setup = Setup(client, address, executor, sum(client.nthreads().values()))
            plan: Plan = []
            if args.workload in (None, "commands"):
                plan.append(("commands", COMMANDS // scale, command_engines(setup)))
            if args.workload in (None, "callables"):
                plan.append(("callables", CALLS // scale, call_engines(setup)))
            check(plan, client)
            timings, connects = measure(plan, rounds, client, address)
            text, all_ok = report(plan, timings, connects, setup.slots)
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    notes.append(f"load average at end: {_load()} (other processes on the machine disturb the timings)")
    print("\n".join(notes))
    print()
    print(text)
    if not all_ok:
        print("error: some tasks did not succeed (the 'not ok' column): see the messages above", file=sys.stderr)
    return 0 if all_ok else 1


if __name__ == "__main__":
    sys.exit(main())
