"""The cluster worker's address (`TaskResult.worker_address`) in every output that says where a task ran.

A task run by ``--backend dask`` ends with the Dask worker's address; the journal, the
console and live view, JUnit, the HTML report (live and from the journal), the trace, the
OpenTelemetry spans and GNU parallel's joblog and results files then carry it, each where
it shows the slot (or host) today. A result with no address (a run on this machine) gives
exactly what it gave before: nothing here says "worker_address" or shows an address.

The sinks are fed events directly (no cluster is started): what they show comes from the
results, and a result is all a cluster run changes.
"""

from __future__ import annotations

import io
import json
import os
import re
import sqlite3
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

import phalanx
from phalanx.events import Event, RunFinished, RunStarted, TaskFinished, TaskRetrying, TaskStarted
from phalanx.journal import _MIGRATIONS, SCHEMA_VERSION, Journal, JournalSink, journal_path, spec_hashes
from phalanx.journalreport import report_data
from phalanx.render import task_line
from phalanx.results import RunReport, RunSummary, Status, TaskResult
from phalanx.sinks.console import ConsoleReporter
from phalanx.sinks.html import HtmlReportSink, render_report
from phalanx.sinks.joblog import JoblogSink, StreamRecords
from phalanx.sinks.junit import JUnitSink
from phalanx.sinks.live import LiveView
from phalanx.sinks.results import CsvResults, JobInfo, JsonlResults
from phalanx.sinks.trace import TraceSink
from viewers import validate_trace

ADDRESS = "tcp://127.0.0.1:40123"
OTHER = "tcp://127.0.0.1:35289"
STARTED_AT = 1_700_000_000.0


def _summary(results: Sequence[TaskResult], wall: float) -> RunSummary:
    counts = {status: sum(result.status is status for result in results) for status in Status}
    return RunSummary(
        total=len(results), counts=counts, flaky=sum(result.flaky for result in results), wall_time=wall,
        busy_time=wall, max_workers=2, achieved_parallelism=1.0, max_concurrency=2, critical_path=(),
        critical_path_time=0.0, lower_bound=0.0, slowest=(), data_totals={}, started_at=STARTED_AT,
    )


def _results(address: str | None, other: str | None) -> list[TaskResult]:
    """Three tasks: ``lint`` passed on ``address``, ``unit`` failed there after a retry (its
    first attempt's end does not say where it ran), ``docs`` passed on ``other``; and
    ``deploy``, skipped, which ran nowhere."""
    return [
        TaskResult("lint", Status.SUCCEEDED, attempts=1, start=0.0, end=0.32, duration=0.32, busy_time=0.32,
                   worker=1, worker_address=address),
        TaskResult("unit", Status.FAILED, attempts=2, reason="exit code 1", exit_code=1, start=0.0, end=2.5,
                   duration=1.5, busy_time=2.5, worker=2, stdout_tail="assert 1 == 2\n", worker_address=address),
        TaskResult("docs", Status.SUCCEEDED, attempts=1, start=0.32, end=1.0, duration=0.68, busy_time=0.68,
                   worker=1, worker_address=other),
        TaskResult("deploy", Status.SKIPPED, reason="dependency 'unit' failed", blocked_by="unit"),
    ]


def _events(address: str | None = ADDRESS, other: str | None = OTHER) -> list[Event]:
    """A whole run of `_results`, as the scheduler reports it."""
    lint, unit, docs, deploy = results = _results(address, other)
    return [
        RunStarted("run-1", total=4, max_workers=2, started_at=STARTED_AT),
        TaskStarted("lint", 1, 1, 0.0),
        TaskStarted("unit", 1, 2, 0.0),
        TaskFinished(lint, 0.32),
        TaskStarted("docs", 1, 1, 0.32),
        TaskRetrying("unit", 1, 0.0, "exit code 1", 1.0),
        TaskStarted("unit", 2, 2, 1.0),
        TaskFinished(docs, 1.0),
        TaskFinished(unit, 2.5),
        TaskFinished(deploy, 2.5),
        RunFinished(RunReport({result.task_id: result for result in results}, _summary(results, 2.5)), 2.5),
    ]


def _feed(sink: Any, events: Sequence[Event]) -> None:
    for event in events:
        sink.handle(event)
    sink.close()


# ------------------------------------------------------------------------ console and live view


