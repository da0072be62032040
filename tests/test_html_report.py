"""The HTML report (`phalanx.sinks.html`), checked in a real headless Chromium.

- A real run over 3 slots (a success, a failure, a skip, a retry, a timeout, a callable
  that raises, tasks printing and named with markup) written by `HtmlReportSink`, opened
  from disk: no SEVERE console entry, no alert, no element the tasks' text could have
  made; one ``.bar`` per attempt with its status; unchecking a status filter hides its
  rows (and checking it shows them again); a task's ``<script>`` output is text in its
  ``<details>``; a bar's tooltip, a click on a bar, sorting by a column.
- Without a browser: task text escaped everywhere, the JSON for the script escaped, output
  tails (64 KiB, cut at a character), the output budget, ANSI escapes, the atomic write,
  a run that ends without RunFinished, a report whose folder is missing.

The browser is Debian's ``chromium`` with its matching ``chromium-driver``, driven by
selenium; both are looked up on PATH (``PHALANX_CHROMIUM`` and ``PHALANX_CHROMEDRIVER``
name others). Without them the browser tests are skipped, saying so; the rest still run.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import phalanx
from phalanx import Event, RetryPolicy, Task, TaskStarted
from phalanx.events import RunStarted, TaskFinished
from phalanx.results import Status, TaskResult
from phalanx.sinks.html import (
    OUTPUT_TAIL,
    AttemptSpan,
    HtmlReportSink,
    Output,
    ReportData,
    TaskEntry,
    read_output,
    render_report,
    script_json,
    write_report,
)
from viewers import headless_chromium

SCRIPT = "<script>alert(1)</script>"
EVIL_ID = 'evil"<img src=x onerror=alert(2)>'


def _raises() -> None:
    raise ValueError(f"bad value {SCRIPT}")


# ------------------------------------------------------------------------------ the run


@dataclass
class Run:
    page: Path
    report: phalanx.RunReport
    attempts: list[TaskStarted]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    """One real run with the sink, shared by the module's tests."""
    folder = tmp_path_factory.mktemp("html")
    marker = folder / "marker"
    tasks = [
        Task("build", "sleep 0.2; echo built"),
        Task("unit", "sleep 0.1; echo 'test_a PASSED'; echo 'assert 1 == 2' >&2; exit 3", deps=("build",)),
        Task("deploy", "echo never", deps=("unit",)),
        Task("flaky", f"if [ -e {marker} ]; then echo second; else touch {marker}; echo first >&2; exit 1; fi",
             retry=RetryPolicy(count=1)),
        Task("xss", f"echo '{SCRIPT}'; printf '\\033[31mred\\033[0m\\n'"),
        Task(EVIL_ID, "echo hi"),
        Task("slow", "sleep 0.1", deps=("build",)),
        Task("hangs", "sleep 5", timeout=0.3),
        Task("raises", _raises),
    ]
    events: list[Event] = []
    page = folder / "report.html"
    report = phalanx.run(tasks, max_workers=3, sinks=[HtmlReportSink(page, title="test <run>")],
                         on_event=events.append)
    return Run(page, report, [event for event in events if isinstance(event, TaskStarted)])


def test_the_run_has_every_kind_of_task(run: Run) -> None:
    statuses = {tid: result.status for tid, result in run.report.results.items()}
    assert statuses["unit"] is Status.FAILED and statuses["deploy"] is Status.SKIPPED
    assert run.report["flaky"].flaky and statuses["hangs"] is Status.TIMED_OUT
    assert statuses["raises"] is Status.FAILED and statuses[EVIL_ID] is Status.SUCCEEDED
    assert len(run.attempts) == 9  # deploy never started; flaky twice


