"""Exact schedules on the fake clock: every time asserted here is a precise virtual time."""

from __future__ import annotations

import pytest

import phalanx
from phalanx import RetryPolicy, Status, Task, TaskStarted
from phalanx.ordering import SubmissionOrder
from phalanx.plan import get_execution_plan
from scheduling import Recorder, run_fake, work


def test_a_task_starts_the_moment_its_own_dependencies_succeed() -> None:
    # A (5 s) -> C and B (1 s) -> D (1 s) on 2 slots: D must not wait for A's "level".
    report = run_fake(
        [
            Task("A", work(5)),
            Task("B", work(1)),
            Task("C", work(1), deps=["A"]),
            Task("D", work(1), deps=["B"]),
        ],
        max_workers=2,
    )
    assert report["D"].start == 1.0
    assert report["D"].end == 2.0
    assert report["C"].end == 6.0
    assert report.summary.wall_time == 6.0


def test_higher_priority_starts_first() -> None:
    recorder = Recorder()
    run_fake(
        [
            Task("low", work(1), priority="low"),
            Task("normal", work(1)),
            Task("high", work(1), priority="high"),
            Task("seven", work(1), priority=7),
        ],
        max_workers=1,
        recorder=recorder,
    )
    assert [e.task_id for e in recorder.of(TaskStarted)] == ["high", "seven", "normal", "low"]


def test_critical_path_head_starts_before_short_independent_task() -> None:
    recorder = Recorder()
    report = run_fake(
        [
            Task("short", work(1)),
            Task("head", work(1)),
            Task("tail", work(5), deps=["head"]),
        ],
        max_workers=1,
        recorder=recorder,
    )
    # Without costs every task weighs 1: the chain's head (path 2) goes first, then the
    # tie between "short" and "tail" (path 1 each) falls to submission order.
    assert [e.task_id for e in recorder.of(TaskStarted)] == ["head", "short", "tail"]
    assert report.summary.wall_time == 7.0


def test_declared_costs_order_the_critical_path() -> None:
    # Same depth, but the declared costs make "slow" the critical path.
    recorder = Recorder()
    run_fake(
        [
            Task("fast", work(1), cost=1),
            Task("slow", work(4), cost=4),
            Task("after-fast", work(1), deps=["fast"], cost=1),
            Task("after-slow", work(1), deps=["slow"], cost=1),
        ],
        max_workers=1,
        recorder=recorder,
    )
    assert next(e.task_id for e in recorder.of(TaskStarted)) == "slow"


def test_submission_order_policy_is_fifo() -> None:
    from phalanx.fakeclock import run_virtual
    from phalanx.runner import run_async

    recorder = Recorder()
    tasks = [Task("short", work(1)), Task("head", work(1)), Task("tail", work(5), deps=["head"])]
    run_virtual(run_async(tasks, max_workers=1, backend="inline", sinks=[recorder], policy=SubmissionOrder()))
    assert [e.task_id for e in recorder.of(TaskStarted)] == ["short", "head", "tail"]


def test_wide_task_gets_its_reservation_and_short_tasks_backfill() -> None:
    # 4 slots. Three high-priority 1-slot tasks run until t=2. The wide task needs all 4
    # slots; long low-priority tasks must not take the free slot (they would delay it to
    # t=10), but a short one that ends before t=2 may.
    tasks = [Task(f"a{i}", work(2), priority="high", cost=2) for i in range(3)]
    tasks.append(Task("wide", work(1), resources={"slots": 4}, cost=1))
    tasks += [Task(f"long{i}", work(10), priority="low", cost=10) for i in range(4)]
    tasks.append(Task("short", work(1), priority="low", cost=1))
    report = run_fake(tasks, max_workers=4)
    assert report["wide"].start == 2.0
    assert report["short"].start == 0.0
    assert all(report[f"long{i}"].start == 3.0 for i in range(4))


def test_wide_task_is_not_starved_without_cost_estimates() -> None:
    # With no estimates nothing may take what the blocked wide task still needs.
    tasks = [Task(f"a{i}", work(2), priority="high") for i in range(3)]
    tasks.append(Task("wide", work(1), resources={"slots": 4}))
    tasks += [Task(f"b{i}", work(1), priority="low") for i in range(8)]
    report = run_fake(tasks, max_workers=4)
    assert report["wide"].start == 2.0
    # Nothing low starts before "wide" ends at 3.0; then the b's (equal priority and path)
    # start in submission order, four at a time on the 4 slots.
    assert [report[f"b{i}"].start for i in range(8)] == [3.0] * 4 + [4.0] * 4


