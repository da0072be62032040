"""The results sink: one record per job, written the moment the job ends.

``--results FILE.csv`` (GNU parallel's columns), ``--results FILE.jsonl`` (one JSON object
a line, with phalanx's statuses), or ``--results DIR`` (a folder a job holding ``stdout``,
``stderr``, ``seq`` and ``exitval``). One writer owns each file and writes a whole record
before the next, in completion order, so a kill -9 leaves every finished job's row
complete and never a partial one (a record too large for one write can be cut short only
while it is copied in; ``--resume`` cuts such a partial record off). A job phalanx stopped
on an interrupt or a terminate gets no record: it did not finish, and runs again with
``--resume``.

A job's output is never held whole in memory: records are made from its output files a
chunk at a time (`CHUNK`), so one job printing a gigabyte costs no more memory than one
printing a line.

The record's fields come from a `JobInfo` the front end provides for each task; the
coroutine front end (roadmap) adds callables' returned fields the same way.

Modes: the files and folders are made as GNU parallel makes them, 0666 and 0777 less the
umask: they are the user's results, unlike phalanx's own run directory (0700) and journal
(0600). A folder's name never leaves ``DIR`` whatever the argument (`safe_component`).
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import errno
import functools
import hashlib
import io
import json
import os
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO

from ..events import Event, RunStarted
from ..results import TaskResult
from .joblog import Recorded, Records, exit_columns, read_chunks, write_all, write_record


@dataclass(frozen=True, slots=True)
class JobInfo:
    """What a results record says about the job besides its result."""

    seq: int
    args: tuple[str, ...]
    command: str
    names: tuple[str, ...] | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)


Describe = Callable[[TaskResult], JobInfo]

#: os.sendfile's errors that mean "not between these two files": copy in chunks instead.
_NO_SENDFILE = frozenset({errno.EINVAL, errno.ENOSYS, errno.ENOTSOCK, errno.EOPNOTSUPP})


class JobOutput:
    """A job's stdout or stderr file, read a chunk at a time; a missing file is empty.

    ``size`` is taken once, when it is opened, and bounds every read, so a record's byte
    count (CSV's Receive) and its content agree however often the file is read.
    """

    def __init__(self, path: str | None) -> None:
        self._file: BinaryIO | None = None
        self.size = 0
        if path is None:
            return
        try:
            self._file = open(path, "rb", buffering=0)  # noqa: SIM115 - closed by close()
        except OSError:
            return
        self.size = os.fstat(self._file.fileno()).st_size

    def chunks(self) -> Iterator[bytes]:
        """The whole output from its start, in chunks of at most `CHUNK` bytes."""
        if self._file is None:
            return iter(())
        self._file.seek(0)
        return read_chunks(self._file, self.size)

    def copy_to(self, fd: int) -> None:
        """Copy the whole output to ``fd``: in the kernel (sendfile) where it can, else in chunks."""
        if self._file is None:
            return
        copied = 0
        try:
            while copied < self.size:
                sent = os.sendfile(fd, self._file.fileno(), copied, self.size - copied)
                if sent == 0:
                    return  # the file shrank: what was there is copied
                copied += sent
        except OSError as error:
            if copied or error.errno not in _NO_SENDFILE:
                raise
            for chunk in self.chunks():
                write_all(fd, chunk)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()

    def __enter__(self) -> JobOutput:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.close()


def complete_csv_records(source: BinaryIO, delimiter: str = ",") -> int:
    """How many leading bytes of ``source`` are whole CSV records.

    A record may span lines (a quoted field holding newlines), so the end of a line is
    not the end of a record: a record ends at a newline outside quotes. Quotes appear only
    in quoted fields (every field holding one is quoted, and a quote in it doubled), so a
    byte is inside quotes when an odd number of quotes comes before it. The file is read a
    chunk at a time, with no limit on a field's size (the csv module stops at 128 KiB,
    and a record it cannot read would be cut off with every record after it). A record
    cut short by a crash lacks its line end or leaves a quote open: it is not whole.
    ``delimiter`` does not matter: where records end depends on quotes and newlines alone.
    """
    complete = 0
    offset = 0
    inside = False  # whether we are inside a quoted field
    source.seek(0)
    for chunk in read_chunks(source):
        # Hop from quote to quote (a doubled quote is two hops); outside quotes, the last
        # newline before the next quote ends a record. No regex: possessive patterns
        # misbehave on the Python 3.11 releases before 3.11.5 that distributions ship.
        position = 0
        while position < len(chunk):
            quote = chunk.find(b'"', position)
            if inside:
                if quote < 0:
                    break
                inside = False
            else:
                newline = chunk.rfind(b"\n", position, len(chunk) if quote < 0 else quote)
                if newline >= 0:
                    complete = offset + newline + 1
                if quote < 0:
                    break
                inside = True
            position = quote + 1
        offset += len(chunk)
    return complete


class CsvResults:
    """GNU parallel's CSV: Seq,Host,Starttime,JobRuntime,Send,Receive,Exitval,Signal,Command,V1..Vn,Stdout,Stderr.

    Host is ``:`` (this machine), or the cluster worker's address for a job run on one."""

    def __init__(self, records: Records, describe: Describe, arity: int, *, delimiter: str = ",") -> None:
        # A sink owns its file from the run's start to its end (close()); a file resumed
        # (not empty) already has its header.
        self._file = records
        self._delimiter = delimiter
        self._arity = arity
        self._describe = describe
        self._started_at = 0.0
        self._recorded = Recorded()
        if self._file.empty:
            values = [f"V{i}" for i in range(1, arity + 1)]
            header = ["Seq", "Host", "Starttime", "JobRuntime", "Send", "Receive", "Exitval", "Signal", "Command",
                      *values, "Stdout", "Stderr"]
            self._file.write(self._fields(header) + b"\r\n")

    def _fields(self, fields: Sequence[object]) -> bytes:
        """``fields`` as the csv module writes them (quoted where needed), without the line end."""
        buffer = io.StringIO()
        csv.writer(buffer, delimiter=self._delimiter).writerow(fields)
        # The csv module ends a row with "\r\n" (and a field holding "\r" or "\n" is quoted
        # because that is its line end: another line end would change the quoting).
        return buffer.getvalue().removesuffix("\r\n").encode("utf-8", "surrogateescape")

    def handle(self, event: Event) -> None:
        if isinstance(event, RunStarted):
            self._started_at = event.started_at
        elif (result := self._recorded.result(event)) is not None:
            self._record(result)

    def _record(self, result: TaskResult) -> None:
        info = self._describe(result)
        exitval, signal = exit_columns(result)
        start = self._started_at + (result.end or 0.0) - result.duration
        with JobOutput(result.stdout_path) as stdout, JobOutput(result.stderr_path) as stderr:
            host = ":" if result.worker_address is None else result.worker_address  # as the joblog's Host
            head = [info.seq, host, f"{start:.3f}", f"{result.duration:.3f}", 0, stdout.size, exitval, signal,
                    info.command, *info.args, *[""] * (self._arity - len(info.args))]
            write_record(self._file, self._row(head, (stdout, stderr)))

    def _row(self, head: Sequence[object], outputs: Sequence[JobOutput]) -> Iterator[bytes]:
        yield self._fields(head)
        separator = self._delimiter.encode()
        for output in outputs:
            yield separator
            yield from _csv_field(output, separator)
        yield b"\r\n"

    def close(self) -> None:
        self._file.close()


