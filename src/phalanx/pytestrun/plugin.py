"""The pytest plugin behind ``phalanx pytest``: collect once, run the units in forks.

`main` runs ``pytest.main(args, plugins=[PhalanxPytest(...)])``: pytest parses its own
arguments, finds the rootdir and ini file, loads plugins and conftests and collects, all in
this process, as plain pytest would. The plugin then takes over the run loop
(``pytest_runtestloop``): it cuts the collected items into units (`units`), and runs them
on phalanx's scheduler with `forks.ForkBackend`, each unit in a fresh fork of this warm
process. Every report a fork sends goes through this process's own
``pytest_runtest_logreport``: pytest's terminal output, its counts line and exit code,
``--junitxml``, ``--lf``/``--ff`` and other plugins see the tests as if they had run here.

The slowest units start first once the duration history (the run journal in
``.phalanx/`` under the rootdir, as ``phalanx run`` keeps it) knows them.
"""

from __future__ import annotations

import asyncio
import gc
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pytest
from _pytest.reports import TestReport

from ..errors import PhalanxError
from ..events import Event, Sink
from ..model import Graph, Task
from ..results import CancelReason
from ..scheduler import Scheduler
from . import wire
from .forks import ForkBackend, FreshWorkers
from .junitout import JUnitOut
from .units import Isolation, Unit, make_units


@dataclass(frozen=True, slots=True)
class PytestOptions:
    """``phalanx pytest``'s own options (everything else is pytest's).

    Attributes:
        jobs: forks at once.
        isolate: ``file``, ``test`` or ``none`` (see `units`).
        unit_timeout: seconds a fork may spend on a unit; None: no limit.
        each: ``(NAME, values)``: run the tests once per value with NAME set.
        coverage: measure the forks with coverage.py: None off, "" everything, else a package.
        junit_out: write one merged JUnit report here.
        show_workers: a line per unit as it starts and ends, naming its worker.
    """

    jobs: int
    isolate: Isolation = "file"
    unit_timeout: float | None = None
    each: tuple[str, tuple[str, ...]] | None = None
    coverage: str | None = None
    junit_out: str | None = None
    show_workers: bool = False


def _placeholder() -> None:
    """The action of a unit's task: never called, `ForkBackend` runs units."""


@dataclass(slots=True)
class _ValueOutcome:
    """One ``--each`` value's tests so far."""

    passed: int = 0
    failed: int = 0
    first_failure: str | None = None


@dataclass(slots=True)
class _UnitProgress:
    started_at: float = 0.0
    passed: int = 0
    failed: int = 0
    skipped: int = 0
    call_seen: set[str] = field(default_factory=set)


