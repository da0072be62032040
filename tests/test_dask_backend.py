"""The Dask backend beyond the conformance suite: what only a cluster has.

A real ``LocalCluster(n_workers=2, processes=True)`` (the conformance suite's `TestCluster`),
started once for the module: a worker process killed from outside mid-task, phalanx itself
killed (-9) mid-run and resumed against the same cluster, fail-fast, worker resources, the
scheduler's own retries refused, output shipped back bounded, and `examples/ci.toml` giving
the same statuses as a local run. Synchronisation is by marker files (`conformance_support`).
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

import phalanx
from conformance_support import (
    BACKENDS,
    BOUND,
    HERE,
    TestCluster,
    descendants,
    mark,
    started_pid,
    subprocess_env,
    wait_gone,
    wait_no_descendants,
)

ROOT = HERE.parent
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module", autouse=True)
def cluster() -> Iterator[str]:
    yield TestCluster.address()
    TestCluster.close()


@pytest.fixture
def flags(tmp_path: Path) -> Iterator[Path]:
    directory = tmp_path / "flags"
    directory.mkdir()
    yield directory
    mark(directory / "release")


@pytest.fixture
def no_leftovers(flags: Path) -> Iterator[None]:
    before = set(descendants())
    yield
    assert not wait_no_descendants(before), "processes left behind"


def job_command(spec: list[Any]) -> str:
    """A shell command running one conformance job (``block`` writes its pid, waits for release)."""
    return shlex.join([sys.executable, "-S", str(HERE / "conformance_support.py"), json.dumps(spec)])


def statuses(results: list[Any]) -> list[str]:
    return [result.status.value for result in results]


# ---------------------------------------------------------------------------- losing a worker


@pytest.mark.usefixtures("no_leftovers")
def test_a_dask_worker_killed_mid_task_costs_exactly_that_task(flags: Path) -> None:
    backend = BACKENDS["dask-command"]
    specs: list[Any] = [["value", i] for i in range(6)]
    specs[2] = ["block", str(flags), "victim"]
    handle = backend.start(specs, ordered=False)
    stream = handle.stream()
    others = [next(stream) for _ in range(5)]  # everything else is done: only the victim runs
    victim = started_pid(flags, "victim")
    worker = psutil.Process(victim).ppid()  # the Dask worker whose phalanx node started the command
    assert worker in TestCluster.worker_pids()
    os.kill(worker, signal.SIGKILL)
    (lost,) = list(stream)
    assert statuses(others) == ["succeeded"] * 5
    assert lost.task_id == "2" and lost.status is phalanx.Status.CRASHED
    assert lost.reason.startswith("WorkerCrashed: the Dask worker tcp://")
    assert lost.worker_address is not None and lost.worker_address in lost.reason
    assert not wait_gone([victim]), "the command outlived its worker"  # the node's watchdog ended it
    assert not (flags / "finished-victim").exists()
    TestCluster.wait_for_workers(2)  # the nanny starts a new one


def test_a_lost_worker_runs_its_task_again_only_if_its_retries_say_so(flags: Path, cluster: str) -> None:
    # Dask's own retries are off: the task crashed once, and ran again only because of retries=1.
    mark(flags / "release")
    first = phalanx.Task("t", "echo $PHALANX_ATTEMPT >> " + shlex.quote(str(flags / "attempts")) + "; kill -9 $PPID",
                         retry=phalanx.RetryPolicy(count=1, initial=0))
    report = phalanx.run([first], backend="dask", scheduler=cluster)
    assert report["t"].status is phalanx.Status.CRASHED and report["t"].attempts == 2
    assert (flags / "attempts").read_text().split() == ["1", "2"]
    TestCluster.wait_for_workers(2)


def dask_worker_of(pid: int) -> int:
    """The Dask worker process a process runs under (its nearest ancestor that is one)."""
    workers = TestCluster.worker_pids()
    for ancestor in psutil.Process(pid).parents():
        if ancestor.pid in workers:
            return ancestor.pid
    raise AssertionError(f"{pid} runs under no Dask worker")


def test_a_batch_of_callables_lost_with_its_worker_runs_again_elsewhere(flags: Path, cluster: str) -> None:
    from conformance_support import job

    specs: list[Any] = [["value", i] for i in range(6)]
    specs[1] = ["block", str(flags), "victim"]
    with phalanx.Executor(2, backend="dask", scheduler=cluster) as executor:
        results = executor.map(job, specs, batch_size=3, as_results=True)
        first = started_pid(flags, "victim")
        (flags / "started-victim").unlink()
        os.kill(dask_worker_of(first), signal.SIGKILL)
        second = started_pid(flags, "victim")  # the batch again, on the other worker
        mark(flags / "release")
        results = list(results)
    assert statuses(results) == ["succeeded"] * 6
    assert [r.value for r in results] == [0, "victim", 4, 6, 8, 10]
    assert second != first and not wait_gone([first])
    TestCluster.wait_for_workers(2)


# ---------------------------------------------------------------------------- losing phalanx


def task_file(directory: Path, flags: Path) -> Path:
    """quick; slow after it (its first copy blocks, ignoring SIGTERM; a second copy notes whether the
    first still runs, then succeeds); after slow."""
    started = shlex.quote(str(flags / "started-slow"))
    overlap = shlex.quote(str(flags / "overlap"))
    slow = (f"trap '' TERM; if [ -e {started} ]; then "
            f"if kill -0 $(cut -d' ' -f1 {started}) 2>/dev/null; then touch {overlap}; fi; echo second; "
            f"else exec {job_command(['block', str(flags), 'slow'])}; fi")
    path = directory / "phalanx.toml"
    path.write_text(
        "[tasks.quick]\n"
        "cmd = 'echo quick'\n"
        "[tasks.slow]\n"
        f"cmd = {json.dumps(slow)}\n"
        "deps = ['quick']\n"
        "[tasks.after]\n"
        "cmd = 'echo after'\n"
        "deps = ['slow']\n"
    )
    return path


def test_kill_9_of_phalanx_stops_its_tasks_on_the_workers_and_resume_never_overlaps_them(
    tmp_path: Path, flags: Path, cluster: str
) -> None:
    path = task_file(tmp_path, flags)
    command = [sys.executable, "-m", "phalanx", "run", str(path), "--backend", "dask", "--scheduler", cluster]
    first = subprocess.Popen(command, cwd=tmp_path, env=subprocess_env(), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        slow = started_pid(flags, "slow")
    finally:
        first.kill()  # SIGKILL: phalanx gets no chance to stop anything itself
        first.communicate(timeout=BOUND)
    # At once, while the first copy still runs (it ignores SIGTERM: it lasts the 2 s grace).
    again = subprocess.run([*command, "--resume", "--json"], cwd=tmp_path, env=subprocess_env(),
                           capture_output=True, text=True, timeout=60)
    assert again.returncode == 0, again.stderr
    results = {r["task_id"]: r for r in json.loads(again.stdout)["results"]}
    # quick was done (the journal says so); slow and after run now.
    assert set(results) == {"slow", "after"}
    assert {r["status"] for r in results.values()} == {"succeeded"}
    assert results["slow"]["stdout_tail"] == "second\n"
    # The scheduler forgot the dead client's tasks, the worker killed the group, and the
    # resumed run waited for that before running slow again.
    assert not (flags / "overlap").exists(), "the resumed run ran slow while its first copy still ran"
    assert not wait_gone([slow])
    assert not (flags / "finished-slow").exists()


# ---------------------------------------------------------------------------- fail-fast


@pytest.mark.usefixtures("no_leftovers")
def test_fail_fast_stops_what_runs_on_the_workers_and_cancels_the_rest(flags: Path, cluster: str) -> None:
    started = shlex.quote(str(flags / "started-slow"))
    tasks = [
        phalanx.Task("slow", job_command(["block", str(flags), "slow"])),
        phalanx.Task("fails", f"while [ ! -e {started} ]; do sleep 0.01; done; exit 1"),
        phalanx.Task("after", "echo after", deps=("slow",)),
        phalanx.Task("later", "echo later", deps=("fails",)),
    ]
    report = phalanx.run(tasks, backend="dask", scheduler=cluster, max_workers=2, fail_fast=True, grace=0.5)
    assert report["fails"].status is phalanx.Status.FAILED
    assert report["slow"].status is phalanx.Status.CANCELLED
    assert report["after"].status in (phalanx.Status.CANCELLED, phalanx.Status.SKIPPED)
    assert report["later"].status is phalanx.Status.SKIPPED
    assert not wait_gone([started_pid(flags, "slow")])
    assert not (flags / "finished-slow").exists()


# ---------------------------------------------------------------------------- worker resources


@pytest.fixture(scope="module")
def db_cluster() -> Iterator[str]:
    """A second cluster whose one worker offers ``db = 1``."""
    import logging

    import dask
    import distributed

    with dask.config.set({"distributed.scheduler.allowed-failures": 0}):
        local = distributed.LocalCluster(n_workers=1, threads_per_worker=4, processes=True, resources={"db": 1},
                                         dashboard_address=":0", silence_logs=logging.CRITICAL)
    try:
        yield str(local.scheduler_address)
    finally:
        local.close()


def resource_file(directory: Path, flags: Path, extra: str = "") -> Path:
    path = directory / "phalanx.toml"
    log = shlex.quote(str(flags / "log"))
    path.write_text(
        'worker_resources = ["db", "gpu"]\n'
        + "".join(
            f"[tasks.migrate{i}]\ncmd = \"echo start >> {log}; sleep 0.3; echo end >> {log}\"\n"
            "resources = { db = 1 }\n"
            for i in range(3)
        )
        + extra
    )
    return path


def test_worker_resources_go_to_dask_which_runs_one_db_task_at_a_time(
    tmp_path: Path, flags: Path, db_cluster: str
) -> None:
    path = resource_file(tmp_path, flags)
    done = subprocess.run([sys.executable, "-m", "phalanx", "run", str(path), "--backend", "dask", "--scheduler",
                           db_cluster, "-j", "4"], cwd=tmp_path, env=subprocess_env(), capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    # phalanx would start all three at once (-j 4, no [resources]); the worker's db = 1 does not.
    assert (flags / "log").read_text().split() == ["start", "end"] * 3


def test_a_worker_resource_no_worker_offers_is_refused_before_anything_runs(
    tmp_path: Path, flags: Path, db_cluster: str
) -> None:
    path = resource_file(tmp_path, flags, "[tasks.train]\ncmd = 'echo train'\nresources = { gpu = 1 }\n")
    done = subprocess.run([sys.executable, "-m", "phalanx", "run", str(path), "--backend", "dask", "--scheduler",
                           db_cluster], cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 2
    assert "task 'train' needs worker resource 'gpu' = 1, and no worker offers it" in done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert not (flags / "log").exists()  # nothing ran


def test_a_worker_resource_is_not_counted_by_phalanx_when_running_here(tmp_path: Path, flags: Path) -> None:
    path = resource_file(tmp_path, flags)
    done = subprocess.run([sys.executable, "-m", "phalanx", "run", str(path), "-j", "3"], cwd=tmp_path,
                          env=subprocess_env(), capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert sorted((flags / "log").read_text().split()) == ["end"] * 3 + ["start"] * 3


# ---------------------------------------------------------------------------- the scheduler


def test_a_scheduler_that_retries_tasks_itself_is_refused() -> None:
    import distributed

    with distributed.LocalCluster(n_workers=1, processes=False, dashboard_address=":0") as local, \
            pytest.raises(phalanx.ConfigError, match="ALLOWED_FAILURES=0"):
        phalanx.run([phalanx.Task("t", "true")], backend="dask", scheduler=local.scheduler_address)


def test_an_unreachable_scheduler_is_a_one_line_error(tmp_path: Path) -> None:
    (tmp_path / "phalanx.toml").write_text("[tasks.t]\ncmd = 'true'\n")
    with socket_bound() as port:
        done = subprocess.run([sys.executable, "-m", "phalanx", "run", "--backend", "dask", "--scheduler",
                               f"tcp://127.0.0.1:{port}"], cwd=tmp_path, env={**subprocess_env(),
                              "DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT": "1s"}, capture_output=True, text=True,
                              timeout=60)
    assert done.returncode == 2
    assert "cannot reach the Dask scheduler at tcp://127.0.0.1:" in done.stderr
    assert "Traceback" not in done.stderr


class socket_bound:
    """A port nobody answers on (bound, never listening)."""

    def __enter__(self) -> int:
        import socket

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        return int(self.sock.getsockname()[1])

    def __exit__(self, *exc: object) -> None:
        self.sock.close()


def test_the_scheduler_address_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch, cluster: str) -> None:
    monkeypatch.setenv("PHALANX_DASK_SCHEDULER", cluster)
    report = phalanx.run({"t": "true"}, backend="dask")
    from distributed import Client

    with Client(cluster) as client:
        addresses = set(client.scheduler_info(n_workers=-1)["workers"])
    assert report["t"].ok and report["t"].worker_address in addresses


# ---------------------------------------------------------------------------- output and results


def test_output_and_the_result_file_come_back_from_the_worker(tmp_path: Path, cluster: str) -> None:
    big = "head -c 5000000 /dev/zero | tr '\\0' x; echo '{\"rows\": 7}' > \"$PHALANX_RESULT_FILE\"; echo oops >&2"
    report = phalanx.run({"big": big}, backend="dask", scheduler=cluster, log_dir=tmp_path)
    result = report["big"]
    assert result.ok and result.data == {"rows": 7} and result.stderr_tail == "oops\n"
    assert result.stdout_path is not None and Path(result.stdout_path).parent == tmp_path
    kept = Path(result.stdout_path).read_bytes()
    half = 2 << 20
    assert kept.startswith(b"x" * half) and kept.endswith(b"x" * half)
    assert b"[phalanx: 805696 bytes of output left out on the worker]" in kept


def test_callables_run_on_the_workers_warm_processes(cluster: str) -> None:
    values = list(phalanx.map(abs, range(-500, 0), backend="dask", scheduler=cluster))
    assert values == list(range(500, 0, -1))


# ---------------------------------------------------------------------------- the example


def test_the_ci_example_gives_the_same_statuses_on_dask(tmp_path: Path, cluster: str) -> None:
    statuses = {}
    for name, extra in (("local", []), ("dask", ["--backend", "dask", "--scheduler", cluster])):
        directory = tmp_path / name
        directory.mkdir()
        (directory / "ci.toml").write_text((ROOT / "examples" / "ci.toml").read_text())
        done = subprocess.run([sys.executable, "-m", "phalanx", "run", "ci.toml", "-j", "4", "--json", *extra],
                              cwd=directory, env=subprocess_env(), capture_output=True, text=True, timeout=120)
        results = json.loads(done.stdout)["results"]
        statuses[name] = (done.returncode, {r["task_id"]: r["status"] for r in results},
                          {r["task_id"]: r["data"] for r in results})
        if name == "dask":
            assert all(r["worker_address"].startswith("tcp://") for r in results)
    assert statuses["dask"] == statuses["local"]
    assert len(statuses["local"][1]) == 15


# ---------------------------------------------------------------------------- where the cluster is


def test_the_task_files_dask_scheduler_is_used_after_the_environment(tmp_path: Path, cluster: str) -> None:
    (tmp_path / "phalanx.toml").write_text(f'dask_scheduler = "{cluster}"\n[tasks.t]\ncmd = "true"\n')
    env = {k: v for k, v in subprocess_env().items() if k != "PHALANX_DASK_SCHEDULER"}
    done = subprocess.run([sys.executable, "-m", "phalanx", "run", "--backend", "dask", "--json"], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    (result,) = json.loads(done.stdout)["results"]
    assert result["worker_address"].startswith("tcp://127.0.0.1:")
    # The environment comes first: a file naming a scheduler nobody answers on is not asked.
    (tmp_path / "phalanx.toml").write_text('dask_scheduler = "tcp://127.0.0.1:9"\n[tasks.t]\ncmd = "true"\n')
    done = subprocess.run([sys.executable, "-m", "phalanx", "run", "--backend", "dask"], cwd=tmp_path,
                          env={**env, "PHALANX_DASK_SCHEDULER": cluster}, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_phalanx_map_runs_its_jobs_on_the_cluster(tmp_path: Path, cluster: str) -> None:
    done = subprocess.run([sys.executable, "-m", "phalanx", "map", "--backend", "dask", "--scheduler", cluster, "-k",
                           "--joblog", "log", "echo", "job", ":::", "a", "b", "c"], cwd=tmp_path, env=subprocess_env(),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "job a\njob b\njob c\n"
    hosts = [line.split("\t")[1] for line in (tmp_path / "log").read_text().splitlines()[1:]]
    assert len(hosts) == 3 and all(host.startswith("tcp://127.0.0.1:") for host in hosts)


def test_phalanx_map_refuses_what_needs_the_jobs_here() -> None:
    done = subprocess.run([sys.executable, "-m", "phalanx", "map", "--backend", "dask", "--pipe", "wc"],
                          input="x\n", env=subprocess_env(), capture_output=True, text=True, timeout=60)
    assert done.returncode == 255
    assert "--backend dask runs the jobs on other machines: --pipe needs them here" in done.stderr
