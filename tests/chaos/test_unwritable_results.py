"""Results that cannot be written: a full disk (ENOSPC: the file is /dev/full, or a link to
it) and a file-size limit (EFBIG: RLIMIT_FSIZE, SIGXFSZ ignored, as ``ulimit -f`` in a shell
that traps XFSZ). Each time: one clear line naming the file, no traceback, the documented
exit status (``phalanx run``: 2; ``phalanx map``: 255, its usage status), and the journal
intact: it opens and has the run, its tasks succeeded. /dev/full itself stays a device (a
report renamed over it would replace it, for root, with a regular file).
"""

from __future__ import annotations

import json
import os
import resource
import signal
import stat
import subprocess
from pathlib import Path

import pytest
from chaossupport import TALLY, new_mark, run_phalanx

from phalanx.journal import Journal

DEV_FULL = Path("/dev/full")

pytestmark = pytest.mark.skipif(
    not (DEV_FULL.exists() and stat.S_ISCHR(DEV_FULL.stat().st_mode)), reason="no /dev/full device here"
)

_TWO_TASKS = """
[tasks.build]
cmd = "echo built"
[tasks.test]
cmd = "echo tested"
deps = ["build"]
"""

#: The file-size limit of the EFBIG runs: more than the journal and any one task writes,
#: less than the report of all of them.
LIMIT = 1_000_000

# A task whose result data (what it writes to $PHALANX_RESULT_FILE) is 400 kB: the results
# row and the HTML page hold it, the journal does not.
_BIG_DATA = """printf '{"blob": "%s"}' "$(head -c 400000 /dev/zero | tr '\\0' x)" > "$PHALANX_RESULT_FILE\""""


def _assert_clean_failure(
    done: subprocess.CompletedProcess[str], status: int, prefix: str, name: str, reason: str
) -> None:
    lines = done.stderr.strip().splitlines()
    assert done.returncode == status, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    assert lines[-1] == f"{prefix}cannot write {name}: {reason}", done.stderr
    assert stat.S_ISCHR(os.stat(DEV_FULL).st_mode), "/dev/full was replaced by a regular file"


def _assert_journal_has_the_run(work: Path, kind: str, tasks: int, *, ran: bool = True) -> None:
    """The journal opens and has the run, all its tasks succeeded (``ran``); or, for a file
    that could not even be started (a header written first), no run, and nothing ran."""
    with Journal.open(work) as journal:
        runs = journal.runs()
        records = [record for run in runs for record in journal.show(run.id)]
    if not ran:
        assert runs == [] and not (work / "ran").exists()
        return
    (run,) = runs
    assert run.kind == kind and run.status == "succeeded", run
    assert len(records) == tasks and {record.status for record in records} == {"succeeded"}, records


@pytest.mark.parametrize(
    ("option", "name"),
    [
        (["--junit", "/dev/full"], "/dev/full"),
        (["--html", "/dev/full"], "/dev/full"),
        (["--trace", "full.json"], "full.json"),  # a link to /dev/full
        (["--results", "full.jsonl"], "full.jsonl"),
        (["--json"], "standard output"),  # stdout is /dev/full
    ],
    ids=["junit", "html", "trace", "results", "json"],
)
def test_phalanx_run_on_a_full_disk_says_which_file_and_keeps_the_journal(
    option: list[str], name: str, tmp_path: Path
) -> None:
    (tmp_path / "phalanx.toml").write_text(_TWO_TASKS)
    for link in ("full.json", "full.jsonl"):
        (tmp_path / link).symlink_to(DEV_FULL)
    with DEV_FULL.open("wb") as full:
        stdout = full if option == ["--json"] else subprocess.PIPE
        done = run_phalanx(["run", "-q", *option], cwd=tmp_path, mark=new_mark(), stdout=stdout)
    TALLY.add("ENOSPC (/dev/full)", runs=1)
    _assert_clean_failure(done, 2, "phalanx: error: ", name, "No space left on device")
    _assert_journal_has_the_run(tmp_path, "run", 2)


