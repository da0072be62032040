"""JUnit XML reports: `JUnitSink` driven by real runs, `write_junit`, `failing_tests`.

Everything is read back with junitparser (a reader CI tools use), not with our own code:
counts, verdicts, nextest's flakyFailure/rerunFailure elements, output in system-out,
tasks' own JUnit files merged under the task, and files that are missing, malformed or
stale noted rather than crashing the run.
"""

from __future__ import annotations

import itertools
import os
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

import phalanx
from phalanx import RetryPolicy, Status, Task, TaskFinished, TaskResult
from phalanx.sinks.junit import TAIL, FailedAttempt, JUnitSink, JUnitWriter, failing_tests, write_junit

junitparser = pytest.importorskip("junitparser", reason="the JUnit tests read reports with junitparser")


class FlakyFailure(junitparser.Element):  # type: ignore[misc]
    """nextest's element, which junitparser does not know: read with its extension mechanism."""

    _tag = "flakyFailure"
    message = junitparser.Attr()
    type = junitparser.Attr()


class RerunFailure(FlakyFailure):
    _tag = "rerunFailure"


OWN_JUNIT = """<?xml version="1.0" encoding="UTF-8"?>
<testsuites>
  <testsuite name="pytest" tests="3" failures="1">
    <testcase classname="tests.test_api" name="test_login" time="0.01"/>
    <testcase classname="tests.test_api" name="test_logout" time="0.02"><system-out>bye</system-out></testcase>
    <testcase classname="tests.test_api" name="test_refresh" time="0.03">
      <failure message="assert 1 == 2" type="AssertionError">tests/test_api.py:12: AssertionError</failure>
    </testcase>
  </testsuite>
</testsuites>
"""


def _cases(path: Path) -> dict[str, Any]:
    """The report's test cases by ``classname.name`` (the task's own: ``phalanx.TASK``)."""
    xml = junitparser.JUnitXml.fromfile(str(path))
    suites = list(xml)
    assert len(suites) == 1
    return {f"{case.classname}.{case.name}": case for case in suites[0]}


def _properties(case: Any) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for prop in case.child(junitparser.Properties):
        found.setdefault(prop.name, []).append(prop.value)
    return found


def _suite(path: Path) -> Any:
    return next(iter(junitparser.JUnitXml.fromfile(str(path))))


def test_a_run_gives_one_case_per_task_with_its_verdict_and_output(tmp_path: Path) -> None:
    report_path = tmp_path / "reports" / "junit.xml"  # the folder is made, as pytest's --junitxml does
    tasks = [
        Task("ok", "echo all good; echo warned >&2"),
        Task("bad", "echo about to fail; exit 3"),
        Task("after", "echo never", deps=("bad",)),
        Task("boom", lambda: 1 / 0),
    ]
    report = phalanx.run(tasks, sinks=[JUnitSink(report_path)], max_workers=4)
    assert report["after"].status is Status.SKIPPED

    suite = _suite(report_path)
    assert (suite.name, suite.tests, suite.failures, suite.errors, suite.skipped) == ("phalanx", 4, 2, 0, 1)
    assert suite.timestamp and suite.time is not None
    cases = _cases(report_path)
    assert set(cases) == {"phalanx.ok", "phalanx.bad", "phalanx.after", "phalanx.boom"}

    ok = cases["phalanx.ok"]
    assert ok.is_passed and ok.system_out == "all good\n" and ok.system_err == "warned\n"
    properties = _properties(ok)
    assert (properties["status"], properties["attempts"], properties["exit_code"]) == (["succeeded"], ["1"], ["0"])
    assert len(properties["worker"]) == 1 and properties["worker"][0].isdigit()

    bad = cases["phalanx.bad"]
    (failure,) = bad.result
    assert isinstance(failure, junitparser.Failure)
    assert (failure.message, failure.type) == ("exit code 3", "failed")
    assert bad.system_out == "about to fail\n"
    assert _properties(bad)["exit_code"] == ["3"]

    (skipped,) = cases["phalanx.after"].result
    assert isinstance(skipped, junitparser.Skipped) and skipped.message == "dependency 'bad' failed"
    assert _properties(cases["phalanx.after"])["blocked_by"] == ["bad"]

    (raised,) = cases["phalanx.boom"].result
    assert isinstance(raised, junitparser.Failure)
    assert raised.type == "ZeroDivisionError" and raised.message == "ZeroDivisionError: division by zero"
    assert "Traceback" in raised.text and "1 / 0" in raised.text
    assert not [name for name in os.listdir(report_path.parent) if name != "junit.xml"]  # no temporary left