def _csv_field(output: JobOutput, delimiter: bytes) -> Iterator[bytes]:
    """The output as one CSV field, byte for byte as the csv module would write its text
    (decoded with surrogateescape, which gives back the same bytes): quoted, its quotes
    doubled, if it holds the delimiter, a quote or a line end anywhere, so it is scanned
    for those first (usually the first chunk has a newline and the scan stops there).
    UTF-8 never puts these ASCII bytes inside a character, so bytes can be tested alone."""
    special = (delimiter, b'"', b"\n", b"\r")
    if not any(any(byte in chunk for byte in special) for chunk in output.chunks()):
        yield from output.chunks()
        return
    yield b'"'
    for chunk in output.chunks():
        yield chunk.replace(b'"', b'""')
    yield b'"'


@dataclass(frozen=True, slots=True)
class _Streamed:
    """A JSONL record's value that is a job's output, written as a JSON string a chunk at a time."""

    output: JobOutput


class JsonlResults:
    """One JSON object per finished job, with phalanx's status and timing."""

    def __init__(self, records: Records, describe: Describe) -> None:
        self._file = records
        self._describe = describe
        self._started_at = 0.0
        self._recorded = Recorded()

    def handle(self, event: Event) -> None:
        if isinstance(event, RunStarted):
            self._started_at = event.started_at
        elif (result := self._recorded.result(event)) is not None:
            self._record(result)

    def _record(self, result: TaskResult) -> None:
        info = self._describe(result)
        exitval, signal = exit_columns(result)
        with JobOutput(result.stdout_path) as stdout, JobOutput(result.stderr_path) as stderr:
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
                "stdout": _Streamed(stdout),
                "stderr": _Streamed(stderr),
                "data": dict(result.data),
            }
            if result.output_cut is not None:  # phalanx's own: --max-output cut the output
                record["note"] = result.note
            if result.worker_address is not None:  # a cluster worker ran it (--backend dask)
                record["worker_address"] = result.worker_address
            if info.names:
                record["named"] = dict(zip(info.names, info.args, strict=False))
            record.update(info.extra)
            write_record(self._file, _json_line(record))

    def close(self) -> None:
        self._file.close()


