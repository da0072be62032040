"""Nothing a task starts outlives its run: not a ``setsid`` daemon, not a SIGKILL of phalanx.

Each scenario runs the real ``phalanx run`` or ``phalanx map`` with long tasks that write a
file once they run, marked with their ``PHALANX_MARK`` (from which the test learns the run's
token). Phalanx is started in a session of its own, so the test can SIGKILL its pid alone
or its whole process group (what ``timeout -s KILL``, a CI runner's cancel or an OOM kill of
a group do); then, within `GONE_BOUND`, no process may carry the run's marker and the
temporary run directory must be gone: the watchdog's work. Every wait is a bounded poll.

``PHALANX_WATCHDOG=0`` turns the watchdog off: then the next ``--resume`` stops the groups
the journal recorded as running. That it leaves alone a process whose pid matches but whose
start time does not is tests/test_journal.py's
``test_kill_leftovers_touches_a_group_only_if_its_leader_started_when_recorded``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest
from chaossupport import TALLY

from phalanx import procfs
from phalanx.journal import Journal
from phalanx.watchdog import RecordedGroups, Watchdog, clean_up

WAIT = 10.0  # seconds: the bound on every wait for something to start
GONE_BOUND = 5.0  # seconds: everything of the run must be gone this soon after the kill
_POLL = 0.02
TASKS = ("t1", "t2", "t3", "t4", "t5", "daemon6")

# A task: the one whose name starts with "daemon" first starts a daemon in a new session
# (no killpg of its group reaches it) that writes its pid down; then each says it runs, with
# its marker, and runs "forever". With a file named "release" it ends at once (--resume).
_TASK = textwrap.dedent(
    """\
    [ -e release ] && exit 0
    case "$1" in daemon*)
        setsid sh -c 'sleep 999 & echo $! > daemon.tmp && mv daemon.tmp daemon.pid'
    esac
    echo "$PHALANX_MARK" > "busy/.$1" && mv "busy/.$1" "busy/$1"
    exec sleep 999
    """
)


def _environment(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("PHALANX_")}
    env.update(TMPDIR=str(tmp_path / "tmp"), LC_ALL="C.UTF-8", **extra)
    return env


def _setup(tmp_path: Path, tasks: tuple[str, ...]) -> None:
    (tmp_path / "busy").mkdir()
    (tmp_path / "tmp").mkdir()
    (tmp_path / "task.sh").write_text(_TASK)
    lines = [f'[tasks.{name}]\ncmd = "sh task.sh {name}"\n' for name in tasks]
    (tmp_path / "phalanx.toml").write_text("\n".join(lines))


def _start(front: str, tmp_path: Path, tasks: tuple[str, ...], *extra: str, **env: str) -> subprocess.Popen[bytes]:
    """``phalanx run`` or ``phalanx map`` of ``tasks``, one slot each, in a session of its own."""
    if front == "run":
        args = ["run", "-j", str(len(tasks)), *extra]
    else:
        args = ["map", "-j", str(len(tasks)), *extra, "sh", "task.sh", "{}", ":::", *tasks]
    return subprocess.Popen(
        [sys.executable, "-m", "phalanx", *args],
        cwd=tmp_path,
        env=_environment(tmp_path, **env),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )


def _wait_for(predicate: Callable[[], object], what: str, bound: float = WAIT) -> None:
    deadline = time.monotonic() + bound
    while not predicate():
        assert time.monotonic() < deadline, f"gave up after {bound}s waiting for {what}"
        time.sleep(_POLL)


def _wait_running(tmp_path: Path, proc: subprocess.Popen[bytes], tasks: tuple[str, ...]) -> str:
    """Wait until every task runs (and the daemon has started); the run's marker token."""
    def ready() -> bool:
        assert proc.poll() is None, f"phalanx ended early: {proc.returncode}, {proc.stderr and proc.stderr.read()!r}"
        daemon = any(name.startswith("daemon") for name in tasks)
        return len(list((tmp_path / "busy").glob("[!.]*"))) == len(tasks) and (
            not daemon or (tmp_path / "daemon.pid").exists())

    _wait_for(ready, f"{len(tasks)} tasks to run")
    return _token(tmp_path / "busy" / tasks[0])


