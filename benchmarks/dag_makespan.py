"""How close phalanx comes to the best schedule of a DAG, next to level-by-level and ``make -j8``.

Each DAG is about 200 ``sleep`` tasks whose declared ``cost`` is exactly their sleep, run on
8 slots. Sleeping costs no CPU, so even on a 2-core machine the makespan measures scheduling
quality (which ready task starts when) plus each tool's per-task overhead, not contention.
For every DAG, in one run, the benchmark prints:

* the lower bound ``max(critical path, total work / 8)``: no schedule can beat it;
* the makespan of a simulated critical-path-first list schedule with the true durations,
  computed here without processes: ready tasks ordered by longest remaining path, then
  submission order, a slot never idle while a task is ready. This is phalanx's own ordering
  with zero overhead, the reference phalanx should reach;
* phalanx's measured makespan (``phalanx.run(graph, max_workers=8)`` timed around the
  call), with the run's own ``summary.wall_time`` beside it;
* level-by-level, HuskyCat's way: level = 1 + the highest level among a task's
  dependencies; each level's tasks run in a thread pool of 8 (``sh -c``), and the next level
  starts only when the whole level has finished;
* ``make -j8`` on an equivalent generated Makefile (phony targets, so every task runs every
  time; prerequisites listed in submission order).

The DAGs, generated from fixed seeds:

* ``fan``: four stages of fan-out/fan-in: a split, 48 tasks of varied length, a join.
  Critical-path-first starts the longest tasks of a stage first.
* ``chain``: a chain of 20 tasks (about 5 s together) declared first, then 180 short
  independent tasks. Level-by-level starts link 2 only after the first level, which holds
  every short task; ``make`` reaches link 2 only after its pass over all the short tasks.
  Critical-path-first keeps one slot on the chain throughout.
* ``layered``: ten layers of 20 tasks, each depending on 1-3 tasks of earlier layers (one
  of them in the layer just before), random lengths.

Each round runs every tool once on every DAG, the tools in an order rotated from round to
round so that none always goes first; the table shows the median of the rounds. Targets:
phalanx within 1.01x of the simulated schedule on every DAG (issue #14: the per-task
overhead is what is left between the two), and no slower than ``make -j8``.
The exit status is 0 whether or not the targets are met (this is a report); it is 1 if any
tool failed to run a task.

Run it from the repository root (a full run takes several minutes)::

    python benchmarks/dag_makespan.py             # 5 rounds, every DAG
    python benchmarks/dag_makespan.py --quick     # 1 round, durations x0.2: a smoke test
    python benchmarks/dag_makespan.py --dag chain --rounds 3
"""

from __future__ import annotations

import argparse
import heapq
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import phalanx

SLOTS = 8
QUICK_SCALE = 0.2
TARGET_VS_SIMULATED = 1.01


class ToolFailed(Exception):
    """A tool did not run every task successfully."""


@dataclass(frozen=True, slots=True)
class Node:
    """One sleep task: its id, how long it sleeps, and the ids it depends on."""

    id: str
    duration: float
    deps: tuple[str, ...] = ()

    @property
    def command(self) -> str:
        return f"sleep {self.duration:.3f}"


@dataclass(frozen=True, slots=True)
class Dag:
    """Tasks in submission order; every dependency comes before its dependents."""

    name: str
    nodes: tuple[Node, ...]

    def __post_init__(self) -> None:
        seen: set[str] = set()
        for node in self.nodes:
            if node.id in seen or not seen.issuperset(node.deps):
                raise ValueError(f"{self.name}: {node.id!r} is a duplicate or precedes a dependency")
            seen.add(node.id)

    @property
    def work(self) -> float:
        return sum(node.duration for node in self.nodes)

    def dependents(self) -> dict[str, list[str]]:
        table: dict[str, list[str]] = {node.id: [] for node in self.nodes}
        for node in self.nodes:
            for dep in node.deps:
                table[dep].append(node.id)
        return table

    def remaining_paths(self) -> dict[str, float]:
        """For each task, the longest path of true durations from it (itself included) to a sink."""
        dependents = self.dependents()
        remaining: dict[str, float] = {}
        for node in reversed(self.nodes):
            remaining[node.id] = node.duration + max((remaining[d] for d in dependents[node.id]), default=0.0)
        return remaining

    def levels(self) -> list[list[Node]]:
        """Tasks grouped by level (1 + the highest level of their dependencies), in submission order."""
        level: dict[str, int] = {}
        groups: list[list[Node]] = []
        for node in self.nodes:
            level[node.id] = 1 + max((level[d] for d in node.deps), default=-1)
            if level[node.id] == len(groups):
                groups.append([])
            groups[level[node.id]].append(node)
        return groups


