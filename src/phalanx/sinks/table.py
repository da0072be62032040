"""Results tables: one row per finished task or item, for every kind of run.

``phalanx map --results`` writes GNU parallel's CSV (`results.py`). ``phalanx run``,
``phalanx.map``, ``phalanx.amap`` and `Executor` write the table a person (or pandas)
wants instead: the input's columns (when the input is a row, such as a CSV line), then
``status``, ``attempts``, ``duration``, ``error``, then the fields the task returned. Each
row is written the moment its task finishes, so the file fills as the run goes (`result_row`
makes the row, `TableSink` writes one per finished task, `TableWriter` owns the file).

Crash safety. A row must reach the file whole or not at all, even when phalanx is killed
with SIGKILL, and one ``write(2)`` does not give that: Linux copies a write into the page
cache a page at a time and gives up between two pages when a fatal signal is pending, so a
kill can leave the first pages of any row that crosses a 4 KiB boundary of the file
(measured on Linux 6: about one kill in ten while 1 KB rows are written, most kills while
100 KB rows are). So the writes are made by a *scribe*: a small helper process (this
Python, isolated, builtin modules only) that reads length-prefixed rows from a pipe and
writes the whole rows it has, together, with one ``write(2)``. A kill of phalanx does not
reach it (it has a session of its own and ignores SIGINT, SIGTERM and SIGHUP): it writes
every whole row it was sent, drops a row cut short in the pipe, and ends at the pipe's
end. So once `TableWriter.write` has put a row in the pipe, no kill of phalanx keeps it
from the file, and writing need not wait for the scribe (it waits with ``fsync=True``,
for the row to be on disk, and in `TableWriter.flush`). Rows are not acknowledged, and
the scribe, once it has written what the pipe held, pauses a moment (`_SCRIBE_PAUSE`,
10 ms) so that the rows of a busy run reach it in batches: a row costs the two processes
a few microseconds, not a wake-up each. A row whose write fails (a full disk) is taken
back out of the file, and the error raised by one of the writer's next calls (within
about two pauses). Where no helper process can be started, rows are written in-process:
whole, but a kill can then cut the last one short (appending to the file later cuts it
off).

Other processes. A writer stays in the process that opened it (one file offset, one CSV
header, one lock); `TableWriter.remote` gives a picklable handle that sends rows to it over
a Unix socket in a private folder, where one thread reads them and writes them in turn.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import io
import json
import os
import pickle
import select
import selectors
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal, NoReturn, cast

from ..errors import ConfigError
from ..events import Event
from ..results import Status, TaskResult
from .joblog import CHUNK, Recorded, complete_lines, write_all
from .results import complete_csv_records

Format = Literal["csv", "jsonl"]

#: A file name's suffix -> its format and (CSV) delimiter.
_SUFFIXES: dict[str, tuple[Format, str]] = {
    ".csv": ("csv", ","),
    ".tsv": ("csv", "\t"),
    ".jsonl": ("jsonl", ""),
    ".ndjson": ("jsonl", ""),
    ".json-lines": ("jsonl", ""),
}

#: A CSV's last column when the columns come from the first row: what later rows have
#: beyond the header, as a JSON object (a header cannot grow once rows follow it).
EXTRA = "extra"

#: How long a scribe may take to say it is ready before rows are written in-process.
_SCRIBE_START_TIMEOUT = 10.0

_FRAME = struct.Struct(">Q")  # a row's length, before the row, on the scribe's pipe and the relay's socket

_FOREIGN_PROCESS = (
    "a TableWriter writes only in the process that opened it: give other processes writer.remote()"
)


# ------------------------------------------------------------------------------------ rows


def result_row(
    result: TaskResult, inputs: Mapping[str, Any] | None = None, *, id_column: str | None = "task"
) -> dict[str, Any]:
    """The table row for a finished task: ``inputs``, the id (in ``id_column``, unless
    None), ``status``, ``attempts``, ``duration``, ``error``, ``note`` (only when there is
    one, such as ``output cut: ...``), then the returned fields.

    The returned fields are ``result.data`` (a mapping a callable returned, or the JSON
    object a command wrote to its result file); any other value a callable returned goes
    in a ``value`` column. A returned field named like a column before it is written as
    ``result.<name>``, and an input column named like a standard one as ``input.<name>``:
    a row never loses a value to a name it shares.
    """
    standard: dict[str, Any] = {}
    if id_column is not None:
        standard[id_column] = result.task_id
    standard["status"] = result.status.value
    standard["attempts"] = result.attempts
    standard["duration"] = round(result.duration, 6)
    standard["error"] = _error_text(result)
    if result.note is not None:  # only then: ``output cut: ...`` (a CSV puts it in its extra column)
        standard["note"] = result.note
    row: dict[str, Any] = {}
    for key, value in (inputs or {}).items():
        name = key if isinstance(key, str) else str(key)  # a csv.DictReader row's surplus fields are under None
        row[f"input.{name}" if name in standard else name] = value
    row.update(standard)
    for name, value in _returned(result).items():
        row[f"result.{name}" if name in row else name] = value
    return row


def _error_text(result: TaskResult) -> str:
    """Why the task did not succeed, on one line (a cell, not a traceback); empty if it did."""
    if result.status is Status.SUCCEEDED:
        return ""
    text = result.reason or (str(result.error) if result.error is not None else "")
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


def _returned(result: TaskResult) -> Mapping[str, Any]:
    if result.data:
        return result.data
    value = result.value
    if value is None or (isinstance(value, Mapping) and all(isinstance(key, str) for key in value)):
        return {}  # nothing returned, or an empty mapping: no fields
    return {"value": value}


def _no_inputs(result: TaskResult) -> Mapping[str, Any] | None:
    return None


class TableSink:
    """A `Sink` that writes `result_row` for every finished task, as the scheduler reports it.

    Which tasks get a row is `joblog.Recorded`'s rule, as for every record-keeping sink: a
    task phalanx stopped on an interrupt or a terminate did not finish (a resume runs it
    again), and a task that never started (skipped, or cancelled before its start) has
    nothing to report; every other finished task gets its row. ``inputs`` gives a task's
    input row (a CSV line as a dict, say), or None.
    """

    def __init__(
        self,
        writer: TableWriter,
        inputs: Callable[[TaskResult], Mapping[str, Any] | None] = _no_inputs,
        *,
        id_column: str | None = "task",
    ) -> None:
        self._writer = writer
        self._inputs = inputs
        self._id_column = id_column
        self._recorded = Recorded()

    def handle(self, event: Event) -> None:
        if (result := self._recorded.result(event)) is not None:
            self._writer.write(result_row(result, self._inputs(result), id_column=self._id_column))

    def close(self) -> None:
        self._writer.close()


# ---------------------------------------------------------------------------- the writer


@dataclass(frozen=True, slots=True)
class _Layout:
    """A CSV's columns: where each name's cell goes, and the ``extra`` column if it has one
    (its last column, when named ``extra``: a row's own ``extra`` key then goes in it too)."""

    columns: tuple[str, ...]
    index: Mapping[str, int]
    overflow: int | None

    @classmethod
    def of(cls, columns: Sequence[str]) -> _Layout:
        overflow = len(columns) - 1 if columns and columns[-1] == EXTRA else None
        named = columns if overflow is None else columns[:-1]
        index: dict[str, int] = {}
        for position, name in enumerate(named):
            index.setdefault(name, position)
        return cls(tuple(columns), index, overflow)


class TableWriter:
    """One results file, one writer: rows written whole, one at a time, in the order given.

    Each row is assembled in memory and written whole with one ``write(2)``, with the rows
    sent just before it (by the scribe: see the module's docstring), in the order written,
    and fsynced before the next when ``fsync`` is set. It is safe to call from many threads (a lock), so rows never
    interleave; other processes write through `remote`. The file is opened ``O_APPEND |
    O_CREAT``, mode 0o644. An existing non-empty file is appended to: a last record
    without its line end (a file made by hand) gets one, a record cut short (an open
    quote, a line that is not JSON) is cut off, and a CSV's header is read back and
    reused, so columns stay aligned.

    ``format``: ``"csv"`` or ``"jsonl"``; None takes it from the name's suffix (``.csv``;
    ``.tsv``, a CSV with tabs; ``.jsonl``, ``.ndjson``, ``.json-lines``).

    ``columns`` (CSV only): the header, fixed up front. Without it the header is the first
    row's keys and a last ``extra`` column, and a later row's keys that are not in it go in
    ``extra`` as a JSON object (empty when there are none); with it, keys that are not
    columns are left out, unless its last column is ``extra``. Missing keys are empty
    cells. Cells: text as it is; None empty; booleans ``true``/``false``; numbers as
    ``str`` gives them; lists, tuples and mappings as compact JSON; anything else as
    ``str`` gives it. A JSONL row is ``json.dumps(row, ensure_ascii=False, default=str)``
    (a mapping that is not a dict as a JSON object), all its keys in their order.

    Text that is not UTF-8 (lone surrogates, as ``surrogateescape`` decodes bad bytes) is
    written as its original bytes in a CSV and as ``\\udcXX`` escapes in JSONL, so a row
    can always be written and reads back as it was (``errors="surrogateescape"``).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        format: Format | None = None,
        fsync: bool = False,
        columns: Sequence[str] | None = None,
    ) -> None:
        self.path = os.fspath(path)
        self.format, delimiter = _format_of(self.path, format)
        self._delimiter = delimiter or ","
        self._fsync = fsync
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._closing = False
        self._closed = False
        self._relay: _Relay | None = None
        self._layout: _Layout | None = None
        self._buffer = io.StringIO()
        self._json = _json_encoder()
        self._text_keys: set[str] = set()  # keys of JSONL rows that were dicts with text keys
        self._csv = csv.writer(self._buffer, delimiter=delimiter or ",", lineterminator="\r\n")
        if columns is not None:
            columns = _checked_columns(self.path, columns)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
        self._scribe: _Scribe | None = None
        self._deliver: Callable[[bytes], None] = self._emit
        try:
            size = _repair(self._fd, self.path, self.format)
            if self.format == "csv" and size:
                self._layout = _Layout.of(_read_header(self.path, delimiter, size))
            self._scribe = _Scribe.start(self._fd, self.path)
            # A row no one waits for goes straight down the scribe's pipe.
            self._deliver = self._emit if self._scribe is None or fsync else self._scribe.send
            if self.format == "csv" and self._layout is None and columns is not None:
                # Written now, so a run that finishes nothing still leaves its header.
                layout = _Layout.of(columns)
                self._emit(self._csv_line(layout.columns), wait=True)
                self._layout = layout
        except BaseException:
            if self._scribe is not None:
                with contextlib.suppress(OSError):
                    self._scribe.close()
            os.close(self._fd)
            raise

    @property
    def columns(self) -> tuple[str, ...] | None:
        """A CSV's header, once it is known (from ``columns``, the file, or the first row)."""
        return None if self._layout is None else self._layout.columns

    def write(self, row: Mapping[str, Any]) -> None:
        """Write ``row`` whole. When this returns, a kill of this process no longer keeps
        it from the file (with ``fsync``, it is on disk). An error writing it is raised by
        this call with ``fsync``, else by a later one: the next `flush` or `close`, or a
        `write` once the scribe has told it (a write looks for its word every
        `_SCRIBE_PAUSE`), which then writes nothing."""
        if os.getpid() != self._pid:
            raise RuntimeError(_FOREIGN_PROCESS)
        with self._lock:
            if self._closed:
                raise ValueError(f"results file {self.path!r} is closed")
            if self.format == "jsonl":
                # The usual row, a dict with keys known to be text, goes straight to JSON
                # (this is the hot path of a busy run: it is kept short).
                if type(row) is dict and row.keys() <= self._text_keys:
                    try:
                        record = "".join(self._json(row, 0)).encode("utf-8", "backslashreplace") + b"\n"
                    except (TypeError, ValueError, RecursionError):  # not JSON as it is (a cycle, odd keys inside)
                        record = _json_line(row)
                else:
                    record = self._json_line(row)
                self._deliver(record)
                return
            layout = self._layout
            header = b""
            if layout is None:  # the first row: its keys are the header
                names = [_name(key) for key in row]
                layout = _Layout.of([name for name in names if name != EXTRA] + [EXTRA])
                header = self._csv_line(layout.columns)
            record = self._csv_line(self._cells(layout, row))
            if header:  # the row that carries the header waits for its write: the header is
                self._emit(header + record, wait=True)  # the file's only once that succeeded
            else:
                self._deliver(record)
            self._layout = layout

    def flush(self) -> None:
        """Return once every row written so far is in the file (readable by others); raise
        an error writing one of them."""
        if os.getpid() != self._pid:
            raise RuntimeError(_FOREIGN_PROCESS)
        with self._lock:
            if self._closed:
                raise ValueError(f"results file {self.path!r} is closed")
            if self._scribe is not None:
                self._scribe.flush()

    def written(self, columns: Sequence[str]) -> set[tuple[str, ...]]:
        """The rows the file holds (those it had when opened, and those written since), each
        as the text of its cells in ``columns``: a CSV's cells as they are (a column the
        header lacks, from its ``extra`` cell), a JSONL row's values as a CSV cell would
        show them; empty where a row has none. A line that is not a row (a JSONL line that
        is not a JSON object) is passed over. What ``phalanx run --resume`` reads to find
        the rows of finished tasks that the file lacks (`journalrows`).

        Raises:
            OSError: the file cannot be read. ConfigError: a CSV the csv module cannot read.
        """
        self.flush()
        with open(self.path, "rb") as source:
            if self.format == "jsonl":
                return {row_cells(row, columns) for row in _json_rows(source)}
            layout = self._layout
            if layout is None:
                return set()
            try:
                return {_cells_in(layout, record, columns) for record in _csv_records(source, self._delimiter)}
            except csv.Error as error:
                raise ConfigError(f"results file {self.path!r}: cannot read its rows back: {error}") from None

    def remote(self) -> RemoteWriter:
        """A handle other processes write rows through (picklable: pass it to a spawned
        process or a pool's task). Rows it sends are written by this writer, in the order
        they arrive; `close` writes every row sent before it was called."""
        if os.getpid() != self._pid:
            raise RuntimeError(_FOREIGN_PROCESS)
        with self._lock:
            if self._closing:
                raise ValueError(f"results file {self.path!r} is closed")
            if self._relay is None:
                self._relay = _Relay(self.write)
            return RemoteWriter(self._relay.address)

    def close(self) -> None:
        """Write what remote handles sent, then close the file. Idempotent."""
        with self._lock:
            if self._closing:
                return
            self._closing = True
            relay, self._relay = self._relay, None
        if os.getpid() != self._pid:
            # A forked copy: the scribe, the relay and the file belong to the owner.
            self._closed = True
            return
        failure: BaseException | None = None
        if relay is not None:
            failure = relay.close()  # its rows go through write(), so the file is still open
        with self._lock:
            self._closed = True
            try:
                if self._scribe is not None:
                    self._scribe.close()  # every row sent is written first
            except OSError as error:
                failure = failure or error
            finally:
                os.close(self._fd)
        if failure is not None:
            raise failure

    def __enter__(self) -> TableWriter:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.close()

    def __reduce__(self) -> NoReturn:
        raise TypeError(_FOREIGN_PROCESS)

    def _emit(self, record: bytes, *, wait: bool = False) -> None:
        """Write ``record``; with ``wait`` (or ``fsync``), return once it is in the file."""
        if self._scribe is not None:
            self._scribe.write(record, wait=wait or self._fsync)
        else:
            write_all(self._fd, record)
        if self._fsync:
            os.fsync(self._fd)

    def _json_line(self, row: Mapping[str, Any]) -> bytes:
        """`_json_line`, for a row `write` cannot take straight to JSON: a dict whose keys
        are all text is (the keys are remembered, so the next such row is), others are
        made plain first."""
        if type(row) is dict and all(isinstance(key, str) for key in row):
            if len(self._text_keys) > _TEXT_KEYS:
                self._text_keys.clear()
            self._text_keys.update(row)
            with contextlib.suppress(TypeError, ValueError, RecursionError):
                return "".join(self._json(row, 0)).encode("utf-8", "backslashreplace") + b"\n"
        return _json_line(row)

    def _cells(self, layout: _Layout, row: Mapping[str, Any]) -> list[str]:
        cells = [""] * len(layout.columns)
        extra: dict[str, Any] = {}
        for key, value in row.items():
            name = _name(key)
            position = layout.index.get(name)
            if position is None:
                extra[name] = value
            else:
                cells[position] = _cell(value)
        if extra and layout.overflow is not None:
            cells[layout.overflow] = _compact_json(extra)
        return cells

    def _csv_line(self, fields: Sequence[str]) -> bytes:
        """``fields`` as the csv module writes a row (quoted where needed, ``\\r\\n``), encoded."""
        self._buffer.seek(0)
        self._buffer.truncate()
        self._csv.writerow(fields)
        return _encode(self._buffer.getvalue())


def _format_of(path: str, format: str | None) -> tuple[Format, str]:
    """The file's format and CSV delimiter, from ``format`` or the name's suffix."""
    suffix = os.path.splitext(path)[1].lower()
    if format is None:
        if suffix not in _SUFFIXES:
            raise ConfigError(f"results file {path!r}: use a .csv or .jsonl name, or format=")
        return _SUFFIXES[suffix]
    if format == "csv":
        return "csv", "\t" if suffix == ".tsv" else ","
    if format == "jsonl":
        return "jsonl", ""
    raise ConfigError(f"results file {path!r}: format must be 'csv' or 'jsonl', not {format!r}")


def _checked_columns(path: str, columns: Sequence[str]) -> list[str]:
    if isinstance(columns, str | bytes):
        raise ConfigError(f"results file {path!r}: columns= takes a list of names, not one string")
    names = list(columns)
    if not names or not all(isinstance(name, str) for name in names):
        raise ConfigError(f"results file {path!r}: columns= takes a non-empty list of names")
    if len(set(names)) != len(names):
        twice = sorted({name for name in names if names.count(name) > 1})
        raise ConfigError(f"results file {path!r}: columns= names {', '.join(map(repr, twice))} more than once")
    return names


def _repair(fd: int, path: str, format: Format) -> int:
    """Make an existing file end with a whole record; its size afterwards.

    Whole records end with a line end. What follows the last one is either a last record
    that lacks it (a CSV written by hand or by another tool: its quotes are balanced; a
    JSONL line that parses), which gets its line end, or a record a crash cut short, which
    no line end can make whole: it is cut off, so a new row is not glued to it.
    """
    size = os.fstat(fd).st_size
    if not size:
        return 0
    with open(path, "rb") as source:
        keep = complete_csv_records(source) if format == "csv" else complete_lines(source)
        if keep == size:
            return size
        source.seek(keep)
        tail = source.read()
    if format == "csv":
        whole = tail.count(b'"') % 2 == 0
        ending = b"\n" if tail.endswith(b"\r") else b"\r\n"
    else:
        ending = b"\n"
        try:
            json.loads(tail)
            whole = True
        except ValueError:
            whole = False
    if whole:
        write_all(fd, ending)
        return keep + len(tail) + len(ending)
    os.ftruncate(fd, keep)
    return keep


def _read_header(path: str, delimiter: str, size: int) -> list[str]:
    """The header (first record) of an existing CSV."""
    limit = csv.field_size_limit()
    try:
        csv.field_size_limit(max(limit, size))  # a header is never refused for its length
        with open(path, encoding="utf-8", errors="surrogateescape", newline="") as source:
            header = next(csv.reader(source, delimiter=delimiter), [])
    finally:
        csv.field_size_limit(limit)
    if not header or header == [""]:
        raise ConfigError(
            f"results file {path!r}: its first line is not a CSV header (move the file away, or pick another name)"
        )
    return header


def _json_rows(source: io.BufferedReader) -> Iterable[Mapping[str, Any]]:
    """The JSON objects of a JSONL file's lines."""
    for line in source:
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict):
            yield row