class PhalanxPytest:
    """The plugin (see the module doc). One instance serves one pytest session."""

    def __init__(self, options: PytestOptions, *, on_fork_exit: Callable[[], None] | None = None) -> None:
        self.options = options
        self._on_fork_exit = on_fork_exit
        self._session: pytest.Session | None = None
        self._scheduler: Scheduler | None = None
        self._units: dict[str, Unit] = {}
        self._values: dict[str, _ValueOutcome] = {}
        self._progress: dict[str, _UnitProgress] = {}
        self._stopped_values: set[str] = set()
        self._maxfail = 0
        self._junit: JUnitOut | None = None
        self._terminal: Any = None
        self._fresh_workers = False
        self.lost_tests: list[str] = []

    # ------------------------------------------------------------------ pytest hooks

    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionstart(self, session: pytest.Session) -> None:
        self._session = session
        self._terminal = session.config.pluginmanager.get_plugin("terminalreporter")
        if self.options.junit_out is not None:
            self._junit = JUnitOut(self.options.junit_out, suite_name="pytest")

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtestloop(self, session: pytest.Session) -> bool:
        config = session.config
        if session.testsfailed and not config.option.continue_on_collection_errors:
            raise session.Interrupted(
                f"{session.testsfailed} error{'s' if session.testsfailed != 1 else ''} during collection"
            )
        if config.option.collectonly or not session.items:
            return True
        self._fresh_workers = self._threads_make_forks_unsafe()
        factory = getattr(config, "_tmp_path_factory", None)
        if factory is not None:
            factory.getbasetemp()  # made once here: each fork makes its own folder inside it
        self._maxfail = int(config.getoption("maxfail") or 0)
        if self.options.each is not None:
            # -x means "stop this value at its first failure", not the whole run: the forks
            # apply it to themselves and the parent stops only that value's units.
            config.option.maxfail = 0
        if self._terminal is not None and config.get_verbosity() <= 0:
            self._terminal.showfspath = False  # forks interleave files: one line of dots, as xdist
        units = make_units([item.nodeid for item in session.items], self.options.isolate, each=self.options.each)
        # Everything collected so far moves to the collector's permanent generation: a fork's
        # garbage collections then never touch (and so never copy) the parent's objects.
        gc.collect()
        gc.freeze()
        self._units = {unit.id: unit for unit in units}
        try:
            asyncio.run(self._run(session))
        finally:
            gc.unfreeze()
            if self.options.each is not None:
                config.option.maxfail = self._maxfail
        if session.shouldfail:
            raise session.Failed(session.shouldfail)
        if session.shouldstop:
            raise session.Interrupted(session.shouldstop)
        return True

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if self.options.each is None or not self._values:
            return
        name, values = self.options.each
        terminalreporter.section(f"phalanx: each {name}", sep="=")
        width = max(len(value) for value in values)
        for value in values:
            outcome = self._values.get(value)
            if outcome is None:
                terminalreporter.write_line(f"{value:<{width}}  not run")
            elif outcome.first_failure is not None:
                terminalreporter.write_line(f"{value:<{width}}  killed    {outcome.first_failure}")
            else:
                terminalreporter.write_line(f"{value:<{width}}  survived  {outcome.passed} passed")
        killed = sum(1 for outcome in self._values.values() if outcome.first_failure is not None)
        terminalreporter.write_line(f"{killed} killed, {len(self._values) - killed} survived")

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if self._junit is not None:
            self._junit.write(time.time() - session.config._phalanx_started)  # type: ignore[attr-defined]

    def pytest_configure(self, config: pytest.Config) -> None:
        config._phalanx_started = time.time()  # type: ignore[attr-defined]

    # ------------------------------------------------------------------ the run

    async def _run(self, session: pytest.Session) -> None:
        from ..history import DurationHistory, HistoryCosts

        graph = Graph([Task(unit.id, _placeholder) for unit in self._units.values()])
        journal, sinks = self._journal(session)
        history = None
        if journal is not None:
            units = self._units
            history = HistoryCosts(DurationHistory(journal), key=lambda task: f"pytest:{units[task.id].name}")
        cost_model = _UnitCosts(self._units, history)
        jobs = self.options.jobs
        sinks.append(_UnitLines(self) if self.options.show_workers else _Quiet())
        with tempfile.TemporaryDirectory(prefix="phalanx-pytest-") as run_dir:
            fresh = None
            if self._fresh_workers:
                nodeids = Path(run_dir) / "nodeids"
                nodeids.write_text("".join(f"{item.nodeid}\n" for item in session.items), encoding="utf-8")
                params = session.config.invocation_params
                fresh = FreshWorkers(tuple(params.args), str(params.dir), str(nodeids))
            backend = ForkBackend(
                session, self, self._units,
                worker_env=lambda worker: {
                    "PHALANX_WORKER": str(worker),
                    "PYTEST_XDIST_WORKER": f"gw{worker - 1}",
                    "PYTEST_XDIST_WORKER_COUNT": str(jobs),
                },
                unit_timeout=self.options.unit_timeout,
                keep_forks=self.options.isolate == "none",
                maxfail=self._maxfail,
                on_fork_exit=self._on_fork_exit,
                fresh=fresh,
            )
            try:
                self._scheduler = Scheduler(
                    graph, backend_for=lambda task: backend, max_workers=jobs, cost_model=cost_model,
                    sinks=sinks, run_dir=Path(run_dir),
                )
                await self._scheduler.run()
            finally:
                await backend.aclose()
                if journal is not None:
                    journal.close()

    def _journal(self, session: pytest.Session) -> tuple[Any, list[Sink]]:
        from ..journal import Journal, JournalSink

        try:
            journal = Journal.open(session.config.rootpath)
        except (PhalanxError, OSError) as error:
            self._note(f"running without a journal (no duration history): {error}")
            return None, []
        units = self._units
        sink = JournalSink(
            journal, spec_hashes={}, command_line=" ".join(["phalanx", "pytest", *sys.argv[2:]]),
            file_key=f"pytest:{session.config.rootpath}", run_kind="pytest",
            history_key=lambda tid: f"pytest:{units[tid].name}" if tid in units else None,
        )
        return journal, [sink]

    def _threads_make_forks_unsafe(self) -> bool:
        """Whether other threads run here after collection; if so, say so, and that fresh
        worker processes take the forks' place (a fork copies only the calling thread)."""
        others = [thread.name for thread in threading.enumerate() if thread is not threading.current_thread()]
        if others:
            self._note(
                f"warning: {len(others)} thread(s) running after collection ({', '.join(others[:5])}): a fork "
                "copies only this thread, so a lock one of them holds would stay locked in every fork. Running "
                "on a fresh worker process per slot instead, as --isolate none (warm, not isolated per unit). "
                "Start such threads in fixtures, not at import time, to get forks back."
            )
        return bool(others)

    def _note(self, text: str) -> None:
        if self._terminal is not None:
            _new_line(self._terminal)
            self._terminal.write_line(f"phalanx: {text}", yellow=True)
        else:
            sys.stderr.write(f"phalanx: {text}\n")

    # ------------------------------------------------------------------ UnitListener

    def started(self, unit: Unit, message: wire.Started, worker: int) -> None:
        assert self._session is not None
        self._session.config.hook.pytest_runtest_logstart(nodeid=message.nodeid, location=message.location)

    def reported(self, unit: Unit, data: dict[str, Any]) -> bool:
        session = self._session
        assert session is not None
        config = session.config
        report = config.hook.pytest_report_from_serializable(config=config, data=data)
        if report is None:
            return False
        config.hook.pytest_runtest_logreport(report=report)
        return self._heard(unit, report)

    def finished(self, unit: Unit, message: wire.Finished) -> None:
        assert self._session is not None
        self._session.config.hook.pytest_runtest_logfinish(nodeid=message.nodeid, location=message.location)
        if self._junit is not None:
            self._junit.test_ended(message.nodeid, unit.value)

    def warned(self, unit: Unit, message: wire.Warned) -> None:
        assert self._session is not None
        self._session.config.hook.pytest_warning_recorded.call_historic(
            kwargs={
                "warning_message": message.warning_message(), "when": "runtest", "nodeid": message.nodeid,
                "location": message.location,
            }
        )

    def lost(self, unit: Unit, index: int, reason: str, seconds: float) -> None:
        session = self._session
        assert session is not None
        item = session.items[index]
        hook = session.config.hook
        progress = self._progress.setdefault(unit.id, _UnitProgress())
        when: Literal["call", "teardown"] = "teardown" if item.nodeid in progress.call_seen else "call"
        if seconds == 0.0:
            hook.pytest_runtest_logstart(nodeid=item.nodeid, location=item.location)
        report = TestReport(
            item.nodeid, item.location, {name: 1 for name in item.keywords}, "failed", reason, when,
            duration=seconds, user_properties=[],
        )
        self.lost_tests.append(f"{item.nodeid}: {reason}")
        hook.pytest_runtest_logreport(report=report)
        self._heard(unit, report)
        hook.pytest_runtest_logfinish(nodeid=item.nodeid, location=item.location)
        if self._junit is not None:
            self._junit.test_ended(item.nodeid, unit.value)

    def _heard(self, unit: Unit, report: TestReport) -> bool:
        """Book one report; stop what ``-x``/``--maxfail`` says to stop. Whether it failed."""
        progress = self._progress.setdefault(unit.id, _UnitProgress())
        if report.when == "call":
            progress.call_seen.add(report.nodeid)
        if self._junit is not None:
            self._junit.add_report(report, unit.value)
        failed = bool(report.failed)
        if failed:
            progress.failed += 1
            self._print_failure(report, unit)
        elif report.when == "call" and report.passed:
            progress.passed += 1
        elif report.skipped:
            progress.skipped += 1
        if unit.value is not None:
            outcome = self._values.setdefault(unit.value, _ValueOutcome())
            if failed:
                outcome.failed += 1
                if outcome.first_failure is None:
                    outcome.first_failure = report.nodeid
                if self._maxfail and outcome.failed >= self._maxfail:
                    self._stop_value(unit.value)
            elif report.when == "call" and report.passed:
                outcome.passed += 1
        session = self._session
        if session is not None and (session.shouldfail or session.shouldstop) and self._scheduler is not None:
            self._scheduler.cancel(CancelReason.FAIL_FAST)
        return failed

    def _stop_value(self, value: str) -> None:
        if value in self._stopped_values or self._scheduler is None:
            return
        self._stopped_values.add(value)
        for unit in self._units.values():
            if unit.value == value:
                self._scheduler.cancel_task(unit.id)

    def _print_failure(self, report: TestReport, unit: Unit) -> None:
        """A failure the moment it happens, in pytest's short format (``-rf``'s line)."""
        terminal = self._terminal
        if terminal is None or self._session is None or self._session.config.get_verbosity() > 0:
            return  # verbose output already says FAILED on the test's own line
        crash = getattr(report.longrepr, "reprcrash", None)
        message = str(getattr(crash, "message", "") or report.longrepr or "").strip().splitlines()
        label = "ERROR" if report.when != "call" else "FAILED"
        where = f"[{unit.value}] " if unit.value is not None else ""
        _new_line(terminal)
        terminal.write_line(f"{label} {where}{report.nodeid}" + (f" - {message[0]}" if message else ""), red=True)

    # ------------------------------------------------------------------ --show-workers

    def unit_started(self, tid: str, worker: int) -> None:
        self._progress.setdefault(tid, _UnitProgress()).started_at = time.monotonic()
        if self._terminal is not None:
            _new_line(self._terminal)
            self._terminal.write_line(f"[gw{worker - 1}] {tid}")

    def unit_ended(self, tid: str, worker: int | None) -> None:
        progress = self._progress.get(tid)
        if self._terminal is None or progress is None:
            return
        took = time.monotonic() - progress.started_at
        where = f"[gw{worker - 1}] " if worker else ""
        _new_line(self._terminal)
        self._terminal.write_line(
            f"{where}{tid}: {progress.passed} passed, {progress.failed} failed, {progress.skipped} skipped "
            f"in {took:.2f}s"
        )


