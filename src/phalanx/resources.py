"""Named resource capacities and what running tasks hold of them.

`ResourcePool` is the bookkeeping only; it never waits and never decides order: the
scheduler asks `fits`, then `acquire`s and `release`s on its own loop. Slots are the one
resource every task takes (one unless it asks otherwise); each held slot has a number,
1-based, so a task can be told which worker it is (``PHALANX_WORKER``, ``{%}`` in map).
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterable, Mapping

from .errors import ResourceError, did_you_mean
from .model import SLOTS, Task

# Tolerance for float capacities (cpu = 0.5 + 0.25 + 0.25 must fit in 1.0).
_EPSILON = 1e-9

Amounts = Mapping[str, float]


def fits(request: Amounts, available: Amounts) -> bool:
    """Whether every amount of ``request`` is within ``available``."""
    return all(amount <= available.get(name, 0.0) + _EPSILON for name, amount in request.items())


def check_requests(tasks: Iterable[Task], capacities: Amounts) -> None:
    """Refuse, before anything runs, a task that asks for a resource that does not exist
    or for more than a capacity: it could never start.

    Raises:
        ResourceError: naming the task, the resource and the capacity.
    """
    for task in tasks:
        for name, amount in task.requests.items():
            if name == SLOTS and amount != int(amount):
                raise ResourceError(
                    f"task {task.id!r} requests slots = {amount:g}: slots are whole numbers",
                    task_id=task.id,
                )
            if name not in capacities:
                hint = did_you_mean(name, capacities)
                suggestion = f" (did you mean {hint!r}?)" if hint else ""
                declared = ", ".join(sorted(capacities)) or "none"
                raise ResourceError(
                    f"task {task.id!r} requests unknown resource {name!r}{suggestion}; "
                    f"declared: {declared}",
                    task_id=task.id,
                )
            if amount > capacities[name] + _EPSILON:
                where = " (-j)" if name == SLOTS else ""
                raise ResourceError(
                    f"task {task.id!r} requests {name} = {amount:g} but the capacity of "
                    f"{name!r}{where} is {capacities[name]:g}: it could never start",
                    task_id=task.id,
                )


class ResourcePool:
    """Capacities by name, the amounts free now, and numbered slots."""

    def __init__(self, capacities: Amounts) -> None:
        if SLOTS not in capacities:
            raise ValueError("capacities must include 'slots'")
        self.capacities: dict[str, float] = dict(capacities)
        self.free: dict[str, float] = dict(capacities)
        self._free_slot_numbers = list(range(1, math.floor(capacities[SLOTS]) + 1))

    def fits(self, request: Amounts) -> bool:
        return fits(request, self.free)

    def acquire(self, request: Amounts) -> tuple[int, ...]:
        """Take the amounts and return the slot numbers taken (lowest free first)."""
        for name, amount in request.items():
            self.free[name] -= amount
        wanted = int(request.get(SLOTS, 0.0))  # whole numbers: see check_requests
        if wanted == 1:
            return (heapq.heappop(self._free_slot_numbers),)
        return tuple(heapq.heappop(self._free_slot_numbers) for _ in range(wanted))

    def release(self, request: Amounts, slot_numbers: Iterable[int]) -> None:
        for name, amount in request.items():
            self.free[name] = min(self.capacities[name], self.free[name] + amount)
        for number in slot_numbers:
            heapq.heappush(self._free_slot_numbers, number)
