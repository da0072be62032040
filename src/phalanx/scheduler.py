"""The scheduler: one asyncio event loop that alone owns the run's state.

::

    Graph (validated, frozen)
       |
       v
    pending deps ──(all succeeded)──> ready heap ──(resources fit)──> running attempts
       ^                              (policy key)    ResourcePool       |  backend.run(attempt)
       |                                   ^                             v
       |                                   └──── backoff timer <── failed, retries left
       └──────────── dependents released <──── TaskResult ──> events ──> sinks

Nothing else mutates run state: backends report by finishing the attempt they were
handed (an asyncio task), sinks only consume events. A task becomes ready the moment its
own dependencies have succeeded. The ready heap is ordered by the `OrderingPolicy`; a task
starts only when its resources fit. A task at the head of the queue that does not fit gets
a reservation (EASY backfilling): smaller tasks may pass it only while that cannot delay
the start it would get, so a wide task is never starved. Retries wait out their backoff
holding no slot. On a failure, keep-going skips only the transitive dependents (naming
the failure); fail-fast stops starting tasks and cancels the running ones. Every task ends
in exactly one terminal status.
"""

from __future__ import annotations

import asyncio
import heapq
import inspect
import math
import os
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .backends.base import Attempt, Backend, Outcome
from .durations import format_duration
from .errors import ConfigError, DuplicateTaskError, PhalanxError, UnknownDependencyError
from .events import (
    ConcurrencyChanged,
    Event,
    RateLimitPaused,
    RunCancelling,
    RunFinished,
    RunStarted,
    Sink,
    TaskFinished,
    TaskRetrying,
    TaskStarted,
    WorkersChanged,
)
from .model import ONE_SLOT, SLOTS, Graph, RetryPolicy, Task
from .ordering import (
    CostModel,
    CriticalPathFirst,
    DeclaredCosts,
    OrderingPolicy,
    unknown_weight,
)
from .policy import HaltDecision, HaltRule, TimeoutRule
from .resources import (
    NO_INSTANCES,
    Amounts,
    Capacities,
    Instances,
    ResourcePool,
    check_requests,
    fits,
    split_capacities,
)
from .results import CancelReason, ErrorInfo, RunReport, RunSummary, Status, TaskResult

if TYPE_CHECKING:
    from .ratelimit import Limiters, Use

_EPSILON = 1e-9

__all__ = ["FAILED_FOR_GOOD", "HaltDecision", "HaltRule", "Scheduler", "TimeoutRule"]

#: How many attempts run to their end as they started (inline calls) are accounted for
#: before the dispatcher gives the event loop a turn.
_IMMEDIATE_BATCH = 256

#: How many of the slowest tasks the summary names.
_SLOWEST = 5

FAILED_FOR_GOOD = frozenset({Status.FAILED, Status.TIMED_OUT, Status.CRASHED})


@dataclass(slots=True)
class _Running:
    """One attempt in flight (mutable bookkeeping private to the scheduler)."""

    task: Task
    number: int
    started: float
    request: Amounts
    slot_numbers: tuple[int, ...]
    expected_end: float | None
    handle: asyncio.Task[tuple[Status, Outcome]] | None  # None: ran to its end when started (run_now)
    instances: Instances = field(default_factory=lambda: NO_INSTANCES)  # the named units it holds until it ends
    limit: float | None = None  # the time limit in force, in seconds
    deadline: asyncio.TimerHandle | None = None
    timed_out: float | None = None  # the limit that ran out, once it has
    settled: bool = False  # its rate limits have been told it ended
    retry_after: float | None = None  # the (capped) Retry-After its failure asked for
    started_work: Awaitable[Outcome] | None = None  # what `run_now` started, for the attempt's task to await


class _Node:
    """One task's bookkeeping: a single slotted record per task (not a dozen dicts keyed by
    id), so a million-task run holds a few hundred bytes per task and finds all of a task's
    state with one lookup."""

    __slots__ = ("attempts", "before", "busy", "dependents", "estimate", "first_start", "key", "length", "order",
                 "pending", "referable", "request", "status", "task", "unended", "uses")

    def __init__(self, task: Task, order: int, estimate: float | None, dependents: list[str]) -> None:
        self.task = task
        self.order = order  # submission index: the report's order
        self.estimate = estimate
        self.key: tuple[Any, ...] = ()  # the ordering policy's sort key, then the task's id
        self.request: Mapping[str, float] = task.requests
        self.dependents = dependents  # ids of the tasks that depend on this one
        self.unended = len(dependents)  # how many of those have not ended (open runs let go at 0)
        self.pending = len(task.deps)  # dependencies not yet succeeded
        self.attempts = 0
        self.first_start: float | None = None
        self.busy = 0.0
        self.status: Status | None = None  # once it has ended
        # Once ended: the longest chain of measured busy time ending here, as its length and
        # the dependency it came through (a linked list through the nodes: no allocation).
        self.length = -1.0
        self.before: _Node | None = None
        self.uses: tuple[Use, ...] | None = None  # the rate limits it is paced by
        self.referable = False  # later submissions may name it (open runs)


