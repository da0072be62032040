"""The command line: parse, build the model, call the engine, turn the outcome into an exit code.

Exit codes (``run``, ``plan``, ``graph``, ``list``): 0 all succeeded; 1 some task did not;
2 bad usage or input, nothing ran (or, for ``run``, a report or standard output that could not
be written: a full disk, a file-size limit; the run itself is in the journal); 130 interrupted
(SIGINT); 143 terminated (SIGTERM).
Bad input is one line on stderr naming the file and line, never a traceback.

``phalanx map`` is routed to its own front end before click is imported (`phalanx._entry`);
the ``map`` command here only lists it in ``phalanx --help`` and in shell completion.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click

from . import __version__
from .errors import PhalanxError, SelectionError, did_you_mean

if TYPE_CHECKING:
    from click.shell_completion import CompletionItem

    from .config import TaskFile
    from .events import Sink
    from .model import Graph, Task

EXIT_BAD_INPUT = 2

MAIN_EPILOG = """
\b
Examples:
  phalanx run                      # the tasks of phalanx.toml, here or above
  phalanx list                     # the tasks, their tags and dependencies
  phalanx map gzip -9 ::: *.log    # one job per input, as GNU parallel
  phalanx run --help               # each command has its own help and examples

\b
Task files: docs/taskfile.md. Shell completion (task names for --select too):
  bash:  eval "$(_PHALANX_COMPLETE=bash_source phalanx)"    # in ~/.bashrc
  zsh:   eval "$(_PHALANX_COMPLETE=zsh_source phalanx)"     # in ~/.zshrc
  fish:  _PHALANX_COMPLETE=fish_source phalanx | source     # in config.fish
"""

RUN_EXAMPLES = """
\b
Examples:
  phalanx run                      # phalanx.toml (or [tool.phalanx] in pyproject.toml)
  phalanx run examples/ci.toml -j 8
  phalanx run -j auto              # as many at once as the machine's CPUs and memory allow
  phalanx run --select mypy        # mypy and what it depends on
  phalanx run examples/ci.toml --select tag:lint --no-deps --output always
  phalanx run --timeout 5m         # for tasks that set no timeout (0: none)
  phalanx run --priority low       # for tasks the file gives no priority
  phalanx run --memory 2GB         # a memory limit for tasks that set none (--cpus too)
  phalanx run --max-output 10MB    # each task's stdout and stderr: head and tail, 10 MB
  phalanx run --fail-fast --json > report.json
  phalanx run --backend dask       # on a Dask LocalCluster (--scheduler tcp://HOST:8786: a real one)
"""

PLAN_EXAMPLES = """
\b
Examples:
  phalanx plan                     # phalanx.toml (or [tool.phalanx] in pyproject.toml)
  phalanx plan examples/ci.toml -j 8
  phalanx plan --simulate -j 2     # how long on two workers? (costs, else past runs)
"""

GRAPH_EXAMPLES = """
\b
Examples:
  phalanx graph                    # each task under its level, with its dependencies
  phalanx graph examples/ci.toml --format mermaid > ci.mmd
  phalanx graph --format dot | dot -Tsvg > graph.svg
"""

LIST_EXAMPLES = """
\b
Examples:
  phalanx list                     # phalanx.toml (or [tool.phalanx] in pyproject.toml)
  phalanx list examples/ci.toml --select tag:yaml
  phalanx list --json | jq -r '.tasks[].id'
"""

MAP_HELP = """Run COMMAND once per input, in parallel, as GNU parallel does.

\b
Its options keep GNU parallel's names and meanings; see: phalanx map --help
  phalanx map gzip -9 ::: *.log
  find . -name '*.tar.gz' | phalanx map -j 8 -k tar xzf {}
"""


def _fail(error: PhalanxError | str) -> NoReturn:
    click.echo(f"phalanx: error: {error}", err=True)
    sys.exit(EXIT_BAD_INPUT)


def _usage_error(error: click.UsageError, ctx: click.Context) -> NoReturn:
    """Bad usage as one line naming the option or argument (click's own report is four lines:
    the usage, a hint, a blank line and the error), exit 2."""
    path = (error.ctx or ctx).command_path
    click.echo(f"phalanx: error: {error.format_message()} (see: {path} --help)", err=True)
    sys.exit(EXIT_BAD_INPUT)


# Click >= 8.2 shows the help for a bare group (`phalanx`) by raising this usage error: it stays help.
_SHOWS_HELP = getattr(click.exceptions, "NoArgsIsHelpError", ())


class _Command(click.Command):
    """A command whose usage errors are one line (see `_usage_error`)."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except click.UsageError as error:
            if isinstance(error, _SHOWS_HELP):
                raise
            _usage_error(error, ctx)


class _Group(click.Group):
    """``phalanx``: its own usage errors and an unknown command are one line too."""

    command_class = _Command

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except click.UsageError as error:
            if isinstance(error, _SHOWS_HELP):
                raise
            _usage_error(error, ctx)

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        try:
            return super().resolve_command(ctx, args)
        except click.UsageError as error:
            _usage_error(error, ctx)


def _load(file: str | None) -> TaskFile:
    """The task file: FILE, or the one found here or above."""
    from .config import find_task_file, load_task_file

    try:
        path = Path(file) if file is not None else find_task_file()
        return load_task_file(path)
    except PhalanxError as error:
        _fail(error)


def _warn(task_file: TaskFile) -> None:
    """Print the task file's warnings, once each: after the command line has been checked, so
    that bad usage stays one line, and before any output."""
    for warning in task_file.warnings:
        click.echo(f"phalanx: warning: {warning}", err=True)


