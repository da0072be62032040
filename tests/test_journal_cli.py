"""The journal from the command line: `phalanx run --resume`, `runs`, `show`, `history`."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest


def phalanx(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "phalanx", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=60)


def test_resume_reruns_only_what_did_not_succeed_and_what_changed(tmp_path: Path) -> None:
    (tmp_path / "phalanx.toml").write_text(textwrap.dedent("""
        [tasks.a]
        cmd = "echo a >> ran"
        [tasks.b]
        cmd = "echo b >> ran; test -e fixed"
        deps = ["a"]
        [tasks.c]
        cmd = "echo c >> ran"
        deps = ["b"]
    """))
    first = phalanx("run", cwd=tmp_path)
    assert first.returncode == 1
    assert (tmp_path / "ran").read_text().split() == ["a", "b"]
    (tmp_path / "fixed").touch()
    second = phalanx("run", "--resume", cwd=tmp_path)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "resuming: 1 done, 2 to run" in second.stdout
    assert (tmp_path / "ran").read_text().split() == ["a", "b", "b", "c"]  # a, which succeeded, never again
    third = phalanx("run", "--resume", cwd=tmp_path)
    assert "resuming: 3 done, 0 to run" in third.stdout
    assert (tmp_path / "ran").read_text().split() == ["a", "b", "b", "c"]
    # Editing a task's command reruns it (and what depends on it) on the next resume.
    text = (tmp_path / "phalanx.toml").read_text().replace("echo c >> ran", "echo C >> ran")
    (tmp_path / "phalanx.toml").write_text(text)
    fourth = phalanx("run", "--resume", cwd=tmp_path)
    assert "resuming: 2 done, 1 to run" in fourth.stdout
    assert (tmp_path / "ran").read_text().split()[-1] == "C"

    runs = phalanx("runs", cwd=tmp_path)
    assert runs.returncode == 0
    lines = runs.stdout.splitlines()
    assert lines[0].split() == ["run", "started", "took", "status", "tasks"]
    assert len(lines) == 5 and " failed " in lines[-1]
    first_run = lines[-1].split()[0]
    shown = phalanx("show", first_run[:6], cwd=tmp_path)
    assert "failed" in shown.stdout and "skipped" in shown.stdout and "exit code 1" in shown.stdout
    attempt = phalanx("show", first_run, "b", cwd=tmp_path)
    assert "b attempt 1: failed" in attempt.stdout and "--- stdout ---" not in attempt.stdout
    history = phalanx("history", cwd=tmp_path)
    assert [line.split()[0] for line in history.stdout.splitlines()] == ["a", "b", "c"]
    assert phalanx("history", "--clear", cwd=tmp_path).stdout.strip() == "forgot 3 estimates"
    assert phalanx("show", "nosuchrun", cwd=tmp_path).returncode == 2


def test_runs_without_a_journal_say_so(tmp_path: Path) -> None:
    (tmp_path / "phalanx.toml").write_text('[tasks.a]\ncmd = "true"\n')
    done = phalanx("runs", cwd=tmp_path)
    assert done.returncode == 2 and "no runs recorded yet" in done.stderr


def test_a_damaged_journal_does_not_stop_the_run_but_stops_resume(tmp_path: Path) -> None:
    (tmp_path / "phalanx.toml").write_text('[tasks.a]\ncmd = "echo hi"\n')
    (tmp_path / ".phalanx").mkdir()
    (tmp_path / ".phalanx" / "journal.db").write_text("not a database")
    done = phalanx("run", cwd=tmp_path)
    assert done.returncode == 0 and "PASS" in done.stdout
    assert "warning: running without a journal" in done.stderr
    resumed = phalanx("run", "--resume", cwd=tmp_path)
    assert resumed.returncode == 2 and "--resume needs the run journal" in resumed.stderr
    assert "Traceback" not in resumed.stderr


def test_report_writes_a_past_runs_html_from_the_journal(tmp_path: Path) -> None:
    (tmp_path / "phalanx.toml").write_text(textwrap.dedent("""
        [tasks.a]
        cmd = "echo '<script>alert(1)</script>'"
        [tasks.b]
        cmd = "exit 3"
        deps = ["a"]
    """))
    assert phalanx("run", cwd=tmp_path).returncode == 1
    run_id = phalanx("runs", cwd=tmp_path).stdout.splitlines()[1].split()[0]
    done = phalanx("report", run_id[:5], "--html", "past.html", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    page = (tmp_path / "past.html").read_text()
    assert page.count('class="bar') == 2  # one bar per attempt
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "<script>alert(1)" not in page
    assert phalanx("report", "nope", "--html", "x.html", cwd=tmp_path).returncode == 2


def _stable(text: str, run_ids: list[str]) -> str:
    """The text with what changes from run to run (ids, clock times, durations) replaced."""
    import re

    for number, run_id in enumerate(run_ids, 1):
        text = text.replace(run_id, f"<run{number}>").replace(run_id[:14], f"<run{number}>")
    text = re.sub(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", "<time>", text)
    return re.sub(r"\d+(\.\d+)?(ms|s)\b", "<dur>", text)


def test_runs_show_and_history_as_people_read_them(tmp_path: Path) -> None:
    from test_snapshots import assert_snapshot

    (tmp_path / "phalanx.toml").write_text(textwrap.dedent("""
        [tasks.build]
        cmd = "echo built"
        [tasks.test]
        cmd = "echo 'one test failed' >&2; exit 1"
        deps = ["build"]
        [tasks.deploy]
        cmd = "true"
        deps = ["test"]
    """))
    phalanx("run", cwd=tmp_path)
    runs = phalanx("runs", cwd=tmp_path).stdout
    run_id = runs.splitlines()[1].split()[0]
    full_id = phalanx("show", run_id, cwd=tmp_path).stdout.split()[1]
    text = "\n".join([
        "$ phalanx runs", runs,
        "$ phalanx show RUN", phalanx("show", run_id, cwd=tmp_path).stdout,
        "$ phalanx show RUN test", phalanx("show", run_id, "test", cwd=tmp_path).stdout,
        "$ phalanx history", phalanx("history", cwd=tmp_path).stdout,
    ])
    assert_snapshot("journal_commands.txt", _stable(text, [full_id]))


@pytest.mark.parametrize("name", ["rows.jsonl", "rows.csv"])
def test_resume_writes_the_results_rows_a_kill_kept_from_the_file_once(tmp_path: Path, name: str) -> None:
    """A kill between a task's journal record and its results row leaves the task done and
    rowless: here the rows of two succeeded tasks are taken out of the file, as such kills
    would have left it. ``--resume`` writes them back from the journal before its own tasks
    run, exactly as they were (the reported data, masked; the note on cut output), and the
    row of a task that failed before does not stand for its success; a second ``--resume``
    writes nothing. The row of a task that reported more than the journal keeps is not
    made up: the resume says it is missing."""
    (tmp_path / "phalanx.toml").write_text(textwrap.dedent("""
        [tasks.report]
        cmd = '''printf '{"n": 3, "token": "id-%s", "nested": {"x": [1, 2.5]}}' "$API_TOKEN" > "$PHALANX_RESULT_FILE"'''
        [tasks.loud]
        cmd = "head -c 5000 /dev/zero"
        max_output = "1kB"
        [tasks.after]
        cmd = "true"
        deps = ["report"]
        [tasks.flaky]
        cmd = "test -e fixed"
        [tasks.huge]
        cmd = '''printf '{"blob": "%070000d"}' 0 > "$PHALANX_RESULT_FILE"'''
    """))
    env = {**os.environ, "API_TOKEN": "sup3r-s3cret-value"}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "phalanx", "run", "--redact", "API_TOKEN", "--results", name,
                               *args], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=60)

    rows = tmp_path / name
    assert run().returncode == 1
    lines = rows.read_bytes().splitlines(keepends=True)
    header = lines[:1] if name.endswith(".csv") else []
    by_task = {line.split(b'"', 4)[3] if not header else line.split(b",", 1)[0]: line
               for line in lines[len(header):]}
    assert set(by_task) == {b"report", b"loud", b"after", b"flaky", b"huge"}
    assert b"id-***" in by_task[b"report"] and b"output cut: stdout 5 kB printed, 1 kB kept" in by_task[b"loud"]
    kept = [by_task[b"after"], by_task[b"flaky"]]
    rows.write_bytes(b"".join(header + kept))  # the rows of report, loud and huge lost to kills

    (tmp_path / "fixed").touch()
    resumed = run("--resume")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "resuming: 4 done, 1 to run" in resumed.stdout
    assert f"wrote 2 missing rows (tasks done earlier) to {name}" in resumed.stdout
    assert f"warning: {name} lacks the rows of huge, done earlier" in resumed.stderr
    now = rows.read_bytes().splitlines(keepends=True)
    assert now[: len(header) + 4] == header + kept + [by_task[b"report"], by_task[b"loud"]]
    assert len(now) == len(header) + 5 and b"flaky" in now[-1] and b"succeeded" in now[-1]
    assert b"s3cret" not in rows.read_bytes()

    again = run("--resume")
    assert again.returncode == 0 and "resuming: 5 done, 0 to run" in again.stdout
    assert "missing row" not in again.stdout + again.stderr
    assert rows.read_bytes().splitlines(keepends=True) == now
