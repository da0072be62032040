"""The results sink: one record per job, written the moment the job ends.

``--results FILE.csv`` (GNU parallel's columns), ``--results FILE.jsonl`` (one JSON object
a line, with phalanx's statuses), or ``--results DIR`` (a folder a job holding ``stdout``,
``stderr``, ``seq`` and ``exitval``). One writer owns each file and writes a whole record
and flushes it before the next, in completion order, so a kill -9 leaves every finished
job's row complete and never a partial one.

The record's fields come from a `JobInfo` the front end provides for each task; the
coroutine front end (roadmap) adds callables' returned fields the same way.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..events import Event, RunStarted, TaskFinished
from ..results import TaskResult
from .joblog import Records, exit_columns


@dataclass(frozen=True, slots=True)
class JobInfo:
    """What a results record says about the job besides its result."""

    seq: int
    args: tuple[str, ...]
    command: str
    names: tuple[str, ...] | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)


Describe = Callable[[TaskResult], JobInfo]


def _read(path: str | None) -> bytes:
    if path is None:
        return b""
    try:
        return Path(path).read_bytes()
    except OSError:
        return b""


def complete_csv_records(data: bytes, delimiter: str = ",") -> int:
    """How many leading bytes of ``data`` are whole CSV records.

    A record may span lines (a quoted field holding newlines), so the end of a line is
    not the end of a record: the csv module says where records end. A record is whole
    when it parses and ends with its line end (each is written with one write, so a
    record cut short lacks its end or leaves a quote open).
    """
    consumed = 0
    lines = data.splitlines(keepends=True)

    def feed() -> Iterator[str]:
        nonlocal consumed
        for line in lines:
            consumed += len(line)
            # UTF-8 never puts a newline byte inside a character: lines decode on their own.
            yield line.decode("utf-8", "surrogateescape")

    complete = 0
    try:
        for _ in csv.reader(feed(), delimiter=delimiter, strict=True):
            if data[consumed - 1 : consumed] != b"\n":
                break
            complete = consumed
    except csv.Error:
        pass
    return complete


class CsvResults:
    """GNU parallel's CSV: Seq,Host,Starttime,JobRuntime,Send,Receive,Exitval,Signal,Command,V1..Vn,Stdout,Stderr."""

    def __init__(self, records: Records, describe: Describe, arity: int, *, delimiter: str = ",") -> None:
        # A sink owns its file from the run's start to its end (close()); a file resumed
        # (not empty) already has its header.
        self._file = records
        self._delimiter = delimiter
        self._arity = arity
        self._describe = describe
        self._started_at = 0.0
        if self._file.empty:
            values = [f"V{i}" for i in range(1, arity + 1)]
            self._write(
                ["Seq", "Host", "Starttime", "JobRuntime", "Send", "Receive", "Exitval", "Signal", "Command",
                 *values, "Stdout", "Stderr"]
            )

    def _write(self, row: Sequence[object]) -> None:
        buffer = io.StringIO()
        csv.writer(buffer, delimiter=self._delimiter).writerow(row)
        # One record, one write: a reader (or a crash) never sees half a row.
        self._file.write(buffer.getvalue().encode("utf-8", "surrogateescape"))

    def handle(self, event: Event) -> None:
        if isinstance(event, RunStarted):
            self._started_at = event.started_at
        elif isinstance(event, TaskFinished) and event.result.attempts:
            result = event.result
            info = self._describe(result)
            stdout = _read(result.stdout_path)
            exitval, signal = exit_columns(result)
            start = self._started_at + (result.end or 0.0) - result.duration
            self._write(
                [info.seq, ":", f"{start:.3f}", f"{result.duration:.3f}", 0, len(stdout), exitval, signal,
                 info.command, *info.args, *[""] * (self._arity - len(info.args)),
                 stdout.decode("utf-8", "surrogateescape"),
                 _read(result.stderr_path).decode("utf-8", "surrogateescape")]
            )

    def close(self) -> None:
        self._file.close()


