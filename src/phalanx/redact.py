"""Mask the values of secret environment variables in everything phalanx shows or stores.

``redact = ["API_TOKEN", "*_SECRET"]`` (``phalanx.toml``, at the top or in ``[defaults]``)
and ``--redact NAME`` (``phalanx run``, ``phalanx map``) name environment variables, or
``fnmatch`` patterns of names (case-sensitive). Their values, as phalanx's environment has
them and as a task's ``env`` table sets them, become ``***`` in phalanx's own text; the
tasks themselves still get the real values.

Masked (phalanx's text): the console and live view (task lines, reasons, the output of
failures they show), progress lines, the summary and ``--json``; the journal (reasons,
output tails, the command line), and so ``phalanx show``, ``runs`` and ``report``; JUnit
(with the test cases merged from the tasks' own files), HTML, trace, ``--results``, OTel;
``phalanx list --json``; ``phalanx map``'s joblog, its ``--results`` csv/tsv/json(l) files,
its journal and its warnings.

As it is (the tasks' own): what a task writes to its files, and the raw output that
``--log-dir`` keeps; the output ``phalanx map`` prints for its jobs and the stdout and stderr
files of its ``--results DIR`` (GNU parallel's contract: the jobs' output is the product).

How: one `Redactor` holds the values (longest first, as one pattern) and masks text.
A `Redaction` is made from it once per run, and `Redaction.wrap` puts a `RedactingSink`
around each sink: every event reaches the sink with its text masked (reasons, errors and
tracebacks, output tails, reported data), and a task's output files that hold a secret are
swapped for masked copies in a private directory (mode 0700, removed by `Redaction.close`),
so a sink that reads a task's output (console, HTML, JUnit, map's results) reads the copy,
with the earlier attempts' files beside it where JUnit looks for them. Files without a
secret (most) are read once and not copied.

Rules:

* A value shorter than `MIN_LENGTH` characters is not masked: masking ``a`` or ``1``
  everywhere would wreck every line, and such a value is no secret. A warning names it.
  An empty value (a CI secret a fork does not get) is passed over in silence.
* A value is also masked without the whitespace around it (a token read from a file with
  its newline), if that is still `MIN_LENGTH` characters long.
* The tail of an output (the end that the journal and results keep) may begin inside a
  secret: a piece of a value there, `MIN_LENGTH` characters or more, is masked too.
* ``phalanx map`` masks the values of phalanx's own environment (what every job inherits);
  the values of ``--env NAME=TEMPLATE`` are made from each job's arguments, which its
  command line shows anyway.
* Task ids and the names of variables are never masked.
"""

from __future__ import annotations

import fnmatch
import os
import re
import shutil
from collections.abc import Iterable, Mapping
from dataclasses import replace
from pathlib import Path
from types import MappingProxyType
from typing import Any, BinaryIO

from .events import Event, RunFinished, Sink, TaskFinished, TaskRetrying
from .outputfiles import output_paths
from .results import ErrorInfo, RunReport, TaskResult

__all__ = ["MASK", "MIN_LENGTH", "RedactingSink", "Redaction", "Redactor", "pattern_problem"]

#: What a secret value becomes.
MASK = "***"

#: The shortest value that is masked, in characters.
MIN_LENGTH = 4

#: How much of an output file is scanned (or copied) at a time.
_CHUNK = 1 << 20


def pattern_problem(pattern: object) -> str | None:
    """Why ``pattern`` is not a variable name or pattern for ``redact``, or None if it is one."""
    if not isinstance(pattern, str) or not pattern.strip():
        return f"expected the name of an environment variable (or a pattern such as *_SECRET), got {pattern!r}"
    if "=" in pattern or "\0" in pattern:
        return f"{pattern!r} is not a variable name: a name holds no '=' and no NUL"
    return None


