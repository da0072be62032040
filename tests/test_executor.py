"""`phalanx.map` and `Executor`: the API around the backends (the conformance suite,
tests/test_conformance.py, covers what every backend must do).

Callables defined here reach worker processes by value: this module registers itself with
``cloudpickle.register_pickle_by_value``, so a worker never imports it (it could not:
``tests/`` is on the test process's path only). Synchronisation is by marker files with
bounded waits (`conformance_support`); sleeps appear only inside items, as work.
"""

from __future__ import annotations

import concurrent.futures
import os
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import cloudpickle
import psutil
import pytest

import phalanx
from conformance_support import (
    BOUND,
    descendants,
    job,
    mark,
    started_pid,
    wait_for,
    wait_gone,
    wait_no_descendants,
)
from phalanx.backends.processes import WorkerInitError

cloudpickle.register_pickle_by_value(sys.modules[__name__])


@pytest.fixture
def flags(tmp_path: Path) -> Any:
    yield tmp_path
    mark(tmp_path / "release")


@pytest.fixture
def no_leftovers(flags: Path) -> Any:
    before = set(descendants())
    yield
    assert not wait_no_descendants(before), "worker processes left behind"


def exit_every_50th(x: int) -> int:
    if x % 50 == 49:
        os._exit(3)
    return x * x


def pid_of(_: object) -> int:
    return os.getpid()


# ---------------------------------------------------------------------------- acceptance


@pytest.mark.usefixtures("no_leftovers")
def test_a_thousand_items_with_every_fiftieth_exiting() -> None:
    results = list(phalanx.map(exit_every_50th, range(1000), max_workers=2, as_results=True))
    assert [r.task_id for r in results] == [str(i) for i in range(1000)]  # in order
    assert Counter(r.status.value for r in results) == {"succeeded": 980, "crashed": 20}
    for i, result in enumerate(results):
        if i % 50 == 49:
            assert result.status is phalanx.Status.CRASHED
            assert f"item {i}: the worker process exited with code 3" in result.reason
            assert result.exit_code == 3 and result.value is None
        else:
            assert result.ok and result.value == i * i


@pytest.mark.usefixtures("no_leftovers")
def test_isolated_items_output_survives_a_piped_stdout(tmp_path: Path) -> None:
    # A forked child leaves with os._exit: what it printed into a buffered pipe must be flushed.
    script = tmp_path / "printer.py"
    script.write_text(
        "import phalanx\n"
        "def shout(x):\n"
        "    print(f'item {x}')\n"
        "    return x\n"
        "if __name__ == '__main__':\n"
        "    print(sum(phalanx.map(shout, range(3), isolate=True, max_workers=1)), flush=True)\n"
    )
    environment = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=environment, timeout=60)
    assert result.returncode == 0, result.stderr
    assert sorted(line for line in result.stdout.splitlines() if line.startswith("item")) == [
        "item 0", "item 1", "item 2"]


def test_map_raises_where_the_value_would_be() -> None:
    seen = []
    with pytest.raises(phalanx.WorkerCrashed, match="item 49: the worker process exited with code 3") as caught:
        for value in phalanx.map(exit_every_50th, range(100), max_workers=2):
            seen.append(value)
    assert seen == [x * x for x in range(49)]
    assert caught.value.result.status is phalanx.Status.CRASHED


def test_the_fast_path_sends_few_batches_and_keeps_order() -> None:
    with phalanx.Executor(2) as executor:
        values = list(executor.map(lambda x: x + 1, range(100_000)))
        assert values == list(range(1, 100_001))
        # Speed-independent bounds only (see `fewest_batches`); that batches grow for quick
        # items is asserted exactly by test_batch_sizes_follow_the_measured_time.
        assert fewest_batches(100_000, 2) <= executor.stats()["batches"] <= 100_000
        assert executor.progress()["counts"]["succeeded"] == 100_000


# ---------------------------------------------------------------------------- futures


