"""`phalanx map`: GNU parallel's job, on phalanx's scheduler and command backend.

Every job is a task: its command rendered from the template and its arguments (every
value shell-quoted), run in its own process group, its output captured to files and
printed grouped (or in order with ``-k``). The joblog, the results file and the progress
bar are sinks. Exit status as GNU parallel's: 0 all succeeded, 1-100 the number of failed
jobs, 101 more than 100, with ``--halt ...fail...`` the failing job's status, 255 bad usage,
130 interrupted (143 terminated, 141 when the reader of the output has gone).
"""

from __future__ import annotations

import asyncio
import math
import os
import random
import shutil
import signal
import sys
import tempfile
from bisect import insort
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from ..backends.base import Attempt, Outcome
from ..backends.command import CommandBackend
from ..errors import PhalanxError
from ..events import Event, RunFinished, RunStarted, Sink, TaskFinished
from ..model import RetryPolicy, Task
from ..results import CancelReason, RunReport, Status, TaskResult
from ..scheduler import FAILED_FOR_GOOD, HaltDecision
from ..sinks.joblog import JoblogSink, RecordFile, StreamRecords, complete_lines, exit_columns, read_joblog
from ..sinks.results import CsvResults, DirectoryResults, JobInfo, JsonlResults, complete_csv_records
from .args import Halt, MapOptions, UsageError, parse_map_args
from .inputs import InputSource, read_inputs
from .output import MapOutput
from .template import Template

EXIT_USAGE = 255
EXIT_BROKEN_PIPE = 128 + 13  # as a process killed by SIGPIPE

#: SIGTERM to a stopped job's process group, then SIGKILL this much later. GNU parallel's
#: default --termseq (TERM,200,TERM,100,TERM,50,KILL,25) also ends within about 0.4 s.
GRACE_SECONDS = 0.4

USAGE = """\
Usage: phalanx map [OPTIONS] COMMAND [ARGS...] [::: VALUES... | :::: FILES...]...

Run COMMAND once per input, in parallel, GNU parallel style. Inputs come after :::
(several groups: their product; :::+ pairs a group with the previous one), from files
after ::::, or as lines on standard input. Every value is shell-quoted.

Replacement strings: {} {.} {/} {//} {/.} {#} (job number) {%} (slot) {n} {n.} {n/}...
and {name} with --header. With none, the arguments are appended.

Options (GNU parallel's names and meanings):
  -j, --jobs N|+N|-N|N%|0   jobs at once (default: the number of CPUs; 0: one per input)
  -k, --keep-order          print output in input order
  --tag, --tagstring STR    prefix output lines with the arguments (or STR)
  --timeout DUR|N%          kill a job after DUR, or N% of the median runtime so far
  --retries N               up to N attempts in all (0: no limit)
  --halt now|soon,fail|success|done=N[%]
  --joblog FILE             GNU parallel's tab-separated job log
  --resume, --resume-failed skip jobs already in the joblog (keyed on the command run)
  --results DIR|F.csv|F.tsv|F.jsonl   one record per job, written as it ends, instead
                            of printing the output (-.csv: the records on stdout)
  --dry-run                 print the commands, run nothing
  --line-buffer             print lines as they come (default: grouped per job)
  --bar, --progress         a progress bar on stderr
  --delay DUR               at least DUR between job starts
  --env NAME=TEMPLATE       a per-job environment variable, e.g. --env ACTIVE_GREMLIN={}
  --shuf                    run the jobs in random order
  -0, --null; --colsep REGEX; --csv; --header :; -a FILE
"""


@dataclass(frozen=True, slots=True)
class Job:
    """One job: its number, its arguments, and its command (None when it depends on the slot)."""

    seq: int
    args: tuple[str, ...]
    command: str | None


def main(argv: Sequence[str]) -> int:
    """Run ``phalanx map`` and return its exit status."""
    try:
        return _main(argv)
    except KeyboardInterrupt:  # before the jobs start (reading stdin) or after they end
        return 130


