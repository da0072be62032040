"""The command line: parse, build the model, call the engine, turn the outcome into an exit code.

Exit codes (``run``, ``plan``, ``graph``): 0 all succeeded; 1 some task did not; 2 bad
usage or input, nothing ran; 130 interrupted (SIGINT); 143 terminated (SIGTERM).
Bad input is one line on stderr naming the file and line, never a traceback.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click

from . import __version__
from .errors import PhalanxError, SelectionError, did_you_mean

if TYPE_CHECKING:
    from .config import TaskFile
    from .model import Graph

EXIT_BAD_INPUT = 2

RUN_EXAMPLES = """
\b
Examples:
  phalanx run                      # phalanx.toml (or [tool.phalanx] in pyproject.toml) here
  phalanx run examples/ci.toml -j 8
  phalanx run --select mypy        # mypy and what it depends on
  phalanx run --select tag:lint --no-deps --output always
  phalanx run --fail-fast --json > report.json
"""


def _fail(error: PhalanxError | str) -> NoReturn:
    click.echo(f"phalanx: error: {error}", err=True)
    sys.exit(EXIT_BAD_INPUT)


def _load(file: str | None) -> TaskFile:
    from .config import find_task_file, load_task_file

    try:
        path = Path(file) if file is not None else find_task_file()
        return load_task_file(path)
    except PhalanxError as error:
        _fail(error)


def _locate(error: PhalanxError, task_file: TaskFile, key: str | None = None) -> PhalanxError:
    if error.task_id is not None and error.file is None:
        error.located(str(task_file.path), task_file.line_of(error.task_id, key))
    return error


def select(graph: Graph, patterns: Sequence[str], *, with_deps: bool) -> Graph:
    """The part of the graph the ``--select`` patterns name.

    A pattern is a task id, the name of a ``for_each`` group, or ``tag:NAME``. Selected
    tasks bring everything they depend on unless ``with_deps`` is False.

    Raises:
        SelectionError: a pattern names nothing (with a did-you-mean).
    """
    if not patterns:
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


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="phalanx")
def main() -> None:
    """phalanx: run shell commands, task DAGs and Python callables in parallel."""


def _jobs_option(function: Any) -> Any:
    return click.option(
        "-j",
        "--jobs",
        "jobs",
        type=click.IntRange(min=1),
        default=None,
        help="How many tasks run at once (slots). Default: the number of CPUs.",
    )(function)


@main.command(epilog=RUN_EXAMPLES)
@click.argument("file", required=False)
@_jobs_option
@click.option("--fail-fast", is_flag=True, help="On the first failure, stop everything (default: keep going).")
@click.option("--select", "selects", multiple=True, metavar="ID|tag:T", help="Run only these (repeatable).")
@click.option("--no-deps", is_flag=True, help="With --select: do not bring the selected tasks' dependencies.")
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
def run(
    file: str | None,
    jobs: int | None,
    fail_fast: bool,
    selects: tuple[str, ...],
    no_deps: bool,
    dry_run: bool,
    output: str,
    as_json: bool,
    log_dir: str | None,
) -> None:
    """Run the tasks of FILE (default: ./phalanx.toml), each as soon as its dependencies succeed."""
    import asyncio

    from .render import summary_text
    from .session import StandardBackends, run_session
    from .sinks.console import ConsoleReporter
    from .workers import optimal_workers

    task_file = _load(file)
    try:
        graph = select(task_file.graph, selects, with_deps=not no_deps)
    except PhalanxError as error:
        _fail(error)
    workers = jobs or optimal_workers("commands").count
    if dry_run:
        _dry_run(task_file, graph, workers)
        return
    human = sys.stderr if as_json else sys.stdout
    reporter = ConsoleReporter(human, output=output)  # type: ignore[arg-type]
    backends = StandardBackends("auto", grace=2.0)
    try:
        report = asyncio.run(
            run_session(
                graph,
                backend_for=backends.for_task,
                close_backends=backends.aclose,
                max_workers=workers,
                capacities=task_file.capacities,
                fail_fast=fail_fast,
                sinks=[reporter],
                log_dir=log_dir,
                handle_signals=True,
            )
        )
    except PhalanxError as error:
        _fail(_locate(error, task_file, "resources"))
    human.write(summary_text(report) + "\n")
    human.flush()
    if as_json:
        json.dump(report.to_dict(), sys.stdout, indent=2, default=str)
        sys.stdout.write("\n")
    sys.exit(report.exit_code)


def _dry_run(task_file: TaskFile, graph: Graph, workers: int) -> None:
    from .plan import get_execution_plan

    try:
        plan = get_execution_plan(graph, max_workers=workers, resources=task_file.capacities)
    except PhalanxError as error:
        _fail(_locate(error, task_file, "resources"))
    click.echo(f"Would run {len(graph)} tasks on {workers} workers, in this order (by estimate):")
    width = len(str(len(plan.start_order)))
    for position, tid in enumerate(plan.start_order, 1):
        click.echo(f"  {position:>{width}}. {tid}: {graph[tid].describe()}")


@main.command()
@click.argument("file", required=False)
@_jobs_option
def plan(file: str | None, jobs: int | None) -> None:
    """Show levels, the critical path, the widest level and the start order of FILE's tasks."""
    from .plan import get_execution_plan
    from .render import plan_text
    from .workers import optimal_workers

    task_file = _load(file)
    try:
        execution_plan = get_execution_plan(
            task_file.graph, max_workers=jobs or optimal_workers("commands").count, resources=task_file.capacities
        )
    except PhalanxError as error:
        _fail(_locate(error, task_file, "resources"))
    click.echo(plan_text(execution_plan, task_file.graph))


@main.command()
@click.argument("file", required=False)
@click.option(
    "--format", "fmt", type=click.Choice(["text", "mermaid", "dot"]), default="text", show_default=True
)
def graph(file: str | None, fmt: str) -> None:
    """Print FILE's dependency graph as text, Mermaid or Graphviz DOT."""
    from .render import GRAPH_FORMATS

    task_file = _load(file)
    click.echo(GRAPH_FORMATS[fmt](task_file.graph))


if __name__ == "__main__":  # pragma: no cover
    main()
