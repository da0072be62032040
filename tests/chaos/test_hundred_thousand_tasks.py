"""100,000 tasks in one run: it completes, none is lost, and phalanx's memory per task is printed.

``phalanx map /usr/bin/true`` (exec'd without a shell: the cheapest task there is) over the
lines 1..100000 on standard input, with a joblog: every job is in it once, succeeded, and
the journal has the run with 100,000 succeeded tasks. The peak RSS (the kernel's
``ru_maxrss``) is printed per task, whole and above that of a one-job run (what the tasks
add). Today ``phalanx map`` holds every job's `TaskResult` to the end (its exit status
counts them from the `RunReport`): about 2.2 kB per job, measured here; the bound, twice
that, catches a leak beyond it, not the growth itself.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from chaossupport import TALLY, new_mark, run_measured

from phalanx.journal import Journal

TASKS = 100_000
ADDED_PER_TASK_LIMIT = 4096  # bytes
TIMEOUT = 420.0


@pytest.mark.slow
def test_a_hundred_thousand_tasks_complete_and_memory_per_task_is_printed(tmp_path: Path) -> None:
    true = shutil.which("true", path="/usr/bin:/bin")
    assert true is not None
    (tmp_path / "one").write_text("1\n")
    (tmp_path / "values").write_text("".join(f"{n}\n" for n in range(1, TASKS + 1)))
    one = run_measured(["map", "--no-journal", "-j", "4", true], cwd=tmp_path, mark=new_mark(),
                       stdin=tmp_path / "one", stdout=tmp_path / "one.out", timeout=60.0)
    assert one.returncode == 0
    measured = run_measured(["map", "-j", "4", "--joblog", "log", true], cwd=tmp_path, mark=new_mark(),
                            stdin=tmp_path / "values", stdout=tmp_path / "stdout", timeout=TIMEOUT)
    per_task = measured.peak_rss / TASKS
    added = max(0, measured.peak_rss - one.peak_rss) / TASKS
    figures = (f"peak RSS {measured.peak_rss / 2**20:.1f} MB ({one.peak_rss / 2**20:.1f} MB for one task): "
               f"{per_task:.0f} bytes per task, {added:.0f} added per task; {measured.seconds:.0f}s, "
               f"{measured.seconds / TASKS * 1e3:.2f} ms per task")
    print(f"phalanx map, {TASKS:,} tasks: {figures}")

    rows = (tmp_path / "log").read_text().splitlines()[1:]
    seqs = {int(row.split("\t", 1)[0]) for row in rows}
    with Journal.open(tmp_path) as journal:
        (run,) = journal.runs()
    lost = TASKS - len(seqs)
    TALLY.add(f"{TASKS:,} tasks (map)", runs=1, rows_lost=lost, note=figures)
    assert measured.returncode == 0
    assert len(rows) == TASKS and seqs == set(range(1, TASKS + 1)), f"{lost} jobs are not in the joblog"
    assert all(row.split("\t")[6:8] == ["0", "0"] for row in rows)
    assert run.status == "succeeded" and dict(run.counts) == {"succeeded": TASKS}, run
    assert (tmp_path / "stdout").read_bytes() == b""
    assert added < ADDED_PER_TASK_LIMIT, figures
