"""The HTML report (``--html FILE``): one self-contained page that shows what a run did.

The page needs nothing but itself: its CSS and script are inline and it loads nothing
(its Content-Security-Policy forbids every fetch), so it can be mailed, attached to a CI
job or opened years later from disk. It has the run's summary (counts by status, wall
time, parallelism, lower bound, critical path), a timeline with one row per worker slot
and one bar per attempt (the critical path outlined), and a table of the tasks with
status filters, each task's output beneath it in a ``<details>`` block. A task that ran on
a cluster worker (``--backend dask``) names that worker's address in its row, its last
attempt's bar and the bar's tooltip; a run on this machine shows none of that.

Two halves, so the page can also be made without a run:

- `render_report` turns plain data (`ReportData`: numbers, strings, tuples) into the
  page. It knows nothing of events, so ``phalanx report RUN --html`` can render a run
  from its journal.
- `HtmlReportSink` gathers that data from a run's events: each attempt's slot, start and
  end from `TaskStarted` / `TaskRetrying` / `TaskFinished`, each task's result and the end
  of its output (read when it finishes, while its output files still exist), and writes
  the page at `RunFinished` (or at `close`, for a run that stopped without one), whole or
  not at all (a temporary file renamed over the target).

Everything a task provides (ids, reasons, output, data) is text to the page, never markup:
it is HTML-escaped where it goes into the page, and JSON for the script is embedded with
``<``, ``>``, ``&``, U+2028 and U+2029 escaped, so no output can close the ``<script>``
element or start one. The script also carries a per-page nonce that the policy requires,
so an injected script would not run even if escaping were ever missed.

Memory: a task's output is kept only as the last `OUTPUT_TAIL` bytes of each stream, and
the page holds at most `OUTPUT_BUDGET` bytes of output in all; tasks that finish after the
budget is spent show how much output they had, not the output (their log files have it).
"""

from __future__ import annotations

import html
import json
import math
import os
import re
import secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from .. import __version__
from ..durations import format_duration
from ..events import Event, RunFinished, RunStarted, TaskFinished, TaskRetrying, TaskStarted
from ..results import RunSummary, Status, TaskResult
from .joblog import write_all
from .wholefile import whole_file

#: The most of each stream's end (stdout, stderr) the page shows per task, in bytes.
OUTPUT_TAIL = 64 * 1024
#: The most output the page holds for all tasks together, in bytes: a page is meant to be
#: opened in a browser, and a run of 100,000 chatty tasks must not make one of gigabytes.
OUTPUT_BUDGET = 32 * 1024 * 1024

#: An attempt that failed and was tried again (its task's status is its last attempt's).
RETRIED = "retried"
#: An attempt still running when the page was written (a run that ended without RunFinished).
UNFINISHED = "unfinished"

#: Statuses in the order the page lists them, with their labels.
_STATUS_ORDER = (*(status.value for status in Status), RETRIED, UNFINISHED)
_LABELS = {value: value.replace("_", " ") for value in _STATUS_ORDER}

_EMPTY: Mapping[str, Any] = MappingProxyType({})
_DOT = " \u00b7 "


# ------------------------------------------------------------------------------ the data


@dataclass(frozen=True, slots=True)
class AttemptSpan:
    """One attempt: a bar on the timeline.

    Attributes:
        task_id: the task.
        attempt: its number, from 1.
        slot: the worker slot it ran in (``PHALANX_WORKER``); 0 for a task that holds no slot.
        start, end: seconds since the run started.
        status: the task's status (a `Status` value) for its last attempt, `RETRIED` for an
            attempt that failed and was tried again, `UNFINISHED` for one that never ended.
        reason: why it did not succeed, if it did not.
        worker_address: the cluster worker it ran on (``tcp://10.0.0.5:40123``), when its
            end said so (a task's last attempt); None on this machine.
    """

    task_id: str
    attempt: int
    slot: int
    start: float
    end: float
    status: str
    reason: str | None = None
    worker_address: str | None = None


@dataclass(frozen=True, slots=True)
class Output:
    """The end of one output stream.

    Attributes:
        text: what is shown (decoded as UTF-8, bad bytes as U+FFFD).
        omitted: bytes before ``text`` that are not shown (0: the whole output); None when
            unknown, for a tail taken from a result without its output file.
    """

    text: str = ""
    omitted: int | None = 0


@dataclass(frozen=True, slots=True)
class TaskEntry:
    """One task: a row of the table, its output beneath it.

    Attributes:
        task_id: the task.
        status: its terminal status, a `Status` value.
        reason: why it did not succeed, or None.
        attempts: how many attempts ran.
        flaky: it succeeded after a failed attempt.
        start: when its first attempt started (seconds since the run started), or None.
        duration: its last attempt's running time in seconds.
        slot: the worker slot its last attempt ran in, or None.
        exit_code: the command's exit status, if it exited.
        stdout, stderr: the end of its output.
        traceback: the traceback of the exception a callable raised, or "".
        data: what the task reported (``PHALANX_RESULT_FILE`` or a returned mapping).
        worker_address: the cluster worker its last attempt ran on, or None (this machine).
    """

    task_id: str
    status: str
    reason: str | None = None
    attempts: int = 0
    flaky: bool = False
    start: float | None = None
    duration: float = 0.0
    slot: int | None = None
    exit_code: int | None = None
    stdout: Output = field(default_factory=Output)
    stderr: Output = field(default_factory=Output)
    traceback: str = ""
    data: Mapping[str, Any] = field(default_factory=lambda: _EMPTY)
    worker_address: str | None = None


