"""Hostile values, the shell contexts they are put in, and how to run them: shared by the
``phalanx map`` and ``phalanx run`` halves of tests/test_security.py.

A value is "hostile" when a shell that parsed it instead of taking it as data would run
something: each such piece tries to create the canary file `CANARY` in the current
directory, so a canary that exists is proof that part of a value ran.
"""

from __future__ import annotations

import subprocess
from collections.abc import Mapping
from pathlib import Path

from hypothesis import strategies as st

from phalanx.backends.command import command_argv

CANARY = "PWNED"

#: Pieces that break out of one quoting context or another, or run something if they do.
PARTS = (
    "$(touch PWNED)", "`touch PWNED`", ";touch PWNED;", "&& touch PWNED", "| touch PWNED >/dev/null",
    "'; touch PWNED; '", '"; touch PWNED; "', "'\\''", "'", '"', "\\", "\\\n", "\n", "$", "${IFS}", "$((1+1))",
    "{}", "{item}", "{.}", " ", "\t", "*", "?", "#", "~", "-n", "%s", "%%", "ü", "\u2028",
)

#: Any text but NUL (no argv or environment can hold one) and lone surrogates.
_PLAIN = st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\x00"), max_size=5)

#: The strategy both front ends draw their values from.
hostile_values = st.lists(st.one_of(st.sampled_from(PARTS), _PLAIN), max_size=6).map("".join)

#: A few fixed hostile values, for the end-to-end runs (no newline: `phalanx map` splits
#: its ::: values at nothing, but a task id shows a newline on every console line).
SAMPLES = (
    "$(touch PWNED)", "`touch PWNED`", "'; touch PWNED; '", '"; touch PWNED; "', "a;touch PWNED", "it's",
    "\\", "$HOME ~ * {} {.}", "-n", "%s%%", "ü\u2028x",
)

#: The three shell contexts a placeholder stands in: bare, inside '...', inside "...".
#: Each command prints its one argument exactly, and nothing else (``printf %s``).
CONTEXTS = {
    "bare": "printf %s {}",
    "single": "printf %s '{}'",
    "double": 'printf %s "{}"',
}


def template(context: str, placeholder: str) -> str:
    """The command of ``context`` with ``placeholder`` (``{}`` for map, ``{item}`` for run)."""
    return CONTEXTS[context].replace("{}", placeholder)


def toml_string(value: str) -> str:
    """``value`` as a TOML basic string (every control character escaped, as TOML requires)."""
    out = []
    for char in value:
        if char in '"\\':
            out.append("\\" + char)
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


def run_command(command: str, cwd: Path, env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
    """Run a rendered command as the command backend does (`command_argv`: its words, or
    ``/bin/sh -c``), to its end."""
    return subprocess.run(command_argv(command), cwd=cwd, env=env, capture_output=True, timeout=30, check=False)