def test_submit_gives_futures_and_as_completed_yields_them() -> None:
    with phalanx.Executor(2) as executor:
        futures = [executor.submit(pow, 2, n) for n in range(10)]
        assert all(isinstance(f, concurrent.futures.Future) for f in futures)
        assert sorted(f.result(timeout=BOUND) for f in executor.as_completed(futures)) == [2**n for n in range(10)]
        kw = executor.submit(sorted, [3, 1, 2], reverse=True)
        assert kw.result(timeout=BOUND) == [3, 2, 1]
        failing = executor.submit(job, ["raise", "nope"])
        with pytest.raises(ValueError, match="nope"):
            failing.result(timeout=BOUND)
        assert isinstance(failing.exception().__cause__, phalanx.RemoteTraceback)  # type: ignore[union-attr]
        progress = executor.progress()
    assert progress["completed"] == progress["total"] == 12
    assert progress["counts"]["succeeded"] == 11 and progress["counts"]["failed"] == 1
    assert progress["running"] == 0


@pytest.mark.parametrize("backend", ["threads", "processes"])
def test_system_exit_in_a_task_is_its_failure(backend: Any) -> None:
    with phalanx.Executor(1, backend=backend) as executor:
        with pytest.raises(SystemExit) as caught:
            executor.submit(sys.exit, 3).result(timeout=BOUND)
        assert caught.value.code == 3
        (result,) = executor.map(sys.exit, [4], as_results=True)
        assert result.status is phalanx.Status.FAILED and result.error.type == "SystemExit"
        assert executor.submit(abs, -1).result(timeout=BOUND) == 1  # and the worker goes on


def test_lambdas_and_closures_work() -> None:
    offset = 10
    add = lambda x: x + offset  # noqa: E731

    def scale(x: int) -> int:
        return x * offset

    assert list(phalanx.map(add, range(5), max_workers=2)) == [10, 11, 12, 13, 14]
    with phalanx.Executor(2) as executor:
        assert executor.submit(scale, 4).result(timeout=BOUND) == 40
        assert list(executor.map(lambda a, b: a * b, [1, 2, 3], [4, 5, 6])) == [4, 10, 18]


def test_progress_and_active_tasks_show_what_runs(flags: Path) -> None:
    with phalanx.Executor(2) as executor:
        future = executor.submit(job, ["block", str(flags), "a"])
        pid = started_pid(flags, "a")
        (task,) = executor.active_tasks()
        assert task["pid"] == pid and task["worker_pid"] == pid and pid in executor.worker_pids()
        assert task["running_for"] >= 0 and task["task_id"].startswith("call-")
        assert executor.is_running
        assert executor.progress() == {
            "completed": 0, "total": 1, "running": 1, "counts": dict.fromkeys(
                ["succeeded", "failed", "timed_out", "crashed", "skipped", "cancelled"], 0),
        }
        mark(flags / "release")
        assert future.result(timeout=BOUND) == "a"
    assert not executor.is_running


def test_active_tasks_name_the_item_a_map_batch_runs(flags: Path) -> None:
    with phalanx.Executor(1) as executor:
        specs = [["value", 0], ["value", 1], ["block", str(flags), "x"], ["value", 3]]
        iterator = executor.map(job, specs, batch_size=4)
        pid = started_pid(flags, "x")
        (task,) = executor.active_tasks()
        assert task["item"] == 2 and task["pid"] == pid and task["task_id"].endswith("batch-1")
        mark(flags / "release")
        assert list(iterator) == [0, 2, "x", 6]


def test_warm_up_starts_every_worker_before_any_task() -> None:
    with phalanx.Executor(3) as executor:
        assert not executor.is_warmed_up and executor.worker_pids() == []
        executor.warm_up()
        assert executor.is_warmed_up
        pids = executor.worker_pids()
        assert len(set(pids)) == 3
        # Warm workers are reused: the same processes run everything.
        ran = set(executor.map(pid_of, range(50)))
        assert ran <= set(pids) and executor.stats()["workers_started"] == 3
    assert not wait_gone(pids)


def test_optimal_workers_says_why() -> None:
    cpus = len(os.sched_getaffinity(0))
    choice = phalanx.optimal_workers()
    assert choice.count == cpus and "CPU" in choice.reason
    threads = phalanx.optimal_workers("threads")
    assert threads.count == min(32, cpus + 4) and "I/O" in threads.reason
    with phalanx.Executor(backend="threads") as executor:
        assert executor.max_workers == threads.count


# ---------------------------------------------------------------------------- workers


def note_pid(directory: str) -> None:
    with open(os.path.join(directory, f"init-{os.getpid()}"), "x"):
        pass