@dataclass(frozen=True, slots=True)
class ReportData:
    """Everything the page shows, as plain data (see `RunSummary` for the summary fields).

    Attributes:
        complete: the run reached its end (RunFinished); a page written without it says so,
            and its summary is what was seen until then.
        counts: tasks by status (`Status` values).
        cancelled_by: why the run stopped early (``fail-fast``, ``halt``, ``interrupt``,
            ``terminate``), or None.
        attempts: every attempt, in the order they started.
        tasks: every task that finished, in the graph's order when it is known.
    """

    title: str
    run_id: str
    started_at: float
    complete: bool
    total: int
    counts: Mapping[str, int]
    flaky: int
    wall_time: float
    busy_time: float
    max_workers: int
    achieved_parallelism: float
    max_concurrency: int
    lower_bound: float
    critical_path: tuple[str, ...]
    critical_path_time: float
    attempts: tuple[AttemptSpan, ...] = ()
    tasks: tuple[TaskEntry, ...] = ()
    data_totals: Mapping[str, float] = field(default_factory=lambda: _EMPTY)
    cancelled_by: str | None = None
    halted_by: str | None = None

    @classmethod
    def from_summary(
        cls,
        summary: RunSummary,
        *,
        title: str,
        run_id: str,
        attempts: Sequence[AttemptSpan],
        tasks: Sequence[TaskEntry],
    ) -> ReportData:
        """The data for a run that finished, from its summary."""
        return cls(
            title=title,
            run_id=run_id,
            started_at=summary.started_at,
            complete=True,
            total=summary.total,
            counts={status.value: n for status, n in summary.counts.items()},
            flaky=summary.flaky,
            wall_time=summary.wall_time,
            busy_time=summary.busy_time,
            max_workers=summary.max_workers,
            achieved_parallelism=summary.achieved_parallelism,
            max_concurrency=summary.max_concurrency,
            lower_bound=summary.lower_bound,
            critical_path=tuple(summary.critical_path),
            critical_path_time=summary.critical_path_time,
            attempts=tuple(attempts),
            tasks=tuple(tasks),
            data_totals=dict(summary.data_totals),
            cancelled_by=None if summary.cancelled_by is None else summary.cancelled_by.label,
            halted_by=summary.halted_by,
        )

    @property
    def ok(self) -> bool:
        """Whether every task succeeded and the run ran to its end."""
        return self.complete and self.cancelled_by is None and all(
            n == 0 for status, n in self.counts.items() if status != Status.SUCCEEDED.value
        )


def task_entry(result: TaskResult, stdout: Output, stderr: Output) -> TaskEntry:
    """A `TaskEntry` for ``result``, with the output given (see `read_output`)."""
    return TaskEntry(
        task_id=result.task_id,
        status=result.status.value,
        reason=result.reason,
        attempts=result.attempts,
        flaky=result.flaky,
        start=result.start,
        duration=result.duration,
        slot=result.worker if result.attempts else None,
        exit_code=result.exit_code,
        stdout=stdout,
        stderr=stderr,
        traceback=result.error.traceback if result.error is not None else "",
        data=dict(result.data),
        worker_address=result.worker_address if result.attempts else None,
    )


def read_output(path: str | None, tail: str, limit: int = OUTPUT_TAIL) -> Output:
    """The last ``limit`` bytes of the output file at ``path``; ``tail`` (a result's
    ``stdout_tail``) when there is no file. One bounded read, whatever the file's size."""
    if path:
        try:
            with open(path, "rb") as source:
                size = os.fstat(source.fileno()).st_size
                start = max(0, size - limit)
                source.seek(start)
                data = source.read(size - start)
        except OSError:
            pass
        else:
            cut = 0
            if start:
                # Begin at a character, not inside one: skip UTF-8 continuation bytes.
                while cut < min(3, len(data)) and 0x80 <= data[cut] < 0xC0:
                    cut += 1
            return Output(data[cut:].decode("utf-8", "replace"), start + cut)
    if not tail:
        return Output()
    encoded = tail.encode("utf-8", "surrogatepass")
    if len(encoded) > limit:
        tail = encoded[-limit:].decode("utf-8", "ignore")
    return Output(tail, None)


# ------------------------------------------------------------------------------ the sink


