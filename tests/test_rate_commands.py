"""Rate limits and results files for commands: `[rate_limits]` in task files, `phalanx map
--rate`, `{"retry_after": N}` in the result file shared by a key, `phalanx run --results`."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import phalanx


def phalanx_cli(*args: str, cwd: Path | None = None, input: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "phalanx", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=60, input=input)


def write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text))
    return path


# When a task started, as it sees it: `date` starts in about a millisecond, so the stamps
# measure phalanx's pacing, not the start-up jitter of an interpreter (tens of ms on a busy
# machine, which the first task of a run pays most).
STAMP = "date +%s.%N"


def test_task_file_rate_limits_pace_the_tasks_that_name_them(tmp_path: Path) -> None:
    write(tmp_path / "phalanx.toml", f"""
        [rate_limits]
        api = "10/s"

        [tasks.call]
        cmd = '{STAMP} >> stamps'
        for_each = ["1", "2", "3", "4", "5", "6", "7", "8"]
        limiter = "api"
    """)
    done = phalanx_cli("run", "-j", "8", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    stamps = sorted(float(line) for line in (tmp_path / "stamps").read_text().split())
    assert len(stamps) == 8
    # Eight starts at 10/s, never a burst: the last starts at least 0.7 s after the first.
    assert stamps[-1] - stamps[0] >= 0.7 - 0.05


def test_task_file_rate_limit_errors_are_located(tmp_path: Path) -> None:
    write(tmp_path / "phalanx.toml", """
        [rate_limits]
        api = "10 per second"

        [tasks.a]
        cmd = "true"
    """)
    done = phalanx_cli("run", cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.startswith("phalanx: error: phalanx.toml:3: [rate_limits] api: expected a rate such as")
    write(tmp_path / "phalanx.toml", """
        [rate_limits]
        tpm = { rate = "100/min", weighted = true }

        [tasks.a]
        cmd = "true"
        limiter = "tpm"
        tokens = 500
    """)
    done = phalanx_cli("run", cwd=tmp_path)
    assert done.returncode == 2
    assert "task 'a': costs 500, more than rate limit 'tpm' allows in one period (100/min)" in done.stderr
    assert "Traceback" not in done.stderr


def test_retry_after_from_the_result_file_pauses_the_key(tmp_path: Path) -> None:
    # Job "a1" asks, on its first attempt, to be retried after 1 s; every job on key "a"
    # waits that second, jobs on key "b" do not.
    script = write(tmp_path / "job.sh", f"""\
        #!/bin/sh
        if [ "$1" = a1 ] && [ ! -e seen ]; then
            touch seen; echo '{{"retry_after": 1}}' > "$PHALANX_RESULT_FILE"; exit 1
        fi
        echo "$1 $({STAMP})"
    """)
    script.chmod(0o755)
    (tmp_path / "seen").unlink(missing_ok=True)
    done = phalanx_cli("map", "-j", "1", "--retries", "2", "--rate", "100/s", "--rate-key", "{1}",
                       "--colsep", " ", f"{script} {{1}}{{2}}", ":::", "a 1", "a 2", "b 1", "b 2", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    stamps = dict(line.split() for line in done.stdout.splitlines())
    assert set(stamps) == {"a1", "a2", "b1", "b2"}
    # b1 and b2 ran during a's pause; a2 (queued after a1) waited for it to end.
    assert float(stamps["a2"]) - float(stamps["b1"]) >= 0.8


def test_exit_75_is_throttled_and_retried(tmp_path: Path) -> None:
    script = write(tmp_path / "job.sh", """\
        #!/bin/sh
        if [ ! -e seen ]; then touch seen; exit 75; fi
        echo ok
    """)
    script.chmod(0o755)
    done = phalanx_cli("map", "--retries", "2", str(script), ":::", "x", cwd=tmp_path)
    assert (done.returncode, done.stdout) == (0, "ok\n")


def test_map_rate_options_are_checked_before_anything_runs(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    for args, message in (
        (["--rate", "fast"], "--rate: expected a rate such as '50/s'"),
        (["--rate-tokens", "100/min"], "--rate-tokens needs --rate-cost"),
        (["--rate-tokens", "100/min", "--rate-cost", "{}"], "job 2 costs 500, more than --rate-tokens 100/min"),
        (["--rate-tokens", "100/min", "--rate-cost", "x{}"], "job 1 costs 'x5', not a positive number"),
    ):
        done = phalanx_cli("map", *args, f"touch {marker}; echo", ":::", "5", "500")
        assert done.returncode == 255, (args, done.stderr)
        assert message in done.stderr, (args, done.stderr)
        assert not marker.exists()


def test_map_rate_tokens_charge_each_job_its_cost(tmp_path: Path) -> None:
    # 600 tokens a minute = 10 a second; jobs costing 5 each: one every 0.5 s.
    done = phalanx_cli("map", "-j", "4", "--rate-tokens", "600/min", "--rate-cost", "{}",
                       f"{STAMP} # {{}}", ":::", "5", "5",
                       "5", "5", cwd=tmp_path)  # the run journal goes in .phalanx/ of the directory map runs in
    assert done.returncode == 0, done.stderr
    stamps = sorted(float(line) for line in done.stdout.split())
    assert len(stamps) == 4 and stamps[-1] - stamps[0] >= 1.5 - 0.05


def test_run_results_csv_has_a_row_per_task_with_its_fields(tmp_path: Path) -> None:
    write(tmp_path / "phalanx.toml", """
        [tasks.ok]
        cmd = 'echo "{\\"tokens\\": 12, \\"model\\": \\"m\\"}" > "$PHALANX_RESULT_FILE"'

        [tasks.bad]
        cmd = "exit 3"

        [tasks.after]
        cmd = "true"
        deps = ["bad"]
    """)
    done = phalanx_cli("run", "--results", "out.csv", cwd=tmp_path)
    assert done.returncode == 1
    rows = {row["task"]: row for row in csv.DictReader((tmp_path / "out.csv").open(newline=""))}
    assert set(rows) == {"ok", "bad"}  # a task that never ran (skipped) has nothing to report
    assert rows["ok"]["status"] == "succeeded" and rows["ok"]["attempts"] == "1"
    assert rows["bad"]["status"] == "failed" and "exit" in rows["bad"]["error"]
    # Whichever ended first fixed the header; fields not in it are in the extra column.
    fields = {**rows["ok"], **json.loads(rows["ok"]["extra"] or "{}")}
    assert str(fields["tokens"]) == "12" and fields["model"] == "m"


def test_run_results_jsonl_and_an_unwritable_file(tmp_path: Path) -> None:
    write(tmp_path / "phalanx.toml", """
        [tasks.a]
        cmd = "true"
    """)
    done = phalanx_cli("run", "--results", "out.jsonl", cwd=tmp_path)
    assert done.returncode == 0
    (row,) = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert row["task"] == "a" and row["status"] == "succeeded"
    done = phalanx_cli("run", "--results", "no/such/dir/out.csv", cwd=tmp_path)
    assert done.returncode == 2 and done.stderr.startswith("phalanx: error: cannot write no/such/dir/out.csv:")
    done = phalanx_cli("run", "--results", "out.txt", cwd=tmp_path)
    assert done.returncode == 2 and "use a .csv or .jsonl name" in done.stderr


def test_python_run_results_and_rate_limits(tmp_path: Path) -> None:
    def answer(n: int) -> dict[str, int]:
        return {"n": n, "square": n * n}

    tasks = [phalanx.Task(f"t{n}", answer, args=(n,), limiter="api") for n in range(5)]
    report = phalanx.run(tasks, rate_limits={"api": "1000/s"}, results=tmp_path / "out.csv")
    assert report.ok
    rows = list(csv.DictReader((tmp_path / "out.csv").open(newline="")))
    assert sorted(int(row["square"]) for row in rows) == [0, 1, 4, 9, 16]
    assert [*rows[0]][:6] == ["task", "status", "attempts", "duration", "error", "n"]


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_map_and_executor_results_rows_per_item(tmp_path: Path, suffix: str) -> None:
    out = tmp_path / f"map{suffix}"
    items = [{"prompt": f"p{i}", "model": "m"} for i in range(30)]
    values = list(phalanx.map(_describe, items, max_workers=2, results=out))
    assert len(values) == 30
    rows = _rows(out)
    assert sorted(row["prompt"] for row in rows) == sorted(f"p{i}" for i in range(30))
    assert all(row["status"] == "succeeded" and str(row["length"]) == str(len(str(row["prompt"]))) for row in rows)
    out = tmp_path / f"executor{suffix}"
    with phalanx.Executor(max_workers=2, backend="threads", results=out) as executor:
        futures = [executor.submit(_describe, {"prompt": "xy"}) for _ in range(5)]
        assert all(future.result()["length"] == 2 for future in futures)
    assert len(_rows(out)) == 5


def _describe(item: dict[str, str]) -> dict[str, object]:
    return {"length": len(item["prompt"])}


def _rows(path: Path) -> list[dict[str, object]]:
    if path.suffix == ".csv":
        return list(csv.DictReader(path.open(newline="")))
    return [json.loads(line) for line in path.read_text().splitlines()]
