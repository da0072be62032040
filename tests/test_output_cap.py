"""``max_output``: a command's stdout and stderr kept to a cap, the rest counted and dropped.

With a cap, a task's output goes through pipes that phalanx drains into its files: the
first half of the cap and the last half are kept (with a marker line between for
`phalanx run`, none for `phalanx map`), phalanx's memory stays flat however much is
printed, the task is not slowed down, and the end of an attempt never waits for a pipe.
The result says what was cut: `TaskResult.output_cut`, its note, the JSON report, the
results file, JUnit and the journal.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

import phalanx
from phalanx.backends.base import Attempt, Outcome
from phalanx.backends.command import CommandBackend
from phalanx.limits import Limits
from phalanx.model import Task
from phalanx.outputfiles import output_paths
from phalanx.results import Status

WAIT = 10.0  # seconds: the bound on every wait for a process to do something
LINE = 1024  # bytes per line of the flood
MB = 1_000_000

# Line i of a flood: its number, then dots, 1024 bytes in all: any byte of it tells where it came from.
FLOOD = """\
import sys
lines, stream, code = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
out = (sys.stdout if stream == "out" else sys.stderr).buffer
for i in range(lines):
    out.write(b"%08d" % i + b"." * 1015 + b"\\n")
out.flush()
sys.exit(code)
"""

# Writes the bytes of a file in chunks of seeded random sizes (so the pipe is read at odd boundaries).
CHUNKED = """\
import os, random, sys
data, rng = open(sys.argv[1], "rb").read(), random.Random(int(sys.argv[2]))
fd, at = (1 if sys.argv[3] == "out" else 2), 0
while at < len(data):
    n = rng.choice((1, 7, 4096, 65536, 300000))
    os.write(fd, data[at:at + n])
    at += n
