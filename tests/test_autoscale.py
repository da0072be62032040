"""``-j auto``, ``--load`` and ``--memfree`` (`phalanx.autoscale`).

The rules are tested on made-up samples (`Governor` is pure), the glue on the fake clock
with a scripted machine, the sampler against this machine, and the whole against real busy
loops: ``-j auto`` under load runs fewer tasks at once than on an idle machine, and never
more than its maximum.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from hypothesis import given, settings, strategies as st

from phalanx import Graph, Task
from phalanx.autoscale import (
    AutoJobs,
    Autoscaler,
    Governor,
    MachineSampler,
    Reading,
    Sample,
    Scaling,
    current_load,
    default_auto_max,
    default_reserve,
    parse_auto,
    parse_load,
    parse_memfree,
    reading,
)
from phalanx.errors import ConfigError
from phalanx.events import RunStarted, TaskFinished, TaskStarted, WorkersChanged
from phalanx.fakeclock import run_virtual
from phalanx.gnu.args import UsageError, parse_map_args
from phalanx.gnu.run import scaling_of, worker_count
from phalanx.scheduler import Scheduler
from phalanx.session import StandardBackends, run_session
from phalanx.sinks.live import LINE_PATTERN, LiveView, ProgressLines
from phalanx.sinks.trace import TraceSink
from phalanx.workers import usable_cpus
from scheduling import Recorder, work
from test_live_view import raw, screen, terminal

GiB = 2**30
WAIT = 10.0  # seconds: the bound on every wait for a process


# --- parsing ---------------------------------------------------------------------------------


def test_auto_jobs_parse() -> None:
    assert parse_auto("auto") == AutoJobs()
    assert parse_auto("auto:16") == AutoJobs(16)
    assert parse_auto("8") is None
    assert AutoJobs().resolve() == default_auto_max() == 2 * usable_cpus()[0]
    assert AutoJobs(3).resolve() == 3
    for bad in ("auto:0", "auto:", "auto:x", "auto:-2", "auto:1.5"):
        with pytest.raises(ConfigError, match=r"-j auto:.*expected auto, or auto:N"):
            parse_auto(bad)


def test_load_takes_gnu_parallels_forms() -> None:
    cpus = usable_cpus()[0]
    assert parse_load("3") == 3.0
    assert parse_load("1.5") == 1.5
    assert parse_load("50%") == cpus / 2
    assert parse_load("+2") == cpus + 2
    assert parse_load("-1") == max(0.01, cpus - 1.0)
    assert parse_load("0") == 0.01  # as GNU: 0 is 0.01
    for bad in ("x", "1.5%", "", "2 CPUs"):
        with pytest.raises(ConfigError, match="--load"):
            parse_load(bad)


def test_memfree_is_a_size_or_zero() -> None:
    assert parse_memfree("0") == 0
    assert parse_memfree("1GB") == 10**9
    assert parse_memfree("512MiB") == 512 * 2**20
    with pytest.raises(ConfigError, match="--memfree: '12Q' is not a size"):
        parse_memfree("12Q")


def test_map_reads_auto_load_and_memfree_as_gnu_parallel_would() -> None:
    options = parse_map_args(["-j", "auto:4", "--load", "2", "--memfree", "1G", "echo"])
    assert (options.jobs, options.load, options.memfree) == ("auto:4", 2.0, GiB)  # GNU's G is 2**30
    assert worker_count("auto:4", 100) == 4
    assert worker_count("auto", 100) == default_auto_max()
    assert scaling_of(options) == Scaling(auto=True, load=2.0, memfree=GiB)
    assert scaling_of(parse_map_args(["-j", "3", "--memfree", "0", "echo"])) == Scaling(memfree=0)
    assert scaling_of(parse_map_args(["-j", "3", "echo"])) is None
    for argv, message in [
        (["-j", "auto:0", "echo"], "-j auto:0: expected auto, or auto:N"),
        (["--load", "x", "echo"], "--load x: expected N, N%, +N or -N"),
        (["--memfree", "12Q", "echo"], "--memfree 12Q: expected a size"),
    ]:
        with pytest.raises(UsageError, match=re.escape(message)):
            parse_map_args(argv)


# --- the rules, on made-up samples -----------------------------------------------------------


class Machine:
    """Made-up samples: each `look` adds one interval of the CPU use given, as running totals."""

    def __init__(self, cpus: int = 2, *, available: int = 8 * GiB, total_memory: int = 16 * GiB) -> None:
        self.cpus = cpus
        self.available = available
        self.total_memory = total_memory
        self.load: float | None = 0.0
        self._total = self._busy = self._own = 0.0

    def look(self, others: float = 0.0, own: float = 0.0, seconds: float = 0.5) -> Sample:
        self._total += self.cpus * seconds
        self._busy += (others + own) * seconds
        self._own += own * seconds
        return self.now()

    def now(self) -> Sample:
        return Sample(self.cpus, self._total, self._busy, self._own, self.load, self.available, self.total_memory)


def test_reading_turns_running_totals_into_cpus() -> None:
    before = Sample(2, 100.0, 40.0, 3.0, None, 0, 0)
    use = reading(before, Sample(2, 102.0, 41.5, 3.5, None, 0, 0))  # 1 s on 2 CPUs
    assert use == Reading(2, others=1.0, own=0.5)
    assert use is not None and use.idle == 0.5
    assert reading(before, before) is None  # no time passed: nothing to say
    # Own time read a little off, or gone with a process that left the tree: within 0 and the busy time.
    assert reading(before, Sample(2, 102.0, 41.0, 2.0, None, 0, 0)) == Reading(2, others=1.0, own=0.0)
    assert reading(before, Sample(2, 102.0, 41.0, 9.0, None, 0, 0)) == Reading(2, others=0.0, own=1.0)


def test_auto_starts_at_one_per_cpu_and_doubles_while_the_cpus_sit_idle() -> None:
    machine = Machine(cpus=2)
    governor = Governor(Scaling(auto=True), max_workers=8, cpus=2)
    start = governor.start(machine.now())
    assert start.workers == 2
    seen = [governor.decide(machine.look(own=0.05 * n), running=n) for n in (2, 4, 8, 8)]
    assert [decision.workers for decision in seen] == [4, 8, 8, 8]
    assert [decision.reason for decision in seen] == ["1.9 of 2 CPUs idle"] + ["1.8 of 2 CPUs idle"] * 3


def test_auto_grows_only_while_every_slot_is_taken() -> None:
    machine = Machine()
    governor = Governor(Scaling(auto=True), max_workers=8, cpus=2)
    governor.start(machine.now())
    assert governor.decide(machine.look(), running=1).workers == 2  # a slot free: more would change nothing


def test_auto_adds_only_what_the_idle_cpus_fit() -> None:
    machine = Machine(cpus=4)
    governor = Governor(Scaling(auto=True), max_workers=16, cpus=4)
    governor.start(machine.now())  # 4
    # Four tasks each busy on a third of a CPU: the 2.67 CPUs idle fit eight more, doubling allows four.
    assert governor.decide(machine.look(own=4 / 3), running=4).workers == 8
    # Eight tasks at 0.41 CPUs each leave 0.7 CPUs idle: room for one more.
    assert governor.decide(machine.look(own=3.3), running=8).workers == 9
    # 0.5 CPUs idle is less than 15% of 4 CPUs: not enough to grow on.
    assert governor.decide(machine.look(own=3.5), running=9).workers == 9
    # Nine CPU-bound tasks fill the CPUs themselves: that is the aim, hold.
    assert governor.decide(machine.look(own=4.0), running=9).workers == 9


def test_auto_shrinks_at_once_when_other_programs_take_the_cpus() -> None:
    machine = Machine()
    governor = Governor(Scaling(auto=True), max_workers=8, cpus=2)
    governor.start(machine.now())
    for running in (2, 4):
        governor.decide(machine.look(own=0.05), running=running)
    assert governor.base == 8
    crowded = governor.decide(machine.look(others=1.98, own=0.02), running=8)
    assert crowded.workers == 1
    assert crowded.reason == "other programs keep 2 of 2 CPUs busy"
    # One program of two CPUs' worth: one task per CPU it leaves, at least one fewer each time.
    governor = Governor(Scaling(auto=True), max_workers=8, cpus=2)
    governor.start(machine.now())
    governor.decide(machine.look(own=0.05), running=2)  # 4
    assert governor.decide(machine.look(others=1.0, own=0.95), running=4).workers == 1


def test_auto_holds_between_the_thresholds_so_the_count_does_not_flap() -> None:
    machine = Machine()
    governor = Governor(Scaling(auto=True), max_workers=8, cpus=2)
    governor.start(machine.now())
    governor.decide(machine.look(own=0.05), running=2)  # 4
    for others in (1.5, 1.7, 1.6, 1.74, 1.55):  # 0.21 to 0.45 CPUs idle: neither idle enough nor saturated
        assert governor.decide(machine.look(others=others, own=0.05), running=4).workers == 4
    # Saturated by phalanx's own tasks, with a little hum from the rest: hold as well.
    assert governor.decide(machine.look(others=0.3, own=1.7), running=4).workers == 4


def test_auto_starts_lower_when_the_run_queue_is_full_already() -> None:
    machine = Machine(cpus=4)
    machine.load = 3.0
    start = Governor(Scaling(auto=True), max_workers=8, cpus=4).start(machine.now())
    assert (start.workers, start.reason) == (1, "-j auto starts at one per CPU free: 3 processes ready to run")
    # Phalanx's own processes ready to run (its watchdog starting, say) are no reason to start lower.
    own = Sample(4, 0.0, 0.0, 0.0, load=3.0, available=GiB, total_memory=GiB, own_load=2.0)
    assert Governor(Scaling(auto=True, memfree=0), max_workers=8, cpus=4).start(own).workers == 3
    machine.load = None  # unknown: one per CPU
    assert Governor(Scaling(auto=True), max_workers=8, cpus=4).start(machine.now()).workers == 4
    assert Governor(Scaling(auto=True), max_workers=3, cpus=4).start(None).workers == 3


def test_memfree_throttles_to_one_and_lets_go_when_memory_comes_back() -> None:
    machine = Machine(available=3 * GiB)
    governor = Governor(Scaling(memfree=2 * GiB), max_workers=6, cpus=2)
    assert governor.start(machine.now()).workers == 6
    machine.available = GiB
    held = governor.decide(machine.look(), running=6)
    assert (held.workers, held.reason) == (1, "1 GiB of memory available < 2 GiB (--memfree)")
    machine.available = 4 * GiB
    back = governor.decide(machine.look(), running=2)
    assert (back.workers, back.reason) == (6, "4 GiB of memory available again")


def test_auto_keeps_a_reserve_of_its_own_unless_memfree_says_otherwise() -> None:
    assert default_reserve(32 * GiB) == 2 * GiB  # the cap
    assert default_reserve(4 * GiB) == int(0.4 * GiB)
    machine = Machine(available=GiB, total_memory=32 * GiB)
    held = Governor(Scaling(auto=True), max_workers=8, cpus=2).start(machine.now())
    assert (held.workers, held.reason) == (1, "1 GiB of memory available < 2 GiB (-j auto's reserve)")
    assert Governor(Scaling(auto=True, memfree=0), max_workers=8, cpus=2).start(machine.now()).workers == 2


def test_load_throttles_a_fixed_count_and_never_raises_it() -> None:
    machine = Machine()
    governor = Governor(Scaling(load=3.0), max_workers=4, cpus=2)
    assert governor.start(machine.now()).workers == 4
    machine.load = 5.0
    held = governor.decide(machine.look(), running=4)
    assert (held.workers, held.reason) == (1, "load 5 >= 3 (--load)")
    machine.load = 2.0
    back = governor.decide(machine.look(), running=1)
    assert (back.workers, back.reason) == (4, "load 2 < 3 (--load)")
    assert governor.decide(machine.look(), running=4).workers == 4  # idle CPUs: a fixed -j stays put
    assert governor.decide(None, running=4).workers == 4  # nothing could be read: the count stays


looks = st.lists(
    st.tuples(
        st.floats(0, 1),  # the share of the CPUs other programs keep busy
        st.floats(0, 1),  # the share of what is left that phalanx's tree keeps busy
        st.one_of(st.none(), st.floats(0, 20)),  # the load
        st.integers(0, 4 * GiB),  # memory available
        st.integers(0, 40),  # attempts running
    ),
    max_size=20,
)


@settings(max_examples=100, deadline=None)
@given(
    cpus=st.integers(1, 64),
    max_workers=st.integers(1, 100),
    auto=st.booleans(),
    load=st.one_of(st.none(), st.floats(0.01, 10)),
    memfree=st.one_of(st.none(), st.integers(0, 4 * GiB)),
    start_load=st.one_of(st.none(), st.floats(0, 100)),
    steps=looks,
)
def test_never_above_the_maximum_never_below_one(
    cpus: int, max_workers: int, auto: bool, load: float | None, memfree: int | None,
    start_load: float | None, steps: list[tuple[float, float, float | None, int, int]],
) -> None:
    machine = Machine(cpus=cpus, available=2 * GiB, total_memory=8 * GiB)
    machine.load = start_load
    governor = Governor(Scaling(auto=auto, load=load, memfree=memfree), max_workers=max_workers, cpus=cpus)
    counts = [governor.start(machine.now()).workers]
    for others, own, machine.load, machine.available, running in steps:
        busy_others = others * cpus
        counts.append(governor.decide(machine.look(busy_others, own * (cpus - busy_others)), running).workers)
    assert all(1 <= count <= max_workers for count in counts)
    if not auto:  # a fixed -j N: N, or one while a throttle holds
        assert set(counts) <= {1, max_workers}


@settings(max_examples=100, deadline=None)
@given(cpus=st.integers(1, 64), max_workers=st.integers(1, 256))
def test_an_idle_machine_reaches_the_maximum_by_doubling(cpus: int, max_workers: int) -> None:
    machine = Machine(cpus=cpus)
    governor = Governor(Scaling(auto=True), max_workers=max_workers, cpus=cpus)
    count = governor.start(machine.now()).workers
    for _ in range(max_workers.bit_length()):
        count = governor.decide(machine.look(own=0.001 * count), running=count).workers
    assert count == max_workers


# --- on the scheduler's loop, on the fake clock ----------------------------------------------


class Script:
    """A machine whose other programs keep ``others[t]`` CPUs busy from the loop's time t on."""

    cpus = 2

    def __init__(self, others: dict[float, float]) -> None:
        self._others = sorted(others.items())
        self._at = self._total = self._busy = 0.0

    def sample(self) -> Sample:
        now = asyncio.get_running_loop().time()
        others = next((value for since, value in reversed(self._others) if since <= self._at), 0.0)
        self._total += self.cpus * (now - self._at)
        self._busy += others * (now - self._at)
        self._at = now
        return Sample(self.cpus, self._total, self._busy, 0.0, 0.0, 8 * GiB, 16 * GiB)


