"""`phalanx map -k` against GNU parallel -k: the same invocation, the same stdout bytes and exit status.

Each case runs once through ``parallel --will-cite -k ARGS`` and once through
``phalanx map -k ARGS``, each in a fresh directory holding the same files, with the same
stdin, under ``SHELL=/bin/sh`` (phalanx always uses /bin/sh; GNU uses $SHELL). Cases with
a joblog also compare it column by column, Starttime and JobRuntime excepted (their
formats are checked instead). GNU parallel must be installed: these tests never skip.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from mapsupport import RUN_TIMEOUT, run_both

PATHS = ["x/y/z.tar.gz", "./a b/c", "it's", 'say "hi"', "ünï/cödé.txt", ".bashrc", "a.b/c", "/abs/p.q", "dir/", "-n"]
HOSTILE = ["$(touch pwned)", "`touch pwned`", "; touch pwned", "a && touch pwned", "*", "~", "$HOME", "a\\b", "'", '"']


@dataclass(frozen=True)
class Case:
    id: str
    args: list[str]
    stdin: bytes = b""
    files: dict[str, bytes] = field(default_factory=dict)
    joblog: bool = False  # add -j1 --joblog log and compare the logs


CASES = [
    # ---- replacement strings
    Case("every-replacement-string", ["-j1", "echo", "_{}_", "_{.}_", "_{/}_", "_{//}_", "_{/.}_", "_{#}_", "_{%}_",
                                      ":::", *PATHS]),
    Case("printf-exact-bytes", ["printf '%s|' {} {.} {/} {//} {/.}", ":::", *PATHS]),
    Case("positional", ["echo", "{1}", "{2}", "{1.}", "{2/}", "{1//}", "{2/.}", "{-1}", "{3}",
                        ":::", "x/y/z.tar.gz", "./a b/c", ":::", "it's/q.r", "ü.v"]),
    Case("append-without-replacement", ["printf '<%s>'", ":::", "a", "b c", "it's", ""]),
    Case("replacement-inside-word", ["echo", "pre{}post", "{#}of", ":::", "a b", "c"]),
    Case("hostile-values-never-run", ["printf '%s\\n'", ":::", *HOSTILE]),
    Case("hostile-values-in-shell-syntax", ["printf '%s\\n' {} {.} && test ! -e pwned", ":::", *HOSTILE]),
    Case("no-command-args-are-commands", [":::", "echo a", "echo 'b c'", "printf '%s\\n' x y"]),
    Case("unicode-and-quotes", ["echo", "{}", ":::", "naïve", "日本語/ファイル.txt", "it's", '"dq"', "tab\there"]),
    # ---- input sources
    Case("product-of-groups", ["echo", "{1}-{2}-{3}", ":::", "a", "b", ":::", "1", "2", "3", ":::", "x", "y"]),
    Case("linked-group", ["echo", "{1}-{2}", ":::", "a", "b", "c", ":::+", "1", "2", "3"]),
    Case("linked-then-product", ["echo", "{1}{2}{3}", ":::", "a", "b", ":::+", "1", "2", ":::", "x", "y"]),
    Case("appended-several-args", ["echo", ":::", "a", "b", ":::", "1 2", "3"]),
    Case("stdin-lines", ["echo", "_{}_"], stdin=b"a\nb c\n\nlast-without-newline"),
    Case("file-source", ["echo", "{1}:{2}", "::::", "in1", "::::", "in2"],
         files={"in1": b"a\nb\n", "in2": b"1\n2\n"}),
    Case("file-source-linked", ["echo", "{1}:{2}", "::::", "in1", "::::+", "in2"],
         files={"in1": b"a\nb\n", "in2": b"1\n2\n"}),
    Case("args-linked-to-several-files", ["echo", ":::", "a", "b", "::::+", "in1", "in2"],
         files={"in1": b"x\ny\n", "in2": b"1\n2\n"}),
    Case("null-separated", ["-0", "printf '[%s]\\n'"], stdin=b"a\nb\0c d\0"),
    Case("colsep", ["--colsep", ",", "echo", "{2}", "{1}", "{}"], stdin=b"a,b\nc d,e\n"),
    Case("colsep-regex", ["--colsep", "[,;]+", "echo", "{3}-{1}-{2}"], stdin=b"a,,b;c\nd;e,f\n"),
    Case("header-tabs", ["--header", ":", "echo", "{name}", "{age}"], stdin=b"name\tage\nann\t3\nbob\t4\n"),
    Case("header-colsep", ["--header", ":", "--colsep", ",", "echo", "{age}/{name}", "{name.}"],
         stdin=b"name,age\nx.y,3\n"),
    Case("csv-header", ["--csv", "--header", ":", "echo", "{name}", "-", "{city}"],
         stdin=b'name,city\n"Smith, J","New\nYork"\nplain,"a ""quoted"" word"\n'),
    Case("stdin-empty", ["echo", "never"]),
    Case("arg-file-option", ["-a", "in1", "echo", "{}"], files={"in1": b"a b\nc\n"}),
    Case("args-then-file", ["echo", "{1}{2}", ":::", "a", "b", "::::", "in1"], files={"in1": b"1\n2\n"}),
    Case("colsep-on-args", ["--colsep", ",", "echo", "{2}{1}", ":::", "a,b", " c , d "]),
    Case("header-on-args", ["--header", ":", "echo", "{x}-{y}", ":::", "x", "1", "2", ":::", "y", "3", "4"]),
    Case("null-args-with-newlines", ["-0", "printf '<%s>'", ":::", "a\nb", "c"], joblog=True),
    # A replacement string inside quotes differs on purpose: test_quoted_template_prints_values_literally.
    Case("quoted-words-bare-values", ["echo \"<\"{}\">\" '('{}')'", ":::", "a b", "it's", "$x"]),
    Case("bare-in-substitutions", ["echo $(basename {}) \"$(dirname {})\" `basename {.}` ${x:-{}}", ":::", *PATHS]),
    Case("one-arg-per-job", ["-n1", "echo", ":::", "a", "b"]),
    # ---- several args per job: -n, -X; -I; -d
    Case("max-args-positional", ["-n2", "echo", "{1}-{2}", "{3}", "{-1}", ":::", "a", "b", "c", "d", "e"]),
    Case("max-args-appended", ["-n", "2", "printf '<%s>'", ":::", "a b", "it's", "", "$x"]),
    Case("max-args-long-forms", ["--max-args", "3", "echo", "{}", "{#}", ":::", *"abcdefg"]),
    Case("max-args-equals", ["--max-args=2", "echo", ":::", "a", "b", "c"]),
    Case("max-replace-args", ["-N2", "echo", "{2}", ":::", "a", "b", "c"]),
    Case("max-args-two-sources", ["-n3", "echo", "{#}", "{1}{2}{4}", "{}", ":::", "a", "b", ":::", "c", "d"]),
    Case("max-args-colsep", ["-n2", "--colsep", ",", "echo", "{1}", "{3}", "{}", ":::", "a,b", "c,d", "e,f"]),
    Case("max-args-zero", ["-n0", "echo", "x{}y", "{#}", ":::", "a", "b"]),
    Case("max-args-tag", ["-n2", "--tag", "echo", ":::", "a", "b c", "d"]),
    Case("max-args-stdin", ["-n2", "echo", "[{}]"], stdin=b"a\nb c\n\nd\n"),
    Case("max-args-joblog", ["-n2", "printf '%s\\n'", ":::", "a b", "it's", "c"], joblog=True),
    Case("xargs-context-words", ["-X", "-j1", "echo", "pre{}post", "{1}", "x{}y{.}z", ":::", "a.1", "b c", "it's"]),
    Case("xargs-spread-over-slots", ["-X", "-j2", "echo", ":::", "a", "b", "c", "d", "e"]),
    Case("xargs-three-slots", ["-X", "-j3", "echo", "{#}:{}", ":::", *"abcdefgh"]),
    Case("xargs-with-max-args", ["-X", "-n3", "-j2", "echo", ":::", "a", "b", "c", "d", "e"]),
    # A word in quotes differs on purpose, as without -X: test_map_xargs.py.
    Case("xargs-one-command-word", ["-X", "-j1", "echo x{/}y {//}", ":::", "a/b", "c d/e", "$(touch pwned)"]),
    Case("xargs-hostile-values", ["-X", "-j1", "printf '%s\\n' {} a{}b", ":::", *HOSTILE]),
    Case("xargs-fills-long-lines", ["-X", "-j1", "echo"], stdin=b"".join(b"%d\n" % i for i in range(30000))),
    Case("xargs-fills-long-context-lines", ["-X", "-j1", "echo", "x{}y"],
         stdin=b"".join(b"%d\n" % i for i in range(30000))),
    Case("replace-string", ["-I", "@@", "echo", "@@", "{}", "x@@y", "@@.", "{.}", "{#}", ":::", "a.b", "c d"]),
    Case("replace-string-glued", ["-I@@", "echo", "<@@>", ":::", "it's"]),
    Case("replace-string-braces", ["-I", "{}", "echo", "{.}", "{}", ":::", "a.b"]),
    Case("replace-string-no-use-appends", ["-I", ",,", "echo", "{}", ":::", "a"]),
    Case("delimiter", ["-d", ":", "echo", "[{}]"], stdin=b"a:b c:\n:last"),
    Case("delimiter-escapes", ["-d", "\\t", "echo", "[{}]"], stdin=b"a\tb\nc\t"),
    Case("delimiter-nul", ["-d", "\\0", "echo", "[{}]"], stdin=b"a\nb\0c\0"),
    Case("delimiter-several-chars", ["--delimiter", "XY", "echo", "[{}]"], stdin=b"aXYbXcXY"),
    Case("delimiter-octal-and-tab", ["-d", "\\101b\\t", "echo", "[{}]"], stdin=b"xAb\tyAbz"),
    Case("delimiter-newline-on-file", ["-d", "\\n", "echo", "[{}]", "::::", "in"], files={"in": b"a\r\nb\n"}),
    Case("delimiter-glued", ["-d:", "echo", ":::", "a"]),
    # ---- output
    Case("keep-order-despite-finish-order", ["-j4", "sleep {}; echo {}", ":::", "0.3", "0.1", "0.2", "0"]),
    Case("tag", ["--tag", "echo", "out", "{}", ":::", "a", "b c", ":::", "1", "2"]),
    Case("tag-multiline", ["--tag", "printf 'l1\\nl2\\n'"], stdin=b"x\ny\n"),
    Case("tagstring", ["--tagstring", "<{#}:{2}:{1/}>", "echo", "{}", ":::", "a/b", "c", ":::", "1"]),
    Case("tagstring-escapes", ["--tagstring", "{}\\t\\101\\n", "echo", ":::", "a"]),
    Case("tagstring-empty-is-none", ["--tagstring", "", "echo", ":::", "a"]),
    Case("tag-carriage-returns", ["--tag", "printf 'a\\rb\\r\\nc\\r'", ":::", "x"]),
    Case("stderr-does-not-reach-stdout", ["echo {} >&2; echo out {}", ":::", "a", "b"]),
    Case("jobs-forms-keep-order", ["-j", "+1", "echo", ":::", *[str(i) for i in range(8)]]),
    Case("jobs-zero", ["-j0", "echo", ":::", "a", "b", "c"]),
    Case("dry-run", ["--dry-run", "echo", "{}", "{.}", ":::", "a b", "it's", "plain", "", "x$y.z", "ü"]),
    Case("dry-run-tag", ["--dry-run", "--tag", "echo", "{}", ":::", "a b", "c"]),
    Case("results-dir-prints-nothing", ["--results", "out", "echo {}; echo err >&2; exit 1", ":::", "a", "b"]),
    Case("results-csv-prints-nothing", ["--results", "out.csv", "echo {}", ":::", "a", "b"]),
    Case("line-buffer-keep-order", ["-j3", "--lb", "--tag", "echo a{}; sleep {}; echo b{}",
                                    ":::", "0.3", "0.1", "0.2"]),
    # ---- timeouts, retries, halts
    # A 10x margin each way: the 0.1 s job ends far inside the limit, the 5 s one far outside.
    Case("timeout", ["--timeout", "1", "echo start {}; sleep {}; echo end {}", ":::", "0", "5", "0.1"], joblog=True),
    Case("retries", ["--retries", "3",
                     "n=$(cat c{} 2>/dev/null || echo 0); n=$((n+1)); echo $n > c{}; echo {} try $n; test $n -ge {}",
                     ":::", "1", "2", "4"], joblog=True),
    Case("retries-zero-is-unlimited", ["--retries", "0",
                                       "n=$(cat c{} 2>/dev/null || echo 0); n=$((n+1)); echo $n > c{}; test $n -ge {}",
                                       ":::", "5"], joblog=True),
    Case("timeout-zero-is-none", ["--timeout", "0", "sleep 0.1; echo {}", ":::", "a"]),
    Case("halt-now-fail-1", ["-j1", "--halt", "now,fail=1", "echo {}; exit {}", ":::", "0", "3", "0"], joblog=True),
    Case("halt-soon-fail-1", ["-j1", "--halt", "soon,fail=1", "echo {}; exit {}", ":::", "0", "4", "0"], joblog=True),
    Case("halt-now-fail-2", ["-j1", "--halt", "now,fail=2", "echo {}; exit {}", ":::", "0", "3", "4", "0", "5"]),
    Case("halt-soon-fail-percent", ["-j1", "--halt", "soon,fail=50%", "echo {}; exit {}",
                                     ":::", "0", "3", "4", "0", "5"]),
    Case("halt-now-success-1", ["-j1", "--halt", "now,success=1", "echo {}; exit {}", ":::", "3", "0", "4"]),
    Case("halt-now-done-2", ["-j1", "--halt", "now,done=2", "echo {}; exit {}", ":::", "0", "3", "0"]),
    Case("halt-now-fail-percent-of-one-job", ["-j1", "--halt", "now,fail=20%", "echo {}; exit {}",
                                               ":::", "0", "3", "4", "0", "0"]),
    Case("halt-soon-fail-percent-not-reached", ["-j1", "--halt", "soon,fail=50%", "exit {}",
                                                 ":::", "0", "3", "0", "0", "0"]),
    Case("halt-timeout", ["-j1", "--halt", "now,fail=1", "--timeout", "0.2", "sleep {}", ":::", "0", "5", "0"]),
    Case("halt-legacy-2", ["-j1", "--halt", "2", "echo {}; exit {}", ":::", "0", "3", "0"]),
    Case("halt-now-keep-order-drops-running-jobs", ["-j3", "--halt", "now,fail=1",
                                                    "sleep {}; echo {}; test {} = 0.2 && exit 1; exit 0",
                                                    ":::", "0.1", "3", "0.2"]),
    Case("halt-now-keep-order-drops-held-jobs", ["-j3", "--halt", "now,fail=1",
                                                 "sleep {}; echo {}; test {} = 0.2 && exit 1; exit 0",
                                                 ":::", "3", "0.5", "0.2"]),
    Case("halt-now-line-buffer-keep-order", ["-j3", "--lb", "--halt", "now,fail=1",
                                              "sleep {}; echo {}; test {} = 0.2 && exit 1; exit 0",
                                              ":::", "0.1", "3", "0.2"]),
    Case("halt-on-signal", ["-j1", "--halt", "now,fail=1", "echo {}; kill -{} $$", ":::", "9"]),
    # ---- exit statuses
    Case("exit-no-failure", ["exit", ":::", "0", "0"]),
    Case("exit-two-failures", ["echo {}; exit {}", ":::", "0", "2", "0", "7"], joblog=True),
    Case("exit-over-100-failures", ["-j8", "exit {}", ":::", *["1"] * 103, "0"]),
    Case("exit-100-failures", ["-j8", "exit", "1", ":::", *[str(i) for i in range(100)]]),
    Case("exit-command-not-found", ["phalanx-no-such-command-{}", ":::", "a"], joblog=True),
    Case("exit-signal", ["echo {}; kill -TERM $$", ":::", "x"], joblog=True),
    # ---- joblog columns
    Case("joblog-quoting", ["printf '%s\\n' {}", ":::", "a b", "it's", "plain", "ü", ""], joblog=True),
    Case("joblog-stdout-stderr-sizes", ["printf 1234567; printf 12 >&2; exit {}", ":::", "0", "1"], joblog=True),
    # ---- --pipe: standard input in blocks, one job per block
    Case("pipe-records", ["--pipe", "-N", "3", "wc", "-l"], stdin=b"".join(b"%d\n" % i for i in range(1, 11))),
    Case("pipe-block-size", ["--pipe", "--block", "100", "wc", "-l"],
         stdin=b"".join(b"%d\n" % i for i in range(1, 1001))),
    Case("pipe-block-bytes", ["--pipe", "--block", "20", "wc", "-c"],
         stdin=b"".join(b"%d\n" % i for i in range(1, 101))),
    Case("pipe-cat-round-trip", ["--pipe", "--block", "1k", "cat"],
         stdin=b"".join(b"line %d \xc3\xbc\t'$x'\n" % i for i in range(3000)) + b"no newline at the end"),
    Case("pipe-default-block", ["--pipe", "wc", "-c"], stdin=b"".join(b"%d\n" % i for i in range(300000))),
    Case("pipe-joblog", ["--pipe", "-N", "4", "wc -l; exit 2"], stdin=b"".join(b"%d\n" % i for i in range(1, 11)),
         joblog=True),
    Case("pipe-failing-block", ["--pipe", "-N", "2", "read x; echo $x; test $x != 3"],
         stdin=b"1\n2\n3\n4\n5\n6\n", joblog=True),
    Case("pipe-seq-slot-no-args", ["-j1", "--pipe", "-N", "2", "echo {#} {%} x{}y; cat"], stdin=b"a\nb\nc\n"),
    Case("pipe-record-longer-than-block", ["--pipe", "--block", "5", "echo [{#}]; cat"],
         stdin=b"a\n" + b"b" * 40 + b"\nc\n"),
    Case("pipe-recend", ["--pipe", "--recend", ";", "-N2", "cat; echo"], stdin=b"a;b;c;d;e"),
    Case("pipe-recstart", ["--pipe", "--recstart", ">", "-N1", "echo [; cat"], stdin=b">a\nx\n>b\ny\n>c\n"),
    Case("pipe-dry-run", ["--dry-run", "--pipe", "-N2", "wc", "-l"], stdin=b"1\n2\n3\n4\n5\n"),
    Case("pipe-empty-input", ["--pipe", "cat"]),
    Case("pipe-tag", ["--pipe", "--tag", "-N1", "cat"], stdin=b"a\nb\n"),
]


def test_quoted_template_prints_values_literally(tmp_path: Path) -> None:
    """The one deliberate difference: inside quotes a value is quoted for those quotes. GNU puts
    its single-quoted text there too, which prints the quotes inside "...", breaks on a value
    holding ', and expands $x and runs $(...) both inside "..." and inside '...'."""
    gnu_dir, our_dir = tmp_path / "gnu", tmp_path / "phalanx"
    gnu_dir.mkdir()
    our_dir.mkdir()
    args = ["-k", "-j1", "echo \"<{}>\" '{}'", ":::", "a b", "it's", "$x", "$(touch pwned)"]
    gnu, ours = run_both(args, gnu_dir, args, our_dir)
    assert (ours.stdout, ours.returncode, ours.stderr) == (
        b"<a b> a b\n<it's> it's\n<$x> $x\n<$(touch pwned)> $(touch pwned)\n", 0, b""
    )
    assert not (our_dir / "pwned").exists()
    assert gnu.stdout == b"<'a b'> a b\n<''> \n<''> \n"  # "it's" is a syntax error
    assert gnu.returncode == 1
    assert (gnu_dir / "pwned").exists()