@pytest.mark.parametrize(
    ("option", "name"),
    [(["--joblog", "/dev/full"], "/dev/full"), (["--results", "full.csv"], "full.csv"), ([], "standard output")],
    ids=["joblog", "results", "stdout"],
)
def test_phalanx_map_on_a_full_disk_says_which_file_and_keeps_the_journal(
    option: list[str], name: str, tmp_path: Path
) -> None:
    (tmp_path / "full.csv").symlink_to(DEV_FULL)
    with DEV_FULL.open("wb") as full:
        done = run_phalanx(["map", *option, "echo {} | tee -a ran", ":::", "a", "b", "c"], cwd=tmp_path,
                           mark=new_mark(), stdout=full)
    TALLY.add("ENOSPC (/dev/full)", runs=1)
    _assert_clean_failure(done, 255, "phalanx map: ", name, "No space left on device")
    # The joblog's and the CSV's header are written first: there the run never starts.
    _assert_journal_has_the_run(tmp_path, "map", 3, ran=not option)


def _limited() -> None:
    """In the child, before phalanx starts: files may not grow past LIMIT, and a write that
    would gets EFBIG rather than the signal."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (LIMIT, LIMIT))


def _junit_file_of(cases: int) -> str:
    body = "".join(f'<testcase classname="c" name="t{n}" time="0.001"><system-out>{"y" * 300}</system-out></testcase>\n'
                   for n in range(cases))
    return f'<testsuite name="own" tests="{cases}">\n{body}</testsuite>\n'


@pytest.mark.parametrize("report", ["rows.jsonl", "rows.csv", "page.html", "report.xml"])
def test_phalanx_run_past_a_file_size_limit_says_which_file_and_keeps_the_journal(report: str, tmp_path: Path) -> None:
    if report == "report.xml":
        # The tasks' own JUnit files (460 kB each: under the limit), merged: over it.
        (tmp_path / "cases.xml").write_text(_junit_file_of(1200))
        tasks = "".join(f'[tasks.t{n}]\ncmd = "cp cases.xml own-{n}.xml"\njunit = "own-{n}.xml"\n' for n in range(3))
        option = ["--junit", report]
    else:
        tasks = "".join(f"[tasks.t{n}]\ncmd = '''{_BIG_DATA}'''\n" for n in range(3))
        option = ["--html" if report.endswith(".html") else "--results", report]
    (tmp_path / "phalanx.toml").write_text(tasks)
    done = run_phalanx(["run", "-q", *option], cwd=tmp_path, mark=new_mark(), preexec_fn=_limited)
    TALLY.add("EFBIG (RLIMIT_FSIZE)", runs=1)
    _assert_clean_failure(done, 2, "phalanx: error: ", report, "File too large")
    _assert_journal_has_the_run(tmp_path, "run", 3)
    written = tmp_path / report
    if report == "rows.jsonl":  # what was written is whole rows, each with its data
        rows = [json.loads(line) for line in written.read_text().splitlines()]
        assert 1 <= len(rows) < 3 and all(len(row["blob"]) == 400_000 for row in rows)
    elif report != "rows.csv":
        assert not written.exists(), "half a report was left"


def test_phalanx_map_past_a_file_size_limit_says_which_file(tmp_path: Path) -> None:
    # The job prints 200 kB of zero bytes: its output file is under the limit, its results
    # record (each byte escaped in six) over it, already where it is put together.
    done = run_phalanx(["map", "--results", "out.jsonl", "head -c 200000 /dev/zero; : {}", ":::", "1"],
                       cwd=tmp_path, mark=new_mark(), preexec_fn=_limited)
    TALLY.add("EFBIG (RLIMIT_FSIZE)", runs=1)
    _assert_clean_failure(done, 255, "phalanx map: ", "out.jsonl", "File too large")
    _assert_journal_has_the_run(tmp_path, "map", 1)
    assert (tmp_path / "out.jsonl").read_bytes() == b"", "half a record was left"