def test_the_count_follows_the_machine_while_the_run_goes(tmp_path: Path) -> None:
    recorder = Recorder()

    async def main() -> None:
        backends = StandardBackends("inline", grace=1.0)
        # Other programs take both CPUs from t = 2.
        autoscaler = Autoscaler(Scaling(auto=True), 8, sampler=Script({0.0: 0.0, 2.0: 2.0}))
        graph = Graph([Task(f"t{n:02d}", work(0.3)) for n in range(80)])
        scheduler = Scheduler(graph, backend_for=backends.for_task, max_workers=8, sinks=[recorder, autoscaler],
                              run_dir=tmp_path)
        autoscaler.govern(scheduler)
        await scheduler.run()
        autoscaler.close()

    run_virtual(main())
    changes = [(round(e.at, 6), e.workers) for e in recorder.of(WorkersChanged)]
    assert changes == [(0.0, 2), (0.5, 4), (1.0, 8), (2.5, 1)]
    # The starting count is told after RunStarted and before any task starts.
    kinds = [type(event) for event in recorder.events[:3]]
    assert kinds == [RunStarted, WorkersChanged, TaskStarted]
    # Never more tasks at once than the count in force (fewer take effect as tasks end).
    running = 0
    in_force = 8
    peak_after_load = 0
    for event in recorder.events:
        if isinstance(event, WorkersChanged):
            in_force = event.workers
        elif isinstance(event, TaskStarted):
            running += 1
            assert running <= in_force
            if event.at >= 2.5:
                peak_after_load = max(peak_after_load, running)
        elif isinstance(event, TaskFinished):
            running -= 1
    assert peak_after_load == 1


