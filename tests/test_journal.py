"""The run journal: what a run records, resuming a run killed with SIGKILL, leftover process
groups, and the duration history.

Real processes throughout. Every wait on another process is bounded (`WAIT`); the only
polls are for processes that are not our children, where there is nothing else to wait on.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import IO, Any

import psutil
import pytest

import phalanx
import phalanx.journal
from phalanx.events import RunStarted, TaskStarted
from phalanx.history import ALPHA, DurationHistory, HistoryCosts
from phalanx.journal import (
    CHECKPOINT_COMMITS,
    SCHEMA_VERSION,
    SPAWN_HOLD,
    TAIL_LIMIT,
    Journal,
    JournalError,
    JournalSink,
    Leftover,
    file_key,
    journal_path,
    kill_leftovers,
    plan_resume,
    spec_hash,
    spec_hashes,
)
from phalanx.results import Status, TaskResult
from phalanx.runner import run_async

HERE = Path(__file__).resolve().parent
CHILD = HERE / "journal_child.py"
WAIT = 10.0
SEED = 20240611


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[Journal]:
    with Journal.open(tmp_path) as opened:
        yield opened


def _record(journal: Journal, graph: phalanx.Graph, key: str, **options: Any) -> tuple[phalanx.RunReport, str]:
    """Run ``graph`` through `run_async` with a journal sink; the report and the run's id."""
    sink = JournalSink(journal, spec_hashes=spec_hashes(graph), command_line="phalanx run", file_key=key)
    report = asyncio.run(run_async(graph, sinks=[sink], **options))
    assert sink.run_id is not None
    return report, sink.run_id


# ---------------------------------------------------------------------------- the file


def test_a_new_journal_is_private_versioned_and_in_wal_mode(tmp_path: Path) -> None:
    with Journal.open(tmp_path) as journal:
        assert journal.path == journal_path(tmp_path) == tmp_path / ".phalanx" / "journal.db"
        assert journal.query("PRAGMA journal_mode") == [("wal",)]
        assert journal.query("PRAGMA synchronous") == [(1,)]  # NORMAL
        assert journal.query("PRAGMA user_version") == [(SCHEMA_VERSION,)]
    assert (tmp_path / ".phalanx" / ".gitignore").read_text().splitlines()[-1] == "*"
    assert (journal_path(tmp_path).stat().st_mode & 0o777) == 0o600
    assert ((tmp_path / ".phalanx").stat().st_mode & 0o777) == 0o700
    with sqlite3.connect(journal_path(tmp_path)) as other:  # WAL is a property of the file
        assert other.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    with Journal.open(tmp_path) as again:  # opening again migrates nothing and loses nothing
        assert again.runs() == []


def _checkpointers() -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name == "phalanx-journal-checkpoint"]


def test_a_journal_starts_no_thread_unless_asked(journal: Journal) -> None:
    # A process that forks (phalanx pytest) must not have one: a fork copies only the caller.
    history = DurationHistory(journal)
    for number in range(CHECKPOINT_COMMITS + 1):
        history.observe(f"key {number}", 1.0)
    assert _checkpointers() == []


def test_a_journal_asked_to_checkpoint_in_the_background_does_in_a_thread_that_stops_with_it(tmp_path: Path) -> None:
    journal = Journal.open(tmp_path)
    journal.checkpoint_in_background()
    history = DurationHistory(journal)
    history.observe("first", 1.0)
    empty = journal_path(tmp_path).stat().st_size  # every row so far is in the WAL only
    for number in range(CHECKPOINT_COMMITS):
        history.observe(f"key {number}", 1.0)  # a commit each
    checkpointers = _checkpointers()
    assert len(checkpointers) == 1
    # Its checkpoint copies the rows into the database file while the journal stays open (a
    # wait on another thread's disk writes: there is nothing to join before the close).
    deadline = time.monotonic() + WAIT
    while journal_path(tmp_path).stat().st_size <= empty:
        assert time.monotonic() < deadline, f"no checkpoint within {WAIT}s"
        time.sleep(0.01)
    journal.close()
    assert not checkpointers[0].is_alive()
    assert not journal_path(tmp_path).with_name("journal.db-wal").exists()  # the close checkpointed the rest
    with Journal.open(tmp_path) as again:
        assert len(DurationHistory(again).entries()) == CHECKPOINT_COMMITS + 1


