"""The command backend: run shell strings and argv lists as processes.

Each attempt is one process, the leader of a new process group (``process_group=0``), so
that stopping it reaches everything it started. Its output goes to two files in the run
directory, never through pipes: memory stays bounded whatever it prints, and background
processes that keep the files open cannot delay the end of the attempt (we wait for the
leader to exit, not for end-of-file). A task with ``max_output`` is the one exception: its
output goes through pipes that the loop drains into the files, keeping the cap
(`phalanx.backends.capture`); the end of the attempt still never waits for them.

Children are started with `subprocess.Popen` (vfork + exec, fast enough to call on the
loop) rather than ``asyncio.create_subprocess_*``, whose child watchers and pipe
transports cost far more than these jobs, and are reaped by one `ChildReaper` (a pidfd
per child on Linux). The kill order everywhere is: the leader has exited but is not
reaped yet, so its pid cannot be reused; ``killpg(SIGKILL)`` the group; only then reap.

Stopping (the scheduler cancels ``run`` on timeout, fail-fast or Ctrl-C): SIGTERM to the
group, up to ``grace`` seconds for the leader to exit, then SIGKILL to the group; a second
cancellation during the grace period skips the rest of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import re
import signal
import stat
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from ..limits import NO_LIMITS
from ..reaper import ChildReaper
from ..resources import instance_environment
from .base import Attempt, Outcome
from .capture import OutputCapture
from .outputs import AttemptOutput, OutputFiles
from .spawn import Child, Spawner

if TYPE_CHECKING:
    from ..confinement import Confinement, MemoryWatch
    from ..guard import AttemptGuard
    from ..http import Failure
    from ..model import Task

_SHELL = "/bin/sh"

#: The shell's exit statuses for "not found" and "found but cannot execute".
_SHELL_NOT_FOUND = 127
_SHELL_CANNOT_EXECUTE = 126


#: The returncode we record when the exit status was lost (no real exit code is this).
_STATUS_LOST = 1 << 16

# A command string made only of plain words needs no shell: like make, run it directly and
# save the shell's start-up (about 1 ms a command). Anything a shell would interpret -
# quotes, variables, globs, redirections, operators, an assignment or a builtin as the
# first word - goes through /bin/sh -c as written.
_SHELL_SYNTAX = re.compile(r"[#;\"'*?\[\]&|<>(){}$`\\^~!%\n]")
_SHELL_WORDS = frozenset(
    (
        ".", ":", "[", "[[", "!", "{", "}", "alias", "bg", "break", "builtin", "case", "cd", "command",
        "continue", "declare", "do", "done", "elif", "else", "esac", "eval", "exec", "echo", "exit", "export",
        "false", "fc", "fg", "fi", "for", "function", "getopts", "hash", "if", "jobs", "kill", "let", "local",
        "logout", "printf", "pwd", "read", "readonly", "return", "select", "set", "shift", "source", "test",
        "then", "time", "times", "trap", "true", "type", "typeset", "ulimit", "umask", "unalias", "unset",
        "until", "wait", "while",
    )
)


def command_argv(command: str) -> list[str]:
    """The argv that runs a command string: its words when no shell is needed, else ``sh -c``.

    A builtin as the first word keeps the shell, even one with a program of its own such
    as ``true``: dash running its builtin costs less than exec'ing coreutils' ``true``
    (which loads the locale), 0.86 against 1.0-1.1 ms of CPU on the benchmarks' machine.
    """
    if not _SHELL_SYNTAX.search(command):
        words = command.split()
        if words and words[0] not in _SHELL_WORDS and "=" not in words[0]:
            return words
    return [_SHELL, "-c", command]


# The result file is the task's to write; we only read a regular file it left at that name.
# O_NONBLOCK: a FIFO there must not block the loop (it is refused below, not read).
_RESULT_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


class CommandBackend:
    """Runs command attempts (shell strings via ``/bin/sh -c``, argv tuples directly).

    Args:
        grace: seconds between SIGTERM and SIGKILL when an attempt is stopped.
        tail_bytes: how much of the end of stdout and stderr goes into the outcome.
        kill_leftovers: SIGKILL the attempt's process group once its leader exits, so
            that background processes it started do not outlive it.
        cut_marker: when a task's ``max_output`` cuts its output, put a line saying so
            between the head and the tail kept in the file (`phalanx map`: no, its stdout
            is the job's own bytes).
        guard: marks each attempt's environment and hears of each group's start and end,
            to find what escaped the group (`phalanx.guard`: daemons, a killed phalanx).
    """

    def __init__(self, *, grace: float = 2.0, tail_bytes: int = 4096, kill_leftovers: bool = True,
                 on_spawn: Callable[[str, str, int, int], None] | None = None, cut_marker: bool = True,
                 guard: AttemptGuard | None = None, outputs: OutputFiles | None = None) -> None:
        """``on_spawn(run_id, task_id, attempt, pid)`` is told of each process group as it
        starts (the run journal records it, so that a run killed outright leaves a trace of
        what it left running)."""
        if grace < 0:
            raise ValueError(f"grace must be >= 0, got {grace!r}")
        if tail_bytes < 0:
            raise ValueError(f"tail_bytes must be >= 0, got {tail_bytes!r}")
        self._grace = grace
        self._tail_bytes = tail_bytes
        self._kill_leftovers = kill_leftovers
        self._on_spawn = on_spawn
        self._cut_marker = cut_marker
        self._guard = guard
        self._reaper = ChildReaper()
        self._spawner = Spawner()
        self._outputs = outputs or OutputFiles()
        self._running: dict[int, Child] = {}
        self._stopped: dict[tuple[str, int], Outcome] = {}  # output of stopped attempts, until asked
        # The parent's environment as of the run's start, copied once: copying os.environb
        # walks every variable in Python, about 15 µs a job that `phalanx map` cannot spare.
        self._base_environment = dict(os.environb)
        self._closing = False
        self._memory_watch: MemoryWatch | None = None  # made when a task first has a memory limit
        self._releasing: set[Confinement] = set()  # cgroups still held by dying processes

    def running_pids(self) -> list[int]:
        """The process-group ids (= leader pids) of the attempts running now."""
        return list(self._running)

    async def run(self, attempt: Attempt) -> Outcome:
        """Run the attempt's command to its end; cancellation stops its whole process group."""
        task = attempt.task
        action = task.action
        if callable(action):
            raise TypeError(f"the command backend runs commands, not callables (task {task.id!r})")
        if self._closing:
            raise RuntimeError("the command backend is closed")
        argv = command_argv(action) if isinstance(action, str) else list(action)
        try:
            output = self._outputs.open(attempt)
        except OSError as error:
            return Outcome(ok=False, reason=f"cannot create the output files: {error}")
        capture: OutputCapture | None = None  # with max_output: pipes drained into the files
        confinement: Confinement | None = None  # with limits (memory, cpus, rlimits): see phalanx.confinement
        try:
            child_out, child_err = self._outputs.child_fds(output)
            # A stream passed straight through (not captured) is not capped either: it costs
            # phalanx neither memory nor disk.
            if task.limits.max_output and output.out_fd >= 0 and output.err_fd >= 0:
                try:
                    capture = OutputCapture(task.limits.max_output, output.out_fd, output.err_fd,
                                            os.path.dirname(output.result_path), marker=self._cut_marker)
                except OSError as error:
                    return Outcome(ok=False, reason=f"cannot create the output pipes: {error}")
                child_out, child_err = capture.child_fds
            if task.limits is not NO_LIMITS:
                try:
                    confinement = _confine(task)
                except ValueError as error:
                    return _not_started(str(error), output)
            env = _environment(self._base_environment, attempt, output.result_path)
            serial = 0 if self._guard is None else self._guard.marked(env)
            try:
                proc = self._spawner.spawn(
                    argv, env=env, cwd=task.cwd, stdout=child_out, stderr=child_err,
                    preexec_fn=None if confinement is None else confinement.in_child,
                )
            except (OSError, ValueError) as error:
                reason, exit_code = _start_failure(error, argv[0], task.cwd)
                return _not_started(reason, output, exit_code)
            except subprocess.SubprocessError as error:  # only from preexec_fn: the child could not take a limit
                return _not_started(f"cannot apply the task's limits: {error}", output)
            if confinement is not None:
                self._confined(proc, confinement)
            if capture is not None:
                capture.start()
            self._running[proc.pid] = proc
            if self._guard is not None:
                self._guard.spawned(serial, proc.pid)
            if self._on_spawn is not None:
                self._on_spawn(attempt.run_id, task.id, attempt.number, proc.pid)
            try:
                await self._wait(proc, confinement)
            except asyncio.CancelledError:
                # Stopped (timeout, fail-fast, Ctrl-C): what it printed until then is often
                # the most useful output of the run; keep it for the scheduler to report.
                cut = capture.finish() if capture is not None else None  # the group is dead: no waiting
                self._stopped[(task.id, attempt.number)] = Outcome(
                    ok=False,
                    pid=proc.pid,
                    stdout_tail=_tail(output.out_fd, self._tail_bytes),
                    stderr_tail=_tail(output.err_fd, self._tail_bytes),
                    output_cut=cut,
                    stdout_path=output.stdout_path,
                    stderr_path=output.stderr_path,
                )
                raise
            finally:
                if proc.returncode is None:  # only if something unexpected went wrong
                    self._kill_now(proc)
                del self._running[proc.pid]
                if confinement is not None and confinement.memory is not None and self._memory_watch is not None:
                    self._memory_watch.unwatch(confinement.memory)
            cut = capture.finish() if capture is not None else None
            outcome = self._outcome(proc, argv[0] == _SHELL, output)
            if confinement is not None:
                outcome = _within_limits(outcome, proc, argv[0] == _SHELL, confinement)
            return outcome if cut is None else replace(outcome, output_cut=cut)
        finally:
            if capture is not None:
                capture.close()
            if confinement is not None:
                self._release(confinement)
            self._outputs.done(output)

    def _confined(self, proc: Child, confinement: Confinement) -> None:
        """The attempt's leader has started within its limits: watch its memory, if limited."""
        confinement.started(proc.pid)
        if confinement.memory is not None:
            if self._memory_watch is None:
                from ..confinement import MemoryWatch

                self._memory_watch = MemoryWatch()

            def over_memory() -> None:
                confinement.memory_exceeded = True
                self._killpg(proc, signal.SIGKILL)  # the whole tree, at once: it only grows meanwhile
                if confinement.memory is not None:
                    confinement.memory.kill()  # and those of its processes that left the group

            self._memory_watch.watch(confinement.memory, over_memory)

    def _release(self, confinement: Confinement, tries: int = 40) -> None:
        """Remove the attempt's cgroup once its processes are gone (SIGKILLed ones take a moment)."""
        if self._kill_leftovers:
            confinement.kill_leftovers()  # processes that left the process group, but not the cgroup
        if confinement.release() or not tries:
            # Given up after 2 s (kill_leftovers=False, and they live on): the next phalanx sweeps it.
            self._releasing.discard(confinement)
        else:
            self._releasing.add(confinement)
            asyncio.get_running_loop().call_later(0.05, self._release, confinement, tries - 1)

    def stopped_outcome(self, attempt: Attempt) -> Outcome | None:
        """The output of an attempt that was stopped, once (the scheduler's optional hook)."""
        return self._stopped.pop((attempt.task.id, attempt.number), None)

    async def aclose(self) -> None:
        """Stop every attempt still running (TERM, grace, KILL) and reap them all."""
        self._closing = True
        procs = list(self._running.values())
        if procs:
            # Each _stop survives cancellation, so a cancelled aclose still finishes them.
            await asyncio.gather(*(self._stop(proc) for proc in procs))
        while self._releasing:  # the loop may end with us: see the last cgroups removed (2 s at most)
            await asyncio.sleep(0.02)
        self._outputs.close()
        self._spawner.close()

    async def _wait(self, proc: Child, confinement: Confinement | None = None) -> None:
        """Wait for the attempt's leader to exit, then kill its leftovers and reap it."""
        try:
            await self._reaper.exited(proc.pid)
        except asyncio.CancelledError:
            if not _has_exited(proc.pid):
                await self._stop(proc)
                raise
            # It ended by itself before the stop came (the event loop had not yet told us):
            # report how it ended, not a stop, or a job that did its work would be left out
            # of the joblog as unfinished and run again by --resume.
            current = asyncio.current_task()
            if current is not None:
                current.uncancel()
        if self._kill_leftovers:
            # Background processes (``server &``) would otherwise outlive their task,
            # hold its resources and, with a kept log directory, keep writing its files.
            self._killpg(proc, signal.SIGKILL)
        if confinement is not None:
            confinement.leader_exited(proc.pid)  # before the reap: the zombie still shows its CPU time
        self._reap(proc)

    async def _stop(self, proc: Child) -> None:
        """TERM the group, give the leader ``grace`` seconds, KILL the group, reap the leader.

        Runs to the end whatever cancellations arrive meanwhile (none may leave a live
        group or an unreaped pid behind); one that arrives during the grace period ends
        it at once: it is the "second cancellation" that means "kill now".
        """
        self._killpg(proc, signal.SIGTERM)
        # A task of its own: cancelling us must not cancel the wait itself.
        leader = asyncio.ensure_future(self._reaper.exited(proc.pid))
        with contextlib.suppress(asyncio.CancelledError):  # a second cancellation: kill now
            await asyncio.wait((leader,), timeout=self._grace)
        # Also reaches grandchildren that ignore SIGTERM or outlived the leader.
        self._killpg(proc, signal.SIGKILL)
        while not leader.done():
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait((leader,))
        leader.result()
        self._reap(proc)

    def _killpg(self, proc: Child, sig: int) -> None:
        # Once the leader is reaped its pid, which is also the group id, may be reused.
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)

    def _reap(self, proc: Child) -> None:
        """Reap the exited leader unless a concurrent stop already did."""
        if proc.returncode is not None:
            return
        if self._guard is not None:  # before the reap: the leader keeps the group's id taken
            self._guard.ended(proc.pid)
        try:
            status = self._reaper.reap(proc.pid)
        except ChildProcessError:
            # Someone else waited for our child (a stray ``os.wait()``): the status is lost.
            proc.reaped(_STATUS_LOST)
            return
        proc.reaped(os.waitstatus_to_exitcode(status))

    def _kill_now(self, proc: Child) -> None:
        """Last resort when waiting failed: SIGKILL the group and reap the leader, blocking."""
        self._killpg(proc, signal.SIGKILL)
        if self._guard is not None:
            self._guard.ended(proc.pid)
        try:
            _, status = os.waitpid(proc.pid, 0)  # SIGKILLed: this returns almost at once
        except ChildProcessError:
            proc.reaped(_STATUS_LOST)
        else:
            proc.reaped(os.waitstatus_to_exitcode(status))

    def _outcome(self, proc: Child, shell: bool, output: AttemptOutput) -> Outcome:
        """Describe the reaped attempt: its status, output tails, paths and reported data."""
        code = proc.returncode
        assert code is not None
        stderr_tail = _tail(output.err_fd, self._tail_bytes)
        exit_code, signal_number, reason = self._verdict(code, shell, stderr_tail)
        found = _result_data(output.result_path)
        output.result_absent = found is None
        data = found or {}
        return Outcome(
            ok=code == 0,
            exit_code=exit_code,
            signal=signal_number,
            reason=reason,
            data=data,
            failure=None if code == 0 else _throttling(exit_code, data),
            pid=proc.pid,
            stdout_tail=_tail(output.out_fd, self._tail_bytes),
            stderr_tail=stderr_tail,
            stdout_path=output.stdout_path,
            stderr_path=output.stderr_path,
        )

    def _verdict(self, code: int, shell: bool, stderr_tail: str) -> tuple[int | None, int | None, str | None]:
        """The exit code, signal and reason for a leader's ``returncode``."""
        if code == 0:
            return 0, None, None
        if code == _STATUS_LOST:
            return None, None, "exit status unknown: the process was reaped outside phalanx"
        if code < 0:
            # A signal the command raised itself (SIGSEGV, SIGABRT, ...) is a failure of the
            # command, not a crash: crashed is for a worker phalanx runs dying under it.
            number = -code
            reason = f"killed by signal {number} ({_signal_name(number)})"
            if self._closing:
                reason += " when the backend was closed"
            return None, number, reason
        if shell and code in (_SHELL_NOT_FOUND, _SHELL_CANNOT_EXECUTE):
            # The shell's own exit status: say what it means, and the shell's message.
            what = "command not found" if code == _SHELL_NOT_FOUND else "command not executable"
            line = _last_line(stderr_tail)
            return code, None, f"{what} (exit {code}): {line}" if line else f"{what} (exit {code})"
        return code, None, f"exit code {code}"


