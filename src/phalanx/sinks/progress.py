"""``--bar``: a progress bar on stderr, drawn by rich, advanced as jobs end."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..events import Event, RunFinished, TaskFinished
from ..results import Status

if TYPE_CHECKING:
    from rich.console import Console


class ProgressBar:
    """Jobs done out of the total, failures counted, an estimate of the time left."""

    def __init__(self, total: int, *, colour: bool | None = None) -> None:
        """``colour``: True or False as ``--color always|never`` decided it; None leaves it
        to rich, which reads ``NO_COLOR`` and ``FORCE_COLOR`` and asks the terminal."""
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self._progress = Progress(
            TextColumn("[bold]phalanx"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[failed]} failed"),
            TimeRemainingColumn(),
            console=_console(colour),
            transient=False,
        )
        self._task: Any = self._progress.add_task("jobs", total=total, failed=0)
        self._failed = 0
        self._progress.start()

    def handle(self, event: Event) -> None:
        if isinstance(event, TaskFinished):
            if event.result.status not in (Status.SUCCEEDED, Status.SKIPPED):
                self._failed += 1
            self._progress.update(self._task, advance=1, failed=self._failed)
        elif isinstance(event, RunFinished):
            self._progress.stop()

    def close(self) -> None:
        self._progress.stop()


def _console(colour: bool | None) -> Console:
    from rich.console import Console

    if colour is None:
        return Console(stderr=True)
    if colour:
        return Console(stderr=True, force_terminal=True, no_color=False, color_system="standard")
    return Console(stderr=True, no_color=True, color_system=None)