def _complete_select(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    """Shell completion for ``--select``: the task ids, ``for_each`` names and ``tag:`` values."""
    from click.shell_completion import CompletionItem

    from .config import find_task_file, load_task_file

    try:
        # Before an unfinished option, click leaves FILE unparsed among the context's args.
        file = ctx.params.get("file") or next((arg for arg in ctx.args if not arg.startswith("-")), None)
        graph = load_task_file(Path(file) if file else find_task_file()).graph
    except Exception:  # a broken or missing file: offer nothing rather than a traceback at the prompt
        return []
    offers: dict[str, str] = {}
    for task in graph:
        if task.group is not None:
            offers.setdefault(task.group, f"every {task.group}[...] task")
        offers[task.id] = task.describe()
    for tag in sorted({tag for task in graph for tag in task.tags}):
        offers[f"tag:{tag}"] = "the tasks tagged " + tag
    return [CompletionItem(value, help=text) for value, text in offers.items() if value.startswith(incomplete)]


def _register_bash_completion() -> None:
    """Teach click's bash completion that bash splits words at ``:`` (``COMP_WORDBREAKS``).

    Bash hands over ``--select tag:li`` as the words ``tag``, ``:``, ``li`` and replaces only
    the text after the last ``:``: the words are joined back before completing, and each
    reply loses what precedes that ``:`` (as bash-completion's ``__ltrim_colon_completions``).
    """
    from click.shell_completion import BashComplete, add_completion_class

    class ColonBashComplete(BashComplete):
        def get_completion_args(self) -> tuple[list[str], str]:
            args, incomplete = super().get_completion_args()
            words: list[str] = []
            split = False  # whether bash split the last word at a ":"
            for word in [*args, incomplete]:
                split = bool(words) and (word.startswith(":") or words[-1].endswith(":"))
                if split:
                    words[-1] += word
                else:
                    words.append(word)
            self._colon_prefix = words[-1][: words[-1].rfind(":") + 1] if split else ""
            return words[:-1], words[-1]

        def format_completion(self, item: CompletionItem) -> str:
            prefix = getattr(self, "_colon_prefix", "")
            if prefix and item.value.startswith(prefix):
                item.value = item.value[len(prefix):]
            return super().format_completion(item)

    add_completion_class(ColonBashComplete, "bash")


if os.environ.get("_PHALANX_COMPLETE", "").startswith("bash"):
    _register_bash_completion()


def _select_option(function: Any) -> Any:
    return click.option(
        "--select",
        "selects",
        multiple=True,
        metavar="ID|tag:T",
        shell_complete=_complete_select,
        help="Only these tasks (a task, a for_each name or tag:NAME; repeatable), with what they depend on.",
    )(function)


def _no_deps_option(function: Any) -> Any:
    return click.option(
        "--no-deps", is_flag=True, help="With --select: do not bring the selected tasks' dependencies."
    )(function)


def _file_argument(function: Any) -> Any:
    return click.argument("file", required=False, type=click.Path())(function)


def _colour_option(function: Any) -> Any:
    return click.option(
        "--color",
        "colour",
        type=click.Choice(["auto", "always", "never"]),
        default="auto",
        show_default=True,
        help="Colour the output: auto (on a terminal, unless NO_COLOR is set; FORCE_COLOR forces it), "
        "always, never.",
    )(function)


def _colour(choice: str, stream: Any) -> bool:
    from .sinks.console import wants_colour

    return wants_colour(choice, stream)


def _locate(error: PhalanxError, task_file: TaskFile, key: str | None = None) -> PhalanxError:
    if error.task_id is not None and error.file is None:
        error.located(str(task_file.path), task_file.line_of(error.task_id, key))
    return error


def select(graph: Graph, patterns: Sequence[str], *, with_deps: bool) -> Graph:
    """The part of the graph the ``--select`` patterns name.

    A pattern is a task id, the name of a ``for_each`` group, or ``tag:NAME``. Selected
    tasks bring everything they depend on unless ``with_deps`` is False.

    Raises:
        SelectionError: a pattern names nothing (with a did-you-mean), or ``--no-deps``
            came without ``--select``.
    """
    if not patterns:
        if not with_deps:  # a flag that would change nothing is a mistake: say so rather than run everything
            raise SelectionError("--no-deps needs --select: it leaves out the selected tasks' dependencies")
        return graph
    chosen: list[str] = []
    for pattern in patterns:
        if pattern.startswith("tag:"):
            tag = pattern[4:]
            found = [t.id for t in graph if tag in t.tags]
            known = sorted({tag for t in graph for tag in t.tags})
            what, name = "tag", tag
        else:
            found = [t.id for t in graph if t.id == pattern or t.group == pattern]
            known = sorted({t.id for t in graph} | {t.group for t in graph if t.group})
            what, name = "task", pattern
        if not found:
            hint = did_you_mean(name, known)
            suggestion = f" (did you mean {hint!r}?)" if hint else ""
            raise SelectionError(f"--select {pattern}: no {what} {name!r}{suggestion}")
        chosen.extend(found)
    if with_deps:
        seen: set[str] = set()
        stack = list(chosen)
        while stack:
            tid = stack.pop()
            if tid not in seen:
                seen.add(tid)
                stack.extend(graph[tid].deps)
        chosen = list(seen)
    return graph.subgraph(chosen, keep_deps=with_deps)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]}, epilog=MAIN_EPILOG)
@click.version_option(__version__, prog_name="phalanx")
def main() -> None:
    """phalanx: run shell commands, task DAGs and Python callables in parallel.

    A task file is phalanx.toml, or the [tool.phalanx] table of pyproject.toml, in the
    current directory or the nearest directory above it (up to the repository root).
    """


def _priority_option(function: Any) -> Any:
    return click.option(
        "--priority",
        metavar="P",
        help="The priority (an integer, or high=10, normal=0, low=-10; higher starts first) of the tasks "
        "whose priority the task file leaves unset: neither their own, nor a tag's in [priorities], nor "
        "[defaults]. Default: 0.",
    )(function)


def _with_priority(graph: Graph, priority: str | None, task_file: TaskFile) -> Graph:
    """``--priority``: the graph with that priority for every task the file gives none.

    Raises:
        ConfigError: not an integer, high, normal or low.
    """
    from .model import Graph, parse_priority

    if priority is None:
        return graph
    value = parse_priority(int(priority) if _is_integer(priority) else priority, what="--priority")
    unset = task_file.unprioritized
    return Graph(replace(task, priority=value) if task.id in unset else task for task in graph)


def _is_integer(text: str) -> bool:
    return text.strip().lstrip("+-").isdigit()


def _jobs_option(function: Any) -> Any:
    return click.option(
        "-j",
        "--jobs",
        "jobs",
        type=click.IntRange(min=1),
        default=None,
        help="How many tasks run at once (slots). Default: the number of CPUs.",
    )(function)


if TYPE_CHECKING:
    from .autoscale import AutoJobs, Scaling


def _run_jobs(ctx: click.Context, param: click.Parameter, value: str | None) -> int | AutoJobs | None:
    """``run``'s ``-j``: N (at least 1), ``auto`` or ``auto:N`` (`phalanx.autoscale.AutoJobs`)."""
    if value is None:
        return None
    from .autoscale import parse_auto

    try:
        auto = parse_auto(value, what="")
    except PhalanxError as error:
        raise click.BadParameter(error.message, ctx, param) from None
    # Not auto: a number, in IntRange's own words when it is not one.
    if auto is not None:
        return auto
    raw: Any = value  # click's stubs type convert's value differently from release to release
    return int(click.IntRange(min=1).convert(raw, param, ctx))


def _run_jobs_option(function: Any) -> Any:
    return click.option(
        "-j",
        "--jobs",
        "jobs",
        metavar="N|auto[:N]",
        callback=_run_jobs,
        default=None,
        help="How many tasks run at once (slots). Default: the number of CPUs. auto: as many as keep the "
        "CPUs busy without crowding them, from the machine's CPU use and free memory, measured every "
        "half second (at most 2 per CPU; auto:N at most N).",
    )(function)


