"""Where a command attempt writes its output: the file layout of a run directory.

The command backend writes each attempt's stdout and stderr to files named here while it
runs; whatever reads them as they grow (``--line-buffer``) finds them here too, without
importing a backend.
"""

from __future__ import annotations

import hashlib
import os
import re

#: The longest readable part of a task id kept in file names (names are limited to 255 bytes).
_MAX_NAME = 80

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def output_paths(run_dir: str, task_id: str, number: int) -> tuple[str, str]:
    """Where attempt ``number`` of a task writes its stdout and stderr while it runs."""
    stem = os.path.join(run_dir, f"{safe_name(task_id)}.{number}")
    return f"{stem}.out", f"{stem}.err"


def safe_name(task_id: str) -> str:
    """A file name for ``task_id``: its safe characters, and a hash that keeps ids apart.

    Anything outside ``[A-Za-z0-9._-]`` becomes ``_`` (so no ``/``: the name cannot leave
    its directory), leading dots too (no hidden files, no ``..``). The hash of the real
    id keeps ``a/b`` and ``a_b`` (or ``A`` and ``a`` on a case-insensitive disk) apart.
    """
    readable = _UNSAFE.sub("_", task_id)[:_MAX_NAME]
    readable = "_" * (len(readable) - len(readable.lstrip("."))) + readable.lstrip(".")
    digest = hashlib.sha1(task_id.encode("utf-8", "surrogatepass"), usedforsecurity=False).hexdigest()[:8]
    return f"{readable}-{digest}"
