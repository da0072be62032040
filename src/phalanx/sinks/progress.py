"""``--bar``: a progress bar on stderr, drawn by rich, advanced as jobs end.

When the number of jobs at once may change (``-j auto``, ``--load``, ``--memfree``), the bar
shows the count in force (``workers 3/8``) from the `WorkersChanged` events.

Jobs' output is written to the same terminal as raw bytes (not through rich), so the
output sink wraps each write in `ProgressBar.suspended`: the bar's line is cleared first
and the bar drawn again after, below the output, never glued to it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from ..events import Event, RunFinished, RunStarted, TaskFinished, WorkersChanged
from ..results import Status

if TYPE_CHECKING:
    from rich.console import Console


class ProgressBar:
    """Jobs done out of the total, failures counted, an estimate of the time left."""

    def __init__(self, total: int, *, colour: bool | None = None, workers: bool = False) -> None:
        """``colour``: True or False as ``--color always|never`` decided it; None leaves it
        to rich, which reads ``NO_COLOR`` and ``FORCE_COLOR`` and asks the terminal.
        ``workers``: show the number of jobs at once in force (it may change)."""
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        counts = [TextColumn("{task.fields[workers]}")] if workers else []
        self._progress = Progress(
            TextColumn("[bold]phalanx"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[failed]} failed"),
            *counts,
            TimeRemainingColumn(),
            console=_console(colour),
            transient=False,
            # Drawn when a job ends and after job output, never from a thread of rich's own,
            # so a redraw cannot land in the middle of a job's output.
            auto_refresh=False,
        )
        self._task: Any = self._progress.add_task("jobs", total=total, failed=0, workers="")
        self._max_workers = 0
        self._failed = 0
        self._stopped = False
        self._progress.start()
        self._progress.refresh()

    @property
    def _on_terminal(self) -> bool:
        """Whether the bar is drawn (and redrawn in place) on a terminal, as rich's Live decides it."""
        console = self._progress.console
        return console.is_terminal and not console.is_dumb_terminal

    def clear(self) -> None:
        """Erase the bar's line and leave the cursor at its start (nothing off a terminal)."""
        if self._stopped or not self._on_terminal:
            return
        file = self._progress.console.file
        file.write("\r\x1b[2K")
        file.flush()

    def redraw(self) -> None:
        if not self._stopped:
            self._progress.refresh()

    @contextmanager
    def suspended(self) -> Iterator[None]:
        """Around a write of job output to the terminal: the bar cleared before, redrawn after."""
        self.clear()
        try:
            yield
        finally:
            self.redraw()

    def handle(self, event: Event) -> None:
        if isinstance(event, TaskFinished):
            if event.result.status not in (Status.SUCCEEDED, Status.SKIPPED):
                self._failed += 1
            self._progress.update(self._task, advance=1, failed=self._failed)
            self.redraw()
        elif isinstance(event, RunStarted):
            self._max_workers = event.max_workers
        elif isinstance(event, WorkersChanged):
            self._progress.update(self._task, workers=f"workers {event.workers}/{self._max_workers}")
            self.redraw()
        elif isinstance(event, RunFinished):
            self.close()

    def close(self) -> None:
        self._stopped = True
        self._progress.stop()


def _console(colour: bool | None) -> Console:
    from rich.console import Console

    if colour is None:
        return Console(stderr=True)
    if colour:
        return Console(stderr=True, force_terminal=True, no_color=False, color_system="standard")
    return Console(stderr=True, no_color=True, color_system=None)