def test_the_task_line_ends_with_the_worker_it_ran_on() -> None:
    lint, unit, docs, deploy = _results(ADDRESS, OTHER)
    assert task_line(lint) == f"    PASS [  0.320s] lint  ({ADDRESS})"
    assert task_line(unit) == f"    FAIL [   1.50s] unit  exit code 1  ({ADDRESS})"
    assert task_line(docs) == f"    PASS [  0.680s] docs  ({OTHER})"
    assert task_line(deploy) == "    SKIP            deploy  dependency 'unit' failed"  # ran nowhere


def test_a_local_task_line_is_as_it_was() -> None:
    lint, unit, docs, deploy = _results(None, None)
    assert task_line(lint) == "    PASS [  0.320s] lint"
    assert task_line(unit) == "    FAIL [   1.50s] unit  exit code 1"
    assert task_line(docs) == "    PASS [  0.680s] docs"
    assert task_line(deploy) == "    SKIP            deploy  dependency 'unit' failed"


def test_the_console_reporter_prints_the_address_on_the_tasks_line() -> None:
    lines = {}
    for address in (ADDRESS, None):
        stream = io.StringIO()
        _feed(ConsoleReporter(stream, output="never", colour=False), _events(address, address))
        lines[address] = stream.getvalue()
    assert lines[ADDRESS] == (
        f"    PASS [  0.320s] lint  ({ADDRESS})\n"
        "   RETRY            unit  attempt 1 exit code 1, retrying\n"
        f"    PASS [  0.680s] docs  ({ADDRESS})\n"
        f"    FAIL [   1.50s] unit  exit code 1  ({ADDRESS})\n"
        "    SKIP            deploy  dependency 'unit' failed\n"
    )
    assert lines[None] == lines[ADDRESS].replace(f"  ({ADDRESS})", "")


def test_the_live_view_prints_the_address_on_a_failures_block() -> None:
    written = {}
    for address in (ADDRESS, None):
        console = Console(file=io.StringIO(), width=100, height=24, force_terminal=True, color_system=None,
                          record=True)
        _feed(LiveView(console, quiet=True, clock=lambda: 2.5, colour=False), _events(address, address))
        written[address] = console.export_text()
    assert f"    FAIL [   1.50s] unit  exit code 1  ({ADDRESS})\n--- stdout (tail): unit ---\n" in written[ADDRESS]
    assert "    FAIL [   1.50s] unit  exit code 1\n--- stdout (tail): unit ---\n" in written[None]
    assert "tcp://" not in written[None]


# ------------------------------------------------------------------------------------ JUnit


def _junit_cases(path: Path) -> dict[str, dict[str, list[str]]]:
    """Each test case's properties, by name."""
    cases: dict[str, dict[str, list[str]]] = {}
    for case in ET.parse(path).getroot().iter("testcase"):
        properties: dict[str, list[str]] = {}
        for prop in case.iter("property"):
            properties.setdefault(prop.get("name", ""), []).append(prop.get("value", ""))
        cases[case.get("name", "")] = properties
    return cases


def test_junit_gives_each_case_a_worker_address_property(tmp_path: Path) -> None:
    _feed(JUnitSink(tmp_path / "cluster.xml"), _events())
    _feed(JUnitSink(tmp_path / "local.xml"), _events(None, None))
    cases = _junit_cases(tmp_path / "cluster.xml")
    assert cases["lint"]["worker_address"] == [ADDRESS]
    assert cases["unit"]["worker_address"] == [ADDRESS]
    assert cases["docs"]["worker_address"] == [OTHER]
    assert "worker_address" not in cases["deploy"]
    # Next to the slot, which a cluster run still has.
    assert list(cases["lint"]) == ["status", "attempts", "worker", "worker_address"]
    local = _junit_cases(tmp_path / "local.xml")
    assert all("worker_address" not in properties for properties in local.values())
    assert list(local["lint"]) == ["status", "attempts", "worker"]
    # The suite names no host: its tasks ran on two.
    suite = ET.parse(tmp_path / "cluster.xml").getroot().find("testsuite")
    assert suite is not None and suite.get("hostname") is None
    # Apart from the properties, the reports are the same.
    assert _drop(tmp_path / "cluster.xml", "timestamp=", 'name="worker_address"') == _drop(
        tmp_path / "local.xml", "timestamp="
    )


