"""Symlinks planted in a log directory are never followed by the command backend.

The names of a command's files in a ``log_dir`` are predictable (`output_paths`, and the
``.result.json`` beside them): a link planted at one of them must be replaced by a new file,
never written through, and a result file that is a link is not read.
"""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path
from typing import Any

import pytest

import phalanx
from phalanx import RetryPolicy, Task
from phalanx.outputfiles import output_paths

VICTIM_TEXT = "precious: must not change\n"
_BOUND = 20.0  # seconds: the longest a run may take here


def paths(log_dir: Path, task_id: str, number: int = 1) -> tuple[Path, Path, Path]:
    """Where attempt ``number`` of ``task_id`` writes stdout, stderr and its result file."""
    out, err = output_paths(str(log_dir), task_id, number)
    return Path(out), Path(err), Path(out[: -len(".out")] + ".result.json")


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    path = tmp_path / "victim.txt"
    path.write_text(VICTIM_TEXT)
    return path


def test_links_at_output_and_result_names_are_replaced_not_followed(tmp_path: Path, victim: Path) -> None:
    log_dir = tmp_path / "logs"
    log_dir.mkdir()
    links = paths(log_dir, "job") + paths(log_dir, "job", 2)
    for link in links:
        link.symlink_to(victim)

    report = phalanx.run(
        [Task("job", 'echo out; echo err >&2; echo \'{"n": 1}\' > "$PHALANX_RESULT_FILE"')], log_dir=log_dir
    )

    assert victim.read_text() == VICTIM_TEXT
    result = report["job"]
    assert result.ok
    assert result.stdout_tail == "out\n"
    assert result.stderr_tail == "err\n"
    assert result.data == {"n": 1}
    out, err, result_file = paths(log_dir, "job")
    for path, text in ((out, "out\n"), (err, "err\n")):
        assert not path.is_symlink()
        assert path.read_text() == text
        assert stat.S_IMODE(path.lstat().st_mode) == 0o600
    assert not result_file.is_symlink()
    assert result.stdout_path == str(out)


def test_retried_attempts_replace_links_too(tmp_path: Path, victim: Path) -> None:
    log_dir = tmp_path / "logs"
    log_dir.mkdir()
    for number in (1, 2):
        for link in paths(log_dir, "flaky", number):
            link.symlink_to(victim)
    marker = tmp_path / "marker"
    command = f"if [ -e {marker} ]; then echo second; else touch {marker}; echo first; exit 3; fi"

    report = phalanx.run([Task("flaky", command, retry=RetryPolicy(count=1, initial=0))], log_dir=log_dir)

    assert victim.read_text() == VICTIM_TEXT
    assert report["flaky"].ok
    assert report["flaky"].stdout_tail == "second\n"
    for number, text in ((1, "first\n"), (2, "second\n")):
        out = paths(log_dir, "flaky", number)[0]
        assert not out.is_symlink() and out.read_text() == text


def test_dangling_links_do_not_create_their_targets(tmp_path: Path) -> None:
    log_dir = tmp_path / "logs"
    log_dir.mkdir()
    targets = [tmp_path / f"created-by-phalanx-{i}" for i in range(3)]
    for link, target in zip(paths(log_dir, "job"), targets, strict=True):
        link.symlink_to(target)

    report = phalanx.run([Task("job", "echo hello")], log_dir=log_dir)

    assert report["job"].stdout_tail == "hello\n"
    assert not any(target.exists() or target.is_symlink() for target in targets)


def test_a_stale_result_link_is_not_read(tmp_path: Path) -> None:
    log_dir = tmp_path / "logs"
    log_dir.mkdir()
    secret = tmp_path / "secret.json"
    secret.write_text('{"secret": "leaked"}')
    paths(log_dir, "job")[2].symlink_to(secret)

    report = phalanx.run([Task("job", "true")], log_dir=log_dir)

    assert report["job"].ok
    assert report["job"].data == {}
    assert secret.read_text() == '{"secret": "leaked"}'


def test_a_result_file_the_task_made_a_link_is_refused(tmp_path: Path) -> None:
    log_dir = tmp_path / "logs"
    secret = tmp_path / "secret.json"
    secret.write_text('{"secret": "leaked"}')

    report = phalanx.run([Task("job", f'ln -s {secret} "$PHALANX_RESULT_FILE"; echo done')], log_dir=log_dir)

    assert report["job"].ok  # the result file never changes whether the attempt succeeded
    assert report["job"].stdout_tail == "done\n"
    assert report["job"].data == {}


def test_a_result_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    log_dir = tmp_path / "logs"
    reports: list[Any] = []
    # Opening a FIFO for reading would block the run's loop for good (no timeout can end it):
    # run it in a thread, so that a regression fails here instead of hanging the suite.
    runner = threading.Thread(
        target=lambda: reports.append(phalanx.run([Task("job", 'mkfifo "$PHALANX_RESULT_FILE"')], log_dir=log_dir)),
        daemon=True,
    )
    runner.start()
    runner.join(_BOUND)
    assert reports, "phalanx.run blocked on a FIFO at the result file's name"
    report = reports[0]

    assert report["job"].ok
    assert set(report["job"].data) == {"result_file_error"}
    assert "not a regular file" in report["job"].data["result_file_error"]


def test_a_log_dir_phalanx_creates_is_private(tmp_path: Path) -> None:
    log_dir = tmp_path / "new" / "logs"
    old_umask = os.umask(0o022)
    try:
        report = phalanx.run([Task("job", "echo hi")], log_dir=log_dir)
    finally:
        os.umask(old_umask)
    assert report["job"].ok
    assert stat.S_IMODE(log_dir.stat().st_mode) == 0o700
