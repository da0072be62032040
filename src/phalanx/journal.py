"""The run journal: every run, task and attempt in SQLite, so that a run killed half-way can be resumed.

The journal lives at ``.phalanx/journal.db`` next to the task file (``phalanx map``'s: in
the directory it runs in). `JournalSink` records a run as it goes: the run when it starts,
each attempt when it starts (and its process group when the command backend spawns it,
`Journal.attempt_spawned`; through the sink's hook, once it has run `SPAWN_HOLD`: a
shorter one is written with its end), and each task with its last attempt when it ends
(with what its results row holds: the data it reported, how much of its output was cut),
in one transaction per task; a last attempt that ran on a cluster worker (``--backend dask``)
keeps that worker's address. (``phalanx map``, whose jobs can be shorter than a commit
and whose resume reads its joblog, commits a `RunBatch` of records every 0.1 s instead:
``JournalSink(commit_every=...)``.) `plan_resume` reads it back: tasks that last succeeded
with the same definition (`spec_hash`) are done; the others run again, and process groups
a killed run left behind are found for `kill_leftovers`.

Why SQLite in WAL mode with ``synchronous=NORMAL``: a commit is an append to the WAL file
with no fsync, cheap enough for one per task, and a kill -9 of phalanx loses nothing
committed (only a power loss could take back the last commits, which then run again:
resuming errs on the side of running a task twice, never of skipping one). Readers
(``phalanx runs`` while a run goes on) never block the writer, and two runs writing the
same journal take turns (``busy_timeout``). The schema's version is ``PRAGMA user_version``.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import signal
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Protocol, overload

from .errors import PhalanxError
from .events import Event, RunFinished, RunStarted, TaskFinished, TaskRetrying, TaskStarted
from .model import Graph, Task
from .results import CancelReason, OutputCut, RunReport, Status, StreamCut, TaskResult

if TYPE_CHECKING:
    import asyncio

    from .history import DurationHistory

#: Where the journal lives, relative to the task file's directory.
JOURNAL_DIR = ".phalanx"
JOURNAL_NAME = "journal.db"

#: The schema version this module writes (``PRAGMA user_version``).
SCHEMA_VERSION = 3

#: The most of each output stream (stdout, stderr) kept per attempt, in bytes.
TAIL_LIMIT = 64 * 1024

#: The most of a task's reported data (`TaskResult.data`, as JSON) kept per task, in bytes:
#: more is not kept at all (its results row then cannot be rebuilt, `journalrows`), so that
#: a task reporting megabytes does not make every commit of the run write them again.
DATA_LIMIT = 64 * 1024

#: The most records a batching `JournalSink` holds (``commit_every``) before it commits
#: them, due or not: it bounds the memory the batch takes (each end holds two output tails).
BATCH_RECORDS = 1024

#: How long `JournalSink` holds a spawned process back (`Journal.hold_spawned`), in seconds:
#: most short commands end sooner, and their start, spawn and end then take one commit
#: instead of two, without the look-up of the process's start time. The watchdog holds a
#: group's start back as long (`phalanx.watchdog.FLUSH_AFTER`), and stops what a kill -9
#: of phalanx leaves in that window: ``phalanx run`` holds spawns back only with one.
SPAWN_HOLD = 0.01

#: How long `JournalSink` gathers succeeded durations before they go into the history
#: with a task's end, in seconds: a kill -9 loses at most that long's of them, which only
#: makes the next run's estimates a little less informed.
HISTORY_EVERY = 1.0

#: A spawn held this much less than `SPAWN_HOLD` is written by the same timer.
_SPAWN_SLACK = 0.001

#: How long a write waits for another run writing the same journal, in seconds.
BUSY_TIMEOUT = 10.0

#: WAL pages between automatic checkpoints, and the most of the WAL file kept after one.
_CHECKPOINT_PAGES = 10_000
_WAL_KEPT = 8 << 20

#: Commits between two checkpoints by the journal's own thread, once asked for
#: (`Journal.checkpoint_in_background`): a few MB of WAL for tasks of one commit each, so
#: that neither a commit (automatic checkpoints, `_CHECKPOINT_PAGES`) nor the close (which
#: checkpoints whatever is left) waits long for the fsyncs of a big one.
CHECKPOINT_COMMITS = 256

#: The statuses a task or attempt row has before its end (next to the terminal `Status` values):
#: ``pending`` (in the run, not started), ``running``, and ``lost`` (its run was killed meanwhile).
PENDING, RUNNING, LOST = "pending", "running", "lost"

_SUCCEEDED = Status.SUCCEEDED.value

# Every table keys runs by an integer (``seq``: the order runs started in, immune to clock
# changes); the text id is what people and events use. No secondary indexes: each b-tree a
# task's commit touches is one more page written to the WAL, and a commit's pages are most of
# what journaling a task costs; the queries that resume a run scan by run anyway.
_SCHEMA = """
CREATE TABLE runs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    file TEXT,
    command_line TEXT NOT NULL,
    started_at REAL NOT NULL,
    ended_at REAL,
    status TEXT NOT NULL,
    runner_pid INTEGER,
    runner_started REAL
);
CREATE INDEX runs_by_file ON runs (file, seq);
CREATE TABLE tasks (
    run_seq INTEGER NOT NULL REFERENCES runs (seq) ON DELETE CASCADE,
    task_id TEXT NOT NULL,
    spec_hash TEXT,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    reason TEXT,
    exit_code INTEGER,
    started_at REAL,
    ended_at REAL,
    duration REAL,
    PRIMARY KEY (run_seq, task_id)
) WITHOUT ROWID;
CREATE TABLE attempts (
    run_seq INTEGER NOT NULL REFERENCES runs (seq) ON DELETE CASCADE,
    task_id TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    status TEXT NOT NULL,
    started_at REAL,
    ended_at REAL,
    duration REAL,
    exit_code INTEGER,
    signal INTEGER,
    reason TEXT,
    worker INTEGER,
    pid INTEGER,
    pgid INTEGER,
    leader_started REAL,
    stdout_tail TEXT NOT NULL DEFAULT '',
    stderr_tail TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (run_seq, task_id, attempt)
) WITHOUT ROWID;
CREATE TABLE durations (
    key TEXT PRIMARY KEY,
    estimate REAL NOT NULL,
    samples INTEGER NOT NULL,
    updated_at REAL NOT NULL
) WITHOUT ROWID;
"""

# Schema 2: what a task's results row holds beyond the columns above, so that a resumed run
# can write the row a kill kept from the results file (`journalrows`). ``data``: the JSON
# object the task reported (`TaskResult.data`), ``{}`` for none; NULL when unknown: before
# the task's end, in a record from before schema 2, or past `DATA_LIMIT`. ``output_cut``:
# `OutputCut.to_dict` as JSON, NULL when nothing was cut (its note also goes with the
# reason, for people).
_RESULT_COLUMNS = """
ALTER TABLE tasks ADD COLUMN data TEXT;
ALTER TABLE tasks ADD COLUMN output_cut TEXT
"""

# Schema 3: the cluster worker an attempt ran on (`TaskResult.worker_address`, ``--backend
# dask``), NULL for one that ran on this machine, and for attempts that ended before their
# task did (a retried attempt's end does not say where it ran).
_WORKER_ADDRESS_COLUMN = """
ALTER TABLE attempts ADD COLUMN worker_address TEXT
"""

# A task's end: its row, and its last attempt's (which a start or a spawn may have begun).
_FINISH_TASK = """
INSERT INTO tasks (run_seq, task_id, spec_hash, status, attempts, reason, exit_code, started_at, ended_at, duration,
                   data, output_cut)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (run_seq, task_id) DO UPDATE SET
    spec_hash = coalesce(excluded.spec_hash, tasks.spec_hash), status = excluded.status,
    attempts = excluded.attempts, reason = excluded.reason, exit_code = excluded.exit_code,
    started_at = excluded.started_at, ended_at = excluded.ended_at, duration = excluded.duration,
    data = excluded.data, output_cut = excluded.output_cut
"""
_FINISH_ATTEMPT = """
INSERT INTO attempts (run_seq, task_id, attempt, status, started_at, ended_at, duration, exit_code, signal, reason,
                      worker, pid, stdout_tail, stderr_tail, worker_address)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (run_seq, task_id, attempt) DO UPDATE SET
    status = excluded.status, started_at = coalesce(attempts.started_at, excluded.started_at),
    ended_at = excluded.ended_at, duration = excluded.duration, exit_code = excluded.exit_code,
    signal = excluded.signal, reason = excluded.reason, worker = excluded.worker,
    pid = coalesce(excluded.pid, attempts.pid), stdout_tail = excluded.stdout_tail, stderr_tail = excluded.stderr_tail,
    worker_address = excluded.worker_address
