"""``phalanx.map`` over Python callables, next to the standard library's pools, joblib and mpire.

Three workloads, every engine in the same run on 2 worker processes:

* ``a``, trivial items: 100,000 calls of ``x + 1``. Nearly all of the time is the engine's
  own: sending items and results between processes, and starting and stopping the pool.
* ``b``, CPU items: 2,000 calls of a deterministic busy loop calibrated once, at start, to
  take about 5 ms of CPU here (the calibration is printed). 10 s of CPU work on 2 workers: the
  engine's overhead and how evenly it keeps both workers busy to the end.
* ``c``, isolated items that need a heavy module: the benchmark writes a module to a temp
  directory whose import burns about 0.3 s of CPU (a calibrated loop that builds a
  table; CPU rather than ``time.sleep``, so the import is a real cost: its measured CPU
  time is printed). 200 items each use it, each in a fresh process:
  ``phalanx.map(..., isolate=True, initializer=importlib.import_module,
  initargs=("heavymod",))`` imports it once per worker and forks a child of the warm
  worker per item; the reference starts a fresh interpreter per item,
  ``subprocess.run([sys.executable, "-c", "import heavymod; ..."])``, two at a time
  (a ``ThreadPoolExecutor(2)``). The fresh interpreters run a subset (40 items, 10 with
  ``--quick``) and their cost per item is what is compared; the table says so.

Engines for ``a`` and ``b``:

* ``phalanx.map(fn, items, max_workers=2)`` (process workers, automatic batches);
* ``ProcessPoolExecutor(2).map``, with its default ``chunksize=1`` and with a tuned
  ``chunksize = n / (4 * workers)``;
* ``multiprocessing.Pool(2).map`` (its automatic chunks: n / (4 * workers), rounded up);
* ``Pool(2).imap_unordered(fn, items, chunksize=1)``;
* ``joblib.Parallel(n_jobs=2)`` with its defaults (loky backend, ``batch_size="auto"``);
* ``mpire.WorkerPool(n_jobs=2).map`` with its defaults (fork, automatic chunks).

Every engine is timed from nothing running to everything stopped: pool start-up, the
work, results back in the parent, shutdown. Nothing starts warm: phalanx's multiprocessing
forkserver (which outlives a ``phalanx.map`` call) and joblib's reusable loky executor
(which outlives a ``Parallel`` call) are both stopped before each run, untimed; joblib's
is stopped inside its timed run, as the other engines' ``with`` blocks do. On ``a``,
``ProcessPoolExecutor`` with ``chunksize=1`` costs 100-400 µs an item, so it runs 10,000
items, and its seconds are scaled to the full count (marked ``*``). Every engine's
results are checked (their sum), and must come back complete and correct.

Each round runs every engine once per workload, in an order rotated from round to round
so that none always goes first; the table shows the median of the rounds (at least 3),
in seconds, microseconds per item, and each engine's time over phalanx's (above 1:
phalanx is faster); then the fastest round and the same ratio for it, which other load
on the machine disturbs less (the load average is printed at start and end). Targets,
judged on the medians (the fastest rounds' ratio in parentheses):

* ``a``: phalanx at most joblib's time; stretch: at most half of it;
* ``b``: phalanx at most 1.1x ``multiprocessing.Pool.map``'s time;
* ``c``: phalanx's cost per item at least 30x lower than a fresh interpreter's.

The exit status is 0 whether or not the targets are met (this is a report); it is 1 if
an engine fails or returns wrong results.

Run it from the repository root (a full run takes a few minutes; it needs the ``bench``
packages, joblib and mpire)::

    python benchmarks/map_callables.py                 # 3 rounds, every workload
    python benchmarks/map_callables.py --quick         # 1 round, smaller counts: a smoke test
    python benchmarks/map_callables.py --workload b --rounds 5
"""

from __future__ import annotations

import argparse
import importlib
import multiprocessing
import multiprocessing.forkserver
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import phalanx

