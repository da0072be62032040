"""What `phalanx.run` and `get_execution_plan` accept as tasks, turned into one validated `Graph`.

A `Graph`, an iterable of `Task`, or HuskyCat's mapping of names to callables (or shell
strings) plus a ``deps`` mapping.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace

from .durations import parse_duration
from .errors import ConfigError
from .model import Action, Graph, Task

TaskSource = Graph | Iterable[Task] | Mapping[str, Action | Task]


def build_graph(
    tasks: TaskSource,
    *,
    deps: Mapping[str, Sequence[str]] | None = None,
    timeout: float | str | None = None,
) -> Graph:
    """A graph from any accepted task source, with a default per-task timeout applied.

    Raises:
        ConfigError: ``deps`` given with a Graph or names a task that is not there.
    """
    default_timeout = None if timeout is None else parse_duration(timeout, what="timeout")
    if isinstance(tasks, Graph) and deps is None and default_timeout is None:
        return tasks
    if isinstance(tasks, Mapping):
        items: list[Task] = []
        for name, action in tasks.items():
            if isinstance(action, Task):
                items.append(action if action.id == name else replace(action, id=name))
            else:
                items.append(Task(id=name, action=action))
    else:
        items = list(tasks)
    if deps:
        ids = {task.id for task in items}
        for name in deps:
            if name not in ids:
                raise ConfigError(f"deps names {name!r}, which is not one of the tasks")
        items = [
            replace(task, deps=(*task.deps, *deps[task.id])) if task.id in deps else task for task in items
        ]
    if default_timeout is not None:
        items = [task if task.timeout is not None else replace(task, timeout=default_timeout) for task in items]
    return Graph(items)