def _throttle_options(function: Any) -> Any:
    function = click.option(
        "--memfree", metavar="SIZE",
        help="Start no task while less than SIZE (1GB, 512MiB) of memory is available (the running ones go "
        "on). -j auto keeps a tenth of the RAM, at most 2 GiB, unless told otherwise; 0: no limit.",
    )(function)
    return click.option(
        "--load", metavar="MAX",
        help="Start no task while the load (processes running or ready to run, phalanx's tasks included) is "
        "MAX or more: a number, N% of the CPUs, +N or -N (CPUs plus or minus N).",
    )(function)


def _scaling(jobs: int | AutoJobs | None, load: str | None, memfree: str | None) -> tuple[int, Scaling | None]:
    """``-j``, ``--load`` and ``--memfree``: the most tasks at once, and how the count follows
    the machine (`phalanx.autoscale.Scaling`), or None when it stays put.

    Raises:
        ConfigError: ``--load`` or ``--memfree`` malformed.
    """
    from .workers import optimal_workers

    auto = None if jobs is None or isinstance(jobs, int) else jobs
    fixed = jobs if isinstance(jobs, int) else None
    if auto is None and load is None and memfree is None:
        return fixed or optimal_workers("commands").count, None
    from .autoscale import Scaling, parse_load, parse_memfree

    workers = auto.resolve() if auto is not None else fixed or optimal_workers("commands").count
    return workers, Scaling(
        auto=auto is not None,
        load=parse_load(load) if load is not None else None,
        memfree=parse_memfree(memfree) if memfree is not None else None,
    )


def _backend_options(function: Callable[..., Any]) -> Callable[..., Any]:
    """``--backend`` and ``--scheduler``: where the tasks run (``run`` and ``map``)."""
    function = click.option(
        "--scheduler", metavar="ADDRESS",
        help="The cluster to run on: a Dask scheduler (tcp://HOST:8786; else $PHALANX_DASK_SCHEDULER, else the "
        "task file's dask_scheduler) or a Ray address (else $PHALANX_RAY_ADDRESS). None: a local cluster "
        "started for the run.")(function)
    return click.option(
        "--backend", type=click.Choice(["local", "dask", "ray"]), default="local", show_default=True,
        help="Where the tasks run: here, or on a Dask or Ray cluster (phalanx still decides the order, "
        "retries and limits; needs phalanx[dask] or phalanx[ray]).")(function)


@main.command(epilog=RUN_EXAMPLES, short_help="Run the tasks, each as soon as its dependencies succeed.")
@_file_argument
@_run_jobs_option
@_throttle_options
@click.option("--fail-fast", is_flag=True, help="On the first failure, stop everything (default: keep going).")
@_select_option
@_no_deps_option
@click.option(
    "--timeout",
    metavar="DURATION",
    help="A timeout per attempt (30, 90s, 2m) for the tasks that set none; 0: no timeout (the default).",
)
@click.option(
    "--max-output",
    metavar="SIZE",
    help="Keep at most SIZE (10MB, 1GiB) of each task's stdout, and as much of its stderr, for the tasks "
    "that set no max_output: the first and the last half of it; the rest is counted and dropped, and the "
    "result says so. 0: no cap (the default).",
)
@_priority_option
@click.option("--memory", metavar="SIZE",
              help="A memory limit (512MB, 2GiB) for the tasks that set none: the RSS of each task's whole "
              "process tree; a task over it is killed and fails.")
@click.option("--cpus", metavar="N", help="A CPU share (0.5, 2) for the tasks that set none.")
@click.option("--dry-run", is_flag=True, help="Print what would run, in order, and run nothing.")
@click.option(
    "--output",
    type=click.Choice(["on-failure", "always", "never"]),
    default="on-failure",
    show_default=True,
    help="When to show a task's captured output (grouped, never interleaved).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON on stdout (people's text on stderr).")
@click.option("--log-dir", type=click.Path(file_okay=False), help="Keep every task's output files here.")
@click.option(
    "--results",
    metavar="FILE",
    type=click.Path(dir_okay=False),
    help="Write one row per task as it ends to FILE (.csv or .jsonl): task, status, attempts, duration, error, "
    "then the fields it wrote to $PHALANX_RESULT_FILE.",
)
@click.option("--junit", "junit_file", metavar="FILE", type=click.Path(dir_okay=False),
              help="Write JUnit XML: a testcase per task (flaky retries as nextest writes them), with the test "
              "cases of tasks that declare their own junit file.")
@click.option("--html", "html_file", metavar="FILE", type=click.Path(dir_okay=False),
              help="Write a self-contained HTML report: summary, a timeline per slot with the critical path, "
              "the tasks with filters, their output.")
@click.option("--trace", "trace_file", metavar="FILE", type=click.Path(dir_okay=False),
              help="Write a Chrome trace-event timeline (Perfetto, chrome://tracing): a track per slot.")
@click.option("--otel", is_flag=True,
              help="Send OpenTelemetry spans (a span per run, one per attempt) to the OTLP endpoint of "
              "$OTEL_EXPORTER_OTLP_ENDPOINT (needs phalanx[otel]).")
@click.option("--resume", is_flag=True,
              help="Run only what did not succeed last time (or whose definition changed since), from the "
              "journal in .phalanx/; processes a killed run left behind are stopped first.")
@click.option("--show-workers", is_flag=True, help="On a terminal, show a line per slot with its running task.")
@click.option("-q", "--quiet", is_flag=True, help="Show only failures and the summary.")
@click.option("--redact", "redact", metavar="NAME", multiple=True,
              help="Show the value of environment variable NAME (or a pattern: '*_SECRET') as *** in every "
              "output, report and the journal; repeatable, and added to the task file's redact list.")
@click.option("--seed", type=int, metavar="N",
              help="Start the tasks that priority and critical path rank equal in an order shuffled by N (the "
              "same N, the same order; default: the file's order) and seed the retry jitter.")