def _csv_records(source: io.BufferedReader, delimiter: str) -> Iterable[list[str]]:
    """A CSV file's records after its header (text as `TableWriter` writes it: bad bytes as
    surrogates), whatever the length of a cell."""
    text = io.TextIOWrapper(source, encoding="utf-8", errors="surrogateescape", newline="")
    limit = csv.field_size_limit()
    try:
        csv.field_size_limit(max(limit, os.fstat(source.fileno()).st_size))
        records = csv.reader(text, delimiter=delimiter)
        next(records, None)
        yield from records
    finally:
        csv.field_size_limit(limit)


def row_cells(row: Mapping[str, Any], columns: Sequence[str]) -> tuple[str, ...]:
    """A row's values in ``columns`` as CSV cells show them ("" for one it lacks): what
    `TableWriter.written` gives for it once written."""
    return tuple(_cell(row.get(name)) for name in columns)


def _cells_in(layout: _Layout, record: list[str], columns: Sequence[str]) -> tuple[str, ...]:
    """A CSV record's cells in ``columns``; those the header lacks from its ``extra`` cell."""
    cells: list[str] = []
    extra: Mapping[str, Any] | None = None
    for name in columns:
        position = layout.index.get(name)
        if position is not None:
            cells.append(record[position] if position < len(record) else "")
            continue
        if extra is None:
            extra = _extra_of(layout, record)
        cells.append(_cell(extra.get(name)))
    return tuple(cells)


