"""Results tables (`phalanx.sinks.table`): one row per finished task, whole, whatever happens.

- SIGKILL: a process writing a CSV and a JSONL table is killed mid-run; both files parse
  completely, every row whole and in order, nothing written twice, nothing reported lost.
- Concurrent producers: 20 threads and 4 (spawned) processes write 10,000 rows into one
  writer; all 10,000 come back intact, CSV and JSONL.
- The CSV's header (fixed at the first row, ``extra``, ``columns=``, reused on append),
  cells, quoting and bytes that are not UTF-8; JSONL lines; fsync; the file name's suffix.
- The scribe: rows waiting in its pipe written together with one write(2), a frame a read
  cuts kept for its rest, its pause between batches (and an owner that waits ending it), a
  batch that does not fit, failures raised, never a deadlock on its answers.
- `result_row`'s shapes and `TableSink`'s choice of tasks.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import fcntl
import json
import multiprocessing
import os
import pickle
import select
import signal
import struct
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import MappingProxyType
from typing import IO, Any

import pytest

import table_sink_producer as producer
from phalanx.errors import ConfigError
from phalanx.events import RunCancelling, RunStarted, TaskFinished, TaskStarted
from phalanx.results import CancelReason, ErrorInfo, Status, TaskResult
from phalanx.sinks import table
from phalanx.sinks.table import EXTRA, RemoteWriter, TableSink, TableWriter, result_row

HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "src"
BOUND = 10.0  # seconds: every wait on another process is bounded by this


def read_csv(path: Path, delimiter: str = ",") -> tuple[list[str], list[dict[str | None, Any]]]:
    with open(path, encoding="utf-8", errors="surrogateescape", newline="") as source:
        reader = csv.DictReader(source, delimiter=delimiter)
        rows: list[dict[str | None, Any]] = list(reader)
        return list(reader.fieldnames or []), rows


def read_jsonl(path: Path) -> list[Any]:
    data = path.read_bytes()
    assert not data or data.endswith(b"\n"), "a partial last line"
    return [json.loads(line) for line in data.split(b"\n")[:-1]]


def whole(rows: list[dict[str | None, Any]]) -> bool:
    """Every row has exactly the header's columns (csv.DictReader puts a surplus under None
    and fills a shortfall with None)."""
    return all(None not in row and None not in row.values() for row in rows)


# --------------------------------------------------------------------------------- SIGKILL


def csv_cells(row: dict[str, Any]) -> dict[str | None, Any]:
    """`kill_row` as its CSV cells."""
    return {
        "id": str(row["id"]),
        "text": row["text"],
        "score": str(row["score"]),
        "ok": "true" if row["ok"] else "false",
        "tags": json.dumps(row["tags"], ensure_ascii=False, separators=(",", ":")),
        "none": "",
        EXTRA: "",
    }


def read_lines_until(stream: IO[bytes], last: int, deadline: float) -> None:
    """Read the producer's progress (one row number a line) until it reports row ``last``."""
    fd = stream.fileno()
    pending = b""
    while True:
        left = deadline - time.monotonic()
        assert left > 0, f"the producer did not report row {last} within {BOUND} s"
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            continue
        chunk = os.read(fd, 65536)
        assert chunk, "the producer ended before it was killed"
        pending += chunk
        *lines, pending = pending.split(b"\n")
        if any(int(line) >= last for line in lines):
            return