def test_named_resources_limit_concurrency() -> None:
    tasks = [Task(f"db{i}", work(1), resources={"db": 1}) for i in range(3)]
    tasks.append(Task("free", work(1)))
    report = run_fake(tasks, max_workers=4, resources={"db": 1})
    # One "db" at a time; equal priority and path (1 each), so submission order decides.
    assert [report[f"db{i}"].start for i in range(3)] == [0.0, 1.0, 2.0]
    assert report["free"].start == 0.0


def test_a_task_in_backoff_holds_no_slot_and_fail_then_pass_is_flaky() -> None:
    retry = RetryPolicy(count=1, backoff="constant", initial=5)
    report = run_fake(
        [Task("flaky", work(1, fail_attempts=[1]), retry=retry), Task("other", work(2))],
        max_workers=1,
    )
    assert report["other"].start == 1.0  # ran while "flaky" waited out its backoff
    flaky = report["flaky"]
    assert flaky.status is Status.SUCCEEDED and flaky.flaky and flaky.attempts == 2
    assert flaky.end == 7.0  # retried at 1 + 5 = 6, took 1
    assert report.summary.flaky == 1
    assert report.ok and report.exit_code == 0


def test_retries_exhausted_fail_with_the_last_reason() -> None:
    recorder = Recorder()
    report = run_fake(
        [Task("bad", work(1, fail_attempts=[1, 2, 3]), retry=RetryPolicy(count=2))], max_workers=1, recorder=recorder
    )
    assert report["bad"].status is Status.FAILED
    assert report["bad"].attempts == 3
    assert report["bad"].reason == "RuntimeError: attempt 3 failed"
    assert report.exit_code == 1


def test_exponential_backoff_doubles_up_to_max() -> None:
    policy = RetryPolicy(count=5, backoff="exponential", initial=1, max=5)
    assert [policy.delay(n) for n in range(1, 6)] == [1, 2, 4, 5, 5]


def test_timeout_on_fake_clock() -> None:
    report = run_fake([Task("slow", work(10), timeout="2s"), Task("after", work(1), deps=["slow"])], max_workers=1)
    assert report["slow"].status is Status.TIMED_OUT
    assert report["slow"].end == 2.0
    assert report["slow"].reason == "timed out after 2.00s"
    assert report["after"].status is Status.SKIPPED
    assert report["after"].reason == "dependency 'slow' timed out"


def test_keep_going_skips_only_transitive_dependents_naming_the_failure() -> None:
    report = run_fake(
        [
            Task("black", work(1, fail_attempts=[1])),
            Task("mypy", work(1), deps=["black"]),
            Task("report", work(1), deps=["mypy"]),
            Task("ruff", work(3)),
        ],
        max_workers=2,
    )
    assert report["black"].status is Status.FAILED
    assert report["mypy"].status is Status.SKIPPED
    assert report["mypy"].reason == "dependency 'black' failed"
    assert report["report"].reason == "dependency 'mypy' was skipped ('black' failed)"
    assert report["report"].blocked_by == "black"
    assert report["ruff"].status is Status.SUCCEEDED


def test_fail_fast_cancels_running_and_ready_tasks() -> None:
    recorder = Recorder()
    report = run_fake(
        [
            Task("fails", work(1, fail_attempts=[1])),
            Task("long", work(10)),
            Task("queued", work(1)),
            Task("after-long", work(1), deps=["long"]),
        ],
        max_workers=2,
        fail_fast=True,
        recorder=recorder,
    )
    assert report["fails"].status is Status.FAILED
    assert report["long"].status is Status.CANCELLED and report["long"].end == 1.0
    assert report["queued"].status is Status.CANCELLED
    assert report["after-long"].status is Status.SKIPPED
    assert report.summary.cancelled_by is phalanx.CancelReason.FAIL_FAST
    assert report.summary.wall_time == 1.0
    # Every task weighs 1 (no costs): "long" heads a chain of two (path 2) so it starts
    # first; "fails" and "queued" tie on path 1 and "fails" was submitted first. Nothing
    # else starts: "fails" ends the run at 1.0.
    assert [e.task_id for e in recorder.of(TaskStarted)] == ["long", "fails"]