WORKERS = 2
ITEM_SECONDS = 0.005  # workload b
IMPORT_SECONDS = 0.3  # workload c
HEAVY_MODULE = "heavymod"
TARGET_A, STRETCH_A, TARGET_B, TARGET_C = 1.0, 0.5, 1.1, 30.0

#: Loop iterations that take ITEM_SECONDS here; set by `_busy_loops` before any pool starts
#: (fork-based pools inherit it, cloudpickle-based ones capture it with the function).
BUSY_LOOPS = 0


class EngineFailed(Exception):
    """An engine did not return every result, or returned wrong ones."""


# ------------------------------------------------------------------------ the work


def inc(x: int) -> int:
    return x + 1


def busy(x: int) -> int:
    """About ITEM_SECONDS of CPU, always the same work; returns ``x + 1``."""
    acc = x
    for _ in range(BUSY_LOOPS):
        acc = (acc * 1103515245 + 12345) & 0xFFFFFFFF
    return x + 1 + (acc & 0)


def use_heavy(x: int) -> int:
    """An item that needs the heavy module (already imported in a warm worker)."""
    import heavymod  # type: ignore[import-not-found]

    return int(x + heavymod.OFFSET)


def _busy_loops(seconds: float) -> int:
    """Iterations of `busy`'s loop that take ``seconds`` of CPU: the median of a few timings
    (CPU time, ``time.process_time``, which other load on the machine disturbs less)."""
    global BUSY_LOOPS
    BUSY_LOOPS = 20_000
    for _ in range(3):
        timings = []
        for _ in range(7):
            started = time.process_time()
            busy(1)
            timings.append(time.process_time() - started)
        BUSY_LOOPS = max(1, int(BUSY_LOOPS * seconds / statistics.median(timings)))
    return BUSY_LOOPS


HEAVY_SOURCE = """\
# Generated by benchmarks/map_callables.py: importing this module takes about {seconds} s of CPU.
_acc = 0
TABLE = []
for _i in range({loops}):
    _acc = (_acc * 1103515245 + _i) & 0xFFFFFFFF
    if not _i % 16:
        TABLE.append(_acc)
OFFSET = 1 + (_acc & 0)
"""


def write_heavy_module(directory: Path, seconds: float) -> float:
    """Write ``heavymod.py`` so that importing it takes about ``seconds`` of CPU; its import's CPU time."""
    loops = 1_000_000
    measured = 0.0
    for _ in range(3):
        (directory / f"{HEAVY_MODULE}.py").write_text(HEAVY_SOURCE.format(seconds=seconds, loops=loops))
        measured = _import_seconds(directory)
        loops = max(1, int(loops * seconds / measured))
    (directory / f"{HEAVY_MODULE}.py").write_text(HEAVY_SOURCE.format(seconds=seconds, loops=loops))
    return statistics.median(_import_seconds(directory) for _ in range(3))


def _import_seconds(directory: Path) -> float:
    probe = f"import time; t = time.process_time(); import {HEAVY_MODULE}; print(time.process_time() - t)"
    done = subprocess.run([sys.executable, "-c", probe], cwd=directory, capture_output=True, text=True, check=True)
    return float(done.stdout)


# ----------------------------------------------------------------------- the engines


@dataclass(frozen=True, slots=True)
class Workload:
    """What to run: the function, the items, the sum their results must have."""

    name: str
    fn: Callable[[int], int]
    count: int
    expected: Callable[[Sequence[int]], int] = field(default=lambda items: sum(items) + len(items))


def _forget_warm_pools() -> None:
    """Stop the pools that outlive a call (untimed), so that every engine starts cold."""
    # phalanx's workers start from multiprocessing's forkserver, a process that lives as long
    # as this one; its private _stop() is what multiprocessing's own tests use to restart it.
    multiprocessing.forkserver._forkserver._stop()
    _stop_loky()


