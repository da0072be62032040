"""`phalanx map`'s xargs-like options where output can only be compared loosely with GNU
parallel (``-u``), or where phalanx differs on purpose (``-X`` words inside quotes)."""

from __future__ import annotations

from pathlib import Path

import pytest

from mapsupport import run_both, run_map


@pytest.mark.parametrize(
    "args",
    [
        # Started 0.3 s apart: each partial line is written well apart from the others
        # (-u passes the jobs' output straight through, so two writes at once may come
        # in either order, in GNU parallel as in phalanx).
        ["-j3", "--delay", "0.3", "printf 'a{}-'; sleep {}; echo b{}", ":::", "1.0", "0.1", "0.6"],
        ["-k", "--tag", "-j2", "echo {}; exit {}", ":::", "0", "1", "2"],
        ["--ungroup", "-n2", "echo", ":::", "a", "b", "c"],
    ],
    ids=["partial-lines", "keep-order-and-tag-ignored", "long-form"],
)
def test_ungroup_same_lines_and_exit_status(args: list[str], tmp_path: Path) -> None:
    """``-u``: output as it comes (so lines may interleave differently); GNU ignores -k and --tag."""
    gnu, ours = run_both(["-u", *args], tmp_path, ["-u", *args], tmp_path)
    assert b"Traceback" not in ours.stderr
    assert ours.returncode == gnu.returncode
    assert sorted(ours.stdout.splitlines()) == sorted(gnu.stdout.splitlines())


def test_ungroup_prints_partial_lines_while_the_job_runs(tmp_path: Path) -> None:
    # The first job's half line comes before the second job's output, which comes before its end
    # (the second starts 0.2 s later: their first writes do not race).
    result = run_map(["-u", "-j2", "--delay", "0.2", "printf a{}; sleep {}; echo b{}", ":::", "0.6", "0.1"],
                     cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"a0.6a0.1b0.1\nb0.6\n"


def test_xargs_word_in_quotes_is_quoted_for_them(tmp_path: Path) -> None:
    """As without -X, a value inside quotes is quoted for them (GNU prints its '...' there)."""
    result = run_map(["-k", "-X", "-j1", "echo \"<{}>\" '[{}]'", ":::", "a b", "it's", "$(touch pwned)"], cwd=tmp_path)
    assert (result.returncode, result.stderr) == (0, b"")
    assert result.stdout == b"<a b> <it's> <$(touch pwned)> [a b] [it's] [$(touch pwned)]\n"
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("template", ['echo "a {}"', "echo 'x{}", 'echo "{}'])
def test_xargs_refuses_a_word_that_quotes_cut(template: str, tmp_path: Path) -> None:
    """A word that starts or ends inside quotes cannot be repeated safely."""
    result = run_map(["-X", template, ":::", "a", "$(touch pwned)"], cwd=tmp_path)
    assert result.returncode == 255
    assert b"-X" in result.stderr and len(result.stderr.splitlines()) == 1
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize(
    "args",
    [["-n", "x", "echo", ":::", "a"], ["-n", "-1", "echo", ":::", "a"], ["-I", "", "echo", ":::", "a"],
     ["-d", "", "echo", ":::", "a"], ["-n"]],
    ids=["n-not-a-number", "n-negative", "empty-replace", "empty-delimiter", "n-without-value"],
)
def test_bad_values_are_usage_errors(args: list[str], tmp_path: Path) -> None:
    result = run_map(args, cwd=tmp_path)
    assert (result.returncode, result.stdout) == (255, b"")
    assert len(result.stderr.splitlines()) == 1, result.stderr


def test_a_value_holding_the_delimiter_is_several_args_as_in_gnu_parallel(tmp_path: Path) -> None:
    # GNU writes ::: values out, each followed by the delimiter, and reads them back.
    for args in (["-k", "echo", "[{}]", ":::", "a\nb", "c"], ["-k", "echo", "[{}]", ":::", "a\n", "c"],
                 ["-k", "-d", ":", "echo", "[{}]", ":::", "a:b"], ["-k", "-0", "echo", "[{}]", ":::", "a\nb", "c"]):
        gnu, ours = run_both(args, tmp_path, args, tmp_path)
        assert (ours.stdout, ours.returncode) == (gnu.stdout, gnu.returncode), args


def test_max_args_dry_run(tmp_path: Path) -> None:
    gnu, ours = run_both(["--dry-run", "-k", "-n2", "echo", ":::", "a b", "c", "d"], tmp_path,
                         ["--dry-run", "-k", "-n2", "echo", ":::", "a b", "c", "d"], tmp_path)
    assert (ours.stdout, ours.returncode) == (gnu.stdout, gnu.returncode) == (b"echo 'a b' c\necho d\n", 0)