def _extra_of(layout: _Layout, record: list[str]) -> Mapping[str, Any]:
    if layout.overflow is None or layout.overflow >= len(record) or not record[layout.overflow]:
        return {}
    try:
        extra = json.loads(record[layout.overflow])
    except ValueError:
        return {}
    return extra if isinstance(extra, dict) else {}


def _name(key: object) -> str:
    return key if isinstance(key, str) else str(key)


def _cell(value: object) -> str:
    """A value as CSV cell text."""
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, Mapping | list | tuple):
        return _compact_json(value)
    return str(value)


def _json_default(value: object) -> object:
    """What JSON cannot hold as it is: a mapping as an object, anything else as its text."""
    if isinstance(value, Mapping):
        return dict(value)
    return str(value)


def _compact_json(value: object) -> str:
    try:
        return json.dumps(value, ensure_ascii=False, default=_json_default, separators=(",", ":"))
    except (TypeError, ValueError):  # keys JSON cannot hold, or a value that contains itself
        return str(value)


#: How many keys a JSONL `TableWriter` remembers as text (more: it forgets them, and learns again).
_TEXT_KEYS = 1024


def _json_encoder() -> Callable[[object, int], Iterable[str]]:
    """What ``json.dumps(value, ensure_ascii=False, default=_json_default)`` encodes with:
    ``"".join(encode(value, 0))`` is its text. json.dumps makes this encoder anew on every
    call, which is most of the cost of a small row; made once, it is reused. It does not
    look for cycles (the marks cost a tenth of a row): a value that contains itself raises
    RecursionError, not ValueError. Without the C encoder (or should it change), the
    Python one."""
    encoder = json.JSONEncoder(ensure_ascii=False, default=_json_default, check_circular=False)
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is not None:
        try:
            encode = make(None, encoder.default, json.encoder.encode_basestring, None, encoder.key_separator,
                          encoder.item_separator, False, False, True)
            sample = {"a": [1, 2.5, None, True, float("inf")], "é\n": {"b": "\udcff"}}
            if "".join(encode(sample, 0)) == encoder.encode(sample):
                return cast(Callable[[object, int], Iterable[str]], encode)
        except Exception:
            pass
    return lambda value, _: encoder.iterencode(value)


