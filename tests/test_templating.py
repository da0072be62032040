"""Replacement strings and quoting: compared line for line with real GNU parallel's --dry-run,
and a property test that a quoted value reaches the command byte for byte and never runs.

A replacement string inside quotes is where phalanx differs from GNU on purpose: it is quoted
for its quotes (`phalanx.shellquote`; its own tests are in test_quoting_canaries.py)."""

from __future__ import annotations

import itertools
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from hypothesis import example, given, settings, strategies as st

from phalanx.errors import ConfigError
from phalanx.gnu.template import Template, shell_quote

PATHS = [
    "x/y/z.tar.gz", "./a b/c", "a.b/c", "/abs/p.q", "noext", ".hidden", "dir/", "", "it's", "'q'", "''",
    "ü/é.ß", "日本/語.txt", "a.", "./.b.c", "/", ".", "..", "a/.b", "a/b.", "a//b.c", "//", "a/b//",
    "$(touch X)", "`touch X`", "a;b", "*", "-n", "--x=1", "a\\b", "%s", "{}", "~", "#c", "a\tb", " ",
    "\"dq\"", "!x", "a=b", "@", "^", ",", ":", "a" * 500,
]
ALL_STRINGS = "{} {.} {/} {//} {/.} {#} {%} {1} {1.} {1/} {1//} {1/.} {-1} {-1/.}"


def gnu_dry_run(template: str, *sources: list[str], null: bool = False) -> str:
    """GNU parallel's rendered commands, one job per line (a newline in a quoted value
    continues its line, so whole outputs are compared, not split lines)."""
    command = ["parallel", "--will-cite", "--dry-run", "-j1", "-k", *(["-0"] if null else [])]
    command += [template] if template else []  # "" means no command at all
    for values in sources:
        command += [":::", *values]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout


def ours(template: str, *sources: list[str]) -> str:
    """The same jobs rendered by Template (one slot, as -j1); the product order is GNU's."""
    parsed = Template.parse(template, append_args=True)
    rows = itertools.product(*sources)
    return "".join(parsed.render(row, seq=seq, slot=1) + "\n" for seq, row in enumerate(rows, start=1))


@pytest.fixture(scope="module", autouse=True)
def _gnu_parallel() -> None:
    # Not a skip: the compatibility tests are the point, so a missing tool is a failure.
    assert shutil.which("parallel"), "GNU parallel must be installed (apt-get install parallel)"
    version = subprocess.run(["parallel", "--will-cite", "--version"], capture_output=True, text=True, check=False)
    assert version.stdout.startswith("GNU parallel"), "`parallel` is not GNU parallel (moreutils?)"


CASES = [
    # (template, sources): each source is a ::: group; every job's line is compared.
    (f"echo {ALL_STRINGS}", [PATHS]),
    ("echo", [PATHS]),  # no replacement string: " {}" is appended
    ("echo {..} {...} {/..} {+/} {+.} {##} {name} {a,b} {1,2}", [["x/y/z.tar.gz"]]),  # text in GNU
    ("echo {0%} {0#} {0 .} {0/.}", [["a/b.c", "d"]]),  # GNU reads a position 0 as no position
    ("x{}y x{.}y x{1}y", [["a b", "c"], ["c.d", ""]]),
    ("{} | {.} | {/} | {//} | {/.}", [["a.x", "./p q/r.s"], ["b.y", "/t.u"]]),  # several args
    ("{1} {2} {-1} {-2} {-3} {-4} {-5} {3} {10} {0} {00} {-0} {01} {-01} {0/} {2//} {1/.} {2.}",
     [["a/b.x"], ["c/d.y"]]),
    ("{1 } {2  .} {1/.} {2/}", [["a/b.x"], ["c d/e.f"]]),  # blanks after the number
    ("{{}} { } {}{} {#}{%} {1}{2} {{1}} {%}{#}", [["a", "b c"], ["d"]]),
    ("sh -c 'echo' {} && echo {} $HOME ${x}", [["it's", "$y"]]),  # quoted placeholders: see below
    # Bare inside $(...), ${x:-...} and backticks: still GNU's quoting, byte for byte.
    ("echo $(basename {}) \"$(dirname {})\" ${x:-{}} $(echo $(printf %s {/}))", [PATHS]),
    ("echo `basename {}` \"`dirname {.}`\"", [[p for p in PATHS if "\\" not in p and "`" not in p]]),
    ("printf %s {=", [["a"]]),  # an unclosed {= is text
    ("echo {#} {%}", [[str(n) for n in range(12)]]),
    ("echo {3}-{2}-{1}", [["1", "2"], ["x", "y"], ["p", "q"]]),
    # A replacement string in the first word makes the args the command: GNU quotes nothing.
    ("{}", [["echo a b", "ls 'x y'"]]),
    ("{1} {2} {.}", [["echo", "printf"], ["a b.c"]]),
    ("./my_{/.}.sh --in {}", [["x/a b.c"]]),
    ("X={} env", [["a b"]]),  # GNU stops looking at "=": a variable, so quoted
    ("\t{}", [["a b"]]),
]


