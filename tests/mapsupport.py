"""Shared helpers for the `phalanx map` tests: running it (and GNU parallel), bounded waits."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import pytest

WAIT = 10.0  # seconds: the bound on every wait for a process to do something
RUN_TIMEOUT = 60.0  # the bound on one whole invocation

PHALANX_MAP = (sys.executable, "-m", "phalanx", "map")
GNU_PARALLEL = "/usr/bin/parallel"


def environment(home: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment both tools run in: /bin/sh as the shell (phalanx always uses it; GNU
    parallel takes $PARALLEL_SHELL, else the shell that started it, else $SHELL), a UTF-8
    locale, and GNU parallel's state kept out of the real home directory."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("PARALLEL")}
    env.update(SHELL="/bin/sh", PARALLEL_SHELL="/bin/sh", LC_ALL="C.UTF-8", PARALLEL_HOME=str(home / ".parallel"))
    env.pop("PHALANX_TASK_ID", None)
    # Hundreds of short runs: let them share compiled bytecode, kept out of the source tree.
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPYCACHEPREFIX"] = os.path.join(tempfile.gettempdir(), "phalanx-map-tests-pycache")
    env.update(extra or {})
    return env


def gnu_parallel() -> str:
    """GNU parallel's path; the compatibility suite fails (never skips) without it."""
    found = shutil.which("parallel") or (GNU_PARALLEL if Path(GNU_PARALLEL).exists() else None)
    if found is None:
        pytest.fail("GNU parallel is needed for the compatibility suite: apt-get install parallel")
    return found


def run_map(
    args: Sequence[str],
    *,
    cwd: Path,
    stdin: bytes = b"",
    env: Mapping[str, str] | None = None,
    timeout: float = RUN_TIMEOUT,
) -> subprocess.CompletedProcess[bytes]:
    """``phalanx map ARGS`` from this checkout, to its end."""
    return subprocess.run(
        [*PHALANX_MAP, *args],
        input=stdin,
        capture_output=True,
        cwd=cwd,
        env=environment(cwd, env),
        timeout=timeout,
        check=False,
    )


def run_gnu(
    args: Sequence[str],
    *,
    cwd: Path,
    stdin: bytes = b"",
    env: Mapping[str, str] | None = None,
    timeout: float = RUN_TIMEOUT,
) -> subprocess.CompletedProcess[bytes]:
    """``parallel --will-cite ARGS``, to its end."""
    return subprocess.run(
        [gnu_parallel(), "--will-cite", *args],
        input=stdin,
        capture_output=True,
        cwd=cwd,
        env=environment(cwd, env),
        timeout=timeout,
        check=False,
    )


def run_both(
    gnu_args: Sequence[str],
    gnu_cwd: Path,
    map_args: Sequence[str],
    map_cwd: Path,
    *,
    stdin: bytes = b"",
) -> tuple[subprocess.CompletedProcess[bytes], subprocess.CompletedProcess[bytes]]:
    """GNU parallel and phalanx map side by side (at the same time: the suite stays fast)."""
    with ThreadPoolExecutor(2) as pool:
        gnu = pool.submit(run_gnu, gnu_args, cwd=gnu_cwd, stdin=stdin)
        ours = pool.submit(run_map, map_args, cwd=map_cwd, stdin=stdin)
        return gnu.result(), ours.result()


def start_map(args: Sequence[str], *, cwd: Path, env: Mapping[str, str] | None = None) -> subprocess.Popen[bytes]:
    """``phalanx map ARGS`` in the background, stdin closed, output captured."""
    return subprocess.Popen(
        [*PHALANX_MAP, *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=cwd,
        env=environment(cwd, env),
    )


def wait_for(predicate: Callable[[], object], what: str, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.01)
    raise AssertionError(f"gave up after {timeout}s waiting for {what}")


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def descendants(pid: int) -> list[int]:
    try:
        return [child.pid for child in psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def assert_all_gone(pids: Sequence[int]) -> None:
    wait_for(lambda: not any(alive(pid) for pid in pids), f"processes {list(pids)} to end")


def job_groups(pid: int) -> set[int]:
    """The process groups of a phalanx's jobs (each job leads its own), never our own: a
    child caught between fork and setpgid is still in ours."""
    ours = os.getpgid(0)
    groups = set()
    for child in descendants(pid):
        with contextlib.suppress(ProcessLookupError):
            groups.add(os.getpgid(child))
    groups.discard(ours)
    return groups


def kill_groups(pgids: Collection[int]) -> None:
    """SIGKILL process groups a test left behind (after a kill -9 of phalanx)."""
    ours = os.getpgid(0)
    for pgid in set(pgids) - {ours}:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)


def in_groups(pid: int, groups: Collection[int]) -> bool:
    try:
        return os.getpgid(pid) in groups
    except OSError:
        return False


def lines_of(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8", errors="surrogateescape").splitlines()
    except FileNotFoundError:
        return []
