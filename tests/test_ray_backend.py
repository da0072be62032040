"""The Ray backend (``backend="ray"``): the cluster backend's contract on a real Ray.

One local Ray for the module (3 CPUs, and a custom resource ``db = 1``), started here: the
runs in this process use it as a library caller's Ray (used as it is, left running), and
the phalanx processes the tests start connect to it by its address. Covered: values, exit
codes and output shipped back; a timeout and fail-fast stopping the work on its worker (the
stopped attempt still answering with its output); a Ray worker killed from outside mid-task;
phalanx itself killed mid-run; worker resources placed by Ray or refused before the run;
`phalanx.map`; a process that starts a Ray of its own (an `Executor` and a run sharing it,
then shutting it down, stdout left to phalanx); an address nobody answers on.
Synchronisation is by marker files (`conformance_support`); every wait is bounded.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil
import pytest

import phalanx
from conformance_support import (
    BOUND,
    HERE,
    POLL,
    job,
    mark,
    started_pid,
    subprocess_env,
    wait_for,
    wait_gone,
)

if TYPE_CHECKING:
    import ray
else:
    # Imported by the module's Ray fixture, not when pytest collects this file: Ray is some
    # 60 MB, and a test process that big passes its size on to the peak RSS its children
    # report (exec records the parent's high-water mark when a vforked child execs), which
    # the memory tests of other modules measure.
    ray = None

SUPPORT = str(HERE / "conformance_support.py")

#: Seconds a phalanx process gets to start, connect to Ray and have a new worker start a command.
STARTUP = 60.0


@pytest.fixture(scope="module", autouse=True)
def address() -> Iterator[str]:
    """The module's Ray (its GCS address, for the phalanx processes the tests start)."""
    import logging

    global ray
    ray = pytest.importorskip("ray", reason="the Ray backend's tests need Ray: pip install 'phalanx[ray]'")
    from phalanx.backends.raycluster import RUNTIME_ENV

    # The job's environment is the one phalanx gives its tasks (as phalanx does when it starts
    # or connects to Ray itself): Ray's prestarted workers then serve, and no attempt waits for
    # a worker to start (a timeout counts from when phalanx hands the attempt over).
    ray.init(num_cpus=3, resources={"db": 1}, include_dashboard=False, log_to_driver=False,
             logging_level=logging.ERROR, runtime_env=RUNTIME_ENV)
    try:
        yield str(ray.get_runtime_context().gcs_address)
    finally:
        ray.shutdown()


@pytest.fixture
def flags(tmp_path: Path) -> Iterator[Path]:
    directory = tmp_path / "flags"
    directory.mkdir()
    yield directory
    mark(directory / "release")


def block(flags: Path, name: str) -> list[str]:
    """A command (argv: a child of the Node itself) that writes its pid and waits for release."""
    return [sys.executable, "-S", SUPPORT, json.dumps(["block", str(flags), name])]


def env_without_ray_address() -> dict[str, str]:
    """A subprocess's environment naming no Ray to connect to (it gets an address, or starts its own)."""
    return {name: value for name, value in subprocess_env().items() if name not in ("RAY_ADDRESS",
                                                                                    "PHALANX_RAY_ADDRESS")}


# ---------------------------------------------------------------------------- what comes back


def test_commands_and_callables_give_their_values_exit_codes_and_output() -> None:
    report = phalanx.run(
        [
            phalanx.Task("echo", "echo hello; echo oops >&2"),
            phalanx.Task("fails", "echo before; exit 3"),
            phalanx.Task("double", job, args=(["value", 21],)),
            phalanx.Task("raises", job, args=(["raise", "boom"],)),
        ],
        backend="ray",
    )
    assert report["echo"].ok and report["echo"].stdout_tail == "hello\n" and report["echo"].stderr_tail == "oops\n"
    assert report["fails"].status is phalanx.Status.FAILED and report["fails"].exit_code == 3
    assert report["fails"].stdout_tail == "before\n"
    assert report["double"].ok and report["double"].value == 42
    assert report["raises"].status is phalanx.Status.FAILED and "boom" in (report["raises"].reason or "")
    for result in report.results.values():
        assert result.worker_address is not None and result.worker_address.startswith("ray://")


def test_phalanx_map_runs_callables_on_the_ray_workers() -> None:
    assert list(phalanx.map(abs, range(-300, 0), backend="ray")) == list(range(300, 0, -1))


# ---------------------------------------------------------------------------- stopping


