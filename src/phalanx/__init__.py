"""phalanx: one parallel executor for shell commands, task DAGs, Python callables and coroutines."""

from __future__ import annotations

__version__ = "0.1.0"
