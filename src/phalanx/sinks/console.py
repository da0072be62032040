"""The console reporter: a line per finished task, its output grouped beneath it.

Output is never interleaved: a task's stdout and stderr are captured to files while it
runs and copied here in one block when it ends (``--output on-failure|always|never``).
"""

from __future__ import annotations

import shutil
from typing import Literal, TextIO

from ..durations import format_duration
from ..events import Event, TaskFinished, TaskRetrying
from ..render import task_line
from ..results import TaskResult

OutputMode = Literal["on-failure", "always", "never"]

_COLOURS = {"PASS": "green", "FLAKY": "yellow", "SKIP": "yellow", "CANCEL": "yellow", "RETRY": "magenta"}


class ConsoleReporter:
    """Writes task lines and grouped output to a text stream."""

    def __init__(self, stream: TextIO, *, output: OutputMode = "on-failure", colour: bool | None = None) -> None:
        self._stream = stream
        self._output = output
        self._colour = stream.isatty() if colour is None else colour

    def _style(self, line: str) -> str:
        if not self._colour:
            return line
        import click

        label = line.split()[0] if line.strip() else ""
        return click.style(line, fg=_COLOURS.get(label, "red"), bold=label not in _COLOURS)

    def handle(self, event: Event) -> None:
        if isinstance(event, TaskRetrying):
            next_in = f", retrying in {format_duration(event.delay)}" if event.delay > 0 else ", retrying"
            line = f"{'RETRY':>8} {'':10} {event.task_id}  attempt {event.attempt} {event.reason}{next_in}"
            self._stream.write(self._style(line) + "\n")
        elif isinstance(event, TaskFinished):
            result = event.result
            self._stream.write(self._style(task_line(result)) + "\n")
            if self._output == "always" or (self._output == "on-failure" and not result.ok and result.attempts):
                self._write_output(result)
        else:
            return
        self._stream.flush()

    def _write_output(self, result: TaskResult) -> None:
        for name, path, tail in (
            ("stdout", result.stdout_path, result.stdout_tail),
            ("stderr", result.stderr_path, result.stderr_tail),
        ):
            try:
                with open(path or "", encoding="utf-8", errors="replace") as source:
                    if source.read(1) == "":
                        continue
                    source.seek(0)
                    self._stream.write(f"--- {name}: {result.task_id} ---\n")
                    self._stream.flush()
                    shutil.copyfileobj(source, self._stream)
            except OSError:
                if not tail:
                    continue
                self._stream.write(f"--- {name} (tail): {result.task_id} ---\n{tail}")
            if not self._stream_ends_with_newline(path, tail):
                self._stream.write("\n")

    @staticmethod
    def _stream_ends_with_newline(path: str | None, tail: str) -> bool:
        return tail.endswith("\n") if tail else True

    def close(self) -> None:
        self._stream.flush()
