"""Text for people: the run summary, the plan, and the graph as text, Mermaid or DOT.

Pure functions from data to strings, so they are snapshot-tested exactly.
"""

from __future__ import annotations

from .durations import format_duration
from .model import Graph
from .plan import ExecutionPlan, levels_of
from .results import RunReport, Status, TaskResult

STATUS_LABELS = {
    Status.SUCCEEDED: "PASS",
    Status.FAILED: "FAIL",
    Status.TIMED_OUT: "TIMEOUT",
    Status.CRASHED: "CRASH",
    Status.SKIPPED: "SKIP",
    Status.CANCELLED: "CANCEL",
}


def task_line(result: TaskResult) -> str:
    """One line per finished task: ``   PASS [ 0.512s] black``; a task that ran on a cluster
    worker ends with where: ``   PASS [ 0.320s] isort  (tcp://10.0.0.5:35289)``."""
    label = "FLAKY" if result.flaky else STATUS_LABELS[result.status]
    took = f"[{format_duration(result.duration):>8}]" if result.attempts else " " * 10
    line = f"{label:>8} {took} {result.task_id}"
    if result.flaky:
        line += f"  (passed on attempt {result.attempts})"
    elif result.reason and not result.ok:
        line += f"  {result.reason}"
    if result.note is not None:
        line += f"  ({result.note})"
    if result.worker_address is not None:
        line += f"  ({result.worker_address})"
    return line


def plural(count: float, word: str, many: str | None = None) -> str:
    """``1 task``, ``2 tasks``, ``0 tasks`` (``many`` for irregular plurals)."""
    return f"{count:g} {word if count == 1 else many or word + 's'}"


def _seconds(value: float, costs_known: bool = True) -> str:
    return format_duration(value) if costs_known else plural(value, "task")


def summary_text(report: RunReport) -> str:
    """The summary printed at the end of every run."""
    s = report.summary
    counts = [f"{s.counts[Status.SUCCEEDED]} succeeded" + (f" ({s.flaky} flaky)" if s.flaky else "")]
    counts += [f"{n} {status.value.replace('_', ' ')}" for status, n in s.counts.items() if n and not status.ok]
    head = f"Summary: {plural(s.total, 'task')} in {format_duration(s.wall_time)}: " + ", ".join(counts)
    if s.cancelled_by is not None:
        head += f"  [stopped: {s.cancelled_by.label}]"
    lines = [head]
    lines.append(
        f"  busy {format_duration(s.busy_time)} on {plural(s.max_workers, 'worker')}: "
        f"parallelism {s.achieved_parallelism:.2f}x (speedup over sequential), peak {s.max_concurrency} at once"
    )
    efficiency = f": {s.efficiency:.0%} of ideal" if s.wall_time > 0 else ""
    lines.append(
        f"  lower bound {format_duration(s.lower_bound)} = max(critical path {format_duration(s.critical_path_time)}, "
        f"work/workers {format_duration(s.busy_time / s.max_workers)}){efficiency}"
    )
    if s.critical_path:
        lines.append("  critical path: " + " -> ".join(s.critical_path))
    if s.slowest:
        lines.append("  slowest: " + ", ".join(f"{tid} {format_duration(t)}" for tid, t in s.slowest))
    if s.data_totals:
        lines.append("  totals: " + ", ".join(f"{k}={v:g}" for k, v in sorted(s.data_totals.items())))
    for result in report.results.values():
        if not result.ok:
            lines.append(f"  {result.status.value.replace('_', ' ')}: {result.task_id}: {result.reason}")
    return "\n".join(lines)