def test_initializer_runs_once_per_worker(flags: Path) -> None:
    with phalanx.Executor(2, initializer=note_pid, initargs=(str(flags),), max_tasks_per_worker=10) as executor:
        pids = list(executor.map(pid_of, range(40), batch_size=5))
        started = executor.stats()["workers_started"]
    initialized = sorted(int(path.name.split("-")[1]) for path in flags.glob("init-*"))
    assert len(initialized) == started >= 4  # 40 items, at most 10 per worker: each ran it once
    assert set(pids) == set(initialized)
    assert max(Counter(pids).values()) <= 10


def test_threads_run_the_initializer_once(flags: Path) -> None:
    with phalanx.Executor(3, backend="threads", initializer=note_pid, initargs=(str(flags),)) as executor:
        assert list(executor.map(abs, [-1, -2])) == [1, 2]
    assert [path.name for path in flags.glob("init-*")] == [f"init-{os.getpid()}"]


def test_the_initializer_may_be_a_closure(flags: Path) -> None:
    directory = str(flags)
    with phalanx.Executor(1, initializer=lambda: note_pid(directory)) as executor:
        (pid,) = set(executor.map(pid_of, range(3)))
    assert [path.name for path in flags.glob("init-*")] == [f"init-{pid}"]


@pytest.mark.usefixtures("no_leftovers")
@pytest.mark.parametrize("method", ["spawn", "fork", "forkserver"])
def test_every_start_method_works(method: str) -> None:
    offset = 3
    with phalanx.Executor(1, start_method=method) as executor:
        assert list(executor.map(lambda x: x + offset, range(4))) == [3, 4, 5, 6]
        results = list(executor.map(exit_every_50th, [48, 49, 50], as_results=True))
        assert [r.status.value for r in results] == ["succeeded", "crashed", "succeeded"]


def failing_initializer() -> None:
    raise RuntimeError("cannot initialise")


def test_a_failing_initializer_is_reported() -> None:
    with phalanx.Executor(1, initializer=failing_initializer) as executor:
        with pytest.raises(WorkerInitError, match="RuntimeError: cannot initialise"):
            executor.warm_up()
        results = list(executor.map(abs, [1, 2], as_results=True))
    assert [r.status.value for r in results] == ["failed", "failed"]
    assert "cannot initialise" in (results[0].reason or "")


_hog: list[bytes] = []


def hog(megabytes: int) -> int:
    _hog.append(b"\x01" * (megabytes << 20))  # written, so resident
    return os.getpid()


def test_max_memory_per_worker_recycles_workers() -> None:
    with phalanx.Executor(1) as executor:
        executor.warm_up()
        (pid,) = executor.worker_pids()
        baseline = psutil.Process(pid).memory_info().rss
    with phalanx.Executor(1, max_memory_per_worker=baseline + (20 << 20)) as executor:
        small = list(executor.map(hog, [1, 1, 1], batch_size=1))
        assert len(set(small)) == 1  # under the limit: one worker for all
        big = list(executor.map(hog, [40, 40, 40], batch_size=1))
        assert len(set(big)) == 3 and small[0] == big[0]  # over it after each item: replaced


def test_submitted_calls_are_isolated_too() -> None:
    with phalanx.Executor(1, isolate=True) as executor:
        executor.warm_up()
        (worker,) = executor.worker_pids()
        pid, parent = executor.submit(job, ["pid"]).result(timeout=BOUND)
        assert parent == worker != pid


def test_a_worker_keeps_a_bounded_number_of_callables() -> None:
    # Each closure pickles differently: a worker forgets old ones (and gets them again).
    def constant(n: int) -> Any:
        return lambda: n

    functions = [constant(n) for n in range(80)]
    with phalanx.Executor(1) as executor:
        assert [executor.submit(f).result(timeout=BOUND) for f in functions] == list(range(80))
        assert [executor.submit(f).result(timeout=BOUND) for f in functions[:3]] == [0, 1, 2]
        assert executor.stats()["workers_started"] == 1


def test_isolate_runs_every_item_in_a_fresh_fork() -> None:
    def count(_: object) -> tuple[int, int]:
        _hog.append(b"")
        return len(_hog), os.getppid()

    results = list(phalanx.map(count, range(6), max_workers=1, isolate=True))
    assert [n for n, _ in results] == [1] * 6  # nothing leaks from one item to the next
    assert len({parent for _, parent in results}) == 1  # one warm worker forked them all