def test_result_data_numbers_are_summed() -> None:
    report = run_fake(
        [
            Task("a", work(1, returns={"tests": 10, "failures": 1, "name": "x"})),
            Task("b", work(1, returns={"tests": 5, "failures": 0, "ok": True})),
        ],
        max_workers=2,
    )
    assert dict(report.summary.data_totals) == {"tests": 15, "failures": 1}


def test_summary_statistics() -> None:
    report = run_fake(
        [Task("a", work(4)), Task("b", work(2)), Task("c", work(2), deps=["b"])], max_workers=2
    )
    summary = report.summary
    assert summary.wall_time == 4.0
    assert summary.busy_time == 8.0
    assert summary.achieved_parallelism == 2.0
    assert summary.lower_bound == 4.0
    assert summary.max_concurrency == 2
    assert summary.slowest[0] == ("a", 4.0)


def test_plan_start_order_matches_the_scheduler() -> None:
    plan = get_execution_plan(
        [Task("short", "true", cost=1), Task("head", "true", cost=1), Task("tail", "true", deps=["head"], cost=5)],
        max_workers=1,
    )
    assert plan.start_order == ("head", "tail", "short")
    assert plan.critical_path == ("head", "tail")
    assert plan.critical_path_length == 6.0
    assert plan.estimated_makespan == 7.0
    assert plan.levels == (("short", "head"), ("tail",))


def test_progress_callback_sees_huskycat_statuses() -> None:
    import phalanx

    seen: list[tuple[str, str]] = []
    report = phalanx.run(
        {"black": lambda: 1, "mypy": lambda: 2},
        deps={"mypy": ["black"]},
        max_workers=2,
        progress_callback=lambda name, status: seen.append((name, status)),
    )
    assert report.ok
    assert seen == [("black", "running"), ("black", "succeeded"), ("mypy", "running"), ("mypy", "succeeded")]
    assert report["mypy"].value == 2


def _run_with(tasks: list[Task], **options: object) -> phalanx.RunReport:
    from phalanx.fakeclock import run_virtual
    from phalanx.runner import run_async

    return run_virtual(run_async(tasks, backend="inline", **options))  # type: ignore[arg-type]


def test_halt_soon_lets_running_tasks_finish_and_starts_nothing_new() -> None:
    tasks = [Task("fails", work(1, fail_attempts=[1])), Task("long", work(5)), Task("queued", work(1))]
    report = _run_with(
        tasks, max_workers=2, halt=lambda result: "soon" if result.status is Status.FAILED else None
    )
    assert report["long"].status is Status.SUCCEEDED and report["long"].end == 5.0
    assert report["queued"].status is Status.CANCELLED
    assert report.summary.halted_by == "fails"
    assert report.summary.cancelled_by is phalanx.CancelReason.HALT


def test_halt_now_on_success_cancels_the_rest() -> None:
    tasks = [Task("quick", work(1)), Task("long", work(5)), Task("queued", work(1))]
    report = _run_with(tasks, max_workers=2, halt=lambda result: "now" if result.ok else None)
    assert report["quick"].ok
    assert report["long"].status is Status.CANCELLED and report["long"].end == 1.0
    assert report["queued"].status is Status.CANCELLED
    assert report.summary.wall_time == 1.0


def test_start_interval_spaces_starts() -> None:
    tasks = [Task(f"t{i}", work(10)) for i in range(4)]
    report = _run_with(tasks, max_workers=4, start_interval=0.5)
    assert [report[f"t{i}"].start for i in range(4)] == [0.0, 0.5, 1.0, 1.5]


def test_timeout_rule_is_asked_at_each_attempt_start() -> None:
    class Rule:
        def __init__(self) -> None:
            self.asked: list[str] = []

        def limit(self, task: Task) -> float | None:
            self.asked.append(task.id)
            return 2.0 if task.id == "slow" else None

        def observe(self, result: phalanx.TaskResult) -> None:
            return None

    rule = Rule()
    report = _run_with([Task("slow", work(10)), Task("ok", work(3))], max_workers=2, timeout_for=rule)
    assert report["slow"].status is Status.TIMED_OUT and report["slow"].end == 2.0
    assert report["slow"].reason == "timed out after 2.00s"
    assert report["ok"].ok
    # Asked at each start, and again for "ok" (still running) when "slow" timed out at 2.0.
    assert rule.asked == ["slow", "ok", "ok"]


