"""Load a task file (``phalanx.toml``, or ``[tool.phalanx]`` in ``pyproject.toml``) into the model.

    [defaults]                                # any task key but cmd/deps/for_each; task keys win
                                              # (tags are merged: the defaults' and the task's)
    [resources]                               # named capacities: db = 1 (slots are -j, not here)
    gpu = ["0", "1"]                          # named instances: a task with gpu = 1 gets one of its
                                              # own, as $PHALANX_GPU and $CUDA_VISIBLE_DEVICES
    [priorities]                              # tag = "high" | "normal" | "low" | an integer
    critical = "high"
    [tasks.test]
    cmd = "pytest {item}"                     # a string runs with sh -c; a list is an argv
    for_each = { glob = "tests/test_*.py" }   # or a list: one task test[ITEM] per item

A task's priority (an integer, higher starts first; high = 10, normal = 0, low = -10) is
the first of: its own ``priority``; the highest of its tags' in ``[priorities]``; the
``priority`` of ``[defaults]``; the run's ``--priority`` (the tasks it applies to are
`TaskFile.unprioritized`); 0. A ``[priorities]`` tag that no task has is a warning.

Every error is a `PhalanxError` with the file (as the caller spelled it) and the best line:
the offending key's, else its table header's, else 1. tomllib reports no positions, so
`_LineIndex` re-scans the text for them.
"""

from __future__ import annotations

import contextlib
import gc
import glob
import math
import os
import re
import shlex
import tomllib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any, NoReturn, TypeVar

from .durations import parse_duration
from .errors import (
    ConfigError,
    CycleError,
    DuplicateTaskError,
    PhalanxError,
    ResourceError,
    UnknownDependencyError,
    did_you_mean,
)
from .limits import LIMIT_PARSERS, Limits, parse_limit
from .model import SLOTS, Graph, RetryPolicy, Task, parse_priority
from .ratelimit import RateLimit
from .resources import check_instance_names, split_capacities
from .shellquote import ShellQuoteError, quote_placeholders

_T = TypeVar("_T")
_Path = tuple[str, ...]

_TOP_KEYS = ("defaults", "resources", "priorities", "rate_limits", "tasks", "redact", "dask_scheduler",
             "worker_resources")
_TASK_KEYS = ("cmd", "deps", "priority", "timeout", "retries", "resources", "env", "cwd", "tags", "cost", "for_each",
              "limiter", "limiter_key", "tokens", "junit", *LIMIT_PARSERS)  # memory, cpus, ...: a task's `Limits`
_PER_TASK_ONLY = ("cmd", "deps", "for_each", "junit")  # meaningless as a default: they define the task
_DEFAULT_KEYS = tuple(key for key in _TASK_KEYS if key not in _PER_TASK_ONLY)
_TASK_KEY_SET = frozenset(_TASK_KEYS)
_LIMIT_KEYS = frozenset(LIMIT_PARSERS)
_REDACT = "redact"  # the run's, not a task's: at the top or in [defaults], never per task
_FOR_EACH_KEYS = ("glob",)
_FOR_EACH_FORMS = ('a list of items (for_each = ["a", "b"]) or a table whose only key is glob '
                   '(for_each = { glob = "*.py" })')
_RETRY_KEYS = ("count", "backoff", "initial", "max", "jitter", "on_exit_codes", "max_retry_after")
_ITEM = "{item}"
# Commands, their arguments, environment and directory reach the kernel as C strings, which end at a
# NUL: such a task could only fail when it starts, after others ran, so the loader refuses it.
_NUL = "\0"
_HAS_NUL = "contains a NUL character (\\u0000), which no process can be given"
# How deep tables and arrays may nest below the top of a task file. Real files need 5 (tasks.NAME.retries
# .on_exit_codes); the cap keeps every walk over a value, repr() included, far from the recursion limit.
_MAX_NESTING = 64
_NESTS = (dict, list)  # what tomllib nests values in (a tuple: isinstance checks it 3x faster than dict | list)


class _Node:
    """One key path of a `_LineIndex`: where it was defined, where it was implied, and its children."""

    __slots__ = ("children", "explicit", "implicit")

    def __init__(self) -> None:
        self.explicit: int | None = None  # first line that defines this very path
        self.implicit: int | None = None  # first line that defines a path under it
        self.children: dict[str, _Node] = {}

    def line(self) -> int | None:
        return self.explicit or self.implicit


