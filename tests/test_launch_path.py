"""The command backend's launch path: posix_spawn (or Popen where it must), builtins with a
program of their own run without a shell, output files reused per slot or passed straight
through. Real processes throughout."""

from __future__ import annotations

import asyncio
import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

from phalanx.backends.base import Attempt, Outcome
from phalanx.backends.command import CommandBackend, command_argv
from phalanx.backends.outputs import OutputFiles
from phalanx.model import Task

_BOUND = 10.0


def attempt(run_dir: Path, action: str | tuple[str, ...], *, task_id: str = "t", number: int = 1,
            worker: int = 1, **task: Any) -> Attempt:
    return Attempt(task=Task(task_id, action, **task), number=number, worker=worker, run_id="r", run_dir=run_dir)


def run_all(backend: CommandBackend, *attempts: Attempt) -> list[Outcome]:
    """Run the attempts one after another (as one slot does), reading each output at its end,
    as the sinks do when they hear of it; the backend is closed at the end."""

    async def go() -> list[Outcome]:
        outcomes = []
        async with asyncio.timeout(_BOUND):
            for one in attempts:
                outcome = await backend.run(one)
                outcomes.append(replace_paths_with_content(outcome))
            await backend.aclose()
        return outcomes

    return asyncio.run(go())


def replace_paths_with_content(outcome: Outcome) -> Outcome:
    """The outcome with what its files held when the attempt ended, in its data."""
    content = {}
    for name, path in (("stdout", outcome.stdout_path), ("stderr", outcome.stderr_path)):
        content[name] = None if path is None else Path(path).read_bytes()
    return Outcome(ok=outcome.ok, exit_code=outcome.exit_code, reason=outcome.reason,
                   data={**outcome.data, "files": content, "paths": (outcome.stdout_path, outcome.stderr_path)},
                   stdout_tail=outcome.stdout_tail, stderr_tail=outcome.stderr_tail)


# ------------------------------------------------------------------------ true


def test_true_keeps_the_shell_whose_builtin_costs_less_than_its_program() -> None:
    assert command_argv("true 1")[:2] == ["/bin/sh", "-c"]


def test_true_and_false_keep_their_exit_status(tmp_path: Path) -> None:
    backend = CommandBackend(outputs=OutputFiles(reuse=True))
    ok, failed = run_all(backend, attempt(tmp_path, "true 1"), attempt(tmp_path, "false 1"))
    assert (ok.ok, ok.exit_code) == (True, 0)
    assert (failed.ok, failed.exit_code) == (False, 1)


# ------------------------------------------------------------------------ spawning


def test_a_job_gets_default_sigpipe_and_no_inherited_descriptor(tmp_path: Path) -> None:
    """Python ignores SIGPIPE and SIGXFSZ and exec keeps ignored signals: posix_spawn must
    restore their defaults (``yes | head`` must end). A descriptor phalanx was started with
    is not passed on to a job."""
    read_end, write_end = os.pipe()
    os.set_inheritable(write_end, True)  # as a parent shell or make would pass it
    try:
        ignored, fds = run_all(
            CommandBackend(outputs=OutputFiles(reuse=True)),
            attempt(tmp_path, "grep SigIgn /proc/self/status"),  # plain words: exec'd directly
            attempt(tmp_path, "ls /proc/self/fd"),
        )
    finally:
        os.close(read_end)
        os.close(write_end)
    assert ignored.ok and fds.ok
    mask = int(ignored.data["files"]["stdout"].split()[1], 16)
    assert mask & (1 << (13 - 1)) == 0, "SIGPIPE ignored"
    assert mask & (1 << (25 - 1)) == 0, "SIGXFSZ ignored"
    listed = {int(fd) for fd in fds.data["files"]["stdout"].split()}
    assert write_end not in listed
    assert listed <= {0, 1, 2, 3}  # ls's own directory descriptor is the only other


def test_yes_into_head_ends(tmp_path: Path) -> None:
    (outcome,) = run_all(CommandBackend(outputs=OutputFiles(reuse=True)), attempt(tmp_path, "yes | head -c 3"))
    assert outcome.ok
    assert outcome.data["files"]["stdout"] == b"y\ny"


def test_the_program_is_looked_up_on_the_tasks_own_path(tmp_path: Path) -> None:
    tools = tmp_path / "tools"
    tools.mkdir()
    tool = tools / "my-tool"
    tool.write_text("#!/bin/sh\necho mine \"$@\"\n")
    tool.chmod(0o755)
    path = f"{tools}{os.pathsep}{os.environ.get('PATH', '')}"
    (found, missing) = run_all(
        CommandBackend(outputs=OutputFiles(reuse=True)),
        attempt(tmp_path, "my-tool a b", env={"PATH": path}),
        attempt(tmp_path, "my-tool a b"),
    )
    assert found.ok and found.data["files"]["stdout"] == b"mine a b\n"
    assert (missing.ok, missing.exit_code, missing.reason) == (False, 127, "command not found: my-tool")


def test_a_task_with_its_own_working_directory_still_runs_there(tmp_path: Path) -> None:
    where = tmp_path / "elsewhere"
    where.mkdir()
    (outcome,) = run_all(CommandBackend(outputs=OutputFiles(reuse=True)), attempt(tmp_path, "pwd", cwd=str(where)))
    assert outcome.ok
    assert outcome.data["files"]["stdout"] == f"{where}\n".encode()


