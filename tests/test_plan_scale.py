"""``phalanx plan`` on large graphs: the shape and a start order without the simulation.

Above `SIMULATED_UP_TO` tasks plain ``phalanx plan`` does not run the scheduler: its start
order is the scheduler's key order as on one worker, computed in one pass. These tests pin
that it is exactly what the real scheduler does on one worker, that the critical path and
levels are those of `phalanx.ordering`, that it refuses what the scheduler refuses, and
that loading a task file leaves the garbage collector as it found it.
"""

from __future__ import annotations

import gc
import random
import subprocess
import sys
from pathlib import Path

import pytest

from phalanx import Graph, PhalanxError, Task, get_execution_plan
from phalanx.config import load_task_file
from phalanx.ordering import critical_path, estimate_costs, path_weights
from phalanx.plan import SIMULATED_UP_TO, levels_of


def random_tasks(seed: int, count: int) -> list[Task]:
    """A DAG of ``count`` tasks, dependencies on earlier ones, declared in a shuffled order,
    with a mix of priorities and of declared and unknown costs (ties included)."""
    rng = random.Random(seed)
    tasks = []
    for index in range(count):
        deps = tuple(f"t{d}" for d in sorted(rng.sample(range(index), min(index, rng.randint(0, 3)))))
        cost = rng.choice([None, 1.0, 1.0, 2.0, 0.5, rng.uniform(0.1, 5.0)])
        tasks.append(Task(f"t{index}", "true", deps=deps, cost=cost, priority=rng.choice([0, 0, 0, 10, -10])))
    rng.shuffle(tasks)
    return tasks


@pytest.mark.parametrize("seed", range(25))
def test_the_start_order_without_simulation_is_the_scheduler_on_one_worker(seed: int) -> None:
    tasks = random_tasks(seed, 40)
    fast = get_execution_plan(tasks, max_workers=1, simulate=False)
    simulated = get_execution_plan(tasks, max_workers=1, simulate=True)
    assert not fast.simulated and simulated.simulated
    assert fast.start_order == simulated.start_order
    assert fast.critical_path == simulated.critical_path
    assert fast.levels == simulated.levels


@pytest.mark.parametrize("seed", range(10))
def test_the_critical_path_and_levels_are_those_of_the_ordering(seed: int) -> None:
    tasks = random_tasks(seed, 60)
    graph = Graph(tasks).validate()
    plan = get_execution_plan(graph, max_workers=4, simulate=False)
    chain, length = critical_path(graph, path_weights(estimate_costs(graph, _Declared())))
    assert plan.critical_path == tuple(chain)
    assert plan.critical_path_length == length
    level: dict[str, int] = {}
    for tid in graph.topological_order():
        level[tid] = 1 + max((level[d] for d in graph[tid].deps), default=-1)
    assert plan.levels == levels_of(graph)
    assert [set(ids) for ids in plan.levels] == [
        {tid for tid in graph.ids if level[tid] == depth} for depth in range(len(plan.levels))
    ]


class _Declared:
    def estimate(self, task: Task) -> float | None:
        return task.cost


def test_without_simulation_what_the_scheduler_refuses_is_refused() -> None:
    tasks = [Task("wide", "true", resources={"slots": 4}), Task("db", "true", resources={"db": 1})]
    for simulate in (True, False):
        with pytest.raises(PhalanxError, match="slots = 4") as wide:
            get_execution_plan(tasks[:1], max_workers=2, simulate=simulate)
        with pytest.raises(PhalanxError, match="unknown resource 'db'") as db:
            get_execution_plan(tasks[1:], max_workers=2, simulate=simulate)
        assert wide.value.task_id == "wide" and db.value.task_id == "db"
    with pytest.raises(ValueError, match="max_workers"):
        get_execution_plan(tasks[:1], max_workers=0, simulate=False)


def _chain_file(directory: Path, count: int) -> Path:
    lines = [f'[tasks.t{i}]\ncmd = "true"\n' + (f'deps = ["t{i - 1}"]\n' if i else "") for i in range(count)]
    path = directory / "phalanx.toml"
    path.write_text("\n".join(lines))
    return path


@pytest.mark.parametrize(("count", "simulated"), [(SIMULATED_UP_TO, True), (SIMULATED_UP_TO + 1, False)])
def test_plain_plan_simulates_only_small_graphs(tmp_path: Path, count: int, simulated: bool) -> None:
    _chain_file(tmp_path, count)
    done = subprocess.run([sys.executable, "-m", "phalanx", "plan", "-j", "4"], capture_output=True, text=True,
                          cwd=tmp_path, timeout=10)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    estimated = next(line for line in lines if line.startswith("  estimated:"))
    order = next(line for line in lines if line.startswith("  start order:"))
    if simulated:
        assert f"makespan {count} tasks" in estimated
        assert order == "  start order:"
    else:
        assert "makespan" not in estimated.split("(")[0]
        assert estimated.endswith("(the makespan: --simulate)")
        assert order == "  start order: as on one worker, by priority then critical path (on 4 workers: --simulate)"
    # A chain starts in its own order either way.
    listed = [line.split(". ")[1].split()[0] for line in lines[lines.index(order) + 1:]]
    assert listed == [f"t{i}" for i in range(count)]


@pytest.mark.parametrize("enabled", [True, False])
def test_loading_leaves_the_collector_as_it_was(tmp_path: Path, enabled: bool) -> None:
    good = _chain_file(tmp_path, 3)
    bad = tmp_path / "bad.toml"
    bad.write_text('[tasks.a]\ncmd = "true"\ndeps = ["nope"]\n')
    was = gc.isenabled()
    try:
        gc.enable() if enabled else gc.disable()
        assert len(load_task_file(good).graph) == 3
        assert gc.isenabled() is enabled
        with pytest.raises(PhalanxError, match="nope"):
            load_task_file(bad)
        assert gc.isenabled() is enabled
    finally:
        gc.enable() if was else gc.disable()
