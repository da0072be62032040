"""``phalanx plan --simulate``: the scheduler on the fake clock predicts the run.

Exact predictions on small graphs with declared costs (the simulated clock makes them
exact), the duration history used after a real run, ``-j`` changing the prediction, rate
limits and timeouts honoured as a run would, bad usage as one line and exit 2, long
timelines capped, and the ``predicted makespan:`` line the benchmarks read.
"""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from phalanx import Graph, Task, get_execution_plan
from phalanx.durations import format_duration
from phalanx.history import DurationHistory
from phalanx.journal import Journal
from phalanx.plan import PlannedTask
from phalanx.render import SHOWN_ROWS, predicted_makespan, simulation_text

# What benchmarks/dag_makespan.py reads from the output.
PREDICTED = re.compile(r"predicted makespan:\s*([0-9.]+)\s*s\b")


def phalanx(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "phalanx", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=10)


def write(directory: Path, text: str) -> Path:
    path = directory / "phalanx.toml"
    path.write_text(textwrap.dedent(text))
    return path


def predicted(stdout: str) -> float:
    found = PREDICTED.search(stdout)
    assert found, stdout
    return float(found.group(1))


TWO_CHAINS = """
    [tasks.a1]
    cmd = "true"
    cost = 1
    [tasks.a2]
    cmd = "true"
    cost = 2
    deps = ["a1"]
    [tasks.b1]
    cmd = "true"
    cost = 3
    [tasks.b2]
    cmd = "true"
    cost = 1
    deps = ["b1"]
"""


def two_chains() -> list[Task]:
    return [Task("a1", "true", cost=1), Task("a2", "true", cost=2, deps=("a1",)),
            Task("b1", "true", cost=3), Task("b2", "true", cost=1, deps=("b1",))]


def test_two_chains_on_two_slots_are_predicted_exactly() -> None:
    plan = get_execution_plan(two_chains(), max_workers=2, simulate=True)
    assert plan.simulated
    assert plan.estimated_makespan == 4.0  # b1 then b2; a1 then a2 ends at 3 beside them
    assert plan.lower_bound == 4.0
    assert plan.critical_path == ("b1", "b2")
    # b1 first: the longest remaining path (4 against 3), each chain on its own slot.
    assert plan.timeline == (PlannedTask("b1", 0.0, 3.0, 1), PlannedTask("a1", 0.0, 1.0, 2),
                             PlannedTask("a2", 1.0, 3.0, 2), PlannedTask("b2", 3.0, 4.0, 1))
    assert plan.utilisation == pytest.approx(7 / 8)
    assert plan.unknown == 0
    assert plan.not_finished == ()


