"""The command backend and the child reaper, with real processes (no mocks).

Every wait is bounded: processes are polled for at most `_BOUND` seconds, never slept on.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest

import phalanx.reaper
from phalanx.backends.base import Attempt, Outcome
from phalanx.backends.command import CommandBackend, command_argv
from phalanx.model import Task
from phalanx.outputfiles import safe_name
from phalanx.reaper import ChildReaper

_BOUND = 10.0  # seconds: the longest any test waits for a process to appear or go


def attempt(
    run_dir: Path, action: str | tuple[str, ...], *, task_id: str = "t", number: int = 1, **task: Any
) -> Attempt:
    return Attempt(task=Task(task_id, action, **task), number=number, worker=3, run_id="r", run_dir=run_dir)


def run(backend: CommandBackend, a: Attempt) -> Outcome:
    """Run one attempt to its end (bounded: a hung command fails the test, killed)."""

    async def go() -> Outcome:
        async with asyncio.timeout(_BOUND):
            return await backend.run(a)

    return asyncio.run(go())


def run_with_timeout(backend: CommandBackend, a: Attempt, seconds: float = 0.5) -> None:
    """Run the attempt the way the scheduler applies a timeout; it must time out."""

    async def go() -> None:
        async with asyncio.timeout(seconds):
            await backend.run(a)

    with pytest.raises(TimeoutError):
        asyncio.run(go())


def gone(pid: int) -> bool:
    """The process no longer runs (a zombie waiting for init counts as gone)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + _BOUND
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting: {what}"
        time.sleep(0.01)


async def async_wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + _BOUND
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting: {what}"
        await asyncio.sleep(0.01)


def read_pids(path: Path, count: int) -> list[int]:
    """The ``count`` pids a command wrote to ``path``, one a line, once it wrote them all."""

    def complete() -> bool:
        return path.exists() and len(path.read_text().split()) >= count

    wait_until(complete, f"{count} pids in {path}")
    return [int(word) for word in path.read_text().split()]


def assert_no_children() -> None:
    """Nothing this test started is left, not even a zombie (multiprocessing's forkserver and
    resource tracker, started by an earlier test of the session, live as long as pytest)."""
    from conformance_support import helper_pids

    helpers = helper_pids()
    assert [p for p in psutil.Process().children(recursive=True) if p.pid not in helpers] == []


def test_exit_zero_succeeds(tmp_path: Path) -> None:
    outcome = run(CommandBackend(), attempt(tmp_path, "true"))
    assert outcome.ok
    assert outcome.exit_code == 0
    assert outcome.reason is None
    assert outcome.pid is not None and gone(outcome.pid)


def test_nonzero_exit_fails_with_code(tmp_path: Path) -> None:
    outcome = run(CommandBackend(), attempt(tmp_path, "exit 3"))
    assert not outcome.ok
    assert not outcome.crashed
    assert outcome.exit_code == 3
    assert outcome.signal is None
    assert outcome.reason == "exit code 3"


def test_output_goes_to_files_and_tails(tmp_path: Path) -> None:
    outcome = run(CommandBackend(tail_bytes=8), attempt(tmp_path, "echo out-1; echo out-2; echo err-1 >&2"))
    assert outcome.ok
    assert outcome.stdout_path is not None and outcome.stderr_path is not None
    assert Path(outcome.stdout_path).read_text() == "out-1\nout-2\n"
    assert Path(outcome.stderr_path).read_text() == "err-1\n"
    assert outcome.stdout_tail == "1\nout-2\n"  # the last 8 bytes only
    assert outcome.stderr_tail == "err-1\n"


def test_tail_does_not_start_mid_character(tmp_path: Path) -> None:
    outcome = run(CommandBackend(tail_bytes=5), attempt(tmp_path, "printf 'ééé'"))  # é is 2 bytes
    assert outcome.stdout_tail == "éé"


