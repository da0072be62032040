"""Tasks that die in every way, on every backend, each ending with the status DESIGN.md gives it.

One table (`DEATHS`): a way of dying, as a Python callable does it and as a command does it,
and what each backend must report: the command backend (`phalanx.run` with shell commands),
threads, worker processes, and worker processes with ``isolate`` (`phalanx.map`). Each
scenario runs the dying task among four that succeed, and asserts

* the dying task's status and reason (and a command's exit code or signal);
* the four others' results, all there and right (no result lost, none taken by the death);
* that the scenario took bounded time (no hang);
* that no process is left: none carrying the scenario's marker (`chaossupport.MARK`, in
  the environment of a command and of the ``sleep`` each dying task starts first, which
  must go with it), and none among the test process's descendants but multiprocessing's
  forkserver and resource tracker (so no worker, no worker's keeper, no isolated child).

What each status means here (DESIGN.md, "Statuses"):

* ``sys.exit(N)`` in a callable raises SystemExit: an exception, so ``failed``, on every
  backend. A command that exits N is ``failed`` with ``exit_code`` N.
* ``os._exit``, a segfault, SIGKILL from outside: a worker process dying of something
  phalanx did not do is ``crashed``, naming the exit code or signal; with ``isolate`` the
  process that dies is the item's forked child, or the worker itself (``sigkill-worker``).
  A command is its own process: its exit status or signal is its own result, ``failed``
  (``exit code 7``, ``killed by signal 11 (SIGSEGV)``). A SIGKILL from outside leaves the
  same wait status as a ``kill -9 $$`` of its own, so a command killed from outside is
  ``failed``, ``killed by signal 9 (SIGKILL)``, too: phalanx cannot tell them apart.
* On threads, ``os._exit``, a segfault or a SIGKILL ends the whole process, the caller
  (the test) included: a thread has no process of its own to lose. Not applicable here;
  the conformance suite shows it in a subprocess. Nor does a dying thread start a
  ``sleep``: what a thread starts is its caller's child, which phalanx does not own.
* MemoryError (a real one: an allocation the system refuses) is an exception: ``failed``,
  naming it; from a command, exit code 1 with the traceback on stderr.
* Over its timeout: ``timed_out``, and what it started is gone (threads: the thread runs
  on, abandoned, until the test lets it go).
* A memory limit phalanx enforces (``Task(limits=Limits(memory=...))``, commands only):
  ``failed``, the reason naming the limit.

Command-only scenarios: a command that ignores SIGTERM past its timeout (``timed_out``,
SIGKILLed after the grace period: no sooner, and not much later), one that leaves
grandchildren behind and exits (found and killed at the end of the task), one that closes
its stdout early, one that prints binary data with no final newline (the stdout file holds
the bytes exactly).
"""

from __future__ import annotations

import ctypes
import os
import re
import resource
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cloudpickle
import psutil
import pytest
from chaossupport import MARK, TALLY, lingering, new_mark

import phalanx

# Worker processes get `victim` by value: they never import this module.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

BOUND = 10.0  # seconds: the longest a scenario, or any wait in it, may take
POLL = 0.01
TIMEOUT = 0.5  # the timeout of the scenarios that need one
GRACE = 1.0  # seconds between SIGTERM and SIGKILL for commands
PYTHON = shlex.quote(sys.executable)

BACKENDS = ("command", "threads", "processes", "processes-isolate")


# ---------------------------------------------------------------------------- the table


@dataclass(frozen=True)
class Expect:
    """What the dying task must end as on one backend."""

    status: str
    reason: str  # a regular expression its reason must contain
    exit_code: int | None = None  # commands: the exit status
    signal: int | None = None  # commands: the signal that ended it


@dataclass(frozen=True)
class Death:
    """A way of dying: as a callable (`victim` with ``name``) and as a command (``shell``),
    and on each backend either an `Expect` or why the case does not apply there."""

    name: str
    shell: str  # run by /bin/sh in the scenario's directory, with the marker in its environment
    expect: Mapping[str, Expect | str]
    timeout: float | None = None
    killed_from_outside: bool = False  # the test SIGKILLs the pid the task writes to ``victim``
    limits: Mapping[str, Any] = field(default_factory=dict)  # phalanx.limits.Limits(**limits)


