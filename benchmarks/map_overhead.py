"""Per-job overhead of ``phalanx map`` and ``phalanx run`` next to ``xargs -P``, GNU parallel and a bare-Python floor.

2,000 jobs that do nothing (``true``), fed as the lines ``1`` .. ``2000`` on standard input,
on 2 and on 8 slots. Every tool is a command of its own, timed from outside (start to exit,
interpreter or program start-up included, output to a pipe); the table shows milliseconds
per job (that wall time / jobs). The tools:

* ``floor``: the same work in bare Python, started as ``python -c <source>`` with this
  interpreter (``sys.executable``) and timed from outside like the others, so that its
  start-up counts as phalanx's does. It reads the lines from standard input, makes a temp
  directory, and for each job opens two output files there (``O_RDWR|O_CREAT|O_TRUNC``, as
  phalanx did before issue #14) and calls ``subprocess.Popen(["/bin/sh", "-c", "true " + arg],
  start_new_session=True, stdin=DEVNULL, stdout=<file>, stderr=<file>, close_fds=True)``,
  keeping N in flight and reaping them with ``os.wait()``; then it removes the directory.
  ``floor (in-process)`` is the same function called inside this benchmark, timed around
  the call: the floor without interpreter start-up. Both are reported, not targets.
* ``phalanx map -j N true``, as users run it (the console script next to ``sys.executable``,
  else ``python -m phalanx``). Each job's command is ``true 1``, ``true 2``...: a command
  string with no shell syntax, which phalanx may exec without a shell (``command_argv`` in
  ``phalanx.backends.command``) or, since ``true`` is also a shell builtin, run through
  ``/bin/sh -c``; the header line says which argv the installed phalanx uses for ``true 1``.
* ``phalanx map -j N -k true``: the same, output kept in input order (``-k``).
* ``phalanx map -j N --results DIR/out.jsonl true``: a record per job written as it ends
  instead of printing the output, to a path that does not exist before the run (a fresh,
  empty directory per run, removed after it). The JSON-lines file rather than the ``DIR``
  tree because the tree is GNU parallel's layout of a folder and three or more files per
  job, a filesystem cost of that feature itself, while a records file measures what
  ``--results`` adds per job to the run (reading the job's output back, formatting a record,
  appending it); JSON lines rather than CSV because it is phalanx's own record, the fuller
  one (status, reason, timing), so it is not the cheaper of the two.
* ``phalanx map -j N 'true {};'``: the trailing ``;`` is shell syntax, which always sends
  the job through ``/bin/sh -c`` (command ``true 1;``), exactly the floor's work whatever
  ``command_argv`` decides about ``true``. Compared with the floor.
* ``phalanx map -j N /usr/bin/true``: plain words, a program path, so exec'd without a shell:
  what a user's real program costs, and the work ``xargs`` does. For reference.
* ``phalanx run phalanx.toml -j N``: a task file of as many independent tasks as there are
  jobs, ``[tasks.t0001]`` ... each ``cmd = "true"`` (no deps, nothing else), run as users run
  it: the run journal on, output to a pipe, no ``-q``. Compared with ``xargs -P`` on the
  same number of jobs.
* ``xargs -P N -n 1 true``: execs ``true`` directly, no shell.
* ``parallel --will-cite -j N true``: GNU parallel (which runs each job through a shell).

Every command runs in one temp directory that holds ``phalanx.toml``, and ``phalanx map``
and ``phalanx run`` both keep their run journal there (``.phalanx/``). Each timed command
starts from the same state: before timing, one untimed ``phalanx map -j 2 true`` of the
jobs and one untimed ``phalanx run phalanx.toml -j 2`` fill the journal (so ``run`` finds
a duration history for every task, as from a user's second run on), ``.phalanx/`` is
copied aside, and that copy is put back before every timed command, so the journal does
not grow from round to round.

Each round runs every tool once at each slot count, the tools in an order rotated from round
to round so that none always goes first. The table shows the median of the rounds (the
targets use it), the fastest round (other load on the machine only ever adds time), and the
median CPU time (user + system) of the command and all its jobs, per job (RUSAGE_CHILDREN;
parent and children for the in-process floor), which other load disturbs far less than wall
time; the header line prints the load average before and after. A separate, untimed check
first makes every tool run every job with a command that appends its argument to a file
(``phalanx run``: a task file whose tasks append their number), and checks that each
argument appears exactly once; timed runs must exit 0.

Every command runs with the bytecode cache on (``PYTHONDONTWRITEBYTECODE`` removed from the
environment, ``PYTHONPYCACHEPREFIX`` a temp directory, warmed before timing): an installed
phalanx has its ``.pyc`` files, while an editable checkout in an environment that sets
``PYTHONDONTWRITEBYTECODE`` would compile phalanx's modules at every start.

Start-up: the median of 20 runs each, interleaved, of ``python -c pass`` and
``python -c "import asyncio, subprocess"`` (``sys.executable``; the second is what any
asyncio-based runner must import), ``phalanx --version``, ``phalanx map true ::: 1`` (one
job) and ``parallel --will-cite true ::: 1``.

Import time: ``python -X importtime`` (set as ``PYTHONPROFILEIMPORTTIME=1``, so the console
script runs as users run it) of ``phalanx --version``, ``phalanx map true ::: 1`` and, for
reference, ``python -c "import asyncio, subprocess"``, 5 runs each. The total is the *self*
column summed over every module imported during the run (the interpreter's own start-up
modules and imports made while the command runs included; each module is imported once, so
this equals the cumulative column summed over the top-level imports); phalanx's own is the
same sum over ``phalanx`` and ``phalanx.*``. Then the 10 largest self times among phalanx's
modules in ``phalanx map true ::: 1``, with their cumulative times. Medians of the runs;
``-X importtime`` slows imports a little, so these add up to more than the start-up times.

Targets (issue #14), on the medians of 5 rounds, whole-command wall time: ``phalanx map
true`` no slower than ``xargs -P`` at every slot count; GNU parallel at least 4x slower than
``phalanx map true``; ``phalanx run`` of the task file within 1.15x of ``xargs -P``;
start-up ``phalanx map true ::: 1`` at most 1.5x ``python -c "import asyncio, subprocess"``
and faster than ``parallel --will-cite true ::: 1``. The other ratios (to the floor, ``-k``,
``--results``, the program path, ``phalanx --version``) are reported, not targets. Peak
memory while a job floods its output is ``map_flood.py``'s. The exit status is 0 whether
or not the targets are met (this is a report); it is 1 if a tool fails to run its jobs.

Run it from the repository root (a full run takes several minutes, mostly GNU parallel and
``phalanx run``)::

    python benchmarks/map_overhead.py             # 2,000 jobs, 5 rounds
    python benchmarks/map_overhead.py --quick     # 300 jobs, 1 round, 5 start-up runs: a smoke test
    python benchmarks/map_overhead.py --rounds 9 --jobs 5000
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

SLOT_COUNTS = (2, 8)
JOBS = 2000
QUICK_JOBS = 300
STARTUP_RUNS = 20
QUICK_STARTUP_RUNS = 5
IMPORTTIME_RUNS = 5
QUICK_IMPORTTIME_RUNS = 2
TOP_MODULES = 10
TARGET_VS_XARGS = 1.0
TARGET_PARALLEL_SLOWER = 4.0
TARGET_RUN_VS_XARGS = 1.15
TARGET_STARTUP_VS_ASYNCIO = 1.5
TASK_FILE = "phalanx.toml"

# The floor: run as ``python -c FLOOR_SOURCE SLOTS TEMPLATE`` (the jobs' arguments on
# standard input), or exec'd here for the in-process timing. ``{}`` in TEMPLATE is the arg.
FLOOR_SOURCE = r'''
import os
import shutil
import subprocess
import sys
import tempfile

_FLAGS = os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC


def run_floor(slots, template, args):
    """Run /bin/sh -c <template with the arg> per arg, slots at once; return the failures."""
    run_dir = tempfile.mkdtemp(prefix="map-floor-")
    running = {}
    failed = 0

    def reap_one():
        nonlocal failed
        pid, status = os.wait()
        proc = running.pop(pid)
        proc.returncode = os.waitstatus_to_exitcode(status)  # Popen must not wait again
        failed += proc.returncode != 0

    try:
        for number, arg in enumerate(args, 1):
            if len(running) >= slots:
                reap_one()
            out_fd = os.open(os.path.join(run_dir, f"{number}.out"), _FLAGS, 0o644)
            err_fd = os.open(os.path.join(run_dir, f"{number}.err"), _FLAGS, 0o644)
            try:
                proc = subprocess.Popen(
                    ["/bin/sh", "-c", template.replace("{}", arg)],
                    start_new_session=True,
                    stdin=subprocess.DEVNULL,
                    stdout=out_fd,
                    stderr=err_fd,
                    close_fds=True,
                )
            finally:
                os.close(out_fd)
                os.close(err_fd)
            running[proc.pid] = proc
        while running:
            reap_one()
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
    return failed


if __name__ == "__main__":
    sys.exit(min(run_floor(int(sys.argv[1]), sys.argv[2], sys.stdin.read().splitlines()), 101))
'''


class ToolFailed(Exception):
    """A tool did not run every job successfully."""


def phalanx_command() -> tuple[list[str], str]:
    """How to start phalanx: the console script beside this interpreter if there is one."""
    script = Path(sys.executable).with_name("phalanx")
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)], str(script)
    return [sys.executable, "-m", "phalanx"], f"{Path(sys.executable).name} -m phalanx"


PHALANX, PHALANX_LABEL = phalanx_command()
TRUE_PATH = shutil.which("true") or "/bin/true"


@dataclass(frozen=True, slots=True)
class Tool:
    """One way of running the jobs: its row label and its argv for N slots.

    ``argv`` also gets a fresh, empty directory of the run's own (for files a run must not
    find from an earlier one). ``check`` is the argv for the correctness check, whose jobs
    append their argument to the file given. ``reads_stdin``: the jobs' arguments are fed
    on standard input (``phalanx run`` reads its task file instead).
    """

    label: str
    argv: Callable[[int, Path], list[str]]
    check: Callable[[int, str], list[str]]
    reads_stdin: bool = True


def _floor_argv(slots: int, template: str = "true {}") -> list[str]:
    return [sys.executable, "-c", FLOOR_SOURCE, str(slots), template]


def _map(slots: int, *words: str) -> list[str]:
    return [*PHALANX, "map", "-j", str(slots), *words]


TOOLS: tuple[Tool, ...] = (
    Tool("floor (sh -c)", lambda n, _: _floor_argv(n), lambda n, f: _floor_argv(n, f"echo {{}} >> {f}")),
    Tool("phalanx map true", lambda n, _: _map(n, "true"), lambda n, f: _map(n, f"echo {{}} >> {f}")),
    Tool("phalanx map -k true", lambda n, _: _map(n, "-k", "true"), lambda n, f: _map(n, "-k", f"echo {{}} >> {f}")),
    Tool(
        "phalanx map --results true",
        lambda n, scratch: _map(n, "--results", str(scratch / "out.jsonl"), "true"),
        lambda n, f: _map(n, "--results", f + ".jsonl", f"echo {{}} >> {f}"),
    ),
    Tool("phalanx map 'true {};'", lambda n, _: _map(n, "true {};"), lambda n, f: _map(n, f"echo {{}} >> {f};")),
    Tool(
        f"phalanx map {TRUE_PATH}",
        lambda n, _: _map(n, TRUE_PATH),
        # Direct exec cannot redirect: a script that appends its argument, written beside the file.
        lambda n, f: _map(n, f + ".sh"),
    ),
    Tool(
        f"phalanx run {TASK_FILE}",
        lambda n, _: [*PHALANX, "run", TASK_FILE, "-j", str(n)],
        # A task file of tasks that append their number, written beside the file.
        lambda n, f: [*PHALANX, "run", f + ".toml", "-j", str(n)],
        reads_stdin=False,
    ),
    Tool(
        "xargs -P",
        lambda n, _: ["xargs", "-P", str(n), "-n", "1", "true"],
        lambda n, f: ["xargs", "-P", str(n), "-n", "1", "sh", "-c", f'echo "$0" >> {f}'],
    ),
    Tool(
        "GNU parallel",
        lambda n, _: ["parallel", "--will-cite", "-j", str(n), "true"],
        lambda n, f: ["parallel", "--will-cite", "-j", str(n), f"echo {{}} >> {f}"],
    ),
)
(
    FLOOR,
    PHALANX_TRUE,
    PHALANX_KEEP_ORDER,
    PHALANX_RESULTS,
    PHALANX_SHELL,
    PHALANX_EXEC,
    PHALANX_RUN,
    XARGS,
    PARALLEL,
) = (tool.label for tool in TOOLS)
FLOOR_IN_PROCESS = "floor (in-process)"

# ------------------------------------------------------------------------- running


# Every command runs with Python's bytecode cache on, in a directory of our own: an installed
# phalanx has its .pyc files, and PYTHONDONTWRITEBYTECODE (set in some environments) would
# otherwise make every start compile phalanx's modules from source again (about 30 ms).
# `main` fills ENV in.
ENV: dict[str, str] = {}


@dataclass(frozen=True, slots=True)
class Timing:
    """Wall seconds of one run, and the CPU seconds (user + system) of every process in it."""

    wall: float
    cpu: float


@dataclass(frozen=True, slots=True)
class Workspace:
    """Where the timed commands run: ``root`` holds the task file and the run journal, and
    ``journal_copy`` the journal every timed command starts from (see ``reset``)."""

    root: Path
    journal_copy: Path
    scratch: Path

    @property
    def journal(self) -> Path:
        return self.root / ".phalanx"

    def reset(self) -> None:
        """Put the journal back as the warm-up left it, so every command finds the same state."""
        shutil.rmtree(self.journal, ignore_errors=True)
        shutil.copytree(self.journal_copy, self.journal)

    def fresh_dir(self) -> Path:
        return Path(tempfile.mkdtemp(prefix="run-", dir=self.scratch))


def _cpu(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def run_timed(argv: list[str], stdin: bytes, what: str, cwd: Path, env: dict[str, str] | None = None) -> Timing:
    """Time ``argv`` fed ``stdin`` in ``cwd`` from start to exit; ToolFailed unless it exits 0.

    The CPU time is that of the command and of every job it reaped (RUSAGE_CHILDREN).
    """
    cpu = _cpu(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(argv, input=stdin, capture_output=True, env=env or ENV or None, cwd=cwd, check=False)
    seconds = time.perf_counter() - start
    cpu = _cpu(resource.RUSAGE_CHILDREN) - cpu
    if done.returncode:
        tail = done.stderr.decode(errors="replace").strip()[-500:]
        raise ToolFailed(f"{what}: exit status {done.returncode}: {tail}")
    return Timing(seconds, cpu)


def task_file(jobs: int, command: Callable[[int], str]) -> str:
    """A task file of ``jobs`` independent tasks, ``t0001``...; task i runs ``command(i)``."""
    width = len(str(jobs))
    # A JSON string of plain text is a valid TOML basic string.
    return "".join(f"[tasks.t{i:0{width}d}]\ncmd = {json.dumps(command(i))}\n\n" for i in range(1, jobs + 1))


def check_tools(jobs: int, slots: int) -> None:
    """Every tool runs every job exactly once (jobs append their argument to a file)."""
    stdin = _lines(jobs)
    expected = [str(i) for i in range(1, jobs + 1)]
    with tempfile.TemporaryDirectory(prefix="map-overhead-check-") as directory:
        for number, tool in enumerate(TOOLS):
            path = os.path.join(directory, f"{number}.txt")
            Path(path).touch()
            script = Path(path + ".sh")
            script.write_text(f'#!/bin/sh\necho "$1" >> {path}\n')
            script.chmod(0o755)
            Path(path + ".toml").write_text(task_file(jobs, _appender(path)))
            what = f"{tool.label} (check, -j{slots})"
            run_timed(tool.check(slots, path), stdin if tool.reads_stdin else b"", what, Path(directory))
            got = sorted(Path(path).read_text().split(), key=int)
            if got != expected:
                missing = len(set(expected) - set(got))
                raise ToolFailed(f"{what}: {len(got)} lines for {jobs} jobs, {missing} argument(s) missing")
            print(f"check {tool.label:28} -j{slots}: {jobs} jobs, each ran once", file=sys.stderr)


def _appender(path: str) -> Callable[[int], str]:
    """The check's task command: task i appends i to ``path``."""
    return lambda i: f"echo {i} >> {path}"