def _json_line(row: Mapping[str, Any]) -> bytes:
    """One JSONL record: the row as a JSON object and a newline, as UTF-8; a lone surrogate
    becomes the JSON escape ``\\udcXX`` ("backslashreplace"), which reads back as itself."""
    plain = {_name(key): value for key, value in row.items()}
    try:
        text = json.dumps(plain, ensure_ascii=False, default=_json_default)
    except (TypeError, ValueError):  # a value JSON cannot hold even so: that value as its text
        text = json.dumps({key: _jsonable(value) for key, value in plain.items()}, ensure_ascii=False,
                          default=_json_default)
    return text.encode("utf-8", "backslashreplace") + b"\n"


def _jsonable(value: object) -> object:
    try:
        json.dumps(value, default=_json_default)
    except (TypeError, ValueError):
        return str(value)
    return value


def _encode(text: str) -> bytes:
    """CSV text as bytes: lone surrogates from ``surrogateescape`` as the bytes they stand
    for (so a CSV field holds exactly the bytes it was read from), any other lone surrogate
    as the text ``\\udXXX`` (no bytes stand for it)."""
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        escaped = "".join(
            f"\\u{ord(char):04x}" if 0xD800 <= ord(char) <= 0xDFFF and not 0xDC80 <= ord(char) <= 0xDCFF else char
            for char in text
        )
        return escaped.encode("utf-8", "surrogateescape")


