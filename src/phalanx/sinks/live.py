"""Progress while `phalanx run` goes on: a live area on a terminal, plain lines elsewhere.

`LiveView` (stdout is a terminal) keeps a rich ``Live`` area at the bottom of the screen:
an overall bar with the done count, the time so far and an estimate of the time left; the
tasks by status; once the number of tasks at once has changed (``-j auto``, ``--load``,
``--memfree``), a line with the count in force and why (``workers 3/8: 1.2 of 2 CPUs idle``);
with ``show_workers`` a line per slot (its task and how long it has run; a slot above the
count in force, idle, as ``off``); and, once any occurred, a line on the rate limits
(pauses, adaptive windows). Failures are
printed *above* the area as they happen, each in one block with its output, in exactly the
words of `ConsoleReporter` (composed, not copied).

Task output is never garbled: it goes to the terminal only through ``console.print``, one
whole block per task, from the loop (never from a thread of rich's own: the area is redrawn
by a timer on the event loop, and there is no refresh thread). Each block is decoded with
``Text.from_ansi``, so what a task wrote can keep its colours but cannot move the cursor or
return the carriage into the area (``\\r`` progress output becomes separate lines).

`ProgressLines` (stdout is not a terminal: CI logs, pipes) writes a line to stderr at most
every ``interval`` seconds of the run, timed by the events themselves (no thread: a line is
written when an event arrives and ``interval`` has passed since the last one), and a final
line when the run finishes. The grammar, which `LINE_PATTERN` matches::

    line     = "phalanx: progress " done "/" total " done (" counts "), " N " running, eta " eta [workers]
             | "phalanx: finished " done "/" total " done (" counts ") in " duration
    workers  = ", workers " N "/" N       (the count in force / the most: once it has changed)
    counts   = N " succeeded, " N " failed, " N " skipped"
    eta      = duration | "unknown"
    duration = N "s" | N "m" NN "s" | N "h" NN "m" NN "s"        (whole seconds; an eta rounds up)

``failed`` counts tasks that failed, timed out or crashed; ``skipped`` those skipped after a
failed dependency or cancelled (fail-fast, halt, a signal). ``total`` may grow in a run that
takes tasks while it goes on.

Both honour ``NO_COLOR`` (``colour`` None decides as `wants_colour`; `ProgressLines` is never
coloured) and ``quiet``: the live view then draws no area, prints only the failures and the
final state; progress lines print nothing at all.
"""

from __future__ import annotations

import asyncio
import io
import math
import re
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, TextIO, cast

from ..events import (
    ConcurrencyChanged,
    Event,
    RateLimitPaused,
    RunCancelling,
    RunFinished,
    RunStarted,
    TaskFinished,
    TaskRetrying,
    TaskStarted,
    WorkersChanged,
)
from ..results import CancelReason, Status
from .console import ConsoleReporter, OutputMode, wants_colour

if TYPE_CHECKING:
    from rich.console import Console, ConsoleOptions, RenderableType, RenderResult
    from rich.live import Live
    from rich.text import Text

#: An estimate of the seconds left, or None when there is none yet.
Eta = Callable[[], float | None]

#: Matches every line `ProgressLines` writes; the groups are named as in the grammar.
LINE_PATTERN = re.compile(
    r"phalanx: (?P<kind>progress|finished) (?P<done>\d+)/(?P<total>\d+) done "
    r"\((?P<succeeded>\d+) succeeded, (?P<failed>\d+) failed, (?P<skipped>\d+) skipped\)"
    r"(?:, (?P<running>\d+) running, eta (?P<eta>unknown|[0-9hms]+)"
    r"(?:, workers (?P<workers>\d+)/(?P<max_workers>\d+))?| in (?P<took>[0-9hms]+))"
)

# The terminal statuses as the progress counts group them: a "failure" is what a user must
# look at (and what the live view prints); skipped and cancelled tasks are fallout of one.
_FAILED = frozenset({Status.FAILED, Status.TIMED_OUT, Status.CRASHED})
_SKIPPED = frozenset({Status.SKIPPED, Status.CANCELLED})


