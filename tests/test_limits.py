"""Per-task limits (`Limits`): sizes, the TOML keys and run options, and how the command
backend holds real processes to them.

Memory is tested on both of its paths on one machine: a cgroup where phalanx can make one
(skipped, saying why, where it cannot) and the RSS poller, forced with ``PHALANX_CGROUPS=0``.
Every wait is bounded (`_BOUND`); nothing sleeps to synchronise.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

import phalanx
import phalanx.backends.command as command_backend
from phalanx import cgroups
from phalanx.backends.base import Attempt, Outcome
from phalanx.backends.command import CommandBackend
from phalanx.config import load_task_file
from phalanx.confinement import confine
from phalanx.errors import ConfigError
from phalanx.limits import NO_LIMITS, Limits, format_size, parse_size
from phalanx.model import Task
from phalanx.results import Status

_BOUND = 10.0  # seconds: the longest any test waits for a process
_MB = 10**6
_CHUNK_MB = 50

# Allocates (and touches) 50 MB every 0.1 s, up to 2 GB: 500 MB/s. Prints its total after each chunk.
ALLOCATOR = textwrap.dedent(f"""
    import sys, time
    chunks = []
    while len(chunks) < 40:
        chunks.append(b"x" * ({_CHUNK_MB} * 10**6))
        print(len(chunks) * {_CHUNK_MB}, flush=True)
        time.sleep(0.1)
""")

# Busy on two processes for 0.6 s of wall time; prints the CPU they used per wall second.
TWO_BUSY = textwrap.dedent("""
    import os, subprocess, sys, time
    busy = "import time\\nend = time.monotonic() + 0.6\\nwhile time.monotonic() < end: pass"
    start = time.monotonic()
    workers = [subprocess.Popen([sys.executable, "-c", busy]) for _ in range(2)]
    for worker in workers:
        worker.wait()
    times = os.times()
    print(round((times.children_user + times.children_system) / (time.monotonic() - start), 3))
""")


def run_attempt(task: Task, run_dir: Path) -> Outcome:
    """One attempt on a fresh command backend (bounded: a hung command fails the test)."""

    async def go() -> Outcome:
        backend = CommandBackend()
        try:
            async with asyncio.timeout(_BOUND):
                return await backend.run(Attempt(task=task, number=1, worker=1, run_id="r", run_dir=run_dir))
        finally:
            await backend.aclose()

    return asyncio.run(go())


def python(code: str) -> tuple[str, ...]:
    return (sys.executable, "-c", code)


def gone(pid: int) -> bool:
    """The process no longer runs (a zombie waiting for init counts as gone)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def task_cgroups() -> list[str]:
    """The task cgroups this process has now, in every hierarchy phalanx uses."""
    directories = {where.directory for where in cgroups._hierarchies().values()}
    return [name for directory in directories for name in os.listdir(directory)
            if name.startswith(f"phalanx-{os.getpid()}-")]


@pytest.fixture(autouse=True)
def no_cgroup_left_behind() -> Iterator[None]:
    """Every task cgroup is gone once the backend (or run) that made it is closed."""
    yield
    assert task_cgroups() == []


