"""Running a `phalanx map` plan: jobs as tasks on the scheduler and the command backend.

Every job is a task: its command rendered from the template and its arguments, run in its
own process group, its output captured to files and printed grouped (or in order with
``-k``). The joblog, the results file and the progress bar are sinks; ``--halt`` and
``--timeout N%`` are rules the scheduler applies (`GnuHalt`, `GnuTimeout`).

The run is recorded in the run journal of the current directory (``.phalanx/``), each job
a task, so that ``phalanx runs``, ``show`` and ``history`` know it (`MapJournal`); its
records are committed in batches, since a commit per job would cost about as much as a
short job, and ``--resume`` reads the joblog, not the journal.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import shutil
import signal
import stat
import sys
from bisect import insort
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, TextIO

from ..backends.base import Attempt, Backend, Outcome
from ..backends.command import CommandBackend
from ..backends.outputs import OutputFiles
from ..errors import PhalanxError
from ..events import Event, RunCancelling, RunFinished, RunStarted, Sink, TaskFinished
from ..guard import TaskGuard
from ..limits import NO_LIMITS, Limits
from ..model import Graph, RetryPolicy, Task
from ..policy import HaltDecision
from ..results import CancelReason, RunReport, Status, TaskResult
from ..scheduler import FAILED_FOR_GOOD
from ..session import make_run_dir, run_session
from ..workers import optimal_workers
from .args import Halt, MapOptions
from .jobs import JobPlan
from .output import MapOutput

if TYPE_CHECKING:
    from ..autoscale import Scaling
    from ..journal import Journal, JournalSink
    from ..ratelimit import Limiters
    from ..redact import Redaction
    from ..sinks.joblog import RecordFile, StreamRecords
    from ..sinks.results import JobInfo

EXIT_USAGE = 255
EXIT_BROKEN_PIPE = 128 + 13  # as a process killed by SIGPIPE

#: SIGTERM to a stopped job's process group, then SIGKILL this much later. GNU parallel's
#: default --termseq (TERM,200,TERM,100,TERM,50,KILL,25) also ends within about 0.4 s.
GRACE_SECONDS = 0.4

#: How often the journal commits what the run's jobs did (`JournalSink`'s ``commit_every``):
#: a kill -9 loses at most this long's records, and a commit costs about one short job.
JOURNAL_COMMIT_SECONDS = 0.1


def usage_error(error: PhalanxError | OSError) -> int:
    sys.stderr.write(f"phalanx map: {error}\n")
    return EXIT_USAGE


def unwritable(error: OSError) -> int:
    """An output that cannot be written (a full disk, a file-size limit, no permission): one line naming it."""
    where = "standard output" if error.filename is None else error.filename
    sys.stderr.write(f"phalanx map: cannot write {where}: {error.strerror or error}\n")
    return EXIT_USAGE


def worker_count(spec: str | None, jobs: int) -> int:
    """``-j``: N, +N (CPUs + N), -N (CPUs - N), N% (of CPUs), 0 (one per job); phalanx's own
    ``auto`` and ``auto:N``: their most jobs at once (`phalanx.autoscale.AutoJobs`)."""
    if spec is not None and spec.startswith("auto"):
        from ..autoscale import parse_auto

        auto = parse_auto(spec)
        assert auto is not None  # the parser let only auto and auto:N through
        return auto.resolve()
    cpus = optimal_workers("commands").count
    if spec is None:
        return cpus
    if spec.endswith("%"):
        return max(1, math.floor(cpus * float(spec[:-1]) / 100))
    if spec.startswith("+"):
        return cpus + int(spec[1:])
    if spec.startswith("-"):
        return max(1, cpus - int(spec[1:]))
    return int(spec) if int(spec) > 0 else max(1, jobs)


def scaling_of(options: MapOptions) -> Scaling | None:
    """``-j auto``, ``--load`` and ``--memfree`` as the run's `phalanx.autoscale.Scaling`;
    None when the number of jobs at once stays put (nothing of it is imported then)."""
    auto = options.jobs is not None and options.jobs.startswith("auto")
    if not auto and options.load is None and options.memfree is None:
        return None
    from ..autoscale import Scaling

    return Scaling(auto=auto, load=options.load, memfree=options.memfree)


def _limiters(options: MapOptions, workers: int) -> tuple[Limiters | None, tuple[str, ...]]:
    """``--rate`` and ``--rate-tokens`` as the run's rate limits, and the names every job uses."""
    limits = {name: limit for name, limit in (("--rate", options.rate), ("--rate-tokens", options.rate_tokens))
              if limit is not None}
    if not limits:
        return None, ()
    from ..ratelimit import Limiters  # here: phalanx map's start-up never pays for it

    return Limiters(limits, max_window=workers), tuple(limits)