def span(seconds: float, *, round_up: bool = False) -> str:
    """Whole seconds as ``35s``, ``2m05s`` or ``1h02m03s`` (the grammar's ``duration``).

    ``round_up`` for an estimate of the time left: it says ``1s`` until the end, never ``0s``.
    """
    total = max(0, math.ceil(seconds) if round_up else round(seconds))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m{secs:02d}s"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def _elapsed(seconds: float) -> str:
    """A running time in the live area: tenths under a minute, so a fresh task visibly ticks."""
    return f"{max(0.0, seconds):.1f}s" if seconds < 60 else span(seconds)


@dataclass(slots=True)
class _Attempt:
    task_id: str
    attempt: int
    worker: int
    at: float


@dataclass(slots=True)
class _Limit:
    """What the run has heard about one (rate limit, key)."""

    window: int | None = None
    pauses: int = 0
    paused_until: float = 0.0


class _Tally:
    """The run's state as both sinks show it, kept from the events alone.

    ``expected``: estimated seconds of the run's tasks (declared costs, else the duration
    history), for the ETA; a task not in it counts as the mean of those that are.
    """

    def __init__(self, expected: Mapping[str, float] | None = None) -> None:
        self._expected = dict(expected) if expected else {}
        # The expected seconds of the tasks with an estimate that have not started yet.
        self._unstarted = dict(self._expected)
        self._unstarted_seconds = math.fsum(self._expected.values())
        self.total = 0
        self.slots = 1
        self.workers: int | None = None  # the count in force, once it has changed (-j auto, --load, --memfree)
        self.workers_reason = ""
        self.succeeded = 0
        self.failed = 0
        self.skipped = 0
        self.running: dict[str, _Attempt] = {}
        self.limits: dict[tuple[str, str], _Limit] = {}
        self.stopping: CancelReason | None = None
        self.started = False
        self.finished_at: float | None = None
        self._busy = 0.0  # slot time of the tasks that ran and ended, all attempts
        self._ran = 0

    @property
    def done(self) -> int:
        return self.succeeded + self.failed + self.skipped

    @property
    def in_force(self) -> int:
        """The slots tasks may use now: the run's, or fewer while ``-j auto`` or a throttle says so."""
        return self.workers if self.workers is not None else self.slots

    @property
    def waiting(self) -> int:
        return max(0, self.total - self.done - len(self.running))

    def update(self, event: Event) -> None:
        if isinstance(event, RunStarted):
            self.started = True
            self.total = event.total
            self.slots = max(1, event.max_workers)
        elif isinstance(event, TaskStarted):
            self.running[event.task_id] = _Attempt(event.task_id, event.attempt, event.worker, event.at)
            self._leave_unstarted(event.task_id)
        elif isinstance(event, TaskRetrying):
            self.running.pop(event.task_id, None)  # the attempt ended; the task waits for its next one
        elif isinstance(event, TaskFinished):
            self.running.pop(event.task_id, None)
            self._leave_unstarted(event.task_id)  # a skipped task never started
            result = event.result
            if result.status is Status.SUCCEEDED:
                self.succeeded += 1
            elif result.status in _FAILED:
                self.failed += 1
            else:
                self.skipped += 1
            if result.attempts:
                self._ran += 1
                self._busy += result.busy_time or result.duration
        elif isinstance(event, RunCancelling):
            self.stopping = event.reason
        elif isinstance(event, RunFinished):
            self.finished_at = event.at
            self.running.clear()
        elif isinstance(event, RateLimitPaused):
            limit = self.limits.setdefault((event.limiter, event.key), _Limit())
            limit.pauses += 1
            limit.paused_until = max(limit.paused_until, event.at + event.seconds)
        elif isinstance(event, ConcurrencyChanged):
            self.limits.setdefault((event.limiter, event.key), _Limit()).window = event.window
        elif isinstance(event, WorkersChanged):
            self.workers = event.workers
            self.workers_reason = event.reason
        # A run that takes tasks while it goes on (an Executor) may outgrow its first total.
        self.total = max(self.total, self.done + len(self.running))

    def _leave_unstarted(self, task_id: str) -> None:
        seconds = self._unstarted.pop(task_id, None)
        if seconds is not None:
            self._unstarted_seconds -= seconds

    def eta(self, now: float) -> float | None:
        """An estimate of the seconds left at ``now`` (seconds since the run started).

        With estimates (``expected``): the work left (tasks not started at their estimate,
        running ones at what is left of theirs) spread over the slots it can use, and never
        less than the longest running task still needs. Without: tasks not done x the mean
        slot time of those done so far / the slots they can use (running tasks count whole,
        a slight overestimate). Either way fewer tasks left than slots use only as many
        slots, so the last few are not promised at a fraction of their time.
        """
        remaining = self.total - self.done
        if remaining <= 0:
            return 0.0 if self.started else None
        if self._expected:
            return self._eta_from_estimates(now, remaining)
        if not self._ran:
            return None
        return remaining * (self._busy / self._ran) / min(self.in_force, remaining)

    def _eta_from_estimates(self, now: float, remaining: int) -> float:
        # A task with no estimate of its own: as the mean of the ones that have one.
        mean = math.fsum(self._expected.values()) / len(self._expected)
        unknown = max(0, remaining - len(self.running) - len(self._unstarted))
        work = self._unstarted_seconds + unknown * mean
        longest = 0.0
        for attempt in self.running.values():
            # A task past its estimate is taken to end soon: nothing better is known.
            left = max(0.0, self._expected.get(attempt.task_id, mean) - (now - attempt.at))
            work += left
            longest = max(longest, left)
        return max(longest, work / min(self.in_force, remaining))

    def counts_text(self) -> str:
        return f"{self.succeeded} succeeded, {self.failed} failed, {self.skipped} skipped"