class _LineIndex:
    """The 1-based line where each key path of a TOML document is first defined.

    A best-effort scan of headers (``[a."b.c"]``) and ``key =`` / ``dotted.key =`` lines,
    skipping multi-line strings. A table that is only implied (``tasks.a`` by ``tasks.a.cmd =``)
    gets the line that implied it. Keys inside inline tables are not recorded: lookups fall
    back to the enclosing key, which is on the same line anyway.

    The paths are kept as a tree of keys, so a path of depth N costs N nodes: storing every
    prefix as its own tuple would cost N²/2 (a header 20,000 keys deep took seconds).
    """

    _KEY = r"""(?:[A-Za-z0-9_-]+|"(?:[^"\\\n]|\\.)*"|'[^'\n]*')"""
    _DOTTED = rf"{_KEY}(?:\s*\.\s*{_KEY})*"
    # A header must end its line, so that an array element like ["x"] is not taken for one.
    _HEADER = re.compile(rf"\s*\[\[?\s*({_DOTTED})\s*\]\]?\s*(?:#.*)?$")
    _ASSIGN = re.compile(rf"\s*({_DOTTED})\s*=")
    _PART = re.compile(_KEY)

    def __init__(self, text: str = "", root: _Path = ()) -> None:
        self.root = root  # the table everything is under: ("tool", "phalanx") in a pyproject.toml
        # Scanned at the first question: only errors and warnings ask, and a file that has
        # none (thousands of tasks, run as they are) need not pay for the scan.
        self._text: str | None = text
        self._root_node = _Node()

    @property
    def _tree(self) -> _Node:
        if self._text is not None:
            text, self._text = self._text, None
            self._scan(text)
        return self._root_node

    def _scan(self, text: str) -> None:
        table: _Path = ()
        open_string: str | None = None
        # TOML lines end at "\n" only (str.splitlines would also split at \x0c, \u2028, ...).
        for number, line in enumerate(text.split("\n"), start=1):
            if open_string is not None:
                if open_string in line:
                    open_string = None
                continue
            if header := self._HEADER.match(line):
                table = self._key_path(header.group(1)) or table
                self._add(table, number)
            elif assign := self._ASSIGN.match(line):
                self._add(table + (self._key_path(assign.group(1)) or ()), number)
                value = line[assign.end():]
                for quotes in ('"""', "'''"):
                    if value.count(quotes) % 2:  # opened here, closed on a later line
                        open_string = quotes

    @classmethod
    def _key_path(cls, text: str) -> _Path | None:
        """The keys of a dotted key that matched `_DOTTED`, unquoted; None if one is not valid TOML."""
        # Part by part: handing the whole dotted key to tomllib is quadratic in its length.
        path: list[str] = []
        for part in cls._PART.finditer(text):
            key = cls._unquote(part.group())
            if key is None:
                return None
            path.append(key)
        return tuple(path)

    @staticmethod
    def _unquote(part: str) -> str | None:
        if part[0] not in "\"'":
            return part  # a bare key
        if part[0] == "'" or "\\" not in part:
            return part[1:-1]  # no escapes to resolve
        # Let tomllib resolve the escapes, so that they follow TOML's own rules.
        try:
            key: str = tomllib.loads(f"k = {part}")["k"]
        except tomllib.TOMLDecodeError:
            return None
        return key

    def _add(self, path: _Path, line: int) -> None:
        node = root = self._root_node
        for key in path:
            if node is not root and node.implicit is None:
                node.implicit = line  # a strict prefix of path: implied by this line
            node = node.children.setdefault(key, _Node())
        if node.explicit is None:
            node.explicit = line

    def _walk(self, path: _Path) -> list[_Node]:
        """The nodes of ``path`` under the root, as far as they exist: [the root's, ...]."""
        node = self._tree
        nodes = [node]  # nodes[i]: the node at depth i
        for key in (*self.root, *path):
            child = node.children.get(key)
            if child is None:
                break
            node = child
            nodes.append(node)
        return nodes[len(self.root):]

    def get(self, *path: str) -> int | None:
        """The line of ``path`` (under the root), or None if it was not found."""
        nodes = self._walk(path)
        return nodes[-1].line() if len(nodes) == len(path) + 1 else None

    def best(self, *path: str) -> int:
        """The line of ``path``, else of its nearest enclosing table that has one, else 1."""
        for node in reversed(self._walk(path)):
            if line := node.line():
                return line
        return 1


@dataclass(frozen=True, slots=True)
class TaskFile:
    """A loaded task file.

    Attributes:
        path: the file the tasks came from.
        graph: the tasks; checked for unknown dependencies and cycles, but not frozen
            (the runner validates it when a run starts).
        capacities: the ``[resources]`` table; never contains ``slots`` (that is ``-j``). A
            resource declared by its instances (``gpu = ["0", "1"]``) has their number here.
        rate_limits: the ``[rate_limits]`` table: named limits tasks pace themselves by.
        junit: for tasks that write JUnit XML themselves, where (an absolute path or glob).
        warnings: located, one-line messages about things that load but are probably
            mistakes (``{item}`` in a task without ``for_each``), for the front end to print.
        instances: the resources of ``[resources]`` declared by their instances' names.
        unprioritized: the ids of the tasks whose priority nothing in the file sets (no
            ``priority`` of their own, no tag in ``[priorities]``, none in ``[defaults]``):
            those a run's ``--priority`` applies to.
        redact: the environment variables (names or ``fnmatch`` patterns) whose values
            phalanx masks in what it shows and stores (`phalanx.redact`).
        dask_scheduler: the Dask scheduler ``--backend dask`` connects to (``tcp://HOST:8786``).
        worker_resources: resource names that live on particular machines (a GPU, a
            database): tasks may request them without ``[resources]``; on a cluster the
            engine places such a task on a worker offering them; here, nothing counts them.
    """

    path: Path
    graph: Graph
    capacities: Mapping[str, float]
    warnings: tuple[str, ...] = ()
    rate_limits: Mapping[str, RateLimit] = field(default_factory=dict)
    junit: Mapping[str, str] = field(default_factory=dict)
    _lines: _LineIndex = field(default_factory=_LineIndex, repr=False, compare=False)
    _sources: Mapping[str, str] = field(default_factory=dict, repr=False, compare=False)  # id -> NAME
    instances: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    unprioritized: frozenset[str] = frozenset()
    redact: tuple[str, ...] = ()
    dask_scheduler: str | None = None
    worker_resources: frozenset[str] = frozenset()

    @property
    def resources(self) -> Mapping[str, float | tuple[str, ...]]:
        """What the scheduler is given: the capacities, with instance names where declared
        (and the worker resources, which phalanx's own pool does not count)."""
        from .backends.cluster import UNCOUNTED

        return {**dict.fromkeys(self.worker_resources, UNCOUNTED), **self.capacities, **self.instances}

    def line_of(self, task_id: str, key: str | None = None) -> int | None:
        """The line of ``[tasks.NAME]``, or of ``key`` in that table, for a task id.

        Expanded ids (``test[tests/test_a.py]``) map to the lines of their ``for_each``
        task. A ``key`` the table does not set falls back to the header line.
        """
        name = self._sources.get(task_id, task_id.split("[", 1)[0])
        line = self._lines.get("tasks", name, key) if key is not None else None
        return line or self._lines.get("tasks", name)


