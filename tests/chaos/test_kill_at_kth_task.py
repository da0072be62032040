"""SIGINT, SIGTERM or SIGKILL to phalanx after its k-th finished task, then ``--resume``.

`phalanx run`, 100 seeds (the signal and k follow from the seed): a task file of 24 tasks
(a small DAG and independent ones, each appending ``task-id run-id`` to a ledger with
O_APPEND as its last action, so a task that runs twice shows twice), ``-j 4``, a JUnit
report and a JSONL results file (the same one for the run and its resume, which appends to
it, as people run them). Two of the tasks hold (a shell and the ``sleep`` it started in the
background, in the task's process group) until the test lets them go, so there is always
something running when the signal lands, for a watchdog to stop. Each time:

* phalanx exits with 130, 143 or -9, without a traceback, within bounds;
* no process carrying the scenario's marker is alive within `GONE_BOUND` seconds;
* the journal opens (``phalanx runs`` and ``phalanx show`` work on it); the JUnit report
  parses (SIGKILL: it may be absent), every JSONL line parses, one per task at most, and
  a succeeded row only for a task the journal has as succeeded;
* ``phalanx run --resume`` completes (exit 0, saying how many tasks were done), every task
  ends succeeded in the journal, and no task the journal had as succeeded at the kill
  ran again (its ledger line is its only one);
* rows lost: tasks without a succeeded record in the journal after the resume, or without
  a succeeded row in the results file: none, whatever the signal. The journal hears of a
  task's end first (so that ``--resume`` never runs a task whose end anything reported),
  and the test sends the signal the moment it sees the k-th task in the journal, which is
  the moment before that task's results row is handed on: a SIGKILL then leaves a task
  succeeded in the journal and without its row. The resume does not run it again, but
  completes the results file first, writing from the journal the row of every task done
  in the killed run that the file lacks (`phalanx.journalrows`).

`phalanx map` with ``--joblog`` and ``--resume`` the same way on 12 seeds (GNU semantics:
a job phalanx stopped did not finish and runs again; a job in the joblog never does).

Three seeds of each are in the default tier, the rest ``slow``.
"""

from __future__ import annotations

import contextlib
import json
import random
import re
import signal
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

import psutil
import pytest
from chaossupport import (
    TALLY,
    JournalWatch,
    finish,
    lingering,
    marked,
    new_mark,
    run_phalanx,
    start_phalanx,
    wait_until,
)
from click.testing import CliRunner

from mapsupport import lines_of
from phalanx.cli import main as phalanx_cli
from phalanx.journal import Journal, file_key

SEEDS = 100
MAP_SEEDS = 12
DEFAULT_TIER = 3  # the first seeds of each: one per signal

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGKILL)
STATUS = {signal.SIGINT: 130, signal.SIGTERM: 143, signal.SIGKILL: -signal.SIGKILL}

QUICK, HOLDING = 22, 2  # tasks (or jobs) that finish on their own, and those that hold until let go

# Each task's last action: its line in the ledger (">>" opens with O_APPEND).
_APPEND = 'echo "$PHALANX_TASK_ID $PHALANX_RUN_ID" >> ledger'
# While ./hold exists: a background sleep in the task's group, waited for.
_HOLD = "if [ -e hold ]; then sleep 60 & wait; fi"


def _seeds(count: int) -> list[object]:
    return [seed if seed < DEFAULT_TIER else pytest.param(seed, marks=pytest.mark.slow) for seed in range(count)]


def _task_file(rng: random.Random) -> str:
    """Two holding tasks (high priority: they start first), then 22 quick ones: the first 10 a
    DAG (each with up to two dependencies among the earlier ones), the rest independent."""
    parts = [f'[tasks.hold-{n}]\ncmd = \'\'\'{_HOLD}; {_APPEND}\'\'\'\npriority = "high"\n' for n in range(HOLDING)]
    for n in range(QUICK):
        deps = sorted(rng.sample(range(n), min(n, rng.randint(0, 2)))) if n < 10 else []
        pause = f"0.0{rng.randint(1, 5)}"
        dep_list = ", ".join(f'"q{d:02d}"' for d in deps)
        parts.append(f"[tasks.q{n:02d}]\ncmd = '''sleep {pause}; {_APPEND}'''\ndeps = [{dep_list}]\n")
    return "\n".join(parts)


def _ledger(work: Path) -> Counter[str]:
    return Counter(line.split()[0] for line in lines_of(work / "ledger"))


def _results(path: Path) -> list[tuple[str, str]]:
    """A JSONL results file's rows as (task, status); every line whole and valid."""
    if not path.exists():
        return []
    data = path.read_bytes()
    assert not data or data.endswith(b"\n"), f"a partial row: {data[-120:]!r}"
    return [(row["task"], row["status"]) for row in map(json.loads, data.decode().splitlines())]