# --------------------------------------------------------------------------- live view


def live_console(stream: TextIO | None = None, colour: bool | None = None) -> Console:
    """A rich console on ``stream`` (default stdout) for a `LiveView`.

    ``colour`` True or False as ``--color`` decided it (True wins over ``NO_COLOR``, as the
    flag does); None leaves it to rich, which reads ``NO_COLOR`` and ``FORCE_COLOR``.
    """
    from rich.console import Console

    file = sys.stdout if stream is None else stream
    if colour is None:
        return Console(file=file)
    # The 16 standard colours, as the console reporter uses: every colour terminal shows them.
    return Console(file=file, no_color=not colour, color_system="standard" if colour else None)


class LiveView:
    """`phalanx run` on a terminal: a live progress area, failures printed above it.

    Args:
        console: where to draw (default: `live_console` on stdout with ``colour``).
        output: ``--output``, for the blocks printed above the area: as `ConsoleReporter`
            shows a task's output. A task that failed (failed, timed out, crashed) is printed
            when it ends; with ``always`` a succeeded one too. Retries get their line too.
        colour: True or False as ``--color`` decided; None asks `wants_colour` about the
            console's stream (so ``NO_COLOR`` turns it off). Off means no styles at all, and
            the colours in tasks' own output are dropped too.
        show_workers: a line per slot with its task and running time.
        quiet: no live area, no retries, no successes: only failures as they happen and the
            final state.
        expected: each task's estimated seconds (declared costs, else the duration history),
            for the ETA; without, the ETA is tasks not done x mean duration so far / slots.
        eta: an estimate of the seconds left, overriding both.
        clock: seconds since the run started, as the events' ``at`` (for tests); default:
            the event loop's time (virtual or not) from `RunStarted` on.
        refresh_per_second: how often the loop redraws the area, so running times tick between
            events; 0: only when a block is printed and on `refresh`.
    """

    def __init__(
        self,
        console: Console | None = None,
        *,
        output: OutputMode = "on-failure",
        colour: bool | None = None,
        show_workers: bool = False,
        quiet: bool = False,
        expected: Mapping[str, float] | None = None,
        eta: Eta | None = None,
        clock: Callable[[], float] | None = None,
        refresh_per_second: float = 4.0,
        failing_tests: Callable[[str], Sequence[str]] | None = None,
    ) -> None:
        self._console = live_console(None, colour) if console is None else console
        self._colour = wants_colour(None, cast(TextIO, self._console.file)) if colour is None else colour
        self._output = output
        self._show_workers = show_workers
        self._quiet = quiet
        self._eta = eta
        self._clock = clock
        self._period = 1.0 / refresh_per_second if refresh_per_second > 0 else 0.0
        self._tally = _Tally(expected)
        # The reporter writes its lines to this buffer; each block is taken whole from it.
        self._buffer = io.StringIO()
        self._lines = ConsoleReporter(self._buffer, output=output, colour=self._colour, failing_tests=failing_tests)
        self._live: Live | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._closed = False

    # ------------------------------------------------------------------ the sink

    def handle(self, event: Event) -> None:
        if self._closed:
            return
        self._tally.update(event)
        if isinstance(event, RunStarted):
            self._start_clock(event.at)
            if not self._quiet:
                self._start_live()
        elif isinstance(event, TaskFinished | TaskRetrying) and self._prints(event):
            self._print_block(event)
        elif isinstance(event, RunFinished):
            self._finish()

    def close(self) -> None:
        """Stop drawing and leave the last state on the screen (idempotent; also after a crash)."""
        if not self._closed:
            self._finish()

    def refresh(self) -> None:
        """Redraw the live area now (nothing when it is not drawn)."""
        if self._live is not None:
            self._live.refresh()

    def render(self) -> RenderableType:
        """The live area as it stands: bar, counts, slots (``show_workers``), limits."""
        from rich.console import Group

        lines: list[RenderableType] = [self._bar_line(), self._counts_line()]
        workers = self._workers_line()
        if workers is not None:
            lines.append(workers)
        if self._show_workers and self._tally.finished_at is None:
            room = self._console.height - 3 - (workers is not None)  # bar, counts, workers, a spare
            lines.extend(self._worker_lines(room=room))
        status = self._status_line()
        if status is not None:
            lines.append(status)
        return Group(*lines)

    # ------------------------------------------------------------------ lifecycle

    def _start_clock(self, at: float) -> None:
        if self._clock is not None:
            return
        try:
            loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        # The scheduler's times are its loop's time since the start; read the same clock
        # (a virtual one under a fake clock), or the monotonic one it defaults to.
        now: Callable[[], float] = loop.time if loop is not None else time.monotonic
        origin = now() - at
        self._clock = lambda: now() - origin

    def _now(self) -> float:
        if self._tally.finished_at is not None:
            return self._tally.finished_at
        return self._clock() if self._clock is not None else 0.0

    def _start_live(self) -> None:
        from rich.live import Live

        self._live = Live(
            _Area(self),
            console=self._console,
            auto_refresh=False,  # no thread: every redraw is on the loop, so none can split a block
            transient=False,
            redirect_stdout=False,
            redirect_stderr=False,
            vertical_overflow="ellipsis",
        )
        self._live.start(refresh=True)
        self._schedule_tick()

    def _schedule_tick(self) -> None:
        if not self._period:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # events fed by hand (tests): redrawn on `refresh` and with each block
        self._timer = loop.call_later(self._period, self._tick)

    def _tick(self) -> None:
        self._timer = None
        if self._live is not None:
            self._live.refresh()
            self._schedule_tick()

    def _finish(self) -> None:
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._live is not None:
            live, self._live = self._live, None
            live.stop()  # draws the final state once more (no slots) and shows the cursor again
        elif self._tally.started:
            self._console.print(self.render())  # quiet: the final state, once

    # ------------------------------------------------------------------ blocks above the area

    def _prints(self, event: TaskFinished | TaskRetrying) -> bool:
        if isinstance(event, TaskRetrying):
            return not self._quiet
        status = event.result.status
        if status is Status.SUCCEEDED and event.result.note is not None and not self._quiet:
            return True  # its line says what max_output cut
        return status in _FAILED or (status is Status.SUCCEEDED and self._output == "always" and not self._quiet)

    def _print_block(self, event: TaskFinished | TaskRetrying) -> None:
        """The reporter's words for the event, printed above the area in one piece."""
        from rich.text import Text

        self._lines.handle(event)
        block = self._buffer.getvalue()
        self._buffer.seek(0)
        self._buffer.truncate()
        if not block:
            return
        # from_ansi keeps the reporter's colours (and a task's own) as styles and drops every
        # other control sequence, so nothing a task printed can move the cursor into the area.
        block = block.removesuffix("\n")  # the print ends the line
        text = Text.from_ansi(block) if self._colour else Text(Text.from_ansi(block).plain)
        # One print: rich erases the area, writes the block, draws the area again below it.
        # soft_wrap: long lines are left to the terminal to wrap, not cut into new lines.
        self._console.print(text, soft_wrap=True)

    # ------------------------------------------------------------------ the area

    def _style(self, style: str) -> str:
        return style if self._colour else ""

    def _bar_line(self) -> Text:
        from rich.text import Text

        tally = self._tally
        now = self._now()
        right = f" {tally.done}/{tally.total}  {_elapsed(now)}"
        if tally.finished_at is None:
            eta = self._eta() if self._eta is not None else tally.eta(now)
            if eta is not None:
                right += f"  eta {span(eta, round_up=True)}"
        line = Text("phalanx ", style=self._style("bold"))
        width = self._console.width - len(line) - len(right)
        if width >= 10:
            self._append_bar(line, width)
        else:
            line.rstrip()
        line.append(right)
        return line

    def _append_bar(self, line: Text, width: int) -> None:
        """A bar split by status: succeeded, failed, skipped, then what is left."""
        tally = self._tally
        # Coloured cells only where colour shows: one glyph for every status would read as nothing.
        colour = self._colour and self._console.color_system is not None and not self._console.no_color
        done, todo = ("━", "━") if colour else ("█", "░")
        if self._console.options.ascii_only:
            done, todo = ("-", "-") if colour else ("#", "-")
        total = max(1, tally.total)
        edge = 0
        cumulative = 0
        for count, style in ((tally.succeeded, "green"), (tally.failed, "red"), (tally.skipped, "yellow")):
            cumulative += count
            end = width * cumulative // total  # floors of running sums: the cells add up exactly
            line.append(done * (end - edge), style=self._style(style))
            edge = end
        line.append(todo * (width - edge), style=self._style("bright_black"))

    def _counts_line(self) -> Text:
        from rich.text import Text

        tally = self._tally
        parts = [
            (tally.succeeded, "succeeded", "green"),
            (tally.failed, "failed", "bold red"),
            (tally.skipped, "skipped", "yellow"),
        ]
        if tally.finished_at is None:
            parts += [(len(tally.running), "running", "cyan"), (tally.waiting, "waiting", "")]
        line = Text("  ")
        for index, (count, word, style) in enumerate(parts):
            if index:
                line.append(", ")
            line.append(f"{count} {word}", style=self._style(style if count else "dim"))
        return line

    def _workers_line(self) -> Text | None:
        """The number of tasks at once in force and why, once it has changed; None before."""
        from rich.text import Text

        tally = self._tally
        if tally.workers is None or tally.finished_at is not None:
            return None
        line = Text(f"  workers {tally.workers}/{tally.slots}", style=self._style("cyan"), overflow="ellipsis",
                    no_wrap=True)
        if tally.workers_reason:
            line.append(f": {tally.workers_reason}", style=self._style("dim"))
        return line

    def _worker_lines(self, room: int) -> list[RenderableType]:
        """A row per slot (its task, how long it has run); those holding no slot as ``-``.

        When the slots do not fit the terminal, only busy ones are listed, and past that a
        count of the rest, so the area never scrolls (a scrolled area cannot be redrawn).
        """
        from rich.table import Table
        from rich.text import Text

        tally = self._tally
        now = self._now()
        by_slot = {a.worker: a for a in tally.running.values() if a.worker > 0}
        slotless = sorted((a for a in tally.running.values() if a.worker <= 0), key=lambda a: a.at)
        rows: list[tuple[str, _Attempt | None]] = [(str(n), by_slot.get(n)) for n in range(1, tally.slots + 1)]
        rows += [(str(a.worker), a) for a in by_slot.values() if a.worker > tally.slots]
        rows += [("-", a) for a in slotless]
        room = max(1, room - (1 if tally.limits or tally.stopping else 0))
        more = 0
        if len(rows) > room:
            rows = [row for row in rows if row[1] is not None]
        if len(rows) > room:
            more = len(rows) - (room - 1)
            rows = rows[: room - 1]
        table = Table.grid(padding=(0, 2), expand=True)
        table.add_column(justify="right", no_wrap=True)
        table.add_column(ratio=1, no_wrap=True, overflow="ellipsis")
        table.add_column(justify="right", no_wrap=True)
        in_force = tally.in_force
        for slot, attempt in rows:
            label = Text(f"  slot {slot}", style=self._style("dim"))
            if attempt is None:
                # A slot above the count in force takes no task until the count grows again.
                idle = "off" if slot.isdigit() and int(slot) > in_force else "idle"
                table.add_row(label, Text(idle, style=self._style("dim")), "")
                continue
            task = Text(attempt.task_id)
            if attempt.attempt > 1:
                task.append(f" (attempt {attempt.attempt})", style=self._style("magenta"))
            table.add_row(label, task, _elapsed(now - attempt.at))
        lines: list[RenderableType] = [table]
        if more:
            lines.append(Text(f"  … and {more} more running", style=self._style("dim")))
        return lines

    def _status_line(self) -> Text | None:
        """Why the run may be slower than its slots allow (rate limits) or is stopping."""
        from rich.text import Text

        tally = self._tally
        if not tally.limits and tally.stopping is None:
            return None
        line = Text(overflow="ellipsis", no_wrap=True)
        if tally.stopping is not None and tally.finished_at is None:
            line.append(f"  stopping: {tally.stopping.label}", style=self._style("bold red"))
        if tally.limits:
            now = self._now()
            described = []
            for (name, key), limit in tally.limits.items():
                parts = []
                if limit.window is not None:
                    parts.append(f"window {limit.window}")
                if limit.paused_until > now and tally.finished_at is None:
                    parts.append(f"paused ({span(limit.paused_until - now, round_up=True)} left)")
                elif limit.pauses:
                    parts.append(f"paused {limit.pauses}x")
                label = f"{name}[{key}]" if key else name
                described.append(f"{label} " + ", ".join(parts))
            line.append("  limits: " + "; ".join(described), style=self._style("yellow"))
        return line


