"""`phalanx pytest` orders units by the duration history once it knows them.

The first run knows nothing: units start in collection order. It records each unit's
duration in the journal (``.phalanx/`` in the rootdir); the second run starts the slowest
file first. Read from the journal's attempts (structured), not from the output.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from phalanx.history import DurationHistory
from phalanx.journal import Journal


def phalanx_pytest(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("PYTEST_", "PHALANX_"))}
    env["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"  # installed plugins would only slow each run down
    return subprocess.run(
        [sys.executable, "-m", "phalanx", "pytest", *args], capture_output=True, text=True, cwd=cwd, env=env,
        timeout=60,
    )


def start_order(journal: Journal, run_id: str) -> list[str]:
    tasks = journal.show(run_id)
    return [task.task_id for task in sorted(tasks, key=lambda task: task.started_at or 0.0)]


def test_the_second_run_starts_the_slowest_file_first(tmp_path: Path) -> None:
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    tests = tmp_path / "tests"
    tests.mkdir()
    for name, seconds in (("a", 0.0), ("b", 0.0), ("c", 0.0), ("slow", 0.5)):
        (tests / f"test_{name}.py").write_text(f"import time\n\ndef test_it():\n    time.sleep({seconds})\n")
    for _ in range(2):
        result = phalanx_pytest("-j", "1", "-q", "-p", "no:cacheprovider", cwd=tmp_path)
        assert result.returncode == 0, result.stdout + result.stderr
    with Journal.open(tmp_path) as journal:
        history = DurationHistory(journal).estimates()
        assert set(history) == {f"pytest:tests/test_{name}.py" for name in ("a", "b", "c", "slow")}
        assert history["pytest:tests/test_slow.py"] > max(
            seconds for key, seconds in history.items() if not key.endswith("slow.py")
        )
        first, second = (run.id for run in reversed(journal.runs()))
        assert all(run.kind == "pytest" for run in journal.runs())
        assert start_order(journal, first) == [f"tests/test_{name}.py" for name in ("a", "b", "c", "slow")]
        assert start_order(journal, second)[0] == "tests/test_slow.py"


def test_runs_and_history_read_the_journal_where_phalanx_pytest_ran(tmp_path: Path) -> None:
    # No task file here: `phalanx runs` and `history` read the .phalanx/ of this directory.
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    (tmp_path / "test_one.py").write_text("def test_it():\n    pass\n")
    assert phalanx_pytest("-q", "-p", "no:cacheprovider", cwd=tmp_path).returncode == 0
    env = {key: value for key, value in os.environ.items() if not key.startswith(("PYTEST_", "PHALANX_"))}
    runs = subprocess.run([sys.executable, "-m", "phalanx", "runs"], capture_output=True, text=True, cwd=tmp_path,
                          env=env, timeout=60)
    assert runs.returncode == 0, runs.stderr
    assert len(runs.stdout.splitlines()) == 2 and "1 succeeded" in runs.stdout
    history = subprocess.run([sys.executable, "-m", "phalanx", "history"], capture_output=True, text=True,
                             cwd=tmp_path, env=env, timeout=60)
    assert history.returncode == 0, history.stderr
    assert history.stdout.startswith("pytest:test_one.py ")


def test_before_any_history_the_file_with_most_tests_starts_first(tmp_path: Path) -> None:
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    for name, count in (("a", 1), ("b", 2), ("many", 5)):
        (tmp_path / f"test_{name}.py").write_text("".join(f"def test_{n}():\n    pass\n" for n in range(count)))
    result = phalanx_pytest("-j", "1", "-q", "-p", "no:cacheprovider", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    with Journal.open(tmp_path) as journal:
        (run,) = journal.runs()
        assert start_order(journal, run.id) == ["test_many.py", "test_b.py", "test_a.py"]