# -------------------------------------------------------------------------- the browser


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One headless Chromium for the module (starting it takes about a second)."""
    with headless_chromium() as driver:
        yield driver


@pytest.fixture
def page(browser: Any, run: Run) -> Any:
    """The report, freshly loaded (so each test starts with every filter checked)."""
    browser.get(run.page.as_uri())
    return browser


def test_no_console_errors_and_no_alert(page: Any) -> None:
    from selenium.common.exceptions import NoAlertPresentException

    time.sleep(0.2)  # an injected script or a failed image would have run by now
    with pytest.raises(NoAlertPresentException):
        page.switch_to.alert  # noqa: B018 - the property raises when no alert is open
    severe = [entry for entry in page.get_log("browser") if entry["level"] == "SEVERE"]
    assert severe == []
    # Nothing the tasks printed or were named became an element: only the page's own scripts.
    assert page.execute_script("return document.querySelectorAll('img, script:not([id=phalanx-data])').length") == 1
    text = page.execute_script("return document.body.textContent")
    assert EVIL_ID in text and "test <run>" in text


def test_one_bar_per_attempt(page: Any, run: Run) -> None:
    # One round trip for all the bars' attributes (selenium's get_attribute is one per call).
    bars = page.execute_script(
        "return Array.from(document.querySelectorAll('.bar'), (bar) => "
        "[bar.dataset.task, bar.dataset.status, bar.classList.contains('critical')])"
    )
    assert len(bars) == len(run.attempts)
    final = {tid: result.status.value for tid, result in run.report.results.items()}
    expected = [(event.task_id, "retried" if event.task_id == "flaky" and event.attempt == 1 else final[event.task_id])
                for event in run.attempts]
    assert sorted((task, status) for task, status, _ in bars) == sorted(expected)
    # The critical path's bars are marked.
    assert {task for task, _, critical in bars if critical} == set(run.report.summary.critical_path)


def test_unchecking_a_status_hides_its_rows(page: Any) -> None:
    from selenium.webdriver.common.by import By

    def shown(status: str) -> list[bool]:
        rows = page.find_elements(By.CSS_SELECTOR, f'tr.task[data-status="{status}"]')
        assert rows
        return [row.is_displayed() for row in rows]

    failed = page.find_element(By.CSS_SELECTOR, 'input.status-filter[value="failed"]')
    assert shown("failed") == [True, True] and all(shown("succeeded"))
    failed.click()
    assert shown("failed") == [False, False] and all(shown("succeeded")) and all(shown("skipped"))
    assert page.find_element(By.ID, "shown").text == "7 of 9"
    failed.click()
    assert shown("failed") == [True, True]


def test_script_output_is_text(page: Any) -> None:
    from selenium.webdriver.common.by import By

    group = page.find_element(By.CSS_SELECTOR, 'tbody.task-group[data-task="xss"]')
    block = group.find_element(By.CSS_SELECTOR, "details")
    assert block.get_attribute("open") is None  # a task that succeeded: closed
    block.find_element(By.TAG_NAME, "summary").click()
    output = block.find_element(By.CSS_SELECTOR, ".s-stdout pre").text
    assert output == f"{SCRIPT}\nred"  # as text, and without the colour escapes
    # A failure's output is open from the start; a callable's traceback is there too.
    failed = page.find_element(By.CSS_SELECTOR, 'tbody.task-group[data-task="raises"] details')
    assert failed.get_attribute("open") is not None
    assert f"ValueError: bad value {SCRIPT}" in failed.find_element(By.CSS_SELECTOR, ".s-traceback pre").text


def test_tooltip_click_and_sort(page: Any, run: Run) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    retried = page.find_element(By.CSS_SELECTOR, '.bar[data-status="retried"]')
    ActionChains(page).move_to_element(retried).perform()
    tip = page.find_element(By.CSS_SELECTOR, ".tip")
    assert tip.is_displayed() and "flaky" in tip.text and "attempt 1" in tip.text and "retried" in tip.text
    # A bar's click brings its task's row into view with its output open.
    page.find_element(By.CSS_SELECTOR, '.bar[data-task="build"]').click()
    details = page.find_element(By.CSS_SELECTOR, 'tbody.task-group[data-task="build"] details')
    assert details.get_attribute("open") is not None
    page.find_element(By.CSS_SELECTOR, 'th[data-sort="duration"]').click()
    order = [group.get_attribute("data-task") for group in page.find_elements(By.CSS_SELECTOR, "tbody.task-group")]
    durations = [run.report[tid].duration for tid in order]
    assert durations == sorted(durations)


# ----------------------------------------------------------------------- without a browser


def _data(**changes: Any) -> ReportData:
    fields: dict[str, Any] = {
        "title": "t", "run_id": "r", "started_at": 0.0, "complete": True, "total": 1,
        "counts": {"succeeded": 1}, "flaky": 0, "wall_time": 1.0, "busy_time": 1.0, "max_workers": 2,
        "achieved_parallelism": 1.0, "max_concurrency": 1, "lower_bound": 1.0, "critical_path": ("a",),
        "critical_path_time": 1.0,
        "attempts": (AttemptSpan("a", 1, 1, 0.0, 1.0, "succeeded"),),
        "tasks": (TaskEntry("a", "succeeded", attempts=1, start=0.0, duration=1.0, slot=1),),
    }
    fields.update(changes)
    return ReportData(**fields)


def _embedded_json(page: str) -> str:
    match = re.search(r'<script type="application/json" id="phalanx-data">(.*?)</script>', page, re.S)
    assert match
    return match.group(1)


def test_task_text_is_escaped_everywhere() -> None:
    hostile = "</script><script>alert(1)</script>\u2028&amp;<!--"
    data = _data(
        title=hostile,
        critical_path=(hostile,),
        attempts=(AttemptSpan(hostile, 1, 1, 0.0, 1.0, "failed", reason=hostile),),
        tasks=(TaskEntry(hostile, "failed", reason=hostile, attempts=1, stdout=Output(hostile),
                         stderr=Output(hostile), traceback=hostile, data={hostile: hostile}),),
        data_totals={hostile: 1.0},
    )
    page = render_report(data)
    assert "<script>alert" not in page and "<!--" not in page
    assert page.count("<script") == 2  # the data block and the page's own script
    payload = _embedded_json(page)
    assert not set(payload) & {"<", ">", "&", "\u2028", "\u2029"}
    decoded = json.loads(payload)
    assert decoded["title"] == hostile and decoded["attempts"][0]["reason"] == hostile
    assert json.loads(script_json({"k": "<>&\u2029"})) == {"k": "<>&\u2029"}


def test_control_characters_and_ansi() -> None:
    text = "\x1b[1;31mERROR\x1b[0m done\r\nbell\x07 nul\x00 \x1b]8;;http://x\x1b\\link\x1b]8;;\x1b\\"
    page = render_report(_data(tasks=(TaskEntry("a", "failed", attempts=1, stdout=Output(text)),)))
    assert "ERROR done\nbell\u2407 nul\u2400 link" in page
    assert "\x1b" not in page and "\x00" not in page


def test_output_tail(tmp_path: Path) -> None:
    path = tmp_path / "out"
    # Two-byte characters and a newline: the last 64 KiB begin inside a character.
    path.write_bytes(b"x" * 200_000 + "é".encode() * 40_000 + b"\n")
    output = read_output(str(path), "ignored")
    assert output.text == "é" * (OUTPUT_TAIL // 2 - 1) + "\n"
    assert output.omitted == path.stat().st_size - (OUTPUT_TAIL - 1)
    small = tmp_path / "small"
    small.write_bytes(b"whole\n")
    assert read_output(str(small), "") == Output("whole\n", 0)
    assert read_output(None, "the tail") == Output("the tail", None)
    assert read_output(str(tmp_path / "missing"), "") == Output()


def test_output_budget(tmp_path: Path) -> None:
    """The page's output is bounded in all: later tasks get what is left, then only their size."""
    sink = HtmlReportSink(tmp_path / "r.html", output_budget=600)
    sink.handle(RunStarted("run", 3, 1, time.time()))
    for tid in ("a", "b", "c"):
        path = tmp_path / tid
        path.write_text(tid * 500)
        sink.handle(TaskStarted(tid, 1, 1, 0.0))
        sink.handle(TaskFinished(TaskResult(tid, Status.SUCCEEDED, attempts=1, stdout_path=str(path)), 1.0))
    sink.close()
    page = (tmp_path / "r.html").read_text()
    assert f"<pre>{'a' * 500}</pre>" in page
    assert f"<pre>{'b' * 100}</pre>" in page and "400 bytes before this not shown" in page
    assert "c" * 100 not in page and "500 bytes not shown" in page