def test_run_session_wires_the_controller_with_the_real_machine() -> None:
    recorder = Recorder()

    async def main() -> None:
        backends = StandardBackends("inline", grace=1.0)
        graph = Graph([Task(f"t{n}", work(0.01)) for n in range(4)])
        await run_session(graph, backend_for=backends.for_task, close_backends=backends.aclose, max_workers=100,
                          sinks=[recorder], scaling=Scaling(auto=True))

    asyncio.run(main())
    first = recorder.events[1]
    assert isinstance(first, WorkersChanged) and 1 <= first.workers <= usable_cpus()[0]
    assert first.reason.startswith("-j auto starts at one per CPU")


# --- what people see -------------------------------------------------------------------------


def test_the_live_view_shows_the_count_in_force_and_why() -> None:
    console = terminal()
    view = LiveView(console, show_workers=True, clock=lambda: 1.0, colour=False, refresh_per_second=0)
    view.handle(RunStarted("run", total=9, max_workers=4, started_at=0.0))
    view.handle(TaskStarted("a", 1, 1, 0.0))
    view.handle(WorkersChanged(2, "other programs keep 1.8 of 2 CPUs busy", 0.5))
    view.refresh()
    shown = screen(raw(console)).splitlines()
    view.close()
    assert shown[2] == "  workers 2/4: other programs keep 1.8 of 2 CPUs busy"
    # The slots above the count in force are off.
    assert [line.split()[2] for line in shown[3:7]] == ["a", "idle", "off", "off"]