def make_workspace(base: Path, jobs: int) -> Workspace:
    """The task file, and the journal after one untimed ``map`` and one untimed ``run``, copied aside."""
    workspace = Workspace(base / "work", base / "journal-copy", base / "scratch")
    for directory in (workspace.root, workspace.scratch):
        directory.mkdir()
    (workspace.root / TASK_FILE).write_text(task_file(jobs, lambda _: "true"))
    run_timed(_map(2, "true"), _lines(jobs), "phalanx map (warm-up)", workspace.root)
    run_timed([*PHALANX, "run", TASK_FILE, "-j", "2"], b"", "phalanx run (warm-up)", workspace.root)
    shutil.copytree(workspace.journal, workspace.journal_copy)
    return workspace


def floor_in_process(slots: int, jobs: int) -> Timing:
    """The floor's function run here, timed around the call (no interpreter start-up)."""
    namespace: dict[str, object] = {"__name__": "map_overhead_floor"}
    exec(compile(FLOOR_SOURCE, "<floor>", "exec"), namespace)  # our own source
    run_floor = namespace["run_floor"]
    assert callable(run_floor)
    args = [str(i) for i in range(1, jobs + 1)]
    cpu = _cpu(resource.RUSAGE_SELF) + _cpu(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    failed = run_floor(slots, "true {}", args)
    seconds = time.perf_counter() - start
    cpu = _cpu(resource.RUSAGE_SELF) + _cpu(resource.RUSAGE_CHILDREN) - cpu
    if failed:
        raise ToolFailed(f"floor (in-process, -j{slots}): {failed} job(s) failed")
    return Timing(seconds, cpu)


def measure(jobs: int, rounds: int, workspace: Workspace) -> dict[tuple[str, int], list[Timing]]:
    """Timings by (tool, slots), every tool once per slot count per round, in a rotating order."""
    stdin = _lines(jobs)
    labels = [tool.label for tool in TOOLS] + [FLOOR_IN_PROCESS]
    timings: dict[tuple[str, int], list[Timing]] = {(label, n): [] for label in labels for n in SLOT_COUNTS}

    def timed(tool: Tool) -> Callable[[int], Timing]:
        def run(slots: int) -> Timing:
            workspace.reset()
            scratch = workspace.fresh_dir()
            try:
                argv = tool.argv(slots, scratch)
                return run_timed(argv, stdin if tool.reads_stdin else b"", f"{tool.label} -j{slots}", workspace.root)
            finally:
                shutil.rmtree(scratch, ignore_errors=True)

        return run

    runners = [(tool.label, timed(tool)) for tool in TOOLS]
    runners.append((FLOOR_IN_PROCESS, lambda n: floor_in_process(n, jobs)))
    for number in range(rounds):
        shift = number % len(runners)
        order = runners[shift:] + runners[:shift]
        for slots in SLOT_COUNTS:
            for label, run in order:
                timing = run(slots)
                timings[label, slots].append(timing)
                print(
                    f"round {number + 1}/{rounds} -j{slots} {label:28} {timing.wall:7.3f}s "
                    f"{timing.wall / jobs * 1000:.3f} ms/job, CPU {timing.cpu / jobs * 1000:.3f} ms/job",
                    file=sys.stderr,
                )
    return timings


PYTHON_PASS = "python -c pass"
PYTHON_ASYNCIO = 'python -c "import asyncio, subprocess"'
PHALANX_VERSION = "phalanx --version"
PHALANX_ONE_JOB = "phalanx map true ::: 1"
PARALLEL_ONE_JOB = "parallel true ::: 1"
STARTUP_COMMANDS: dict[str, list[str]] = {
    PYTHON_PASS: [sys.executable, "-c", "pass"],
    PYTHON_ASYNCIO: [sys.executable, "-c", "import asyncio, subprocess"],
    PHALANX_VERSION: [*PHALANX, "--version"],
    PHALANX_ONE_JOB: [*PHALANX, "map", "true", ":::", "1"],
    PARALLEL_ONE_JOB: ["parallel", "--will-cite", "true", ":::", "1"],
}


def measure_startup(runs: int, workspace: Workspace) -> dict[str, float]:
    """Median wall seconds of each start-up command over ``runs`` runs, interleaved."""
    for label, argv in STARTUP_COMMANDS.items():  # warm the page cache and the .pyc files
        run_timed(argv, b"", label, workspace.root)
    seconds: dict[str, list[float]] = {label: [] for label in STARTUP_COMMANDS}
    for _ in range(runs):
        for label, argv in STARTUP_COMMANDS.items():
            workspace.reset()
            seconds[label].append(run_timed(argv, b"", label, workspace.root).wall)
    return {label: statistics.median(values) for label, values in seconds.items()}


# ---------------------------------------------------------------------- import time


@dataclass(frozen=True, slots=True)
class ImportTime:
    """One module's line of ``-X importtime``: microseconds in its own body, and with its imports."""

    self_us: int
    cumulative_us: int


def parse_importtime(stderr: str) -> dict[str, ImportTime]:
    """The modules of one ``-X importtime`` report (``import time: SELF | CUMULATIVE | NAME``)."""
    modules: dict[str, ImportTime] = {}
    for line in stderr.splitlines():
        if not line.startswith("import time:"):
            continue
        fields = line.removeprefix("import time:").split("|")
        if len(fields) != 3 or not fields[0].strip().isdigit():
            continue  # the header line
        modules[fields[2].strip()] = ImportTime(int(fields[0]), int(fields[1]))
    return modules


def is_phalanx_module(name: str) -> bool:
    return name == "phalanx" or name.startswith("phalanx.")


IMPORTTIME_COMMANDS = (PYTHON_ASYNCIO, PHALANX_VERSION, PHALANX_ONE_JOB)


def measure_importtime(runs: int, workspace: Workspace) -> dict[str, list[dict[str, ImportTime]]]:
    """``runs`` import profiles of each of IMPORTTIME_COMMANDS, interleaved."""
    env = {**ENV, "PYTHONPROFILEIMPORTTIME": "1"}
    profiles: dict[str, list[dict[str, ImportTime]]] = {label: [] for label in IMPORTTIME_COMMANDS}
    for _ in range(runs):
        for label in IMPORTTIME_COMMANDS:
            workspace.reset()
            done = subprocess.run(
                STARTUP_COMMANDS[label], capture_output=True, text=True, env=env, cwd=workspace.root, check=False
            )
            profile = parse_importtime(done.stderr)
            if done.returncode or not profile:
                raise ToolFailed(f"{label} (-X importtime): exit status {done.returncode}: {done.stderr[-500:]}")
            profiles[label].append(profile)
    return profiles


def _lines(jobs: int) -> bytes:
    return "".join(f"{i}\n" for i in range(1, jobs + 1)).encode()


# ---------------------------------------------------------------------------- report


def table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(cell) for cell in column) for column in zip(headers, *rows, strict=True)]
    lines = [headers, ["-" * width for width in widths], *rows]
    out = []
    for line in lines:
        first = line[0].ljust(widths[0])
        out.append("  ".join([first, *(cell.rjust(w) for cell, w in zip(line[1:], widths[1:], strict=True))]))
    return "\n".join(out)


