"""A fresh worker process: the fallback when forking the parent is not safe.

A fork copies only the thread that calls ``fork``; when the parent has other threads after
collection (started at import time by a test module or a plugin), a lock one of them held
stays locked in every fork. Then each slot gets a fresh interpreter instead (as
pytest-xdist's workers are), started with ``python -m phalanx.pytestrun.spawned``: it runs
pytest with the parent's own arguments in the parent's directory, collects, and serves the
parent's commands exactly as a fork does (`fork_child.serve_commands`), mapping the
parent's test indices to its own items by node id. It is kept for the slot's next units:
warm, like ``--isolate none``, not isolated per file.

It ends with ``os._exit`` after its last unit: pytest's session end (cache, ``--junitxml``)
belongs to the parent. Its standard output goes nowhere (the parent prints); what it
collects differently from the parent (a test missing) is reported lost by the parent.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path

import pytest

from . import fork_child

#: The environment variable that carries a worker's `WorkerSpec` (JSON).
SPEC_VARIABLE = "PHALANX_PYTEST_WORKER"


@dataclass(frozen=True, slots=True)
class WorkerSpec:
    """What a fresh worker needs: the pipes' fds, pytest's arguments and directory, the
    parent's node ids (in its order: an index means the same test in both), ``--maxfail``,
    and the worker's variables (set after collection, as a fork gets them: a plugin that
    sees ``PYTEST_XDIST_WORKER`` while it configures takes the worker for xdist's)."""

    commands: int
    results: int
    cwd: str
    args: list[str]
    nodeids_file: str
    maxfail: int
    env: dict[str, str]

    def to_env(self) -> str:
        return json.dumps(asdict(self))


class _Worker:
    def __init__(self, spec: WorkerSpec) -> None:
        self._spec = spec

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtestloop(self, session: pytest.Session) -> bool:
        spec = self._spec
        status = 0
        try:
            config = session.config
            os.environ.update(spec.env)
            config.option.maxfail = spec.maxfail
            fork_child.silence_terminal(config)
            mine = {item.nodeid: item for item in session.items}
            nodeids = Path(spec.nodeids_file).read_text(encoding="utf-8").splitlines()
            items = [mine.get(nodeid) for nodeid in nodeids]
            reporter = fork_child.ForkReporter(config, spec.results)
            config.pluginmanager.register(reporter, "phalanx-fork-reporter")
            reporter.listening = True
            fork_child.serve_commands(session, items, spec.commands, spec.results, reporter)
        except BaseException:
            traceback.print_exc()
            status = fork_child.EXIT_INTERNAL
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(status)


def main() -> None:
    spec = WorkerSpec(**json.loads(os.environ.pop(SPEC_VARIABLE)))
    os.chdir(spec.cwd)
    # The run loop never returns: the session's end (the cache's lastfailed, --junitxml) is
    # the parent's alone.
    pytest.main(spec.args, plugins=[_Worker(spec)])
    os._exit(fork_child.EXIT_INTERNAL)  # collection failed here: the run loop never started


if __name__ == "__main__":
    main()
