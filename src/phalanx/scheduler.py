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
import os
import random
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from .backends.base import Attempt, Backend, Outcome
from .durations import format_duration
from .errors import DuplicateTaskError, PhalanxError, UnknownDependencyError
from .events import (
    Event,
    RunCancelling,
    RunFinished,
    RunStarted,
    Sink,
    TaskFinished,
    TaskRetrying,
    TaskStarted,
)
from .model import SLOTS, Graph, Task
from .ordering import (
    CostModel,
    CriticalPathFirst,
    DeclaredCosts,
    OrderingPolicy,
    critical_path,
    path_weights,
    remaining_paths,
)
from .resources import Amounts, ResourcePool, check_requests, fits
from .results import CancelReason, ErrorInfo, RunReport, RunSummary, Status, TaskResult

_EPSILON = 1e-9

#: What a halt rule answers after each task's final result: stop ``"now"`` (cancel what
#: runs), stop ``"soon"`` (start nothing new, let what runs finish), or None (go on).
HaltDecision = Literal["now", "soon"] | None
HaltRule = Callable[[TaskResult], HaltDecision]
TimeoutRule = Callable[[Task], "float | None"]

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
    handle: asyncio.Task[tuple[Status, Outcome]]


class Scheduler:
    """Runs one graph once. Make a new one for every run.

    Args:
        graph: the tasks (validated here if it was not already).
        backend_for: picks the backend that runs a task.
        max_workers: the slot capacity (``-j``).
        capacities: other named resources (``{"db": 1}``).
        fail_fast: on the first task that fails for good, stop everything (``halt`` now).
        halt: a rule asked after each final result whether to stop now or soon
            (GNU parallel's ``--halt``); combined with ``fail_fast``.
        start_interval: at least this many seconds between two starts (``--delay``).
        timeout_for: the timeout of each attempt, asked when it starts (default: the
            task's own); lets ``--timeout 200%`` follow the median runtime so far.
        open_ended: more tasks may be `submit`ted while the run goes on; the run ends
            once `close` has been called and every task has ended (the `Executor`).
        policy: orders ready tasks (default: priority, critical path, submission order).
        cost_model: estimates durations (default: declared costs only).
        sinks: consumers of events, called on the loop in order.
        run_dir: a directory private to the run, for output files.
        rng: randomness for retry jitter (a seeded one makes runs repeatable).
    """

    def __init__(
        self,
        graph: Graph,
        *,
        backend_for: Callable[[Task], Backend],
        max_workers: int,
        capacities: Mapping[str, float] | None = None,
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
    ) -> None:
        if isinstance(max_workers, bool) or not isinstance(max_workers, int) or max_workers < 1:
            raise ValueError(f"max_workers must be a positive integer, got {max_workers!r}")
        graph.validate()
        self._tasks: dict[str, Task] = {task.id: task for task in graph}
        self._dependents: dict[str, list[str]] = {tid: list(graph.dependents(tid)) for tid in self._tasks}
        self._open = open_ended
        self._closed = False
        self._capacities = {**dict(capacities or {}), SLOTS: float(max_workers)}
        check_requests(graph, self._capacities)
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

        self._cost_model = cost_model or DeclaredCosts()
        self._policy = policy or CriticalPathFirst()
        self._estimates = {task.id: self._cost_model.estimate(task) for task in graph}
        weights = path_weights(self._estimates)
        # A task submitted later with no estimate weighs what an unknown initial one does.
        self._fallback_weight = path_weights({**self._estimates, "": None})[""]
        remaining = remaining_paths(graph, weights)
        self._keys = {task.id: self._policy.key(task, remaining[task.id], i) for i, task in enumerate(graph)}
        self._requests = {task.id: dict(task.requests) for task in graph}
        # Tasks that hold no slot could start even when every slot is busy; without any,
        # a full house of slots lets the dispatcher stop scanning the ready queue early.
        self._zero_slot_tasks = any(r.get(SLOTS, 0.0) < 1 for r in self._requests.values())

        self._pool = ResourcePool(self._capacities)
        self._pending = {task.id: len(task.deps) for task in graph}
        self._heap: list[tuple[tuple[Any, ...], str]] = []
        self._running: dict[str, _Running] = {}
        self._backoff: dict[str, asyncio.TimerHandle] = {}
        self._attempts = dict.fromkeys(self._pending, 0)
        self._first_start: dict[str, float] = {}
        self._busy = dict.fromkeys(self._pending, 0.0)
        self._results: dict[str, TaskResult] = {}
        self._stopped_outputs: dict[str, Outcome] = {}  # what stopped attempts had printed
        self._stopping: CancelReason | None = None
        self._max_concurrency = 0
        self._sink_error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._t0 = 0.0
        self._done: asyncio.Future[None] | None = None

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
        self._emit(RunStarted(self.run_id, len(self._tasks), self._max_workers, started_at))
        for task in list(self._tasks.values()):
            if not task.deps:
                self._make_ready(task.id)
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
            self._stopping = max(self._stopping, reason)
            for running in self._running.values():
                running.handle.cancel()
            return
        self._stopping = reason
        if self._start_timer is not None:
            self._start_timer.cancel()
        self._emit(RunCancelling(reason, self._now()))
        why = f"cancelled ({reason.label}) before it started"
        ready = [tid for _, tid in self._heap]
        self._heap.clear()
        for tid in ready:
            self._finish(self._plain_result(tid, Status.CANCELLED, why))
        for tid, timer in list(self._backoff.items()):
            timer.cancel()
            del self._backoff[tid]
            why = f"cancelled ({reason.label}) while waiting to retry"
            self._finish(self._plain_result(tid, Status.CANCELLED, why))
        if stop_running:
            for running in self._running.values():
                running.handle.cancel()

    def submit(self, task: Task) -> None:
        """Add a task to a running open-ended run (call on the scheduler's loop).

        Its dependencies must already be known; one that already failed skips it at once.

        Raises:
            PhalanxError: the run is not open-ended or is closed; a duplicate id; an
                unknown dependency; a resource request that could never fit.
        """
        if not self._open or self._closed:
            raise PhalanxError("tasks can be submitted only to an open run (Executor) before it closes")
        if task.id in self._tasks:
            raise DuplicateTaskError(f"duplicate task id {task.id!r}", task_id=task.id)
        for dep in task.deps:
            if dep not in self._tasks:
                raise UnknownDependencyError(task.id, dep, self._tasks)
        check_requests([task], self._capacities)
        tid = task.id
        self._tasks[tid] = task
        self._dependents[tid] = []
        estimate = self._cost_model.estimate(task)
        self._estimates[tid] = estimate
        weight = estimate if estimate is not None else self._fallback_weight
        self._keys[tid] = self._policy.key(task, weight, len(self._tasks))
        self._requests[tid] = request = dict(task.requests)
        self._zero_slot_tasks = self._zero_slot_tasks or request.get(SLOTS, 0.0) < 1
        self._attempts[tid] = 0
        self._busy[tid] = 0.0
        pending = 0
        failed: str | None = None
        for dep in task.deps:
            self._dependents[dep].append(tid)
            done = self._results.get(dep)
            if done is None:
                pending += 1
            elif not done.ok and failed is None:
                failed = dep
        self._pending[tid] = pending
        if self._loop is None:
            return  # before run(): picked up when it starts
        if failed is not None:
            status = self._results[failed].status
            self._finish(self._plain_result(tid, Status.SKIPPED, f"dependency {failed!r} {_verb(status)}", failed))
        elif pending == 0:
            self._make_ready(tid)
            self._dispatch()

    def cancel_task(self, tid: str) -> bool:
        """Cancel one task that has not ended (its dependents are skipped); the run goes on.

        Returns whether the task was still unfinished.
        """
        if tid in self._results or tid not in self._tasks:
            return False
        running = self._running.get(tid)
        if running is not None:
            running.handle.cancel()  # its backend stops the work; it ends cancelled
            return True
        timer = self._backoff.pop(tid, None)
        if timer is not None:
            timer.cancel()
        for index, (_, queued) in enumerate(self._heap):
            if queued == tid:
                self._heap[index] = self._heap[-1]
                self._heap.pop()
                heapq.heapify(self._heap)
                break
        self._finish(self._plain_result(tid, Status.CANCELLED, "cancelled before it started"))
        return True

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

    def _make_ready(self, tid: str) -> None:
        if self._stopping is not None:
            why = f"cancelled ({self._stopping.label}) before it started"
            self._finish(self._plain_result(tid, Status.CANCELLED, why))
            return
        heapq.heappush(self._heap, (self._keys[tid], tid))

    def _dispatch(self) -> None:
        """Start every ready task that fits, in policy order, honouring one reservation."""
        if self._stopping is not None or not self._heap or self._start_timer is not None:
            return
        free = dict(self._pool.free)
        now = self._now()
        if self._start_interval > 0 and now < self._next_start - _EPSILON:
            self._wait_to_start(self._next_start - now)
            return
        shadow: float | None = None
        spare: dict[str, float] | None = None  # set once the head of the queue is blocked
        deferred: list[tuple[tuple[Any, ...], str]] = []
        while self._heap:
            entry = heapq.heappop(self._heap)
            tid = entry[1]
            request = self._requests[tid]
            if spare is None:
                if fits(request, free):
                    self._start(tid, request, free)
                    if self._start_interval > 0:
                        self._next_start = now + self._start_interval
                        if self._heap:
                            self._wait_to_start(self._start_interval)
                        break
                    continue
                shadow, spare = self._reserve(request, free, now)
            elif fits(request, free):
                estimate = self._estimates[tid]
                if shadow is not None and estimate is not None and now + estimate <= shadow + _EPSILON:
                    self._start(tid, request, free)  # ends before the reserved start
                    continue
                if fits(request, spare):
                    self._start(tid, request, free)  # uses only what the reservation leaves
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

    def _start(self, tid: str, request: Amounts, free: dict[str, float]) -> None:
        task = self._tasks[tid]
        for name, amount in request.items():
            free[name] -= amount
        slot_numbers = self._pool.acquire(request)
        number = self._attempts[tid] + 1
        self._attempts[tid] = number
        now = self._now()
        self._first_start.setdefault(tid, now)
        worker = slot_numbers[0] if slot_numbers else 0
        attempt = Attempt(task, number, worker, self.run_id, self._run_dir)
        assert self._loop is not None
        handle = self._loop.create_task(self._attempt(attempt), name=f"phalanx:{tid}#{number}")
        estimate = self._estimates[tid]
        self._running[tid] = _Running(
            task, number, now, request, slot_numbers, None if estimate is None else now + estimate, handle
        )
        self._max_concurrency = max(self._max_concurrency, len(self._running))
        self._emit(TaskStarted(tid, number, worker, now))
        handle.add_done_callback(lambda h, tid=tid: self._attempt_done(tid, h))  # type: ignore[misc]

    async def _attempt(self, attempt: Attempt) -> tuple[Status, Outcome]:
        """Run one attempt under its timeout; a timeout is the scheduler's verdict, not the backend's."""
        task = attempt.task
        timeout = task.timeout if self._timeout_for is None else self._timeout_for(task)
        backend: Backend | None = None
        try:
            backend = self._backend_for(task)
            if timeout is None:
                outcome = await backend.run(attempt)
            else:
                async with asyncio.timeout(timeout):
                    outcome = await backend.run(attempt)
        except TimeoutError:
            reason = f"timed out after {format_duration(timeout or 0.0)}"
            return Status.TIMED_OUT, replace(_stopped_outcome(backend, attempt), reason=reason)
        except asyncio.CancelledError:
            self._stopped_outputs[task.id] = _stopped_outcome(backend, attempt)
            raise
        except Exception as error:  # a backend bug must end this task, not wedge the run
            return Status.FAILED, Outcome(
                ok=False, reason=f"backend error: {error}", error=ErrorInfo.from_exception(error)
            )
        if outcome.ok:
            return Status.SUCCEEDED, outcome
        return (Status.CRASHED if outcome.crashed else Status.FAILED), outcome

    def _attempt_done(self, tid: str, handle: asyncio.Task[tuple[Status, Outcome]]) -> None:
        running = self._running.pop(tid)
        self._pool.release(running.request, running.slot_numbers)
        now = self._now()
        self._busy[tid] += now - running.started
        if handle.cancelled():
            reason = self._stopping.label if self._stopping is not None else "cancelled"
            stopped = self._stopped_outputs.pop(tid, None) or Outcome(ok=False)
            status, outcome = Status.CANCELLED, replace(stopped, reason=f"stopped ({reason}) while running")
        else:
            status, outcome = handle.result()
        task = running.task
        if (
            status is not Status.SUCCEEDED
            and status is not Status.CANCELLED
            and self._stopping is None
            and running.number <= task.retry.count
            and task.retry.allows(outcome.exit_code)
        ):
            self._retry_later(task, running.number, outcome.reason or str(status))
        else:
            result = self._attempt_result(task, running, now, status, outcome)
            self._finish(result)
            self._consider_halting(result)
        self._dispatch()

    def _consider_halting(self, result: TaskResult) -> None:
        if self._stopping is not None or len(self._results) == len(self._tasks):
            return
        if self._fail_fast and result.status in FAILED_FOR_GOOD:
            self._halted_by = result.task_id
            self.cancel(CancelReason.FAIL_FAST)
            return
        decision = self._halt(result) if self._halt is not None else None
        if decision is not None:
            self._halted_by = result.task_id
            self.cancel(CancelReason.HALT, stop_running=decision == "now")

    def _retry_later(self, task: Task, failed_number: int, reason: str) -> None:
        delay = task.retry.delay(failed_number, self._rng)
        self._emit(TaskRetrying(task.id, failed_number, delay, reason, self._now()))
        if delay <= 0:
            self._make_ready(task.id)
            return
        assert self._loop is not None

        def wake(tid: str = task.id) -> None:
            del self._backoff[tid]
            self._make_ready(tid)
            self._dispatch()

        self._backoff[task.id] = self._loop.call_later(delay, wake)

    def _attempt_result(
        self, task: Task, running: _Running, now: float, status: Status, outcome: Outcome
    ) -> TaskResult:
        return TaskResult(
            task_id=task.id,
            status=status,
            flaky=status is Status.SUCCEEDED and running.number > 1,
            attempts=running.number,
            reason=None if status is Status.SUCCEEDED else outcome.reason,
            exit_code=outcome.exit_code,
            signal=outcome.signal,
            error=outcome.error,
            value=outcome.value,
            data=outcome.data,
            start=self._first_start.get(task.id),
            end=now,
            duration=now - running.started,
            busy_time=self._busy[task.id],
            worker=running.slot_numbers[0] if running.slot_numbers else 0,
            pid=outcome.pid,
            stdout_tail=outcome.stdout_tail,
            stderr_tail=outcome.stderr_tail,
            stdout_path=outcome.stdout_path,
            stderr_path=outcome.stderr_path,
            exception=outcome.exception,
        )

    def _plain_result(
        self, tid: str, status: Status, reason: str, blocked_by: str | None = None
    ) -> TaskResult:
        """The result of a task that is not running when it ends (skipped, cancelled)."""
        return TaskResult(
            task_id=tid,
            status=status,
            attempts=self._attempts[tid],
            reason=reason,
            start=self._first_start.get(tid),
            end=self._now(),
            busy_time=self._busy[tid],
            blocked_by=blocked_by,
        )

    def _finish(self, first: TaskResult) -> None:
        """Record terminal results and release or skip dependents (a worklist: chains can be long)."""
        work = deque([first])
        queued = {first.task_id}
        while work:
            result = work.popleft()
            tid = result.task_id
            assert tid not in self._results, f"task {tid!r} ended twice"
            self._results[tid] = result
            self._emit(TaskFinished(result, result.end or 0.0))
            if result.status is Status.SUCCEEDED:
                for dependent in self._dependents[tid]:
                    self._pending[dependent] -= 1
                    if self._pending[dependent] == 0 and dependent not in self._results:
                        self._make_ready(dependent)
                continue
            root = result.blocked_by or tid
            for dependent in self._dependents[tid]:
                if dependent in self._results or dependent in queued:
                    continue
                queued.add(dependent)
                if result.status is Status.SKIPPED:
                    why = f"dependency {tid!r} was skipped ({root!r} {_verb(self._results[root].status)})"
                else:
                    why = f"dependency {tid!r} {_verb(result.status)}"
                work.append(self._plain_result(dependent, Status.SKIPPED, why, blocked_by=root))
        self._check_done()

    def _check_done(self) -> None:
        finished = len(self._results) == len(self._tasks) and (self._closed or not self._open)
        if finished and self._done is not None and not self._done.done():
            self._done.set_result(None)

    async def _drain(self) -> None:
        """Wait for cancelled attempts to finish stopping (their backends kill and reap)."""
        while self._running:
            await asyncio.gather(*(r.handle for r in list(self._running.values())), return_exceptions=True)

    def _report(self, started_at: float) -> RunReport:
        results = {tid: self._results[tid] for tid in self._tasks}
        counts = {status: 0 for status in Status}
        for result in results.values():
            counts[result.status] += 1
        wall = self._now()
        busy = sum(self._busy.values())
        measured = {tid: self._busy[tid] for tid in results}
        chain, chain_time = critical_path(Graph(self._tasks.values()), measured)
        slowest = sorted(
            ((tid, r.busy_time) for tid, r in results.items() if r.attempts), key=lambda item: -item[1]
        )[:5]
        totals: dict[str, float] = {}
        for result in results.values():
            for key, value in result.data.items():
                if isinstance(value, int | float) and not isinstance(value, bool):
                    totals[key] = totals.get(key, 0) + value
        summary = RunSummary(
            total=len(results),
            counts=counts,
            flaky=sum(1 for r in results.values() if r.flaky),
            wall_time=wall,
            busy_time=busy,
            max_workers=self._max_workers,
            achieved_parallelism=busy / wall if wall > 0 else 0.0,
            max_concurrency=self._max_concurrency,
            critical_path=tuple(chain),
            critical_path_time=chain_time,
            lower_bound=max(chain_time, busy / self._max_workers),
            slowest=tuple(slowest),
            data_totals=totals,
            started_at=started_at,
            cancelled_by=self._stopping,
            halted_by=self._halted_by,
        )
        return RunReport(results, summary)


def _stopped_outcome(backend: Backend | None, attempt: Attempt) -> Outcome:
    """What a stopped attempt had done so far (its output files), if its backend kept it.

    ``stopped_outcome`` is an optional backend hook: the command backend has it.
    """
    hook = getattr(backend, "stopped_outcome", None)
    partial = hook(attempt) if hook is not None else None
    return partial if isinstance(partial, Outcome) else Outcome(ok=False)


def _verb(status: Status) -> str:
    return {
        Status.FAILED: "failed",
        Status.TIMED_OUT: "timed out",
        Status.CRASHED: "crashed",
        Status.CANCELLED: "was cancelled",
        Status.SKIPPED: "was skipped",
        Status.SUCCEEDED: "succeeded",
    }[status]