def test_progress_lines_add_the_count_once_it_has_changed() -> None:
    stream = io.StringIO()
    sink = ProgressLines(stream, interval=1.0)
    sink.handle(RunStarted("run", total=3, max_workers=8, started_at=0.0))
    sink.handle(TaskStarted("a", 1, 1, 1.0))
    sink.handle(WorkersChanged(3, "2 of 2 CPUs idle", 2.0))
    lines = stream.getvalue().splitlines()
    assert lines == [
        "phalanx: progress 0/3 done (0 succeeded, 0 failed, 0 skipped), 1 running, eta unknown",
        "phalanx: progress 0/3 done (0 succeeded, 0 failed, 0 skipped), 1 running, eta unknown, workers 3/8",
    ]
    match = LINE_PATTERN.fullmatch(lines[1])
    assert match is not None and (match["workers"], match["max_workers"]) == ("3", "8")


def test_the_trace_has_a_workers_counter(tmp_path: Path) -> None:
    sink = TraceSink(tmp_path / "trace.json")
    sink.handle(RunStarted("run", total=1, max_workers=8, started_at=0.0))
    sink.handle(WorkersChanged(2, "-j auto starts at one per CPU (2), at most 8", 0.0))
    sink.handle(WorkersChanged(4, "2 of 2 CPUs idle", 0.5))
    sink.close()
    events = json.loads((tmp_path / "trace.json").read_text())["traceEvents"]
    counters = [(e["ts"], e["args"]["workers"]) for e in events if e["ph"] == "C"]
    assert counters == [(0.0, 2), (500000.0, 4)]
    assert [e["args"]["reason"] for e in events if e.get("cat") == "workers"][1] == "2 of 2 CPUs idle"


