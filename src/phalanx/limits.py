"""Per-task resource limits (`Limits`) and the sizes users write them in (``"512MB"``, ``"1.5GiB"``).

Plain data, checked as it is made; nothing here enforces anything. The command backend
holds a command to its limits (`phalanx.confinement`): a memory cgroup or an RSS poller for
``memory``, a CPU quota or CPU affinity for ``cpus``, rlimits for the rest.

Sizes follow Kubernetes' convention: ``k``/``kB``, ``M``/``MB``, ``G``/``GB``, ``T``/``TB``
are powers of 1000; ``Ki``/``KiB``, ``Mi``/``MiB``, ``Gi``/``GiB``, ``Ti``/``TiB`` powers of
1024 (any case; a bare number or ``B`` is bytes). ``"512MB"`` is 512,000,000 bytes.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from .durations import parse_duration
from .errors import ConfigError

_DECIMAL = {"k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12}
_BINARY = {"ki": 2**10, "mi": 2**20, "gi": 2**30, "ti": 2**40}
_UNITS: dict[str, int] = {"": 1, "b": 1}
for _prefix, _factor in (*_DECIMAL.items(), *_BINARY.items()):
    _UNITS[_prefix] = _UNITS[_prefix + "b"] = _factor
_SIZE = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*([A-Za-z]*)")
_SIZE_FORMS = 'a size such as "512MB", "1.5GiB", "800k" or a number of bytes'

# The units a size is shown in, largest first; each is written as users write it.
_SHOWN = (
    (2**40, "TiB"), (10**12, "TB"), (2**30, "GiB"), (10**9, "GB"),
    (2**20, "MiB"), (10**6, "MB"), (2**10, "KiB"), (10**3, "kB"),
)


def parse_size(value: object, *, what: str = "size") -> int:
    """Bytes for a size given as a number of bytes or a string with a unit.

    Args:
        value: a positive int (bytes) or a string such as ``"512MB"``, ``"1.5GiB"``, ``"800k"``.
        what: the name of the setting, used in the error message.

    Raises:
        ConfigError: not a size, or not at least one byte.
    """
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ConfigError(f"{what}: expected {_SIZE_FORMS}, got {value!r}")
    if isinstance(value, int):
        size = value
    else:
        match = _SIZE.fullmatch(value.strip())
        unit = _UNITS.get(match.group(2).lower()) if match else None
        if match is None or unit is None:
            raise ConfigError(f"{what}: {value!r} is not a size (use {_SIZE_FORMS}; k, M, G, T are powers "
                              "of 1000, Ki, Mi, Gi, Ti powers of 1024)")
        size = round(float(match.group(1)) * unit)
    if size < 1:
        raise ConfigError(f"{what}: must be at least one byte, got {value!r}")
    return size


def format_size(size: int) -> str:
    """A size as a person would write it: ``512 MB``, ``1.5 GiB``, ``800 kB``, ``123 B``.

    Of the units that show the size exactly (with at most two decimals), the shortest
    number wins, then the larger unit: a size comes back in the family it was written in
    (``"512MiB"`` shows as ``512 MiB``, ``"800k"`` as ``800 kB``). A size no unit shows
    exactly is rounded in decimal units.
    """
    exact = [(f"{size / factor:.2f}".rstrip("0").rstrip("."), -factor, unit)
             for factor, unit in _SHOWN if size >= factor and (size * 100) % factor == 0]
    if exact:
        number, _, unit = min(exact, key=lambda shown: (len(shown[0]), shown[1]))
        return f"{number} {unit}"
    for factor, unit in _SHOWN:
        if size >= factor and factor % 1000 == 0:
            return f"{size / factor:.3g} {unit}"
    return f"{size} B"


def format_seconds(seconds: float) -> str:
    """CPU seconds for a reason: ``60 s``, ``0.5 s``."""
    return f"{seconds:g} s"


def parse_output_cap(value: object, *, what: str = "max_output") -> int:
    """``max_output``: a size (``"10MB"``), or 0 for no cap (as ``timeout = 0`` is no timeout:
    it also lifts a cap that ``[defaults]`` or ``--max-output`` would set)."""
    if (value == 0 and not isinstance(value, bool)) or (isinstance(value, str) and value.strip() == "0"):
        return 0
    try:
        return parse_size(value, what=what)
    except ConfigError as error:
        raise ConfigError(f"{error.message}; 0 means no cap") from None


def _positive_number(value: object, *, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not (math.isfinite(value) and value > 0):
        raise ConfigError(f"{what}: expected a positive number (a share of CPUs such as 0.5 or 2), got {value!r}")
    return float(value)


def _positive_duration(value: object, *, what: str) -> float:
    seconds = parse_duration(value, what=what)
    if seconds <= 0:
        raise ConfigError(f"{what}: must be more than 0 seconds, got {value!r}")
    return seconds


def _positive_integer(value: object, *, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{what}: expected a positive integer, got {value!r}")
    return value


def _or_none(parse: Callable[..., Any]) -> Callable[..., Any]:
    """``parse``, except that 0 means "no limit" (as ``timeout = 0`` is no timeout): a task
    writes it to lift a limit that ``[defaults]`` or a run-wide option would give it."""

    def parse_or_zero(value: object, *, what: str) -> Any:
        if _is_zero(value):
            return 0
        try:
            return parse(value, what=what)
        except ConfigError as error:
            raise ConfigError(f"{error.message}; 0 means no limit") from None

    return parse_or_zero


def _is_zero(value: object) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int | float):
        return value == 0
    return isinstance(value, str) and value.strip() in ("0", "0s")


#: Each limit's parser: what a value may be written as, and what it becomes (0: no limit).
LIMIT_PARSERS: dict[str, Callable[..., Any]] = {
    "memory": _or_none(parse_size),
    "cpus": _or_none(_positive_number),
    "cpu_time": _or_none(_positive_duration),
    "max_procs": _or_none(_positive_integer),
    "open_files": _or_none(_positive_integer),
    "address_space": _or_none(parse_size),
    "max_output": parse_output_cap,
}


def parse_limit(key: str, value: object) -> Any:
    """The value of limit ``key`` (a `Limits` field name) as `Limits` keeps it.

    Raises:
        ConfigError: the value is not valid for that limit (the message names ``key``).
    """
    return LIMIT_PARSERS[key](value, what=key)


@dataclass(frozen=True, slots=True)
class Limits:
    """What one command task may use; None (the default) means no limit.

    Limits apply to command tasks (a callable shares its worker process with others).

    Attributes:
        memory: bytes of RSS for the task's whole process tree. Held by a memory cgroup
            where phalanx can make one (the kernel's OOM killer enforces it), else by
            polling the tree's RSS (psutil) every 50 ms and killing it when over. Either
            way the task ends ``failed`` with "memory limit exceeded (512 MB)".
        cpus: a share of CPUs (0.5: half of one CPU; 2: two CPUs' worth): a cgroup CPU
            quota where available, else CPU affinity to ``ceil(cpus)`` CPUs (with a warning).
        cpu_time: CPU seconds each process of the task may use (``RLIMIT_CPU``, per
            process: its children each get their own budget); over it, the process gets
            SIGXCPU (SIGKILL a second later if it ignores that) and the task fails with
            "cpu time limit exceeded (60 s)".
        max_procs: processes (and threads) the task may have at once: a ``pids`` cgroup
            where available; else ``RLIMIT_NPROC``, which counts every process of the
            user running phalanx, not only the task's, and does not bind root.
        open_files: file descriptors each process may have open (``RLIMIT_NOFILE``).
        address_space: bytes of virtual memory per process (``RLIMIT_AS``). Opt-in only:
            runtimes that reserve large address ranges up front (the JVM, Go, V8,
            sanitizers) fail under it long before they use that much memory.
        max_output: bytes of stdout, and as many of stderr, that the task's output files keep
            (0: no cap). Past it, the first half and the last half of the cap are kept, the
            rest counted and dropped, and the result says so (`TaskResult.output_cut`).
            phalanx's own limit: nothing is imposed on the process, whose output goes
            through a pipe that phalanx drains (`phalanx.backends.capture`).

    0 means no limit, as ``timeout = 0`` means no timeout: a task sets a limit to 0 to lift
    one that ``[defaults]`` or a run-wide option (``--memory``) would give it.

    Values may also be given as users write them (``memory="512MB"``, ``cpu_time="2m"``):
    they are converted (bytes, seconds) as the limits are made.
    """

    memory: int | None = None
    cpus: float | None = None
    cpu_time: float | None = None
    max_procs: int | None = None
    open_files: int | None = None
    address_space: int | None = None
    max_output: int | None = None

    def __post_init__(self) -> None:
        for key in LIMIT_PARSERS:
            value = getattr(self, key)
            if value is not None:
                object.__setattr__(self, key, parse_limit(key, value))

    def over(self, defaults: Limits) -> Limits:
        """These limits, with ``defaults``' value for each limit they leave unset."""
        merged = {key: getattr(self, key) if getattr(self, key) is not None else getattr(defaults, key)
                  for key in LIMIT_PARSERS}
        return Limits(**merged)

    def in_force(self) -> Limits:
        """These limits without those set to 0 ("no limit": set only to lift a default)."""
        lifted = {key: None for key in LIMIT_PARSERS if getattr(self, key) == 0 and getattr(self, key) is not None}
        return replace(self, **lifted) if lifted else self

    def describe(self) -> dict[str, Any]:
        """The limits that are set, by name (bytes, seconds)."""
        return {key: getattr(self, key) for key in LIMIT_PARSERS if getattr(self, key) is not None}


#: No limit at all: the default of every task (the command backend's fast path).
NO_LIMITS = Limits()