"""

MARKER = re.compile(rb"\n?\[phalanx: (\d+) bytes of (stdout|stderr) cut here by max_output; kept: the first (\d+) "
                    rb"bytes and the last (\d+)\]\n")


def line(i: int) -> bytes:
    return b"%08d" % i + b"." * 1015 + b"\n"


def flood_head(size: int) -> bytes:
    return b"".join(line(i) for i in range(size // LINE + 1))[:size]


def flood_tail(lines: int, size: int) -> bytes:
    return b"".join(line(i) for i in range(max(0, lines - size // LINE - 1), lines))[-size:]


def phalanx_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "phalanx", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=120)


def write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text))
    return path


# ------------------------------------------------------------------ one `phalanx run`, looked at from every side


FLOOD_LINES = 200_000  # 204.8 MB of stdout
NOISY_LINES = 5_000  # 5.12 MB of stderr, then exit 3
CAP = MB  # --max-output 1MB: 500,000 bytes of head and 500,000 of tail


class CappedRun:
    def __init__(self, root: Path, done: subprocess.CompletedProcess[str], peak_rss: int, seconds: float) -> None:
        self.root = root
        self.done = done
        self.peak_rss = peak_rss
        self.seconds = seconds
        self.report = json.loads(done.stdout)
        self.results = {result["task_id"]: result for result in self.report["results"]}

    def files(self, task_id: str) -> tuple[bytes, bytes]:
        out, err = output_paths(str(self.root / "logs"), task_id, 1)
        return Path(out).read_bytes(), Path(err).read_bytes()


def run_watching_memory(argv: list[str], cwd: Path) -> tuple[subprocess.CompletedProcess[str], int, float]:
    """Run phalanx, polling its RSS every few milliseconds: (what it did, the peak RSS, seconds)."""
    out, err = cwd / "stdout.txt", cwd / "stderr.txt"
    started = time.monotonic()
    with open(out, "wb") as stdout, open(err, "wb") as stderr:
        proc = subprocess.Popen(argv, stdout=stdout, stderr=stderr, cwd=cwd)
    peak = 0
    watched = psutil.Process(proc.pid)
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:
        with contextlib.suppress(psutil.Error):  # between two polls it may have ended
            peak = max(peak, watched.memory_info().rss)
        time.sleep(0.005)
    proc.wait(timeout=10)
    seconds = time.monotonic() - started
    done = subprocess.CompletedProcess(argv, proc.returncode, out.read_text(), err.read_text())
    return done, peak, seconds


@pytest.fixture(scope="module")
def capped(tmp_path_factory: pytest.TempPathFactory) -> CappedRun:
    root = tmp_path_factory.mktemp("capped")
    (root / "flood.py").write_text(FLOOD)
    write(root / "phalanx.toml", f"""\
        [tasks.flood]
        cmd = ["{sys.executable}", "flood.py", "{FLOOD_LINES}", "out", "0"]
        [tasks.noisy]
        cmd = ["{sys.executable}", "flood.py", "{NOISY_LINES}", "err", "3"]
        [tasks.quiet]
        cmd = "printf 'hello\\\\n'; printf 'warning\\\\n' >&2; exit 0"
        [tasks.own]
        cmd = "seq 1 1000"
        max_output = "2KiB"  # its own cap, not --max-output's
        [tasks.lifted]
        cmd = "seq 1 1000"
        max_output = 0  # 0: no cap, whatever --max-output says
        """)
    argv = [sys.executable, "-m", "phalanx", "run", "--max-output", "1MB", "--json", "--log-dir", "logs",
            "--results", "results.jsonl", "--junit", "junit.xml", "-j", "5"]
    done, peak, seconds = run_watching_memory(argv, root)
    assert done.returncode == 1, done.stderr  # noisy exits 3
    return CappedRun(root, done, peak, seconds)


def test_a_flood_keeps_the_head_and_the_tail_with_a_marker_between(capped: CappedRun) -> None:
    stdout, stderr = capped.files("flood")
    assert stderr == b""
    marker = MARKER.search(stdout)
    assert marker is not None
    assert stdout[: marker.start()] == flood_head(CAP // 2)
    assert stdout[marker.end():] == flood_tail(FLOOD_LINES, CAP // 2)
    printed = FLOOD_LINES * LINE
    assert marker.groups() == (str(printed - CAP).encode(), b"stdout", b"500000", b"500000")
    assert len(stdout) <= CAP + 200  # the cap, and the marker line


def test_the_result_says_what_was_cut_per_stream(capped: CappedRun) -> None:
    flood = capped.results["flood"]
    assert flood["status"] == "succeeded"
    printed = FLOOD_LINES * LINE
    assert flood["output_cut"] == {
        "cap": CAP,
        "stdout": {"printed": printed, "kept": CAP, "dropped": printed - CAP, "head": CAP // 2},
        "stderr": None,
    }
    assert flood["note"] == "output cut: stdout 204.8 MB printed, 1 MB kept"
    assert flood["reason"] is None  # it succeeded: the note is not a reason to fail
    assert "flood  (output cut: stdout 204.8 MB printed, 1 MB kept)" in capped.done.stderr


def test_a_failing_task_keeps_the_end_of_its_stderr(capped: CappedRun) -> None:
    noisy = capped.results["noisy"]
    assert noisy["status"] == "failed" and noisy["exit_code"] == 3
    printed = NOISY_LINES * LINE
    assert noisy["output_cut"]["stdout"] is None
    assert noisy["output_cut"]["stderr"] == {"printed": printed, "kept": CAP, "dropped": printed - CAP,
                                             "head": CAP // 2}
    assert noisy["note"] == "output cut: stderr 5.12 MB printed, 1 MB kept"
    assert noisy["reason"] == "exit code 3"
    last = line(NOISY_LINES - 1).decode()
    assert noisy["stderr_tail"].endswith(last)  # the tail: where the error usually is
    _, stderr = capped.files("noisy")
    assert stderr.endswith(flood_tail(NOISY_LINES, CAP // 2))


def test_output_under_the_cap_is_kept_whole_and_unremarked(capped: CappedRun) -> None:
    assert capped.files("quiet") == (b"hello\n", b"warning\n")
    quiet = capped.results["quiet"]
    assert quiet["output_cut"] is None and quiet["note"] is None


def test_a_tasks_own_max_output_wins_over_the_option_and_0_lifts_it(capped: CappedRun) -> None:
    printed = len("".join(f"{i}\n" for i in range(1, 1001)))
    own = capped.results["own"]
    assert own["output_cut"]["cap"] == 2048 and own["output_cut"]["stdout"]["printed"] == printed
    assert own["note"] == "output cut: stdout 3.8 KiB printed, 2 KiB kept"  # in the cap's units
    lifted = capped.results["lifted"]
    assert lifted["output_cut"] is None
    assert capped.files("lifted")[0] == "".join(f"{i}\n" for i in range(1, 1001)).encode()


def test_phalanx_memory_stays_flat_and_the_flood_is_not_slowed(capped: CappedRun, tmp_path: Path) -> None:
    # 204.8 MB went through phalanx: holding even a tenth of it would show.
    assert capped.peak_rss < 100 * 2**20, f"peak RSS {capped.peak_rss / 2**20:.0f} MiB"
    # The same flood straight into a file, as a task without a cap writes it.
    (tmp_path / "flood.py").write_text(FLOOD)
    started = time.monotonic()
    with open(tmp_path / "out", "wb") as out:
        subprocess.run([sys.executable, "flood.py", str(FLOOD_LINES), "out", "0"], stdout=out, cwd=tmp_path,
                       check=True, timeout=120)
    alone = time.monotonic() - started
    through_pipe = capped.results["flood"]["duration"]
    assert through_pipe < 3 * alone + 2.0, f"{through_pipe:.2f}s through the pipe, {alone:.2f}s into a file"


def test_the_results_file_junit_and_journal_carry_the_note(capped: CappedRun) -> None:
    rows = {row["task"]: row for row in map(json.loads, (capped.root / "results.jsonl").read_text().splitlines())}
    assert rows["flood"]["note"] == "output cut: stdout 204.8 MB printed, 1 MB kept"
    assert rows["flood"]["error"] == ""
    assert "note" not in rows["quiet"]

    junit = (capped.root / "junit.xml").read_text()
    assert '<property name="note" value="output cut: stdout 204.8 MB printed, 1 MB kept"' in junit
    assert "phalanx: output cut: stderr 5.12 MB printed, 1 MB kept" in junit

    from phalanx.journal import Journal

    journal = Journal.open(capped.root)
    try:
        run = journal.runs(1)[0]
        (flood,) = journal.show(run.id, "flood")
        (noisy,) = journal.show(run.id, "noisy")
    finally:
        journal.close()
    assert flood.reason == "output cut: stdout 204.8 MB printed, 1 MB kept"
    assert noisy.reason == "exit code 3; output cut: stderr 5.12 MB printed, 1 MB kept"


# ------------------------------------------------------------------ the capture itself, on the backend


def run_attempt(backend: CommandBackend, task: Task, run_dir: Path) -> Outcome:
    async def go() -> Outcome:
        try:
            return await backend.run(Attempt(task, 1, 1, "run", run_dir))
        finally:
            await backend.aclose()

    return asyncio.run(go())


@pytest.mark.parametrize(("cap", "size"), [
    (1000, 0), (1000, 500), (1001, 1001),  # kept whole
    (1000, 1001), (1, 2), (2, 700_001), (300_001, 1_234_567),  # cut
])
def test_kept_bytes_are_the_head_and_the_tail_whatever_the_write_sizes(tmp_path: Path, cap: int, size: int) -> None:
    data = bytes((i * 7 + i // 251) % 256 for i in range(size))
    (tmp_path / "data").write_bytes(data)
    (tmp_path / "chunked.py").write_text(CHUNKED)
    task = Task("t", [sys.executable, str(tmp_path / "chunked.py"), str(tmp_path / "data"), str(size), "out"],
                limits=Limits(max_output=cap))
    outcome = run_attempt(CommandBackend(), task, tmp_path / "run")
    assert outcome.ok, outcome.reason
    assert outcome.stdout_path is not None
    kept = Path(outcome.stdout_path).read_bytes()
    if size <= cap:
        assert kept == data
        assert outcome.output_cut is None
        return
    head, tail = cap // 2, cap - cap // 2
    marker = MARKER.search(kept, head)
    assert marker is not None and marker.start() == head
    assert kept[:head] + kept[marker.end():] == data[:head] + data[-tail:]
    assert marker.groups() == (str(size - cap).encode(), b"stdout", str(head).encode(), str(tail).encode())
    assert outcome.output_cut is not None and outcome.output_cut.stderr is None
    assert outcome.output_cut.stdout is not None
    assert (outcome.output_cut.stdout.printed, outcome.output_cut.stdout.kept) == (size, cap)


def test_without_a_marker_the_file_is_the_streams_own_bytes(tmp_path: Path) -> None:
    data = os.urandom(100_000)
    (tmp_path / "data").write_bytes(data)
    (tmp_path / "chunked.py").write_text(CHUNKED)
    task = Task("t", [sys.executable, str(tmp_path / "chunked.py"), str(tmp_path / "data"), "1", "err"],
                limits=Limits(max_output=10_001))
    outcome = run_attempt(CommandBackend(cut_marker=False), task, tmp_path / "run")
    assert outcome.stderr_path is not None
    assert Path(outcome.stderr_path).read_bytes() == data[:5000] + data[-5001:]
    assert outcome.output_cut is not None and outcome.output_cut.stderr is not None
    assert outcome.output_cut.stderr.dropped == 100_000 - 10_001


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.fixture
def escaped(tmp_path: Path) -> Iterator[Path]:
    """Where a test's escaped process writes its pid; killed at the end if it is still there."""
    pid_file = tmp_path / "escaped.pid"
    yield pid_file
    if pid_file.exists() and pid_file.read_text().strip():
        pid = int(pid_file.read_text())
        if not gone(pid):
            os.kill(pid, signal.SIGKILL)