_SLEEPER = "sleep 60 & echo $! > grandchild; "  # what every dying command starts first
_BLOCK = "sleep 10"  # a command's bounded wait to be stopped or killed
_NOT_ON_THREADS = ("not applicable: on threads this ends the whole process, the caller included; "
                   "the conformance suite shows it in a subprocess")
_LIMITS_ARE_FOR_COMMANDS = "not applicable: limits apply to commands only (a callable shares its worker)"

_WORKER_DIED = r"^WorkerCrashed: item 2: the worker process "
_ITEM_DIED = r"^WorkerCrashed: item 2: its process "
_STOPPED = r"^TimeoutError: item 2 timed out after 0\.50*s; its work was stopped"


def _exits(code: int) -> Death:
    raised = Expect("failed", rf"^SystemExit: {code}$")
    return Death(f"exit-{code}", f"{_SLEEPER}exit {code}", {
        "command": Expect("failed", rf"^exit code {code}$", exit_code=code),
        "threads": raised, "processes": raised, "processes-isolate": raised,
    })


DEATHS: list[Death] = [
    _exits(1),
    _exits(3),
    _exits(255),
    Death("os-exit-7", f"{_SLEEPER}exec {PYTHON} -S -c 'import os; os._exit(7)'", {
        "command": Expect("failed", r"^exit code 7$", exit_code=7),
        "threads": _NOT_ON_THREADS,
        "processes": Expect("crashed", _WORKER_DIED + r"exited with code 7$"),
        "processes-isolate": Expect("crashed", _ITEM_DIED + r"exited with code 7$"),
    }),
    Death("sigsegv", f"ulimit -c 0; {_SLEEPER}kill -SEGV $$", {
        "command": Expect("failed", r"^killed by signal 11 \(SIGSEGV\)$", signal=11),
        "threads": _NOT_ON_THREADS,
        "processes": Expect("crashed", _WORKER_DIED + r"was killed by SIGSEGV \(a segfault\)$"),
        "processes-isolate": Expect("crashed", _ITEM_DIED + r"was killed by SIGSEGV \(a segfault\)$"),
    }),
    Death("sigkill", f"{_SLEEPER}echo $$ > victim; {_BLOCK}", {
        "command": Expect("failed", r"^killed by signal 9 \(SIGKILL\)$", signal=9),
        "threads": _NOT_ON_THREADS,
        "processes": Expect("crashed", _WORKER_DIED + r"was killed by SIGKILL \(killed from outside"),
        "processes-isolate": Expect("crashed", _ITEM_DIED + r"was killed by SIGKILL \(killed from outside"),
    }, killed_from_outside=True),
    Death("sigkill-worker", "", {
        "command": "not applicable: a command has no worker (see sigkill)",
        "threads": _NOT_ON_THREADS,
        "processes": "the same as sigkill: the item runs in the worker",
        # The worker dies with its isolated child running: the child (its death signal) and
        # what the child started (its process group, killed by the parent) go too.
        "processes-isolate": Expect("crashed", _WORKER_DIED + r"was killed by SIGKILL \(killed from outside"),
    }, killed_from_outside=True),
    Death("memory-error", f"{_SLEEPER}exec {PYTHON} -S -c 'bytearray(1 << 62)'", {
        "command": Expect("failed", r"^exit code 1$", exit_code=1),
        "threads": Expect("failed", r"^MemoryError"),
        "processes": Expect("failed", r"^MemoryError"),
        "processes-isolate": Expect("failed", r"^MemoryError"),
    }),
    Death("hang", f"{_SLEEPER}{_BLOCK}", {
        "command": Expect("timed_out", r"^timed out after 0\.50*s"),
        "threads": Expect("timed_out", r"^TimeoutError: item 2 timed out after 0\.50*s; its thread was abandoned"),
        "processes": Expect("timed_out", _STOPPED),
        "processes-isolate": Expect("timed_out", _STOPPED),
    }, timeout=TIMEOUT),
    # The memory limit phalanx enforces. It needs `phalanx.limits` (Task.limits): the case
    # skips, saying so, where that is not there.
    Death("memory-limit", f"{_SLEEPER}exec {PYTHON} -S -c 'x = b\"x\" * (512 << 20)'", {
        "command": Expect("failed", r"^memory limit exceeded \(64 MiB\)", signal=9),  # SIGKILLed for it
        "threads": _LIMITS_ARE_FOR_COMMANDS,
        "processes": _LIMITS_ARE_FOR_COMMANDS,
        "processes-isolate": _LIMITS_ARE_FOR_COMMANDS,
    }, limits={"memory": "64MiB"}),
]