class Scheduler:
    """Runs one graph once. Make a new one for every run.

    Args:
        graph: the tasks (validated here if it was not already).
        backend_for: picks the backend that runs a task.
        max_workers: the slot capacity (``-j``).
        capacities: other named resources (``{"db": 1}``), or the names of a resource's
            units (``{"gpu": ["0", "1"]}``): each attempt gets units of its own
            (`Attempt.instances`), released when it ends however it ends.
        fail_fast: on the first task that fails for good, stop everything (``halt`` now).
        halt: asked about every task that ends whether to stop now or soon (GNU
            parallel's ``--halt``); combined with ``fail_fast``.
        start_interval: at least this many seconds between two starts (``--delay``).
        timeout_for: each attempt's time limit, asked when it starts and again after every
            task ends (default: the task's own ``timeout``); lets ``--timeout 200%`` follow
            the median runtime so far, for attempts already running too.
        open_ended: more tasks may be `submit`ted while the run goes on; the run ends
            once `close` has been called and every task has ended (the `Executor`).
        keep_results: keep every `TaskResult` for the `RunReport` that `run` returns
            (default: unless ``open_ended``). The scheduler itself lets go of a finished
            task once nothing still waiting depends on it, so an open run that keeps no
            results runs in bounded memory however many tasks pass through it.
        policy: orders ready tasks (default: priority, critical path, submission order).
        cost_model: estimates durations (default: declared costs only).
        sinks: consumers of events, called on the loop in order.
        run_dir: a directory private to the run, for output files.
        rng: randomness for retry jitter (a seeded one makes runs repeatable).
        limiters: the run's named rate limits; a task names those it uses (``limiter``).
        seed: break ties of the policy's key among the graph's tasks in an order shuffled
            by this seed rather than in submission order (``--seed``): the same seed and
            graph give the same start order, another seed another one.
    """

    def __init__(
        self,
        graph: Graph,
        *,
        backend_for: Callable[[Task], Backend],
        max_workers: int,
        capacities: Capacities | None = None,
        fail_fast: bool = False,
        policy: OrderingPolicy | None = None,
        cost_model: CostModel | None = None,
        sinks: Iterable[Sink] = (),
        run_dir: Path,
        run_id: str | None = None,
        rng: random.Random | None = None,
        halt: HaltRule | None = None,
        start_interval: float = 0.0,
        timeout_for: TimeoutRule | None = None,
        open_ended: bool = False,
        keep_results: bool | None = None,
        limiters: Limiters | None = None,
        seed: int | None = None,
    ) -> None:
        if isinstance(max_workers, bool) or not isinstance(max_workers, int) or max_workers < 1:
            raise ValueError(f"max_workers must be a positive integer, got {max_workers!r}")
        graph.validate()
        self._open = open_ended
        self._closed = False
        declared, self._instances = split_capacities(capacities)
        self._capacities = {**declared, SLOTS: float(max_workers)}
        check_requests(graph, self._capacities, self._instances)
        self._max_workers = max_workers
        self._backend_for = backend_for
        self._fail_fast = fail_fast
        self._halt = halt
        self._start_interval = start_interval
        self._next_start = 0.0
        self._start_timer: asyncio.TimerHandle | None = None
        self._timeout_for = timeout_for
        self._halted_by: str | None = None
        self._sinks = list(sinks)
        self._run_dir = run_dir
        self.run_id = run_id or os.urandom(6).hex()  # not uuid: its import is slow
        self._rng = rng or random.Random()

        # Rate limits: a task whose limit refuses it now waits "parked" under its gate (the
        # limits and key it uses) without holding a slot, so tasks on other keys go on.
        self._limiters = limiters
        self._checked_uses: set[tuple[Use, ...]] = set()
        self._parked: dict[tuple[Use, ...], list[tuple[Any, ...]]] = {}
        self._gates: dict[tuple[Use, ...], asyncio.TimerHandle | None] = {}  # None: until a release

        self._cost_model = cost_model or DeclaredCosts()
        self._policy = policy or CriticalPathFirst()
        # Ties of the policy's key are broken by submission order, or with a seed by a
        # shuffled order that the seed alone decides (--seed): reproducible either way.
        self._tie_rng = random.Random(seed) if seed is not None else None
        # Per-task state, dropped (open runs) once a task has ended and nothing waiting
        # depends on it; `_gone` keeps the status of such a task that later ones may name.
        self._nodes: dict[str, _Node] = {}
        self._gone: dict[str, Status] = {}
        self._gone_chains: dict[str, _Node] = {}  # released referable nodes, for the chains through them
        table = graph.dependents_table()
        estimate = None if type(self._cost_model) is DeclaredCosts else self._cost_model.estimate
        nodes = self._nodes
        for index, task in enumerate(graph):
            tid = task.id
            dependents = table[tid]
            node = _Node(task, index, task.cost if estimate is None else estimate(task),
                         list(dependents) if open_ended else dependents)  # type: ignore[arg-type]
            nodes[tid] = node
            if task.limiter:
                node.uses = self._uses_of(task)
            if open_ended:
                node.referable = True
        # A task submitted later with no estimate weighs what an unknown initial one does.
        self._fallback_weight = unknown_weight(node.estimate for node in nodes.values())
        self._order_by_critical_path(graph)
        # Tasks that hold no slot could start even when every slot is busy; without any,
        # a full house of slots lets the dispatcher stop scanning the ready queue early.
        self._zero_slot_tasks = False
        self._widest = 1  # the fewest slots `set_workers` may leave: the widest task must still fit
        for node in nodes.values():
            request = node.request
            if request is not ONE_SLOT:
                slots = request.get(SLOTS, 0.0)
                self._zero_slot_tasks = self._zero_slot_tasks or slots < 1
                self._widest = max(self._widest, math.ceil(slots))
        self._workers = max_workers
        self._submitted = len(nodes)
        self._ended_count = 0

        self._pool = ResourcePool(self._capacities, self._instances)
        # Entries are the nodes' keys: the policy's key with the task id last (flat tuples
        # compare faster than nested ones, and pushing allocates nothing).
        self._heap: list[tuple[Any, ...]] = []
        self._running: dict[str, _Running] = {}
        # Attempts a backend ran to their end as they started (`ImmediateBackend`), to be
        # accounted for once the dispatch that started them is over.
        self._immediate: deque[tuple[_Running, Status, Outcome]] = deque()
        self._dispatching = False
        self._dispatch_again = False
        self._backoff: dict[str, asyncio.TimerHandle] = {}
        self._stopped_outputs: dict[str, Outcome] = {}  # what stopped attempts had printed
        self._halt_queue: deque[TaskResult] = deque()  # ended, not yet shown to the halt rule
        self._stopping: CancelReason | None = None
        self._stopping_soon = False
        self._max_concurrency = 0
        self._sink_error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._t0 = 0.0
        self._done: asyncio.Future[None] | None = None

        # The summary, kept as tasks end (the results themselves are let go).
        keep = keep_results if keep_results is not None else not open_ended
        self._kept: dict[str, TaskResult] | None = {} if keep else None
        # The report lists results in submission order: an open run lets nodes go, so it
        # keeps each kept result's index aside.
        self._order: dict[str, int] | None = {} if keep and open_ended else None
        if self._order is not None:
            self._order.update((tid, node.order) for tid, node in nodes.items())
        self._counts = {status.value: 0 for status in Status}  # by value: an Enum hashes in Python
        self._flaky = 0
        self._busy_total = _ExactSum()
        self._slowest: list[tuple[float, int, str]] = []  # a min-heap of the slowest few
        self._totals: dict[str, float] = {}
        self._longest: _Node | None = None

    def _order_by_critical_path(self, graph: Graph) -> None:
        """Give every task its policy key: priority, remaining path, tie-break (O(V + E))."""
        nodes = self._nodes
        fallback = self._fallback_weight
        # By submission index, not by id: a list of floats is a third of a dict's size.
        remaining = [0.0] * len(nodes)
        for tid in reversed(graph.topological_order()):
            node = nodes[tid]
            tail = 0.0
            for dependent in node.dependents:
                length = remaining[nodes[dependent].order]
                if length > tail:
                    tail = length
            remaining[node.order] = (node.estimate if node.estimate is not None else fallback) + tail
        key = self._policy.key
        ties = self._tie_rng
        if ties is None:
            for tid, node in nodes.items():
                node.key = (*key(node.task, remaining[node.order], node.order), tid)
        else:
            shuffled = list(range(len(nodes)))
            ties.shuffle(shuffled)
            for tid, node in nodes.items():
                node.key = (*key(node.task, remaining[node.order], shuffled[node.order]), tid)

    # ------------------------------------------------------------------ public

    async def run(self) -> RunReport:
        """Run every task to a terminal status and return the report.

        If the coroutine itself is cancelled (Ctrl-C in ``asyncio.run``), running work is
        stopped first, then the cancellation goes on.
        """
        self._loop = asyncio.get_running_loop()
        self._t0 = self._loop.time()
        started_at = time.time()
        self._done = self._loop.create_future()
        self._emit(RunStarted(self.run_id, len(self._nodes), self._max_workers, started_at))
        for node in list(self._nodes.values()):
            if node.pending == 0 and node.status is None:
                self._make_ready(node)
        self._check_done()
        self._dispatch()
        try:
            await asyncio.shield(self._done)
        except asyncio.CancelledError:
            self.cancel(CancelReason.INTERRUPT)
            await self._drain()
            raise
        report = self._report(started_at)
        self._emit(RunFinished(report, self._now()))
        if self._sink_error is not None:
            raise self._sink_error
        return report

    def cancel(self, reason: CancelReason = CancelReason.INTERRUPT, *, stop_running: bool = True) -> None:
        """Stop starting tasks and stop the running ones; calling again kills at once.

        Ready and backing-off tasks end ``cancelled``; running ones are stopped by their
        backend and end ``cancelled``; tasks waiting on those are ``skipped``. With
        ``stop_running`` False (a halt "soon"), running tasks are left to finish.
        """
        if self._stopping is not None and not stop_running:
            return
        if self._stopping is not None:
            # A second request: cancel the attempts again, which backends take as "kill now".
            if reason > self._stopping:
                # A more severe reason (Ctrl-C after a halt "soon"): sinks must know that the
                # attempts stopped from now on were stopped by it.
                self._stopping = reason
                self._emit(RunCancelling(reason, self._now()))
            self._stopping_soon = False
            for running in self._running.values():
                if running.handle is not None:
                    running.handle.cancel()
            return
        self._stopping = reason
        self._stopping_soon = not stop_running
        if self._start_timer is not None:
            self._start_timer.cancel()
        self._emit(RunCancelling(reason, self._now()))
        why = f"cancelled ({reason.label}) before it started"
        ready = [entry[-1] for entry in self._heap]
        self._heap.clear()
        for gate, parked in self._parked.items():
            ready += [entry[-1] for entry in parked]
            timer = self._gates.pop(gate, None)
            if timer is not None:
                timer.cancel()
        self._parked.clear()
        self._gates.clear()
        for tid in ready:
            self._finish(self._plain_result(self._nodes[tid], Status.CANCELLED, why))
        for tid, timer in list(self._backoff.items()):
            timer.cancel()
            del self._backoff[tid]
            why = f"cancelled ({reason.label}) while waiting to retry"
            self._finish(self._plain_result(self._nodes[tid], Status.CANCELLED, why))
        if stop_running:
            for running in self._running.values():
                if running.handle is not None:
                    running.handle.cancel()

    def submit(self, task: Task, *, referable: bool = True) -> None:
        """Add a task to a running open-ended run (call on the scheduler's loop).

        Its dependencies must already be known; one that already failed skips it at once.
        With ``referable`` False, nothing submitted later may depend on the task, and the
        scheduler forgets it entirely once it has ended (`Executor.submit` and
        `phalanx.map` batches: an endless stream of them runs in bounded memory); a
        referable task's id and status are kept for later dependents.

        Raises:
            PhalanxError: the run is not open-ended or is closed; a duplicate id; an
                unknown dependency; a resource request that could never fit.
        """
        if not self._open or self._closed:
            raise PhalanxError("tasks can be submitted only to an open run (Executor) before it closes")
        tid = task.id
        nodes = self._nodes
        if tid in nodes or tid in self._gone:
            raise DuplicateTaskError(f"duplicate task id {tid!r}", task_id=tid)
        for dep in task.deps:
            if dep not in nodes and dep not in self._gone:
                raise UnknownDependencyError(tid, dep, [*nodes, *self._gone])
        if task.requests is not ONE_SLOT:
            check_requests([task], self._capacities, self._instances)  # one slot always fits: -j is at least 1
        uses = self._uses_of(task) if task.limiter else None
        self._submitted += 1
        node = _Node(task, self._submitted, self._cost_model.estimate(task), [])
        node.uses = uses
        node.referable = referable
        weight = node.estimate if node.estimate is not None else self._fallback_weight
        node.key = (*self._policy.key(task, weight, self._submitted), tid)
        nodes[tid] = node
        if self._order is not None:
            self._order[tid] = self._submitted
        request = node.request
        if request is not ONE_SLOT:
            self._zero_slot_tasks = self._zero_slot_tasks or request.get(SLOTS, 0.0) < 1
            self._widest = max(self._widest, math.ceil(request.get(SLOTS, 0.0)))
            if self._widest > self._workers:
                self.set_workers(self._widest, f"a task needs {self._widest} slots")
        pending = 0
        failed: str | None = None
        failed_status = Status.SUCCEEDED
        for dep in task.deps:
            before = nodes.get(dep)
            done = before.status if before is not None else self._gone[dep]
            if before is not None:
                before.dependents.append(tid)
                before.unended += 1
            if done is None:
                pending += 1
            elif done is not Status.SUCCEEDED and failed is None:
                failed, failed_status = dep, done
        node.pending = pending
        if self._loop is None:
            return  # before run(): picked up when it starts
        if failed is not None:
            why = f"dependency {failed!r} {_verb(failed_status)}"
            self._finish(self._plain_result(node, Status.SKIPPED, why, failed))
        elif pending == 0:
            self._make_ready(node)
            self._dispatch()

    def cancel_task(self, tid: str) -> bool:
        """Cancel one task that has not ended (its dependents are skipped); the run goes on.

        Returns whether the task was still unfinished.
        """
        node = self._nodes.get(tid)
        if node is None or node.status is not None:
            return False
        running = self._running.get(tid)
        if running is not None:
            if running.handle is not None:
                running.handle.cancel()  # its backend stops the work; it ends cancelled
            return True
        timer = self._backoff.pop(tid, None)
        if timer is not None:
            timer.cancel()
        for heap in (self._heap, *self._parked.values()):
            for index, entry in enumerate(heap):
                if entry[-1] == tid:
                    heap[index] = heap[-1]
                    heap.pop()
                    heapq.heapify(heap)
                    break
        self._finish(self._plain_result(node, Status.CANCELLED, "cancelled before it started"))
        return True

    def set_workers(self, workers: int, reason: str = "") -> int:
        """Let ``workers`` tasks run at once from now on (``-j auto``); returns the count set.

        The count is kept within ``1..max_workers`` and never below what the widest task
        asks for (it must still be able to start). Fewer workers take effect as running
        attempts end (none is stopped); more start ready tasks at once. Sinks are told with
        a `WorkersChanged` event when the count changes.
        """
        workers = max(1, self._widest, min(self._max_workers, workers))
        if workers == self._workers:
            return workers
        self._workers = workers
        self._pool.resize_slots(workers)
        if self._loop is not None:
            self._emit(WorkersChanged(workers, reason, self._now()))
            self._dispatch()
        return workers

    @property
    def workers(self) -> int:
        """How many tasks may run at once now (``max_workers`` unless `set_workers` lowered it)."""
        return self._workers

    def now(self) -> float:
        """Seconds since the run started (the scheduler's own clock)."""
        return self._now()

    def running(self) -> list[tuple[str, int, float]]:
        """The attempts running now: (task id, worker slot, start time)."""
        return [(tid, r.slot_numbers[0] if r.slot_numbers else 0, r.started) for tid, r in self._running.items()]

    def close(self) -> None:
        """No more submissions: an open-ended run ends once every task has ended."""
        self._closed = True
        if self._loop is not None:
            self._check_done()

    def held(self) -> int:
        """How many tasks the scheduler still holds state for (ended ones it has not let go
        of included): what bounds its memory."""
        return len(self._nodes) + len(self._gone)

    @property
    def halted_by(self) -> str | None:
        """The task whose result made the run stop early (fail-fast or halt), if any."""
        return self._halted_by

    @property
    def stopping(self) -> CancelReason | None:
        """Why the run is stopping early, or None while it runs normally."""
        return self._stopping

    # --------------------------------------------------------------- internals

    def _now(self) -> float:
        assert self._loop is not None
        return self._loop.time() - self._t0

    def _emit(self, event: Event) -> None:
        for sink in self._sinks:
            try:
                sink.handle(event)
            except Exception as error:  # a broken sink must not wedge the run
                if self._sink_error is None:
                    self._sink_error = error

    def _make_ready(self, node: _Node) -> None:
        if self._stopping is not None:
            why = f"cancelled ({self._stopping.label}) before it started"
            self._finish(self._plain_result(node, Status.CANCELLED, why))
            return
        uses = node.uses
        if uses is not None and uses in self._gates:
            heapq.heappush(self._parked.setdefault(uses, []), node.key)  # its limit is closed
            return
        heapq.heappush(self._heap, node.key)

    def _dispatch(self) -> None:
        """Start every ready task that fits; then account for the attempts that ran to their
        end as they started (an `ImmediateBackend`), which may make more tasks ready.

        After `_IMMEDIATE_BATCH` such attempts the rest waits for the loop's next turn, so
        that a long run of inline calls still lets timers fire and a Ctrl-C (the main task's
        cancellation) through between batches.
        """
        if self._dispatching:
            self._dispatch_again = True  # called from within: the loop below goes round again
            return
        self._dispatching = True
        immediate = self._immediate
        accounted = 0
        try:
            self._dispatch_ready()
            while immediate or self._dispatch_again:
                if accounted >= _IMMEDIATE_BATCH and self._loop is not None and self._loop.is_running():
                    self._loop.call_soon(self._dispatch)
                    return
                self._dispatch_again = False
                accounted += self._account_immediate()
                self._dispatch_ready()
        finally:
            self._dispatching = False

    def _account_immediate(self) -> int:
        """Account for the attempts that ran to their end as they started; how many."""
        immediate = self._immediate
        count = len(immediate)
        while immediate:
            running, status, outcome = immediate.popleft()
            self._settle_limits(running, status, outcome)
            self._attempt_ended(running.task.id, running, status, outcome)
        return count

    def _dispatch_ready(self) -> None:
        """Start every ready task that fits, in policy order, honouring one reservation."""
        if self._stopping is not None or not self._heap or self._start_timer is not None:
            return
        if not self._zero_slot_tasks and self._pool.free[SLOTS] < 1 - _EPSILON:
            return  # every slot is busy and every task needs one: nothing can start (the common case)
        free = dict(self._pool.free)
        now = self._now()
        if self._start_interval > 0 and now < self._next_start - _EPSILON:
            self._wait_to_start(self._next_start - now)
            return
        shadow: float | None = None
        spare: dict[str, float] | None = None  # set once the head of the queue is blocked
        deferred: list[tuple[Any, ...]] = []
        while self._heap:
            if spare is None and not self._zero_slot_tasks and free[SLOTS] < 1 - _EPSILON:
                break  # the slots are full: nothing more starts, and no reservation is needed yet
            entry = heapq.heappop(self._heap)
            node = self._nodes[entry[-1]]
            request = node.request
            if spare is None:
                if fits(request, free):
                    if self._admit(entry, node, now):
                        self._start(node, request, free)
                        if self._start_interval > 0:
                            self._next_start = now + self._start_interval
                            if self._heap:
                                self._wait_to_start(self._start_interval)
                            break
                    continue
                shadow, spare = self._reserve(request, free, now)
            elif fits(request, free):
                estimate = node.estimate
                if shadow is not None and estimate is not None and now + estimate <= shadow + _EPSILON:
                    if self._admit(entry, node, now):
                        self._start(node, request, free)  # ends before the reserved start
                    continue
                if fits(request, spare):
                    if self._admit(entry, node, now):
                        self._start(node, request, free)  # uses only what the reservation leaves
                        for name, amount in request.items():
                            spare[name] -= amount
                    continue
            deferred.append(entry)
            if not self._zero_slot_tasks and (
                free[SLOTS] < 1 - _EPSILON or (shadow is None and spare[SLOTS] < 1 - _EPSILON)
            ):
                break  # no further task could start now
        for entry in deferred:
            heapq.heappush(self._heap, entry)

    def _uses_of(self, task: Task) -> tuple[Use, ...]:
        """Which rate limits a task uses (checked now: an unknown name is an error)."""
        if self._limiters is None:
            raise ConfigError(f"task {task.id!r}: unknown rate limit {task.limiter[0]!r} (the run defines none)",
                              task_id=task.id)
        uses = self._limiters.uses(task.limiter, task.limiter_key, task.tokens)
        if uses not in self._checked_uses:  # tasks of one kind share their uses: check each once
            try:
                self._limiters.check(uses)
            except PhalanxError as error:
                error.task_id = task.id
                error.message = f"task {task.id!r}: {error.message}"
                raise
            if len(self._checked_uses) > 10_000:
                self._checked_uses.clear()  # many keys: a bounded memo, not a leak
            self._checked_uses.add(uses)
        return uses

    def _admit(self, entry: tuple[Any, ...], node: _Node, now: float) -> bool:
        """Whether a task that fits may start now as far as its rate limits go (then they
        have granted it); if not, it is parked under its gate until the limits say when."""
        uses = node.uses
        if uses is None:
            return True
        assert self._limiters is not None
        if uses in self._gates:
            heapq.heappush(self._parked.setdefault(uses, []), entry)
            return False
        wait = self._limiters.try_acquire(uses, now)
        if wait <= 0:
            parked = self._parked.get(uses)
            if parked:
                # The next parked task of this gate gets its chance at once (it may find a token too).
                heapq.heappush(self._heap, heapq.heappop(parked))
            return True
        heapq.heappush(self._parked.setdefault(uses, []), entry)
        self._close_gate(uses, wait)
        return False

    def _close_gate(self, uses: tuple[Use, ...], wait: float) -> None:
        """Hold a gate's tasks back for ``wait`` seconds (inf: until an attempt on it ends)."""
        old = self._gates.get(uses)
        if old is not None:
            old.cancel()
        if math.isinf(wait):
            self._gates[uses] = None
            return
        assert self._loop is not None
        self._gates[uses] = self._loop.call_later(wait, self._open_gate, uses)

    def _open_gate(self, uses: tuple[Use, ...], *, dispatch: bool = True) -> None:
        """A gate's wait is over: its first parked task goes back to the ready queue."""
        timer = self._gates.pop(uses, None)
        if timer is not None:
            timer.cancel()
        parked = self._parked.get(uses)
        if parked:
            heapq.heappush(self._heap, heapq.heappop(parked))
            if not parked:
                del self._parked[uses]
        if dispatch:
            self._dispatch()

    def _settle_limits(self, running: _Running | None, status: Status, outcome: Outcome) -> None:
        """Tell the rate limits an attempt ended (a 429 pauses its key for everyone, an
        adaptive window shrinks or grows), note the Retry-After to honour (capped by the
        task's policy), and reopen the gates that were waiting for an attempt to end."""
        if running is None or running.settled:
            return
        running.settled = True
        tid = running.task.id
        failure = outcome.failure
        retry_after = failure.retry_after if failure is not None else None
        if retry_after is not None:
            retry_after = min(retry_after, running.task.retry.max_retry_after)
        running.retry_after = retry_after
        node = self._nodes.get(tid)
        uses = node.uses if node is not None else None
        if uses is None:
            return
        assert self._limiters is not None
        throttled = status is Status.TIMED_OUT or (failure is not None and failure.throttled)
        if status is Status.CANCELLED:
            throttled, retry_after = False, None
        now = self._now()
        changes = self._limiters.release(uses, running.started, now, throttled=throttled, retry_after=retry_after)
        from .ratelimit import Paused, WindowChanged  # here: only runs with rate limits load ratelimit
        for change in changes:
            if isinstance(change, Paused):
                self._emit(RateLimitPaused(change.name, change.key, change.seconds, now))
            elif isinstance(change, WindowChanged):
                self._emit(ConcurrencyChanged(change.name, change.key, change.window, now))
        for gate in [gate for gate, timer in self._gates.items() if timer is None]:
            self._open_gate(gate, dispatch=False)  # started by the next dispatch

    def _wait_to_start(self, delay: float) -> None:
        assert self._loop is not None

        def wake() -> None:
            self._start_timer = None
            self._dispatch()

        self._start_timer = self._loop.call_later(delay, wake)

    def _reserve(
        self, request: Amounts, free: Mapping[str, float], now: float
    ) -> tuple[float | None, dict[str, float]]:
        """When the blocked head of the queue will fit, and what is spare beyond it then.

        With estimates for the running tasks, the reservation is at the earliest expected
        end that frees enough (the shadow time). Without them it is unknown: then nothing
        may use what the head still needs, so others get only what exceeds its request.
        """
        available = dict(free)
        known = [r for r in self._running.values() if r.expected_end is not None]
        ends = sorted(((max(r.expected_end or now, now), r.request) for r in known), key=lambda pair: pair[0])
        for end, held in ends:
            for name, amount in held.items():
                available[name] += amount
            if fits(request, available):
                spare = {n: max(0.0, available[n] - request.get(n, 0.0)) for n in available}
                return end, spare
        return None, {n: max(0.0, free[n] - request.get(n, 0.0)) for n in free}

    def _start(self, node: _Node, request: Amounts, free: dict[str, float]) -> None:
        task = node.task
        tid = task.id
        for name, amount in request.items():
            free[name] -= amount
        slot_numbers = self._pool.acquire(request)
        instances = self._pool.take_instances(request)
        number = node.attempts = node.attempts + 1
        now = self._now()
        if node.first_start is None:
            node.first_start = now
        worker = slot_numbers[0] if slot_numbers else 0
        attempt = Attempt(task, number, worker, self.run_id, self._run_dir, instances)
        estimate = node.estimate
        running = _Running(
            task, number, now, request, slot_numbers, None if estimate is None else now + estimate, None, instances
        )
        self._running[tid] = running
        if len(self._running) > self._max_concurrency:
            self._max_concurrency = len(self._running)
        started: Awaitable[Outcome] | None = None
        try:
            backend = self._backend_for(task)
            run_now = getattr(backend, "run_now", None)
            if run_now is not None:
                # An `ImmediateBackend` (inline callables): the attempt runs right here, with
                # no asyncio task of its own; it is accounted for once this dispatch is over.
                self._emit(TaskStarted(tid, number, worker, now))
                if self._stopping is not None:  # a sink stopped the run as it started
                    stopped = Outcome(ok=False, reason=f"stopped ({self._stopping.label}) while running")
                    self._immediate.append((running, Status.CANCELLED, stopped))
                    return
                result = run_now(attempt)
                if isinstance(result, Outcome):
                    self._immediate.append((running, _status_of(result), result))
                    return
                started = running.started_work = result
        except Exception as error:  # a backend bug must end this task, not wedge the run
            self._immediate.append((running, Status.FAILED, _backend_error(error)))
            return
        assert self._loop is not None
        handle = self._loop.create_task(self._attempt(attempt, backend, started), name=f"phalanx:{tid}#{number}")
        running.handle = handle
        self._set_deadline(running, self._limit_of(task))
        if run_now is None:
            self._emit(TaskStarted(tid, number, worker, now))
        handle.add_done_callback(lambda h, tid=tid: self._attempt_done(tid, h))  # type: ignore[misc]

    def _limit_of(self, task: Task) -> float | None:
        limit = task.timeout if self._timeout_for is None else self._timeout_for.limit(task)
        return limit if limit is not None and limit > 0 else None  # 0 means no limit

    def _set_deadline(self, running: _Running, limit: float | None) -> None:
        """(Re)arm an attempt's deadline timer for ``limit`` seconds after its start."""
        if running.deadline is not None:
            running.deadline.cancel()
            running.deadline = None
        running.limit = limit
        if limit is None:
            return
        assert self._loop is not None
        at = self._t0 + running.started + limit
        tid = running.task.id
        running.deadline = self._loop.call_at(max(at, self._loop.time()), self._time_out, tid, running)

    def _time_out(self, tid: str, running: _Running) -> None:
        if self._running.get(tid) is not running or running.handle is None or running.handle.done():
            return
        running.deadline = None
        running.timed_out = running.limit
        running.handle.cancel()  # the backend stops the work; `_attempt` reports the timeout

    def _refresh_deadlines(self) -> None:
        """A timeout rule may change its limits as tasks end: re-arm the running attempts'."""
        if self._timeout_for is None:
            return
        for running in list(self._running.values()):
            if running.timed_out is None:
                limit = self._limit_of(running.task)
                if limit != running.limit:
                    self._set_deadline(running, limit)

    async def _attempt(
        self, attempt: Attempt, backend: Backend, started: Awaitable[Outcome] | None
    ) -> tuple[Status, Outcome]:
        """Run one attempt and tell its rate limits at once how it went: in the very step its
        failure arrives, so that no task on its key starts after a 429 but before the pause."""
        tid = attempt.task.id
        try:
            status, outcome = await self._run_attempt(attempt, backend, started)
        except asyncio.CancelledError:
            self._settle_limits(self._running.get(tid), Status.CANCELLED, Outcome(ok=False))
            raise
        running = self._running.get(tid)
        if running is not None:
            # Handled here, in the step the attempt ended, rather than in a done callback:
            # one event-loop round trip less per task.
            self._settle_limits(running, status, outcome)
            self._attempt_ended(tid, running, status, outcome)
        return status, outcome

    async def _run_attempt(
        self, attempt: Attempt, backend: Backend, started: Awaitable[Outcome] | None
    ) -> tuple[Status, Outcome]:
        """Run one attempt (or await the one its backend started); a timeout is the
        scheduler's verdict (its deadline timer cancels the attempt, the backend stops the
        work), not the backend's."""
        task = attempt.task
        try:
            outcome = await (backend.run(attempt) if started is None else started)
        except asyncio.CancelledError:
            running = self._running.get(task.id)
            stopped = _stopped_outcome(backend, attempt)
            if running is not None and running.timed_out is not None and self._stopping is None:
                reason = f"timed out after {format_duration(running.timed_out)}"
                return Status.TIMED_OUT, replace(stopped, reason=reason)
            self._stopped_outputs[task.id] = stopped
            raise
        except Exception as error:  # a backend bug must end this task, not wedge the run
            return Status.FAILED, _backend_error(error)
        return _status_of(outcome), outcome

    def _attempt_done(self, tid: str, handle: asyncio.Task[tuple[Status, Outcome]]) -> None:
        """An attempt's task is done: if it ended by being cancelled, account for it here
        (an attempt that returned was accounted for in its last step)."""
        running = self._running.get(tid)
        if running is None or running.handle is not handle:
            return
        if handle.cancelled():
            if inspect.iscoroutine(running.started_work):
                running.started_work.close()  # cancelled before its task took its first step
            reason = self._stopping.label if self._stopping is not None else "cancelled"
            stopped = self._stopped_outputs.pop(tid, None) or Outcome(ok=False)
            status, outcome = Status.CANCELLED, replace(stopped, reason=f"stopped ({reason}) while running")
        else:
            status, outcome = handle.result()
        self._settle_limits(running, status, outcome)  # if the attempt never did (cancelled before it began)
        self._attempt_ended(tid, running, status, outcome)

    def _attempt_ended(self, tid: str, running: _Running, status: Status, outcome: Outcome) -> None:
        """Account for an attempt that ended: free what it held, retry it or finish the task."""
        del self._running[tid]
        if running.deadline is not None:
            running.deadline.cancel()
        self._pool.release(running.request, running.slot_numbers, running.instances)
        now = self._now()
        node = self._nodes[tid]
        node.busy += now - running.started
        task = running.task
        retry_after = running.retry_after
        if (
            status is not Status.SUCCEEDED
            and status is not Status.CANCELLED
            and self._stopping is None
            and running.number <= task.retry.count
            and _retryable(task.retry, outcome)
        ):
            asked = outcome.failure.retry_after if outcome.failure is not None else None
            if asked is not None and asked > task.retry.max_retry_after:
                # Waiting that long would stall the run: fail, and say why it was not retried.
                reason = (f"{outcome.reason or 'failed'}; not retried: asked to retry after {format_duration(asked)}, "
                          f"more than max_retry_after ({format_duration(task.retry.max_retry_after)})")
                self._finish(self._attempt_result(node, running, now, status, replace(outcome, reason=reason)))
            else:
                self._retry_later(node, running.number, outcome, retry_after)
        else:
            self._finish(self._attempt_result(node, running, now, status, outcome))
        self._dispatch()

    def _consider_halting(self, result: TaskResult) -> None:
        """Ask the halt rule (and fail-fast) about a task that ended, the last one included."""
        decision: HaltDecision = self._halt(result) if self._halt is not None else None
        if self._fail_fast and result.status in FAILED_FOR_GOOD:
            decision = "now"
        if decision is None or self._nothing_left():
            return
        if self._stopping is not None and not (decision == "now" and self._stopping_soon):
            return
        if self._stopping is None:
            self._halted_by = result.task_id
        reason = CancelReason.FAIL_FAST if self._fail_fast and result.status in FAILED_FOR_GOOD else CancelReason.HALT
        self.cancel(reason, stop_running=decision == "now")

    def _nothing_left(self) -> bool:
        return self._ended_count == self._submitted and (self._closed or not self._open)

    def _retry_later(self, node: _Node, failed_number: int, outcome: Outcome, retry_after: float | None) -> None:
        # The server's word beats the backoff's guess: sooner would be refused again, later
        # wastes the time it offered (the key's shared pause spreads the retries out).
        task = node.task
        delay = retry_after if retry_after is not None else task.retry.delay(failed_number, self._rng)
        reason = outcome.reason or "failed"
        if outcome.retry_action is not None:
            # Only part of the work failed (a batch's items): the retry runs just that part.
            node.task = replace(task, action=outcome.retry_action)
        self._emit(TaskRetrying(task.id, failed_number, delay, reason, self._now(), value=outcome.value))
        if delay <= 0:
            self._make_ready(node)
            return
        assert self._loop is not None

        def wake(tid: str = task.id) -> None:
            del self._backoff[tid]
            self._make_ready(node)
            self._dispatch()

        self._backoff[task.id] = self._loop.call_later(delay, wake)

    def _attempt_result(
        self, node: _Node, running: _Running, now: float, status: Status, outcome: Outcome
    ) -> TaskResult:
        return TaskResult(
            task_id=node.task.id,
            status=status,
            flaky=status is Status.SUCCEEDED and running.number > 1,
            attempts=running.number,
            reason=None if status is Status.SUCCEEDED else outcome.reason,
            exit_code=outcome.exit_code,
            signal=outcome.signal,
            error=outcome.error,
            value=outcome.value,
            data=outcome.data,
            start=node.first_start,
            end=now,
            duration=now - running.started,
            busy_time=node.busy,
            worker=running.slot_numbers[0] if running.slot_numbers else 0,
            pid=outcome.pid,
            stdout_tail=outcome.stdout_tail,
            stderr_tail=outcome.stderr_tail,
            stdout_path=outcome.stdout_path,
            stderr_path=outcome.stderr_path,
            exception=outcome.exception,
            output_cut=outcome.output_cut,
            worker_address=outcome.worker_address,
        )

    def _plain_result(
        self, node: _Node, status: Status, reason: str, blocked_by: str | None = None
    ) -> TaskResult:
        """The result of a task that is not running when it ends (skipped, cancelled)."""
        return TaskResult(
            task_id=node.task.id,
            status=status,
            attempts=node.attempts,
            reason=reason,
            start=node.first_start,
            end=self._now(),
            busy_time=node.busy,
            blocked_by=blocked_by,
        )

    def _finish(self, first: TaskResult) -> None:
        """Record terminal results and release or skip dependents (a worklist: chains can be
        long), then show each to the halt rule, in the order they ended."""
        nodes = self._nodes
        if first.status is Status.SUCCEEDED:
            self._succeeded(nodes[first.task_id], first)  # the common case: no worklist
        else:
            # A failure: its dependents are skipped, theirs too (a worklist: chains can be long).
            work = deque([(first, first.status)])
            queued = {first.task_id}
            while work:
                result, root_status = work.popleft()
                tid = result.task_id
                node = nodes[tid]
                self._record(node, result)
                status = result.status
                root = result.blocked_by or tid
                for dependent in node.dependents:
                    waiting = nodes.get(dependent)  # gone: it ended (cancelled) and was let go
                    if waiting is None or waiting.status is not None or dependent in queued:
                        continue
                    queued.add(dependent)
                    if status is Status.SKIPPED:
                        why = f"dependency {tid!r} was skipped ({root!r} {_verb(root_status)})"
                    else:
                        why = f"dependency {tid!r} {_verb(status)}"
                    skipped = self._plain_result(waiting, Status.SKIPPED, why, blocked_by=root)
                    work.append((skipped, root_status))
                if self._open:
                    self._let_go(node)
        self._refresh_deadlines()
        while self._halt_queue:
            self._consider_halting(self._halt_queue.popleft())
        self._check_done()

    def _record(self, node: _Node, result: TaskResult) -> None:
        """A task reached its terminal status: count it, tell the sinks, queue it for the halt rule."""
        assert node.status is None, f"task {result.task_id!r} ended twice"
        node.status = result.status
        self._ended_count += 1
        self._account(node, result)
        self._emit(TaskFinished(result, result.end or 0.0))
        if self._timeout_for is not None:
            self._timeout_for.observe(result)
        self._halt_queue.append(result)

    def _succeeded(self, node: _Node, result: TaskResult) -> None:
        """`_finish` for a task that succeeded: its dependents may become ready."""
        self._record(node, result)
        nodes = self._nodes
        for dependent in node.dependents:
            released = nodes.get(dependent)  # None: it ended (cancelled) and was let go
            if released is not None:
                released.pending -= 1
                if released.pending == 0 and released.status is None:
                    self._make_ready(released)
        if self._open:
            self._let_go(node)

    def _account(self, node: _Node, result: TaskResult) -> None:
        """Add an ended task to the summary (and to the report, if results are kept)."""
        tid = result.task_id
        self._counts[result.status.value] += 1
        self._flaky += result.flaky
        busy = result.busy_time
        self._busy_total.add(busy)
        if result.data:
            for key, value in result.data.items():
                if isinstance(value, int | float) and not isinstance(value, bool):
                    self._totals[key] = self._totals.get(key, 0) + value
        if result.attempts:
            entry = (busy, -self._ended_count, tid)
            if len(self._slowest) < _SLOWEST:
                heapq.heappush(self._slowest, entry)
            elif entry > self._slowest[0]:
                heapq.heapreplace(self._slowest, entry)
        # The longest chain of measured busy time ending here: through the heaviest dependency.
        best: _Node | None = None
        nodes = self._nodes
        for dep in node.task.deps:
            before = nodes.get(dep) or self._gone_chains.get(dep)
            if before is not None and before.length >= 0 and (best is None or before.length > best.length):
                best = before
        node.length = busy if best is None else best.length + busy
        node.before = best
        if self._longest is None or node.length > self._longest.length:
            self._longest = node
        if self._kept is not None:
            self._kept[tid] = result

    def _let_go(self, node: _Node) -> None:
        """Drop the state of an ended task and of its dependencies once nothing still
        waiting depends on them (an open run would otherwise grow with every task)."""
        nodes = self._nodes
        for dep in node.task.deps:
            before = nodes.get(dep)
            if before is not None:
                before.unended -= 1
                if before.unended <= 0 and before.status is not None:
                    self._release(before)
        if node.unended <= 0:
            self._release(node)

    def _release(self, node: _Node) -> None:
        tid = node.task.id
        if self._nodes.get(tid) is not node:
            return
        del self._nodes[tid]
        if node.referable:
            assert node.status is not None
            self._gone[tid] = node.status  # a later task may still name it
            if node.length >= 0:
                # Kept only as a link of the chains through it (the summary's critical path):
                # without its task's action and arguments, which an endless stream of
                # `submit_task` calls would otherwise hold one of per task.
                node.task = Task(tid, _released)
                node.dependents = []
                self._gone_chains[tid] = node

    def _check_done(self) -> None:
        if self._nothing_left() and self._done is not None and not self._done.done():
            self._done.set_result(None)

    async def _drain(self) -> None:
        """Wait for cancelled attempts to finish stopping (their backends kill and reap)."""
        while self._running:
            if self._immediate and not self._dispatching:
                self._account_immediate()  # ended before the stop: they end as they ended
                continue
            handles = [r.handle for r in list(self._running.values()) if r.handle is not None]
            if not handles:
                return
            await asyncio.gather(*handles, return_exceptions=True)

    def _report(self, started_at: float) -> RunReport:
        results: dict[str, TaskResult] = {}
        if self._kept is not None:
            kept = self._kept
            if self._order is None:  # a graph given whole: its nodes are all still here
                results = {tid: kept[tid] for tid in self._nodes if tid in kept}
            else:
                order = self._order
                results = {tid: kept[tid] for tid in sorted(kept, key=lambda tid: order.get(tid, 0))}
        wall = self._now()
        busy = self._busy_total.value
        chain: list[str] = []
        link = self._longest
        while link is not None:
            chain.append(link.task.id)
            link = link.before
        chain.reverse()
        chain_time = self._longest.length if self._longest is not None else 0.0
        slowest = tuple((tid, seconds) for seconds, _, tid in sorted(self._slowest, reverse=True))
        summary = RunSummary(
            total=self._ended_count,
            counts={status: self._counts[status.value] for status in Status},
            flaky=self._flaky,
            wall_time=wall,
            busy_time=busy,
            max_workers=self._max_workers,
            achieved_parallelism=busy / wall if wall > 0 else 0.0,
            max_concurrency=self._max_concurrency,
            critical_path=tuple(chain),
            critical_path_time=chain_time,
            lower_bound=max(chain_time, busy / self._max_workers),
            slowest=slowest,
            data_totals=self._totals,
            started_at=started_at,
            cancelled_by=self._stopping,
            halted_by=self._halted_by,
        )
        return RunReport(results, summary)


