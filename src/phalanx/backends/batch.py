"""Batches: the unit of work of `phalanx.map` and `Executor` — a callable and its items.

A `Batch` is a task's action: ``fn`` applied to each item, each item keeping its own
result, error, timeout and order. Any backend can run one: threads and the loop call it
in-process (`Batch.__call__`), the process backend ships it to a warm worker. Results come
back as a `BatchResult` (flat arrays, an `ItemResult` only for an item that failed).
"""

from __future__ import annotations

import hashlib
import os
import time
from array import array
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import cloudpickle

from .. import _worker
from .._worker import ONE, STAR, STAR_KW
from ..errors import ConfigError
from ..results import ErrorInfo, Status

__all__ = ["ONE", "STAR", "STAR_KW", "Batch", "BatchResult", "ItemResult", "function_key"]

SUCCEEDED = Status.SUCCEEDED


class ItemResult(NamedTuple):
    """What happened to one item that did not succeed (or, on demand, one that did).

    ``exit_code`` is set for a crash: the worker's exit status, negative for a signal.
    """

    position: int  # the item's index in its map (``index`` would shadow tuple.index)
    status: Status
    value: Any = None
    error: ErrorInfo | None = None
    exception: BaseException | None = None
    duration: float = 0.0
    pid: int | None = None
    exit_code: int | None = None

    @property
    def reason(self) -> str | None:
        return None if self.error is None else str(self.error)


class BatchResult:
    """What happened to each item of a batch, by ``offset`` (the item's place in the batch).

    Values, durations and pids are flat arrays (the pid is the worker's that ran the item;
    with ``isolate``, the warm worker that forked its child); only the items that did not
    succeed have an `ItemResult`, in ``failures``. ``positions[offset]`` is the item's index in its map;
    ``worker`` the slot that ran the batch (set by whoever learns it).
    """

    __slots__ = ("durations", "failures", "pids", "positions", "values", "worker")

    def __init__(self, positions: Sequence[int]) -> None:
        n = len(positions)
        self.positions = positions
        self.worker: int | None = None  # the slot that ran it, once known
        self.values: list[Any] = [None] * n
        self.durations = array("d", bytes(8 * n))
        self.pids = array("q", bytes(8 * n))
        self.failures: dict[int, ItemResult] = {}

    def __len__(self) -> int:
        return len(self.positions)

    def item(self, offset: int) -> ItemResult:
        """The `ItemResult` of one item (made on demand for one that succeeded)."""
        failed = self.failures.get(offset)
        if failed is not None:
            return failed
        pid = self.pids[offset] or None
        return ItemResult(self.positions[offset], SUCCEEDED, self.values[offset], None, None,
                          self.durations[offset], pid)

    def __iter__(self) -> Iterator[ItemResult]:
        return (self.item(offset) for offset in range(len(self.positions)))

    @classmethod
    def all_failed(cls, positions: Sequence[int], status: Status, error: ErrorInfo | None) -> BatchResult:
        """Every item with the same verdict (a batch that did not run: cancelled, no worker)."""
        result = cls(positions)
        for offset, position in enumerate(positions):
            result.failures[offset] = ItemResult(position, status, error=error)
        return result


@dataclass(frozen=True, slots=True)
class Batch:
    """The action of a batch task: ``fn`` applied to each item, each with its own result.

    Args:
        fn: the callable.
        items: one entry per item, applied as ``mode`` says: ``ONE`` calls ``fn(item)``,
            ``STAR`` calls ``fn(*item)``, ``STAR_KW`` calls ``fn(*args, **kwargs)`` with
            ``item == (args, kwargs)``.
        positions: each item's index in its map (default ``0 .. len(items) - 1``).
        fn_key: the key of the pickled callable (`function_key`), so workers cache it.
        isolate: run every item in a fresh fork of the worker.
        item_timeout: seconds per item; over it, the item is stopped and ends ``timed_out``.
        label: how messages name a lone item (a submitted call's task id) instead of ``item N``.

    Called in-process (threads, inline), it runs the items one after another and returns
    their `BatchResult`; the process backend sends it to a worker instead.
    """

    fn: Callable[..., Any]
    items: Sequence[Any]
    positions: Sequence[int] | None = None
    mode: int = ONE
    fn_key: str = field(default="")
    isolate: bool = False
    item_timeout: float | None = None
    label: str | None = None

    @property
    def where(self) -> Sequence[int]:
        """Each item's index in its map."""
        return range(len(self.items)) if self.positions is None else self.positions

    def describe(self, offset: int) -> str:
        """How messages name the item at ``offset``."""
        return self.label if self.label is not None else f"item {self.where[offset]}"

    def __call__(self) -> BatchResult:
        out = BatchResult(self.where)
        fn, mode, pid = self.fn, self.mode, os.getpid()
        monotonic = time.monotonic
        for offset, item in enumerate(self.items):
            started = monotonic()
            try:
                out.values[offset] = _worker.apply(fn, item, mode)
            except BaseException as error:  # even SystemExit: it ends this item, not the run
                out.failures[offset] = ItemResult(
                    out.positions[offset], Status.FAILED, error=_worker.describe_error(error), exception=error,
                    duration=monotonic() - started, pid=pid,
                )
            out.durations[offset] = monotonic() - started
        out.pids = array("q", [pid]) * len(self.items)
        return out


def function_key(fn: Callable[..., Any]) -> tuple[str, bytes]:
    """A callable pickled once, and a key that names it so workers can cache it."""
    try:
        blob = cloudpickle.dumps((fn, _worker.code_origins(fn)))
    except Exception as error:
        raise ConfigError(
            f"the callable {fn!r} cannot be pickled to send it to worker processes: {type(error).__name__}: {error}"
        ) from None
    return hashlib.blake2b(blob, digest_size=12).hexdigest(), blob