def _materialise(case: Case, directory: Path) -> list[str]:
    directory.mkdir()
    for name, data in case.files.items():
        (directory / name).write_bytes(data)
    return ["-k", "-j1", "--joblog", "log", *case.args] if case.joblog else ["-k", *case.args]


@dataclass(frozen=True)
class Ran:
    gnu: subprocess.CompletedProcess[bytes]
    ours: subprocess.CompletedProcess[bytes]
    gnu_dir: Path
    our_dir: Path


def _run_case(case: Case, directory: Path) -> Ran:
    gnu_dir, our_dir = directory / "gnu", directory / "phalanx"
    gnu, ours = run_both(_materialise(case, gnu_dir), gnu_dir, _materialise(case, our_dir), our_dir, stdin=case.stdin)
    return Ran(gnu, ours, gnu_dir, our_dir)


@pytest.fixture(scope="module")
def runs(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Future[Ran]]]:
    """Every selected case, started at once on a few threads: most of a case's time is
    process start-up, so running cases side by side keeps the suite fast."""
    selected = [
        item.callspec.params["case"]
        for item in request.session.items
        if isinstance(item, pytest.Function) and item.originalname == "test_same_stdout_and_exit_status"
    ]
    with ThreadPoolExecutor(3) as pool:
        yield {case.id: pool.submit(_run_case, case, tmp_path_factory.mktemp(case.id)) for case in selected}
        pool.shutdown(cancel_futures=True)


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_same_stdout_and_exit_status(case: Case, runs: dict[str, Future[Ran]]) -> None:
    ran = runs[case.id].result(timeout=2 * RUN_TIMEOUT)
    gnu, ours = ran.gnu, ran.ours
    assert b"Traceback" not in ours.stderr, ours.stderr.decode(errors="replace")
    assert (ours.stdout, ours.returncode) == (gnu.stdout, gnu.returncode), (
        f"GNU stderr: {gnu.stderr.decode(errors='replace')}\nphalanx stderr: {ours.stderr.decode(errors='replace')}"
    )
    assert not (ran.our_dir / "pwned").exists() and not (ran.gnu_dir / "pwned").exists()
    if case.joblog:
        _assert_same_joblog(ran.gnu_dir / "log", ran.our_dir / "log")