def test_a_timeout_stops_the_work_on_its_worker_and_ships_what_it_printed(flags: Path) -> None:
    # The command and a child of its own both block, and so does a callable; the timeout ends all three.
    started = shlex.quote(str(flags / "started-child"))
    command = (f"echo early; {shlex.join(block(flags, 'child'))} & "
               f"while [ ! -e {started} ]; do sleep 0.01; done; {shlex.join(block(flags, 'parent'))}")
    tasks = [phalanx.Task("slow", command, timeout=2),
             phalanx.Task("call", job, args=(["block", str(flags), "call"],), timeout=2)]
    report = phalanx.run(tasks, backend="ray", grace=0.5)
    assert report["slow"].status is phalanx.Status.TIMED_OUT and report["call"].status is phalanx.Status.TIMED_OUT
    assert report["slow"].stdout_tail == "early\n"  # the stopped attempt answered, with its output
    names = ("child", "parent", "call")
    assert not wait_gone([started_pid(flags, name) for name in names]), "a process of a timed-out task still runs"
    assert not any((flags / f"finished-{name}").exists() for name in names)


def test_fail_fast_stops_what_runs_on_the_workers_and_cancels_the_rest(flags: Path) -> None:
    started = shlex.quote(str(flags / "started-slow"))
    tasks = [
        phalanx.Task("slow", f"echo early; exec {shlex.join(block(flags, 'slow'))}"),
        phalanx.Task("fails", f"while [ ! -e {started} ]; do sleep 0.01; done; exit 1"),
        phalanx.Task("after", "echo after", deps=("slow",)),
        phalanx.Task("later", "echo later", deps=("fails",)),
    ]
    report = phalanx.run(tasks, backend="ray", max_workers=2, fail_fast=True, grace=0.5)
    assert report["fails"].status is phalanx.Status.FAILED
    assert report["slow"].status is phalanx.Status.CANCELLED
    assert report["slow"].stdout_tail == "early\n"  # stopped on its worker, it answered with its output
    assert report["after"].status in (phalanx.Status.CANCELLED, phalanx.Status.SKIPPED)
    assert report["later"].status is phalanx.Status.SKIPPED
    assert not wait_gone([started_pid(flags, "slow")])
    assert not (flags / "finished-slow").exists()


# ---------------------------------------------------------------------------- losing a worker


def test_a_ray_worker_killed_mid_task_costs_exactly_that_task(flags: Path) -> None:
    tasks = [phalanx.Task(str(i), f"echo {i}") for i in range(5)]
    tasks.append(phalanx.Task("victim", block(flags, "victim")))
    reports: list[Any] = []
    running = threading.Thread(target=lambda: reports.append(phalanx.run(tasks, backend="ray")))
    running.start()
    try:
        victim = started_pid(flags, "victim")
        worker = psutil.Process(victim).ppid()  # the Ray worker whose phalanx node started the command
        assert "ray_entry" in " ".join(psutil.Process(worker).cmdline())
        assert wait_noted(f"/pid-{worker}"), "the attempt did not note where it runs"
        os.kill(worker, signal.SIGKILL)
        running.join(BOUND)
    finally:
        if running.is_alive():  # released only if the kill did not end it (the fixture releases too)
            mark(flags / "release")
            running.join(BOUND)
    assert not running.is_alive()
    (report,) = reports
    lost = report["victim"]
    assert lost.status is phalanx.Status.CRASHED and lost.attempts == 1
    assert lost.worker_address is not None and lost.worker_address.endswith(f"/pid-{worker}")
    assert lost.reason.startswith(f"WorkerCrashed: the Ray worker {lost.worker_address} running it was lost")
    assert all(report[str(i)].ok for i in range(5))
    assert not wait_gone([victim]), "the command outlived its worker"  # the node's watchdog ended it
    assert not (flags / "finished-victim").exists()


def wait_noted(suffix: str) -> bool:
    """Wait (bounded) until a running attempt has noted where it runs (after its first poll),
    there for the coordinator to name the worker should it be lost."""
    from ray.experimental import internal_kv

    from phalanx.backends.raycluster import NOTES

    deadline = time.monotonic() + BOUND
    while time.monotonic() < deadline:
        for key in internal_kv._internal_kv_list("phalanx-", namespace=NOTES):
            if (internal_kv._internal_kv_get(key, namespace=NOTES) or b"").decode().endswith(suffix):
                return True
        time.sleep(POLL)
    return False