@pytest.fixture(params=["cgroup", "poll"])
def memory_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each memory test twice: in a memory cgroup, and with the psutil poller."""
    if request.param == "cgroup":
        if not cgroups.available(cgroups.MEMORY):
            pytest.skip("no memory cgroup can be made here (none delegated to us, or no permission)")
    else:
        monkeypatch.setenv("PHALANX_CGROUPS", "0")
    return str(request.param)


# ----------------------------------------------------------------------------- values


@pytest.mark.parametrize(("text", "size"), [
    ("512MB", 512 * 10**6), ("512M", 512 * 10**6), ("1.5GiB", 3 * 2**29), ("800k", 800_000),
    ("800 KiB", 800 * 1024), ("2gb", 2 * 10**9), (" 7 ", 7), ("10B", 10), (4096, 4096),
])
def test_sizes(text: str | int, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("bad", ["", "12XB", "-1MB", "1.2.3GB", "MB", 0, -5, 1.5, True, None, "0.1B"])
def test_bad_sizes(bad: object) -> None:
    with pytest.raises(ConfigError, match="memory"):
        parse_size(bad, what="memory")


@pytest.mark.parametrize(("size", "shown"), [
    (512 * 10**6, "512 MB"), (512 * 2**20, "512 MiB"), (3 * 2**29, "1.5 GiB"), (200 * 10**6, "200 MB"),
    (800_000, "800 kB"), (123, "123 B"), (123_456_789, "123 MB"),
])
def test_sizes_are_shown_as_written(size: int, shown: str) -> None:
    assert format_size(size) == shown


def test_limits_take_what_users_write_and_refuse_nonsense() -> None:
    limits = Limits(memory="512MB", cpus=0.5, cpu_time="1m", max_procs=200, open_files=1024, address_space="4GiB")
    assert limits == Limits(512 * 10**6, 0.5, 60.0, 200, 1024, 4 * 2**30)
    for bad in ({"cpus": -0.5}, {"cpus": "half"}, {"cpu_time": "-1s"}, {"max_procs": -1}, {"open_files": 2.5},
                {"memory": "lots"}, {"address_space": -1}):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            Limits(**bad)  # type: ignore[arg-type]


def test_task_limits_are_for_commands() -> None:
    assert Task("t", "true", limits=Limits()).limits is NO_LIMITS  # the backend's fast path knows it
    with pytest.raises(ConfigError, match="commands only"):
        Task("t", print, limits=Limits(memory="1GB"))
    with pytest.raises(ConfigError, match="Limits"):
        Task("t", "true", limits={"memory": "1GB"})  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- memory


def test_memory_limit_stops_a_fast_allocator_near_the_limit(memory_path: str, tmp_path: Path) -> None:
    report = phalanx.run([Task("hog", python(ALLOCATOR), limits=Limits(memory="200MB"))], log_dir=tmp_path)
    result = report["hog"]
    assert result.status is Status.FAILED, result
    assert result.reason == "memory limit exceeded (200 MB)"
    allocated = [int(line) for line in result.stdout_tail.split()]
    # Stopped near the limit: at most two chunks past it (the poller looks every 50 ms; the
    # allocator adds a chunk every 100 ms). Unchecked, it would go on to 2000 MB and succeed.
    assert allocated and allocated[-1] <= 200 + 2 * _CHUNK_MB, allocated


def test_memory_over_the_limit_fails_even_when_the_leader_exits_0(memory_path: str, tmp_path: Path) -> None:
    # The shell survives its child and would exit 0: the tree went over, so the task fails.
    command = f"{sys.executable} -c '{ALLOCATOR}' || true"
    outcome = run_attempt(Task("hog", command, limits=Limits(memory="150MB")), tmp_path)
    assert not outcome.ok and not outcome.crashed
    assert outcome.reason == "memory limit exceeded (150 MB)"


def test_going_over_kills_the_whole_tree(memory_path: str, tmp_path: Path) -> None:
    # A process that left the task's process group (setsid) is still the task's: it goes too.
    escapee = "import os, sys, time; os.setsid(); print(os.getpid(), flush=True); time.sleep(60)"
    command = (f"{sys.executable} -c '{escapee}' > escapee.pid & "
               f"while [ ! -s escapee.pid ]; do :; done; {sys.executable} -c '{ALLOCATOR}'")
    outcome = run_attempt(Task("hog", command, cwd=str(tmp_path), limits=Limits(memory="150MB")), tmp_path)
    assert outcome.reason == "memory limit exceeded (150 MB)"
    pid = int((tmp_path / "escapee.pid").read_text())
    deadline = time.monotonic() + _BOUND
    while not gone(pid):
        assert time.monotonic() < deadline, "the escaped process outlived its task"
        time.sleep(0.01)


def test_the_kernels_oom_kill_is_reported_as_the_memory_limit(tmp_path: Path) -> None:
    """With no poller at all: the kernel's OOM killer ends the task, the cgroup says so."""
    if not cgroups.available(cgroups.MEMORY):
        pytest.skip("no memory cgroup can be made here (none delegated to us, or no permission)")
    confinement = confine(Limits(memory="100MB"))
    assert confinement.cgroup is not None and cgroups.MEMORY in confinement.cgroup.controllers
    try:
        proc = subprocess.Popen(python(ALLOCATOR), stdout=subprocess.DEVNULL, preexec_fn=confinement.in_child)
        confinement.started(proc.pid)
        returncode = proc.wait(timeout=_BOUND)
        assert returncode == -signal.SIGKILL  # the OOM killer's signal, not phalanx's
        assert confinement.reason(returncode, shell=False) == "memory limit exceeded (100 MB)"
    finally:
        assert confinement.release()


# ----------------------------------------------------------------------------- rlimits