# ---------------------------------------------------------------------------- the DAGs


def _seconds(value: float, scale: float) -> float:
    return round(value * scale, 3)


def _varied(rng: random.Random, scale: float) -> float:
    """0.05-0.6 s, mostly short: a few long tasks among many short ones."""
    return _seconds(0.05 + 0.55 * rng.random() ** 2, scale)


def fan_dag(scale: float) -> Dag:
    rng = random.Random(11)
    nodes: list[Node] = []
    previous: tuple[str, ...] = ()
    for stage in range(4):
        split = Node(f"s{stage}-split", _seconds(rng.uniform(0.05, 0.1), scale), previous)
        middle = [Node(f"s{stage}-w{i:02d}", _varied(rng, scale), (split.id,)) for i in range(48)]
        join = Node(f"s{stage}-join", _seconds(rng.uniform(0.05, 0.1), scale), tuple(m.id for m in middle))
        nodes += [split, *middle, join]
        previous = (join.id,)
    return Dag("fan", tuple(nodes))


def chain_dag(scale: float) -> Dag:
    rng = random.Random(22)
    chain: list[Node] = []
    for i in range(20):
        chain.append(Node(f"chain{i:02d}", _seconds(rng.uniform(0.2, 0.3), scale), (chain[-1].id,) if chain else ()))
    short = [Node(f"short{i:03d}", _seconds(rng.uniform(0.05, 0.2), scale)) for i in range(180)]
    return Dag("chain", (*chain, *short))


def layered_dag(scale: float) -> Dag:
    rng = random.Random(33)
    layers: list[list[Node]] = []
    for depth in range(10):
        layer: list[Node] = []
        for i in range(20):
            deps: list[str] = []
            if layers:
                deps.append(rng.choice(layers[-1]).id)
                earlier = [node.id for previous in layers for node in previous]
                deps += rng.sample(earlier, rng.randint(0, 2))
            layer.append(Node(f"l{depth}-t{i:02d}", _varied(rng, scale), tuple(dict.fromkeys(deps))))
        layers.append(layer)
    return Dag("layered", tuple(node for layer in layers for node in layer))


DAGS: dict[str, Callable[[float], Dag]] = {"fan": fan_dag, "chain": chain_dag, "layered": layered_dag}


# ---------------------------------------------------------------- bound and simulation


def lower_bound(dag: Dag) -> float:
    return max(max(dag.remaining_paths().values()), dag.work / SLOTS)


def simulate(dag: Dag) -> float:
    """The makespan of an overhead-free critical-path-first list schedule on SLOTS slots."""
    remaining = dag.remaining_paths()
    dependents = dag.dependents()
    duration = {node.id: node.duration for node in dag.nodes}
    index = {node.id: i for i, node in enumerate(dag.nodes)}
    pending = {node.id: len(node.deps) for node in dag.nodes}
    ready = [(-remaining[node.id], index[node.id], node.id) for node in dag.nodes if not node.deps]
    heapq.heapify(ready)
    running: list[tuple[float, str]] = []  # (end time, id)
    now = 0.0
    while ready or running:
        while ready and len(running) < SLOTS:
            tid = heapq.heappop(ready)[2]
            heapq.heappush(running, (now + duration[tid], tid))
        now = running[0][0]
        while running and running[0][0] <= now:
            done = heapq.heappop(running)[1]
            for dependent in dependents[done]:
                pending[dependent] -= 1
                if not pending[dependent]:
                    heapq.heappush(ready, (-remaining[dependent], index[dependent], dependent))
    return now


# -------------------------------------------------------------------------- the tools


@dataclass(frozen=True, slots=True)
class Timing:
    """A measured makespan and, for phalanx, the run's own ``summary.wall_time``."""

    seconds: float
    reported: float | None = None


