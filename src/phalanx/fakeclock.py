"""A fake clock: an asyncio event loop whose time is virtual and jumps to the next timer.

The scheduler reads time only through its loop (``loop.time()``, ``call_at``,
``asyncio.sleep``), so running it on `VirtualTimeLoop` makes every schedule exact and
instant: when nothing is ready to run, the loop's time jumps straight to the next timer
instead of waiting. Five simulated seconds take microseconds, and a task that sleeps
``1.0`` after another that slept ``1.0`` ends at exactly ``2.0``.

Use it only with work that waits on the loop's timers (the inline backend, coroutines);
real threads and processes run in real time and do not mix with a virtual clock.
"""

from __future__ import annotations

import asyncio
import selectors
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class _JumpingSelector(selectors.DefaultSelector):
    """Polls real I/O without blocking; advances the loop's virtual time instead of sleeping."""

    def __init__(self, loop: VirtualTimeLoop) -> None:
        super().__init__()
        self._loop = loop

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        if timeout is None:
            # Nothing is scheduled: only real I/O (a thread's call_soon_threadsafe) can wake us.
            return super().select(None)
        ready = super().select(0)
        if not ready and timeout > 0:
            self._loop._advance(timeout)
        return ready


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """An event loop on a virtual clock that starts at 0.0."""

    def __init__(self) -> None:
        super().__init__(_JumpingSelector(self))
        self._virtual_now = 0.0

    def time(self) -> float:
        return self._virtual_now

    def _advance(self, timeout: float) -> None:
        # Jump exactly onto the next timer's deadline (not now + timeout, which can be
        # off by a rounding error and leave the timer a hair in the future).
        scheduled = self._scheduled  # type: ignore[attr-defined]
        if scheduled:
            when: float = scheduled[0].when()
            if when - self._virtual_now <= timeout:
                self._virtual_now = max(self._virtual_now, when)
                return
        self._virtual_now += timeout


def run_virtual(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to completion on a fresh `VirtualTimeLoop`."""
    with asyncio.Runner(loop_factory=VirtualTimeLoop) as runner:
        return runner.run(coro)