@pytest.mark.parametrize(("template", "sources"), CASES, ids=[c[0][:40] for c in CASES])
def test_renders_like_gnu_parallel(template: str, sources: list[list[str]]) -> None:
    assert ours(template, *sources) == gnu_dry_run(template, *sources)


NEWLINE_VALUES = ["a\nb", "x/y\n", "\n", "p.q\nr.s", "d\ne/f.g"]


def test_values_with_newlines_render_like_gnu_parallel_with_null() -> None:
    # GNU splits ::: values at newlines unless -0 is given; -0 keeps them whole, as we do.
    template = "echo {} {.} {//} {1} {-1.}"
    assert ours(template, NEWLINE_VALUES) == gnu_dry_run(template, NEWLINE_VALUES, null=True)


def test_basename_of_a_value_with_a_newline_is_the_real_basename() -> None:
    # Deliberate difference: GNU's s:.*/:: stops at the newline and gives "b\nc/d.e".
    render = Template.parse("{/} {/.} {1/}").render
    assert render(["a/b\nc/d.e"], seq=1) == "d.e d d.e"


# --- a quoted replacement string: quoted for its quotes, the one difference from GNU ---------
def test_quoted_replacement_strings_differ_from_gnu_parallel_and_bare_ones_do_not() -> None:
    template = "sh -c 'echo {}' && echo \"{}\" {} $HOME ${x}"
    # GNU puts its single-quoted text inside the quotes too: the quotes of the value and of
    # the template meet, and $y is expanded (inside "...", the quotes are printed).
    assert gnu_dry_run(template, ["it's", "$y"]) == (
        "sh -c 'echo 'it'\"'\"'s'' && echo \"'it'\"'\"'s'\" 'it'\"'\"'s' $HOME ${x}\n"
        "sh -c 'echo '$y'' && echo \"'$y'\" '$y' $HOME ${x}\n"
    )
    assert ours(template, ["it's", "$y"]) == (
        "sh -c 'echo it'\\''s' && echo \"it's\" 'it'\"'\"'s' $HOME ${x}\n"
        "sh -c 'echo $y' && echo \"\\$y\" '$y' $HOME ${x}\n"
    )


@pytest.mark.parametrize(
    ("template", "value", "rendered"),
    [
        ("echo \"<{}>\"", "a b", 'echo "<a b>"'),
        ("echo '{}'", "it's", "echo 'it'\\''s'"),
        ("echo '{}'", "$(touch X)", "echo '$(touch X)'"),
        ("echo '{}'", "plain", "echo 'plain'"),  # what GNU prints too
        ("echo \"{}\"", "$x `y` \"z\" \\ ' \n", 'echo "\\$x \\`y\\` \\"z\\" \\\\ \' \n"'),
        ("echo 'a'{}'b'", "c d", "echo 'a''c d''b'"),  # bare between two quoted strings: GNU's
        ("echo \"${x:-{}}\"", "}'", "echo \"${x:-\\}\"'\"}\""),
        ("echo $'<{}>'", "a'b", "echo $'<''a'\"'\"'b'$'>'"),
        ("echo $(( {} + 1 ))", "2*3", "echo $(( 2*3 + 1 ))"),
        ("echo $(( {} + 1 ))", "1)); touch X; : $((1", "echo $(( 1\\)\\)\\;\\ touch\\ X\\;\\ \\:\\ \\$\\(\\(1 + 1 ))"),
        ("cat <<EOF\n{}\nEOF", "a\nEOF\n$(b)", "cat <<EOF\n${-+}a\n${-+}EOF\n${-+}\\$(b)\nEOF"),
        ("echo x # {}", "a\nb", "echo x # 'a\n#b'"),
        ("echo `echo {}`", "a\\b", "echo `echo 'a\\\\b'`"),
        ("echo \"`echo {}`\"", "it's", "echo \"`echo 'it'\"'\"'s'`\""),
        ("echo \\{}", "a b", "echo \\\n'a b'"),  # the backslash: a line continuation
        ("echo ${}", "a b", "echo $\"\"'a b'"),  # $ cannot start an expansion with the value
        ("echo $\\\n{}", "a b", "echo $\\\n\"\"'a b'"),  # nor across a line continuation
        ("echo \"$\\\n(echo {})\"", "a b", "echo \"$\\\n(echo 'a b')\""),  # that is $(
    ],
)
def test_a_quoted_replacement_string_is_quoted_for_its_context(template: str, value: str, rendered: str) -> None:
    assert Template.parse(template).render([value], seq=1) == rendered


