"""A newcomer's first hour with task files: tags from [defaults] add up, the file is found
from a subdirectory, ``timeout = 0`` means no timeout everywhere, ``{item}`` without
``for_each`` warns, the ``for_each`` error names its forms, ``phalanx list``, plurals, and
docs/taskfile.md covers every key.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import phalanx
from phalanx.config import _TASK_KEYS, find_task_file, load_task_file
from phalanx.errors import ConfigError
from phalanx.model import Task
from phalanx.render import plural
from test_snapshots import assert_snapshot

ROOT = Path(__file__).resolve().parent.parent
CI_TOML = ROOT / "examples" / "ci.toml"


def phalanx_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "FORCE_COLOR")}
    return subprocess.run(
        [sys.executable, "-m", "phalanx", *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=60
    )


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


def assert_bad_input(result: subprocess.CompletedProcess[str], start: str) -> str:
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert lines[0].startswith(f"phalanx: error: {start}"), lines[0]
    return lines[0]


# --- tags: [defaults] and the task's own add up ---------------------------------------------


def test_default_tags_and_the_tasks_own_are_merged(tmp_path: Path) -> None:
    path = write(
        tmp_path / "phalanx.toml",
        """
        [defaults]
        tags = ["lint", "ci"]
        [tasks.a]
        cmd = "true"
        tags = ["python", "lint"]
        [tasks.b]
        cmd = "true"
        [tasks.c]
        cmd = "true"
        tags = []
        """,
    )
    graph = load_task_file(path).graph
    assert graph["a"].tags == frozenset({"lint", "ci", "python"})
    assert graph["b"].tags == graph["c"].tags == frozenset({"lint", "ci"})


def test_ci_example_selects_by_its_default_tag() -> None:
    graph = load_task_file(CI_TOML).graph
    assert all("lint" in task.tags for task in graph)
    assert graph["mypy"].tags == frozenset({"lint", "python", "types"})
    result = phalanx_cli("run", str(CI_TOML), "--select", "tag:lint", "--no-deps", "--dry-run", "-j", "8", cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Would run 15 tasks on 8 workers")


def test_bad_default_tags_are_located_in_defaults(tmp_path: Path) -> None:
    write(tmp_path / "phalanx.toml", '[defaults]\ntags = "lint"\n[tasks.a]\ncmd = "true"\ntags = ["x"]\n')
    line = assert_bad_input(phalanx_cli("run", cwd=tmp_path), "phalanx.toml:2: ")
    assert "[defaults]: tags must be a list of strings" in line


# --- the task file is found from a subdirectory ---------------------------------------------


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A repository with a task file at its root and work in subdirectories."""
    root = tmp_path / "repo"
    (root / ".git").mkdir(parents=True)
    write(root / "tests" / "test_a.py", "")
    write(root / "tests" / "test_b.py", "")
    (root / "deep" / "er").mkdir(parents=True)
    (root / "sub").mkdir()
    write(
        root / "phalanx.toml",
        """
        [tasks.where]
        cmd = "pwd > where.out"
        [tasks.sub]
        cmd = "pwd > sub.out"
        cwd = "sub"
        [tasks.test]
        cmd = "test -f {item} && echo {item} >> items.out"
        for_each = { glob = "tests/test_*.py" }
        """,
    )
    return root


def outputs(root: Path) -> tuple[str, str, list[str]]:
    return (
        (root / "where.out").read_text().strip(),
        (root / "sub" / "sub.out").read_text().strip(),
        sorted((root / "items.out").read_text().split()),
    )


def test_run_from_a_subdirectory_behaves_as_from_the_files_directory(project: Path) -> None:
    result = phalanx_cli("run", cwd=project)
    assert result.returncode == 0, result.stdout + result.stderr
    expected = outputs(project)
    assert expected == (str(project.resolve()), str((project / "sub").resolve()),
                        ["tests/test_a.py", "tests/test_b.py"])
    for name in ("where.out", "sub/sub.out", "items.out"):
        (project / name).unlink()
    result = phalanx_cli("run", cwd=project / "deep" / "er")
    assert result.returncode == 0, result.stdout + result.stderr
    assert outputs(project) == expected
    assert not list((project / "deep").rglob("*.out"))


