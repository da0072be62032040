"""`phalanx map` end to end: quoting (property), resume after kill -9, --results DIR
containment, usage errors, signals, halts, timeouts, --delay, --env, --shuf, output modes, -j.

Every test runs the real CLI from this checkout in its own directory. Every wait is
bounded (10 s); synchronisation goes through files the jobs and the test create, never
through sleeps.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from mapsupport import (
    PHALANX_MAP,
    WAIT,
    alive,
    assert_all_gone,
    descendants,
    environment,
    in_groups,
    job_groups,
    kill_groups,
    lines_of,
    run_map,
    start_map,
    wait_for,
)

HOSTILE = [
    "$(touch pwned)", "`touch pwned`", "; touch pwned", "| touch pwned", "&& touch pwned", "$((1+1))", "${HOME}",
    "'", '"', "\\", "\\'", "'\"'\"'", "*", "?", "[a]", "~", "~root", "-n", "--", "{}", "{.}", "a\nb", "\t", " ",
    "", "!", "#", "%s", "%", "\\n", "a b  c", "ünïcödé", "日本", "\u200b", "$'x'", "<x", ">x", "2>&1",
]


def _wait_file(name: str) -> str:
    """Shell that waits (10 s at most) for a file to exist: jobs synchronise with it."""
    return f"i=0; while [ ! -e {name} ] && [ $i -lt 1000 ]; do sleep 0.01; i=$((i+1)); done"


# ---------------------------------------------------------------------------- quoting


def _values() -> st.SearchStrategy[list[str]]:
    # Any text an argv can carry (no NUL), hostile shell text mixed in.
    text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"), max_size=30)
    return st.lists(st.one_of(text, st.sampled_from(HOSTILE)), min_size=1, max_size=12)


# Slow tier (about 25 s): the default tier holds the same promise with the shared hostile values
# (test_security.py's property tests, test_quoting_canaries.py).
@pytest.mark.slow
@settings(
    max_examples=60,  # each example starts phalanx and a job per value
    deadline=None,
    derandomize=True,  # the same examples every run
    suppress_health_check=[HealthCheck.function_scoped_fixture],  # each example makes its own directory
)
@given(values=_values())
def test_every_value_reaches_the_command_unchanged_and_nothing_else_runs(values: list[str], tmp_path: Path) -> None:
    # One invocation per example, every value a job: each job prints its value, NUL-terminated,
    # from every quoting context (bare, inside a word, inside '...' and "...", bare between
    # two quoted strings) and once more through --env (unquoted).
    # The examples are fixed (derandomize), but the CLI runs from the checkout: an edit to
    # the package made while this runs (a module half moved) fails every example, and
    # Hypothesis shrinks that to a trivial one such as values=['0'].
    work = tmp_path / f"w{os.getpid()}_{time.monotonic_ns()}"
    work.mkdir()
    command = "printf '%s\\0' {} x{}y '{}' \"{}\" 'a'{}'b' '<{}>' \"<{}>\" \"$PHALANX_MAP_VALUE\""
    # -0: a ::: value holding a newline stays one value (without it, GNU splits it, and so do we).
    result = run_map(["-k", "-j2", "-0", "--env", "PHALANX_MAP_VALUE={}", command, ":::", *values], cwd=work)
    assert result.returncode == 0, result.stderr
    assert result.stderr == b""
    expected = b"".join(
        b"\0".join(part.encode() for part in (v, f"x{v}y", v, v, f"a{v}b", f"<{v}>", f"<{v}>", v)) + b"\0"
        for v in values
    )
    assert result.stdout == expected
    # Nothing created but phalanx's own run journal: no value ran as code.
    assert [path.name for path in work.iterdir()] == [".phalanx"]


def test_values_from_stdin_and_files_are_quoted_too(tmp_path: Path) -> None:
    data = "\n".join(v for v in HOSTILE if "\n" not in v) + "\n"
    (tmp_path / "in").write_text(data)
    for args, stdin in ((["::::", "in"], b""), ([], data.encode())):
        result = run_map(["-k", "printf '%s\\n' {}", *args], cwd=tmp_path, stdin=stdin)
        assert result.returncode == 0, result.stderr
        assert result.stdout.decode() == data
        assert not (tmp_path / "pwned").exists()


def test_bytes_that_are_not_utf8_reach_the_command_and_every_record(tmp_path: Path) -> None:
    data = b"caf\xe9\nok\n\xff\xfe'$(touch pwned)\n"
    for target in ("out.csv", "out.jsonl"):
        args = ["-k", "-j1", "--joblog", "log", "--results", target, "printf '%s|' {} >> seen"]
        result = run_map(args, cwd=tmp_path, stdin=data)
        assert result.returncode == 0, result.stderr
        assert (tmp_path / "seen").read_bytes() == b"caf\xe9|ok|\xff\xfe'$(touch pwned)|"
        assert len(_result_rows(tmp_path / target)) == 3  # every row parses
        assert len(_joblog_rows(tmp_path / "log")) == 3
        # The joblog keeps the bytes, so --resume recognises every job.
        assert run_map(["--resume", *args], cwd=tmp_path, stdin=data).returncode == 0
        assert (tmp_path / "seen").read_bytes().count(b"|") == 3
        (tmp_path / "seen").unlink()
    assert not (tmp_path / "pwned").exists()


def test_dry_run_prints_commands_a_shell_runs_to_the_same_values_and_runs_nothing(tmp_path: Path) -> None:
    values = [v for v in HOSTILE if "\n" not in v]
    result = run_map(["-k", "--dry-run", "printf '%s\\0' {} && touch ran", ":::", *values], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert list(tmp_path.iterdir()) == []
    lines = result.stdout.decode().splitlines()
    assert len(lines) == len(values)
    rerun = subprocess.run(["/bin/sh", "-c", "; ".join(lines)], capture_output=True, cwd=tmp_path, check=True)
    assert rerun.stdout == b"".join(v.encode() + b"\0" for v in values)


# ---------------------------------------------------------------------------- resume


def _joblog_rows(path: Path) -> list[list[str]]:
    data = path.read_bytes().decode("utf-8", "surrogateescape")
    assert data == "" or data.endswith("\n"), f"partial joblog line: {data[-80:]!r}"
    rows = [line.split("\t") for line in data.splitlines()]
    assert rows and rows[0][0] == "Seq", rows
    for row in rows[1:]:
        assert len(row) == 9 and row[0].isdigit(), row
    return rows[1:]


def _result_rows(path: Path) -> list[dict[str, str]]:
    """Every record of a CSV or JSONL results file, each checked to be whole."""
    data = path.read_bytes()
    assert data.endswith(b"\n"), f"partial results row: {data[-80:]!r}"
    if path.suffix == ".csv":
        # Raw bytes, as GNU's: an argument that was not UTF-8 is written as it was.
        rows = list(csv.reader(io.StringIO(data.decode("utf-8", "surrogateescape"), newline=""), strict=True))
        header, body = rows[0], rows[1:]
        assert all(len(row) == len(header) for row in body), rows
        return [dict(zip(header, row, strict=True)) for row in body]
    records = [json.loads(line) for line in data.decode().splitlines()]  # strictly UTF-8
    return [{"Seq": str(r["seq"]), "Stdout": r["stdout"], "Exitval": str(r["exit_code"])} for r in records]


@pytest.mark.parametrize("jobs", ["1", "3"])
@pytest.mark.parametrize("results", ["out.csv", "out.jsonl"])
def test_resume_after_kill_9_runs_every_logged_job_exactly_once(jobs: str, results: str, tmp_path: Path) -> None:
    total, k = 8, 3
    # Each job notes that it ran; in the first run, every job after the k-th then blocks
    # until phalanx is killed, so that no job is ending (being recorded) at the kill.
    job = (
        "echo {} >> ran; "
        f"if [ {{}} -gt {k} ] && [ ! -e resuming ]; then touch blocked.{{}}; "
        "i=0; while [ $i -lt 1000 ]; do sleep 0.01; i=$((i+1)); done; fi; "
        "echo out {}"
    )
    args = ["-j", jobs, "--joblog", "log", "--results", results, job, ":::", *map(str, range(1, total + 1))]
    (tmp_path / "tmp").mkdir()  # phalanx's own temporary files, left behind by the kill
    first = start_map(args, cwd=tmp_path, env={"TMPDIR": str(tmp_path / "tmp")})
    try:
        blocked = min(int(jobs), total - k)
        wait_for(lambda: len(list(tmp_path.glob("blocked.*"))) == blocked and len(lines_of(tmp_path / "log")) == k + 1,
                 f"{k} jobs in the joblog and {blocked} blocked")
        groups = job_groups(first.pid)
        first.send_signal(signal.SIGKILL)
        first.communicate(timeout=WAIT)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait(WAIT)
    kill_groups(groups)
    assert_all_gone([pid for pid in psutil.pids() if in_groups(pid, groups)])

    logged = {int(row[0]) for row in _joblog_rows(tmp_path / "log")}
    assert logged == set(range(1, k + 1))
    # One whole row per finished job (a row is written before its joblog line).
    assert sorted(int(r["Seq"]) for r in _result_rows(tmp_path / results)) == sorted(logged)

    (tmp_path / "resuming").touch()
    second = run_map(["--resume", *args], cwd=tmp_path)
    assert second.returncode == 0, second.stderr

    ran = [int(line) for line in lines_of(tmp_path / "ran")]
    for seq in logged:
        assert ran.count(seq) == 1, (seq, ran)
    assert set(ran) == set(range(1, total + 1))
    rows = _joblog_rows(tmp_path / "log")
    assert sorted(int(row[0]) for row in rows) == list(range(1, total + 1))  # each job logged once
    records = _result_rows(tmp_path / results)
    assert sorted(int(r["Seq"]) for r in records) == list(range(1, total + 1))
    assert all(r["Stdout"] == f"out {r['Seq']}\n" and r["Exitval"] == "0" for r in records)


def test_resume_skips_logged_jobs_and_resume_failed_reruns_failures(tmp_path: Path) -> None:
    job = "echo {} >> ran; test ! -e fail.{}"
    (tmp_path / "fail.b").touch()
    args = ["-j1", "--joblog", "log", job, ":::", "a", "b", "c"]
    assert run_map(args, cwd=tmp_path).returncode == 1
    assert run_map(["--resume", *args], cwd=tmp_path).returncode == 0  # everything was logged: nothing runs
    assert lines_of(tmp_path / "ran") == ["a", "b", "c"]
    (tmp_path / "fail.b").unlink()
    assert run_map(["--resume-failed", *args], cwd=tmp_path).returncode == 0
    assert lines_of(tmp_path / "ran") == ["a", "b", "c", "b"]
    # Jobs are keyed on their command line: a new input in front does not shift the others.
    assert run_map(["--resume", *args[:-3], "new", "a", "b", "c"], cwd=tmp_path).returncode == 0
    assert lines_of(tmp_path / "ran") == ["a", "b", "c", "b", "new"]


def test_resume_tells_apart_jobs_with_the_same_command(tmp_path: Path) -> None:
    args = ["-j1", "--joblog", "log", "echo {} >> ran", ":::"]
    assert run_map([*args, "a"], cwd=tmp_path).returncode == 0
    # The joblog holds "echo a >> ran" once: one of the three "a" jobs is done, two are not.
    assert run_map(["--resume", *args, "a", "a", "a"], cwd=tmp_path).returncode == 0
    assert lines_of(tmp_path / "ran") == ["a", "a", "a"]
    assert run_map(["--resume", *args, "a", "a", "a"], cwd=tmp_path).returncode == 0
    assert lines_of(tmp_path / "ran") == ["a", "a", "a"]


def test_resume_with_newlines_in_commands(tmp_path: Path) -> None:
    args = ["-j1", "-0", "--joblog", "log", "printf '%s' {} >> ran", ":::", "a\nb", "c"]
    assert run_map(args, cwd=tmp_path).returncode == 0
    assert len(_joblog_rows(tmp_path / "log")) == 2  # a newline in a command is written as NUL
    assert run_map(["--resume", *args], cwd=tmp_path).returncode == 0
    assert (tmp_path / "ran").read_text() == "a\nbc"


def test_resume_repairs_a_partial_last_line(tmp_path: Path) -> None:
    args = ["-j1", "--joblog", "log", "--results", "out.csv", "echo {} >> ran", ":::", "a", "b"]
    assert run_map(args, cwd=tmp_path).returncode == 0
    log = (tmp_path / "log").read_bytes()
    (tmp_path / "log").write_bytes(log[: log.rindex(b"\n", 0, len(log) - 1) + 5])  # b's line cut short
    out = (tmp_path / "out.csv").read_bytes()
    (tmp_path / "out.csv").write_bytes(out[:-3])
    assert run_map(["--resume", *args], cwd=tmp_path).returncode == 0
    assert lines_of(tmp_path / "ran") == ["a", "b", "b"]
    assert [row[0] for row in _joblog_rows(tmp_path / "log")] == ["1", "2"]
    assert [r["Seq"] for r in _result_rows(tmp_path / "out.csv")] == ["1", "2"]


# ---------------------------------------------------------------------------- --results DIR


def test_results_dir_never_writes_outside_it(tmp_path: Path) -> None:
    work = tmp_path / "a" / "b" / "c" / "d" / "e" / "f"
    work.mkdir(parents=True)
    absolute = tmp_path / "abs" / "target"
    values = [
        "../../etc/passwd", "..", ".", "../..", "../../../../../x", str(absolute), "", "/", "//", "a/../../b",
        "x" * 300, "é" * 200, "a/" * 100, "\\", "\\_", "..\\_..", "\\.", "\\.\\.", "\\e", "\\\\e", "a\tb", "a\\tb",
        "-", "~", "$(touch pwned)", "line\nbreak",
    ]
    result = run_map(["-j2", "-0", "--results", "out", "printf %s {#}", ":::", *values], cwd=work)
    assert result.returncode == 0, result.stderr
    out = os.path.realpath(work / "out")
    found: dict[str, dict[str, bytes]] = {}
    for directory, _, files in _walk_outside_the_journal(tmp_path):
        for name in files:
            path = os.path.realpath(os.path.join(directory, name))
            assert path.startswith(out + os.sep), f"{path} is outside {out}"
            found.setdefault(os.path.dirname(path), {})[name] = Path(path).read_bytes()
    assert not absolute.exists() and not (work / "pwned").exists()
    # One folder per job, each with the job's own output and status.
    by_seq = {int(files["seq"]): files for files in found.values()}
    assert sorted(by_seq) == list(range(1, len(values) + 1))
    for seq, files in by_seq.items():
        assert files["stdout"] == str(seq).encode()
        assert files["stderr"] == b"" and files["exitval"] == b"0"


def test_results_dir_with_header_names(tmp_path: Path) -> None:
    result = run_map(["--header", ":", "--results", "out", "echo {}", ":::", "../evil", "v1", ":::", "..", "v2"],
                     cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    out = os.path.realpath(tmp_path / "out")
    for directory, _, files in _walk_outside_the_journal(tmp_path):
        for name in files:
            assert os.path.realpath(os.path.join(directory, name)).startswith(out + os.sep)


def _walk_outside_the_journal(top: Path) -> Iterator[tuple[str, list[str], list[str]]]:
    """`os.walk`, without phalanx's own run journal (``.phalanx/`` of the directory map ran in)."""
    for directory, dirs, files in os.walk(top):
        if ".phalanx" in dirs:
            dirs.remove(".phalanx")
        yield directory, dirs, files