@pytest.mark.parametrize(("code", "ended_by"), [
    ("while True: pass", signal.SIGXCPU),
    # One that ignores SIGXCPU: the kernel SIGKILLs it a second later.
    ("import signal\nsignal.signal(signal.SIGXCPU, signal.SIG_IGN)\nwhile True: pass", signal.SIGKILL),
], ids=["sigxcpu", "ignores-sigxcpu"])
def test_cpu_time_limit(tmp_path: Path, code: str, ended_by: int) -> None:
    outcome = run_attempt(Task("spin", python(code), limits=Limits(cpu_time=1)), tmp_path)
    assert not outcome.ok
    assert outcome.signal == ended_by
    assert outcome.reason == "cpu time limit exceeded (1 s)"


def test_open_files_limit(tmp_path: Path) -> None:
    code = textwrap.dedent("""
        import resource
        print(*resource.getrlimit(resource.RLIMIT_NOFILE))
        kept = [open("/dev/null") for _ in range(100)]
    """)
    outcome = run_attempt(Task("fds", python(code), limits=Limits(open_files=20)), tmp_path)
    assert outcome.stdout_tail.split() == ["20", "20"]
    assert not outcome.ok and "Too many open files" in outcome.stderr_tail


def test_max_procs_in_a_pids_cgroup(tmp_path: Path) -> None:
    if not cgroups.available(cgroups.PIDS):
        pytest.skip("no pids cgroup can be made here (none delegated to us, or no permission)")
    forks = "for i in 1 2 3 4 5 6 7 8 9 10; do sleep 5 & done; wait"
    outcome = run_attempt(Task("forks", forks, limits=Limits(max_procs=4)), tmp_path)
    assert not outcome.ok
    assert outcome.reason is not None and "a fork was refused: max_procs = 4" in outcome.reason


def test_max_procs_without_cgroups_is_rlimit_nproc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PHALANX_CGROUPS", "0")
    code = "import resource; print(*resource.getrlimit(resource.RLIMIT_NPROC))"
    outcome = run_attempt(Task("nproc", python(code), limits=Limits(max_procs=4)), tmp_path)
    assert outcome.ok, outcome
    assert outcome.stdout_tail.split() == ["4", "4"]  # it binds only a user without privileges: see Limits


# ----------------------------------------------------------------------------- cpus


def test_cpus_is_a_cpu_quota_in_a_cgroup(tmp_path: Path) -> None:
    if not cgroups.available(cgroups.CPU):
        pytest.skip("no cpu cgroup can be made here (none delegated to us, or no permission)")
    outcome = run_attempt(Task("busy", python(TWO_BUSY), limits=Limits(cpus=0.2)), tmp_path)
    assert outcome.ok, outcome
    share = float(outcome.stdout_tail)
    # Two busy processes would take up to 2 CPUs; the quota holds them to 0.2 together.
    assert share <= 0.3, share


