"""The model: `Task`, `RetryPolicy` and `Graph`. Plain data; nothing here runs anything.

A `Task` is immutable and validated as it is made (types, durations, resource amounts).
A `Graph` collects tasks with `add()` (duplicate ids are refused there) and is validated
once, when a run starts (`validate()`: unknown dependencies with a did-you-mean, cycles
named as a path). From then on it is frozen: the scheduler reads it, nobody writes it.
"""

from __future__ import annotations

import inspect
import math
import random
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

from ._records import fast_init
from .durations import parse_duration
from .errors import (
    ConfigError,
    CycleError,
    DuplicateTaskError,
    PhalanxError,
    UnknownDependencyError,
)
from .limits import NO_LIMITS, Limits

#: What a task runs: a shell string (``sh -c``), an argv list (run directly), or a callable.
Action = str | Sequence[str] | Callable[..., Any]

#: Named priorities; any integer works, higher runs first.
PRIORITY_NAMES: Mapping[str, int] = MappingProxyType({"high": 10, "normal": 0, "low": -10})

#: The resource every task takes one of unless it asks for more; its capacity is ``-j``.
SLOTS = "slots"

_EMPTY: Mapping[str, Any] = MappingProxyType({})

#: What a task that asks for nothing holds: one slot.
ONE_SLOT: Mapping[str, float] = MappingProxyType({SLOTS: 1.0})