def victim(spec: tuple[Any, ...]) -> Any:
    """The one callable of every Python scenario: ``("ok", x)`` returns 2x; otherwise
    ``(death, directory, mark, start_sleeper)`` starts a marked ``sleep`` (its pid in
    ``grandchild``) unless told not to, then dies as the death's name says."""
    how, *rest = spec
    if how == "ok":
        return rest[0] * 2
    directory, mark, start_sleeper = Path(rest[0]), rest[1], rest[2]
    if start_sleeper:
        sleeper = subprocess.Popen(["sleep", "60"], env={**os.environ, MARK: mark}, stdin=subprocess.DEVNULL,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _mark(directory / "grandchild", str(sleeper.pid))
    if how.startswith("exit-"):
        sys.exit(int(how.removeprefix("exit-")))
    if how == "os-exit-7":
        os._exit(7)
    if how == "sigsegv":
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # no core file, wherever it would go
        ctypes.string_at(0)
    if how in ("sigkill", "sigkill-worker"):
        _mark(directory / "victim", str(os.getpid() if how == "sigkill" else os.getppid()))
        _wait_for(directory / "release")
    if how == "memory-error":
        bytearray(1 << 62)  # more than any machine has: refused at once, nothing touched
    if how == "hang":
        _wait_for(directory / "release")
    return f"{how}: still alive"


def _mark(path: Path, text: str) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text)
    os.replace(partial, path)


def _wait_for(path: Path) -> bool:
    deadline = time.monotonic() + BOUND
    while not path.exists():
        if time.monotonic() > deadline:
            return False
        time.sleep(POLL)
    return True


# ---------------------------------------------------------------------------- processes


def _helpers() -> set[int]:
    """multiprocessing's long-lived helpers of this process: the forkserver and the resource
    tracker. Not workers: they live as long as the test process."""
    from multiprocessing import forkserver, resource_tracker

    pids = {getattr(forkserver._forkserver, "_forkserver_pid", None),
            getattr(resource_tracker._resource_tracker, "_pid", None)}
    return {pid for pid in pids if pid is not None}


def _live_descendants() -> set[int]:
    found = set()
    for child in psutil.Process().children(recursive=True):
        try:
            if child.status() != psutil.STATUS_ZOMBIE:
                found.add(child.pid)
        except psutil.NoSuchProcess:
            pass
    return found - _helpers()


def _new_descendants(before: set[int]) -> list[str]:
    """This process's descendants not there before (nor helpers), after up to `BOUND`
    seconds of waiting for them to go; described, then killed."""
    deadline = time.monotonic() + BOUND
    left = _live_descendants() - before
    while left and time.monotonic() < deadline:
        time.sleep(POLL)
        left = _live_descendants() - before
    described = []
    for pid in left:
        try:
            process = psutil.Process(pid)
            described.append(f"{pid} {' '.join(process.cmdline())[:100]}")
            process.kill()
        except psutil.Error:
            pass
    return described


@dataclass
class Scenario:
    """A scenario's directory and marker, and the row of the tally it counts in."""

    directory: Path
    mark: str
    tally: str = "deaths"


@pytest.fixture
def scenario(tmp_path: Path) -> Iterator[Scenario]:
    """The scenario's directory and marker. Afterwards: nothing it started may be left."""
    directory = tmp_path / "flags"
    directory.mkdir()
    here = Scenario(directory, new_mark())
    before = _live_descendants()
    yield here
    _mark(directory / "release", "")  # an abandoned thread (threads: hang) ends now
    marked_left = lingering(here.mark)
    descendants_left = _new_descendants(before)
    TALLY.add(here.tally, orphans=len(marked_left) + len(descendants_left))
    assert not marked_left, f"processes carrying the scenario's marker outlived it: {marked_left}"
    assert not descendants_left, f"processes the scenario started are still running: {descendants_left}"