_STARTTIME = re.compile(r"\d{10}\.\d{3}")
_RUNTIME = re.compile(r" *\d+\.\d{3}")


def _assert_same_joblog(gnu_log: Path, our_log: Path) -> None:
    theirs = gnu_log.read_bytes().decode("utf-8", "surrogateescape")
    ours = our_log.read_bytes().decode("utf-8", "surrogateescape")
    assert ours.endswith("\n")
    gnu_rows = [line.split("\t") for line in theirs.splitlines()]
    our_rows = [line.split("\t") for line in ours.splitlines()]
    assert our_rows[0] == gnu_rows[0]  # the header
    assert len(our_rows) == len(gnu_rows), f"GNU:\n{theirs}\nphalanx:\n{ours}"
    for gnu_row, our_row in zip(gnu_rows[1:], our_rows[1:], strict=True):
        assert len(our_row) == 9, our_row
        assert _STARTTIME.fullmatch(our_row[2]), our_row
        assert _RUNTIME.fullmatch(our_row[3]) and len(our_row[3]) >= 10, our_row
        drop_times = [0, 1, 4, 5, 6, 7, 8]
        assert [our_row[i] for i in drop_times] == [gnu_row[i] for i in drop_times], f"GNU:\n{theirs}\nphalanx:\n{ours}"


