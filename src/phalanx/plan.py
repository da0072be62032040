"""Plans: what a run would do, worked out without running anything.

Two depths of answer, one `ExecutionPlan`:

* **the shape**: levels, the critical path, the widest level, and a start order by the
  scheduler's own key (priority, then the longest remaining path of estimated cost, then
  submission order), each task after its dependencies: what the scheduler does on one
  worker. A few passes over the graph, O((V + E) log V): ``phalanx plan`` on 100,000 tasks
  spends most of its time parsing the TOML.
* **the simulation** (`simulate`): the real scheduler, run on the fake clock with a backend
  that only waits each task's estimated cost. Its start order, every task's start and end
  and the makespan are exactly what the scheduler would do if the estimates were right,
  resources, reservations and rate limits included (``phalanx plan --simulate``, and plain
  ``phalanx plan`` on graphs of up to `SIMULATED_UP_TO` tasks, where it costs little).

::

    tasks ──> Graph (validated) ──> estimates (declared cost, else the cost model, else the
                                    median known, else 1) ──> levels, critical path
                                                   │
                       small graph or --simulate ──┴── otherwise
                                   │                       │
              Scheduler on the fake clock          the policy's order as on one worker
              (start order, timeline, makespan)    (no makespan: --simulate for one)
"""

from __future__ import annotations

import heapq
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from .model import SLOTS, Graph, Task
from .ordering import (
    CostModel,
    CriticalPathFirst,
    DeclaredCosts,
    OrderingPolicy,
    estimate_costs,
    path_weights,
)
from .resources import Capacities, check_requests, split_capacities
from .tasksource import TaskSource, build_graph
from .workers import optimal_workers

if TYPE_CHECKING:
    from .backends.base import Attempt, Outcome
    from .events import Event
    from .ratelimit import RateLimit
    from .results import RunReport

# The engine (the scheduler, asyncio, the backends' records) is imported only to simulate:
# plain `phalanx plan` on a large graph never needs it, and its import is a tenth of a second.

#: Plain ``phalanx plan`` (``simulate=None``) simulates graphs up to this many tasks: at a
#: couple of hundred microseconds a task that stays under half a second, and the start order
#: is then the exact one on the run's workers. Above it the simulation would be most of the
#: command's time (seconds at 100,000 tasks) for a start order nobody reads line by line.
SIMULATED_UP_TO = 2_000


@dataclass(frozen=True, slots=True)
class PlannedTask:
    """One task of a simulated run: when it would start and end (seconds from the run's
    start, or tasks when no estimate is known), and on which slot (numbered from 1, as a
    run's are; the first of a task's slots when it takes several)."""

    task_id: str
    start: float
    end: float
    slot: int


@dataclass(frozen=True, slots=True)
class ExecutionPlan:
    """What a run would do.

    Attributes:
        levels: tasks by depth (level 0 has no dependencies), as HuskyCat shows them;
            phalanx does not wait for a level to finish, this is only a picture.
        critical_path: the heaviest chain of estimated cost, in run order.
        critical_path_length: its estimated length.
        start_order: the order the scheduler would start tasks in: simulated on
            ``max_workers`` when `simulated`, else by the scheduler's key as on one worker.
        estimated_makespan: the simulated run's length with the estimates; None when the
            plan was not simulated.
        total_work: the sum of estimates.
        max_workers: the slots the plan was made for.
        costs_known: whether any estimate came from a declared cost or the cost model; if
            not, every task weighs 1 and lengths count tasks, not seconds.
        estimates: each task's weight: its estimate, or `unknown_weight`.
        unknown: how many tasks have no estimate.
        unknown_weight: what each of those weighs: the median known estimate, or 1.
        timeline: when each task would start and end, in start order (simulated only).
        utilisation: the share of the slots' time the simulated run keeps busy (simulated
            only): slot-seconds of work over makespan times ``max_workers``.
        not_finished: tasks the simulated run did not see succeed: an estimate over the
            task's timeout times it out, and what depends on it is skipped.
    """

    levels: tuple[tuple[str, ...], ...]
    critical_path: tuple[str, ...]
    critical_path_length: float
    start_order: tuple[str, ...]
    estimated_makespan: float | None
    total_work: float
    max_workers: int
    costs_known: bool
    estimates: Mapping[str, float] = field(default_factory=dict)
    unknown: int = 0
    unknown_weight: float = 1.0
    timeline: tuple[PlannedTask, ...] = ()
    utilisation: float | None = None
    not_finished: tuple[str, ...] = ()

    @property
    def simulated(self) -> bool:
        """Whether the start order and the makespan come from a simulated run."""
        return self.estimated_makespan is not None

    @property
    def widest_level(self) -> int:
        """The index of the level with the most tasks."""
        return max(range(len(self.levels)), key=lambda i: len(self.levels[i]), default=0)

    @property
    def max_parallelism(self) -> int:
        """The most tasks in one level (capped by the workers)."""
        return min(self.max_workers, max((len(level) for level in self.levels), default=0))

    @property
    def speedup(self) -> float | None:
        """Estimated speedup over running the tasks one after another (simulated only)."""
        if self.estimated_makespan is None:
            return None
        return self.total_work / self.estimated_makespan if self.estimated_makespan > 0 else 1.0

    @property
    def lower_bound(self) -> float:
        """max(critical path, work / workers): no schedule of these estimates can be shorter."""
        return max(self.critical_path_length, self.total_work / self.max_workers)


