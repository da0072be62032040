"""`examples/ci.toml` (seed 002's validation tools) as a CI job would run it, twice.

The first run writes ``--junit``, ``--trace`` and ``--html``; each file is opened in its
viewer: JUnit by junitparser, the trace by the Trace Event Format's validator, the report
by a headless Chromium. No task declares a cost, so the first run orders by the graph's
depth; the second by the durations the first measured. The difference shows in
yamllint's three dependents, ready at the same moment: by depth (all leaves) in the
order they are written; by history the longest first.

The runs use a copy of the example in a temporary folder, so its journal lands there.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import junitparser
import pytest

from viewers import headless_chromium, validate_trace

ROOT = Path(__file__).resolve().parent.parent
TASKS = 15


def phalanx(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "phalanx", *args], capture_output=True, text=True, cwd=cwd, timeout=60
    )


def starts(trace: Path) -> dict[str, float]:
    """Each task's start (µs into the run), from the trace's slices."""
    events = validate_trace(json.loads(trace.read_text(encoding="utf-8")))
    return {event["name"]: event["ts"] for event in events if event["ph"] == "X"}


class Runs:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.first: subprocess.CompletedProcess[str] | None = None
        self.plan = ""
        self.second: subprocess.CompletedProcess[str] | None = None


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Runs:
    folder = tmp_path_factory.mktemp("ci")
    shutil.copy(ROOT / "examples" / "ci.toml", folder / "ci.toml")
    found = Runs(folder)
    found.first = phalanx(
        "run", "ci.toml", "-j", "8", "--junit", "junit.xml", "--trace", "first.trace.json",
        "--html", "report.html", cwd=folder,
    )
    found.plan = phalanx("plan", "ci.toml", "-j", "8", cwd=folder).stdout
    found.second = phalanx("run", "ci.toml", "-j", "8", "--trace", "second.trace.json", cwd=folder)
    return found


def test_both_runs_are_green_and_add_up_the_tools_findings(runs: Runs) -> None:
    for run in (runs.first, runs.second):
        assert run is not None and run.returncode == 0, run and run.stderr
        assert f"Summary: {TASKS} tasks in" in run.stdout
        assert f"{TASKS} succeeded" in run.stdout
        assert "totals: errors=0, warnings=9" in run.stdout


def test_junit_opens_in_a_junit_parser(runs: Runs) -> None:
    xml = junitparser.JUnitXml.fromfile(str(runs.folder / "junit.xml"))
    suites = list(xml)
    assert len(suites) == 1
    suite = suites[0]
    assert (suite.tests, suite.failures, suite.errors, suite.skipped) == (TASKS, 0, 0, 0)
    cases = {case.name: case for case in suite}
    assert len(cases) == TASKS and cases["mypy"].is_passed
    assert "Success: no issues found" in (cases["mypy"].system_out or "")


def test_the_trace_is_valid_with_one_slice_per_task_on_at_most_8_tracks(runs: Runs) -> None:
    events = validate_trace(json.loads((runs.folder / "first.trace.json").read_text(encoding="utf-8")))
    slices = [event for event in events if event["ph"] == "X"]
    assert len(slices) == TASKS and {event["cat"] for event in slices} == {"succeeded"}
    assert {event["tid"] for event in slices} <= set(range(1, 9))


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with headless_chromium() as driver:
        yield driver


def test_the_html_report_opens_in_chromium(runs: Runs, browser: Any) -> None:
    browser.get((runs.folder / "report.html").as_uri())
    time.sleep(0.2)  # a script error would have been logged by now
    assert [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"] == []
    bars = browser.execute_script("return Array.from(document.querySelectorAll('.bar'), (b) => b.dataset.task)")
    assert sorted(bars) == sorted(starts(runs.folder / "first.trace.json"))
    # The critical path is marked: mypy's chain.
    critical = browser.execute_script(
        "return Array.from(document.querySelectorAll('.bar.critical'), (b) => b.dataset.task)"
    )
    assert "mypy" in critical


def test_the_second_run_is_ordered_by_history(runs: Runs) -> None:
    # yamllint's three dependents are ready at the same moment; slots free up one by one.
    after_yamllint = ("gitlab-ci", "ansible-lint", "helm-lint")
    first = starts(runs.folder / "first.trace.json")
    second = starts(runs.folder / "second.trace.json")
    # First run, no durations known: equal paths, so the order they are written in.
    assert sorted(after_yamllint, key=first.__getitem__) == ["gitlab-ci", "ansible-lint", "helm-lint"]
    # The plan after it reads every duration from the history and puts the longest first...
    assert "durations: 0 declared, 15 from history, 0 unknown" in runs.plan
    order = [line.split(". ")[1].split()[0] for line in runs.plan.splitlines() if ". " in line]
    assert [tid for tid in order if tid in after_yamllint] == ["ansible-lint", "helm-lint", "gitlab-ci"]
    # ...and so does the second run (0.8 s, 0.4 s, 0.3 s).
    assert sorted(after_yamllint, key=second.__getitem__) == ["ansible-lint", "helm-lint", "gitlab-ci"]