def find_task_file(directory: Path | None = None) -> Path:
    """The task file for ``directory`` (default: the current one), searched upwards as git does.

    Each directory from ``directory`` up is checked for ``phalanx.toml``, then for a
    ``pyproject.toml`` with ``[tool.phalanx]``; the nearest wins. The search stops at the
    filesystem root, and at a directory that contains ``.git`` (after checking it), so a
    task file outside the repository is never picked up.

    Args:
        directory: where to start; when None the path returned is relative to the current
            directory (``phalanx.toml``, ``../../phalanx.toml``), so errors read as the user
            would type the path.

    Raises:
        ConfigError: no directory on the way has one.
    """
    start = Path.cwd() if directory is None else Path(directory).absolute()
    for where in (start, *start.parents):
        found = _task_file_in(where)
        if found is not None:
            if directory is None:
                return Path(os.path.relpath(found, start))
            return Path(directory) / found.name if where == start else found
        if (where / ".git").exists():
            above = "" if where == start else f" or above it up to the repository root {where}"
            break
    else:
        above = " or any directory above it"
    raise ConfigError(f"no phalanx.toml (or [tool.phalanx] in pyproject.toml) in {start}{above}")


def _task_file_in(where: Path) -> Path | None:
    candidate = where / "phalanx.toml"
    if candidate.is_file():
        return candidate
    pyproject = where / "pyproject.toml"
    if pyproject.is_file() and _has_phalanx_table(pyproject):
        return pyproject
    return None


def _has_phalanx_table(pyproject: Path) -> bool:
    text = pyproject.read_bytes().decode("utf-8", errors="replace")
    try:
        tool = tomllib.loads(text).get("tool")
    except (tomllib.TOMLDecodeError, RecursionError, MemoryError):
        # Broken, but apparently meant for us: pick it so the loader reports the error and its line.
        return "tool.phalanx" in text
    return isinstance(tool, dict) and "phalanx" in tool


def load_task_file(path: str | Path) -> TaskFile:
    """Read a task file into a `TaskFile`.

    A file named ``pyproject.toml`` is read from its ``[tool.phalanx]`` table.

    Args:
        path: the file; errors name it exactly as given here.

    Raises:
        ConfigError: unreadable, not UTF-8, bad TOML, unknown keys, wrong types, bad values
            (`DurationError` for durations).
        UnknownDependencyError: a dependency names no task (with a did-you-mean).
        CycleError: the dependencies form a cycle.
        DuplicateTaskError: ``for_each`` gives the same item twice.
        ResourceError: a task asks for an undeclared resource or more than its capacity.
    """
    file, source = str(path), Path(path)
    with _collector_paused():
        text, document = _parse(source, file)
        root: _Path = ("tool", "phalanx") if source.name == "pyproject.toml" else ()
        lines = _LineIndex(text, root)
        if root:
            tool = document.get("tool")
            ours = tool.get("phalanx") if isinstance(tool, dict) else None
            if not isinstance(ours, dict):
                raise ConfigError("no [tool.phalanx] table", file=file, line=lines.best())
            document = ours
        return _Loader(file, source, lines).load(document)


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    """The cyclic garbage collector off while a file loads, as it was after.

    Parsing and loading make several objects per task and keep nearly all of them: each
    collection the allocations trigger walks everything made so far and finds no garbage.
    At 100,000 tasks that was a third of the load. The few cycles made meanwhile (an error's
    traceback) are collected once the collector is back on.
    """
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def _parse(source: Path, file: str) -> tuple[str, dict[str, Any]]:
    try:
        data = source.read_bytes()
    except FileNotFoundError:
        raise ConfigError("no such file", file=file) from None
    except OSError as error:
        raise ConfigError(f"cannot read: {error.strerror or error}", file=file) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        raise ConfigError(
            f"not UTF-8 text (byte 0x{data[error.start]:02x}); save the file as UTF-8", file=file, line=line
        ) from None
    text = text.removeprefix("\ufeff")  # editors on Windows add a BOM; tomllib refuses it
    try:
        return text, tomllib.loads(text)
    except RecursionError:
        # tomllib parses arrays and inline tables recursively: a few hundred levels exhaust the stack.
        message = "arrays or inline tables nested too deep to parse (a task file needs a few levels at most)"
        raise ConfigError(message, file=file, line=_too_deep_line(text)) from None
    except MemoryError:
        raise ConfigError("too large to parse: out of memory", file=file) from None
    except tomllib.TOMLDecodeError as error:
        # The position is only in the message: "... (at line 3, column 7)" or "(at end of document)".
        line, message = 1, str(error)
        if found := re.search(r"\s*\(at (?:line (\d+), column \d+|end of document)\)$", message):
            line = int(found.group(1)) if found.group(1) else text.count("\n") + (not text.endswith("\n"))
            message = message[: found.start()]
        raise ConfigError(f"invalid TOML: {message}", file=file, line=max(line, 1)) from None