def _token(mark_file: Path) -> str:
    """The run's token, from a task's ``PHALANX_MARK`` (its last entry is its own run's)."""
    return mark_file.read_text().split()[-1].split(":")[0]


def _carrying(token: str) -> list[psutil.Process]:
    """Every live process whose environment carries a marker of the run with this token."""
    found = []
    for process in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            entries = process.environ().get("PHALANX_MARK", "").split()
            if any(entry.startswith(token + ":") for entry in entries) and process.status() != psutil.STATUS_ZOMBIE:
                found.append(process)
    return found


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _run_dirs(tmp_path: Path) -> list[str]:
    return sorted(name for name in os.listdir(tmp_path / "tmp") if name.startswith("phalanx-"))


def _watchdog_of(proc: subprocess.Popen[bytes], token: str) -> psutil.Process:
    """The run's watchdog: a child of phalanx that has the run's token on its command line."""
    for child in psutil.Process(proc.pid).children():
        with contextlib.suppress(psutil.Error):
            if "phalanx.watchdog" in " ".join(child.cmdline()) and token in child.cmdline():
                return child
    raise AssertionError("phalanx has no watchdog")


@contextlib.contextmanager
def _cleaned_up(proc: subprocess.Popen[bytes], tmp_path: Path) -> Iterator[list[str]]:
    """Yields a list to put the run's token in; whatever the test leaves of the run dies at the end."""
    tokens: list[str] = []
    try:
        yield tokens
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(WAIT)
        if proc.stderr is not None:
            proc.stderr.close()
        for token in tokens:
            for process in _carrying(token):
                with contextlib.suppress(psutil.Error):
                    process.kill()
        with contextlib.suppress(FileNotFoundError, ValueError, ProcessLookupError):
            os.kill(int((tmp_path / "daemon.pid").read_text()), signal.SIGKILL)


# ---------------------------------------------------------------------------- phalanx killed outright


@pytest.mark.parametrize("kill", ["pid", "group"])
@pytest.mark.parametrize("front", ["run", "map"])
def test_sigkill_of_phalanx_leaves_no_task_and_no_run_directory(front: str, kill: str, tmp_path: Path) -> None:
    _setup(tmp_path, TASKS)
    proc = _start(front, tmp_path, TASKS)
    with _cleaned_up(proc, tmp_path) as tokens:
        token = _wait_running(tmp_path, proc, TASKS)
        tokens.append(token)
        daemon = int((tmp_path / "daemon.pid").read_text())
        marked = _carrying(token)
        # The six tasks and the daemon; and the daemon did leave the task's session.
        assert len(marked) >= len(TASKS) + 1 and daemon in {p.pid for p in marked}
        assert os.getsid(daemon) != os.getsid(proc.pid)
        assert _run_dirs(tmp_path), "no temporary run directory to check"
        watchdog = _watchdog_of(proc, token)
        # Not in phalanx's session (a kill of its group misses it), holding none of its output.
        assert watchdog.pid == os.getsid(watchdog.pid) != os.getsid(proc.pid)
        assert {os.readlink(f"/proc/{watchdog.pid}/fd/{fd}") for fd in (1, 2)} == {os.devnull}

        if kill == "pid":
            os.kill(proc.pid, signal.SIGKILL)
        else:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(WAIT)
        _wait_for(lambda: not _carrying(token) and not _alive(daemon) and not _run_dirs(tmp_path),
                  "every process of the run and its run directory to go", bound=GONE_BOUND)
        TALLY.add(f"watchdog: phalanx {front}, SIGKILL of its {kill}", runs=1, kills=1)
        _wait_for(lambda: not _alive(watchdog.pid), "the watchdog to exit once done")


