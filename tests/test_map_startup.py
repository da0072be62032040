"""`phalanx map`'s start-up: what it imports, and what its watchdog process imports.

Scripts start ``phalanx map`` thousands of times, so its start-up is its speed for short
jobs: each module it loads for nothing costs every run (issue 14). These tests pin what a
plain run must never load, with ``python -X importtime`` (which lists every module a
process imports, the lazily imported ones included).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from mapsupport import PHALANX_MAP, RUN_TIMEOUT, environment
from phalanx import watchdog

#: Modules a plain ``phalanx map true ::: 1`` has no use for: each belongs to an option
#: (--rate, --results, --joblog, --csv, --redact, --bar) or to other front ends.
NOT_FOR_A_PLAIN_MAP = {
    "click", "rich", "csv", "phalanx.cli", "phalanx.ratelimit", "phalanx.http", "phalanx.redact",
    "phalanx.backends.inline", "phalanx.backends.threads", "phalanx.backends.calls",
    "phalanx.sinks.joblog", "phalanx.sinks.results", "phalanx.sinks.progress",
}

#: What the watchdog process must not load: its start-up competes with phalanx's for the CPU.
NOT_FOR_THE_WATCHDOG = {
    "dataclasses", "typing", "enum", "inspect", "contextlib", "weakref", "signal", "subprocess", "asyncio",
}


def imported(importtime_output: str) -> set[str]:
    """The modules a ``python -X importtime`` run imported, from what it wrote on stderr."""
    names = set()
    for line in importtime_output.splitlines():
        if line.startswith("import time:") and "|" in line and "self [us]" not in line:
            names.add(line.rsplit("|", 1)[1].strip())
    return names


def test_a_plain_map_run_loads_nothing_it_does_not_use(tmp_path: Path) -> None:
    python, *rest = PHALANX_MAP
    result = subprocess.run(
        [python, "-X", "importtime", *rest, "true", ":::", "1"],
        capture_output=True, text=True, timeout=RUN_TIMEOUT, cwd=tmp_path, env=environment(tmp_path),
    )
    assert result.returncode == 0, result.stderr
    modules = imported(result.stderr)
    assert {"phalanx.gnu.run", "phalanx.journal", "phalanx.watchdog"} <= modules  # it did run, journal and all
    assert modules & NOT_FOR_A_PLAIN_MAP == set()


def test_the_watchdog_process_loads_almost_nothing(tmp_path: Path) -> None:
    # The very command line `Watchdog` starts it with, told "done" at once: it exits quietly.
    package = os.path.dirname(os.path.abspath(watchdog.__file__))
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-I", "-S", "-c", watchdog._BOOTSTRAP, package, "0123abcd", "0.1",
         str(os.getpid())],
        input="done\n", capture_output=True, text=True, timeout=RUN_TIMEOUT, cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    modules = imported(result.stderr)
    assert {"phalanx.watchdog", "phalanx.procfs"} <= modules
    assert modules & NOT_FOR_THE_WATCHDOG == set()
