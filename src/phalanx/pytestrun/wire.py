"""What a fork tells its parent: length-prefixed pickles on a pipe, one message at a time.

A fork writes with blocking ``os.write`` (it has nothing else to do); the parent reads on
its event loop. A message is never half-read: a fork that dies mid-write leaves a short
frame, which the parent takes as the end of the stream, the same as a crash.

Messages, in the order a fork sends them per test:

- ``Started(index, nodeid, location)``: `pytest_runtest_logstart`;
- ``Reported(data)``: `pytest_runtest_logreport`, the report as
  ``pytest_report_to_serializable`` makes it (setup, call, teardown);
- ``Finished(index, nodeid, location)``: `pytest_runtest_logfinish`;
- ``Warned(...)``: `pytest_warning_recorded` while a test ran (any number, before ``Finished``);

and ``Done()`` once the tests it was given have all run (or ``-x`` stopped them).
"""

from __future__ import annotations

import os
import pickle
import struct
import sys
import warnings
from dataclasses import dataclass
from typing import Any

_HEADER = struct.Struct("!I")

#: A message longer than this is refused when read: a corrupt header must not allocate gigabytes.
MAX_MESSAGE = 256 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Started:
    index: int
    nodeid: str
    location: tuple[str, int | None, str]


@dataclass(frozen=True, slots=True)
class Reported:
    data: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Finished:
    index: int
    nodeid: str
    location: tuple[str, int | None, str]


@dataclass(frozen=True, slots=True)
class Warned:
    """``pytest_warning_recorded`` during a test: the warning as plain data (its object may not pickle)."""

    message: str
    category: tuple[str, str]  # the warning class's module and qualified name
    filename: str
    lineno: int
    line: str | None
    nodeid: str
    location: tuple[str, int, str] | None

    @classmethod
    def of(
        cls, warning: warnings.WarningMessage, nodeid: str, location: tuple[str, int, str] | None
    ) -> Warned:
        category = warning.category
        return cls(
            str(warning.message), (category.__module__, category.__qualname__), str(warning.filename),
            int(warning.lineno), warning.line, nodeid, location,
        )

    def warning_message(self) -> warnings.WarningMessage:
        """The warning again, as pytest's hooks take it (its class found by name, or made alike)."""
        module, qualname = self.category
        found: Any = sys.modules.get(module)
        for part in qualname.split("."):
            found = getattr(found, part, None)
        category = found if isinstance(found, type) and issubclass(found, Warning) else None
        if category is None:
            category = type(qualname.rsplit(".", 1)[-1], (Warning,), {"__module__": module})
        try:
            message: Warning | str = category(self.message)
        except Exception:
            message = self.message
        return warnings.WarningMessage(message, category, self.filename, self.lineno, line=self.line)


@dataclass(frozen=True, slots=True)
class Done:
    pass


Message = Started | Reported | Finished | Warned | Done


def send(fd: int, message: Message) -> None:
    """Write one message whole (the fork side)."""
    body = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    view = memoryview(_HEADER.pack(len(body)) + body)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def header_size() -> int:
    return _HEADER.size


def body_size(header: bytes) -> int:
    (size,) = _HEADER.unpack(header)
    if size > MAX_MESSAGE:
        raise ValueError(f"a message of {size} bytes: the stream is corrupt")
    return int(size)


def decode(body: bytes) -> Message:
    message = pickle.loads(body)
    if not isinstance(message, Started | Reported | Finished | Warned | Done):
        raise ValueError(f"not a message: {type(message).__name__}")
    return message


def send_command(fd: int, indices: tuple[int, ...]) -> None:
    """The parent gives a fork the tests to run next (their indices)."""
    body = pickle.dumps(indices, protocol=pickle.HIGHEST_PROTOCOL)
    view = memoryview(_HEADER.pack(len(body)) + body)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def read_command(fd: int) -> tuple[int, ...] | None:
    """The fork waits for its next tests; None when the parent closed the pipe (time to go)."""
    header = _read_exactly(fd, _HEADER.size)
    if header is None:
        return None
    body = _read_exactly(fd, body_size(header))
    if body is None:
        return None
    indices = pickle.loads(body)
    return tuple(int(index) for index in indices)


def _read_exactly(fd: int, size: int) -> bytes | None:
    chunks: list[bytes] = []
    while size:
        chunk = os.read(fd, size)
        if not chunk:
            return None
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)