class Redactor:
    """The secret values of a run, and text with them masked (see the module's notes).

    Build it with `Redactor.from_environment`; ``Redactor(values)`` takes the values as they
    are (each still subject to `MIN_LENGTH`). False when there is nothing to mask.
    """

    __slots__ = ("_bytes", "_longest", "_text", "values")

    def __init__(self, values: Iterable[str]) -> None:
        kept = sorted({value for value in values if len(value) >= MIN_LENGTH}, key=lambda v: (-len(v), v))
        #: The masked values, longest first (so a value inside another is not masked first).
        self.values: tuple[str, ...] = tuple(kept)
        self._text = re.compile("|".join(map(re.escape, kept))) if kept else None
        encoded = sorted({os.fsencode(value) for value in kept}, key=lambda v: (-len(v), v))
        self._bytes = re.compile(b"|".join(map(re.escape, encoded))) if encoded else None
        self._longest = max(map(len, encoded), default=0)

    @classmethod
    def from_environment(
        cls, patterns: Iterable[str], environments: Iterable[Mapping[str, str]]
    ) -> tuple[Redactor, list[str]]:
        """The redactor for the variables ``patterns`` name, with their values in each of
        ``environments`` (phalanx's own, each task's ``env``), and the warnings to print
        (values too short to mask)."""
        wanted = tuple(dict.fromkeys(patterns))
        values: set[str] = set()
        short: dict[str, None] = {}
        if wanted:
            for environment in environments:
                for name, value in environment.items():
                    if not any(fnmatch.fnmatchcase(name, pattern) for pattern in wanted):
                        continue
                    for variant in {value, value.strip()}:
                        if len(variant) >= MIN_LENGTH:
                            values.add(variant)
                    if 0 < len(value.strip()) < MIN_LENGTH:
                        short[name] = None
        warnings = [f"redact: the value of {name} is shorter than {MIN_LENGTH} characters: it is not masked"
                    for name in short]
        return cls(values), warnings

    def __bool__(self) -> bool:
        return self._text is not None

    def text(self, text: str) -> str:
        """``text`` with every secret value in it masked."""
        if self._text is None or not text:
            return text
        return self._text.sub(MASK, text)

    def tail(self, text: str) -> str:
        """The end of an output, masked: as `text`, and a piece of a value at its very start
        (the tail may have been cut inside one) masked too."""
        text = self.text(text)
        head = text[:MIN_LENGTH]
        if len(head) < MIN_LENGTH:
            return text
        for value in self.values:
            if head not in value:  # a quick refusal for most values: the piece must hold the head
                continue
            for size in range(min(len(value) - 1, len(text)), MIN_LENGTH - 1, -1):
                if text.startswith(value[-size:]):
                    return MASK + text[size:]
        return text

    def data(self, value: Any) -> Any:
        """Reported data (or a returned value) with the secrets in its strings masked, keys
        too; anything but strings, mappings, lists and tuples is left as it is."""
        try:
            return self._data(value)
        except RecursionError:  # nested deeper than the stack allows: none of it can be shown
            return MASK

    def _data(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, Mapping):
            return {self._data(key): self._data(item) for key, item in value.items()}
        if type(value) in (list, tuple):  # exactly: a named tuple's constructor takes its fields
            return type(value)(self._data(item) for item in value)
        return value

    def result(self, result: TaskResult) -> TaskResult:
        """``result`` with its text masked (its output files are not touched: see `Redaction`)."""
        error = result.error
        if error is not None:
            error = ErrorInfo(error.type, self.text(error.message), self.text(error.traceback))
        data = self.data(result.data)
        return replace(
            result,
            reason=None if result.reason is None else self.text(result.reason),
            error=error,
            value=self.data(result.value),
            data=MappingProxyType(data if isinstance(data, dict) else {}),  # {}: too deep to look through
            stdout_tail=self.tail(result.stdout_tail),
            stderr_tail=self.tail(result.stderr_tail),
        )

    # ------------------------------------------------------------------ files

    def holds_secret(self, source: BinaryIO, *, chunk_size: int = _CHUNK) -> bool:
        """Whether the file open as ``source`` holds a secret value (read a chunk at a time)."""
        pattern = self._bytes
        if pattern is None:
            return False
        overlap = self._longest - 1  # a value cut by a chunk's end is whole in the next search
        carry = b""
        while chunk := source.read(chunk_size):
            data = carry + chunk
            if pattern.search(data):
                return True
            carry = data[-overlap:] if overlap else b""
        return False

    def copy_masked(self, source: BinaryIO, target: BinaryIO, *, chunk_size: int = _CHUNK) -> None:
        """Copy ``source`` to ``target`` with every secret value masked, a chunk at a time."""
        pattern = self._bytes
        assert pattern is not None
        mask = MASK.encode()
        keep = self._longest - 1
        carry = b""
        while True:
            chunk = source.read(chunk_size)
            data = carry + chunk
            # A match that starts before `limit` fits in `data` whatever follows; one that
            # starts later may be longer once the next chunk is in: it waits for it.
            limit = len(data) if not chunk else len(data) - keep
            out: list[bytes] = []
            at = 0
            for match in pattern.finditer(data):
                if match.start() >= limit:
                    break
                out += [data[at : match.start()], mask]
                at = match.end()
            done = max(at, limit)
            out.append(data[at:done])
            target.write(b"".join(out))
            carry = data[done:]
            if not chunk:
                return