def _stop_loky() -> None:
    try:
        from joblib.externals.loky import get_reusable_executor
        from joblib.externals.loky.reusable_executor import _executor
    except ImportError:
        return
    if _executor is not None:
        get_reusable_executor().shutdown(wait=True)


def run_phalanx(fn: Callable[[int], int], items: Sequence[int]) -> list[int]:
    return list(phalanx.map(fn, items, max_workers=WORKERS))


def run_futures(chunksize: int | None) -> Callable[[Callable[[int], int], Sequence[int]], list[int]]:
    def run(fn: Callable[[int], int], items: Sequence[int]) -> list[int]:
        size = chunksize or max(1, len(items) // (4 * WORKERS))
        with ProcessPoolExecutor(WORKERS) as pool:
            return list(pool.map(fn, items, chunksize=size))

    return run


def run_pool_map(fn: Callable[[int], int], items: Sequence[int]) -> list[int]:
    with multiprocessing.Pool(WORKERS) as pool:
        return pool.map(fn, items)


def run_imap_unordered(fn: Callable[[int], int], items: Sequence[int]) -> list[int]:
    with multiprocessing.Pool(WORKERS) as pool:
        return list(pool.imap_unordered(fn, items, chunksize=1))


def run_joblib(fn: Callable[[int], int], items: Sequence[int]) -> list[int]:
    from joblib import Parallel, delayed

    results = Parallel(n_jobs=WORKERS)(delayed(fn)(x) for x in items)
    _stop_loky()
    return results


def run_mpire(fn: Callable[[int], int], items: Sequence[int]) -> list[int]:
    from mpire import WorkerPool

    with WorkerPool(n_jobs=WORKERS) as pool:
        return pool.map(fn, items)


@dataclass(frozen=True, slots=True)
class Engine:
    """An engine: how to run it, and for which workloads it runs only a subset."""

    name: str
    run: Callable[[Callable[[int], int], Sequence[int]], list[int]]
    subset: dict[str, int] = field(default_factory=dict)  # workload -> items actually run


POOL_ENGINES = [
    Engine("phalanx.map", run_phalanx),
    Engine("ProcessPoolExecutor chunksize=1", run_futures(1), subset={"a": 10_000}),
    Engine("ProcessPoolExecutor chunksize=n/8", run_futures(None)),
    Engine("multiprocessing.Pool.map", run_pool_map),
    Engine("Pool.imap_unordered chunksize=1", run_imap_unordered),
    Engine("joblib Parallel (loky, auto)", run_joblib),
    Engine("mpire WorkerPool.map", run_mpire),
]


def run_phalanx_isolated(fn: Callable[[int], int], items: Sequence[int]) -> list[int]:
    # importlib.import_module can be found by name in any worker: phalanx 8a23a9a handed the
    # initializer to multiprocessing as it was (a function of this script would not do);
    # since f53e864 it sends it by value.
    return list(phalanx.map(fn, items, max_workers=WORKERS, isolate=True,
                            initializer=importlib.import_module, initargs=(HEAVY_MODULE,)))


def _fresh_interpreter(x: int) -> int:
    code = f"import {HEAVY_MODULE}; print({x} + {HEAVY_MODULE}.OFFSET)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    if done.returncode:
        raise EngineFailed(f"fresh interpreter for item {x}: exit {done.returncode}: {done.stderr[-300:]}")
    return int(done.stdout)


def run_fresh_interpreters(fn: Callable[[int], int], items: Sequence[int]) -> list[int]:
    with ThreadPoolExecutor(WORKERS) as pool:
        return list(pool.map(_fresh_interpreter, items))


def isolated_engines(subset: int) -> list[Engine]:
    return [
        Engine("phalanx.map isolate=True", run_phalanx_isolated),
        Engine("fresh interpreter per item", run_fresh_interpreters, subset={"c": subset}),
    ]


# ------------------------------------------------------------------------ measuring


@dataclass(frozen=True, slots=True)
class Timing:
    """One run: the items it ran and its seconds for them."""

    items: int
    seconds: float

    @property
    def per_item(self) -> float:
        return self.seconds / self.items


def time_engine(engine: Engine, workload: Workload) -> Timing:
    count = engine.subset.get(workload.name, workload.count)
    items = list(range(count))
    _forget_warm_pools()
    started = time.perf_counter()
    results = engine.run(workload.fn, items)
    seconds = time.perf_counter() - started
    if len(results) != count or sum(results) != workload.expected(items):
        raise EngineFailed(f"{engine.name} on {workload.name}: {len(results)} results of {count}, "
                           f"sum {sum(results)} (expected {workload.expected(items)})")
    return Timing(count, seconds)


def measure(plan: list[tuple[Workload, list[Engine]]], rounds: int) -> dict[tuple[str, str], list[Timing]]:
    """Timings by (workload, engine), every engine once per workload per round, rotated."""
    timings: dict[tuple[str, str], list[Timing]] = {}
    for number in range(rounds):
        for workload, engines in plan:
            shift = number % len(engines)
            for engine in engines[shift:] + engines[:shift]:
                timing = time_engine(engine, workload)
                timings.setdefault((workload.name, engine.name), []).append(timing)
                print(f"round {number + 1}/{rounds} {workload.name} {engine.name:34} {timing.seconds:8.3f}s "
                      f"{timing.per_item * 1e6:10.1f} µs/item", file=sys.stderr, flush=True)
    return timings


def table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(cell) for cell in column) for column in zip(headers, *rows, strict=True)]
    lines = [headers, ["-" * width for width in widths], *rows]
    return "\n".join(
        "  ".join(cell.ljust(width) if i == 0 else cell.rjust(width)
                  for i, (cell, width) in enumerate(zip(line, widths, strict=True)))
        for line in lines
    )


