"""A results file completed from the journal, when ``phalanx run --resume --results FILE`` starts.

`phalanx run` hands a task's end to the journal before the results file, so that
``--resume`` never runs again a task whose end anything reported. A kill between the two
leaves the task succeeded in the journal and without its row in the file; the resume
skips the task, and nothing would ever write the row. So the resume first writes, for
every task it treats as done whose row the file lacks, the row `result_row` makes of the
task's end as the journal has it: the row the killed run would have written.

A row counts as there when the file has one for the task with the same status, attempts
and duration: a row from an older end of the task (one that failed, or ran an earlier
definition) does not stand for the one recorded last.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from .journal import TaskRecord
from .results import Status, TaskResult
from .sinks.table import TableWriter, result_row, row_cells

#: The columns that tell one end of a task from another, in a `result_row`.
_KEY = ("task", "status", "attempts", "duration")


@dataclass(frozen=True, slots=True)
class Completion:
    """What `complete_results` did.

    Attributes:
        written: the tasks whose rows it wrote, in the order given.
        unknown: tasks whose rows the file lacks too, but whose reported data the journal
            does not hold (more than `journal.DATA_LIMIT`, or recorded by a phalanx that
            did not keep it): their rows cannot be rebuilt.
    """

    written: tuple[str, ...]
    unknown: tuple[str, ...]


def complete_results(
    writer: TableWriter,
    records: Iterable[TaskRecord],
    *,
    redact: Callable[[TaskResult], TaskResult] | None = None,
) -> Completion:
    """Write the row of each succeeded task of ``records`` (the journal's latest record of
    each task a resume treats as done, in the order to write them) that ``writer``'s file
    lacks. ``redact`` masks the rebuilt result first (the journal's copy was masked with
    the secrets of its own run; this run's may differ).

    Raises:
        OSError: the file cannot be read or written. ConfigError: a CSV that cannot be read back.
    """
    records = [record for record in records if record.status == Status.SUCCEEDED.value]
    if not records:
        return Completion((), ())
    present = writer.written(_KEY)
    ended = {row[:2] for row in present}  # (task, status): all that can be told of a record without data
    written: list[str] = []
    unknown: list[str] = []
    for record in records:
        result = recorded_result(record)
        if result is None:
            if (record.task_id, record.status) not in ended:
                unknown.append(record.task_id)
            continue
        if redact is not None:
            result = redact(result)
        row = result_row(result)
        if row_cells(row, _KEY) in present:
            continue
        writer.write(row)
        written.append(record.task_id)
    if written:
        writer.flush()  # in the file before the resumed run's tasks start (and an error raised now)
    return Completion(tuple(written), tuple(unknown))


def recorded_result(record: TaskRecord) -> TaskResult | None:
    """The `TaskResult` a succeeded task's journal record stands for, as far as its results
    row shows it (no output, times, worker); None when the record does not hold what the
    task reported (more than `journal.DATA_LIMIT`, or written before the journal kept it)."""
    if record.data is None:
        return None
    return TaskResult(
        record.task_id,
        Status(record.status),
        attempts=record.attempts,
        exit_code=record.exit_code,
        data=record.data,
        duration=record.duration or 0.0,
        output_cut=record.output_cut,
    )

