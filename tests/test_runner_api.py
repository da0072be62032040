"""`phalanx.run` from Python: HuskyCat's entry point, threads, errors as typed exceptions."""

from __future__ import annotations

import asyncio
import threading

import pytest

import phalanx
from phalanx import (
    ConfigError,
    CycleError,
    DuplicateTaskError,
    Graph,
    PhalanxError,
    ResourceError,
    Status,
    Task,
    TaskFinished,
    UnknownDependencyError,
)


def test_huskycat_mapping_with_deps_and_exceptions_captured() -> None:
    def buggy() -> None:
        raise RuntimeError("Tool crashed")

    report = phalanx.run(
        {"black": lambda: {"errors": 0, "warnings": 2}, "mypy": lambda: "ok", "buggy": buggy, "after": lambda: 1},
        deps={"mypy": ["black"], "after": ["buggy"]},
        max_workers=3,
    )
    assert report["mypy"].value == "ok"
    assert report["black"].data == {"errors": 0, "warnings": 2}
    failed = report["buggy"]
    assert failed.status is Status.FAILED
    assert failed.error is not None and failed.error.type == "RuntimeError"
    assert "Tool crashed" in failed.error.message and "in buggy" in failed.error.traceback
    assert report["after"].status is Status.SKIPPED and report["after"].blocked_by == "buggy"
    assert report.exit_code == 1
    assert report.summary.data_totals == {"errors": 0, "warnings": 2}


def test_thread_timeout_abandons_the_thread() -> None:
    release = threading.Event()
    entered = threading.Event()

    def stuck() -> str:
        entered.set()
        release.wait(10)
        return "late"

    try:
        report = phalanx.run({"stuck": stuck, "quick": lambda: 1}, timeout=0.2, max_workers=2)
    finally:
        release.set()
    assert entered.is_set()
    assert report["stuck"].status is Status.TIMED_OUT
    assert report["stuck"].value is None  # the late result is dropped
    assert report["quick"].ok


def test_mixed_commands_callables_and_coroutines() -> None:
    async def coroutine() -> int:
        await asyncio.sleep(0)
        return 7

    report = phalanx.run(
        [Task("cmd", "echo hi"), Task("argv", ["true"]), Task("fn", lambda: 1, deps=["cmd"]), Task("co", coroutine)],
        max_workers=2,
    )
    assert report.ok
    assert report["cmd"].stdout_tail == "hi\n"
    assert report["co"].value == 7


def test_events_are_delivered_in_order() -> None:
    seen: list[str] = []
    phalanx.run(
        {"a": lambda: 1, "b": lambda: 2},
        deps={"b": ["a"]},
        max_workers=1,
        on_event=lambda e: seen.append(type(e).__name__ + (f":{e.task_id}" if isinstance(e, TaskFinished) else "")),
    )
    assert seen == ["RunStarted", "TaskStarted", "TaskFinished:a", "TaskStarted", "TaskFinished:b", "RunFinished"]


def test_model_errors_are_typed_with_attributes() -> None:
    with pytest.raises(CycleError) as cycle:
        phalanx.run([Task("a", "true", deps=["b"]), Task("b", "true", deps=["a"])])
    assert cycle.value.cycle == ["a", "b", "a"]
    assert isinstance(cycle.value, ValueError)

    with pytest.raises(UnknownDependencyError) as unknown:
        phalanx.run([Task("build", "true"), Task("test", "true", deps=["biuld"])])
    assert unknown.value.dependency == "biuld" and unknown.value.suggestion == "build"
    assert unknown.value.task_id == "test"

    with pytest.raises(DuplicateTaskError):
        Graph([Task("a", "true"), Task("a", "false")])

    with pytest.raises(ResourceError, match="capacity of 'slots'"):
        phalanx.run([Task("wide", "true", resources={"slots": 8})], max_workers=2)

    with pytest.raises(ResourceError, match="did you mean 'gpu'"):
        phalanx.run([Task("t", "true", resources={"gpus": 1})], resources={"gpu": 1})

    with pytest.raises(ConfigError, match="timeout"):
        Task("t", "true", timeout="soon")

    with pytest.raises(ConfigError, match="deps names 'nope'"):
        phalanx.run({"a": lambda: 1}, deps={"nope": ["a"]})


def test_nothing_runs_when_the_graph_is_invalid() -> None:
    ran: list[str] = []
    with pytest.raises(PhalanxError):
        phalanx.run([Task("ok", lambda: ran.append("ok")), Task("bad", "true", deps=["missing"])])
    assert ran == []


def test_graph_is_frozen_once_run_and_runs_twice_without_shared_state() -> None:
    graph = Graph([Task("a", lambda: 1)])
    first = phalanx.run(graph, max_workers=1)
    with pytest.raises(PhalanxError, match="frozen"):
        graph.add(Task("b", lambda: 2))
    second = phalanx.run(graph, max_workers=1)
    assert first.ok and second.ok


def test_run_async_inside_a_running_loop() -> None:
    async def main() -> phalanx.RunReport:
        return await phalanx.run_async({"a": lambda: 1}, max_workers=1)

    assert asyncio.run(main()).ok


def test_fail_fast_with_threads() -> None:
    gate = threading.Event()

    def fails() -> None:
        raise ValueError("no")

    try:
        report = phalanx.run(
            [Task("fails", fails), Task("waits", lambda: gate.wait(10)), Task("later", lambda: 1, deps=["waits"])],
            max_workers=2,
            fail_fast=True,
        )
    finally:
        gate.set()
    assert report["fails"].status is Status.FAILED
    assert report["waits"].status is Status.CANCELLED
    assert report["later"].status is Status.SKIPPED


def test_execution_plan_api() -> None:
    plan = phalanx.get_execution_plan(
        {"black": "true", "isort": "true", "mypy": "true"}, deps={"mypy": ["black", "isort"]}, max_workers=4
    )
    assert plan.levels == (("black", "isort"), ("mypy",))
    assert plan.max_parallelism == 2
    assert plan.critical_path == ("black", "mypy")
    assert not plan.costs_known