"""

# The same, with the process group of an attempt whose spawn has not been written (`RunBatch`).
_FINISH_SPAWNED_ATTEMPT = """
INSERT INTO attempts (run_seq, task_id, attempt, status, started_at, ended_at, duration, exit_code, signal, reason,
                      worker, pid, stdout_tail, stderr_tail, worker_address, pgid)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (run_seq, task_id, attempt) DO UPDATE SET
    status = excluded.status, started_at = coalesce(attempts.started_at, excluded.started_at),
    ended_at = excluded.ended_at, duration = excluded.duration, exit_code = excluded.exit_code,
    signal = excluded.signal, reason = excluded.reason, worker = excluded.worker,
    pid = coalesce(excluded.pid, attempts.pid), stdout_tail = excluded.stdout_tail, stderr_tail = excluded.stderr_tail,
    worker_address = excluded.worker_address, pgid = excluded.pgid
"""

# What a `TaskRecord` is read from (the tasks table as ``t``).
_TASK_COLUMNS = (
    "t.task_id, t.spec_hash, t.status, t.attempts, t.reason, t.exit_code, t.started_at, t.ended_at, t.duration,"
    " t.data, t.output_cut"
)

# An attempt's start: its row, and its task's (running, with how many attempts it has had).
_START_ATTEMPT = (
    "INSERT INTO attempts (run_seq, task_id, attempt, status, started_at, worker) VALUES (?, ?, ?, ?, ?, ?)"
    " ON CONFLICT (run_seq, task_id, attempt) DO UPDATE SET"
    " started_at = excluded.started_at, worker = excluded.worker"
)
_START_TASK = (
    "INSERT INTO tasks (run_seq, task_id, status, attempts, started_at) VALUES (?, ?, ?, ?, ?)"
    " ON CONFLICT (run_seq, task_id) DO UPDATE SET status = excluded.status,"
    " attempts = excluded.attempts, started_at = coalesce(tasks.started_at, excluded.started_at)"
)
# An attempt's process group, as the backend spawned it (see `Journal.attempt_spawned`).
_SPAWNED = (
    "INSERT INTO attempts (run_seq, task_id, attempt, status, pid, pgid, leader_started)"
    " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (run_seq, task_id, attempt) DO UPDATE SET"
    " pid = excluded.pid, pgid = excluded.pgid, leader_started = excluded.leader_started"
)
# An attempt that failed and will be retried.
_RETRIED = (
    "UPDATE attempts SET status = ?, ended_at = ?, duration = ? - started_at, reason = ?"
    " WHERE run_seq = ? AND task_id = ? AND attempt = ?"
)

# Each step takes a journal at version N to N + 1; a journal newer than we know is refused.
_MIGRATIONS: Mapping[int, str] = MappingProxyType({0: _SCHEMA, 1: _RESULT_COLUMNS, 2: _WORKER_ADDRESS_COLUMN})


class JournalError(PhalanxError):
    """The journal cannot be opened or written: not a journal, a newer schema, a full disk."""


# ---------------------------------------------------------------------------- records


@dataclass(frozen=True, slots=True)
class RunRecord:
    """One run as the journal has it.

    Attributes:
        id: the run's id (``PHALANX_RUN_ID``).
        kind: ``run`` (a task file) or ``map``.
        file: the task file's key (`file_key`), None for runs without one.
        command_line: how it was started.
        started_at, ended_at: Unix times; ``ended_at`` is None while it runs, or if it was killed.
        status: ``running``, ``succeeded``, ``failed``, ``interrupted``, ``terminated``,
            ``aborted`` (it stopped without a report) or ``crashed`` (found dead afterwards).
        counts: its tasks by status.
    """

    id: str
    kind: str
    file: str | None
    command_line: str
    started_at: float
    ended_at: float | None
    status: str
    counts: Mapping[str, int]

    @property
    def duration(self) -> float | None:
        return None if self.ended_at is None else self.ended_at - self.started_at

    @property
    def total(self) -> int:
        return sum(self.counts.values())


@dataclass(frozen=True, slots=True)
class TaskRecord:
    """One task of one run: its definition's hash and how it ended (so far).

    ``data`` is what the task reported (`TaskResult.data`), None when unknown: the task has
    not ended, ended before the journal kept it (schema 1), or reported more than
    `DATA_LIMIT`. ``output_cut`` is how much of its output ``max_output`` cut, None for
    nothing. With ``attempts`` and ``duration`` they are what its results row holds
    (`journalrows`).
    """

    run_id: str
    task_id: str
    spec_hash: str | None
    status: str
    attempts: int
    reason: str | None
    exit_code: int | None
    started_at: float | None
    ended_at: float | None
    duration: float | None
    data: Mapping[str, Any] | None = field(default=None, repr=False)
    output_cut: OutputCut | None = None


@dataclass(frozen=True, slots=True)
class AttemptRecord:
    """One attempt of one task.

    ``pgid`` and ``leader_started`` (the group leader's start time, as psutil gives it) are
    known when the backend reported the spawn; together with ``pid`` they let a later run
    tell the attempt's process from an unrelated one that got the same pid since.

    ``worker_address`` is the cluster worker the attempt ran on (``--backend dask``: the
    Dask worker's address), as its task's end reported it: None for an attempt that ran on
    this machine, one that was retried (a retry does not say where the failed attempt ran),
    and one recorded before the journal kept it (schema 2).
    """

    run_id: str
    task_id: str
    attempt: int
    status: str
    started_at: float | None
    ended_at: float | None
    duration: float | None
    exit_code: int | None
    signal: int | None
    reason: str | None
    worker: int | None
    pid: int | None
    pgid: int | None
    leader_started: float | None
    stdout_tail: str = field(default="", repr=False)
    stderr_tail: str = field(default="", repr=False)
    worker_address: str | None = None


@dataclass(frozen=True, slots=True)
class Leftover:
    """A process group an attempt was running when its run was killed."""

    run_id: str
    task_id: str
    attempt: int
    pgid: int
    pid: int  # the group's leader
    leader_started: float  # the leader's create time, as recorded when it was spawned


@dataclass(frozen=True, slots=True)
class ResumePlan:
    """What a resumed run does.

    Attributes:
        done: tasks that last succeeded, with the definition they have now: never run again.
        todo: the others, in the graph's order: they run.
        reasons: for each task in ``todo``, why it runs again, in words.
        leftovers: process groups that runs killed mid-way left running (for `kill_leftovers`).
        crashed_runs: those runs (and any other that never finished and whose phalanx is
            gone), for `Journal.mark_crashed` once their leftovers are dealt with.
        spec_hashes: the `spec_hash` of each task in ``todo``, as the task file defines it:
            what the resumed run's `JournalSink` must record. (Not the hashes of `graph`'s
            tasks: that subgraph drops dependencies, which would change them.)
    """

    done: frozenset[str]
    todo: tuple[str, ...]
    reasons: Mapping[str, str]
    leftovers: tuple[Leftover, ...]
    crashed_runs: tuple[str, ...]
    spec_hashes: Mapping[str, str]

    def graph(self, graph: Graph) -> Graph:
        """The part of ``graph`` still to run. Dependencies on done tasks are dropped: they
        are met (`plan_resume` keeps ``todo`` closed under dependents, so every dropped
        dependency is a done one)."""
        return graph.subgraph(self.todo, keep_deps=False)


class RunningProcesses(Protocol):
    """What a backend calls when it has spawned an attempt's process (the leader of its
    own process group), so that the journal knows the group before the attempt ends:
    `Journal.attempt_spawned` is one."""

    def __call__(self, run_id: str, task_id: str, attempt: int, pid: int) -> None: ...


# ---------------------------------------------------------------------------- the journal


def journal_path(directory: str | Path) -> Path:
    """Where the journal of the task file in ``directory`` lives."""
    return Path(directory) / JOURNAL_DIR / JOURNAL_NAME


def file_key(path: str | Path) -> str:
    """The key runs of a task file are recorded under: its resolved path."""
    return str(Path(path).resolve())


class Journal:
    """The journal of the task files in one directory. Open it with `Journal.open`.

    One connection, shared by the scheduler's loop and the backends' spawn hook: every use
    holds a lock.

    An attempt's start and a retried attempt's failure are held back in memory, by attempt,
    and written with the commit that needs them: the attempt's spawn (`attempt_spawned`:
    a kill -9 then leaves the running attempt in the journal, with its process group), its
    task's end, or the run's end. An attempt that spawns no process (a callable) has nothing
    a later run could act on, and its task's end writes everything its start would have:
    so a task costs one transaction, and a task that starts a process two. Unless its spawn
    is held back too (`hold_spawned`, what `JournalSink` does): then a process that ends
    before `write_spawned` comes for it costs one, like a callable.
    """

    def __init__(self, connection: sqlite3.Connection, path: Path) -> None:
        self._db = connection
        self.path = path
        self._lock = threading.RLock()
        self._depth = 0
        # Held-back writes by attempt (run seq, task id, attempt number), in the order they came.
        self._held: dict[tuple[int, str, int], list[tuple[str, tuple[Any, ...]]]] = {}
        # Held-back spawns by attempt (`hold_spawned`): the process, its group, and since when
        # (monotonic), oldest first.
        self._spawns: dict[tuple[int, str, int], tuple[int, int | None, float]] = {}
        self._seqs: dict[str, int] = {}
        self._commits = 0
        self._background = False  # see checkpoint_in_background
        self._checkpointer: _Checkpointer | None = None

    @classmethod
    def open(cls, directory: str | Path) -> Journal:
        """Open (or create) the journal under ``directory`` (``.phalanx/journal.db``).

        Raises:
            JournalError: the file is not a journal, or one written by a newer phalanx.
        """
        path = journal_path(directory)
        try:
            created = _make_dir(path.parent)
            if created:
                # A cache, not a source: keep it out of the user's commits (as pytest and ruff do).
                # Private like everything in the folder, whatever the umask.
                fd = os.open(path.parent / ".gitignore", os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
                with open(fd, "w", encoding="utf-8") as ignore:
                    ignore.write("# Created by phalanx.\n*\n")
            # Created private before SQLite opens it: the tails of output can be sensitive,
            # and SQLite gives the -wal and -shm files the database file's mode.
            os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600))
            connection = sqlite3.connect(path, timeout=BUSY_TIMEOUT, isolation_level=None, check_same_thread=False)
        except (OSError, sqlite3.Error) as error:
            raise JournalError(f"cannot open the journal {path}: {_why(error)}") from error
        try:
            _use_wal(connection)
            connection.execute("PRAGMA synchronous = NORMAL")
            # A checkpoint fsyncs: every 1000 pages (SQLite's default) it would cost a task
            # in a few hundred about as much as all its commits. The WAL may grow to ~40 MB
            # between them instead; it is cut back to 8 MiB after each, and goes at close.
            connection.execute(f"PRAGMA wal_autocheckpoint = {_CHECKPOINT_PAGES}")
            connection.execute(f"PRAGMA journal_size_limit = {_WAL_KEPT}")
            connection.execute("PRAGMA foreign_keys = ON")
            _migrate(connection, path)
        except sqlite3.Error as error:
            connection.close()
            raise JournalError(f"{path} is not a usable phalanx journal: {_why(error)}") from error
        except BaseException:
            connection.close()
            raise
        return cls(connection, path)

    def close(self) -> None:
        with self._lock:
            if self._held or self._spawns:
                with contextlib.suppress(JournalError), self.transaction() as db:
                    self._write_all_held(db)
            if self._checkpointer is not None:
                self._checkpointer.close()  # first: the last connection to close checkpoints what is left
                self._checkpointer = None
            self._db.close()

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ transactions

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (nested uses join the outer one).

        Raises:
            JournalError: SQLite failed (the journal is locked for too long, the disk is full).
        """
        with self._lock:
            if self._depth:
                self._depth += 1
                try:
                    yield self._db
                finally:
                    self._depth -= 1
                return
            try:
                self._db.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as error:
                raise JournalError(f"cannot write the journal {self.path}: {_why(error)}") from error
            self._depth = 1
            try:
                yield self._db
                self._db.execute("COMMIT")
            except BaseException as error:
                with contextlib.suppress(sqlite3.Error):
                    self._db.execute("ROLLBACK")
                if isinstance(error, sqlite3.Error):
                    raise JournalError(f"cannot write the journal {self.path}: {_why(error)}") from error
                raise
            finally:
                self._depth = 0
            self._commits += 1
            if self._background and self._commits % CHECKPOINT_COMMITS == 0:
                if self._checkpointer is None:
                    self._checkpointer = _Checkpointer(self.path)
                self._checkpointer.request()

    def checkpoint_in_background(self) -> None:
        """From now on, checkpoint the WAL every `CHECKPOINT_COMMITS` commits in a thread of
        the journal's own (`_Checkpointer`), stopped by `close`. For processes that do not
        fork while the journal is open (``phalanx run``, whose commands are spawned): a fork
        copies only the thread that forks, and a lock the checkpoint held would stay locked
        in the child (``phalanx pytest`` forks, and keeps checkpoints where SQLite does them).
        """
        self._background = True

    def _write_held(self, db: sqlite3.Connection, seq: int, task_id: str, attempts: range, *, running: int = 0) -> None:
        """Write what is held back for these attempts of a task (in a transaction). Only
        attempt number ``running`` may still run: the others' held spawns go without their
        process's start time (a pid reused since must not lend its own)."""
        for number in attempts:
            key = (seq, task_id, number)
            for sql, params in self._held.pop(key, ()):
                db.execute(sql, params)
            spawn = self._spawns.pop(key, None)
            if spawn is not None:
                db.execute(_SPAWNED, _held_spawn_params(key, spawn, running=number == running))

    def _write_all_held(self, db: sqlite3.Connection) -> None:
        held, self._held = self._held, {}
        spawns, self._spawns = self._spawns, {}
        for statements in held.values():
            for sql, params in statements:
                db.execute(sql, params)
        for key, spawn in spawns.items():  # the run ends: whichever still runs has its start time looked up
            db.execute(_SPAWNED, _held_spawn_params(key, spawn, running=True))

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Rows of a read-only statement (for modules keeping their own tables here: `history`).

        Raises:
            JournalError: SQLite failed.
        """
        with self._lock:
            try:
                return self._db.execute(sql, params).fetchall()
            except sqlite3.Error as error:
                raise JournalError(f"cannot read the journal {self.path}: {_why(error)}") from error

    def _seq(self, run_id: str) -> int | None:
        seq = self._seqs.get(run_id)
        if seq is None:
            rows = self.query("SELECT seq FROM runs WHERE id = ?", (run_id,))
            if not rows:
                return None
            seq = self._seqs[run_id] = int(rows[0][0])
        return seq

    # ------------------------------------------------------------------ writing

    def begin_run(
        self,
        run_id: str,
        *,
        kind: str,
        file: str | None,
        command_line: str,
        started_at: float,
        spec_hashes: Mapping[str, str],
    ) -> None:
        """Record a run that starts, with each task it holds as ``pending``; the process
        running it is recorded too, so that a later run can tell whether it is still alive."""
        runner_pid, runner_started = os.getpid(), _create_time(os.getpid())
        with self.transaction() as db:
            cursor = db.execute(
                "INSERT INTO runs (id, kind, file, command_line, started_at, status, runner_pid, runner_started)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (run_id, kind, file, command_line, started_at, RUNNING, runner_pid, runner_started),
            )
            seq = cursor.lastrowid
            assert seq is not None
            db.executemany(
                "INSERT INTO tasks (run_seq, task_id, spec_hash, status) VALUES (?, ?, ?, ?)",
                ((seq, tid, digest, PENDING) for tid, digest in spec_hashes.items()),
            )
        self._seqs[run_id] = seq

    def record_started(self, run_id: str, task_id: str, attempt: int, worker: int, started_at: float) -> None:
        """An attempt started: held back (see the class)."""
        seq = self._seq(run_id)
        if seq is None:
            return
        with self._lock:
            self._held[seq, task_id, attempt] = _start_writes(seq, task_id, attempt, worker, started_at)

    def attempt_spawned(self, run_id: str, task_id: str, attempt: int, pid: int) -> None:
        """The backend has spawned the attempt's process ``pid``, the leader of its own group:
        record the group and the leader's start time now, committed, so that a kill -9 of
        phalanx leaves the attempt in the journal as running, with what it takes to find
        its processes again (`plan_resume`, `kill_leftovers`). A `RunningProcesses` hook.

        Call it before reaping the process (its pid cannot be reused until then). A run the
        journal does not know is ignored.

        Raises:
            JournalError: the journal cannot be written.
        """
        seq = self._seq(run_id)
        if seq is None:
            return
        spawned = _spawn_params(seq, task_id, attempt, pid)
        with self._lock, self.transaction() as db:
            self._write_held(db, seq, task_id, range(1, attempt + 1))
            db.execute(_SPAWNED, spawned)

    def hold_spawned(self, run_id: str, task_id: str, attempt: int, pid: int) -> None:
        """`attempt_spawned`, held back: the process's group is taken now (``pid`` is still
        that process: call it before reaping it, as `attempt_spawned`), and it is written
        with its task's end if that comes first, else by `write_spawned`, else by the run's
        end. A process that ends within the hold then costs no commit of its own, nor the
        look-up of its start time (which only tells a running leftover from a later process
        with its pid: that of a process the journal has as ended is never needed). Until it
        is written, a kill -9 of phalanx leaves the attempt out of the journal's leftovers:
        hold spawns back only where a watchdog stops those (``phalanx run`` does).
        """
        seq = self._seq(run_id)
        if seq is None:
            return
        try:
            pgid: int | None = os.getpgid(pid)
        except OSError:
            pgid = None  # gone already (or not ours to see): nothing will be left of it
        with self._lock:
            self._spawns[seq, task_id, attempt] = (pid, pgid, time.monotonic())

    def write_spawned(self, held_since: float) -> float | None:
        """Commit the spawns held back (`hold_spawned`) since ``held_since`` (a `time.monotonic`
        time) or longer, with their attempts' starts; the spawns of processes that have
        been reaped meanwhile go without their start time (see `_child_create_time`).
        Returns since when the oldest spawn still held has been (None: none is).

        Raises:
            JournalError: the journal cannot be written.
        """
        with self._lock:
            due = [key for key, spawn in self._spawns.items() if spawn[2] <= held_since]
            if due:
                with self.transaction() as db:
                    for seq, task_id, attempt in due:
                        self._write_held(db, seq, task_id, range(1, attempt + 1), running=attempt)
            return next((spawn[2] for spawn in self._spawns.values()), None)

    def record_retrying(self, run_id: str, task_id: str, attempt: int, ended_at: float, reason: str) -> None:
        """An attempt failed and will be retried: held back (see the class)."""
        seq = self._seq(run_id)
        if seq is None:
            return
        with self._lock:
            self._held.setdefault((seq, task_id, attempt), []).append(
                (_RETRIED, _retry_params(seq, task_id, attempt, ended_at, reason))
            )

    def record_finished(
        self,
        run_id: str,
        result: TaskResult,
        *,
        run_started_at: float,
        spec_hash: str | None = None,
        on_commit: Callable[[sqlite3.Connection], None] | None = None,
    ) -> None:
        """A task ended: its row and its last attempt's, in one transaction (committed).

        A task that ended while no attempt of it ran (skipped; cancelled before it started,
        or while it waited to retry) leaves its attempts as they were. ``on_commit`` writes
        more in the same transaction (the duration history does).
        """
        seq = self._seq(run_id)
        if seq is None:
            return
        task_row, attempt_row = _finish_params(seq, result, run_started_at, spec_hash)
        last_ran = attempt_row is not None
        spawn = None
        with self._lock:
            if last_ran:
                # This commit writes everything the last attempt's start would have: those
                # rows can go (its held spawn's group goes into its row). Earlier (failed)
                # attempts' rows are written first.
                key = (seq, result.task_id, result.attempts)
                self._held.pop(key, None)
                spawn = self._spawns.pop(key, None)
            with self.transaction() as db:
                self._write_held(db, seq, result.task_id, range(1, result.attempts + (not last_ran)))
                db.execute(_FINISH_TASK, task_row)
                if attempt_row is not None:
                    if spawn is None:
                        db.execute(_FINISH_ATTEMPT, attempt_row)
                    else:
                        pid = spawn[0] if attempt_row[11] is None else attempt_row[11]
                        db.execute(_FINISH_SPAWNED_ATTEMPT, (*attempt_row[:11], pid, *attempt_row[12:], spawn[1]))
                if on_commit is not None:
                    on_commit(db)

    def end_run(self, run_id: str, status: str, ended_at: float) -> None:
        """Record how a run ended. Attempts it still has as running (a run that stopped
        without a report) are marked ``lost``: their processes are gone with the run's."""
        seq = self._seq(run_id)
        if seq is None:
            return
        with self._lock, self.transaction() as db:
            self._write_all_held(db)
            db.execute("UPDATE runs SET status = ?, ended_at = ? WHERE seq = ?", (status, ended_at, seq))
            _lose_running(db, seq, "the run ended before this attempt did")

    def mark_crashed(self, run_ids: Iterable[str]) -> None:
        """Runs whose phalanx died mid-way (`ResumePlan.crashed_runs`), once their leftovers have
        been dealt with: ``crashed``, and what they had running ``lost``. Until then a
        later plan lists their leftovers again (harmless: `kill_leftovers` checks each)."""
        with self.transaction() as db:
            for run_id in run_ids:
                seq = self._seq(run_id)
                if seq is None:
                    continue
                db.execute("UPDATE runs SET status = 'crashed' WHERE seq = ? AND status = ?", (seq, RUNNING))
                _lose_running(db, seq, "phalanx was killed while this attempt ran")

    def batch(self, run_id: str) -> RunBatch:
        """A `RunBatch` for run ``run_id`` (begun with `begin_run`).

        Raises:
            JournalError: the journal has no such run.
        """
        seq = self._seq(run_id)
        if seq is None:
            raise JournalError(f"no run {run_id!r} in the journal {self.path}")
        return RunBatch(seq)

    # ------------------------------------------------------------------ reading

    def runs(self, limit: int = 20) -> list[RunRecord]:
        """The latest ``limit`` runs, newest first."""
        rows = self.query(
            "SELECT seq, id, kind, file, command_line, started_at, ended_at, status FROM runs"
            " ORDER BY seq DESC LIMIT ?",
            (limit,),
        )
        return [self._run_record(row) for row in rows]

    def run(self, ref: str) -> RunRecord:
        """The run with id ``ref``, or the one run whose id starts with it.

        Raises:
            JournalError: no run, or several, match.
        """
        rows = self.query(
            "SELECT seq, id, kind, file, command_line, started_at, ended_at, status FROM runs WHERE id = ?",
            (ref,),
        )
        if not rows:
            pattern = ref.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
            rows = self.query(
                "SELECT seq, id, kind, file, command_line, started_at, ended_at, status FROM runs"
                " WHERE id LIKE ? ESCAPE '\\' ORDER BY seq DESC LIMIT 2",
                (pattern,),
            )
        if not rows:
            raise JournalError(f"no run {ref!r} in the journal {self.path}")
        if len(rows) > 1:
            raise JournalError(f"several runs start with {ref!r}: give more of the id")
        return self._run_record(rows[0])

    def _run_record(self, row: tuple[Any, ...]) -> RunRecord:
        seq, run_id, kind, file, command_line, started_at, ended_at, status = row
        counts = dict(self.query("SELECT status, count(*) FROM tasks WHERE run_seq = ? GROUP BY status", (seq,)))
        return RunRecord(run_id, kind, file, command_line, started_at, ended_at, status, MappingProxyType(counts))

    @overload
    def show(self, run_id: str) -> list[TaskRecord]: ...

    @overload
    def show(self, run_id: str, task_id: str) -> list[AttemptRecord]: ...

    def show(self, run_id: str, task_id: str | None = None) -> list[TaskRecord] | list[AttemptRecord]:
        """A run's tasks, in the order they started (pending ones last); or, with ``task_id``,
        that task's attempts, with reason, exit code and output tails. ``run_id`` may be an
        unambiguous prefix.

        Raises:
            JournalError: no such run.
        """
        run = self.run(run_id)
        seq = self._seq(run.id)
        if task_id is None:
            rows = self.query(
                f"SELECT {_TASK_COLUMNS} FROM tasks t WHERE t.run_seq = ?"
                " ORDER BY t.started_at IS NULL, t.started_at, t.task_id",
                (seq,),
            )
            return [_task_record(run.id, row) for row in rows]
        rows = self.query(
            "SELECT attempt, status, started_at, ended_at, duration, exit_code, signal, reason, worker, pid, pgid,"
            " leader_started, stdout_tail, stderr_tail, worker_address FROM attempts"
            " WHERE run_seq = ? AND task_id = ? ORDER BY attempt",
            (seq, task_id),
        )
        return [AttemptRecord(run.id, task_id, *row) for row in rows]

    def latest_tasks(self, file: str) -> dict[str, TaskRecord]:
        """Each task's latest record among the runs of task file ``file``, ignoring runs in
        which it never started (a resumed run holds only what it had left to do)."""
        rows = self.query(
            f"SELECT r.id, {_TASK_COLUMNS} FROM tasks t JOIN runs r ON r.seq = t.run_seq"
            " WHERE r.file = ? AND t.status != ? ORDER BY r.seq",
            (file, PENDING),
        )
        latest = {row[1]: row for row in rows}  # decoded once each: the last row of a task wins
        return {task_id: _task_record(row[0], row[1:]) for task_id, row in latest.items()}

    def unfinished_runs(self, file: str) -> list[tuple[str, int | None, float | None]]:
        """Runs of ``file`` still recorded as running: (id, runner pid, runner start time)."""
        rows = self.query(
            "SELECT id, runner_pid, runner_started FROM runs WHERE file = ? AND status = ? ORDER BY seq",
            (file, RUNNING),
        )
        return [(str(run_id), pid, started) for run_id, pid, started in rows]

    def running_attempts(self, run_id: str) -> list[Leftover]:
        """The process groups a run has as running (with a known leader start time)."""
        seq = self._seq(run_id)
        rows = self.query(
            "SELECT task_id, attempt, pgid, pid, leader_started FROM attempts WHERE run_seq = ? AND status = ?"
            " AND pgid IS NOT NULL AND pid IS NOT NULL AND leader_started IS NOT NULL ORDER BY task_id, attempt",
            (seq, RUNNING),
        )
        return [Leftover(run_id, *row) for row in rows]