# ---------------------------------------------------------------------------- scheduler


def test_submit_task_uses_deps_priorities_and_retries(flags: Path) -> None:
    def append(name: str) -> str:
        with open(flags / "order", "a") as file:
            file.write(name + "\n")
        return name

    with phalanx.Executor(1) as executor:
        blocker = executor.submit_task(phalanx.Task("blocker", job, args=(["block", str(flags), "b"],)))
        started_pid(flags, "b")
        # Waiting behind the blocker: the high-priority one goes first, the dependent last.
        low = executor.submit_task(phalanx.Task("low", append, args=("low",), priority=-10))
        after = executor.submit_task(phalanx.Task("after", append, args=("after",), deps=("low",), priority=99))
        high = executor.submit_task(phalanx.Task("high", append, args=("high",), priority=10))
        mark(flags / "release")
        assert [f.result(timeout=BOUND) for f in (blocker, low, after, high)] == ["b", "low", "after", "high"]
    assert (flags / "order").read_text().split() == ["high", "low", "after"]


def test_submitted_tasks_hold_resources(flags: Path) -> None:
    with phalanx.Executor(2, resources={"gpu": 1}) as executor:
        first = executor.submit_task(phalanx.Task("a", job, args=(["block", str(flags), "a"],), resources={"gpu": 1}))
        second = executor.submit_task(phalanx.Task("b", job, args=(["value", 1],), resources={"gpu": 1}))
        started_pid(flags, "a")
        # A slot is free, but the one gpu is not: "b" waits (submissions are dispatched at once).
        assert [task["task_id"] for task in executor.active_tasks()] == ["a"]
        assert not second.done()
        mark(flags / "release")
        assert (first.result(timeout=BOUND), second.result(timeout=BOUND)) == ("a", 2)
    with phalanx.Executor(1) as executor, pytest.raises(phalanx.ResourceError):
        executor.submit_task(phalanx.Task("c", job, args=(["value", 1],), resources={"gpu": 1}))


def flaky(marker: str, how: str) -> str:
    if not os.path.exists(marker):
        mark(Path(marker))
        if how == "exit":
            os._exit(7)
        raise OSError("first attempt fails")
    return "second time lucky"


def test_submitted_tasks_retry(flags: Path) -> None:
    with phalanx.Executor(2, retries=1) as executor:
        raised = executor.submit(flaky, str(flags / "raise"), "raise")
        crashed = executor.submit(flaky, str(flags / "exit"), "exit")
        assert raised.result(timeout=BOUND) == crashed.result(timeout=BOUND) == "second time lucky"
    with phalanx.Executor(1) as executor:
        policy = phalanx.RetryPolicy(count=1)
        task = executor.submit_task(phalanx.Task("t", flaky, args=(str(flags / "task"), "raise"), retry=policy))
        assert task.result(timeout=BOUND) == "second time lucky"


def test_a_failed_dependency_skips_its_dependents() -> None:
    with phalanx.Executor(1) as executor:
        first = executor.submit_task(phalanx.Task("first", job, args=(["raise", "no"],)))
        second = executor.submit_task(phalanx.Task("second", job, args=(["value", 1],), deps=("first",)))
        with pytest.raises(ValueError):
            first.result(timeout=BOUND)
        with pytest.raises(phalanx.TaskError, match="dependency 'first' failed") as caught:
            second.result(timeout=BOUND)
        assert caught.value.result.status is phalanx.Status.SKIPPED


def test_map_items_retry(flags: Path) -> None:
    results = list(phalanx.map(lambda i: flaky(str(flags / f"item-{i}"), "exit" if i % 2 else "raise"), range(6),
                               max_workers=2, retries=1, as_results=True))
    assert [r.value for r in results] == ["second time lucky"] * 6
    assert all(r.attempts == 2 and r.flaky for r in results)
    # Without retries left, the failure is final.
    results = list(phalanx.map(lambda i: flaky(str(flags / f"again-{i}"), "raise"), range(3), max_workers=2,
                               as_results=True))
    assert [r.status.value for r in results] == ["failed"] * 3


# ---------------------------------------------------------------------------- cancellation