# ------------------------------------------------------------------------------ the scribe

# The scribe's program. Builtin modules only, run with -I -S: it starts in milliseconds
# and nothing from the environment (PYTHONPATH, site-packages) runs in it. Its arguments:
# the file's descriptor, the read end of the owner's wake-up pipe, and its pause (ms).
#
# A frame is a row's length (its top bit: "answer this one") and the row; an answer is a
# frame's number and 0 or the errno that failed a write. The scribe reads what the pipe
# holds (64 KiB at most: a pipe's usual capacity, and a larger read costs an mmap of its
# own), writes every whole row in it with one write(2), keeps a frame not yet whole for
# the next read, and then pauses (`_SCRIBE_PAUSE`) so the rows that come meanwhile make
# the next batch: a wake-up a row would cost more than the row. An owner that waits for
# it (an answer, room in a full pipe) wakes it with a byte on the wake-up pipe, and
# closing that pipe (the owner's close, or death) ends a pause at once too.
#
# Rows are answered when asked (fsync, flush) or when their write failed, so writing does
# not wait on the scribe. After one failure is told unasked, the next ones wait for a
# question (the first of them is its answer): the owner, blocked on a full pipe, could not
# read a stream of failures, and the scribe must never block on its answers while the
# owner blocks on its rows. A batch whose write fails is taken back out of the file whole
# and its rows then written one by one, as if each had come alone: those that fit stay.
_SCRIBE = r"""
import os, select, signal, struct, sys
for name in ("SIGINT", "SIGTERM", "SIGHUP"):
    signal.signal(getattr(signal, name), signal.SIG_IGN)
fd, wake, pause = (int(argument) for argument in sys.argv[1:4])
ASK = 1 << 63
READ = 1 << 16
head_of = struct.Struct(">Q").unpack_from
told = struct.Struct(">QI").pack
os.set_blocking(wake, False)
woken = select.poll()
woken.register(wake, select.POLLIN)

def say(data):
    try:
        os.write(1, data)
    except OSError:
        pass  # the owner is gone: write what else it sent, then stop at the pipe's end

def put(data):
    # One write(2), more only if the file takes part of it; 0 or the errno that failed it.
    done = 0
    try:
        done = os.write(fd, data)
        while done < len(data):
            done += os.write(fd, memoryview(data)[done:])
    except OSError as failure:
        if done:
            try:  # take back the part written: the file keeps whole rows only
                os.ftruncate(fd, os.lseek(fd, 0, os.SEEK_END) - done)
            except OSError:
                pass
        return failure.errno or 5
    return 0

def put_rows(rows):
    if len(rows) == 1:
        return put(rows[0])
    error = put(b"".join(rows))
    if error:
        error = 0
        for row in rows:
            failed = put(row)
            error = error or failed
    return error

say(b"R")
number = 0  # the frames read so far
quiet = False  # a failure was told unasked: the next ones wait for a question
missed = 0  # the first failure not told yet
pending = bytearray()  # the start of a frame not yet whole
pausing = False
while True:
    if pausing and woken.poll(pause):
        try:
            os.read(wake, 4096)
        except OSError:
            pass
    chunk = os.read(0, READ)
    if not chunk:
        break  # the owner is gone: a row it was sending when it died is dropped whole
    if pending:
        pending += chunk
        data = pending
    else:
        data = chunk
    end = len(data)
    at = 0
    rows = []
    while end - at >= 8:
        (head,) = head_of(data, at)
        stop = at + 8 + (head & (ASK - 1))
        if stop > end:
            break
        if stop > at + 8:
            rows.append(data[at + 8 : stop])
        at = stop
        if head & ASK:  # every row before it is in the file before the answer
            error = put_rows(rows) if rows else 0
            rows = []
            say(told(number, error or missed))
            quiet, missed = False, 0
        number += 1
    if rows:
        error = put_rows(rows)
        if error and quiet:
            missed = missed or error
        elif error:
            say(told(number - 1, error))
            quiet = True
    if data is pending:
        del pending[:at]
    elif at < end:
        pending = bytearray(memoryview(data)[at:])
    pausing = not pending and len(chunk) < READ
"""

