"""Planning a `phalanx map` run: the jobs its inputs and template make, ``--resume`` applied.

Nothing here runs anything: `JobPlan.build` reads the inputs, parses the templates, renders
each job's command and drops the jobs the joblog records as done; `gnu.run` executes the plan.
"""

from __future__ import annotations

import random
import sys
from collections.abc import Callable
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
            plan.jobs = plan.not_yet_done(Path(options.joblog))
        return plan

    def command_of(self, job: Job, *, slot: int | None) -> str:
        if job.command is not None:
            return job.command
        return self.template.render(job.args, seq=job.seq, slot=slot, quote=bool(self.options.command))

    def environment(self, job: Job, slot: int | None) -> dict[str, str]:
        return {name: t.render(job.args, seq=job.seq, slot=slot, quote=False) for name, t in self.env}

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
                text = tagstring.render(job.args, seq=job.seq, slot=slot_of(tid), quote=False)
                return (text + "\t").encode("utf-8", "surrogateescape")

            return render
        if self.options.tag:
            return lambda tid: (" ".join(self.by_id[tid].args) + "\t").encode("utf-8", "surrogateescape")
        return None