def test_junit_readers_see_the_property(tmp_path: Path) -> None:
    junitparser = pytest.importorskip("junitparser", reason="checked with junitparser, a reader CI tools use")
    _feed(JUnitSink(tmp_path / "junit.xml"), _events())
    suite = next(iter(junitparser.JUnitXml.fromfile(str(tmp_path / "junit.xml"))))
    found = {case.name: {prop.name: prop.value for prop in case.child(junitparser.Properties)} for case in suite}
    assert found["lint"]["worker_address"] == ADDRESS
    assert found["docs"]["worker_address"] == OTHER


def _drop(path: Path, *marks: str) -> list[str]:
    """The file's lines, without those holding any of ``marks``."""
    return [line for line in path.read_text(encoding="utf-8").splitlines() if not any(m in line for m in marks)]


# ---------------------------------------------------------------------------------- HTML


def _page_data(page: str) -> dict[str, Any]:
    start = page.index('<script type="application/json" id="phalanx-data">') + len(
        '<script type="application/json" id="phalanx-data">'
    )
    data: dict[str, Any] = json.loads(page[start : page.index("</script>", start)])
    return data


def test_the_html_report_names_the_worker_in_the_row_and_on_the_last_attempts_bar(tmp_path: Path) -> None:
    _feed(HtmlReportSink(tmp_path / "cluster.html"), _events())
    page = (tmp_path / "cluster.html").read_text(encoding="utf-8")
    # The task's row: under its id, and as a data attribute for tools.
    assert page.count('<div class="where"') == 3
    assert f'<code>lint</code><div class="where" title="the cluster worker it ran on">on <code>{ADDRESS}</code>' in page
    assert re.search(f'<tbody class="task-group" data-task="docs" [^>]*data-worker-address="{OTHER}">', page)
    assert '<code>deploy</code></td>' in page  # skipped: it ran nowhere
    # The bars: the last attempt's knows its worker; the retried one's end did not say.
    bars = {(a["task"], a["attempt"]): a for a in _page_data(page)["attempts"]}
    assert bars["lint", 1]["worker_address"] == ADDRESS
    assert bars["unit", 2]["worker_address"] == ADDRESS
    assert "worker_address" not in bars["unit", 1]
    assert f"docs \u00b7 attempt 1 \u00b7 0.680s \u00b7 succeeded \u00b7 on {OTHER}" in page  # the bar's title
    assert 'if (a.worker_address) line("on " + a.worker_address, "dim");' in page  # and its tooltip


def test_a_local_html_report_has_no_address(tmp_path: Path) -> None:
    _feed(HtmlReportSink(tmp_path / "local.html"), _events(None, None))
    page = (tmp_path / "local.html").read_text(encoding="utf-8")
    assert 'class="where"' not in page and "data-worker-address" not in page and "tcp://" not in page
    for attempt in _page_data(page)["attempts"]:
        assert list(attempt) == ["task", "attempt", "slot", "start", "end", "status", "reason"]


# ---------------------------------------------------------------------------------- trace


def test_the_trace_puts_the_address_in_the_last_attempts_args(tmp_path: Path) -> None:
    _feed(TraceSink(tmp_path / "cluster.json"), _events())
    _feed(TraceSink(tmp_path / "local.json"), _events(None, None))
    slices = {}
    for name in ("cluster", "local"):
        events = validate_trace(json.loads((tmp_path / f"{name}.json").read_text(encoding="utf-8")))
        slices[name] = {(e["name"], e["args"]["attempt"]): e["args"] for e in events if e["ph"] == "X"}
    cluster, local = slices["cluster"], slices["local"]
    assert cluster["lint", 1]["worker_address"] == ADDRESS
    assert cluster["unit", 2]["worker_address"] == ADDRESS
    assert cluster["docs", 1]["worker_address"] == OTHER
    assert "worker_address" not in cluster["unit", 1]  # retried: its end did not say where
    assert all("worker_address" not in args for args in local.values())
    assert {key: {k: v for k, v in args.items() if k != "worker_address"} for key, args in cluster.items()} == local


# ----------------------------------------------------------------------------------- OTEL


