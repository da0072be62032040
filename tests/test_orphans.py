"""No process phalanx starts outlives the process that owns it, even one killed with SIGKILL.

A real Python process iterates `phalanx.map` over items that hang; once every worker is busy
it writes down its descendants (the forkserver, the workers, isolated items' children and
what they started). The test SIGKILLs it and every one of them must be gone within seconds.
Every wait is a bounded poll, never a fixed sleep.
"""

from __future__ import annotations

import contextlib
import importlib.machinery
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

import phalanx
from phalanx.backends import processes

_READY_BOUND = 10.0  # seconds for the child to have every worker busy
_GONE_BOUND = 5.0  # seconds for everything to go once the owner is killed
_POLL = 0.02

_OWNER = textwrap.dedent(
    """
    import json, multiprocessing.forkserver, os, subprocess, sys, threading, time

    import psutil

    import phalanx

    out, busy, workers, isolate = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] == "1"


    def hang(item):
        # Something the item starts: in its worker's process group (with isolate, the child's).
        subprocess.Popen(["sleep", "1000"])
        open(os.path.join(busy, str(os.getpid())), "w").close()
        time.sleep(1000)
        return item


    def report():
        deadline = time.monotonic() + 30
        while len(os.listdir(busy)) < workers and time.monotonic() < deadline:
            time.sleep(0.02)
        state = {
            "busy": [int(name) for name in os.listdir(busy)],
            "forkserver": multiprocessing.forkserver._forkserver._forkserver_pid,
            "descendants": [p.pid for p in psutil.Process().children(recursive=True)],
        }
        with open(out + ".tmp", "w") as file:
            json.dump(state, file)
        os.rename(out + ".tmp", out)


    threading.Thread(target=report, daemon=True).start()
    for _ in phalanx.map(hang, range(workers * 2), max_workers=workers, isolate=isolate, batch_size=1):
        pass
    """
)


def _alive(process: psutil.Process) -> bool:
    """Still running (a zombie waiting to be reaped counts as gone)."""
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _processes(pids: list[int]) -> list[psutil.Process]:
    """psutil handles, taken before the kill: they know each process by its start time too,
    so a pid reused meanwhile is not taken for a survivor."""
    found = []
    for pid in pids:
        with contextlib.suppress(psutil.NoSuchProcess):
            found.append(psutil.Process(pid))
    return found


@pytest.mark.parametrize("isolate", [False, True], ids=["in-worker", "isolated"])
@pytest.mark.parametrize("workers", [2, 4])
def test_sigkilled_owner_leaves_no_process_behind(tmp_path: Path, workers: int, isolate: bool) -> None:
    script = tmp_path / "owner.py"
    script.write_text(_OWNER)
    out, busy = tmp_path / "state.json", tmp_path / "busy"
    busy.mkdir()
    source = str(Path(phalanx.__file__).resolve().parent.parent)  # the phalanx under test
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [source, os.environ.get("PYTHONPATH")]))}
    errors = tmp_path / "owner.err"  # a file, not a pipe: what the items start inherits it
    with errors.open("w") as stderr:
        owner = subprocess.Popen(
            [sys.executable, str(script), str(out), str(busy), str(workers), "1" if isolate else "0"],
            env=env, stderr=stderr,
        )
    descendants: list[psutil.Process] = []
    try:
        deadline = time.monotonic() + _READY_BOUND
        while not out.exists() and owner.poll() is None and time.monotonic() < deadline:
            time.sleep(_POLL)
        if not out.exists():
            pytest.fail(f"the workers were not all busy within {_READY_BOUND}s: {errors.read_text()}")
        state: dict[str, Any] = json.loads(out.read_text())
        descendants = _processes(state["descendants"])
        pids = {p.pid for p in descendants}
        assert len(state["busy"]) == workers
        assert set(state["busy"]) <= pids  # the workers, or the isolated children running items
        assert state["forkserver"] in pids
        # Each worker, its group's keeper, the item's child (with isolate, the item's process
        # and its child); the forkserver.
        assert len(descendants) >= (4 if isolate else 3) * workers + 1

        owner.send_signal(signal.SIGKILL)
        owner.wait()
        deadline = time.monotonic() + _GONE_BOUND
        survivors = descendants
        while survivors and time.monotonic() < deadline:
            survivors = [p for p in survivors if _alive(p)]
            time.sleep(_POLL)
        survivors = [p for p in survivors if _alive(p)]
        described = []
        for process in survivors:
            with contextlib.suppress(psutil.Error):
                described.append(f"{process.pid} {' '.join(process.cmdline())[:80]}")
        assert not survivors, f"alive {_GONE_BOUND}s after their owner was killed: {described}"
    finally:
        if owner.poll() is None:
            owner.kill()
            owner.wait()
        for process in descendants:  # a failed test must not leave sleepers behind
            if _alive(process):
                with contextlib.suppress(psutil.Error):
                    process.kill()


_MISSING = object()


def _main_attributes() -> tuple[Any, Any]:
    main = sys.modules["__main__"]
    return main.__dict__.get("__file__", _MISSING), main.__dict__.get("__spec__", _MISSING)


@pytest.fixture
def main_attributes() -> Iterator[tuple[Any, Any]]:
    """``__main__``'s ``__file__`` and ``__spec__``, put back after the test whatever happens
    (so that a test that spoils them cannot hide the damage from the next). A spec of None
    (the ``pytest`` script) is replaced: "restoring" a None left by another start would pass."""
    main = sys.modules["__main__"]
    saved = {name: main.__dict__[name] for name in ("__file__", "__spec__") if name in main.__dict__}
    if main.__dict__.get("__spec__") is None:
        main.__dict__["__spec__"] = importlib.machinery.ModuleSpec("__main__", None)
    try:
        yield _main_attributes()
    finally:
        for name in ("__file__", "__spec__"):
            main.__dict__.pop(name, None)
        main.__dict__.update(saved)


def test_main_module_hidden_until_the_last_starter_leaves(main_attributes: tuple[Any, Any]) -> None:
    """Two starts overlapping: the first to leave must not show ``__main__`` to the other."""
    before = main_attributes
    entered, leave = threading.Event(), threading.Event()

    def first() -> None:
        with processes._main_module_hidden():
            entered.set()
            leave.wait(10)

    thread = threading.Thread(target=first)
    thread.start()
    assert entered.wait(10)
    with processes._main_module_hidden():
        leave.set()
        thread.join(10)  # the first one has left; we are still starting
        assert not thread.is_alive()
        assert _main_attributes() == (_MISSING, None)
    assert _main_attributes() == before


def test_executors_started_at_once_leave_main_intact(main_attributes: tuple[Any, Any]) -> None:
    before = main_attributes
    count = 4
    barrier = threading.Barrier(count)
    errors: list[BaseException] = []

    def start() -> None:
        try:
            barrier.wait(10)
            with phalanx.Executor(2) as executor:
                executor.warm_up()
                assert list(executor.map(abs, [-1, -2])) == [1, 2]
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=start) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not any(thread.is_alive() for thread in threads)
    assert not errors
    assert _main_attributes() == before