def test_several_args_in_quotes_are_joined_by_a_space_inside_them() -> None:
    render = Template.parse("echo \"{}\" '{}'").render
    assert render(["a b", "it's"], seq=1) == "echo \"a b it's\" 'a b it'\\''s'"


@pytest.mark.parametrize(
    "template",
    ["cat <<'EOF'\n{}\nEOF", "cat <<\"E\"\nx{1}\nE", "echo $'it\\'s' {}", "echo $(( '{}' ))", "cat <<{}"],
)
def test_a_replacement_string_no_quoting_makes_safe_is_refused(template: str) -> None:
    with pytest.raises(ConfigError, match="cannot be"):
        Template.parse(template)


@pytest.mark.parametrize(
    ("template", "warned"),
    [
        ("sh -c 'echo {}'", "{}"),
        ("bash -ec \"echo {1} && ls\"", "{1}"),
        ("nice /bin/dash -o errexit -c 'x=$(echo {})'", "{}"),
        ("zsh -c -- {}", "{}"),
        ("echo a; sh -c \"$(printf %s {})\"", "{}"),
        ("env X=1 sh -xc 'echo \"$1\"' _ {} {2}", None),  # an argument: not parsed again
        ("sh script.sh {}", None),
        ("echo 'sh -c {}'", None),
        ("{} -c 'echo {}'", None),  # a raw command: nothing is quoted at all
    ],
)
def test_nested_shell_warning(template: str, warned: str | None) -> None:
    warning = Template.parse(template, append_args=True).nested_shell_warning
    if warned is None:
        assert warning is None
    else:
        assert warning is not None
        shell = re.search(r"\b(sh|bash|dash|zsh)\b", template)
        assert shell is not None
        assert warning == (
            f"warning: {warned} inside the script of {shell.group(1)} -c is parsed again by that shell; "
            f"pass it as an argument instead: {shell.group(1)} -c 'echo \"$1\"' _ {warned}"
        )


def test_empty_command_runs_the_args_unquoted_like_gnu_parallel() -> None:
    sources = [["echo a", "printf '%s' x"], ["b c"]]
    assert ours("", *sources) == gnu_dry_run("", *sources)
    assert Template.parse("  ", append_args=True).render(["ls -l"], seq=1) == "ls -l"


@pytest.mark.parametrize(
    ("value", "quoted"),
    [
        ("", "''"), ("abc", "abc"), ("-_.+aZ09/", "-_.+aZ09/"), ("a b", "'a b'"),
        ("it's a; b", "'it'\"'\"'s a; b'"), ("'", "\"'\""), ("''", "\"'\"''\"'\""), ("'a'", "\"'\"'a'\"'\""),
        ("é", "'é'"), ("a\nb", "'a\nb'"), ("$x", "'$x'"),
    ],
)
def test_shell_quote(value: str, quoted: str) -> None:
    assert shell_quote(value) == quoted


def test_shell_quote_matches_gnu_parallel() -> None:
    output = gnu_dry_run(": {}", PATHS)
    assert output == "".join(": " + shell_quote(path) + "\n" for path in PATHS)


def test_a_replacement_string_in_the_command_word_makes_a_raw_command() -> None:
    assert Template.parse("{1} -v {2}", append_args=True).raw_command
    assert Template.parse("", append_args=True).raw_command
    assert not Template.parse("{1} -v {2}").raw_command  # only the command is run
    assert not Template.parse("echo {}", append_args=True).raw_command
    assert Template.parse("{} x", append_args=True).render(["ls -l"], seq=1, quote=True) == "ls -l x"