# What can hold a bracket without nesting anything (strings, comments), else a bracket.
_BRACKET_TOKENS = re.compile("|".join((
    r'"""(?:[^\\]|\\[\s\S])*?""""{0,2}',  # multi-line basic string: may end with two more quotes
    r"'''[\s\S]*?''''{0,2}",  # multi-line literal string: likewise
    r'"(?:[^"\\\n]|\\.)*"',  # basic string (a quoted key too)
    r"'[^'\n]*'",  # literal string
    r"#[^\n]*",  # comment
    r"[\[\]{}]",
)))


def _too_deep_line(text: str) -> int | None:
    """The line of the first value whose arrays or inline tables nest deeper than `_MAX_NESTING`.

    Only called once tomllib has given up, so it stops at the first such value: tomllib read
    (and checked) at least that far, while what follows may be anything.
    """
    depth, start = 0, 0
    for token in _BRACKET_TOKENS.finditer(text):
        bracket = token.group()
        if bracket in ("[", "{"):
            if depth == 0:
                start = token.start()  # where the value (or a header) begins: its key's line
            depth += 1
            if depth > _MAX_NESTING:
                return text.count("\n", 0, start) + 1
        elif bracket in ("]", "}"):
            depth = max(depth - 1, 0)
    return None


def _nesting_owner(path: _Path) -> str:
    """Who a too-deep value at ``path`` belongs to, for the error message."""
    if len(path) >= 3 and path[0] == "tasks":
        return f"task {path[1]!r}: {path[2]}"
    if len(path) >= 2 and path[0] in _TOP_KEYS:
        return f"[{path[0]}]: {path[1]}"
    return f"top-level key {path[0]!r}"


def _hint(word: str, known: Any) -> str:
    suggestion = did_you_mean(word, known)
    return f" (did you mean {suggestion!r}?)" if suggestion else ""


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)  # TOML true is not 1


def _is_str_list(value: object) -> bool:
    # `not value` first: most lists asked about (tags, a first task's deps) are empty, and a
    # generator costs more than the test.
    return isinstance(value, list) and (not value or all([isinstance(item, str) for item in value]))