# ----------------------------------------------------------- output files per slot


def test_a_slots_files_hold_each_attempts_own_output(tmp_path: Path) -> None:
    backend = CommandBackend(outputs=OutputFiles(reuse=True))
    first, silent, short, err = run_all(
        backend,
        attempt(tmp_path, "printf 'a long first output'", task_id="a"),
        attempt(tmp_path, "true", task_id="b"),
        attempt(tmp_path, "printf x", task_id="c"),
        attempt(tmp_path, "printf oops >&2", task_id="d"),
    )
    assert first.data["files"] == {"stdout": b"a long first output", "stderr": b""}
    assert silent.data["files"] == {"stdout": b"", "stderr": b""}
    assert short.data["files"] == {"stdout": b"x", "stderr": b""}  # nothing left of the first
    assert err.data["files"] == {"stdout": b"", "stderr": b"oops"}
    assert (short.stdout_tail, err.stderr_tail) == ("x", "oops")
    # One pair of files served them all, and no other file was made.
    assert len({outcome.data["paths"] for outcome in (first, silent, short, err)}) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["slot-1.err", "slot-1.out"]


def test_a_result_file_is_never_taken_for_the_next_attempts(tmp_path: Path) -> None:
    backend = CommandBackend(outputs=OutputFiles(reuse=True))
    wrote, silent = run_all(
        backend,
        attempt(tmp_path, 'echo \'{"n": 1}\' > "$PHALANX_RESULT_FILE"', task_id="a"),
        attempt(tmp_path, "true", task_id="b"),
    )
    assert wrote.data["n"] == 1
    assert "n" not in silent.data


def test_attempts_at_once_in_one_slot_number_get_files_of_their_own(tmp_path: Path) -> None:
    """Tasks that need no slot all run as worker 0, and a caller may reuse a number: an
    attempt whose slot's pair is taken writes to files of its own."""
    backend = CommandBackend(outputs=OutputFiles(reuse=True))
    marker = tmp_path / "go"

    async def go() -> tuple[Outcome, Outcome]:
        async with asyncio.timeout(_BOUND):
            slow = asyncio.ensure_future(backend.run(attempt(
                tmp_path, f"while [ ! -e {marker} ]; do sleep 0.01; done; echo slow", task_id="slow")))
            fast = await backend.run(attempt(tmp_path, f"echo fast; touch {marker}", task_id="fast"))
            fast = replace_paths_with_content(fast)
            slow_outcome = replace_paths_with_content(await slow)
            await backend.aclose()
            return slow_outcome, fast

    slow, fast = asyncio.run(go())
    assert slow.data["files"]["stdout"] == b"slow\n"
    assert fast.data["files"]["stdout"] == b"fast\n"
    assert slow.data["paths"] != fast.data["paths"]


def test_per_attempt_files_when_not_reused(tmp_path: Path) -> None:
    first, second = run_all(CommandBackend(), attempt(tmp_path, "echo 1", task_id="a"),
                            attempt(tmp_path, "echo 2", task_id="b"))
    assert first.data["paths"] != second.data["paths"]
    assert Path(first.data["paths"][0]).read_bytes() == b"1\n"  # kept after the next attempt


def test_a_stream_passed_through_is_not_captured(tmp_path: Path) -> None:
    target = tmp_path / "straight.txt"
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        (outcome,) = run_all(CommandBackend(outputs=OutputFiles(reuse=True, stdout_to=fd)),
                             attempt(tmp_path / "run", "echo out; echo err >&2"))
    finally:
        os.close(fd)
    assert target.read_bytes() == b"out\n"
    assert outcome.data["paths"][0] is None and outcome.stdout_tail == ""
    assert outcome.data["files"]["stderr"] == b"err\n"


# ------------------------------------------------------------------ phalanx map


def _map(args: list[str], cwd: Path, **run: Any) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "phalanx", "map", *args], cwd=cwd, timeout=60, check=False,
                          **run)


def test_map_ungrouped_jobs_write_straight_to_its_stdout(tmp_path: Path) -> None:
    done = _map(["-u", ": {}; readlink /proc/self/fd/1", ":::", "1"], tmp_path, capture_output=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(b"pipe:[")  # phalanx's own stdout, not a file it copies from


def test_map_jobs_write_straight_to_dev_null(tmp_path: Path) -> None:
    """Output nobody reads is not captured: the job's stdout is phalanx's /dev/null itself
    (its stderr, a pipe here, is captured and printed by phalanx)."""
    script = "import os, sys; sys.stderr.write(os.readlink('/proc/self/fd/1'))"
    done = _map([f"{shlex.quote(sys.executable)} -c {shlex.quote(script)} {{}}", ":::", "1"], tmp_path,
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert done.returncode == 0
    assert done.stderr == b"/dev/null"


def test_map_grouped_output_comes_from_a_slot_file(tmp_path: Path) -> None:
    done = _map(["-j1", ": {}; readlink /proc/self/fd/1", ":::", "1", "2"], tmp_path, capture_output=True)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.decode().splitlines()
    assert len(lines) == 2 and all(line.endswith("/slot-1.out") for line in lines), lines