def test_a_kept_log_dir_outlives_the_kill(tmp_path: Path) -> None:
    tasks = ("t1", "daemon2")
    _setup(tmp_path, tasks)
    proc = _start("run", tmp_path, tasks, "--log-dir", "logs")
    with _cleaned_up(proc, tmp_path) as tokens:
        token = _wait_running(tmp_path, proc, tasks)
        tokens.append(token)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(WAIT)
        _wait_for(lambda: not _carrying(token), "every process of the run to go", bound=GONE_BOUND)
        kept = sorted(path.suffix for path in (tmp_path / "logs").iterdir())
        assert kept == [".err", ".err", ".out", ".out"]  # each task's output files, left where they were


# ---------------------------------------------------------------------------- daemons of a task that ends

# The task starts a daemon in a new session, learns its pid through a FIFO (no polling) and
# writes it down; the check, which runs once the task has ended, fails if it still runs.
_SPAWN = ("mkfifo fifo && { setsid sh -c 'sleep 999 & echo $! > fifo' & } && read pid < fifo"
          " && echo $pid > daemon.tmp && mv daemon.tmp daemon.pid")
_CHECK = 'pid=$(cat daemon.pid); if kill -0 "$pid" 2>/dev/null; then echo "daemon $pid runs" >&2; exit 1; fi'


def _daemon_gone_afterwards(tmp_path: Path) -> None:
    daemon = int((tmp_path / "daemon.pid").read_text())
    try:
        assert not _alive(daemon)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(daemon, signal.SIGKILL)


