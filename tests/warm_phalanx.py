"""Runs ``phalanx`` command lines as ``python -m phalanx`` would, each in a fork of one warm interpreter.

A fresh ``python -m phalanx`` spends most of a bad-input run importing (click, the config loader,
pytest for ``phalanx pytest``), and a process that has imported all that spends as long again
tearing it down: a catalogue of a hundred cases would take minutes. This server imports every
phalanx module once, then forks a real process per command line, which runs ``phalanx``'s
``__main__`` as the interpreter runs a program: its exit status, its traceback (through
``sys.excepthook``), its non-daemon threads waited for and its ``atexit`` functions run, then
``os._exit`` skips only the teardown of the modules. tests/test_bad_inputs_catalogue.py checks
that a few cases come out byte for byte the same from a fresh interpreter.

Protocol, a JSON object a line each way (standard input, standard output):

    request: {"argv": [...], "cwd": DIR, "stdin": FILE, "stdout": FILE, "stderr": FILE}
    reply:   {"status": N}     N as subprocess reports it: the exit code, or -SIGNAL;
             {"status": null}  the run outlived TIMEOUT seconds and was killed
"""

from __future__ import annotations

import atexit
import contextlib
import importlib
import io
import json
import os
import pkgutil
import runpy
import signal
import sys
import threading
import time
from typing import Any, NoReturn

import phalanx

TIMEOUT = 30.0  # seconds one command line may take: bad input ends in well under one
POLL = 0.002


def warm_up() -> None:
    """Import every phalanx module (those whose optional dependencies are missing excepted)."""
    for info in pkgutil.walk_packages(phalanx.__path__, "phalanx."):
        if info.name.endswith("__main__"):
            continue  # importing it would run phalanx
        with contextlib.suppress(ImportError):  # an optional extra that is not installed
            importlib.import_module(info.name)
    if threading.active_count() != 1:
        raise RuntimeError(f"an import started threads: {threading.enumerate()}; forking would not be safe")


def serve() -> dict[str, Any] | None:
    """Answer requests until standard input ends; returns only in a forked child, with its request."""
    warm_up()
    requests = sys.stdin.buffer
    while line := requests.readline():
        request = json.loads(line)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            return dict(request)
        status = wait(pid)
        sys.stdout.write(json.dumps({"status": status}) + "\n")
        sys.stdout.flush()
    return None


def wait(pid: int) -> int | None:
    """The child's exit status as subprocess reports it, or None if it had to be killed."""
    deadline = time.monotonic() + TIMEOUT
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() > deadline:
            os.killpg(pid, signal.SIGKILL)  # the child leads its own group: what it started goes too
            os.waitpid(pid, 0)
            return None
        time.sleep(POLL)


def become(request: dict[str, Any]) -> NoReturn:
    """In the child: the process ``python -m phalanx ARGV`` would be, started in CWD on those files."""
    os.setpgid(0, 0)
    os.chdir(request["cwd"])
    for fd, path, flags in (
        (0, request["stdin"], os.O_RDONLY),
        (1, request["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC),
        (2, request["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC),
    ):
        opened = os.open(path, flags, 0o644)
        os.dup2(opened, fd)
        os.close(opened)
    # The server's sys.stdin may hold requests it read ahead: the child gets a stream of its own.
    old = sys.stdin
    sys.stdin = io.TextIOWrapper(
        io.BufferedReader(io.FileIO(0, "r", closefd=False)), encoding=old.encoding, errors=old.errors
    )
    sys.__stdin__ = sys.stdin  # type: ignore[misc]  # as the interpreter sets both at startup
    sys.argv = ["phalanx", *request["argv"]]
    os._exit(run_as_program())


def run_as_program() -> int:
    """Run ``python -m phalanx`` and end it as the interpreter ends a program, up to the teardown;
    returns the exit status."""
    try:
        runpy.run_module("phalanx", run_name="__main__", alter_sys=True)
        status = 0
    except SystemExit as exit_:
        status = exit_status(exit_.code)
    except BaseException:
        sys.excepthook(*sys.exc_info())
        status = 1
    threading._shutdown()  # type: ignore[attr-defined]  # waits for non-daemon threads, as at exit
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    return status


def exit_status(code: object) -> int:
    """What the interpreter makes of ``sys.exit(code)``."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    print(code, file=sys.stderr)
    return 1


if __name__ == "__main__":
    child_request = serve()
    if child_request is not None:
        become(child_request)