class _Checkpointer:
    """Checkpoints a journal's WAL on request, in a thread with a connection of its own.

    A passive checkpoint waits for no one (writers go on meanwhile) and SQLite lets go of
    the GIL while it copies and fsyncs: the fsyncs then overlap the run. The WAL's writer
    starts over at the beginning of the file once a checkpoint has caught up with it, so
    what is left to sync when the journal closes is what came since the last one.
    """

    def __init__(self, path: Path) -> None:
        self._path = path
        self._wanted = threading.Event()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="phalanx-journal-checkpoint", daemon=True)
        self._thread.start()

    def request(self) -> None:
        self._wanted.set()

    def close(self) -> None:
        """Stop, once a checkpoint under way has ended (its connection closes with it)."""
        self._stopping = True
        self._wanted.set()
        self._thread.join()

    def _run(self) -> None:
        try:
            db = sqlite3.connect(self._path, timeout=0, isolation_level=None)
        except sqlite3.Error:
            return  # the journal's own connection checkpoints, as without this thread
        try:
            db.execute("PRAGMA synchronous = NORMAL")
            while True:
                self._wanted.wait()
                self._wanted.clear()
                if self._stopping:
                    return
                db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        except sqlite3.Error:
            return  # a checkpoint is an optimisation: the close checkpoints what is left anyway
        finally:
            db.close()


