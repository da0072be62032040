"""How many workers: the one answer every front end uses when the caller names none."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal

WorkerKind = Literal["processes", "threads", "commands"]


@dataclass(frozen=True, slots=True)
class WorkerChoice:
    """What ``max_workers=None`` (or no ``-j``) picks, and why."""

    count: int
    reason: str


def usable_cpus() -> tuple[int, str]:
    """The CPUs this process may run on, and where that number came from."""
    try:
        return max(1, len(os.sched_getaffinity(0))), "CPUs this process may run on (sched_getaffinity)"
    except (AttributeError, OSError):
        return os.cpu_count() or 1, "CPUs (os.cpu_count)"


def optimal_workers(kind: WorkerKind = "processes") -> WorkerChoice:
    """The worker count used when none is given, with the reason in words.

    Processes and commands: one per usable CPU (CPU-bound work gains nothing from more).
    Threads: ``min(32, CPUs + 4)``, as `concurrent.futures.ThreadPoolExecutor`: they mostly
    wait on I/O.
    """
    cpus, source = usable_cpus()
    if kind == "threads":
        count = min(32, cpus + 4)
        return WorkerChoice(count, f"{count} = min(32, {cpus} {source} + 4): threads mostly wait on I/O")
    return WorkerChoice(cpus, f"{cpus} = the {source}: one {kind[:-1]} per CPU for CPU-bound work")
