"""Scheduler invariants over random DAGs, durations, capacities, priorities and failures.

Each example runs the real scheduler on the inline backend with the fake clock and
replays the recorded events to check the invariants.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from hypothesis import given, settings, strategies as st

from phalanx import RetryPolicy, Status, Task, TaskFinished, TaskRetrying, TaskStarted
from scheduling import Recorder, run_fake, work

FAILED_FOR_GOOD = (Status.FAILED, Status.TIMED_OUT, Status.CRASHED)


@dataclass(frozen=True)
class Case:
    tasks: list[Task]
    max_workers: int
    resources: dict[str, float]
    fail_fast: bool


@st.composite
def cases(draw: st.DrawFn, *, uniform: bool = False) -> Case:
    """Random DAGs. ``uniform``: every task takes one slot and nothing else, no backoff."""
    n = draw(st.integers(1, 14))
    max_workers = draw(st.integers(1, 4))
    db = draw(st.integers(1, 2))
    tasks = []
    for i in range(n):
        deps = draw(st.lists(st.integers(0, i - 1), max_size=3, unique=True)) if i else []
        seconds = draw(st.integers(1, 5))
        resources: dict[str, float] = {}
        if not uniform:
            resources["slots"] = draw(st.integers(1, max_workers))
            if draw(st.booleans()):
                resources["db"] = draw(st.integers(1, db))
        fate = draw(st.sampled_from(["ok", "ok", "ok", "fail", "flaky", "timeout"]))
        fail_attempts = {"fail": [1, 2], "flaky": [1]}.get(fate, [])
        delay = 0 if uniform else draw(st.integers(0, 3))
        tasks.append(
            Task(
                f"t{i}",
                work(seconds * 10 if fate == "timeout" else seconds, fail_attempts=fail_attempts),
                deps=[f"t{d}" for d in deps],
                priority=draw(st.integers(-1, 1)),
                resources=resources,
                retry=RetryPolicy(count=1, backoff="constant", initial=delay) if fate != "ok" else RetryPolicy(),
                timeout=seconds * 2 if fate == "timeout" else None,
                cost=seconds if draw(st.booleans()) else None,
            )
        )
    return Case(tasks, max_workers, {"db": float(db)}, draw(st.booleans()))


def _run(case: Case) -> tuple[Recorder, dict[str, Status]]:
    recorder = Recorder()
    report = run_fake(
        case.tasks, max_workers=case.max_workers, resources=case.resources, fail_fast=case.fail_fast, recorder=recorder
    )
    return recorder, {tid: result.status for tid, result in report.results.items()}


@settings(max_examples=300, deadline=None)
@given(cases())
def test_scheduler_invariants(case: Case) -> None:
    recorder, status = _run(case)
    by_id = {task.id: task for task in case.tasks}
    capacity = {**case.resources, "slots": float(case.max_workers)}

    # Each task ends in exactly one terminal status.
    finished = [event.task_id for event in recorder.of(TaskFinished)]
    assert sorted(finished) == sorted(by_id)

    ended_at: dict[str, float] = {}
    running: dict[str, dict[str, float]] = {}
    first_failure_seen = False
    for event in recorder.events:
        if isinstance(event, TaskStarted):
            task = by_id[event.task_id]
            # Dependencies finish (successfully) before dependents start.
            for dep in task.deps:
                assert dep in ended_at and ended_at[dep] <= event.at
                assert status[dep] is Status.SUCCEEDED
            # With fail_fast nothing starts after the first failure is seen.
            assert not (case.fail_fast and first_failure_seen)
            running[event.task_id] = dict(task.requests)
            # Running resource requests never exceed a capacity.
            for name, cap in capacity.items():
                assert sum(req.get(name, 0.0) for req in running.values()) <= cap + 1e-9
        elif isinstance(event, TaskRetrying):
            running.pop(event.task_id)
        elif isinstance(event, TaskFinished):
            running.pop(event.task_id, None)
            ended_at[event.task_id] = event.at
            if event.result.status in FAILED_FOR_GOOD:
                first_failure_seen = True

    # A task is skipped if and only if one of its (transitive) dependencies did not succeed.
    for tid, task in by_id.items():
        upstream_failed = any(status[dep] is not Status.SUCCEEDED for dep in task.deps)
        assert (status[tid] is Status.SKIPPED) == upstream_failed, tid
    if not case.fail_fast:
        assert Status.CANCELLED not in status.values()


@settings(max_examples=300, deadline=None)
@given(cases(uniform=True))
def test_list_scheduling_never_idles_a_free_slot(case: Case) -> None:
    """With one-slot tasks, whenever a task is ready every slot is busy."""
    recorder, _ = _run(case)
    by_id = {task.id: task for task in case.tasks}
    at_time: dict[float, list[object]] = defaultdict(list)
    for event in recorder.events:
        at = getattr(event, "at", None)
        if at is not None and isinstance(event, TaskStarted | TaskRetrying | TaskFinished):
            at_time[at].append(event)
    succeeded: set[str] = set()
    done: set[str] = set()
    running: set[str] = set()
    stopped = False
    for at in sorted(at_time):
        for event in at_time[at]:
            if isinstance(event, TaskStarted):
                running.add(event.task_id)
            elif isinstance(event, TaskRetrying):
                running.discard(event.task_id)
            elif isinstance(event, TaskFinished):
                running.discard(event.task_id)
                done.add(event.task_id)
                if event.result.ok:
                    succeeded.add(event.task_id)
                elif event.result.status in FAILED_FOR_GOOD and case.fail_fast:
                    stopped = True
        if stopped:
            break
        ready = [
            tid
            for tid, task in by_id.items()
            if tid not in done and tid not in running and all(dep in succeeded for dep in task.deps)
        ]
        if ready:
            assert len(running) == case.max_workers, (at, ready, running)