def _cli(*args: str) -> str:
    """``phalanx ARGS`` in this process, in the current folder (the journal commands only
    read: no interpreter to start for them)."""
    result = CliRunner().invoke(phalanx_cli, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


@pytest.mark.parametrize("seed", _seeds(SEEDS))
def test_phalanx_run_killed_after_the_kth_task_resumes_without_running_a_succeeded_task_twice(
    seed: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # for the journal commands run in this process
    rng = random.Random(f"kill-at-k-{seed}")
    signum = SIGNALS[seed % len(SIGNALS)]
    k = rng.randint(1, QUICK)
    scenario = f"run, {signum.name} at the k-th task"
    (tmp_path / "phalanx.toml").write_text(_task_file(rng))
    (tmp_path / "hold").touch()
    mark = new_mark()
    first = start_phalanx(["run", "-j", "4", "--junit", "report-1.xml", "--results", "rows.jsonl"],
                          cwd=tmp_path, mark=mark)
    watch = JournalWatch(tmp_path)
    try:
        wait_until(lambda: watch.finished() >= k, f"{k} finished tasks", first)
        first.send_signal(signum)
        _, stderr = finish(first)
    finally:
        watch.close()
        if first.poll() is None:
            first.kill()
            first.wait()
    orphans = lingering(mark)
    TALLY.add(scenario, runs=1, kills=1, orphans=len(orphans))
    assert first.returncode == STATUS[signum], stderr.decode()[-2000:]
    assert b"Traceback" not in stderr, stderr.decode()
    assert not orphans, f"alive after phalanx was killed ({signum.name}): {orphans}"

    # The journal opens, as a person reads it too; what it had as succeeded at the kill.
    with Journal.open(tmp_path) as journal:
        killed = journal.runs()[0]
        done = {record.task_id for record in journal.show(killed.id) if record.status == "succeeded"}
    assert len(done) >= k
    assert killed.id[:12] in _cli("runs")
    assert "q00" in _cli("show", killed.id)
    report = tmp_path / "report-1.xml"
    if signum != signal.SIGKILL or report.exists():
        cases = ET.parse(report).getroot().iter("testcase")
        assert {case.get("name") for case in cases} <= {f"q{n:02d}" for n in range(QUICK)} | {"hold-0", "hold-1"}
    rows = _results(tmp_path / "rows.jsonl")
    assert len(rows) == len({task for task, _ in rows}), f"a task with two rows in one run: {rows}"
    assert {task for task, status in rows if status == "succeeded"} <= done, "a row ahead of the journal"

    (tmp_path / "hold").unlink()
    resumed = run_phalanx(["run", "-j", "4", "--resume", "--junit", "report-2.xml", "--results", "rows.jsonl"],
                          cwd=tmp_path, mark=new_mark())
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert f"resuming: {len(done)} done, {QUICK + HOLDING - len(done)} to run" in resumed.stdout
    with Journal.open(tmp_path) as journal:
        latest = journal.latest_tasks(file_key(tmp_path / "phalanx.toml"))
    not_succeeded = sorted(task for task, record in latest.items() if record.status != "succeeded")
    missing = QUICK + HOLDING - len(latest)
    succeeded_rows = Counter(task for task, status in _results(tmp_path / "rows.jsonl") if status == "succeeded")
    without_row = sorted(set(latest) - set(succeeded_rows))
    TALLY.add(scenario, runs=1, rows_lost=missing + len(set(not_succeeded) | set(without_row)))

    ran = _ledger(tmp_path)
    assert not_succeeded == [] and missing == 0, f"tasks lost: {not_succeeded}, {missing} never recorded"
    assert [task for task in done if ran[task] != 1] == [], f"a task succeeded before the kill ran again: {ran}"
    assert len(ran) == QUICK + HOLDING, f"a task never did its work: {sorted(ran)}"
    assert max(succeeded_rows.values()) == 1, f"a task has two succeeded rows: {succeeded_rows}"
    assert without_row == [], f"succeeded, without a row: {without_row}"


def test_without_a_watchdog_a_sigkill_leaves_the_holding_tasks_and_resume_stops_them(tmp_path: Path) -> None:
    """The control of the orphan check: with the watchdog off (``PHALANX_WATCHDOG=0``), a
    SIGKILL leaves both holding tasks running (each a shell and its sleep), the check finds
    all four, and ``--resume`` stops their process groups before it runs anything."""
    rng = random.Random("kill-at-k-control")
    (tmp_path / "phalanx.toml").write_text(_task_file(rng))
    (tmp_path / "hold").touch()
    mark = new_mark()
    first = start_phalanx(["run", "-j", "4"], cwd=tmp_path, mark=mark, env={"PHALANX_WATCHDOG": "0"})
    watch = JournalWatch(tmp_path)
    try:
        wait_until(lambda: watch.finished() >= 3, "3 finished tasks", first)
        first.kill()
        finish(first)
    finally:
        watch.close()
    left: list[str] = []
    for process in marked(mark):  # quick tasks ending may be there too, and end (a zombie) meanwhile
        with contextlib.suppress(psutil.Error):
            left.append(" ".join(process.cmdline()))
    assert left.count("sleep 60") == HOLDING, left
    assert sum(1 for line in left if line.startswith("/bin/sh -c") and "hold" in line) == HOLDING, left
    (tmp_path / "hold").unlink()
    resumed = run_phalanx(["run", "-j", "4", "--resume"], cwd=tmp_path, mark=new_mark())
    orphans = lingering(mark)
    TALLY.add("run, SIGKILL, no watchdog (control)", runs=2, kills=1, orphans=len(left))
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    # The holding tasks' groups, and those of quick tasks that were ending at the kill.
    stopped = re.search(r"stopped (\d+) process group\(s\) a killed run left running", resumed.stdout)
    assert stopped is not None and int(stopped.group(1)) >= HOLDING, resumed.stdout
    assert orphans == [], f"--resume left processes of the killed run: {orphans}"


# ------------------------------------------------------------------------------ phalanx map

_JOB = """#!/bin/sh
# Jobs 1 and 2 hold while ./hold exists; every job appends its number to the ledger last.
if [ "$1" -le 2 ]; then
    if [ -e hold ]; then sleep 60 & wait; fi
else
    sleep "0.0$(( $1 % 5 + 1 ))"
fi
echo "$1" >> ledger
"""


def _joblog_seqs(path: Path) -> list[int]:
    data = path.read_text()
    assert data.endswith("\n"), f"a partial joblog line: {data[-120:]!r}"
    header, *rows = data.splitlines()
    assert header.startswith("Seq\t")
    fields = [row.split("\t") for row in rows]
    assert all(len(row) == 9 for row in fields), fields
    return [int(row[0]) for row in fields]


@pytest.mark.parametrize("seed", _seeds(MAP_SEEDS))
def test_phalanx_map_killed_after_the_kth_job_resumes_from_its_joblog(
    seed: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # for the journal commands run in this process
    rng = random.Random(f"map-kill-at-k-{seed}")
    signum = SIGNALS[seed % len(SIGNALS)]
    k = rng.randint(1, QUICK)
    scenario = f"map, {signum.name} at the k-th job"
    (tmp_path / "job.sh").write_text(_JOB)
    (tmp_path / "hold").touch()
    jobs = [str(n) for n in range(1, QUICK + HOLDING + 1)]
    args = ["map", "-j", "4", "--joblog", "log", "sh", "job.sh", "{}", ":::", *jobs]
    mark = new_mark()
    first = start_phalanx(args, cwd=tmp_path, mark=mark)
    try:
        wait_until(lambda: len(lines_of(tmp_path / "log")) > k, f"{k} jobs in the joblog", first)
        first.send_signal(signum)
        _, stderr = finish(first)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    orphans = lingering(mark)
    TALLY.add(scenario, runs=1, kills=1, orphans=len(orphans))
    assert first.returncode == STATUS[signum], stderr.decode()[-2000:]
    assert b"Traceback" not in stderr, stderr.decode()
    assert not orphans, f"alive after phalanx map was killed ({signum.name}): {orphans}"

    logged = _joblog_seqs(tmp_path / "log")
    assert len(logged) == len(set(logged)) >= k
    with Journal.open(tmp_path) as journal:  # map's journal, in the folder it ran in
        killed = journal.runs()[0]
    assert killed.kind == "map"
    assert killed.id[:12] in _cli("runs")
    assert "1" in _cli("show", killed.id)
    (tmp_path / "hold").unlink()
    resumed = run_phalanx([args[0], "--resume", *args[1:]], cwd=tmp_path, mark=new_mark())
    assert resumed.returncode == 0, resumed.stderr
    final = _joblog_seqs(tmp_path / "log")
    lost = len(set(jobs) - {str(seq) for seq in final})
    TALLY.add(scenario, runs=1, rows_lost=lost)
    assert sorted(final) == list(range(1, QUICK + HOLDING + 1)), "a job is missing from the joblog, or in it twice"
    ran = Counter(lines_of(tmp_path / "ledger"))
    assert [seq for seq in logged if ran[str(seq)] != 1] == [], f"a job in the joblog ran again: {ran}"
    assert sorted(ran, key=int) == jobs, "a job never did its work"