def test_cpus_without_cgroups_is_cpu_affinity(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if not hasattr(os, "sched_getaffinity"):
        pytest.skip("no CPU affinity on this platform")
    cores = len(os.sched_getaffinity(0))
    if cores < 2:
        pytest.skip("a single CPU: affinity to one CPU would change nothing")
    monkeypatch.setenv("PHALANX_CGROUPS", "0")
    code = "import os; print(len(os.sched_getaffinity(0)))"
    for cpus in (0.5, 1.5):
        outcome = run_attempt(Task("busy", python(code), limits=Limits(cpus=cpus)), tmp_path)
        assert outcome.ok, outcome
        assert int(outcome.stdout_tail) == min(cores, math.ceil(cpus))


# ----------------------------------------------------------------------------- the fast path


def test_a_task_without_limits_takes_the_old_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    confined: list[str] = []
    real_confine = command_backend._confine

    def spy(task: Task) -> Any:
        confined.append(task.id)
        return real_confine(task)

    monkeypatch.setattr(command_backend, "_confine", spy)
    code = "import os; print(len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else 1)"
    plain = run_attempt(Task("plain", python(code)), tmp_path)
    assert plain.ok and confined == []  # no confinement, no preexec_fn, no memory poller
    limited = run_attempt(Task("limited", python(code), limits=Limits(open_files=64)), tmp_path)
    assert limited.ok and confined == ["limited"]


# ----------------------------------------------------------------------------- the task file and the CLI


def test_task_file_keys_and_defaults(tmp_path: Path) -> None:
    (tmp_path / "phalanx.toml").write_text(textwrap.dedent("""
        [defaults]
        memory = "1GiB"
        cpu_time = "2m"

        [tasks.a]
        cmd = "true"
        memory = "512MB"
        cpus = 0.5
        max_procs = 200
        open_files = 1024
        address_space = "4GB"

        [tasks.b]
        cmd = "true"
    """))
    graph = load_task_file(tmp_path / "phalanx.toml").graph
    assert graph["a"].limits == Limits(memory=512 * 10**6, cpus=0.5, cpu_time=120.0, max_procs=200,
                                       open_files=1024, address_space=4 * 10**9)
    assert graph["b"].limits == Limits(memory=2**30, cpu_time=120.0)


@pytest.mark.parametrize(("text", "line", "words"), [
    ('[tasks.a]\ncmd = "true"\nmemory = "12XB"\n', 3, "task 'a': memory: '12XB' is not a size"),
    ('[tasks.a]\ncmd = "true"\n\ncpus = -1\n', 4, "task 'a': cpus: expected a positive number"),
    ('[defaults]\ncpu_time = "soon"\n[tasks.a]\ncmd = "true"\n', 2, "[defaults]: cpu_time: 'soon' is not a duration"),
    ('[tasks.a]\ncmd = "true"\nmax_procs = 1.5\n', 3, "task 'a': max_procs: expected a positive integer"),
    ('[tasks.a]\ncmd = "true"\nopen_files = true\n', 3, "task 'a': open_files: expected a positive integer"),
    ('[tasks.a]\ncmd = "true"\naddress_space = "0GB"\n', 3, "task 'a': address_space: must be at least one byte"),
    ('[tasks.a]\ncmd = "true"\nmemroy = "1GB"\n', 3, "did you mean 'memory'"),
])
def test_bad_values_in_the_task_file(tmp_path: Path, text: str, line: int, words: str) -> None:
    (tmp_path / "phalanx.toml").write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_task_file(tmp_path / "phalanx.toml")
    assert str(caught.value).startswith(f"{tmp_path / 'phalanx.toml'}:{line}: "), str(caught.value)
    assert words in str(caught.value)


def phalanx_run(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "phalanx", "run", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=60)


@pytest.mark.parametrize(("file_text", "options", "message"), [
    ('[tasks.canary]\ncmd = "touch ran"\nmemory = "lots"\n', (),
     "phalanx: error: phalanx.toml:3: task 'canary': memory: 'lots' is not a size"),
    ('[tasks.canary]\ncmd = "touch ran"\n', ("--memory", "12XB"), "phalanx: error: --memory: '12XB' is not a size"),
    ('[tasks.canary]\ncmd = "touch ran"\n', ("--cpus", "-1"), "phalanx: error: --cpus: expected a positive number"),
])
def test_bad_values_stop_the_cli(tmp_path: Path, file_text: str, options: tuple[str, ...], message: str) -> None:
    (tmp_path / "phalanx.toml").write_text(file_text)
    result = phalanx_run(tmp_path, *options)
    assert result.returncode == 2, result
    assert len(result.stderr.splitlines()) == 1 and result.stderr.startswith(message), result.stderr
    assert not (tmp_path / "ran").exists()


def test_run_wide_memory_is_for_tasks_that_set_none(tmp_path: Path) -> None:
    hog = json.dumps([sys.executable, "-c", "x = b'x' * (150 * 10**6)"])  # a JSON array is a TOML array
    (tmp_path / "phalanx.toml").write_text(textwrap.dedent(f"""
        [tasks.capped]
        cmd = {hog}

        [tasks.own]
        cmd = {hog}
        memory = "2GB"
    """))
    result = phalanx_run(tmp_path, "--memory", "50MB", "--json")
    assert result.returncode == 1, result
    report = phalanx_json(result.stdout)
    assert report["capped"] == ("failed", "memory limit exceeded (50 MB)")
    assert report["own"] == ("succeeded", None)


def test_a_limit_of_0_lifts_the_default_as_timeout_0_does(tmp_path: Path) -> None:
    hog = json.dumps([sys.executable, "-c", "x = b'x' * (150 * 10**6)"])
    (tmp_path / "phalanx.toml").write_text(textwrap.dedent(f"""
        [defaults]
        memory = "50MB"
        cpus = 0.5

        [tasks.capped]
        cmd = {hog}

        [tasks.lifted]
        cmd = {hog}
        memory = 0
        cpus = 0
    """))
    result = phalanx_run(tmp_path, "--json")
    assert result.returncode == 1, result
    report = phalanx_json(result.stdout)
    assert report["capped"] == ("failed", "memory limit exceeded (50 MB)")
    assert report["lifted"] == ("succeeded", None)
    assert Limits(memory=0, cpus=0).in_force() == NO_LIMITS
    assert Limits(memory=0).over(Limits(memory="1GB")).in_force() == NO_LIMITS


def phalanx_json(text: str) -> dict[str, tuple[str, str | None]]:
    results = json.loads(text)["results"]
    return {result["task_id"]: (result["status"], result["reason"]) for result in results}