#: How long the scribe waits, once it has written what the pipe held, before it reads
#: again (the rows that came meanwhile are then one batch, one write): how late a row
#: can reach the file. An owner that waits for the scribe wakes it at once.
_SCRIBE_PAUSE = 0.01

_ASK = 1 << 63  # in a frame's head (`_FRAME`), with its row's length: the frame wants an answer
_ANSWER = struct.Struct(">QI")  # a frame's number, and 0 or the errno that failed a write


class _Scribe:
    """The owner's end of a scribe process: rows go down a pipe, answers come back.

    A row sent is as good as written: a kill of the owner leaves it in the pipe, and the
    scribe writes it. An error writing a row is raised by a later call: the next flush or
    close (they wait for the scribe's answer), or a send or write once the scribe has told
    it (`send` looks for its word once a pause, not at every row). The pipe is
    non-blocking on this end: when it is full, the scribe is woken before the owner waits
    for room. The scribe's standard error is the owner's, so its messages are seen, and a
    reader of that stream sees its end only once the scribe has written everything sent.
    """

    def __init__(self, process: subprocess.Popen[bytes], path: str, wake: int) -> None:
        assert process.stdin is not None and process.stdout is not None
        self._process = process
        self._path = path
        self._send = process.stdin.fileno()
        self._answers = process.stdout.fileno()
        self._wake = wake  # the wake-up pipe's write end (non-blocking)
        os.set_blocking(self._send, False)  # a full pipe wakes the scribe before the owner waits
        self._received = b""  # a part of an answer
        # poll, not select: a busy run has descriptors past select's limit (1024).
        self._poll = select.poll()
        self._poll.register(self._answers, select.POLLIN)
        self._room = select.poll()
        self._room.register(self._send, select.POLLOUT)
        self._sent = 0  # frames sent so far (the next one's number)
        self._look_at = 0.0  # when `send` next looks for an answer
        self._failure: OSError | None = None

    @classmethod
    def start(cls, fd: int, path: str, *, pause: float = _SCRIBE_PAUSE) -> _Scribe | None:
        """A scribe writing to ``fd``, ready; None when none can be started (an embedded
        Python with no usable ``sys.executable``): the owner then writes itself."""
        if not sys.executable:
            return None
        woken, wake = os.pipe()
        try:
            process = subprocess.Popen(
                [sys.executable, "-I", "-S", "-c", _SCRIBE, str(fd), str(woken), str(round(pause * 1000))],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, pass_fds=(fd, woken), start_new_session=True,
                bufsize=0,
            )
        except OSError:
            os.close(wake)
            return None
        finally:
            os.close(woken)
        os.set_blocking(wake, False)
        scribe = cls(process, path, wake)
        if scribe._poll.poll(_SCRIBE_START_TIMEOUT * 1000) and os.read(scribe._answers, 1) == b"R":
            return scribe
        process.kill()
        scribe._end()
        return None

    def send(self, record: bytes) -> None:
        """Send ``record``, and return: `write` without ``wait``, made short (most rows)."""
        if time.monotonic() >= self._look_at:
            self._look()
        if len(record) > CHUNK:
            self._frame(record, False)
            return
        frame = _FRAME.pack(len(record)) + record
        try:
            done = os.write(self._send, frame)
        except BlockingIOError:
            done = 0
        except BrokenPipeError:
            raise self._gone() from None
        if done < len(frame):
            self._put(frame, done)
        self._sent += 1

    def write(self, record: bytes, *, wait: bool = False) -> None:
        """Send ``record``; with ``wait``, return once it is in the file."""
        if self._poll.poll(0):
            self._collect(None)
        self._raise()
        self._frame(record, wait)
        if wait:
            self._collect(self._sent - 1)
            self._raise()

    def flush(self) -> None:
        """Return once every row sent is in the file (an empty frame, answered, ends them)."""
        self.write(b"", wait=True)

    def close(self) -> None:
        """Write every row sent, and end the scribe; raise an error writing one."""
        try:
            self.flush()
        finally:
            self._end()

    def _frame(self, record: bytes, ask: bool) -> None:
        head = _FRAME.pack(len(record) | (_ASK if ask else 0))
        if len(record) <= CHUNK:
            self._put(head + record)
        else:  # not copied once more only to put its length before it
            self._put(head)
            self._put(record)
        self._sent += 1
        if ask:
            self._rouse()

    def _put(self, data: bytes, done: int = 0) -> None:
        """Put ``data`` in the pipe; while it is full, wake the scribe and wait for room."""
        while True:
            try:
                done += os.write(self._send, data if not done else memoryview(data)[done:])
            except BlockingIOError:
                pass
            except BrokenPipeError:
                raise self._gone() from None
            if done == len(data):
                return
            self._rouse()
            self._room.poll()

    def _look(self) -> None:
        """Raise a failure the scribe told (it tells no more than a pause after the write)."""
        self._look_at = time.monotonic() + _SCRIBE_PAUSE
        if self._poll.poll(0):
            self._collect(None)
        self._raise()

    def _rouse(self) -> None:
        """End the scribe's pause now: the owner waits for it."""
        with contextlib.suppress(OSError):  # full: it is woken already; closed: it is gone
            os.write(self._wake, b"!")

    def _collect(self, until: int | None) -> None:
        """Read the answers there are (the pipe has some); with ``until``, until that frame's."""
        while True:
            data = os.read(self._answers, 4096)
            if not data:
                if until is None:
                    return  # the next frame finds out
                raise self._gone()
            self._received += data
            answered = until is None
            while len(self._received) >= _ANSWER.size:
                number, error = _ANSWER.unpack_from(self._received)
                self._received = self._received[_ANSWER.size :]
                if error and self._failure is None:
                    self._failure = OSError(error, os.strerror(error), self._path)
                answered = answered or number == until
            if answered:
                return

    def _gone(self) -> OSError:
        return OSError(errno.EPIPE, "the results file's writer process has ended", self._path)

    def _raise(self) -> None:
        if self._failure is not None:
            failure, self._failure = self._failure, None
            raise failure

    def _end(self) -> None:
        assert self._process.stdin is not None and self._process.stdout is not None
        self._process.stdin.close()
        if self._wake >= 0:
            os.close(self._wake)  # a pausing scribe reads on at once, to the pipe's end
            self._wake = -1
        self._process.wait()
        self._process.stdout.close()