@pytest.mark.usefixtures("no_leftovers")
def test_cancelling_a_future_stops_its_running_task(flags: Path) -> None:
    with phalanx.Executor(1) as executor:
        future = executor.submit(job, ["block", str(flags), "a"])
        pid = started_pid(flags, "a")
        assert future.cancel()
        assert not wait_gone([pid])
        assert executor.submit(job, ["value", 2]).result(timeout=BOUND) == 4


@pytest.mark.usefixtures("no_leftovers")
def test_cancel_all_cancels_a_map(flags: Path) -> None:
    with phalanx.Executor(2) as executor:
        specs = [["block", str(flags), "a"], ["block", str(flags), "b"]] + [["value", i] for i in range(20)]
        results = executor.map(job, specs, batch_size=1, as_results=True)
        pids = [started_pid(flags, "a"), started_pid(flags, "b")]
        executor.cancel_all()
        statuses = Counter(r.status.value for r in results)
        assert not wait_gone(pids)
    assert statuses["cancelled"] >= 2 and set(statuses) <= {"cancelled", "succeeded"}
    assert sum(statuses.values()) <= len(specs)


@pytest.mark.usefixtures("no_leftovers")
def test_breaking_out_of_a_map_stops_only_that_map(flags: Path) -> None:
    with phalanx.Executor(2) as executor:
        other = executor.submit(job, ["block", str(flags), "other"])
        specs = [["value", 0], ["block", str(flags), "a"]] + [["value", i] for i in range(20)]
        for value in executor.map(job, specs, batch_size=1):
            assert value == 0
            victim = started_pid(flags, "a")
            break  # closes the map: its batches are cancelled, the other task goes on
        assert not wait_gone([victim])
        mark(flags / "release")
        assert other.result(timeout=BOUND) == "other"


# ---------------------------------------------------------------------------- pickling


class Stubborn(Exception):
    def __init__(self, a: int, b: int) -> None:
        super().__init__(f"{a}-{b}")


def raise_stubborn(_: object) -> None:
    raise Stubborn(1, 2)


def test_an_exception_that_does_not_unpickle_still_reports() -> None:
    (result,) = phalanx.map(raise_stubborn, [0], as_results=True)
    assert result.status is phalanx.Status.FAILED
    assert result.error is not None and result.error.type == "Stubborn" and result.error.message == "1-2"
    with pytest.raises(phalanx.TaskError, match="Stubborn: 1-2"):
        list(phalanx.map(raise_stubborn, [0]))


class Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no")


def raise_unprintable(_: object) -> None:
    raise Unprintable()


def test_an_exception_that_cannot_even_be_printed_still_reports() -> None:
    results = list(phalanx.map(raise_unprintable, [0, 1], as_results=True))
    assert [r.status.value for r in results] == ["failed", "failed"]
    assert results[0].error is not None and results[0].error.type == "Unprintable"


def test_a_return_value_that_does_not_pickle_fails_its_item() -> None:
    results = list(phalanx.map(lambda x: threading.Lock() if x == 1 else x, range(3), as_results=True))
    assert [r.status.value for r in results] == ["succeeded", "failed", "succeeded"]
    assert "item 1: its return value of type lock cannot be pickled" in (results[1].reason or "")


def test_an_unpicklable_callable_is_refused_at_once() -> None:
    lock = threading.Lock()
    with phalanx.Executor(1) as executor, pytest.raises(phalanx.ConfigError, match="cannot be pickled"):
        executor.map(lambda x: (lock, x), [1])


def test_code_the_worker_cannot_import_fails_its_items(tmp_path: Path) -> None:
    # A module only this process has: cloudpickle sends its function and class by
    # reference (it is importable here), and the worker cannot load them (the file is gone).
    source = tmp_path / "only_here.py"
    source.write_text("class Thing:\n    pass\n\ndef twice(x):\n    return 2 * x\n")
    sys.path.insert(0, str(tmp_path))
    try:
        import only_here  # type: ignore[import-not-found]

        source.unlink()

        results = list(phalanx.map(only_here.twice, [1, 2], as_results=True))
        assert [r.status.value for r in results] == ["failed", "failed"]
        assert results[0].error is not None and results[0].error.type == "ModuleNotFoundError"
        assert "item 0: the callable cannot be loaded in the worker: No module named" in results[0].error.message
        # An argument of that class fails alone; its siblings in the batch still run.
        results = list(phalanx.map(job, [["value", 1], ["same", only_here.Thing()], ["value", 3]], as_results=True,
                                   batch_size=3))
        assert [r.status.value for r in results] == ["succeeded", "failed", "succeeded"]
        assert "ModuleNotFoundError" in (results[1].reason or "")
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("only_here", None)