def test_a_daemon_is_killed_when_its_task_ends_not_at_the_end_of_the_run(tmp_path: Path) -> None:
    (tmp_path / "phalanx.toml").write_text(textwrap.dedent(f"""\
        [tasks.spawn]
        cmd = '''{_SPAWN}'''
        [tasks.check]
        cmd = '''{_CHECK}'''
        deps = ["spawn"]
        """))
    result = subprocess.run([sys.executable, "-m", "phalanx", "run"], cwd=tmp_path, env=_environment(tmp_path),
                            capture_output=True, text=True, timeout=60)
    _daemon_gone_afterwards(tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_map_jobs_daemon_is_killed_when_the_job_ends_and_the_watchdog_leaves_quietly(tmp_path: Path) -> None:
    # -j1: the second job starts once the first has ended.
    mark = 'echo "$PHALANX_MARK" > mark'
    result = subprocess.run(
        [sys.executable, "-m", "phalanx", "map", "-j1", ":::", f"{mark}; {_SPAWN}", _CHECK],
        cwd=tmp_path, env=_environment(tmp_path), capture_output=True, text=True, timeout=60,
    )
    _daemon_gone_afterwards(tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    token = _token(tmp_path / "mark")

    def watchdog_gone() -> bool:
        for process in psutil.process_iter():
            with contextlib.suppress(psutil.Error):
                if token in process.cmdline() and process.status() != psutil.STATUS_ZOMBIE:
                    return False
        return True

    _wait_for(watchdog_gone, "the watchdog to exit after the run")


def test_a_daemon_is_killed_when_its_task_times_out_while_the_run_goes_on(tmp_path: Path) -> None:
    # "watch" runs beside "spawn" and ends only once spawn's daemon is gone, which takes
    # spawn's timeout: so the daemon went before the end of the run.
    watch = ('while [ ! -e daemon.pid ]; do sleep 0.01; done; pid=$(cat daemon.pid); n=0;'
             ' while kill -0 "$pid" 2>/dev/null; do n=$((n+1)); [ $n -lt 1000 ] || exit 1; sleep 0.01; done')
    (tmp_path / "phalanx.toml").write_text(textwrap.dedent(f"""\
        [tasks.spawn]
        cmd = '''{_SPAWN} && exec sleep 999'''
        timeout = "2s"
        [tasks.watch]
        cmd = '''{watch}'''
        """))
    result = subprocess.run([sys.executable, "-m", "phalanx", "run", "-j2", "--json"], cwd=tmp_path,
                            env=_environment(tmp_path), capture_output=True, text=True, timeout=60)
    _daemon_gone_afterwards(tmp_path)
    statuses = {r["task_id"]: r["status"] for r in json.loads(result.stdout)["results"]}
    assert statuses == {"spawn": "timed_out", "watch": "succeeded"}, result.stderr


# ---------------------------------------------------------------------------- --resume, without a watchdog


def _recorded_groups(tmp_path: Path) -> Callable[[], int]:
    """How many process groups the journal has as running, with their leader's start time."""
    def count() -> int:
        if not (tmp_path / ".phalanx").exists():
            return 0
        with Journal.open(tmp_path) as journal:
            runs = journal.runs()
            return len(journal.running_attempts(runs[0].id)) if runs else 0

    return count


@pytest.mark.parametrize("front", ["run", "map"])
def test_resume_after_a_kill_without_watchdog_stops_the_groups_the_journal_recorded(
    front: str, tmp_path: Path
) -> None:
    tasks = ("t1", "t2", "t3")
    _setup(tmp_path, tasks)
    joblog = ("--joblog", "jobs.log") if front == "map" else ()
    proc = _start(front, tmp_path, tasks, *joblog, PHALANX_WATCHDOG="0")
    with _cleaned_up(proc, tmp_path) as tokens:
        token = _wait_running(tmp_path, proc, tasks)
        tokens.append(token)
        count = _recorded_groups(tmp_path)
        _wait_for(lambda: count() == len(tasks), "the journal to record every running group")
        left = _carrying(token)
        assert len(left) == len(tasks)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(WAIT)
        assert all(_alive(process.pid) for process in left), "something killed the tasks: is the watchdog off?"

        (tmp_path / "release").touch()  # the tasks run again, and end at once
        args = ["run", "--resume"] if front == "run" else ["map", "--resume", *joblog, "sh", "task.sh", "{}",
                                                           ":::", *tasks]
        result = subprocess.run([sys.executable, "-m", "phalanx", *args], cwd=tmp_path,
                                env=_environment(tmp_path, PHALANX_WATCHDOG="0"), capture_output=True, text=True,
                                timeout=60)
        assert result.returncode == 0, result.stdout + result.stderr
        said = result.stdout if front == "run" else result.stderr
        assert f"stopped {len(tasks)} process group(s) a killed run left running" in said
        _wait_for(lambda: not any(_alive(process.pid) for process in left), "the recorded groups to be stopped")
        with Journal.open(tmp_path) as journal:
            killed = journal.runs()[-1]
            assert killed.status == "crashed"


# ---------------------------------------------------------------------------- the watchdog's own rules

# Blocks SIGTERM, so that a SIGTERM sent stays pending where /proc shows it (ShdPnd), then
# says it is ready and waits: only SIGKILL ends it.
_TERM_BLOCKED = (
    "import signal, sys, time; signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM});"
    " print('ready', flush=True); time.sleep(60)"
)


def _term_blocked(mark: str) -> subprocess.Popen[str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("PHALANX_")}
    env["PHALANX_MARK"] = mark
    proc = subprocess.Popen([sys.executable, "-c", _TERM_BLOCKED], process_group=0, env=env,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
    return proc


def _term_pending(pid: int) -> bool:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("ShdPnd:"):
                return bool(int(line.split()[1], 16) & (1 << (signal.SIGTERM - 1)))
    raise AssertionError("no ShdPnd in /proc/PID/status")


def test_the_watchdog_kills_a_group_only_if_its_leader_started_when_recorded_and_what_carries_the_token(
    tmp_path: Path,
) -> None:
    token = os.urandom(8).hex()
    leader, marked, stranger = _term_blocked(""), _term_blocked(f"{token}:7"), _term_blocked("0ther:7")
    try:
        info = procfs.process_info(leader.pid)
        assert info is not None
        # A group whose leader has another start time: its pid was reused, the group is not ours.
        clean_up(token, {leader.pid: info.start_ticks - 1}, [], grace=0.0)
        assert marked.wait(WAIT) == -signal.SIGKILL  # found by its marker, recorded nowhere
        assert leader.poll() is None and not _term_pending(leader.pid)
        assert stranger.poll() is None and not _term_pending(stranger.pid)  # another run's marker

        run_dir = tmp_path / "phalanx-run"
        (run_dir / "sub").mkdir(parents=True)
        clean_up(token, {leader.pid: info.start_ticks}, [str(run_dir)], grace=0.05)
        assert leader.wait(WAIT) == -signal.SIGKILL  # SIGTERM (blocked), then SIGKILL after the grace
        assert not run_dir.exists()
        assert stranger.poll() is None and not _term_pending(stranger.pid)
    finally:
        for proc in (leader, marked, stranger):
            proc.kill()
            proc.wait(WAIT)
            assert proc.stdout is not None
            proc.stdout.close()


def test_the_watchdog_takes_a_start_time_only_from_phalanxs_child_or_a_marked_process() -> None:
    token = os.urandom(8).hex()
    child = subprocess.Popen(["sleep", "60"], process_group=0)
    try:
        # Heard of long enough ago to be looked up now.
        ours = RecordedGroups(token, owner=os.getpid())
        ours.started(child.pid, time.monotonic() - 1.0)
        ours.resolve(time.monotonic())
        info = procfs.process_info(child.pid)
        assert info is not None and ours.final() == {child.pid: info.start_ticks}

        # The same pid, as a watchdog whose phalanx is another process sees it: neither that
        # phalanx's child nor marked with the run's token, so perhaps a reused pid: dropped.
        theirs = RecordedGroups(token, owner=os.getppid())
        theirs.started(child.pid, time.monotonic() - 1.0)
        theirs.resolve(time.monotonic())
        assert theirs.final() == {}
        ended = RecordedGroups(token, owner=os.getpid())
        ended.started(child.pid, time.monotonic())
        ended.ended(child.pid)
        assert ended.final() == {}
    finally:
        child.kill()
        child.wait(WAIT)


def test_the_watchdog_is_running_from_the_first_group_on_not_from_a_later_flush() -> None:
    # With a kept --log-dir the first message is a group's start, whose write is deferred a
    # few ms to go with the next one: the watchdog process must exist at once all the same,
    # or a kill of phalanx in those ms leaves every task behind (as it once did).
    async def first_group() -> int | None:
        watchdog = Watchdog("t" * 16, grace=0.1)
        try:
            watchdog.group_started(os.getpid())  # any pid: the message only has to be queued
            return watchdog.pid
        finally:
            watchdog.close()

    pid = asyncio.run(first_group())
    assert pid is not None
    watchdog = psutil.Process(pid)  # told "done": it exits; reaped here, or it stays our zombie
    assert watchdog.ppid() == os.getpid()
    watchdog.wait(WAIT)


def test_a_short_groups_start_and_end_are_never_written() -> None:
    """A group that ends before its start was written costs no write at all; one whose
    start was written gets its end in the next batch, in order."""

    async def written() -> bytes:
        watchdog = Watchdog("t" * 16, grace=0.1)
        read_end, write_end = os.pipe()
        watchdog._fd = write_end  # stands in for the watchdog process's pipe (never started)
        try:
            watchdog.group_started(101)
            watchdog.group_ended(101)  # a short job: both cancel out in the buffer
            watchdog.group_started(102)
            watchdog._send(b"")  # the batch goes out (FLUSH_AFTER later, in a run)
            watchdog.group_started(1102)
            watchdog.group_ended(102)  # "+ 102" was written: "- 102" must follow
            watchdog.group_ended(1102)
            watchdog.close()
            return os.read(read_end, 1 << 16)
        finally:
            os.close(read_end)

    assert asyncio.run(written()) == b"+ 102\n- 102\ndone\n"
