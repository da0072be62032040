"""Helpers for scheduler tests: simulated work on the fake clock, and an event recorder."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Iterable, Mapping
from typing import Any

from phalanx import Event, Graph, RunReport, Task
from phalanx.fakeclock import run_virtual
from phalanx.runner import run_async


def work(
    seconds: float, *, fail_attempts: Iterable[int] = (), returns: Any = None
) -> Callable[[], Coroutine[Any, Any, Any]]:
    """An ``async def`` action that takes ``seconds`` of (virtual) time.

    Attempts numbered in ``fail_attempts`` (1-based, counted by this action) raise.
    """
    failing = set(fail_attempts)
    calls = 0

    async def action() -> Any:
        nonlocal calls
        calls += 1
        await asyncio.sleep(seconds)
        if calls in failing:
            raise RuntimeError(f"attempt {calls} failed")
        return returns

    return action


class Recorder:
    """A sink that keeps every event, in order."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    def handle(self, event: Event) -> None:
        self.events.append(event)

    def close(self) -> None:
        return None

    def of(self, kind: type) -> list[Any]:
        return [event for event in self.events if isinstance(event, kind)]


def run_fake(
    tasks: Graph | Iterable[Task],
    *,
    max_workers: int,
    resources: Mapping[str, float] | None = None,
    fail_fast: bool = False,
    recorder: Recorder | None = None,
) -> RunReport:
    """Run on the inline backend with the fake clock: exact, instant schedules."""
    return run_virtual(
        run_async(
            tasks if isinstance(tasks, Graph) else Graph(tasks),
            max_workers=max_workers,
            resources=resources,
            fail_fast=fail_fast,
            backend="inline",
            sinks=[recorder] if recorder else (),
            seed=0,
        )
    )
