"""How collected tests are cut into units, each run in its own fork (``--isolate``).

- ``file``: the tests of one file (one module, or one non-Python test file) in collection
  order. Module state, module- and session-scoped fixtures live as long as the unit.
- ``test``: each test alone.
- ``none``: files again, but forks are kept and given one file after another, as
  pytest-xdist's ``--dist loadfile`` does: warm, not isolated.

With ``--each NAME=v1,v2`` every unit is there once per value.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

Isolation = Literal["file", "test", "none"]
ISOLATIONS: tuple[Isolation, ...] = ("file", "test", "none")


@dataclass(frozen=True, slots=True)
class Unit:
    """Tests run one after another in one fork.

    Attributes:
        id: the unit's task id: its file (or test) node id, after ``VALUE|`` with ``--each``.
        name: the file (or test) node id alone: the unit's key in the duration history.
        indices: the tests, as indices into the session's collected items, in order.
        env: environment variables the fork sets (``--each``'s NAME=value).
        value: the ``--each`` value, if any.
    """

    id: str
    name: str
    indices: tuple[int, ...]
    env: tuple[tuple[str, str], ...] = ()
    value: str | None = None


def file_of(nodeid: str) -> str:
    """A test's file part: ``tests/test_x.py`` of ``tests/test_x.py::TestA::test_b[1]``."""
    return nodeid.split("::", 1)[0]


def make_units(
    nodeids: Sequence[str], isolate: Isolation, *, each: tuple[str, Sequence[str]] | None = None
) -> list[Unit]:
    """Cut the collected tests (their node ids, in collection order) into units."""
    base: list[tuple[str, tuple[int, ...]]] = []
    if isolate == "test":
        base = [(nodeid, (index,)) for index, nodeid in enumerate(nodeids)]
    else:
        by_file: dict[str, list[int]] = {}
        for index, nodeid in enumerate(nodeids):
            by_file.setdefault(file_of(nodeid), []).append(index)
        base = [(name, tuple(indices)) for name, indices in by_file.items()]
    if each is None:
        return [Unit(name, name, indices) for name, indices in base]
    variable, values = each
    return [
        Unit(f"{value}|{name}", name, indices, env=((variable, value),), value=value)
        for value in values
        for name, indices in base
    ]
