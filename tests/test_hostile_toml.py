"""Hostile task files: absurd nesting ends in one located error line and exit 2, never a traceback.

tomllib parses arrays and inline tables recursively, and a table header thousands of keys deep
builds dicts thousands deep that a repr() in an error message would recurse through. The loader
turns both into a `ConfigError`, caps nesting at 64 levels, and indexes lines in linear memory.
"""

from __future__ import annotations

import subprocess
import sys
import tracemalloc
from pathlib import Path

import pytest

from phalanx.config import load_task_file
from phalanx.errors import ConfigError

RAN = '[tasks.canary]\ncmd = "touch ran"\n'  # lines 1-2: creates `ran` if anything runs at all
TASK_A = '[tasks.a]\ncmd = "true"\n'  # lines 3-4 after RAN
LIMIT = 64  # how deep tables and arrays may nest below the top of a task file


def chain(depth: int, key: str = "x") -> str:
    """A dotted key ``depth`` keys long: x.x.x..."""
    return ".".join([key] * depth)


# (name, file text after RAN, expected line, words in the message)
HOSTILE: list[tuple[str, str, int, str]] = [
    ("arrays 100,000 deep", "x = " + "[" * 100_000 + "]" * 100_000 + "\n", 3, "nested too deep to parse"),
    ("inline tables 100,000 deep", "x = " + "{ a = " * 100_000 + "1" + " }" * 100_000 + "\n", 3,
     "nested too deep to parse"),
    ("env table 5,000 deep", TASK_A + f"[tasks.a.env.{chain(5_000)}]\n", 5,
     f"task 'a': env nests tables or arrays more than {LIMIT} levels deep"),
    ("env dotted key 5,000 deep", TASK_A + f'env.{chain(5_000)} = "1"\n', 5,
     f"task 'a': env nests tables or arrays more than {LIMIT} levels deep"),
    ("table header 20,000 deep", f"[{chain(20_000, 'a')}]\n", 3,
     f"top-level key 'a' nests tables or arrays more than {LIMIT} levels deep"),
]


def phalanx_run(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    # The timeout only stops a hang; how fast the loader is, is checked below without a clock.
    return subprocess.run(
        [sys.executable, "-m", "phalanx", "run", *args], capture_output=True, text=True, cwd=cwd, timeout=300
    )


def assert_one_error_line(result: subprocess.CompletedProcess[str], prefix: str, words: str) -> None:
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr[-2000:]
    assert lines[0].startswith(prefix), lines[0][:300]
    assert words in lines[0], lines[0][:300]
    assert result.stdout == ""


@pytest.mark.parametrize(("name", "text", "line", "words"), HOSTILE, ids=[case[0] for case in HOSTILE])
def test_hostile_file_is_one_located_error(tmp_path: Path, name: str, text: str, line: int, words: str) -> None:
    (tmp_path / "hostile.toml").write_text(RAN + text, encoding="utf-8")
    result = phalanx_run(tmp_path, "hostile.toml")
    assert_one_error_line(result, f"phalanx: error: hostile.toml:{line}: ", words)
    assert not (tmp_path / "ran").exists()


def test_hostile_pyproject_found_without_a_file_argument(tmp_path: Path) -> None:
    # find_task_file parses pyproject.toml first to see if it has [tool.phalanx]: that must not crash either.
    deep = "x = " + "[" * 100_000 + "]" * 100_000
    text = f'[project]\nname = "x"\n[tool.phalanx.tasks.a]\ncmd = "touch ran"\n{deep}\n'
    (tmp_path / "pyproject.toml").write_text(text, encoding="utf-8")
    result = phalanx_run(tmp_path)
    assert_one_error_line(result, "phalanx: error: pyproject.toml:5: ", "nested too deep to parse")
    assert not (tmp_path / "ran").exists()


def env_table(tmp_path: Path, depth: int) -> Path:
    """A task whose env nests ``depth`` tables deep: env.x.x... (the document, tasks and a are 3 more)."""
    path = tmp_path / "phalanx.toml"
    path.write_text(TASK_A + f"[tasks.a.env.{chain(depth - 3)}]\n", encoding="utf-8")
    return path


def test_nesting_up_to_the_limit_gets_the_ordinary_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_task_file(env_table(tmp_path, LIMIT))
    assert (caught.value.line, caught.value.message[:42]) == (3, "task 'a': env x must be a string, got {'x'")


def test_nesting_past_the_limit_is_rejected_with_the_task_and_line(tmp_path: Path) -> None:
    path = env_table(tmp_path, LIMIT + 1)
    with pytest.raises(ConfigError) as caught:
        load_task_file(path)
    assert str(caught.value) == f"{path}:3: task 'a': env nests tables or arrays more than {LIMIT} levels deep"


def test_arrays_too_deep_for_tomllib_name_the_line_of_their_key(tmp_path: Path) -> None:
    path = tmp_path / "phalanx.toml"
    brackets = "[" * 5_000 + "]" * 5_000
    # Brackets inside strings and comments must not throw the line off.
    path.write_text(TASK_A + 'tags = ["[[[", """\n[[[\n"""] # [[[\n' + f"x = {brackets}\n", encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_task_file(path)
    assert (caught.value.file, caught.value.line) == (str(path), 6)


def peak_memory_of_loading(path: Path) -> int:
    tracemalloc.start()
    try:
        with pytest.raises(ConfigError):
            load_task_file(path)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_a_deep_header_costs_linear_memory(tmp_path: Path) -> None:
    # Deterministic where a clock is not: indexing every prefix of a key path of depth N as its
    # own tuple costs N²/2 slots (15 s and gigabytes for a 20,000-deep header).
    def header(depth: int) -> Path:
        path = tmp_path / f"deep{depth}.toml"
        path.write_text(TASK_A + f"[tasks.a.{chain(depth)}]\n", encoding="utf-8")
        return path

    peak_memory_of_loading(header(10))  # first use: anything cached lazily is not counted below
    small, large = peak_memory_of_loading(header(1_000)), peak_memory_of_loading(header(4_000))
    assert large / small < 6, (small, large)  # 4 times deeper: linear is 4 times the memory, quadratic 16