class RunBatch:
    """One run's records held in memory, to be written together in one transaction (`write`).

    For runs of many short tasks (``phalanx map``: `JournalSink` with ``commit_every``), where
    a commit per task would cost about as much as the task. It holds what `Journal.record_started`,
    `~Journal.attempt_spawned`, `~Journal.record_retrying` and `~Journal.record_finished` would
    write, and drops an attempt's start when its task ends in the same batch (the end writes
    all the start would have, as `record_finished` does with the starts it holds back); its
    spawn then goes into the end's row. Rows go statement by statement (``executemany``):
    starts, spawns, retries, ends. That gives what writing them as they came would: an
    attempt's events come in that order, and a row begun by an earlier batch is already in
    the journal.

    One difference: a spawned process's start time (``leader_started``, what tells it from a
    later process with the same pid) is looked up only for attempts still running when a
    second batch is written after their spawn; the first writes their group without it. The
    lookup costs about as much as a short job, and most attempts of such runs end sooner;
    an attempt a kill -9 leaves behind before then is among the last interval's records,
    which the kill may lose anyway.

    Not thread-safe: one event loop feeds it (the scheduler's sinks and the backends' spawn
    hook, in the process that spawns the attempts). Make one with `Journal.batch`.
    """

    __slots__ = (
        "_attempt_ends", "_retries", "_running", "_seq", "_spawned_ends", "_spawns", "_starts", "_task_ends",
        "records",
    )

    def __init__(self, seq: int) -> None:
        self._seq = seq
        # Starts by attempt, as (worker, started_at): made into rows only if still needed
        # when written (most are not: their task ends in the same batch).
        self._starts: dict[tuple[str, int], tuple[int, float]] = {}
        # `_SPAWNED` rows by attempt: those of this batch, and those an earlier batch wrote
        # (without a start time) whose attempts still ran then.
        self._spawns: dict[tuple[str, int], list[Any]] = {}
        self._running: dict[tuple[str, int], list[Any]] = {}
        self._retries: list[tuple[Any, ...]] = []
        self._task_ends: list[tuple[Any, ...]] = []
        self._attempt_ends: list[tuple[Any, ...]] = []
        self._spawned_ends: list[tuple[Any, ...]] = []  # ends of attempts spawned in this batch
        #: Records taken since the last `write` (a start, a spawn, a retry, an end: one each).
        self.records = 0

    def started(self, task_id: str, attempt: int, worker: int, started_at: float) -> None:
        self._starts[task_id, attempt] = (worker, started_at)
        self.records += 1

    def spawned(self, task_id: str, attempt: int, pid: int) -> None:
        """The attempt's process ``pid``, a child of this process leading its own group, was
        spawned: call it before the process is reaped, as `Journal.attempt_spawned`."""
        try:
            pgid: int | None = os.getpgid(pid)
        except OSError:
            pgid = None  # gone already: nothing will be left of it
        self._spawns[task_id, attempt] = [self._seq, task_id, attempt, RUNNING, pid, pgid, None]
        self.records += 1

    def retrying(self, task_id: str, attempt: int, ended_at: float, reason: str) -> None:
        self._running.pop((task_id, attempt), None)
        self._retries.append(_retry_params(self._seq, task_id, attempt, ended_at, reason))
        self.records += 1

    def finished(self, result: TaskResult, *, run_started_at: float, spec_hash: str | None = None) -> None:
        task_row, attempt_row = _finish_params(self._seq, result, run_started_at, spec_hash)
        self._task_ends.append(task_row)
        if attempt_row is not None:
            attempt = (result.task_id, result.attempts)
            self._starts.pop(attempt, None)
            self._running.pop(attempt, None)
            spawn = self._spawns.pop(attempt, None)
            if spawn is None:
                self._attempt_ends.append(attempt_row)
            else:  # one row instead of two: most attempts of such runs end in the batch that spawned them
                self._spawned_ends.append((*attempt_row, spawn[5]))
        self.records += 1

    @property
    def running(self) -> bool:
        """Whether the next `write` has start times to look up (even with no record taken)."""
        return bool(self._running)

    def write(self, db: sqlite3.Connection) -> None:
        """Write what it holds, in the transaction of ``db`` (`Journal.transaction`), and
        forget it (even if SQLite fails: the caller's transaction then writes none of it)."""
        retried = {(row[5], row[6]) for row in self._retries}
        spawns = list(self._spawns.values())
        for spawn in self._running.values():  # still running since the last batch: now with a start time
            spawn[-1] = _child_create_time(spawn[4])
            if spawn[-1] is not None:
                spawns.append(spawn)
        self._running = {key: spawn for key, spawn in self._spawns.items() if key not in retried}
        starts = [_start_writes(self._seq, tid, attempt, *start) for (tid, attempt), start in self._starts.items()]
        statements = (
            (_START_ATTEMPT, [rows[0][1] for rows in starts]),
            (_START_TASK, [rows[1][1] for rows in starts]),
            (_SPAWNED, spawns),
            (_RETRIED, self._retries),
            (_FINISH_TASK, self._task_ends),
            (_FINISH_ATTEMPT, self._attempt_ends),
            (_FINISH_SPAWNED_ATTEMPT, self._spawned_ends),
        )
        self._starts, self._spawns, self._retries, self._task_ends = {}, {}, [], []
        self._attempt_ends, self._spawned_ends = [], []
        self.records = 0
        for sql, rows in statements:
            if rows:
                db.executemany(sql, rows)