# ------------------------------------------------------------------------ other processes


class RemoteWriter:
    """Writes rows to a `TableWriter` in another process (`TableWriter.remote`).

    Picklable: it carries only the address of the writer's socket. A process connects on
    its first row, once for all the handles it holds to that writer, and sends each row
    whole (length-prefixed, pickled) under a lock, so its threads may share it. A row is
    sent once it is in the socket's buffer: the owner writes it then, even if this process
    ends at once. Rows are not acknowledged: an error writing one is raised by the owner's
    `TableWriter.close`.
    """

    __slots__ = ("address",)

    def __init__(self, address: str) -> None:
        self.address = address

    def __reduce__(self) -> tuple[type[RemoteWriter], tuple[str]]:
        return RemoteWriter, (self.address,)

    def write(self, row: Mapping[str, Any]) -> None:
        payload = _pickled(row)
        _connection(self.address).send(_FRAME.pack(len(payload)) + payload)

    def close(self) -> None:
        """Close this process's connection (at its exit it is closed anyway)."""
        with _connections_lock:
            connection = _connections.pop(self.address, None)
        if connection is not None:
            connection.close()

    def __enter__(self) -> RemoteWriter:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.close()


def _pickled(row: Mapping[str, Any]) -> bytes:
    plain = {_name(key): value for key, value in row.items()}
    try:
        return pickle.dumps(plain, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:  # a value that cannot be pickled (a lock, a generator): sent as its text
        return pickle.dumps({key: _picklable(value) for key, value in plain.items()}, protocol=pickle.HIGHEST_PROTOCOL)


def _picklable(value: object) -> object:
    try:
        pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:
        return str(value)
    return value


class _Connection:
    """One process's connection to a writer's socket."""

    def __init__(self, address: str) -> None:
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._socket.connect(address)
        except OSError as error:
            self._socket.close()
            raise _unreachable(error) from None
        self._lock = threading.Lock()

    def send(self, frame: bytes) -> None:
        with self._lock:
            try:
                self._socket.sendall(frame)
            except OSError as error:
                raise _unreachable(error) from None

    def close(self) -> None:
        self._socket.close()


def _unreachable(error: OSError) -> OSError:
    return OSError(error.errno, f"cannot reach the results writer (is it closed?): {error.strerror}")


_connections: dict[str, _Connection] = {}
_connections_lock = threading.Lock()


def _connection(address: str) -> _Connection:
    with _connections_lock:
        connection = _connections.get(address)
        if connection is None:
            connection = _connections[address] = _Connection(address)
        return connection


def _forget_connections() -> None:
    # A forked child must not share its parent's connections (its rows would interleave
    # with the parent's) nor inherit the lock held by a thread that is not there.
    global _connections, _connections_lock
    _connections = {}
    _connections_lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_connections)


