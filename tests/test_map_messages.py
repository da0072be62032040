"""What `phalanx map` says on stderr where GNU parallel speaks: pinned word for word."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

MAP = [sys.executable, "-m", "phalanx", "map"]


def _stderr(args: list[str], cwd: Path) -> tuple[int, str]:
    done = subprocess.run([*MAP, *args], cwd=cwd, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    return done.returncode, done.stderr


def test_a_command_that_cannot_start_says_so(tmp_path: Path) -> None:
    assert _stderr(["nosuchcmd-phalanx", ":::", "a"], tmp_path) == (
        1, "phalanx map: command not found: nosuchcmd-phalanx\n"
    )


def test_a_job_killed_by_timeout_is_named(tmp_path: Path) -> None:
    assert _stderr(["--timeout", "0.3", "sleep {}", ":::", "30"], tmp_path) == (
        1, "phalanx map: warning: this job was killed because it timed out after 0.300s: sleep 30\n"
    )


def test_a_job_killed_by_halt_is_named(tmp_path: Path) -> None:
    # The failing job waits for the long one to have started, so the halt finds it running.
    code, stderr = _stderr(
        ["-j2", "--halt", "now,fail=1", ":::", "touch up; sleep 30",
         "while [ ! -e up ]; do sleep 0.01; done; exit 3"],
        tmp_path,
    )
    assert (code, stderr) == (3, "phalanx map: warning: this job was killed by --halt: touch up; sleep 30\n")


def test_input_from_a_terminal_is_announced(tmp_path: Path) -> None:
    primary, secondary = os.openpty()
    try:
        proc = subprocess.Popen([*MAP, "echo"], cwd=tmp_path, stdin=secondary, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        os.close(secondary)
        assert proc.stderr is not None
        line = proc.stderr.readline()  # written before any input is read
        os.write(primary, b"hello\n\x04")  # a line, then Ctrl-D
        out, err = proc.communicate(timeout=10)
    finally:
        os.close(primary)
    assert line == ("phalanx map: warning: input is read from the terminal; press Ctrl-D to end it "
                    "(or give inputs after ::: or ::::, or pipe them in)\n")
    assert (proc.returncode, out, err) == (0, "hello\n", "")
