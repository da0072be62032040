"""Rate limits in the scheduler, on the fake clock: exact pacing, keys apart, shared pauses,
adaptive windows, and rate-limited tasks waiting without holding a slot."""

from __future__ import annotations

import asyncio
import random
from collections import deque
from collections.abc import Callable, Coroutine, Iterable
from typing import Any

import pytest

import phalanx
from phalanx import ConcurrencyChanged, RateLimit, RateLimitPaused, RetryAfter, RetryPolicy, Task, TaskStarted
from phalanx.fakeclock import run_virtual
from phalanx.runner import run_async

EPSILON = 1e-9


def instant() -> Callable[[], Coroutine[Any, Any, None]]:
    async def action() -> None:
        await asyncio.sleep(0)

    return action


def starts(events: list[Any], key: str | None = None, tasks: dict[str, Task] | None = None) -> list[float]:
    times = [e.at for e in events if isinstance(e, TaskStarted)
             and (key is None or tasks is None or tasks[e.task_id].limiter_key == key)]
    return sorted(times)


def most_in_window(times: Iterable[float], period: float, cost: Callable[[int], float] = lambda i: 1.0) -> float:
    """The largest total in any half-open window (t - period, t] ending at a start."""
    window: deque[tuple[float, float]] = deque()
    total = best = 0.0
    for index, at in enumerate(times):
        window.append((at, cost(index)))
        total += cost(index)
        while window and window[0][0] <= at - period + EPSILON:
            total -= window.popleft()[1]
        best = max(best, total)
    return best


def run(tasks: list[Task], **options: Any) -> list[Any]:
    events: list[Any] = []
    run_virtual(run_async(tasks, backend="inline", on_event=events.append, **options))
    return events


def test_fifty_per_second_for_ten_seconds_never_exceeds_the_window() -> None:
    tasks = [Task(f"t{i}", instant(), limiter="api") for i in range(600)]
    events = run(tasks, max_workers=100, rate_limits={"api": "50/s"})
    times = starts(events)
    within = [t for t in times if t < 10.0 - EPSILON]
    assert most_in_window(times, 1.0) <= 50
    assert abs(len(within) - 500) <= 10  # within 2% of 500
    assert times[0] == 0.0 and times[1] == pytest.approx(0.02)  # a fresh limiter does not burst


def test_a_fresh_limiter_sends_one_request_not_a_burst() -> None:
    tasks = [Task(f"t{i}", instant(), limiter="api") for i in range(20)]
    events = run(tasks, max_workers=20, rate_limits={"api": "10/s"})
    times = starts(events)
    assert times.count(0.0) == 1
    assert times[1] == pytest.approx(0.1)


def test_burst_allows_that_many_at_once_then_paces() -> None:
    tasks = [Task(f"t{i}", instant(), limiter="api") for i in range(12)]
    events = run(tasks, max_workers=20, rate_limits={"api": RateLimit("10/s", burst=5)})
    times = starts(events)
    assert times[:5] == [0.0] * 5
    assert times[5] > 0
    assert most_in_window(times, 1.0) <= 10


def test_weighted_limit_charges_each_task_its_tokens() -> None:
    # Requests of 1-300 tokens against 60,000 tokens a minute, for three simulated minutes.
    rng = random.Random(7)
    tasks = [Task(f"t{i}", instant(), limiter="tpm", tokens=rng.randint(1, 300)) for i in range(1300)]
    events = run(tasks, max_workers=50, rate_limits={"tpm": RateLimit("60000/min", weighted=True)})
    by_id = {task.id: task for task in tasks}
    started = sorted((e.at, by_id[e.task_id].tokens) for e in events if isinstance(e, TaskStarted))
    times = [at for at, _ in started]
    assert most_in_window(times, 60.0, lambda i: started[i][1]) <= 60_000
    sent = sum(tokens for at, tokens in started if at < 180 - EPSILON)
    assert abs(sent - 180_000) <= 3600  # within 2% of what the limit allows
    assert times[:2] == [0.0, pytest.approx(started[0][1] * 60 / 60_000)]  # no burst at the start


def test_two_keys_limit_independently() -> None:
    tasks = [Task(f"{key}{i}", instant(), limiter="api", limiter_key=key) for i in range(100) for key in "ab"]
    events = run(tasks, max_workers=10, rate_limits={"api": "10/s"})
    by_id = {task.id: task for task in tasks}
    for key in "ab":
        times = starts(events, key, by_id)
        assert most_in_window(times, 1.0) <= 10
        assert times[-1] == pytest.approx(9.9)  # each key at its full rate: 100 in 10 s


def test_a_task_waiting_for_its_limit_holds_no_slot() -> None:
    slow = [Task(f"slow{i}", instant(), limiter="slow") for i in range(5)]
    free = [Task(f"free{i}", instant()) for i in range(50)]
    events = run([*slow, *free], max_workers=1, rate_limits={"slow": "1/10s"})
    finished_free = [e.at for e in events if isinstance(e, phalanx.TaskFinished) and e.task_id.startswith("free")]
    assert max(finished_free) == 0.0  # the one slot served the unlimited tasks while the limited ones waited
    assert starts(events)[-1] == pytest.approx(40.0)