class HtmlReportSink:
    """A `Sink` that writes the run's HTML report to ``path`` when the run ends.

    Nothing is written until then: the page appears whole, at `RunFinished`, or at `close`
    for a run that stopped without one (an error in the engine; the page then says it is
    incomplete). A sink closed before any run started writes nothing.

    Args:
        path: the page to write; its folder must exist (checked now, not after the run).
        title: the page's heading.
        output_budget: the most output the page holds, all tasks together, in bytes.
    """

    def __init__(self, path: str | os.PathLike[str], *, title: str = "phalanx run",
                 output_budget: int = OUTPUT_BUDGET) -> None:
        self._path = Path(path)
        folder = self._path.parent
        if not folder.is_dir():
            # A report that cannot be written is better known before a long run than after it.
            raise FileNotFoundError(f"cannot write the HTML report {str(path)!r}: no folder {str(folder)!r}")
        self._title = title
        self._budget = output_budget
        self._run_id = ""
        self._started_at = 0.0
        self._max_workers = 1
        self._total = 0
        self._last_at = 0.0
        self._running: dict[str, tuple[int, int, float]] = {}  # task id -> (attempt, slot, start)
        self._attempts: list[AttemptSpan] = []
        self._tasks: dict[str, TaskEntry] = {}
        self._started = False
        self._written = False

    def handle(self, event: Event) -> None:
        self._last_at = max(self._last_at, event.at)
        if isinstance(event, TaskStarted):
            self._running[event.task_id] = (event.attempt, event.worker, event.at)
        elif isinstance(event, TaskRetrying):
            self._end_attempt(event.task_id, event.at, RETRIED, event.reason)
        elif isinstance(event, TaskFinished):
            result = event.result
            self._end_attempt(result.task_id, event.at, result.status.value, result.reason, result.worker_address)
            self._tasks[result.task_id] = task_entry(
                result, self._kept(result.stdout_path, result.stdout_tail),
                self._kept(result.stderr_path, result.stderr_tail),
            )
        elif isinstance(event, RunStarted):
            self._started = True
            self._run_id, self._started_at = event.run_id, event.started_at
            self._max_workers, self._total = event.max_workers, event.total
        elif isinstance(event, RunFinished):
            report = event.report
            # The graph's order when the run kept its results; else the order tasks finished in.
            order = {tid: index for index, tid in enumerate(report.results)}
            tasks = sorted(self._tasks.values(), key=lambda task: order.get(task.task_id, len(order)))
            data = ReportData.from_summary(
                report.summary, title=self._title, run_id=self._run_id, attempts=self._attempts, tasks=tasks
            )
            self._write(data)

    def _end_attempt(
        self, task_id: str, at: float, status: str, reason: str | None, worker_address: str | None = None
    ) -> None:
        running = self._running.pop(task_id, None)
        if running is None:
            return  # never started: skipped, or cancelled before it started
        attempt, slot, start = running
        reason = None if status == Status.SUCCEEDED.value else reason
        span = AttemptSpan(task_id, attempt, slot, start, max(at, start), status, reason, worker_address)
        self._attempts.append(span)

    def _kept(self, path: str | None, tail: str) -> Output:
        """The end of one stream, within what is left of the budget."""
        if self._budget <= 0:
            size = _size(path)
            return Output("", size) if size else Output()
        output = read_output(path, tail, min(OUTPUT_TAIL, self._budget))
        self._budget -= len(output.text.encode("utf-8", "surrogatepass"))
        return output

    def _write(self, data: ReportData) -> None:
        self._written = True  # once: a page that failed to write is not tried again at close
        write_report(self._path, render_report(data))

    def close(self) -> None:
        if self._written or not self._started:
            return
        # No RunFinished: show what was seen, with the summary made from it.
        wall = self._last_at
        attempts = [*self._attempts, *(
            AttemptSpan(tid, attempt, slot, start, max(wall, start), UNFINISHED)
            for tid, (attempt, slot, start) in self._running.items()
        )]
        busy = sum(span.end - span.start for span in attempts)
        counts = {status.value: 0 for status in Status}
        for task in self._tasks.values():
            counts[task.status] = counts.get(task.status, 0) + 1
        self._write(ReportData(
            title=self._title,
            run_id=self._run_id,
            started_at=self._started_at,
            complete=False,
            total=self._total,
            counts=counts,
            flaky=sum(task.flaky for task in self._tasks.values()),
            wall_time=wall,
            busy_time=busy,
            max_workers=self._max_workers,
            achieved_parallelism=busy / wall if wall > 0 else 0.0,
            max_concurrency=max_overlap(attempts),
            lower_bound=busy / self._max_workers,
            critical_path=(),
            critical_path_time=0.0,
            attempts=tuple(attempts),
            tasks=tuple(self._tasks.values()),
        ))


def _size(path: str | None) -> int:
    try:
        return os.stat(path).st_size if path else 0
    except OSError:
        return 0


def max_overlap(attempts: Sequence[AttemptSpan]) -> int:
    """The most attempts that ran at once (an end at the same moment as a start comes first)."""
    changes = sorted([(span.start, 1) for span in attempts] + [(span.end, -1) for span in attempts])
    most = running = 0
    for _, change in changes:
        running += change
        most = max(most, running)
    return most


def write_report(path: str | os.PathLike[str], page: str) -> None:
    """Write ``page`` to ``path`` whole or not at all: to a new temporary file beside it,
    then renamed over it (`whole_file`), so a reader (or a crash) never sees half a page.

    Text that is not valid UTF-8 (lone surrogates from undecodable arguments) becomes ``?``.
    """
    data = page.encode("utf-8", "replace")
    with whole_file(path) as fd:
        write_all(fd, data)


# ------------------------------------------------------------------------------ the page

# ANSI escape sequences (colours, cursor moves, OSC titles and links): CI output is full of
# them, and they mean nothing in a page.
_ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?|\x1b[@-Z\\-_]")
_CONTROLS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def _plain(text: str) -> str:
    """Text as a page can show it: no ANSI escapes, line ends as ``\\n``, other control
    characters as their visible pictures (U+2400...), which HTML would otherwise reject."""
    text = _ANSI.sub("", text).replace("\r\n", "\n").replace("\r", "\n")
    return _CONTROLS.sub(lambda match: "\u2421" if match.group() == "\x7f" else chr(0x2400 + ord(match.group())), text)


def _esc(text: object) -> str:
    """Task-provided text, escaped for HTML text and attribute values alike."""
    return html.escape(_plain(str(text)), quote=True)


