"""The ``phalanx`` command's entry point: routes to a front end, importing only what it needs.

``phalanx map`` is GNU parallel's replacement and is started thousands of times by scripts:
it must not pay for click or rich. ``--version`` answers without importing anything.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

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
        # commands and never speaks TLS: without ssl, asyncio simply goes without it.
        sys.modules.setdefault("ssl", None)  # type: ignore[arg-type]
        from .gnu.cli import main as map_main

        sys.exit(map_main(args[1:]))
    if args in (["--version"], ["-V"]):
        sys.stdout.write(f"phalanx, version {__version__}\n")
        return
    from .cli import main as cli_main

    cli_main(args, prog_name="phalanx")