def parse_priority(value: object, *, what: str = "priority") -> int:
    """An integer priority from an int or one of ``high``, ``normal``, ``low``."""
    if isinstance(value, bool):
        raise ConfigError(f"{what}: expected an integer or high/normal/low, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.lower() in PRIORITY_NAMES:
        return PRIORITY_NAMES[value.lower()]
    raise ConfigError(f"{what}: expected an integer or high/normal/low, got {value!r}")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often and how soon a failed attempt is tried again.

    Attributes:
        count: attempts after the first (``retries = 3`` means up to 4 attempts in all).
        backoff: ``"constant"`` waits ``initial`` each time; ``"exponential"`` doubles it.
        initial: the first delay, in seconds.
        max: the longest delay, in seconds.
        jitter: a fraction in [0, 1]; each delay is scaled by a random factor in
            ``[1 - jitter, 1]`` so that retries of many tasks do not line up.
        on_exit_codes: retry only failures with one of these exit codes (None: any failure).
        on_exceptions: retry only failures that raised one of these exception types
            (None: any exception). Matched by class, or by name when the exception came
            from another process and only its description did.
        on_statuses: retry a failure that was an HTTP response only if its status is one
            of these (None: 408, 429 and 5xx; a 404 is not worth repeating).
        max_retry_after: the longest ``Retry-After`` honoured, in seconds; a server asking
            for more fails the task, saying so, rather than stalling the run.

    ``jitter = 1`` is "full jitter": each delay is uniform in ``[0, backoff]``, the spread
    that best keeps many clients that failed together from retrying together.
    """

    count: int = 0
    backoff: Literal["constant", "exponential"] = "exponential"
    initial: float = 0.0
    max: float = 60.0
    jitter: float = 0.0
    on_exit_codes: frozenset[int] | None = None
    on_exceptions: tuple[type[BaseException], ...] | None = None
    on_statuses: frozenset[int] | None = None
    max_retry_after: float = 300.0

    def __post_init__(self) -> None:
        if isinstance(self.count, bool) or not isinstance(self.count, int) or self.count < 0:
            raise ConfigError(f"retries: count must be a non-negative integer, got {self.count!r}")
        if self.backoff not in ("constant", "exponential"):
            raise ConfigError(
                f"retries: backoff must be 'constant' or 'exponential', got {self.backoff!r}"
            )
        object.__setattr__(self, "initial", parse_duration(self.initial, what="retries.initial"))
        object.__setattr__(self, "max", parse_duration(self.max, what="retries.max"))
        jitter = self.jitter
        if jitter is True:
            jitter = 1.0
        if isinstance(jitter, bool) or not isinstance(jitter, int | float) or not 0 <= jitter <= 1:
            raise ConfigError(f"retries: jitter must be true/false or a number in [0, 1], got {jitter!r}")
        object.__setattr__(self, "jitter", float(jitter))
        if self.on_exit_codes is not None:
            codes = frozenset(self.on_exit_codes)
            if not all(isinstance(c, int) and not isinstance(c, bool) for c in codes):
                raise ConfigError(f"retries: on_exit_codes must be integers, got {sorted(codes, key=str)!r}")
            object.__setattr__(self, "on_exit_codes", codes)
        if self.on_exceptions is not None:
            kinds = (self.on_exceptions,) if isinstance(self.on_exceptions, type) else tuple(self.on_exceptions)
            if not all(isinstance(kind, type) and issubclass(kind, BaseException) for kind in kinds):
                raise ConfigError(f"retries: on_exceptions must be exception classes, got {self.on_exceptions!r}")
            object.__setattr__(self, "on_exceptions", kinds)
        if self.on_statuses is not None:
            statuses = frozenset(self.on_statuses)
            if not all(isinstance(s, int) and not isinstance(s, bool) and 100 <= s <= 599 for s in statuses):
                raise ConfigError(f"retries: on_statuses must be HTTP statuses, got {sorted(statuses, key=str)!r}")
            object.__setattr__(self, "on_statuses", statuses)
        object.__setattr__(
            self, "max_retry_after", parse_duration(self.max_retry_after, what="retries.max_retry_after")
        )

    def delay(self, retry_number: int, rng: random.Random | None = None) -> float:
        """Seconds to wait before retry number ``retry_number`` (1 for the first retry)."""
        base = self.initial if self.backoff == "constant" else self.initial * 2 ** (retry_number - 1)
        base = min(base, self.max)
        if self.jitter and base > 0:
            base *= 1 - self.jitter * (rng or random).random()
        return base

    def allows(self, exit_code: int | None) -> bool:
        """Whether a failure with this exit code (None for non-process failures) is retried."""
        return self.on_exit_codes is None or (exit_code is not None and exit_code in self.on_exit_codes)

    def allows_status(self, status: int) -> bool:
        """Whether a failure that was an HTTP response with this status is retried."""
        if self.on_statuses is not None:
            return status in self.on_statuses
        return status in (408, 429) or 500 <= status <= 599

    def allows_exception(self, error: BaseException | None, type_name: str | None) -> bool:
        """Whether a failure that raised ``error`` (or, from another process, an exception
        named ``type_name``) is retried."""
        if self.on_exceptions is None:
            return True
        if error is not None:
            return isinstance(error, self.on_exceptions)
        return type_name is not None and any(
            type_name in (kind.__qualname__, kind.__name__) for kind in self.on_exceptions
        )


NO_RETRY = RetryPolicy()


@fast_init
@dataclass(frozen=True, slots=True)
class Task:
    """One unit of work and everything the scheduler needs to know about it.

    Attributes:
        id: unique within its graph.
        action: a shell string, an argv list, or a callable (sync or ``async def``).
        args, kwargs: passed to a callable action.
        deps: ids of the tasks that must succeed before this one starts.
        priority: higher starts first among ready tasks (``high`` = 10, ``low`` = -10).
        resources: named amounts held while running, e.g. ``{"db": 1, "slots": 4}``;
            every task holds one slot unless it asks for a different number.
        timeout: seconds per attempt; None or 0 for no timeout (0, as in GNU parallel, says
            so explicitly: a run's default timeout does not replace it, as it replaces None).
        retry: the retry policy.
        env: variables merged over the parent environment (commands only).
        cwd: working directory (commands only); None for the current one.
        tags: free-form labels, selectable with ``tag:NAME``.
        cost: the estimated duration in seconds, used for critical-path ordering.
        group: the name this task was expanded from (``for_each``), if any.
        limiter: the names of the run's rate limits this task's attempts are paced by.
        limiter_key: which key of those limits it counts against (a provider, a model);
            tasks on different keys are limited independently. "" for the one shared key.
        tokens: what an attempt costs a weighted limit (tokens per minute); 1 by default.
        limits: what the command may use (memory, cpus, cpu_time, ...); commands only.
    """

    id: str
    action: Action
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = field(default_factory=lambda: _EMPTY)
    deps: tuple[str, ...] = ()
    priority: int = 0
    resources: Mapping[str, float] = field(default_factory=lambda: _EMPTY)
    timeout: float | None = None
    retry: RetryPolicy = NO_RETRY
    env: Mapping[str, str] = field(default_factory=lambda: _EMPTY)
    cwd: str | None = None
    tags: frozenset[str] = frozenset()
    cost: float | None = None
    group: str | None = None
    limiter: tuple[str, ...] = ()
    limiter_key: str = ""
    tokens: float = 1.0
    limits: Limits = NO_LIMITS

    def __post_init__(self) -> None:
        # Every check has a fast path for the value a field has by default: `phalanx.amap`
        # and `Executor.submit` make a task per item, so this runs hundreds of thousands of times.
        if type(self.id) is not str or not self.id:
            raise ConfigError(f"task id must be a non-empty string, got {self.id!r}")
        _set = object.__setattr__
        if not callable(self.action):
            _set(self, "action", _check_action(self.id, self.action))
        if type(self.args) is not tuple:
            _set(self, "args", tuple(self.args))
        if self.kwargs is not _EMPTY:
            _set(self, "kwargs", MappingProxyType(dict(self.kwargs)))
        if self.deps != ():
            self._check_deps()
        if type(self.priority) is not int:
            _set(self, "priority", _located(self.id, parse_priority, self.priority, what="priority"))
        if self.resources is not _EMPTY:
            _set(self, "resources", MappingProxyType(_check_resources(self.id, self.resources)))
        if self.timeout is not None and type(self.timeout) is not float:
            _set(self, "timeout", _located(self.id, parse_duration, self.timeout, what="timeout"))
        elif self.timeout is not None and not 0 <= self.timeout < math.inf:
            _located(self.id, parse_duration, self.timeout, what="timeout")  # raises, naming the task
        if type(self.retry) is not RetryPolicy:
            raise ConfigError(f"task {self.id!r}: retry must be a RetryPolicy", task_id=self.id)
        if self.env is not _EMPTY:
            self._check_env()
        if self.cwd is not None and not isinstance(self.cwd, str):
            raise ConfigError(f"task {self.id!r}: cwd must be a string path", task_id=self.id)
        if type(self.tags) is not frozenset:
            if isinstance(self.tags, str):
                raise ConfigError(f"task {self.id!r}: tags must be a list of strings", task_id=self.id)
            _set(self, "tags", frozenset(self.tags))
        if self.cost is not None:
            _set(self, "cost", _located(self.id, parse_duration, self.cost, what="cost"))
        if self.limiter != () and (type(self.limiter) is not tuple or not all(
                type(name) is str and name for name in self.limiter)):
            self._check_limits()
        if type(self.limiter_key) is not str:
            raise ConfigError(f"task {self.id!r}: limiter_key must be a string, got {self.limiter_key!r}",
                              task_id=self.id)
        tokens = self.tokens
        if type(tokens) is not float or not 0 < tokens < math.inf:
            if isinstance(tokens, bool) or not isinstance(tokens, int | float) or not 0 < tokens < math.inf:
                raise ConfigError(f"task {self.id!r}: tokens must be a positive number, got {tokens!r}",
                                  task_id=self.id)
            _set(self, "tokens", float(tokens))
        if self.limits is not NO_LIMITS:
            self._check_limits_of_command()

    def _check_deps(self) -> None:
        if isinstance(self.deps, str):
            raise ConfigError(f"task {self.id!r}: deps must be a list of task ids, not a string", task_id=self.id)
        deps = tuple(self.deps)
        for dep in deps:
            if not isinstance(dep, str):
                raise ConfigError(f"task {self.id!r}: dependency {dep!r} is not a task id", task_id=self.id)
        object.__setattr__(self, "deps", tuple(dict.fromkeys(deps)))

    def _check_env(self) -> None:
        env = dict(self.env)
        for key, value in env.items():
            if not isinstance(key, str) or not isinstance(value, str):
                raise ConfigError(
                    f"task {self.id!r}: env {key!r} must map to a string, got {value!r}", task_id=self.id
                )
        object.__setattr__(self, "env", MappingProxyType(env))

    def _check_limits_of_command(self) -> None:
        if type(self.limits) is not Limits:
            raise ConfigError(f"task {self.id!r}: limits must be a Limits, got {self.limits!r}", task_id=self.id)
        if self.limits == NO_LIMITS:
            object.__setattr__(self, "limits", NO_LIMITS)  # the command backend's fast path knows this one
        elif callable(self.action):
            raise ConfigError(f"task {self.id!r}: limits apply to commands only (a callable shares its worker "
                              "process with other tasks)", task_id=self.id)

    def _check_limits(self) -> None:
        limiter = (self.limiter,) if isinstance(self.limiter, str) else tuple(self.limiter or ())
        if not all(isinstance(name, str) and name for name in limiter):
            raise ConfigError(f"task {self.id!r}: limiter must name rate limits, got {self.limiter!r}",
                              task_id=self.id)
        object.__setattr__(self, "limiter", limiter)

    @property
    def requests(self) -> Mapping[str, float]:
        """The resources held while running, with the default one slot filled in."""
        if self.resources is _EMPTY:
            return ONE_SLOT  # most tasks: one shared, read-only mapping
        if SLOTS in self.resources:
            return self.resources
        return {SLOTS: 1.0, **self.resources}

    @property
    def is_command(self) -> bool:
        """Whether the action is a command (a string or an argv list) rather than a callable."""
        return not callable(self.action)

    def describe(self) -> str:
        """The action as a user would recognise it (command line or callable's name)."""
        if isinstance(self.action, str):
            return self.action
        if not callable(self.action):
            import shlex

            return shlex.join(self.action)
        name = getattr(self.action, "__qualname__", None) or repr(self.action)
        return f"{name}()"


def _located(task_id: str, parse: Callable[..., Any], value: object, *, what: str) -> Any:
    try:
        return parse(value, what=what)
    except PhalanxError as error:
        error.task_id = task_id
        error.message = f"task {task_id!r}: {error.message}"
        raise


def _check_action(task_id: str, action: object) -> Action:
    if isinstance(action, str):
        if not action.strip():
            raise ConfigError(f"task {task_id!r}: the command is empty", task_id=task_id)
        return action
    if callable(action):
        return action
    if isinstance(action, Sequence) and not isinstance(action, bytes):
        argv = tuple(action)
        if not argv or not all(isinstance(part, str) for part in argv):
            raise ConfigError(
                f"task {task_id!r}: an argv command must be a non-empty list of strings, got {action!r}",
                task_id=task_id,
            )
        return argv
    raise ConfigError(
        f"task {task_id!r}: action must be a command string, an argv list or a callable, "
        f"got {type(action).__name__}",
        task_id=task_id,
    )


def _check_resources(task_id: str, resources: Mapping[str, float]) -> dict[str, float]:
    checked: dict[str, float] = {}
    for name, amount in dict(resources).items():
        if (
            not isinstance(name, str)
            or isinstance(amount, bool)
            or not isinstance(amount, int | float)
            or amount < 0
        ):
            raise ConfigError(
                f"task {task_id!r}: resource {name!r} must be a non-negative number, got {amount!r}",
                task_id=task_id,
            )
        checked[name] = float(amount)
    return checked


def is_coroutine_action(action: Action) -> bool:
    """Whether calling the action gives a coroutine (an ``async def`` function)."""
    return inspect.iscoroutinefunction(action) or (
        callable(action) and inspect.iscoroutinefunction(type(action).__call__)
    )


class Graph:
    """Tasks and their dependencies.

    Build it with `add()` or from an iterable of tasks. It is validated once, when a run
    starts (or by calling `validate()`), and frozen from then on.
    """

    def __init__(self, tasks: Iterable[Task] = ()) -> None:
        self._tasks: dict[str, Task] = {}
        self._frozen = False
        self._table: dict[str, list[str]] = {}  # each task's dependents, once validated
        self._order: list[str] = []  # a topological order, once validated
        for task in tasks:
            self.add(task)

    def add(self, task: Task) -> Task:
        """Add a task and return it.

        Raises:
            DuplicateTaskError: a task with this id is already in the graph.
            PhalanxError: the graph is frozen (a run has started).
        """
        if self._frozen:
            raise PhalanxError("the graph is frozen once a run has started; build a new Graph")
        if not isinstance(task, Task):
            raise ConfigError(f"Graph.add expects a Task, got {type(task).__name__}")
        if task.id in self._tasks:
            raise DuplicateTaskError(f"duplicate task id {task.id!r}", task_id=task.id)
        self._tasks[task.id] = task
        return task

    def validate(self) -> Graph:
        """Check dependencies and cycles, freeze the graph, and return it.

        One pass of Kahn's algorithm, O(V + E): it finds unknown dependencies, builds the
        table of dependents and the topological order that runs reuse, and sees a cycle as
        tasks left over (only then is the cycle searched for, to name it).

        Raises:
            UnknownDependencyError: a dependency names no task (with a did-you-mean).
            CycleError: the dependencies form a cycle (named as a path).
        """
        if self._frozen:
            return self
        tasks = self._tasks
        table: dict[str, list[str]] = {tid: [] for tid in tasks}
        waiting: dict[str, int] = {}
        order: list[str] = []
        for tid, task in tasks.items():
            deps = task.deps
            if not deps:
                order.append(tid)
                continue
            waiting[tid] = len(deps)
            for dep in deps:
                dependents = table.get(dep)
                if dependents is None:
                    raise UnknownDependencyError(tid, dep, tasks)
                dependents.append(tid)
        for tid in order:  # the list grows while we walk it
            for dependent in table[tid]:
                left = waiting[dependent] - 1
                waiting[dependent] = left
                if left == 0:
                    order.append(dependent)
        if len(order) < len(tasks):
            cycle = _find_cycle(tasks)
            assert cycle, "tasks left over by Kahn's algorithm form a cycle"
            raise CycleError(cycle)
        self._table = table
        self._order = order
        self._frozen = True
        return self

    @property
    def frozen(self) -> bool:
        return self._frozen

    def __getitem__(self, task_id: str) -> Task:
        return self._tasks[task_id]

    def __contains__(self, task_id: object) -> bool:
        return task_id in self._tasks

    def __iter__(self) -> Iterator[Task]:
        return iter(self._tasks.values())

    def __len__(self) -> int:
        return len(self._tasks)

    @property
    def ids(self) -> list[str]:
        """Task ids in the order they were added."""
        return list(self._tasks)

    def dependents(self, task_id: str) -> tuple[str, ...]:
        """Ids of the tasks that depend directly on ``task_id``, in insertion order."""
        if self._frozen:
            return tuple(self._table[task_id])
        return tuple(tid for tid, task in self._tasks.items() if task_id in task.deps)

    def dependents_table(self) -> Mapping[str, Sequence[str]]:
        """Every task's dependents at once (validates the graph); read-only by contract:
        the scheduler shares these lists rather than copying a million of them."""
        self.validate()
        return self._table

    def topological_order(self) -> list[str]:
        """Ids with every dependency before its dependents (stable: insertion order breaks ties)."""
        self.validate()
        return list(self._order)

    def subgraph(self, ids: Iterable[str], *, keep_deps: bool = True) -> Graph:
        """A new graph of the given ids; with ``keep_deps`` False, deps outside it are dropped."""
        wanted = [tid for tid in self._tasks if tid in set(ids)]
        chosen = set(wanted)
        tasks = []
        for tid in wanted:
            task = self._tasks[tid]
            if not keep_deps:
                from dataclasses import replace

                task = replace(task, deps=tuple(d for d in task.deps if d in chosen))
            tasks.append(task)
        return Graph(tasks)


def _find_cycle(tasks: Mapping[str, Task]) -> list[str] | None:
    """One cycle as ``[a, b, ..., a]`` where each id depends on the next, or None."""
    WHITE, GREY, BLACK = 0, 1, 2
    colour = dict.fromkeys(tasks, WHITE)
    for root in tasks:
        if colour[root] != WHITE:
            continue
        path: list[str] = [root]
        iterators = [iter(tasks[root].deps)]
        colour[root] = GREY
        while iterators:
            dep = next(iterators[-1], None)
            if dep is None:
                colour[path.pop()] = BLACK
                iterators.pop()
                continue
            if colour[dep] == GREY:
                return [*path[path.index(dep):], dep]
            if colour[dep] == WHITE:
                colour[dep] = GREY
                path.append(dep)
                iterators.append(iter(tasks[dep].deps))
    return None