def shell_path_of_true() -> str:
    """What the installed phalanx runs for the job ``true 1`` (its ``command_argv``)."""
    try:
        from phalanx.backends.command import command_argv
    except ImportError:
        return "unknown"
    argv = command_argv("true 1")
    return "via /bin/sh -c" if argv[:2] == ["/bin/sh", "-c"] else f"directly as {argv}"


def verdict(label: str, by_n: dict[int, float], limit: float, *, at_least: bool = False) -> str:
    """PASS if the ratio at every slot count is within ``limit`` (at least it, with ``at_least``)."""
    worst = min(by_n, key=by_n.__getitem__) if at_least else max(by_n, key=by_n.__getitem__)
    ok = by_n[worst] >= limit if at_least else by_n[worst] <= limit
    numbers = ", ".join(f"-j{n} {value:.2f}" for n, value in by_n.items())
    return f"target {label}: {'PASS' if ok else 'MISS'} ({numbers})"


def jobs_report(jobs: int, timings: dict[tuple[str, int], list[Timing]]) -> list[str]:
    """The table of the tools (medians, fastest rounds, CPU), the ratios, and the jobs' verdicts."""
    ms = {key: statistics.median(t.wall for t in values) / jobs * 1000 for key, values in timings.items()}
    best = {key: min(t.wall for t in values) / jobs * 1000 for key, values in timings.items()}
    cpu = {key: statistics.median(t.cpu for t in values) / jobs * 1000 for key, values in timings.items()}
    labels = [FLOOR, FLOOR_IN_PROCESS, PHALANX_SHELL, PHALANX_TRUE, PHALANX_KEEP_ORDER, PHALANX_RESULTS]
    labels += [PHALANX_EXEC, PHALANX_RUN, XARGS, PARALLEL]
    headers = ["ms per job", *(f"-j{n}" for n in SLOT_COUNTS)]
    headers += [f"fastest -j{n}" for n in SLOT_COUNTS] + [f"CPU -j{n}" for n in SLOT_COUNTS]
    rows = [[label, *(f"{by[label, n]:.3f}" for by in (ms, best, cpu) for n in SLOT_COUNTS)] for label in labels]

    pairs = {
        f"{PHALANX_SHELL} / floor": (PHALANX_SHELL, FLOOR),
        f"{PHALANX_TRUE} / floor": (PHALANX_TRUE, FLOOR),
        f"{PHALANX_TRUE} / xargs -P": (PHALANX_TRUE, XARGS),
        f"{PHALANX_KEEP_ORDER} / xargs -P": (PHALANX_KEEP_ORDER, XARGS),
        f"{PHALANX_RESULTS} / xargs -P": (PHALANX_RESULTS, XARGS),
        f"{PHALANX_EXEC} / xargs -P": (PHALANX_EXEC, XARGS),
        f"{PHALANX_RUN} / xargs -P": (PHALANX_RUN, XARGS),
        f"GNU parallel / {PHALANX_TRUE}": (PARALLEL, PHALANX_TRUE),
    }
    ratio_rows = [
        [label, *(f"{by[a, n] / by[b, n]:.2f}" for by in (ms, best, cpu) for n in SLOT_COUNTS)]
        for label, (a, b) in pairs.items()
    ]

    def ratios(a: str, b: str) -> dict[int, float]:
        return {n: ms[a, n] / ms[b, n] for n in SLOT_COUNTS}

    return [
        table(headers, rows),
        "",
        table(["ratio", *headers[1:]], ratio_rows),
        "",
        verdict("phalanx map true <= xargs -P", ratios(PHALANX_TRUE, XARGS), TARGET_VS_XARGS),
        verdict(
            f"GNU parallel >= {TARGET_PARALLEL_SLOWER:g}x phalanx map true",
            ratios(PARALLEL, PHALANX_TRUE),
            TARGET_PARALLEL_SLOWER,
            at_least=True,
        ),
        verdict(
            f"phalanx run of {jobs} true tasks <= {TARGET_RUN_VS_XARGS}x xargs -P",
            ratios(PHALANX_RUN, XARGS),
            TARGET_RUN_VS_XARGS,
        ),
    ]


