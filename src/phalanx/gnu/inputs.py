"""Where the jobs of ``phalanx map`` get their args: ``:::``, ``::::``, ``-a`` and stdin.

The semantics are GNU parallel 20221122's (checked against it by ``tests/test_mapinput.py``):

* no source means lines from stdin; lines end at ``\\n`` (NUL with ``null``, any string
  with ``delimiter``), a last line without one still counts, empty lines are empty args,
  and ``\\r`` is kept;

* several sources give their cartesian product, the last source varying fastest;
  a linked source (``:::+`` / ``::::+``) is paired element by element with the one
  before it, stopping at the shorter, as GNU's ``:::+`` does (``--link`` would wrap);
* ``colsep`` (a regex) splits every record, ``:::`` values included, into columns, and
  then, as in GNU, trims blanks around every arg; ``csv`` parses records as CSV instead;
* ``header`` makes the first record of each source the names of its columns (with
  neither ``colsep`` nor ``csv``, GNU splits header and records on tabs, and so do we).

Deliberate differences from GNU, each for safety or plain correctness:

* a source with no values (an empty ``:::`` group or file) means no jobs at all; GNU
  reads stdin for a lone empty ``:::`` and pads an empty source with one empty arg,
  which turns ``rm {1}/{2}`` into ``rm /x``;
* a ``:::+`` with no source before it is an error (GNU ignores the ``+``);
* ``colsep`` is a Python regex matched against characters (GNU: a Perl regex against
  bytes, so ``.`` or ``,*`` can cut a UTF-8 character in two); the splitting itself is
  Perl's ``split`` (empty matches, groups), as GNU's;
* CSV is Python's ``csv`` module, which is more lenient: it reads CRLF files, a stray
  quote inside an unquoted field, and multi-line fields that GNU's quote counting cuts
  wrongly, where GNU stops with "CSV has unexpected format"; it keeps UTF-8 (GNU's --csv
  turns ``é`` into one Latin-1 byte); a CSV header is parsed as CSV (GNU splits it on
  the separator, quotes and all);
* header names are plain names (GNU uses each as a regex, and an empty one turns
  ``{}`` into that column): an empty name cannot be referred to.
"""

from __future__ import annotations

import io
import itertools
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import IO, Literal

from ..errors import ConfigError

__all__ = ["InputSource", "JobInputs", "read_inputs"]

_BLANKS = " \t\n\r\f\v"  # Perl's \s on bytes, which GNU's --trim strips


@dataclass(frozen=True, slots=True)
class InputSource:
    """One input source.

    Attributes:
        kind: ``"args"`` (the values after ``:::``), ``"file"`` (after ``::::`` or ``-a``)
            or ``"stdin"``.
        values: the values, for ``"args"``.
        path: the file, for ``"file"``; ``"-"`` means stdin.
        linked: ``:::+`` / ``::::+``: pair with the previous source instead of the product.
    """

    kind: Literal["args", "file", "stdin"]
    values: tuple[str, ...] = ()
    path: str | None = None
    linked: bool = False


@dataclass(frozen=True, slots=True)
class JobInputs:
    """The args of every job.

    Attributes:
        names: the column names when a header was read (position i is ``{i+1}``), else None.
        rows: one tuple of args per job, in GNU's order, columns of all sources flattened.
    """

    names: tuple[str, ...] | None
    rows: list[tuple[str, ...]]


Record = tuple[str, ...]


def read_inputs(
    sources: Sequence[InputSource],
    *,
    stdin: IO[bytes] | None,
    null: bool = False,
    delimiter: str | None = None,
    colsep: str | None = None,
    csv: bool = False,
    header: str | None = None,
) -> JobInputs:
    """Read every source and combine them into the args of each job.

    Args:
        sources: the input sources in command-line order; empty means stdin.
        stdin: where ``"stdin"`` sources and ``::::`` ``-`` read from (bytes).
        null: records end at NUL instead of newline (``-0``).
        delimiter: records end at this string instead (``-d``; wins over ``null``).
        colsep: a regex splitting each record into columns (``--colsep``); with ``csv``,
            the one-character field separator instead (default ``,``).
        csv: parse records as CSV: quoted fields may hold separators and newlines.
        header: GNU's ``--header``; any value but None (or GNU's ``"0"``) makes the first
            record of each source its column names.

    Raises:
        ConfigError: a file cannot be read, stdin is missing or read twice, ``colsep`` is
            not a valid regex (or not one character with ``csv``), a linked source has no
            source before it, or the CSV is malformed.
    """
    sources = list(sources) or [InputSource("stdin")]
    if sources[0].linked:
        raise ConfigError("a linked input source (:::+ or ::::+) needs an input source before it")
    if sum(source.kind == "stdin" or source.path == "-" for source in sources) > 1:
        raise ConfigError("only one input source can read stdin")
    with_header = header is not None and header != "0"
    split = _splitter(colsep, csv=csv, with_header=with_header)
    end = delimiter if delimiter else "\0" if null else "\n"
    names: list[str] = []
    groups: list[list[list[Record]]] = []  # the sources of a group are zipped; groups multiplied
    for source in sources:
        records = [record for chunk in _chunks(source, stdin, end=end, csv=csv) for record in split(chunk, source)]
        if with_header and records:
            head = list(records.pop(0))
            # GNU reads the header with chomp and s/\r$//, and splits it without Perl's
            # -1 limit, so a trailing \r and trailing empty names are dropped.
            head[-1] = head[-1].removesuffix("\r")
            while head and not head[-1]:
                head.pop()
            names += head
        if colsep is not None:  # GNU sets --trim lr whenever --colsep is given
            records = [tuple(arg.strip(_BLANKS) for arg in record) for record in records]
        if source.linked:
            groups[-1].append(records)
        else:
            groups.append([records])
    zipped = [[_flat(parts) for parts in zip(*group, strict=False)] for group in groups]
    rows = [_flat(parts) for parts in itertools.product(*zipped)]
    return JobInputs(tuple(names) if with_header else None, rows)


