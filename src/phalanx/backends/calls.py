"""Turning a Python call into an `Outcome`: shared by every backend that runs callables."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..http import classify
from ..model import Task
from ..results import ErrorInfo
from .base import Outcome


def succeeded(value: Any) -> Outcome:
    """A returned value; a returned mapping with string keys is also the task's data."""
    if value is None:
        return _RETURNED_NONE  # the common case, shared: an Outcome is frozen
    data: Mapping[str, Any] = {}
    if isinstance(value, Mapping) and all(isinstance(key, str) for key in value):
        data = dict(value)
    return Outcome(ok=True, value=value, data=data)


def raised(error: BaseException) -> Outcome:
    """An exception the callable raised, with its traceback."""
    try:
        info = ErrorInfo.from_exception(error)
    except Exception:  # an exception whose str() itself raises must still end its task
        info = ErrorInfo(type=type(error).__qualname__, message="<the exception could not be formatted>")
    return Outcome(ok=False, reason=str(info), error=info, exception=error, failure=classify(error))


def call(task: Task) -> Outcome:
    """Call a synchronous callable task and describe what happened (never raises for it)."""
    assert callable(task.action)
    try:
        return succeeded(task.action(*task.args, **task.kwargs))
    except BaseException as error:  # SystemExit in a task must fail the task, not its thread
        return raised(error)


_RETURNED_NONE = Outcome(ok=True)
