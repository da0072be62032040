"""The progress sinks of `phalanx run`: the live view on a terminal, plain lines elsewhere.

The live view draws into a fixed 80x24 rich console that believes it is a terminal; what a
person would see is rebuilt from the bytes by `screen`, a terminal of a dozen lines' worth
(rich's Live only returns the carriage, moves up and erases lines). Times come from a fake
clock, so the screens are snapshots (tests/snapshots/live_*.txt, progress_lines.txt);
refresh them with ``PHALANX_UPDATE_SNAPSHOTS=1 pytest tests/test_live_view.py`` and review.
"""

from __future__ import annotations

import io
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

import phalanx
from phalanx.events import (
    ConcurrencyChanged,
    Event,
    RateLimitPaused,
    RunCancelling,
    RunFinished,
    RunStarted,
    TaskFinished,
    TaskRetrying,
    TaskStarted,
)
from phalanx.results import CancelReason, RunReport, RunSummary, Status, TaskResult
from phalanx.sinks.live import LINE_PATTERN, LiveView, ProgressLines, span
from test_snapshots import assert_snapshot

_CONTROL = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\r|\n|[^\x1b\r\n]+")
_COLOUR = re.compile(r"\x1b\[[0-9;]*m")


def terminal(height: int = 24) -> Console:
    return Console(file=io.StringIO(), width=80, height=height, force_terminal=True, color_system=None, record=True)


def raw(console: Console) -> str:
    file = console.file
    assert isinstance(file, io.StringIO)
    return file.getvalue()


def screen(text: str) -> str:
    """What a terminal shows after ``text``: the scrollback and the screen, one string."""
    lines = [""]
    row = col = 0
    for token in _CONTROL.findall(text):
        if token == "\n":
            row, col = row + 1, 0
            if row == len(lines):
                lines.append("")
        elif token == "\r":
            col = 0
        elif token.startswith("\x1b["):
            final, argument = token[-1], token[2:-1]
            if final == "A":
                row = max(0, row - int(argument or 1))
            elif final == "K":
                lines[row] = ""
            elif final == "m" or token in ("\x1b[?25l", "\x1b[?25h"):
                pass  # styles; the cursor hidden and shown
            else:
                raise AssertionError(f"unexpected control sequence {token!r}")
        else:
            line = lines[row].ljust(col)
            lines[row] = line[:col] + token + line[col + len(token) :]
            col += len(token)
    return "\n".join(line.rstrip() for line in lines).rstrip("\n") + "\n"


def run_finished(at: float) -> RunFinished:
    """A `RunFinished`; the sinks take what they show from the events, not from the report."""
    summary = RunSummary(
        total=0, counts={}, flaky=0, wall_time=at, busy_time=0.0, max_workers=1, achieved_parallelism=0.0,
        max_concurrency=0, critical_path=(), critical_path_time=0.0, lower_bound=0.0, slowest=(), data_totals={},
        started_at=0.0,
    )
    return RunFinished(RunReport(results={}, summary=summary), at)


def ran(task_id: str, status: Status, start: float, end: float, worker: int, **fields: Any) -> TaskResult:
    """A task that ran once (unless ``attempts`` says otherwise) from ``start`` to ``end``."""
    fields.setdefault("attempts", 1)
    took = end - start
    return TaskResult(task_id, status, start=start, end=end, duration=took, busy_time=took, worker=worker, **fields)


FAILURE_BLOCK = """\
    FAIL [   2.50s] unit  exit code 1
--- stdout: unit ---
test_x FAILED
assert 1 == 2  [bold]not markup[/bold]
--- stderr (tail): unit ---
warning: slow
"""


