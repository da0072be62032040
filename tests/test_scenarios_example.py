"""`examples/scenarios.toml` (seed 003: clnrm's scenario executor) run as the issue asks.

Two runs of a copy of the example, side by side (each in its own folder, so each has its
own journal, and neither learns durations from the other):

* ``-j 4 --show-workers --otel --json`` with standard error on a pseudo-terminal (where the
  live view, and so ``--show-workers``, draws) and standard output on a file (the JSON), the
  spans sent to an OTLP receiver in this process;
* ``-j 1 --show-workers --json`` with both streams on files: the start order, one task at a
  time, and what ``--show-workers`` does off a terminal (nothing: plain progress lines).

Every claim about the run is read from the ``--json`` report, the task settings from
``phalanx list --json``, and the spans from the OTLP requests; only the live view's slot rows
are read from the terminal, as that is all it is.
"""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import select
import shutil
import struct
import subprocess
import sys
import termios
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from otlp_receiver import Received, exporting_to, otlp_receiver
from phalanx.sinks.live import LINE_PATTERN

ROOT = Path(__file__).resolve().parent.parent
SCENARIOS = (
    "payment_flow", "auth_login", "orders_api", "postgres_migrations", "redis_failover",
    "search_reindex", "report_batch", "leaky_cache", "email_worker", "checkout_e2e",
)
#: `[resources] containers` in the example.
CONTAINERS = 10
#: The longest either run may take, in seconds (each takes a few).
BOUND = 60.0
_CSI = re.compile(rb"\x1b\[[0-9;?]*[ -/]*[@-~]")
_SLOT_ROW = re.compile(r"slot (\d+) +(\S+)")


@dataclass(frozen=True)
class Run:
    folder: Path
    returncode: int
    report: dict[str, Any]
    stderr: bytes

    def results(self) -> dict[str, dict[str, Any]]:
        return {result["task_id"]: result for result in self.report["results"]}


@dataclass(frozen=True)
class Runs:
    on_terminal: Run  # -j 4 --show-workers --otel --json
    one_slot: Run  # -j 1 --show-workers --json, off a terminal
    tasks: dict[str, dict[str, Any]]  # phalanx list --json: each task's settings
    received: list[Received]


def copy_example(folder: Path) -> Path:
    shutil.copy(ROOT / "examples" / "scenarios.toml", folder / "scenarios.toml")
    shutil.copytree(ROOT / "examples" / "scenarios", folder / "scenarios")
    return folder


def phalanx_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "phalanx", *args]


def read_terminal(master: int, process: subprocess.Popen[bytes]) -> bytes:
    """Everything written to the terminal until every writer closed it (bounded)."""
    chunks: list[bytes] = []
    deadline = time.monotonic() + BOUND
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            continue
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the terminal's last writer closed it
            break
        if not chunk:
            break
        chunks.append(chunk)
    else:
        process.kill()
        raise AssertionError(f"the run did not end within {BOUND} s: {b''.join(chunks)!r}")
    return b"".join(chunks)


def finish(process: subprocess.Popen[bytes], folder: Path, stderr: bytes | None = None) -> Run:
    try:
        returncode = process.wait(timeout=BOUND)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    if stderr is None:
        stderr = (folder / "stderr").read_bytes()
    stdout = (folder / "stdout").read_text(encoding="utf-8")
    assert stdout, stderr
    return Run(folder, returncode, json.loads(stdout), stderr)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Runs:
    pytest.importorskip("opentelemetry.exporter.otlp.proto.http.trace_exporter")
    one_folder = copy_example(tmp_path_factory.mktemp("one-slot"))
    with (one_folder / "stdout").open("wb") as out, (one_folder / "stderr").open("wb") as err:
        one_slot = subprocess.Popen(
            phalanx_command("run", "scenarios.toml", "-j", "1", "--show-workers", "--json"),
            cwd=one_folder, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
        )
    try:
        folder = copy_example(tmp_path_factory.mktemp("on-terminal"))
        with otlp_receiver() as (base, received):
            env = exporting_to(base, os.environ)
            for name in ("COLUMNS", "LINES", "FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE"):
                env.pop(name, None)
            env.update(TERM="xterm-256color", NO_COLOR="1")  # a terminal; no styles to strip
            master, slave = pty.openpty()
            fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
            try:
                with (folder / "stdout").open("wb") as out:
                    process = subprocess.Popen(
                        phalanx_command("run", "scenarios.toml", "-j", "4", "--show-workers", "--otel", "--json"),
                        cwd=folder, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=slave,
                    )
                os.close(slave)
                on_terminal = finish(process, folder, read_terminal(master, process))
            finally:
                os.close(master)
    finally:
        finished = finish(one_slot, one_folder)
    listed = subprocess.run(phalanx_command("list", "scenarios.toml", "--json"), cwd=folder,
                            capture_output=True, text=True, timeout=BOUND, check=True)
    tasks = {task["id"]: task for task in json.loads(listed.stdout)["tasks"]}
    return Runs(on_terminal, finished, tasks, received)