def _make_dir(directory: Path) -> bool:
    """Create the journal's directory (private); whether it was created."""
    try:
        directory.mkdir(mode=0o700)
    except FileExistsError:
        return False
    return True


def _use_wal(db: sqlite3.Connection) -> None:
    """``PRAGMA journal_mode = WAL`` (a no-op once the file is in WAL mode: it stays so).

    Changing the mode needs the file to itself, and SQLite answers "database is locked" at
    once, without the wait `BUSY_TIMEOUT` gives other statements, while another connection
    has it: two runs creating the journal at once (``phalanx map`` started twice in one
    folder). So: try again, for up to `BUSY_TIMEOUT`. A lock is all there is to wait on.
    """
    deadline = time.monotonic() + BUSY_TIMEOUT
    pause = 0.001
    while True:
        try:
            # A file system without WAL support keeps the old mode, quietly: that works too.
            db.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as error:
            if error.sqlite_errorcode != sqlite3.SQLITE_BUSY or time.monotonic() >= deadline:
                raise
        time.sleep(pause)
        pause = min(pause * 2, 0.05)


def _migrate(db: sqlite3.Connection, path: Path) -> None:
    """Bring the schema to `SCHEMA_VERSION`, in one transaction (two runs starting at once
    must not both create it). A journal already at it costs one read and no write lock, so
    opening it never waits for another run's write."""
    if int(db.execute("PRAGMA user_version").fetchone()[0]) == SCHEMA_VERSION:
        return
    db.execute("BEGIN IMMEDIATE")
    try:
        version = int(db.execute("PRAGMA user_version").fetchone()[0])
        if version > SCHEMA_VERSION:
            raise JournalError(
                f"the journal {path} was written by a newer phalanx (schema {version}, this one knows "
                f"{SCHEMA_VERSION}); upgrade phalanx, or remove the file to start a new journal"
            )
        while version < SCHEMA_VERSION:
            for statement in _MIGRATIONS[version].split(";"):
                if statement.strip():
                    db.execute(statement)
            version += 1
            db.execute(f"PRAGMA user_version = {version}")
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise


def _lose_running(db: sqlite3.Connection, seq: int, reason: str) -> None:
    db.execute(
        "UPDATE attempts SET status = ?, reason = coalesce(reason, ?) WHERE run_seq = ? AND status = ?",
        (LOST, reason, seq, RUNNING),
    )
    db.execute("UPDATE tasks SET status = ? WHERE run_seq = ? AND status = ?", (LOST, seq, RUNNING))


def _start_writes(
    seq: int, task_id: str, attempt: int, worker: int, started_at: float
) -> list[tuple[str, tuple[Any, ...]]]:
    return [
        (_START_ATTEMPT, (seq, task_id, attempt, RUNNING, started_at, worker)),
        (_START_TASK, (seq, task_id, RUNNING, attempt, started_at)),
    ]


def _spawn_params(seq: int, task_id: str, attempt: int, pid: int) -> tuple[Any, ...]:
    """The `_SPAWNED` row of a process just spawned: taken now, while ``pid`` is still
    that process (not reaped yet), with its group and its start time."""
    try:
        pgid: int | None = os.getpgid(pid)
    except OSError:
        pgid = None  # gone already (or not ours to see): nothing will be left of it
    return (seq, task_id, attempt, RUNNING, pid, pgid, _create_time(pid))


