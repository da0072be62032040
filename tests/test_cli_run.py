"""`phalanx run` end to end: real subprocesses, process groups and signals."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
WAIT = 10.0  # seconds: the bound on every wait for a process to do something


def phalanx(*args: str, cwd: Path | None = None, **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "phalanx", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=60,
        **kwargs,  # type: ignore[call-overload]
    )


def write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text))
    return path


def wait_for(predicate: object, what: str) -> None:
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.01)
    raise AssertionError(f"gave up after {WAIT}s waiting for {what}")


def read_pids(directory: Path) -> list[int]:
    return [int(p.read_text()) for p in directory.glob("*.pid") if p.read_text().strip()]


def assert_all_gone(pids: list[int]) -> None:
    wait_for(lambda: not any(psutil.pid_exists(pid) and _alive(pid) for pid in pids), f"processes {pids} to end")


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_json_report_and_result_file_totals(tmp_path: Path) -> None:
    write(
        tmp_path / "phalanx.toml",
        """
        [tasks.a]
        cmd = 'echo "{\\"tests\\": 3, \\"failures\\": 1}" > "$PHALANX_RESULT_FILE"'
        [tasks.b]
        cmd = 'echo "{\\"tests\\": 4}" > "$PHALANX_RESULT_FILE"; echo worker=$PHALANX_WORKER id=$PHALANX_TASK_ID'
        deps = ["a"]
        """,
    )
    result = phalanx("run", "--json", "--output", "always", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["summary"]["data_totals"] == {"tests": 7, "failures": 1}
    by_id = {r["task_id"]: r for r in report["results"]}
    assert by_id["a"]["data"] == {"tests": 3, "failures": 1}
    assert "worker=1 id=b" in by_id["b"]["stdout_tail"]
    assert "worker=1 id=b" in result.stderr  # people's output went to stderr with --json


def test_failure_skips_dependents_and_exits_1(tmp_path: Path) -> None:
    write(
        tmp_path / "phalanx.toml",
        """
        [tasks.black]
        cmd = "echo reformatted; echo 'would reformat x.py' >&2; exit 3"
        [tasks.mypy]
        cmd = "true"
        deps = ["black"]
        [tasks.ruff]
        cmd = "true"
        """,
    )
    result = phalanx("run", cwd=tmp_path)
    assert result.returncode == 1
    assert "FAIL" in result.stdout and "exit code 3" in result.stdout
    assert "--- stderr: black ---\nwould reformat x.py\n" in result.stdout  # grouped output on failure
    assert "skipped: mypy: dependency 'black' failed" in result.stdout


def test_command_not_found_says_so(tmp_path: Path) -> None:
    write(tmp_path / "phalanx.toml", '[tasks.x]\ncmd = ["no-such-command-phalanx"]\n')
    result = phalanx("run", cwd=tmp_path)
    assert result.returncode == 1
    assert "command not found: no-such-command-phalanx" in result.stdout


def test_select_brings_dependencies_unless_no_deps(tmp_path: Path) -> None:
    write(
        tmp_path / "phalanx.toml",
        """
        [tasks.a]
        cmd = "true"
        [tasks.b]
        cmd = "true"
        deps = ["a"]
        tags = ["t"]
        [tasks.c]
        cmd = "true"
        """,
    )
    with_deps = phalanx("run", "--select", "tag:t", "--json", cwd=tmp_path)
    assert sorted(r["task_id"] for r in json.loads(with_deps.stdout)["results"]) == ["a", "b"]
    alone = phalanx("run", "--select", "b", "--no-deps", "--json", cwd=tmp_path)
    assert [r["task_id"] for r in json.loads(alone.stdout)["results"]] == ["b"]
    unknown = phalanx("run", "--select", "bb", cwd=tmp_path)
    assert unknown.returncode == 2
    assert unknown.stderr.strip() == "phalanx: error: --select bb: no task 'bb' (did you mean 'b'?)"


def test_dry_run_runs_nothing(tmp_path: Path) -> None:
    write(tmp_path / "phalanx.toml", '[tasks.a]\ncmd = "touch ran"\n')
    result = phalanx("run", "--dry-run", cwd=tmp_path)
    assert result.returncode == 0
    assert "1. a: touch ran" in result.stdout
    assert not (tmp_path / "ran").exists()


def test_timeout_kills_every_grandchild(tmp_path: Path) -> None:
    write(
        tmp_path / "phalanx.toml",
        """
        [tasks.spawner]
        cmd = "sleep 1000 & echo $! > one.pid; (trap '' TERM; exec sleep 1000) & echo $! > two.pid; wait"
        timeout = "0.5s"
        """,
    )
    result = phalanx("run", cwd=tmp_path)
    assert result.returncode == 1
    assert "TIMEOUT" in result.stdout
    pids = read_pids(tmp_path)
    assert len(pids) == 2
    assert_all_gone(pids)


def test_fail_fast_stops_a_running_task(tmp_path: Path) -> None:
    write(
        tmp_path / "phalanx.toml",
        """
        [tasks.long]
        cmd = "echo $$ > long.pid; exec sleep 1000"
        [tasks.fails]
        cmd = "while [ ! -s long.pid ]; do sleep 0.01; done; exit 1"
        """,
    )
    started = time.monotonic()
    result = phalanx("run", "--fail-fast", "--json", cwd=tmp_path)
    assert time.monotonic() - started < WAIT
    assert result.returncode == 1
    statuses = {r["task_id"]: r["status"] for r in json.loads(result.stdout)["results"]}
    assert statuses == {"long": "cancelled", "fails": "failed"}
    assert_all_gone(read_pids(tmp_path))


@pytest.mark.parametrize(
    ("signum", "code", "label"),
    [
        pytest.param(signal.SIGINT, 130, "interrupt", id="SIGINT"),
        pytest.param(signal.SIGTERM, 143, "terminate", id="SIGTERM"),
    ],
)
def test_signal_stops_everything_and_prints_summary(tmp_path: Path, signum: int, code: int, label: str) -> None:
    write(
        tmp_path / "phalanx.toml",
        """
        [tasks.a]
        cmd = "sleep 1000 & echo $! > a-child.pid; echo $$ > a.pid; wait"
        [tasks.b]
        cmd = "(trap '' TERM INT; exec sleep 1000) & echo $! > b-child.pid; echo $$ > b.pid; wait"
        [tasks.c]
        cmd = "true"
        deps = ["a"]
        """,
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "phalanx", "run", "-j", "4"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(lambda: len(read_pids(tmp_path)) == 4, "both tasks to start")
        pids = read_pids(tmp_path)
        process.send_signal(signum)
        stdout, stderr = process.communicate(timeout=WAIT)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == code, stderr
    assert "Summary: 3 tasks" in stdout
    assert f"[stopped: {label}]" in stdout
    other = {"interrupt": "terminate", "terminate": "interrupt"}[label]
    assert f"stopped: {other}" not in stdout
    assert "Traceback" not in stderr
    assert_all_gone(pids)


def test_plan_and_graph_commands(tmp_path: Path) -> None:
    plan = phalanx("plan", str(EXAMPLES / "ci.toml"), "-j", "8")
    assert plan.returncode == 0
    assert "critical path" in plan.stdout
    for fmt, marker in (("text", "level 0"), ("mermaid", "graph TD"), ("dot", "digraph phalanx")):
        graph = phalanx("graph", str(EXAMPLES / "ci.toml"), "--format", fmt)
        assert graph.returncode == 0 and marker in graph.stdout


def test_version_and_help() -> None:
    assert phalanx("--version").stdout.startswith("phalanx, version ")
    help_text = phalanx("run", "--help").stdout
    assert "Examples:" in help_text and "--fail-fast" in help_text


def test_missing_default_file_is_bad_input(tmp_path: Path) -> None:
    result = phalanx("run", cwd=tmp_path)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.stderr


def test_environment_of_parent_is_kept(tmp_path: Path) -> None:
    write(tmp_path / "phalanx.toml", '[tasks.a]\ncmd = "test \\"$KEEP_ME\\" = yes"\nenv = { OTHER = "1" }\n')
    result = phalanx("run", cwd=tmp_path, env={**os.environ, "KEEP_ME": "yes"})
    assert result.returncode == 0, result.stdout


def test_a_timed_out_task_still_shows_what_it_printed(tmp_path: Path) -> None:
    write(
        tmp_path / "phalanx.toml",
        """
        [tasks.slow]
        cmd = "echo started; echo complaint >&2; exec sleep 1000"
        timeout = "0.5s"
        """,
    )
    result = phalanx("run", "--json", cwd=tmp_path)
    assert result.returncode == 1
    slow = json.loads(result.stdout)["results"][0]
    assert slow["status"] == "timed_out"
    assert slow["stdout_tail"] == "started\n" and slow["stderr_tail"] == "complaint\n"
    assert "--- stdout: slow ---\nstarted\n" in result.stderr
