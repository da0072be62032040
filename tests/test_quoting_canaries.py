"""Nothing in a value ever runs, wherever its replacement string stands in the command.

Each hostile value tries to create a canary file (PWNED). Every test states its outcome: the
canary never exists and the command receives the value literally; the one exception is a
replacement string inside the script of a nested shell (``sh -c 'echo {}'``), where the
inner shell parses the value again, the canary does fire, and phalanx warns.

The first tests run the real ``phalanx map`` in a fresh directory; the property test at the
end renders templates from a small grammar of shell quoting with `Template` and runs them
with /bin/sh (and bash, whose parser differs), many more cases than processes allow.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings, strategies as st

from mapsupport import run_map
from phalanx.gnu.template import Template

CANARY = "PWNED"
VALUES = [
    "$(touch PWNED)",
    "`touch PWNED`",
    "'; touch PWNED; '",
    '"; touch PWNED; "',
    "\\",
    "a\nb",
    "\n",
    "x\n$(touch PWNED)\n",
    "'\\''$(touch PWNED)",
    '\\"$(touch PWNED)\\"',
    "$HOME ~ * {} {.}",
    "it's",
    "",
]
# Each template gives echo one argument: the value with the text around it.
TEMPLATES = {
    "echo {}": ("", ""),
    "echo '{}'": ("", ""),
    'echo "{}"': ("", ""),
    'echo "x{}y"': ("x", "y"),
    "echo 'a'{}'b'": ("a", "b"),
    "echo '<{}>' | cat": ("<", ">"),
    'echo "$(printf %s "{}")"': ("", ""),
    "echo \"`printf '%s' '{}'`\"": ("", ""),
    'echo "${unset_variable:-{}}"': ("", ""),
    "cat <<EOF\n{}\nEOF": ("", ""),
}


def echoed(argument: str, cwd: Path) -> bytes:
    """What /bin/sh's echo prints for this argument, given literally (dash's echo reads
    backslash escapes: the point is that the value reaches echo unchanged)."""
    done = subprocess.run(["/bin/sh", "-c", 'echo "$1"', "_", argument], cwd=cwd, capture_output=True, check=True)
    return done.stdout


def expected_output(template: str, values: list[str], cwd: Path) -> bytes:
    before, after = TEMPLATES[template]
    if template.startswith("cat <<"):  # no echo: cat prints the line as it is
        return b"".join(f"{value}\n".encode() for value in values)
    # $(...) and `...` drop the trailing newlines of what they capture
    strip = "$(" in template or "`" in template
    return b"".join(echoed(before + (v.rstrip("\n") if strip else v) + after, cwd) for v in values)


@pytest.mark.parametrize("template", TEMPLATES, ids=[t.split("\n")[0] for t in TEMPLATES])
def test_hostile_values_print_literally_and_never_run(template: str, tmp_path: Path) -> None:
    # -0: values holding newlines stay whole (plain ::: splits them, as GNU does).
    result = run_map(["-k", "-j4", "-0", template, ":::", *VALUES], cwd=tmp_path)
    assert not (tmp_path / CANARY).exists()
    assert (result.returncode, result.stderr) == (0, b"")
    assert result.stdout == expected_output(template, VALUES, tmp_path)


def test_values_from_stdin_in_quotes_never_run(tmp_path: Path) -> None:
    lines = [v for v in VALUES if "\n" not in v]
    stdin = "".join(v + "\n" for v in lines).encode()
    result = run_map(["-k", "printf '<%s>\\n' '{}' \"{}\""], cwd=tmp_path, stdin=stdin)
    assert not (tmp_path / CANARY).exists()
    assert result.returncode == 0, result.stderr
    assert result.stdout == "".join(f"<{v}>\n<{v}>\n" for v in lines).encode()


def test_dry_run_prints_commands_that_run_to_the_literal_values(tmp_path: Path) -> None:
    values = [v for v in VALUES if "\n" not in v]
    result = run_map(["-k", "--dry-run", "printf '<%s>' '{}' \"{}\" {}"], cwd=tmp_path,
                     stdin="".join(v + "\n" for v in values).encode())
    assert result.returncode == 0, result.stderr
    assert list(tmp_path.iterdir()) == []
    for value, line in zip(values, result.stdout.decode().splitlines(), strict=True):
        rerun = subprocess.run(["/bin/sh", "-c", line], cwd=tmp_path, capture_output=True, check=True)
        assert rerun.stdout == f"<{value}>".encode() * 3
    assert not (tmp_path / CANARY).exists()


# --- nested shells: the value is the inner shell's script text ----------------------------
NESTED = "sh -c 'echo {}'"
WARNING = (
    b"phalanx map: warning: {} inside the script of sh -c is parsed again by that shell; "
    b"pass it as an argument instead: sh -c 'echo \"$1\"' _ {}\n"
)


def test_a_nested_shell_parses_the_value_again_so_the_canary_fires(tmp_path: Path) -> None:
    # The outer shell hands the value to sh -c literally (no quote of it ends the script's
    # quotes), and then the inner shell runs it: the canary DOES fire. That is why we warn.
    result = run_map(["-k", NESTED, ":::", "$(touch PWNED)", "a b"], cwd=tmp_path)
    assert (tmp_path / CANARY).exists()
    assert result.returncode == 0
    assert result.stdout == b"\na b\n"


def test_a_nested_shell_script_with_a_replacement_string_is_warned_once(tmp_path: Path) -> None:
    result = run_map(["-k", NESTED, ":::", "a", "b", "c"], cwd=tmp_path)
    assert (result.returncode, result.stdout) == (0, b"a\nb\nc\n")
    assert result.stderr == WARNING  # once per run, not once per job


def test_passing_the_value_as_an_argument_to_the_nested_shell_is_safe_and_not_warned(tmp_path: Path) -> None:
    result = run_map(["-k", "sh -c 'echo \"$1\"' _ {}", ":::", *VALUES], cwd=tmp_path)
    assert not (tmp_path / CANARY).exists()
    assert (result.returncode, result.stderr) == (0, b"")
    assert result.stdout == b"".join(echoed(v, tmp_path) for v in VALUES)


def test_a_template_no_quoting_makes_safe_is_a_usage_error_and_runs_nothing(tmp_path: Path) -> None:
    result = run_map(["cat <<'EOF'\n{}\nEOF\ntouch ran", ":::", "EOF\ntouch PWNED"], cwd=tmp_path)
    assert result.returncode == 255
    assert b"cannot be quoted" in result.stderr
    assert list(tmp_path.iterdir()) == []


# --- property: a grammar of quoting contexts, run by real shells --------------------------
# Each piece is shell text around {} and what the word it makes holds for the value v.
Piece = tuple[str, Callable[[str], str]]
PIECES: list[Piece] = [
    ("{}", lambda v: v),
    ("'<{}>'", lambda v: f"<{v}>"),
    ('"<{}>"', lambda v: f"<{v}>"),
    ("'a'{}'b'", lambda v: f"a{v}b"),
    ("\\{}", lambda v: v),  # a backslash before a bare value: a line continuation is put in
    ('"\\{}"', lambda v: f"\\{v}"),  # inside "..." that backslash is a literal one
    ('"${}"', lambda v: f"${v}"),
    ('"${unset_variable:-<{}>}"', lambda v: f"<{v}>"),
    ("${unset_variable:-{}}", lambda v: v),
    ('"${unset_variable:-"<{}>"}"', lambda v: f"<{v}>"),
    ('"$(printf %s {})"', lambda v: v.rstrip("\n")),
    ("\"$(printf %s '<{}>')\"", lambda v: f"<{v}>"),
    ('"`printf %s {}`"', lambda v: v.rstrip("\n")),
    ("\"`printf %s \\\"<{}>\\\"`\"", lambda v: f"<{v}>"),
    ("\"`printf %s \\\"\\`printf %s '<{}>'\\`\\\"`\"", lambda v: f"<{v}>"),  # backticks in backticks
    ('"$(cat <<EOF\n<{}>\nEOF\n)"', lambda v: f"<{v}>"),
    ('"$(cat <<-EOF\n\t<{}>\n\tEOF\n)"', lambda v: f"<{v}>"),
    ("\"$(cat <<EOF\n$(printf %s '<{}>')\nEOF\n)\"", lambda v: f"<{v}>"),
    ('"$(case x in (x) printf %s "<{}>";; esac)"', lambda v: f"<{v}>"),
    ('"$(printf %s {} # {}\n)"', lambda v: v.rstrip("\n")),
    ("\"$(printf %s {}; : '{}')\"", lambda v: v.rstrip("\n")),
    # A backslash newline vanishes before anything else is read: $\<newline>( is $(.
    ('"$\\\n{}"', lambda v: f"${v}"),
    ("\"$\\\n(printf %s '<{}>')\"", lambda v: f"<{v}>"),
    ('"$(cat <\\\n<EOF\n<{}>\nEOF\n)"', lambda v: f"<{v}>"),
]
HOSTILE_PARTS = [
    "$(touch PWNED)", "`touch PWNED`", "'", '"', "\\", "\n", "}", ")", "$", "EOF", "\nEOF\n", "\\\n", "'\\''",
    "${", "#", "*", "\t", ";touch PWNED;", "<<", "ü",
]
_text = st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\x00"), max_size=4)
hostile = st.lists(st.one_of(st.sampled_from(HOSTILE_PARTS), _text), max_size=6).map("".join)
words = st.lists(st.lists(st.sampled_from(PIECES), min_size=1, max_size=3), min_size=1, max_size=3)
SHELLS = ["/bin/sh", *([found] if (found := shutil.which("bash")) else [])]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(words=words, value=hostile)
@example(words=[[PIECES[15]]], value="a\nEOF\ntouch PWNED\n'")  # a line of the value as the delimiter
@example(words=[[PIECES[4], PIECES[6]]], value="$(touch PWNED)")
def test_every_context_gets_the_value_literally(words: list[list[Piece]], value: str, tmp_path: Path) -> None:
    template = "printf '[%s]' " + " ".join("".join(text for text, _ in word) for word in words)
    expected = "".join("[" + "".join(meaning(value) for _, meaning in word) + "]" for word in words)
    command = Template.parse(template).render([value], seq=1)
    for shell in SHELLS:
        done = subprocess.run([shell, "-c", command], cwd=tmp_path, capture_output=True, check=False, timeout=30)
        assert not (tmp_path / CANARY).exists(), (shell, command)
        assert (done.returncode, done.stdout.decode(errors="replace")) == (0, expected), (shell, command, done.stderr)
