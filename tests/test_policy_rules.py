"""Retries are the scheduler's, for `phalanx.map` items and `phalanx map` jobs alike.

A batch whose items did not all succeed is a failed attempt whose retry runs only those
items, after the policy's backoff on the scheduler's timer; `phalanx map --retries N`
keeps GNU parallel's meaning (N attempts in all, each at once).
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import phalanx
from phalanx import RetryPolicy, Status


class _FailsOnce:
    """Fails the first call for each odd item, recording when each call started."""

    def __init__(self) -> None:
        self.calls: dict[int, list[float]] = {}
        self._lock = threading.Lock()

    def __call__(self, item: int) -> int:
        with self._lock:
            starts = self.calls.setdefault(item, [])
            starts.append(time.monotonic())
            first = len(starts) == 1
        if item % 2 and first:
            raise ValueError(f"first try of {item}")
        return item * 10


def test_phalanx_map_retries_failed_items_after_the_backoff() -> None:
    fn = _FailsOnce()
    retry = RetryPolicy(count=2, backoff="constant", initial=0.3)
    results = list(phalanx.map(fn, range(8), backend="threads", max_workers=2, batch_size=4,
                               retries=retry, as_results=True))
    assert [r.value for r in results] == [i * 10 for i in range(8)]
    assert all(r.status is Status.SUCCEEDED for r in results)
    for item, result in enumerate(results):
        assert result.attempts == (2 if item % 2 else 1) and result.flaky == bool(item % 2)
        if item % 2:
            first, second = fn.calls[item]
            assert second - first >= 0.3  # the retry waited out the backoff
        else:
            assert len(fn.calls[item]) == 1  # a retry runs only the items that failed


def test_items_that_fail_every_attempt_end_failed_with_their_attempts_counted() -> None:
    def always(item: int) -> int:
        raise KeyError(item)

    results = list(phalanx.map(always, range(3), backend="threads", max_workers=1, retries=2, as_results=True))
    assert [r.status for r in results] == [Status.FAILED] * 3
    assert [r.attempts for r in results] == [3, 3, 3]
    with pytest.raises(KeyError):
        list(phalanx.map(always, range(3), backend="threads", max_workers=1, retries=1))


def test_map_retries_keeps_gnu_meaning_attempts_in_all_each_at_once(tmp_path: Path) -> None:
    # Each job fails until it has run twice: --retries 2 (two attempts in all) is enough,
    # --retries 1 is not.
    job = 'n=$(cat c{} 2>/dev/null || echo 0); n=$((n+1)); echo $n > c{}; [ $n -ge 2 ] && echo done {}'
    command = [sys.executable, "-m", "phalanx", "map", "-k", "-j2", "--joblog", "log"]
    ok = subprocess.run([*command, "--retries", "2", job, ":::", "a", "b"], cwd=tmp_path, capture_output=True,
                        text=True, timeout=60)
    assert ok.returncode == 0 and ok.stdout == "done a\ndone b\n"
    assert len((tmp_path / "log").read_text().splitlines()) == 3  # header + one line per job
    for name in ("ca", "cb"):
        (tmp_path / name).unlink()
    failed = subprocess.run([*command, "--retries", "1", job, ":::", "a", "b"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=60)
    assert failed.returncode == 2  # GNU: the number of failed jobs


@pytest.mark.parametrize(
    ("halt", "jobs"),
    [
        ("now,fail=1", ["true", "exit 3"]),  # the last job fails: its status is the exit status
        ("soon,fail=1", ["true", "exit 5"]),
        ("now,success=1", ["exit 2", "exit 2", "true"]),  # the last job succeeds: exit 0
        ("now,done=3", ["true", "exit 4", "true"]),
    ],
)
def test_halt_decided_by_the_last_job_gives_gnu_parallels_exit_status(
    tmp_path: Path, halt: str, jobs: list[str]
) -> None:
    command = ["-j1", "--halt", halt, ":::", *jobs]
    gnu = subprocess.run(["parallel", "--will-cite", *command], cwd=tmp_path, capture_output=True, timeout=60)
    ours = subprocess.run([sys.executable, "-m", "phalanx", "map", *command], cwd=tmp_path, capture_output=True,
                          timeout=60)
    assert ours.returncode == gnu.returncode, (gnu.stderr, ours.stderr)