def test_retry_after_pauses_every_task_on_the_key() -> None:
    told: list[float] = []

    def throttled_once(name: str) -> Callable[[], Coroutine[Any, Any, str]]:
        calls = 0

        async def action() -> str:
            nonlocal calls
            calls += 1
            await asyncio.sleep(0.5)
            if name == "t3" and calls == 1:
                told.append(asyncio.get_running_loop().time())
                raise RetryAfter(2)
            return name

        return action

    tasks = [Task(f"t{i}", throttled_once(f"t{i}"), limiter="api", limiter_key="k", retry=RetryPolicy(count=2))
             for i in range(20)]
    other = [Task(f"o{i}", instant(), limiter="api", limiter_key="other") for i in range(20)]
    events = run([*tasks, *other], max_workers=10, rate_limits={"api": "20/s"})
    pauses = [e for e in events if isinstance(e, RateLimitPaused)]
    assert [(p.key, p.seconds) for p in pauses] == [("k", 2.0)]
    pause_start = pauses[0].at
    by_id = {task.id: task for task in [*tasks, *other]}
    k_starts = starts(events, "k", by_id)
    assert not [t for t in k_starts if pause_start + EPSILON < t < pause_start + 2 - EPSILON]
    other_starts = starts(events, "other", by_id)
    assert other_starts[-1] < pause_start + 2  # the other key was never paused
    results = [e.result for e in events if isinstance(e, phalanx.TaskFinished)]
    assert all(r.ok for r in results)
    retried = next(r for r in results if r.task_id == "t3")
    assert retried.attempts == 2 and retried.start == pytest.approx(0.15)


def test_retry_after_above_the_cap_fails_saying_so() -> None:
    async def too_long() -> None:
        raise RetryAfter(3600)

    tasks = [Task("t", too_long, limiter="api", retry=RetryPolicy(count=3, max_retry_after=60))]
    events = run(tasks, max_workers=1, rate_limits={"api": "1/s"})
    result = next(e.result for e in events if isinstance(e, phalanx.TaskFinished))
    assert result.status is phalanx.Status.FAILED and result.attempts == 1
    assert "not retried: asked to retry after 1h" in (result.reason or "")
    assert "more than max_retry_after (1m00s)" in (result.reason or "")


def test_adaptive_window_halves_on_throttling_and_grows_back() -> None:
    calls = 0

    async def call() -> None:
        nonlocal calls
        calls += 1
        await asyncio.sleep(1)
        if 20 <= calls < 24:
            raise RetryAfter(0)

    tasks = [Task(f"t{i}", call, limiter="api", retry=RetryPolicy(count=5)) for i in range(200)]
    limit = RateLimit("1000/s", adaptive=True)
    events = run(tasks, max_workers=8, rate_limits={"api": limit})
    windows = [e.window for e in events if isinstance(e, ConcurrencyChanged)]
    assert windows[0] == 4  # one halving for the whole round that got throttled
    assert min(windows) == 4 and windows[-1] == 8  # and back up to the ceiling
    # Never more attempts at once than the window allowed at their start.
    running = 0
    window = 8
    for event in events:
        if isinstance(event, ConcurrencyChanged):
            window = event.window
        elif isinstance(event, TaskStarted):
            running += 1
            assert running <= window
        elif isinstance(event, phalanx.TaskFinished | phalanx.TaskRetrying):
            running -= 1


def test_unknown_rate_limit_is_refused_before_anything_runs() -> None:
    with pytest.raises(phalanx.ConfigError, match="unknown rate limit 'nope'"):
        run([Task("t", instant(), limiter="nope")], rate_limits={"api": "1/s"})
    with pytest.raises(phalanx.ConfigError, match="unknown rate limit 'api'"):
        run([Task("t", instant(), limiter="api")])


def test_a_cost_above_the_limit_is_refused_naming_the_task() -> None:
    with pytest.raises(phalanx.ConfigError, match=r"task 't': costs 500, more than rate limit 'tpm'"):
        run([Task("t", instant(), limiter="tpm", tokens=500)],
            rate_limits={"tpm": RateLimit("100/min", weighted=True)})


def test_fail_fast_cancels_tasks_parked_by_their_limit() -> None:
    async def boom() -> None:
        raise ValueError("no")

    tasks = [Task("bad", boom), *(Task(f"t{i}", instant(), limiter="api") for i in range(10))]
    events = run(tasks, max_workers=4, rate_limits={"api": "1/s"}, fail_fast=True)
    results = {e.result.task_id: e.result for e in events if isinstance(e, phalanx.TaskFinished)}
    assert len(results) == 11
    assert sum(r.status is phalanx.Status.CANCELLED for r in results.values()) >= 9