def _main(argv: Sequence[str]) -> int:
    try:
        options = parse_map_args(argv)
    except UsageError as error:
        return _usage_error(error)
    if options.help:
        sys.stdout.write(USAGE)
        return 0
    if options.version:
        from .. import __version__

        sys.stdout.write(f"phalanx map (phalanx) {__version__}\n")
        return 0
    try:
        plan = _MapPlan.build(options)
    except PhalanxError as error:
        return _usage_error(error)
    if options.dry_run:
        tag = plan.tagger()
        out = sys.stdout.buffer
        for job in plan.jobs:
            prefix = tag(str(job.seq)) if tag is not None else b""
            out.write(prefix + (plan.command_of(job, slot=1) + "\n").encode("utf-8", "surrogateescape"))
        out.flush()
        return 0
    return plan.run()


def _usage_error(error: PhalanxError | OSError) -> int:
    sys.stderr.write(f"phalanx map: {error}\n")
    return EXIT_USAGE


def worker_count(spec: str | None, jobs: int) -> int:
    """``-j``: N, +N (CPUs + N), -N (CPUs - N), N% (of CPUs), 0 (one per job)."""
    from ..runner import default_workers

    cpus = default_workers()
    if spec is None:
        return cpus
    if spec.endswith("%"):
        return max(1, math.floor(cpus * float(spec[:-1]) / 100))
    if spec.startswith("+"):
        return cpus + int(spec[1:])
    if spec.startswith("-"):
        return max(1, cpus - int(spec[1:]))
    return int(spec) if int(spec) > 0 else max(1, jobs)


