"""``--bar``: a progress bar on stderr, drawn by rich, advanced as jobs end."""

from __future__ import annotations

from typing import Any

from ..events import Event, RunFinished, TaskFinished
from ..results import Status


class ProgressBar:
    """Jobs done out of the total, failures counted, an estimate of the time left."""

    def __init__(self, total: int) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self._progress = Progress(
            TextColumn("[bold]phalanx"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[failed]} failed"),
            TimeRemainingColumn(),
            console=Console(stderr=True),
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
