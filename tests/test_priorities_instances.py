"""Priorities by tag (``[priorities]``), ``--priority``, and resources with named instances.

The CLI tests run the real ``phalanx run`` and read what happened from structured output
(``--json``: each task's start time) or from files the commands write, never from the text
meant for people. The property test runs the real scheduler on the fake clock.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings, strategies as st

import phalanx
from phalanx import PhalanxError, RetryPolicy, Status, Task
from phalanx.config import load_task_file
from phalanx.fakeclock import run_virtual
from phalanx.runner import run_async


def phalanx_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "phalanx", *args], capture_output=True, text=True, cwd=cwd, timeout=60
    )


def write(directory: Path, text: str, name: str = "phalanx.toml") -> Path:
    path = directory / name
    path.write_text(textwrap.dedent(text))
    return path


def start_order(result: subprocess.CompletedProcess[str]) -> list[str]:
    """The task ids of a ``phalanx run --json`` report, in the order they started."""
    assert result.returncode == 0, result.stderr
    results = json.loads(result.stdout)["results"]
    return [entry["task_id"] for entry in sorted(results, key=lambda entry: entry["start"])]


# --- priorities ----------------------------------------------------------------------------

PRIORITIES = """\
    [priorities]
    critical = "high"
    smoke = "low"
    nightly = -20
    urgent = 15

    [tasks.plain]
    cmd = "true"

    [tasks.smoke_test]
    cmd = "true"
    tags = ["smoke"]

    [tasks.critical_test]
    cmd = "true"
    tags = ["critical"]

    [tasks.both]
    cmd = "true"
    tags = ["critical", "urgent"]          # the highest of its tags' wins: 15

    [tasks.own_wins]
    cmd = "true"
    tags = ["urgent"]
    priority = -5                          # its own priority beats its tags'

    [tasks.night]
    cmd = "true"
    tags = ["nightly"]

    [tasks.explicit]
    cmd = "true"
    priority = 5
    """


# Every priority differs, so the order never hangs on a tie (which the durations of earlier
# runs, from the journal, would break).
def test_tag_priorities_decide_the_start_order(tmp_path: Path) -> None:
    write(tmp_path, PRIORITIES)
    order = start_order(phalanx_cli("run", "-j", "1", "--json", cwd=tmp_path))
    assert order == ["both", "critical_test", "explicit", "plain", "own_wins", "smoke_test", "night"]


def test_priority_option_is_the_default_for_tasks_the_file_leaves_unset(tmp_path: Path) -> None:
    write(tmp_path, PRIORITIES)
    # Only "plain" has no priority from the file (its own, a tag's or [defaults]): 7 puts it
    # after critical_test (10), ahead of explicit (5); the others keep theirs.
    order = start_order(phalanx_cli("run", "-j", "1", "--json", "--priority", "7", cwd=tmp_path))
    assert order == ["both", "critical_test", "plain", "explicit", "own_wins", "smoke_test", "night"]
    order = start_order(phalanx_cli("run", "-j", "1", "--json", "--priority=-30", cwd=tmp_path))
    assert order == ["both", "critical_test", "explicit", "own_wins", "smoke_test", "night", "plain"]


def test_tags_beat_defaults_and_defaults_beat_the_option(tmp_path: Path) -> None:
    write(tmp_path, """\
        [defaults]
        priority = "low"

        [priorities]
        critical = 3

        [tasks.tagged]
        cmd = "true"
        tags = ["critical"]

        [tasks.defaulted]
        cmd = "true"

        [tasks.own]
        cmd = "true"
        priority = 1
        """)
    task_file = load_task_file(tmp_path / "phalanx.toml")
    assert {task.id: task.priority for task in task_file.graph} == {"tagged": 3, "defaulted": -10, "own": 1}
    assert task_file.unprioritized == frozenset()  # [defaults] sets one for everyone: --priority changes nothing
    order = start_order(phalanx_cli("run", "-j", "1", "--json", "--priority", "high", cwd=tmp_path))
    assert order == ["tagged", "own", "defaulted"]


def test_list_and_plan_show_the_resolved_priority(tmp_path: Path) -> None:
    write(tmp_path, """\
        [priorities]
        critical = "high"

        [tasks.a]
        cmd = "true"

        [tasks.b]
        cmd = "true"
        tags = ["critical"]

        [tasks.c]
        cmd = "true"
        for_each = [1, 2]
        """)
    listed = phalanx_cli("list", "--json", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    priorities = {task["id"]: task["priority"] for task in json.loads(listed.stdout)["tasks"]}
    assert priorities == {"a": 0, "b": 10, "c[1]": 0, "c[2]": 0}
    plan = phalanx_cli("plan", "-j", "1", "--priority", "low", cwd=tmp_path)
    assert plan.returncode == 0, plan.stderr
    order = plan.stdout.split("start order:\n")[1].splitlines()
    assert [line.split(". ", 1)[1] for line in order] == [
        "b  [priority +10]", "a  [priority -10]", "c[1]  [priority -10]", "c[2]  [priority -10]"
    ]


def test_a_priorities_tag_no_task_has_is_a_located_warning(tmp_path: Path) -> None:
    write(tmp_path, """\
        [priorities]
        critical = "high"
        critcal = "high"

        [tasks.a]
        cmd = "true"
        tags = ["critical"]
        """)
    task_file = load_task_file(tmp_path / "phalanx.toml")
    assert task_file.warnings == (
        f"{tmp_path / 'phalanx.toml'}:3: [priorities]: no task has the tag 'critcal' (did you mean 'critical'?), "
        "so it sets no priority",
    )
    result = phalanx_cli("run", "--json", cwd=tmp_path)
    assert result.returncode == 0
    assert "phalanx: warning: phalanx.toml:3: [priorities]: no task has the tag 'critcal'" in result.stderr


BAD_INPUT = [
    ('[priorities]\ncritical = "hihg"\n', 2,
     "[priorities] critical: expected an integer or high/normal/low, got 'hihg'"),
    ("[priorities]\ncritical = 1.5\n", 2, "[priorities] critical: expected an integer or high/normal/low, got 1.5"),
    ('[defaults]\npriority = "urgent"\n', 2, "[defaults]: priority: expected an integer or high/normal/low"),
    ('[resources]\ngpu = ["0", "0"]\n', 2, "resource 'gpu': instance '0' is listed twice"),
    ("[resources]\ngpu = []\n", 2, "resource 'gpu': no instances listed"),
    ('[resources]\ngpu = ["0", "1,2"]\n', 2, "instance name '1,2' must be non-blank and without ','"),
    ('[resources]\nworker = ["a"]\n', 2, "exported as PHALANX_WORKER, which phalanx sets itself"),
    ('[resources]\ngpu = "0,1"\n', 2,
     "'gpu' must be a positive number, got '0,1' (or a list of instance names such as [\"0\", \"1\"])"),
    ('[resources]\ngpu = ["0", "1"]\n[tasks.b]\ncmd = "true"\nresources = { gpu = 0.5 }\n', 5,
     "task 'b' requests gpu = 0.5, but 'gpu' has named instances (0, 1): ask for a whole number of them"),
    ('[resources]\ngpu = [0, 1]\n[tasks.b]\ncmd = "true"\nresources = { gpu = 3 }\n', 5,
     "task 'b' requests gpu = 3 but the capacity of 'gpu' is 2"),
]


@pytest.mark.parametrize(("head", "line", "message"), BAD_INPUT)
def test_bad_input_names_file_and_line(tmp_path: Path, head: str, line: int, message: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(head + '[tasks.a]\ncmd = "touch ran"\n')
    with pytest.raises(PhalanxError) as raised:
        load_task_file(path)
    assert str(raised.value).startswith(f"{path}:{line}: ")
    assert message in str(raised.value)


@pytest.mark.parametrize(("head", "line", "message"), [BAD_INPUT[0], BAD_INPUT[-2]])
def test_bad_input_exits_2_with_one_line_and_runs_nothing(
    tmp_path: Path, head: str, line: int, message: str
) -> None:
    (tmp_path / "bad.toml").write_text(head + '[tasks.a]\ncmd = "touch ran"\n')
    result = phalanx_cli("run", "bad.toml", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith(f"phalanx: error: bad.toml:{line}: ")
    assert message in result.stderr
    assert len(result.stderr.splitlines()) == 1 and "Traceback" not in result.stderr
    assert not (tmp_path / "ran").exists()


def test_a_bad_priority_option_is_refused_before_anything_runs(tmp_path: Path) -> None:
    write(tmp_path, '[tasks.a]\ncmd = "touch ran"\n')
    result = phalanx_cli("run", "--priority", "hgh", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr == "phalanx: error: --priority: expected an integer or high/normal/low, got 'hgh'\n"
    assert not (tmp_path / "ran").exists()


# --- named instances, end to end ------------------------------------------------------------

# Each task appends "start GPU TASK", holds its GPU a moment, then appends "end GPU TASK":
# lines this short are appended atomically, so the file is the order things happened in.
RECORD = "echo \"start $PHALANX_GPU $PHALANX_TASK_ID $CUDA_VISIBLE_DEVICES\" >> log; sleep 0.5; " \
         "echo \"end $PHALANX_GPU $PHALANX_TASK_ID\" >> log"


def test_gpu_instances_are_exported_and_never_shared(tmp_path: Path) -> None:
    write(tmp_path, f"""\
        [resources]
        gpu = ["0", "1"]

        [tasks.train]
        cmd = '{RECORD}'
        for_each = [1, 2, 3, 4, 5, 6]
        resources = {{ gpu = 1 }}

        [tasks.both]
        cmd = 'echo "$PHALANX_GPU|$CUDA_VISIBLE_DEVICES" > both.txt'
        resources = {{ gpu = 2 }}

        [tasks.cpu_only]
        cmd = 'echo "${{PHALANX_GPU-unset}}" > cpu_only.txt'
        """)
    result = phalanx_cli("run", "-j", "4", "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    events = [line.split() for line in (tmp_path / "log").read_text().splitlines()]
    holder: dict[str, str] = {}  # gpu -> the task holding it
    peak = 0
    for event in events:
        kind, gpu, task = event[0], event[1], event[2]
        if kind == "start":
            assert gpu in ("0", "1"), event
            assert event[3] == gpu  # CUDA_VISIBLE_DEVICES is the same instance
            assert gpu not in holder, f"{task} started on gpu {gpu} held by {holder.get(gpu)}"
            holder[gpu] = task
            peak = max(peak, len(holder))
        else:
            assert holder.pop(gpu) == task
    assert Counter(event[2] for event in events if event[0] == "start") == {f"train[{i}]": 1 for i in range(1, 7)}
    assert peak == 2  # both instances were in use at once: -j 4 allowed it, the gpus did not allow more
    assert (tmp_path / "both.txt").read_text() == "0,1|0,1\n"
    assert (tmp_path / "cpu_only.txt").read_text() == "unset\n"


def test_instances_come_back_after_a_failure_and_a_timeout(tmp_path: Path) -> None:
    # Each task needs both GPUs: the later ones can start only if the earlier gave them back.
    write(tmp_path, """\
        [resources]
        gpu = ["a", "b"]

        [tasks.fails]
        cmd = "exit 3"
        resources = { gpu = 2 }
        priority = 3

        [tasks.hangs]
        cmd = "sleep 30"
        timeout = "300ms"
        resources = { gpu = 2 }
        priority = 2

        [tasks.last]
        cmd = 'echo "$PHALANX_GPU" > last.txt'
        resources = { gpu = 2 }
        """)
    result = phalanx_cli("run", "-j", "3", "--json", cwd=tmp_path)
    assert result.returncode == 1
    statuses = {entry["task_id"]: entry["status"] for entry in json.loads(result.stdout)["results"]}
    assert statuses == {"fails": "failed", "hangs": "timed_out", "last": "succeeded"}
    assert (tmp_path / "last.txt").read_text() == "a,b\n"


# --- named instances in the Python API ------------------------------------------------------


def test_callables_read_their_instances_and_commands_get_variables() -> None:
    seen: list[tuple[str, tuple[str, ...]]] = []

    def in_a_thread(name: str) -> dict[str, Any]:
        seen.append((name, phalanx.resource_instances().get("gpu", ())))
        return dict(phalanx.resource_instances())

    async def on_the_loop() -> dict[str, Any]:
        await asyncio.sleep(0)
        return dict(phalanx.resource_instances())

    tasks = [
        Task("thread", in_a_thread, args=("thread",), resources={"gpu": 1}),
        Task("coroutine", on_the_loop, resources={"gpu": 1, "tpu": 2}),
        Task("command", ["sh", "-c", 'printf "%s %s" "$PHALANX_GPU" "$PHALANX_MY_TPU"'],
             resources={"gpu": 1, "my-tpu": 1}, deps=("thread", "coroutine")),
        Task("nothing", in_a_thread, args=("nothing",)),
    ]
    report = phalanx.run(tasks, max_workers=4,
                         resources={"gpu": ["0", "1"], "tpu": [7, 8, 9], "my-tpu": ["x"]})
    assert report.exit_code == 0
    thread_gpu = report.results["thread"].value["gpu"]
    coroutine = report.results["coroutine"].value
    assert {thread_gpu, coroutine["gpu"]} == {("0",), ("1",)}  # ran together, one instance each
    assert coroutine["tpu"] == ("7", "8")
    assert report.results["command"].stdout_tail == "0 x"
    assert dict(seen)["nothing"] == ()
    assert phalanx.resource_instances() == {}  # outside any task


def test_the_api_refuses_fractions_of_named_instances() -> None:
    with pytest.raises(phalanx.ResourceError, match="whole number"):
        phalanx.run([Task("a", "true", resources={"gpu": 0.5})], resources={"gpu": ["0", "1"]})
    with pytest.raises(phalanx.ConfigError, match="listed twice"):
        phalanx.run([Task("a", "true")], resources={"gpu": ["0", "0"]})


# --- the invariant, on random runs ----------------------------------------------------------


@st.composite
def instance_runs(draw: st.DrawFn) -> tuple[list[Task], int, dict[str, list[str]], bool, list[tuple[str, ...]]]:
    """Random DAGs asking for random numbers of two named resources, with failures,
    retries and timeouts, so that instances are given back on every path."""
    gpus = [str(i) for i in range(draw(st.integers(1, 4)))]
    disks = ["sda", "sdb"]
    log: list[tuple[str, ...]] = []
    tasks = []
    for i in range(draw(st.integers(1, 12))):
        deps = draw(st.lists(st.integers(0, i - 1), max_size=2, unique=True)) if i else []
        request = {"gpu": draw(st.integers(0, len(gpus)))}
        if draw(st.booleans()):
            request["disk"] = draw(st.integers(1, 2))
        fate = draw(st.sampled_from(["ok", "ok", "fail", "flaky", "timeout"]))
        seconds = draw(st.integers(1, 4))
        tasks.append(Task(
            f"t{i}",
            _holder(log, f"t{i}", seconds * 10 if fate == "timeout" else seconds,
                    {"fail": {1, 2}, "flaky": {1}}.get(fate, set())),
            deps=[f"t{d}" for d in deps],
            priority=draw(st.integers(-1, 1)),
            resources=request,
            retry=RetryPolicy(count=1) if fate != "ok" else RetryPolicy(),
            timeout=seconds * 2 if fate == "timeout" else None,
        ))
    return tasks, draw(st.integers(1, 4)), {"gpu": gpus, "disk": disks}, draw(st.booleans()), log


def _holder(log: list[tuple[str, ...]], tid: str, seconds: float, failing: set[int]) -> Any:
    """An action that logs the instances it holds when it starts and when it lets go
    (also when it is cancelled: a timeout, fail-fast)."""
    calls = 0

    async def action() -> None:
        nonlocal calls
        calls += 1
        held = phalanx.resource_instances()
        names = tuple(f"{resource}:{name}" for resource, units in held.items() for name in units)
        log.append(("start", tid, *names))
        try:
            await asyncio.sleep(seconds)
            if calls in failing:
                raise RuntimeError("failed")
        finally:
            log.append(("end", tid, *names))

    return action


@settings(max_examples=100, deadline=None)
@given(instance_runs())
def test_no_instance_is_ever_held_by_two_running_tasks(
    case: tuple[list[Task], int, dict[str, list[str]], bool, list[tuple[str, ...]]],
) -> None:
    tasks, workers, declared, fail_fast, log = case
    run = run_async(tasks, max_workers=workers, resources=declared, fail_fast=fail_fast, backend="inline", seed=0)
    # A unit never given back would leave a task waiting forever: the (virtual) bound fails it.
    report = run_virtual(asyncio.wait_for(run, timeout=100_000))
    by_id = {task.id: task for task in tasks}
    assert sorted(report.results) == sorted(by_id)
    held: dict[str, str] = {}  # "gpu:0" -> the task holding it
    for entry in log:
        kind, tid, names = entry[0], entry[1], entry[2:]
        if kind == "start":
            # Every attempt got exactly what it asked for, distinct instances of the declared ones.
            wanted = {name: int(amount) for name, amount in by_id[tid].resources.items() if amount}
            got = dict(Counter(name.split(":")[0] for name in names))
            assert got == wanted, (tid, got, wanted)
            assert len(set(names)) == len(names)
            assert all(name.split(":")[1] in declared[name.split(":")[0]] for name in names)
            for name in names:
                assert name not in held, f"{tid} got {name} while {held.get(name)} held it"
                held[name] = tid
        else:
            for name in names:
                assert held.pop(name) == tid
    assert held == {}
    # Whatever did not run was skipped or cancelled: no task waited forever for an instance.
    for tid, result in report.results.items():
        assert result.attempts > 0 or result.status in (Status.SKIPPED, Status.CANCELLED), tid