@_backend_options
@_colour_option
def run(
    file: str | None,
    jobs: int | AutoJobs | None,
    load: str | None,
    memfree: str | None,
    fail_fast: bool,
    selects: tuple[str, ...],
    no_deps: bool,
    timeout: str | None,
    max_output: str | None,
    priority: str | None,
    memory: str | None,
    cpus: str | None,
    dry_run: bool,
    output: str,
    as_json: bool,
    log_dir: str | None,
    results: str | None,
    junit_file: str | None,
    html_file: str | None,
    trace_file: str | None,
    otel: bool,
    resume: bool,
    show_workers: bool,
    quiet: bool,
    colour: str,
    redact: tuple[str, ...] = (),
    seed: int | None = None,
    backend: str = "local",
    scheduler: str | None = None,
) -> None:
    """Run the tasks of FILE, each as soon as its dependencies succeed.

    FILE defaults to phalanx.toml, or [tool.phalanx] in pyproject.toml, in the current
    directory or the nearest one above it. Commands run in the task file's directory
    (or the task's cwd), wherever phalanx is started.

    Among ready tasks the higher priority starts first. A task's priority is its own
    priority, else the highest of its tags' in [priorities], else the priority of
    [defaults], else --priority, else 0 (normal).
    """
    import asyncio
    import random

    from .guard import TaskGuard
    from .render import summary_text
    from .runner import named_limiters
    from .session import StandardBackends, run_session
    from .sinks.console import paint_summary

    task_file = _load(file)
    try:
        graph = _with_timeout(select(task_file.graph, selects, with_deps=not no_deps), timeout)
        graph = _with_max_output(graph, max_output)
        graph = _with_priority(graph, priority, task_file)
        graph = _with_limits(graph, memory, cpus)
        workers, scaling = _scaling(jobs, load, memfree)
    except PhalanxError as error:
        _fail(error)
    _warn(task_file)
    redaction = _redaction(task_file, graph, redact)
    human = sys.stderr if as_json else sys.stdout
    painted = _colour(colour, human)
    if dry_run:
        _dry_run(task_file, graph, workers)
        return
    mask = redaction.redactor.text if redaction is not None else None
    journal, journal_sink, graph, cost_model, done, killed_runs = _journal_for(task_file, graph, resume, human,
                                                                               mask=mask)
    # Nothing a task starts outlives the run: not a daemon, not after a kill -9 of phalanx.
    guard = TaskGuard.for_command_line(grace=2.0)
    # With a watchdog (which stops what a kill -9 leaves running) the sink's hook: it holds a
    # spawn back until the process has run a moment (`phalanx.journal.SPAWN_HOLD`), so that a
    # short command's records take one commit. Without one, the journal is what the next
    # --resume finds such processes by: each is committed as it spawns.
    from .watchdog import enabled as watchdog_enabled

    on_spawn = journal_sink.attempt_spawned if watchdog_enabled() else journal.attempt_spawned
    # A slot's output files are reused from attempt to attempt (no file made per task), but
    # where outputs must outlive the sinks' hearing of them or be known by name: a kept
    # --log-dir; JUnit, which reads a task's earlier attempts' output by name when it ends;
    # redaction, whose masked copies are known by the file's name.
    backends = StandardBackends("auto", grace=2.0, on_spawn=on_spawn, guard=guard,
                                reuse_output_files=log_dir is None and junit_file is None and redaction is None)
    own_junit = _junit_files(task_file)
    failing = None
    if task_file.junit:
        from .sinks.junit import failing_tests

        def failing(tid: str) -> list[str]:
            names = failing_tests(own_junit(tid))
            return names if mask is None else [mask(name) for name in names]

    # The journal first: a task's record is committed before anything else hears of its end.
    sinks: list[Sink] = [journal_sink, _reporter(human, output, painted, show_workers=show_workers, quiet=quiet,
                                                 failing_tests=failing, expected=_expected(graph, cost_model))]
    try:
        limiters = named_limiters(task_file.rate_limits, workers)
        if results is not None:
            sinks.append(_results_table(results, done, human, redaction))
        if junit_file is not None:
            from .sinks.junit import JUnitSink

            sinks.append(JUnitSink(junit_file, junit_files=own_junit, redact=mask))
        if html_file is not None:
            from .sinks.html import HtmlReportSink

            sinks.append(HtmlReportSink(html_file, title=f"phalanx run {task_file.path.name}"))
        if trace_file is not None:
            from .sinks.trace import TraceSink

            sinks.append(TraceSink(trace_file))
        if otel:
            from .sinks.otel import OtelSink

            sinks.append(OtelSink())
    except PhalanxError as error:
        _fail(error)
    except OSError as error:
        _fail(f"cannot write {error.filename}: {error.strerror}" if error.filename else str(error))
    if redaction is not None:  # every sink hears the events with the secrets masked
        sinks = [redaction.wrap(sink) for sink in sinks]
    async def go() -> Any:
        nonlocal backends, workers
        if backend != "local":
            from .backends.cluster import open_cluster_backend

            address = scheduler
            if address is None and backend == "dask":  # --scheduler, then the environment, then the file
                address = os.environ.get("PHALANX_DASK_SCHEDULER") or task_file.dask_scheduler
            cluster = await open_cluster_backend(backend, address, graph,
                                                 max_workers=None if jobs is None else workers,
                                                 worker_resources=task_file.worker_resources)
            backends = StandardBackends("auto", grace=2.0, cluster=cluster)
            if killed_runs:
                # A killed run's attempts end on their workers once the scheduler has dropped
                # its tasks (`phalanx.remote`); none may still run when its task runs again.
                await cluster.settle(killed_runs)
            if jobs is None:
                workers = cluster.cluster.slots
        return await run_session(
                graph,
                backend_for=backends.for_task,
                close_backends=backends.aclose,
                max_workers=workers,
                capacities=task_file.resources,
                fail_fast=fail_fast,
                sinks=sinks,
                log_dir=log_dir,
                handle_signals=True,
                limiters=limiters,
                cost_model=cost_model,
                on_temporary_dir=guard.temporary_dir,
                scaling=scaling,
                seed=seed,
                rng=None if seed is None else random.Random(seed),
            )

    try:
        report = asyncio.run(go())
    except PhalanxError as error:
        _fail(_locate(error, task_file, "resources"))
    except OSError as error:  # a report or the output could not be written: the run itself is in the journal
        _unwritable(error)
    finally:
        guard.close()
        journal.close()
        if redaction is not None:
            redaction.close()
    if redaction is not None:
        report = redaction.report(report)
    summary = summary_text(report)
    try:
        human.write((paint_summary(summary, report.exit_code == 0) if painted else summary) + "\n")
        human.flush()
        if as_json:
            json.dump(report.to_dict(), sys.stdout, indent=2, default=str)
            sys.stdout.write("\n")
            sys.stdout.flush()
    except OSError as error:
        _unwritable(error)
    sys.exit(report.exit_code)


def _redaction(task_file: TaskFile, graph: Graph, names: Sequence[str]) -> Any:
    """The run's `phalanx.redact.Redaction` (the task file's ``redact`` and ``--redact``, with
    the values of phalanx's environment and the tasks' env tables), or None: nothing to mask.
    Prints a warning for each value too short to mask."""
    from .redact import Redaction, Redactor, pattern_problem

    for name in names:
        problem = pattern_problem(name)
        if problem is not None:
            _fail(f"--redact: {problem}")
    environments = [os.environ, *(task.env for task in graph)]
    redactor, warnings = Redactor.from_environment([*task_file.redact, *names], environments)
    for warning in warnings:
        click.echo(f"phalanx: warning: {warning}", err=True)
    return Redaction(redactor) if redactor else None


def _unwritable(error: OSError) -> NoReturn:
    """A report, or standard output, that could not be written (a full disk, a file-size
    limit, no permission): one line and exit 2, never a traceback."""
    if error.filename is None:
        # Standard output failed (a report file's error names it): what it still buffers would
        # fail again at exit, with a second message and exit status 120.
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    where = "standard output" if error.filename is None else error.filename
    _fail(f"cannot write {where}: {error.strerror or error}")