def test_a_journal_from_a_newer_phalanx_or_not_a_journal_is_refused(tmp_path: Path) -> None:
    Journal.open(tmp_path).close()
    with sqlite3.connect(journal_path(tmp_path)) as db:
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(JournalError, match="newer phalanx"):
        Journal.open(tmp_path)
    other = tmp_path / "other"
    (other / ".phalanx").mkdir(parents=True)
    journal_path(other).write_bytes(b"this is not a database, but it is long enough to look like one" * 20)
    with pytest.raises(JournalError, match="not a usable phalanx journal"):
        Journal.open(other)


# ---------------------------------------------------------------------------- recording a run


async def _square(number: int) -> int:
    return number * number


def test_a_real_run_records_the_run_its_tasks_and_each_attempt(journal: Journal, tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    flaky = f"test -e {marker} || {{ touch {marker}; echo first try >&2; exit 3; }}; echo second try"
    graph = phalanx.Graph([
        phalanx.Task("compile", "echo compiled"),
        phalanx.Task("flaky", flaky, retry=phalanx.RetryPolicy(count=1)),
        phalanx.Task("square", _square, args=(7,)),
        phalanx.Task("lint", "echo no >&2; exit 2", deps=("compile",)),
        phalanx.Task("ship", "echo shipped", deps=("lint", "square")),
    ])
    key = file_key(tmp_path / "phalanx.toml")
    report, run_id = _record(journal, graph, key, max_workers=2)
    assert report.exit_code == 1

    [run] = journal.runs()
    assert (run.id, run.kind, run.file, run.command_line, run.status) == (run_id, "run", key, "phalanx run", "failed")
    assert dict(run.counts) == {"succeeded": 3, "failed": 1, "skipped": 1} and run.total == 5
    assert run.duration is not None and 0 < run.duration < WAIT
    assert journal.run(run_id[:5]) == run  # an unambiguous prefix will do

    tasks = {task.task_id: task for task in journal.show(run_id)}
    assert {tid: task.status for tid, task in tasks.items()} == {
        "compile": "succeeded", "flaky": "succeeded", "square": "succeeded", "lint": "failed", "ship": "skipped",
    }
    assert {tid: task.spec_hash for tid, task in tasks.items()} == spec_hashes(graph)
    assert (tasks["lint"].exit_code, tasks["lint"].reason, tasks["lint"].attempts) == (2, "exit code 2", 1)
    assert tasks["ship"].attempts == 0 and tasks["ship"].reason == "dependency 'lint' failed"

    first, second = journal.show(run_id, "flaky")
    assert (first.attempt, first.status, first.reason) == (1, "failed", "exit code 3")
    assert (second.attempt, second.status, second.exit_code, second.reason) == (2, "succeeded", 0, None)
    assert second.stdout_tail == "second try\n" and second.pid == report["flaky"].pid
    for attempt in (first, second):
        assert attempt.started_at is not None and attempt.ended_at is not None and attempt.duration is not None
        assert run.started_at <= attempt.started_at <= attempt.ended_at <= run.started_at + run.duration
    assert first.ended_at is not None and second.started_at is not None and first.ended_at <= second.started_at
    [lint] = journal.show(run_id, "lint")
    assert (lint.status, lint.exit_code, lint.stderr_tail) == ("failed", 2, "no\n")
    assert journal.show(run_id, "ship") == []  # it never started

    # Succeeded tasks feed the duration history, in the same transaction.
    history = {entry.key: entry for entry in DurationHistory(journal).entries()}
    assert set(history) == {"compile", "flaky", "square"}
    assert history["flaky"].estimate == pytest.approx(report["flaky"].duration)

    with pytest.raises(JournalError, match="no run"):
        journal.show("nosuchrun")


def test_a_task_cancelled_while_waiting_to_retry_keeps_its_failed_attempt(journal: Journal, tmp_path: Path) -> None:
    failed_once = asyncio.Event()

    async def flaky() -> None:
        failed_once.set()
        raise RuntimeError("not yet")

    async def bad() -> None:
        await failed_once.wait()  # fails once flaky waits for its retry: fail-fast cancels that wait
        raise ValueError("broken")

    graph = phalanx.Graph([
        phalanx.Task("flaky", flaky, retry=phalanx.RetryPolicy(count=1, backoff="constant", initial=60)),
        phalanx.Task("bad", bad),
    ])
    report, run_id = _record(journal, graph, file_key(tmp_path / "phalanx.toml"), max_workers=2, fail_fast=True)
    assert report["flaky"].status is Status.CANCELLED and report["flaky"].attempts == 1
    [task] = [task for task in journal.show(run_id) if task.task_id == "flaky"]
    assert (task.status, task.attempts, task.reason) == ("cancelled", 1, "cancelled (fail-fast) while waiting to retry")
    [attempt] = journal.show(run_id, "flaky")
    assert (attempt.status, attempt.reason) == ("failed", "RuntimeError: not yet")
    assert attempt.duration is not None and attempt.ended_at is not None and attempt.ended_at < (task.ended_at or 0)


def test_output_tails_are_kept_to_64_kib_each(journal: Journal) -> None:
    sink = JournalSink(journal, spec_hashes={}, command_line="test")
    sink.handle(RunStarted("tails", total=1, max_workers=1, started_at=time.time()))
    sink.handle(TaskStarted("loud", 1, 1, at=0.0))
    loud = "é" * TAIL_LIMIT + "the end\n"  # two bytes a character: cut mid-way, it must stay whole characters
    sink.handle(phalanx.TaskFinished(
        TaskResult("loud", Status.SUCCEEDED, attempts=1, start=0.0, end=0.5, duration=0.5, worker=1,
                   stdout_tail=loud, stderr_tail="short"), at=0.5))
    sink.close()
    [attempt] = journal.show("tails", "loud")
    assert len(attempt.stdout_tail.encode()) <= TAIL_LIMIT and attempt.stdout_tail.endswith("é" * 100 + "the end\n")
    assert attempt.stderr_tail == "short"
    assert journal.run("tails").status == "aborted"  # closed without a RunFinished


# ---------------------------------------------------------------------------- spec hashes


def _defined(body: str) -> Any:
    namespace: dict[str, Any] = {}
    exec(f"def work(x):\n    {body}\n", namespace)
    return namespace["work"]


def test_the_spec_hash_covers_what_a_task_does_not_when_or_how_it_is_labelled() -> None:
    base = phalanx.Task("build", "make all", deps=("gen",), env={"CC": "gcc"}, timeout=60)
    assert spec_hash(base) == spec_hash(replace(base)) and len(spec_hash(base)) == 64
    same = [replace(base, priority=10), replace(base, tags=frozenset({"slow"})), replace(base, cost=30.0),
            replace(base, resources={"slots": 1}), replace(base, group="builds")]
    assert {spec_hash(task) for task in same} == {spec_hash(base)}
    changed = [
        replace(base, action="make -j4 all"), replace(base, action=("make", "all")), replace(base, deps=("gen", "x")),
        replace(base, env={"CC": "clang"}), replace(base, cwd="sub"), replace(base, timeout=61),
        replace(base, retry=phalanx.RetryPolicy(count=2)), replace(base, resources={"db": 1}),
        replace(base, limiter=("api",)),
    ]
    digests = {spec_hash(task) for task in changed}
    assert spec_hash(base) not in digests and len(digests) == len(changed)
    # Callables: editing the body, or the arguments, changes it.
    one, other = _defined("return x + 1"), _defined("return x + 2")
    assert one.__qualname__ == other.__qualname__
    again = _defined("return x + 1")
    assert spec_hash(phalanx.Task("f", one, args=(1,))) == spec_hash(phalanx.Task("f", again, args=(1,)))
    assert spec_hash(phalanx.Task("f", one, args=(1,))) != spec_hash(phalanx.Task("f", other, args=(1,)))
    assert spec_hash(phalanx.Task("f", one, args=(1,))) != spec_hash(phalanx.Task("f", one, args=(2,)))
    assert spec_hash(phalanx.Task("f", print)) != spec_hash(phalanx.Task("f", len))  # builtins by their own names


def test_a_changed_spec_reruns_a_succeeded_task_and_what_depends_on_it(journal: Journal, tmp_path: Path) -> None:
    def graph(gen: str = "echo gen", build: str = "echo build", **extra: Any) -> phalanx.Graph:
        return phalanx.Graph([
            phalanx.Task("gen", gen, **extra),
            phalanx.Task("build", build, deps=("gen",)),
            phalanx.Task("docs", "echo docs"),
        ])

    key = file_key(tmp_path / "phalanx.toml")
    report, run_id = _record(journal, graph(), key, max_workers=2)
    assert report.ok
    plan = plan_resume(journal, key, graph())
    assert plan.done == {"gen", "build", "docs"} and plan.todo == () and plan.leftovers == ()
    # Labels and estimates are not the definition.
    assert plan_resume(journal, key, graph(priority=5, tags={"x"}, cost=3)).todo == ()

    plan = plan_resume(journal, key, graph(build="echo build --release"))
    assert plan.todo == ("build",) and plan.done == {"gen", "docs"}
    assert plan.reasons == {"build": f"its definition changed since run {run_id}"}

    plan = plan_resume(journal, key, graph(gen="echo gen v2"))
    assert plan.todo == ("gen", "build")
    assert plan.reasons["build"] == "its dependency 'gen' runs again"
    assert plan.graph(graph(gen="echo gen v2")).ids == ["gen", "build"]

    # Resuming that runs only what changed; afterwards everything is done again, and a task
    # that was not in the resumed run keeps its earlier record.
    changed = graph(gen="echo gen v2")
    sink = JournalSink(journal, spec_hashes=plan.spec_hashes, command_line="resume", file_key=key)
    rest = plan.graph(changed)
    assert asyncio.run(run_async(rest, sinks=[sink], max_workers=2)).ok
    assert sorted(task.task_id for task in journal.show(sink.run_id or "")) == ["build", "gen"]
    assert plan_resume(journal, key, changed).todo == ()
    assert plan_resume(journal, key, graph()).todo == ("gen", "build")  # back to the old one: changed again

    # Another task file's runs are not this one's.
    assert plan_resume(journal, file_key(tmp_path / "other.toml"), graph()).todo == ("gen", "build", "docs")


def test_a_failed_task_runs_again_and_so_do_the_tasks_it_skipped(journal: Journal, tmp_path: Path) -> None:
    graph = phalanx.Graph([
        phalanx.Task("ok", "true"),
        phalanx.Task("bad", "exit 4"),
        phalanx.Task("after", "true", deps=("bad", "ok")),
    ])
    key = file_key(tmp_path / "phalanx.toml")
    _, run_id = _record(journal, graph, key, max_workers=2)
    plan = plan_resume(journal, key, graph)
    assert plan.done == {"ok"} and plan.todo == ("bad", "after")
    assert plan.reasons["bad"] == f"it ended failed in run {run_id}"
    assert plan.graph(graph)["after"].deps == ("bad",)


# ---------------------------------------------------------------------------- resuming after a SIGKILL


def _lines(stream: IO[str], count: int) -> list[str]:
    """The first ``count`` lines of ``stream``, read within `WAIT` seconds."""
    lines: list[str] = []

    def read() -> None:
        for line in stream:
            lines.append(line.strip())
            if len(lines) == count:
                return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(WAIT)
    assert len(lines) == count, f"the child printed {len(lines)} of {count} lines in {WAIT}s"
    return lines


def _kill_then_resume(directory: Path, k: int) -> int:
    """Kill the DAG's run after it reported ``k`` tasks, resume it; how many it had done."""
    directory.mkdir()
    log = directory / "appended.log"
    errors = directory / "stderr.txt"
    key = file_key(directory / "phalanx.toml")
    with errors.open("w") as stderr:
        child = subprocess.Popen(
            [sys.executable, str(CHILD), "first", str(directory), str(log), str(SEED)],
            stdout=subprocess.PIPE, stderr=stderr, text=True,
        )
        try:
            assert child.stdout is not None
            heard = _lines(child.stdout, k)
        finally:
            child.kill()
            child.wait(WAIT)
            if child.stdout is not None:
                child.stdout.close()
    assert "Traceback" not in errors.read_text()
    with Journal.open(directory) as journal:
        succeeded = {tid for tid, task in journal.latest_tasks(key).items() if task.status == "succeeded"}
    assert set(heard) <= succeeded, "a task reported finished is not in the journal"

    resumed = subprocess.run(
        [sys.executable, str(CHILD), "resume", str(directory), str(log), str(SEED)],
        capture_output=True, text=True, timeout=WAIT * 3,
    )
    assert resumed.returncode == 0, resumed.stderr
    planned, ran = (json.loads(line) for line in resumed.stdout.splitlines())
    everything = {f"t{number:03d}" for number in range(200)}
    assert set(planned["done"]) == succeeded, "the plan and the journal disagree on what was done"
    assert set(planned["todo"]) == everything - succeeded
    assert set(ran["statuses"]) == everything - succeeded
    assert set(ran["statuses"].values()) <= {"succeeded"}, "a resumed task did not succeed"
    assert ran["left"] == [], "after the resumed run, a task is still to do"

    appended = Counter(log.read_text().split())
    assert set(appended) == everything, "a task never ran"
    twice = {tid for tid in succeeded if appended[tid] != 1}
    assert not twice, f"tasks the journal had as succeeded ran again: {sorted(twice)}"
    with Journal.open(directory) as journal:
        statuses = [run.status for run in journal.runs()]  # newest first
    if ran["statuses"]:
        assert statuses == ["succeeded", "crashed"]
    else:  # killed after its last task: nothing left to run, no second run
        assert statuses in (["succeeded"], ["crashed"])
    return len(succeeded)


def _ks(count: int) -> list[int]:
    """``count`` points to kill the run at, the same every time."""
    return sorted(random.Random(SEED).sample(range(1, 200), count))


def test_a_run_killed_mid_way_resumes_without_rerunning_what_succeeded(tmp_path: Path) -> None:
    done = [_kill_then_resume(tmp_path / f"k{k}", k) for k in _ks(20)[::7]]  # three of the slow test's points
    assert min(done) < 200, "every kill came after the run: it tested nothing"


@pytest.mark.slow
def test_twenty_kills_at_random_points_all_resume_cleanly(tmp_path: Path) -> None:
    # About a second a point: two Python processes start for each.
    done = [_kill_then_resume(tmp_path / f"k{k}", k) for k in _ks(20)]
    assert sum(count < 200 for count in done) >= 10, "most kills came after the run: they tested nothing"


# ---------------------------------------------------------------------------- leftover process groups


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _wait_gone(pids: list[int]) -> None:
    # Not our children (orphans of the killed run): the process table is all there is to watch.
    deadline = time.monotonic() + WAIT
    while not all(_gone(pid) for pid in pids):
        assert time.monotonic() < deadline, f"still running after {WAIT}s: {[p for p in pids if not _gone(p)]}"
        time.sleep(0.02)


def _group(pgid: int) -> list[int]:
    members = []
    for process in psutil.process_iter():
        with contextlib.suppress(psutil.Error, OSError):
            if os.getpgid(process.pid) == pgid and not _gone(process.pid):
                members.append(process.pid)
    return members


def test_a_kill_9_leaves_the_running_group_in_the_journal_and_the_resume_kills_it(tmp_path: Path) -> None:
    child = subprocess.Popen(
        [sys.executable, str(CHILD), "hang", str(tmp_path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert child.stdout is not None
        [spawned] = _lines(child.stdout, 1)
    finally:
        child.kill()
        child.wait(WAIT)
    leader = int(spawned.split()[1])
    members = _group(leader)
    try:
        assert leader in members and len(members) == 2  # the leader and its background sleep

        with Journal.open(tmp_path) as journal:
            key = file_key(tmp_path / "phalanx.toml")
            graph = phalanx.Graph([phalanx.Task("sleeper", ["sh", "-c", "sleep 60 & exec sleep 60"])])
            plan = plan_resume(journal, key, graph)
            [run] = journal.runs()
            assert run.status == "running" and plan.crashed_runs == (run.id,)
            [leftover] = plan.leftovers
            assert (leftover.run_id, leftover.task_id, leftover.attempt) == (run.id, "sleeper", 1)
            assert leftover.pid == leftover.pgid == leader
            assert leftover.leader_started == psutil.Process(leader).create_time()
            assert plan.todo == ("sleeper",) and plan.reasons["sleeper"] == f"run {run.id} stopped before it ended"
            [attempt] = journal.show(run.id, "sleeper")
            assert attempt.status == "running"

            assert kill_leftovers(plan.leftovers, grace=WAIT) == [leader]
            _wait_gone(members)

            journal.mark_crashed(plan.crashed_runs)
            assert journal.run(run.id).status == "crashed"
            assert journal.show(run.id, "sleeper")[0].status == "lost"
            again = plan_resume(journal, key, graph)
            assert again.leftovers == () and again.crashed_runs == () and again.todo == ("sleeper",)
    finally:
        for pid in members:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def test_kill_leftovers_touches_a_group_only_if_its_leader_started_when_recorded(tmp_path: Path) -> None:
    proc = subprocess.Popen(["sleep", "60"], process_group=0)
    try:
        started = psutil.Process(proc.pid).create_time()
        reused = Leftover("run", "task", 1, pgid=proc.pid, pid=proc.pid, leader_started=started - 5.0)
        assert kill_leftovers([reused], grace=0.0) == []
        other_group = replace(reused, pgid=os.getpgid(0), leader_started=started)
        assert kill_leftovers([other_group], grace=0.0) == []
        assert proc.poll() is None, "a process with another start time was killed"

        ours = replace(reused, leader_started=started)
        assert kill_leftovers([ours], grace=WAIT) == [proc.pid]
        assert proc.wait(WAIT) == -signal.SIGTERM
    finally:
        proc.kill()
        proc.wait(WAIT)


def test_a_group_that_ignores_sigterm_gets_sigkill_after_the_grace(tmp_path: Path) -> None:
    # The leader ignores SIGTERM (an ignored signal stays ignored across exec) and says so once it does.
    proc = subprocess.Popen(
        ["sh", "-c", "trap '' TERM; echo ready; exec sleep 60"], process_group=0, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert proc.stdout is not None
        assert _lines(proc.stdout, 1) == ["ready"]
        entry = Leftover("run", "task", 1, proc.pid, proc.pid, psutil.Process(proc.pid).create_time())
        assert kill_leftovers([entry], grace=0.2) == [proc.pid]
        assert proc.wait(WAIT) == -signal.SIGKILL
    finally:
        proc.kill()
        proc.wait(WAIT)


def test_an_unfinished_run_whose_phalanx_still_lives_is_not_crashed(journal: Journal, tmp_path: Path) -> None:
    key = file_key(tmp_path / "phalanx.toml")
    journal.begin_run("live", kind="run", file=key, command_line="x", started_at=time.time(), spec_hashes={"a": "h"})
    plan = plan_resume(journal, key, phalanx.Graph([phalanx.Task("a", "true")]))
    assert plan.crashed_runs == () and plan.leftovers == () and plan.todo == ("a",)


def _commits(monkeypatch: pytest.MonkeyPatch) -> Callable[[], int]:
    """Count the journal's write transactions from now on (a nested one joins the outer one)."""
    count = depth = 0
    transaction = Journal.transaction

    @contextlib.contextmanager
    def counted(self: Journal) -> Iterator[sqlite3.Connection]:
        nonlocal count, depth
        depth += 1
        try:
            with transaction(self) as db:
                yield db
        finally:
            depth -= 1
        count += depth == 0

    monkeypatch.setattr(Journal, "transaction", counted)
    return lambda: count


def test_a_process_that_ends_within_the_hold_is_recorded_by_its_end_alone(
    journal: Journal, monkeypatch: pytest.MonkeyPatch
) -> None:
    commits = _commits(monkeypatch)
    sink = JournalSink(journal, spec_hashes={"quick": "h"}, command_line="test")

    async def run_quick() -> int:
        sink.handle(RunStarted("held", total=1, max_workers=1, started_at=time.time()))
        before = commits()
        sink.handle(TaskStarted("quick", 1, 1, at=0.0))
        proc = subprocess.Popen(["true"], process_group=0)
        sink.attempt_spawned("held", "quick", 1, proc.pid)  # as the backend does, before reaping it
        proc.wait(WAIT)
        sink.handle(phalanx.TaskFinished(
            TaskResult("quick", Status.SUCCEEDED, attempts=1, start=0.0, end=0.01, duration=0.01, worker=1,
                       pid=proc.pid, exit_code=0), at=0.01))
        # Nothing yielded to the loop meanwhile, so the hold cannot have run out: one commit.
        assert commits() == before + 1
        return proc.pid

    pid = asyncio.run(run_quick())
    [attempt] = journal.show("held", "quick")
    # The group goes with the end; the start time, which only tells a leftover from a later
    # process with its pid, was never looked up.
    assert (attempt.status, attempt.pid, attempt.pgid, attempt.leader_started) == ("succeeded", pid, pid, None)
    sink.close()


def test_a_held_spawn_is_committed_once_its_process_has_run_the_hold(journal: Journal, tmp_path: Path) -> None:
    sink = JournalSink(journal, spec_hashes={"sleeper": "h"}, command_line="test")
    proc = subprocess.Popen(["sleep", "60"], process_group=0)

    async def committed_leftovers() -> list[Leftover]:
        sink.handle(RunStarted("held", total=1, max_workers=1, started_at=time.time()))
        sink.handle(TaskStarted("sleeper", 1, 1, at=0.0))
        sink.attempt_spawned("held", "sleeper", 1, proc.pid)
        with Journal.open(tmp_path) as reader:  # another connection: it sees what is committed, no more
            assert reader.running_attempts("held") == []
            # The sink's timer commits it on this loop: poll the other connection, bounded.
            deadline = time.monotonic() + WAIT
            while not (found := reader.running_attempts("held")):
                assert time.monotonic() < deadline, f"the spawn was not committed within {WAIT}s"
                await asyncio.sleep(SPAWN_HOLD / 2)
            return found

    try:
        [leftover] = asyncio.run(committed_leftovers())
        assert (leftover.task_id, leftover.attempt, leftover.pid, leftover.pgid) == ("sleeper", 1, proc.pid, proc.pid)
        assert leftover.leader_started == psutil.Process(proc.pid).create_time()  # what kill_leftovers checks
    finally:
        proc.kill()
        proc.wait(WAIT)
        sink.close()


def test_the_history_takes_the_durations_a_batch_at_a_time_and_the_rest_at_the_end(
    journal: Journal, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(phalanx.journal, "HISTORY_EVERY", 3600.0)  # after the first, none comes due in the test
    sink = JournalSink(journal, spec_hashes={}, command_line="test")
    history = DurationHistory(journal)
    sink.handle(RunStarted("durations", total=3, max_workers=1, started_at=time.time()))
    for seconds, tid in enumerate(("a", "b", "c"), start=1):
        sink.handle(TaskStarted(tid, 1, 1, at=0.0))
        sink.handle(phalanx.TaskFinished(
            TaskResult(tid, Status.SUCCEEDED, attempts=1, start=0.0, end=seconds, duration=seconds, worker=1),
            at=seconds))
        assert journal.show("durations")[-1].status == "succeeded"  # the task itself: committed at its end
        assert [entry.key for entry in history.entries()] == ["a"]  # its duration: the first at once, then batched
    sink.close()
    assert {entry.key: entry.estimate for entry in history.entries()} == {"a": 1.0, "b": 2.0, "c": 3.0}


# ---------------------------------------------------------------------------- duration history


def test_the_history_is_a_moving_average_that_follows_a_change(journal: Journal) -> None:
    history = DurationHistory(journal)
    assert history.estimate("build") is None
    history.observe("build", 10.0)
    assert history.estimate("build") == 10.0
    history.observe("build", 20.0)
    assert history.estimate("build") == pytest.approx(ALPHA * 20 + (1 - ALPHA) * 10)
    for _ in range(25):  # the task got slower for good
        history.observe("build", 40.0)
    estimate = history.estimate("build")
    assert estimate is not None and abs(estimate - 40.0) < 0.01
    history.observe("test", 1.0)
    assert [(entry.key, entry.samples) for entry in history.entries()] == [("build", 27), ("test", 1)]
    assert history.clear("build") == 1 and history.estimate("build") is None
    assert history.clear() == 1 and history.entries() == []
    with pytest.raises(ValueError, match="non-negative"):
        history.observe("x", float("nan"))


def test_history_costs_order_the_critical_path_by_measured_durations(journal: Journal) -> None:
    graph = phalanx.Graph([phalanx.Task(name, "true") for name in ("quick", "middling", "slow")])
    order = phalanx.get_execution_plan(graph, max_workers=1).start_order
    assert order == ("quick", "middling", "slow")  # nothing known: submission order

    history = DurationHistory(journal)
    for name, seconds in (("quick", 0.1), ("middling", 2.0), ("slow", 30.0)):
        history.observe(name, seconds)
    costs = HistoryCosts(history)
    assert costs.estimate(graph["slow"]) == 30.0
    assert phalanx.get_execution_plan(graph, max_workers=1, cost_model=costs).start_order == (
        "slow", "middling", "quick",
    )
    # A declared cost comes first; a task with neither weighs the median of the known ones.
    declared = phalanx.Graph([*(replace(graph[name]) for name in ("middling", "slow")),
                              phalanx.Task("quick", "true", cost=100), phalanx.Task("new", "true")])
    assert HistoryCosts(DurationHistory(journal)).estimate(declared["new"]) is None
    assert phalanx.get_execution_plan(declared, max_workers=1, cost_model=HistoryCosts(history)).start_order == (
        "quick", "slow", "new", "middling",
    )
    # Map: one key (the command template) for every job.
    template = HistoryCosts(history, key=lambda task: "slow")
    assert template.estimate(phalanx.Task("job-7", "true")) == 30.0
