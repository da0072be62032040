"""The thread backend: run synchronous callables in threads.

Each attempt gets its own daemon thread, so the slot limit (``max_workers``) is the only
concurrency limit and a stuck call never holds back the others. Python cannot stop a
running thread: when an attempt times out or the run is cancelled, the task ends
``timed_out``/``cancelled`` at once and its thread is abandoned — it runs on in the
background until the callable returns, and its result is dropped. Use the process
backend for work that must really be stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading

from .base import Attempt, Outcome, hold_instances
from .calls import call


class ThreadBackend:
    """Runs each attempt's callable in a fresh daemon thread."""

    def __init__(self) -> None:
        self._abandoned = 0

    async def run(self, attempt: Attempt) -> Outcome:
        task = attempt.task
        if not callable(task.action):
            raise TypeError(f"the thread backend runs callables, not commands (task {task.id!r})")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Outcome] = loop.create_future()

        def deliver(outcome: Outcome) -> None:
            if not future.done():  # an abandoned attempt's late result is dropped
                future.set_result(outcome)

        def work() -> None:
            hold_instances(attempt)  # the thread's own context: `resource_instances()` answers them
            outcome = call(task)
            # The loop may have closed while we ran: then nobody is waiting for this.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(deliver, outcome)

        thread = threading.Thread(target=work, name=f"phalanx:{task.id}#{attempt.number}", daemon=True)
        thread.start()
        try:
            return await future
        except asyncio.CancelledError:
            self._abandoned += 1
            raise

    @property
    def abandoned(self) -> int:
        """How many attempts were given up on while their thread still ran."""
        return self._abandoned

    def stopped_outcome(self, attempt: Attempt) -> Outcome | None:
        return None  # a stopped call leaves nothing behind

    async def aclose(self) -> None:
        return None
