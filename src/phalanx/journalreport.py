"""A past run's HTML report, from the journal (`phalanx report RUN --html FILE`).

The journal keeps each attempt (slot, cluster worker, times, status, reason, output tails)
and each task's result, so the page a run would have written with ``--html`` can be made
later. What the journal does not keep is the graph's edges, so this page has no critical path.
"""

from __future__ import annotations

from collections.abc import Sequence

from .journal import AttemptRecord, Journal, RunRecord
from .sinks.html import AttemptSpan, Output, ReportData, TaskEntry, max_overlap, render_report


def report_data(journal: Journal, run: RunRecord) -> ReportData:
    """The page's data for ``run``."""
    origin = run.started_at
    spans: list[AttemptSpan] = []
    entries: list[TaskEntry] = []
    busy = 0.0
    slots = 1
    for task in journal.show(run.id):
        attempts: Sequence[AttemptRecord] = journal.show(run.id, task.task_id)
        for attempt in attempts:
            if attempt.started_at is None:
                continue
            end = attempt.ended_at if attempt.ended_at is not None else attempt.started_at
            last = attempt is attempts[-1]
            status = attempt.status if last or attempt.status == "succeeded" else "retried"
            slot = attempt.worker or 0
            slots = max(slots, slot)
            spans.append(AttemptSpan(task.task_id, attempt.attempt, slot, attempt.started_at - origin,
                                     end - origin, status, attempt.reason, attempt.worker_address))
            busy += end - attempt.started_at
        final = attempts[-1] if attempts else None
        entries.append(TaskEntry(
            task_id=task.task_id,
            status=task.status,
            reason=task.reason,
            attempts=task.attempts,
            flaky=task.status == "succeeded" and task.attempts > 1,
            start=None if task.started_at is None else task.started_at - origin,
            duration=task.duration or 0.0,
            slot=None if final is None else final.worker,
            exit_code=task.exit_code,
            stdout=Output(final.stdout_tail if final else "", None),
            stderr=Output(final.stderr_tail if final else "", None),
            worker_address=None if final is None else final.worker_address,
        ))
    spans.sort(key=lambda span: (span.start, span.slot))
    ends = [span.end for span in spans]
    wall = run.duration if run.duration is not None else (max(ends) if ends else 0.0)
    return ReportData(
        title=run.command_line or f"phalanx {run.kind}",
        run_id=run.id,
        started_at=origin,
        complete=run.ended_at is not None,
        total=len(entries),
        counts=dict(run.counts),
        flaky=sum(entry.flaky for entry in entries),
        wall_time=wall,
        busy_time=busy,
        max_workers=slots,
        achieved_parallelism=busy / wall if wall > 0 else 0.0,
        max_concurrency=max_overlap(spans),
        lower_bound=busy / slots,
        critical_path=(),
        critical_path_time=0.0,
        attempts=tuple(spans),
        tasks=tuple(entries),
    )


def render_run(journal: Journal, run: RunRecord) -> str:
    """The whole page for ``run``."""
    return render_report(report_data(journal, run))

