"""One conformance suite, run against every backend: threads, processes, processes with
``isolate=True``, and commands (``phalanx.run``); and the cluster backends, callables and
commands each, on a Dask ``LocalCluster(n_workers=2, processes=True)`` and on a local Ray
started by the suite (``dask``, ``dask-command``, ``ray``, ``ray-command``).

Each case is written once, as job *specs* (see `conformance_support`), and runs on every
backend through its adapter. Where a case cannot mean the same thing on every backend, it
is split into cases of their own, one per behaviour, each parametrised with the backends
that behave so (`on`): together they cover every backend, and none skips or returns
early. A backend's documented behaviour is then a case of its own, with its id:

* threads cannot be stopped: a timed-out or cancelled item ends ``timed_out`` /
  ``cancelled`` at once and its thread is abandoned (it runs on, as the test shows by
  releasing it); a crash in a thread (``os._exit``, a segfault) takes the whole process
  down, which the suite shows in a subprocess; a thread "worker" is the caller's own
  process, so SIGKILL from outside kills the caller (also shown in a subprocess);
  arguments are passed by reference, so nothing needs to pickle; there are no worker
  processes to recycle, so ``max_tasks_per_worker`` is refused;
* commands report their own exit status or signal as ``failed`` (with ``exit_code`` /
  ``signal``), not ``crashed`` (kept for a worker phalanx runs dying under an item); their
  traceback is their stderr; ``phalanx.run`` never raises for a task; their arguments are
  strings (nothing is pickled: a non-string is refused when the task is made); every
  command is a fresh process;
* the cluster backends run callables on their workers' warm processes and commands through
  phalanx's command runner there, so they behave as ``processes`` and ``command`` do, with
  two cases of their own: which warm process serves a batch depends on the worker the
  engine picks, so ``max_tasks_per_worker``'s recycling order is a local case, and a warm
  process is found for a kill from outside through the executor (``active_tasks``) only
  locally. Killing an engine's worker, and phalanx itself, is in ``test_dask_backend`` and
  ``test_ray_backend``. Their engines' own processes (Dask's workers, Ray's daemons and
  workers, and what lives as long as they do) are helpers, like the forkserver.

How workers get the jobs: `conformance_support` registers itself with cloudpickle to be
pickled by value, so worker processes never import anything from ``tests/``. (They could:
multiprocessing hands every new forkserver or spawn process the parent's ``sys.path`` of
the moment, where pytest has put ``tests/``; but a function pickled by reference makes the
worker import its whole test module, and would break under another import mode.) The
command backend runs `conformance_support` as a script; subprocess scripts get ``tests/``
and ``src/`` on ``PYTHONPATH``.

After every crash, timeout, kill and cancellation case, no process started by the case
may be left once its executor or run has shut down (psutil, bounded at 10 s). The
multiprocessing forkserver (which forks the workers) and the resource tracker it starts
are long-lived helpers of the test process, not workers: they are excluded from that
check, by pid and command line. In the Ctrl-C cases, where the whole program ends, they
are checked too: nothing the program started may outlive it.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

import phalanx
from conformance_support import (
    BACKENDS,
    BOUND,
    POLL,
    TestCluster,
    TestRay,
    alive,
    descendants,
    forkserver_pid,
    interrupt_when_started,
    job,
    mark,
    run_script,
    started_pid,
    wait_for,
    wait_gone,
    wait_no_descendants,
)


@pytest.fixture(scope="module", autouse=True)
def clusters() -> Iterator[None]:
    """The Dask cluster and the Ray of the cluster backends, started before any case takes
    its "before" for the leftover check (their processes live as long as the module's cases)."""
    TestCluster.address()
    TestRay.address()
    yield
    TestCluster.close()
    TestRay.close()


@pytest.fixture(params=list(BACKENDS))
def backend(request: pytest.FixtureRequest) -> Any:
    return BACKENDS[request.param]


@pytest.fixture
def flags(tmp_path: Path) -> Iterator[Path]:
    """A directory for marker files; everything still blocked is released at the end."""
    yield tmp_path
    mark(tmp_path / "release")


@pytest.fixture
def no_leftovers(flags: Path) -> Iterator[None]:
    """After the case: no process it started is still running (bounded, forkserver excepted)."""
    before = set(descendants())
    yield
    left = wait_no_descendants(before)
    assert not left, f"processes left behind: {describe(left)}"
    pids = [int(path.read_text().split()[0]) for path in flags.glob("started-*") if path.suffix != ".partial"]
    assert not wait_gone(pid for pid in pids if pid != os.getpid()), "a process that ran a job is still alive"


def describe(pids: list[int]) -> list[str]:
    out = []
    for pid in pids:
        try:
            process = psutil.Process(pid)
            out.append(f"{pid} {process.status()} {process.cmdline()} parent {process.ppid()}")
        except psutil.Error:
            out.append(f"{pid} gone")
    return out


def statuses(results: list[Any]) -> list[str]:
    return [result.status.value for result in results]


def crash_in_thread_script(spec: str) -> str:
    """A script that runs one job on the thread backend: its whole process goes down."""
    return (
        "import json, sys, phalanx\n"
        "from conformance_support import job\n"
        f"list(phalanx.map(job, [['value', 1], {spec}], backend='threads', max_workers=2))\n"
        "print('survived')\n"
    )


# ---------------------------------------------------------------------------- backends

PYTHON = ("threads", "processes", "processes-isolate", "dask", "ray")  # callables: Executor / phalanx.map
WORKERS = ("processes", "processes-isolate", "dask", "ray")  # callables in warm worker processes (here or remote)
LOCAL_WORKERS = ("processes", "processes-isolate")  # warm worker processes of this process's own
COMMANDS = ("command", "dask-command", "ray-command")  # phalanx.run with command tasks, here and on clusters


def on(*names: str) -> pytest.MarkDecorator:
    """A case for the named backends only: one case each, with the backend's name as its id."""
    return pytest.mark.parametrize("backend", [BACKENDS[name] for name in names], ids=names)


# ---------------------------------------------------------------------------- ordering


def test_ordered_results_come_in_input_order(backend: Any, flags: Path) -> None:
    # Item 0 finishes last (it waits for every other item's marker), yet comes first.
    names = [str(i) for i in range(1, 6)]
    specs = [["last", str(flags), names]] + [["done", str(flags), name, int(name)] for name in names]
    results = backend.run(specs, ordered=True)
    assert statuses(results) == ["succeeded"] * 6
    assert [backend.value(r) for r in results] == ["last", 2, 4, 6, 8, 10]
    assert [r.task_id for r in results] == [str(i) for i in range(6)]


def test_unordered_results_come_as_they_finish(backend: Any, flags: Path) -> None:
    # Item 0 blocks until the test has received every other result, so it ends last.
    specs = [["block", str(flags), "first"]] + [["value", i] for i in range(1, 6)]
    results = []
    for result in backend.start(specs, ordered=False).stream():
        results.append(result)
        if len(results) == 5:
            mark(flags / "release")
    assert statuses(results) == ["succeeded"] * 6
    assert results[-1].task_id == "0"
    assert sorted(backend.value(r) for r in results[:-1]) == [2, 4, 6, 8, 10]


# ---------------------------------------------------------------------------- exceptions

FAILING = [["value", 1], ["raise", "boom at 1"], ["value", 3]]


def run_failing(backend: Any) -> list[Any]:
    """Item 1 raises: its siblings succeed, and its traceback is the worker-side one."""
    results = backend.run(FAILING)
    assert statuses(results) == ["succeeded", "failed", "succeeded"]
    assert [backend.value(results[0]), backend.value(results[2])] == [2, 6]
    text = backend.error_text(results[1])
    assert "ValueError: boom at 1" in text
    assert "in job" in text  # the worker-side frame: where it was raised
    return results


@on(*PYTHON)
def test_exceptions_keep_their_type_message_and_remote_traceback(backend: Any) -> None:
    results = run_failing(backend)
    assert results[1].error.type == "ValueError"
    assert results[1].error.message == "boom at 1"


@on(*PYTHON)
def test_map_raises_the_original_exception_where_its_value_would_be(backend: Any) -> None:
    # Without as_results, map raises the original exception where its value would be.
    seen: list[Any] = []
    with pytest.raises(ValueError, match="boom at 1") as caught:
        for value in phalanx.map(job, FAILING, backend=backend.backend, max_workers=2, **backend.options):
            seen.append(value)
    assert seen == [2]
    assert isinstance(caught.value.__cause__, phalanx.RemoteTraceback)
    assert "in job" in str(caught.value.__cause__)


@on(*COMMANDS)
def test_a_raising_command_fails_with_its_exit_status(backend: Any) -> None:
    # Documented: a command's failure is its exit status; its traceback is its stderr.
    results = run_failing(backend)
    assert results[1].exit_code == 1


@on(*COMMANDS)
def test_phalanx_run_reports_a_failing_command_and_never_raises(backend: Any) -> None:
    report = phalanx.run([backend.task(0, ["raise", "boom"], None)], max_workers=1, **backend.run_options())
    assert not report.ok and report["0"].status is phalanx.Status.FAILED


# ---------------------------------------------------------------------------- timeouts


def run_timing_out(backend: Any, flags: Path) -> tuple[list[Any], int]:
    """One batch of five (0-4) and one of three: item 2 blocks and times out; 3 and 4,
    behind it in its batch, still run. Returns the results and the pid that ran item 2."""
    specs: list[Any] = [["value", i] for i in range(8)]
    specs[2] = ["block", str(flags), "slow"]
    results = backend.run(specs, timeout=1.0, batch_size=5)  # time enough for a command to start
    assert statuses(results) == ["succeeded"] * 2 + ["timed_out"] + ["succeeded"] * 5
    assert [backend.value(r) for i, r in enumerate(results) if i != 2] == [2 * i for i in range(8) if i != 2]
    return results, started_pid(flags, "slow")


def assert_stopped(results: list[Any], ran_it: int, flags: Path) -> None:
    """The timed-out item was stopped: its process is gone and the job never finished."""
    assert "timed out" in results[2].reason
    assert not wait_gone([ran_it]), "the timed-out item's process still runs"
    assert not (flags / "finished-slow").exists()


@pytest.mark.usefixtures("no_leftovers")
@on("threads")
def test_a_timed_out_thread_is_abandoned_and_runs_on(backend: Any, flags: Path) -> None:
    # Documented: a thread cannot be stopped; it is abandoned and runs on.
    results, ran_it = run_timing_out(backend, flags)
    assert "abandoned" in results[2].reason
    assert alive(os.getpid()) and ran_it == os.getpid()
    mark(flags / "release")
    assert (wait_for(flags / "finished-slow") and (flags / "finished-slow").read_text() == "released")


@pytest.mark.usefixtures("no_leftovers")
@on(*COMMANDS)
def test_timeout_stops_the_command_and_its_siblings_complete(backend: Any, flags: Path) -> None:
    results, ran_it = run_timing_out(backend, flags)
    assert_stopped(results, ran_it, flags)


@pytest.mark.usefixtures("no_leftovers")
@on("processes", "dask", "ray")
def test_timeout_replaces_the_worker_and_its_siblings_complete_on_the_new_one(backend: Any, flags: Path) -> None:
    results, ran_it = run_timing_out(backend, flags)
    assert_stopped(results, ran_it, flags)
    # The worker itself was killed and replaced: its siblings ran on the new one.
    # (Items 0 and 1 may have run again there too: results are sent every ~20 ms,
    # and those of the dead worker not yet sent are redone, never lost.)
    assert results[3].pid == results[4].pid != ran_it


@pytest.mark.usefixtures("no_leftovers")
@on("processes-isolate")
def test_timeout_kills_only_the_items_child_and_the_worker_runs_its_siblings(backend: Any, flags: Path) -> None:
    results, ran_it = run_timing_out(backend, flags)
    assert_stopped(results, ran_it, flags)
    # Only the item's forked child was killed: the warm worker ran its siblings.
    worker = int((flags / "started-slow").read_text().split()[1])
    assert results[3].pid == results[4].pid == worker


# ---------------------------------------------------------------------------- crashes

CRASHES = [
    pytest.param(["exit", 3], 3, "exit(ed with)? code 3", id="os._exit"),
    pytest.param(["segv"], -signal.SIGSEGV, "SIGSEGV", id="sigsegv"),
]


def run_crashing(backend: Any, spec: list[Any], exit_code: int, named: str) -> Any:
    """Item 3 crashes (batches of four): every other item succeeds. Returns item 3's result."""
    specs: list[Any] = [["value", i] for i in range(8)]
    specs[3] = spec
    results = backend.run(specs, batch_size=4)
    assert statuses(results)[:3] + statuses(results)[4:] == ["succeeded"] * 7
    assert [backend.value(r) for i, r in enumerate(results) if i != 3] == [2 * i for i in range(8) if i != 3]
    crashed = results[3]
    assert re.search(named, crashed.reason)
    assert (crashed.exit_code, crashed.signal) == ((exit_code, None) if exit_code > 0 else (None, -exit_code))
    return crashed


@pytest.mark.usefixtures("no_leftovers")
@pytest.mark.parametrize(("spec", "exit_code", "named"), CRASHES)
@on(*WORKERS)
def test_a_crash_costs_only_its_item(backend: Any, spec: list[Any], exit_code: int, named: str) -> None:
    crashed = run_crashing(backend, spec, exit_code, named)
    assert crashed.status is phalanx.Status.CRASHED
    assert crashed.reason.startswith("WorkerCrashed: item 3:")


@pytest.mark.usefixtures("no_leftovers")
@pytest.mark.parametrize(("spec", "exit_code", "named"), CRASHES)
@on(*COMMANDS)
def test_a_crashing_command_is_a_failure_of_that_command(
    backend: Any, spec: list[Any], exit_code: int, named: str
) -> None:
    # Documented: a command's own exit or signal is a failure of the command.
    crashed = run_crashing(backend, spec, exit_code, named)
    assert crashed.status is phalanx.Status.FAILED


@pytest.mark.usefixtures("no_leftovers")
@pytest.mark.parametrize(("spec", "exit_code", "named"), CRASHES)
@on("threads")
def test_a_crash_in_a_thread_takes_its_whole_process_down(
    backend: Any, spec: list[Any], exit_code: int, named: str
) -> None:
    # Documented: a thread shares its process: the crash takes the whole process down.
    done = run_script(crash_in_thread_script(repr(spec)))
    assert done.returncode == exit_code and "survived" not in done.stdout


def run_killing(backend: Any, flags: Path, target: Any) -> tuple[list[Any], int]:
    """Item 2 (batches of three) blocks; `target(handle, victim)` names the pid to SIGKILL.
    Every other item succeeds, and so does nothing of what ran item 2. Returns the results
    and the pid that ran item 2."""
    specs: list[Any] = [["value", i] for i in range(6)]
    specs[2] = ["block", str(flags), "victim"]
    handle = backend.start(specs, batch_size=3)
    victim = started_pid(flags, "victim")
    os.kill(target(handle, victim), signal.SIGKILL)
    results = handle.results()
    assert [backend.value(r) for i, r in enumerate(results) if i != 2] == [0, 2, 6, 8, 10]
    assert "SIGKILL" in results[2].reason
    assert results[2].signal == signal.SIGKILL
    assert not wait_gone([victim])  # with isolate, the item's child went with its worker
    return results, victim


@pytest.mark.usefixtures("no_leftovers")
@on(*LOCAL_WORKERS)
def test_sigkill_of_a_worker_from_outside_costs_only_its_item(backend: Any, flags: Path) -> None:
    def the_worker(handle: Any, victim: int) -> int:
        (running,) = [task for task in handle.active() if task.get("item") == 2]
        assert running["pid"] == victim  # the process running the item (the child with isolate)
        assert running["worker_pid"] in handle.worker_pids()
        return int(running["worker_pid"])  # the warm worker itself, even with isolate

    results, _ = run_killing(backend, flags, the_worker)
    assert statuses(results) == ["succeeded"] * 2 + ["crashed"] + ["succeeded"] * 3


@pytest.mark.usefixtures("no_leftovers")
@on(*COMMANDS)
def test_sigkill_of_a_command_from_outside_fails_only_that_command(backend: Any, flags: Path) -> None:
    results, _ = run_killing(backend, flags, lambda handle, victim: victim)
    assert statuses(results) == ["succeeded"] * 2 + ["failed"] + ["succeeded"] * 3


@pytest.mark.usefixtures("no_leftovers")
@on("threads")
def test_sigkill_of_a_threads_worker_kills_the_caller(backend: Any, flags: Path) -> None:
    # Documented: a thread's "worker" is the caller's process: killing it kills the caller.
    script = (
        "import os, signal, sys, pathlib, phalanx\n"
        "from conformance_support import job, started_pid\n"
        "flags = pathlib.Path(sys.argv[1])\n"
        "with phalanx.Executor(2, backend='threads') as ex:\n"
        "    ex.submit(job, ['block', str(flags), 'victim'])\n"
        "    started_pid(flags, 'victim')\n"
        "    (task,) = ex.active_tasks()\n"
        "    assert task['pid'] == os.getpid() and ex.worker_pids() == []\n"
        "    os.kill(task['pid'], signal.SIGKILL)\n"
    )
    done = run_script(script, str(flags))
    assert done.returncode == -signal.SIGKILL, done.stderr


# ---------------------------------------------------------------------------- cancellation


def blocked(flags: Path) -> list[Any]:
    """Two blocking items (on the two workers) and two waiting behind them."""
    return [["block", str(flags), "a"], ["block", str(flags), "b"], ["value", 1], ["value", 2]]


def cancel_all_submitted(executor: Any, flags: Path) -> list[int]:
    """Submit `blocked`, cancel everything once both blockers run; returns their pids."""
    futures = [executor.submit(job, spec) for spec in blocked(flags)]
    pids = [started_pid(flags, name) for name in "ab"]
    assert executor.cancel_all() == 4
    assert all(future.cancelled() for future in futures)
    wait_idle(executor)
    return pids


@pytest.mark.usefixtures("no_leftovers")
@on(*WORKERS)
def test_cancel_stops_running_work_and_cancels_the_rest(backend: Any, flags: Path) -> None:
    with backend.executor(2) as executor:
        pids = cancel_all_submitted(executor, flags)
        assert not wait_gone(pids), "cancelled work still runs"
        # The executor goes on working after a cancellation.
        assert executor.submit(job, ["value", 21]).result(timeout=10) == 42
    assert not (flags / "finished-a").exists()


@pytest.mark.usefixtures("no_leftovers")
@on("threads")
def test_cancelled_threads_are_abandoned_and_run_on(backend: Any, flags: Path) -> None:
    with backend.executor(2) as executor:
        pids = cancel_all_submitted(executor, flags)
        # Documented: threads cannot be stopped: the cancelled items' threads run on.
        assert all(alive(pid) for pid in pids)
        mark(flags / "release")
        assert wait_for(flags / "finished-a") and wait_for(flags / "finished-b")
        assert executor.stats()["abandoned_threads"] == 2
        # The executor goes on working after a cancellation.
        assert executor.submit(job, ["value", 21]).result(timeout=10) == 42


@pytest.mark.usefixtures("no_leftovers")
@on(*COMMANDS)
def test_cancelling_a_run_stops_its_commands_and_cancels_the_rest(backend: Any, flags: Path) -> None:
    handle = backend.start(blocked(flags))
    pids = [started_pid(flags, name) for name in "ab"]
    handle.cancel()  # what Ctrl-C does to a run
    results = handle.results()
    assert statuses(results) == ["cancelled"] * 4
    assert not wait_gone(pids)


def wait_idle(executor: Any) -> None:
    """Wait (bounded) until the executor has nothing running."""
    deadline = time.monotonic() + BOUND
    while executor.is_running:
        assert time.monotonic() < deadline, "the cancelled tasks never ended"
        time.sleep(POLL)


# ---------------------------------------------------------------------------- Ctrl-C


PYTHON_INTERRUPTED = """
import sys, phalanx
from conformance_support import job
directory, backend, isolate, entry, *cluster = sys.argv[1:]
specs = [["block", directory, "a"], ["block", directory, "b"], ["value", 1]]
options = {"backend": backend, "isolate": True} if isolate == "1" else {"backend": backend}
if cluster:
    options["scheduler"] = cluster[0]
try:
    if entry == "map":
        list(phalanx.map(job, specs, max_workers=2, batch_size=1, **options))
    else:
        with phalanx.Executor(2, **options) as executor:
            for future in [executor.submit(job, spec) for spec in specs]:
                future.result()
except KeyboardInterrupt:
    sys.exit(130)
"""

COMMANDS_INTERRUPTED = """
import sys, phalanx
from conformance_support import CommandBackend
directory, *cluster = sys.argv[1:]
specs = [["block", directory, "a"], ["block", directory, "b"], ["value", 1]]
options = {"backend": cluster[0], "scheduler": cluster[1]} if cluster else {}
try:
    phalanx.run([CommandBackend().task(i, spec, None) for i, spec in enumerate(specs)], max_workers=2, **options)
except KeyboardInterrupt:
    sys.exit(130)
"""


def interrupt_python(backend: Any, flags: Path, entry: str) -> list[int]:
    """Ctrl-C a program running two blocking callables: it exits 130 and leaves no process.
    Returns the pids it had started."""
    isolate = "1" if backend.isolate else "0"
    cluster = [backend.options["scheduler"]] if "scheduler" in backend.options else []
    code, stderr, pids = interrupt_when_started(PYTHON_INTERRUPTED, flags, ["a", "b"], backend.backend,
                                                isolate, entry, *cluster)
    assert code == 130, stderr
    assert not wait_gone(pids), "a process outlived the interrupted program"
    return pids


@pytest.mark.parametrize("entry", ["map", "executor"])
@on(*WORKERS)
def test_ctrl_c_stops_everything_and_leaves_no_process(backend: Any, flags: Path, entry: str) -> None:
    interrupt_python(backend, flags, entry)
    assert not (flags / "finished-a").exists()  # stopped, not run to the end


@pytest.mark.parametrize("entry", ["map", "executor"])
@on("threads")
def test_ctrl_c_on_threads_ends_the_program_and_leaves_no_process(backend: Any, flags: Path, entry: str) -> None:
    # Threads cannot be stopped: they end with their process (whether a blocked one got to
    # write "finished-a" first is not part of the contract).
    interrupt_python(backend, flags, entry)


@on(*COMMANDS)
def test_ctrl_c_stops_every_command_and_leaves_no_process(backend: Any, flags: Path) -> None:
    cluster = list(backend.run_options().values())  # backend, scheduler (nothing here)
    code, stderr, pids = interrupt_when_started(COMMANDS_INTERRUPTED, flags, ["a", "b"], *cluster)
    assert code == 130, stderr
    assert not wait_gone(pids), "a process outlived the interrupted program"
    assert not (flags / "finished-a").exists()


@on("command")
def test_commands_go_through_run_not_an_executor(backend: Any) -> None:
    # An Executor runs callables only; commands go through phalanx.run (interrupted above).
    with phalanx.Executor(1, backend="threads") as executor, pytest.raises(phalanx.ConfigError):
        executor.submit_task(backend.task(0, ["value", 1], None))


# ---------------------------------------------------------------------------- pickling


@pytest.fixture
def unpicklable() -> Iterator[tuple[threading.Lock, socket.socket]]:
    lock, sock = threading.Lock(), socket.socket()
    with sock:
        yield lock, sock


def run_unpicklable(backend: Any, lock: threading.Lock, sock: socket.socket) -> list[Any]:
    """Items 1 and 3 take arguments that cannot be pickled; items 0 and 2 succeed."""
    results = backend.run([["value", 1], ["same", lock], ["value", 3], ["same", sock]])
    assert [backend.value(results[0]), backend.value(results[2])] == [2, 6]
    return results


@on(*WORKERS)
def test_unpicklable_arguments_fail_only_their_item(
    backend: Any, unpicklable: tuple[threading.Lock, socket.socket]
) -> None:
    results = run_unpicklable(backend, *unpicklable)
    assert statuses(results) == ["succeeded", "failed", "succeeded", "failed"]
    assert "item 1" in results[1].reason and "type lock" in results[1].reason
    assert "item 3" in results[3].reason and "type socket" in results[3].reason
    assert "cannot be pickled" in results[1].reason


@on("threads")
def test_threads_get_their_arguments_by_reference(
    backend: Any, unpicklable: tuple[threading.Lock, socket.socket]
) -> None:
    # Documented: threads get their arguments by reference: the very same objects.
    lock, sock = unpicklable
    results = run_unpicklable(backend, lock, sock)
    assert statuses(results) == ["succeeded"] * 4
    assert results[1].value is lock and results[3].value is sock


@on("command")
def test_a_commands_arguments_are_strings_and_nothing_else_is_accepted(
    backend: Any, unpicklable: tuple[threading.Lock, socket.socket]
) -> None:
    # Documented: a command's arguments are strings; nothing is pickled, and anything
    # else is refused when the task is made.
    lock, _ = unpicklable
    with pytest.raises(phalanx.ConfigError, match="list of strings"):
        phalanx.Task("t", ("echo", lock))  # type: ignore[arg-type]


# ---------------------------------------------------------------------------- recycling

SIX_PIDS = [["pid"]] * 6  # each item says which process ran it, and that process's parent


def assert_recycled_every_two(pids: list[int]) -> None:
    assert pids[0] == pids[1] != pids[2] == pids[3] != pids[4] == pids[5] != pids[0]
    assert forkserver_pid() not in pids


@on("processes")
def test_max_tasks_per_worker_replaces_workers(backend: Any) -> None:
    results = backend.run(SIX_PIDS, max_workers=1, max_tasks_per_worker=2)
    assert statuses(results) == ["succeeded"] * 6
    assert_recycled_every_two([r.value[0] for r in results])  # the worker ran the item


@on("processes-isolate")
def test_max_tasks_per_worker_replaces_workers_and_each_item_gets_a_fresh_child(backend: Any) -> None:
    results = backend.run(SIX_PIDS, max_workers=1, max_tasks_per_worker=2)
    assert statuses(results) == ["succeeded"] * 6
    assert_recycled_every_two([r.value[1] for r in results])  # the worker forked the item's child
    assert len({r.value[0] for r in results}) == 6  # and a fresh child for every item


@on("threads")
def test_threads_refuse_max_tasks_per_worker(backend: Any) -> None:
    # Documented: threads share one process: there is no worker process to recycle.
    with pytest.raises(phalanx.ConfigError, match="max_tasks_per_worker needs backend='processes'"):
        backend.run(SIX_PIDS, max_tasks_per_worker=2)


@on(*COMMANDS)
def test_every_command_is_a_process_of_its_own(backend: Any) -> None:
    results = backend.run(SIX_PIDS)
    assert len({tuple(backend.value(r)) for r in results}) == 6
