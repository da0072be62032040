"""Per-job overhead of ``phalanx map`` next to ``xargs -P``, GNU parallel and a bare-Python floor.

2,000 jobs that do nothing (``true``), fed as the lines ``1`` .. ``2000`` on standard input,
on 2 and on 8 slots. Every tool is a command of its own, timed from outside (start to exit,
interpreter or program start-up included, output to a pipe); the table shows milliseconds
per job (that wall time / jobs). The tools:

* ``floor``: the same work in bare Python, started as ``python -c <source>`` with this
  interpreter (``sys.executable``) and timed from outside like the others, so that its
  start-up counts as phalanx's does. It reads the lines from standard input, makes a temp
  directory, and for each job opens two output files there (``O_RDWR|O_CREAT|O_TRUNC``, as
  phalanx does) and calls ``subprocess.Popen(["/bin/sh", "-c", "true " + arg],
  start_new_session=True, stdin=DEVNULL, stdout=<file>, stderr=<file>, close_fds=True)``,
  keeping N in flight and reaping them with ``os.wait()``; then it removes the directory.
  ``floor (in-process)`` is the same function called inside this benchmark, timed around
  the call: the floor without interpreter start-up, for reference only. Targets use the
  from-outside ``floor``.
* ``phalanx map -j N true``, as users run it (the console script next to ``sys.executable``,
  else ``python -m phalanx``). Each job's command is ``true 1``, ``true 2``... and phalanx
  runs a command string with no shell syntax directly, without a shell (``command_argv`` in
  ``phalanx.backends.command``), unless its first word is a shell builtin or keyword, and
  ``true`` is one, so these jobs do go through ``/bin/sh -c``. The header line says which
  argv the installed phalanx uses for ``true 1``.
* ``phalanx map -j N 'true {};'``: the trailing ``;`` is shell syntax, which always sends
  the job through ``/bin/sh -c`` (command ``true 1;``), exactly the floor's work whatever
  ``command_argv`` decides about ``true``. This is the row compared with the floor.
* ``phalanx map -j N /usr/bin/true``: plain words, a program path, so exec'd without a shell:
  what a user's real program costs, and the work ``xargs`` does. For reference.
* ``xargs -P N -n 1 true``: execs ``true`` directly, no shell.
* ``parallel --will-cite -j N true``: GNU parallel (which runs each job through a shell).

Each round runs every tool once at each slot count, the tools in an order rotated from round
to round so that none always goes first. The table shows the median of the rounds (the
targets use it), the fastest round (other load on the machine only ever adds time), and the
median CPU time (user + system) of the command and all its jobs, per job (RUSAGE_CHILDREN;
parent and children for the in-process floor), which other load disturbs far less than wall
time; the header line prints the load average before and after. A
separate, untimed check first makes every tool run every job with a command that appends
its argument to a file, and checks that each argument appears exactly once; timed runs must
exit 0.

Every command runs with the bytecode cache on (``PYTHONDONTWRITEBYTECODE`` removed from the
environment, ``PYTHONPYCACHEPREFIX`` a temp directory, warmed before timing): an installed
phalanx has its ``.pyc`` files, while an editable checkout in an environment that sets
``PYTHONDONTWRITEBYTECODE`` would compile phalanx's modules at every start.

Start-up: the median of 20 runs each of ``python -c pass`` (``sys.executable``),
``phalanx --version``, ``phalanx map true ::: 1`` (one job) and, for reference,
``parallel --will-cite true ::: 1``.

Targets, at every slot count: phalanx (``'true {};'``, same work) at most 1.15x the floor;
phalanx as users run it (``true``) no slower than ``xargs -P``; GNU parallel at least 5x
slower than phalanx (``true``); ``phalanx --version`` and ``phalanx map`` with one job at most
3x ``python -c pass``. The exit status is 0 whether or not the targets are met (this is a
report); it is 1 if a tool fails to run its jobs.

Run it from the repository root (a full run takes a few minutes, mostly GNU parallel)::

    python benchmarks/map_overhead.py             # 2,000 jobs, 5 rounds
    python benchmarks/map_overhead.py --quick     # 300 jobs, 1 round, 5 start-up runs: a smoke test
    python benchmarks/map_overhead.py --rounds 9 --jobs 5000
"""

from __future__ import annotations

