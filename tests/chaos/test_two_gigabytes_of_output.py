"""A task that prints 2 GiB to stdout: phalanx's peak RSS stays under 150 MB, and the output
file holds all of it, byte for byte (no cap is configured: the default keeps everything).

``phalanx run --log-dir``: the task's output file in the log directory. ``phalanx map``: its
standard output, a file here (the job's output goes through phalanx, grouped). The output is
a 16-byte line over and over, so a sample of aligned offsets checks the content without
reading 2 GiB back; the files are deleted at the end (kept test folders must not hold them).
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from chaossupport import TALLY, free_bytes, new_mark, run_measured

SIZE = 2 << 30
LINE = b"0123456789abcde\n"
PEAK_LIMIT = 150 * 2**20
NEEDED = 5 * 2**30  # free space: map holds the job's output file and its copy at once
TIMEOUT = 300.0

PRINT = f"yes {LINE.decode().strip()} | head -c {SIZE}"


def _assert_all_there(path: Path) -> None:
    assert path.stat().st_size == SIZE, f"{path.name}: {path.stat().st_size} bytes of {SIZE}"
    rng = random.Random(path.name)
    offsets = [0, SIZE - len(LINE), *(rng.randrange(SIZE // len(LINE)) * len(LINE) for _ in range(512))]
    with path.open("rb") as source:
        for offset in offsets:
            source.seek(offset)
            assert source.read(len(LINE)) == LINE, f"{path.name}: wrong bytes at {offset}"


@pytest.mark.slow
@pytest.mark.parametrize("command", ["run", "map"])
def test_two_gigabytes_printed_by_a_task_reach_the_output_file_in_bounded_memory(command: str, tmp_path: Path) -> None:
    if free_bytes(tmp_path) < NEEDED:
        pytest.skip(f"needs {NEEDED >> 30} GiB free where the test writes; {free_bytes(tmp_path) >> 30} GiB are")
    stdout = tmp_path / "stdout"
    if command == "run":
        (tmp_path / "phalanx.toml").write_text(f"[tasks.flood]\ncmd = '''{PRINT}'''\n")
        args = ["run", "-q", "--log-dir", "logs"]
    else:
        args = ["map", f"{PRINT}; : {{}}", ":::", "1"]
    try:
        measured = run_measured(args, cwd=tmp_path, mark=new_mark(), stdout=stdout, timeout=TIMEOUT)
        figures = f"peak RSS {measured.peak_rss / 2**20:.1f} MB, {measured.seconds:.1f}s"
        TALLY.add(f"2 GiB to stdout ({command})", runs=1, note=figures)
        print(f"phalanx {command}: 2 GiB of output, {figures}")
        assert measured.returncode == 0
        assert measured.peak_rss < PEAK_LIMIT, f"peak RSS {measured.peak_rss / 2**20:.0f} MB"
        if command == "run":
            (output,) = [path for path in (tmp_path / "logs").rglob("*.out") if path.stat().st_size > 0]
            _assert_all_there(output)
        else:
            _assert_all_there(stdout)
    finally:
        for path in [stdout, *(tmp_path / "logs").rglob("*.out")]:
            path.unlink(missing_ok=True)
