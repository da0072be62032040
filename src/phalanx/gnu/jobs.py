"""Planning a `phalanx map` run: the jobs its inputs and template make, ``--resume`` applied.

Nothing here runs anything: `JobPlan.build` reads the inputs, parses the templates, renders
each job's command and drops the jobs the joblog records as done; `gnu.run` executes the plan.
"""

from __future__ import annotations

import random
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..sinks.joblog import read_joblog
from .args import MapOptions, UsageError
from .inputs import InputSource, read_inputs
from .template import Template


@dataclass(frozen=True, slots=True)
class Job:
    """One job: its number, its arguments, and its command (None when it depends on the slot)."""

    seq: int
    args: tuple[str, ...]
    command: str | None
    no_args: bool = False  # -n0: the job has no args at all (GNU's "\0noarg")


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

    @classmethod
    def build(cls, options: MapOptions) -> JobPlan:
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
        if options.resume and options.joblog and Path(options.joblog).exists():
            plan.jobs = plan.not_yet_done(Path(options.joblog))
        return plan

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
