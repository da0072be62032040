"""``phalanx pytest``: pytest's own collection and reporting, each unit in a warm fork.

- `plugin`: the pytest plugin and `main`: collect in this process, run units on the scheduler.
- `units`: how tests are cut into units (``--isolate file|test|none``, ``--each``).
- `forks`: the backend that runs a unit in forks, survives crashes and timeouts.
- `fork_child`: what a fork does; `wire`: what it says to its parent.
- `junitout`: ``--junit-out``; `cover`: ``--coverage``.
"""

from __future__ import annotations

from .plugin import PhalanxPytest, PytestOptions, main
from .units import ISOLATIONS, Isolation

__all__ = ["ISOLATIONS", "Isolation", "PhalanxPytest", "PytestOptions", "main"]