class _Killer(threading.Thread):
    """SIGKILLs the pid the dying task writes to ``victim``, from outside, once it appears."""

    def __init__(self, directory: Path) -> None:
        super().__init__(daemon=True)
        self.path = directory / "victim"
        self.killed: int | None = None

    def run(self) -> None:
        if _wait_for(self.path):
            pid = int(self.path.read_text())
            os.kill(pid, signal.SIGKILL)
            self.killed = pid


# ---------------------------------------------------------------------------- running


def _run_python(backend: str, death: Death, directory: Path, mark: str) -> list[phalanx.TaskResult]:
    specs: list[tuple[Any, ...]] = [("ok", 0), ("ok", 1), (death.name, str(directory), mark, backend != "threads"),
                                    ("ok", 3), ("ok", 4)]
    return list(phalanx.map(
        victim, specs, max_workers=2, backend="threads" if backend == "threads" else "processes",
        isolate=backend == "processes-isolate", timeout=death.timeout, as_results=True,
    ))


def _run_commands(death: Death, directory: Path, mark: str, logs: Path) -> list[phalanx.TaskResult]:
    options: dict[str, Any] = {}
    if death.limits:
        limits = pytest.importorskip("phalanx.limits", reason="the memory limit (Task.limits) is not here yet")
        options["limits"] = limits.Limits(**death.limits)
    tasks = [phalanx.Task(str(i), f"echo {i * 2}", env={MARK: mark}, cwd=str(directory)) for i in (0, 1, 3, 4)]
    tasks.insert(2, phalanx.Task("2", death.shell, env={MARK: mark}, cwd=str(directory), timeout=death.timeout,
                                 **options))
    report = phalanx.run(tasks, max_workers=2, grace=GRACE, log_dir=logs)
    return [report[str(i)] for i in range(5)]


def _cases() -> list[Any]:
    return [pytest.param(death, backend, id=f"{death.name}-{backend}")
            for death in DEATHS for backend in BACKENDS if isinstance(death.expect[backend], Expect)]


@pytest.mark.parametrize(("death", "backend"), _cases())
def test_a_task_that_dies(death: Death, backend: str, scenario: Scenario, tmp_path: Path) -> None:
    directory, mark = scenario.directory, scenario.mark
    scenario.tally = f"deaths on {backend}"
    expect = death.expect[backend]
    assert isinstance(expect, Expect)
    killer = _Killer(directory)
    if death.killed_from_outside:
        killer.start()
    started = time.monotonic()
    if backend == "command":
        results = _run_commands(death, directory, mark, tmp_path / "logs")
    else:
        results = _run_python(backend, death, directory, mark)
    elapsed = time.monotonic() - started
    if death.killed_from_outside:
        killer.join(BOUND)
    TALLY.add(scenario.tally, runs=1, kills=int(killer.killed is not None))

    assert elapsed < BOUND, f"took {elapsed:.1f}s"
    assert len(results) == 5
    for index in (0, 1, 3, 4):  # the others: all there, all right
        other = results[index]
        assert other.status is phalanx.Status.SUCCEEDED, other.reason
        if backend == "command":
            assert other.stdout_tail == f"{index * 2}\n"
        else:
            assert other.value == index * 2
    died = results[2]
    assert died.status.value == expect.status, died.reason
    assert died.reason is not None and re.search(expect.reason, died.reason), died.reason
    if backend == "command":
        assert (died.exit_code, died.signal) == (expect.exit_code, expect.signal)
    if death.killed_from_outside:
        assert killer.killed is not None, "the task never said which process to kill"
    if death.name == "memory-error" and backend == "command":
        assert "MemoryError" in died.stderr_tail
    if backend != "threads":  # the sleep it started first must not be a vacuous "nothing left"
        assert (directory / "grandchild").exists(), "the task did not get to start its sleep"


