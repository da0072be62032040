"""Pins the public surface: a change here is a change to the API users build on."""

from __future__ import annotations

import phalanx

PUBLIC = {
    "CancelReason", "ConfigError", "CostModel", "CriticalPathFirst", "CycleError", "DuplicateTaskError",
    "DurationError", "ErrorInfo", "Event", "ExecutionPlan", "Graph", "OrderingPolicy", "PhalanxError",
    "ResourceError", "RetryPolicy", "RunCancelling", "RunFinished", "RunReport", "RunStarted", "RunSummary",
    "SelectionError", "Sink", "Status", "SubmissionOrder", "Task", "TaskFinished", "TaskResult", "TaskRetrying",
    "TaskStarted", "UnknownDependencyError", "__version__", "get_execution_plan", "run",
    "run_async", "Executor", "RemoteTraceback", "TaskError", "TaskTimedOut", "WorkerChoice", "WorkerCrashed",
    "map", "optimal_workers", "starmap", "Limits",
    "amap", "Rate", "RateLimit", "RetryAfter", "HTTPStatusError", "raise_for_status", "RateLimitPaused",
    "ConcurrencyChanged", "resource_instances", "WorkersChanged",
}


def test_public_names() -> None:
    assert set(phalanx.__all__) == PUBLIC
    for name in PUBLIC:
        assert hasattr(phalanx, name), name


def test_errors_are_also_builtins() -> None:
    assert issubclass(phalanx.CycleError, ValueError)
    assert issubclass(phalanx.ConfigError, ValueError)
    assert issubclass(phalanx.PhalanxError, Exception)


def test_status_values_are_the_documented_words() -> None:
    assert [s.value for s in phalanx.Status] == [
        "succeeded", "failed", "timed_out", "crashed", "skipped", "cancelled",
    ]