def _not_started(reason: str, output: AttemptOutput, exit_code: int | None = None) -> Outcome:
    """The outcome of an attempt whose process could not be started (its files exist, empty)."""
    return Outcome(ok=False, exit_code=exit_code, reason=reason, stdout_path=output.stdout_path,
                   stderr_path=output.stderr_path)


def _confine(task: Task) -> Confinement | None:
    """The confinement of a task with limits, or None if it has none this backend enforces.

    Raises:
        ValueError: a limit the child cannot be given (the message is the reason).
    """
    from ..confinement import confine, confines  # here: tasks without limits never import it

    return confine(task.limits) if confines(task.limits) else None


def _within_limits(outcome: Outcome, proc: Child, shell: bool, confinement: Confinement) -> Outcome:
    """The outcome, failed with the limit's reason when a limit is what ended it (a task whose
    processes went over their memory fails, whatever its leader then did)."""
    assert proc.returncode is not None
    reason = confinement.reason(proc.returncode, shell)
    return outcome if reason is None else replace(outcome, ok=False, reason=reason, failure=None)


def _has_exited(pid: int) -> bool:
    """Whether child ``pid`` has exited (a zombie not yet reaped), without reaping it."""
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True  # already reaped by someone else: it has certainly ended


def _environment(base: dict[bytes, bytes], attempt: Attempt, result_file: str) -> dict[bytes, bytes]:
    """The parent's environment, then the task's variables, then phalanx's own (which always win):
    among them the resource units the attempt holds (``PHALANX_GPU``, ``CUDA_VISIBLE_DEVICES``).

    Built from ``os.environb``: Popen wants bytes in the end, and copying the str view
    would decode every variable only for Popen to encode it again, on every attempt.
    """
    env = base.copy()
    for key, value in attempt.task.env.items():
        env[os.fsencode(key)] = os.fsencode(value)
    if attempt.instances:
        for key, value in instance_environment(attempt.instances).items():
            env[os.fsencode(key)] = os.fsencode(value)
    env[b"PHALANX_TASK_ID"] = os.fsencode(attempt.task.id)
    env[b"PHALANX_ATTEMPT"] = str(attempt.number).encode()
    env[b"PHALANX_WORKER"] = str(attempt.worker).encode()
    env[b"PHALANX_RUN_ID"] = os.fsencode(attempt.run_id)
    env[b"PHALANX_RESULT_FILE"] = os.fsencode(result_file)
    return env


