"""How phalanx's bookkeeping scales: a million no-op tasks, next to graphlib and ``dask.get``.

The graph (fixed seed): N tasks ``t0`` .. ``tN-1``, each depending on up to three random
earlier tasks among the 10,000 before it (about 3N edges: wide fan-in and fan-out, long
random chains), every task a no-op callable on the inline backend (so the figures are the
scheduler's own cost per task, not a backend's). Each measurement runs in a fresh process
of its own, so that its peak RSS is its own; it prints:

* ``phalanx, report kept``: ``phalanx.run(graph, backend="inline", max_workers=8)`` with a
  sink counting every event (no shortcut that skips events counts), the `RunReport` kept;
* ``phalanx, streamed``: the same graph on the `Scheduler` with ``keep_results=False`` (the
  results reach the counting sink and are let go);
* ``graphlib floor``: the same string-keyed graph ordered and walked by
  ``graphlib.TopologicalSorter`` (``get_ready``/``done``, calling the no-op): the floor in Python;
* ``dask.get`` on the same graph (only up to `DASK_TASKS`, and only if dask is installed).

For each: seconds to build the graph (and validate it, for phalanx), seconds to run it,
microseconds per task end to end, peak RSS and KB per task above the interpreter's own.
Also ``phalanx plan`` on a TOML file of `PLAN_TASKS` tasks (about 3 edges each) against
``tomllib`` parsing plus ``graphlib`` ordering the same file, each a command timed from
outside.

Targets (issue 15): at most 20 µs per task end to end and at most 3x the floor; at least
5x faster than ``dask.get``; under 1 KB per task streamed, under 2 KB with the report kept;
``phalanx plan`` within 2x of tomllib + graphlib. The exit status is 0 whether or not the
targets are met (this is a report).

    python benchmarks/scale.py                    # 1,000,000 tasks (several minutes, a few GB)
    python benchmarks/scale.py --tasks 100000     # a tenth
    python benchmarks/scale.py --quick            # 20,000 tasks: a smoke test
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time

TASKS = 1_000_000
QUICK_TASKS = 20_000
DASK_TASKS = 100_000
PLAN_TASKS = 100_000
WINDOW = 10_000
SEED = 15

TARGET_US_PER_TASK = 20.0
TARGET_VS_FLOOR = 3.0
TARGET_VS_DASK = 5.0
TARGET_KB_STREAMED = 1.0
TARGET_KB_KEPT = 2.0
TARGET_PLAN = 2.0


def edges(tasks: int) -> list[list[int]]:
    """Each task's dependencies (indices of earlier tasks), from the fixed seed."""
    rng = random.Random(SEED)
    deps: list[list[int]] = []
    for index in range(tasks):
        low = max(0, index - WINDOW)
        count = min(index, 3)
        deps.append(sorted(set(rng.randrange(low, index) for _ in range(count))) if count else [])
    return deps


def noop(*args: object) -> None:
    return None


def _peak_kb() -> float:
    import resource

    return float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)  # KB on Linux


def measure(kind: str, tasks: int) -> dict[str, float]:
    """One measurement, in this (fresh) process."""
    deps = edges(tasks)
    names = [f"t{index}" for index in range(tasks)]
    base_kb = _peak_kb()
    start = time.perf_counter()
    if kind == "floor":
        import graphlib

        graph_map = {names[i]: [names[d] for d in deps[i]] for i in range(tasks)}
        sorter = graphlib.TopologicalSorter(graph_map)
        sorter.prepare()
        built = time.perf_counter()
        while sorter.is_active():
            for node in sorter.get_ready():
                noop()
                sorter.done(node)
    elif kind == "dask":
        import dask

        graph_dask = {names[i]: (noop, *[names[d] for d in deps[i]]) for i in range(tasks)}
        built = time.perf_counter()
        dask.get(graph_dask, names)
    else:
        import asyncio
        from pathlib import Path

        import phalanx
        from phalanx.backends.inline import InlineBackend
        from phalanx.scheduler import Scheduler

        events = 0

        class Counting:
            def handle(self, event: object) -> None:
                nonlocal events
                events += 1

            def close(self) -> None:
                return None

        graph = phalanx.Graph([phalanx.Task(names[i], noop, deps=tuple(names[d] for d in deps[i]))
                               for i in range(tasks)])
        graph.validate()
        built = time.perf_counter()
        if kind == "kept":
            report = phalanx.run(graph, backend="inline", max_workers=8, sinks=[Counting()])
            assert report.summary.total == tasks
        else:
            backend = InlineBackend()

            async def streamed() -> None:
                with tempfile.TemporaryDirectory() as run_dir:
                    scheduler = Scheduler(graph, backend_for=lambda task: backend, max_workers=8,
                                          sinks=[Counting()], run_dir=Path(run_dir), keep_results=False)
                    await scheduler.run()

            asyncio.run(streamed())
        assert events >= 2 * tasks, events
    end = time.perf_counter()
    return {"build": built - start, "run": end - built, "peak_kb": _peak_kb() - base_kb}


def in_fresh_process(kind: str, tasks: int) -> dict[str, float] | None:
    done = subprocess.run([sys.executable, __file__, "--measure", kind, "--tasks", str(tasks)],
                          capture_output=True, text=True, check=False)
    if done.returncode:
        tail = done.stderr.strip().splitlines()[-1:] or ["?"]
        print(f"{kind}: failed: {tail[0]}", file=sys.stderr)
        return None
    result: dict[str, float] = json.loads(done.stdout)
    return result