def test_a_writer_that_outlives_its_task_does_not_delay_the_end(tmp_path: Path, escaped: Path) -> None:
    # It leaves the process group (setsid), so nothing kills it, keeps the pipe open and
    # writes as fast as it can: the attempt ends when its leader does all the same.
    command = (f"setsid sh -c 'while :; do echo flood; done' & echo $! > {escaped}; "
               "i=0; while [ $i -lt 2000 ]; do echo line $i; i=$((i+1)); done")
    started = time.monotonic()
    outcome = run_attempt(CommandBackend(), Task("t", command, limits=Limits(max_output=2000)), tmp_path / "run")
    assert time.monotonic() - started < 5.0
    assert outcome.ok
    assert outcome.output_cut is not None and outcome.output_cut.stdout is not None
    assert outcome.output_cut.stdout.kept == 2000
    # Its pipe is closed: its next write gets EPIPE, and SIGPIPE ends it.
    pid = int(escaped.read_text())
    deadline = time.monotonic() + WAIT
    while not gone(pid) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert gone(pid)


def test_a_background_process_in_the_group_does_not_delay_the_end(tmp_path: Path) -> None:
    started = time.monotonic()
    outcome = run_attempt(CommandBackend(), Task("t", "sleep 30 & echo started", limits=Limits(max_output=100)),
                          tmp_path / "run")
    assert time.monotonic() - started < 5.0
    assert outcome.ok and outcome.output_cut is None
    assert outcome.stdout_tail == "started\n"


