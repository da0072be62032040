"""Ctrl-C (or SIGTERM), then ``--resume``: no job is lost and no job that succeeded runs twice.

Jobs phalanx stops because it was interrupted or terminated did not finish: they get no
joblog line and no results record, so ``--resume`` runs them again (GNU parallel does the
same). Each of 20 rounds interrupts a run of many short jobs (SIGINT or SIGTERM, with no
results file, a CSV one or a JSONL one) at a seeded random point: after a seeded number
of jobs, with the jobs running then at seeded random stages (starting, sleeping, waiting
before their work), and resumes it. Every job appends its value to a file as its last
action, so the file counts how often each job did its work. Every wait is bounded; the
interrupt is timed by polling files, never by sleeping.
"""

from __future__ import annotations

import csv
import io
import json
import random
import signal
from collections import Counter
from pathlib import Path

import pytest

from mapsupport import WAIT, lines_of, run_map, start_map, wait_for

JOBS = 40
ROUNDS = 20
STATUS = {signal.SIGINT: 130, signal.SIGTERM: 143}


def _job(done_before: int) -> str:
    """A job that appends its value to ``done`` as its last action (a job stopped before
    that did no work, and one that got there has no work left).

    In the first run, every job after the first ``done_before`` waits at a gate before its
    append (bounded: 10 s) until phalanx is interrupted: the jobs running at the interrupt
    are then never between their append and their exit, where a stop would leave a job
    that did its work unrecorded (a race no tool can win: GNU parallel's too). The gate
    opens (``release``) for the resumed run.
    """
    gate = "i=0; while [ ! -e release ] && [ $i -lt 1000 ]; do sleep 0.01; i=$((i+1)); done"
    return f"sleep 0.05; if [ {{}} -gt {done_before} ]; then touch at-gate.{{}}; {gate}; fi; echo {{}} >> done"


def _joblog(path: Path) -> list[list[str]]:
    data = path.read_text(encoding="utf-8")
    assert data.endswith("\n"), f"partial joblog line: {data[-80:]!r}"
    header, *rows = [line.split("\t") for line in data.splitlines()]
    assert header[0] == "Seq"
    return rows


def _records(path: Path) -> list[dict[str, str]]:
    """The results file's records as Seq and Exitval, each checked to be whole."""
    data = path.read_bytes()
    assert data.endswith(b"\n"), f"partial results record: {data[-80:]!r}"
    if path.suffix == ".csv":
        header, *rows = csv.reader(io.StringIO(data.decode(), newline=""), strict=True)
        assert all(len(row) == len(header) for row in rows)
        return [dict(zip(header, row, strict=True)) for row in rows]
    records = [json.loads(line) for line in data.decode().splitlines()]
    return [{"Seq": str(r["seq"]), "Exitval": str(r["exit_code"])} for r in records]


def _interrupt_then_resume(work: Path, signum: int, done_before: int, at_gate: int, results: str | None) -> None:
    """Interrupt once ``done_before`` jobs are logged and ``at_gate`` of the later ones wait
    at the gate (the others running are starting or sleeping), then resume."""
    values = [str(value) for value in range(1, JOBS + 1)]
    args = ["-j4", "--joblog", "log", *(["--results", results] if results else []), _job(done_before), ":::", *values]
    first = start_map(args, cwd=work)
    try:
        wait_for(lambda: len(lines_of(work / "log")) > done_before and len(list(work.glob("at-gate.*"))) >= at_gate,
                 f"{done_before} jobs logged and {at_gate} at the gate")
        first.send_signal(signum)
        _, stderr = first.communicate(timeout=WAIT)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait(WAIT)
    assert first.returncode == STATUS[signum], stderr
    assert b"Traceback" not in stderr

    # Only the jobs that finished are recorded, as succeeded: none of those phalanx stopped.
    finished = [str(value) for value in range(1, done_before + 1)]
    assert sorted(lines_of(work / "done"), key=int) == finished
    logged = _joblog(work / "log")
    assert sorted((row[0] for row in logged), key=int) == finished, "a stopped job was logged"
    assert all((row[6], row[7]) == ("0", "0") for row in logged), logged
    if results:
        assert sorted((r["Seq"] for r in _records(work / results)), key=int) == finished

    (work / "release").touch()
    second = run_map(["--resume", *args], cwd=work)
    assert second.returncode == 0, second.stderr

    done = Counter(lines_of(work / "done"))
    assert sorted(done, key=int) == values, "a job was lost"
    assert [value for value, count in done.items() if count > 1] == [], "a job that had succeeded ran again"
    logged = _joblog(work / "log")
    assert sorted(int(row[0]) for row in logged) == list(range(1, JOBS + 1))  # each job once
    if results:
        records = _records(work / results)
        assert sorted(int(r["Seq"]) for r in records) == list(range(1, JOBS + 1))
        assert all(r["Exitval"] == "0" for r in records)


@pytest.mark.parametrize("number", range(ROUNDS))
def test_interrupted_jobs_run_again_on_resume_and_finished_ones_do_not(number: int, tmp_path: Path) -> None:
    # Every round its own seed: a failing round reruns alone, the same.
    rng = random.Random(f"interrupt-resume-{number}")
    signum = (signal.SIGINT, signal.SIGTERM)[number % 2]
    results = (None, "out.csv", "out.jsonl")[number % 3]
    done_before = rng.randrange(1, JOBS - 4)
    _interrupt_then_resume(tmp_path, signum, done_before, at_gate=rng.randrange(0, 5), results=results)
