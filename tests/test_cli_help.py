"""What a newcomer reads first: `phalanx --help` (listing `map`), each command's help with
examples, colour (`--color`, `NO_COLOR`, `FORCE_COLOR`) and shell completion.

Help texts are snapshots (tests/snapshots/help_*.txt), printed 80 columns wide; refresh
them with ``PHALANX_UPDATE_SNAPSHOTS=1 pytest tests/test_cli_help.py`` and review the diff.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from phalanx.sinks.console import ConsoleReporter, paint_plan, wants_colour
from test_snapshots import assert_snapshot

ROOT = Path(__file__).resolve().parent.parent
CI_TOML = "examples/ci.toml"
ESC = "\x1b["


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without colour settings, 80 columns wide, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "FORCE_COLOR", "_PHALANX_COMPLETE")}
    env.update(COLUMNS="80", TERM="xterm", **extra)
    return env


def phalanx(*args: str, cwd: Path = ROOT, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "phalanx", *args], capture_output=True, text=True, cwd=cwd, env=clean_env(**env),
        timeout=60,
    )


def ok(*args: str, cwd: Path = ROOT, **env: str) -> str:
    result = phalanx(*args, cwd=cwd, **env)
    assert result.returncode == 0, result.stderr
    return result.stdout


# --- help ----------------------------------------------------------------------------------


def test_main_help_lists_map_with_a_description() -> None:
    text = ok("--help")
    assert_snapshot("help_main.txt", text)
    commands = text.split("Commands:")[1]
    for name in ("graph", "history", "list", "map", "plan", "run", "runs", "show"):
        assert f"\n  {name} " in commands, name
    assert "map      Run a command once per input, as GNU parallel does." in commands
    assert '_PHALANX_COMPLETE=bash_source phalanx' in text


@pytest.mark.parametrize("command", ["run", "plan", "graph", "list"])
def test_command_help_has_examples(command: str) -> None:
    text = ok(command, "--help")
    assert_snapshot(f"help_{command}.txt", text)
    examples = text.split("Examples:\n")[1]
    assert f"phalanx {command}" in examples
    assert "--color [auto|always|never]" in text


def test_the_run_help_examples_work() -> None:
    # `phalanx run examples/ci.toml --select tag:lint --no-deps --output always`: every task has tag lint
    # from [defaults] (with its own tags too).
    text = ok("run", CI_TOML, "--select", "tag:lint", "--no-deps", "--dry-run", "-j", "8")
    assert text.startswith("Would run 15 tasks on 8 workers")
    assert ok("plan", CI_TOML, "-j", "8").startswith("Plan: 15 tasks")
    assert ok("graph", CI_TOML, "--format", "mermaid").startswith("graph TD")
    assert "security" in ok("list", CI_TOML, "--select", "tag:security")


def test_map_still_goes_to_its_own_front_end_without_click() -> None:
    code = textwrap.dedent(
        """
        import sys
        from phalanx._entry import main
        try:
            main(["map", "--help"])
        except SystemExit as exit:
            print("exit", exit.code, "click" in sys.modules, "rich" in sys.modules, file=sys.stderr)
        """
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=clean_env())
    assert result.stdout.startswith("Usage: phalanx map ")
    assert result.stderr.strip() == "exit 0 False False"


def test_the_map_command_in_click_hands_over_to_the_map_front_end(tmp_path: Path) -> None:
    # Reached only by callers of phalanx.cli.main itself: `phalanx map` is routed before click.
    # In tmp_path: map records its run in .phalanx/ of the directory it runs in.
    code = "from phalanx.cli import main; main(['map', '-k', 'echo', ':::', 'a', 'b'], prog_name='phalanx')"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=clean_env(),
                            cwd=tmp_path)
    assert (result.returncode, result.stdout) == (0, "a\nb\n"), result.stderr


# --- colour --------------------------------------------------------------------------------


@pytest.fixture
def small(tmp_path: Path) -> Path:
    (tmp_path / "phalanx.toml").write_text('[tasks.a]\ncmd = "echo hi"\n[tasks.b]\ncmd = "true"\ndeps = ["a"]\n')
    return tmp_path


@pytest.mark.parametrize(
    ("args", "env", "coloured"),
    [
        ((), {}, False),  # not a terminal
        (("--color", "always"), {}, True),
        (("--color", "never"), {}, False),
        ((), {"FORCE_COLOR": "1"}, True),  # even though not a terminal
        ((), {"NO_COLOR": "1"}, False),
        ((), {"NO_COLOR": "1", "FORCE_COLOR": "1"}, False),  # NO_COLOR wins over FORCE_COLOR
        ((), {"NO_COLOR": ""}, False),  # empty: as if unset
        (("--color", "always"), {"NO_COLOR": "1"}, True),  # --color wins over the environment
        (("--color", "never"), {"FORCE_COLOR": "1"}, False),
        (("--color", "auto"), {"FORCE_COLOR": "1"}, True),
    ],
)
@pytest.mark.parametrize("command", [("run",), ("plan",), ("graph",), ("list",)])
def test_colour_choice(small: Path, command: tuple[str, ...], args: tuple[str, ...], env: dict[str, str],
                       coloured: bool) -> None:
    result = phalanx(*command, *args, cwd=small, **env)
    assert result.returncode == 0, result.stderr
    assert (ESC in result.stdout) is coloured, result.stdout


def test_run_colours_its_lines_and_summary(small: Path) -> None:
    text = ok("run", "--color", "always", "--output", "always", cwd=small)
    assert f"{ESC}32m    PASS " in text
    assert f"{ESC}32m{ESC}1mSummary: 2 tasks in " in text
    assert "\nhi\n" in text  # the task's own output is copied as it is


def test_json_run_colours_nothing_on_stdout(small: Path) -> None:
    result = phalanx("run", "--json", "--color", "always", cwd=small)
    assert ESC not in result.stdout and ESC in result.stderr  # people's text goes to stderr


def test_machine_formats_are_never_coloured() -> None:
    for fmt in ("mermaid", "dot"):
        assert ESC not in ok("graph", CI_TOML, "--format", fmt, "--color", "always")
    assert ESC not in ok("list", CI_TOML, "--json", "--color", "always")


def test_coloured_plan_snapshot() -> None:
    text = ok("plan", CI_TOML, "-j", "8", "--color", "always")
    assert_snapshot("ci_plan_color.txt", text)
    plain = ok("plan", CI_TOML, "-j", "8", "--color", "never")
    assert plain == (ROOT / "tests" / "snapshots" / "ci_plan.txt").read_text()
    assert paint_plan(plain.rstrip("\n")) + "\n" == text


class _Stream(io.StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self._tty = tty

    def isatty(self) -> bool:
        return self._tty


@pytest.mark.parametrize(
    ("choice", "tty", "env", "expected"),
    [
        (None, True, {"TERM": "xterm"}, True),
        ("auto", False, {}, False),
        (None, True, {"TERM": "dumb"}, False),
        (None, True, {"TERM": "xterm", "NO_COLOR": "0"}, False),  # any non-empty value
        (None, False, {"FORCE_COLOR": "0"}, True),  # likewise
        ("never", True, {"TERM": "xterm", "FORCE_COLOR": "1"}, False),
        ("always", False, {"NO_COLOR": "1"}, True),
    ],
)
def test_wants_colour(choice: str | None, tty: bool, env: dict[str, str], expected: bool) -> None:
    assert wants_colour(choice, _Stream(tty), env) is expected


def test_console_reporter_honours_no_color_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NO_COLOR", "1")
    monkeypatch.setenv("TERM", "xterm")
    reporter = ConsoleReporter(_Stream(True))
    assert reporter._style("    FAIL [ 1.000s] x") == "    FAIL [ 1.000s] x"
    monkeypatch.delenv("NO_COLOR")
    assert ESC in ConsoleReporter(_Stream(True))._style("    FAIL [ 1.000s] x")


# --- shell completion ----------------------------------------------------------------------


def complete(shell: str, words: str, cwd: Path) -> list[str]:
    """What ``phalanx`` offers for the last of ``words`` (as the shell splits them)."""
    split = words.split(" ")
    result = subprocess.run(
        [sys.executable, "-m", "phalanx"],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=60,
        env=clean_env(_PHALANX_COMPLETE=f"{shell}_complete", COMP_WORDS=words, COMP_CWORD=str(len(split) - 1)),
    )
    assert result.returncode == 0 and not result.stderr, result.stderr
    lines = [line for line in result.stdout.split("\n") if line] if shell == "bash" else result.stdout.splitlines()
    if shell == "zsh":  # type, value (":" escaped for zsh's _describe), help: three lines per item
        return [lines[i + 1].replace("\\:", ":") for i in range(0, len(lines), 3)]
    return [line.split(",", 1)[1] for line in lines]


@pytest.fixture
def tagged(tmp_path: Path) -> Path:
    (tmp_path / ".git").mkdir()
    (tmp_path / "sub").mkdir()
    (tmp_path / "phalanx.toml").write_text(textwrap.dedent(
        """
        [defaults]
        tags = ["lint"]
        [tasks.mypy]
        cmd = "true"
        tags = ["python"]
        [tasks.make]
        cmd = "true"
        [tasks.test]
        cmd = "echo {item}"
        for_each = ["a", "b"]
        """
    ))
    return tmp_path


def test_select_completes_task_ids_groups_and_tags(tagged: Path) -> None:
    assert complete("zsh", "phalanx run --select m", tagged) == ["mypy", "make"]
    assert complete("zsh", "phalanx run --select t", tagged) == ["test", "test[a]", "test[b]", "tag:lint", "tag:python"]
    assert complete("zsh", "phalanx list --select tag:", tagged / "sub") == ["tag:lint", "tag:python"]  # found above


def test_select_completion_reads_the_file_given(tagged: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "sub"
    assert complete("zsh", f"phalanx run {ROOT / CI_TOML} --select hel", elsewhere) == ["helm-lint"]
    words = f"phalanx run --select mypy {ROOT / CI_TOML} --select tag:sec"  # FILE after an option
    assert complete("zsh", words, elsewhere) == ["tag:security"]


def test_bash_completion_copes_with_the_colon_in_tag(tagged: Path) -> None:
    # Bash splits "tag:py" into "tag" ":" "py" and replaces only what follows the colon.
    assert complete("bash", "phalanx run --select tag : py", tagged) == ["python"]
    assert complete("bash", "phalanx run --select tag :", tagged) == ["lint", "python"]
    assert complete("bash", "phalanx run --select ta", tagged) == ["tag:lint", "tag:python"]


def test_completion_offers_commands_and_never_fails(tmp_path: Path) -> None:
    (tmp_path / ".git").mkdir()
    commands = ["graph", "history", "list", "map", "plan", "pytest", "report", "run", "runs", "show"]
    assert complete("bash", "phalanx ", tmp_path) == commands
    assert complete("bash", "phalanx run --select x", tmp_path) == []  # no task file: nothing, no traceback
    (tmp_path / "phalanx.toml").write_text("[tasks.a\n")
    assert complete("bash", "phalanx run --select x", tmp_path) == []


def test_map_help_has_examples_and_exit_statuses() -> None:
    done = subprocess.run([sys.executable, "-m", "phalanx", "map", "--help"], capture_output=True, text=True,
                          timeout=60, check=True)
    assert "Examples:" in done.stdout and "Exit status:" in done.stdout
    assert_snapshot("help_map.txt", done.stdout)