class _MapPlan:
    """The jobs to run and everything needed to run and report them."""

    def __init__(self, options: MapOptions, template: Template, env: list[tuple[str, Template]],
                 jobs: list[Job], names: tuple[str, ...] | None, arity: int) -> None:
        self.options = options
        self.template = template
        self.env = env
        self.jobs = jobs
        self.names = names
        self.arity = arity
        self.by_id = {str(job.seq): job for job in jobs}
        self.dynamic = template.uses_slot or any(t.uses_slot for _, t in env)
        self.slots: dict[str, int] = {}  # task id -> the slot its last attempt ran in, for {%}
        self.output: MapOutput | None = None
        self.tagstring: Template | None = None

    @classmethod
    def build(cls, options: MapOptions) -> _MapPlan:
        sources = options.sources or [InputSource("stdin")]
        uses_stdin = any(s.kind == "stdin" or s.path == "-" for s in sources)
        inputs = read_inputs(
            sources,
            stdin=sys.stdin.buffer if uses_stdin else None,
            null=options.null,
            colsep=options.colsep,
            csv=options.csv,
            header=options.header,
        )
        if options.results is not None and Template.parse(options.results).has_replacements:
            raise UsageError(f"--results {options.results}: replacement strings in the name are not supported")
        env = [(name, Template.parse(text, names=inputs.names)) for name, text in options.env if text is not None]
        if options.command:
            # The arguments are appended only when nothing uses them: a per-job variable
            # such as --env ACTIVE_GREMLIN={} uses them as much as the command would.
            uses_args = any(t.has_replacements for _, t in env)
            template = Template.parse(" ".join(options.command), names=inputs.names, append_args=not uses_args)
        else:
            # No command: each input is itself a command line, as in GNU parallel.
            template = Template.parse("{}", names=inputs.names)
        tagstring = None if options.tagstring is None else Template.parse(options.tagstring, names=inputs.names)
        rows = inputs.rows
        quote = bool(options.command)
        jobs = [
            Job(seq, row, None if template.uses_slot else template.render(row, seq=seq, quote=quote))
            for seq, row in enumerate(rows, 1)
        ]
        if options.shuf:
            random.shuffle(jobs)
        plan = cls(options, template, env, jobs, inputs.names, max((len(r) for r in rows), default=0))
        plan.tagstring = tagstring
        if options.resume and options.joblog and Path(options.joblog).exists():
            plan.jobs = plan._not_yet_done(Path(options.joblog))
        return plan

    def command_of(self, job: Job, *, slot: int | None) -> str:
        if job.command is not None:
            return job.command
        return self.template.render(job.args, seq=job.seq, slot=slot, quote=bool(self.options.command))

    def environment(self, job: Job, slot: int | None) -> dict[str, str]:
        return {name: t.render(job.args, seq=job.seq, slot=slot, quote=False) for name, t in self.env}

    def _not_yet_done(self, joblog: Path) -> list[Job]:
        """``--resume``: drop the jobs the joblog records (``--resume-failed``: that succeeded).

        A job is keyed on its command line as run, which holds its arguments and the
        template (GNU parallel keys on the sequence number alone, and reruns or skips the
        wrong jobs when the input changes). A template using ``{%}`` (the slot, which
        differs from run to run) falls back to the sequence number.

        The same command may be several jobs (``::: a a``): if the joblog holds it for n
        different jobs, the first n such jobs are done, not all of them.
        """
        entries = [e for e in read_joblog(joblog) if e.succeeded or not self.options.resume_failed]
        if self.template.uses_slot:
            done_seqs = {e.seq for e in entries}
            return [job for job in self.jobs if job.seq not in done_seqs]
        runs: dict[str, set[int]] = {}
        for entry in entries:
            runs.setdefault(entry.command, set()).add(entry.seq)  # a job logged twice (rerun) counts once
        left = {command: len(seqs) for command, seqs in runs.items()}
        done: set[int] = set()
        for job in sorted(self.jobs, key=lambda job: job.seq):
            if job.command is not None and left.get(job.command, 0) > 0:
                left[job.command] -= 1
                done.add(job.seq)
        return [job for job in self.jobs if job.seq not in done]

    # ------------------------------------------------------------------ running

    def run(self) -> int:
        options = self.options
        workers = worker_count(options.jobs, len(self.jobs))
        run_dir = tempfile.mkdtemp(prefix="phalanx-map-")
        halt = _HaltRule(options.halt, len(self.jobs))
        timeout = _TimeoutRule(options.timeout)
        try:
            sinks: list[Sink] = [halt, timeout, *self._sinks(run_dir)]
        except (OSError, PhalanxError) as error:
            shutil.rmtree(run_dir, ignore_errors=True)
            return _usage_error(error)
        retry = RetryPolicy(count=options.retries - 1)
        tasks = [
            Task(
                str(job.seq),
                job.command if job.command is not None else self.template.text,
                env=self.environment(job, None) if not self.dynamic else {},
                retry=retry,
                timeout=timeout.fixed,
            )
            for job in self.jobs
        ]
        from ..runner import run_async

        async def run_jobs() -> RunReport:
            backend = _MapBackend(self, CommandBackend(grace=GRACE_SECONDS), timeout)
            try:
                return await run_async(
                    tasks,
                    max_workers=workers,
                    backend_for=lambda task: backend,
                    sinks=sinks,
                    log_dir=run_dir,
                    handle_signals=True,
                    halt=halt if options.halt.when != "never" else None,
                    start_interval=options.delay,
                    timeout_for=timeout if timeout.percent is not None else None,
                )
            finally:
                await backend.aclose()

        try:
            report = asyncio.run(run_jobs())
        except (OSError, ValueError) as error:  # a sink could not write (disk full, a file where a folder goes)
            sys.stderr.write(f"phalanx map: {error}\n")
            return EXIT_USAGE
        finally:
            shutil.rmtree(run_dir, ignore_errors=True)
        return self._exit_status(report, halt)

    def _sinks(self, run_dir: str) -> list[Sink]:
        """The output, joblog, results and progress sinks (closed again if one cannot be made)."""
        options = self.options
        sinks: list[Sink] = []
        if options.results is None:
            # As GNU parallel: with --results, the output goes there and is not printed.
            order = [job.seq for job in self.jobs] if options.keep_order else None
            reader_gone = _ReaderGone()
            self.output = MapOutput(
                sys.stdout.buffer, sys.stderr.buffer, seq_of=self._seq_of, order=order, tag=self.tagger(),
                line_buffer=options.line_buffer, run_dir=run_dir, on_broken_pipe=reader_gone,
            )
            sinks += [reader_gone, self.output]
        try:
            # The results sink before the joblog: a job the joblog records (and --resume
            # skips) always has its results record, even if phalanx is killed between the two.
            if options.results is not None:
                sinks.append(self._results_sink(options.results))
            if options.joblog is not None:
                records: RecordFile | StreamRecords
                if options.joblog == "-":
                    records = StreamRecords(sys.stdout.buffer)
                else:
                    path = Path(options.joblog)
                    # The sink owns the file for the whole run and closes it at the end.
                    records = RecordFile(path, append=options.resume and path.exists(), complete=complete_lines)
                sinks.append(JoblogSink(records, self._joblog_fields, header=records.empty))
            if options.bar:
                from ..sinks.progress import ProgressBar

                sinks.append(ProgressBar(len(self.jobs)))
        except BaseException:
            for sink in sinks:
                sink.close()
            raise
        return sinks

    def tagger(self) -> Callable[[str], bytes] | None:
        """``--tag`` / ``--tagstring``: a job's line prefix from its task id, or None."""
        tagstring = self.tagstring
        if tagstring is not None:
            return lambda tid: (self._render_tag(tagstring, tid) + "\t").encode("utf-8", "surrogateescape")
        if self.options.tag:
            return lambda tid: (" ".join(self.by_id[tid].args) + "\t").encode("utf-8", "surrogateescape")
        return None

    def _results_sink(self, target: str) -> Sink:
        """``--results``: F.csv, F.tsv, F.json or F.jsonl (JSON lines; ``-.csv`` etc. is
        standard output), else a directory."""
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
            return CsvResults(records, self._info, self.arity, delimiter="\t" if kind == "tsv" else ",")
        return JsonlResults(records, self._info)

    def _seq_of(self, task_id: str) -> int:
        return self.by_id[task_id].seq

    def _render_tag(self, tagstring: Template, task_id: str) -> str:
        job = self.by_id[task_id]
        return tagstring.render(job.args, seq=job.seq, slot=self.slots.get(task_id, 1), quote=False)

    def _joblog_fields(self, result: TaskResult) -> tuple[int, str]:
        job = self.by_id[result.task_id]
        return job.seq, self.command_of(job, slot=result.worker)

    def _info(self, result: TaskResult) -> JobInfo:
        job = self.by_id[result.task_id]
        return JobInfo(job.seq, job.args, self.command_of(job, slot=result.worker), self.names)

    def _exit_status(self, report: RunReport, halt: _HaltRule) -> int:
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