def test_huge_output_keeps_memory_bounded(tmp_path: Path) -> None:
    size = 50 * 1024 * 1024
    rss_before = psutil.Process().memory_info().rss
    outcome = run(CommandBackend(), attempt(tmp_path, f"yes phalanx | head -c {size}"))
    rss_after = psutil.Process().memory_info().rss
    assert outcome.ok
    assert len(outcome.stdout_tail) == 4096
    assert outcome.stdout_path is not None and os.path.getsize(outcome.stdout_path) == size
    assert rss_after - rss_before < 20 * 1024 * 1024


# -- environment, cwd, arguments -------------------------------------------------------


def test_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PHALANX_TEST_INHERITED", "parent")
    monkeypatch.setenv("PHALANX_TEST_OVERRIDDEN", "parent")
    script = (
        'echo "$PHALANX_TASK_ID|$PHALANX_ATTEMPT|$PHALANX_WORKER|$PHALANX_RUN_ID"; '
        'echo "$PHALANX_TEST_INHERITED|$PHALANX_TEST_OVERRIDDEN|$PHALANX_TEST_NEW"; '
        'echo "$PHALANX_RESULT_FILE"'
    )
    env = {"PHALANX_TEST_OVERRIDDEN": "task", "PHALANX_TEST_NEW": "new"}
    a = attempt(tmp_path, script, task_id="build/x", number=2, env=env)
    outcome = run(CommandBackend(), a)
    ids, variables, result_file = outcome.stdout_tail.splitlines()
    assert ids == "build/x|2|3|r"
    assert variables == "parent|task|new"
    assert Path(result_file).parent == tmp_path
    assert not Path(result_file).exists()  # phalanx does not create it