def script_json(value: object) -> str:
    """``value`` as JSON that is safe inside a ``<script>`` element: ``<``, ``>`` and ``&``
    escaped (no ``</script>`` or ``<!--`` can appear), and U+2028/U+2029, which old
    JavaScript parsers take for line ends. They occur only inside strings, where the
    escapes mean the same characters, so the JSON's value is unchanged."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str, allow_nan=False)
    for char, escape in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"),
                         ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        text = text.replace(char, escape)
    return text


def _seconds(value: float) -> str:
    return format_duration(max(value, 0.0))


def _number(value: float) -> str:
    return f"{value:g}" if isinstance(value, float) and not value.is_integer() else f"{int(value):,}"


def _bytes(count: int) -> str:
    size = float(count)
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{count:,} bytes" if unit == "bytes" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{count:,} bytes"  # pragma: no cover - the loop always returns


def _lines(text: str) -> str:
    count = text.count("\n") + (0 if text.endswith("\n") else 1) if text else 0
    return f"{count} line" + ("" if count == 1 else "s")


def _ticks(span: float) -> tuple[float, list[float]]:
    """A round tick step for an axis of ``span`` seconds (1, 2 or 5 times a power of ten,
    or whole minutes and hours), and the ticks from 0 to ``span``: at most about ten."""
    steps = [m * 10.0**e for e in range(-3, 3) for m in (1, 2, 5)] + [60, 120, 300, 600, 900, 1800, 3600, 7200]
    steps = sorted(s for s in steps if s < 60 or s % 60 == 0)
    step = next((s for s in steps if span / s <= 10), math.ceil(span / 10 / 3600) * 3600.0)
    count = int(span / step + 1e-9)
    return step, [i * step for i in range(count + 1)]


def _tick_label(value: float, step: float) -> str:
    if step >= 60:
        minutes, seconds = divmod(round(value), 60)
        hours, minutes = divmod(minutes, 60)
        return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m" + (f"{seconds:02d}s" if seconds else "")
    decimals = max(0, -math.floor(math.log10(step) + 1e-9))
    text = f"{value:.{decimals}f}"
    return (text.rstrip("0").rstrip(".") if "." in text else text) + "s"


def render_report(data: ReportData, *, nonce: str | None = None) -> str:
    """The whole page for ``data``: HTML with its CSS and script inline, loading nothing.

    ``nonce`` is the one value the page's policy lets scripts run with; a fresh random one
    by default (give one only to get the same page twice, as a snapshot test does).
    """
    nonce = secrets.token_urlsafe(16) if nonce is None else re.sub(r"[^A-Za-z0-9+/=_-]", "", nonce)
    critical = set(data.critical_path)
    status = "passed" if data.ok else ("incomplete" if not data.complete else "failed")
    verdict = {"passed": "Passed", "failed": "Failed", "incomplete": "Incomplete"}[status]
    policy = f"default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'nonce-{nonce}'"
    parts = [
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n",
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n',
        f'<meta http-equiv="Content-Security-Policy" content="{policy}">\n',
        f'<meta name="generator" content="phalanx {_esc(__version__)}">\n',
        f"<title>{_esc(data.title)} \u00b7 {verdict}</title>\n",
        '<link rel="icon" href="data:,">\n',
        f"<style>{_CSS}</style>\n</head>\n<body>\n",
        _header(data, status, verdict),
        "<main>\n",
        _summary(data),
        _timeline(data, critical),
        _table(data, critical),
        "</main>\n",
        f'<script type="application/json" id="phalanx-data">{script_json(_script_data(data))}</script>\n',
        f'<script nonce="{nonce}">{_JS}</script>\n',
        "</body>\n</html>\n",
    ]
    return "".join(parts)


def _header(data: ReportData, status: str, verdict: str) -> str:
    started = time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(data.started_at)) if data.started_at else ""
    meta = [f"{data.total} task{'s' if data.total != 1 else ''}", f"{data.max_workers} worker slots"]
    if started:
        meta.insert(0, f"started {started}")
    if data.run_id:
        meta.insert(0, f"run {data.run_id}")
    note = ""
    if not data.complete:
        note = '<p class="note">The run did not reach its end: this shows what it did until it stopped.</p>'
    elif data.cancelled_by is not None:
        halted = f" by task <code>{_esc(data.halted_by)}</code>" if data.halted_by else ""
        note = (f'<p class="note">Stopped early ({_esc(data.cancelled_by)}){halted}: '
                "tasks not started were cancelled.</p>")
    return (
        f'<header class="top {status}">\n<div class="verdict">{verdict}</div>\n'
        f"<div><h1>{_esc(data.title)}</h1>\n"
        f'<p class="meta">{_DOT.join(_esc(item) for item in meta)}</p>{note}</div>\n</header>\n'
    )


def _chip(status: str, text: str) -> str:
    return f'<span class="chip s-{status}"><i></i>{text}</span>'


def _summary(data: ReportData) -> str:
    chips = []
    for value in _STATUS_ORDER:
        count = data.counts.get(value, 0)
        if count or value == Status.SUCCEEDED.value:
            flaky = f" ({data.flaky} flaky)" if value == Status.SUCCEEDED.value and data.flaky else ""
            chips.append(_chip(value, f"{count} {_LABELS[value]}{flaky}"))
    efficiency = f"{data.lower_bound / data.wall_time:.0%} efficient" if data.wall_time > 0 else ""
    per_worker = data.busy_time / data.max_workers if data.max_workers else 0.0
    # Each card's notes are separate pieces, so a narrow card wraps between them, not inside one.
    cards: list[tuple[str, str, list[str]]] = [
        ("Tasks", str(data.total), chips),
        ("Wall time", _seconds(data.wall_time), [f"busy {_seconds(data.busy_time)} in all"]),
        ("Parallelism", f"{data.achieved_parallelism:.2f}\u00d7",
         [f"of {data.max_workers} slots", f"at most {data.max_concurrency} at once"]),
        # The larger of the two is the bound: no schedule of these durations on these slots beats it.
        ("Lower bound", _seconds(data.lower_bound) + (f" <small>{efficiency}</small>" if efficiency else ""),
         [f"critical path {_seconds(data.critical_path_time)}", f"work/slots {_seconds(per_worker)}"]),
    ]
    out = ['<section class="summary">\n<div class="cards">\n']
    for label, value, notes in cards:
        sub = "".join(note if note.startswith("<") else f"<span>{note}</span>" for note in notes)
        out.append(f'<div class="card"><div class="label">{label}</div><div class="value">{value}</div>'
                   f'<div class="sub">{sub}</div></div>\n')
    out.append("</div>\n")
    if data.critical_path:
        chain = "".join(f"<li><code>{_esc(tid)}</code></li>" for tid in data.critical_path)
        out.append(f'<div class="path"><span class="label">Critical path</span><span class="time">'
                   f'{_seconds(data.critical_path_time)}</span><ol class="chain">{chain}</ol></div>\n')
    if data.data_totals:
        totals = "".join(f"<li><code>{_esc(key)}</code> {_esc(_number(value))}</li>"
                         for key, value in data.data_totals.items())
        out.append(f'<div class="totals"><span class="label">Reported by tasks</span><ul>{totals}</ul></div>\n')
    out.append("</section>\n")
    return "".join(out)


def _timeline(data: ReportData, critical: set[str]) -> str:
    if not data.attempts:
        return '<section class="timeline"><h2>Timeline</h2><p class="empty">No attempt ran.</p></section>\n'
    span = max([data.wall_time, *(attempt.end for attempt in data.attempts)]) or 1e-3
    used = {attempt.slot for attempt in data.attempts}
    # Every slot gets its row (an idle slot is worth seeing), unless there are too many to read.
    slots = sorted(used | (set(range(1, data.max_workers + 1)) if data.max_workers <= 64 else set()))
    # The bars of the critical path: its tasks' last attempts (the durations it was measured on).
    last = {attempt.task_id: index for index, attempt in enumerate(data.attempts)}
    step, ticks = _ticks(span)

    def pct(value: float) -> str:
        return f"{max(0.0, min(100.0, value / span * 100)):.4f}%"

    out = ['<section class="timeline">\n<div class="section-head"><h2>Timeline</h2><div class="legend">']
    present = {attempt.status for attempt in data.attempts}
    out += [_chip(value, _LABELS[value]) for value in _STATUS_ORDER if value in present]
    if critical:
        out.append('<span class="chip critical-key"><i></i>critical path</span>')
    if data.complete and 0 < data.lower_bound < span:
        out.append('<span class="chip bound-key"><i></i>lower bound</span>')
    out.append('</div></div>\n<div class="gantt">\n<div class="axis"><div class="slot"></div><div class="track">')
    out += [f'<span class="tick" style="left:{pct(tick)}">{_tick_label(tick, step)}</span>' for tick in ticks]
    out.append('</div></div>\n<div class="rows">\n<div class="grid">')
    out += [f'<span style="left:{pct(tick)}"></span>' for tick in ticks]
    if data.complete and 0 < data.lower_bound < span:
        out.append(f'<span class="bound" style="left:{pct(data.lower_bound)}" '
                   f'title="lower bound {_seconds(data.lower_bound)}"></span>')
    out.append("</div>\n")
    for slot in slots:
        label = f"slot {slot}" if slot else "no slot"
        out.append(f'<div class="lane"><div class="slot">{label}</div><div class="track">')
        for index, attempt in enumerate(data.attempts):
            if attempt.slot != slot:
                continue
            on_path = attempt.task_id in critical and last[attempt.task_id] == index and attempt.status != RETRIED
            took = attempt.end - attempt.start
            label = _LABELS.get(attempt.status, attempt.status)
            facts = [attempt.task_id, f"attempt {attempt.attempt}", _seconds(took), label]
            if attempt.worker_address is not None:
                facts.append(f"on {attempt.worker_address}")
            title = _DOT.join([*facts, attempt.reason] if attempt.reason else facts)
            classes = "bar critical" if on_path else "bar"
            out.append(
                f'<div class="{classes} s-{_esc(attempt.status)}" data-task="{_esc(attempt.task_id)}" '
                f'data-status="{_esc(attempt.status)}" data-index="{index}" tabindex="0" '
                f'style="left:{pct(attempt.start)};width:{pct(took)}" title="{_esc(title)}">'
                f"<span>{_esc(attempt.task_id)}</span></div>"
            )
        out.append("</div></div>\n")
    out.append("</div>\n</div>\n</section>\n")
    return "".join(out)


def _table(data: ReportData, critical: set[str]) -> str:
    counts: dict[str, int] = {}
    for task in data.tasks:
        counts[task.status] = counts.get(task.status, 0) + 1
    out = ['<section class="tasks">\n<div class="section-head"><h2>Tasks</h2><div class="filters">']
    for value in _STATUS_ORDER:
        if value in counts:
            out.append(f'<label class="filter s-{value}"><input type="checkbox" class="status-filter" '
                       f'value="{value}" checked><i></i>{_LABELS[value]} <b>{counts[value]}</b></label>')
    out.append('<input type="search" id="task-search" placeholder="Filter by id\u2026" aria-label="Filter tasks by id">'
               f'<span id="shown">{len(data.tasks)} of {len(data.tasks)}</span></div></div>\n')
    if not data.tasks:
        out.append('<p class="empty">No task finished.</p>\n</section>\n')
        return "".join(out)
    out.append('<table>\n<thead><tr><th data-sort="status">Status</th><th data-sort="task">Task</th>'
               '<th data-sort="attempts" class="num">Attempts</th><th data-sort="slot" class="num">Slot</th>'
               '<th data-sort="start" class="num">Start</th><th data-sort="duration" class="num">Duration</th>'
               "<th>Result</th></tr></thead>\n")
    rank = {value: index for index, value in enumerate(_STATUS_ORDER)}
    for order, task in enumerate(data.tasks):
        out.append(_task_rows(task, order, rank.get(task.status, len(rank)), task.task_id in critical))
    out.append("</table>\n</section>\n")
    return "".join(out)


def _task_rows(task: TaskEntry, order: int, rank: int, critical: bool) -> str:
    status = _esc(task.status)
    label = "flaky" if task.flaky else _LABELS.get(task.status, task.status)
    notes = []
    if task.flaky:
        notes.append(f"passed on attempt {task.attempts}")
    elif task.reason and task.status != Status.SUCCEEDED.value:
        notes.append(_esc(task.reason))
    if task.data:
        notes.append("".join(f'<span class="datum"><code>{_esc(key)}</code> {_esc(_json_value(value))}</span>'
                             for key, value in task.data.items()))
    start = "" if task.start is None else _seconds(task.start)
    duration = _seconds(task.duration) if task.attempts else ""
    slot = "" if task.slot is None else str(task.slot)
    path = ' <span class="on-path" title="on the critical path">critical path</span>' if critical else ""
    if task.worker_address is not None:  # a cluster run: where the task ran, under its id
        address = _esc(task.worker_address)
        path += f'<div class="where" title="the cluster worker it ran on">on <code>{address}</code></div>'
    tid = _esc(task.task_id)
    where = "" if task.worker_address is None else f' data-worker-address="{_esc(task.worker_address)}"'
    out = [
        f'<tbody class="task-group" data-task="{tid}" data-status="{status}" data-order="{order}" '
        f'data-rank="{rank}" data-attempts="{task.attempts}" data-slot="{task.slot if task.slot is not None else -1}" '
        f'data-start="{task.start if task.start is not None else -1}" data-duration="{task.duration}"{where}>\n',
        f'<tr class="task" data-task="{tid}" data-status="{status}">'
        f'<td><span class="badge s-{"flaky" if task.flaky else status}">{_esc(label)}</span></td>'
        f'<td class="id"><code>{tid}</code>{path}</td><td class="num">{task.attempts}</td>'
        f'<td class="num">{slot}</td><td class="num">{start}</td><td class="num">{duration}</td>'
        f'<td class="why">{" ".join(notes)}</td></tr>\n',
    ]
    streams = [(name, output) for name, output in (("stdout", task.stdout), ("stderr", task.stderr))
               if output.text or output.omitted]
    if task.traceback:
        streams.append(("traceback", Output(task.traceback)))
    if streams:
        summary = " \u00b7 ".join(
            f"{name} {_lines(output.text)}" + (" (end)" if output.omitted != 0 else "") for name, output in streams
        )
        opened = " open" if task.status not in (Status.SUCCEEDED.value, Status.SKIPPED.value) else ""
        out.append(f'<tr class="output"><td></td><td colspan="6"><details class="output"{opened}>'
                   f"<summary>Output \u00b7 {summary}</summary>")
        for name, output in streams:
            if output.omitted is None:
                cut = '<span class="cut">the end of the output</span>'
            elif output.omitted and output.text:
                cut = f'<span class="cut">{_bytes(output.omitted)} before this not shown</span>'
            elif output.omitted:
                # The page's output budget was spent before this task ended: its log file has it.
                cut = f'<span class="cut">{_bytes(output.omitted)} not shown</span>'
            else:
                cut = ""
            text = f"<pre>{_esc(output.text)}</pre>" if output.text else ""
            out.append(f'<div class="stream s-{name}"><div class="stream-name">{name}{cut}</div>{text}</div>')
        out.append("</details></td></tr>\n")
    out.append("</tbody>\n")
    return "".join(out)


def _json_value(value: object) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, default=str)


def _script_data(data: ReportData) -> dict[str, Any]:
    """What the page's script reads (and what a tool scraping the page can read): the bars'
    details for the tooltips, and the run's numbers."""
    return {
        "title": data.title,
        "run_id": data.run_id,
        "complete": data.complete,
        "wall_time": data.wall_time,
        "lower_bound": data.lower_bound,
        "critical_path": list(data.critical_path),
        "counts": dict(data.counts),
        "attempts": [_attempt_data(a) for a in data.attempts],
    }