def plan_text(plan: ExecutionPlan, graph: Graph, *, from_history: int = 0) -> str:
    """``phalanx plan``: levels, critical path, widest level, start order.

    ``from_history``: how many of the tasks' durations are the history's estimates (the
    rest are declared, or unknown and ordered by the graph's depth). A plan that was not
    simulated (a large graph) has no makespan, and its start order is the one on one worker.
    """
    unit = plan.costs_known
    lines = [
        f"Plan: {plural(len(graph), 'task')}, {plural(len(plan.levels), 'level')}, "
        f"{plural(plan.max_workers, 'worker')}"
    ]
    for index, level in enumerate(plan.levels):
        lines.append(f"  level {index} ({len(level)}): " + ", ".join(level))
    widest = plan.widest_level
    if plan.levels:
        lines.append(f"  widest level: {widest} ({plural(len(plan.levels[widest]), 'task')})")
    lines.append(
        f"  critical path ({_seconds(plan.critical_path_length, unit)}): " + " -> ".join(plan.critical_path)
    )
    if plan.estimated_makespan is not None:
        lines.append(
            f"  estimated: work {_seconds(plan.total_work, unit)}, makespan {_seconds(plan.estimated_makespan, unit)}, "
            f"lower bound {_seconds(plan.lower_bound, unit)}, speedup {plan.speedup or 0.0:.2f}x"
        )
    else:
        lines.append(
            f"  estimated: work {_seconds(plan.total_work, unit)}, lower bound {_seconds(plan.lower_bound, unit)} "
            "(the makespan: --simulate)"
        )
    lines.append(_durations_line(graph, from_history))
    if plan.simulated:
        lines.append("  start order:")
    else:
        lines.append("  start order: as on one worker, by priority then critical path "
                     f"(on {plural(plan.max_workers, 'worker')}: --simulate)")
    width = len(str(len(plan.start_order)))
    for position, tid in enumerate(plan.start_order, 1):
        task = graph[tid]
        after = f"  (after {', '.join(task.deps)})" if task.deps else ""
        rank = f"  [priority {task.priority:+d}]" if task.priority else ""
        lines.append(f"    {position:>{width}}. {tid}{rank}{after}")
    return "\n".join(lines)


def _durations_line(graph: Graph, from_history: int, unknown_note: str = " (ordered by depth)") -> str:
    declared = sum(1 for task in graph if task.cost is not None)
    unknown = len(graph) - declared - from_history
    return (f"  durations: {declared} declared, {from_history} from history, {unknown} unknown"
            + (unknown_note if unknown else ""))


#: A simulation's critical path or timeline up to this many rows is shown whole; a longer
#: one shows its first `_HEAD_ROWS` and last `_TAIL_ROWS` (how it starts, what ends it).
SHOWN_ROWS = 60
_HEAD_ROWS = 45
_TAIL_ROWS = 10
_BAR_WIDTH = 30


def _capped(rows: list[str], what: str) -> list[str]:
    if len(rows) <= SHOWN_ROWS:
        return rows
    hidden = len(rows) - _HEAD_ROWS - _TAIL_ROWS
    return [*rows[:_HEAD_ROWS], f"    ... {plural(hidden, 'more ' + what)} ...", *rows[-_TAIL_ROWS:]]


def _at(value: float, costs_known: bool) -> str:
    """A time of the timeline: a duration, or a count of tasks when no estimate is known."""
    return format_duration(value) if costs_known else f"{value:g}"


def predicted_makespan(value: float, costs_known: bool = True) -> str:
    """The makespan as ``predicted makespan:`` shows it: phalanx's duration (``12.3s``), with
    the seconds first from a minute up (``125.0s (2m05s)``) so that it always reads as a number
    of seconds; in tasks when no estimate is known."""
    if not costs_known:
        return plural(value, "task")
    return format_duration(value) if value < 60 else f"{value:.1f}s ({format_duration(value)})"


def simulation_text(plan: ExecutionPlan, graph: Graph, *, from_history: int = 0) -> str:
    """``phalanx plan --simulate``: the predicted makespan against its lower bound, the
    utilisation, the critical path with each task's estimate, and when and on which slot
    each task would start and end (only the first and last rows of a long run).

    ``from_history``: as for `plan_text`.

    Raises:
        ValueError: the plan was not simulated.
    """
    makespan = plan.estimated_makespan
    if makespan is None:
        raise ValueError("simulation_text needs a simulated plan (get_execution_plan(..., simulate=True))")
    unit = plan.costs_known
    workers = plan.max_workers
    lines = [f"Plan: {plural(len(graph), 'task')} on {plural(workers, 'worker')}, simulated with the estimates"]
    lines.append(f"  predicted makespan: {predicted_makespan(makespan, unit)}")
    bound = plan.lower_bound
    lines.append(
        f"  lower bound {_seconds(bound, unit)} = max(critical path {_seconds(plan.critical_path_length, unit)}, "
        f"work/workers {_seconds(plan.total_work / workers, unit)})"
        + (f": the prediction is {makespan / bound:.2f}x it" if bound > 0 else "")
    )
    if plan.utilisation is not None:
        lines.append(f"  utilisation {plan.utilisation:.0%} of {plural(workers, 'worker')}: work "
                     f"{_seconds(plan.total_work, unit)}, speedup {plan.speedup or 0.0:.2f}x")
    if not unit:
        note = " (no estimate at all: every task weighs 1, times count tasks, not seconds; a guess)"
    else:
        note = f" (each weighs {format_duration(plan.unknown_weight)}, the median known estimate: a guess)"
    lines.append(_durations_line(graph, from_history, note))
    if plan.not_finished:
        names = ", ".join(plan.not_finished[:10]) + (", ..." if len(plan.not_finished) > 10 else "")
        lines.append(f"  would not finish: {plural(len(plan.not_finished), 'task')} (an estimate over the task's "
                     f"timeout, or a dependency that did not finish): {names}")
    chain = plural(len(plan.critical_path), "task")
    lines.append(f"  critical path ({_seconds(plan.critical_path_length, unit)}, {chain}):" if unit
                 else f"  critical path ({chain}):")
    width = max((len(_at(plan.estimates[tid], unit)) for tid in plan.critical_path), default=0)
    lines += _capped([f"    {_at(plan.estimates[tid], unit):>{width}}  {tid}" for tid in plan.critical_path], "task")
    lines.append(f"  timeline (start, end, slot; the bar is the whole {_seconds(makespan, unit)}):")
    width = max((len(_at(entry.end, unit)) for entry in plan.timeline), default=0)
    slots = len(str(max((entry.slot for entry in plan.timeline), default=0)))
    rows = []
    for entry in plan.timeline:
        first = min(int(entry.start / makespan * _BAR_WIDTH), _BAR_WIDTH - 1) if makespan > 0 else 0
        last = max(first + 1, round(entry.end / makespan * _BAR_WIDTH)) if makespan > 0 else 1
        bar = " " * first + "#" * (min(last, _BAR_WIDTH) - first)
        rows.append(f"    {_at(entry.start, unit):>{width}} {_at(entry.end, unit):>{width}}  {entry.slot:>{slots}}  "
                    f"|{bar:<{_BAR_WIDTH}}|  {entry.task_id}")
    lines += _capped(rows, "task")
    return "\n".join(lines)


