"""`phalanx map` in the run journal: each run, each job as a task, the template's duration
history, a journal that cannot be opened, ``--no-journal``, and batched commits.

Real `phalanx map` processes, each in its own tmp_path (the journal is ``.phalanx/`` of the
directory map runs in). Every wait on another process is bounded; the only polls are for
what another process has committed to the journal, where there is nothing else to wait on.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import shlex
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

import phalanx
from mapsupport import WAIT, environment, kill_groups, run_map, start_map, wait_for
from phalanx.history import DurationHistory
from phalanx.journal import Journal, JournalSink, RunRecord, _create_time, kill_leftovers
from phalanx.session import StandardBackends, run_session


def phalanx_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """``phalanx ARGS`` (runs, show, history) in ``cwd``."""
    return subprocess.run([sys.executable, "-m", "phalanx", *args], capture_output=True, text=True, cwd=cwd,
                          env=environment(cwd), timeout=60, check=False)


@contextlib.contextmanager
def journal_of(directory: Path) -> Iterator[Journal]:
    assert (directory / ".phalanx" / "journal.db").exists(), "map recorded nothing"
    with Journal.open(directory) as journal:
        yield journal


def only_run(journal: Journal) -> RunRecord:
    [run] = journal.runs()
    return run


# ---------------------------------------------------------------------------- what a run records


def test_a_map_run_is_recorded_with_each_job_as_a_task(tmp_path: Path) -> None:
    work = tmp_path  # no task file: runs, show and history read .phalanx/ here
    job = "printf 'out %s\\n' {}; echo 'err {}' >&2; test {} != b"
    done = run_map(["-k", job, ":::", "a", "b", "c"], cwd=work)
    assert (done.returncode, done.stdout) == (1, b"out a\nout b\nout c\n")
    assert done.stderr == b"err a\nerr b\nerr c\n"  # the jobs' own, nothing of the journal's

    with journal_of(work) as journal:
        run = only_run(journal)
        assert (run.kind, run.file, run.status) == ("map", None, "failed")
        assert run.command_line == shlex.join(["phalanx", "map", "-k", job, ":::", "a", "b", "c"])
        assert dict(run.counts) == {"succeeded": 2, "failed": 1}
        assert run.duration is not None and 0 < run.duration < WAIT
        tasks = {task.task_id: task for task in journal.show(run.id)}
        assert {tid: (task.status, task.exit_code) for tid, task in tasks.items()} == {
            "1": ("succeeded", 0), "2": ("failed", 1), "3": ("succeeded", 0),
        }
        for tid, value in (("1", "a"), ("2", "b"), ("3", "c")):
            [attempt] = journal.show(run.id, tid)
            assert (attempt.stdout_tail, attempt.stderr_tail) == (f"out {value}\n", f"err {value}\n")
            # Each job led its own process group, recorded through the backend's spawn hook.
            assert attempt.pid is not None and attempt.pgid == attempt.pid
            assert attempt.started_at is not None and attempt.ended_at is not None
            assert run.started_at <= attempt.started_at <= attempt.ended_at

    listed = phalanx_cli("runs", cwd=work)
    assert listed.returncode == 0, listed.stderr
    [row] = listed.stdout.splitlines()[1:]
    assert row.startswith(run.id[:12]) and " failed " in row and row.endswith("1 failed, 2 succeeded")
    shown = phalanx_cli("show", run.id[:6], cwd=work)
    assert shown.stdout.splitlines()[0].startswith(f"run {run.id} (map, failed), started ")
    assert shown.stdout.splitlines()[0].endswith(run.command_line)
    job_lines = {line.split()[2]: line for line in shown.stdout.splitlines()[1:]}
    assert job_lines["2"].split()[0] == "failed" and job_lines["2"].endswith("exit code 1")
    assert job_lines["1"].split()[0] == job_lines["3"].split()[0] == "succeeded"
    attempt = phalanx_cli("show", run.id, "2", cwd=work)
    assert attempt.stdout.startswith("2 attempt 1: failed in ")
    assert attempt.stdout.endswith(", exit code 1\n--- stdout ---\nout b\n--- stderr ---\nerr b\n")


def test_the_history_learns_the_command_template_from_succeeded_jobs(tmp_path: Path) -> None:
    work = tmp_path  # no task file: runs, show and history read .phalanx/ here
    # No replacement string: the arguments are appended, and the template is `echo {}`.
    assert run_map(["echo"], cwd=work, stdin=b"1\n2\n3\n").returncode == 0
    assert run_map(["test {} = 0"], cwd=work, stdin=b"0\n3\n").returncode == 1
    assert run_map(["echo"], cwd=work, stdin=b"4\n").returncode == 0
    with journal_of(work) as journal:
        entries = {entry.key: entry for entry in DurationHistory(journal).entries()}
        runs = journal.runs()
    assert set(entries) == {"map: echo {}", "map: test {} = 0"}
    assert entries["map: echo {}"].samples == 4  # each job of both runs
    assert entries["map: test {} = 0"].samples == 1  # the job that failed does not count
    assert 0 < entries["map: echo {}"].estimate < WAIT
    assert [run.status for run in runs] == ["succeeded", "failed", "succeeded"]
    shown = phalanx_cli("history", cwd=work)
    assert shown.returncode == 0, shown.stderr
    assert [line.rsplit("(", 1)[1] for line in shown.stdout.splitlines() if line.startswith("map: echo {}")] == [
        "4 runs)"
    ]


def test_arguments_that_are_not_utf8_are_recorded_as_replacement_characters(tmp_path: Path) -> None:
    undecodable = os.fsdecode(b"\xff")  # how Python hands phalanx such an argument
    done = run_map([f"printf '{undecodable}%s\\n'", ":::", f"x{undecodable}"], cwd=tmp_path)
    assert (done.returncode, done.stdout, done.stderr) == (0, b"\xffx\xff\n", b"")
    with journal_of(tmp_path) as journal:
        run = only_run(journal)
        [(key, samples)] = [(entry.key, entry.samples) for entry in DurationHistory(journal).entries()]
    assert run.status == "succeeded"
    assert run.command_line == shlex.join(["phalanx", "map", "printf '\ufffd%s\\n'", ":::", "x\ufffd"])
    assert (key, samples) == ("map: printf '\ufffd%s\\n' {}", 1)


def test_two_maps_in_one_directory_at_once_are_both_recorded(tmp_path: Path) -> None:
    first = start_map(["-j2", "echo", ":::", *map(str, range(50))], cwd=tmp_path)
    second = start_map(["-j2", "echo", ":::", *map(str, range(50, 100))], cwd=tmp_path)
    for proc in (first, second):
        out, err = proc.communicate(timeout=60)
        assert (proc.returncode, err) == (0, b"")
        assert len(out.splitlines()) == 50
    with journal_of(tmp_path) as journal:
        runs = journal.runs()
        assert [(run.status, dict(run.counts)) for run in runs] == [("succeeded", {"succeeded": 50})] * 2
        assert DurationHistory(journal).entries()[0].samples == 100


def _open_at_once(folder: str, barrier: Any, errors: Any) -> None:
    barrier.wait(WAIT)
    try:
        Journal.open(folder).close()
    except Exception as error:
        errors.put(repr(error))
        raise


def test_a_journal_created_by_many_processes_at_once_opens_in_each(tmp_path: Path) -> None:
    # Setting WAL mode needs the new file to itself, and SQLite refuses at once (no busy wait)
    # while another process has it: `Journal.open` must ride that out. Forked processes that
    # meet at a barrier first line up closely enough to hit it in about one try in four.
    context = multiprocessing.get_context("fork")
    errors = context.Queue()
    for attempt in range(10):
        folder = tmp_path / str(attempt)
        folder.mkdir()
        barrier = context.Barrier(8)
        procs = [context.Process(target=_open_at_once, args=(str(folder), barrier, errors)) for _ in range(8)]
        for proc in procs:
            proc.start()
        for proc in procs:
            proc.join(60)
        assert [proc.exitcode for proc in procs] == [0] * 8, errors.get(timeout=WAIT)
        with Journal.open(folder) as journal:
            assert journal.query("PRAGMA journal_mode") == [("wal",)]


# ---------------------------------------------------------------------------- no journal


@pytest.mark.parametrize("broken", ["a file where .phalanx/ goes", "a damaged journal", "a read-only directory"])
def test_a_journal_that_cannot_be_opened_warns_once_and_changes_no_output(tmp_path: Path, broken: str) -> None:
    work = tmp_path / "work"
    work.mkdir()
    if broken == "a file where .phalanx/ goes":
        (work / ".phalanx").write_text("not a directory")
    elif broken == "a damaged journal":
        (work / ".phalanx").mkdir()
        (work / ".phalanx" / "journal.db").write_text("not a database")
    else:
        if os.geteuid() == 0:
            pytest.skip("root writes into read-only directories")
        work.chmod(0o555)
    args = ["-k", "--tag", "echo {}; exit {}", ":::", "0", "1", "2"]
    try:
        done = run_map(args, cwd=work)
    finally:
        work.chmod(0o755)
    assert done.returncode == 2
    assert done.stdout == b"0\t0\n1\t1\n2\t2\n"
    assert done.stdout == run_map(["--no-journal", *args], cwd=tmp_path).stdout
    [warning] = done.stderr.decode().splitlines()
    assert warning.startswith("phalanx map: warning: running without a journal (")
    assert "--no-journal skips it" in warning
    assert "Traceback" not in warning


def test_no_journal_records_nothing_and_leaves_no_folder(tmp_path: Path) -> None:
    done = run_map(["--no-journal", "-k", "echo", ":::", "a", "b"], cwd=tmp_path)
    assert (done.returncode, done.stdout, done.stderr) == (0, b"a\nb\n", b"")
    assert list(tmp_path.iterdir()) == []
    help_text = run_map(["--help"], cwd=tmp_path).stdout.decode()
    assert "--no-journal" in help_text and "GNU parallel has none of these" in help_text


# ---------------------------------------------------------------------------- --resume


def test_resume_reads_the_joblog_and_each_run_records_what_it_ran(tmp_path: Path) -> None:
    work = tmp_path  # no task file: runs, show and history read .phalanx/ here
    args = ["-k", "--joblog", "log", "echo {}; test {} != 2 || test -e fixed", ":::", "1", "2", "3"]
    first = run_map(args, cwd=work)
    assert (first.returncode, first.stdout) == (1, b"1\n2\n3\n")
    (work / "fixed").touch()
    second = run_map(["--resume-failed", *args], cwd=work)
    assert (second.returncode, second.stdout, second.stderr) == (0, b"2\n", b"")
    with journal_of(work) as journal:
        newest, oldest = journal.runs()
        assert dict(oldest.counts) == {"succeeded": 2, "failed": 1}
        assert [(task.task_id, task.status) for task in journal.show(newest.id)] == [("2", "succeeded")]
    # The journal is not what --resume reads: without it, the joblog still says all is done.
    for path in sorted((work / ".phalanx").iterdir()):
        path.unlink()
    (work / ".phalanx").rmdir()
    third = run_map(["--resume", *args], cwd=work)
    assert (third.returncode, third.stdout, third.stderr) == (0, b"", b"")
    assert len((work / "log").read_text().splitlines()) == 1 + 4  # the header, then each job that ran


# ---------------------------------------------------------------------------- batched commits


def test_a_running_job_is_committed_with_its_group_and_a_kill_9_keeps_what_was(tmp_path: Path) -> None:
    # Job 1 ends at once; job 2 waits on a FIFO nobody writes to. The journal is committed
    # every 0.1 s with no event needed: job 1's end, and job 2 running with its process
    # group and its leader's start time, which a kill -9 of phalanx then leaves behind.
    gate = tmp_path / "gate"
    os.mkfifo(gate)
    proc = start_map(["-j2", "{}", ":::", "echo quick", f"cat {gate}"], cwd=tmp_path)
    leftovers: list[int] = []
    try:
        def committed() -> list[Any]:
            with Journal.open(tmp_path) as journal:
                runs = journal.runs()
                if not runs:
                    return []
                return [journal.show(runs[0].id, "1"), journal.show(runs[0].id, "2")]

        def job_2_runs_and_job_1_is_done() -> bool:
            found = committed()
            return bool(found) and [a.status for a in found[0]] == ["succeeded"] and [
                (a.status, a.leader_started is not None) for a in found[1]] == [("running", True)]

        wait_for(job_2_runs_and_job_1_is_done, "the journal to hold job 2 running and job 1 done")
        [[quick], [waiting]] = committed()
        assert waiting.pid is not None and waiting.pgid == waiting.pid
        leftovers.append(waiting.pgid)
        assert waiting.leader_started == psutil.Process(waiting.pid).create_time()
        assert quick.stdout_tail == "quick\n"
        proc.kill()
        proc.wait(WAIT)
        with Journal.open(tmp_path) as journal:
            run = only_run(journal)
            assert run.status == "running" and dict(run.counts) == {"succeeded": 1, "running": 1}
            [found] = journal.running_attempts(run.id)
            assert (found.task_id, found.pgid) == ("2", waiting.pgid)
            assert kill_leftovers([found], grace=WAIT) == [waiting.pgid]  # the group is known to be ours
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(WAIT)
        kill_groups(leftovers)


def _graph(marker: Path) -> phalanx.Graph:
    flaky = f"test -e {marker} || {{ touch {marker}; echo first try >&2; exit 3; }}; echo second try"
    return phalanx.Graph([
        phalanx.Task("ok", "echo ok"),
        phalanx.Task("flaky", flaky, retry=phalanx.RetryPolicy(count=1, initial=0)),
        phalanx.Task("fails", "echo no >&2; exit 2"),
        phalanx.Task("skipped", "echo never", deps=("fails",)),
        phalanx.Task("slow", "sleep 5", timeout=0.2),
    ])


def _recorded(directory: Path, commit_every: float | None) -> tuple[Any, ...]:
    """Run `_graph` with a journal sink and return what the journal holds, times left out."""
    with Journal.open(directory) as journal:
        sink = JournalSink(journal, spec_hashes={}, command_line="test", run_kind="map",
                           history_key=lambda tid: f"key {tid}", commit_every=commit_every)
        backends = StandardBackends("threads", grace=0.1, on_spawn=sink.attempt_spawned)

        async def run() -> phalanx.RunReport:
            return await run_session(_graph(directory / "marker"), backend_for=backends.for_task,
                                     close_backends=backends.aclose, max_workers=2, sinks=[sink])

        asyncio.run(run())
        record = only_run(journal)
        tasks = sorted((t.task_id, t.status, t.attempts, t.reason, t.exit_code, t.duration is None)
                       for t in journal.show(record.id))
        attempts = sorted(
            (a.task_id, a.attempt, a.status, a.exit_code, a.signal, a.reason, a.stdout_tail, a.stderr_tail,
             a.pid is not None and a.pgid == a.pid, None not in (a.started_at, a.ended_at, a.duration))
            for tid, *_ in tasks for a in journal.show(record.id, tid)
        )
        history = [(entry.key, entry.samples) for entry in DurationHistory(journal).entries()]
        return record.status, dict(record.counts), tasks, attempts, history


@pytest.mark.parametrize("commit_every", [0.01, 3600.0])
def test_a_batching_sink_records_what_one_commit_per_task_does(tmp_path: Path, commit_every: float) -> None:
    # 3600 s: nothing comes due, so the run's end writes everything in one transaction.
    (tmp_path / "each").mkdir()
    (tmp_path / "batched").mkdir()
    each = _recorded(tmp_path / "each", None)
    batched = _recorded(tmp_path / "batched", commit_every)
    assert batched == each
    status, counts, tasks, attempts, history = batched
    assert status == "failed" and counts == {"succeeded": 2, "failed": 1, "skipped": 1, "timed_out": 1}
    assert ("skipped", "skipped", 0, "dependency 'fails' failed", None, True) in tasks
    # A retried attempt keeps its reason (as with one commit per task, its output is not kept).
    assert ("flaky", 1, "failed", None, None, "exit code 3", "", "", True, True) in attempts
    assert ("flaky", 2, "succeeded", 0, None, None, "second try\n", "", True, True) in attempts
    assert history == [("key flaky", 1), ("key ok", 1)]


def test_commit_every_must_be_positive(tmp_path: Path) -> None:
    with Journal.open(tmp_path) as journal:
        for bad in (0.0, -1.0, float("nan")):
            with pytest.raises(ValueError, match="commit_every"):
                JournalSink(journal, spec_hashes={}, command_line="test", commit_every=bad)


def test_process_start_times_are_psutils_to_the_bit(tmp_path: Path) -> None:
    # The journal reads them from /proc itself (no psutil import for a short map run):
    # `kill_leftovers` compares them with psutil's, which must find them equal.
    child = subprocess.Popen(["sleep", "60"], process_group=0)
    try:
        for pid in (os.getpid(), child.pid, 1):
            assert _create_time(pid) == psutil.Process(pid).create_time()
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(WAIT)
    assert _create_time(child.pid) is None  # reaped: gone
