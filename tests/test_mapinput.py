"""Input sources: the jobs read_inputs makes, rendered and compared with real GNU parallel's
--dry-run (:::, ::::, :::+, stdin, -0, --colsep, --csv, --header), plus its errors."""

from __future__ import annotations

import io
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import assume, given, settings, strategies as st

from phalanx.errors import ConfigError
from phalanx.gnu.inputs import InputSource, JobInputs, read_inputs
from phalanx.gnu.template import Template

SEPARATORS = (":::", ":::+", "::::", "::::+")


def sources_of(tokens: Sequence[str]) -> list[InputSource]:
    """The InputSources a command line's ``::: a b :::: f`` tail means, as GNU reads it:
    each file after :::: is a source of its own."""
    sources: list[InputSource] = []
    separator = ""
    group: list[str] = []
    for token in [*tokens, ":::"]:
        if token not in SEPARATORS:
            group.append(token)
            continue
        linked = separator.endswith("+")
        if separator.startswith("::::"):
            sources += [InputSource("file", path=path, linked=linked) for path in group]
        elif separator:
            sources.append(InputSource("args", tuple(group), linked=linked))
        separator, group = token, []
    return sources


def options_of(options: Sequence[str]) -> dict[str, Any]:
    kwargs: dict[str, Any] = {}
    words = iter(options)
    for word in words:
        if word == "-0":
            kwargs["null"] = True
        elif word == "--csv":
            kwargs["csv"] = True
        elif word in ("--colsep", "--header"):
            kwargs[word[2:]] = next(words)
        else:
            raise AssertionError(f"no such option in this test: {word}")
    return kwargs


def run_gnu(
    options: Sequence[str], template: str, tokens: Sequence[str], stdin: bytes
) -> subprocess.CompletedProcess[bytes]:
    command = ["parallel", "--will-cite", "--dry-run", "-j1", "-k", *options, template, *tokens]
    return subprocess.run(command, input=stdin, capture_output=True, check=False)


def jobs_of(done: subprocess.CompletedProcess[bytes]) -> str:
    """The jobs GNU's --dry-run printed; it must have succeeded."""
    assert done.returncode == 0, done.stderr.decode()
    return done.stdout.decode("utf-8", "surrogateescape")


def gnu(options: Sequence[str], template: str, tokens: Sequence[str], stdin: bytes) -> str:
    return jobs_of(run_gnu(options, template, tokens, stdin))


def ours(options: Sequence[str], template: str, tokens: Sequence[str], stdin: bytes) -> str:
    inputs = read_inputs(sources_of(tokens), stdin=io.BytesIO(stdin), **options_of(options))
    parsed = Template.parse(template, names=inputs.names, append_args=True)
    return "".join(parsed.render(row, seq=seq, slot=1) + "\n" for seq, row in enumerate(inputs.rows, start=1))


@pytest.fixture(scope="module", autouse=True)
def _gnu_parallel() -> None:
    # Not a skip: the compatibility tests are the point, so a missing tool is a failure.
    assert shutil.which("parallel"), "GNU parallel must be installed (apt-get install parallel)"


FILES = {
    "lines.txt": b"a b\n\nc.d\n'q'\nlast-no-newline",
    "nums.txt": b"1\n2\n3\n",
    "crlf.txt": b"x\r\ny\r\n",
    "empty.txt": b"",
    "blank.txt": b"\n",
    "utf8.txt": "ü/é.ß\n日本\n".encode(),
    "bytes.txt": b"\xff\xfe\n\x80abc\n",
    "tabs.tsv": b"name\tsize\nfoo\t 1 \nbar baz\t2\t extra\n",
    "table.csv": b'n1,n2,n3\n"a,b","c\nd",e\n"e""f",,"x y"\n\nplain,  sp  ,"q"\n',
    "colon.txt": b"k:v:w\na:b:c\n:x:\nno-colon\n",
    "nul.bin": b"a b\0c\nd\0\0last",
    "header.txt": b"col\r\nv1\nv2\n",
    "pq.txt": b"p:q\n1:2\n3\n",
}