def test_results_csv_and_jsonl_hold_one_row_per_job(tmp_path: Path) -> None:
    job = "printf '%s,\"q\"\\n' {}; echo err >&2; exit {#}"
    for target in ("out.csv", "out.jsonl"):
        result = run_map(["--results", target, job, ":::", "a b", "it's"], cwd=tmp_path)
        assert result.returncode == 2
        rows = sorted(_result_rows(tmp_path / target), key=lambda r: r["Seq"])
        assert [(r["Seq"], r["Stdout"], r["Exitval"]) for r in rows] == [
            ("1", 'a b,"q"\n', "1"), ("2", 'it\'s,"q"\n', "2")
        ]
    header = next(csv.reader(io.StringIO((tmp_path / "out.csv").read_text())))
    assert header == ["Seq", "Host", "Starttime", "JobRuntime", "Send", "Receive", "Exitval", "Signal", "Command",
                      "V1", "Stdout", "Stderr"]
    # Jobs with fewer columns than others keep Stdout and Stderr in their place.
    result = run_map(["-j1", "--colsep", ",", "--results", "cols.csv", "echo {1}"], cwd=tmp_path, stdin=b"a,b,c\nd\n")
    assert result.returncode == 0
    rows = _result_rows(tmp_path / "cols.csv")
    assert [(r["V1"], r["V2"], r["V3"], r["Stdout"]) for r in rows] == [("a", "b", "c", "a\n"), ("d", "", "", "d\n")]