def test_maps_bar_shows_the_count_in_force(capsys: pytest.CaptureFixture[str]) -> None:
    from phalanx.sinks.progress import ProgressBar

    bar = ProgressBar(3, colour=False, workers=True)
    bar.handle(RunStarted("run", total=3, max_workers=8, started_at=0.0))
    bar.handle(WorkersChanged(2, "other programs keep 2 of 2 CPUs busy", 0.5))
    bar.close()
    assert "workers 2/8" in capsys.readouterr().err


# --- the command lines -----------------------------------------------------------------------


def phalanx(*args: str, cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "phalanx", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=timeout)


@pytest.mark.parametrize(
    ("argv", "status", "line"),
    [
        (["run", "-j", "auto:0"], 2, "phalanx: error: Invalid value for '-j' / '--jobs': 'auto:0': expected auto, "
         "or auto:N with N the most tasks at once (at least 1) (see: phalanx run --help)"),
        (["run", "--load", "x"], 2, "phalanx: error: --load x: expected N, N%, +N or -N (processes ready to run; % "
         "and +/- of the CPUs)"),
        (["run", "--memfree", "12Q"], 2, "phalanx: error: --memfree: '12Q' is not a size (use a size such as "
         '"512MB", "1.5GiB", "800k" or a number of bytes; k, M, G, T are powers of 1000, Ki, Mi, Gi, Ti powers of '
         "1024)"),
        (["map", "-j", "auto:0", "touch", "ran"], 255, "phalanx map: -j auto:0: expected auto, or auto:N with N "
         "the most tasks at once (at least 1)"),
        (["map", "--load", "x", "touch", "ran"], 255, "phalanx map: --load x: expected N, N%, +N or -N (processes "
         "ready to run; % and +/- of the CPUs)"),
        (["map", "--memfree", "12Q", "touch", "ran"], 255, "phalanx map: --memfree 12Q: expected a size such as "
         "64k, 1M or 1G"),
    ],
)
def test_bad_values_are_one_line_and_nothing_runs(tmp_path: Path, argv: list[str], status: int, line: str) -> None:
    (tmp_path / "phalanx.toml").write_text('[tasks.canary]\ncmd = "touch ran"\n')
    result = phalanx(*argv, cwd=tmp_path)
    assert (result.returncode, result.stderr, result.stdout) == (status, line + "\n", "")
    assert not (tmp_path / "ran").exists()


