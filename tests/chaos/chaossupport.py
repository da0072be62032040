"""What the chaos scenarios share: starting phalanx with a marker every process it starts
inherits, finding the marked processes still alive, watching the journal, measuring a
run's peak memory, and the tally of the whole suite.

The marker is an environment variable with a value of its own per scenario: a task, what
the task started, a watchdog, all inherit it, so "no process carrying the marker" means
nothing phalanx started outlived it, whatever process group or session it moved to.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from mapsupport import WAIT, environment

PHALANX = (sys.executable, "-m", "phalanx")

#: The environment variable that marks a scenario's processes.
MARK = "PHALANX_CHAOS_MARK"

#: How long the processes phalanx started may take to go once it has gone (its own grace
#: period after SIGINT or SIGTERM, a watchdog's after SIGKILL), in seconds.
GONE_BOUND = WAIT

_POLL = 0.02


def new_mark() -> str:
    return secrets.token_hex(8)


def chaos_env(cwd: Path, mark: str, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment phalanx runs in (as the map tests': /bin/sh, a UTF-8 locale), marked."""
    return environment(cwd, {MARK: mark, **(extra or {})})


def start_phalanx(
    args: Sequence[str], *, cwd: Path, mark: str, env: Mapping[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """``phalanx ARGS`` in the background, marked, stdin closed, output captured."""
    return subprocess.Popen([*PHALANX, *args], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, cwd=cwd, env=chaos_env(cwd, mark, env))


def run_phalanx(
    args: Sequence[str], *, cwd: Path, mark: str, timeout: float = 120.0, **popen: Any
) -> subprocess.CompletedProcess[str]:
    """``phalanx ARGS`` to its end (bounded), marked; ``popen``: more of `subprocess.run`'s arguments."""
    options: dict[str, Any] = {"stdin": subprocess.DEVNULL, "stdout": subprocess.PIPE, "stderr": subprocess.PIPE,
                               **popen}
    return subprocess.run([*PHALANX, *args], text=True, cwd=cwd, env=chaos_env(cwd, mark), timeout=timeout,
                          check=False, **options)


def finish(process: subprocess.Popen[bytes], timeout: float = WAIT) -> tuple[bytes, bytes]:
    """``process``'s output once it has exited (bounded: killed if it does not)."""
    try:
        return process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        _, stderr = process.communicate(timeout=WAIT)
        raise AssertionError(f"phalanx did not exit within {timeout}s: {stderr.decode()[-2000:]}") from None


def wait_until(
    predicate: Callable[[], bool], what: str, process: subprocess.Popen[bytes], timeout: float = 30.0
) -> None:
    """Poll ``predicate`` (bounded) while ``process`` runs; fail naming ``what`` otherwise."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if process.poll() is not None:
            _, stderr = process.communicate()
            raise AssertionError(f"phalanx ended ({process.returncode}) before {what}: {stderr.decode()[-2000:]}")
        time.sleep(_POLL / 2)
    process.kill()
    process.communicate(timeout=WAIT)
    raise AssertionError(f"gave up after {timeout}s waiting for {what}")


def marked(mark: str) -> list[psutil.Process]:
    """The live processes (zombies are dead) that carry ``mark`` in their environment."""
    found = []
    for process in psutil.process_iter():
        try:
            if process.environ().get(MARK) == mark and process.status() != psutil.STATUS_ZOMBIE:
                found.append(process)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue  # gone meanwhile, or another user's (never ours)
    return found


def lingering(mark: str, bound: float = GONE_BOUND) -> list[str]:
    """The marked processes still alive after up to ``bound`` seconds of waiting for them to
    go (described: pid and command line); each is then killed, so a failing scenario leaves
    nothing behind."""
    deadline = time.monotonic() + bound
    left = marked(mark)
    while left and time.monotonic() < deadline:
        time.sleep(_POLL)
        left = marked(mark)
    described = []
    for process in left:
        with contextlib.suppress(psutil.Error):
            described.append(f"{process.pid} {' '.join(process.cmdline())[:100]}")
            process.kill()
    return described


class JournalWatch:
    """Reads, while a run goes on, how many tasks its newest run has finished (read-only:
    the journal's WAL mode lets a reader look without ever blocking the writer)."""

    def __init__(self, directory: Path) -> None:
        self._path = directory / ".phalanx" / "journal.db"
        self._db: sqlite3.Connection | None = None

    def finished(self, status: str = "succeeded") -> int:
        if self._db is None:
            if not self._path.exists():
                return 0
            self._db = sqlite3.connect(f"file:{self._path}?mode=ro", uri=True, timeout=WAIT)
        try:
            (count,) = self._db.execute(
                "SELECT count(*) FROM tasks WHERE run_seq = (SELECT max(seq) FROM runs) AND status = ?", (status,)
            ).fetchone()
        except sqlite3.OperationalError:  # the schema is being created: nothing finished yet
            return 0
        return int(count)

    def close(self) -> None:
        if self._db is not None:
            self._db.close()


@dataclass(frozen=True)
class Measured:
    """How a command ended, and the most memory it held at once."""

    returncode: int
    peak_rss: int  # bytes: the largest resident set of the process and of what it reaped
    seconds: float


def run_measured(
    args: Sequence[str], *, cwd: Path, mark: str, stdout: Path, timeout: float, stdin: Path | None = None
) -> Measured:
    """``phalanx ARGS`` to its end, bounded (killed after ``timeout`` seconds), stdout to a
    file; its peak RSS from the kernel's own accounting (``wait4``'s ``ru_maxrss``), which
    no polling can miss. Its children count too (the tasks, a watchdog): each is far
    smaller than phalanx, so the figure bounds phalanx's own from above."""
    started = time.monotonic()
    with open(stdin or os.devnull, "rb") as source, stdout.open("wb") as sink:
        process = subprocess.Popen([*PHALANX, *args], stdin=source, stdout=sink, stderr=subprocess.DEVNULL, cwd=cwd,
                                   env=chaos_env(cwd, mark))
    timer = threading.Timer(timeout, process.kill)
    timer.start()
    try:
        _, status, usage = os.wait4(process.pid, 0)
    finally:
        timer.cancel()
    process.returncode = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not wait for it again
    assert time.monotonic() - started < timeout, f"phalanx {' '.join(args[:2])} did not end within {timeout}s"
    return Measured(process.returncode, usage.ru_maxrss * 1024, time.monotonic() - started)


def free_bytes(path: Path) -> int:
    stats = os.statvfs(path)
    return stats.f_bavail * stats.f_frsize


@dataclass
class ScenarioCounts:
    runs: int = 0
    kills: int = 0
    orphans: int = 0
    rows_lost: int = 0
    notes: list[str] = field(default_factory=list)


class Tally:
    """The suite's counts per scenario, for the table at the end of the session."""

    def __init__(self) -> None:
        self.rows: dict[str, ScenarioCounts] = {}

    def add(self, scenario: str, *, runs: int = 0, kills: int = 0, orphans: int = 0, rows_lost: int = 0,
            note: str | None = None) -> None:
        counts = self.rows.setdefault(scenario, ScenarioCounts())
        counts.runs += runs
        counts.kills += kills
        counts.orphans += orphans
        counts.rows_lost += rows_lost
        if note:
            counts.notes.append(note)

    def table(self) -> str:
        header = ("scenario", "runs", "kills", "orphans found", "rows lost")
        rows = [header] + [
            (name, str(c.runs), str(c.kills), str(c.orphans), str(c.rows_lost)) for name, c in self.rows.items()
        ]
        widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
        lines = ["  ".join(cell.ljust(width) if i == 0 else cell.rjust(width)
                           for i, (cell, width) in enumerate(zip(row, widths, strict=True))) for row in rows]
        for name, counts in self.rows.items():
            lines += [f"  {name}: {note}" for note in counts.notes]
        return "\n".join(lines)


TALLY = Tally()