def test_a_timed_out_task_reports_what_was_cut_before_it_was_stopped(tmp_path: Path) -> None:
    (tmp_path / "flood.py").write_text(FLOOD)
    command = f"{sys.executable} {tmp_path / 'flood.py'} 3000 out 0; echo done; sleep 30"
    task = Task("slow", command, timeout=1.0, limits=Limits(max_output=10_000))
    report = phalanx.run([task], log_dir=tmp_path / "logs")
    result = report["slow"]
    assert result.status is Status.TIMED_OUT
    assert result.output_cut is not None and result.output_cut.stdout is not None
    assert result.output_cut.stdout.printed == 3000 * LINE + len("done\n")
    assert result.stdout_tail.endswith(line(2999).decode() + "done\n")
    assert result.note == "output cut: stdout 3.07 MB printed, 10 kB kept"


def test_no_cap_keeps_the_fast_path_and_every_byte(tmp_path: Path) -> None:
    (tmp_path / "flood.py").write_text(FLOOD)
    task = Task("t", [sys.executable, str(tmp_path / "flood.py"), "3000", "out", "0"],
                limits=Limits(max_output=0))  # 0: no cap, as timeout = 0 is no timeout
    outcome = run_attempt(CommandBackend(), task, tmp_path / "run")
    assert outcome.output_cut is None
    assert outcome.stdout_path is not None
    assert os.path.getsize(outcome.stdout_path) == 3000 * LINE


