"""Plans: what a run would do, worked out without running anything.

The start order and estimated makespan come from the real scheduler, run on the fake
clock with a backend that only waits each task's estimated cost: the plan is exactly
what the scheduler would do if the estimates were right (``phalanx plan``, ``--dry-run``).
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from .backends.base import Attempt, Outcome
from .events import Event, TaskStarted
from .fakeclock import run_virtual
from .model import Graph
from .ordering import CostModel, DeclaredCosts, OrderingPolicy, critical_path, estimate_costs, path_weights
from .resources import Capacities
from .results import RunReport
from .scheduler import Scheduler
from .tasksource import TaskSource, build_graph
from .workers import optimal_workers


@dataclass(frozen=True, slots=True)
class ExecutionPlan:
    """What a run would do.

    Attributes:
        levels: tasks by depth (level 0 has no dependencies), as HuskyCat shows them;
            phalanx does not wait for a level to finish, this is only a picture.
        critical_path: the heaviest chain of estimated cost, in run order.
        critical_path_length: its estimated length.
        start_order: the order the scheduler would start tasks in.
        estimated_makespan: the simulated run's length with the estimates.
        total_work: the sum of estimates.
        max_workers: the slots the plan was made for.
        costs_known: whether any estimate came from a declared cost or history; if
            not, every task weighs 1 and lengths count tasks, not seconds.
    """

    levels: tuple[tuple[str, ...], ...]
    critical_path: tuple[str, ...]
    critical_path_length: float
    start_order: tuple[str, ...]
    estimated_makespan: float
    total_work: float
    max_workers: int
    costs_known: bool

    @property
    def widest_level(self) -> int:
        """The index of the level with the most tasks."""
        return max(range(len(self.levels)), key=lambda i: len(self.levels[i]), default=0)

    @property
    def max_parallelism(self) -> int:
        """The most tasks in one level (capped by the workers)."""
        return min(self.max_workers, max((len(level) for level in self.levels), default=0))

    @property
    def speedup(self) -> float:
        """Estimated speedup over running the tasks one after another."""
        return self.total_work / self.estimated_makespan if self.estimated_makespan > 0 else 1.0

    @property
    def lower_bound(self) -> float:
        return max(self.critical_path_length, self.total_work / self.max_workers)


def levels_of(graph: Graph) -> tuple[tuple[str, ...], ...]:
    """Tasks grouped by the length of their longest chain of dependencies."""
    level: dict[str, int] = {}
    for tid in graph.topological_order():
        level[tid] = 1 + max((level[d] for d in graph[tid].deps), default=-1)
    grouped: list[list[str]] = [[] for _ in range(max(level.values(), default=-1) + 1)]
    for tid in graph.ids:
        grouped[level[tid]].append(tid)
    return tuple(tuple(ids) for ids in grouped)


class _WaitEstimate:
    """A backend that does no work: it waits the task's estimated cost on the (fake) clock."""

    def __init__(self, weights: Mapping[str, float]) -> None:
        self._weights = weights

    async def run(self, attempt: Attempt) -> Outcome:
        await asyncio.sleep(self._weights[attempt.task.id])
        return Outcome(ok=True)

    def stopped_outcome(self, attempt: Attempt) -> Outcome | None:
        return None

    async def aclose(self) -> None:
        return None


def simulate(
    graph: Graph,
    weights: Mapping[str, float],
    *,
    max_workers: int,
    resources: Capacities | None = None,
    policy: OrderingPolicy | None = None,
    cost_model: CostModel | None = None,
) -> tuple[RunReport, list[str]]:
    """Run the scheduler on the fake clock with every task taking its weight.

    Returns the report (exact virtual times) and the ids in the order they started.
    """
    started: list[str] = []

    class _Starts:
        def handle(self, event: Event) -> None:
            if isinstance(event, TaskStarted):
                started.append(event.task_id)

        def close(self) -> None:
            return None

    backend = _WaitEstimate(weights)
    with tempfile.TemporaryDirectory(prefix="phalanx-plan-") as run_dir:
        scheduler = Scheduler(
            graph,
            backend_for=lambda task: backend,
            max_workers=max_workers,
            capacities=resources,
            policy=policy,
            cost_model=cost_model,
            sinks=[_Starts()],
            run_dir=Path(run_dir),
        )
        report = run_virtual(scheduler.run())
    return report, started


def get_execution_plan(
    tasks: TaskSource,
    *,
    deps: Mapping[str, Sequence[str]] | None = None,
    max_workers: int | None = None,
    resources: Capacities | None = None,
    policy: OrderingPolicy | None = None,
    cost_model: CostModel | None = None,
) -> ExecutionPlan:
    """The plan for running these tasks: levels, critical path, start order, estimates.

    Raises:
        PhalanxError: the tasks are invalid, exactly as `phalanx.run` would say.
    """
    graph = build_graph(tasks, deps=deps).validate()
    workers = optimal_workers("commands").count if max_workers is None else max_workers
    estimates = estimate_costs(graph, cost_model or DeclaredCosts())
    weights = path_weights(estimates)
    chain, length = critical_path(graph, weights)
    report, started = simulate(
        graph, weights, max_workers=workers, resources=resources, policy=policy, cost_model=cost_model
    )
    return ExecutionPlan(
        levels=levels_of(graph),
        critical_path=tuple(chain),
        critical_path_length=length,
        start_order=tuple(started),
        estimated_makespan=report.summary.wall_time,
        total_work=sum(weights.values()),
        max_workers=workers,
        costs_known=any(cost is not None for cost in estimates.values()),
    )