def scenario(tmp_path: Path) -> Iterator[tuple[float, Event | None]]:
    """Five tasks on three slots. Yields (time, event); an event None marks a moment to look at."""
    out = tmp_path / "unit.out"
    out.write_text("test_x FAILED\nassert 1 == 2  [bold]not markup[/bold]\n")
    yield 0.0, RunStarted("run", total=5, max_workers=3, started_at=0.0)
    yield 0.0, TaskStarted("lint", 1, 1, 0.0)
    yield 0.5, TaskStarted("unit", 1, 2, 0.5)
    yield 1.0, TaskStarted("docs", 1, 3, 1.0)
    yield 2.0, TaskFinished(ran("lint", Status.SUCCEEDED, 0.0, 2.0, 1), 2.0)
    yield 2.0, TaskStarted("build", 1, 1, 2.0)
    unit = ran(
        "unit", Status.FAILED, 0.5, 3.0, 2, reason="exit code 1", exit_code=1, stdout_path=str(out),
        stderr_tail="warning: slow\n",
    )
    yield 3.0, TaskFinished(unit, 3.0)
    yield 4.0, None
    yield 4.5, TaskRetrying("docs", 1, 1.0, "exit code 75", 4.5)
    yield 5.0, RateLimitPaused("openai", "", 30.0, 5.0)
    yield 5.0, ConcurrencyChanged("openai", "", 2, 5.0)
    yield 5.5, TaskStarted("docs", 2, 3, 5.5)
    skipped = TaskResult("deploy", Status.SKIPPED, reason="dependency 'unit' failed", blocked_by="unit")
    yield 6.0, TaskFinished(skipped, 6.0)
    yield 7.0, None
    yield 8.0, TaskFinished(ran("build", Status.SUCCEEDED, 2.0, 8.0, 1), 8.0)
    docs = ran("docs", Status.SUCCEEDED, 1.0, 9.0, 3, attempts=2, flaky=True)
    yield 9.0, TaskFinished(docs, 9.0)
    yield 9.0, run_finished(9.0)


def play(view: LiveView | ProgressLines, events: Iterator[tuple[float, Event | None]], now: list[float]) -> None:
    for at, event in events:
        now[0] = at
        if event is not None:
            view.handle(event)


# --- the live view -------------------------------------------------------------------------


@pytest.mark.parametrize("show_workers", [True, False], ids=["workers", "bar-only"])
def test_live_view_screens(tmp_path: Path, show_workers: bool) -> None:
    console = terminal()
    now = [0.0]
    view = LiveView(console, show_workers=show_workers, clock=lambda: now[0], colour=False)
    moments = []
    for at, event in scenario(tmp_path):
        now[0] = at
        if event is None:
            view.refresh()
            moments.append(f"=== at {at:g}s ===\n{screen(raw(console))}")
        else:
            view.handle(event)
    view.close()
    moments.append(f"=== finished ===\n{screen(raw(console))}")
    assert_snapshot(f"live_view_{'workers' if show_workers else 'bar'}.txt", "\n".join(moments))
    # All rich wrote (every redraw of the area, cursor moves left out): the block is there once, whole.
    written = console.export_text()
    assert written.count(FAILURE_BLOCK) == 1
    assert written.count("FAIL [") == 1
    assert "PASS" not in written  # successes are counted, not listed (--output on-failure)
    assert "\x1b[?25h" in raw(console)  # the cursor is back


def test_the_area_below_a_block_is_current(tmp_path: Path) -> None:
    # Rich draws the area again under each printed block: it must show the state then, not
    # the state of the last tick.
    console = terminal()
    now = [0.0]
    view = LiveView(console, clock=lambda: now[0], colour=False)
    view.handle(RunStarted("run", total=2, max_workers=2, started_at=0.0))
    view.handle(TaskStarted("a", 1, 1, 0.0))
    now[0] = 1.0
    view.handle(TaskFinished(ran("a", Status.FAILED, 0.0, 1.0, 1, reason="exit code 2"), 1.0))
    shown = screen(raw(console))
    assert shown.splitlines()[1].endswith(" 1/2  1.0s  eta 1s"), shown
    assert "0 succeeded, 1 failed, 0 skipped, 0 running, 1 waiting" in shown