class MapRun:
    """One execution of a `JobPlan`: sinks, backend, rules, and GNU parallel's exit status."""

    def __init__(self, plan: JobPlan, *, command_line: str = "phalanx map") -> None:
        self.plan = plan
        self.options: MapOptions = plan.options
        self.command_line = command_line  # as the journal shows it
        self.slots: dict[str, int] = {}  # task id -> the slot its last attempt ran in, for {%}
        self.output: MapOutput | None = None
        self.redaction: Redaction | None = None  # --redact: secrets masked in what phalanx writes

    def _slot_of(self, task_id: str) -> int:
        return self.slots.get(task_id, 1)

    def run(self) -> int:
        """Run every job of the plan; returns GNU parallel's exit status."""
        plan, options = self.plan, self.options
        workers = worker_count(options.jobs, len(plan.jobs))
        run_dir = plan.run_dir or make_run_dir("phalanx-map-")  # --pipe: the blocks are there
        halt = GnuHalt(options.halt, len(plan.jobs))
        timeout = GnuTimeout(options.timeout)
        self.redaction = _redaction(options.redact)
        try:
            sinks = self._sinks(str(run_dir))
        except (OSError, PhalanxError) as error:
            shutil.rmtree(run_dir, ignore_errors=True)
            return unwritable(error) if isinstance(error, OSError) else usage_error(error)
        # GNU's --retries N is N attempts in all, each retried at once (a backoff of 0).
        retry = RetryPolicy(count=options.retries - 1, initial=0)
        limiters, names = _limiters(options, workers)
        limits = Limits(max_output=options.max_output) if options.max_output else NO_LIMITS
        tasks = []
        for job in plan.jobs:
            key, cost = plan.limits_of(job) if names else ("", 1.0)
            tasks.append(Task(
                str(job.seq),
                plan.action_of(job, slot=None) if job.command is not None else plan.template.text,
                env=plan.environment(job, None) if not plan.dynamic else {},
                retry=retry,
                timeout=timeout.fixed,
                limiter=names,
                limiter_key=key,
                tokens=cost,
                limits=limits,
            ))

        journal = None if options.no_journal else MapJournal.open(self.plan, self._masked(self.command_line))
        if journal is not None:
            if options.resume:
                journal.stop_leftovers()  # before any job runs again
            sinks.append(journal)  # last: the output and the joblog hear of a job first
        # Nothing a job starts outlives the run: not a daemon, not after a kill -9 of phalanx.
        guard = TaskGuard.for_command_line(grace=GRACE_SECONDS)
        guard.temporary_dir(run_dir)
        redaction = self.redaction
        if redaction is not None:
            from ..sinks.results import DirectoryResults  # here: only --redact and --results load it

            # The jobs' own output (printed, or in --results DIR's files) is theirs, as in GNU
            # parallel; what phalanx writes about them (joblog, records, journal, warnings) is masked.
            sinks = [sink if isinstance(sink, MapOutput | _ReaderGone | DirectoryResults) else redaction.wrap(sink)
                     for sink in sinks]

        async def run_jobs() -> RunReport:
            spawned = None if journal is None else journal.attempt_spawned
            # No marker line where --max-output cuts: standard output holds the job's own bytes only.
            nonlocal workers
            inner: Backend
            if options.backend != "local":
                from ..backends.cluster import open_cluster_backend

                inner = await open_cluster_backend(options.backend, options.scheduler, tasks, grace=GRACE_SECONDS,
                                                   max_workers=workers if options.jobs is not None else None)
                if options.jobs is None:
                    workers = inner.cluster.slots
            else:
                inner = CommandBackend(grace=GRACE_SECONDS, on_spawn=spawned, cut_marker=False, guard=guard,
                                       outputs=self._output_files())
            backend = _MapBackend(self, inner)
            return await run_session(
                Graph(tasks),
                backend_for=lambda task: backend,
                close_backends=backend.aclose,
                max_workers=workers,
                sinks=sinks,
                log_dir=run_dir,
                handle_signals=True,
                halt=halt if options.halt.when != "never" else None,
                start_interval=options.delay,
                timeout_for=timeout if timeout.percent is not None else None,
                limiters=limiters,
                scaling=scaling_of(options),
            )

        try:
            report = asyncio.run(run_jobs())
        except PhalanxError as error:  # the cluster: unreachable, or no worker for a job
            return usage_error(error)
        except OSError as error:  # a sink could not write (a full disk, a file-size limit)
            return unwritable(error)
        except ValueError as error:  # a file where a folder goes
            sys.stderr.write(f"phalanx map: {error}\n")
            return EXIT_USAGE
        finally:
            if journal is not None:
                journal.close()  # the session has closed it already, unless it never ran
            if redaction is not None:
                redaction.close()
            shutil.rmtree(run_dir, ignore_errors=True)
            guard.close()  # after the run directory is gone: the watchdog need not remove it
        return self._exit_status(report, halt)

    def _passed_through(self) -> tuple[int | None, int | None]:
        """The streams jobs write straight to phalanx's own (not captured), as xargs does:
        both with ``-u`` (GNU's "ungrouped": as it comes); one that goes to ``/dev/null``,
        where nothing reads what it would keep (``--results`` and the joblog's byte count do)."""
        options = self.options
        if options.results is not None:
            return None, None
        if options.ungroup:
            return _fileno(sys.stdout), _fileno(sys.stderr)
        out = _fileno(sys.stdout) if options.joblog is None and _is_devnull(sys.stdout) else None
        err = _fileno(sys.stderr) if _is_devnull(sys.stderr) else None
        return out, err

    def _output_files(self) -> OutputFiles:
        """Where jobs write (see `_reuses_files`), and what goes straight through."""
        stdout_to, stderr_to = self._passed_through()
        return OutputFiles(reuse=self._reuses_files(), stdout_to=stdout_to, stderr_to=stderr_to)

    def _reuses_files(self) -> bool:
        """Whether a slot's output files serve all its jobs (`MapOutput` copies out what
        ``-k`` holds back); not for ``--line-buffer``, which reads each job's files by name as
        they grow, nor with ``--redact``, whose masked copies are known by the file's name."""
        return not self._line_buffered() and not self.options.redact

    def _line_buffered(self) -> bool:
        """Whether job output is printed from the files as it grows (``--line-buffer``; ``-u``
        when its output cannot go straight through)."""
        options = self.options
        return options.line_buffer or (options.ungroup and self._passed_through()[0] is None)

    def _sinks(self, run_dir: str) -> list[Sink]:
        """The output, joblog, results and progress sinks (closed again if one cannot be made)."""
        options = self.options
        sinks: list[Sink] = []
        if options.results is None:
            # As GNU parallel: with --results, the output goes there and is not printed.
            # -u: as GNU, the output as it comes, in no order and untagged, whatever -k and --tag say.
            ungroup = options.ungroup
            order = [job.seq for job in self.plan.jobs] if options.keep_order and not ungroup else None
            reader_gone = _ReaderGone()
            self.output = MapOutput(
                sys.stdout.buffer, sys.stderr.buffer, seq_of=self._seq_of, order=order,
                tag=None if ungroup else self.plan.tagger(self._slot_of),
                line_buffer=self._line_buffered(), ungroup=ungroup, run_dir=run_dir,
                on_broken_pipe=reader_gone, halt_now=options.halt.when == "now",
                spool_dir=run_dir if self._reuses_files() else None,
            )
            sinks += [reader_gone, self.output]
        sinks.append(JobWarnings(sys.stderr, self._command_of))
        try:
            # The results sink before the joblog: a job the joblog records (and --resume
            # skips) always has its results record, even if phalanx is killed between the two.
            if options.results is not None:
                sinks.append(self._results_sink(options.results))
            if options.joblog is not None:
                # Here: only a run with --joblog loads the joblog sink.
                from ..sinks.joblog import JoblogSink, RecordFile, StreamRecords, complete_lines

                records: RecordFile | StreamRecords | _SendColumn
                if options.joblog == "-":
                    records = StreamRecords(sys.stdout.buffer)
                else:
                    path = Path(options.joblog)
                    # The sink owns the file for the whole run and closes it at the end.
                    records = RecordFile(path, append=options.resume and path.exists(), complete=complete_lines)
                if options.pipe:
                    records = _SendColumn(records, {str(job.seq): job.block_size for job in self.plan.jobs})
                sinks.append(JoblogSink(records, self._joblog_fields, header=records.empty))
            if options.bar:
                from ..sinks.progress import ProgressBar

                bar = ProgressBar(len(self.plan.jobs), workers=scaling_of(options) is not None)
                sinks.append(bar)
                if self.output is not None:
                    self.output.around_write = bar.suspended  # the bar clears its line before job output
        except BaseException:
            for sink in sinks:
                sink.close()
            raise
        return sinks

    def _results_sink(self, target: str) -> Sink:
        """``--results``: F.csv, F.tsv, F.json or F.jsonl (JSON lines; ``-.csv`` etc. is
        standard output), else a directory."""
        # Here: phalanx map's start-up never pays for the results sinks (csv, json, hashlib).
        from ..sinks.joblog import RecordFile, StreamRecords, complete_lines
        from ..sinks.results import CsvResults, DirectoryResults, JsonlResults, complete_csv_records

        path = Path(target)
        append = self.options.resume and path.exists()
        kind = target.lower().rsplit(".", 1)[-1] if "." in Path(target).name else ""
        if kind not in ("csv", "tsv", "json", "jsonl"):
            return DirectoryResults(path, self._info)
        records: RecordFile | StreamRecords
        if Path(target).name == f"-.{kind}" and "/" not in target:
            records = StreamRecords(sys.stdout.buffer)
        elif kind in ("csv", "tsv"):
            delimiter = "\t" if kind == "tsv" else ","
            records = RecordFile(path, append=append, complete=lambda data: complete_csv_records(data, delimiter))
        else:
            records = RecordFile(path, append=append, complete=complete_lines)
        if kind in ("csv", "tsv"):
            return CsvResults(records, self._info, self.plan.arity, delimiter="\t" if kind == "tsv" else ",")
        return JsonlResults(records, self._info)

    def _seq_of(self, task_id: str) -> int:
        return self.plan.by_id[task_id].seq

    def _masked(self, text: str) -> str:
        return text if self.redaction is None else self.redaction.redactor.text(text)

    def _command_of(self, result: TaskResult) -> str:
        job = self.plan.by_id[result.task_id]
        return self._masked(self.plan.command_of(job, slot=result.worker))

    def _joblog_fields(self, result: TaskResult) -> tuple[int, str]:
        job = self.plan.by_id[result.task_id]
        return job.seq, self._masked(self.plan.command_of(job, slot=result.worker))

    def _info(self, result: TaskResult) -> JobInfo:
        from ..sinks.results import JobInfo  # loaded by then: only the --results sinks call this

        job = self.plan.by_id[result.task_id]
        args = job.args if self.redaction is None else tuple(map(self._masked, job.args))
        return JobInfo(job.seq, args, self._masked(self.plan.command_of(job, slot=result.worker)), self.plan.names)

    def _exit_status(self, report: RunReport, halt: GnuHalt) -> int:
        if self.output is not None and self.output.broken_pipe:
            return EXIT_BROKEN_PIPE
        cancelled_by = report.summary.cancelled_by
        if cancelled_by is CancelReason.INTERRUPT:
            return 130
        if cancelled_by is CancelReason.TERMINATE:
            return 143
        if halt.exit_status is not None:
            return halt.exit_status
        failed = sum(1 for r in report.results.values() if r.status in FAILED_FOR_GOOD)
        if self.options.halt.when != "never" and self.options.halt.percent:
            started = sum(1 for r in report.results.values() if r.attempts)
            return math.ceil(failed / (started or 1) * 100)
        return min(failed, 101)