def graph_text(graph: Graph) -> str:
    """Each task under its level, with what it depends on."""
    lines: list[str] = []
    for index, level in enumerate(levels_of(graph)):
        lines.append(f"level {index}")
        for tid in level:
            deps = graph[tid].deps
            lines.append(f"  {tid}" + (f"  <- {', '.join(deps)}" if deps else ""))
    return "\n".join(lines)


def graph_mermaid(graph: Graph) -> str:
    """A Mermaid flowchart: dependencies point at their dependents."""
    node = {tid: f"t{i}" for i, tid in enumerate(graph.ids)}
    lines = ["graph TD"]
    for tid in graph.ids:
        label = tid.replace('"', "#quot;")
        lines.append(f'    {node[tid]}["{label}"]')
    for task in graph:
        for dep in task.deps:
            lines.append(f"    {node[dep]} --> {node[task.id]}")
    return "\n".join(lines)


def _dot_id(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def graph_dot(graph: Graph) -> str:
    """Graphviz DOT: dependencies point at their dependents."""
    lines = ["digraph phalanx {", "    rankdir=LR;", "    node [shape=box];"]
    for tid in graph.ids:
        lines.append(f"    {_dot_id(tid)};")
    for task in graph:
        for dep in task.deps:
            lines.append(f"    {_dot_id(dep)} -> {_dot_id(task.id)};")
    lines.append("}")
    return "\n".join(lines)


def _written_deps(deps: tuple[str, ...], groups: dict[str, list[str]]) -> list[str]:
    """Dependencies as a task file names them: every expansion of a ``for_each`` task by its name."""
    names: list[str] = []
    given = set(deps)
    for dep in deps:
        group = dep.split("[", 1)[0]
        if group in groups and given.issuperset(groups[group]):
            if group not in names:
                names.append(group)
        else:
            names.append(dep)
    return names


def task_list_text(graph: Graph) -> str:
    """``phalanx list``: a table of the tasks with their tags and dependencies, and the tags in use."""
    groups: dict[str, list[str]] = {}
    for task in graph:
        if task.group is not None:
            groups.setdefault(task.group, []).append(task.id)
    rows = [("TASK", "TAGS", "DEPENDS ON")]
    for task in graph:
        deps = ", ".join(_written_deps(task.deps, groups))
        rows.append((task.id, ", ".join(sorted(task.tags)) or "-", deps or "-"))
    widths = [max(len(row[column]) for row in rows) for column in range(2)]
    lines = [f"{task:<{widths[0]}}  {tags:<{widths[1]}}  {deps}" for task, tags, deps in rows]
    tags = sorted({tag for task in graph for tag in task.tags})
    footer = plural(len(graph), "task")
    if tags:
        footer += f"; {plural(len(tags), 'tag')}: " + ", ".join(tags)
    lines.append(footer)
    return "\n".join(lines)


GRAPH_FORMATS = {"text": graph_text, "mermaid": graph_mermaid, "dot": graph_dot}
