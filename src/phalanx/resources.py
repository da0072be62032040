"""Named resource capacities and what running tasks hold of them.

`ResourcePool` is the bookkeeping only; it never waits and never decides order: the
scheduler asks `fits`, then `acquire`s and `release`s on its own loop. Slots are the one
resource every task takes (one unless it asks otherwise); each held slot has a number,
1-based, so a task can be told which worker it is (``PHALANX_WORKER``, ``{%}`` in map).

A resource may also be declared by the names of its units (``gpu = ["0", "1"]``): its
capacity is how many there are, and each task that asks for ``gpu = 1`` is handed units
of its own, never held by two running tasks at once. A command sees them as
``PHALANX_GPU`` (``PHALANX_<NAME>``, the names joined with ","), and a resource named
``gpu`` also as ``CUDA_VISIBLE_DEVICES``; a callable asks `resource_instances()`.
"""

from __future__ import annotations

import heapq
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from types import MappingProxyType

from .errors import ConfigError, ResourceError, did_you_mean
from .model import ONE_SLOT, SLOTS, Task

# Tolerance for float capacities (cpu = 0.5 + 0.25 + 0.25 must fit in 1.0).
_EPSILON = 1e-9

Amounts = Mapping[str, float]

#: What a run declares: capacities by name (``{"db": 1}``), or the names of a resource's
#: units (``{"gpu": ["0", "1"]}``: a capacity of 2, each unit handed to one task at a time).
Capacities = Mapping[str, float | Sequence[str]]

#: The named units an attempt holds, by resource: ``{"gpu": ("0",)}``.
Instances = Mapping[str, tuple[str, ...]]

NO_INSTANCES: Instances = MappingProxyType({})

# Variables phalanx sets itself: a resource whose variable would shadow one is refused.
_OWN_VARIABLES = frozenset({"PHALANX_TASK_ID", "PHALANX_ATTEMPT", "PHALANX_WORKER", "PHALANX_RUN_ID",
                            "PHALANX_RESULT_FILE"})


def instance_variable(resource: str) -> str:
    """The environment variable that carries a resource's units: ``PHALANX_GPU`` for ``gpu``."""
    return "PHALANX_" + re.sub(r"[^A-Za-z0-9_]", "_", resource).upper()


def instance_environment(instances: Instances) -> dict[str, str]:
    """The variables telling a command which units it holds: ``PHALANX_<NAME>`` = the names
    joined with ","; for ``gpu`` also ``CUDA_VISIBLE_DEVICES``, which CUDA programs obey."""
    env: dict[str, str] = {}
    for resource, names in instances.items():
        joined = ",".join(names)
        env[instance_variable(resource)] = joined
        if resource == "gpu":
            env["CUDA_VISIBLE_DEVICES"] = joined
    return env


def check_instance_names(resource: str, names: object) -> tuple[str, ...]:
    """The unit names of a resource declared as a list (integers become strings).

    Raises:
        ConfigError: not a non-empty list of distinct names (non-empty, without ","),
            or a resource whose variable would shadow one of phalanx's own.
    """
    if isinstance(names, Sequence) and not isinstance(names, str | bytes) and not names:
        raise ConfigError(f'resource {resource!r}: no instances listed; name at least one, such as ["0"]')
    if isinstance(names, str | bytes) or not isinstance(names, Sequence):
        raise ConfigError(f"resource {resource!r}: expected a capacity (a number) or a non-empty list of "
                          f'instance names such as ["0", "1"], got {names!r}')
    checked: list[str] = []
    for name in names:
        if isinstance(name, bool) or not isinstance(name, str | int):
            raise ConfigError(f"resource {resource!r}: an instance name must be a string or an integer, got {name!r}")
        text = str(name)
        if not text.strip() or "," in text:
            raise ConfigError(f"resource {resource!r}: instance name {text!r} must be non-blank and without ',' "
                              "(the names reach the task joined with ',')")
        if text in checked:
            raise ConfigError(f"resource {resource!r}: instance {text!r} is listed twice")
        checked.append(text)
    if instance_variable(resource) in _OWN_VARIABLES:
        raise ConfigError(f"resource {resource!r}: its instances would be exported as {instance_variable(resource)}, "
                          "which phalanx sets itself; choose another name")
    return tuple(checked)