def test_cwd(tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    outcome = run(CommandBackend(), attempt(tmp_path / "run", "pwd", cwd=str(work)))
    assert outcome.stdout_tail.strip() == str(work)


def test_argv_keeps_arguments_with_spaces_whole(tmp_path: Path) -> None:
    outcome = run(CommandBackend(), attempt(tmp_path, ("printf", "[%s]", "a b", "$HOME", "c")))
    assert outcome.ok
    assert outcome.stdout_tail == "[a b][$HOME][c]"


# -- PHALANX_RESULT_FILE -----------------------------------------------------------------


def test_result_file_becomes_data(tmp_path: Path) -> None:
    script = """echo '{"tests": 12, "name": "x"}' > "$PHALANX_RESULT_FILE" """
    outcome = run(CommandBackend(), attempt(tmp_path, script))
    assert outcome.ok
    assert dict(outcome.data) == {"tests": 12, "name": "x"}


def test_result_file_found_from_another_cwd_with_relative_run_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    a = attempt(Path("runs"), """echo '{"n": 1}' > "$PHALANX_RESULT_FILE" """, cwd=str(elsewhere))
    outcome = run(CommandBackend(), a)
    assert dict(outcome.data) == {"n": 1}
    assert outcome.stdout_path is not None and Path(outcome.stdout_path).is_absolute()


def test_failed_attempt_still_reports_data(tmp_path: Path) -> None:
    outcome = run(CommandBackend(), attempt(tmp_path, """echo '{"failed": 2}' > "$PHALANX_RESULT_FILE"; exit 1"""))
    assert not outcome.ok
    assert dict(outcome.data) == {"failed": 2}


@pytest.mark.parametrize("content", ["not json", "[1, 2]", "\\xff"])
def test_bad_result_file_is_reported_in_data_without_changing_success(tmp_path: Path, content: str) -> None:
    outcome = run(CommandBackend(), attempt(tmp_path, f"""printf '{content}' > "$PHALANX_RESULT_FILE" """))
    assert outcome.ok
    assert set(outcome.data) == {"result_file_error"}


def test_stale_result_file_is_not_taken_for_this_attempts(tmp_path: Path) -> None:
    backend = CommandBackend()
    run(backend, attempt(tmp_path, """echo '{"old": 1}' > "$PHALANX_RESULT_FILE" """))
    outcome = run(backend, attempt(tmp_path, "true"))  # same task, attempt and run dir
    assert dict(outcome.data) == {}


# -- commands that cannot start ----------------------------------------------------------


def test_argv_command_not_found(tmp_path: Path) -> None:
    outcome = run(CommandBackend(), attempt(tmp_path, ("phalanx-no-such-command", "x")))
    assert not outcome.ok
    assert outcome.reason == "command not found: phalanx-no-such-command"
    assert outcome.exit_code == 127


def test_shell_command_not_found_names_it(tmp_path: Path) -> None:
    # The quotes make the shell necessary, so it is the shell that reports "not found".
    outcome = run(CommandBackend(), attempt(tmp_path, "phalanx-no-such-command 'x'"))
    assert not outcome.ok
    assert outcome.exit_code == 127
    assert outcome.reason is not None
    assert outcome.reason.startswith("command not found (exit 127): ")
    assert "phalanx-no-such-command" in outcome.reason


def test_plain_command_string_not_found_names_it(tmp_path: Path) -> None:
    outcome = run(CommandBackend(), attempt(tmp_path, "phalanx-no-such-command x"))
    assert outcome.exit_code == 127
    assert outcome.reason == "command not found: phalanx-no-such-command"


def test_argv_not_executable(tmp_path: Path) -> None:
    script = tmp_path / "script"
    script.write_text("echo hi\n")
    script.chmod(0o644)
    outcome = run(CommandBackend(), attempt(tmp_path, (str(script),)))
    assert outcome.reason == f"permission denied: {script}"
    assert outcome.exit_code == 126


def test_shell_command_not_executable(tmp_path: Path) -> None:
    script = tmp_path / "script"
    script.write_text("echo hi\n")
    script.chmod(0o644)
    outcome = run(CommandBackend(), attempt(tmp_path, "./script 'arg'", cwd=str(tmp_path)))
    assert outcome.exit_code == 126
    assert outcome.reason is not None
    assert outcome.reason.startswith("command not executable (exit 126): ")
    assert "script" in outcome.reason


@pytest.mark.parametrize("action", ["true", ("true",)])
def test_missing_working_directory(tmp_path: Path, action: str | tuple[str, ...]) -> None:
    missing = str(tmp_path / "missing")
    outcome = run(CommandBackend(), attempt(tmp_path, action, cwd=missing))
    assert not outcome.ok
    assert outcome.reason == f"working directory does not exist: {missing}"


# -- signals -------------------------------------------------------------------------------


def test_self_inflicted_signal_is_a_failure_not_a_crash(tmp_path: Path) -> None:
    outcome = run(CommandBackend(), attempt(tmp_path, "ulimit -c 0; kill -SEGV $$"))
    assert not outcome.ok
    assert not outcome.crashed
    assert outcome.signal == signal.SIGSEGV
    assert outcome.exit_code is None
    assert outcome.reason == "killed by signal 11 (SIGSEGV)"


def test_timeout_kills_the_whole_group_even_what_ignores_sigterm(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    # A plain background sleep, and a shell that ignores TERM (so does its sleep); the
    # command waits until all their pids are written, then waits forever.
    script = f"""
        sleep 1000 & echo $! >> {pids}
        sh -c 'trap "" TERM; sleep 1000 & echo $! >> {pids}; echo $$ >> {pids}; wait' &
        while [ "$(wc -l < {pids})" -lt 3 ]; do sleep 0.01; done
        wait
    """
    backend = CommandBackend(grace=0.2)
    run_with_timeout(backend, attempt(tmp_path, script))
    started = read_pids(pids, 3)
    wait_until(lambda: all(gone(pid) for pid in started), "the group to die")
    assert backend.running_pids() == []
    assert_no_children()


def test_timeout_with_a_command_that_exits_on_sigterm_needs_no_grace(tmp_path: Path) -> None:
    backend = CommandBackend(grace=30)
    began = time.monotonic()
    run_with_timeout(backend, attempt(tmp_path, ("sleep", "1000")), seconds=0.1)
    assert time.monotonic() - began < 5
    assert_no_children()


def test_second_cancellation_kills_at_once(tmp_path: Path) -> None:
    termed = tmp_path / "termed"
    pid_file = tmp_path / "pid"
    # Ignores TERM but notes it got one (the trap runs after each short sleep).
    script = f"trap 'echo > {termed}' TERM; echo $$ > {pid_file}; while :; do sleep 0.01; done"
    backend = CommandBackend(grace=30)

    async def go() -> float:
        job = asyncio.ensure_future(backend.run(attempt(tmp_path, script)))
        await async_wait_until(pid_file.exists, "the command to start")
        job.cancel()
        await async_wait_until(termed.exists, "the first cancellation's SIGTERM")
        second = time.monotonic()
        job.cancel()
        await asyncio.wait((job,), timeout=_BOUND)
        assert job.cancelled()
        return time.monotonic() - second

    assert asyncio.run(go()) < 2
    wait_until(lambda: gone(int(pid_file.read_text())), "the command to die")
    assert_no_children()


def test_background_leftovers_are_killed_after_a_normal_exit(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    outcome = run(CommandBackend(), attempt(tmp_path, f"sleep 1000 & echo $! > {pid_file}"))
    assert outcome.ok
    leftover = read_pids(pid_file, 1)[0]
    wait_until(lambda: gone(leftover), "the leftover to die")


def test_leftovers_may_be_kept(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    outcome = run(CommandBackend(kill_leftovers=False), attempt(tmp_path, f"sleep 1000 & echo $! > {pid_file}"))
    leftover = read_pids(pid_file, 1)[0]
    try:
        assert outcome.ok
        assert not gone(leftover)
    finally:
        os.kill(leftover, signal.SIGKILL)


# -- many attempts, closing ------------------------------------------------------------------


def test_many_concurrent_attempts_are_all_reaped(tmp_path: Path) -> None:
    backend = CommandBackend()
    limit = asyncio.Semaphore(8)

    async def one(i: int) -> Outcome:
        async with limit:
            return await backend.run(attempt(tmp_path, ("true",), task_id=f"job-{i}"))

    async def go() -> list[Outcome]:
        return await asyncio.gather(*(one(i) for i in range(200)))

    outcomes = asyncio.run(go())
    assert all(outcome.ok for outcome in outcomes)
    assert len({outcome.pid for outcome in outcomes}) == 200
    assert backend.running_pids() == []
    assert_no_children()


def test_aclose_stops_running_groups(tmp_path: Path) -> None:
    backend = CommandBackend(grace=0.2)
    stubborn = tmp_path / "stubborn"

    async def go() -> list[Outcome]:
        jobs = [
            asyncio.ensure_future(backend.run(attempt(tmp_path, ("sleep", "1000"), task_id=f"s{i}"))) for i in range(2)
        ]
        script = f"trap '' TERM; echo $$ > {stubborn}; while :; do sleep 0.01; done"
        jobs.append(asyncio.ensure_future(backend.run(attempt(tmp_path, script, task_id="stubborn"))))
        await async_wait_until(lambda: len(backend.running_pids()) == 3 and stubborn.exists(), "3 attempts")
        await asyncio.wait_for(backend.aclose(), _BOUND)
        assert backend.running_pids() == []
        done, _ = await asyncio.wait(jobs, timeout=_BOUND)
        return [job.result() for job in done]

    outcomes = asyncio.run(go())
    assert len(outcomes) == 3
    assert all(not outcome.ok and outcome.signal is not None for outcome in outcomes)
    assert {outcome.signal for outcome in outcomes} == {signal.SIGTERM, signal.SIGKILL}
    assert_no_children()
    with pytest.raises(RuntimeError):
        run(backend, attempt(tmp_path, "true"))


# -- file names ----------------------------------------------------------------------------------


def test_task_ids_never_escape_the_run_dir(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    ids = ["a/b", "a_b", "../../escape", "..", ".", "x[1]", "with space", "/abs/path", "A", "a", "é" * 200]
    backend = CommandBackend()
    paths = []
    for task_id in ids:
        outcome = run(backend, attempt(run_dir, f"echo {len(task_id)}", task_id=task_id))
        assert outcome.ok
        assert outcome.stdout_path is not None and outcome.stderr_path is not None
        paths += [Path(outcome.stdout_path), Path(outcome.stderr_path)]
    assert len(set(paths)) == len(paths)
    assert all(path.parent == run_dir and path.exists() for path in paths)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
    assert sorted(run_dir.iterdir()) == sorted(paths)


def test_attempts_get_their_own_files(tmp_path: Path) -> None:
    backend = CommandBackend()
    first = run(backend, attempt(tmp_path, "echo one", number=1))
    second = run(backend, attempt(tmp_path, "echo two", number=2))
    assert first.stdout_path != second.stdout_path
    assert first.stdout_path is not None and Path(first.stdout_path).read_text() == "one\n"


def test_safe_name() -> None:
    assert safe_name("../x y").startswith("___x_y-")
    assert safe_name("a/b") != safe_name("a_b")
    assert len(safe_name("x" * 1000)) < 100


# -- the reaper ---------------------------------------------------------------------------------------


@pytest.fixture(params=["pidfd", "polling", "polling-without-waitid"])
def reaper(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> ChildReaper:
    if request.param == "polling-without-waitid":  # as on macOS: the poller has to reap
        monkeypatch.setattr(phalanx.reaper, "_HAVE_WAITID", False)
    return ChildReaper(use_pidfd=request.param == "pidfd")


def test_reaper_returns_the_wait_status(reaper: ChildReaper) -> None:
    proc = subprocess.Popen(["sh", "-c", "exit 5"])
    status = asyncio.run(reaper.wait(proc.pid))
    proc.returncode = os.waitstatus_to_exitcode(status)
    assert proc.returncode == 5
    assert_no_children()


def test_cancelled_reaper_wait_leaves_the_child_to_the_caller(reaper: ChildReaper) -> None:
    proc = subprocess.Popen(["sleep", "1000"])

    async def go() -> int:
        waiting = asyncio.ensure_future(reaper.wait(proc.pid))
        await asyncio.sleep(0)  # let it start watching
        waiting.cancel()
        await asyncio.wait((waiting,), timeout=_BOUND)
        assert waiting.cancelled()
        assert not gone(proc.pid)  # still running, and not reaped
        os.kill(proc.pid, signal.SIGKILL)
        return await asyncio.wait_for(reaper.wait(proc.pid), _BOUND)

    proc.returncode = os.waitstatus_to_exitcode(asyncio.run(go()))
    assert proc.returncode == -signal.SIGKILL
    assert_no_children()


def test_exited_does_not_reap(reaper: ChildReaper) -> None:
    proc = subprocess.Popen(["true"])

    async def go() -> None:
        await asyncio.wait_for(reaper.exited(proc.pid), _BOUND)
        if phalanx.reaper._HAVE_WAITID:  # without waitid, seeing the exit means reaping it
            assert psutil.Process(proc.pid).status() == psutil.STATUS_ZOMBIE  # the pid stays ours
        proc.returncode = os.waitstatus_to_exitcode(reaper.reap(proc.pid))

    asyncio.run(go())
    assert proc.returncode == 0
    assert_no_children()


def test_backend_with_polling_reaper(tmp_path: Path) -> None:
    backend = CommandBackend(grace=0.2)
    backend._reaper = ChildReaper(use_pidfd=False)
    assert run(backend, attempt(tmp_path, "exit 4")).exit_code == 4
    run_with_timeout(backend, attempt(tmp_path, "trap '' TERM; sleep 1000"), seconds=0.1)
    assert_no_children()



@pytest.mark.parametrize(
    ("command", "direct"),
    [
        ("sleep 0.25", True),
        ("pytest -q tests/test_a.py", True),
        ("echo hi", False),  # sh's echo, not /bin/echo: their options differ
        ("exit 3", False),
        ("cd /tmp", False),
        ("FOO=1 env", False),
        ("echo $HOME", False),
        ("ls *.py", False),
        ("a; b", False),
        ("a && b", False),
        ("echo 'x'", False),
        ("cat < f", False),
        ("x ~/y", False),
        ("a\nb", False),
    ],
)
def test_plain_commands_skip_the_shell(command: str, direct: bool) -> None:
    argv = command_argv(command)
    assert (argv[0] != "/bin/sh") == direct
    if direct:
        assert argv == command.split()