def _journal_for(
    task_file: TaskFile, graph: Graph, resume: bool, human: Any, mask: Callable[[str], str] | None = None
) -> tuple[Any, Any, Graph, Any, list[Any], tuple[str, ...]]:
    """The run journal in ``.phalanx/`` beside the task file, its sink (a `Sink`, whose
    ``attempt_spawned`` is the backends' spawn hook), the graph to run
    (with ``--resume``, only what is not done), the cost model (declared costs, else the
    duration history), and with ``--resume`` the journal's records of the tasks it treats
    as done, in the file's order (`TaskRecord`: whose rows `_results_table` completes), and
    the ids of the runs killed mid-way (whose attempts on a cluster must end first).
    ``mask``: the command line's secrets masked (`phalanx.redact`)."""
    from .history import DurationHistory, HistoryCosts
    from .journal import Journal, JournalSink, file_key, kill_leftovers, plan_resume, spec_hashes

    try:
        journal = Journal.open(task_file.path.parent)
    except (PhalanxError, OSError) as error:
        if resume:
            _fail(f"--resume needs the run journal: {error}")
        # A read-only checkout or a damaged journal must not stop the run itself.
        click.echo(f"phalanx: warning: running without a journal (no --resume, no history): {error}", err=True)
        return _NoJournal(), _NoJournal(), graph, None, [], ()
    journal.checkpoint_in_background()  # its commands are spawned: this process never forks
    key = file_key(task_file.path)
    hashes = spec_hashes(graph)
    done: list[Any] = []
    killed: tuple[str, ...] = ()
    if resume:
        plan = plan_resume(journal, key, graph)
        latest = journal.latest_tasks(key)
        done = [latest[tid] for tid in graph.ids if tid in plan.done]
        stopped = kill_leftovers(plan.leftovers)
        journal.mark_crashed(plan.crashed_runs)
        killed = plan.crashed_runs
        if stopped:
            human.write(f"phalanx: stopped {len(stopped)} process group(s) a killed run left running\n")
        human.write(f"phalanx: resuming: {len(plan.done)} done, {len(plan.todo)} to run\n")
        human.flush()
        graph, hashes = plan.graph(graph), dict(plan.spec_hashes)
    command_line = " ".join(["phalanx", *sys.argv[1:]])
    sink = JournalSink(journal, spec_hashes=hashes, command_line=command_line if mask is None else mask(command_line),
                       file_key=key)
    return journal, sink, graph, HistoryCosts(DurationHistory(journal)), done, killed


def _results_table(path: str, done: list[Any], human: Any, redaction: Any) -> Sink:
    """The ``--results`` sink; on a resume, the file first completed with the rows of the
    tasks done in earlier runs that it lacks (a kill between a task's journal record and
    its row keeps the row from it: `phalanx.journalrows`), before any task starts.

    Raises:
        OSError: the file cannot be opened, read or written. ConfigError: a bad name, or a CSV
            that cannot be read back.
    """
    from .journalrows import complete_results
    from .sinks.table import TableSink, TableWriter

    writer = TableWriter(path)
    try:
        completed = complete_results(writer, done, redact=None if redaction is None else redaction.redactor.result)
    except BaseException:
        with contextlib.suppress(OSError):
            writer.close()
        raise
    if completed.written:
        count = len(completed.written)
        rows = "1 missing row (a task done earlier)" if count == 1 else f"{count} missing rows (tasks done earlier)"
        human.write(f"phalanx: resuming: wrote {rows} to {path}\n")
        human.flush()
    if completed.unknown:
        click.echo(f"phalanx: warning: {path} lacks the rows of {', '.join(completed.unknown)}, done earlier; the"
                   " journal does not hold what they reported (over 64 KiB, or an older phalanx): not written",
                   err=True)
    return TableSink(writer)


def _past_durations(task_file: TaskFile) -> Any:
    """The cost model `phalanx run` would use (declared costs, else the duration history),
    or None when there is no journal yet: planning never creates one."""
    from .history import DurationHistory, HistoryCosts
    from .journal import Journal, journal_path

    if not journal_path(task_file.path.parent).exists():
        return None
    try:
        journal = Journal.open(task_file.path.parent)
    except (PhalanxError, OSError):
        return None  # the run itself warns about it
    try:
        costs = HistoryCosts(DurationHistory(journal))
        for task in task_file.graph:  # read every estimate now: the journal closes below
            costs.estimate(task)
        return costs
    finally:
        journal.close()


class _NoJournal:
    """Stands for the journal and its sink when the journal cannot be opened."""

    def attempt_spawned(self, run_id: str, task_id: str, attempt: int, pid: int) -> None:
        return None

    def handle(self, event: Any) -> None:
        return None

    def close(self) -> None:
        return None


def _junit_files(task_file: TaskFile) -> Callable[[str], list[str]]:
    """The JUnit files a task wrote, as its ``junit`` key says (a path or a glob)."""
    import glob

    def files(tid: str) -> list[str]:
        pattern = task_file.junit.get(tid)
        return sorted(glob.glob(pattern, recursive=True)) if pattern else []

    return files


def _expected(graph: Graph, cost_model: Any) -> dict[str, float]:
    """Each task's estimated seconds for the ETA: its declared cost, else its history."""
    if cost_model is None:
        return {task.id: task.cost for task in graph if task.cost is not None}
    estimates = {task.id: cost_model.estimate(task) for task in graph}
    return {tid: seconds for tid, seconds in estimates.items() if seconds is not None}


def _reporter(human: Any, output: str, painted: bool, *, show_workers: bool, quiet: bool,
              failing_tests: Callable[[str], list[str]] | None = None,
              expected: dict[str, float] | None = None) -> Sink:
    """What people see while the run goes: the live view on a terminal; otherwise a line per
    finished task (as before) with parseable progress lines on standard error. ``expected``:
    each task's estimated seconds, for the ETA."""
    import os

    from .sinks.console import ConsoleReporter
    from .sinks.live import LiveView, ProgressLines, live_console

    if human.isatty() and os.environ.get("TERM") != "dumb":
        return LiveView(live_console(human, painted), output=output, colour=painted,  # type: ignore[arg-type]
                        show_workers=show_workers, quiet=quiet, failing_tests=failing_tests, expected=expected)
    reporter = ConsoleReporter(human, output=output, colour=painted, quiet=quiet,  # type: ignore[arg-type]
                               failing_tests=failing_tests)
    return _Both(reporter, ProgressLines(sys.stderr, quiet=quiet, expected=expected)) if not quiet else reporter


class _Both:
    """Two sinks as one (the console lines and the progress lines)."""

    def __init__(self, first: Sink, second: Sink) -> None:
        self._sinks = (first, second)

    def handle(self, event: Any) -> None:
        for sink in self._sinks:
            sink.handle(event)

    def close(self) -> None:
        for sink in self._sinks:
            sink.close()