def _start_failure(error: Exception, program: str, cwd: str | None) -> tuple[str, int | None]:
    """The reason and shell-style exit code for a command that could not be started."""
    if isinstance(error, ValueError):  # e.g. a NUL byte in an argument or a variable
        return f"cannot start {program}: {error}", None
    assert isinstance(error, OSError)
    if cwd is not None and error.filename == cwd:  # Popen names the directory it failed to enter
        if isinstance(error, FileNotFoundError):
            return f"working directory does not exist: {cwd}", None
        return f"cannot use working directory {cwd}: {error.strerror}", None
    if isinstance(error, FileNotFoundError):
        return f"command not found: {program}", _SHELL_NOT_FOUND
    if isinstance(error, PermissionError):
        return f"permission denied: {program}", _SHELL_CANNOT_EXECUTE
    if error.errno == errno.ENOEXEC:  # not a binary, and no #! line
        return f"cannot execute {program}: {error.strerror}", _SHELL_CANNOT_EXECUTE
    return f"cannot start {program}: {error.strerror or error}", None


def _tail(fd: int, limit: int) -> str:
    """The last ``limit`` bytes of the file open as ``fd``, decoded (never the whole file);
    "" for -1 (a stream not captured)."""
    if fd < 0 or limit == 0:
        return ""
    size = os.fstat(fd).st_size
    if size == 0 or limit == 0:
        return ""
    start = max(0, size - limit)
    data = os.pread(fd, size - start, start)
    if start:
        # Cut mid-character? Drop the stray continuation bytes rather than show U+FFFD.
        skip = 0
        while skip < min(3, len(data)) and 0x80 <= data[skip] <= 0xBF:
            skip += 1
        data = data[skip:]
    return data.decode("utf-8", errors="replace")


