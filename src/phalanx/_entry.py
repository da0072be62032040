"""The ``phalanx`` command's entry point: routes to a front end, importing only what it needs.

``phalanx map`` is GNU parallel's replacement and is started thousands of times by scripts:
it must not pay for click or rich. ``--version`` answers without importing anything.
"""

from __future__ import annotations

import atexit
import contextlib
import gc
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

from . import __version__

#: Whether phalanx is the program this process runs (the ``phalanx`` command, ``python -m
#: phalanx``: `main` with no argv), rather than a function a host program calls. Only then
#: does a run change the process itself: it becomes a child subreaper (`phalanx.guard`).
running_as_program = False


def main(argv: Sequence[str] | None = None) -> None:
    global running_as_program
    running_as_program = argv is None
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["map"]:
        # asyncio imports ssl if it can (about 5 ms), but this process only starts local
        # commands and never speaks TLS: without ssl, asyncio simply goes without it. (On a
        # cluster, --backend, it talks to its scheduler, maybe over TLS: ssl stays.)
        if not any(arg == "--backend" or arg.startswith("--backend=") for arg in args):
            sys.modules.setdefault("ssl", None)  # type: ignore[arg-type]
        if running_as_program:
            # Importing allocates much and frees next to nothing: the collector's passes over
            # it (about 5% of the start-up) would find no garbage. What it made is then frozen
            # out of the run's collections.
            gc.disable()
        from .gnu.cli import main as map_main

        if running_as_program:
            gc.freeze()
            gc.enable()
        status = map_main(args[1:])
        if running_as_program:
            _exit_at_once(status)
        sys.exit(status)
    if args in (["--version"], ["-V"]):
        sys.stdout.write(f"phalanx, version {__version__}\n")
        return
    from .cli import main as cli_main

    cli_main(args, prog_name="phalanx")


def _exit_at_once(status: int) -> NoReturn:
    """End ``phalanx map`` the moment its run is over, as GNU parallel and xargs end.

    The interpreter's teardown (every module and object freed, one by one) takes longer than
    a short run's jobs: 30-60 ms on a loaded machine, a sixth of the command's time. It has
    nothing left to do by then: the run has closed its sinks, its files and the journal,
    removed its run directory and dismissed the watchdog. So what an ordinary exit does
    before the teardown is done here (the exit hooks, such as logging's or a coverage
    tool's, run; standard output and error are flushed) and the process ends. If a thread
    is still alive (none of map's own outlives the run), the ordinary exit waits for it.
    """
    threading = sys.modules.get("threading")
    if threading is not None and threading.active_count() > 1:
        sys.exit(status)
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        # The reader has gone (a broken pipe), or the stream is closed: nothing more to say.
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(status)