def test_parse_reports_what_it_found() -> None:
    template = Template.parse("echo {%} {#}")
    assert (template.uses_slot, template.uses_seq, template.has_replacements) == (True, True, True)
    plain = Template.parse("echo {x} {..}")
    assert (plain.uses_slot, plain.uses_seq, plain.has_replacements) == (False, False, False)
    assert plain.render(["a"], seq=1) == "echo {x} {..}"  # without append_args nothing is added
    appended = Template.parse("echo", append_args=True)
    assert (appended.text, appended.has_replacements) == ("echo {}", True)


def test_render_unquoted_for_tags_and_env_values() -> None:
    render = Template.parse("{1}|{/.}|{#}|{%}|{}").render
    assert render(["a b/c.d", "it's"], seq=3, slot=2, quote=False) == "a b/c.d|c it's|3|2|a b/c.d it's"


def test_slot_is_required_when_used() -> None:
    with pytest.raises(ValueError, match="slot"):
        Template.parse("echo {%}").render(["a"], seq=1)
    assert Template.parse("echo {#}").render(["a"], seq=7) == "echo 7"


def test_a_job_without_args_renders_one_empty_arg_like_gnu() -> None:
    assert Template.parse("echo {} {1} {2}").render([], seq=1) == "echo '' '' "


def test_column_names_from_the_header() -> None:
    names = ["name", "size", "path"]
    template = Template.parse("echo {name} {size.} {path/} {path//} {path/.} ${HOME} {2}", names=names)
    assert template.render(["a b", "1.5", "x/y.z"], seq=1) == "echo 'a b' 1 y.z x y ${HOME} 1.5"
    # an empty header field cannot be named; the first of two equal names wins, as in GNU
    assert Template.parse("{a}", names=["", "a", "a"]).render(["x", "y", "z"], seq=1) == "y"


def test_unknown_column_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"^unknown column \{nmae\} in 'echo \{nmae\}' \(did you mean \{name\}\?\); "
                       r"columns: name, size$"):
        Template.parse("echo {nmae}", names=["name", "size"])
    with pytest.raises(ConfigError, match=r"unknown column \{x/\}"):
        Template.parse("echo {x/}", names=["a"])
    # Without names an unknown {word} is text, as in GNU.
    assert Template.parse("echo {nmae}").render(["v"], seq=1) == "echo {nmae}"


@pytest.mark.parametrize("text", ["echo {= $_ =}", "{=1 s/a/b/ =}", "x{==}y", "{=\n=}"])
def test_perl_expressions_are_refused(text: str) -> None:
    with pytest.raises(ConfigError, match=r"^perl expressions \{= =\} are not supported"):
        Template.parse(text)


# --- the value reaches the command byte for byte and never runs ------------------------
DANGEROUS = ["$(touch X)", "`touch X`", "';touch X;'", "\";touch X;\"", "\\'$(touch X)", "'\"'\"'", "\n", "$", "*"]
values = st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\x00"))
nasty = st.lists(st.one_of(values, st.sampled_from(DANGEROUS)), max_size=6).map("".join)


def shell_output(command: str, cwd: str) -> bytes:
    done = subprocess.run(["sh", "-c", command], cwd=cwd, capture_output=True, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout


@settings(max_examples=300, deadline=None)
@given(nasty)
@example("")
@example("-n")
@example("$(touch X)")
@example("`touch X`")
@example("it's\n'\"$HOME\" ~ *;")
@example("é" * 10_000)
def test_one_value_reaches_the_command_byte_for_byte(value: str) -> None:
    command = Template.parse("printf '%s\\0' {}").render([value], seq=1)
    with tempfile.TemporaryDirectory() as cwd:
        assert shell_output(command, cwd) == value.encode() + b"\0"
        assert not (Path(cwd) / "X").exists()


@settings(max_examples=300, deadline=None)
@given(nasty, nasty)
def test_several_args_and_positional_forms_reach_the_command(first: str, second: str) -> None:
    command = Template.parse("printf '%s\\0' {} {1} {-1} {2} {-2}").render([first, second], seq=1)
    with tempfile.TemporaryDirectory() as cwd:
        expected = [first, second, first, second, second, first]
        assert shell_output(command, cwd) == b"".join(v.encode() + b"\0" for v in expected)
        assert not (Path(cwd) / "X").exists()


def test_undecodable_bytes_survive_to_the_command() -> None:
    value = b"\xff\xfe a\x80".decode("utf-8", "surrogateescape")  # how mapinput decodes input
    command = Template.parse("printf '%s\\0' {}").render([value], seq=1)
    with tempfile.TemporaryDirectory() as cwd:
        assert shell_output(command, cwd) == b"\xff\xfe a\x80\0"