def test_the_nearest_task_file_wins_and_errors_name_it_relative(project: Path) -> None:
    assert find_task_file(project / "deep" / "er") == (project / "phalanx.toml").absolute()
    write(project / "deep" / "pyproject.toml", '[project]\nname = "x"\n')  # not ours: skipped
    assert find_task_file(project / "deep" / "er") == (project / "phalanx.toml").absolute()
    write(project / "deep" / "pyproject.toml", '[tool.phalanx.tasks.near]\ncmd = "true"\ntimeout = "soon"\n')
    assert find_task_file(project / "deep" / "er") == project / "deep" / "pyproject.toml"
    assert_bad_input(phalanx_cli("run", cwd=project / "deep" / "er"), "../pyproject.toml:3: task 'near': timeout")


def test_relative_path_from_the_current_directory(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(project / "deep" / "er")
    assert find_task_file() == Path("../../phalanx.toml")
    monkeypatch.chdir(project)
    assert find_task_file() == Path("phalanx.toml")


def test_the_search_stops_at_the_repository_root(tmp_path: Path) -> None:
    write(tmp_path / "phalanx.toml", '[tasks.outside]\ncmd = "touch ran"\n')
    inner = tmp_path / "repo"
    (inner / ".git").mkdir(parents=True)
    (inner / "src").mkdir()
    with pytest.raises(ConfigError, match="or above it up to the repository root"):
        find_task_file(inner / "src")
    line = assert_bad_input(phalanx_cli("run", cwd=inner / "src"), "no phalanx.toml")
    assert str(inner.resolve()) in line
    assert not (tmp_path / "ran").exists()
    # The repository root itself is checked.
    write(inner / "pyproject.toml", '[tool.phalanx.tasks.inside]\ncmd = "true"\n')
    assert find_task_file(inner / "src") == inner / "pyproject.toml"


def test_a_git_file_also_marks_the_root(tmp_path: Path) -> None:  # worktrees and submodules have a .git file
    write(tmp_path / "phalanx.toml", '[tasks.outside]\ncmd = "true"\n')
    write(tmp_path / "wt" / ".git", "gitdir: /elsewhere\n")
    with pytest.raises(ConfigError):
        find_task_file(tmp_path / "wt")


# --- timeout = 0 means no timeout -----------------------------------------------------------


def test_timeout_zero_in_a_task_file_means_none(tmp_path: Path) -> None:
    write(
        tmp_path / "phalanx.toml",
        """
        [defaults]
        timeout = "0.1s"
        [tasks.own]
        cmd = "sleep 0.4"
        timeout = 0
        [tasks.string]
        cmd = "sleep 0.4"
        timeout = "0s"
        [tasks.limited]
        cmd = "sleep 5"
        """,
    )
    result = phalanx_cli("run", "--json", cwd=tmp_path)
    statuses = {r["task_id"]: r["status"] for r in json.loads(result.stdout)["results"]}
    assert statuses == {"own": "succeeded", "string": "succeeded", "limited": "timed_out"}


def test_timeout_zero_in_defaults_means_none(tmp_path: Path) -> None:
    write(tmp_path / "phalanx.toml", '[defaults]\ntimeout = 0\n[tasks.a]\ncmd = "sleep 0.3"\n')
    result = phalanx_cli("run", cwd=tmp_path)
    assert result.returncode == 0, result.stdout


def test_run_timeout_option(tmp_path: Path) -> None:
    write(
        tmp_path / "phalanx.toml",
        """
        [tasks.unset]
        cmd = "sleep 5"
        [tasks.exempt]
        cmd = "sleep 0.6"
        timeout = 0
        [tasks.own]
        cmd = "sleep 0.6"
        timeout = "30s"
        """,
    )
    started = time.monotonic()
    result = phalanx_cli("run", "--timeout", "0.3s", "--json", "-j", "3", cwd=tmp_path)
    assert time.monotonic() - started < 4
    statuses = {r["task_id"]: r["status"] for r in json.loads(result.stdout)["results"]}
    assert statuses == {"unset": "timed_out", "exempt": "succeeded", "own": "succeeded"}
    assert result.returncode == 1


def test_run_timeout_zero_is_no_timeout(tmp_path: Path) -> None:
    write(tmp_path / "phalanx.toml", '[tasks.a]\ncmd = "sleep 0.3"\n')
    assert phalanx_cli("run", "--timeout", "0", cwd=tmp_path).returncode == 0
    assert_bad_input(phalanx_cli("run", "--timeout", "soon", cwd=tmp_path), "--timeout: 'soon' is not a duration")


def test_python_api_timeout_zero() -> None:
    assert Task(id="t", action="true", timeout=0).timeout == 0  # kept: "none", said explicitly
    report = phalanx.run({"a": "sleep 0.3"}, timeout=0)
    assert report["a"].status.value == "succeeded"
    report = phalanx.run([Task(id="zero", action="sleep 0.3", timeout=0)])
    assert report["zero"].status.value == "succeeded"
    # A task's own 0 is not replaced by the run's default timeout, as an unset one is.
    report = phalanx.run(
        [Task(id="zero", action="sleep 0.5", timeout=0), Task(id="unset", action="sleep 5")], timeout=0.2
    )
    assert (report["zero"].status.value, report["unset"].status.value) == ("succeeded", "timed_out")


# --- {item} without for_each ----------------------------------------------------------------


def test_item_without_for_each_warns_once_naming_task_file_and_line(tmp_path: Path) -> None:
    write(
        tmp_path / "phalanx.toml",
        """
        [tasks.fine]
        cmd = "echo {item}"
        for_each = ["x"]
        [tasks.oops]
        cmd = "echo {item}"
        env = { WHO = "{item}" }
        """,
    )
    expected = (
        "phalanx: warning: phalanx.toml:5: task 'oops': {item} in cmd and env stays as written: "
        "the task has no for_each (add one, or remove {item})"
    )
    result = phalanx_cli("run", "--output", "always", cwd=tmp_path)
    assert result.returncode == 0
    assert result.stderr.splitlines() == [expected]
    assert "{item}\n" in result.stdout  # it ran as written
    for command in (("plan",), ("graph",), ("list",)):
        assert phalanx_cli(*command, cwd=tmp_path).stderr.splitlines() == [expected]
    path = tmp_path / "phalanx.toml"  # the file is named as the caller gave it
    assert load_task_file(path).warnings == (f"{path}:" + expected.removeprefix("phalanx: warning: phalanx.toml:"),)


def test_item_warning_does_not_spoil_one_line_errors(tmp_path: Path) -> None:
    write(tmp_path / "phalanx.toml", '[tasks.oops]\ncmd = "echo {item}"\n')
    assert_bad_input(phalanx_cli("run", "--select", "opps", cwd=tmp_path), "--select opps: no task 'opps'")


def test_item_in_cwd_or_an_argv_warns_too(tmp_path: Path) -> None:
    path = write(
        tmp_path / "phalanx.toml",
        """
        [tasks.argv]
        cmd = ["echo", "{item}"]
        [tasks.cwd]
        cmd = "true"
        cwd = "build/{item}"
        [tasks.plain]
        cmd = "echo item"
        """,
    )
    warnings = load_task_file(path).warnings
    assert [w.split(": ")[1] for w in warnings] == ["task 'argv'", "task 'cwd'"]
    assert warnings[1].startswith(f"{path}:5: ") and "{item} in cwd " in warnings[1]


# --- the for_each error names its forms -----------------------------------------------------


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ('{ files = "*.py" }', "unknown key 'files'"),
        ('{ glop = "*.py" }', "unknown key 'glop' (did you mean 'glob'?)"),
        ("{}", "missing 'glob'"),
        ('"*.py"', "must be a list of items"),
    ],
)
def test_for_each_errors_name_the_valid_forms(tmp_path: Path, value: str, words: str) -> None:
    write(tmp_path / "phalanx.toml", f'[tasks.t]\ncmd = "echo {{item}}"\nfor_each = {value}\n')
    line = assert_bad_input(phalanx_cli("run", cwd=tmp_path), "phalanx.toml:3: task 't': for_each")
    assert words in line
    assert 'a list of items (for_each = ["a", "b"]) or a table whose only key is glob' in line


