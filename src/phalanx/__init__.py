"""phalanx: one parallel executor for shell commands, task DAGs, Python callables and coroutines.

The public API is re-exported here; everything else is internal and may change.
"""

from __future__ import annotations

from .errors import (
    ConfigError as ConfigError,
)
from .errors import (
    CycleError as CycleError,
)
from .errors import (
    DuplicateTaskError as DuplicateTaskError,
)
from .errors import (
    DurationError as DurationError,
)
from .errors import (
    PhalanxError as PhalanxError,
)
from .errors import (
    ResourceError as ResourceError,
)
from .errors import (
    SelectionError as SelectionError,
)
from .errors import (
    UnknownDependencyError as UnknownDependencyError,
)
from .events import (
    Event as Event,
)
from .events import (
    RunCancelling as RunCancelling,
)
from .events import (
    RunFinished as RunFinished,
)
from .events import (
    RunStarted as RunStarted,
)
from .events import (
    Sink as Sink,
)
from .events import (
    TaskFinished as TaskFinished,
)
from .events import (
    TaskRetrying as TaskRetrying,
)
from .events import (
    TaskStarted as TaskStarted,
)
from .model import Graph as Graph
from .model import RetryPolicy as RetryPolicy
from .model import Task as Task
from .ordering import (
    CostModel as CostModel,
)
from .ordering import (
    CriticalPathFirst as CriticalPathFirst,
)
from .ordering import (
    OrderingPolicy as OrderingPolicy,
)
from .ordering import (
    SubmissionOrder as SubmissionOrder,
)
from .plan import ExecutionPlan as ExecutionPlan
from .plan import get_execution_plan as get_execution_plan
from .results import (
    CancelReason as CancelReason,
)
from .results import (
    ErrorInfo as ErrorInfo,
)
from .results import (
    RunReport as RunReport,
)
from .results import (
    RunSummary as RunSummary,
)
from .results import (
    Status as Status,
)
from .results import (
    TaskResult as TaskResult,
)
from .runner import default_workers as default_workers
from .runner import run as run
from .runner import run_async as run_async

__version__ = "0.1.0"

__all__ = [
    "CancelReason",
    "ConfigError",
    "CostModel",
    "CriticalPathFirst",
    "CycleError",
    "DuplicateTaskError",
    "DurationError",
    "ErrorInfo",
    "Event",
    "ExecutionPlan",
    "Graph",
    "OrderingPolicy",
    "PhalanxError",
    "ResourceError",
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
    "TaskFinished",
    "TaskResult",
    "TaskRetrying",
    "TaskStarted",
    "UnknownDependencyError",
    "__version__",
    "default_workers",
    "get_execution_plan",
    "run",
    "run_async",
]
