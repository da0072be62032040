"""The child of tests/test_journal.py: runs with a `JournalSink`, until the test kills it.

    journal_child.py first DIR LOG SEED    the 200-task DAG; prints each id that succeeded, then waits
    journal_child.py resume DIR LOG SEED   plans the resume, kills leftovers, runs the rest; prints JSON
    journal_child.py hang DIR              one command that never ends; prints "spawned PID", then waits

Every command spawn is reported to `Journal.attempt_spawned` right after the process
starts, as the command backend's ``on_spawn`` hook does for the command line: here
`phalanx.backends.spawn.Spawner.spawn` is wrapped.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import shlex
import sys
import threading
from pathlib import Path
from typing import Any

import phalanx
from phalanx.backends.spawn import Child, Spawner
from phalanx.journal import (
    Journal,
    JournalSink,
    RunningProcesses,
    file_key,
    kill_leftovers,
    plan_resume,
    spec_hashes,
)

TASKS = 200

_spawn = Spawner.spawn

#: Called with each attempt's process once it is spawned.
spawned: RunningProcesses | None = None


def _reporting_spawn(self: Spawner, argv: list[str], **kwargs: Any) -> Child:
    """Spawner.spawn, telling the journal about each attempt's process, as the backend's hook does."""
    child = _spawn(self, argv, **kwargs)
    env = kwargs["env"]
    if spawned is not None and b"PHALANX_RUN_ID" in env:
        run_id, task_id = env[b"PHALANX_RUN_ID"].decode(), env[b"PHALANX_TASK_ID"].decode()
        spawned(run_id, task_id, int(env[b"PHALANX_ATTEMPT"]), child.pid)
    return child


async def append(task_id: str, log: str) -> None:
    await asyncio.sleep(0.002)  # a task takes a moment: the kill lands in the middle of the run
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, f"{task_id}\n".encode())
    finally:
        os.close(fd)


def build(seed: int, log: str) -> phalanx.Graph:
    """The DAG: up to three random dependencies among earlier tasks; every fourth task a command."""
    rng = random.Random(seed)
    graph = phalanx.Graph()
    for number in range(TASKS):
        tid = f"t{number:03d}"
        deps = tuple(f"t{dep:03d}" for dep in rng.sample(range(number), min(number, rng.randint(0, 3))))
        if number % 4 == 3:
            graph.add(phalanx.Task(tid, f"printf '%s\\n' {tid} >> {shlex.quote(log)}", deps=deps))
        else:
            graph.add(phalanx.Task(tid, append, args=(tid, log), deps=deps))
    return graph


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def main() -> None:
    global spawned
    mode, directory = sys.argv[1], Path(sys.argv[2])
    journal = Journal.open(directory)
    spawned = journal.attempt_spawned
    Spawner.spawn = _reporting_spawn  # type: ignore[method-assign]
    key = file_key(directory / "phalanx.toml")

    def heard(event: phalanx.Event) -> None:
        if isinstance(event, phalanx.TaskFinished) and event.result.ok:
            say(event.task_id)

    if mode == "hang":
        graph = phalanx.Graph([phalanx.Task("sleeper", ["sh", "-c", "sleep 60 & exec sleep 60"])])
        sink = JournalSink(journal, spec_hashes=spec_hashes(graph), command_line="hang", file_key=key)

        def spawned_and_said(run_id: str, task_id: str, attempt: int, pid: int) -> None:
            journal.attempt_spawned(run_id, task_id, attempt, pid)  # committed before we say so
            say(f"spawned {pid}")

        spawned = spawned_and_said
        phalanx.run(graph, sinks=[sink], max_workers=1)
        return
    log, seed = sys.argv[3], int(sys.argv[4])
    graph = build(seed, log)
    if mode == "first":
        sink = JournalSink(journal, spec_hashes=spec_hashes(graph), command_line="first", file_key=key)
        phalanx.run(graph, sinks=[sink], on_event=heard, max_workers=4)
        threading.Event().wait()  # finished: wait for the kill all the same
    plan = plan_resume(journal, key, graph)
    killed = kill_leftovers(plan.leftovers, grace=2.0)
    journal.mark_crashed(plan.crashed_runs)
    say(json.dumps({"done": sorted(plan.done), "todo": list(plan.todo), "killed": killed}))
    rest = plan.graph(graph)
    statuses: dict[str, str] = {}
    if len(rest):
        sink = JournalSink(journal, spec_hashes=plan.spec_hashes, command_line="resume", file_key=key)
        report = phalanx.run(rest, sinks=[sink], max_workers=4)
        statuses = {tid: result.status.value for tid, result in report.results.items()}
    left = plan_resume(journal, key, graph).todo  # after the resumed run: nothing
    say(json.dumps({"statuses": statuses, "left": list(left)}))
    journal.close()


if __name__ == "__main__":
    main()