class _UnitCosts:
    """A unit's expected seconds: its duration history; a unit never timed yet counts as its
    number of tests times the seconds per test of the units that were (10 ms each when none
    was): before any history, files with more tests start first."""

    def __init__(self, units: dict[str, Unit], history: Any) -> None:
        self._units = units
        self._history = history
        self._per_test: float | None = None

    def estimate(self, task: Task) -> float | None:
        known = self._history.estimate(task) if self._history is not None else None
        if known is not None:
            return float(known)
        if self._per_test is None:
            self._per_test = self._seconds_per_test()
        return len(self._units[task.id].indices) * self._per_test

    def _seconds_per_test(self) -> float:
        seconds = tests = 0.0
        if self._history is not None:
            for unit in self._units.values():
                known = self._history.estimate(Task(unit.id, _placeholder))
                if known is not None:
                    seconds += known
                    tests += len(unit.indices)
        return seconds / tests if tests else 0.01


def _new_line(terminal: Any) -> None:
    """End the line of progress dots, if one is open (``ensure_newline`` only knows file lines)."""
    if terminal._tw.width_of_current_line:
        terminal._tw.line()


class _Quiet:
    def handle(self, event: Event) -> None:
        return None

    def close(self) -> None:
        return None


class _UnitLines:
    """``--show-workers``: a line per unit as it starts and as it ends, naming its worker."""

    def __init__(self, plugin: PhalanxPytest) -> None:
        self._plugin = plugin
        self._workers: dict[str, int] = {}

    def handle(self, event: Event) -> None:
        from ..events import TaskFinished, TaskStarted

        if isinstance(event, TaskStarted):
            self._workers[event.task_id] = event.worker
            self._plugin.unit_started(event.task_id, event.worker)
        elif isinstance(event, TaskFinished) and event.result.attempts:
            self._plugin.unit_ended(event.task_id, self._workers.pop(event.task_id, None))

    def close(self) -> None:
        return None


def main(options: PytestOptions, pytest_args: Sequence[str]) -> int:
    """Run pytest with ``pytest_args`` the phalanx way; pytest's exit code."""
    from . import cover

    measuring = cover.start(options.coverage) if options.coverage is not None else None
    plugin = PhalanxPytest(options, on_fork_exit=measuring.save_fork if measuring is not None else None)
    try:
        code = pytest.main(list(pytest_args), plugins=[plugin])
    finally:
        if measuring is not None:
            measuring.finish(sys.stdout)
    return int(code)
