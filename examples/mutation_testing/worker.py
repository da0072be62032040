"""The worker side of run_api.py: the warm-up, and one mutant's test run.

They live in a module of their own, which worker processes can import by name (run_api.py
puts this directory on ``sys.path``, which workers inherit), so they work with any phalanx:
at 8a23a9a an ``initializer`` defined in the calling script was handed to
``multiprocessing`` as it was, looked up by name in a worker whose ``__main__`` is not the
script, and the worker died while starting. Since f53e864 phalanx cloudpickles it, and
functions defined in the script work too.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
from pathlib import Path

from report import Outcome

HERE = Path(__file__).resolve().parent

#: The same pytest options as run_cli.sh, with absolute paths (a worker's working
#: directory is wherever phalanx's process server started).
PYTEST_ARGS = ["-x", "-q", "-p", "no:cacheprovider", "--rootdir", str(HERE), "-c", str(HERE / "pytest.ini"),
               str(HERE / "tests")]


def warm_up(here: str) -> None:
    """Once per worker: what every pytest run would otherwise pay for again.

    It imports pytest and the package under test, then runs one pytest session over an
    empty directory (nothing collected, nothing run): that loads every installed plugin
    (the ``pytest11`` entry points, hypothesis's here) and whatever those import lazily,
    with pytest's assertion rewriting applied to them as in a real run. Last,
    ``gc.freeze()``: the objects made so far are left out of garbage collection, so the
    collections pytest does at the end of each run skip them, and forked children do not
    copy their memory pages just to update their gc headers.
    """
    import gc
    import tempfile

    sys.path.insert(0, here)
    import calc  # noqa: F401
    import pytest

    with tempfile.TemporaryDirectory(prefix="warm-up-") as empty, contextlib.redirect_stdout(io.StringIO()):
        pytest.main(["-q", "-p", "no:cacheprovider", "--rootdir", empty, empty])
    gc.freeze()


class FailureRecorder:
    """A pytest plugin object: the node ids of the tests that failed (or errored)."""

    def __init__(self) -> None:
        self.failed: list[str] = []

    def pytest_runtest_logreport(self, report) -> None:
        if report.failed:
            self.failed.append(report.nodeid)

    def pytest_collectreport(self, report) -> None:
        if report.failed:
            self.failed.append(report.nodeid or "<collection>")


def run_mutant(gremlin: str) -> Outcome:
    """Run the tests with one gremlin switched on (in a fresh fork of a warm worker)."""
    import pytest

    os.environ["ACTIVE_GREMLIN"] = gremlin
    recorder = FailureRecorder()
    output = io.StringIO()  # pytest's report is not shown; the recorder has what counts
    with contextlib.redirect_stdout(output):
        exit_code = pytest.main(PYTEST_ARGS, plugins=[recorder])
    killed = exit_code != 0
    first_failure = recorder.failed[0] if killed and recorder.failed else None
    return Outcome(gremlin=gremlin, killed=killed, killing_test=first_failure)