CASES: list[tuple[str, list[str], str, list[str], bytes]] = [
    # (id, options, template, the ::: / :::: tail, stdin)
    ("stdin lines", [], "echo x{}y", [], b"a\n\nb c\n d \nno-newline"),
    ("stdin empty lines kept", [], "echo {#}:{}", [], b"\n\n\n"),
    ("stdin crlf kept", [], "echo {}", [], b"a\r\nb\r\n"),
    ("stdin nothing", [], "echo {}", [], b""),
    ("stdin -0", ["-0"], "echo {}", [], b"a\nb\0c d\0\0"),
    ("stdin -0 no final nul", ["-0"], "echo {}", [], b"x\0y"),
    ("stdin non-utf8", [], "echo {}", [], b"\xff\n\xc3\xa9\n"),
    ("::: product", [], "echo {1}-{2}", [":::", "a", "b", ":::", "1", "2"], b""),
    ("::: three way", [], "echo {3}{2}{1} {}", [":::", "a", "b", ":::", "1", "2", "3", ":::", "x", "y"], b""),
    (":::: files", [], "echo {1}+{2}", ["::::", "lines.txt", "nums.txt"], b""),
    (":::: file and :::", [], "echo {1}+{2}", ["::::", "nums.txt", ":::", "p", "q"], b""),
    (":::: special files", [], "echo {}", ["::::", "crlf.txt", "blank.txt", "utf8.txt", "bytes.txt"], b""),
    (":::: stdin", [], "echo {1}+{2}", [":::", "x", "y", "::::", "-"], b"s1\ns2\n"),
    (":::+ equal", [], "echo {1}-{2}", [":::", "a", "b", ":::+", "1", "2"], b""),
    (":::+ shorter", [], "echo {1}-{2}", [":::", "a", "b", "c", ":::+", "1", "2"], b""),
    (":::+ longer", [], "echo {1}-{2}", [":::", "a", "b", ":::+", "1", "2", "3"], b""),
    (":::+ after product", [], "echo {}", [":::", "a", "b", ":::", "x", "y", "z", ":::+", "1", "2"], b""),
    (":::+ then product", [], "echo {}", [":::", "a", "b", "c", ":::+", "1", "2", ":::", "x", "y"], b""),
    (":::+ chain", [], "echo {}", [":::", "a", "b", ":::+", "1", "2", "3", ":::+", "x", "y", "z"], b""),
    ("::::+ files", [], "echo {}", ["::::", "nums.txt", "::::+", "lines.txt"], b""),
    ("::::+ links every file", [], "echo {}", [":::", "a", "b", "c", "::::+", "nums.txt", "lines.txt"], b""),
    ("-0 ::: values", ["-0"], "echo {}", [":::", "a\nb", "c"], b""),
    ("-0 file", ["-0"], "echo {}", ["::::", "nul.bin"], b""),
    ("colsep stdin", ["--colsep", ":"], "echo {1}={2}={3}={4}", [], b"a:b:c\n::\n x : y \nsolo\n\n"),
    ("colsep regex", ["--colsep", "[0-9]+"], "echo {1}+{2}+{3}", [], b"a1b22c\n"),
    ("colsep empty matches", ["--colsep", ":*"], "echo {1}+{2}+{3}+{4}+{5}", [], b":a:b\nab\n::\n"),
    ("colsep groups", ["--colsep", "(;)|:"], "echo {1}+{2}+{3}+{4}", [], b"a;b\na:b\n"),
    ("colsep ::: values", ["--colsep", ","], "echo {1}-{2}-{3}", [":::", "a,b", " c , d ", "e"], b""),
    ("colsep two sources", ["--colsep", ","], "echo {1}={2}={3}={4} {}", [":::", "a,b", "x", ":::", "1,2"], b""),
    ("colsep trims tabs", ["--colsep", ":"], "echo x{1}x{2}x", [], b"\t a \x0b: \x0cb\r\n"),
    ("colsep file", ["--colsep", ":"], "echo {3}/{2}/{1}", ["::::", "colon.txt"], b""),
    ("header ::: groups", ["--header", ":"], "echo {a} {b}", [":::", "a", "1", "2", ":::", "b", "x", "y"], b""),
    ("header ::: modifiers", ["--header", ":"], "echo {a}-{b.}-{a/}-{b//}-{1}-{2}",
     [":::", "a", "1.q", "p/2", ":::", "b", "x.y", "z"], b""),
    ("header tabs", ["--header", ":"], "echo {name}={size}={3}", ["::::", "tabs.tsv"], b""),
    ("header stdin tabs", ["--header", ":"], "echo {x}-{y}", [], b"x\ty\n1\t2\n3\t4\n"),
    ("header crlf", ["--header", ":"], "echo {col}", ["::::", "header.txt"], b""),
    ("header colsep", ["--colsep", ":", "--header", ":"], "echo {k}+{v}+{w}", ["::::", "colon.txt"], b""),
    ("header trailing empty names", ["--colsep", ",", "--header", ":"], "echo {x}+{y}+{3}+{4}", [],
     b"x,y,,\r\n1,2,3,4\r\n"),
    ("header two files", ["--colsep", ":", "--header", ":"], "echo {k}{v}{w}-{p}-{q}-{5}-{-1}",
     ["::::", "colon.txt", "::::", "pq.txt"], b""),
    ("csv", ["--csv"], "echo {1}+{2}+{3}", ["::::", "table.csv"], b""),
    ("csv header", ["--csv", "--header", ":"], "echo {n1}+{n2}+{n3}", ["::::", "table.csv"], b""),
    ("csv stdin", ["--csv"], "echo {1}/{2}", [], b'"multi\nline",x\n"a ""q""",\n,\n'),
    ("csv ::: values", ["--csv"], "echo {1}/{2}", [":::", '"a,b",c', "d", ""], b""),
    ("csv colsep", ["--csv", "--colsep", ";"], "echo {1}/{2}", [], b'" a;b ";c\n  x  ;  y\n'),
    ("csv product", ["--csv"], "echo {}", ["::::", "table.csv", ":::", "1", "2"], b""),
]