def _held_spawn_params(
    key: tuple[int, str, int], spawn: tuple[int, int | None, float], *, running: bool
) -> tuple[Any, ...]:
    """The `_SPAWNED` row of a spawn held back (`Journal.hold_spawned`), written now; with
    its process's start time if the attempt may still run (`_child_create_time`)."""
    seq, task_id, attempt = key
    pid, pgid, _ = spawn
    return (seq, task_id, attempt, RUNNING, pid, pgid, _child_create_time(pid) if running else None)


def _retry_params(seq: int, task_id: str, attempt: int, ended_at: float, reason: str) -> tuple[Any, ...]:
    return (Status.FAILED.value, ended_at, ended_at, _text(reason), seq, task_id, attempt)


def _finish_params(
    seq: int, result: TaskResult, run_started_at: float, spec_hash: str | None
) -> tuple[tuple[Any, ...], tuple[Any, ...] | None]:
    """A task's end: its `_FINISH_TASK` row, and its last attempt's `_FINISH_ATTEMPT` row
    (None when no attempt of it was running as it ended: it leaves its attempts as they were)."""
    start = None if result.start is None else run_started_at + result.start
    end = None if result.end is None else run_started_at + result.end
    status = result.status.value
    # The scheduler gives a result made when no attempt was running no worker.
    last_ran = result.attempts > 0 and result.worker is not None
    reason = _text(result.reason)
    if result.output_cut is not None:  # the note goes with the reason, for a task that succeeded too
        reason = _text(f"{result.reason}; {result.note}" if result.reason else f"{result.note}")
    task_row = (
        seq, result.task_id, spec_hash, status, result.attempts, reason, result.exit_code,
        start, end, result.duration if last_ran else None,
        _data_json(result.data), None if result.output_cut is None else _compact(result.output_cut.to_dict()),
    )
    if not last_ran:
        return task_row, None
    return task_row, (
        seq, result.task_id, result.attempts, status, None if end is None else end - result.duration,
        end, result.duration, result.exit_code, result.signal, reason, result.worker, result.pid,
        _tail(result.stdout_tail), _tail(result.stderr_tail), _text(result.worker_address),
    )


def _data_json(data: Mapping[str, Any]) -> str | None:
    """What a task reported, as the journal keeps it: a JSON object, with what JSON cannot
    hold as a results file writes it (a mapping as an object, anything else as its text),
    so that a row rebuilt from it is the row the file got; None past `DATA_LIMIT`."""
    if not data:
        return "{}"
    try:
        text = _compact(data)
    except (TypeError, ValueError, RecursionError):  # keys JSON cannot hold, or a value that holds itself
        text = _compact({str(key): _jsonable(value) for key, value in data.items()})
    if len(text) > DATA_LIMIT // 4 and len(text.encode("utf-8", "surrogatepass")) > DATA_LIMIT:
        return None
    return text


def _compact(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=_json_default)
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate (a bad byte, decoded): SQLite cannot bind it, JSON escapes it
            text = json.dumps(value, separators=(",", ":"), default=_json_default)
    return text


def _json_default(value: object) -> object:
    return dict(value) if isinstance(value, Mapping) else str(value)


def _jsonable(value: object) -> object:
    try:
        json.dumps(value, default=_json_default)
    except (TypeError, ValueError, RecursionError):
        return str(value)
    return value


def _task_record(run_id: str, row: tuple[Any, ...]) -> TaskRecord:
    """A `TaskRecord` from a row of `_TASK_COLUMNS`."""
    task_id, digest, status, attempts, reason, exit_code, started_at, ended_at, duration, data, cut = row
    return TaskRecord(
        run_id, task_id, digest, status, attempts, reason, exit_code, started_at, ended_at, duration,
        data=_loaded_data(data), output_cut=_loaded_cut(cut),
    )


def _loaded_data(text: str | None) -> Mapping[str, Any] | None:
    if text is None:
        return None
    try:
        value = json.loads(text)
    except ValueError:  # not as this module wrote it: unknown
        return None
    return MappingProxyType(value) if isinstance(value, dict) else None


def _loaded_cut(text: str | None) -> OutputCut | None:
    if text is None:
        return None
    try:
        fields = json.loads(text)
        streams = [None if fields[name] is None else StreamCut(
            int(fields[name]["printed"]), int(fields[name]["kept"]), int(fields[name]["head"]),
        ) for name in ("stdout", "stderr")]
        return OutputCut(int(fields["cap"]), *streams)
    except (ValueError, TypeError, KeyError):  # not as this module wrote it
        return None


@overload
def _text(text: str) -> str: ...


@overload
def _text(text: None) -> None: ...


def _text(text: str | None) -> str | None:
    """``text`` as SQLite can store it: a lone surrogate (a file name's undecodable byte, in
    an error message) becomes U+FFFD, where binding it would raise UnicodeEncodeError."""
    if text is None or text.isascii():
        return text
    return text.encode("utf-8", "surrogatepass").decode("utf-8", "replace")


def _tail(text: str) -> str:
    """At most `TAIL_LIMIT` bytes of the end of ``text`` (cut at a character boundary)."""
    if len(text) <= TAIL_LIMIT // 4:  # four bytes a character at most: surely short enough
        return text
    data = text.encode("utf-8", "surrogatepass")
    if len(data) <= TAIL_LIMIT:
        return text
    return data[-TAIL_LIMIT:].decode("utf-8", "ignore")


def _child_create_time(pid: int) -> float | None:
    """`_create_time` of this process's child ``pid``, or None once it has been reaped: its
    pid may then be another process's, whose start time must not pass for the child's.
    (``WNOWAIT``: a child that has exited but is not reaped yet stays so, for its backend.)"""
    try:
        os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return None
    return _create_time(pid)


def _why(error: BaseException) -> str:
    return getattr(error, "strerror", None) or str(error)


def _create_time(pid: int) -> float | None:
    """When process ``pid`` started (psutil's ``create_time``), or None if it is gone."""
    if sys.platform.startswith("linux"):
        try:
            return _proc_create_time(pid)
        except OSError:
            return None  # gone (or not ours to see), as psutil would say
        except (ValueError, IndexError):
            pass  # /proc not as psutil knows it: ask psutil
    import psutil  # here: only runs that journal pay for it

    try:
        return float(psutil.Process(pid).create_time())
    except psutil.Error:
        return None


def _proc_create_time(pid: int) -> float:
    """psutil's ``create_time`` on Linux, computed with the very same operations (the start in
    clock ticks since boot, from ``/proc/PID/stat``, over the ticks per second, plus the boot
    time from ``/proc/stat``), so that `_same_process` finds it equal: without importing
    psutil, which takes longer than the rest of a short ``phalanx map`` run's journal, and
    in a tenth of the time psutil takes per process.

    Raises:
        OSError: no such process. ValueError, IndexError: a format psutil would not read either.
    """
    with open(f"/proc/{pid}/stat", "rb") as file:
        data = file.read()
    # The name, in parentheses, may hold spaces and parentheses: the fields follow the last ")".
    ticks = float(data[data.rfind(b")") + 2 :].split()[19])
    with open("/proc/stat", "rb") as file:
        for line in file:
            if line.startswith(b"btime"):
                return ticks / _clock_ticks() + float(line.strip().split()[1])
    raise ValueError("no btime in /proc/stat")


@functools.cache
def _clock_ticks() -> int:
    return os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------------------- the sink


