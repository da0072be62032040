"""Results rows rebuilt from the journal (`phalanx.journalrows`), and what the journal keeps for them.

A task's end in the journal holds what its results row holds (the data it reported, how
much of its output was cut), so that ``phalanx run --resume`` can write the row a kill
kept from the results file. The rebuilt row is written exactly as the original was; a
row that is there is never written again; a journal from before the journal kept the
data (schema 1) is migrated, and its tasks' rows are reported, not made up.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest

import phalanx
from phalanx.journal import (
    _MIGRATIONS,
    DATA_LIMIT,
    SCHEMA_VERSION,
    Journal,
    JournalSink,
    file_key,
    journal_path,
    spec_hashes,
)
from phalanx.journalrows import complete_results, recorded_result
from phalanx.redact import Redactor
from phalanx.results import OutputCut, Status, StreamCut, TaskResult
from phalanx.sinks.table import TableWriter, result_row

CUT = OutputCut(cap=1000, stdout=StreamCut(printed=5000, kept=1000, head=500))


def _ended(journal: Journal, key: str, *results: TaskResult, run_id: str = "run-1") -> None:
    """A run of ``key`` in which ``results`` ended, recorded as `JournalSink` records it."""
    graph = phalanx.Graph([phalanx.Task(result.task_id, "true") for result in results])
    sink = JournalSink(journal, spec_hashes=spec_hashes(graph), command_line="phalanx run", file_key=key)
    sink.handle(phalanx.RunStarted(run_id, total=len(results), max_workers=1, started_at=time.time()))
    for result in results:
        sink.handle(phalanx.TaskStarted(result.task_id, result.attempts, 1, at=0.0))
        sink.handle(phalanx.TaskFinished(result, at=result.end or 0.0))
    sink.close()


def _succeeded(task_id: str, **fields: Any) -> TaskResult:
    defaults: dict[str, Any] = {"attempts": 1, "start": 0.0, "end": 0.5, "duration": 0.4321098765, "worker": 1}
    return TaskResult(task_id, Status.SUCCEEDED, **{**defaults, **fields})


def _records(journal: Journal, key: str) -> list[Any]:
    return sorted(journal.latest_tasks(key).values(), key=lambda record: record.task_id)


def test_a_tasks_end_keeps_what_its_results_row_holds(tmp_path: Path) -> None:
    data = {"n": 1, "ratio": 2.5, "text": "é \udcff", "nested": {"x": [1, None, True]}, "big": float("inf")}
    originals = [
        _succeeded("cut", output_cut=CUT, stdout_tail="x" * 100),
        _succeeded("data", data=MappingProxyType(data), attempts=3, flaky=True),
        _succeeded("plain"),
    ]
    key = file_key(tmp_path / "phalanx.toml")
    with Journal.open(tmp_path) as journal:
        _ended(journal, key, *originals)
        records = _records(journal, key)
    assert [record.output_cut for record in records] == [CUT, None, None]
    assert [dict(record.data or {}) for record in records] == [{}, data, {}]
    for original, record in zip(originals, records, strict=True):
        rebuilt = recorded_result(record)
        assert rebuilt is not None
        assert result_row(rebuilt) == result_row(original)
    assert result_row(originals[0])["note"] == "output cut: stdout 5 kB printed, 1 kB kept"


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_a_rebuilt_row_is_written_as_the_original_was(tmp_path: Path, suffix: str) -> None:
    """What JSON cannot hold as it is (a path, a tuple, a key that is not text) is kept as
    a results file writes it, so even those rows come out byte for byte the same."""
    odd = _succeeded("odd", data=MappingProxyType({"path": Path("/x/y"), "pair": (1, 2), 3: "three"}))
    plain = _succeeded("plain", data=MappingProxyType({"n": 7}), output_cut=CUT)
    key = file_key(tmp_path / "phalanx.toml")
    with Journal.open(tmp_path) as journal:
        _ended(journal, key, plain, odd)
        records = _records(journal, key)
    original, rebuilt = tmp_path / f"original{suffix}", tmp_path / f"rebuilt{suffix}"
    with TableWriter(original) as writer:
        for result in (plain, odd):
            writer.write(result_row(result))
    with TableWriter(rebuilt) as writer:
        assert complete_results(writer, reversed(records)).written == ("plain", "odd")
    assert rebuilt.read_bytes() == original.read_bytes()


def test_only_missing_succeeded_rows_are_written_and_an_older_end_does_not_stand_for_one(tmp_path: Path) -> None:
    key = file_key(tmp_path / "phalanx.toml")
    there, missing = _succeeded("there", data=MappingProxyType({"n": 1})), _succeeded("missing")
    rerun = _succeeded("rerun", duration=1.25)
    failed = TaskResult("failed", Status.FAILED, attempts=1, reason="exit code 1", exit_code=1, duration=0.1, worker=1)
    path = tmp_path / "rows.jsonl"
    with TableWriter(path) as writer:
        writer.write(result_row(there))
        writer.write(result_row(failed))
        writer.write(result_row(_succeeded("rerun", duration=0.5)))  # its end before the one recorded last
    with Journal.open(tmp_path) as journal:
        _ended(journal, key, there, missing, rerun, failed)
        records = _records(journal, key)
    with TableWriter(path) as writer:
        first = complete_results(writer, records)
        again = complete_results(writer, records)
    assert (first.written, first.unknown) == (("missing", "rerun"), ())
    assert (again.written, again.unknown) == ((), ())
    lines = path.read_text().splitlines()
    assert len(lines) == 5 and sum('"task": "rerun"' in line for line in lines) == 2


def test_a_rebuilt_row_is_masked_with_the_resumed_runs_secrets(tmp_path: Path) -> None:
    key = file_key(tmp_path / "phalanx.toml")
    leaky = _succeeded("leaky", data=MappingProxyType({"token": "id-sup3r-s3cret-value"}))
    with Journal.open(tmp_path) as journal:
        _ended(journal, key, leaky)
        records = _records(journal, key)
    path = tmp_path / "rows.jsonl"
    with TableWriter(path) as writer:
        complete_results(writer, records, redact=Redactor(["sup3r-s3cret-value"]).result)
    text = path.read_text()
    assert '"token": "id-***"' in text and "s3cret" not in text


def test_data_past_the_limit_is_not_kept_and_its_row_is_reported_not_made_up(tmp_path: Path) -> None:
    """A task reporting megabytes must not make the journal write them (its commits, its
    WAL, a file-size limit): past `DATA_LIMIT` the data is not kept, and a lost row of that
    task is told, not rebuilt without its fields."""
    key = file_key(tmp_path / "phalanx.toml")
    room = DATA_LIMIT - len('{"blob":""}')
    edge = "é" * (room // 2) + "x" * (room % 2)  # two bytes a character: exactly at the limit
    assert len(edge.encode()) == room
    at_limit = _succeeded("at-limit", data=MappingProxyType({"blob": edge}))
    over = _succeeded("over", data=MappingProxyType({"blob": edge + "x"}))
    with Journal.open(tmp_path) as journal:
        _ended(journal, key, at_limit, over)
        records = _records(journal, key)
    assert [record.task_id for record in records] == ["at-limit", "over"]
    assert dict(records[0].data or {}) == {"blob": edge} and records[1].data is None
    rows = tmp_path / "rows.jsonl"
    with TableWriter(rows) as writer:
        done = complete_results(writer, records)
    assert (done.written, done.unknown) == (("at-limit",), ("over",))


def test_a_journal_from_before_the_data_was_kept_is_migrated_and_its_rows_are_not_made_up(tmp_path: Path) -> None:
    path = journal_path(tmp_path)
    path.parent.mkdir()
    with sqlite3.connect(path) as db:  # a journal as schema 1 wrote it, with one succeeded task
        db.executescript(_MIGRATIONS[0])
        db.execute("PRAGMA user_version = 1")
        key = file_key(tmp_path / "phalanx.toml")
        db.execute("INSERT INTO runs (id, kind, file, command_line, started_at, status) VALUES"
                   " ('old', 'run', ?, 'phalanx run', 0, 'succeeded')", (key,))
        db.execute("INSERT INTO tasks (run_seq, task_id, spec_hash, status, attempts, duration) VALUES"
                   " (1, 'old-task', 'h', 'succeeded', 1, 0.5)")
    db.close()
    with Journal.open(tmp_path) as journal:
        assert journal.query("PRAGMA user_version") == [(SCHEMA_VERSION,)] == [(3,)]
        [record] = _records(journal, key)
        assert (record.task_id, record.data, record.output_cut) == ("old-task", None, None)
        assert recorded_result(record) is None
        rows = tmp_path / "rows.jsonl"
        with TableWriter(rows) as writer:
            done = complete_results(writer, [record])
        assert (done.written, done.unknown) == ((), ("old-task",))
        assert rows.read_bytes() == b""
        _ended(journal, key, _succeeded("new-task", data=MappingProxyType({"n": 2})), run_id="run-2")
        assert dict(journal.latest_tasks(key)["new-task"].data or {}) == {"n": 2}