def test_otel_spans_carry_the_address() -> None:
    sdk_trace = pytest.importorskip("opentelemetry.sdk.trace")
    export = pytest.importorskip("opentelemetry.sdk.trace.export")
    in_memory = pytest.importorskip("opentelemetry.sdk.trace.export.in_memory_span_exporter")
    from phalanx.sinks.otel import OtelSink

    spans = {}
    for address in (ADDRESS, None):
        exporter = in_memory.InMemorySpanExporter()
        provider = sdk_trace.TracerProvider()
        provider.add_span_processor(export.SimpleSpanProcessor(exporter))
        _feed(OtelSink(provider), _events(address, address))
        spans[address] = {
            (span.name, span.attributes["phalanx.task.attempt"]): dict(span.attributes)
            for span in exporter.get_finished_spans() if span.parent is not None
        }
        provider.shutdown()
    cluster, local = spans[ADDRESS], spans[None]
    assert cluster["lint", 1]["phalanx.task.worker_address"] == ADDRESS
    assert cluster["unit", 2]["phalanx.task.worker_address"] == ADDRESS
    assert "phalanx.task.worker_address" not in cluster["unit", 1]
    assert all("phalanx.task.worker_address" not in attributes for attributes in local.values())


# ------------------------------------------------------------------ GNU parallel's joblog and results


def _describe(result: TaskResult) -> JobInfo:
    seq = ["lint", "unit", "docs", "deploy"].index(result.task_id) + 1
    return JobInfo(seq, (result.task_id,), f"make {result.task_id}")


def _records(sink_of: Any, address: str | None) -> list[str]:
    stream = io.BytesIO()
    records = StreamRecords(stream)
    _feed(sink_of(records), _events(address, address))
    return stream.getvalue().decode().splitlines()


def test_the_joblog_host_is_the_worker() -> None:
    cluster = _records(lambda records: JoblogSink(records, lambda r: (_describe(r).seq, _describe(r).command),
                                                  header=True), ADDRESS)
    local = _records(lambda records: JoblogSink(records, lambda r: (_describe(r).seq, _describe(r).command),
                                                header=True), None)
    assert [line.split("\t")[:2] for line in cluster[1:]] == [["1", ADDRESS], ["3", ADDRESS], ["2", ADDRESS]]
    assert [line.split("\t")[:2] for line in local[1:]] == [["1", ":"], ["3", ":"], ["2", ":"]]
    assert all(len(line.split("\t")) == 9 for line in cluster)
    assert [line.replace(ADDRESS, ":") for line in cluster] == local


def test_the_results_files_name_the_worker() -> None:
    cluster = _records(lambda records: CsvResults(records, _describe, 1), ADDRESS)
    local = _records(lambda records: CsvResults(records, _describe, 1), None)
    assert cluster[1].startswith(f"1,{ADDRESS},") and local[1].startswith("1,:,")
    assert [line.replace(ADDRESS, ":") for line in cluster] == local

    cluster = _records(lambda records: JsonlResults(records, _describe), ADDRESS)
    local = _records(lambda records: JsonlResults(records, _describe), None)
    assert [json.loads(line)["worker_address"] for line in cluster] == [ADDRESS] * 3
    assert all("worker_address" not in json.loads(line) for line in local)


# -------------------------------------------------------------------------------- the journal


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[Journal]:
    with Journal.open(tmp_path) as opened:
        yield opened


def _journal_sink(journal: Journal, **options: Any) -> JournalSink:
    graph = phalanx.Graph([phalanx.Task(tid, "true") for tid in ("lint", "unit", "docs", "deploy")])
    return JournalSink(journal, spec_hashes=spec_hashes(graph), command_line="phalanx run x.toml",
                       file_key="x.toml", history=False, **options)


@pytest.mark.parametrize("mode", ["committed", "spawn-held", "batched"])
def test_the_journal_keeps_each_last_attempts_worker(journal: Journal, mode: str) -> None:
    """Each way a task's end is written: its own commit, with a spawn held back
    (`Journal.hold_spawned`), and in a batch (``commit_every``) with its spawn."""
    sink = _journal_sink(journal, commit_every=60.0) if mode == "batched" else _journal_sink(journal)
    for event in _events():
        if isinstance(event, TaskStarted) and mode != "committed":
            sink.handle(event)
            # A process of ours stands for the attempt's: only its group is taken.
            if mode == "batched":
                sink.attempt_spawned("run-1", event.task_id, event.attempt, os.getpid())
            else:
                journal.hold_spawned("run-1", event.task_id, event.attempt, os.getpid())
            continue
        sink.handle(event)
    sink.close()
    assert [a.worker_address for a in journal.show("run-1", "lint")] == [ADDRESS]
    assert [a.worker_address for a in journal.show("run-1", "unit")] == [None, ADDRESS]
    assert [a.worker_address for a in journal.show("run-1", "docs")] == [OTHER]
    assert journal.show("run-1", "deploy") == []
    assert [(a.worker, a.status) for a in journal.show("run-1", "unit")] == [(2, "failed"), (2, "failed")]
    if mode != "committed":
        assert journal.show("run-1", "lint")[0].pgid == os.getpgid(0)  # the spawn's row is the end's