# --- phalanx list ---------------------------------------------------------------------------


def test_list_snapshot() -> None:
    result = phalanx_cli("list", str(CI_TOML.relative_to(ROOT)), cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert_snapshot("ci_list.txt", result.stdout)


def test_list_shows_for_each_dependencies_by_name(tmp_path: Path) -> None:
    write(
        tmp_path / "phalanx.toml",
        """
        [tasks.test]
        cmd = "echo {item}"
        for_each = ["a", "b"]
        tags = ["t"]
        [tasks.report]
        cmd = "true"
        deps = ["test"]
        [tasks.one]
        cmd = "true"
        deps = ["test[a]"]
        """,
    )
    result = phalanx_cli("list", cwd=tmp_path)
    assert result.stdout.splitlines() == [
        "TASK     TAGS  DEPENDS ON",
        "test[a]  t     -",
        "test[b]  t     -",
        "report   -     test",
        "one      -     test[a]",
        "4 tasks; 1 tag: t",
    ]
    selected = phalanx_cli("list", "--select", "one", cwd=tmp_path).stdout.splitlines()
    assert [line.split()[0] for line in selected[1:-1]] == ["test[a]", "one"]


def test_list_json(tmp_path: Path) -> None:
    write(
        tmp_path / "phalanx.toml",
        """
        [defaults]
        tags = ["ci"]
        [tasks.build]
        cmd = ["make", "all"]
        timeout = 0
        [tasks.test]
        cmd = "pytest -q"
        deps = ["build"]
        timeout = "2m"
        retries = 2
        cost = "30s"
        priority = "high"
        env = { A = "1" }
        memory = "1GiB"
        cpus = 0.5
        """,
    )
    result = phalanx_cli("list", "--json", cwd=tmp_path)
    document = json.loads(result.stdout)
    assert document["file"] == "phalanx.toml"
    build, test = document["tasks"]
    assert (build["id"], build["cmd"], build["timeout"], build["tags"]) == ("build", ["make", "all"], None, ["ci"])
    assert test["deps"] == ["build"] and test["cmd"] == "pytest -q"
    assert (test["timeout"], test["cost"], test["priority"], test["retries"]["count"]) == (120.0, 30.0, 10, 2)
    assert test["env"] == {"A": "1"} and test["cwd"] == str(tmp_path)
    assert (build["limits"], test["limits"]) == ({}, {"memory": 2**30, "cpus": 0.5})  # bytes


def test_list_select_names_nothing_is_bad_input(tmp_path: Path) -> None:
    write(tmp_path / "phalanx.toml", '[tasks.a]\ncmd = "true"\ntags = ["lint"]\n')
    assert_bad_input(phalanx_cli("list", "--select", "tag:lnt", cwd=tmp_path), "--select tag:lnt: no tag 'lnt'")


# --- plurals --------------------------------------------------------------------------------


def test_plural() -> None:
    assert [plural(n, "task") for n in (0, 1, 2)] == ["0 tasks", "1 task", "2 tasks"]
    assert plural(1.5, "task") == "1.5 tasks"


def test_one_task_is_one_task(tmp_path: Path) -> None:
    write(tmp_path / "phalanx.toml", '[tasks.a]\ncmd = "true"\n')
    plan = phalanx_cli("plan", "-j", "1", cwd=tmp_path).stdout  # before any run: no duration known
    assert plan.startswith("Plan: 1 task, 1 level, 1 worker\n")
    assert "widest level: 0 (1 task)" in plan and "critical path (1 task)" in plan
    assert "durations: 0 declared, 0 from history, 1 unknown" in plan
    run = phalanx_cli("run", "-j", "1", cwd=tmp_path).stdout
    assert "Summary: 1 task in " in run and " on 1 worker: " in run
    assert "durations: 0 declared, 1 from history, 0 unknown" in phalanx_cli("plan", cwd=tmp_path).stdout
    dry = phalanx_cli("run", "--dry-run", "-j", "1", cwd=tmp_path).stdout
    assert dry.startswith("Would run 1 task on 1 worker,")
    assert phalanx_cli("list", cwd=tmp_path).stdout.endswith("\n1 task\n")


# --- docs -----------------------------------------------------------------------------------


def test_taskfile_reference_covers_every_key_and_is_linked() -> None:
    reference = (ROOT / "docs" / "taskfile.md").read_text()
    for key in (*_TASK_KEYS, "[defaults]", "[resources]", "{item}", "glob", "[tool.phalanx]"):
        assert f"`{key}" in reference or f"{key} =" in reference, key
    assert "docs/taskfile.md" in (ROOT / "README.md").read_text()


def test_an_item_inside_quotes_in_a_task_file_arrives_literally_and_never_runs(tmp_path: Path) -> None:
    # `{item}` inside single and double quotes is quoted for that context, as in `phalanx map`.
    (tmp_path / "phalanx.toml").write_text(
        "[tasks.single]\n"
        "cmd = \"printf '%s\\\\n' '<{item}>' >> out\"\n"
        "for_each = ['$(touch PWNED)', \"it's\", 'a b']\n"
        "[tasks.double]\n"
        "cmd = 'printf \"%s\\\\n\" \"<{item}>\" >> out'\n"
        "for_each = ['$(touch PWNED)', '`touch PWNED`', 'x\"y']\n"
    )
    done = subprocess.run([sys.executable, "-m", "phalanx", "run", "-j1"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert not (tmp_path / "PWNED").exists()
    assert sorted((tmp_path / "out").read_text().splitlines()) == sorted(
        ["<$(touch PWNED)>", "<it's>", "<a b>", "<$(touch PWNED)>", "<`touch PWNED`>", '<x"y>']
    )
