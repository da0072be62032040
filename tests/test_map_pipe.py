"""`phalanx map --pipe`: standard input split into blocks as GNU parallel splits it, each
block a job's stdin (more cases, against GNU parallel, in test_map_compat.py)."""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

import pytest

from mapsupport import run_both, run_map
from phalanx.gnu.args import UsageError, parse_map_args, parse_size
from phalanx.gnu.jobs import split_blocks


def _reader(data: bytes, log: list[int]) -> Callable[[int], bytes]:
    at = 0

    def read(size: int) -> bytes:
        nonlocal at
        assert size > 0
        piece = data[at : at + min(size, 7)]  # short reads, as from a pipe
        log.append(len(piece))
        at += len(piece)
        return piece

    return read


# One seed in the default tier; the other three (about 12 s each) in the slow one.
@pytest.mark.parametrize("seed", [0, *(pytest.param(seed, marks=pytest.mark.slow) for seed in range(1, 4))])
def test_blocks_as_gnu_cuts_them(seed: int, tmp_path: Path) -> None:
    rng = random.Random(seed)
    data = b"".join(b"x" * rng.randrange(0, 30) + b"\n" for _ in range(300)) + b"tail"
    for block in ("16", "50", "1k"):
        args = ["-k", "-j3", "--pipe", "--block", block, "cat; echo ---"]
        gnu, ours = run_both(args, tmp_path, args, tmp_path, stdin=data)
        assert (ours.stdout, ours.returncode) == (gnu.stdout, gnu.returncode), block


def test_blocks_are_read_as_they_come() -> None:
    """Standard input is read a block at a time: the first block comes before the rest is read."""
    data = b"".join(b"%d\n" % i for i in range(100000))
    sizes: list[int] = []
    blocks = split_blocks(_reader(data, sizes), 1000)
    first = next(blocks)
    assert len(first) <= 1000 and first.endswith(b"\n")
    assert sum(sizes) <= 1000  # read: the first block and no more
    assert first + b"".join(blocks) == data


def test_records_per_block() -> None:
    data = b"a\nb\nc\nd\ne"
    assert list(split_blocks(_reader(data, []), 3, records=2)) == [b"a\nb\n", b"c\nd\n", b"e"]
    assert list(split_blocks(_reader(b"", []), 3)) == []


def test_round_trip_and_private_block_files(tmp_path: Path) -> None:
    data = bytes(random.Random(1).randrange(256) for _ in range(300000))
    ours = run_map(["-k", "-j4", "--pipe", "--block", "10k", "cat"], cwd=tmp_path, stdin=data)
    assert (ours.stdout, ours.returncode) == (data, 0)
    mode = run_map(["--pipe", "stat -L -c %a /dev/stdin"], cwd=tmp_path, stdin=b"x\n")
    assert (mode.stdout, mode.returncode) == (b"600\n", 0)


def test_run_directory_is_removed(tmp_path: Path) -> None:
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    ours = run_map(["--pipe", "-N1", "cat"], cwd=tmp_path, stdin=b"a\nb\n", env={"TMPDIR": str(scratch)})
    assert ours.returncode == 0
    assert list(scratch.iterdir()) == []


def test_joblog_command_and_resume(tmp_path: Path) -> None:
    args = ["-k", "--joblog", "log", "--pipe", "-N2", "cat; test {#} != 2"]
    first = run_map(args, cwd=tmp_path, stdin=b"1\n2\n3\n4\n5\n")
    assert (first.stdout, first.returncode) == (b"1\n2\n3\n4\n5\n", 1)
    rows = [line.split("\t") for line in (tmp_path / "log").read_text().splitlines()[1:]]
    assert sorted((row[0], row[4], row[6], row[8]) for row in rows) == [
        ("1", "4", "0", "cat; test 1 != 2"),
        ("2", "4", "1", "cat; test 2 != 2"),
        ("3", "2", "0", "cat; test 3 != 2"),
    ]
    again = run_map(["--resume-failed", *args], cwd=tmp_path, stdin=b"1\n2\n3\n4\n5\n")
    assert (again.stdout, again.returncode) == (b"3\n4\n", 1)


def test_usage(tmp_path: Path) -> None:
    gnu, ours = run_both(["--pipe"], tmp_path, ["--pipe"], tmp_path, stdin=b"a\n")
    assert (ours.returncode, gnu.returncode) == (255, 255)
    with pytest.raises(UsageError):
        parse_map_args(["--pipe", "echo", ":::", "a"])
    with pytest.raises(UsageError):
        parse_map_args(["--pipe", "--block", "1Q", "cat"])
    assert [parse_size(s) for s in ("20", "1k", "1K", "1M", "1m", "1Ki", "1.5M", "1G")] == [
        20, 1000, 1024, 2**20, 10**6, 1024, 3 * 2**19, 2**30,
    ]