@pytest.mark.parametrize(("options", "template", "tokens", "stdin"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_jobs_match_gnu_parallel(
    options: list[str], template: str, tokens: list[str], stdin: bytes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, data in FILES.items():
        (tmp_path / name).write_bytes(data)
    monkeypatch.chdir(tmp_path)
    assert ours(options, template, tokens, stdin) == gnu(options, template, tokens, stdin)


@settings(max_examples=60, deadline=None)
@given(
    st.binary().filter(lambda data: b"\0" not in data),
    st.sampled_from([[], ["--colsep", ","], ["--colsep", "[ ,]+"], ["-0"], ["--header", ":"]]),
)
def test_any_stdin_bytes_make_the_jobs_gnu_parallel_makes(data: bytes, options: list[str]) -> None:
    # -0 with NUL-free data is one record; without -0 GNU would rewrite a NUL as \\0.
    # GNU dies on a header name that is not a Perl regex ("["): such an example is skipped.
    template = "echo {} {1} {-1}"
    done = run_gnu(options, template, [], data)
    assume("--header" not in options or done.returncode == 0)
    assert ours(options, template, [], data) == jobs_of(done)


def read(*sources: InputSource, stdin: bytes = b"", **options: Any) -> JobInputs:
    return read_inputs(sources, stdin=io.BytesIO(stdin), **options)


def test_rows_and_names() -> None:
    assert read(InputSource("args", ("a", "b")), InputSource("args", ("1", "2"))) == JobInputs(
        None, [("a", "1"), ("a", "2"), ("b", "1"), ("b", "2")]
    )
    assert read(stdin=b"x\ty\n1\t2\n", header=":") == JobInputs(("x", "y"), [("1", "2")])
    assert read(InputSource("args", ("h", "v")), header="0").names is None  # GNU's --header 0 is off


def test_bytes_survive_decoding() -> None:
    (row,) = read(stdin=b"\xff\xfe a\x80\n").rows
    assert row[0].encode("utf-8", "surrogateescape") == b"\xff\xfe a\x80"


def test_a_value_holding_the_delimiter_is_several_values_as_in_gnu_parallel() -> None:
    # GNU writes ::: values out, each followed by the delimiter, and reads them back.
    assert read(InputSource("args", ("a\nb", "c"))).rows == [("a",), ("b",), ("c",)]
    assert read(InputSource("args", ("a\n", "c"))).rows == [("a",), ("",), ("c",)]
    assert read(InputSource("args", ("a\nb",)), null=True).rows == [("a\nb",)]


def test_differences_from_gnu_parallel_that_are_deliberate() -> None:
    # A source without values means no jobs (GNU pads it with one empty arg, or reads
    # stdin for a lone empty :::).
    assert read(InputSource("args", ())).rows == []
    assert read(InputSource("args", ("a", "b")), InputSource("args", ())).rows == []
    assert read(InputSource("args", ("a",)), InputSource("args", ("h",)), header=":").rows == []
    # A CSV header is parsed as CSV (GNU splits it on the separator, quotes and all).
    assert read(stdin=b'"a,b",c\n1,2\n', csv=True, header=":").names == ("a,b", "c")


def test_empty_stdin_and_empty_file(tmp_path: Path) -> None:
    (tmp_path / "empty").write_bytes(b"")
    assert read().rows == []
    assert read(InputSource("file", path=str(tmp_path / "empty")), csv=True).rows == []


CSV = {"csv": True}


@pytest.mark.parametrize(
    ("sources", "options", "message"),
    [
        ([InputSource("file", path="nope.txt")], {}, r"^input file 'nope.txt' not found$"),
        ([InputSource("file", path=".")], {}, r"^cannot read input file '\.': Is a directory$"),
        ([InputSource("args", ("a",), linked=True)], {}, r"^a linked input source \(:::\+ or ::::\+\) needs an input"),
        ([InputSource("args", ("a",))], {"colsep": "("}, r"^bad --colsep regex '\(': missing \), unterminated"),
        ([InputSource("args", ("a",))], {"colsep": "::", "csv": True}, r"^--colsep with --csv must be one char"),
        ([InputSource("args", ('"a,b',))], CSV, r"^bad CSV in the value '\"a,b' at line 1: unexpected end of data$"),
        ([InputSource("args", ("x", '"a"b,c'))], CSV, r"^bad CSV in the value '\"a\"b,c' at line 1: ',' expected"),
        ([InputSource("file", path="bad.csv")], CSV, r"^bad CSV in input file 'bad.csv' at line 4: unexpected end"),
        ([], CSV, r"^bad CSV in stdin at line 2: ',' expected after '\"'$"),
        ([InputSource("stdin"), InputSource("file", path="-")], {}, r"^only one input source can read stdin$"),
    ],
)
def test_bad_input_is_a_one_line_config_error(
    sources: list[InputSource],
    options: dict[str, Any],
    message: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bad.csv").write_bytes(b'a,b\n"c\nd",e\n"f,g\n')
    with pytest.raises(ConfigError, match=message) as caught:
        read(*sources, stdin=b'a\n"b"c\n', **options)
    assert "\n" not in str(caught.value)


def test_stdin_needed_but_missing() -> None:
    with pytest.raises(ConfigError, match="no stdin"):
        read_inputs([], stdin=None)