@pytest.mark.parametrize(
    "args",
    [
        ["--no-such-option", "echo", ":::", "a"],
        ["--halt", "sometimes", "echo", ":::", "a"],
        ["-j", "many", "echo", ":::", "a"],
        ["echo", "::::", "no-such-file"],
    ],
    ids=["unknown-option", "bad-halt", "bad-jobs", "missing-file"],
)
def test_same_usage_error_status(args: list[str], tmp_path: Path) -> None:
    gnu, ours = run_both(args, tmp_path, args, tmp_path)
    assert (ours.returncode, gnu.returncode) == (255, 255)
    assert ours.stdout == b""
    assert len(ours.stderr.splitlines()) == 1, ours.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["echo", "{}", ":::", "a b", "x/y", "a\\b", "plain", "ü", "it's", "-"],
        ["--header", ":", "echo", "{}", ":::", "name", "v/1", "v 2", ":::", "n2", "w"],
        ["echo {2}; echo e{1} >&2; exit {#}", ":::", "a", "b", ":::", "c/d"],
    ],
    ids=["values", "header-names", "two-sources"],
)
def test_same_results_tree(args: list[str], tmp_path: Path) -> None:
    """--results DIR lays out GNU's tree (DIR/<source or name>/<value>/..., / as \\_) with
    the same stdout, stderr and seq files; phalanx adds ``exitval``."""
    gnu_dir, our_dir = tmp_path / "gnu", tmp_path / "phalanx"
    gnu_dir.mkdir()
    our_dir.mkdir()
    gnu, ours = run_both(["--results", "out", *args], gnu_dir, ["--results", "out", *args], our_dir)
    assert (ours.returncode, ours.stdout) == (gnu.returncode, gnu.stdout)

    def tree(root: Path) -> dict[str, bytes]:
        return {
            str(path.relative_to(root)): path.read_bytes()
            for path in root.rglob("*")
            if path.is_file() and path.name != "exitval"
        }

    assert tree(our_dir / "out") == tree(gnu_dir / "out")
    assert all(p.name != "exitval" or p.read_bytes().strip().lstrip(b"-").isdigit() for p in our_dir.rglob("*"))
