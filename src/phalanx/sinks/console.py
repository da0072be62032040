"""The console reporter: a line per finished task, its output grouped beneath it; colour.

Output is never interleaved: a task's stdout and stderr are captured to files while it
runs and copied here in one block when it ends (``--output on-failure|always|never``).

Colour (`wants_colour`): ``--color always|never`` wins; else ``NO_COLOR`` (any non-empty
value) turns it off and ``FORCE_COLOR`` (any non-empty value) on; else it is on when the
stream is a terminal (and ``TERM`` is not ``dumb``). The painters add ANSI styles to the
plain texts of `phalanx.render`, line by line, so those stay pure and snapshot-tested.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, TextIO

from ..durations import format_duration
from ..events import Event, TaskFinished, TaskRetrying
from ..render import task_line
from ..results import TaskResult

OutputMode = Literal["on-failure", "always", "never"]
ColourChoice = Literal["auto", "always", "never"]

_COLOURS = {"PASS": "green", "FLAKY": "yellow", "SKIP": "yellow", "CANCEL": "yellow", "RETRY": "magenta"}


def wants_colour(choice: str | None, stream: TextIO, environ: Mapping[str, str] | None = None) -> bool:
    """Whether to colour what goes to ``stream``.

    Args:
        choice: ``--color``: ``"always"`` or ``"never"`` decide; ``"auto"`` or None ask the
            environment and the stream.
        stream: where the text goes; colour in ``auto`` only if it is a terminal.
        environ: the environment (default: ``os.environ``).
    """
    if choice == "always":
        return True
    if choice == "never":
        return False
    env = os.environ if environ is None else environ
    if env.get("NO_COLOR", ""):
        return False  # https://no-color.org: any non-empty value
    if env.get("FORCE_COLOR", ""):
        return True  # https://force-color.org: any non-empty value, terminal or not
    try:
        return stream.isatty() and env.get("TERM", "") != "dumb"
    except (AttributeError, ValueError):  # no isatty, or closed
        return False


def style(text: str, *, fg: str | None = None, bold: bool = False, dim: bool = False) -> str:
    """``text`` with ANSI styles (16 standard colours, so any colour terminal shows them)."""
    import click

    # Only what is asked: click.style(bold=False) emits "normal intensity", which would undo bold.
    return click.style(text, fg=fg, bold=bold or None, dim=dim or None)


#: For each text: (line prefix, style) pairs; the first prefix a line starts with styles it.
_Rules = Sequence[tuple[str, Mapping[str, Any]]]
_PLAN_RULES: _Rules = (
    ("Plan:", {"bold": True}),
    ("  critical path", {"fg": "cyan"}),
    ("  start order:", {"bold": True}),
)
_GRAPH_RULES: _Rules = (("level ", {"bold": True}),)
_SUMMARY_RULES: _Rules = (
    ("  critical path", {"fg": "cyan"}),
    ("  failed:", {"fg": "red"}),
    ("  timed out:", {"fg": "red"}),
    ("  crashed:", {"fg": "red"}),
    ("  skipped:", {"fg": "yellow"}),
    ("  cancelled:", {"fg": "yellow"}),
)


def _paint(text: str, rules: _Rules, first: Mapping[str, Any] | None = None) -> str:
    lines = text.split("\n")
    for index, line in enumerate(lines):
        if index == 0 and first is not None:
            lines[index] = style(line, **first)
            continue
        for prefix, how in rules:
            if line.startswith(prefix):
                lines[index] = style(line, **how)
                break
    return "\n".join(lines)


def paint_summary(text: str, ok: bool) -> str:
    """The run summary (`render.summary_text`): its head green or red, failures red."""
    return _paint(text, _SUMMARY_RULES, first={"fg": "green" if ok else "red", "bold": True})


def paint_plan(text: str) -> str:
    """`render.plan_text`: the head and the critical path stand out."""
    return _paint(text, _PLAN_RULES)


def paint_graph(text: str) -> str:
    """`render.graph_text` (the Mermaid and DOT forms are for other programs: never painted)."""
    return _paint(text, _GRAPH_RULES)


def paint_table(text: str) -> str:
    """A table whose first line is its header (`render.task_list_text`)."""
    return _paint(text, (), first={"bold": True})


class ConsoleReporter:
    """Writes task lines and grouped output to a text stream."""

    def __init__(self, stream: TextIO, *, output: OutputMode = "on-failure", colour: bool | None = None,
                 quiet: bool = False, failing_tests: Callable[[str], Sequence[str]] | None = None) -> None:
        """``colour``: None decides as `wants_colour` does with no ``--color``; ``quiet``: only
        the tasks that did not succeed get a line (``--quiet``); ``failing_tests``: the failing
        tests of a task that writes JUnit (read from its report, never from its output)."""
        self._stream = stream
        self._failing_tests = failing_tests
        self._output = output
        self._quiet = quiet
        self._colour = wants_colour(None, stream) if colour is None else colour

    def _style(self, line: str) -> str:
        if not self._colour:
            return line
        label = line.split()[0] if line.strip() else ""
        return style(line, fg=_COLOURS.get(label, "red"), bold=label not in _COLOURS)

    def handle(self, event: Event) -> None:
        if self._quiet and (isinstance(event, TaskRetrying) or (isinstance(event, TaskFinished) and event.result.ok)):
            return
        if isinstance(event, TaskRetrying):
            next_in = f", retrying in {format_duration(event.delay)}" if event.delay > 0 else ", retrying"
            line = f"{'RETRY':>8} {'':10} {event.task_id}  attempt {event.attempt} {event.reason}{next_in}"
            self._stream.write(self._style(line) + "\n")
        elif isinstance(event, TaskFinished):
            result = event.result
            line = task_line(result)
            if self._failing_tests is not None and not result.ok and result.attempts:
                failing = self._failing_tests(result.task_id)
                if failing:
                    shown = ", ".join(failing[:5]) + (f" and {len(failing) - 5} more" if len(failing) > 5 else "")
                    line += f"  failing tests: {shown}"
            self._stream.write(self._style(line) + "\n")
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