def _attempt_data(attempt: AttemptSpan) -> dict[str, Any]:
    """One bar's details for the script; ``worker_address`` only for a cluster worker, so a
    run on this machine gives the page it always did."""
    out: dict[str, Any] = {
        "task": attempt.task_id, "attempt": attempt.attempt, "slot": attempt.slot, "start": round(attempt.start, 6),
        "end": round(attempt.end, 6), "status": attempt.status, "reason": attempt.reason,
    }
    if attempt.worker_address is not None:
        out["worker_address"] = attempt.worker_address
    return out


_CSS = """
:root{--fg:#1f2328;--muted:#656d76;--line:#d0d7de;--soft:#f6f8fa;--accent:#0969da;
--succeeded:#2da44e;--failed:#cf222e;--timed_out:#bc4c00;--crashed:#8250df;--skipped:#8c959f;
--cancelled:#bf8700;--retried:#fb8f44;--unfinished:#6e7781;--flaky:#d4a72c;
font-family:-apple-system,BlinkMacSystemFont,"Segoe UI","Noto Sans",Helvetica,Arial,sans-serif;
font-size:14px;color:var(--fg);background:#fff}
*{box-sizing:border-box}
[hidden]{display:none!important}
body{margin:0}
code,pre{font-family:ui-monospace,SFMono-Regular,"SF Mono",Menlo,Consolas,"DejaVu Sans Mono",monospace;font-size:12.5px}
header.top{display:flex;gap:18px;align-items:center;padding:18px 28px;border-bottom:1px solid var(--line);
background:var(--soft)}
header.top h1{margin:0;font-size:22px;font-weight:600}
.meta{margin:4px 0 0;color:var(--muted)}
.note{margin:6px 0 0;color:var(--failed);font-weight:500}
.verdict{font-weight:700;font-size:13px;letter-spacing:.06em;text-transform:uppercase;color:#fff;
padding:8px 14px;border-radius:6px;background:var(--failed)}
.passed .verdict{background:var(--succeeded)}
.incomplete .verdict{background:var(--unfinished)}
main{padding:8px 28px 40px;max-width:1600px}
h2{font-size:16px;margin:0;font-weight:600}
section{margin-top:22px}
.section-head{display:flex;align-items:center;gap:16px;flex-wrap:wrap;margin-bottom:10px}
.cards{display:grid;grid-template-columns:repeat(auto-fit,minmax(220px,1fr));gap:12px}
.card{border:1px solid var(--line);border-radius:8px;padding:12px 14px}
.card .label,.path .label,.totals .label{color:var(--muted);font-size:12px;text-transform:uppercase;
letter-spacing:.05em;font-weight:600}
.card .value{font-size:26px;font-weight:600;margin:2px 0 6px;font-variant-numeric:tabular-nums}
.card .sub{color:var(--muted);font-size:12.5px;display:flex;flex-wrap:wrap;gap:4px 10px}
.card .sub>span:not(.chip)+span:not(.chip)::before{content:"\\00b7";margin-right:10px}
.card .value small{font-size:13px;font-weight:500;color:var(--muted);margin-left:4px}
.chip{display:inline-flex;align-items:center;gap:5px;color:var(--fg);font-size:12.5px;white-space:nowrap}
.chip i,.filter i{width:10px;height:10px;border-radius:3px;background:var(--c);display:inline-block}
.path,.totals{display:flex;align-items:center;gap:10px;flex-wrap:wrap;margin-top:12px}
.path .time{font-weight:600}
.chain,.totals ul{display:flex;flex-wrap:wrap;gap:4px;margin:0;padding:0;list-style:none;align-items:center}
.chain li+li::before{content:"\\2192";color:var(--muted);margin:0 6px 0 2px}
.chain code,.totals code{background:var(--soft);border:1px solid var(--line);border-radius:4px;padding:1px 6px}
.totals li{margin-right:10px}
.legend{display:flex;gap:14px;flex-wrap:wrap}
.critical-key i{background:#fff;box-shadow:inset 0 0 0 2px var(--fg)}
.bound-key i{width:0;border-left:2px dashed var(--fg);border-radius:0}
.s-succeeded{--c:var(--succeeded)}.s-failed{--c:var(--failed)}.s-timed_out{--c:var(--timed_out)}
.s-crashed{--c:var(--crashed)}.s-skipped{--c:var(--skipped)}.s-cancelled{--c:var(--cancelled)}
.s-retried{--c:var(--retried)}.s-unfinished{--c:var(--unfinished)}.s-flaky{--c:var(--flaky)}
.gantt{border:1px solid var(--line);border-radius:8px;padding:6px 12px 10px}
.axis,.lane{display:grid;grid-template-columns:64px 1fr}
.axis .track{position:relative;height:20px}
.tick{position:absolute;transform:translateX(-50%);font-size:11px;color:var(--muted);white-space:nowrap;
font-variant-numeric:tabular-nums}
.tick:first-child{transform:none}
.rows{position:relative}
.grid{position:absolute;top:0;bottom:0;left:64px;right:0;pointer-events:none}
.grid span{position:absolute;top:0;bottom:0;border-left:1px solid #eaeef2}
.grid .bound{border-left:2px dashed var(--fg);opacity:.55;z-index:2}
.lane{height:32px;align-items:center;border-top:1px solid #f0f2f4}
.lane:first-of-type{border-top:0}
.slot{color:var(--muted);font-size:12px;font-variant-numeric:tabular-nums}
.lane .track{position:relative;height:100%}
.bar{position:absolute;top:5px;height:22px;min-width:3px;border-radius:4px;background:var(--c);color:#fff;
font-size:11.5px;line-height:22px;overflow:hidden;cursor:pointer;z-index:1;
box-shadow:inset 0 0 0 1px rgba(0,0,0,.12);transition:opacity .15s}
.bar span{display:block;padding:0 6px;white-space:nowrap;overflow:hidden;text-overflow:ellipsis}
.bar.s-retried,.bar.s-unfinished{background:repeating-linear-gradient(135deg,var(--c) 0 5px,
color-mix(in srgb,var(--c) 70%,#fff) 5px 10px);color:var(--fg)}
.bar.s-skipped,.bar.s-cancelled{color:var(--fg)}
.bar.critical{box-shadow:0 0 0 2px var(--fg);z-index:3;font-weight:600}
.bar:hover,.bar:focus{filter:brightness(1.08);outline:none;box-shadow:0 0 0 2px var(--accent);z-index:4}
.bar.faded{opacity:.18}
.tip{position:fixed;z-index:10;background:var(--fg);color:#fff;border-radius:6px;padding:7px 10px;font-size:12px;
max-width:420px;pointer-events:none;box-shadow:0 4px 14px rgba(0,0,0,.2);line-height:1.45}
.tip b{display:block;font-size:12.5px;word-break:break-all}
.tip .dim{color:#afb8c1}
.filters{display:flex;align-items:center;gap:6px;flex-wrap:wrap}
.filter{display:inline-flex;align-items:center;gap:6px;border:1px solid var(--line);border-radius:20px;
padding:3px 10px 3px 6px;cursor:pointer;user-select:none;font-size:12.5px}
.filter input{margin:0}
.filter:has(input:not(:checked)){opacity:.5}
#task-search{margin-left:8px;padding:4px 8px;border:1px solid var(--line);border-radius:6px;font:inherit;width:180px}
#shown{color:var(--muted);font-size:12.5px;margin-left:4px}
table{width:100%;border-collapse:collapse;border:1px solid var(--line);border-radius:8px}
th:first-child,td:first-child{width:1%}
th{text-align:left;font-size:12px;color:var(--muted);font-weight:600;padding:8px 10px;background:var(--soft);
border-bottom:1px solid var(--line);white-space:nowrap}
th[data-sort]{cursor:pointer;user-select:none}
th[aria-sort=ascending]::after{content:" \\25B2";font-size:9px}
th[aria-sort=descending]::after{content:" \\25BC";font-size:9px}
td{padding:7px 10px;vertical-align:top;border-top:1px solid #eaeef2}
.num{width:1%;padding-left:22px;text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
tr.output td{border-top:0;padding-top:0}
.id code{word-break:break-all}
.why{color:var(--muted);word-break:break-word}
.where{color:var(--muted);font-size:12px;margin-top:2px}
.where code{word-break:break-all}
.badge{display:inline-block;min-width:74px;text-align:center;font-size:11.5px;font-weight:600;color:#fff;
background:var(--c);border-radius:12px;padding:1px 8px}
.badge.s-skipped,.badge.s-cancelled,.badge.s-flaky{color:var(--fg)}
.on-path{font-size:10.5px;border:1px solid var(--fg);border-radius:10px;padding:0 6px;margin-left:6px;
white-space:nowrap}
.datum{margin-right:10px;white-space:nowrap}
.datum code{color:var(--fg)}
tbody.flash td{background:#fff8c5}
details.output summary{cursor:pointer;color:var(--muted);font-size:12.5px}
.stream{margin-top:6px}
.stream-name{font-size:11.5px;color:var(--muted);font-weight:600;text-transform:uppercase;letter-spacing:.04em}
.stream-name .cut{font-weight:400;text-transform:none;letter-spacing:0;margin-left:8px}
.stream pre{margin:3px 0 0;padding:8px 10px;background:var(--soft);border:1px solid var(--line);border-radius:6px;
max-height:360px;overflow:auto;white-space:pre-wrap;word-break:break-all}
.s-stderr pre,.s-traceback pre{border-left:3px solid var(--failed)}
.empty{color:var(--muted)}
"""