def test_a_run_without_its_end_is_written_at_close(tmp_path: Path) -> None:
    target = tmp_path / "r.html"
    sink = HtmlReportSink(target)
    sink.close()
    assert not target.exists()  # no run started: nothing to report
    sink = HtmlReportSink(target, title="crashed")
    sink.handle(RunStarted("run", 2, 2, time.time()))
    sink.handle(TaskStarted("a", 1, 1, 0.0))
    sink.handle(TaskStarted("b", 1, 2, 0.1))
    sink.handle(TaskFinished(TaskResult("a", Status.SUCCEEDED, attempts=1, start=0.0, end=0.5, duration=0.5), 0.5))
    sink.close()
    page = target.read_text()
    assert "Incomplete" in page and 'data-status="unfinished"' in page
    assert page.count('class="bar') == 2
    assert [p.name for p in tmp_path.iterdir()] == ["r.html"]  # no temporary file left


def test_write_is_atomic(tmp_path: Path) -> None:
    target = tmp_path / "r.html"
    write_report(target, "old")
    with pytest.raises(AttributeError):
        write_report(target, None)  # type: ignore[arg-type]
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["r.html"]
    write_report(target, "new \udcff")  # a lone surrogate (an undecodable argument) does not fail the write
    assert target.read_bytes() == b"new ?"


def test_missing_folder_is_refused_before_the_run(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no folder"):
        HtmlReportSink(tmp_path / "nowhere" / "r.html")