def test_retried_tasks_as_nextest_writes_them(tmp_path: Path) -> None:
    calls = itertools.count()

    def flaky() -> str:
        if next(calls) == 0:
            raise ValueError("first call fails")
        return "ok"

    marker = tmp_path / "marker"
    tasks = [
        Task("flaky", flaky, retry=RetryPolicy(count=2)),
        # A command that fails on its first attempt: that attempt's own output goes with it.
        Task("flaky-cmd", f"test -e {marker} || {{ touch {marker}; echo try one; exit 1; }}; echo try two",
             retry=RetryPolicy(count=1)),
        Task("doomed", "echo nope; exit 2", retry=RetryPolicy(count=2)),
    ]
    report_path = tmp_path / "junit.xml"
    report = phalanx.run(tasks, sinks=[JUnitSink(report_path)], max_workers=3)
    assert report["flaky"].flaky and report["flaky-cmd"].flaky and report["doomed"].attempts == 3

    suite = _suite(report_path)
    assert (suite.tests, suite.failures, suite.skipped) == (3, 1, 0)  # flaky counts as passed
    cases = _cases(report_path)

    flaky_case = cases["phalanx.flaky"]
    assert flaky_case.is_passed
    (attempt,) = flaky_case.iterchildren(FlakyFailure)
    assert (attempt.message, attempt.type) == ("ValueError: first call fails", "ValueError")
    assert _properties(flaky_case)["attempts"] == ["2"]

    command = cases["phalanx.flaky-cmd"]
    (attempt,) = command.iterchildren(FlakyFailure)
    assert (attempt.message, attempt.type) == ("exit code 1", "failed")
    assert attempt._elem.findtext("system-out") == "try one\n"
    assert command.system_out == "try two\n"

    doomed = cases["phalanx.doomed"]
    (failure,) = doomed.result
    assert isinstance(failure, junitparser.Failure) and failure.message == "exit code 2"
    reruns = list(doomed.iterchildren(RerunFailure))
    assert [rerun.message for rerun in reruns] == ["exit code 2", "exit code 2"]
    assert not list(doomed.iterchildren(FlakyFailure))


def test_cancelled_tasks_are_skipped_and_say_so(tmp_path: Path) -> None:
    report_path = tmp_path / "junit.xml"
    tasks = [Task("first", "exit 1"), Task("second", "echo late")]
    report = phalanx.run(tasks, sinks=[JUnitSink(report_path)], max_workers=1, fail_fast=True)
    assert report["second"].status is Status.CANCELLED
    suite = _suite(report_path)
    assert (suite.tests, suite.failures, suite.skipped) == (2, 1, 1)
    (skipped,) = _cases(report_path)["phalanx.second"].result
    assert isinstance(skipped, junitparser.Skipped) and skipped.message.startswith("cancelled")


def test_output_that_is_not_xml_safe_still_makes_a_readable_report(tmp_path: Path) -> None:
    report_path = tmp_path / "junit.xml"
    # Markup, NUL and other controls XML 1.0 forbids, an escape sequence, invalid UTF-8.
    command = r"printf '<script>alert(1)</script> & \000nul\001 \033[31mred\033[0m \377 end'"
    phalanx.run({"hostile": command, "ok": lambda: None}, sinks=[JUnitSink(report_path)], max_workers=2)
    text = _cases(report_path)["phalanx.hostile"].system_out
    assert text == "<script>alert(1)</script> & nul [31mred[0m \ufffd end"
    assert b"&lt;script&gt;" in report_path.read_bytes()


def test_a_long_output_keeps_its_end_and_says_what_was_cut(tmp_path: Path) -> None:
    report_path = tmp_path / "junit.xml"
    command = "head -c 300000 /dev/zero | tr '\\0' x; echo; echo THE END"
    phalanx.run({"long": command}, sinks=[JUnitSink(report_path)])
    out = _cases(report_path)["phalanx.long"].system_out
    first, rest = out.split("\n", 1)
    assert first.startswith("[phalanx: the first ") and first.endswith(" bytes are not shown]")
    assert rest.endswith("x\nTHE END\n") and len(rest.encode()) == TAIL


