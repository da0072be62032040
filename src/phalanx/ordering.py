"""Which ready task starts first: cost estimates, critical paths, and the ordering policy.

The default policy orders ready tasks by priority (higher first), then by the longest
remaining path of estimated cost from the task to the end of the graph (critical path
first, HLFET: near-optimal for list scheduling in practice), then by submission order.

Costs: a declared ``cost`` wins; otherwise a `CostModel` may know one (the duration
history plugs in here); otherwise the task weighs the median of the known costs, or 1.0
when none is known, so that an all-unknown graph is ordered by depth (the number of tasks
on the longest path to a sink), as ninja does.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Protocol

from .model import Graph, Task


class CostModel(Protocol):
    """Estimated seconds a task will take, or None when there is nothing to go on."""

    def estimate(self, task: Task) -> float | None: ...


class DeclaredCosts:
    """Only what the tasks declare (``cost = "5s"``)."""

    def estimate(self, task: Task) -> float | None:
        return task.cost


def estimate_costs(graph: Graph, model: CostModel) -> dict[str, float | None]:
    """Each task's estimate from the model (None where unknown)."""
    return {task.id: model.estimate(task) for task in graph}


def path_weights(estimates: Mapping[str, float | None]) -> dict[str, float]:
    """Weights for path lengths: estimates, with unknowns given the median known cost (or 1)."""
    fallback = unknown_weight(estimates.values())
    return {tid: (cost if cost is not None else fallback) for tid, cost in estimates.items()}


def unknown_weight(estimates: Iterable[float | None]) -> float:
    """What a task with no estimate weighs: the median known cost, or 1 when none is known."""
    known = [cost for cost in estimates if cost is not None]
    return _median(known) if known else 1.0


def _median(values: list[float]) -> float:
    # Not statistics.median: importing statistics (fractions, decimal) costs milliseconds
    # of start-up that `phalanx map` cannot spare.
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def remaining_paths(graph: Graph, weights: Mapping[str, float]) -> dict[str, float]:
    """For each task, the heaviest path from it (itself included) to any task with no dependents."""
    remaining: dict[str, float] = {}
    for tid in reversed(graph.topological_order()):
        tail = max((remaining[d] for d in graph.dependents(tid)), default=0.0)
        remaining[tid] = weights[tid] + tail
    return remaining


def critical_path(graph: Graph, weights: Mapping[str, float]) -> tuple[list[str], float]:
    """The heaviest chain through the graph, as ids in run order, and its length."""
    if not len(graph):
        return [], 0.0
    remaining = remaining_paths(graph, weights)
    roots = [task.id for task in graph if not task.deps]
    current = max(roots, key=lambda tid: remaining[tid])
    chain = [current]
    while True:
        dependents = graph.dependents(current)
        if not dependents:
            break
        current = max(dependents, key=lambda tid: remaining[tid])
        chain.append(current)
    return chain, remaining[chain[0]]


class OrderingPolicy(Protocol):
    """The sort key of a ready task: the smallest key starts first.

    This is the hook for a custom scheduling algorithm. The scheduler asks once per task,
    with the task's remaining path (its own estimated cost plus the heaviest chain of
    dependents after it) and its submission index; tasks submitted while a run goes on
    (an `Executor`) have no known dependents yet, so their remaining path is their cost.
    """

    def key(self, task: Task, remaining: float, index: int) -> tuple[Any, ...]: ...


class CriticalPathFirst:
    """Priority, then longest remaining path of estimated cost, then submission order."""

    def key(self, task: Task, remaining: float, index: int) -> tuple[Any, ...]:
        return (-task.priority, -remaining, index)


class SubmissionOrder:
    """Priority, then submission order: what a FIFO queue does (no critical path)."""

    def key(self, task: Task, remaining: float, index: int) -> tuple[Any, ...]:
        return (-task.priority, index)