def _flat(parts: Sequence[Record]) -> Record:
    return tuple(itertools.chain.from_iterable(parts))


def _chunks(source: InputSource, stdin: IO[bytes] | None, *, end: str, csv: bool) -> list[str]:
    """The source's text cut into GNU's records (a whole file at once for newline CSV)."""
    if source.kind == "args" and csv:
        return list(source.values)  # each value parsed as CSV (a newline in it ends a record)
    # As GNU parallel, ::: values are written out, each followed by the delimiter, and read
    # back as records: a value holding a newline (or the -d delimiter) is several values,
    # and "a\n" is "a" and "".
    data = "".join(value + end for value in source.values) if source.kind == "args" else _read(source, stdin)
    if csv and end == "\n":
        return [data] if data else []  # CSV records may span lines: the csv module finds where they end
    records = data.split(end)
    if records[-1] == "":  # the last record's terminator; "a\nb" still gives b
        records.pop()
    return records


def _splitter(colsep: str | None, *, csv: bool, with_header: bool) -> Callable[[str, InputSource], list[Record]]:
    """How one chunk of a source becomes records of columns."""
    if csv:
        delimiter = "," if colsep is None else colsep
        if len(delimiter) != 1:
            raise ConfigError(f"--colsep with --csv must be one character, not {delimiter!r}")
        return lambda chunk, source: _parse_csv(chunk, delimiter, source)
    if colsep is None and not with_header:
        return lambda chunk, source: [(chunk,)]
    try:
        # A header alone splits on tabs: GNU defaults --colsep to \t for --header.
        pattern = re.compile("\t" if colsep is None else colsep)
    except re.error as error:
        raise ConfigError(f"bad --colsep regex {colsep!r}: {error}") from None
    return lambda chunk, source: [_perl_split(pattern, chunk)]


def _perl_split(pattern: re.Pattern[str], text: str) -> Record:
    """Perl's ``split /pattern/, text, -1``, which GNU uses for ``--colsep``.

    Unlike ``re.split``, an empty match where a field starts is skipped (so ``:*`` splits
    ``:a:b`` into ``"", "a", "b", ""``) and a group that took no part gives ``""``.
    """
    fields: list[str] = []
    start = search = 0
    while (match := pattern.search(text, search)) is not None:
        if match.end() == match.start() == start:
            search = start + 1  # an empty field from an empty match: Perl never makes one
            if search > len(text):
                break
            continue
        fields += [text[start : match.start()], *(group or "" for group in match.groups())]
        start = search = match.end()
    return (*fields, text[start:])


def _parse_csv(text: str, delimiter: str, source: InputSource) -> list[Record]:
    import csv as csvlib  # here: only --csv pays for it

    reader = csvlib.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    try:
        records = list(reader)
    except csvlib.Error as error:
        raise ConfigError(f"bad CSV in {_describe(source, text)} at line {reader.line_num}: {error}") from None
    # The csv module returns [] for an empty line; GNU gives that job one empty arg.
    return [tuple(fields) or ("",) for fields in records] or [("",)]


def _describe(source: InputSource, text: str) -> str:
    if source.kind == "args":
        return f"the value {text[:40]!r}"
    return "stdin" if source.kind == "stdin" or source.path == "-" else f"input file {source.path!r}"


def _read(source: InputSource, stdin: IO[bytes] | None) -> str:
    """All of a file or of stdin, decoded so that any bytes reach the command unchanged."""
    if source.kind == "stdin" or source.path == "-":
        if stdin is None:
            raise ConfigError("no stdin to read the input from")
        data = stdin.read()
    else:
        if source.path is None:
            raise ConfigError("an input file source needs a path")
        try:
            with open(source.path, "rb") as file:
                data = file.read()
        except FileNotFoundError:
            raise ConfigError(f"input file {source.path!r} not found") from None
        except OSError as error:
            raise ConfigError(f"cannot read input file {source.path!r}: {error.strerror}") from None
    return data.decode("utf-8", "surrogateescape")