class JobWarnings:
    """Says on stderr what GNU parallel says there: a job that could not start (when its own
    stderr is silent about it), a job killed by ``--timeout``, jobs stopped by ``--halt``; and
    what only phalanx does: a job whose output ``--max-output`` cut."""

    def __init__(self, stream: TextIO, command_of: Callable[[TaskResult], str]) -> None:
        self._stream = stream
        self._command_of = command_of
        self._halting = False

    def handle(self, event: Event) -> None:
        if isinstance(event, RunCancelling):
            self._halting = event.reason is CancelReason.HALT
            return
        if not isinstance(event, TaskFinished):
            return
        result = event.result
        if result.status is Status.TIMED_OUT:
            self._say(f"warning: this job was killed because it {result.reason}: {self._command_of(result)}")
        elif result.status is Status.CANCELLED and result.attempts and self._halting:
            self._say(f"warning: this job was killed by --halt: {self._command_of(result)}")
        elif result.status is Status.FAILED and not result.stderr_tail and _could_not_start(result):
            self._say(f"{result.reason}")
        if result.output_cut is not None:
            self._say(f"warning: {result.note} (--max-output): {self._command_of(result)}")

    def _say(self, text: str) -> None:
        try:
            self._stream.write(f"phalanx map: {text}\n")
            self._stream.flush()
        except (BrokenPipeError, ValueError):
            pass  # nobody is reading stderr any more: nothing to tell

    def close(self) -> None:
        return None


