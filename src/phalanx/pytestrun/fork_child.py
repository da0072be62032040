"""The fork's side: become a clean child of the warm parent, run the tests given, report.

Everything here runs in a process that `os.fork` made from the parent *during* its
pytest session, after collection: the test modules, conftests and the package under test
are already imported, fixtures' definitions known. What must not be shared is undone
first (`_become_a_fork`):

- the parent's event loop is running in the forking thread: the child forgets it, so a
  test calling ``asyncio.run`` gets a loop of its own;
- signal handling back to Python's defaults, and no wakeup fd into the parent's loop;
- pytest's global output capture writes to temporary files the parent opened: shared file
  offsets would mix two forks' captured output, so the child starts capture anew;
- its own ``tmp_path`` base under the parent's (``fork-<pid>``), as xdist's ``popen-gwN``;
- the terminal reporter (the parent prints), its own process group (the parent kills the
  whole group at a timeout), the worker's environment.

Then it reads index lists from the command pipe and runs those tests with pytest's own
``pytest_runtest_protocol``, reporting each through `wire`, until the pipe closes. It
always ends with ``os._exit``: never atexit handlers or finalizers of the parent's state.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import traceback
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn

import pytest

from . import wire

#: The fork's exit status when phalanx's own code in it failed (not a test: tests fail in reports).
EXIT_INTERNAL = 70


class ForkReporter:
    """Sends what pytest reports in the fork to the parent."""

    def __init__(self, config: pytest.Config, fd: int) -> None:
        self._config = config
        self._fd = fd
        self.index = -1
        self.listening = False

    def pytest_runtest_logstart(self, nodeid: str, location: tuple[str, int | None, str]) -> None:
        wire.send(self._fd, wire.Started(self.index, nodeid, location))

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        data = self._config.hook.pytest_report_to_serializable(config=self._config, report=report)
        wire.send(self._fd, wire.Reported(data))

    def pytest_runtest_logfinish(self, nodeid: str, location: tuple[str, int | None, str]) -> None:
        wire.send(self._fd, wire.Finished(self.index, nodeid, location))

    def pytest_warning_recorded(
        self, warning_message: warnings.WarningMessage, when: str, nodeid: str, location: tuple[str, int, str] | None
    ) -> None:
        # A historic hook: registering this plugin replays every warning the parent had heard
        # before the fork (its own, and earlier forks' it was told of). Only new ones are news.
        if self.listening:
            wire.send(self._fd, wire.Warned.of(warning_message, nodeid, location))


def serve(
    session: pytest.Session,
    commands: int,
    results: int,
    env: Mapping[str, str],
    *,
    maxfail: int,
    on_exit: Callable[[], None] | None = None,
) -> NoReturn:
    """The whole life of a fork. ``maxfail``: pytest's, for this fork's own tests."""
    status = 0
    try:
        reporter = _become_a_fork(session, results, env, maxfail)
        serve_commands(session, session.items, commands, results, reporter)
    except BaseException:
        traceback.print_exc()
        status = EXIT_INTERNAL
    finally:
        try:
            if on_exit is not None:
                on_exit()
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(status)


def _become_a_fork(session: pytest.Session, results: int, env: Mapping[str, str], maxfail: int) -> ForkReporter:
    config = session.config
    with contextlib.suppress(OSError):
        os.setpgid(0, 0)  # the parent does it too: whichever runs first wins the race
    asyncio.events._set_running_loop(None)  # the parent's loop is not ours to run
    signal.set_wakeup_fd(-1)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for number in (signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGCHLD):
        signal.signal(number, signal.SIG_DFL)
    os.environ.update(env)
    config.option.maxfail = maxfail
    manager = config.pluginmanager
    silence_terminal(config)
    capture: Any = manager.get_plugin("capturemanager")
    if capture is not None and capture._global_capturing is not None:
        capture.stop_global_capturing()
        capture.start_global_capturing()
        capture.suspend_global_capture(in_=False)
    factory = getattr(config, "_tmp_path_factory", None)
    if factory is not None and getattr(factory, "_basetemp", None) is not None:
        own = Path(factory._basetemp) / f"fork-{os.getpid()}"
        own.mkdir(mode=0o700, exist_ok=True)  # a pid can come again in a long run: pytest numbers what is inside
        factory._basetemp = own  # no public way to give a session a new base once it has one
    reporter = ForkReporter(config, results)
    manager.register(reporter, "phalanx-fork-reporter")
    reporter.listening = True
    return reporter


def serve_commands(
    session: pytest.Session, items: Sequence[pytest.Item | None], commands: int, results: int, reporter: ForkReporter
) -> None:
    """Run the tests the parent names (indices into ``items``) until it closes the pipe.

    ``items``: by the parent's index; None for a test this process did not collect (a
    fresh worker whose collection differs), which is then reported lost by the parent.
    """
    while (indices := wire.read_command(commands)) is not None:
        _run(session, items, indices, reporter)
        wire.send(results, wire.Done())


def silence_terminal(config: pytest.Config) -> None:
    """The parent prints; this process's terminal reporter stays (assertion messages ask
    its writer how to highlight) but writes nowhere."""
    terminal = config.pluginmanager.get_plugin("terminalreporter")
    if terminal is None:
        return
    from _pytest._io import TerminalWriter

    loud = terminal._tw
    quiet = TerminalWriter(file=open(os.devnull, "w", encoding="utf-8"))  # noqa: SIM115 - lives as long as the process
    quiet.hasmarkup = loud.hasmarkup
    quiet.code_highlight = loud.code_highlight
    quiet.fullwidth = loud.fullwidth
    terminal._tw = quiet


def _run(
    session: pytest.Session, items: Sequence[pytest.Item | None], indices: tuple[int, ...], reporter: ForkReporter
) -> None:
    hook = session.config.hook
    runnable = [index for index in indices if items[index] is not None]
    for position, index in enumerate(runnable):
        item = items[index]
        assert item is not None
        # The last test of the unit tears everything down (module, session fixtures).
        nextitem = items[runnable[position + 1]] if position + 1 < len(runnable) else None
        reporter.index = index
        hook.pytest_runtest_protocol(item=item, nextitem=nextitem)
        if session.shouldfail or session.shouldstop:
            break
