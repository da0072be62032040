"""Starting a command attempt's process: ``posix_spawn`` where it can, `subprocess.Popen` where not.

``os.posix_spawn`` is glibc's ``clone(CLONE_VM | CLONE_VFORK)`` + exec, set up in C from
one call: against `subprocess.Popen` it saves about half of the parent's CPU per start
(Popen builds its argument lists, encodes every variable of the environment and opens
``/dev/null`` again in Python, each time). For a job of a millisecond that is phalanx's
speed. It cannot change the working directory (Python 3.11 has no ``addchdir``) or run a
``preexec_fn`` (the limits of `phalanx.confinement`), so an attempt that needs either, or
whose program is not found on its ``PATH`` (Popen then raises the error the user sees),
goes through Popen as before.

What the child gets is the same either way: its own process group, stdin on ``/dev/null``,
stdout and stderr where the backend says, the environment given, and no other descriptor
(every descriptor phalanx opens is close-on-exec; `Spawner` marks the ones phalanx was
started with close-on-exec too, once, as Popen's ``close_fds`` closed them). Signals Python
ignores for itself (SIGPIPE, SIGXFSZ) are back to their defaults, as Popen's
``restore_signals`` does: ``yes | head`` in a job must end ``yes`` as in a shell.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Callable, Mapping

#: Signals Python sets to "ignore" at start-up, which exec would otherwise pass on.
_RESTORED_SIGNALS = tuple(getattr(signal, name) for name in ("SIGPIPE", "SIGXFSZ", "SIGXFZ") if hasattr(signal, name))

_CAN_SPAWN = hasattr(os, "posix_spawn")


class Child:
    """A started attempt's leader: its pid, and its exit status once reaped (None until then).

    When Popen started it, the Popen object is told of the reap too: a Popen whose
    ``returncode`` is None would wait for the pid again (or warn) when it is collected.
    """

    __slots__ = ("_popen", "pid", "returncode")

    def __init__(self, pid: int, popen: subprocess.Popen[bytes] | None = None) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self._popen = popen

    def reaped(self, returncode: int) -> None:
        """Record the exit status (``subprocess``'s convention: -N for signal N)."""
        self.returncode = returncode
        if self._popen is not None:
            self._popen.returncode = returncode  # Popen must never wait for this pid again


class Spawner:
    """Starts attempts' processes (one per backend: it keeps ``/dev/null`` open and the
    ``PATH`` lookups it made)."""

    def __init__(self) -> None:
        self._devnull = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        self._cwd = os.getcwd()
        # (program, PATH) -> its path: a lookup is a stat per PATH entry, every job.
        # Only hits are kept: a program installed during the run is found at its next job.
        self._found: dict[tuple[str, bytes | None], str] = {}
        self._can_spawn = _CAN_SPAWN and _close_inherited_on_exec()

    def spawn(
        self,
        argv: list[str],
        *,
        env: Mapping[bytes, bytes],
        cwd: str | None,
        stdout: int,
        stderr: int,
        preexec_fn: Callable[[], None] | None = None,
    ) -> Child:
        """Start ``argv`` as the leader of a new process group; raises what Popen raises
        when it cannot (OSError, ValueError, or SubprocessError from ``preexec_fn``)."""
        if self._can_spawn and preexec_fn is None and (cwd is None or cwd == self._cwd):
            program = self._program(argv[0], env)
            if program is not None:
                actions = [(os.POSIX_SPAWN_DUP2, self._devnull, 0), (os.POSIX_SPAWN_DUP2, stdout, 1),
                           (os.POSIX_SPAWN_DUP2, stderr, 2)]
                pid = os.posix_spawn(program, argv, env, file_actions=actions, setpgroup=0,
                                     setsigdef=_RESTORED_SIGNALS)
                return Child(pid)
        popen = subprocess.Popen(
            argv, process_group=0, stdin=self._devnull, stdout=stdout, stderr=stderr, close_fds=True, cwd=cwd,
            env=env, preexec_fn=preexec_fn,
        )
        return Child(popen.pid, popen)

    def _program(self, name: str, env: Mapping[bytes, bytes]) -> str | None:
        """The file ``name`` runs, as exec would find it on the ``PATH`` of ``env``; None if
        no executable file is found (Popen then reports it)."""
        if "/" in name:
            return name
        path = env.get(b"PATH")
        found = self._found.get((name, path))
        if found is not None:
            return found
        directories = os.fsdecode(path).split(os.pathsep) if path is not None else os.defpath.split(os.pathsep)
        for directory in directories:
            candidate = os.path.join(directory or ".", name)
            if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
                if directory and os.path.isabs(directory):  # a relative entry depends on the cwd: no caching
                    self._found[(name, path)] = candidate
                return candidate
        return None

    def close(self) -> None:
        if self._devnull >= 0:
            os.close(self._devnull)
            self._devnull = -1


def _close_inherited_on_exec() -> bool:
    """Mark close-on-exec the descriptors above 2 that phalanx was started with (a shell's
    or make's): Popen's ``close_fds`` kept them from every job, and posix_spawn closes
    only what is marked. Descriptors phalanx opens are marked already (PEP 446).

    Returns False where the open descriptors cannot be listed (no ``/proc``): posix_spawn
    is not used there.
    """
    try:
        fds = [int(name) for name in os.listdir("/proc/self/fd")]
    except OSError:
        return False
    for fd in fds:
        if fd > 2:
            try:
                if os.get_inheritable(fd):
                    os.set_inheritable(fd, False)
            except OSError:
                continue  # the descriptor listdir itself used, closed by now
    return True
