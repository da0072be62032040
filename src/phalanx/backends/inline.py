"""The inline backend: run callables on the scheduler's own loop.

Coroutine functions are awaited there (this is the asyncio backend, and with the fake
clock it makes scheduler tests exact: ``async def work(): await asyncio.sleep(5)`` takes
exactly five virtual seconds). A plain callable is called directly and blocks the loop
while it runs, so use it only for quick work; cancellation cannot stop it midway.
"""

from __future__ import annotations

import inspect

from .base import Attempt, Outcome, hold_instances
from .calls import raised, succeeded


class InlineBackend:
    """Runs callables (sync or async) on the event loop itself."""

    async def run(self, attempt: Attempt) -> Outcome:
        task = attempt.task
        if not callable(task.action):
            raise TypeError(f"the inline backend runs callables, not commands (task {task.id!r})")
        hold_instances(attempt)  # each attempt runs in its own asyncio task, with its own context
        try:
            value = task.action(*task.args, **task.kwargs)
            if inspect.isawaitable(value):
                value = await value
        except Exception as error:
            return raised(error)
        return succeeded(value)

    def stopped_outcome(self, attempt: Attempt) -> Outcome | None:
        return None  # a stopped call leaves nothing behind

    async def aclose(self) -> None:
        return None


__all__ = ["InlineBackend"]