def test_kill_9_of_phalanx_stops_its_tasks_on_the_workers(tmp_path: Path, flags: Path, address: str) -> None:
    path = tmp_path / "phalanx.toml"
    path.write_text(f"[tasks.slow]\ncmd = {json.dumps(shlex.join(block(flags, 'slow')))}\n")
    command = [sys.executable, "-m", "phalanx", "run", str(path), "--backend", "ray", "--scheduler", address]
    first = subprocess.Popen(command, cwd=tmp_path, env=env_without_ray_address(), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        wait_for(flags / "started-slow", bound=STARTUP)
        slow = started_pid(flags, "slow")
    finally:
        first.kill()  # SIGKILL: phalanx gets no chance to stop anything itself
        first.communicate(timeout=BOUND)
    # Ray kills the workers of a driver that has gone; the Node's watchdog then kills the command.
    assert not wait_gone([slow]), "the task outlived phalanx on its worker"
    assert not (flags / "finished-slow").exists()


# ---------------------------------------------------------------------------- worker resources


def test_worker_resources_go_to_ray_which_runs_one_db_task_at_a_time(flags: Path) -> None:
    log = shlex.quote(str(flags / "log"))
    tasks = [phalanx.Task(f"migrate{i}", f"echo start >> {log}; sleep 0.3; echo end >> {log}", resources={"db": 1})
             for i in range(3)]
    report = phalanx.run(tasks, backend="ray", max_workers=3, worker_resources=["db"])
    assert all(result.ok for result in report.results.values())
    # phalanx would start all three at once (-j 3, no capacity for db); the cluster's db = 1 does not.
    assert (flags / "log").read_text().split() == ["start", "end"] * 3


def test_a_worker_resource_no_node_offers_is_refused_before_anything_runs(flags: Path) -> None:
    tasks = [phalanx.Task("quick", f"touch {shlex.quote(str(flags / 'ran'))}"),
             phalanx.Task("train", "true", resources={"gpu": 1})]
    with pytest.raises(phalanx.ResourceError, match="task 'train' needs worker resource 'gpu' = 1, and no worker"):
        phalanx.run(tasks, backend="ray", worker_resources=["gpu", "db"])
    assert not (flags / "ran").exists()
    assert ray.is_initialized()  # the caller's Ray is left as it was


# ---------------------------------------------------------------------------- a Ray of its own


OWN_RAY = """
import json, os, sys, threading, phalanx, psutil
# The Executor opens its cluster on a thread that ends at once: Ray's processes must outlive it.
with phalanx.Executor(backend="ray", max_workers=2) as executor:
    threads = {thread.name for thread in threading.enumerate()}
    first = executor.submit(abs, -7).result(timeout=60)
    # A run while the Executor is open shares its Ray (one start), which the Executor's close ends.
    report = phalanx.run({"a": "echo a", "b": "exit 4", "boom": "kill -9 $PPID"}, backend="ray", max_workers=3)
    ray_processes = [child.pid for child in psutil.Process().children(recursive=True)]
print(json.dumps({"first": first, "threads": sorted(threads), "processes": ray_processes,
                  "results": {tid: [r.status.value, r.exit_code, r.stdout_tail, r.worker_address]
                              for tid, r in report.results.items()}}))
"""


def test_without_an_address_phalanx_starts_a_ray_of_its_own_shares_it_and_shuts_it_down(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-c", OWN_RAY], cwd=tmp_path, env=env_without_ray_address(),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)  # nothing else on stdout: Ray's "A worker died ..." is not printed there
    assert out["first"] == 7
    assert "phalanx-ray" in out["threads"]  # the thread keeping the local Ray
    a, b = out["results"]["a"], out["results"]["b"]
    assert a[:3] == ["succeeded", 0, "a\n"] and a[3].startswith("ray://")
    assert b[:2] == ["failed", 4]
    boom = out["results"]["boom"]
    assert boom[0] == "crashed"  # its worker named or not: lost before its first poll, it noted nothing
    assert out["processes"] and not wait_gone(out["processes"]), "the local Ray outlived its last user"


def test_an_unreachable_address_is_a_one_line_error(tmp_path: Path) -> None:
    (tmp_path / "phalanx.toml").write_text("[tasks.t]\ncmd = 'true'\n")
    with socket.socket() as bound:  # bound, never listening: nobody answers there
        bound.bind(("127.0.0.1", 0))
        port = bound.getsockname()[1]
        done = subprocess.run([sys.executable, "-m", "phalanx", "run", "--backend", "ray", "--scheduler",
                               f"127.0.0.1:{port}"], cwd=tmp_path, env=env_without_ray_address(),
                              capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.startswith(f"phalanx: error: cannot reach the Ray cluster at 127.0.0.1:{port}: ")
    assert len(done.stderr.strip().splitlines()) == 1
