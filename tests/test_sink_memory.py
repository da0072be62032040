"""Sinks stream a job's output in bounded chunks: memory does not grow with the output.

- Peak RSS of `phalanx map` while one job prints a lot, through every sink: ``--results``
  CSV, TSV, JSONL and DIR, grouped output (plain and ``--tag``) and ``--line-buffer``
  (with lines, and one endless line). 64 MiB in the default suite, 1 GiB with ``-m slow``.
- The streamed records are byte for byte what the whole-output code wrote (the csv and
  json modules on the whole text), whatever the chunk size, in memory or spilled to a
  temporary file; ``--line-buffer`` and ``--tag`` print what they printed.
- ``--resume``'s repair finds the last whole record however large its fields.
- ``--results DIR`` never writes through a symbolic link planted in the tree.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from mapsupport import PHALANX_MAP, RUN_TIMEOUT, environment, run_map
from phalanx.events import RunStarted, TaskFinished
from phalanx.gnu import output
from phalanx.results import Status, TaskResult
from phalanx.sinks import joblog
from phalanx.sinks.joblog import RecordFile, complete_lines
from phalanx.sinks.results import CsvResults, JobInfo, JsonlResults, complete_csv_records

MiB = 1 << 20

# ---------------------------------------------------------------------------- peak memory

# Lines with CSV's special bytes (quotes, commas, tabs: quoted and doubled) and UTF-8.
LINES = "yes 'a \"quoted\", tabbed\tline of text, ünïcode' | head -c {}"
ONE_LINE = "head -c {} /dev/zero | tr '\\0' x"
SINKS = {
    "csv": (["--results", "out.csv"], LINES),
    "tsv": (["--results", "out.tsv"], LINES),
    "jsonl": (["--results", "out.jsonl"], LINES),
    "dir": (["--results", "out"], LINES),
    "grouped": ([], LINES),
    "tagged": (["--tag"], LINES),
    "line-buffer": (["--line-buffer"], LINES),
    "line-buffer-one-line": (["--line-buffer", "--tag"], ONE_LINE),
}


def _peak_rss(args: list[str], cwd: Path) -> int:
    """Run ``phalanx map ARGS`` (stdout to /dev/null) and return its peak RSS in bytes.

    wait4 gives the resource use of this child alone (and of the children it waited for:
    the jobs, all small), unlike RUSAGE_CHILDREN, which holds every test's children.
    """
    # stderr to a file: a pipe nobody reads while we wait could fill and block phalanx.
    with open(os.devnull, "wb") as null, tempfile.TemporaryFile() as stderr:
        proc = subprocess.Popen([*PHALANX_MAP, *args], stdin=subprocess.DEVNULL, stdout=null, stderr=stderr,
                                cwd=cwd, env=environment(cwd))
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        except BaseException:
            proc.kill()
            proc.wait(RUN_TIMEOUT)
            raise
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped: Popen must not wait for it again
        stderr.seek(0)
        assert proc.returncode == 0, stderr.read()
    return usage.ru_maxrss * 1024  # kilobytes on Linux


def _check_peak(sink: str, size: int, limit: int, tmp_path: Path) -> None:
    options, job = SINKS[sink]
    peak = _peak_rss([*options, job, ":::", str(size)], tmp_path)
    if "--results" in options:  # the output did go there
        assert max(path.stat().st_size for path in tmp_path.rglob("*") if path.is_file()) >= size
    assert peak < limit, f"{sink}: peak RSS {peak / MiB:.0f} MiB for {size / MiB:.0f} MiB of output"


@pytest.fixture(scope="module")
def baseline(tmp_path_factory: pytest.TempPathFactory) -> int:
    """Peak RSS of a run whose job prints one line: the interpreter and phalanx itself."""
    return _peak_rss(["--results", "out.csv", "echo {}", ":::", "1"], tmp_path_factory.mktemp("baseline"))


@pytest.mark.parametrize("sink", list(SINKS))
def test_64_mib_of_output_costs_far_less_memory_than_its_size(sink: str, baseline: int, tmp_path: Path) -> None:
    _check_peak(sink, 64 * MiB, baseline + 24 * MiB, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("sink", list(SINKS))
def test_1_gib_of_output_through_each_sink_under_150_mb(sink: str, tmp_path: Path) -> None:
    _check_peak(sink, 1 << 30, 150 * 1000 * 1000, tmp_path)


# ---------------------------------------------------------------------------- streamed = whole

_PIECES = [b'"', b",", b"\t", b"\n", b"\r", b"\r\n", b"a", b"xyz", b"\0", b"\xff", b"\xe2\x82", b"\xe2\x82\xac",
           "é".encode(), "\u2028".encode(), b"\\", b"\x08", b"\x0c", b"\x1f", b"\x7f", b"\xed\xa0\x80"]
_outputs = st.lists(st.sampled_from(_PIECES), max_size=40).map(b"".join)
_texts = st.lists(st.sampled_from(['"', ",", "\t", "\n", "\r", "a", " ", "é", "\udcff", "\\"]), max_size=6).map("".join)
_chunks = st.integers(min_value=1, max_value=9)
_SETTINGS = settings(max_examples=150, deadline=None, derandomize=True,
                     suppress_health_check=[HealthCheck.function_scoped_fixture])


def _finished(tmp_path: Path, stdout: bytes, stderr: bytes) -> TaskResult:
    (tmp_path / "job.out").write_bytes(stdout)
    (tmp_path / "job.err").write_bytes(stderr)
    return TaskResult("1", Status.FAILED, attempts=1, exit_code=3, end=2.5, duration=0.25, worker=2,
                      stdout_path=str(tmp_path / "job.out"), stderr_path=str(tmp_path / "job.err"))


def _record(sink: CsvResults | JsonlResults, result: TaskResult) -> None:
    sink.handle(RunStarted("run", 1, 1, started_at=1000.0))
    sink.handle(TaskFinished(result, at=2.5))
    sink.close()


@_SETTINGS
@given(stdout=_outputs, stderr=_outputs, args=st.lists(_texts, max_size=3), chunk=_chunks,
       delimiter=st.sampled_from([",", "\t"]))
def test_a_streamed_csv_row_is_what_the_csv_module_writes(
    stdout: bytes, stderr: bytes, args: list[str], chunk: int, delimiter: str, tmp_path: Path
) -> None:
    info = JobInfo(7, tuple(args), "cmd " + " ".join(args))
    path = tmp_path / "out.csv"
    with mock.patch.object(joblog, "CHUNK", chunk):  # tiny chunks: most rows go through a temporary file
        sink = CsvResults(RecordFile(path, append=False), lambda _: info, arity=3, delimiter=delimiter)
        _record(sink, _finished(tmp_path, stdout, stderr))
    expected = io.StringIO()
    writer = csv.writer(expected, delimiter=delimiter)
    writer.writerow(["Seq", "Host", "Starttime", "JobRuntime", "Send", "Receive", "Exitval", "Signal", "Command",
                     "V1", "V2", "V3", "Stdout", "Stderr"])
    writer.writerow([7, ":", "1002.250", "0.250", 0, len(stdout), 3, 0, info.command, *args, *[""] * (3 - len(args)),
                     stdout.decode("utf-8", "surrogateescape"), stderr.decode("utf-8", "surrogateescape")])
    assert path.read_bytes() == expected.getvalue().encode("utf-8", "surrogateescape")
    assert sorted(os.listdir(tmp_path)) == ["job.err", "job.out", "out.csv"]  # no temporary file left


@_SETTINGS
@given(stdout=_outputs, stderr=_outputs, args=st.lists(_texts, max_size=3), chunk=_chunks,
       extra=st.sampled_from([{}, {"stdout": "overridden", "more": ["x"]}]))
def test_a_streamed_jsonl_record_is_what_json_dumps_writes(
    stdout: bytes, stderr: bytes, args: list[str], chunk: int, extra: dict[str, object], tmp_path: Path
) -> None:
    info = JobInfo(7, tuple(args), "cmd", names=("a", "b"), extra=extra)
    path = tmp_path / "out.jsonl"
    with mock.patch.object(joblog, "CHUNK", chunk):
        _record(JsonlResults(RecordFile(path, append=False), lambda _: info), _finished(tmp_path, stdout, stderr))
    record = {
        "seq": 7, "args": args, "command": "cmd", "status": "failed", "exit_code": 3, "signal": None, "reason": None,
        "start": 1002.25, "duration": 0.25, "attempts": 1, "worker": 2,
        "stdout": stdout.decode("utf-8", "replace"), "stderr": stderr.decode("utf-8", "replace"), "data": {},
        "named": dict(zip(("a", "b"), args, strict=False)), **extra,
    }
    line = json.dumps(record, ensure_ascii=False, default=str) + "\n"
    assert path.read_bytes() == line.encode("utf-8", "backslashreplace")
    assert sorted(os.listdir(tmp_path)) == ["job.err", "job.out", "out.jsonl"]


def _split(data: bytes, size: int) -> Iterator[bytes]:
    return (data[i : i + size] for i in range(0, len(data), size))


_prefixes = st.sampled_from([b"", b"t\t", b"a\\1 \\g<0>\t", b"x\ry\n\t"])


@_SETTINGS
@given(data=_outputs, prefix=_prefixes, chunk=_chunks)
def test_line_buffer_prints_what_it_printed_line_by_line(data: bytes, prefix: bytes, chunk: int) -> None:
    stream = io.BytesIO()
    output.copy_lines(_split(data, chunk), stream, prefix)
    assert stream.getvalue() == b"".join(prefix + line for line in data.splitlines(keepends=True))


@_SETTINGS
@given(data=_outputs.filter(bool), prefix=_prefixes, chunk=_chunks)
def test_grouped_tagging_prints_what_it_printed(data: bytes, prefix: bytes, chunk: int) -> None:
    stream = io.BytesIO()
    with mock.patch.object(output, "_CHUNK", chunk):
        output.copy_tagged(io.BytesIO(data), stream, prefix)
    # The former code: the whole output at once, the prefix put in by a function per line.
    expected = prefix + re.sub(rb"(?<=[\r\n])(?=.)", lambda _: prefix, data, flags=re.DOTALL) if prefix else data
    assert stream.getvalue() == expected


# ---------------------------------------------------------------------------- --resume's repair

# Fields past the csv module's limit (128 Ki characters), with and without quotes and newlines.
_fields = st.one_of(_texts, st.sampled_from(['"' * 3, "x" * 140_000, 'a"\n' * 45_000]))


@settings(_SETTINGS, max_examples=40)
@given(rows=st.lists(st.lists(_fields, min_size=1, max_size=4), min_size=1, max_size=5), chunk=_chunks,
       cuts=st.lists(st.floats(min_value=0, max_value=1), min_size=1, max_size=6))
def test_the_repair_keeps_every_whole_record_however_large(
    rows: list[list[str]], chunk: int, cuts: list[float]
) -> None:
    ends = []
    data = b""
    for row in rows:
        line = io.StringIO()
        csv.writer(line).writerow(row)
        data += line.getvalue().encode("utf-8", "surrogateescape")
        ends.append(len(data))
    with mock.patch.object(joblog, "CHUNK", chunk * 1000):
        assert complete_csv_records(io.BytesIO(data)) == len(data)
        for cut in {int(c * len(data)) for c in cuts} | {ends[0] - 1, len(data) - 1}:
            whole = max([end for end in ends if end <= cut], default=0)
            assert complete_csv_records(io.BytesIO(data[:cut])) == whole


def test_the_repair_of_lines_finds_the_last_newline_chunks_back() -> None:
    with mock.patch.object(joblog, "CHUNK", 3):
        assert complete_lines(io.BytesIO(b"ab\ncd\n" + b"x" * 10)) == 6
        assert complete_lines(io.BytesIO(b"x" * 10)) == 0
        assert complete_lines(io.BytesIO(b"")) == 0


def test_resume_keeps_rows_whose_output_the_csv_module_could_not_read(tmp_path: Path) -> None:
    # 200 KB in one field: more than the csv module's field limit (128 KiB).
    args = ["-j1", "--joblog", "log", "--results", "out.csv", "head -c 200000 /dev/zero | tr '\\0' {}", ":::", "a", "b"]
    assert run_map(args, cwd=tmp_path).returncode == 0
    whole = (tmp_path / "out.csv").read_bytes()
    (tmp_path / "out.csv").write_bytes(whole[:-1000])  # b's row cut short, as by a crash
    log = (tmp_path / "log").read_bytes()
    (tmp_path / "log").write_bytes(log[: log.rindex(b"\n", 0, len(log) - 1) + 1])  # b not logged
    assert run_map(["--resume", *args], cwd=tmp_path).returncode == 0
    # a's row is kept (the csv module's repair cut it off, and a, logged, never ran again), b's is written anew.
    assert (tmp_path / "out.csv").read_bytes().startswith(whole[: whole.index(b"\r\n2,") + 2])
    limit = csv.field_size_limit(1 << 20)
    try:
        rows = list(csv.reader(io.StringIO((tmp_path / "out.csv").read_text(), newline=""), strict=True))
    finally:
        csv.field_size_limit(limit)
    assert [(row[0], row[-2]) for row in rows[1:]] == [("1", "a" * 200_000), ("2", "b" * 200_000)]


# ---------------------------------------------------------------------------- --results DIR and links


def test_results_dir_never_writes_through_a_planted_link(tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    args = ["-j1", "--results", "out", "printf new-{}"]
    assert run_map([*args, ":::", "a"], cwd=work).returncode == 0
    job = work / "out" / "1" / "a"
    assert (job / "stdout").read_bytes() == b"new-a"

    precious = tmp_path / "precious"
    precious.write_bytes(b"keep me")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (job / "stdout").unlink()
    (job / "stdout").symlink_to(precious)  # at a result's own name
    (job / ".stderr.tmp").symlink_to(precious)  # at the temporary name it is written to first
    (job / ".seq.tmp").symlink_to(tmp_path / "created")  # dangling: must not be created
    (work / "out" / "1" / "b").symlink_to(elsewhere)  # where a job's folder goes

    result = run_map([*args, ":::", "a", "b"], cwd=work)

    assert precious.read_bytes() == b"keep me"
    assert not (tmp_path / "created").exists()
    assert list(elsewhere.iterdir()) == []
    # The links at the job's names were replaced by its results, not written through.
    assert not (job / "stdout").is_symlink() and (job / "stdout").read_bytes() == b"new-a"
    assert (job / "stderr").read_bytes() == b"" and (job / "seq").read_bytes() == b"1"
    assert sorted(p.name for p in job.iterdir()) == ["exitval", "seq", "stderr", "stdout"]  # no temporaries left
    # The link where a folder goes is refused: that job's results are not written, and the run says so.
    assert (work / "out" / "1" / "b").is_symlink()
    assert result.returncode == 255
    assert b"out/1/b" in result.stderr and b"symbolic link" in result.stderr
    assert b"Traceback" not in result.stderr