class _Relay:
    """The owner's end of `RemoteWriter`: a Unix socket in a private folder (mode 0700,
    so only this user can connect), and one thread that reads whole rows from every
    connection and hands each to the writer. A row cut short (its process died while
    sending it) is dropped."""

    def __init__(self, deliver: Callable[[Mapping[str, Any]], None]) -> None:
        self._deliver = deliver
        self._folder = _private_folder()
        self.address = os.path.join(self._folder, "rows")
        self._server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._wake, self._waker = socket.socketpair()
        self._selector = selectors.DefaultSelector()
        self._pending: dict[socket.socket, bytearray] = {}
        self._failure: BaseException | None = None
        try:
            self._server.bind(self.address)
            self._server.listen(64)
            self._server.setblocking(False)
            self._selector.register(self._server, selectors.EVENT_READ)
            self._selector.register(self._wake, selectors.EVENT_READ)
        except BaseException:
            self._release()
            raise
        self._thread = threading.Thread(target=self._serve, name="phalanx-results-relay", daemon=True)
        self._thread.start()

    def close(self) -> BaseException | None:
        """Write every row already sent, stop, and clean up; the first failure, if any.

        A row is sent once it is in the socket's buffers, and a process may have connected
        without being accepted yet: so the thread, woken, accepts and reads until nothing
        more is there, and every row a handle sent before this call is written.
        """
        self._waker.send(b"x")
        self._thread.join()
        self._release()
        return self._failure

    def _serve(self) -> None:
        try:
            while True:
                for key, _ in self._selector.select():
                    if key.fileobj is self._wake:
                        self._drain()
                        return
                    if key.fileobj is self._server:
                        self._accept()
                    else:
                        assert isinstance(key.fileobj, socket.socket)
                        self._receive(key.fileobj)
        except BaseException as error:  # the owner's close() raises it
            self._fail(error)

    def _drain(self) -> None:
        progress = True
        while progress:
            progress = self._accept()
            for connection in list(self._pending):
                progress = self._receive(connection) or progress

    def _accept(self) -> bool:
        accepted = False
        while True:
            try:
                connection, _ = self._server.accept()
            except BlockingIOError:
                return accepted
            connection.setblocking(False)
            self._pending[connection] = bytearray()
            self._selector.register(connection, selectors.EVENT_READ)
            accepted = True

    def _receive(self, connection: socket.socket) -> bool:
        """Read what ``connection`` has (once), and hand on every whole row; whether it had anything."""
        try:
            chunk = connection.recv(CHUNK)
        except BlockingIOError:
            return False
        except OSError:
            chunk = b""
        if not chunk:  # its process closed it, or ended
            self._selector.unregister(connection)
            del self._pending[connection]
            connection.close()
            return False
        buffer = self._pending[connection]
        buffer += chunk
        while len(buffer) >= _FRAME.size:
            (size,) = _FRAME.unpack_from(buffer)
            if len(buffer) < _FRAME.size + size:
                break
            payload = bytes(buffer[_FRAME.size : _FRAME.size + size])
            del buffer[: _FRAME.size + size]
            try:
                row = pickle.loads(payload)
                if not isinstance(row, Mapping):
                    raise TypeError(f"a results row must be a mapping, not {type(row).__name__}")
                self._deliver(row)
            except Exception as error:  # one bad row does not stop the others
                self._fail(error)
        return True

    def _fail(self, error: BaseException) -> None:
        if self._failure is None:
            self._failure = error

    def _release(self) -> None:
        for connection in self._pending:
            connection.close()
        self._pending.clear()
        self._selector.close()
        for end in (self._server, self._wake, self._waker):
            end.close()
        shutil.rmtree(self._folder, ignore_errors=True)


def _private_folder() -> str:
    """A new folder only this user can enter (mkdtemp: mode 0700), with a path short
    enough for a socket's address (about 100 bytes at most)."""
    folder = tempfile.mkdtemp(prefix="phalanx-results-")
    if len(os.fsencode(folder)) <= 80:
        return folder
    os.rmdir(folder)
    with contextlib.suppress(OSError):
        return tempfile.mkdtemp(prefix="phalanx-results-", dir="/tmp")
    raise OSError(errno.ENAMETOOLONG, "no folder with a path short enough for a socket")