def plan_figures(tasks: int) -> tuple[float, float]:
    """Wall seconds of ``phalanx plan FILE`` and of tomllib + graphlib on the same file."""
    deps = edges(tasks)
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "phalanx.toml")
        with open(path, "w") as file:
            for index in range(tasks):
                listed = ", ".join(f'"t{d}"' for d in deps[index])
                file.write(f'[tasks.t{index}]\ncmd = "true"\ndeps = [{listed}]\n\n')
        floor = ("import graphlib, sys, tomllib\n"
                 "with open(sys.argv[1], 'rb') as f: data = tomllib.load(f)\n"
                 "order = list(graphlib.TopologicalSorter("
                 "{k: v.get('deps', []) for k, v in data['tasks'].items()}).static_order())\n")
        phalanx_cmd = [sys.executable, "-m", "phalanx", "plan", path]
        floor_cmd = [sys.executable, "-c", floor, path]
        times: dict[str, list[float]] = {"phalanx": [], "floor": []}
        for _ in range(3):
            for label, argv in (("phalanx", phalanx_cmd), ("floor", floor_cmd)):
                start = time.perf_counter()
                subprocess.run(argv, capture_output=True, check=True, cwd=directory)
                times[label].append(time.perf_counter() - start)
    return sorted(times["phalanx"])[1], sorted(times["floor"])[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--tasks", type=int, help=f"tasks (default {TASKS:,}; {QUICK_TASKS:,} with --quick)")
    parser.add_argument("--quick", action="store_true", help="a smoke test")
    parser.add_argument("--measure", choices=["kept", "streamed", "floor", "dask"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    tasks = args.tasks or (QUICK_TASKS if args.quick else TASKS)
    if args.measure:
        print(json.dumps(measure(args.measure, tasks)))
        return 0
    rows: dict[str, tuple[int, dict[str, float]]] = {}
    for label, kind, count in (("phalanx, report kept", "kept", tasks), ("phalanx, streamed", "streamed", tasks),
                               ("graphlib floor", "floor", tasks)):
        figures = in_fresh_process(kind, count)
        if figures is not None:
            rows[label] = (count, figures)
    dask_tasks = min(tasks, DASK_TASKS)
    import importlib.util

    kinds = (("phalanx, report kept", "kept"), ("dask.get", "dask")) if importlib.util.find_spec("dask") else ()
    for label, kind in kinds:
        figures = in_fresh_process(kind, dask_tasks) if dask_tasks != tasks or kind == "dask" else None
        if figures is not None:
            rows[f"{label} ({dask_tasks:,})" if kind == "kept" else f"dask.get ({dask_tasks:,})"] = (dask_tasks,
                                                                                                     figures)
    print(f"{tasks:,} no-op tasks, about {3 * tasks:,} edges, inline backend, 8 slots; "
          f"load average {os.getloadavg()[0]:.2f}")
    print(f"{'':30} {'tasks':>9} {'build s':>8} {'run s':>8} {'µs/task':>8} {'peak MB':>8} {'KB/task':>8}")
    per_task: dict[str, float] = {}
    for label, (count, figures) in rows.items():
        total = figures["build"] + figures["run"]
        per_task[label] = total / count * 1e6
        print(f"{label:30} {count:>9,} {figures['build']:8.2f} {figures['run']:8.2f} {per_task[label]:8.1f} "
              f"{figures['peak_kb'] / 1024:8.1f} {figures['peak_kb'] / count:8.2f}")
    kept, streamed, floor = (rows.get(k) for k in ("phalanx, report kept", "phalanx, streamed", "graphlib floor"))
    if kept and floor:
        us = per_task["phalanx, report kept"]
        ratio = us / per_task["graphlib floor"]
        print(f"target <= {TARGET_US_PER_TASK:g} µs per task: {'PASS' if us <= TARGET_US_PER_TASK else 'MISS'} "
              f"({us:.1f})")
        print(f"target <= {TARGET_VS_FLOOR:g}x the graphlib floor: {'PASS' if ratio <= TARGET_VS_FLOOR else 'MISS'} "
              f"({ratio:.1f}x)")
    if streamed:
        kb = streamed[1]["peak_kb"] / streamed[0]
        print(f"target < {TARGET_KB_STREAMED:g} KB per task streamed: {'PASS' if kb < TARGET_KB_STREAMED else 'MISS'} "
              f"({kb:.2f})")
    if kept:
        kb = kept[1]["peak_kb"] / kept[0]
        print(f"target < {TARGET_KB_KEPT:g} KB per task, report kept: {'PASS' if kb < TARGET_KB_KEPT else 'MISS'} "
              f"({kb:.2f})")
    dask_label = f"dask.get ({dask_tasks:,})"
    ours = f"phalanx, report kept ({dask_tasks:,})" if dask_tasks != tasks else "phalanx, report kept"
    if dask_label in per_task and ours in per_task:
        faster = per_task[dask_label] / per_task[ours]
        print(f"target >= {TARGET_VS_DASK:g}x faster than dask.get: {'PASS' if faster >= TARGET_VS_DASK else 'MISS'} "
              f"({faster:.1f}x)")
    else:
        print("dask.get: not measured (dask is not installed: pip install 'dask')")
    plan_tasks = min(tasks, PLAN_TASKS)
    ours_plan, floor_plan = plan_figures(plan_tasks)
    ratio = ours_plan / floor_plan
    print(f"phalanx plan on {plan_tasks:,} tasks: {ours_plan:.2f} s; tomllib + graphlib: {floor_plan:.2f} s; "
          f"target <= {TARGET_PLAN:g}x: {'PASS' if ratio <= TARGET_PLAN else 'MISS'} ({ratio:.1f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
