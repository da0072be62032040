"""``--junit-out FILE``: one JUnit report for all the forks, written by phalanx's own writer.

Each test's reports (setup, call, teardown) are folded into one test case as pytest's
``--junitxml`` folds them: a failing call is a ``<failure>``, a failing setup or teardown
an ``<error>``, a skip (or an expected failure) ``<skipped>``; the captured output of all
three phases goes to ``<system-out>``/``<system-err>``. Names are pytest's too
(``classname="tests.test_x.TestA"``, ``name="test_b[1]"``); with ``--each`` the value
leads the classname, so each value's tests stay apart. The report itself is
`phalanx.sinks.junit.JUnitWriter`'s, as ``phalanx run --junit`` writes it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import pytest

from ..sinks.junit import JUnitWriter, TestCaseRecord


@dataclass(slots=True)
class _Pending:
    outcome: str = "passed"
    message: str = ""
    details: str = ""
    seconds: float = 0.0
    stdout: list[str] = field(default_factory=list)
    stderr: list[str] = field(default_factory=list)
    location: tuple[str, int | None, str] | None = None


class JUnitOut:
    """Collects reports as they come; writes the file at the end of the session."""

    def __init__(self, path: str, *, suite_name: str) -> None:
        self._path = os.path.abspath(path)
        directory = os.path.dirname(self._path)
        os.makedirs(directory, exist_ok=True)
        self._writer = JUnitWriter(directory, suite_name=suite_name)
        self._pending: dict[tuple[str | None, str], _Pending] = {}

    def add_report(self, report: pytest.TestReport, value: str | None) -> None:
        pending = self._pending.setdefault((value, report.nodeid), _Pending())
        pending.seconds += float(getattr(report, "duration", 0.0) or 0.0)
        pending.location = report.location
        # Each report carries the sections of the phases before it too: the latest has them all.
        pending.stdout = [text for title, text in report.sections if "stdout" in title]
        pending.stderr = [text for title, text in report.sections if "stderr" in title]
        outcome = _outcome(report)
        if outcome == "passed" or pending.outcome in ("failed", "error"):
            return  # the first failure says what went wrong; a later one is its fallout
        pending.outcome = outcome
        crash = getattr(report.longrepr, "reprcrash", None)
        if outcome == "skipped":
            longrepr = report.longrepr
            reason = longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr or "")
            pending.message = (getattr(report, "wasxfail", "") and f"xfail: {report.wasxfail}") or str(reason)
        else:
            pending.message = str(getattr(crash, "message", "") or "")
            pending.details = str(report.longreprtext or report.longrepr or "")

    def test_ended(self, nodeid: str, value: str | None) -> None:
        pending = self._pending.pop((value, nodeid), None)
        if pending is None:
            return
        classname, name = _names(nodeid)
        if value is not None:
            classname = f"{value}.{classname}"
        file, line = (pending.location[0], pending.location[1]) if pending.location else (None, None)
        self._writer.add_test(
            TestCaseRecord(
                classname=classname, name=name, seconds=pending.seconds, outcome=pending.outcome,
                message=pending.message, details=pending.details, stdout="".join(pending.stdout),
                stderr="".join(pending.stderr), file=file, line=None if line is None else line + 1,
            )
        )

    def write(self, seconds: float) -> None:
        for value, nodeid in list(self._pending):  # tests stopped half-way (-x): what they did
            self.test_ended(nodeid, value)
        try:
            self._writer.write(self._path, time=seconds)
        finally:
            self._writer.close()


def _outcome(report: pytest.TestReport) -> str:
    if report.passed:
        # A strict xpass fails; a non-strict one passes, as pytest's junitxml has it.
        return "passed"
    if report.skipped:
        return "skipped"
    return "failed" if report.when == "call" else "error"


def _names(nodeid: str) -> tuple[str, str]:
    """pytest's own JUnit names: the path as a dotted module, the classes, then the test."""
    parts = nodeid.split("::")
    path = parts[0].replace("\\", "/")
    if path.endswith(".py"):
        path = path[:-3]
    names = [path.replace("/", "."), *parts[1:]]
    if len(names) == 1:
        return names[0], names[0]
    return ".".join(names[:-1]), names[-1]