def _fileno(stream: TextIO) -> int | None:
    try:
        return stream.fileno()
    except (OSError, ValueError):  # not a real file (a test's StringIO): capture it
        return None


def _is_devnull(stream: TextIO) -> bool:
    """Whether ``stream`` writes to ``/dev/null`` (the device itself, however it was opened)."""
    fd = _fileno(stream)
    if fd is None:
        return False
    try:
        mine, null = os.fstat(fd), os.stat(os.devnull)
    except OSError:
        return False
    return stat.S_ISCHR(mine.st_mode) and mine.st_rdev == null.st_rdev


def _redaction(names: list[str]) -> Redaction | None:
    """``--redact``: the values of phalanx's environment the names match, masked (the values
    of ``--env NAME=TEMPLATE`` come from the job's arguments, which the command shows anyway)."""
    if not names:
        return None
    from ..redact import Redaction, Redactor

    redactor, warnings = Redactor.from_environment(names, [os.environ])
    for warning in warnings:
        _warn(warning)
    return Redaction(redactor) if redactor else None


def _could_not_start(result: TaskResult) -> bool:
    reason = result.reason or ""
    return result.exit_code in (126, 127) or reason.startswith(("cannot start", "command not"))


class MapJournal:
    """The run journal of a ``phalanx map`` run: a sink, and the backend's spawn hook.

    The journal in ``.phalanx/`` of the current directory (map has no task file) records the
    run (kind ``map``, its command line, no task file), each job as a task named by its
    sequence number, and each succeeded job's duration in the history under
    ``map: TEMPLATE``. A `JournalSink` that commits every `JOURNAL_COMMIT_SECONDS`.

    GNU parallel has no journal and map resumes from its joblog, so the journal must never
    change what a run does or prints: one that cannot be opened or written says so once on
    stderr and the run goes on without it (standard output never hears of it).
    """

    def __init__(self, journal: Journal, sink: JournalSink) -> None:
        self._journal: Journal | None = journal
        self._sink: JournalSink | None = sink

    @classmethod
    def open(cls, plan: JobPlan, command_line: str) -> MapJournal | None:
        """The journal of the current directory, or None (with a warning) if it cannot be opened."""
        from ..journal import Journal, JournalSink  # here: a run with --no-journal never imports SQLite

        try:
            journal = Journal.open(os.getcwd())
        except (PhalanxError, OSError) as error:
            _warn(f"running without a journal (no record for phalanx runs, no history; --no-journal skips it): "
                  f"{error}")
            return None
        key = f"map: {_decoded(plan.template.text)}"
        sink = JournalSink(
            journal, spec_hashes={}, command_line=_decoded(command_line), run_kind="map",
            history_key=lambda task_id: key, commit_every=JOURNAL_COMMIT_SECONDS,
        )
        return cls(journal, sink)

    def handle(self, event: Event) -> None:
        if self._sink is not None:
            try:
                self._sink.handle(event)
            except (PhalanxError, ValueError) as error:  # ValueError: text SQLite refuses
                self._stop(error)

    def attempt_spawned(self, run_id: str, task_id: str, attempt: int, pid: int) -> None:
        if self._sink is not None:
            try:
                self._sink.attempt_spawned(run_id, task_id, attempt, pid)
            except (PhalanxError, ValueError) as error:
                self._stop(error)

    def stop_leftovers(self) -> None:
        """``--resume``: stop the process groups that map runs killed outright in this folder
        left running (the journal has them, with each leader's start time: a group is stopped
        only if its leader is still that process), and record those runs as crashed. Their
        jobs, not in the joblog, run again."""
        from ..journal import crashed_runs, kill_leftovers

        if self._journal is None:
            return
        try:
            crashed, leftovers = crashed_runs(self._journal, kind="map")
            stopped = kill_leftovers(leftovers, grace=GRACE_SECONDS)
            self._journal.mark_crashed(crashed)
        except PhalanxError as error:
            self._stop(error)
            return
        if stopped:
            with contextlib.suppress(BrokenPipeError, ValueError):
                sys.stderr.write(f"phalanx map: stopped {len(stopped)} process group(s) a killed run left running\n")
                sys.stderr.flush()

    def close(self) -> None:
        """End the run's record (if the session has not) and close the journal; again: nothing."""
        if self._sink is not None:
            try:
                self._sink.close()
            except (PhalanxError, ValueError) as error:
                self._stop(error)
            self._sink = None
        journal, self._journal = self._journal, None
        if journal is not None:
            import sqlite3  # loaded with the journal already

            with contextlib.suppress(PhalanxError, sqlite3.Error):
                journal.close()

    def _stop(self, error: PhalanxError | ValueError) -> None:
        """The journal failed (a full disk, a lock held too long): the run goes on without it."""
        self._sink = None
        _warn(f"the journal stopped recording this run: {error}")


