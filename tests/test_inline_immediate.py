"""Inline calls run to their end as they start (no asyncio task each), yet a long run of them
still gives the event loop its turns: timers fire and a cancellation (Ctrl-C in
``asyncio.run``) stops the run between batches, with every started task accounted for."""

from __future__ import annotations

import asyncio
from pathlib import Path

import phalanx
from phalanx.backends.inline import InlineBackend
from phalanx.events import Event, TaskFinished, TaskStarted
from phalanx.fakeclock import run_virtual
from phalanx.scheduler import Scheduler

TASKS = 5_000


def _graph() -> phalanx.Graph:
    return phalanx.Graph([phalanx.Task(f"t{index}", lambda: None) for index in range(TASKS)])


class _Heard:
    def __init__(self) -> None:
        self.started: list[str] = []
        self.finished: list[str] = []

    def handle(self, event: Event) -> None:
        if isinstance(event, TaskStarted):
            self.started.append(event.task_id)
        elif isinstance(event, TaskFinished):
            self.finished.append(event.result.task_id)

    def close(self) -> None:
        return None


def test_a_long_run_of_inline_calls_lets_the_loop_run_between_batches(tmp_path: Path) -> None:
    heard = _Heard()
    seen_at: list[int] = []
    backend = InlineBackend()
    scheduler = Scheduler(_graph(), backend_for=lambda task: backend, max_workers=4, sinks=[heard],
                          run_dir=tmp_path)

    async def main() -> phalanx.RunReport:
        asyncio.get_running_loop().call_soon(lambda: seen_at.append(len(heard.finished)))
        return await scheduler.run()

    report = run_virtual(main())
    assert report.summary.total == TASKS and report.ok
    assert seen_at and seen_at[0] < TASKS  # the callback ran while the run was still going


def test_cancelling_a_long_inline_run_stops_it_between_batches_and_loses_nothing(tmp_path: Path) -> None:
    heard = _Heard()
    backend = InlineBackend()
    scheduler = Scheduler(_graph(), backend_for=lambda task: backend, max_workers=4, sinks=[heard],
                          run_dir=tmp_path)

    async def main() -> None:
        run = asyncio.ensure_future(scheduler.run())
        await asyncio.sleep(0)  # the run's first batch
        run.cancel()  # what asyncio.run does on Ctrl-C
        try:
            await run
        except asyncio.CancelledError:
            return
        raise AssertionError("the run was not cancelled")

    run_virtual(main())
    assert 0 < len(heard.started) < TASKS
    assert sorted(heard.finished) == sorted(set(heard.finished))
    assert set(heard.started) <= set(heard.finished)  # every started call has its result
    assert len(heard.finished) == TASKS  # the rest end cancelled, none silently dropped