class _ExactSum:
    """A running float sum with Neumaier's compensation: the total of many task times does
    not depend on the order they ended in (a plain running sum drifts in the last digit)."""

    __slots__ = ("_compensation", "_total")

    def __init__(self) -> None:
        self._total = 0.0
        self._compensation = 0.0

    def add(self, value: float) -> None:
        total = self._total + value
        if abs(self._total) >= abs(value):
            self._compensation += (self._total - total) + value
        else:
            self._compensation += (value - total) + self._total
        self._total = total

    @property
    def value(self) -> float:
        return self._total + self._compensation


def _retryable(policy: RetryPolicy, outcome: Outcome) -> bool:
    """Whether the retry policy's conditions cover this failure (its count aside)."""
    if not policy.allows(outcome.exit_code):
        return False
    failure = outcome.failure
    if failure is not None and failure.status is not None and not policy.allows_status(failure.status):
        return False
    if policy.on_exceptions is not None and (outcome.exception is not None or outcome.error is not None):
        return policy.allows_exception(outcome.exception, outcome.error.type if outcome.error is not None else None)
    return True


def _released() -> None:
    """The action of a let-go task's stand-in (never called: it only names the task)."""


def _status_of(outcome: Outcome) -> Status:
    if outcome.ok:
        return Status.SUCCEEDED
    return Status.CRASHED if outcome.crashed else Status.FAILED


def _backend_error(error: Exception) -> Outcome:
    return Outcome(ok=False, reason=f"backend error: {error}", error=ErrorInfo.from_exception(error))


def _stopped_outcome(backend: Backend | None, attempt: Attempt) -> Outcome:
    """What a stopped attempt had done so far (its output files), if its backend kept it."""
    partial = backend.stopped_outcome(attempt) if backend is not None else None
    return partial if partial is not None else Outcome(ok=False)


def _verb(status: Status) -> str:
    return {
        Status.FAILED: "failed",
        Status.TIMED_OUT: "timed out",
        Status.CRASHED: "crashed",
        Status.CANCELLED: "was cancelled",
        Status.SKIPPED: "was skipped",
        Status.SUCCEEDED: "succeeded",
    }[status]