class JournalSink:
    """Records a run in the journal as it goes (a `Sink`).

    Args:
        journal: the journal; the sink does not close it.
        spec_hashes: each task's `spec_hash`; these tasks are recorded as pending at the
            start. Tasks not in it (submitted later) are recorded when they start, unhashed.
        command_line: how the run was started, for ``phalanx runs``.
        file_key: the task file's `file_key`, which `plan_resume` finds the run by.
        run_kind: ``run`` or ``map``.
        history: also feed each succeeded task's duration to the `DurationHistory`, in
            a transaction that records a task's end: gathered for up to `HISTORY_EVERY`
            (an estimate gains nothing from a commit of its own per task), and written by
            the run's end at the latest.
        history_key: the history key of a task id (None: not recorded); by default the id
            itself. ``phalanx map`` gives its command template.
        commit_every: None (the default): each task's records are committed as it ends;
            a process spawned through the sink's `attempt_spawned` is committed once it has
            run `SPAWN_HOLD` (by a timer on the running event loop), or with its end if that
            comes first. A number of seconds: records are held in memory (a `RunBatch`) and
            committed together once the oldest is that old, or `BATCH_RECORDS` of them are
            held, or the run ends. For runs whose resume does not depend on the journal
            (``phalanx map`` resumes from its joblog), where a commit per task would cost
            about as much as the task: a kill -9 loses at most the last interval's records.
            The spawn hook must then be the sink's own `attempt_spawned`, so that spawns
            join the batch. A batch that comes due while no event arrives is committed by a
            timer on the running event loop (with no loop running, at the next event).
    """

    def __init__(
        self,
        journal: Journal,
        *,
        spec_hashes: Mapping[str, str],
        command_line: str,
        file_key: str | None = None,
        run_kind: str = "run",
        history: bool = True,
        history_key: Callable[[str], str | None] | None = None,
        commit_every: float | None = None,
    ) -> None:
        if commit_every is not None and not commit_every > 0:  # also refuses NaN
            raise ValueError(f"commit_every must be a positive number of seconds, got {commit_every!r}")
        self._journal = journal
        self._spec_hashes = spec_hashes
        self._command_line = command_line
        self._file = file_key
        self._kind = run_kind
        self._history_key = history_key or _same
        self._history: DurationHistory | None = None
        if history:
            from .history import DurationHistory  # not at the top: history imports this module

            self._history = DurationHistory(journal)
        self._run_id: str | None = None
        self._started_at = 0.0
        self._ended = False
        # Batching (``commit_every``): the batch once the run has begun, the succeeded
        # durations that go with it, when it comes due, the timer that commits it then,
        # and a failed timed commit, raised at the next event (the scheduler's sink errors).
        self._every = commit_every
        self._batch: RunBatch | None = None
        self._durations: list[tuple[str, float]] = []
        self._history_due = 0.0  # without batching: when the durations gathered go with a task's end
        self._due: float | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._error: JournalError | ValueError | None = None
        # Without batching: the timer that commits the spawns held back (`Journal.hold_spawned`).
        self._spawn_timer: asyncio.TimerHandle | None = None

    @property
    def run_id(self) -> str | None:
        """The run's id, once it has started."""
        return self._run_id

    def handle(self, event: Event) -> None:
        self._handle(event)
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def _handle(self, event: Event) -> None:
        if isinstance(event, TaskFinished):
            self._finished(event.result)
        elif isinstance(event, TaskStarted):
            if self._run_id is not None:
                at = self._started_at + event.at
                if self._batch is None:
                    self._journal.record_started(self._run_id, event.task_id, event.attempt, event.worker, at)
                else:
                    self._batch.started(event.task_id, event.attempt, event.worker, at)
                    self._held()
        elif isinstance(event, TaskRetrying):
            if self._run_id is not None:
                at = self._started_at + event.at
                if self._batch is None:
                    self._journal.record_retrying(self._run_id, event.task_id, event.attempt, at, event.reason)
                else:
                    self._batch.retrying(event.task_id, event.attempt, at, event.reason)
                    self._held()
        elif isinstance(event, RunStarted):
            self._run_id = event.run_id
            self._started_at = event.started_at
            self._journal.begin_run(
                event.run_id, kind=self._kind, file=self._file, command_line=self._command_line,
                started_at=event.started_at, spec_hashes=self._spec_hashes,
            )
            if self._every is not None:
                self._batch = self._journal.batch(event.run_id)
        elif isinstance(event, RunFinished) and self._run_id is not None:
            self._ended = True
            self._end(run_status(event.report), self._started_at + event.at)

    def attempt_spawned(self, run_id: str, task_id: str, attempt: int, pid: int) -> None:
        """The backends' spawn hook (a `RunningProcesses`): with ``commit_every``, into the
        batch (committed by the next event or the timer, never here: a failed commit is the
        run's business, not the attempt's); else held back for `SPAWN_HOLD`
        (`Journal.hold_spawned`), committed by a timer on the running event loop or with
        the task's end; with no loop running, or for another run, `Journal.attempt_spawned`."""
        if run_id != self._run_id:
            self._journal.attempt_spawned(run_id, task_id, attempt, pid)
        elif self._batch is not None:
            self._batch.spawned(task_id, attempt, pid)
            self._held(commit=False)
        elif self._spawn_timer is not None:
            self._journal.hold_spawned(run_id, task_id, attempt, pid)
        else:
            import asyncio  # here: as in _arm

            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                self._journal.attempt_spawned(run_id, task_id, attempt, pid)
                return
            self._journal.hold_spawned(run_id, task_id, attempt, pid)
            self._spawn_timer = loop.call_later(SPAWN_HOLD, self._write_spawned)

    def _write_spawned(self) -> None:
        """The spawn timer: commit the spawns held `SPAWN_HOLD` or longer, and come back for
        the oldest of the others (those that end meanwhile are written with their end)."""
        self._spawn_timer = None
        if self._ended:
            return
        now = time.monotonic()
        try:
            # A spawn held a hair less than SPAWN_HOLD goes now too: the timer may be early by
            # the clock's resolution, and a wake-up for it alone would cost more than it saves.
            oldest = self._journal.write_spawned(now - SPAWN_HOLD + _SPAWN_SLACK)
        except JournalError as error:  # not to the event loop's handler: to the scheduler
            self._error = error
            return
        if oldest is not None:
            import asyncio

            self._spawn_timer = asyncio.get_running_loop().call_later(
                max(0.0, oldest + SPAWN_HOLD - now), self._write_spawned
            )

    def _finished(self, result: TaskResult) -> None:
        if self._run_id is None:
            return
        key: str | None = None
        if self._history is not None and result.status is Status.SUCCEEDED and result.attempts:
            key = self._history_key(result.task_id)
        spec = self._spec_hashes.get(result.task_id)
        if self._batch is not None:
            self._batch.finished(result, run_started_at=self._started_at, spec_hash=spec)
            if key is not None:
                self._durations.append((key, result.duration))
            self._held()
            return
        durations = self._durations if key is None else [*self._durations, (key, result.duration)]
        due = bool(durations) and (time.monotonic() >= self._history_due or len(durations) >= BATCH_RECORDS)

        def record(db: sqlite3.Connection) -> None:
            self._observe(db, durations)

        self._journal.record_finished(
            self._run_id, result, run_started_at=self._started_at, spec_hash=spec, on_commit=record if due else None,
        )
        # Only once committed: a duration goes into the history with its task's end or after it.
        if due:
            self._durations = []
            self._history_due = time.monotonic() + HISTORY_EVERY
        elif key is not None:
            self._durations.append((key, result.duration))

    def _observe(self, db: sqlite3.Connection, durations: list[tuple[str, float]]) -> None:
        """Fold ``durations`` into the history, in the transaction of ``db`` (each in turn:
        as if committed one by one)."""
        assert self._history is not None
        for key, seconds in durations:
            self._history.observe(key, seconds, db=db)

    # ------------------------------------------------------------------ batching

    def _held(self, *, commit: bool = True) -> None:
        """A record joined the batch: commit it now if the batch is full or due (and
        ``commit``), else make sure it will be once due."""
        assert self._batch is not None
        if commit and self._batch.records >= BATCH_RECORDS:
            self._commit()
        elif self._due is None:  # the first record of a new batch
            self._arm()
        elif commit and self._timer is None and time.monotonic() >= self._due:
            self._commit()

    def _arm(self) -> None:
        """Commit the batch once due: by a timer on the running loop, else at the next event."""
        assert self._every is not None
        self._due = time.monotonic() + self._every
        import asyncio  # here: a sink that does not batch never needs it

        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self._timer = loop.call_later(self._every, self._commit_due)

    def _commit_due(self) -> None:
        self._timer = None
        try:
            self._commit()
        except (JournalError, ValueError) as error:  # not to the event loop's handler: to the scheduler
            self._error = error

    def _commit(self, end: tuple[str, float] | None = None) -> None:
        """Commit the batch, and the succeeded durations with it (each folded into the
        history in turn, as if committed one by one); with ``end``, the run's end too."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._due = None
        assert self._batch is not None and self._run_id is not None
        durations, self._durations = self._durations, []
        with self._journal.transaction() as db:
            self._batch.write(db)
            if self._history is not None:
                for key, seconds in durations:
                    self._history.observe(key, seconds, db=db)
            if end is not None:
                self._journal.end_run(self._run_id, *end)
        if end is None and self._batch.running:
            self._arm()  # attempts that still run get their start times by the next commit, events or not

    def _end(self, status: str, ended_at: float) -> None:
        if self._spawn_timer is not None:
            self._spawn_timer.cancel()
            self._spawn_timer = None
        if self._batch is None:
            assert self._run_id is not None
            if self._durations:
                durations, self._durations = self._durations, []
                with self._journal.transaction() as db:
                    self._observe(db, durations)
                    self._journal.end_run(self._run_id, status, ended_at)
            else:
                self._journal.end_run(self._run_id, status, ended_at)
        else:
            self._commit(end=(status, ended_at))

    def close(self) -> None:
        if self._run_id is not None and not self._ended:
            # Stopped without a report (the scheduler raised): whatever it ran has been
            # stopped with the backends, which close before the sinks.
            self._ended = True
            self._end("aborted", time.time())


def _same(task_id: str) -> str:
    return task_id


def run_status(report: RunReport) -> str:
    """A finished run's status in the journal."""
    if report.summary.cancelled_by is CancelReason.INTERRUPT:
        return "interrupted"
    if report.summary.cancelled_by is CancelReason.TERMINATE:
        return "terminated"
    return _SUCCEEDED if report.ok else Status.FAILED.value


# ---------------------------------------------------------------------------- spec hashes


#: Bumped whenever what `spec_hash` covers changes (every task then runs again once).
_SPEC_VERSION = "phalanx-spec-1"