def _json_line(record: Mapping[Any, Any]) -> Iterator[bytes]:
    """``json.dumps(record, ensure_ascii=False, default=str)`` and a newline, as UTF-8, made
    item by item (which gives the same text); a `_Streamed` value's text comes in chunks."""
    yield b"{"
    for index, (key, value) in enumerate(record.items()):
        if index:
            yield b", "
        if isinstance(value, _Streamed):
            yield _json({key: ""})[1:-3]  # the key and ": "
            yield from _json_string(value.output)
        else:
            yield _json({key: value})[1:-1]
    yield b"}\n"


def _json(value: object) -> bytes:
    # An argument that was not UTF-8 holds lone surrogates: "backslashreplace" writes them as
    # the JSON escapes \udcXX, so the line stays valid UTF-8 and valid JSON.
    return json.dumps(value, ensure_ascii=False, default=str).encode("utf-8", "backslashreplace")


# What json.dumps(text, ensure_ascii=False) escapes: the backslash first (the other escapes
# add backslashes), then the quote and the control characters that have short escapes.
_JSON_ESCAPES = ((b"\\", b"\\\\"), (b'"', b'\\"'), (b"\n", b"\\n"), (b"\r", b"\\r"), (b"\t", b"\\t"),
                 (b"\b", b"\\b"), (b"\f", b"\\f"))
_OTHER_CONTROLS = re.compile(rb"[\x00-\x07\x0b\x0e-\x1f]")
# Every byte but those: deleting them leaves the controls there are (the regex alone scans slowly).
_NOT_OTHER_CONTROLS = bytes(byte for byte in range(256) if not _OTHER_CONTROLS.match(bytes([byte])))


def _json_string(output: JobOutput) -> Iterator[bytes]:
    """The output decoded as UTF-8 (bad bytes as U+FFFD), as a JSON string: the text
    ``json.dumps`` gives for the whole. A character split between two chunks waits for
    the next one (as an incremental decoder does) and JSON escapes each character on its
    own, so chunks can be written one by one."""
    yield b'"'
    pending = b""  # the start of a character the next chunk ends
    for chunk in output.chunks():
        data = pending + chunk
        try:
            # Only to check the bytes: valid UTF-8 is escaped as it is, far faster than
            # json.dumps escapes text (ASCII needs no check at all).
            used = len(data) if data.isascii() else codecs.utf_8_decode(data, "strict", False)[1]
        except UnicodeDecodeError:
            text, used = codecs.utf_8_decode(data, "replace", False)
            yield _json(text)[1:-1]
        else:
            yield _escape_utf8(data[:used])
        pending = data[used:]
    yield _json(codecs.utf_8_decode(pending, "replace", True)[0])[1:-1]
    yield b'"'


def _escape_utf8(data: bytes) -> bytes:
    """Valid UTF-8 as the inside of a JSON string, as ``json.dumps(..., ensure_ascii=False)``
    writes it: UTF-8 never puts an ASCII byte inside a character, so bytes can be replaced."""
    for byte, escape in _JSON_ESCAPES:
        data = data.replace(byte, escape)
    if not data.translate(None, _NOT_OTHER_CONTROLS):
        return data
    return _OTHER_CONTROLS.sub(lambda control: b"\\u%04x" % control.group()[0], data)


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