def startup_report(startup: dict[str, float]) -> list[str]:
    """The start-up table and its two verdicts."""
    rows = [
        [label, f"{value * 1000:.1f}", f"{value / startup[PYTHON_PASS]:.2f}", f"{value / startup[PYTHON_ASYNCIO]:.2f}"]
        for label, value in startup.items()
    ]
    vs_asyncio = startup[PHALANX_ONE_JOB] / startup[PYTHON_ASYNCIO]
    vs_parallel = startup[PHALANX_ONE_JOB] / startup[PARALLEL_ONE_JOB]
    return [
        table(["start-up (median)", "ms", "x python -c pass", "x import asyncio, subprocess"], rows),
        "",
        f"target start-up {PHALANX_ONE_JOB} <= {TARGET_STARTUP_VS_ASYNCIO}x {PYTHON_ASYNCIO}: "
        f"{'PASS' if vs_asyncio <= TARGET_STARTUP_VS_ASYNCIO else 'MISS'} ({vs_asyncio:.2f}x)",
        f"target start-up {PHALANX_ONE_JOB} < {PARALLEL_ONE_JOB}: "
        f"{'PASS' if vs_parallel < 1.0 else 'MISS'} ({vs_parallel:.2f}x)",
    ]


def importtime_report(profiles: dict[str, list[dict[str, ImportTime]]]) -> list[str]:
    """Totals per command, then the largest self times of phalanx's modules in the one-job map."""

    def median_ms(values: list[int]) -> str:
        return f"{statistics.median(values) / 1000:.1f}"

    rows = []
    for label, runs in profiles.items():
        total = [sum(m.self_us for m in profile.values()) for profile in runs]
        own = [sum(m.self_us for name, m in profile.items() if is_phalanx_module(name)) for profile in runs]
        counts = [len(profile) for profile in runs]
        own_counts = [sum(map(is_phalanx_module, profile)) for profile in runs]
        rows.append([label, median_ms(total), median_ms(own), f"{max(counts)}", f"{max(own_counts)}"])
    map_runs = profiles[PHALANX_ONE_JOB]
    names = {name for profile in map_runs for name in profile if is_phalanx_module(name)}
    by_module = {
        name: (
            [profile[name].self_us for profile in map_runs if name in profile],
            [profile[name].cumulative_us for profile in map_runs if name in profile],
        )
        for name in names
    }
    largest = sorted(by_module, key=lambda name: statistics.median(by_module[name][0]), reverse=True)[:TOP_MODULES]
    module_rows = [[name, median_ms(by_module[name][0]), median_ms(by_module[name][1])] for name in largest]
    return [
        table([f"-X importtime (median of {len(map_runs)})", "all ms", "phalanx ms", "modules", "phalanx's"], rows),
        "",
        table([f"{PHALANX_ONE_JOB}: phalanx's {TOP_MODULES} largest", "self ms", "cumulative ms"], module_rows),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=5, help="rounds per tool and slot count (default 5; medians)")
    parser.add_argument("--jobs", type=int, help=f"jobs per run (default {JOBS}, {QUICK_JOBS} with --quick)")
    parser.add_argument("--quick", action="store_true", help=f"1 round, {QUICK_JOBS} jobs: a smoke test")
    args = parser.parse_args(argv)
    rounds = 1 if args.quick else args.rounds
    jobs = args.jobs or (QUICK_JOBS if args.quick else JOBS)
    if rounds < 1 or jobs < 1:
        parser.error("--rounds and --jobs must be at least 1")
    for program in ("xargs", "parallel"):
        if shutil.which(program) is None:
            print(f"error: {program} is not installed", file=sys.stderr)
            return 1

    load_before = os.getloadavg()[0]
    base = Path(tempfile.mkdtemp(prefix="map-overhead-"))
    ENV.update({k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"})
    ENV["PYTHONPYCACHEPREFIX"] = str(base / "pycache")
    try:
        for slots in SLOT_COUNTS:
            check_tools(jobs, slots)
        workspace = make_workspace(base, jobs)
        startup = measure_startup(QUICK_STARTUP_RUNS if args.quick else STARTUP_RUNS, workspace)
        imports = measure_importtime(QUICK_IMPORTTIME_RUNS if args.quick else IMPORTTIME_RUNS, workspace)
        seconds = measure(jobs, rounds, workspace)
    except ToolFailed as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(base, ignore_errors=True)
    print(
        f"{jobs} jobs of `true`, median of {rounds} round(s), {os.cpu_count()} CPUs "
        f"(load average {load_before:.2f} before, {os.getloadavg()[0]:.2f} after); ms per job = wall time of the "
        f"whole command (start-up included) / jobs.\nphalanx = {PHALANX_LABEL}; its job `true 1` runs "
        f"{shell_path_of_true()}; Python bytecode cached (PYTHONPYCACHEPREFIX, no PYTHONDONTWRITEBYTECODE); "
        f"every command starts from the same run journal (one earlier map and run of the same jobs)."
    )
    print("\n".join([*jobs_report(jobs, seconds), "", *startup_report(startup), "", *importtime_report(imports)]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
