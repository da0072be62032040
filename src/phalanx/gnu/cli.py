"""`phalanx map`: GNU parallel's command line — parse, plan, run, exit status.

Every job is a task: its command rendered from the template and its arguments (every
value shell-quoted), run in its own process group, its output captured to files and
printed grouped (or in order with ``-k``). The joblog, the results file and the progress
bar are sinks. Exit status as GNU parallel's: 0 all succeeded, 1-100 the number of failed
jobs, 101 more than 100, with ``--halt ...fail...`` the failing job's status, 255 bad usage,
130 interrupted (143 terminated, 141 when the reader of the output has gone).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from ..errors import PhalanxError
from .args import UsageError, parse_map_args
from .jobs import JobPlan
from .run import MapRun, usage_error

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
  --load MAX                start no job while the load (processes running or ready to
                            run, jobs included) is MAX or more: N, N%, +N, -N as -j
  --memfree SIZE            start no job while less than SIZE of memory is available
                            (GNU also kills the youngest job below half of SIZE; phalanx
                            only waits)
  --env NAME=TEMPLATE       a per-job environment variable, e.g. --env ACTIVE_GREMLIN={}
  --shuf                    run the jobs in random order
  -n, --max-args N          N arguments per job (-N too; 0: none)
  -X                        as many arguments per job as fit; a word holding {} is
                            repeated for each (pre{}post)
  -I STR                    STR instead of {}
  -d, --delimiter DELIM     what ends an input item (\\n \\t \\r \\0 \\NNN understood)
  -u, --ungroup             print output as it comes, not grouped per job
  --pipe                    split standard input into blocks of whole records, one job
                            per block, fed to its stdin (no arguments are appended)
  --block SIZE              --pipe's block size (default 1M; k=1000, K=1024, M, G)
  --recend STR, --recstart STR   what ends / starts a --pipe record (default: newline);
                            -N N with --pipe: N records per block
  -0, --null; --colsep REGEX; --csv; --header :; -a FILE

phalanx's own (GNU parallel has none of these):
  -j auto, -j auto:N        as many jobs at once as keep the CPUs busy without crowding
                            them, from CPU use and free memory measured every half
                            second (at most 2 per CPU, or N)
  --no-journal              do not record the run in the run journal, .phalanx/ in the
                            current directory (by default each job is recorded there
                            for phalanx runs, show and history; --resume uses the joblog)
  --max-output SIZE         keep at most SIZE (10MB, 1GiB; 0: no cap) of each job's
                            stdout, and as much of its stderr: the first and the last
                            half; the rest is dropped, with a warning on stderr per job
  --backend dask|ray        run the jobs on a Dask (or Ray) cluster: the one --scheduler
                            ADDRESS (or $PHALANX_DASK_SCHEDULER) names, else one started
                            here for the run; output comes back grouped per job
  --redact NAME             show the value of environment variable NAME (or a pattern,
                            '*_SECRET'; repeatable) as *** in the joblog, the --results
                            files, the journal and warnings (values of 4 characters or
                            more); the jobs' own output, and --results DIR, stay as printed

Examples:
  phalanx map gzip -9 ::: *.log                     compress every log, one job per CPU
  find . -name '*.tar.gz' | phalanx map -j 8 -k tar xzf {}
  phalanx map --joblog jobs.log --resume ./crunch {1} {2} ::: a b c ::: 1 2 3
  phalanx map --csv --header : --results out.csv 'curl -s {url}' :::: urls.csv
  phalanx map --timeout 200% --retries 3 --halt soon,fail=10% ./test.sh ::: shard-{1..8}

Exit status: 0 all succeeded, 1-100 the number of failed jobs, 101 more than 100,
the failing job's status with --halt ...fail..., 255 bad usage, 130 interrupted.
"""


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
        return usage_error(error)
    if options.help:
        sys.stdout.write(USAGE)
        return 0
    if options.version:
        from .. import __version__

        sys.stdout.write(f"phalanx map (phalanx) {__version__}\n")
        return 0
    try:
        plan = JobPlan.build(options)
    except PhalanxError as error:
        return usage_error(error)
    if plan.template.nested_shell_warning:
        sys.stderr.write(f"phalanx map: {plan.template.nested_shell_warning}\n")
    if options.dry_run:
        tag = plan.tagger()
        out = sys.stdout.buffer
        for job in plan.jobs:
            prefix = tag(str(job.seq)) if tag is not None else b""
            out.write(prefix + (plan.command_of(job, slot=1) + "\n").encode("utf-8", "surrogateescape"))
        out.flush()
        return 0
    return MapRun(plan, command_line=_command_line(argv)).run()


#: The most of a command line the journal keeps (``::: $(seq 100000)`` is a long one).
COMMAND_LINE_LIMIT = 1000


def _command_line(argv: Sequence[str]) -> str:
    """How the run was started, for ``phalanx runs`` and ``show``: shell-quoted, cut short."""
    import shlex

    line = shlex.join(["phalanx", "map", *argv])
    return line if len(line) <= COMMAND_LINE_LIMIT else line[: COMMAND_LINE_LIMIT - 4] + " ..."