class JsonlResults:
    """One JSON object per finished job, with phalanx's status and timing."""

    def __init__(self, records: Records, describe: Describe) -> None:
        self._file = records
        self._describe = describe
        self._started_at = 0.0

    def handle(self, event: Event) -> None:
        if isinstance(event, RunStarted):
            self._started_at = event.started_at
        elif isinstance(event, TaskFinished) and event.result.attempts:
            result = event.result
            info = self._describe(result)
            exitval, signal = exit_columns(result)
            record: dict[str, Any] = {
                "seq": info.seq,
                "args": list(info.args),
                "command": info.command,
                "status": result.status.value,
                "exit_code": exitval,
                "signal": signal or None,
                "reason": result.reason,
                "start": round(self._started_at + (result.end or 0.0) - result.duration, 6),
                "duration": round(result.duration, 6),
                "attempts": result.attempts,
                "worker": result.worker,
                "stdout": _read(result.stdout_path).decode("utf-8", "replace"),
                "stderr": _read(result.stderr_path).decode("utf-8", "replace"),
                "data": dict(result.data),
            }
            if info.names:
                record["named"] = dict(zip(info.names, info.args, strict=False))
            record.update(info.extra)
            line = json.dumps(record, ensure_ascii=False, default=str) + "\n"
            # An argument that was not UTF-8 holds lone surrogates: "backslashreplace" writes
            # them as the JSON escapes \udcXX, so the line stays valid UTF-8 and valid JSON.
            # One record, one write: a reader (or a crash) never sees half a line.
            self._file.write(line.encode("utf-8", "backslashreplace"))

    def close(self) -> None:
        self._file.close()


def safe_component(value: str) -> str:
    """A directory name that stands for ``value`` and cannot leave its parent.

    GNU parallel's escapes (``/`` as ``\\_``, ``\\`` as ``\\\\``, tab as ``\\t``), plus what GNU lets
    through: ``.`` and ``..`` (which would name the parent), the empty name, and names
    longer than a file system allows (cut, with a hash of the whole value).
    """
    name = value.replace("\\", "\\\\").replace("/", "\\_").replace("\t", "\\t").replace("\0", "\\0")
    if name in ("", ".", ".."):
        # A lone backslash before anything but a backslash comes only from these escapes,
        # so no value's name can be another's: "" -> \e, "." -> \., ".." -> \.\.
        name = name.replace(".", "\\.") if name else "\\e"
    encoded = name.encode("utf-8", "surrogateescape")
    if len(encoded) > 200:
        digest = hashlib.sha256(encoded).hexdigest()[:16]
        name = encoded[:180].decode("utf-8", "ignore") + "\\~" + digest
    return name


_NUMBER = re.compile(r"\s*[+-]?(?:\d+\.?\d*(?:[eE][+-]?\d+)?|\.\d+(?:[eE][+-]?\d+)?)")


def _perl_number(text: str) -> float:
    """A string's value as a number in Perl: its leading number, else 0."""
    match = _NUMBER.match(text)
    return float(match.group()) if match else 0.0


class DirectoryResults:
    """GNU parallel's tree: DIR/<n or name>/<value>/.../{stdout,stderr,seq}, plus ``exitval``."""

    def __init__(self, root: Path, describe: Describe) -> None:
        self._root = root.resolve()
        self._describe = describe

    def job_dir(self, info: JobInfo) -> Path:
        path = self._root
        names: Sequence[str] = info.names or ()
        # A column without a name (no --header, or a short header) is labelled by its number.
        labels = [names[i] if i < len(names) and names[i] else str(i + 1) for i in range(len(info.args))]
        # As GNU: the columns sorted by label, numerically and then as text (1 2 10, a b).
        for index in sorted(range(len(labels)), key=lambda i: (_perl_number(labels[i]), labels[i])):
            path = path / safe_component(labels[index]) / safe_component(info.args[index])
        resolved = path.resolve()
        if resolved != self._root and self._root not in resolved.parents:  # belt and braces
            raise ValueError(f"results path {resolved} escapes {self._root}")
        return resolved

    def handle(self, event: Event) -> None:
        if isinstance(event, TaskFinished) and event.result.attempts:
            result = event.result
            info = self._describe(result)
            directory = self.job_dir(info)
            directory.mkdir(parents=True, exist_ok=True)
            exitval, _ = exit_columns(result)
            for name, content in (
                ("stdout", _read(result.stdout_path)),
                ("stderr", _read(result.stderr_path)),
                ("seq", str(info.seq).encode()),  # no newline, as GNU's
                ("exitval", str(exitval).encode()),
            ):
                temporary = directory / f".{name}.tmp"
                temporary.write_bytes(content)
                os.replace(temporary, directory / name)  # whole files only, even after a crash

    def close(self) -> None:
        return None
