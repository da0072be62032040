"""Turning a Python call into an `Outcome`: shared by every backend that runs callables."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..model import Task
from ..results import ErrorInfo
from .base import Outcome


def succeeded(value: Any) -> Outcome:
    """A returned value; a returned mapping with string keys is also the task's data."""
    data: Mapping[str, Any] = {}
    if isinstance(value, Mapping) and all(isinstance(key, str) for key in value):
        data = dict(value)
    return Outcome(ok=True, value=value, data=data)


def raised(error: BaseException) -> Outcome:
    """An exception the callable raised, with its traceback."""
    info = ErrorInfo.from_exception(error)
    return Outcome(ok=False, reason=str(info), error=info, exception=error)


def call(task: Task) -> Outcome:
    """Call a synchronous callable task and describe what happened (never raises for it)."""
    assert callable(task.action)
    try:
        return succeeded(task.action(*task.args, **task.kwargs))
    except Exception as error:
        return raised(error)
