"""``--coverage[=PKG]``: coverage.py in the parent and in every fork, combined at the end.

Measuring starts before pytest does, so the conftests, the test modules and the package
under test are measured as they are imported (once, in the parent, before any fork). A
fork inherits the running tracer and keeps measuring; just before it ends it saves its
data to a file of its own (``.coverage.HOST.pidN.X...``, coverage.py's parallel-mode
names). At the end the parent saves its own, combines them all into ``.coverage`` in the
current directory (what ``coverage report``/``html``/``xml`` read) and prints the report:
the same lines as one ``coverage run -m pytest``.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any, TextIO

from ..errors import PhalanxError


class Measuring:
    """coverage.py running for one ``phalanx pytest`` (see the module doc)."""

    def __init__(self, package: str) -> None:
        try:
            import coverage
        except ImportError as error:
            raise PhalanxError("--coverage needs coverage.py: pip install coverage") from error
        self._module = coverage
        self._source = [package] if package else None
        self._data_file = str(Path.cwd() / ".coverage")
        # Files of an earlier run that died before combining would be added to this one's.
        for stale in Path.cwd().glob(".coverage.*"):
            with contextlib.suppress(OSError):
                stale.unlink()
        self._coverage: Any = coverage.Coverage(data_file=self._data_file, data_suffix=True, source=self._source)
        self._pid = os.getpid()
        self._coverage.start()

    def save_fork(self) -> None:
        """In a fork, as it ends: stop and save its own data file."""
        if os.getpid() == self._pid:
            return
        self._coverage.stop()
        self._coverage.save()

    def finish(self, out: TextIO) -> float | None:
        """Save the parent's data, combine everything into ``.coverage``, print the report;
        the total percentage (None when nothing was measured)."""
        self._coverage.stop()
        self._coverage.save()
        combined = self._module.Coverage(data_file=self._data_file, source=self._source)
        combined.combine(data_paths=[os.path.dirname(self._data_file)], keep=False)
        combined.save()
        out.write("\n")
        try:
            total = float(combined.report(file=out, show_missing=True))
        except self._module.exceptions.NoDataError:
            out.write("phalanx: coverage: no data was collected\n")
            return None
        out.write(f"phalanx: coverage data combined in {self._data_file}\n")
        out.flush()
        return total


def start(package: str) -> Measuring:
    return Measuring(package)