# ---------------------------------------------------------------------------- usage errors


@pytest.mark.parametrize(
    "args",
    [
        ["--no-such-option", "touch", "ran", ":::", "a"],
        ["--header", ":", "touch", "ran", "{nmae}", ":::", "name", "a"],
        ["touch", "ran", "::::", "no-such-file"],
        ["--halt", "sometimes", "touch", "ran", ":::", "a"],
        ["--halt", "now,fail", "touch", "ran", ":::", "a"],
        ["-j", "many", "touch", "ran", ":::", "a"],
        ["-j", "", "touch", "ran", ":::", "a"],
        ["--timeout", "soon", "touch", "ran", ":::", "a"],
        ["--retries", "x", "touch", "ran", ":::", "a"],
        ["--resume", "touch", "ran", ":::", "a"],
        ["--jobs"],
        ["touch", "ran", ":::+", "a"],
        ["--colsep", "(", "touch", "ran", ":::", "a"],
        ["touch", "ran", "{=1=}", ":::", "a"],
        ["--dry-run", "--header", ":", "--tagstring", "{nope}", "touch", "ran", ":::", "a", "b"],
        ["--results", "out/{}", "touch", "ran", ":::", "a"],
    ],
    ids=["unknown-option", "unknown-column", "missing-file", "bad-halt", "halt-without-count", "bad-jobs",
         "empty-jobs", "bad-timeout", "bad-retries", "resume-without-joblog", "missing-value", "dangling-link",
         "bad-colsep", "perl-expression", "unknown-tagstring-column", "results-template"],
)
def test_usage_errors_exit_255_with_one_line_and_run_nothing(args: list[str], tmp_path: Path) -> None:
    result = run_map(args, cwd=tmp_path)
    assert result.returncode == 255
    assert result.stdout == b""
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert result.stderr.startswith(b"phalanx map: ")
    assert not (tmp_path / "ran").exists()