def _result_data(path: str) -> Mapping[str, Any] | None:
    """The JSON object the command wrote to ``PHALANX_RESULT_FILE``, if it wrote one; None
    if nothing is at that name.

    A broken result file does not change whether the attempt succeeded: the exit status
    says that, and retrying a command because its report is malformed would only repeat
    the side effects. The problem is reported in the data as ``result_file_error``.

    The file must be one the command wrote: a symlink at the name is refused, not followed
    (the data stays empty), and so is anything but a regular file.
    """
    try:
        fd = os.open(path, _RESULT_FLAGS)
    except FileNotFoundError:
        return None
    except OSError as error:
        if error.errno in (errno.ELOOP, errno.EMLINK):  # a symlink (EMLINK on the BSDs)
            return {}
        return {"result_file_error": f"cannot read {path}: {error.strerror or error}"}
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return {"result_file_error": f"{path} is not a regular file"}
        with open(fd, "rb", closefd=False) as file:  # O_NONBLOCK means nothing to a regular file
            raw = file.read()
    except OSError as error:
        return {"result_file_error": f"cannot read {path}: {error.strerror or error}"}
    finally:
        os.close(fd)
    try:
        value = json.loads(raw)
    except ValueError as error:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        return {"result_file_error": f"invalid JSON in {path}: {error}"}
    if not isinstance(value, dict):
        return {"result_file_error": f"{path}: expected a JSON object, got {type(value).__name__}"}
    return value


#: The exit status a command uses to say "throttled, try again later" (sysexits' EX_TEMPFAIL).
EXIT_THROTTLED = 75


def _throttling(exit_code: int | None, data: Mapping[str, Any]) -> Failure | None:
    """A failed command's word on throttling: ``{"retry_after": N}`` in its result file (every
    task on its rate-limit key then waits N seconds), or exit status 75 (throttled, no wait
    given: retried after its backoff, and an adaptive limit slows down)."""
    from ..http import Failure  # here: phalanx map's start-up never pays for it

    after = data.get("retry_after")
    if isinstance(after, int | float) and not isinstance(after, bool) and 0 <= after < float("inf"):
        return Failure(status=None, retry_after=float(after), throttled=True, retryable=True)
    if exit_code == EXIT_THROTTLED:
        return Failure(status=None, retry_after=None, throttled=True, retryable=True)
    return None


def _last_line(text: str) -> str:
    for line in reversed(text.splitlines()):
        if line.strip():
            return line.strip()
    return ""


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return "unknown signal"