class _MapBackend:
    """The command backend, with each job's command and environment rendered for its slot
    when the template uses ``{%}`` (the slot is known only when the job starts)."""

    def __init__(self, plan: _MapPlan, inner: CommandBackend, timeout: _TimeoutRule) -> None:
        self._plan = plan
        self._inner = inner
        self._timeout = timeout

    async def run(self, attempt: Attempt) -> Outcome:
        self._plan.slots[attempt.task.id] = attempt.worker
        if self._plan.dynamic:
            job = self._plan.by_id[attempt.task.id]
            task = replace(
                attempt.task,
                action=self._plan.command_of(job, slot=attempt.worker),
                env=self._plan.environment(job, attempt.worker),
            )
            attempt = replace(attempt, task=task)
        if self._timeout.percent is not None:
            return await _run_within(self._inner.run(attempt), self._timeout)
        return await self._inner.run(attempt)

    def stopped_outcome(self, attempt: Attempt) -> Outcome | None:
        """What a stopped job printed (the scheduler's optional hook), from the command backend."""
        return self._inner.stopped_outcome(attempt)

    async def aclose(self) -> None:
        await self._inner.aclose()


class _HaltRule:
    """GNU parallel's ``--halt``, with its exit status worked out when it triggers.

    It is a sink as well as the scheduler's halt rule: it counts every job that ran as it
    ends (the scheduler does not ask its halt rule about the last job, but GNU parallel
    applies ``--halt`` to that one too, and its exit status follows), and answers the
    scheduler with the decision it made for that job.
    """

    def __init__(self, halt: Halt, total: int) -> None:
        self._halt = halt
        self._total = total
        self._failed = 0
        self._completed = 0
        self._decisions: dict[str, HaltDecision] = {}
        self.exit_status: int | None = None

    def handle(self, event: Event) -> None:
        if (
            isinstance(event, TaskFinished)
            and event.result.attempts
            and event.result.status is not Status.CANCELLED  # stopped by us: not a job's own end
            and self._halt.when != "never"
        ):
            decision = self._decide(event.result)
            if decision is not None:
                self._decisions[event.result.task_id] = decision

    def close(self) -> None:
        return None

    def __call__(self, result: TaskResult) -> HaltDecision:
        return self._decisions.pop(result.task_id, None)

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
                exitval, signal = exit_columns(result)
                self.exit_status = (exitval or (signal + 128 if signal else 0)) % 256
            elif self._halt.percent:
                self.exit_status = math.ceil(self._failed / (self._total or 1) * 100)
            else:
                self.exit_status = min(self._failed, 101)
        return "now" if self._halt.when == "now" else "soon"