def _decoded(text: str) -> str:
    """A command line as text SQLite can store: an argument's bytes that are not UTF-8 (kept
    as lone surrogates, Python's ``surrogateescape``) become U+FFFD."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _warn(text: str) -> None:
    try:
        sys.stderr.write(f"phalanx map: warning: {text}\n")
        sys.stderr.flush()
    except (BrokenPipeError, ValueError):
        pass  # nobody is reading stderr any more: nothing to tell


class _ReaderGone:
    """Whoever read our output has gone (``phalanx map ... | head``): stop the run as
    SIGTERM would (every job's group stopped and reaped), print nothing more, and exit
    with the status of a process killed by SIGPIPE, as GNU parallel does.

    A sink too: the SIGTERM is only sent between RunStarted and RunFinished, while the
    runner's handler turns it into a clean stop.
    """

    def __init__(self) -> None:
        self._running = False

    def __call__(self) -> None:
        devnull = os.open(os.devnull, os.O_WRONLY)
        for stream in (sys.stdout, sys.stderr):
            os.dup2(devnull, stream.fileno())  # what is still buffered goes nowhere, quietly
        os.close(devnull)
        if self._running:
            os.kill(os.getpid(), signal.SIGTERM)

    def handle(self, event: Event) -> None:
        if isinstance(event, RunStarted | RunFinished):
            self._running = isinstance(event, RunStarted)

    def close(self) -> None:
        self._running = False


class _SendColumn:
    """``--pipe``'s joblog: the Send column is the size of the job's block, as in GNU
    parallel's (the joblog sink writes 0 there: nothing else is sent to a job)."""

    def __init__(self, records: RecordFile | StreamRecords, sizes: dict[str, int]) -> None:
        self._records = records
        self._sizes = sizes

    @property
    def empty(self) -> bool:
        return self._records.empty

    @property
    def scratch_dir(self) -> str:
        return self._records.scratch_dir

    def write(self, record: bytes) -> None:
        fields = record.split(b"\t", 5)
        if len(fields) == 6 and fields[4] == b"0" and fields[0].decode("ascii", "replace") in self._sizes:
            fields[4] = str(self._sizes[fields[0].decode("ascii")]).encode()
            record = b"\t".join(fields)
        self._records.write(record)

    def write_file(self, source: BinaryIO) -> None:
        self._records.write_file(source)

    def close(self) -> None:
        self._records.close()


class _MapBackend:
    """The command backend, with each job's command and environment rendered for its slot
    when the template uses ``{%}`` (the slot is known only when the job starts)."""

    def __init__(self, run: MapRun, inner: Backend) -> None:
        self._run = run
        self._inner = inner

    async def run(self, attempt: Attempt) -> Outcome:
        plan = self._run.plan
        self._run.slots[attempt.task.id] = attempt.worker
        if plan.dynamic:
            job = plan.by_id[attempt.task.id]
            task = replace(
                attempt.task,
                action=plan.action_of(job, slot=attempt.worker),
                env=plan.environment(job, attempt.worker),
            )
            attempt = replace(attempt, task=task)
        return await self._inner.run(attempt)

    def stopped_outcome(self, attempt: Attempt) -> Outcome | None:
        return self._inner.stopped_outcome(attempt)

    async def aclose(self) -> None:
        await self._inner.aclose()


class GnuHalt:
    """GNU parallel's ``--halt``, with its exit status worked out when it triggers.

    The scheduler asks it about every task that ends, the last one included (GNU parallel
    applies ``--halt`` to that one too, and its exit status follows); it counts the jobs
    that ran and ended of their own accord.
    """

    def __init__(self, halt: Halt, total: int) -> None:
        self._halt = halt
        self._total = total
        self._failed = 0
        self._completed = 0
        self.exit_status: int | None = None

    def __call__(self, result: TaskResult) -> HaltDecision:
        if not result.attempts or result.status is Status.CANCELLED or self._halt.when == "never":
            return None  # never ran, or stopped by us: not a job's own end
        return self._decide(result)

    def _decide(self, result: TaskResult) -> HaltDecision:
        """GNU parallel's ``should_we_halt``."""
        self._completed += 1
        failed = result.status in FAILED_FOR_GOOD
        self._failed += failed
        why = self._halt.why
        if why == "fail" and not failed:
            return None
        if why == "success" and failed:
            return None
        limit = {"fail": self._failed, "success": self._completed - self._failed, "done": self._completed}[why]
        needed = self._total * self._halt.count / 100 if self._halt.percent else self._halt.count
        if limit < needed:
            return None
        if why == "success":
            self.exit_status = 0
        elif self.exit_status is None:
            if needed == 1:
                # As GNU: the job's own status, bash's 128 + N for a signal, -1 (255) for a timeout.
                from ..sinks.joblog import exit_columns  # here: only a --halt that triggers needs it

                exitval, signal = exit_columns(result)
                self.exit_status = (exitval or (signal + 128 if signal else 0)) % 256
            elif self._halt.percent:
                self.exit_status = math.ceil(self._failed / (self._total or 1) * 100)
            else:
                self.exit_status = min(self._failed, 101)
        return "now" if self._halt.when == "now" else "soon"


class GnuTimeout:
    """``--timeout``: a fixed duration, or N% of the median runtime of the jobs that succeeded
    so far (no limit until one has), as GNU parallel does: the limit of a running job follows
    the median as it changes, so a job started before the first one ended is held to it too."""

    def __init__(self, spec: str | None) -> None:
        self.fixed: float | None = None
        self.percent: float | None = None
        self._runtimes: list[float] = []
        if spec is None:
            return
        if spec.endswith("%"):
            self.percent = float(spec[:-1]) / 100 or None  # GNU: 0 is no timeout
        else:
            from ..durations import parse_duration

            self.fixed = parse_duration(spec, what="--timeout") or None

    def limit(self, task: Task) -> float | None:
        """The scheduler asks at each start and after each job ends."""
        if self.percent is None or not self._runtimes:
            return self.fixed
        return self.percent * self._runtimes[(len(self._runtimes) - 1) // 2]

    def observe(self, result: TaskResult) -> None:
        if self.percent is not None and result.ok:
            insort(self._runtimes, result.duration)