# ---------------------------------------------------------------------------- batching


# How automatic batches are sized (mapper.MapRun._next_size): one item a batch until a
# duration is measured (the first fill sends 2 batches per worker of one item each), then
# TARGET_BATCH_SECONDS (20 ms) of the measured seconds per item, capped, when the number of
# items is known, by ceil(left / (2 * workers)). What the measurements are depends on the
# machine, so an end-to-end test may only assert bounds that hold for any measurement:
#
# * a lower bound from the guided cap: a batch takes at most ceil(left / (2W)) items, and
#   taking fewer never ends in fewer batches (left - ceil(left / (2W)) grows with left),
#   so the fewest batches are the probes followed by always-the-cap: `fewest_batches`.
#   A very fast machine reaches it; a slow one sends more.
# * a lower bound from a known minimum time per item: a batch's duration includes the
#   sleeps of its items (the loop's clock and time.sleep are both monotonic), so every
#   measured (and averaged) seconds-per-item is >= the sleep, hence a batch holds at most
#   int(20 ms / sleep) items.
# * only the trivial upper bound, one batch per item: if every measurement said 20 ms or
#   more (a loaded machine, batch overhead included) every batch would hold one item.
#
# That batches grow for quick items is therefore tested on the sizing itself, with the
# measurement set by the test (`test_batch_sizes_follow_the_measured_time`).