def report(plan: list[tuple[Workload, list[Engine]]], timings: dict[tuple[str, str], list[Timing]]) -> str:
    """One table per workload (medians, and the fastest round), then a verdict line per target."""
    median: dict[tuple[str, str], float] = {}  # seconds per item
    fastest: dict[tuple[str, str], float] = {}
    lines: list[str] = []
    for workload, engines in plan:
        reference = engines[0].name
        for engine in engines:
            key = (workload.name, engine.name)
            median[key] = statistics.median(t.per_item for t in timings[key])
            fastest[key] = min(t.per_item for t in timings[key])
        rows = []
        for engine in engines:
            key = (workload.name, engine.name)
            scaled = workload.name in engine.subset
            seconds = median[key] * workload.count if scaled else statistics.median(t.seconds for t in timings[key])
            best = fastest[key] * workload.count
            mark = "*" if scaled else " "
            rows.append([engine.name, f"{seconds:.3f}{mark}", f"{median[key] * 1e6:.2f}",
                         f"{median[key] / median[workload.name, reference]:.2f}", f"{best:.3f}{mark}",
                         f"{fastest[key] / fastest[workload.name, reference]:.2f}"])
        headers = ["engine", "seconds", "µs/item", f"x {reference}", "fastest s", "x (fastest)"]
        lines += [f"workload {workload.name}: {DESCRIPTIONS[workload.name].format(n=workload.count)}",
                  table(headers, rows)]
        subsets = [f"{e.name} ran {e.subset[workload.name]:,} items" for e in engines if workload.name in e.subset]
        if subsets:
            lines.append(f"  * {'; '.join(subsets)}: seconds scaled to {workload.count:,} from its time per item")
        lines.append("")
    lines += verdicts(median, fastest)
    return "\n".join(lines)


DESCRIPTIONS = {
    "a": "{n:,} trivial items (x + 1), 2 workers",
    "b": "{n:,} items of ~5 ms CPU, 2 workers",
    "c": "{n:,} isolated items needing a module that takes ~0.3 s to import, 2 at a time",
}


