"""The ``--trace`` sink: real runs, written out, then checked against the trace-event format.

The validator below follows the Trace Event Format's definition (the JSON Object Format;
the required keys of complete "X", instant "i" and metadata "M" events; microsecond
``ts``/``dur``), plus what phalanx promises on top: one track per slot, slices on a track
that never overlap, one slice per attempt.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

import phalanx
from phalanx import Event, RetryPolicy, Status, Task, TaskStarted
from phalanx.errors import ConfigError
from phalanx.sinks.trace import TraceSink
from viewers import validate_trace


def load(path: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    document = json.loads(path.read_text(encoding="utf-8"))
    return document, validate_trace(document)


def slices(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [event for event in events if event["ph"] == "X"]


def test_a_run_with_retries_failures_and_skips(tmp_path: Path) -> None:
    calls = Counter[str]()

    async def fetch(seconds: float) -> str:
        await asyncio.sleep(seconds)
        return "ok"

    def crunch(seconds: float) -> int:
        time.sleep(seconds)
        return 1

    def flaky() -> str:
        calls["flaky"] += 1
        time.sleep(0.01)
        if calls["flaky"] == 1:
            raise RuntimeError("first try fails")
        return "second try works"

    def broken() -> None:
        raise ValueError("always")

    tasks = [
        Task("fetch-a", fetch, args=(0.03,)),
        Task("fetch-b", fetch, args=(0.02,)),
        Task("crunch-a", crunch, args=(0.02,)),
        Task("crunch-b", crunch, args=(0.01,)),
        Task("flaky", flaky, retry=RetryPolicy(count=2, initial=0.01)),
        Task("broken", broken),
        Task("exit-3", "exit 3"),
        Task("after-broken", crunch, args=(0.0,), deps=("broken",)),
        Task("after-flaky", fetch, args=(0.01,), deps=("flaky",)),
    ]
    started: list[TaskStarted] = []

    def record(event: Event) -> None:
        if isinstance(event, TaskStarted):
            started.append(event)

    path = tmp_path / "run.trace.json"
    report = phalanx.run(tasks, max_workers=3, sinks=[TraceSink(path)], on_event=record)

    assert report["flaky"].status is Status.SUCCEEDED and report["flaky"].attempts == 2
    assert report["after-broken"].status is Status.SKIPPED
    document, events = load(path)
    assert document["displayTimeUnit"] == "ms"
    other = document["otherData"]
    assert other["total"] == 9 and other["max_workers"] == 3
    assert other["counts"]["skipped"] == 1 and other["counts"]["failed"] == 2
    assert other["run_id"] and other["started_at"] == pytest.approx(report.summary.started_at)

    # One track per slot used, named "slot N", in a process named after the run.
    process = [e for e in events if e["ph"] == "M" and e["name"] == "process_name"]
    assert [e["args"]["name"] for e in process] == [f"phalanx run {other['run_id']}"]
    xs = slices(events)
    assert {e["tid"] for e in xs} == {s.worker for s in started} <= {1, 2, 3}
    names = {e["tid"]: e["args"]["name"] for e in events if e["ph"] == "M" and e["name"] == "thread_name"}
    assert names == {tid: f"slot {tid}" for tid in names}

    # One slice per attempt, on the slot it ran in, with the attempt's times.
    assert sorted((e["name"], e["args"]["attempt"]) for e in xs) == sorted((s.task_id, s.attempt) for s in started)
    assert Counter(e["name"] for e in xs) == {tid: r.attempts for tid, r in report.results.items() if r.attempts}
    for event in xs:
        start = next(s for s in started if (s.task_id, s.attempt) == (event["name"], event["args"]["attempt"]))
        assert event["tid"] == start.worker
        assert event["ts"] == pytest.approx(start.at * 1e6, abs=0.01)
        result = report[event["name"]]
        if event["args"]["attempt"] == result.attempts:
            assert event["ts"] + event["dur"] == pytest.approx(result.end * 1e6, abs=0.01)  # type: ignore[operator]
            assert event["dur"] == pytest.approx(result.duration * 1e6, abs=0.01)
            assert event["cat"] == event["args"]["status"] == result.status.value
            assert event["args"]["exit_code"] == result.exit_code
            assert event["args"]["reason"] == result.reason

    retried = next(e for e in xs if e["name"] == "flaky" and e["args"]["attempt"] == 1)
    assert retried["cat"] == "retried" and "first try fails" in retried["args"]["reason"]
    assert retried["args"]["retry_delay"] == pytest.approx(0.01)
    exited = next(e for e in xs if e["name"] == "exit-3")
    assert exited["cat"] == "failed" and exited["args"]["exit_code"] == 3
    assert {e["name"] for e in xs if e["cat"] == "succeeded"} == {
        "fetch-a", "fetch-b", "crunch-a", "crunch-b", "flaky", "after-flaky"
    }

    # The skipped task never ran: it is a global instant, saying why.
    instants = [e for e in events if e["ph"] == "i"]
    assert [(e["name"], e["cat"], e["s"]) for e in instants] == [("after-broken", "skipped", "g")]
    assert instants[0]["args"]["blocked_by"] == "broken" and instants[0]["args"]["attempts"] == 0
    assert not [p for p in tmp_path.iterdir() if p.name != path.name], "the temporary file is gone"


def test_fail_fast_cancellations_are_instants(tmp_path: Path) -> None:
    def boom() -> None:
        raise RuntimeError("boom")

    tasks = [Task("boom", boom)] + [Task(f"later-{n}", "true", deps=("boom",)) for n in range(2)]
    tasks += [Task(f"queued-{n}", "sleep 0.01") for n in range(4)]
    path = tmp_path / "trace.json"
    report = phalanx.run(tasks, max_workers=1, fail_fast=True, sinks=[TraceSink(path)])
    _, events = load(path)
    never_ran = {tid for tid, result in report.results.items() if not result.attempts}
    instants = {e["name"]: e for e in events if e["ph"] == "i"}
    assert "cancelling (fail-fast)" in instants
    assert set(instants) - {"cancelling (fail-fast)"} == never_ran
    assert {instants[tid]["cat"] for tid in never_ran} <= {"skipped", "cancelled"}
    assert [e["name"] for e in slices(events)] == ["boom"]


def test_tasks_without_a_slot_get_tracks_that_never_overlap(tmp_path: Path) -> None:
    async def nap() -> None:
        await asyncio.sleep(0.02)

    tasks = [Task(f"free-{n}", nap, resources={"slots": 0}) for n in range(3)]
    tasks += [Task(f"slotted-{n}", nap) for n in range(2)]
    path = tmp_path / "trace.json"
    phalanx.run(tasks, max_workers=2, sinks=[TraceSink(path)])
    _, events = load(path)  # the validator checks no two slices on one track overlap
    names = {e["tid"]: e["args"]["name"] for e in events if e["ph"] == "M" and e["name"] == "thread_name"}
    free_tracks = {e["tid"] for e in slices(events) if e["name"].startswith("free-")}
    assert len(free_tracks) == 3  # all three ran at once
    assert {names[tid] for tid in free_tracks} == {"no slot 1", "no slot 2", "no slot 3"}
    assert {names[e["tid"]] for e in slices(events) if e["name"].startswith("slotted-")} <= {"slot 1", "slot 2"}
    sort_index = {e["tid"]: e["args"]["sort_index"] for e in events if e["name"] == "thread_sort_index"}
    assert sort_index == {tid: tid for tid in names}


def test_the_file_is_replaced_whole(tmp_path: Path) -> None:
    path = tmp_path / "trace.json"
    path.write_text("an older trace")
    phalanx.run({"one": "true"}, max_workers=1, sinks=[TraceSink(path)])
    _, events = load(path)
    assert [e["name"] for e in slices(events)] == ["one"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["trace.json"]
    assert path.stat().st_mode & 0o777 == 0o644  # as readable as any other output, not mkstemp's 0600


def test_nothing_is_written_when_the_tasks_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "trace.json"
    with pytest.raises(phalanx.CycleError):
        phalanx.run(
            [Task("a", "true", deps=("b",)), Task("b", "true", deps=("a",))], sinks=[TraceSink(path)]
        )
    assert list(tmp_path.iterdir()) == []


def test_a_path_that_cannot_be_written_is_refused_before_the_run(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        TraceSink(tmp_path / "nowhere" / "trace.json")
    with pytest.raises(ConfigError, match="is a directory"):
        TraceSink(tmp_path)


def test_an_aborted_run_still_closes_its_open_slices(tmp_path: Path) -> None:
    """Events fed by hand: a run that stopped with an attempt running (no TaskFinished)."""
    sink = TraceSink(tmp_path / "trace.json")
    sink.handle(phalanx.RunStarted("abc", total=2, max_workers=2, started_at=1.7e9))
    sink.handle(TaskStarted("a", 1, 1, 0.5))
    sink.handle(TaskStarted("b", 1, 2, 0.75))
    sink.handle(phalanx.TaskRetrying("b", 1, 0.0, "exit code 1", 1.0))
    sink.close()
    sink.close()  # a second close writes nothing more
    document, events = load(tmp_path / "trace.json")
    by_name = {e["name"]: e for e in slices(events)}
    assert by_name["a"]["cat"] == "unfinished" and by_name["a"]["dur"] == pytest.approx(0.5e6)
    assert by_name["b"]["cat"] == "retried" and by_name["b"]["dur"] == pytest.approx(0.25e6)
    assert "counts" not in document["otherData"]