def test_a_local_run_journals_no_address(journal: Journal) -> None:
    _feed(_journal_sink(journal), _events(None, None))
    assert [a.worker_address for tid in ("lint", "unit", "docs") for a in journal.show("run-1", tid)] == [None] * 4


def test_the_html_report_from_the_journal_names_the_worker(journal: Journal) -> None:
    _feed(_journal_sink(journal), _events())
    data = report_data(journal, journal.run("run-1"))
    assert {task.task_id: task.worker_address for task in data.tasks} == {
        "lint": ADDRESS, "unit": ADDRESS, "docs": OTHER, "deploy": None,
    }
    assert sorted((a.task_id, a.attempt, a.worker_address) for a in data.attempts) == [
        ("docs", 1, OTHER), ("lint", 1, ADDRESS), ("unit", 1, None), ("unit", 2, ADDRESS),
    ]
    page = render_report(data, nonce="n")
    assert f'on <code>{ADDRESS}</code>' in page and f'on <code>{OTHER}</code>' in page


def test_a_local_runs_page_from_the_journal_has_no_address(journal: Journal) -> None:
    _feed(_journal_sink(journal), _events(None, None))
    data = report_data(journal, journal.run("run-1"))
    assert all(task.worker_address is None for task in data.tasks)
    page = render_report(data, nonce="n")
    assert 'class="where"' not in page and "worker_address" not in page.split("<script nonce")[0]


def test_a_schema_2_journal_gains_the_column_and_keeps_its_attempts(tmp_path: Path) -> None:
    path = journal_path(tmp_path)
    path.parent.mkdir()
    with sqlite3.connect(path) as db:  # a journal as schema 2 wrote it, with one attempt
        for version in (0, 1):
            db.executescript(_MIGRATIONS[version])
        db.execute("PRAGMA user_version = 2")
        db.execute("INSERT INTO runs (id, kind, command_line, started_at, status) VALUES ('old', 'run', 'x', 1, 'x')")
        db.execute("INSERT INTO tasks (run_seq, task_id, status) VALUES (1, 'lint', 'succeeded')")
        db.execute("INSERT INTO attempts (run_seq, task_id, attempt, status, worker, stdout_tail)"
                   " VALUES (1, 'lint', 1, 'succeeded', 3, 'ok')")
    db.close()
    with Journal.open(tmp_path) as journal:
        assert journal.query("PRAGMA user_version") == [(SCHEMA_VERSION,)] == [(3,)]
        (attempt,) = journal.show("old", "lint")
        assert (attempt.worker, attempt.stdout_tail, attempt.worker_address) == (3, "ok", None)
        # And it takes new runs with their workers.
        sink = _journal_sink(journal)
        _feed(sink, _events())
        assert [a.worker_address for a in journal.show("run-1", "lint")] == [ADDRESS]


def test_the_address_is_written_whatever_it_holds(journal: Journal) -> None:
    """SQLite cannot bind a lone surrogate: an address is text like any other (`_text`)."""
    odd = "tcp://w\udcff:1"
    result = TaskResult("lint", Status.SUCCEEDED, attempts=1, start=0.0, end=0.1, duration=0.1, worker=1,
                        worker_address=odd)
    _feed(_journal_sink(journal), [
        RunStarted("run-1", total=1, max_workers=1, started_at=time.time()),
        TaskStarted("lint", 1, 1, 0.0),
        TaskFinished(result, 0.1),
    ])
    (attempt,) = journal.show("run-1", "lint")
    assert attempt.worker_address is not None
    assert attempt.worker_address.startswith("tcp://w\ufffd") and attempt.worker_address.endswith(":1")