class _Loader:
    """Turns a parsed document into a `TaskFile`, locating every error it raises."""

    def __init__(self, file: str, source: Path, lines: _LineIndex) -> None:
        self.file = file
        self.source = source
        self.base = source.absolute().parent  # cwd and globs are relative to the file, like make
        self.lines = lines
        self.warnings: list[str] = []
        self.rate_limits: dict[str, RateLimit] = {}
        self.junit: dict[str, str] = {}  # task id -> the JUnit file (or glob) it writes
        self.instances: dict[str, tuple[str, ...]] = {}  # [resources] declared by their instances
        self.tag_priorities: dict[str, int] = {}  # [priorities]
        self.default_priority: int | None = None  # [defaults] priority
        self.dask_scheduler: str | None = None
        self.worker_resources: frozenset[str] = frozenset()
        self.unprioritized: set[str] = set()  # the [tasks.NAME] whose priority the file leaves unset
        self.cwds: dict[str, str] = {}  # a cwd as written -> as resolved

    def quoted_item(self, name: str, here: _Path, cmd: str, item: str) -> str:
        """``{item}`` in a shell string, quoted for the context it stands in (bare, inside
        single or double quotes, ...): nothing in an item ever runs."""
        try:
            return quote_placeholders(cmd, _ITEM, lambda _match: item, bare=shlex.quote)
        except ShellQuoteError as error:
            self.fail(f"task {name!r}: {error}", *here, "cmd")

    def fail(self, message: str, *path: str, error: type[PhalanxError] = ConfigError) -> NoReturn:
        raise error(message, file=self.file, line=self.lines.best(*path))

    def guard(self, prefix: str | None, path: _Path, function: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
        """Call a model constructor or parser, locating its error (and naming who it is about)."""
        try:
            return function(*args, **kwargs)
        except PhalanxError as error:
            if prefix is not None:
                error.message = f"{prefix}: {error.message}"
            raise error.located(self.file, self.lines.best(*path)) from None

    def table(self, value: object, what: str, *path: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            self.fail(f"{what} must be a table, got {value!r}", *path)
        return value

    def check_nesting(self, document: dict[str, Any]) -> None:
        """Reject tables or arrays nested deeper than `_MAX_NESTING`, before anything recurses into them.

        Iterative, so a table header thousands of keys deep (which tomllib reads without
        recursing) cannot exhaust the stack here, nor later in the repr() of an error message.
        Only tables and arrays are stacked (a file of 100,000 tasks holds several times as
        many strings), in the order a depth-first walk meets them: the first too deep is named.
        """
        stack: list[tuple[dict[str, Any] | list[Any], _Path, int]] = [(document, (), 0)]
        pop, push = stack.pop, stack.append
        while stack:
            value, path, depth = pop()
            if depth > _MAX_NESTING:
                self.fail(f"{_nesting_owner(path)} nests tables or arrays more than {_MAX_NESTING} levels deep",
                          *path)
            deeper = depth + 1
            if isinstance(value, dict):
                nested = [(child, (*path, key)) for key, child in value.items() if isinstance(child, _NESTS)]
            else:  # an item has no key: blame the array's
                nested = [(child, path) for child in value if isinstance(child, _NESTS)]
            for child, where in reversed(nested):
                push((child, where, deeper))

    def load(self, document: dict[str, Any]) -> TaskFile:
        self.check_nesting(document)
        for key in document:
            if key not in _TOP_KEYS:
                self.fail(f"unknown top-level key {key!r}{_hint(key, _TOP_KEYS)}", key)
        defaults = self.table(document.get("defaults", {}), "[defaults]", "defaults")
        for key in defaults:
            if key in _PER_TASK_ONLY:
                self.fail(f"[defaults]: {key!r} can only be set per task", "defaults", key)
            if key not in _DEFAULT_KEYS and key != _REDACT:
                self.fail(f"[defaults]: unknown key {key!r}{_hint(key, (*_DEFAULT_KEYS, _REDACT))}", "defaults", key)
        redact = self.redact(document, defaults)
        defaults = {key: value for key, value in defaults.items() if key != _REDACT}
        capacities = self.capacities(self.table(document.get("resources", {}), "[resources]", "resources"))
        self.dask_scheduler = document.get("dask_scheduler")
        if self.dask_scheduler is not None and not (isinstance(self.dask_scheduler, str) and self.dask_scheduler):
            self.fail(f"dask_scheduler must be an address such as 'tcp://host:8786', got {self.dask_scheduler!r}",
                      "dask_scheduler")
        self.worker_resources = self.worker_resource_names(document.get("worker_resources", []), capacities)
        requestable = {**capacities, **dict.fromkeys(self.worker_resources, math.inf)}
        self.tag_priorities = self.priorities(self.table(document.get("priorities", {}), "[priorities]",
                                                         "priorities"))
        if "priority" in defaults:
            self.default_priority = self.guard("[defaults]", ("defaults", "priority"), parse_priority,
                                               defaults["priority"])
        self.rate_limits = self.limits(self.table(document.get("rate_limits", {}), "[rate_limits]", "rate_limits"))
        tasks = self.table(document.get("tasks", {}), "[tasks]", "tasks")
        if not tasks:
            self.fail("no tasks: add a [tasks.NAME] table with a cmd", "tasks")

        built: list[Task] = []
        sources: dict[str, str] = {}  # task id -> the [tasks.NAME] it came from
        groups: dict[str, list[str]] = {}  # for_each NAME -> its expanded ids
        for name, table in tasks.items():
            expanded = self.expand(name, table, defaults, requestable)
            built.extend(expanded)
            for task in expanded:
                sources[task.id] = name
            if "for_each" in table:
                groups[name] = [task.id for task in expanded]

        graph = Graph()
        add, named = graph.add, sources.__contains__
        for task in built:
            if all(map(named, task.deps)):  # most tasks: every dependency a task id, nothing to resolve
                add(task)
                continue
            deps: list[str] = []
            for dep in task.deps:
                if dep not in groups and dep not in sources:
                    error = UnknownDependencyError(sources[task.id], dep, sorted(set(sources) | set(groups)))
                    raise error.located(self.file, self.lines.best("tasks", sources[task.id], "deps"))
                deps.extend(groups.get(dep, [dep]))  # a for_each name means all its expansions
            resolved = tuple(deps)
            add(task if resolved == task.deps else replace(task, deps=resolved))
        try:
            Graph(graph).validate()  # on a copy: the runner gets an unfrozen graph and validates it itself
        except CycleError as error:
            raise error.located(self.file, self.lines.best("tasks", sources[error.cycle[0]])) from None
        self.warn_unused_priorities(graph)
        return TaskFile(self.source, graph, MappingProxyType(capacities), tuple(self.warnings),
                        MappingProxyType(self.rate_limits), MappingProxyType(self.junit), self.lines,
                        MappingProxyType(sources), instances=MappingProxyType(self.instances),
                        unprioritized=frozenset(tid for tid, name in sources.items() if name in self.unprioritized),
                        redact=redact, dask_scheduler=self.dask_scheduler, worker_resources=self.worker_resources)

    def redact(self, document: dict[str, Any], defaults: dict[str, Any]) -> tuple[str, ...]:
        """``redact`` (at the top and in ``[defaults]``, together): the environment variables
        whose values phalanx masks (`phalanx.redact`)."""
        from .redact import pattern_problem

        names: list[str] = []
        for where, table in ((("redact",), document), (("defaults", "redact"), defaults)):
            if _REDACT not in table:
                continue
            value = table[_REDACT]
            label = "redact" if len(where) == 1 else "[defaults]: redact"
            if not isinstance(value, list):
                self.fail(f"{label} must be a list of environment variable names or patterns "
                          f'(redact = ["API_TOKEN", "*_SECRET"]), got {value!r}', *where)
            for name in value:
                problem = pattern_problem(name)
                if problem is not None:
                    self.fail(f"{label}: {problem}", *where)
                names.append(name)
        return tuple(dict.fromkeys(names))

    def capacities(self, resources: dict[str, Any]) -> dict[str, float]:
        """``[resources]``: a capacity (``db = 1``), or the names of the instances
        (``gpu = ["0", "1"]``: a capacity of 2, each instance held by one task at a time)."""
        capacities: dict[str, float] = {}
        for name, amount in resources.items():
            if name == SLOTS:
                self.fail("[resources]: 'slots' is not declared here: it is -j, the number of parallel jobs",
                          "resources", name)
            if isinstance(amount, list):
                self.instances[name] = self.guard(None, ("resources", name), check_instance_names, name, amount)
                capacities[name] = float(len(self.instances[name]))
                continue
            if not _is_number(amount) or not (math.isfinite(amount) and amount > 0):
                self.fail(f"[resources]: {name!r} must be a positive number, got {amount!r} (or a list of "
                          f'instance names such as ["0", "1"])', "resources", name)
            capacities[name] = float(amount)
        try:
            split_capacities(self.instances)  # two resources exported as one variable
        except PhalanxError as error:
            raise error.located(self.file, self.lines.best("resources", list(self.instances)[-1])) from None
        return capacities

    def priorities(self, table: dict[str, Any]) -> dict[str, int]:
        """``[priorities]``: a tag's priority, ``critical = "high"`` (or an integer)."""
        return {tag: self.guard(None, ("priorities", tag), parse_priority, value, what=f"[priorities] {tag}")
                for tag, value in table.items()}

    def warn_unused_priorities(self, graph: Graph) -> None:
        """Warn about a ``[priorities]`` tag that no task has: a typo would otherwise do nothing."""
        if not self.tag_priorities:
            return
        tags = {tag for task in graph for tag in task.tags}
        for tag in self.tag_priorities:
            if tag not in tags:
                line = self.lines.best("priorities", tag)
                self.warnings.append(f"{self.file}:{line}: [priorities]: no task has the tag {tag!r}"
                                     f"{_hint(tag, tags)}, so it sets no priority")

    def priority(self, name: str, table: dict[str, Any], tags: frozenset[str]) -> int | None:
        """A task's priority: its own, else its tags' highest in ``[priorities]``, else the
        ``[defaults]`` one; None when the file sets none (``--priority`` then applies)."""
        if "priority" in table:
            own: int = self.guard(f"task {name!r}", ("tasks", name, "priority"), parse_priority, table["priority"])
            return own
        tagged = [self.tag_priorities[tag] for tag in tags if tag in self.tag_priorities]
        if tagged:
            return max(tagged)
        if self.default_priority is None:
            self.unprioritized.add(name)
        return self.default_priority

    def limits(self, table: dict[str, Any]) -> dict[str, RateLimit]:
        """``[rate_limits]``: ``openai = "500/min"``, or a table such as
        ``openai_tokens = { rate = "90000/min", weighted = true }``."""
        return {name: self.guard(None, ("rate_limits", name), RateLimit.of, value, what=f"[rate_limits] {name}")
                for name, value in table.items()}

    def expand(self, name: str, table: object, defaults: dict[str, Any], capacities: dict[str, float]) -> list[Task]:
        """The task(s) of ``[tasks.NAME]``: one, or one per ``for_each`` item (deps not yet resolved)."""
        here = ("tasks", name)
        if "[" in name or "]" in name or not name.strip():
            self.fail(f"task name {name!r} is not allowed: it must not be blank or contain '[' or ']' "
                      "(those mark for_each items)", *here)
        table = self.table(table, f"task {name!r}", *here)
        if not _TASK_KEY_SET.issuperset(table):
            for key in table:
                if key not in _TASK_KEY_SET:
                    self.fail(f"task {name!r}: unknown key {key!r}{_hint(key, _TASK_KEYS)}", *here, key)
        if "cmd" not in table:
            self.fail(f"task {name!r}: missing 'cmd' (the command to run)", *here)
        cmd, cwd, fields = self.fields(name, table, defaults, capacities)
        env = self.env(name, defaults, table)
        junit = table.get("junit")
        if junit is not None and (not isinstance(junit, str) or not junit.strip()):
            self.fail(f"task {name!r}: junit must be the path (or glob) of the JUnit XML file the task writes, "
                      f"got {junit!r}", *here, "junit")
        if env:  # else the Task's own empty default: checking and wrapping a new {} costs more than the rest
            fields["env"] = env
        if "for_each" not in table:
            self.warn_item(name, table, cmd, env, cwd)
            task = self.guard(None, here, Task, id=name, action=cmd, cwd=self.cwd(cwd), **fields)
            if junit is not None:
                self.junit[name] = os.path.join(task.cwd or self.base, junit)
            return [task]

        tasks: dict[str, Task] = {}
        for item in self.items(name, (*here, "for_each"), table["for_each"]):
            task_id = f"{name}[{item}]"
            if task_id in tasks:
                self.fail(f"task {name!r}: for_each gives {item!r} twice (duplicate task id {task_id!r})",
                          *here, "for_each", error=DuplicateTaskError)
            # In a shell string the item is quoted, so that it arrives as one word and never runs;
            # an argv list is not parsed by a shell, so there it goes in verbatim.
            action = (self.quoted_item(name, here, cmd, item) if isinstance(cmd, str)
                      else [part.replace(_ITEM, item) for part in cmd])
            per_item = dict(fields)
            if "limiter_key" in per_item:
                per_item["limiter_key"] = per_item["limiter_key"].replace(_ITEM, item)
            if env:
                per_item["env"] = {var: text.replace(_ITEM, item) for var, text in env.items()}
            tasks[task_id] = self.guard(
                None, here, Task, id=task_id, action=action, group=name, cwd=self.cwd(cwd.replace(_ITEM, item)),
                **per_item,
            )
            if junit is not None:
                self.junit[task_id] = os.path.join(tasks[task_id].cwd or self.base, junit.replace(_ITEM, item))
        return list(tasks.values())

    def warn_item(self, name: str, table: dict[str, Any], cmd: str | list[str], env: dict[str, str], cwd: str) -> None:
        """Warn (once per task) that ``{item}`` in a task without ``for_each`` stays as it is."""
        written = cmd if isinstance(cmd, str) else "\0".join(cmd)  # a NUL: no {item} made of two parts
        if _ITEM not in written and _ITEM not in cwd and not any(_ITEM in text for text in env.values()):
            return  # most tasks: nothing to warn about, and no lists made to find that out
        texts = {"cmd": [cmd] if isinstance(cmd, str) else cmd, "env": list(env.values()), "cwd": [cwd]}
        keys = [key for key, values in texts.items() if any(_ITEM in text for text in values)]
        if not keys:
            return
        first = keys[0]
        line = self.lines.best(*(("tasks", name, first) if first in table else ("defaults", first)))
        self.warnings.append(
            f"{self.file}:{line}: task {name!r}: {_ITEM} in {' and '.join(keys)} stays as written: "
            f"the task has no for_each (add one, or remove {_ITEM})"
        )

    def fields(
        self, name: str, table: dict[str, Any], defaults: dict[str, Any], capacities: dict[str, float]
    ) -> tuple[str | list[str], str, dict[str, Any]]:
        """The checked cmd, the cwd as written, and the other `Task` fields (but env) of a task.

        A task's own setting replaces the default, except ``tags``, which are merged.
        """
        settings = {**defaults, **table} if defaults else table

        def origin(key: str) -> _Path:
            """Where a setting was written, so that an error in a default points at [defaults]."""
            return ("tasks", name, key) if key in table else ("defaults", key)

        def who(key: str) -> str:
            return f"task {name!r}" if key in table else "[defaults]"

        def expect(key: str, ok: bool, expected: str) -> None:
            if not ok:
                self.fail(f"{who(key)}: {key} must be {expected}, got {settings[key]!r}", *origin(key))

        # Each check is a test first and a call only to fail: this runs once per task, and a
        # file of 100,000 tasks must load in a few seconds.
        cmd = settings["cmd"]
        if isinstance(cmd, str):
            if not cmd.strip():
                self.fail(f"task {name!r}: cmd is empty", *origin("cmd"))
        elif not (cmd and _is_str_list(cmd)):
            expect("cmd", False, "a command string or a non-empty list of strings")
        deps = settings.get("deps", [])
        if not _is_str_list(deps):
            expect("deps", False, "a list of task names")
        if not _is_str_list(defaults.get("tags", [])):
            self.fail(f"[defaults]: tags must be a list of strings, got {defaults['tags']!r}", "defaults", "tags")
        if not _is_str_list(table.get("tags", [])):
            self.fail(f"task {name!r}: tags must be a list of strings, got {table['tags']!r}", "tasks", name, "tags")
        cwd = settings.get("cwd", ".")
        if not isinstance(cwd, str):
            expect("cwd", False, "a path string")
        if (_NUL in cmd) if isinstance(cmd, str) else any(_NUL in part for part in cmd):
            self.fail(f"{who('cmd')}: cmd {_HAS_NUL}", *origin("cmd"))
        if _NUL in cwd:
            self.fail(f"{who('cwd')}: cwd {_HAS_NUL}", *origin("cwd"))

        # Tags add up: the defaults' and the task's own (a default tag is not lost by tagging a task).
        tags = frozenset((*defaults.get("tags", ()), *table.get("tags", ())))
        fields: dict[str, Any] = {"deps": tuple(deps), "tags": tags}
        priority = self.priority(name, table, tags)
        if priority is not None:
            fields["priority"] = priority
        for key in ("timeout", "cost"):
            if key in settings:
                fields[key] = self.guard(who(key), origin(key), parse_duration, settings[key], what=key)
        if "retries" in settings:
            fields["retry"] = self.retry(who("retries"), origin("retries"), settings["retries"])
        if "limiter" in settings:
            fields["limiter"] = self.limiter(who("limiter"), origin("limiter"), settings["limiter"])
        if "limiter_key" in settings:
            expect("limiter_key", isinstance(settings["limiter_key"], str), "a string (a provider, a model, {item})")
            fields["limiter_key"] = settings["limiter_key"]
        if "tokens" in settings:
            tokens = settings["tokens"]
            expect("tokens", _is_number(tokens) and math.isfinite(tokens) and tokens > 0, "a positive number")
            fields["tokens"] = float(tokens)
        if "resources" in settings:
            fields["resources"] = self.resources(who("resources"), origin("resources"), settings["resources"],
                                                 capacities)
        if not _LIMIT_KEYS.isdisjoint(settings):
            limits = {key: self.guard(who(key), origin(key), parse_limit, key, settings[key])
                      for key in LIMIT_PARSERS if key in settings}
            fields["limits"] = Limits(**limits)
        return cmd, cwd, fields

    def env(self, name: str, defaults: dict[str, Any], table: dict[str, Any]) -> dict[str, str]:
        """The defaults' env with the task's over it, variable by variable."""
        env: dict[str, str] = {}
        for where, who, settings in (("defaults",), "[defaults]", defaults), (("tasks", name), f"task {name!r}", table):
            if "env" not in settings:
                continue
            variables = self.table(settings["env"], f"{who}: env", *where, "env")
            for var, text in variables.items():
                if not isinstance(text, str):
                    self.fail(f"{who}: env {var} must be a string, got {text!r} (quote it)", *where, "env", var)
                if not var or "=" in var or _NUL in var:
                    self.fail(f"{who}: env variable name {var!r} is not allowed: it must not be empty or contain "
                              "'=' or a NUL character", *where, "env", var)
                if _NUL in text:
                    self.fail(f"{who}: env {var} {_HAS_NUL}", *where, "env", var)
            env.update(variables)
        return env

    def cwd(self, cwd: str) -> str:
        resolved = self.cwds.get(cwd)
        if resolved is None:  # most tasks share a few: each is resolved once
            resolved = self.cwds[cwd] = os.path.normpath(self.base / cwd)  # an absolute cwd stays as it is
        return resolved

    def retry(self, who: str, where: _Path, value: object) -> RetryPolicy:
        if isinstance(value, int) and not isinstance(value, bool):
            return self.guard(who, where, RetryPolicy, count=value)
        if not isinstance(value, dict):
            self.fail(f"{who}: retries must be an integer or a table such as "
                      f"{{ count = 3, backoff = \"exponential\" }}, got {value!r}", *where)
        for key in value:
            if key not in _RETRY_KEYS:
                self.fail(f"{who}: retries: unknown key {key!r}{_hint(key, _RETRY_KEYS)}", *where, key)
        if "count" not in value:
            self.fail(f"{who}: retries: missing 'count' (how many times to retry)", *where)
        codes = value.get("on_exit_codes", [])
        if not isinstance(codes, list):
            self.fail(f"{who}: retries: on_exit_codes must be a list of integers, got {codes!r}",
                      *where, "on_exit_codes")
        return self.guard(who, where, RetryPolicy, **value)

    def limiter(self, who: str, where: _Path, value: object) -> tuple[str, ...]:
        names = [value] if isinstance(value, str) else value
        if not isinstance(names, list) or not names or not all(isinstance(name, str) and name for name in names):
            self.fail(f"{who}: limiter must name a rate limit, or a list of them, got {value!r}", *where)
        for name in names:
            if name not in self.rate_limits:
                defined = ", ".join(sorted(self.rate_limits)) or "none"
                self.fail(f"{who} uses unknown rate limit {name!r}{_hint(name, self.rate_limits)}; "
                          f"defined in [rate_limits]: {defined}", *where)
        return tuple(names)

    def worker_resource_names(self, value: object, capacities: Mapping[str, float]) -> frozenset[str]:
        if not (isinstance(value, list) and all(isinstance(name, str) and name for name in value)):
            self.fail(f"worker_resources must be a list of resource names such as [\"gpu\"], got {value!r}",
                      "worker_resources")
        for name in value:
            if name == SLOTS or name in capacities:
                self.fail(f"worker_resources: {name!r} is {'-j' if name == SLOTS else 'declared in [resources]'}: "
                          f"a resource is either counted by phalanx for the whole run or offered by workers",
                          "worker_resources")
        return frozenset(value)

    def resources(self, who: str, where: _Path, value: object, capacities: dict[str, float]) -> dict[str, float]:
        requests = self.table(value, f"{who}: resources", *where)
        for name, amount in requests.items():
            if not _is_number(amount) or not (math.isfinite(amount) and amount >= 0):
                self.fail(f"{who}: resources: {name!r} must be a non-negative number, got {amount!r}", *where, name)
            if name == SLOTS:
                continue  # its capacity is -j, known only when a run starts: the runner checks it
            if name not in capacities:
                declared = ", ".join(sorted(capacities)) or "none"
                self.fail(f"{who} requests unknown resource {name!r}{_hint(name, capacities)}; "
                          f"declared in [resources]: {declared}", *where, name, error=ResourceError)
            if amount > capacities[name]:
                self.fail(f"{who} requests {name} = {amount:g} but the capacity of {name!r} is "
                          f"{capacities[name]:g}", *where, name, error=ResourceError)
            if name in self.instances and amount != int(amount):
                self.fail(f"{who} requests {name} = {amount:g}, but {name!r} has named instances "
                          f"({', '.join(self.instances[name])}): ask for a whole number of them",
                          *where, name, error=ResourceError)
        return {name: float(amount) for name, amount in requests.items()}

    def items(self, name: str, where: _Path, value: object) -> list[str]:
        """The ``for_each`` items: a list (numbers become strings) or the sorted matches of a glob."""
        who = f"task {name!r}: for_each"
        forms = _FOR_EACH_FORMS
        if isinstance(value, dict):
            for key in value:
                if key not in _FOR_EACH_KEYS:
                    self.fail(f"{who}: unknown key {key!r}{_hint(key, _FOR_EACH_KEYS)}; for_each is {forms}",
                              *where, key)
            pattern = value.get("glob")
            if "glob" not in value:
                self.fail(f"{who}: missing 'glob'; for_each is {forms}", *where)
            if not isinstance(pattern, str) or not pattern:
                self.fail(f"{who}: glob must be a pattern string such as \"tests/test_*.py\", got {pattern!r}",
                          *where)
            # root_dir: patterns are relative to the file, and so are the paths given as items.
            matches = sorted(glob.glob(pattern, root_dir=self.base, recursive=True))
            if not matches:
                self.fail(f"{who} glob {pattern!r} matched no files", *where)
            return matches
        if not isinstance(value, list):
            self.fail(f"{who} must be {forms}, got {value!r}", *where)
        if not value:
            self.fail(f"{who} is an empty list: the task would never run", *where)
        for item in value:
            if not isinstance(item, str) and not _is_number(item):
                self.fail(f"{who}: items must be strings or numbers, got {item!r}", *where)
            if _NUL in str(item):
                self.fail(f"{who}: item {item!r} {_HAS_NUL}", *where)
        return [str(item) for item in value]