class _Area:
    """The live area as rich draws it: rendered afresh at every draw.

    Rich keeps the renderable it was last given and draws it again below each printed block;
    a fixed snapshot would show the state of the last tick there, this shows the current one.
    """

    def __init__(self, view: LiveView) -> None:
        self._view = view

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        yield self._view.render()


# --------------------------------------------------------------------------- plain lines


class ProgressLines:
    """Progress as plain lines on stderr when stdout is not a terminal (grammar: module doc).

    Args:
        stream: where the lines go (default: stderr).
        interval: the least time between two progress lines, in seconds of the run.
        quiet: write nothing at all.
        expected: each task's estimated seconds, for the ETA, as `LiveView`'s.
        eta: an estimate of the seconds left, overriding ``expected``.
    """

    def __init__(
        self,
        stream: TextIO | None = None,
        *,
        interval: float = 5.0,
        quiet: bool = False,
        expected: Mapping[str, float] | None = None,
        eta: Eta | None = None,
    ) -> None:
        self._stream = sys.stderr if stream is None else stream
        self._interval = interval
        self._quiet = quiet
        self._eta = eta
        self._tally = _Tally(expected)
        self._last = 0.0  # when the last line was written (the run's start before any)
        self._done = False
        self._wrote = False

    def handle(self, event: Event) -> None:
        if self._done:
            return
        self._tally.update(event)
        if self._quiet:
            return
        if isinstance(event, RunFinished):
            self._done = True
            if self._wrote:  # a run shorter than one interval needs no closing line: the summary says it all
                self._write(f"finished {self._head()} in {span(event.at)}")
        elif not isinstance(event, RunStarted) and event.at - self._last >= self._interval:
            self._last = event.at
            eta = self._eta() if self._eta is not None else self._tally.eta(event.at)
            estimate = "unknown" if eta is None else span(eta, round_up=True)
            workers = "" if self._tally.workers is None else f", workers {self._tally.workers}/{self._tally.slots}"
            self._write(f"progress {self._head()}, {len(self._tally.running)} running, eta {estimate}{workers}")

    def _head(self) -> str:
        tally = self._tally
        return f"{tally.done}/{tally.total} done ({tally.counts_text()})"

    def _write(self, text: str) -> None:
        self._wrote = True
        self._stream.write(f"phalanx: {text}\n")
        self._stream.flush()  # a log read while the run goes on shows each line as it comes

    def close(self) -> None:
        self._done = True
        self._stream.flush()