def test_a_tasks_own_junit_file_is_merged_under_the_task(tmp_path: Path) -> None:
    report_path = tmp_path / "junit.xml"
    own = tmp_path / "work" / "out.xml"
    own.parent.mkdir()
    command = f"cat > out.xml <<'EOF'\n{OWN_JUNIT}EOF\nexit 1\n"
    tasks = [Task("pytest", command, cwd=str(own.parent)), Task("lint", "echo clean")]
    files = {"pytest": [str(own)]}
    sink = JUnitSink(report_path, junit_files=lambda task_id: files.get(task_id, []))
    phalanx.run(tasks, sinks=[sink], max_workers=2)

    suite = _suite(report_path)
    # 2 tasks + 3 tests of the pytest task; the task failed (exit 1) and so did one of its tests.
    assert (suite.tests, suite.failures, suite.errors, suite.skipped) == (5, 2, 0, 0)
    cases = _cases(report_path)
    assert set(cases) == {
        "phalanx.pytest", "phalanx.lint",
        "pytest.tests.test_api.test_login", "pytest.tests.test_api.test_logout", "pytest.tests.test_api.test_refresh",
    }
    assert cases["pytest.tests.test_api.test_login"].is_passed
    assert cases["pytest.tests.test_api.test_logout"].system_out == "bye"
    (failure,) = cases["pytest.tests.test_api.test_refresh"].result
    assert isinstance(failure, junitparser.Failure) and failure.message == "assert 1 == 2"
    assert _properties(cases["phalanx.pytest"])["junit_file"] == [str(own)]

    # Named from the files, never from the task's text output.
    assert failing_tests(own) == ["tests.test_api.test_refresh"]
    assert failing_tests(str(tmp_path / "work" / "*.xml")) == ["tests.test_api.test_refresh"]
    assert failing_tests([report_path]) == ["phalanx.pytest", "pytest.tests.test_api.test_refresh"]


def test_bad_own_junit_files_are_noted_never_a_crash(tmp_path: Path) -> None:
    report_path = tmp_path / "junit.xml"
    truncated = tmp_path / "truncated.xml"
    stale = tmp_path / "stale.xml"
    stale.write_text(OWN_JUNIT)
    old = time.time() - 3600
    os.utime(stale, (old, old))  # left by an earlier run: its tests did not run now
    broken_command = f"printf '%s' '{OWN_JUNIT[:300]}' > {truncated}"
    files = {
        "truncated": [str(truncated)],
        "missing": [str(tmp_path / "never-written.xml")],
        "stale": [str(stale)],
        "nomatch": [str(tmp_path / "nothing-*.xml")],
        "folder": [str(tmp_path)],
        "fifo": [str(tmp_path / "fifo.xml")],  # reading it would block the run: never opened for that
    }
    os.mkfifo(tmp_path / "fifo.xml")
    sink = JUnitSink(report_path, junit_files=lambda task_id: files[task_id])
    report = phalanx.run({name: "true" if name != "truncated" else broken_command for name in files},
                         sinks=[sink], max_workers=6)
    assert report.ok

    suite = _suite(report_path)
    assert (suite.tests, suite.failures) == (6, 0)  # nothing merged, not even the truncated file's first case
    cases = _cases(report_path)
    notes = {task: _properties(cases[f"phalanx.{task}"])["junit_error"] for task in files}
    assert "not well-formed JUnit XML" in notes["truncated"][0]
    assert "missing" in notes["missing"][0]
    assert "older than the task" in notes["stale"][0]
    assert "no file matches" in notes["nomatch"][0]
    assert "not a regular file" in notes["folder"][0] and "not a regular file" in notes["fifo"][0]
    assert notes["truncated"][0] in cases["phalanx.truncated"].system_err

    assert failing_tests([truncated, tmp_path / "never-written.xml", tmp_path, tmp_path / "fifo.xml"]) == []