def test_the_command_prints_the_prediction_lower_bound_and_critical_path(tmp_path: Path) -> None:
    write(tmp_path, TWO_CHAINS)
    done = phalanx("plan", "--simulate", "-j", "2", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "Plan: 4 tasks on 2 workers, simulated with the estimates"
    assert lines[1] == "  predicted makespan: 4.00s"
    assert lines[2] == ("  lower bound 4.00s = max(critical path 4.00s, work/workers 3.50s): "
                        "the prediction is 1.00x it")
    assert lines[3] == "  utilisation 88% of 2 workers: work 7.00s, speedup 1.75x"
    assert lines[4] == "  durations: 4 declared, 0 from history, 0 unknown"
    assert lines[5:8] == ["  critical path (4.00s, 2 tasks):", "    3.00s  b1", "    1.00s  b2"]
    assert lines[8].startswith("  timeline")
    assert [line.split()[-1] for line in lines[9:]] == ["b1", "a1", "a2", "b2"]
    assert lines[12] == "    3.00s 4.00s  1  |                      ########|  b2"


@pytest.mark.parametrize(("jobs", "makespan"), [("1", 7.0), ("2", 4.0), ("4", 4.0)])
def test_jobs_changes_the_prediction(tmp_path: Path, jobs: str, makespan: float) -> None:
    write(tmp_path, TWO_CHAINS)
    done = phalanx("plan", "--simulate", "-j", jobs, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert predicted(done.stdout) == makespan


@pytest.mark.parametrize("jobs", ["0", "-3", "two"])
def test_a_bad_jobs_is_a_usage_error(tmp_path: Path, jobs: str) -> None:
    write(tmp_path, TWO_CHAINS)
    done = phalanx("plan", "--simulate", "-j", jobs, cwd=tmp_path)
    assert done.returncode == 2
    assert done.stdout == ""
    assert len(done.stderr.splitlines()) == 1, done.stderr
    assert "-j" in done.stderr and "Traceback" not in done.stderr


def test_history_gives_the_estimates_after_a_real_run(tmp_path: Path) -> None:
    write(tmp_path, """
        [tasks.first]
        cmd = "true"
        [tasks.second]
        cmd = "true"
        deps = ["first"]
        [tasks.aside]
        cmd = "true"
    """)
    before = phalanx("plan", "--simulate", "-j", "2", cwd=tmp_path)
    assert before.returncode == 0, before.stderr
    assert "predicted makespan: 2 tasks" in before.stdout  # no estimate at all: it counts tasks
    assert "3 unknown (no estimate at all" in before.stdout
    run = phalanx("run", "-j", "2", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    with Journal.open(tmp_path) as journal:
        seconds = DurationHistory(journal).estimates()
    assert set(seconds) == {"first", "second", "aside"}
    after = phalanx("plan", "--simulate", "-j", "2", cwd=tmp_path)
    assert after.returncode == 0, after.stderr
    assert "  durations: 0 declared, 3 from history, 0 unknown\n" in after.stdout
    # first and second on one slot, aside beside them: unless aside took longer than both.
    expected = max(seconds["first"] + seconds["second"], seconds["aside"])
    assert f"  predicted makespan: {predicted_makespan(expected)}\n" in after.stdout


def test_unknown_tasks_weigh_the_median_and_are_called_a_guess(tmp_path: Path) -> None:
    write(tmp_path, """
        [tasks.short]
        cmd = "true"
        cost = 1
        [tasks.long]
        cmd = "true"
        cost = 3
        [tasks.middle]
        cmd = "true"
        cost = 2
        [tasks.unknown]
        cmd = "true"
        deps = ["long"]
    """)
    done = phalanx("plan", "--simulate", "-j", "2", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "  durations: 3 declared, 0 from history, 1 unknown (each weighs 2.00s, the median known estimate: " \
           "a guess)" in done.stdout
    assert predicted(done.stdout) == 5.0  # long, then unknown at the median


@pytest.mark.parametrize(("seconds", "shown"), [
    (0.25, "0.250s"), (4.0, "4.00s"), (59.5, "59.5s"), (125.0, "125.0s (2m05s)"), (7260.0, "7260.0s (2h01m)"),
])
def test_the_predicted_makespan_always_reads_as_seconds(seconds: float, shown: str) -> None:
    assert predicted_makespan(seconds) == shown
    found = PREDICTED.search(f"predicted makespan: {shown}")
    assert found and float(found.group(1)) == pytest.approx(seconds, rel=0.01)


def test_a_long_cost_prints_its_seconds_first(tmp_path: Path) -> None:
    write(tmp_path, """
        [tasks.build]
        cmd = "true"
        cost = "2m5s"
    """)
    done = phalanx("plan", "--simulate", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "  predicted makespan: 125.0s (2m05s)\n" in done.stdout
    assert predicted(done.stdout) == 125.0


def test_rate_limits_pace_the_simulated_run(tmp_path: Path) -> None:
    # Six tasks at two starts a second: the last starts at 2.5 s however many slots there are.
    write(tmp_path, """
        [rate_limits]
        api = "2/s"
        [tasks.call]
        cmd = "true"
        cost = 0.1
        limiter = "api"
        for_each = ["1", "2", "3", "4", "5", "6"]
    """)
    for command in (["plan", "--simulate", "-j", "8"], ["plan", "-j", "8"]):
        done = phalanx(*command, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
    assert predicted(phalanx("plan", "--simulate", "-j", "8", cwd=tmp_path).stdout) == 2.6


def test_a_task_whose_estimate_exceeds_its_timeout_is_named() -> None:
    tasks = [Task("slow", "true", cost=5, timeout=2), Task("after", "true", cost=1, deps=("slow",)),
             Task("fine", "true", cost=1)]
    plan = get_execution_plan(tasks, max_workers=2, simulate=True)
    assert plan.not_finished == ("slow", "after")
    text = simulation_text(plan, _graph(tasks))
    assert "  would not finish: 2 tasks (an estimate over the task's timeout, or a dependency that did not " \
           "finish): slow, after" in text


def _graph(tasks: list[Task]) -> Graph:
    return Graph(tasks).validate()


def test_a_huge_timeline_and_critical_path_are_capped() -> None:
    chain = [Task("c0", "true", cost=1)] + [Task(f"c{i}", "true", cost=1, deps=(f"c{i - 1}",)) for i in range(1, 300)]
    wide = [Task(f"w{i}", "true", cost=0.5) for i in range(700)]
    tasks = chain + wide
    plan = get_execution_plan(tasks, max_workers=4, simulate=True)
    assert len(plan.timeline) == 1000
    text = simulation_text(plan, _graph(tasks))
    lines = text.splitlines()
    assert len(lines) < 2 * SHOWN_ROWS + 12, len(lines)
    assert "    ... 245 more tasks ..." in lines  # of the critical path's 300 rows
    assert "    ... 945 more tasks ..." in lines  # of the timeline's 1000
    assert lines[-1].endswith("  c299")  # the tail of the timeline: what ends the run
    assert lines[-1].split()[1] == format_duration(plan.estimated_makespan or 0.0)


def test_simulation_text_refuses_a_plan_that_was_not_simulated() -> None:
    plan = get_execution_plan(two_chains(), max_workers=2, simulate=False)
    assert not plan.simulated and plan.estimated_makespan is None and plan.speedup is None
    with pytest.raises(ValueError, match="simulated plan"):
        simulation_text(plan, _graph(two_chains()))