def run_phalanx(dag: Dag) -> Timing:
    graph = phalanx.Graph(phalanx.Task(n.id, n.command, deps=n.deps, cost=n.duration) for n in dag.nodes)
    start = time.perf_counter()
    report = phalanx.run(graph, max_workers=SLOTS)
    seconds = time.perf_counter() - start
    failed = [f"{tid} ({result.status}: {result.reason})" for tid, result in report.results.items() if not result.ok]
    if failed:
        raise ToolFailed(f"phalanx on {dag.name}: {len(failed)} task(s) did not succeed, e.g. {failed[0]}")
    return Timing(seconds, report.summary.wall_time)


def _sh(command: str) -> int:
    return subprocess.run(["sh", "-c", command], check=False).returncode


def run_levels(dag: Dag) -> Timing:
    levels = dag.levels()
    start = time.perf_counter()
    for level in levels:
        with ThreadPoolExecutor(SLOTS) as pool:
            codes = list(pool.map(_sh, [node.command for node in level]))
        if any(codes):
            raise ToolFailed(f"level-by-level on {dag.name}: a command exited with {max(codes)}")
    return Timing(time.perf_counter() - start)


def makefile(dag: Dag) -> str:
    ids = [node.id for node in dag.nodes]
    lines = [f".PHONY: all {' '.join(ids)}", f"all: {' '.join(ids)}"]
    for node in dag.nodes:
        lines += [f"{node.id}: {' '.join(node.deps)}".rstrip(), f"\t@{node.command}"]
    return "\n".join(lines) + "\n"


def run_make(dag: Dag) -> Timing:
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    with tempfile.TemporaryDirectory(prefix="dag-makespan-") as directory:
        Path(directory, "Makefile").write_text(makefile(dag))
        start = time.perf_counter()
        done = subprocess.run(
            ["make", f"-j{SLOTS}", "-f", "Makefile", "all"],
            cwd=directory,
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        seconds = time.perf_counter() - start
    if done.returncode:
        raise ToolFailed(f"make on {dag.name}: exit status {done.returncode}: {done.stderr.strip()[-500:]}")
    return Timing(seconds)


TOOLS: dict[str, Callable[[Dag], Timing]] = {
    "phalanx": run_phalanx,
    "level-by-level": run_levels,
    f"make -j{SLOTS}": run_make,
}


# ------------------------------------------------------------------------ the report


def measure(dags: list[Dag], rounds: int) -> dict[tuple[str, str], list[Timing]]:
    """Timings by (DAG, tool), every tool once per DAG per round, in a rotating order."""
    names = list(TOOLS)
    timings: dict[tuple[str, str], list[Timing]] = {(dag.name, name): [] for dag in dags for name in names}
    for number in range(rounds):
        order = names[number % len(names) :] + names[: number % len(names)]
        for dag in dags:
            for name in order:
                timing = TOOLS[name](dag)
                timings[dag.name, name].append(timing)
                print(f"round {number + 1}/{rounds} {dag.name:8} {name:15} {timing.seconds:.3f}s", file=sys.stderr)
    return timings


def table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(cell) for cell in column) for column in zip(headers, *rows, strict=True)]
    lines = [headers, ["-" * width for width in widths], *rows]
    return "\n".join("  ".join(cell.rjust(width) for cell, width in zip(line, widths, strict=True)) for line in lines)


def report(dags: list[Dag], timings: dict[tuple[str, str], list[Timing]]) -> str:
    """The table of medians, then one verdict line per target."""
    make_tool = f"make -j{SLOTS}"
    headers = ["DAG", "tasks", "lower bound", "simulated CP-first", "phalanx", "(own wall)"]
    headers += ["level-by-level", make_tool, "phalanx/simulated", "phalanx/make"]
    rows: list[list[str]] = []
    vs_simulated: dict[str, float] = {}
    vs_make: dict[str, float] = {}
    for dag in dags:
        median = {name: statistics.median(t.seconds for t in timings[dag.name, name]) for name in TOOLS}
        own = statistics.median(t.reported or 0.0 for t in timings[dag.name, "phalanx"])
        simulated = simulate(dag)
        vs_simulated[dag.name] = median["phalanx"] / simulated
        vs_make[dag.name] = median["phalanx"] / median[make_tool]
        seconds = [lower_bound(dag), simulated, median["phalanx"], own, median["level-by-level"], median[make_tool]]
        ratios = [vs_simulated[dag.name], vs_make[dag.name]]
        rows.append([dag.name, str(len(dag.nodes)), *(f"{value:.3f}" for value in seconds + ratios)])
    lines = [table(headers, rows), ""]
    for label, by_dag, limit in (
        (f"phalanx <= {TARGET_VS_SIMULATED}x simulated", vs_simulated, TARGET_VS_SIMULATED),
        (f"phalanx <= {make_tool}", vs_make, 1.0),
    ):
        worst = max(by_dag, key=lambda name: by_dag[name])
        verdict = "PASS" if by_dag[worst] <= limit else "MISS"
        each = ", ".join(f"{name} {ratio:.3f}" for name, ratio in by_dag.items())
        lines.append(f"target {label}: {verdict} (worst {by_dag[worst]:.3f} on {worst}; {each})")
    return "\n".join(lines)