def split_capacities(declared: Capacities | None) -> tuple[dict[str, float], dict[str, tuple[str, ...]]]:
    """Capacities by name, and the unit names of the resources declared by them.

    Raises:
        ConfigError: a value that is neither a number nor a list of unit names, bad unit
            names, or two resources whose units would reach a command in the same variable.
    """
    capacities: dict[str, float] = {}
    instances: dict[str, tuple[str, ...]] = {}
    for resource, value in dict(declared or {}).items():
        if not isinstance(resource, str) or not resource:
            raise ConfigError(f"resource names must be non-empty strings, got {resource!r}")
        if isinstance(value, int | float) and not isinstance(value, bool):
            capacities[resource] = float(value)
            continue
        names = check_instance_names(resource, value)
        for other in instances:
            if instance_variable(other) == instance_variable(resource):
                raise ConfigError(f"resources {other!r} and {resource!r} would both be exported as "
                                  f"{instance_variable(resource)}; rename one")
        instances[resource] = names
        capacities[resource] = float(len(names))
    return capacities, instances


def fits(request: Amounts, available: Amounts) -> bool:
    """Whether every amount of ``request`` is within ``available``."""
    if request is ONE_SLOT:  # most tasks: one slot and nothing else
        return available.get(SLOTS, 0.0) >= 1.0 - _EPSILON
    return all(amount <= available.get(name, 0.0) + _EPSILON for name, amount in request.items())


def check_requests(tasks: Iterable[Task], capacities: Amounts, instances: Instances = NO_INSTANCES) -> None:
    """Refuse, before anything runs, a task that asks for a resource that does not exist
    or for more than a capacity: it could never start. A resource with named instances
    (and slots) is handed out in whole units.

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
            if name in instances and amount != int(amount):
                raise ResourceError(
                    f"task {task.id!r} requests {name} = {amount:g}, but {name!r} has named instances "
                    f"({', '.join(instances[name])}): ask for a whole number of them",
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
    """Capacities by name, the amounts free now, numbered slots, and the free units of the
    resources declared by name (as many as their amount free: requests are whole numbers)."""

    def __init__(self, capacities: Amounts, instances: Instances = NO_INSTANCES) -> None:
        if SLOTS not in capacities:
            raise ValueError("capacities must include 'slots'")
        self.capacities: dict[str, float] = dict(capacities)
        self.free: dict[str, float] = dict(capacities)
        self._free_slot_numbers = list(range(1, math.floor(capacities[SLOTS]) + 1))
        # Slot numbers above a shrunk capacity, free but not to be handed out (see resize_slots).
        self._retired_slot_numbers: set[int] = set()
        self._highest_slot_number = len(self._free_slot_numbers)
        # Units are handed out lowest declared first (a heap of positions), as slots are.
        self._names = {resource: tuple(names) for resource, names in instances.items()}
        self._positions = {resource: {name: i for i, name in enumerate(names)} for resource, names in instances.items()}
        self._free_units = {resource: list(range(len(names))) for resource, names in instances.items()}

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

    def take_instances(self, request: Amounts) -> Instances:
        """The named units for a request just acquired (lowest declared free first)."""
        if not self._names:
            return NO_INSTANCES
        taken: dict[str, tuple[str, ...]] = {}
        for resource, free in self._free_units.items():
            wanted = int(request.get(resource, 0.0))
            if wanted:
                names = self._names[resource]
                taken[resource] = tuple(names[heapq.heappop(free)] for _ in range(wanted))
        return MappingProxyType(taken)

    def release(self, request: Amounts, slot_numbers: Iterable[int], instances: Instances = NO_INSTANCES) -> None:
        for name, amount in request.items():
            self.free[name] = min(self.capacities[name], self.free[name] + amount)
        limit = self.capacities[SLOTS]
        for number in slot_numbers:
            if number > limit:
                self._retired_slot_numbers.add(number)  # the slots shrank while it ran
            else:
                heapq.heappush(self._free_slot_numbers, number)
        for resource, names in instances.items():
            positions = self._positions[resource]
            for name in names:
                heapq.heappush(self._free_units[resource], positions[name])

    def resize_slots(self, slots: int) -> None:
        """Change the slot capacity while attempts run (``-j auto``).

        Growing frees the new slots at once. Shrinking takes effect as attempts end: the
        free amount may go below zero meanwhile (nothing starts until it is back above),
        and slot numbers above the new capacity are not handed out, so worker numbers stay
        within ``1..slots``.
        """
        old = int(self.capacities[SLOTS])
        if slots == old:
            return
        self.capacities[SLOTS] = float(slots)
        self.free[SLOTS] += slots - old
        if slots < old:
            kept = [n for n in self._free_slot_numbers if n <= slots]
            self._retired_slot_numbers.update(n for n in self._free_slot_numbers if n > slots)
            heapq.heapify(kept)
            self._free_slot_numbers = kept
            return
        for number in range(old + 1, slots + 1):
            if number in self._retired_slot_numbers or number > self._highest_slot_number:
                self._retired_slot_numbers.discard(number)
                heapq.heappush(self._free_slot_numbers, number)
        self._highest_slot_number = max(self._highest_slot_number, slots)