# ------------------------------------------------------------------ phalanx map


def test_map_prints_the_jobs_own_kept_bytes_and_warns_once_per_cut_job(tmp_path: Path) -> None:
    (tmp_path / "flood.py").write_text(FLOOD)
    done = phalanx_cli("map", "--no-journal", "-k", "--max-output", "10kB", sys.executable, "flood.py", "{}", "out",
                       "0", ":::", "3", "100", "200", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    short = b"".join(line(i) for i in range(3))
    expected = short + (flood_head(5000) + flood_tail(100, 5000)) + (flood_head(5000) + flood_tail(200, 5000))
    assert done.stdout.encode() == expected
    # A warning is printed as its job ends (-k orders stdout, not stderr): in any order.
    warnings = sorted(done.stderr.splitlines())
    assert warnings == [
        f"phalanx map: warning: output cut: stdout 102.4 kB printed, 10 kB kept (--max-output): "
        f"{sys.executable} flood.py 100 out 0",
        f"phalanx map: warning: output cut: stdout 204.8 kB printed, 10 kB kept (--max-output): "
        f"{sys.executable} flood.py 200 out 0",
    ]


# ------------------------------------------------------------------ bad values: one line, nothing runs


def test_a_bad_max_output_option_is_one_line_and_nothing_runs(tmp_path: Path) -> None:
    write(tmp_path / "phalanx.toml", """\
        [tasks.touch]
        cmd = "touch ran"
        """)
    done = phalanx_cli("run", "--max-output", "lots", cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr == ("phalanx: error: --max-output: 'lots' is not a size (use a size such as \"512MB\", "
                           "\"1.5GiB\", \"800k\" or a number of bytes; k, M, G, T are powers of 1000, Ki, Mi, Gi, "
                           "Ti powers of 1024); 0 means no cap\n")
    assert not (tmp_path / "ran").exists()

    mapped = phalanx_cli("map", "--no-journal", "--max-output", "-1", "touch", "ran{}", ":::", "1", cwd=tmp_path)
    assert mapped.returncode == 255
    assert mapped.stderr.startswith("phalanx map: --max-output: '-1' is not a size")
    assert len(mapped.stderr.splitlines()) == 1
    assert not (tmp_path / "ran1").exists()


def test_a_bad_max_output_in_a_task_file_names_the_file_and_line(tmp_path: Path) -> None:
    write(tmp_path / "phalanx.toml", """\
        [defaults]
        max_output = "lots"

        [tasks.touch]
        cmd = "touch ran"
        """)
    done = phalanx_cli("run", cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.startswith("phalanx: error: phalanx.toml:2: [defaults]: max_output: 'lots' is not a size")
    assert len(done.stderr.splitlines()) == 1
    assert not (tmp_path / "ran").exists()
