"""Planning a `phalanx map` run: the jobs its inputs and template make, ``--resume`` applied.

Nothing here runs anything: `JobPlan.build` reads the inputs, parses the templates, renders
each job's command and drops the jobs the joblog records as done; `gnu.run` executes the plan.
"""

from __future__ import annotations

import math
import os
import random
import shutil
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..session import make_run_dir
from .args import MapOptions, UsageError
from .inputs import InputSource, read_inputs
from .template import Template, shell_quote


@dataclass(frozen=True, slots=True)
class Job:
    """One job: its number, its arguments, and its command (None when it depends on the slot)."""

    seq: int
    args: tuple[str, ...]
    command: str | None
    no_args: bool = False  # -n0: the job has no args at all (GNU's "\0noarg")
    block: Path | None = None  # --pipe: the file holding the job's block, its stdin
    block_size: int = 0  # --pipe: the block's size in bytes (the joblog's Send column)


class JobPlan:
    """The jobs to run, as the options and inputs describe them, ``--resume`` applied; runs nothing."""

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
        self.tagstring: Template | None = None
        self.rate_key: Template | None = None  # --rate-key
        self.rate_cost: Template | None = None  # --rate-cost
        self.run_dir: Path | None = None  # --pipe: the run directory the blocks were written to

    @classmethod
    def build(cls, options: MapOptions) -> JobPlan:
        if options.pipe:
            return cls._build_pipe(options)
        sources = options.sources or [InputSource("stdin")]
        uses_stdin = any(s.kind == "stdin" or s.path == "-" for s in sources)
        if uses_stdin and sys.stdin.isatty():
            # As GNU parallel: someone who forgot ::: should not wait on a silent prompt.
            sys.stderr.write("phalanx map: warning: input is read from the terminal; press Ctrl-D to end it "
                             "(or give inputs after ::: or ::::, or pipe them in)\n")
            sys.stderr.flush()
        inputs = read_inputs(
            sources,
            stdin=sys.stdin.buffer if uses_stdin else None,
            null=options.null,
            delimiter=options.delimiter,
            colsep=options.colsep,
            csv=options.csv,
            header=options.header,
        )
        if options.results is not None and Template.parse(options.results).has_replacements:
            raise UsageError(f"--results {options.results}: replacement strings in the name are not supported")
        replace = options.replace
        env = [
            (name, Template.parse(text, names=inputs.names, replace=replace))
            for name, text in options.env
            if text is not None
        ]
        if options.command:
            # The arguments are appended only when nothing uses them: a per-job variable
            # such as --env ACTIVE_GREMLIN={} uses them as much as the command would.
            uses_args = any(t.has_replacements for _, t in env)
            template = Template.parse(
                " ".join(options.command), names=inputs.names, append_args=not uses_args, replace=replace,
                context_replace=options.context_replace,
            )
        else:
            # No command: each input is itself a command line, as in GNU parallel.
            template = Template.parse("{}", names=inputs.names, context_replace=options.context_replace)
        tagstring = None
        if options.tagstring is not None:
            tagstring = Template.parse(options.tagstring, names=inputs.names, replace=replace)
        quote = bool(options.command)
        rows = inputs.rows
        no_args = options.max_args == 0
        if options.context_replace:
            rows = _fill_lines(template, rows, options.max_args, quote=quote, slots=_slot_count(options, len(rows)))
        elif options.max_args is not None and options.max_args > 1:
            rows = [_flat(rows[i : i + options.max_args]) for i in range(0, len(rows), options.max_args)]
        elif no_args:
            rows = [() for _ in rows]
        jobs = [
            Job(seq, row, None if template.uses_slot else template.render(row, seq=seq, quote=quote, no_args=no_args),
                no_args)
            for seq, row in enumerate(rows, 1)
        ]
        if options.shuf:
            random.shuffle(jobs)
        plan = cls(options, template, env, jobs, inputs.names, max((len(r) for r in rows), default=0))
        plan.tagstring = tagstring
        plan.rate_key = None if options.rate_key is None else Template.parse(options.rate_key, names=inputs.names,
                                                                             replace=replace)
        plan.rate_cost = None if options.rate_cost is None else Template.parse(options.rate_cost, names=inputs.names,
                                                                               replace=replace)
        if options.resume and options.joblog and Path(options.joblog).exists():
            plan.jobs = plan.not_yet_done(Path(options.joblog))
        plan.check_costs()
        return plan

    def limits_of(self, job: Job) -> tuple[str, float]:
        """A job's rate-limit key (``--rate-key``) and its cost on ``--rate-tokens`` (``--rate-cost``)."""
        key = "" if self.rate_key is None else self._text(self.rate_key, job)
        if self.rate_cost is None:
            return key, 1.0
        text = self._text(self.rate_cost, job)
        try:
            cost = float(text)
        except ValueError:
            cost = math.nan
        if not 0 < cost < math.inf:
            raise UsageError(f"--rate-cost {self.options.rate_cost}: job {job.seq} costs {text!r}, "
                             "not a positive number")
        return key, cost

    def check_costs(self) -> None:
        """Every job's ``--rate-cost`` is a number that fits ``--rate-tokens``, before any job runs."""
        limit = self.options.rate_tokens
        if self.rate_cost is None or limit is None:
            return
        for job in self.jobs:
            _, cost = self.limits_of(job)
            if cost > limit.rate.limit:
                raise UsageError(f"--rate-cost {self.options.rate_cost}: job {job.seq} costs {cost:g}, more than "
                                 f"--rate-tokens {limit.rate} allows in one period: it could never run")

    def _text(self, template: Template, job: Job) -> str:
        return template.render(job.args, seq=job.seq, quote=False, no_args=job.no_args)

    @classmethod
    def _build_pipe(cls, options: MapOptions) -> JobPlan:
        """``--pipe``: one job per block of standard input, the block its stdin.

        Standard input is read as it comes, a block at a time, each block written at once
        to its own file in the run directory (``run_dir``), so memory holds about one block
        (two while a record longer than the block is read), whatever the input's size; the
        jobs start once the input has ended. With ``--dry-run`` the blocks are only counted.
        """
        if sys.stdin.isatty():
            sys.stderr.write("phalanx map: warning: input is read from the terminal; press Ctrl-D to end it\n")
            sys.stderr.flush()
        replace = options.replace
        env = [(name, Template.parse(text, replace=replace)) for name, text in options.env if text is not None]
        template = Template.parse(" ".join(options.command), append_args=False, replace=replace)
        tagstring = Template.parse(options.tagstring, replace=replace) if options.tagstring is not None else None
        blocks = split_blocks(
            lambda size: os.read(sys.stdin.fileno(), size),
            options.block_size,
            records=options.max_args or None,
            recstart=options.recstart or "",
            recend=options.recend if options.recend is not None else "\n",
        )
        jobs: list[Job] = []
        run_dir = None if options.dry_run else make_run_dir("phalanx-map-")
        try:
            if run_dir is not None:
                (run_dir / "stdin").mkdir(mode=0o700)
            for seq, block in enumerate(blocks, 1):
                path = None
                if run_dir is not None:
                    path = run_dir / "stdin" / f"block-{seq}"
                    _write_private(path, block)
                command = None if template.uses_slot else template.render((), seq=seq, no_args=True)
                jobs.append(Job(seq, (), command, no_args=True, block=path, block_size=len(block)))
        except OSError as error:
            shutil.rmtree(run_dir or "", ignore_errors=True)
            raise UsageError(f"--pipe: cannot keep the input's blocks: {error}") from None
        except BaseException:
            shutil.rmtree(run_dir or "", ignore_errors=True)
            raise
        if options.shuf:
            random.shuffle(jobs)
        plan = cls(options, template, env, jobs, None, 0)
        plan.tagstring = tagstring
        plan.run_dir = run_dir
        if options.resume and options.joblog and Path(options.joblog).exists():
            plan.jobs = plan.not_yet_done(Path(options.joblog))
        return plan

    def action_of(self, job: Job, *, slot: int | None) -> str:
        """The command line the shell runs: `command_of`, with ``--pipe``'s block as its stdin."""
        command = self.command_of(job, slot=slot)
        if job.block is None:
            return command
        return f"exec <{shell_quote(str(job.block))}; {command}"

    def command_of(self, job: Job, *, slot: int | None) -> str:
        if job.command is not None:
            return job.command
        return self.template.render(
            job.args, seq=job.seq, slot=slot, quote=bool(self.options.command), no_args=job.no_args
        )

    def environment(self, job: Job, slot: int | None) -> dict[str, str]:
        return {
            name: t.render(job.args, seq=job.seq, slot=slot, quote=False, no_args=job.no_args) for name, t in self.env
        }

    def not_yet_done(self, joblog: Path) -> list[Job]:
        """``--resume``: drop the jobs the joblog records (``--resume-failed``: that succeeded).

        A job is keyed on its command line as run, which holds its arguments and the
        template (GNU parallel keys on the sequence number alone, and reruns or skips the
        wrong jobs when the input changes). A template using ``{%}`` (the slot, which
        differs from run to run) falls back to the sequence number.

        The same command may be several jobs (``::: a a``): if the joblog holds it for n
        different jobs, the first n such jobs are done, not all of them.
        """
        from ..sinks.joblog import read_joblog  # here: only --resume reads the joblog

        entries = [e for e in read_joblog(joblog) if e.succeeded or not self.options.resume_failed]
        if self.template.uses_slot or self.options.pipe:  # --pipe: every job has the same command
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

    def tagger(self, slot_of: Callable[[str], int] = lambda tid: 1) -> Callable[[str], bytes] | None:
        """``--tag`` / ``--tagstring``: a job's line prefix from its task id, or None.

        ``slot_of`` tells the slot a job ran in (``{%}`` in a tagstring)."""
        tagstring = self.tagstring
        if tagstring is not None:

            def render(tid: str) -> bytes:
                job = self.by_id[tid]
                text = tagstring.render(job.args, seq=job.seq, slot=slot_of(tid), quote=False, no_args=job.no_args)
                return (text + "\t").encode("utf-8", "surrogateescape")

            return render
        if self.options.tag:
            return lambda tid: (" ".join(self.by_id[tid].args) + "\t").encode("utf-8", "surrogateescape")
        return None


