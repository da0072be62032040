"""phalanx: one parallel executor for shell commands, task DAGs, Python callables and coroutines.

The public API is re-exported here; everything else is internal and may change.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from .asyncmap import amap as amap
    from .backends.base import resource_instances as resource_instances
    from .errors import (
        ConfigError as ConfigError,
        CycleError as CycleError,
        DuplicateTaskError as DuplicateTaskError,
        DurationError as DurationError,
        PhalanxError as PhalanxError,
        RemoteTraceback as RemoteTraceback,
        ResourceError as ResourceError,
        SelectionError as SelectionError,
        TaskError as TaskError,
        TaskTimedOut as TaskTimedOut,
        UnknownDependencyError as UnknownDependencyError,
        WorkerCrashed as WorkerCrashed,
    )
    from .events import (
        ConcurrencyChanged as ConcurrencyChanged,
        Event as Event,
        RateLimitPaused as RateLimitPaused,
        RunCancelling as RunCancelling,
        RunFinished as RunFinished,
        RunStarted as RunStarted,
        Sink as Sink,
        TaskFinished as TaskFinished,
        TaskRetrying as TaskRetrying,
        TaskStarted as TaskStarted,
        WorkersChanged as WorkersChanged,
    )
    from .executor import Executor as Executor
    from .http import (
        HTTPStatusError as HTTPStatusError,
        RetryAfter as RetryAfter,
        raise_for_status as raise_for_status,
    )
    from .limits import Limits as Limits
    from .mapper import map as map, starmap as starmap
    from .model import Graph as Graph, RetryPolicy as RetryPolicy, Task as Task
    from .ordering import (
        CostModel as CostModel,
        CriticalPathFirst as CriticalPathFirst,
        OrderingPolicy as OrderingPolicy,
        SubmissionOrder as SubmissionOrder,
    )
    from .plan import ExecutionPlan as ExecutionPlan, get_execution_plan as get_execution_plan
    from .ratelimit import Rate as Rate, RateLimit as RateLimit
    from .results import (
        CancelReason as CancelReason,
        ErrorInfo as ErrorInfo,
        RunReport as RunReport,
        RunSummary as RunSummary,
        Status as Status,
        TaskResult as TaskResult,
    )
    from .runner import run as run, run_async as run_async
    from .workers import WorkerChoice as WorkerChoice, optimal_workers as optimal_workers

# Submodules are imported on first use, so `import phalanx` (and the `phalanx` command's
# start-up) pays only for what is used: `phalanx map` never imports rich or click.
_LAZY = {
    "amap": ".asyncmap",
    "ConcurrencyChanged": ".events",
    "WorkersChanged": ".events",
    "HTTPStatusError": ".http",
    "Rate": ".ratelimit",
    "RateLimit": ".ratelimit",
    "RateLimitPaused": ".events",
    "RetryAfter": ".http",
    "raise_for_status": ".http",
    "resource_instances": ".backends.base",
    "Executor": ".executor",
    "RemoteTraceback": ".errors",
    "TaskError": ".errors",
    "TaskTimedOut": ".errors",
    "WorkerChoice": ".workers",
    "WorkerCrashed": ".errors",
    "map": ".mapper",
    "starmap": ".mapper",
    "optimal_workers": ".workers",
    "CancelReason": ".results",
    "ConfigError": ".errors",
    "CostModel": ".ordering",
    "CriticalPathFirst": ".ordering",
    "CycleError": ".errors",
    "DuplicateTaskError": ".errors",
    "DurationError": ".errors",
    "ErrorInfo": ".results",
    "Event": ".events",
    "ExecutionPlan": ".plan",
    "Graph": ".model",
    "Limits": ".limits",
    "OrderingPolicy": ".ordering",
    "PhalanxError": ".errors",
    "ResourceError": ".errors",
    "RetryPolicy": ".model",
    "RunCancelling": ".events",
    "RunFinished": ".events",
    "RunReport": ".results",
    "RunStarted": ".events",
    "RunSummary": ".results",
    "SelectionError": ".errors",
    "Sink": ".events",
    "Status": ".results",
    "SubmissionOrder": ".ordering",
    "Task": ".model",
    "TaskFinished": ".events",
    "TaskResult": ".results",
    "TaskRetrying": ".events",
    "TaskStarted": ".events",
    "UnknownDependencyError": ".errors",
    "get_execution_plan": ".plan",
    "run": ".runner",
    "run_async": ".runner",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'phalanx' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


__all__ = [
    "CancelReason",
    "ConcurrencyChanged",
    "ConfigError",
    "CostModel",
    "CriticalPathFirst",
    "CycleError",
    "DuplicateTaskError",
    "DurationError",
    "ErrorInfo",
    "Event",
    "ExecutionPlan",
    "Executor",
    "Graph",
    "HTTPStatusError",
    "Limits",
    "OrderingPolicy",
    "PhalanxError",
    "Rate",
    "RateLimit",
    "RateLimitPaused",
    "RemoteTraceback",
    "ResourceError",
    "RetryAfter",
    "RetryPolicy",
    "RunCancelling",
    "RunFinished",
    "RunReport",
    "RunStarted",
    "RunSummary",
    "SelectionError",
    "Sink",
    "Status",
    "SubmissionOrder",
    "Task",
    "TaskError",
    "TaskFinished",
    "TaskResult",
    "TaskRetrying",
    "TaskStarted",
    "TaskTimedOut",
    "UnknownDependencyError",
    "WorkerChoice",
    "WorkerCrashed",
    "WorkersChanged",
    "__version__",
    "amap",
    "get_execution_plan",
    "map",
    "optimal_workers",
    "raise_for_status",
    "resource_instances",
    "run",
    "run_async",
    "starmap",
]