def test_help_names_the_options() -> None:
    run_help = phalanx("run", "--help", cwd=Path.cwd()).stdout
    assert "-j, --jobs N|auto[:N]" in run_help and "--load MAX" in run_help and "--memfree SIZE" in run_help
    map_help = phalanx("map", "--help", cwd=Path.cwd()).stdout
    assert "-j auto, -j auto:N" in map_help and "--load MAX" in map_help and "--memfree SIZE" in map_help


# --- the machine -----------------------------------------------------------------------------

BURN = "import time\nend = time.process_time() + 0.3\nwhile time.process_time() < end: pass\n"


def test_the_sampler_counts_phalanxs_own_tree_live_and_reaped() -> None:
    sampler = MachineSampler()
    first = sampler.sample()
    assert first.cpus == usable_cpus()[0]
    assert first.cpu_total > 0 and 0 <= first.cpu_busy <= first.cpu_total
    assert 0 < first.available <= first.total_memory
    # A live child that has burnt 0.3 s of CPU and now waits: counted while it lives...
    child = subprocess.Popen([sys.executable, "-c", BURN + "print('burnt', flush=True)\ninput()\n"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        assert child.stdout.readline() == "burnt\n"  # bounded: the child ends by itself past its burn
        # Having printed, it may still be on its way into input(): wait until it sleeps there.
        waiting = psutil.Process(child.pid)
        deadline = time.monotonic() + WAIT
        while waiting.status() != psutil.STATUS_SLEEPING and time.monotonic() < deadline:
            os.sched_yield()
        cpu, load = sampler.own()
        assert cpu - first.own_cpu >= 0.25
        assert load == 0  # it waits on its stdin
    finally:
        child.communicate("\n", timeout=WAIT)
    # ... and, once reaped, through this process's children's times.
    assert sampler.own()[0] - first.own_cpu >= 0.25


def test_the_sampler_counts_its_own_busy_processes_in_the_load() -> None:
    loop = subprocess.Popen([sys.executable, "-c", "print('looping', flush=True)\nwhile True: pass"],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert loop.stdout is not None and loop.stdout.readline() == "looping\n"
        sample = MachineSampler().sample()
        assert sample.own_load >= 1  # a busy loop is always running or waiting for a CPU
        assert sample.load is not None and sample.load >= sample.own_load
    finally:
        loop.kill()
        loop.wait(timeout=WAIT)


def test_the_load_is_the_run_queue_now() -> None:
    load = current_load()
    assert load is not None and load >= 0
    if os.path.exists("/proc/stat"):
        assert load == int(load)  # a count of processes, not an average


# --- the acceptance: real busy loops ---------------------------------------------------------


@contextlib.contextmanager
def busy_loops(count: int) -> Iterator[None]:
    """``count`` processes that keep a CPU busy each, killed after. Niced, so that what the test
    starts meanwhile is not slowed down: CPU use is CPU use to ``-j auto``, whatever its priority."""
    code = "import os\nos.nice(19)\nwhile True: pass"
    loops = [subprocess.Popen([sys.executable, "-c", code]) for _ in range(count)]
    try:
        yield
    finally:
        for loop in loops:
            loop.kill()
        for loop in loops:
            loop.wait(timeout=WAIT)


def auto_run(directory: Path) -> tuple[int, float, list[tuple[int, str]]]:
    """Run a graph of sleeps with ``-j auto:8``: the most tasks that ran at once, the CPUs other
    programs kept busy meanwhile (as phalanx sees them: this test's children are phalanx's tree
    or busy loops), and the count's changes with their reasons.

    The run lasts 1.3 s whatever its concurrency: a ``timer`` task (first, by its priority)
    fails then and --fail-fast ends the run; an idle machine has grown the count by then
    (2, then 4 and 8 at 0.5 s and 1 s).
    """
    directory.mkdir()
    sleeps = "".join(f'[tasks.s{n:02d}]\ncmd = "sleep 0.4"\n' for n in range(40))
    (directory / "phalanx.toml").write_text('[tasks.timer]\ncmd = "sleep 1.3; exit 1"\npriority = "high"\n' + sleeps)
    sampler = MachineSampler()
    before = sampler.sample()
    result = phalanx("run", "-j", "auto:8", "--fail-fast", "--json", "-q", "--trace", "trace.json", cwd=directory,
                     timeout=30)
    use = reading(before, sampler.sample())
    assert result.returncode == 1, result.stderr  # the timer's failure
    peak = json.loads(result.stdout)["summary"]["max_concurrency"]
    events = json.loads((directory / "trace.json").read_text())["traceEvents"]
    changes = [(e["args"]["workers"], e["args"]["reason"]) for e in events if e.get("cat") == "workers"]
    return peak, use.others if use is not None else 0.0, changes


def test_auto_runs_fewer_tasks_at_once_under_load_than_idle_never_more_than_its_maximum(tmp_path: Path) -> None:
    idle, others, idle_changes = auto_run(tmp_path / "idle")
    with busy_loops(2 * usable_cpus()[0]):  # twice what the CPUs hold
        loaded, _, loaded_changes = auto_run(tmp_path / "loaded")
    assert 1 <= loaded <= 2, loaded_changes  # one task, two at the very start
    assert idle <= 8, idle_changes
    if others >= 0.5:
        # Not this code's doing: programs outside the test kept the CPUs busy during the "idle" run.
        pytest.skip(f"the machine was not idle ({others:.1f} CPUs busy with other programs): {idle_changes}")
    assert idle > loaded, idle_changes
    assert idle == 8, idle_changes