# ---------------------------------------------------------------------------- signals and halts


def _wait_for_files(directory: Path, pattern: str, count: int) -> None:
    wait_for(lambda: len(list(directory.glob(pattern))) >= count, f"{count} files {pattern}")


@pytest.mark.parametrize(("signum", "status"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_stops_every_job_group_and_logs_none_of_them(signum: int, status: int, tmp_path: Path) -> None:
    # Three running jobs: one with a background grandchild, one that ignores SIGTERM.
    jobs = [
        "touch up.1; sleep 30 & sleep 30",
        "trap '' TERM; touch up.2; sleep 30",
        "touch up.3; exec sleep 30",
        "touch never",
    ]
    proc = start_map(["-j3", "--joblog", "log", "--results", "out.csv", ":::", *jobs], cwd=tmp_path)
    try:
        _wait_for_files(tmp_path, "up.*", 3)
        wait_for(lambda: len(descendants(proc.pid)) >= 5, "the jobs' processes")
        children = descendants(proc.pid)
        groups = job_groups(proc.pid)
        started = time.monotonic()
        proc.send_signal(signum)
        _, stderr = proc.communicate(timeout=WAIT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(WAIT)
    assert proc.returncode == status
    assert b"Traceback" not in stderr
    assert time.monotonic() - started < 5  # TERM, 0.4 s grace, KILL: not 30 s
    assert_all_gone(children)
    assert not [pid for pid in psutil.pids() if in_groups(pid, groups) and alive(pid)]
    assert not (tmp_path / "never").exists()
    # The stopped jobs did not finish: as GNU parallel, no joblog line and no results record,
    # so --resume runs them again (tests/test_interrupt_resume.py).
    assert _joblog_rows(tmp_path / "log") == []
    assert _result_rows(tmp_path / "out.csv") == []


def test_sigint_while_reading_stdin_exits_130_quietly(tmp_path: Path) -> None:
    proc = subprocess.Popen([*PHALANX_MAP, "touch", "ran"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, cwd=tmp_path, env=environment(tmp_path))
    try:
        assert proc.stdin is not None
        proc.stdin.write(b"a\n")
        proc.stdin.flush()
        wait_for(lambda: _reading_stdin(proc.pid), "phalanx to read its stdin")
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=WAIT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(WAIT)
    assert (proc.returncode, out, err) == (130, b"", b"")
    assert not (tmp_path / "ran").exists()


def _reading_stdin(pid: int) -> bool:
    """Blocked reading a pipe (Linux's wchan): only its stdin is one, and Python's start-up
    never reads it, so phalanx is up and reading its input."""
    try:
        return "pipe" in Path(f"/proc/{pid}/wchan").read_text()
    except OSError:
        return False


def test_a_reader_that_goes_away_stops_the_run(tmp_path: Path) -> None:
    # `phalanx map ... | head -1`: once stdout is a broken pipe, the jobs stop, as GNU's do.
    proc = subprocess.Popen(
        [*PHALANX_MAP, "-j2", "echo {}; sleep 0.05", ":::", *map(str, range(2000))],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path,
        env=environment(tmp_path),
    )
    assert proc.stdout is not None and proc.stderr is not None
    first = proc.stdout.readline()
    proc.stdout.close()
    try:
        proc.wait(WAIT)  # 2000 jobs of 0.05 s would take 50 s
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(WAIT)
    assert first.strip().isdigit()
    assert proc.returncode == 141
    assert b"Traceback" not in proc.stderr.read()
    proc.stderr.close()


def test_joblog_to_stdout(tmp_path: Path) -> None:
    result = run_map(["-k", "-j1", "--joblog", "-", "echo", ":::", "a", "b"], cwd=tmp_path)
    lines = result.stdout.decode().splitlines()
    assert lines[0].startswith("Seq\tHost\t") and lines[1] == "a" and lines[3] == "b"
    assert [line.split("\t")[8] for line in (lines[2], lines[4])] == ["echo a", "echo b"]
    assert not (tmp_path / "-").exists()


def test_halt_now_kills_running_jobs_and_logs_them(tmp_path: Path) -> None:
    started = time.monotonic()
    result = run_map(
        ["-j2", "--halt", "now,fail=1", "--joblog", "log", ":::",
         "touch up; sleep 30", f"{_wait_file('up')}; exit 7", "touch never"],
        cwd=tmp_path,
    )
    assert time.monotonic() - started < 8
    assert result.returncode == 7
    assert not (tmp_path / "never").exists()
    rows = sorted((row[0], row[6], row[7]) for row in _joblog_rows(tmp_path / "log"))
    assert rows == [("1", "-1", "15"), ("2", "7", "0")]


def test_halt_soon_lets_running_jobs_finish_and_starts_no_more(tmp_path: Path) -> None:
    result = run_map(
        ["-j2", "--halt", "soon,fail=1", "--joblog", "log", ":::",
         f"touch up; {_wait_file('failed')}; sleep 0.1; echo finished",
         f"{_wait_file('up')}; touch failed; exit 4", "touch never"],
        cwd=tmp_path,
    )
    assert result.returncode == 4
    assert result.stdout == b"finished\n"
    assert not (tmp_path / "never").exists()
    rows = sorted((row[0], row[6], row[7]) for row in _joblog_rows(tmp_path / "log"))
    assert rows == [("1", "0", "0"), ("2", "4", "0")]


# ---------------------------------------------------------------------------- timeouts, delay


def test_timeout_percent_of_the_median_kills_the_slow_job(tmp_path: Path) -> None:
    started = time.monotonic()
    result = run_map(["-j1", "--timeout", "1000%", "--joblog", "log", "sleep {}; echo {}", ":::",
                      "0.1", "0.1", "0.1", "30", "0.1"], cwd=tmp_path)
    assert time.monotonic() - started < 8
    assert result.returncode == 1
    assert result.stdout == b"0.1\n0.1\n0.1\n0.1\n"
    rows = {row[0]: (row[6], row[7]) for row in _joblog_rows(tmp_path / "log")}
    assert rows["4"] == ("-1", "15") and rows["5"] == ("0", "0")


def test_timeout_percent_applies_to_jobs_already_running(tmp_path: Path) -> None:
    # The slow job starts before any job has ended (no median yet); it is stopped once one is known.
    started = time.monotonic()
    result = run_map(["-j2", "--timeout", "200%", "sleep {}", ":::", "30", "0.1"], cwd=tmp_path)
    assert result.returncode == 1
    assert time.monotonic() - started < 8


def test_timeout_kills_the_whole_group(tmp_path: Path) -> None:
    result = run_map(["--timeout", "0.2", "sleep 30 & echo $! > bg{}; wait"], cwd=tmp_path, stdin=b"1\n")
    assert result.returncode == 1
    assert_all_gone([int((tmp_path / "bg1").read_text())])


def test_delay_spaces_job_starts(tmp_path: Path) -> None:
    result = run_map(["-j3", "--delay", "0.2", "--joblog", "log", "true", ":::", "a", "b", "c"], cwd=tmp_path)
    assert result.returncode == 0
    starts = sorted(float(row[2]) for row in _joblog_rows(tmp_path / "log"))
    assert all(later - earlier >= 0.18 for earlier, later in itertools.pairwise(starts)), starts


def test_retries_are_attempts_in_all(tmp_path: Path) -> None:
    result = run_map(["--retries", "3", "echo {} >> tries; exit 1", ":::", "a"], cwd=tmp_path)
    assert result.returncode == 1
    assert lines_of(tmp_path / "tries") == ["a", "a", "a"]


# ---------------------------------------------------------------------------- --env, --shuf


def test_env_sets_a_per_job_variable(tmp_path: Path) -> None:
    values = ["a", "b c", "$(touch pwned)", "it's", ""]
    result = run_map(["-k", "--env", "ACTIVE_GREMLIN={}", "--env", "SEQ=n{#}", "--env", "HOME",
                      ": {}; printf '%s|%s\\n' \"$ACTIVE_GREMLIN\" \"$SEQ\"", ":::", *values], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode() == "".join(f"{v}|n{i}\n" for i, v in enumerate(values, 1))
    assert not (tmp_path / "pwned").exists()


def test_env_using_the_argument_means_nothing_is_appended(tmp_path: Path) -> None:
    # The seed-000 run: `phalanx map --env ACTIVE_GREMLIN={} 'pytest -x -q tests' ::: g1 g2`
    # must not run `pytest -x -q tests g1`.
    result = run_map(["-k", "--env", "GREMLIN={}", "printf '%s|%s\\n' \"$GREMLIN\" \"$#\"", ":::", "g1", "g2"],
                     cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode() == "g1|0\ng2|0\n"


def test_env_with_the_slot(tmp_path: Path) -> None:
    result = run_map(["-j2", "--env", "SLOT={%}", ": {}; echo $SLOT", ":::", "a", "b", "c", "d"], cwd=tmp_path)
    assert result.returncode == 0
    assert set(result.stdout.split()) <= {b"1", b"2"}


def test_shuf_runs_every_job_once_in_some_order(tmp_path: Path) -> None:
    values = [str(i) for i in range(1, 21)]
    result = run_map(["-j1", "--shuf", "echo", ":::", *values], cwd=tmp_path)
    assert result.returncode == 0
    printed = result.stdout.decode().split()
    assert sorted(printed, key=int) == values
    assert printed != values  # a shuffle of 20 leaves them in order once in 20! runs


# ---------------------------------------------------------------------------- output modes


def _reader(stream: io.BufferedReader) -> tuple[list[bytes], threading.Thread]:
    chunks: list[bytes] = []

    def read() -> None:
        while chunk := stream.read1(4096):
            chunks.append(chunk)

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    return chunks, thread


def test_line_buffer_prints_lines_of_a_running_job(tmp_path: Path) -> None:
    job = f"echo first; {_wait_file('go')}; echo second {{}}"
    proc = start_map(["--line-buffer", job, ":::", "x"], cwd=tmp_path)
    try:
        assert proc.stdout is not None
        chunks, thread = _reader(proc.stdout)  # type: ignore[arg-type]
        wait_for(lambda: b"".join(chunks) == b"first\n", "the first line while the job runs")
        (tmp_path / "go").touch()
        assert proc.wait(WAIT) == 0
        thread.join(WAIT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(WAIT)
    assert b"".join(chunks) == b"first\nsecond x\n"


def test_grouped_output_never_interleaves(tmp_path: Path) -> None:
    # The two jobs' lines are written interleaved in time (each waits for the other's line).
    a = f"echo a1; touch a1; {_wait_file('b1')}; echo a2; touch a2"
    b = f"{_wait_file('a1')}; echo b1; touch b1; {_wait_file('a2')}; echo b2"
    result = run_map(["-j2", ":::", a, b], cwd=tmp_path, timeout=WAIT)
    assert result.returncode == 0
    assert result.stdout in (b"a1\na2\nb1\nb2\n", b"b1\nb2\na1\na2\n")


def test_bar_does_not_touch_stdout(tmp_path: Path) -> None:
    result = run_map(["-k", "--bar", "echo", ":::", "a", "b", "c"], cwd=tmp_path)
    assert result.returncode == 0
    assert result.stdout == b"a\nb\nc\n"
    assert b"Traceback" not in result.stderr


def test_tag_and_keep_order_with_stderr(tmp_path: Path) -> None:
    result = run_map(["-k", "-j3", "--tag", "sleep 0.{}; echo out; echo err >&2", ":::", "3", "1", "2"], cwd=tmp_path)
    assert result.stdout == b"3\tout\n1\tout\n2\tout\n"
    assert sorted(result.stderr.splitlines()) == [b"1\terr", b"2\terr", b"3\terr"]


# ---------------------------------------------------------------------------- -j


def _cpus() -> int:
    return len(os.sched_getaffinity(0))


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (["-j3"], lambda cpus: 3),
        (["--jobs=2"], lambda cpus: 2),
        (["-P", "2"], lambda cpus: 2),
        (["-j", "+1"], lambda cpus: cpus + 1),
        (["-j", "-1"], lambda cpus: max(1, cpus - 1)),
        (["-j", "150%"], lambda cpus: max(1, cpus * 3 // 2)),
        (["-j0"], lambda cpus: 4),  # one per input: all 4 at once
        ([], lambda cpus: cpus),
    ],
    ids=["j3", "jobs=2", "P2", "plus1", "minus1", "150pct", "zero", "default"],
)
def test_jobs_forms_run_that_many_at_once(spec: list[str], expected: object, tmp_path: Path) -> None:
    n = expected(_cpus())  # type: ignore[operator]
    # Each job records its slot and waits until n jobs run: n at once, in slots 1..n.
    job = (
        "echo {%} > slot.{#}; touch run.{#}; i=0; "
        f"while [ $(ls run.* | wc -l) -lt {n} ] && [ $i -lt 500 ]; do sleep 0.01; i=$((i+1)); done; "
        "[ $i -lt 500 ]"
    )
    count = 4 if spec == ["-j0"] else n
    result = run_map([*spec, job, ":::", *map(str, range(count))], cwd=tmp_path, timeout=2 * WAIT)
    assert result.returncode == 0, result.stderr
    slots = {int(p.read_text()) for p in tmp_path.glob("slot.*")}
    assert slots == set(range(1, n + 1))