def test_task_output_cannot_move_the_cursor_or_be_read_as_markup(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.write_text("10%\r50%\x1b[2A\x1b[2Kdone [red]x[/red]\x1b[31m red\x1b[0m\n")
    console = terminal()
    view = LiveView(console, clock=lambda: 1.0, colour=False)
    view.handle(RunStarted("run", total=1, max_workers=1, started_at=0.0))
    view.handle(TaskFinished(ran("t", Status.FAILED, 0.0, 1.0, 1, reason="exit code 1", stdout_path=str(out)), 1.0))
    view.close()
    written = raw(console)
    assert "\x1b[2A" not in written and "\x1b[31m" not in written
    # The carriage return splits the line; the cursor moves and colours are gone; markup stays text.
    assert "--- stdout: t ---\n10%\n50%done [red]x[/red] red\nphalanx " in screen(written)


def test_output_always_prints_successes_and_never_prints_no_output(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.write_text("hello\n")
    for output, expected in (("always", "--- stdout: ok ---\nhello\n"), ("never", None)):
        console = terminal()
        view = LiveView(console, output=output, clock=lambda: 1.0, colour=False)  # type: ignore[arg-type]
        view.handle(RunStarted("run", total=2, max_workers=1, started_at=0.0))
        view.handle(TaskFinished(ran("ok", Status.SUCCEEDED, 0.0, 1.0, 1, stdout_path=str(out)), 1.0))
        view.handle(TaskFinished(ran("bad", Status.FAILED, 0.0, 1.0, 1, stdout_path=str(out)), 1.0))
        view.close()
        written = console.export_text()
        assert "FAIL [   1.00s] bad" in written
        if expected is None:
            assert "PASS" not in written and "hello" not in written
        else:
            assert "PASS [   1.00s] ok\n" + expected in written


def test_quiet_draws_no_area_only_failures_and_the_end(tmp_path: Path) -> None:
    console = terminal()
    now = [0.0]
    view = LiveView(console, quiet=True, show_workers=True, clock=lambda: now[0], colour=False)
    play(view, scenario(tmp_path), now)
    view.close()
    written = raw(console)
    assert "\x1b[" not in written  # no cursor moves: nothing is redrawn
    assert written == FAILURE_BLOCK + (
        "phalanx " + "█" * (80 - len("phalanx ") - len(" 5/5  9.0s")) + " 5/5  9.0s\n"
        "  3 succeeded, 1 failed, 1 skipped\n"
        "  limits: openai window 2, paused 1x\n"
    )


def test_no_color_means_no_colour_anywhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out"
    out.write_text("\x1b[31mred output\x1b[0m\n")
    failure = TaskFinished(ran("t", Status.FAILED, 0.0, 1.0, 1, reason="exit code 1", stdout_path=str(out)), 1.0)

    def draw() -> str:
        console = Console(file=io.StringIO(), width=80, height=24, force_terminal=True, color_system="standard")
        view = LiveView(console, show_workers=True, clock=lambda: 1.0)  # colour: as the environment says
        view.handle(RunStarted("run", total=2, max_workers=2, started_at=0.0))
        view.handle(TaskStarted("u", 1, 2, 0.0))
        view.handle(failure)
        view.close()
        return raw(console)

    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("FORCE_COLOR", "1")
    coloured = draw()
    assert "\x1b[31m" in coloured  # the FAIL line, the task's own red, the failed count
    assert "━" in coloured

    monkeypatch.setenv("NO_COLOR", "1")
    plain = draw()
    assert not _COLOUR.search(plain), plain
    assert "red output" in plain and "█" in plain  # a bar that reads without colour


def test_too_many_slots_for_the_terminal_lists_the_busy_ones() -> None:
    console = terminal(height=8)
    view = LiveView(console, show_workers=True, clock=lambda: 10.0, colour=False)
    view.handle(RunStarted("run", total=40, max_workers=16, started_at=0.0))
    for slot in (2, 3, 5, 7, 11, 13, 15):
        view.handle(TaskStarted(f"task-{slot}", 1, slot, float(slot)))
    view.handle(TaskStarted("no-slot", 1, 0, 9.0))  # a task that holds no slot
    view.refresh()
    shown = screen(raw(console)).splitlines()
    assert len(shown) <= 8
    assert shown[2:] == [
        "  slot 2  task-2                                                            8.0s",
        "  slot 3  task-3                                                            7.0s",
        "  slot 5  task-5                                                            5.0s",
        "  slot 7  task-7                                                            3.0s",
        "  … and 4 more running",
    ]
    view.close()


def test_eta_default_and_given() -> None:
    console = terminal()
    view = LiveView(console, clock=lambda: 4.0, colour=False)
    view.handle(RunStarted("run", total=10, max_workers=4, started_at=0.0))
    view.refresh()
    assert "eta" not in screen(raw(console))  # nothing has finished: no estimate yet
    view.handle(TaskFinished(ran("a", Status.SUCCEEDED, 0.0, 2.0, 1), 2.0))
    view.handle(TaskFinished(ran("b", Status.SUCCEEDED, 0.0, 4.0, 2), 4.0))
    view.refresh()
    assert " 2/10  4.0s  eta 6s" in screen(raw(console))  # 8 left x 3s / 4 slots
    view.close()

    console = terminal()
    view = LiveView(console, clock=lambda: 4.0, colour=False, eta=lambda: 61.2)
    view.handle(RunStarted("run", total=10, max_workers=4, started_at=0.0))
    view.refresh()
    assert " 0/10  4.0s  eta 1m02s" in screen(raw(console))
    view.close()


def test_eta_from_expected_durations() -> None:
    # Estimates for a..d (the history's), none for e: it counts as their mean, 5 s.
    expected = {"a": 2.0, "b": 4.0, "c": 6.0, "d": 8.0}
    now = [0.0]
    console = terminal()
    view = LiveView(console, clock=lambda: now[0], colour=False, expected=expected, refresh_per_second=0)
    view.handle(RunStarted("run", total=5, max_workers=2, started_at=0.0))
    view.refresh()
    assert " 0/5  0.0s  eta 13s" in screen(raw(console))  # (2+4+6+8+5) / 2 slots = 12.5, before anything ran
    view.handle(TaskStarted("d", 1, 1, 0.0))
    view.handle(TaskStarted("c", 1, 2, 0.0))
    now[0] = 3.0
    view.refresh()
    assert " 0/5  3.0s  eta 10s" in screen(raw(console))  # running d 5 + c 3 left, a 2 b 4 e 5: 19 / 2
    view.handle(TaskFinished(ran("c", Status.SUCCEEDED, 0.0, 6.0, 2), 6.0))
    view.handle(TaskFinished(ran("a", Status.SKIPPED, 6.0, 6.0, 0, attempts=0), 6.0))  # skipped: never runs
    view.handle(TaskStarted("b", 1, 2, 6.0))
    now[0] = 7.5
    view.refresh()
    assert " 2/5  7.5s  eta 4s" in screen(raw(console))  # d 0.5 + b 2.5 + e 5 = 8 / 2
    view.handle(TaskFinished(ran("d", Status.SUCCEEDED, 0.0, 8.0, 1), 8.0))
    view.handle(TaskStarted("e", 1, 1, 8.0))
    now[0] = 9.0
    view.refresh()
    # b 1 + e 4 = 5 over 2 slots is 2.5, but e alone still needs 4.
    assert " 3/5  9.0s  eta 4s" in screen(raw(console))
    view.handle(run_finished(13.0))
    view.close()

    # The plain lines use the same estimate.
    stream = io.StringIO()
    lines = ProgressLines(stream, interval=0.0, expected=expected)
    lines.handle(RunStarted("run", total=5, max_workers=2, started_at=0.0))
    lines.handle(TaskStarted("d", 1, 1, 0.0))
    lines.handle(TaskStarted("c", 1, 2, 1.0))
    assert stream.getvalue().splitlines()[-1].endswith("2 running, eta 12s")  # (8+6+2+4+5 - 1 of d) / 2 = 12


def test_stopping_is_shown_and_close_without_run_finished_restores_the_terminal() -> None:
    console = terminal()
    view = LiveView(console, clock=lambda: 1.0, colour=False)
    view.handle(RunStarted("run", total=3, max_workers=1, started_at=0.0))
    view.handle(RunCancelling(CancelReason.INTERRUPT, 1.0))
    view.refresh()
    assert "  stopping: interrupt" in screen(raw(console))
    view.close()
    view.close()
    view.handle(TaskStarted("late", 1, 1, 2.0))  # after close: ignored, nothing drawn
    assert raw(console).endswith("\x1b[?25h")


def test_a_real_run_prints_the_failure_once_and_whole(tmp_path: Path) -> None:
    console = terminal()
    lines = io.StringIO()
    view = LiveView(console, show_workers=True, colour=False, refresh_per_second=50)
    progress = ProgressLines(lines, interval=0.0)
    tasks = {
        "ok": "echo fine",
        "slow": "sleep 0.3",
        "bad": "echo boom-1; echo boom-2 >&2; echo boom-3; exit 3",
        "after": "echo never",
    }
    started = time.monotonic()
    report = phalanx.run(tasks, deps={"after": ["bad"]}, max_workers=3, sinks=[view, progress])
    assert time.monotonic() - started < 3
    assert report.exit_code == 1
    written = console.export_text()
    block = re.search(r"FAIL \[ *[0-9.]+s\] bad  exit code 3\n--- stdout: bad ---\nboom-1\nboom-3\n"
                      r"--- stderr: bad ---\nboom-2\n", written)
    assert block is not None, written
    assert written.count("boom-1") == 1 and written.count("FAIL") == 1
    final = screen(raw(console)).splitlines()
    assert re.fullmatch(r"phalanx █+ 4/4  [0-9.]+s", final[-2]), final  # the last state stays, no slots
    assert final[-1] == "  2 succeeded, 1 failed, 1 skipped"
    parsed = [LINE_PATTERN.fullmatch(line) for line in lines.getvalue().splitlines()]
    assert parsed and all(parsed)
    assert parsed[-1] is not None and parsed[-1]["kind"] == "finished" and parsed[-1]["done"] == "4"


# --- plain lines ---------------------------------------------------------------------------


def test_progress_lines_snapshot(tmp_path: Path) -> None:
    stream = io.StringIO()
    sink = ProgressLines(stream, interval=2.5)
    play(sink, scenario(tmp_path), [0.0])
    sink.close()
    text = stream.getvalue()
    assert_snapshot("progress_lines.txt", text)
    matches = [LINE_PATTERN.fullmatch(line) for line in text.splitlines()]
    assert all(matches), text
    assert [m["kind"] for m in matches if m] == ["progress", "progress", "progress", "finished"]


def test_progress_lines_at_most_one_per_interval_and_quiet_prints_nothing() -> None:
    stream = io.StringIO()
    sink = ProgressLines(stream)  # every 5 s
    sink.handle(RunStarted("run", total=100, max_workers=4, started_at=0.0))
    for index in range(100):
        at = index * 0.25
        sink.handle(TaskStarted(f"t{index}", 1, 1, at))
        sink.handle(TaskFinished(ran(f"t{index}", Status.SUCCEEDED, at, at + 0.25, 1), at + 0.25))
    sink.handle(run_finished(25.0))
    lines = stream.getvalue().splitlines()
    assert lines == [
        # each line: the tasks left x 0.25 s / 4 slots, rounded up
        "phalanx: progress 20/100 done (20 succeeded, 0 failed, 0 skipped), 0 running, eta 5s",
        "phalanx: progress 40/100 done (40 succeeded, 0 failed, 0 skipped), 0 running, eta 4s",
        "phalanx: progress 60/100 done (60 succeeded, 0 failed, 0 skipped), 0 running, eta 3s",
        "phalanx: progress 80/100 done (80 succeeded, 0 failed, 0 skipped), 0 running, eta 2s",
        "phalanx: progress 100/100 done (100 succeeded, 0 failed, 0 skipped), 0 running, eta 0s",
        "phalanx: finished 100/100 done (100 succeeded, 0 failed, 0 skipped) in 25s",
    ]

    quiet = io.StringIO()
    sink = ProgressLines(quiet, quiet=True)
    sink.handle(RunStarted("run", total=1, max_workers=1, started_at=0.0))
    sink.handle(TaskFinished(ran("t", Status.FAILED, 0.0, 9.0, 1), 9.0))
    sink.handle(run_finished(9.0))
    sink.close()
    assert quiet.getvalue() == ""


@pytest.mark.parametrize(
    ("seconds", "text", "up"),
    [(0.2, "0s", False), (0.2, "1s", True), (35, "35s", False), (125, "2m05s", False), (3723, "1h02m03s", False)],
)
def test_span(seconds: float, text: str, up: bool) -> None:
    assert span(seconds, round_up=up) == text