def _with_limits(graph: Graph, memory: str | None, cpus: str | None) -> Graph:
    """``--memory`` and ``--cpus``: the graph with these limits for every command task that sets none.

    Raises:
        ConfigError: not a size, or not a positive number.
    """
    from .errors import ConfigError
    from .limits import LIMIT_PARSERS, Limits
    from .model import Graph

    run_wide: dict[str, Any] = {}
    if memory is not None:
        run_wide["memory"] = LIMIT_PARSERS["memory"](memory, what="--memory")
    if cpus is not None:
        try:
            share: object = float(cpus)
        except ValueError:
            share = cpus  # not a number: the parser says so, naming the option
        try:
            run_wide["cpus"] = LIMIT_PARSERS["cpus"](share, what="--cpus")
        except ConfigError:
            # Refused as a number (-1, 0, nan): say so in the words it was typed in ('-1', not -1.0),
            # which the parser refuses too, being text.
            run_wide["cpus"] = LIMIT_PARSERS["cpus"](cpus, what="--cpus")
    if not run_wide:
        return graph
    defaults = Limits(**run_wide)
    return Graph(replace(task, limits=task.limits.over(defaults)) if task.is_command else task for task in graph)


def _with_timeout(graph: Graph, timeout: str | None) -> Graph:
    """``--timeout``: the graph with a timeout for every task that sets none (0: none at all).

    Raises:
        DurationError: not a duration.
    """
    from .durations import parse_duration
    from .model import Graph

    seconds = None if timeout is None else parse_duration(timeout, what="--timeout")
    if not seconds:
        return graph
    return Graph(replace(task, timeout=seconds) if task.timeout is None else task for task in graph)


def _with_max_output(graph: Graph, size: str | None) -> Graph:
    """``--max-output``: the graph with that output cap for every task that sets none (0: no cap).

    Raises:
        ConfigError: not a size.
    """
    from .limits import parse_output_cap
    from .model import Graph

    cap = None if size is None else parse_output_cap(size, what="--max-output")
    if not cap:
        return graph
    return Graph(replace(task, limits=replace(task.limits, max_output=cap))
                 if task.is_command and task.limits.max_output is None else task for task in graph)


def _dry_run(task_file: TaskFile, graph: Graph, workers: int) -> None:
    from .plan import get_execution_plan

    try:
        plan = get_execution_plan(graph, max_workers=workers, resources=task_file.resources)
    except PhalanxError as error:
        _fail(_locate(error, task_file, "resources"))
    from .render import plural

    click.echo(f"Would run {plural(len(graph), 'task')} on {plural(workers, 'worker')}, in this order (by estimate):")
    width = len(str(len(plan.start_order)))
    for position, tid in enumerate(plan.start_order, 1):
        click.echo(f"  {position:>{width}}. {tid}: {graph[tid].describe()}")


@main.command(epilog=PLAN_EXAMPLES, short_help="Show levels, critical path and start order; run nothing.")
@_file_argument
@_jobs_option
@_priority_option
@click.option("--simulate", is_flag=True,
              help="Predict the run on -j slots instead: the makespan against its lower bound, the utilisation, "
              "the critical path with each task's estimate, and when each task would start and end.")
@_colour_option
def plan(file: str | None, jobs: int | None, priority: str | None, simulate: bool, colour: str) -> None:
    """Show levels, the critical path, the widest level and the start order of FILE's tasks.

    Nothing runs: the start order comes from the scheduler itself, by priority (shown where
    not 0; resolved as `phalanx run` resolves it), then on estimated durations (each task's
    declared cost, else its duration history from past runs, else the depth of the graph
    below it). Above 2,000 tasks it is the order on one worker; --simulate gives the order,
    and the makespan, on -j workers.

    --simulate runs the scheduler on a simulated clock, each task taking its estimate, so
    that the prediction is what a run would do if the estimates were right.
    """
    import gc

    from .plan import get_execution_plan
    from .render import plan_text, simulation_text
    from .sinks.console import paint_plan
    from .workers import optimal_workers

    task_file = _load(file)
    # The file's objects live as long as the command: out of the collector's sight, the
    # collections that planning triggers need not walk them again and again (a third of the
    # plan's time at 100,000 tasks). Back in sight after, for a caller that goes on (tests).
    gc.freeze()
    try:
        cost_model = _past_durations(task_file)
        try:
            graph = _with_priority(task_file.graph, priority, task_file)
            execution_plan = get_execution_plan(
                graph, max_workers=jobs or optimal_workers("commands").count, resources=task_file.resources,
                cost_model=cost_model, rate_limits=task_file.rate_limits, simulate=True if simulate else None,
            )
        except PhalanxError as error:
            _fail(_locate(error, task_file, "resources"))
        _warn(task_file)
        from_history = 0
        if cost_model is not None:
            from_history = sum(1 for task in task_file.graph
                               if task.cost is None and cost_model.estimate(task) is not None)
        text = (simulation_text if simulate else plan_text)(execution_plan, graph, from_history=from_history)
    finally:
        gc.unfreeze()
    painted = _colour(colour, sys.stdout)
    click.echo(paint_plan(text) if painted else text, color=painted)


@main.command(epilog=GRAPH_EXAMPLES, short_help="Print the dependency graph as text, Mermaid or DOT.")
@_file_argument
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["text", "mermaid", "dot"]),
    default="text",
    show_default=True,
    help="text for people; mermaid and dot for other programs (never coloured).",
)
@_colour_option
def graph(file: str | None, fmt: str, colour: str) -> None:
    """Print FILE's dependency graph as text, Mermaid or Graphviz DOT."""
    from .render import GRAPH_FORMATS
    from .sinks.console import paint_graph

    task_file = _load(file)
    _warn(task_file)
    text = GRAPH_FORMATS[fmt](task_file.graph)
    painted = fmt == "text" and _colour(colour, sys.stdout)
    click.echo(paint_graph(text) if painted else text, color=painted)


@main.command("list", epilog=LIST_EXAMPLES, short_help="List the tasks with their tags and dependencies.")
@_file_argument
@_select_option
@_no_deps_option
@click.option("--json", "as_json", is_flag=True, help="Print the tasks as JSON, every setting included.")
@_colour_option
def list_command(file: str | None, selects: tuple[str, ...], no_deps: bool, as_json: bool, colour: str) -> None:
    """List FILE's tasks (for_each ones expanded), with their tags and dependencies.

    Every task id, for_each name and tag here can be given to --select.
    """
    from .render import task_list_text
    from .sinks.console import paint_table

    task_file = _load(file)
    try:
        chosen = select(task_file.graph, selects, with_deps=not no_deps)
    except PhalanxError as error:
        _fail(error)
    _warn(task_file)
    if as_json:
        tasks = [_task_dict(task) for task in chosen]
        redaction = _redaction(task_file, chosen, ())
        if redaction is not None:  # the env tables' secrets, as a run would show them
            mask = redaction.redactor.text
            for entry in tasks:
                entry["env"] = {name: mask(value) for name, value in entry["env"].items()}
        document = {"file": str(task_file.path), "tasks": tasks}
        click.echo(json.dumps(document, indent=2))
        return
    text = task_list_text(chosen)
    painted = _colour(colour, sys.stdout)
    click.echo(paint_table(text) if painted else text, color=painted)