def levels_of(graph: Graph) -> tuple[tuple[str, ...], ...]:
    """Tasks grouped by the length of their longest chain of dependencies, each level in
    the graph's order."""
    return _levels(graph, graph.topological_order())


def _levels(graph: Graph, order: Sequence[str]) -> tuple[tuple[str, ...], ...]:
    deps_of = {task.id: task.deps for task in graph}
    level: dict[str, int] = {}
    depth_of = level.__getitem__
    for tid in order:
        deps = deps_of[tid]
        level[tid] = 1 + max(map(depth_of, deps)) if deps else 0
    grouped: list[list[str]] = [[] for _ in range(max(level.values(), default=-1) + 1)]
    for tid in graph.ids:
        grouped[level[tid]].append(tid)
    return tuple(tuple(ids) for ids in grouped)


def _dependents(graph: Graph) -> dict[str, list[str]]:
    """Each task's dependents in the graph's order, built in one pass (asking the graph
    task by task costs a call and a copy each)."""
    table: dict[str, list[str]] = {task.id: [] for task in graph}
    for task in graph:
        for dep in task.deps:
            table[dep].append(task.id)
    return table


def _remaining(order: Sequence[str], dependents: Mapping[str, Sequence[str]],
               weights: Mapping[str, float]) -> dict[str, float]:
    """For each task, the heaviest path from it (itself included) to a task with no
    dependents: `phalanx.ordering.remaining_paths` over a table already built."""
    remaining: dict[str, float] = {}
    length = remaining.__getitem__
    for tid in reversed(order):
        after = dependents[tid]
        remaining[tid] = weights[tid] + (max(map(length, after)) if after else 0.0)
    return remaining


def _heaviest_chain(graph: Graph, dependents: Mapping[str, Sequence[str]],
                    remaining: Mapping[str, float]) -> tuple[list[str], float]:
    """The critical path as `phalanx.ordering.critical_path` finds it (the first root with
    the longest remaining path, then each time the first dependent with the longest), and
    its length."""
    roots = [task.id for task in graph if not task.deps]
    if not roots:
        return [], 0.0
    current = max(roots, key=remaining.__getitem__)
    chain = [current]
    while after := dependents[current]:
        current = max(after, key=remaining.__getitem__)
        chain.append(current)
    return chain, remaining[chain[0]]


def _one_worker_order(graph: Graph, dependents: Mapping[str, Sequence[str]], remaining: Mapping[str, float],
                      policy: OrderingPolicy) -> list[str]:
    """The start order on one worker: the ready task with the smallest policy key first
    (as the scheduler's ready heap), its dependents ready once their last dependency is
    done. O((V + E) log V)."""
    tasks: list[Task] = list(graph)
    keys = [policy.key(task, remaining[task.id], i) for i, task in enumerate(tasks)]
    # Each task's rank among all the keys (ties by submission order, as the scheduler breaks
    # them): the heap then compares integers, not tuples, and a rank names its task.
    by_rank = sorted(range(len(tasks)), key=keys.__getitem__)
    rank = {tasks[i].id: position for position, i in enumerate(by_rank)}
    waiting = {task.id: len(task.deps) for task in tasks if task.deps}
    ready = [rank[task.id] for task in tasks if not task.deps]
    heapq.heapify(ready)
    order: list[str] = []
    pop, push = heapq.heappop, heapq.heappush
    while ready:
        tid = tasks[by_rank[pop(ready)]].id
        order.append(tid)
        for dependent in dependents[tid]:
            left = waiting[dependent] - 1
            waiting[dependent] = left
            if not left:
                push(ready, rank[dependent])
    return order


class _WaitEstimate:
    """A backend that does no work: it waits the task's estimated cost on the (fake) clock."""

    def __init__(self, weights: Mapping[str, float]) -> None:
        import asyncio

        from .backends.base import Outcome

        self._weights = weights
        self._sleep = asyncio.sleep
        self._succeeded = Outcome(ok=True)  # immutable: every attempt can share it

    async def run(self, attempt: Attempt) -> Outcome:
        await self._sleep(self._weights[attempt.task.id])
        return self._succeeded

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
    rate_limits: Mapping[str, str | RateLimit] | None = None,
) -> tuple[RunReport, list[str]]:
    """Run the scheduler on the fake clock with every task taking its weight.

    Returns the report (exact virtual times) and the ids in the order they started.
    """
    return _simulated(graph, weights, max_workers=max_workers, resources=resources, policy=policy,
                      cost_model=cost_model, rate_limits=rate_limits)[:2]