def test_hostile_own_junit_files_are_refused(tmp_path: Path) -> None:
    """Entity bombs, external entities and absurd nesting: notes, not a hang, a leak or a crash."""
    entities = "".join(f'<!ENTITY e{i} "{f"&e{i - 1};" * 10}">' for i in range(1, 9))
    hostile = {
        "bomb.xml": f'<!DOCTYPE t [<!ENTITY e0 "aaaaaaaaaa">{entities}]><testsuite><testcase name="b">'
                    '<failure>&e8;&e8;&e8;</failure></testcase></testsuite>',
        "external.xml": '<!DOCTYPE t [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
                        '<testsuite><testcase name="x"><failure>&x;</failure></testcase></testsuite>',
        "deep.xml": '<testsuite><testcase name="d"><failure>' + "<a>" * 3000 + "</a>" * 3000
                    + "</failure></testcase></testsuite>",
    }
    for name, text in hostile.items():
        (tmp_path / name).write_text(text)
    writer = JUnitWriter(str(tmp_path), junit_files=lambda task_id: str(tmp_path / "*.xml"))  # one bare pattern
    try:
        writer.add(TaskResult("t", Status.SUCCEEDED, attempts=1))
        writer.write(tmp_path / "report.out", time=0.0)
    finally:
        writer.close()
    assert writer.counts == (1, 0, 0, 0)
    notes = _properties(_cases(tmp_path / "report.out")["phalanx.t"])["junit_error"]
    assert len(notes) == 3 and all("passwd" not in note for note in notes)
    assert any("amplification" in note for note in notes) and any("too deeply" in note for note in notes)


def test_a_failing_junit_files_lookup_is_noted(tmp_path: Path) -> None:
    def lookup(task_id: str) -> list[str]:
        raise KeyError(task_id)

    report_path = tmp_path / "junit.xml"
    phalanx.run({"t": "true"}, sinks=[JUnitSink(report_path, junit_files=lookup)])
    assert "cannot list its JUnit files: KeyError" in _properties(_cases(report_path)["phalanx.t"])["junit_error"][0]


def test_write_junit_from_a_report_matches_the_sink(tmp_path: Path) -> None:
    calls = itertools.count()

    def flaky() -> None:
        if next(calls) == 0:
            raise RuntimeError("once")

    tasks = [Task("flaky", flaky, retry=RetryPolicy(count=1)), Task("bad", "echo out; exit 3"),
             Task("after", "true", deps=("bad",))]
    from_sink = tmp_path / "sink.xml"
    report = phalanx.run(tasks, sinks=[JUnitSink(from_sink)], max_workers=2)
    from_report = tmp_path / "report.xml"
    write_junit(report, from_report)

    sink_suite, report_suite = _suite(from_sink), _suite(from_report)
    for attribute in ("tests", "failures", "errors", "skipped", "timestamp"):
        assert getattr(sink_suite, attribute) == getattr(report_suite, attribute)
    cases = _cases(from_report)
    assert cases["phalanx.bad"].system_out == "out\n"  # the tail the report kept
    (placeholder,) = cases["phalanx.flaky"].iterchildren(FlakyFailure)
    assert "not recorded" in placeholder.message

    # With the reasons a journal kept, the report says them.
    write_junit(report, from_report, retries={"flaky": [FailedAttempt(1, "RuntimeError: once")]})
    (attempt,) = _cases(from_report)["phalanx.flaky"].iterchildren(FlakyFailure)
    assert (attempt.message, attempt.type) == ("RuntimeError: once", "RuntimeError")


def test_the_report_replaces_an_old_one_whole_and_only_when_a_run_happened(tmp_path: Path) -> None:
    report_path = tmp_path / "junit.xml"
    report_path.write_text("old report")
    JUnitSink(report_path).close()  # nothing ran (the run was refused): the old report stays
    assert report_path.read_text() == "old report"

    # A run that ends without RunFinished still leaves a report of what ended.
    sink = JUnitSink(report_path, suite_name="ci")
    sink.handle(TaskFinished(TaskResult("t", Status.CANCELLED, reason="stopped (interrupt) while running"), at=1.5))
    sink.close()
    sink.close()
    suite = _suite(report_path)
    assert (suite.name, suite.tests, suite.skipped, suite.time) == ("ci", 1, 1, 1.5)
    (skipped,) = _cases(report_path)["ci.t"].result
    assert skipped.message == "cancelled: stopped (interrupt) while running"
    assert os.listdir(tmp_path) == ["junit.xml"]
    ET.parse(report_path)  # well-formed for the standard library's reader too
