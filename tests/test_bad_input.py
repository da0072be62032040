"""Bad input to `phalanx run`: exit 2, one line naming the file and line, no traceback, nothing run.

Every task file here has a task that would create ``ran`` if anything ran at all.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

RAN = '[tasks.canary]\ncmd = "touch ran"\n'

# (name, file text (after the canary task, which takes lines 1-2), expected line, words in the message)
CASES: list[tuple[str, str, int | None, str]] = [
    ("cycle", '[tasks.a]\ncmd = "true"\ndeps = ["b"]\n[tasks.b]\ncmd = "true"\ndeps = ["a"]\n', 3, "a -> b -> a"),
    ("self-dependency", '[tasks.a]\ncmd = "true"\ndeps = ["a"]\n', 3, "a -> a"),
    ("unknown dependency", '[tasks.build]\ncmd = "true"\n[tasks.t]\ncmd = "true"\ndeps = ["biuld"]\n', 7, "did you mean 'build'"),
    ("unknown task key", '[tasks.a]\ncmd = "true"\ndep = ["canary"]\n', 5, "did you mean 'deps'"),
    ("unknown top-level table", '[task.a]\ncmd = "true"\n', 3, "task"),
    ("bad duration", '[tasks.a]\ncmd = "true"\ntimeout = "5 parsecs"\n', 5, "timeout"),
    ("negative timeout", '[tasks.a]\ncmd = "true"\ntimeout = -1\n', 5, "timeout"),
    ("boolean timeout", '[tasks.a]\ncmd = "true"\ntimeout = true\n', 5, "timeout"),
    ("negative retries", '[tasks.a]\ncmd = "true"\nretries = -2\n', 5, "retries"),
    ("bad backoff", '[tasks.a]\ncmd = "true"\nretries = { count = 2, backoff = "fibonacci" }\n', 5, "backoff"),
    ("unknown resource", '[resources]\ndb = 1\n[tasks.a]\ncmd = "true"\nresources = { dbb = 1 }\n', 7, "did you mean 'db'"),
    ("oversize resource", '[resources]\ndb = 1\n[tasks.a]\ncmd = "true"\nresources = { db = 2 }\n', 7, "capacity"),
    ("oversize slots", '[tasks.a]\ncmd = "true"\nresources = { slots = 64 }\n', 5, "slots"),
    ("malformed TOML", '[tasks.a]\ncmd = "true\n', 4, ""),
    ("glob matching nothing", '[tasks.t]\ncmd = "pytest {item}"\nfor_each = { glob = "nothing_*.py" }\n', 5, "matched no files"),
    ("empty command", '[tasks.a]\ncmd = ""\n', 4, "empty"),
    ("command of the wrong type", '[tasks.a]\ncmd = 42\n', 4, "cmd"),
    ("deps as a string", '[tasks.a]\ncmd = "true"\ndeps = "canary"\n', 5, "deps"),
    ("bad priority", '[tasks.a]\ncmd = "true"\npriority = "urgent"\n', 5, "priority"),
    ("env value not a string", '[tasks.a]\ncmd = "true"\nenv = { N = 1 }\n', 5, "env"),
    ("duplicate expanded id", '[tasks.t]\ncmd = "echo {item}"\nfor_each = ["x", "x"]\n', 5, "duplicate"),
]


def run_bad(tmp_path: Path, text: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "bad.toml").write_text(RAN + textwrap.dedent(text))
    return subprocess.run(
        [sys.executable, "-m", "phalanx", "run", "bad.toml", "-j", "2"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
    )


@pytest.mark.parametrize(("name", "text", "line", "words"), CASES, ids=[case[0] for case in CASES])
def test_bad_task_file(tmp_path: Path, name: str, text: str, line: int | None, words: str) -> None:
    result = run_bad(tmp_path, text)
    assert result.returncode == 2, (name, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert lines[0].startswith(f"phalanx: error: bad.toml:{line}: "), lines[0]
    assert words in lines[0]
    assert not (tmp_path / "ran").exists()
    assert result.stdout == ""


def test_missing_file(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "phalanx", "run", "nope.toml"], capture_output=True, text=True, cwd=tmp_path, timeout=60
    )
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "nope.toml" in result.stderr and "Traceback" not in result.stderr


def test_not_utf8(tmp_path: Path) -> None:
    (tmp_path / "bad.toml").write_bytes(b'[tasks.a]\ncmd = "\xff\xfe"\n')
    result = subprocess.run(
        [sys.executable, "-m", "phalanx", "run", "bad.toml"], capture_output=True, text=True, cwd=tmp_path, timeout=60
    )
    assert result.returncode == 2
    assert result.stderr.startswith("phalanx: error: bad.toml") and "Traceback" not in result.stderr


def test_bad_jobs_option(tmp_path: Path) -> None:
    (tmp_path / "phalanx.toml").write_text(RAN)
    result = subprocess.run(
        [sys.executable, "-m", "phalanx", "run", "-j", "0"], capture_output=True, text=True, cwd=tmp_path, timeout=60
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "ran").exists()
