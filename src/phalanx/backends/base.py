"""The backend interface: turn one attempt into one outcome, and nothing else.

A backend never decides policy (retries, timeouts, fail-fast are the scheduler's); the
scheduler never touches a pid. The scheduler runs each attempt as ``await backend.run(a)``
inside an asyncio task, and stops it by cancelling that task: a backend must then really
stop the work (kill the process group, replace the worker) before letting the
cancellation through. A second cancellation while it is stopping means "kill at once".
"""

from __future__ import annotations

from collections.abc import Awaitable, Mapping
from contextvars import ContextVar, Token
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Protocol

from .._records import fast_init
from ..model import Task
from ..resources import NO_INSTANCES, Instances
from ..results import ErrorInfo, OutputCut

if TYPE_CHECKING:
    from ..http import Failure

_EMPTY: Mapping[str, Any] = MappingProxyType({})


@fast_init
@dataclass(frozen=True, slots=True)
class Attempt:
    """One try at running a task.

    Attributes:
        task: the task.
        number: 1 for the first attempt, 2 for the first retry, ...
        worker: the slot number (1-based) it holds, exported as ``PHALANX_WORKER``.
        run_id: the run's id.
        run_dir: a directory private to this run, for output and result files.
        instances: the named units of resources it holds (``{"gpu": ("1",)}``), its own
            until the attempt ends; exported to commands as ``PHALANX_<NAME>``.
    """

    task: Task
    number: int
    worker: int
    run_id: str
    run_dir: Path
    instances: Instances = field(default_factory=lambda: NO_INSTANCES)


# The instances of the attempt whose callable runs in this context: set by the backends
# that run callables in this process (a thread's own context, an asyncio task's copy).
_HELD_INSTANCES: ContextVar[Instances] = ContextVar("phalanx_instances", default=NO_INSTANCES)


def hold_instances(attempt: Attempt) -> Token[Instances]:
    """Make the attempt's instances what `resource_instances` answers in this context.

    Set even when it holds none: an attempt's asyncio task may be started from another's
    (the scheduler dispatches as an attempt ends) and so begin with a copy of its context.
    """
    return _HELD_INSTANCES.set(attempt.instances)


def let_go_instances(token: Token[Instances]) -> None:
    """Undo a `hold_instances` made for a call right here (`ImmediateBackend.run_now`)."""
    _HELD_INSTANCES.reset(token)


def resource_instances() -> Instances:
    """The named resource units the calling task holds, such as ``{"gpu": ("0",)}``.

    For a callable run by `phalanx.run` (threads, inline, ``async def``), the Python
    counterpart of the ``PHALANX_GPU`` a command gets: with ``resources={"gpu": ["0", "1"]}``
    declared, a task asking for ``{"gpu": 1}`` reads its own unit here. Empty outside a
    task, or for a task that holds none.
    """
    return _HELD_INSTANCES.get()


@fast_init
@dataclass(frozen=True, slots=True)
class Outcome:
    """What one attempt did.

    Attributes:
        ok: the attempt succeeded.
        crashed: the process running it died of something phalanx did not do.
        exit_code: a command's exit status.
        signal: the signal that ended the process, if one did.
        reason: why it failed, in words; None when ok.
        error: the exception a callable raised.
        value: what a callable returned.
        data: structured data the task reported.
        pid: the process that ran it, if any.
        retry_action: what a retry should run instead of the task's action, when only part
            of the work failed (a batch's failed items); the scheduler decides whether to.
        failure: what kind of failure it was, when it is an HTTP or throttling matter (a
            429 with its Retry-After, a timeout, `RetryAfter`): the scheduler's retry policy
            and rate limits act on it.
        output_cut: how much output a command printed past its ``max_output``, per stream.
        worker_address: the cluster worker that ran it (``tcp://10.0.0.5:40123``), for the
            cluster backends; None when it ran here.
    """

    ok: bool
    crashed: bool = False
    exit_code: int | None = None
    signal: int | None = None
    reason: str | None = None
    error: ErrorInfo | None = None
    value: Any = None
    data: Mapping[str, Any] = field(default_factory=lambda: _EMPTY)
    pid: int | None = None
    stdout_tail: str = ""
    stderr_tail: str = ""
    stdout_path: str | None = None
    stderr_path: str | None = None
    exception: BaseException | None = field(default=None, repr=False, compare=False)
    retry_action: Any = field(default=None, repr=False, compare=False)
    failure: Failure | None = None
    output_cut: OutputCut | None = None
    worker_address: str | None = None


class Backend(Protocol):
    """Runs attempts. One instance serves a whole run; ``aclose`` ends it."""

    async def run(self, attempt: Attempt) -> Outcome:
        """Run the attempt to its end and describe it. Cancellation must stop the work."""
        ...

    def stopped_outcome(self, attempt: Attempt) -> Outcome | None:
        """What a stopped (cancelled or timed-out) attempt had done so far, such as the output
        a command printed before it was killed; None if the backend keeps nothing."""
        ...

    async def aclose(self) -> None:
        """Release everything the backend holds (workers, files); nothing may keep running."""
        ...


class ImmediateBackend(Backend, Protocol):
    """A backend that may run an attempt to its end the moment it starts (inline callables).

    The scheduler calls `run_now` before `run` when a backend has it: an `Outcome` means
    the attempt is over (no asyncio task was made for it); an awaitable is the rest of an
    attempt that must wait, awaited as `run`'s coroutine would be (cancellation included);
    None means this attempt is not for running now: `run` runs it as usual.
    """

    def run_now(self, attempt: Attempt) -> Outcome | Awaitable[Outcome] | None: ...