def _task_dict(task: Task) -> dict[str, Any]:
    """A task of a task file as JSON: every setting, in the units the model keeps (seconds)."""
    retry = task.retry
    return {
        "id": task.id,
        "group": task.group,
        "cmd": task.describe() if isinstance(task.action, str) or callable(task.action) else list(task.action),
        "deps": list(task.deps),
        "tags": sorted(task.tags),
        "priority": task.priority,
        "timeout": task.timeout or None,  # 0 is no timeout, as None is
        "retries": {
            "count": retry.count,
            "backoff": retry.backoff,
            "initial": retry.initial,
            "max": retry.max,
            "jitter": retry.jitter,
            "on_exit_codes": None if retry.on_exit_codes is None else sorted(retry.on_exit_codes),
        },
        "resources": dict(task.resources),
        "env": dict(task.env),
        "cwd": task.cwd,
        "cost": task.cost,
        "limits": task.limits.describe(),  # memory, cpus, ...: bytes and seconds
    }


RUNS_EXAMPLES = """\b
Examples:
  phalanx runs                        # the last 20 runs of the task file here
  phalanx runs --limit 5 ci.toml
"""

SHOW_EXAMPLES = """\b
Examples:
  phalanx show 3f2a                   # a run's tasks (a prefix of its id is enough)
  phalanx show 3f2a mypy              # one task's attempts, reasons and output
"""

HISTORY_EXAMPLES = """\b
Examples:
  phalanx history                     # each task's duration estimate from past runs
  phalanx history --clear             # forget them all (or --clear TASK)
"""


def _journal_of(file: str | None) -> Any:
    """The journal in ``.phalanx/`` here (``phalanx map`` and ``phalanx pytest`` record
    theirs in the directory they run in), else the task file's (found as `phalanx run`
    finds it)."""
    from .journal import Journal, journal_path

    if file is None and journal_path(Path.cwd()).exists():
        directory = Path.cwd()
    else:
        task_file = _load(file)
        directory = task_file.path.parent
        if not (directory / ".phalanx").is_dir():
            _fail(f"no runs recorded yet for {task_file.path.name} (the journal lives in .phalanx/ beside it)")
    try:
        return Journal.open(directory)
    except PhalanxError as error:
        _fail(error)


def _run_record(journal: Any, run_ref: str) -> Any:
    """The journal's run RUN (an id or a prefix of one), or a clean exit 2 naming it."""
    try:
        record = journal.run(run_ref)
    except PhalanxError as error:
        _fail(f"{error} (see: phalanx runs)")
    if record is None:
        _fail(f"no run {run_ref!r} in the journal (see: phalanx runs)")
    return record


def _when(timestamp: float | None) -> str:
    import time

    return "-" if timestamp is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(timestamp))


@main.command(epilog=RUNS_EXAMPLES, short_help="List past runs from the journal.")
@_file_argument
@click.option("--limit", type=click.IntRange(min=1), default=20, show_default=True, help="How many runs, newest first.")
def runs(file: str | None, limit: int) -> None:
    """List the runs recorded in the journal of FILE's directory, newest first."""
    from .durations import format_duration

    journal = _journal_of(file)
    try:
        records = journal.runs(limit)
    finally:
        journal.close()
    if not records:
        click.echo("no runs recorded yet")
        return
    click.echo(f"{'run':14} {'started':19}  {'took':>8}  {'status':11} tasks")
    for record in records:
        took = format_duration(record.duration) if record.duration is not None else "-"
        counts = ", ".join(f"{n} {status.replace('_', ' ')}" for status, n in sorted(record.counts.items()) if n)
        click.echo(f"{record.id[:14]:14} {_when(record.started_at):19}  {took:>8}  {record.status:11} {counts or '-'}")


@main.command(epilog=SHOW_EXAMPLES, short_help="Show a past run's tasks, or one task's attempts and output.")
@click.argument("run_ref", metavar="RUN")
@click.argument("task", required=False)
@click.option("-f", "--file", "file", type=click.Path(), help="The task file (default: found as phalanx run finds it).")
def show(run_ref: str, task: str | None, file: str | None) -> None:
    """Show RUN's tasks (RUN may be a prefix of its id), or TASK's attempts with their output."""
    from .durations import format_duration

    journal = _journal_of(file)
    try:
        record = _run_record(journal, run_ref)
        if task is None:
            click.echo(f"run {record.id} ({record.kind}, {record.status}), started {_when(record.started_at)}: "
                       f"{record.command_line}")
            for entry in journal.show(record.id):
                took = format_duration(entry.duration) if entry.duration is not None else "-"
                why = f"  {entry.reason}" if entry.reason and entry.status != "succeeded" else ""
                click.echo(f"  {entry.status:10} {took:>8}  {entry.task_id}{why}")
            return
        attempts = journal.show(record.id, task)
        if not attempts:
            _fail(f"run {record.id} has no task {task!r}")
        for attempt in attempts:
            took = format_duration(attempt.duration) if attempt.duration is not None else "-"
            code = f", exit code {attempt.exit_code}" if attempt.exit_code is not None else ""
            why = f": {attempt.reason}" if attempt.reason and attempt.reason != code.removeprefix(", ") else ""
            where = f" on {attempt.worker_address}" if attempt.worker_address is not None else ""
            click.echo(f"{task} attempt {attempt.attempt}: {attempt.status}{where} in {took}{code}{why}")
            for name, text in (("stdout", attempt.stdout_tail), ("stderr", attempt.stderr_tail)):
                if text:
                    click.echo(f"--- {name} ---\n{text}", nl=not text.endswith("\n"))
    finally:
        journal.close()


@main.command(epilog=HISTORY_EXAMPLES, short_help="Show or clear the duration history that orders runs.")
@_file_argument
@click.option("--clear", "clear", is_flag=False, flag_value="*", default=None, metavar="[TASK]",
              help="Forget the history of TASK, or of every task.")
def history(file: str | None, clear: str | None) -> None:
    """Each task's estimated duration from past runs (a moving average): the scheduler uses it
    for the critical path where a task declares no cost."""
    from .durations import format_duration
    from .history import DurationHistory

    journal = _journal_of(file)
    try:
        durations = DurationHistory(journal)
        if clear is not None:
            gone = durations.clear(None if clear == "*" else clear)
            click.echo(f"forgot {gone} estimate{'s' if gone != 1 else ''}")
            return
        entries = durations.entries()
        if not entries:
            click.echo("no durations recorded yet")
            return
        width = max(len(entry.key) for entry in entries)
        for entry in entries:
            click.echo(f"{entry.key:{width}}  {format_duration(entry.estimate):>8}  "
                       f"({entry.samples} run{'s' if entry.samples != 1 else ''})")
    finally:
        journal.close()



REPORT_EXAMPLES = """\b
Examples:
  phalanx report 3f2a --html run.html   # the page --html would have written, from the journal
"""


@main.command(epilog=REPORT_EXAMPLES, short_help="Write a past run's HTML report from the journal.")
@click.argument("run_ref", metavar="RUN")
@click.option("--html", "html_file", metavar="FILE", required=True, type=click.Path(dir_okay=False),
              help="Where to write the self-contained HTML report.")