class _TimeoutRule:
    """``--timeout``: a fixed duration, or N% of the median runtime of the jobs that succeeded
    so far (no limit until one has), as GNU parallel does: the limit of a running job follows
    the median as it changes, so a job started before the first one ended is held to it too."""

    def __init__(self, spec: str | None) -> None:
        self.fixed: float | None = None
        self.percent: float | None = None
        self._runtimes: list[float] = []
        self._updated: asyncio.Future[None] | None = None
        if spec is None:
            return
        if spec.endswith("%"):
            self.percent = float(spec[:-1]) / 100 or None  # GNU: 0 is no timeout
        else:
            from ..durations import parse_duration

            self.fixed = parse_duration(spec, what="--timeout") or None

    def limit(self) -> float | None:
        """The longest a job may run now, in seconds, or None."""
        if self.percent is None or not self._runtimes:
            return self.fixed
        return self.percent * self._runtimes[(len(self._runtimes) - 1) // 2]

    def __call__(self, task: Task) -> float | None:
        return self.limit()

    def updated(self) -> asyncio.Future[None]:
        """A future that is done when the limit next changes."""
        if self._updated is None or self._updated.done():
            self._updated = asyncio.get_running_loop().create_future()
        return self._updated

    def handle(self, event: Event) -> None:
        if self.percent is not None and isinstance(event, TaskFinished) and event.result.ok:
            insort(self._runtimes, event.result.duration)
            if self._updated is not None and not self._updated.done():
                self._updated.set_result(None)

    def close(self) -> None:
        return None


async def _run_within(inner: Awaitable[Outcome], rule: _TimeoutRule) -> Outcome:
    """Run an attempt, stopping it (TimeoutError) once it has run longer than the rule's
    limit of the moment; cancelling this stops the attempt and waits until it has stopped."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    attempt = asyncio.ensure_future(inner)
    try:
        while not attempt.done():
            limit = rule.limit()
            left = None if limit is None else started + limit - loop.time()
            if left is not None and left <= 0:
                attempt.cancel()
                await _until_stopped(attempt)
                raise TimeoutError
            await asyncio.wait((attempt, rule.updated()), timeout=left, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        attempt.cancel()
        await _until_stopped(attempt)
        raise
    return attempt.result()


async def _until_stopped(attempt: asyncio.Future[Outcome]) -> None:
    """Wait for a cancelled attempt to finish stopping; a cancellation meanwhile is passed
    on to it (the backend takes a second one as "kill now") and raised at the end."""
    cancelled = False
    while not attempt.done():
        try:
            await asyncio.wait((attempt,))
        except asyncio.CancelledError:
            cancelled = True
            attempt.cancel()
    if not attempt.cancelled():
        attempt.exception()  # retrieved, so asyncio does not log it
    if cancelled:
        raise asyncio.CancelledError
