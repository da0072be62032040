"""The inline backend: run callables on the scheduler's own loop.

Coroutine functions are awaited there (this is the asyncio backend, and with the fake
clock it makes scheduler tests exact: ``async def work(): await asyncio.sleep(5)`` takes
exactly five virtual seconds). A plain callable is called directly and blocks the loop
while it runs, so use it only for quick work; cancellation cannot stop it midway.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable
from inspect import CO_COROUTINE
from types import FunctionType
from typing import Any

from .base import Attempt, Outcome, hold_instances, let_go_instances, resource_instances
from .calls import raised, succeeded


class InlineBackend:
    """Runs callables (sync or async) on the event loop itself.

    It is an `ImmediateBackend`: a plain function is called the moment its attempt starts
    (`run_now`), with no asyncio task of its own (it would block the loop in one anyway);
    an ``async def`` gets its task, as every other backend's attempt does.
    """

    def run_now(self, attempt: Attempt) -> Outcome | Awaitable[Outcome] | None:
        task = attempt.task
        action = task.action
        if not callable(action) or _is_coroutine_function(action):
            return None  # `run`, in a task of its own
        if not attempt.instances and not resource_instances():
            try:  # nothing to hold, in a context that holds nothing: the common case
                value = action(*task.args, **task.kwargs)
            except Exception as error:
                return raised(error)
        else:
            token = hold_instances(attempt)
            try:
                value = action(*task.args, **task.kwargs)
            except Exception as error:
                return raised(error)
            finally:
                let_go_instances(token)
        if value is not None and inspect.isawaitable(value):
            return _awaited(value, attempt)
        return succeeded(value)

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


async def _awaited(value: Awaitable[Any], attempt: Attempt) -> Outcome:
    """The rest of a plain function's attempt that returned an awaitable."""
    hold_instances(attempt)
    try:
        result = await value
    except Exception as error:
        return raised(error)
    return succeeded(result)


def _is_coroutine_function(action: Any) -> bool:
    """`inspect.iscoroutinefunction` (or an object whose ``__call__`` is one), read straight
    from the code's flags for a plain function with no attributes set (the common case, and
    no marker such as `inspect.markcoroutinefunction` can be on it)."""
    if type(action) is FunctionType and not action.__dict__:
        return bool(action.__code__.co_flags & CO_COROUTINE)
    return inspect.iscoroutinefunction(action) or inspect.iscoroutinefunction(type(action).__call__)


__all__ = ["InlineBackend"]