def split_blocks(
    read: Callable[[int], bytes], block_size: int, *, records: int | None = None, recstart: str = "",
    recend: str = "\n",
) -> Iterator[bytes]:
    """GNU parallel's ``--pipe`` blocks (its ``spreadstdin``), read with ``read(n)`` as they come.

    Reads fill the buffer up to a multiple of ``block_size``; a block is then everything up
    to the last record end (``recend`` followed by ``recstart``) in the buffer, the rest
    kept for the next block, so a block is at most ``block_size`` bytes when its records
    fit. A buffer with no record end grows (``block_size`` * 1.3 + 1, with GNU's warning).
    With ``records`` (``-N``), a block is that many records, whatever its size. What is left
    at the end of the input is the last block.
    """
    end = recend.encode("utf-8", "surrogateescape")
    separator = end + recstart.encode("utf-8", "surrogateescape")
    buffer = bytearray()
    while True:
        written = False
        wanted = block_size - len(buffer) % block_size
        while True:
            data = read(wanted)
            buffer += data
            wanted -= len(data)
            if not (wanted and data):
                break
        eof = not data
        if records:
            while buffer:
                at = _nth_index(buffer, separator, records)
                if at == -1:
                    break
                at += len(end)
                if at == 0:
                    break
                yield bytes(buffer[:at])
                del buffer[:at]
                written = True
        elif not eof:
            at = buffer.rfind(separator)
            if at != -1 and at + len(end) > 0:
                at += len(end)
                yield bytes(buffer[:at])
                del buffer[:at]
                written = True
        if eof:
            break
        if not written and block_size < 2**31 - 1:
            old, block_size = block_size, min(-(-(block_size * 13) // 10) + 1, 2**31 - 1)
            sys.stderr.write(f"phalanx map: warning: A record was longer than {old}. "
                             f"Increasing to --blocksize {block_size}.\n")
    if buffer:
        yield bytes(buffer)


def _nth_index(buffer: bytearray, needle: bytes, n: int) -> int:
    """Where the ``n``th ``needle`` in ``buffer`` starts, or -1 (GNU's ``nindex``)."""
    at = 0  # as GNU's: the search starts at 1, so a needle at 0 is not counted
    for _ in range(n):
        at = buffer.find(needle, at + 1)
        if at == -1:
            return -1
    return at


def _write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to a new file only this user can read; never through a planted link."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with open(fd, "wb") as out:
        out.write(data)


#: GNU parallel's usable command line length: (``--max-line-length-allowed`` - 3000) / 2,
#: with Linux's 131072-byte argument limit less what GNU keeps back (130329).
MAX_LINE_LENGTH = (130329 - 3000) // 2


def _flat(rows: Sequence[tuple[str, ...]]) -> tuple[str, ...]:
    return tuple(value for row in rows for value in row)


def _slot_count(options: MapOptions, jobs: int) -> int:
    from .run import worker_count

    return worker_count(options.jobs, jobs)


def _fill_lines(
    template: Template, rows: list[tuple[str, ...]], max_args: int | None, *, quote: bool, slots: int
) -> list[tuple[str, ...]]:
    """``-X``: as many records per job as fit in GNU's command line length (at most
    ``max_args``); when the last job would take all that is left, what is left is spread
    evenly over the job slots, as GNU parallel does (``-X -j2 echo ::: a b c``: ``a b``, ``c``).

    A job's length is the rendered length of its first record plus, for each further
    record, what one more such record adds (GNU's own estimate is close to this).
    """
    jobs: list[tuple[str, ...]] = []
    limit = max_args if max_args else len(rows) or 1
    i = 0
    spread = False
    while i < len(rows):
        job = [rows[i]]
        length = len(template.render(rows[i], seq=1, slot=1, quote=quote))
        i += 1
        while i < len(rows) and len(job) < limit:
            one = len(template.render(rows[i], seq=1, slot=1, quote=quote))
            two = len(template.render(rows[i] + rows[i], seq=1, slot=1, quote=quote))
            if length + two - one >= MAX_LINE_LENGTH:
                break
            length += two - one
            job.append(rows[i])
            i += 1
        if i >= len(rows) and not spread and len(job) > 1:
            spread = True  # GNU: at the end of the input, spread the last job's records over the slots
            limit = -(-len(job) // slots)
            jobs += [_flat(job[k : k + limit]) for k in range(0, len(job), limit)]
            break
        jobs.append(_flat(job))
    return jobs