def spec_hash(task: Task) -> str:
    """A stable sha256 of what defines what a task does, as 64 hex digits.

    Covered: the action (a shell string, an argv list, or a callable's module, name and
    code, with its args and kwargs), env, cwd, deps, resources, timeout, retry settings
    and rate limits. Not covered: priority, tags, cost, group - they change when it runs,
    not what it does. Editing a task's command changes its hash, so a resume runs it again.

    A callable's arguments count by ``repr``: one that shows an address changes every run
    (the task always runs again, the safe side); one that elides its content (a large
    array) may hide a change.
    """
    retry = task.retry
    spec = {
        "action": _action_spec(task),
        "env": sorted(task.env.items()),
        "cwd": task.cwd,
        "deps": sorted(task.deps),
        "resources": sorted(task.requests.items()),
        "timeout": task.timeout or None,  # 0 and None both mean none, once a run's default is applied
        "retry": {
            "count": retry.count,
            "backoff": retry.backoff,
            "initial": retry.initial,
            "max": retry.max,
            "jitter": retry.jitter,
            "on_exit_codes": None if retry.on_exit_codes is None else sorted(retry.on_exit_codes),
            "on_exceptions": None if retry.on_exceptions is None else [_name(kind) for kind in retry.on_exceptions],
            "on_statuses": None if retry.on_statuses is None else sorted(retry.on_statuses),
            "max_retry_after": retry.max_retry_after,
        },
        "limiter": list(task.limiter),
        "limiter_key": task.limiter_key,
        "tokens": task.tokens,
    }
    text = json.dumps([_SPEC_VERSION, spec], sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def spec_hashes(graph: Graph) -> dict[str, str]:
    """Every task's `spec_hash`, by id (what `JournalSink` wants)."""
    return {task.id: spec_hash(task) for task in graph}


def _action_spec(task: Task) -> dict[str, Any]:
    action = task.action
    if isinstance(action, str):
        return {"shell": action}
    if not callable(action):
        return {"argv": list(action)}
    return {
        "callable": _callable_spec(action),
        "args": [repr(arg) for arg in task.args],
        "kwargs": sorted((key, repr(value)) for key, value in task.kwargs.items()),
    }


def _callable_spec(action: Callable[..., Any]) -> Any:
    if isinstance(action, functools.partial):
        return {
            "partial": _callable_spec(action.func),
            "args": [repr(arg) for arg in action.args],
            "kwargs": sorted((key, repr(value)) for key, value in action.keywords.items()),
        }
    function = getattr(action, "__func__", action)  # a bound method: its function
    if hasattr(function, "__qualname__"):  # a function, a builtin, a class
        return {
            "name": _name(function),
            "code": _code_digest(function.__code__) if hasattr(function, "__code__") else None,
            "defaults": repr(getattr(function, "__defaults__", None)),
        }
    # An object with __call__: its class's code, and its state as its repr shows it (the
    # default repr shows an address: such a task always runs again, the safe side).
    call = getattr(type(action).__call__, "__code__", None)
    return {"name": _name(type(action)), "code": None if call is None else _code_digest(call), "repr": repr(action)}


def _name(thing: Any) -> str:
    return f"{getattr(thing, '__module__', '?')}.{getattr(thing, '__qualname__', repr(thing))}"


def _code_digest(code: Any) -> str:
    """A digest of a code object: its bytecode, constants (nested functions' code included)
    and names, so that editing a function's body changes it; line numbers do not count."""
    digest = hashlib.sha256(code.co_code)
    for const in code.co_consts:
        digest.update(_code_digest(const).encode() if hasattr(const, "co_code") else repr(const).encode())
        digest.update(b"\0")
    digest.update(repr((code.co_names, code.co_varnames, code.co_freevars)).encode())
    return digest.hexdigest()


# ---------------------------------------------------------------------------- resuming


def plan_resume(journal: Journal, file_key: str, graph: Graph) -> ResumePlan:
    """What resuming the runs of task file ``file_key`` does with ``graph`` (the file as it is now).

    A task is done when its latest record among those runs is ``succeeded`` and its spec
    hash is unchanged; each task's own latest record counts (not only the latest run's),
    because a resumed run holds only what was left to do. Every other task runs, and so
    does everything that depends on one that runs: it would otherwise keep a result made
    from what that dependency gave before.

    Leftovers are the process groups recorded as running in runs of this file that never
    finished and whose phalanx process is gone (one still alive is another run going on,
    whose processes are not ours to kill).
    """
    graph.validate()
    latest = journal.latest_tasks(file_key)
    hashes = spec_hashes(graph)
    reasons: dict[str, str] = {}
    done: set[str] = set()
    for tid in graph.topological_order():
        task = graph[tid]
        record = latest.get(tid)
        if record is None:
            reasons[tid] = "it never ran"
        elif record.status in (RUNNING, LOST):
            reasons[tid] = f"run {record.run_id} stopped before it ended"
        elif record.status != _SUCCEEDED:
            reasons[tid] = f"it ended {record.status} in run {record.run_id}"
        elif record.spec_hash != hashes[tid]:
            reasons[tid] = f"its definition changed since run {record.run_id}"
        elif (rerun := next((dep for dep in task.deps if dep not in done), None)) is not None:
            reasons[tid] = f"its dependency {rerun!r} runs again"
        else:
            done.add(tid)
    leftovers: list[Leftover] = []
    crashed: list[str] = []
    for run_id, runner_pid, runner_started in journal.unfinished_runs(file_key):
        if runner_pid is not None and _same_process(runner_pid, runner_started, alive=True):
            continue  # still going (or this very process): not crashed
        crashed.append(run_id)
        leftovers.extend(journal.running_attempts(run_id))
    todo = tuple(tid for tid in graph.ids if tid not in done)
    return ResumePlan(
        done=frozenset(done),
        todo=todo,
        reasons=MappingProxyType({tid: reasons[tid] for tid in graph.ids if tid in reasons}),
        leftovers=tuple(leftovers),
        crashed_runs=tuple(crashed),
        spec_hashes=MappingProxyType({tid: hashes[tid] for tid in todo}),
    )


def crashed_runs(journal: Journal, *, kind: str) -> tuple[tuple[str, ...], tuple[Leftover, ...]]:
    """The runs of ``kind`` without a task file (``phalanx map``'s) that never finished and
    whose phalanx is gone, and the process groups they have as running: what ``--resume``
    stops (`kill_leftovers`) and then records as crashed (`Journal.mark_crashed`).
    `plan_resume` does the same for the runs of a task file."""
    rows = journal.query(
        "SELECT id, runner_pid, runner_started FROM runs WHERE kind = ? AND file IS NULL AND status = ? ORDER BY seq",
        (kind, RUNNING),
    )
    crashed: list[str] = []
    leftovers: list[Leftover] = []
    for run_id, runner_pid, runner_started in rows:
        if runner_pid is not None and _same_process(runner_pid, runner_started, alive=True):
            continue  # still going (another map in this folder): not crashed
        crashed.append(str(run_id))
        leftovers.extend(journal.running_attempts(str(run_id)))
    return tuple(crashed), tuple(leftovers)


#: How far apart two create times of "the same" process may be, in seconds. psutil derives
#: them from the same clock ticks since boot, so they agree exactly; this only absorbs float
#: rounding, never a different process.
_SAME_START = 1e-3


def _same_process(pid: int, started: float | None, *, alive: bool = False) -> bool:
    """Whether process ``pid`` exists and started at ``started`` (with ``alive``: and has not
    exited; a zombie nobody reaped yet has, though its group may live on)."""
    import psutil

    if started is None:
        return False
    try:
        process = psutil.Process(pid)
        if abs(process.create_time() - started) > _SAME_START:
            return False
        return not alive or process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def kill_leftovers(entries: Iterable[Leftover], *, grace: float = 2.0) -> list[int]:
    """Stop the process groups a killed run left running; the group ids signalled.

    A group is signalled only if its leader still exists with the very start time recorded
    when it was spawned, and still leads that group: pids (and so group ids) are reused,
    and an unrelated process that got the number since must not be touched. Those groups
    get SIGTERM, up to ``grace`` seconds for their leaders to exit, then SIGKILL, which
    also reaches members that outlived their leader (the kernel does not hand out a group
    id again while the group has members).
    """
    signalled: list[Leftover] = []
    for entry in entries:
        if not _same_process(entry.pid, entry.leader_started):
            continue
        try:
            if os.getpgid(entry.pid) != entry.pgid:
                continue  # it left the group we recorded: not ours to judge
            os.killpg(entry.pgid, signal.SIGTERM)
        except OSError:
            continue
        signalled.append(entry)
    deadline = time.monotonic() + grace
    pause = 0.005
    waiting = signalled
    while waiting:
        waiting = [entry for entry in waiting if _same_process(entry.pid, entry.leader_started, alive=True)]
        left = deadline - time.monotonic()
        if not waiting or left <= 0:
            break
        # Not our children: there is nothing to wait on but the process table. A short poll, bounded.
        time.sleep(min(pause, left))
        pause = min(pause * 2, 0.05)
    for entry in signalled:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(entry.pgid, signal.SIGKILL)
    return [entry.pgid for entry in signalled]