def test_every_scenario_succeeds_but_leaky_cache_over_its_memory_limit(runs: Runs) -> None:
    for run in (runs.on_terminal, runs.one_slot):
        assert run.returncode == 1, run.stderr
        results = run.results()
        assert sorted(results) == sorted(SCENARIOS)
        leaky = results.pop("leaky_cache")
        assert (leaky["status"], leaky["reason"]) == ("failed", "memory limit exceeded (128 MB)"), leaky
        assert runs.tasks["leaky_cache"]["limits"]["memory"] == 128 * 10**6  # its own, under [defaults]' 512MB
        assert {tid: result["status"] for tid, result in results.items()} == dict.fromkeys(results, "succeeded")
        assert run.report["summary"]["counts"]["succeeded"] == 9
        assert run.report["summary"]["counts"]["failed"] == 1


def test_the_containers_in_use_reach_the_cap_and_never_pass_it(runs: Runs) -> None:
    asks = {tid: task["resources"].get("containers", 0) for tid, task in runs.tasks.items()}
    assert sum(asks.values()) > CONTAINERS  # so the cap has work to do
    results = runs.on_terminal.results()
    in_use = {
        tid: sum(asks[other] for other, ran in results.items() if ran["start"] <= result["start"] < ran["end"])
        for tid, result in results.items()
    }
    assert max(in_use.values()) == CONTAINERS, in_use
    # The four first starters fill all four slots and exactly the ten containers.
    assert runs.on_terminal.report["summary"]["max_concurrency"] == 4


def test_one_slot_starts_them_in_priority_order(runs: Runs) -> None:
    priority = {tid: task["priority"] for tid, task in runs.tasks.items()}
    deps = {tid: task["deps"] for tid, task in runs.tasks.items()}
    results = runs.one_slot.results()
    order = sorted(results, key=lambda tid: results[tid]["start"])
    # Each start is of the highest priority among the tasks ready then.
    for position, tid in enumerate(order):
        start = results[tid]["start"]
        ready = [other for other in order[position:] if all(results[dep]["end"] <= start for dep in deps[other])]
        assert priority[tid] == max(priority[other] for other in ready), (tid, order)
    # Which, for this file: the critical scenarios first, the nightly ones last...
    assert set(order[:2]) == {"payment_flow", "auth_login"}, order
    assert set(order[-3:]) == {"search_reindex", "report_batch", "leaky_cache"}, order
    # ...and checkout_e2e (priority high) the moment both its dependencies are done.
    last_dependency = max(order.index(dep) for dep in ("payment_flow", "orders_api"))
    assert order[last_dependency + 1] == "checkout_e2e", order


def test_show_workers_on_a_terminal_draws_each_slot_with_its_scenario(runs: Runs) -> None:
    run = runs.on_terminal
    text = _CSI.sub(b"", run.stderr).decode("utf-8", "replace")
    rows = {(int(slot), task) for slot, task in _SLOT_ROW.findall(text)}
    assert {slot for slot, _ in rows} == {1, 2, 3, 4}, text
    results = run.results()
    ran_on = {(result["worker"], tid) for tid, result in results.items()}
    busy = {row for row in rows if row[1] != "idle"}
    assert busy <= ran_on, text
    # The first four run for a second or more: every redraw in that time shows them.
    first = sorted(results, key=lambda tid: results[tid]["start"])[:4]
    assert {(results[tid]["worker"], tid) for tid in first} <= busy, text


def test_show_workers_off_a_terminal_leaves_plain_progress_lines(runs: Runs) -> None:
    lines = runs.one_slot.stderr.decode().splitlines()
    assert not any("\x1b[" in line or _SLOT_ROW.search(line) for line in lines), lines
    progress = [LINE_PATTERN.fullmatch(line) for line in lines if line.startswith("phalanx: ")]
    assert progress and all(progress), lines
    final = progress[-1]
    assert final is not None
    assert final["kind"] == "finished"
    assert (final["done"], final["succeeded"], final["failed"]) == ("10", "9", "1")


def test_a_span_per_scenario_with_its_status(runs: Runs) -> None:
    trace_service = pytest.importorskip("opentelemetry.proto.collector.trace.v1.trace_service_pb2")
    spans = []
    for request in runs.received:
        assert request.path == "/v1/traces"
        message = trace_service.ExportTraceServiceRequest()
        message.ParseFromString(request.body)
        spans += [span for resource in message.resource_spans for scope in resource.scope_spans for span in scope.spans]
    (root,) = (span for span in spans if span.name == "phalanx run")
    assert root.status.code == root.status.STATUS_CODE_ERROR
    assert root.status.message == "1 of 10 tasks did not succeed"
    scenarios = [span for span in spans if span is not root]
    assert Counter(span.name for span in scenarios) == Counter(SCENARIOS)
    results = runs.on_terminal.results()
    for span in scenarios:
        assert span.parent_span_id == root.span_id and span.trace_id == root.trace_id
        attributes = {kv.key: kv.value for kv in span.attributes}
        assert attributes["phalanx.task.status"].string_value == results[span.name]["status"]
        assert attributes["phalanx.task.worker"].int_value == results[span.name]["worker"]
        if span.name == "leaky_cache":
            assert span.status.code == span.status.STATUS_CODE_ERROR
            assert span.status.message == "memory limit exceeded (128 MB)"
        else:
            assert span.status.code == span.status.STATUS_CODE_UNSET, span.name