def test_sigkill_leaves_every_row_whole(tmp_path: Path) -> None:
    total, reported = 2000, 700
    csv_path, jsonl_path = tmp_path / "rows.csv", tmp_path / "rows.jsonl"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(SRC), str(HERE), os.environ.get("PYTHONPATH", "")]))
    process = subprocess.Popen(
        [sys.executable, str(HERE / "table_sink_producer.py"), str(csv_path), str(jsonl_path), str(total)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
    )
    try:
        assert process.stdout is not None
        read_lines_until(process.stdout, reported - 1, time.monotonic() + BOUND)
        os.kill(process.pid, signal.SIGKILL)
        # Its stderr ends only when the writers' scribes (which share it) have written
        # everything they were sent and exited: then the files are final.
        _, errors = process.communicate(timeout=BOUND)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(BOUND)
    assert process.returncode == -signal.SIGKILL
    assert errors == b""

    header, rows = read_csv(csv_path)
    records = read_jsonl(jsonl_path)
    assert header == ["id", "text", "score", "ok", "tags", "none", EXTRA]
    assert whole(rows)
    # Ids 0..n-1 in order, each row exactly as written: nothing cut, doubled or lost.
    assert rows == [csv_cells(producer.kill_row(number)) for number in range(len(rows))]
    assert records == [producer.kill_row(number) for number in range(len(records))]
    assert len(records) >= reported  # every row reported written is there
    assert len(rows) - len(records) in (0, 1)  # the kill may land between a row's two writes
    assert any(number % producer.BIG_EVERY == 5 for number in range(len(records)))  # large rows too


# ----------------------------------------------------------------------- concurrent producers


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_threads_and_processes_write_whole_rows(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"rows{suffix}"
    context = multiprocessing.get_context("spawn")  # not fork: a forked copy of the writer's lock
    with TableWriter(path) as writer:
        remote = writer.remote()
        processes = [context.Process(target=producer.produce, args=(remote, f"p{n}", 1000)) for n in range(4)]
        for process in processes:
            process.start()
        try:
            threads = [threading.Thread(target=producer.produce, args=(writer.write, f"t{n}", 300)) for n in range(20)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(BOUND)
            assert not any(thread.is_alive() for thread in threads)
            for process in processes:
                process.join(BOUND)
            assert [process.exitcode for process in processes] == [0] * 4
        finally:
            for process in processes:
                if process.is_alive():
                    process.kill()
                    process.join(BOUND)

    if suffix == ".csv":
        header, rows = read_csv(path)
        assert header == ["id", "payload", EXTRA]
        assert whole(rows)
    else:
        rows = read_jsonl(path)
    assert len(rows) == 10_000
    ids = [row["id"] for row in rows]
    assert len(set(ids)) == 10_000
    assert set(ids) == {f"t{n}-{i}" for n in range(20) for i in range(300)} | {
        f"p{n}-{i}" for n in range(4) for i in range(1000)
    }
    assert all(row["payload"] == producer.payload(row["id"]) for row in rows)
    for n in range(4):  # one process's rows arrive in the order it sent them
        mine = [row_id for row_id in ids if row_id.startswith(f"p{n}-")]
        assert mine == [f"p{n}-{i}" for i in range(1000)]


def test_remote_handle_pickles_and_the_writer_does_not(tmp_path: Path) -> None:
    with TableWriter(tmp_path / "rows.jsonl") as writer:
        remote = pickle.loads(pickle.dumps(writer.remote()))
        assert isinstance(remote, RemoteWriter)
        remote.write({"id": 1, "lock": threading.Lock()})  # what cannot be pickled is sent as its text
        remote.close()
        with pytest.raises(TypeError, match="remote"):
            pickle.dumps(writer)
    [record] = read_jsonl(tmp_path / "rows.jsonl")
    assert record["id"] == 1 and "lock" in record["lock"]
    with pytest.raises(OSError, match="closed"):
        RemoteWriter(remote.address).write({"id": 2})


# ------------------------------------------------------------------------------- CSV header


def test_header_is_the_first_rows_keys_and_later_keys_go_in_extra(tmp_path: Path) -> None:
    path = tmp_path / "rows.csv"
    with TableWriter(path) as writer:
        assert writer.columns is None
        writer.write({"a": 1, "b": 2})
        writer.write({"a": 3, "c": "x", "d": [1, 2]})
        writer.write({"b": None})
        assert writer.columns == ("a", "b", EXTRA)
    header, rows = read_csv(path)
    assert header == ["a", "b", EXTRA]
    assert rows == [
        {"a": "1", "b": "2", EXTRA: ""},
        {"a": "3", "b": "", EXTRA: '{"c":"x","d":[1,2]}'},
        {"a": "", "b": "", EXTRA: ""},
    ]
    assert path.read_bytes().startswith(b"a,b,extra\r\n1,2,\r\n")


def test_a_rows_own_extra_key_goes_in_the_extra_column(tmp_path: Path) -> None:
    path = tmp_path / "rows.csv"
    with TableWriter(path) as writer:
        writer.write({"a": 1, EXTRA: "mine"})
    assert read_csv(path) == (["a", EXTRA], [{"a": "1", EXTRA: '{"extra":"mine"}'}])


def test_columns_fix_the_header_up_front(tmp_path: Path) -> None:
    path = tmp_path / "rows.csv"
    with TableWriter(path, columns=["b", "a"]):
        pass
    assert path.read_bytes() == b"b,a\r\n"  # a run that finished nothing still has its header
    path.unlink()
    with TableWriter(path, columns=["b", "a"]) as writer:
        writer.write({"a": 1, "z": "left out: not a column"})
    assert read_csv(path) == (["b", "a"], [{"b": "", "a": "1"}])
    other = tmp_path / "other.csv"
    with TableWriter(other, columns=["a", EXTRA]) as writer:  # a last ``extra`` column takes the rest
        writer.write({"a": 1, "z": 2})
    assert read_csv(other) == (["a", EXTRA], [{"a": "1", EXTRA: '{"z":2}'}])


@pytest.mark.parametrize("columns", [[], ["a", "a"], "ab"])
def test_bad_columns(tmp_path: Path, columns: Any) -> None:
    with pytest.raises(ConfigError, match="columns="):
        TableWriter(tmp_path / "rows.csv", columns=columns)
    assert not (tmp_path / "rows.csv").exists()


def test_appending_reuses_the_header(tmp_path: Path) -> None:
    path = tmp_path / "rows.csv"
    with TableWriter(path) as writer:
        writer.write({"a": 1, "b": 2})
    with TableWriter(path, columns=["ignored"]) as writer:  # the file's own header wins
        assert writer.columns == ("a", "b", EXTRA)
        writer.write({"b": 4, "a": 3, "z": True})
    assert path.read_bytes().count(b"extra") == 1
    assert read_csv(path) == (["a", "b", EXTRA], [{"a": "1", "b": "2", EXTRA: ""},
                                                  {"a": "3", "b": "4", EXTRA: '{"z":true}'}])


def test_appending_to_a_file_without_a_last_line_end_keeps_its_last_row(tmp_path: Path) -> None:
    path = tmp_path / "rows.csv"
    path.write_bytes(b'a,b\r\n1,"x, y"')  # as an editor or another tool may leave it
    with TableWriter(path) as writer:
        assert writer.columns == ("a", "b")
        writer.write({"a": 2, "b": 3})
    assert read_csv(path) == (["a", "b"], [{"a": "1", "b": "x, y"}, {"a": "2", "b": "3"}])
    lines = tmp_path / "rows.jsonl"
    lines.write_bytes(b'{"a": 1}\n{"a": 2}')
    with TableWriter(lines) as writer:
        writer.write({"a": 3})
    assert read_jsonl(lines) == [{"a": 1}, {"a": 2}, {"a": 3}]


def test_appending_cuts_off_a_record_cut_short(tmp_path: Path) -> None:
    path = tmp_path / "rows.csv"
    path.write_bytes(b'a,b\r\n1,2\r\n3,"cut sh')  # an open quote: a crash cut this row
    with TableWriter(path) as writer:
        writer.write({"a": 4, "b": 5})
    assert read_csv(path) == (["a", "b"], [{"a": "1", "b": "2"}, {"a": "4", "b": "5"}])
    lines = tmp_path / "rows.jsonl"
    lines.write_bytes(b'{"a": 1}\n{"a": 2, "b": "cut sh')
    with TableWriter(lines) as writer:
        writer.write({"a": 3})
    assert read_jsonl(lines) == [{"a": 1}, {"a": 3}]


def test_an_existing_file_that_is_not_a_csv_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "rows.csv"
    path.write_bytes(b"\r\n")
    with pytest.raises(ConfigError, match="not a CSV header"):
        TableWriter(path)


# ----------------------------------------------------------------------- cells and quoting


def test_cells(tmp_path: Path) -> None:
    class Thing:
        def __str__(self) -> str:
            return "a thing"

    path = tmp_path / "rows.csv"
    row = {"text": "as is", "none": None, "yes": True, "no": False, "int": 7, "float": 0.25,
           "list": [1, "ü", None], "tuple": (1, 2), "dict": {"k": [True]}, "other": Thing()}
    with TableWriter(path) as writer:
        writer.write(row)
    _, [cells] = read_csv(path)
    assert cells == {"text": "as is", "none": "", "yes": "true", "no": "false", "int": "7", "float": "0.25",
                     "list": '[1,"ü",null]', "tuple": "[1,2]", "dict": '{"k":[true]}', "other": "a thing", EXTRA: ""}


@pytest.mark.parametrize(("suffix", "delimiter"), [(".csv", ","), (".tsv", "\t")])
def test_any_text_reads_back_exactly(tmp_path: Path, suffix: str, delimiter: str) -> None:
    path = tmp_path / f"rows{suffix}"
    texts = [*producer.TEXTS, "a\x00nul", "\ud800 a lone surrogate", "x" * 100_000]
    with TableWriter(path) as writer:
        for text in texts:
            writer.write({"text": text, "n": 1})
    header, rows = read_csv(path, delimiter)
    assert header == ["text", "n", EXTRA] and whole(rows)
    expected = [text.replace("\ud800", "\\ud800") for text in texts]  # no bytes stand for it: escaped
    assert [row["text"] for row in rows] == expected
    raw = path.read_bytes()
    assert b"\xff\x80" in raw  # surrogateescape's bytes written back as they were


def test_jsonl_lines(tmp_path: Path) -> None:
    path = tmp_path / "rows.jsonl"
    rows: list[dict[str, Any]] = [
        {"b": 1, "a": "two\nlines", "c": None, "d": [1, {"e": "é"}]},
        {"bytes": "\udcff", "when": Path("/x")},
    ]
    with TableWriter(path) as writer:
        for row in rows:
            writer.write(row)
    data = path.read_bytes()
    first = data.split(b"\n")[0]
    assert first == json.dumps(rows[0], ensure_ascii=False, default=str).encode()  # keys in row order
    assert data.count(b"\n") == 2
    assert read_jsonl(path) == [rows[0], {"bytes": "\udcff", "when": "/x"}]


def test_fsync_once_a_row(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    monkeypatch.setattr(os, "fsync", calls.append)
    for suffix in (".csv", ".jsonl"):
        calls.clear()
        with TableWriter(tmp_path / f"rows{suffix}", fsync=True) as writer:
            for number in range(3):
                writer.write({"n": number})
        assert len(calls) == 3
    calls.clear()
    with TableWriter(tmp_path / "more.csv") as writer:
        writer.write({"n": 1})
    assert calls == []


@pytest.mark.parametrize(
    ("name", "format", "delimiter"),
    [("x.csv", "csv", ","), ("x.CSV", "csv", ","), ("x.tsv", "csv", "\t"), ("x.jsonl", "jsonl", None),
     ("x.ndjson", "jsonl", None), ("x.json-lines", "jsonl", None)],
)
def test_format_from_the_suffix(tmp_path: Path, name: str, format: str, delimiter: str | None) -> None:
    path = tmp_path / name
    with TableWriter(path) as writer:
        assert writer.format == format
        writer.write({"a": 1, "b": 2})
    text = path.read_bytes().decode()
    assert text == ('{"a": 1, "b": 2}\n' if delimiter is None else delimiter.join(["a", "b", EXTRA]) + "\r\n"
                    + delimiter.join(["1", "2", ""]) + "\r\n")


def test_unknown_suffix_needs_a_format(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"results file 'x\.txt': use a \.csv or \.jsonl name, or format="):
        TableWriter("x.txt")
    with pytest.raises(ConfigError, match="format must be"):
        TableWriter(tmp_path / "x.csv", format="xml")  # type: ignore[arg-type]
    with TableWriter(tmp_path / "x.txt", format="jsonl") as writer:
        writer.write({"a": 1})
    assert (tmp_path / "x.txt").read_text() == '{"a": 1}\n'


# -------------------------------------------------------------------------------- lifecycle


def test_close_is_idempotent_and_writes_after_it_fail(tmp_path: Path) -> None:
    writer = TableWriter(tmp_path / "rows.csv")
    writer.write({"a": 1})
    writer.close()
    writer.close()
    with pytest.raises(ValueError, match="closed"):
        writer.write({"a": 2})
    with pytest.raises(ValueError, match="closed"):
        writer.remote()


def test_a_new_file_is_0644(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        with TableWriter(tmp_path / "rows.csv"):
            pass
    finally:
        os.umask(old)
    assert (tmp_path / "rows.csv").stat().st_mode & 0o777 == 0o644


def test_without_a_scribe_rows_are_written_in_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "executable", "")
    with TableWriter(tmp_path / "rows.csv") as writer:
        writer.write({"a": "x,y"})
    assert read_csv(tmp_path / "rows.csv") == (["a", EXTRA], [{"a": "x,y", EXTRA: ""}])


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_a_failed_write_is_raised_by_the_next_call() -> None:
    writer = TableWriter("/dev/full", format="jsonl")  # every write: ENOSPC
    try:
        writer.write({"a": 1})  # sent: the scribe's answer comes later
        with pytest.raises(OSError) as failure:
            writer.flush()
        assert failure.value.errno == errno.ENOSPC
        writer.write({"a": 2})
    finally:
        with pytest.raises(OSError) as failure:
            writer.close()
    assert failure.value.errno == errno.ENOSPC
    with TableWriter("/dev/full", format="jsonl", fsync=True) as synced, pytest.raises(OSError) as failure:
        synced.write({"a": 1})  # fsync: the row waits for its write, and its error is raised here
    assert failure.value.errno == errno.ENOSPC


F_GETPIPE_SZ = 1032  # Linux's fcntl for a pipe's capacity
SMALL_ROWS = 5500  # 11-byte frames fit a 64 KiB pipe, a page to spare; their 12-byte answers do not


def pipe_holds(fd: int) -> int:
    """How many bytes wait in the pipe ``fd`` is an end of."""
    return int(struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"))[0])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux: /dev/full, a pipe's capacity")
def test_failures_never_block_the_scribe_on_its_answers() -> None:
    # The scribe, stopped, lets 5,500 rows that will fail queue up in its pipe (60 KB),
    # then the owner sends a 1 MiB row and blocks in that write. Were every failure
    # answered unasked, the 5,500 answers (66 KB) would fill the answer pipe: the scribe
    # would block on it while the owner, blocked on the row, reads none. It tells one,
    # and the rest when asked.
    writer = TableWriter("/dev/full", format="jsonl")
    scribe = writer._scribe
    assert scribe is not None
    queued = threading.Event()
    done: list[BaseException] = []

    def produce() -> None:
        with contextlib.suppress(OSError):
            for _ in range(SMALL_ROWS):
                writer.write({})  # 3 bytes and an 8-byte head
        queued.set()
        try:
            writer.write({"big": "x" * (1 << 20)})
        except OSError as error:  # the failure told unasked, if it came in first
            done.append(error)
        try:
            writer.close()
        except OSError as error:
            done.append(error)

    os.kill(scribe._process.pid, signal.SIGSTOP)
    os.waitpid(scribe._process.pid, os.WUNTRACED)  # stopped before any row reaches it
    thread = threading.Thread(target=produce, daemon=True)
    try:
        thread.start()
        assert queued.wait(BOUND)
        # More in the pipe than the small rows: the owner is in the big row's write (blocked:
        # the pipe holds less than the row).
        assert fcntl.fcntl(scribe._send, F_GETPIPE_SZ) < 1 << 20
        deadline = time.monotonic() + BOUND
        while pipe_holds(scribe._send) <= SMALL_ROWS * 11:
            assert time.monotonic() < deadline, "the owner never filled the pipe"
            time.sleep(0.001)  # a poll of the condition, bounded
    finally:
        os.kill(scribe._process.pid, signal.SIGCONT)
    thread.join(BOUND)
    assert not thread.is_alive(), "the owner and the scribe blocked on each other"
    assert done and all(isinstance(error, OSError) and error.errno == errno.ENOSPC for error in done)


def test_a_row_cut_short_in_the_pipe_is_dropped_whole(tmp_path: Path) -> None:
    # What a kill of the owner while it sends a row leaves: the scribe writes the rows
    # before it, and not the part of that row, then ends with the pipe.
    path = tmp_path / "rows.jsonl"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        scribe = table._Scribe.start(fd, str(path))
        assert scribe is not None
        scribe.write(b'{"n": 1}\n')
        os.write(scribe._send, table._FRAME.pack(100) + b'{"n": 2, "cut')
        scribe._end()
    finally:
        os.close(fd)
    assert path.read_bytes() == b'{"n": 1}\n'


# ------------------------------------------------------------------------------ the scribe

# Put before the scribe's program: every write(2) it makes to its file is logged (its size,
# one a line) to the file named LOG, so a test sees how rows were batched.
WRITE_LOG = """
import os as _os, sys as _sys
_write = _os.write
def _logged(fd, data):
    done = _write(fd, data)
    if fd == int(_sys.argv[1]):
        with open(LOG, "a") as log:
            log.write("%d\\n" % done)
    return done
_os.write = _logged
"""


def log_scribe_writes(monkeypatch: pytest.MonkeyPatch, log: Path) -> Callable[[], list[int]]:
    """Make the scribes started from now on log their writes; the sizes logged so far."""
    monkeypatch.setattr(table, "_SCRIBE", WRITE_LOG.replace("LOG", repr(str(log))) + table._SCRIBE)
    return lambda: [int(line) for line in log.read_text().split()] if log.exists() else []


@contextlib.contextmanager
def stopped(process: subprocess.Popen[bytes]) -> Iterator[None]:
    """The scribe stopped (SIGSTOP) for the block: rows sent meanwhile wait in its pipe."""
    os.kill(process.pid, signal.SIGSTOP)
    os.waitpid(process.pid, os.WUNTRACED)
    try:
        yield
    finally:
        os.kill(process.pid, signal.SIGCONT)


def wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + BOUND
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.005)  # a poll of the condition, bounded


def test_rows_waiting_in_the_pipe_are_written_with_one_write(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    writes = log_scribe_writes(monkeypatch, tmp_path / "writes")
    path = tmp_path / "rows.jsonl"
    with TableWriter(path) as writer:
        assert writer._scribe is not None
        with stopped(writer._scribe._process):  # one read then takes all 200 rows
            for number in range(200):
                writer.write({"n": number, "text": f"row {number}"})
        writer.flush()
    assert read_jsonl(path) == [{"n": number, "text": f"row {number}"} for number in range(200)]
    assert writes() == [path.stat().st_size]


@pytest.mark.parametrize("where", ["head", "row"])
def test_a_frame_a_read_cuts_is_kept_until_its_rest_comes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    writes = log_scribe_writes(monkeypatch, tmp_path / "writes")
    path = tmp_path / "rows.jsonl"
    rows = [b'{"n": %d}\n' % number for number in range(4)]
    frames = b"".join(table._FRAME.pack(len(row)) + row for row in rows)
    cut = len(frames) - len(rows[-1]) - (3 if where == "head" else -4)  # in the last frame's head, or its row
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        scribe = table._Scribe.start(fd, str(path))
        assert scribe is not None
        os.write(scribe._send, frames[:cut])  # one write to the pipe, one read: three rows and a part
        wait_until(lambda: path.read_bytes() == b"".join(rows[:3]), "the three whole rows were not written")
        os.write(scribe._send, frames[cut:])
        scribe._end()
    finally:
        os.close(fd)
    assert path.read_bytes() == b"".join(rows)
    assert writes() == [len(b"".join(rows[:3])), len(rows[3])]  # the three together, then the fourth


def test_the_scribe_pauses_between_batches_unless_the_owner_waits(tmp_path: Path) -> None:
    path = tmp_path / "rows.jsonl"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    big = b"x" * (3 * table.CHUNK) + b"\n"  # more than the pipe holds
    try:
        scribe = table._Scribe.start(fd, str(path), pause=60.0)  # longer than this test may take
        assert scribe is not None
        started = time.monotonic()
        scribe.send(b"first\n")  # it was waiting for rows: it writes this at once, then pauses
        wait_until(lambda: path.read_bytes() == b"first\n", "the first row was not written")
        scribe.send(b"second\n")
        time.sleep(0.2)
        assert path.read_bytes() == b"first\n"  # it waits for the pause's end...
        scribe.flush()  # ...or for an owner that waits for it: flush wakes it
        assert path.read_bytes() == b"first\nsecond\n"
        scribe.send(big)  # so does a full pipe
        scribe.close()  # and closing the wake-up pipe ends a pause for good
        assert time.monotonic() - started < BOUND
    finally:
        os.close(fd)
    assert path.read_bytes() == b"first\nsecond\n" + big


@pytest.mark.skipif(not hasattr(signal, "SIGXFSZ"), reason="needs RLIMIT_FSIZE")
def test_a_batch_that_does_not_fit_keeps_the_rows_that_do(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The scribe may write files up to a limit that row 6 crosses: the batch's write fails
    # (EFBIG), is taken back, and each row is then written alone, as if it had come alone:
    # rows 0-5 fit, 6-9 do not, and the small row after them does.
    rows: list[dict[str, Any]] = [{"n": number, "pad": "x" * 80} for number in range(10)]
    small = {"n": 10}
    lines = [table._json_line(row) for row in rows]
    limit = len(b"".join(lines[:6])) + len(lines[6]) // 2
    limited = (
        "import resource, signal\nsignal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        f"resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))\n"
    )
    monkeypatch.setattr(table, "_SCRIBE", limited + table._SCRIBE)
    path = tmp_path / "rows.jsonl"
    writer = TableWriter(path)
    try:
        assert writer._scribe is not None
        with stopped(writer._scribe._process):  # one batch
            for row in [*rows, small]:
                writer.write(row)
        with pytest.raises(OSError) as failure:
            writer.flush()
        assert failure.value.errno == errno.EFBIG
    finally:
        writer.close()
    assert path.read_bytes() == b"".join(lines[:6]) + table._json_line(small)


def test_jsonl_rows_of_every_shape_are_encoded_as_the_reference_does(tmp_path: Path) -> None:
    # `write` takes a dict with text keys straight to JSON: every other row, and every value
    # that is not JSON as it is, must come out exactly as `_json_line` (the reference) makes it.
    class Subclass(dict[str, Any]):
        pass

    cycle: list[Any] = []
    cycle.append(cycle)
    rows: list[Any] = [
        {"a": 1, "b": "é ✓", "c": [1.5, None, True], "d": {"e": float("nan"), "f": float("inf")}},
        {"a": 2, "b": "the same keys again"},
        {"a": 3, 7: "an int key", True: "a bool key", None: "a None key", 1.5: "a float key"},
        {"a": 4, "inner": {True: "json's own rules for keys inside"}},
        {"a": 5, "cycle": cycle},
        {"a": 6, "inner": {(1, 2): "a key JSON cannot hold"}},
        {"a": 7, "path": Path("/x"), "set": {1}, "bytes": b"\xff", "proxy": MappingProxyType({"k": 1})},
        {"a": 8, "text": "\udcff \ud800 lone surrogates", "line": "two\nlines\u2028"},
        Subclass(a=9),
        MappingProxyType({"a": 10}),
        {"a": 11},
    ]
    path = tmp_path / "rows.jsonl"
    with TableWriter(path) as writer:
        for row in rows:
            writer.write(row)
    assert path.read_bytes() == b"".join(table._json_line(row) for row in rows)


def test_flush_makes_rows_readable(tmp_path: Path) -> None:
    path = tmp_path / "rows.jsonl"
    with TableWriter(path) as writer:
        for number in range(100):
            writer.write({"n": number})
        writer.flush()
        assert read_jsonl(path) == [{"n": number} for number in range(100)]


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".jsonl"])
def test_written_gives_every_row_in_the_file_by_the_text_of_its_cells(tmp_path: Path, suffix: str) -> None:
    """Rows from before the file was opened (a torn last one cut off) and since; a CSV's
    columns the header lacks from its extra cell; JSONL values as CSV cells show them."""
    path = tmp_path / f"rows{suffix}"
    with TableWriter(path) as writer:
        assert writer.written(["task"]) == set()
        writer.write({"task": "a", "n": 1, "text": "two\nlines, \udcff"})
        writer.write({"task": "b", "late": 2.5, "list": [1, None]})
    with open(path, "ab") as file:  # a row a kill cut short, and (JSONL) a line that is not a row
        file.write(b'["not", "a", "row"]\n{"task": "torn' if suffix == ".jsonl" else b'c,"torn')
    with TableWriter(path) as writer:
        writer.write({"task": "d", "n": True, "text": None})
        assert writer.written(["task", "n", "late", "text", "list", "missing"]) == {
            ("a", "1", "", "two\nlines, \udcff", "", ""),
            ("b", "", "2.5", "", "[1,null]", ""),
            ("d", "true", "", "", "", ""),
        }
        assert writer.written(["task"]) == {("a",), ("b",), ("d",)}


# ------------------------------------------------------------------------------ result rows


def result(task_id: str = "t1", status: Status = Status.SUCCEEDED, **fields: Any) -> TaskResult:
    fields.setdefault("attempts", 1)
    return TaskResult(task_id=task_id, status=status, duration=1.23456789, **fields)


def test_result_row_succeeded_with_a_dict() -> None:
    row = result_row(result(value={"answer": 42, "tokens": 7}, data={"answer": 42, "tokens": 7}),
                     {"prompt": "hi", "model": "m"})
    assert row == {"prompt": "hi", "model": "m", "task": "t1", "status": "succeeded", "attempts": 1,
                   "duration": 1.234568, "error": "", "answer": 42, "tokens": 7}
    assert list(row) == ["prompt", "model", "task", "status", "attempts", "duration", "error", "answer", "tokens"]


def test_result_row_failed_has_its_reason_on_one_line() -> None:
    row = result_row(result(status=Status.FAILED, attempts=3, reason="HTTP 429\n  too many requests\n"))
    assert row["status"] == "failed" and row["attempts"] == 3
    assert row["error"] == "HTTP 429 too many requests"
    no_reason = result(status=Status.FAILED, error=ErrorInfo("ValueError", "bad"))
    assert result_row(no_reason)["error"] == "ValueError: bad"


def test_result_row_collisions_keep_every_value() -> None:
    row = result_row(result(data={"prompt": "echo", "status": "mine", "new": 1}),
                     {"prompt": "hi", "status": "input status", "task": "input task"})
    assert row == {"prompt": "hi", "input.status": "input status", "input.task": "input task", "task": "t1",
                   "status": "succeeded", "attempts": 1, "duration": 1.234568, "error": "",
                   "result.prompt": "echo", "result.status": "mine", "new": 1}


def test_result_row_non_dict_value_goes_in_value() -> None:
    assert result_row(result(value="text"))["value"] == "text"
    assert result_row(result(value=[1, 2]), {"value": "input"})["result.value"] == [1, 2]
    assert "value" not in result_row(result(value=None))
    assert "value" not in result_row(result(value={}))
    assert result_row(result(value={1: "a"}))["value"] == {1: "a"}  # not string keys: not fields


def test_result_row_id_column() -> None:
    assert "task" not in result_row(result(), id_column=None)
    assert result_row(result("x"), id_column="item")["item"] == "x"


# ------------------------------------------------------------------------------- the sink


def finished(res: TaskResult) -> TaskFinished:
    return TaskFinished(res, at=1.0)


def test_sink_writes_finished_tasks_but_not_interrupted_ones(tmp_path: Path) -> None:
    path = tmp_path / "rows.jsonl"
    inputs = {"a": {"prompt": "one"}, "b": {"prompt": "two"}}
    sink = TableSink(TableWriter(path), lambda r: inputs.get(r.task_id), id_column="id")
    sink.handle(RunStarted("run", 3, 2, started_at=0.0))
    sink.handle(TaskStarted("a", 1, 0, at=0.0))
    sink.handle(finished(result("a", data={"out": 1})))
    sink.handle(finished(result("b", Status.FAILED, reason="exit code 2")))
    sink.handle(finished(result("skipped", Status.SKIPPED, attempts=0)))  # never ran: nothing to report
    sink.handle(RunCancelling(CancelReason.INTERRUPT, at=2.0))
    sink.handle(finished(result("c", Status.CANCELLED, reason="interrupted")))  # did not finish: runs on resume
    sink.handle(finished(result("d", Status.SUCCEEDED)))  # finished while the run stopped: written
    sink.close()
    assert [(row["id"], row["status"], row.get("prompt")) for row in read_jsonl(path)] == [
        ("a", "succeeded", "one"), ("b", "failed", "two"), ("d", "succeeded", None)]


def test_sink_writes_tasks_a_halt_cancelled(tmp_path: Path) -> None:
    path = tmp_path / "rows.csv"
    with contextlib.closing(TableSink(TableWriter(path))) as sink:
        sink.handle(RunCancelling(CancelReason.FAIL_FAST, at=1.0))
        sink.handle(finished(result("c", Status.CANCELLED, reason="cancelled by fail-fast")))
    _, rows = read_csv(path)
    assert [(row["task"], row["status"], row["error"]) for row in rows] == [
        ("c", "cancelled", "cancelled by fail-fast")]