# Plain script: no library, nothing fetched. Text from the data goes in with textContent only.
_JS = """
(() => {
  "use strict";
  const data = JSON.parse(document.getElementById("phalanx-data").textContent);
  const bars = Array.from(document.querySelectorAll(".bar"));
  const groups = Array.from(document.querySelectorAll("tbody.task-group"));
  const filters = Array.from(document.querySelectorAll("input.status-filter"));
  const search = document.getElementById("task-search");
  const shown = document.getElementById("shown");
  const seconds = (s) => s < 1 ? s.toFixed(3) + "s" : s < 60 ? s.toFixed(2) + "s"
    : Math.floor(s / 60) + "m" + String(Math.round(s % 60)).padStart(2, "0") + "s";

  function apply() {
    const on = new Set(filters.filter((f) => f.checked).map((f) => f.value));
    const needle = search ? search.value.trim().toLowerCase() : "";
    const visible = new Set();
    for (const group of groups) {
      const show = on.has(group.dataset.status) && (!needle || group.dataset.task.toLowerCase().includes(needle));
      group.hidden = !show;
      if (show) visible.add(group.dataset.task);
    }
    if (shown) shown.textContent = visible.size + " of " + groups.length;
    for (const bar of bars) bar.classList.toggle("faded", groups.length > 0 && !visible.has(bar.dataset.task));
  }
  filters.forEach((f) => f.addEventListener("change", apply));
  if (search) search.addEventListener("input", apply);

  const tip = document.createElement("div");
  tip.className = "tip";
  tip.hidden = true;
  document.body.appendChild(tip);
  function line(text, cls) {
    const el = document.createElement(cls === "b" ? "b" : "div");
    if (cls && cls !== "b") el.className = cls;
    el.textContent = text;
    tip.appendChild(el);
  }
  function showTip(bar, x, y) {
    const a = data.attempts[Number(bar.dataset.index)];
    if (!a) return;
    tip.replaceChildren();
    line(a.task, "b");
    line("attempt " + a.attempt + " \\u00b7 " + a.status.replace("_", " ") + " \\u00b7 slot " + a.slot);
    if (a.worker_address) line("on " + a.worker_address, "dim");
    line(seconds(a.end - a.start) + "  (" + seconds(a.start) + " \\u2192 " + seconds(a.end) + ")", "dim");
    if (a.reason) line(a.reason, "dim");
    if (data.critical_path.includes(a.task) && bar.classList.contains("critical")) line("on the critical path", "dim");
    tip.hidden = false;
    const w = tip.offsetWidth, h = tip.offsetHeight;
    tip.style.left = Math.max(4, Math.min(x + 12, window.innerWidth - w - 4)) + "px";
    tip.style.top = (y + 16 + h > window.innerHeight ? y - h - 10 : y + 16) + "px";
  }
  for (const bar of bars) {
    bar.removeAttribute("title");  // the script's tooltip replaces the browser's
    bar.addEventListener("mousemove", (e) => showTip(bar, e.clientX, e.clientY));
    bar.addEventListener("mouseleave", () => { tip.hidden = true; });
    bar.addEventListener("focus", () => {
      const r = bar.getBoundingClientRect();
      showTip(bar, r.left, r.bottom - 16);
    });
    bar.addEventListener("blur", () => { tip.hidden = true; });
    const go = () => {
      const group = groups.find((g) => g.dataset.task === bar.dataset.task);
      if (!group) return;
      if (group.hidden) {
        filters.forEach((f) => { if (f.value === group.dataset.status) f.checked = true; });
        if (search) search.value = "";
        apply();
      }
      const details = group.querySelector("details");
      if (details) details.open = true;
      group.scrollIntoView({behavior: "smooth", block: "center"});
      group.classList.remove("flash");
      void group.offsetWidth;
      group.classList.add("flash");
      setTimeout(() => group.classList.remove("flash"), 1500);
    };
    bar.addEventListener("click", go);
    bar.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); go(); } });
  }

  const tbodyParent = groups.length ? groups[0].parentNode : null;
  const keys = {
    task: (g) => g.dataset.task, status: (g) => Number(g.dataset.rank), attempts: (g) => Number(g.dataset.attempts),
    slot: (g) => Number(g.dataset.slot), start: (g) => Number(g.dataset.start),
    duration: (g) => Number(g.dataset.duration),
  };
  for (const th of document.querySelectorAll("th[data-sort]")) {
    th.addEventListener("click", () => {
      const key = keys[th.dataset.sort];
      const dir = th.getAttribute("aria-sort") === "ascending" ? -1 : 1;
      document.querySelectorAll("th[data-sort]").forEach((h) => h.removeAttribute("aria-sort"));
      th.setAttribute("aria-sort", dir > 0 ? "ascending" : "descending");
      const sorted = groups.slice().sort((a, b) => {
        const x = key(a), y = key(b);
        const c = x < y ? -1 : x > y ? 1 : 0;
        return c * dir || Number(a.dataset.order) - Number(b.dataset.order);
      });
      for (const g of sorted) tbodyParent.appendChild(g);
    });
  }
  apply();
})();
"""