def leave_a_child(spec: tuple[Any, ...]) -> Any:
    """``("start", mark)``: start a marked ``sleep`` and return its pid, leaving it running;
    ``("alive", pid)``: whether that process still runs (a zombie is dead)."""
    what, arg = spec
    if what == "start":
        child = subprocess.Popen(["sleep", "60"], env={**os.environ, MARK: arg}, stdin=subprocess.DEVNULL,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return child.pid
    try:
        return psutil.Process(arg).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.mark.parametrize("isolate", [False, True], ids=["in-worker", "isolated"])
def test_a_child_an_item_leaves_running_lasts_as_long_as_its_worker(isolate: bool, scenario: Scenario) -> None:
    """A worker's own state, like a module global (it may be meant for the next items): it
    goes with the worker, at the end of the run at the latest. With isolate, with the item."""
    scenario.tally = f"deaths on processes{'-isolate' if isolate else ''}"
    with phalanx.Executor(1, isolate=isolate) as executor:
        (pid,) = executor.map(leave_a_child, [("start", scenario.mark)])
        (alive,) = executor.map(leave_a_child, [("alive", pid)])
        assert alive is not isolate
    TALLY.add(scenario.tally, runs=1)
    # The scenario fixture checks that nothing carrying the marker is left now.


def test_every_way_of_dying_is_covered_or_explained() -> None:
    """Each death says, for every backend, what it ends as or why it does not apply there."""
    for death in DEATHS:
        assert set(death.expect) == set(BACKENDS), death.name
        for backend, expect in death.expect.items():
            assert isinstance(expect, Expect) or expect.strip(), (death.name, backend)
    names = [death.name for death in DEATHS]
    assert len(names) == len(set(names))


# ---------------------------------------------------------------------------- commands only


def _run_one(script: str, directory: Path, mark: str, logs: Path, **task: Any) -> tuple[phalanx.TaskResult, float]:
    started = time.monotonic()
    report = phalanx.run([phalanx.Task("t", script, env={MARK: mark}, cwd=str(directory), **task)],
                         grace=GRACE, log_dir=logs)
    return report["t"], time.monotonic() - started


def test_a_command_that_ignores_sigterm_is_killed_after_the_grace(scenario: Scenario, tmp_path: Path) -> None:
    directory, mark = scenario.directory, scenario.mark
    scenario.tally = "deaths on command"
    # The trap comes first, well within the timeout; the sleeps inherit "ignore SIGTERM".
    script = f"trap '' TERM; {_SLEEPER}{_BLOCK}"
    timeout = 1.0
    result, elapsed = _run_one(script, directory, mark, tmp_path / "logs", timeout=timeout)
    assert result.status is phalanx.Status.TIMED_OUT, result.reason
    assert timeout + GRACE <= elapsed < timeout + GRACE + 5.0, f"took {elapsed:.1f}s"
    assert (directory / "grandchild").exists()
    TALLY.add(scenario.tally, runs=1)


def test_grandchildren_left_behind_are_killed_when_the_task_ends(scenario: Scenario, tmp_path: Path) -> None:
    directory, mark = scenario.directory, scenario.mark
    scenario.tally = "deaths on command"
    # One in the background, one whose parent (a subshell) exits at once: an orphan.
    script = "sleep 60 & echo $! > first; (sleep 60 & echo $! > second); exit 0"
    result, elapsed = _run_one(script, directory, mark, tmp_path / "logs")
    assert result.status is phalanx.Status.SUCCEEDED, result.reason
    assert elapsed < BOUND
    assert (directory / "first").exists() and (directory / "second").exists()
    assert not lingering(mark), "grandchildren outlived their task"  # they carry the marker
    TALLY.add(scenario.tally, runs=1)


def test_a_command_that_closes_its_stdout_early(scenario: Scenario, tmp_path: Path) -> None:
    directory, mark = scenario.directory, scenario.mark
    scenario.tally = "deaths on command"
    script = "printf before; exec >&-; echo 'after the close' >&2; exit 0"
    result, elapsed = _run_one(script, directory, mark, tmp_path / "logs")
    assert result.status is phalanx.Status.SUCCEEDED, result.reason
    assert elapsed < BOUND
    assert result.stdout_path is not None and Path(result.stdout_path).read_bytes() == b"before"
    assert "after the close" in result.stderr_tail
    TALLY.add(scenario.tally, runs=1)


def test_binary_output_without_a_newline_is_kept_exactly(scenario: Scenario, tmp_path: Path) -> None:
    directory, mark = scenario.directory, scenario.mark
    scenario.tally = "deaths on command"
    result, elapsed = _run_one(r"printf '\000\001\377\376end'", directory, mark, tmp_path / "logs")
    assert result.status is phalanx.Status.SUCCEEDED, result.reason
    assert elapsed < BOUND
    assert result.stdout_path is not None and Path(result.stdout_path).read_bytes() == b"\x00\x01\xff\xfeend"
    TALLY.add(scenario.tally, runs=1)
