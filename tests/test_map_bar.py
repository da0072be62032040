"""``phalanx map --bar`` on a terminal: the bar never glues itself to the jobs' output.

The bar is drawn on stderr and redrawn in place; job output is written to stdout and
stderr as raw bytes. Both go to one pseudo-terminal here, as a user sees them: every line
a job printed must stand on a line of its own once the bar's redraws are taken out.
"""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import struct
import subprocess
import termios
import time
from pathlib import Path

from mapsupport import PHALANX_MAP, WAIT, environment

_CSI = re.compile(rb"\x1b\[[0-9;?]*[ -/]*[@-~]")
_COLOUR = re.compile(rb"\x1b\[(?:[0-9;]*;)?(?:3[0-9]|9[0-7]|4[0-9]|10[0-7])(?:;[0-9;]*)?m")


def _run_on_terminal(args: list[str], cwd: Path, extra_env: dict[str, str] | None = None) -> tuple[int, bytes]:
    """Run ``phalanx map ARGS`` with stdout and stderr on one pseudo-terminal; its exit
    status and everything it wrote there (read to the end, within a bounded time)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    env = environment(cwd, {"TERM": "xterm-256color", **(extra_env or {})})
    for name in ("COLUMNS", "LINES", "FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE"):
        env.pop(name, None)
    if extra_env is None or "NO_COLOR" not in extra_env:
        env.pop("NO_COLOR", None)
    try:
        process = subprocess.Popen(
            [*PHALANX_MAP, *args], stdin=subprocess.DEVNULL, stdout=slave, stderr=slave, cwd=cwd, env=env
        )
    finally:
        os.close(slave)
    chunks: list[bytes] = []
    deadline = time.monotonic() + WAIT
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                continue
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: every writer closed the terminal
                break
            if not chunk:
                break
            chunks.append(chunk)
        else:
            raise AssertionError(f"phalanx map did not finish writing within {WAIT} s: {b''.join(chunks)!r}")
        status = process.wait(timeout=WAIT)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        os.close(master)
    return status, b"".join(chunks)


def _screen_lines(output: bytes) -> list[bytes]:
    return [line.strip() for line in re.split(rb"[\r\n]", _CSI.sub(b"", output))]


def test_bar_redraws_never_glue_to_job_output(tmp_path: Path) -> None:
    count = 20
    status, output = _run_on_terminal(
        ["--bar", "-k", "-j", "4", "echo job {}; echo err {} >&2", ":::", *map(str, range(1, count + 1))],
        tmp_path,
    )
    assert status == 0, output
    lines = _screen_lines(output)
    assert any(b"phalanx" in line and f"{count}/{count}".encode() in line for line in lines), output
    for n in range(1, count + 1):
        for line in (f"job {n}".encode(), f"err {n}".encode()):
            assert line in lines, f"{line!r} is not a line of its own in {output!r}"
    # The bar's text is never before or after a job's line on one line either.
    for line in lines:
        if b"phalanx" in line:
            assert b"job" not in line and b"err" not in line, line


def test_bar_with_no_color_draws_no_colour(tmp_path: Path) -> None:
    status, output = _run_on_terminal(["--bar", "echo", "job", "{}", ":::", "1", "2", "3"], tmp_path, {"NO_COLOR": "1"})
    assert status == 0, output
    lines = _screen_lines(output)
    assert any(b"phalanx" in line and b"3/3" in line for line in lines), output
    assert not _COLOUR.search(output), output
    for n in (1, 2, 3):
        assert f"job {n}".encode() in lines, output