import argparse
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
TARGET_VS_FLOOR = 1.15
TARGET_VS_XARGS = 1.0
TARGET_PARALLEL_SLOWER = 5.0
TARGET_STARTUP = 3.0

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

    ``check`` is the argv for the correctness check, whose jobs append their argument to
    the file given.
    """

    label: str
    argv: Callable[[int], list[str]]
    check: Callable[[int, str], list[str]]


def _floor_argv(slots: int, template: str = "true {}") -> list[str]:
    return [sys.executable, "-c", FLOOR_SOURCE, str(slots), template]


TOOLS: tuple[Tool, ...] = (
    Tool("floor (sh -c)", _floor_argv, lambda n, f: _floor_argv(n, f"echo {{}} >> {f}")),
    Tool(
        "phalanx map true",
        lambda n: [*PHALANX, "map", "-j", str(n), "true"],
        lambda n, f: [*PHALANX, "map", "-j", str(n), f"echo {{}} >> {f}"],
    ),
    Tool(
        "phalanx map 'true {};'",
        lambda n: [*PHALANX, "map", "-j", str(n), "true {};"],
        lambda n, f: [*PHALANX, "map", "-j", str(n), f"echo {{}} >> {f};"],
    ),
    Tool(
        f"phalanx map {TRUE_PATH}",
        lambda n: [*PHALANX, "map", "-j", str(n), TRUE_PATH],
        # Direct exec cannot redirect: a script that appends its argument, written beside the file.
        lambda n, f: [*PHALANX, "map", "-j", str(n), f + ".sh"],
    ),
    Tool(
        "xargs -P",
        lambda n: ["xargs", "-P", str(n), "-n", "1", "true"],
        lambda n, f: ["xargs", "-P", str(n), "-n", "1", "sh", "-c", f'echo "$0" >> {f}'],
    ),
    Tool(
        "GNU parallel",
        lambda n: ["parallel", "--will-cite", "-j", str(n), "true"],
        lambda n, f: ["parallel", "--will-cite", "-j", str(n), f"echo {{}} >> {f}"],
    ),
)
FLOOR, PHALANX_TRUE, PHALANX_SHELL, PHALANX_EXEC, XARGS, PARALLEL = (tool.label for tool in TOOLS)
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


def _cpu(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def run_timed(argv: list[str], stdin: bytes, what: str) -> Timing:
    """Time ``argv`` fed ``stdin`` from start to exit; ToolFailed unless it exits 0.

    The CPU time is that of the command and of every job it reaped (RUSAGE_CHILDREN).
    """
    cpu = _cpu(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(argv, input=stdin, capture_output=True, env=ENV or None, check=False)
    seconds = time.perf_counter() - start
    cpu = _cpu(resource.RUSAGE_CHILDREN) - cpu
    if done.returncode:
        tail = done.stderr.decode(errors="replace").strip()[-500:]
        raise ToolFailed(f"{what}: exit status {done.returncode}: {tail}")
    return Timing(seconds, cpu)


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
            run_timed(tool.check(slots, path), stdin, f"{tool.label} (check, -j{slots})")
            got = sorted(Path(path).read_text().split(), key=int)
            if got != expected:
                missing = len(set(expected) - set(got))
                raise ToolFailed(
                    f"{tool.label} (check, -j{slots}): {len(got)} lines for {jobs} jobs, {missing} argument(s) missing"
                )
            print(f"check {tool.label:26} -j{slots}: {jobs} jobs, each ran once", file=sys.stderr)


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


def measure(jobs: int, rounds: int) -> dict[tuple[str, int], list[Timing]]:
    """Timings by (tool, slots), every tool once per slot count per round, in a rotating order."""
    stdin = _lines(jobs)
    labels = [tool.label for tool in TOOLS] + [FLOOR_IN_PROCESS]
    timings: dict[tuple[str, int], list[Timing]] = {(label, n): [] for label in labels for n in SLOT_COUNTS}

    def timed(tool: Tool) -> Callable[[int], Timing]:
        return lambda n: run_timed(tool.argv(n), stdin, f"{tool.label} -j{n}")

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


def measure_startup(runs: int) -> dict[str, float]:
    """Median wall seconds of each start-up command over ``runs`` runs, interleaved."""
    commands = {
        "python -c pass": [sys.executable, "-c", "pass"],
        "phalanx --version": [*PHALANX, "--version"],
        "phalanx map true ::: 1": [*PHALANX, "map", "true", ":::", "1"],
        "parallel true ::: 1": ["parallel", "--will-cite", "true", ":::", "1"],
    }
    for argv in commands.values():  # warm the page cache and the .pyc files
        run_timed(argv, b"", " ".join(argv))
    seconds: dict[str, list[float]] = {label: [] for label in commands}
    for _ in range(runs):
        for label, argv in commands.items():
            seconds[label].append(run_timed(argv, b"", label).wall)
    return {label: statistics.median(values) for label, values in seconds.items()}


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


def report(jobs: int, timings: dict[tuple[str, int], list[Timing]], startup: dict[str, float]) -> str:
    """The tables (medians, fastest rounds, CPU), then one verdict line per target."""
    ms = {key: statistics.median(t.wall for t in values) / jobs * 1000 for key, values in timings.items()}
    best = {key: min(t.wall for t in values) / jobs * 1000 for key, values in timings.items()}
    cpu = {key: statistics.median(t.cpu for t in values) / jobs * 1000 for key, values in timings.items()}
    labels = [FLOOR, FLOOR_IN_PROCESS, PHALANX_SHELL, PHALANX_TRUE, PHALANX_EXEC, XARGS, PARALLEL]
    headers = ["ms per job", *(f"-j{n}" for n in SLOT_COUNTS)]
    headers += [f"fastest -j{n}" for n in SLOT_COUNTS] + [f"CPU -j{n}" for n in SLOT_COUNTS]
    rows = [[label, *(f"{by[label, n]:.3f}" for by in (ms, best, cpu) for n in SLOT_COUNTS)] for label in labels]

    ratios = {
        f"{PHALANX_SHELL} / floor": {n: ms[PHALANX_SHELL, n] / ms[FLOOR, n] for n in SLOT_COUNTS},
        f"{PHALANX_TRUE} / floor": {n: ms[PHALANX_TRUE, n] / ms[FLOOR, n] for n in SLOT_COUNTS},
        f"{PHALANX_TRUE} / xargs -P": {n: ms[PHALANX_TRUE, n] / ms[XARGS, n] for n in SLOT_COUNTS},
        f"{PHALANX_EXEC} / xargs -P": {n: ms[PHALANX_EXEC, n] / ms[XARGS, n] for n in SLOT_COUNTS},
        f"GNU parallel / {PHALANX_TRUE}": {n: ms[PARALLEL, n] / ms[PHALANX_TRUE, n] for n in SLOT_COUNTS},
    }
    pairs = {
        f"{PHALANX_SHELL} / floor": (PHALANX_SHELL, FLOOR),
        f"{PHALANX_TRUE} / floor": (PHALANX_TRUE, FLOOR),
        f"{PHALANX_TRUE} / xargs -P": (PHALANX_TRUE, XARGS),
        f"{PHALANX_EXEC} / xargs -P": (PHALANX_EXEC, XARGS),
        f"GNU parallel / {PHALANX_TRUE}": (PARALLEL, PHALANX_TRUE),
    }
    ratio_rows = [
        [label, *(f"{by[a, n] / by[b, n]:.2f}" for by in (ms, best, cpu) for n in SLOT_COUNTS)]
        for label, (a, b) in pairs.items()
    ]

    base = startup["python -c pass"]
    startup_rows = [[label, f"{value * 1000:.1f}", f"{value / base:.2f}"] for label, value in startup.items()]

    lines = [
        table(headers, rows),
        "",
        table(["ratio", *headers[1:]], ratio_rows),
        "",
        table(["start-up (median)", "ms", "x python -c pass"], startup_rows),
        "",
    ]

    def verdict(label: str, by_n: dict[int, float], limit: float, *, at_least: bool = False) -> str:
        worst = min(by_n, key=by_n.__getitem__) if at_least else max(by_n, key=by_n.__getitem__)
        ok = by_n[worst] >= limit if at_least else by_n[worst] <= limit
        numbers = ", ".join(f"-j{n} {value:.2f}" for n, value in by_n.items())
        return f"target {label}: {'PASS' if ok else 'MISS'} ({numbers})"

    lines.append(
        verdict(
            f"phalanx 'true {{}};' <= {TARGET_VS_FLOOR}x floor (same work)",
            ratios[f"{PHALANX_SHELL} / floor"],
            TARGET_VS_FLOOR,
        )
    )
    lines.append(verdict("phalanx true <= xargs -P", ratios[f"{PHALANX_TRUE} / xargs -P"], TARGET_VS_XARGS))
    lines.append(
        verdict(
            f"GNU parallel >= {TARGET_PARALLEL_SLOWER:g}x phalanx true",
            ratios[f"GNU parallel / {PHALANX_TRUE}"],
            TARGET_PARALLEL_SLOWER,
            at_least=True,
        )
    )
    for label in ("phalanx --version", "phalanx map true ::: 1"):
        ratio = startup[label] / base
        lines.append(
            f"target start-up {label} <= {TARGET_STARTUP:g}x python -c pass: "
            f"{'PASS' if ratio <= TARGET_STARTUP else 'MISS'} ({ratio:.2f}x, {startup[label] * 1000:.1f} ms)"
        )
    return "\n".join(lines)


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
    pycache = tempfile.mkdtemp(prefix="map-overhead-pycache-")
    ENV.update({k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"})
    ENV["PYTHONPYCACHEPREFIX"] = pycache
    try:
        for slots in SLOT_COUNTS:
            check_tools(jobs, slots)
        startup = measure_startup(QUICK_STARTUP_RUNS if args.quick else STARTUP_RUNS)
        seconds = measure(jobs, rounds)
    except ToolFailed as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(pycache, ignore_errors=True)
    print(
        f"{jobs} jobs of `true`, median of {rounds} round(s), {os.cpu_count()} CPUs "
        f"(load average {load_before:.2f} before, {os.getloadavg()[0]:.2f} after); ms per job = wall time of the "
        f"whole command (start-up included) / jobs.\nphalanx = {PHALANX_LABEL}; its job `true 1` runs "
        f"{shell_path_of_true()}; Python bytecode cached (PYTHONPYCACHEPREFIX, no PYTHONDONTWRITEBYTECODE)."
    )
    print(report(jobs, seconds, startup))
    return 0


if __name__ == "__main__":
    sys.exit(main())
