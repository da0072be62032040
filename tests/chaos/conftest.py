"""The chaos suite: what users and machines do to runs (kills at any moment, full disks,
floods of output, a hundred thousand tasks), each scenario asserting no orphan process, no
hang and no lost result.

Every scenario adds its counts to one tally, printed at the end of the session as a table
(scenario, runs, kills, orphans found, rows lost), with or without ``-s``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

# The shared helpers of the suite above (mapsupport: running phalanx map, bounded waits).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from chaossupport import TALLY  # after the path above


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if TALLY.rows:
        terminalreporter.write_sep("-", "chaos suite")
        terminalreporter.write_line(TALLY.table())
