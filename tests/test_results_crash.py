"""Results files of whole runs survive what users do to runs: a SIGKILL in the middle, and
many threads and worker processes producing rows at once."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

import phalanx

HERE = Path(__file__).resolve().parent
WAIT = 10.0


def test_sigkill_of_a_run_leaves_whole_rows_one_per_finished_task(tmp_path: Path) -> None:
    csv_path, jsonl_path = tmp_path / "out.csv", tmp_path / "out.jsonl"
    child = subprocess.Popen(
        [sys.executable, str(HERE / "results_crash_child.py"), str(csv_path), str(jsonl_path), "2000"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    assert child.stdout is not None and child.stderr is not None
    heard: list[str] = []
    reader = threading.Thread(target=lambda: heard.extend(_lines_until(child.stdout, 700)), daemon=True)
    reader.start()
    reader.join(60)
    assert len(heard) == 700, "the run did not get to its 700th row"
    child.kill()  # SIGKILL, in the middle of the run
    child.wait(WAIT)
    # The writers' helper processes share the child's stderr: its end means they have written
    # everything they were handed, and exited.
    errors = _read_with_bound(child.stderr)
    assert child.returncode == -signal.SIGKILL
    assert "Traceback" not in errors

    with csv_path.open(newline="", encoding="utf-8") as source:
        reader_csv = csv.DictReader(source)
        header = reader_csv.fieldnames
        csv_rows = list(reader_csv)
    assert header is not None and header[:5] == ["task", "status", "attempts", "duration", "error"]
    assert all(None not in row and len(row) == len(header) for row in csv_rows), "a row with the wrong shape"
    jsonl_rows = [json.loads(line) for line in jsonl_path.read_text(encoding="utf-8").splitlines()]
    for rows in (csv_rows, jsonl_rows):
        ids = [row["task"] for row in rows]
        assert len(ids) == len(set(ids)), "a task has two rows"
        assert set(heard) <= set(ids), "a task that was reported finished has no row"
        assert all(row["status"] == "succeeded" for row in rows)
        for row in rows:
            number = int(row["task"][1:])
            fields = {**row, **json.loads(row.get("extra") or "{}")} if rows is csv_rows else row
            assert int(fields["square"]) == number * number
    # The kill may land between a task's two rows: one file then holds exactly one more.
    assert len({row["task"] for row in csv_rows} ^ {row["task"] for row in jsonl_rows}) <= 1
    assert len(csv_rows) < 2000 and len(jsonl_rows) < 2000, "the kill came after the run: it tested nothing"


def _lines_until(stream: object, count: int) -> list[str]:
    lines: list[str] = []
    for line in stream:  # type: ignore[attr-defined]
        lines.append(line.strip())
        if len(lines) == count:
            break
    return lines


def _read_with_bound(stream: object) -> str:
    text: list[str] = []
    reader = threading.Thread(target=lambda: text.append(stream.read()), daemon=True)  # type: ignore[attr-defined]
    reader.start()
    reader.join(WAIT)
    assert not reader.is_alive(), "a results writer outlived the killed run"
    return text[0]


def _square(item: dict[str, int]) -> dict[str, int]:
    return {"square": item["n"] * item["n"], "pid": os.getpid()}


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_twenty_threads_and_four_worker_processes_give_ten_thousand_whole_rows(tmp_path: Path, suffix: str) -> None:
    out = tmp_path / f"rows{suffix}"
    errors: list[BaseException] = []
    with phalanx.Executor(max_workers=4, backend="processes", results=out) as executor:

        def produce(thread: int) -> None:
            try:
                items = [{"thread": thread, "n": thread * 500 + i, "pad": "x" * 200} for i in range(500)]
                assert len(list(executor.map(_square, items))) == 500
            except BaseException as error:
                errors.append(error)

        threads = [threading.Thread(target=produce, args=(n,)) for n in range(20)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
            assert not thread.is_alive()
    assert not errors, errors
    if suffix == ".csv":
        with out.open(newline="") as source:
            rows: list[dict[str, object]] = list(csv.DictReader(source))
    else:
        rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 10_000
    numbers = sorted(int(str(row["n"])) for row in rows)
    assert numbers == list(range(10_000))
    assert all(int(str(row["square"])) == int(str(row["n"])) ** 2 and row["pad"] == "x" * 200 for row in rows)
    assert len({row["pid"] for row in rows}) > 1  # the rows came from several worker processes
