"""Producers for tests/test_table_sink.py, and the rows they and the tests agree on.

Run as a script (the SIGKILL test's child): ``table_sink_producer.py CSV JSONL COUNT`` writes
`kill_row` 0..COUNT-1 to a CSV and a JSONL `TableWriter` (each row to both, CSV first) and
prints each row's number once both hold it; then it waits on its stdin, so the test's kill
always finds it alive. `produce` is the target of the producer processes (spawned: it must
be importable, so it lives here rather than in the test module).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from typing import Any

from phalanx.sinks.table import RemoteWriter, TableWriter

#: The size of the large field every `BIG_EVERY` rows: 100 KiB, under the csv module's
#: default field limit (128 Ki characters), so csv.DictReader reads it as it is.
BIG = 100 * 1024
BIG_EVERY = 37

#: Cell text a CSV must quote or a JSON line must escape, and text that is not UTF-8
#: (``surrogateescape``'s lone surrogates stand for the bytes 0xff and 0x80).
TEXTS = (
    "plain",
    "a, comma",
    'a "quoted" word',
    "two\nlines",
    "crlf\r\nend",
    "unicode é ✓ 😀 中文",
    "tab\there",
    "",
    " lead and trail ",
    "bytes \udcff\udc80 that were not UTF-8",
    '"',
    "\r",
)

PAYLOAD = 2048  # the concurrency test's payload: a row cut or interleaved shows in it


def kill_row(number: int) -> dict[str, Any]:
    """Row ``number`` of the SIGKILL test."""
    text = TEXTS[number % len(TEXTS)]
    if number % BIG_EVERY == 5:
        piece = f'big {number}, "x"\n'
        text = (piece * (BIG // len(piece) + 1))[:BIG]
    return {"id": number, "text": text, "score": number / 7, "ok": number % 3 == 0, "tags": [number, 't,"x"'],
            "none": None}


def payload(row_id: str) -> str:
    """The concurrency test's payload for ``row_id``: the id repeated, 2 KiB."""
    return (f"{row_id};" * (PAYLOAD // (len(row_id) + 1) + 1))[:PAYLOAD]


def produce(write: Callable[[Mapping[str, Any]], None] | RemoteWriter, prefix: str, count: int) -> None:
    """Write ``count`` rows with ids ``{prefix}-{n}``; a `RemoteWriter` is closed afterwards."""
    send = write.write if isinstance(write, RemoteWriter) else write
    for number in range(count):
        row_id = f"{prefix}-{number}"
        send({"id": row_id, "payload": payload(row_id)})
    if isinstance(write, RemoteWriter):
        write.close()


def main(csv_path: str, jsonl_path: str, count: int) -> None:
    with TableWriter(csv_path) as table, TableWriter(jsonl_path) as lines:
        for number in range(count):
            row = kill_row(number)
            table.write(row)
            lines.write(row)
            sys.stdout.write(f"{number}\n")
            sys.stdout.flush()
        sys.stdin.read()  # wait for the kill (or the test's end: stdin closes)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