@click.option("-f", "--file", "file", type=click.Path(), help="The task file (default: found as phalanx run finds it).")
def report(run_ref: str, html_file: str, file: str | None) -> None:
    """Write RUN's HTML report (RUN may be a prefix of its id), as --html would have."""
    from .journalreport import render_run
    from .sinks.html import write_report

    journal = _journal_of(file)
    try:
        record = _run_record(journal, run_ref)
        page = render_run(journal, record)
    finally:
        journal.close()
    try:
        write_report(html_file, page)
    except OSError as error:
        _fail(f"cannot write {html_file}: {error.strerror or error}")
    click.echo(f"wrote {html_file}")



@main.command(
    "map",
    help=MAP_HELP,
    short_help="Run a command once per input, as GNU parallel does.",
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True, "help_option_names": []},
)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def map_command(args: tuple[str, ...]) -> None:
    # `phalanx map` never gets here (`_entry` routes it first, without click): this command
    # lists it in `phalanx --help` and completion, and serves callers of `main` itself.
    from .gnu.cli import main as map_main

    sys.exit(map_main(list(args)))


PYTEST_HELP = """Run pytest with every test file (or test) in its own warm fork.

pytest collects once, in this process (conftests, test modules and the package under
test imported once); each unit then runs in a fresh fork of it, on phalanx's scheduler:
isolated like one process per file, without paying the imports again. A test that
crashes its fork (a segfault, os._exit) or outlives --unit-timeout costs only itself:
it is reported failed, naming why, and the rest of its file runs in a new fork.

phalanx's options come first; everything after them (or after --) is pytest's, untouched:
-k, -m, -x, node ids, -p, -o, --junitxml, plugins' options. Output, the counts line and
the exit code (0, 1, 2, 3, 4, 5) are pytest's own. Each fork sees PHALANX_WORKER and
xdist's PYTEST_XDIST_WORKER (gw0, gw1, ...) and PYTEST_XDIST_WORKER_COUNT; session-scoped
fixtures run once per unit, as they run once per worker under xdist.
"""

PYTEST_EXAMPLES = """\b
Examples:
  phalanx pytest                                # every file in its own fork, one per CPU
  phalanx pytest -j 4 -- -x -k "not slow"       # pytest's own options after --
  phalanx pytest --isolate test tests/test_io.py
  phalanx pytest --unit-timeout 2m --junit-out reports/junit.xml
  phalanx pytest --coverage=mypkg
  phalanx pytest --each ACTIVE_GREMLIN=g1,g2,g3 -- -x -q   # once per value: killed/survived
"""


class _PytestCommand(click.Command):
    """Bad phalanx options exit 4, as pytest's usage errors do."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except click.UsageError as error:
            click.echo(f"phalanx pytest: error: {error.format_message()}", err=True)
            sys.exit(4)


@main.command(
    "pytest",
    cls=_PytestCommand,
    help=PYTEST_HELP,
    epilog=PYTEST_EXAMPLES,
    short_help="Run pytest with each test file (or test) in its own warm fork.",
    context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False},
)
@click.option("-j", "--jobs", "jobs", default="auto", show_default=True, metavar="N|auto",
              help="Forks at once; auto: one per CPU.")
@click.option("--isolate", default="file", show_default=True, metavar="file|test|none",
              help="The unit each fork runs: a file, a test, or (none) whole files on kept warm forks.")
@click.option("--unit-timeout", default=None, metavar="DUR",
              help="Kill a fork that spends longer on its unit (30s, 2m); the test running is named and failed.")
@click.option("--each", default=None, metavar="NAME=v1,v2|NAME=@FILE",
              help="Run the tests once per value with NAME set to it; prints killed/survived per value.")
@click.option("--coverage", default=None, is_flag=False, flag_value="", metavar="[=PKG]",
              help="Measure every fork with coverage.py and combine: --coverage or --coverage=PKG.")
@click.option("--junit-out", default=None, metavar="FILE", help="Write one merged JUnit XML report.")
@click.option("--show-workers", is_flag=True, help="A line per unit as it starts and ends, naming its fork (gwN).")
@click.argument("pytest_args", nargs=-1, type=click.UNPROCESSED)
def pytest_command(jobs: str, isolate: str, unit_timeout: str | None, each: str | None, coverage: str | None,
                   junit_out: str | None, show_workers: bool, pytest_args: tuple[str, ...]) -> None:
    from .pytestrun import ISOLATIONS, PytestOptions, main as pytest_main

    def usage(message: str) -> NoReturn:
        click.echo(f"phalanx pytest: error: {message}", err=True)
        sys.exit(4)

    if jobs == "auto":
        workers = os.cpu_count() or 1
    else:
        try:
            workers = int(jobs)
        except ValueError:
            usage(f"--jobs takes a number or auto, not {jobs!r}")
        if workers < 1:
            usage(f"--jobs must be at least 1, not {workers}")
    if isolate not in ISOLATIONS:
        usage(f"--isolate takes one of {', '.join(ISOLATIONS)}, not {isolate!r}")
    seconds = None
    if unit_timeout is not None:
        from .durations import parse_duration

        try:
            seconds = parse_duration(unit_timeout, what="--unit-timeout") or None
        except (PhalanxError, ValueError) as error:
            usage(str(error))
    try:
        options = PytestOptions(
            jobs=workers, isolate=isolate,
            unit_timeout=seconds, each=_each(each) if each is not None else None,
            coverage=coverage.removeprefix("=") if coverage is not None else None,
            junit_out=junit_out, show_workers=show_workers,
        )
        sys.exit(pytest_main(options, pytest_args))
    except PhalanxError as error:
        usage(str(error))


def _each(spec: str) -> tuple[str, tuple[str, ...]]:
    """``NAME=v1,v2`` or ``NAME=@FILE`` (a value per line) as (NAME, values)."""
    name, sep, values = spec.partition("=")
    if not sep or not name.isidentifier():
        raise PhalanxError(f"--each takes NAME=v1,v2,... or NAME=@FILE, not {spec!r}")
    if values.startswith("@"):
        try:
            text = Path(values[1:]).read_text(encoding="utf-8")
        except OSError as error:
            raise PhalanxError(f"--each: cannot read {values[1:]}: {error.strerror or error}") from error
        except UnicodeDecodeError as error:
            line = error.object.count(b"\n", 0, error.start) + 1
            raise PhalanxError(f"--each: {values[1:]}:{line}: not UTF-8 text (byte 0x{error.object[error.start]:02x})"
                               ) from error
        found = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    else:
        found = [value.strip() for value in values.split(",") if value.strip()]
    if not found:
        raise PhalanxError(f"--each {name}: no values")
    if len(set(found)) != len(found):
        raise PhalanxError(f"--each {name}: a value is given twice")
    return name, tuple(found)


if __name__ == "__main__":  # pragma: no cover
    main()