class Redaction:
    """One run's masking: events and results with their text masked, and masked copies of
    the output files that hold a secret (made once each, in a private directory that
    `close` removes). Shared by the `RedactingSink` around each of the run's sinks."""

    def __init__(self, redactor: Redactor) -> None:
        self.redactor = redactor
        self._copies: Path | None = None
        # An output file of a task whose files hold a secret -> its masked copy (None: the copy
        # failed, and the sinks get no file, only the masked tail).
        self._copied: dict[str, str | None] = {}
        self._last: tuple[Event, Event] | None = None  # every sink is handed the same event in turn

    def wrap(self, sink: Sink) -> Sink:
        """``sink`` hearing every event with its text masked."""
        return RedactingSink(sink, self)

    def event(self, event: Event) -> Event:
        """``event`` with its text masked (the same object for events without text)."""
        last = self._last
        if last is not None and last[0] is event:
            return last[1]
        masked: Event = event
        if isinstance(event, TaskFinished):
            masked = replace(event, result=self.result(event.result))
        elif isinstance(event, TaskRetrying):
            masked = replace(event, reason=self.redactor.text(event.reason), value=self.redactor.data(event.value))
        elif isinstance(event, RunFinished):
            masked = replace(event, report=self.report(event.report))
        self._last = (event, masked)
        return masked

    def report(self, report: RunReport) -> RunReport:
        """``report`` with every result masked (output files as the task's end found them)."""
        results = {tid: self._known_copies(self.redactor.result(result)) for tid, result in report.results.items()}
        return replace(report, results=results)

    def result(self, result: TaskResult) -> TaskResult:
        """``result`` masked, its output files swapped for masked copies if they hold a secret."""
        return self._with_copies(self.redactor.result(result))

    def close(self) -> None:
        """Remove the masked copies (once the sinks are closed)."""
        if self._copies is not None:
            shutil.rmtree(self._copies, ignore_errors=True)
            self._copies = None
        self._copied.clear()

    # ------------------------------------------------------------------ output files

    def _known_copies(self, result: TaskResult) -> TaskResult:
        """Output files swapped for the copies made when the task ended (no new reading)."""
        stdout, stderr = result.stdout_path, result.stderr_path
        if stdout not in self._copied and stderr not in self._copied:
            return result
        return replace(result, stdout_path=self._copied.get(stdout, stdout) if stdout else stdout,
                       stderr_path=self._copied.get(stderr, stderr) if stderr else stderr)

    def _with_copies(self, result: TaskResult) -> TaskResult:
        """Every attempt's output files read; if one holds a secret, all are copied masked
        into the private directory, named as `output_paths` names them (JUnit finds the
        earlier attempts' files beside the last one's)."""
        stdout, stderr = result.stdout_path, result.stderr_path
        if stdout is None or stderr is None:
            return result
        run_dir = os.path.dirname(stdout)
        last = max(result.attempts, 1)
        if output_paths(run_dir, result.task_id, last) == (stdout, stderr):
            attempts = [output_paths(run_dir, result.task_id, number) for number in range(1, last + 1)]
        else:  # files named some other way: only the last attempt's are known
            attempts = [(stdout, stderr)]
        if not any(self._holds_secret(path) for pair in attempts for path in pair):
            return result
        directory = self._directory()
        for number, pair in enumerate(attempts, start=1):
            copies = output_paths(str(directory), result.task_id, number if len(attempts) > 1 else last)
            for path, copy in zip(pair, copies, strict=True):
                self._copied[path] = copy if self._copy(path, copy) else None
        return self._known_copies(result)

    def _holds_secret(self, path: str) -> bool:
        try:
            with open(path, "rb") as source:
                return self.redactor.holds_secret(source)
        except OSError:
            return False  # no file (a callable, a task that never started): nothing to read there

    def _copy(self, path: str, copy: str) -> bool:
        try:
            with open(path, "rb") as source:
                fd = os.open(copy, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
                with open(fd, "wb") as target:
                    self.redactor.copy_masked(source, target)
        except OSError:
            return False
        return True

    def _directory(self) -> Path:
        if self._copies is None:
            from .session import make_run_dir  # here: the session module imports the backends

            self._copies = make_run_dir("phalanx-redacted-")
        return self._copies


class RedactingSink:
    """A sink (`Redaction.wrap`) that hands each event on with its text masked."""

    def __init__(self, sink: Sink, redaction: Redaction) -> None:
        self.sink = sink
        self._redaction = redaction

    def handle(self, event: Event) -> None:
        self.sink.handle(self._redaction.event(event))

    def close(self) -> None:
        self.sink.close()