_DIRECTORY_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


class DirectoryResults:
    """GNU parallel's tree: DIR/<n or name>/<value>/.../{stdout,stderr,seq}, plus ``exitval``.

    Nothing under DIR is followed if it is a symbolic link, so a link planted there cannot
    make a job's results land elsewhere: the job's folders are walked down from DIR by
    descriptor, each opened ``O_NOFOLLOW`` (a link where a folder goes is refused), and each
    file is written to a temporary name created ``O_EXCL | O_NOFOLLOW``, then renamed over
    its name (which replaces a link there, never writes through it).
    """

    def __init__(self, root: Path, describe: Describe) -> None:
        self._root = root.resolve()
        self._describe = describe
        self._recorded = Recorded()
        self._root_fd: int | None = None

    def _components(self, info: JobInfo) -> list[str]:
        """The folder names from DIR down to the job's folder."""
        names: Sequence[str] = info.names or ()
        # A column without a name (no --header, or a short header) is labelled by its number.
        labels = [names[i] if i < len(names) and names[i] else str(i + 1) for i in range(len(info.args))]
        components: list[str] = []
        # As GNU: the columns sorted by label, numerically and then as text (1 2 10, a b).
        for index in sorted(range(len(labels)), key=lambda i: (_perl_number(labels[i]), labels[i])):
            components += [safe_component(labels[index]), safe_component(info.args[index])]
        return components

    def job_dir(self, info: JobInfo) -> Path:
        """Where the job's results go."""
        return self._root.joinpath(*self._components(info))

    def handle(self, event: Event) -> None:
        result = self._recorded.result(event)
        if result is None:
            return
        info = self._describe(result)
        exitval, _ = exit_columns(result)
        directory = self._open_job_dir(info)
        try:
            for name, path in (("stdout", result.stdout_path), ("stderr", result.stderr_path)):
                with JobOutput(path) as output:
                    _place(directory, name, output.copy_to)
            for name, content in (("seq", str(info.seq)), ("exitval", str(exitval))):  # no newline, as GNU's
                _place(directory, name, functools.partial(_write_bytes, content.encode()))
        finally:
            os.close(directory)

    def _open_job_dir(self, info: JobInfo) -> int:
        """The job's folder (made as needed) as a descriptor, walked down from DIR without
        following a link: `safe_component` names are never ``.``, ``..`` or hold a ``/``."""
        if self._root_fd is None:
            self._root.mkdir(parents=True, exist_ok=True)
            self._root_fd = os.open(self._root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        directory = os.dup(self._root_fd)
        path = self._root
        try:
            for name in self._components(info):
                path = path / name
                with contextlib.suppress(FileExistsError):
                    os.mkdir(name, dir_fd=directory)
                try:
                    inner = os.open(name, _DIRECTORY_FLAGS, dir_fd=directory)
                except OSError as error:
                    if error.errno not in (errno.ELOOP, errno.ENOTDIR):
                        raise
                    raise OSError(error.errno, "not a folder (a symbolic link is never followed)", str(path)) from None
                os.close(directory)
                directory = inner
        except BaseException:
            os.close(directory)
            raise
        return directory

    def close(self) -> None:
        if self._root_fd is not None:
            os.close(self._root_fd)
            self._root_fd = None


def _place(directory: int, name: str, fill: Callable[[int], None]) -> None:
    """Make file ``name`` in ``directory`` whole or not at all: ``fill`` writes it under a
    temporary name, which then replaces ``name``."""
    temporary = f".{name}.tmp"
    fd = _create(directory, temporary)
    try:
        fill(fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(temporary, dir_fd=directory)
        raise
    os.close(fd)
    os.replace(temporary, name, src_dir_fd=directory, dst_dir_fd=directory)


def _write_bytes(data: bytes, fd: int) -> None:
    write_all(fd, data)


def _create(directory: int, name: str) -> int:
    """Create a new file ``name``, never through a link: what holds the name already (a
    temporary left by a crash, or a planted link) is removed first, not written to."""
    try:
        return os.open(name, _CREATE_FLAGS, 0o666, dir_fd=directory)
    except FileExistsError:
        os.unlink(name, dir_fd=directory)  # removes a link itself, not what it points to
        return os.open(name, _CREATE_FLAGS, 0o666, dir_fd=directory)