def _simulated(
    graph: Graph,
    weights: Mapping[str, float],
    *,
    max_workers: int,
    resources: Capacities | None,
    policy: OrderingPolicy | None,
    cost_model: CostModel | None,
    rate_limits: Mapping[str, str | RateLimit] | None,
) -> tuple[RunReport, list[str], dict[str, int]]:
    """`simulate`, and the slot each task first started on."""
    from .events import TaskStarted
    from .fakeclock import run_virtual
    from .scheduler import Scheduler

    limiters = None
    if rate_limits:
        from .runner import named_limiters

        limiters = named_limiters(rate_limits, max_workers)
    started: list[str] = []
    slots: dict[str, int] = {}

    class _Starts:
        def handle(self, event: Event) -> None:
            if isinstance(event, TaskStarted) and event.task_id not in slots:
                started.append(event.task_id)
                slots[event.task_id] = event.worker

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
            limiters=limiters,
        )
        report = run_virtual(scheduler.run())
    return report, started, slots


def get_execution_plan(
    tasks: TaskSource,
    *,
    deps: Mapping[str, Sequence[str]] | None = None,
    max_workers: int | None = None,
    resources: Capacities | None = None,
    policy: OrderingPolicy | None = None,
    cost_model: CostModel | None = None,
    rate_limits: Mapping[str, str | RateLimit] | None = None,
    simulate: bool | None = None,
) -> ExecutionPlan:
    """The plan for running these tasks: levels, critical path, start order, estimates.

    Args:
        simulate: run the scheduler on the fake clock for the exact start order, every
            task's start and end, and the makespan (True); only the shape and the start
            order as on one worker (False); None: simulate graphs of up to
            `SIMULATED_UP_TO` tasks.
        rate_limits: the run's named rate limits (``{"api": "10/s"}``), which a simulation
            paces tasks by as a run would.

    Raises:
        PhalanxError: the tasks are invalid, exactly as `phalanx.run` would say.
    """
    graph = build_graph(tasks, deps=deps).validate()
    workers = optimal_workers("commands").count if max_workers is None else max_workers
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"max_workers must be a positive integer, got {workers!r}")  # as the scheduler says
    estimates = estimate_costs(graph, cost_model or DeclaredCosts())
    weights = path_weights(estimates)
    unknown = [tid for tid, cost in estimates.items() if cost is None]
    order = graph.topological_order()
    dependents = _dependents(graph)
    remaining = _remaining(order, dependents, weights)
    chain, length = _heaviest_chain(graph, dependents, remaining)
    simulated = simulate if simulate is not None else len(graph) <= SIMULATED_UP_TO
    start_order: tuple[str, ...] = ()  # the simulation's, below
    if not simulated:
        # What the scheduler refuses before it starts anything, refused here too.
        declared, instances = split_capacities(resources)
        check_requests(graph, {**declared, SLOTS: float(workers)}, instances)
        start_order = tuple(_one_worker_order(graph, dependents, remaining, policy or CriticalPathFirst()))
    plan = ExecutionPlan(
        levels=_levels(graph, order),
        critical_path=tuple(chain),
        critical_path_length=length,
        start_order=start_order,
        estimated_makespan=None,
        total_work=sum(weights.values()),
        max_workers=workers,
        costs_known=len(unknown) < len(estimates),
        estimates=weights,
        unknown=len(unknown),
        unknown_weight=weights[unknown[0]] if unknown else 1.0,
    )
    if not simulated:
        return plan
    from .results import Status

    report, started, slots = _simulated(graph, weights, max_workers=workers, resources=resources, policy=policy,
                                        cost_model=cost_model, rate_limits=rate_limits)
    timeline: list[PlannedTask] = []
    slot_seconds = 0.0
    for tid in started:
        result = report.results[tid]
        start = result.start or 0.0
        end = start if result.end is None else result.end
        timeline.append(PlannedTask(tid, start, end, slots[tid]))
        slot_seconds += (end - start) * graph[tid].requests.get(SLOTS, 1.0)
    makespan = report.summary.wall_time
    return replace(
        plan,
        start_order=tuple(started),
        estimated_makespan=makespan,
        timeline=tuple(timeline),
        utilisation=slot_seconds / (makespan * workers) if makespan > 0 else None,
        not_finished=tuple(tid for tid, result in report.results.items() if result.status is not Status.SUCCEEDED),
    )