def verdicts(median: dict[tuple[str, str], float], fastest: dict[tuple[str, str], float]) -> list[str]:
    """PASS or MISS on the medians; the same ratio on the fastest rounds in parentheses."""
    lines = []

    Ratio = Callable[[dict[tuple[str, str], float]], float]

    def verdict(label: str, ratio: Ratio, ok: Callable[[float], bool]) -> None:
        value = ratio(median)
        lines.append(f"target {label}: {'PASS' if ok(value) else 'MISS'} "
                     f"({value:.2f}; fastest rounds {ratio(fastest):.2f})")

    joblib, pool_map = "joblib Parallel (loky, auto)", "multiprocessing.Pool.map"
    if ("a", "phalanx.map") in median:
        vs_joblib = lambda t: t["a", "phalanx.map"] / t["a", joblib]  # noqa: E731
        verdict(f"a: phalanx <= {TARGET_A:g}x joblib", vs_joblib, lambda r: r <= TARGET_A)
        verdict(f"a: (stretch) phalanx <= {STRETCH_A:g}x joblib", vs_joblib, lambda r: r <= STRETCH_A)
    if ("b", "phalanx.map") in median:
        verdict(f"b: phalanx <= {TARGET_B:g}x multiprocessing.Pool.map",
                lambda t: t["b", "phalanx.map"] / t["b", pool_map], lambda r: r <= TARGET_B)
    if ("c", "phalanx.map isolate=True") in median:
        verdict(f"c: a fresh interpreter per item >= {TARGET_C:g}x phalanx isolate=True, per item",
                lambda t: t["c", "fresh interpreter per item"] / t["c", "phalanx.map isolate=True"],
                lambda r: r >= TARGET_C)
    return lines


def _load() -> str:
    return " ".join(f"{load:.2f}" for load in os.getloadavg())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=3,
                        help="rounds per engine and workload (default 3; the median counts)")
    parser.add_argument("--quick", action="store_true", help="1 round, a fifth of the items: a smoke test")
    parser.add_argument("--workload", choices=["a", "b", "c"], help="run only this workload")
    args = parser.parse_args(argv)
    rounds = 1 if args.quick else args.rounds
    if rounds < 1:
        parser.error("--rounds must be at least 1")
    scale = 5 if args.quick else 1

    heavy_dir = Path(tempfile.mkdtemp(prefix="map-callables-"))
    try:
        # Before any worker or forkserver starts: workers started from a forkserver get the
        # parent's sys.path as it was when the server started, fresh interpreters PYTHONPATH.
        sys.path.insert(0, str(heavy_dir))
        os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(heavy_dir), os.environ.get("PYTHONPATH")]))
        notes = [f"{WORKERS} workers, {os.cpu_count()} CPUs, Python {sys.version.split()[0]}, phalanx from "
                 f"{Path(phalanx.__file__).parent}, median of {rounds} round(s); every run includes its "
                 "pool's start-up and shutdown", f"load average at start: {_load()}"]
        plan: list[tuple[Workload, list[Engine]]] = []
        if args.workload in (None, "a"):
            plan.append((Workload("a", inc, 100_000 // scale), POOL_ENGINES))
        if args.workload in (None, "b"):
            loops = _busy_loops(ITEM_SECONDS)
            notes.append(f"b: busy loop of {loops:,} iterations, calibrated to {ITEM_SECONDS * 1e3:g} ms")
            plan.append((Workload("b", busy, 2_000 // scale), POOL_ENGINES))
        if args.workload in (None, "c"):
            seconds = write_heavy_module(heavy_dir, IMPORT_SECONDS)
            notes.append(f"c: {HEAVY_MODULE} import measured at {seconds:.3f} s of CPU (fresh interpreter)")
            plan.append((Workload("c", use_heavy, 200 // scale), isolated_engines(10 if args.quick else 40)))
        try:
            timings = measure(plan, rounds)
        except EngineFailed as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
    finally:
        shutil.rmtree(heavy_dir, ignore_errors=True)
    notes.append(f"load average at end: {_load()} (other processes on the machine disturb the timings)")
    print("\n".join(notes))
    print()
    print(report(plan, timings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