# ------------------------------------------------------------- ordering by history


def lopsided_dag(scale: float) -> Dag:
    """Where depth is a poor guess: four long tasks on chains of one, eight deep chains of
    short tasks. Ordered by depth, the chains go first and the long tasks start late."""
    long = [Node(f"long{i}", _seconds(3.0, scale)) for i in range(4)]
    chains: list[Node] = []
    for c in range(8):
        for step in range(12):
            deps = (f"c{c}-{step - 1:02d}",) if step else ()
            chains.append(Node(f"c{c}-{step:02d}", _seconds(0.1, scale), deps))
    return Dag("lopsided", (*long, *chains))


def history_rounds(dag: Dag) -> tuple[float, float]:
    """`phalanx run` twice on a task file of ``dag`` with no declared costs, in a fresh
    directory (a fresh journal): the first run has only depth to go on, the second the
    durations the first one recorded. Returns both runs' wall times."""
    with tempfile.TemporaryDirectory() as directory:
        lines = []
        for node in dag.nodes:
            lines += [f'[tasks."{node.id}"]', f'cmd = "{node.command}"']
            if node.deps:
                lines.append("deps = [" + ", ".join(f'"{dep}"' for dep in node.deps) + "]")
        Path(directory, "phalanx.toml").write_text("\n".join(lines) + "\n")
        walls = []
        for _ in range(2):
            done = subprocess.run([sys.executable, "-m", "phalanx", "run", "-j", str(SLOTS), "--json", "-q"],
                                  cwd=directory, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                raise ToolFailed(f"phalanx run on {dag.name} exited {done.returncode}: {done.stderr[-500:]}")
            walls.append(float(json.loads(done.stdout)["summary"]["wall_time"]))
    return walls[0], walls[1]


def history_report(scale: float) -> str:
    dag = lopsided_dag(scale)
    bound = lower_bound(dag)
    first, second = history_rounds(dag)
    rows = [["first run (depth order)", f"{first:.2f}", f"{first / bound:.2f}x", ">= 1.30x",
             "yes" if first / bound >= 1.3 else "NO"],
            ["second run (history order)", f"{second:.2f}", f"{second / bound:.2f}x", "<= 1.10x",
             "PASS" if second / bound <= 1.10 else "MISS"]]
    head = (f"Ordering by duration history: DAG {dag.name}, {len(dag.nodes)} tasks, no declared costs, "
            f"{SLOTS} slots, lower bound {bound:.2f}s")
    return head + "\n" + table(["run", "makespan", "x bound", "target", "met"], rows)



def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=5, help="rounds per tool and DAG (default 5; the median counts)")
    parser.add_argument("--quick", action="store_true", help=f"1 round, durations x{QUICK_SCALE}: a smoke test")
    parser.add_argument("--dag", choices=list(DAGS), help="run only this DAG")
    args = parser.parse_args(argv)
    rounds = 1 if args.quick else args.rounds
    if rounds < 1:
        parser.error("--rounds must be at least 1")
    scale = QUICK_SCALE if args.quick else 1.0
    dags = [make_dag(scale) for name, make_dag in DAGS.items() if args.dag in (None, name)]

    try:
        timings = measure(dags, rounds)
    except ToolFailed as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    durations = f", durations x{scale}" if args.quick else ""
    print(f"{len(dags)} DAG(s), {SLOTS} slots, median of {rounds} round(s), seconds{durations}")
    print(report(dags, timings))
    if args.dag is None:
        try:
            print()
            print(history_report(scale))
        except ToolFailed as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