def test_a_running_attempts_limit_follows_the_rule_as_tasks_end() -> None:
    # The limit is half the longest runtime seen so far (none: no limit). "long" starts at 0
    # with no limit; when "quick" ends at 1.0 the limit becomes 0.5 s, already passed for
    # "long" (running 1 s): it is stopped at once, at exactly 1.0. "later" starts at 1.0
    # under a 0.5 s limit and is stopped at 1.5.
    class HalfTheLongest:
        longest: float | None = None

        def limit(self, task: Task) -> float | None:
            return None if self.longest is None or task.id == "quick" else self.longest / 2

        def observe(self, result: phalanx.TaskResult) -> None:
            if result.ok:
                self.longest = max(self.longest or 0.0, result.duration)

    tasks = [Task("quick", work(1)), Task("long", work(10)), Task("later", work(3), deps=["quick"])]
    report = _run_with(tasks, max_workers=3, timeout_for=HalfTheLongest())
    assert report["quick"].ok
    assert report["long"].status is Status.TIMED_OUT and report["long"].end == 1.0
    assert report["later"].status is Status.TIMED_OUT
    assert (report["later"].start, report["later"].end) == (1.0, 1.5)


def test_the_halt_rule_is_asked_about_every_task_the_last_one_included() -> None:
    asked: list[str] = []

    def rule(result: phalanx.TaskResult) -> None:
        asked.append(result.task_id)

    tasks = [Task("a", work(1)), Task("b", work(2), deps=["a"]), Task("c", work(4, fail_attempts=[1]))]
    report = _run_with(tasks, max_workers=2, halt=rule)
    assert asked == ["a", "b", "c"]  # in the order they ended: c, the last, fails at 4.0
    assert report.summary.cancelled_by is None  # nothing was left to stop


def test_retries_wait_out_their_backoff_on_the_schedulers_timer() -> None:
    retry = RetryPolicy(count=2, backoff="constant", initial=1.5)
    report = _run_with([Task("flaky", work(1, fail_attempts=[1, 2]), retry=retry)], max_workers=1)
    # 0-1 fails, wait 1.5, 2.5-3.5 fails, wait 1.5, 5-6 succeeds.
    assert report["flaky"].ok and report["flaky"].attempts == 3 and report["flaky"].end == 6.0


def test_open_ended_run_takes_submissions_until_closed() -> None:
    import asyncio
    import tempfile
    from pathlib import Path

    from phalanx.backends.inline import InlineBackend
    from phalanx.fakeclock import run_virtual
    from phalanx.scheduler import Scheduler

    backend = InlineBackend()

    async def main() -> phalanx.RunReport:
        with tempfile.TemporaryDirectory() as run_dir:
            scheduler = Scheduler(
                phalanx.Graph([Task("first", work(1))]),
                backend_for=lambda task: backend,
                max_workers=2,
                run_dir=Path(run_dir),
                open_ended=True,
                keep_results=True,
            )
            running = asyncio.ensure_future(scheduler.run())
            await asyncio.sleep(2)  # "first" has finished
            scheduler.submit(Task("after-first", work(1), deps=["first"]))
            scheduler.submit(Task("bad", work(1, fail_attempts=[1])))
            scheduler.submit(Task("after-bad", work(1), deps=["bad"]))
            await asyncio.sleep(2)
            scheduler.submit(Task("late-after-bad", work(1), deps=["bad"]))
            with pytest.raises(phalanx.DuplicateTaskError):
                scheduler.submit(Task("first", work(1)))
            with pytest.raises(phalanx.UnknownDependencyError):
                scheduler.submit(Task("orphan", work(1), deps=["nope"]))
            assert not running.done()  # open until closed, even with nothing left to run
            scheduler.close()
            return await running

    report = run_virtual(main())
    assert report["after-first"].start == 2.0 and report["after-first"].ok
    assert report["bad"].status is Status.FAILED
    assert report["after-bad"].status is Status.SKIPPED
    assert report["late-after-bad"].status is Status.SKIPPED
    assert report["late-after-bad"].reason == "dependency 'bad' failed"
    assert list(report.results) == ["first", "after-first", "bad", "after-bad", "late-after-bad"]