def fewest_batches(items: int, workers: int) -> int:
    """The fewest automatic batches for `items` items of known count, however fast they run."""
    from phalanx.mapper import BATCHES_PER_WORKER

    in_flight = BATCHES_PER_WORKER * workers
    probes = min(items, in_flight)
    left, batches = items - probes, probes
    while left:
        left -= -(-left // in_flight)  # the largest batch the guided cap allows
        batches += 1
    return batches


def test_batches_adapt_to_item_duration() -> None:
    assert fewest_batches(20_000, 2) == 4 + 32  # worked out by hand: 4 probes, then 32 capped
    with phalanx.Executor(2) as executor:
        assert list(executor.map(abs, range(-20_000, 0))) == list(range(20_000, 0, -1))
        quick = executor.stats()["batches"]
        assert fewest_batches(20_000, 2) <= quick <= 20_000
        assert list(executor.map(job, [["value", i, 0.01] for i in range(40)])) == [2 * i for i in range(40)]
        slow = executor.stats()["batches"] - quick
        # Every item sleeps 10 ms: at most int(20 ms / 10 ms) = 2 items a batch after the 4
        # one-item probes, so at least 4 + 36 / 2 batches, however fast the machine.
        assert 4 + 36 // 2 <= slow <= 40


def test_batch_sizes_follow_the_measured_time() -> None:
    # The sizing rule with the measurement set here, so exact: nothing depends on speed.
    from phalanx.mapper import MAX_BATCH, MapRun

    def sizer(executor: phalanx.Executor, items: Any) -> MapRun:
        return MapRun(executor, abs, (items,), ordered=True, timeout=None, retry=phalanx.RetryPolicy(),
                      batch_size="auto", partition="auto", weights=None)  # never started: nothing runs

    with phalanx.Executor(2, backend="threads") as executor:
        known = sizer(executor, range(20_000))
        assert known._next_size() == 1  # nothing measured yet: a one-item probe
        known._pulled = 4
        known._per_item = 10e-3
        assert known._next_size() == 2  # 20 ms of 10 ms items
        known._per_item = 25e-3
        assert known._next_size() == 1  # slower than the target: still one item
        known._per_item = 1e-6
        assert known._next_size() == 4999  # 20,000 fit in 20 ms: capped at ceil(19,996 / 4)
        known._pulled = 19_990
        assert known._next_size() == 3  # near the end: ceil(10 / 4), so the workers end together
        endless = sizer(executor, iter(range(20_000)))  # no len(): no guided cap
        endless._per_item = 1e-6
        assert endless._next_size() == 20_000
        endless._per_item = 0.0
        assert endless._next_size() == MAX_BATCH


def test_fixed_batch_size() -> None:
    with phalanx.Executor(2) as executor:
        assert list(executor.map(abs, range(100), batch_size=10)) == list(range(100))
        assert executor.stats()["batches"] == 10
    with phalanx.Executor(1) as executor, pytest.raises(phalanx.ConfigError, match="batch_size"):
        executor.map(abs, [1], batch_size=0)


def test_round_robin_partitions_deal_items_to_workers() -> None:
    with phalanx.Executor(2) as executor:
        executor.warm_up()
        pids = list(executor.map(pid_of, range(6), partition="round_robin"))
        assert executor.stats()["batches"] == 2
    assert pids[0] == pids[2] == pids[4] != pids[1] == pids[3] == pids[5]


def test_weighted_partitions_balance_declared_costs() -> None:
    with phalanx.Executor(2) as executor:
        executor.warm_up()
        # One heavy item against five light ones: it gets a partition to itself.
        results = list(executor.map(pid_of, range(6), partition="weighted", weights=[5, 1, 1, 1, 1, 1]))
        assert results[0] not in results[1:] and len(set(results[1:])) == 1
        by_callable = list(executor.map(lambda x: x * 10, [9, 1, 1, 8], partition="weighted", weights=lambda x: x))
        assert by_callable == [90, 10, 10, 80]
    with phalanx.Executor(1, backend="threads") as executor:
        with pytest.raises(phalanx.ConfigError, match="needs weights"):
            executor.map(abs, [1], partition="weighted")
        with pytest.raises(phalanx.ConfigError, match="2 entries for 3 items"):
            executor.map(abs, [1, 2, 3], partition="weighted", weights=[1, 2])


def test_partitions_work_on_threads_too() -> None:
    assert list(phalanx.map(abs, range(-5, 0), backend="threads", partition="round_robin")) == [5, 4, 3, 2, 1]


# ---------------------------------------------------------------------------- lifecycle


def test_shutdown_refuses_new_work_and_commands_are_refused() -> None:
    executor = phalanx.Executor(1, backend="threads")
    with pytest.raises(phalanx.ConfigError, match=r"use phalanx\.run for commands"):
        executor.submit_task(phalanx.Task("c", "echo hi"))
    executor.shutdown()
    with pytest.raises(RuntimeError, match="after shutdown"):
        executor.submit(abs, 1)


def test_bad_options_are_refused() -> None:
    with pytest.raises(phalanx.ConfigError, match="isolate needs backend='processes'"):
        phalanx.Executor(1, backend="threads", isolate=True)
    with pytest.raises(phalanx.ConfigError, match="backend must be"):
        phalanx.Executor(1, backend="spark")  # type: ignore[arg-type]
    with pytest.raises(phalanx.ConfigError, match="max_workers"):
        phalanx.Executor(0)


def test_shutdown_waits_for_submitted_work(flags: Path) -> None:
    executor = phalanx.Executor(1)
    future = executor.submit(job, ["value", 5, 0.05])
    executor.shutdown(wait=True)
    assert future.result(timeout=0) == 10


def test_an_unread_map_starts_at_once(flags: Path) -> None:
    with phalanx.Executor(1) as executor:
        executor.map(job, [["done", str(flags), "x", 1]])  # never read
        assert wait_for(flags / "done-x")


class _Payload:
    """An argument whose lifetime a weak reference can watch."""


def _ignore(payload: _Payload) -> None:
    return None


def test_finished_submitted_tasks_keep_no_arguments_alive() -> None:
    # Tasks submitted with submit_task may be named by later ones, so the scheduler keeps their
    # status and their place in the critical path; not their action's arguments.
    import gc
    import weakref

    with phalanx.Executor(2, backend="threads") as executor:
        watched = []
        futures = []
        for index in range(20):
            payload = _Payload()
            watched.append(weakref.ref(payload))
            deps = (f"t{index - 1}",) if index else ()
            futures.append(executor.submit_task(phalanx.Task(f"t{index}", _ignore, args=(payload,), deps=deps)))
        del payload
        for future in futures:
            future.result(timeout=BOUND)
        del futures
        gc.collect()
        assert [ref for ref in watched if ref() is not None] == []
