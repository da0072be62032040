"""Loading task files: every key into exact `Task` fields, and every bad input to one located line."""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

import pytest

from phalanx.config import TaskFile, find_task_file, load_task_file
from phalanx.errors import (
    ConfigError,
    CycleError,
    DuplicateTaskError,
    PhalanxError,
    ResourceError,
    UnknownDependencyError,
)
from phalanx.model import RetryPolicy, Task


def write(path: Path, *lines: str) -> Path:
    """Write ``lines`` as a file, so that line N of the file is ``lines[N - 1]``."""
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def load(tmp_path: Path, *lines: str) -> TaskFile:
    return load_task_file(write(tmp_path / "phalanx.toml", *lines))


# --- valid files ---------------------------------------------------------------------------


def test_every_key_becomes_the_exact_task_field(tmp_path: Path) -> None:
    task_file = load(
        tmp_path,
        "[defaults]",
        'timeout = "2m"',
        "retries = 1",
        'env = { SHARED = "d", OVERRIDE = "default" }',
        'tags = ["default"]',
        "",
        "[resources]",
        "db = 1",
        "cpu = 2.5",
        "",
        "[tasks.build]",
        'cmd = ["make", "all"]',
        "",
        "[tasks.black]",
        'cmd = "black --check src"',
        'deps = ["build"]',
        'priority = "high"',
        'timeout = "90s"',
        'retries = { count = 3, backoff = "constant", initial = "1s", max = "30s", jitter = 0.5, on_exit_codes = [1] }',
        "resources = { cpu = 1, db = 1, slots = 2 }",
        'env = { OVERRIDE = "task", OWN = "x" }',
        'cwd = "sub"',
        'tags = ["lint", "python"]',
        'cost = "1m30s"',
    )
    assert task_file.path == tmp_path / "phalanx.toml"
    assert dict(task_file.capacities) == {"db": 1.0, "cpu": 2.5}
    assert task_file.graph.ids == ["build", "black"]
    assert task_file.graph["black"] == Task(
        id="black",
        action="black --check src",
        deps=("build",),
        priority=10,
        resources={"cpu": 1.0, "db": 1.0, "slots": 2.0},
        timeout=90.0,
        retry=RetryPolicy(
            count=3, backoff="constant", initial=1.0, max=30.0, jitter=0.5, on_exit_codes=frozenset({1})
        ),
        env={"SHARED": "d", "OVERRIDE": "task", "OWN": "x"},
        cwd=str(tmp_path / "sub"),
        tags=frozenset({"default", "lint", "python"}),  # tags add up: the defaults' and the task's
        cost=90.0,
        group=None,
    )
    # Everything build does not set comes from [defaults]; cwd defaults to the file's directory.
    assert task_file.graph["build"] == Task(
        id="build",
        action=("make", "all"),
        timeout=120.0,
        retry=RetryPolicy(count=1),
        env={"SHARED": "d", "OVERRIDE": "default"},
        cwd=str(tmp_path),
        tags=frozenset({"default"}),
    )


def test_the_graph_is_checked_but_not_frozen(tmp_path: Path) -> None:
    task_file = load(tmp_path, "[tasks.a]", 'cmd = "true"')
    assert not task_file.graph.frozen  # the runner validates (and freezes) it at run start
    assert task_file.graph.validate() is task_file.graph


def test_defaults_merge_env_per_variable_and_task_keys_win(tmp_path: Path) -> None:
    task_file = load(
        tmp_path,
        "[defaults]",
        'timeout = "2m"',
        'priority = "low"',
        'env = { A = "from defaults", B = "from defaults" }',
        "[tasks.plain]",
        'cmd = "true"',
        "[tasks.special]",
        'cmd = "true"',
        "timeout = 5",
        "[tasks.special.env]",
        'B = "from task"',
        'C = "from task"',
    )
    plain, special = task_file.graph["plain"], task_file.graph["special"]
    assert (plain.timeout, plain.priority) == (120.0, -10)
    assert dict(plain.env) == {"A": "from defaults", "B": "from defaults"}
    assert (special.timeout, special.priority) == (5.0, -10)
    assert dict(special.env) == {"A": "from defaults", "B": "from task", "C": "from task"}


@pytest.mark.parametrize(
    ("written", "expected"), [('"high"', 10), ('"normal"', 0), ('"low"', -10), ('"HIGH"', 10), ("7", 7), ("-3", -3)]
)
def test_priority_names_and_numbers(tmp_path: Path, written: str, expected: int) -> None:
    task_file = load(tmp_path, "[tasks.a]", 'cmd = "true"', f"priority = {written}")
    assert task_file.graph["a"].priority == expected


@pytest.mark.parametrize(
    ("written", "expected"),
    [
        ("0", RetryPolicy()),
        ("2", RetryPolicy(count=2)),
        ("{ count = 2 }", RetryPolicy(count=2)),
        ('{ count = 1, backoff = "exponential", initial = 0.5, max = "1m" }', RetryPolicy(1, initial=0.5, max=60)),
        ("{ count = 4, jitter = true }", RetryPolicy(count=4, jitter=1.0)),
        ("{ count = 4, on_exit_codes = [75] }", RetryPolicy(count=4, on_exit_codes=frozenset({75}))),
    ],
)
def test_retries_as_an_integer_or_a_table(tmp_path: Path, written: str, expected: RetryPolicy) -> None:
    task_file = load(tmp_path, "[tasks.a]", 'cmd = "true"', f"retries = {written}")
    assert task_file.graph["a"].retry == expected


def test_retries_as_a_sub_table(tmp_path: Path) -> None:
    task_file = load(tmp_path, "[tasks.a]", 'cmd = "true"', "[tasks.a.retries]", "count = 2", 'backoff = "constant"')
    assert task_file.graph["a"].retry == RetryPolicy(count=2, backoff="constant")


def test_for_each_list_expands_into_one_task_per_item(tmp_path: Path) -> None:
    task_file = load(
        tmp_path,
        "[tasks.py]",
        'cmd = "tox -e {item}"',
        'for_each = ["py311", 312, 3.13]',
        'env = { PY = "{item}" }',
        'cwd = "build/{item}"',
        'tags = ["tox"]',
        "priority = 3",
    )
    graph = task_file.graph
    assert graph.ids == ["py[py311]", "py[312]", "py[3.13]"]
    for item in ("py311", "312", "3.13"):
        task = graph[f"py[{item}]"]
        assert task.action == f"tox -e {item}"
        assert task.group == "py"
        assert dict(task.env) == {"PY": item}
        assert task.cwd == str(tmp_path / "build" / item)
        assert (task.tags, task.priority) == (frozenset({"tox"}), 3)


def test_for_each_without_item_in_the_command_is_allowed(tmp_path: Path) -> None:
    task_file = load(tmp_path, "[tasks.t]", 'cmd = "make check"', 'for_each = ["a", "b"]', 'env = { WHICH = "{item}" }')
    assert [(t.id, t.action, dict(t.env)) for t in task_file.graph] == [
        ("t[a]", "make check", {"WHICH": "a"}),
        ("t[b]", "make check", {"WHICH": "b"}),
    ]


def test_for_each_glob_is_relative_to_the_file_and_sorted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "tests").mkdir()
    for name in ("test_b.py", "test_a.py", "helper.py", "test_c.txt"):
        (tmp_path / "tests" / name).write_text("")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # the glob follows the file, not the current directory
    task_file = load(tmp_path, "[tasks.test]", 'cmd = ["pytest", "{item}"]', 'for_each = { glob = "tests/test_*.py" }')
    assert task_file.graph.ids == ["test[tests/test_a.py]", "test[tests/test_b.py]"]
    assert task_file.graph["test[tests/test_a.py]"].action == ("pytest", "tests/test_a.py")
    assert task_file.line_of("test[tests/test_b.py]") == 1


NASTY = [
    "a b; touch pwned",
    "$(touch pwned)",
    "`touch pwned`",
    "it's \"quoted\"",
    "$HOME",
    "*",
    "new\nline",
    "-n",
    "tab\there && touch pwned || true",
]


@pytest.mark.parametrize("item", NASTY)
def test_for_each_items_are_shell_quoted_in_a_string_command(tmp_path: Path, item: str) -> None:
    task_file = load(tmp_path, "[tasks.say]", "cmd = \"printf '[%s]' {item}\"", f"for_each = [{_toml_string(item)}]")
    task = task_file.graph[f"say[{item}]"]
    assert task.action == f"printf '[%s]' {shlex.quote(item)}"
    assert isinstance(task.action, str)
    result = subprocess.run(["sh", "-c", task.action], cwd=tmp_path, capture_output=True, check=True)
    assert result.stdout == f"[{item}]".encode()  # one argument, byte for byte
    assert not (tmp_path / "pwned").exists()  # and nothing in it ran


@pytest.mark.parametrize("item", NASTY)
def test_for_each_items_go_verbatim_into_an_argv_command(tmp_path: Path, item: str) -> None:
    argv = 'cmd = ["printf", "[%s]", "{item}"]'
    task_file = load(tmp_path, "[tasks.say]", argv, f"for_each = [{_toml_string(item)}]")
    assert task_file.graph[f"say[{item}]"].action == ("printf", "[%s]", item)


def _toml_string(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\t", "\\t")
    return f'"{escaped}"'


def test_a_dependency_on_a_for_each_name_means_every_expansion(tmp_path: Path) -> None:
    task_file = load(
        tmp_path,
        "[tasks.test]",
        'cmd = "pytest {item}"',
        'for_each = ["a", "b", "c"]',
        "[tasks.report]",
        'cmd = "true"',
        'deps = ["test"]',
        "[tasks.first]",
        'cmd = "true"',
        'deps = ["test[a]"]',
    )
    assert task_file.graph["report"].deps == ("test[a]", "test[b]", "test[c]")
    assert task_file.graph["first"].deps == ("test[a]",)


def test_pyproject_tool_phalanx(tmp_path: Path) -> None:
    path = write(
        tmp_path / "pyproject.toml",
        "[project]",
        'name = "demo"',
        "[tool.phalanx.resources]",
        "db = 1",
        "[tool.phalanx.tasks.lint]",
        'cmd = "ruff check"',
        "[tool.phalanx.tasks.test]",
        'cmd = "pytest"',
        'deps = ["lint"]',
        "resources = { db = 1 }",
    )
    task_file = load_task_file(path)
    assert task_file.graph.ids == ["lint", "test"]
    assert task_file.graph["test"].deps == ("lint",)
    assert dict(task_file.capacities) == {"db": 1.0}
    assert (task_file.line_of("lint"), task_file.line_of("test", "deps")) == (5, 9)


def test_line_of_headers_keys_expansions_and_quoted_names(tmp_path: Path) -> None:
    task_file = load(
        tmp_path,
        "# a comment",
        '[tasks."a.b"]  # a dotted name',
        'cmd = """',
        "deps = not a key: this is inside a string",
        '"""',
        "deps = []",
        "[tasks.t]",
        'cmd = "x {item}"',
        'for_each = ["1", "2"]',
        "[tasks.t.env]",
        'X = "{item}"',
        "[tasks]",
        'dotted.cmd = "true"',
        'inline = { cmd = "true", deps = [] }',
    )
    assert task_file.line_of("a.b") == 2
    assert task_file.line_of("a.b", "deps") == 6
    assert task_file.line_of("a.b", "timeout") == 2  # not set: the header
    assert task_file.line_of("t[2]", "for_each") == 9
    assert task_file.line_of("t[1]", "env") == 10
    assert task_file.line_of("dotted") == 13
    assert task_file.line_of("inline", "deps") == 14  # inside an inline table: the table's line
    assert task_file.line_of("nope") is None


def test_find_task_file_prefers_phalanx_toml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path / "pyproject.toml", "[tool.phalanx.tasks.a]", 'cmd = "true"')
    assert find_task_file(tmp_path) == tmp_path / "pyproject.toml"
    write(tmp_path / "phalanx.toml", "[tasks.a]", 'cmd = "true"')
    assert find_task_file(tmp_path) == tmp_path / "phalanx.toml"
    monkeypatch.chdir(tmp_path)
    assert find_task_file() == Path("phalanx.toml")  # relative, so that errors read phalanx.toml:LINE


def test_find_task_file_ignores_a_pyproject_without_tool_phalanx(tmp_path: Path) -> None:
    (tmp_path / ".git").mkdir()  # the search goes no further up
    write(tmp_path / "pyproject.toml", "[project]", 'name = "x"', "[tool.ruff]", "line-length = 100")
    with pytest.raises(ConfigError, match=r"no phalanx.toml \(or \[tool.phalanx\] in pyproject.toml\) in "):
        find_task_file(tmp_path)


def test_find_task_file_picks_a_broken_pyproject_meant_for_phalanx(tmp_path: Path) -> None:
    path = write(tmp_path / "pyproject.toml", "[tool.phalanx.tasks.a]", 'cmd = "true')
    assert find_task_file(tmp_path) == path
    with pytest.raises(ConfigError) as caught:
        load_task_file(path)
    assert caught.value.line == 2


def test_pyproject_without_tool_phalanx_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path / "pyproject.toml", "[project]", 'name = "x"')
    with pytest.raises(ConfigError, match=r"pyproject.toml:1: no \[tool.phalanx\] table"):
        load_task_file(path)


# --- bad input: one located line each --------------------------------------------------------

TASK = ("[tasks.a]", 'cmd = "true"')  # lines 1-2 of many cases

# (name, file lines, expected line, error class, words in the message)
BAD: list[tuple[str, tuple[str, ...], int, type[PhalanxError], str]] = [
    ("cycle", ("[tasks.a]", 'cmd = "true"', 'deps = ["b"]', "[tasks.b]", 'cmd = "true"', 'deps = ["a"]'), 1,
     CycleError, "dependency cycle: a -> b -> a"),
    ("self-dependency", (*TASK, "", "[tasks.s]", 'cmd = "true"', 'deps = ["s"]'), 4, CycleError, "s -> s"),
    ("cycle through a group", ("[tasks.t]", 'cmd = "true"', 'for_each = ["x"]', 'deps = ["t"]'), 1,
     CycleError, "t[x] -> t[x]"),
    ("unknown dependency", (*TASK, "[tasks.b]", 'cmd = "true"', 'deps = ["aa"]'), 5,
     UnknownDependencyError, "task 'b' depends on unknown task 'aa' (did you mean 'a'?)"),
    ("unknown dependency near a group", ("[tasks.test]", 'cmd = "t"', 'for_each = ["1"]', "[tasks.r]", 'cmd = "r"',
     "", 'deps = ["tset"]'), 7, UnknownDependencyError, "did you mean 'test'?"),
    ("duplicate id via for_each", ("[tasks.t]", 'cmd = "echo {item}"', 'for_each = ["x", "y", "x"]'), 3,
     DuplicateTaskError, "task 't': for_each gives 'x' twice (duplicate task id 't[x]')"),
    ("duplicate id via a number", ("[tasks.t]", 'cmd = "echo {item}"', 'for_each = [1, "1"]'), 3,
     DuplicateTaskError, "duplicate task id 't[1]'"),
    ("unknown top-level table", (*TASK, "[task.b]", 'cmd = "true"'), 3,
     ConfigError, "unknown top-level key 'task' (did you mean 'tasks'?)"),
    ("unknown top-level key", ("verbose = true", *TASK), 1, ConfigError, "unknown top-level key 'verbose'"),
    ("unknown task key", (*TASK, 'dep = ["x"]'), 3, ConfigError, "task 'a': unknown key 'dep' (did you mean 'deps'?)"),
    ("unknown defaults key", ("[defaults]", 'timout = "1s"', *TASK), 2,
     ConfigError, "[defaults]: unknown key 'timout' (did you mean 'timeout'?)"),
    ("cmd in defaults", ("[defaults]", 'cmd = "x"', *TASK), 2, ConfigError, "[defaults]: 'cmd' can only be set"),
    ("bad duration", (*TASK, 'timeout = "5 parsecs"'), 3, ConfigError, "task 'a': timeout: '5 parsecs' is not a"),
    ("bad duration in defaults", ("[defaults]", "", 'timeout = "soon"', *TASK), 3, ConfigError, "[defaults]: timeout"),
    ("negative timeout", (*TASK, "timeout = -1"), 3, ConfigError, "task 'a': timeout: must be a non-negative"),
    ("boolean timeout", (*TASK, "timeout = true"), 3, ConfigError, "task 'a': timeout: expected a duration"),
    ("bad cost", (*TASK, 'cost = "1y"'), 3, ConfigError, "task 'a': cost"),
    ("negative retries", (*TASK, "retries = -2"), 3, ConfigError, "task 'a': retries: count must be a non-negative"),
    ("boolean retries", (*TASK, "retries = true"), 3, ConfigError, "retries must be an integer or a table"),
    ("bad backoff", (*TASK, 'retries = { count = 2, backoff = "fibonacci" }'), 3, ConfigError, "backoff"),
    ("unknown retries key", (*TASK, "[tasks.a.retries]", "count = 1", "cuont = 2"), 5,
     ConfigError, "retries: unknown key 'cuont' (did you mean 'count'?)"),
    ("retries without count", (*TASK, 'retries = { backoff = "constant" }'), 3, ConfigError, "missing 'count'"),
    ("jitter out of range", (*TASK, "retries = { count = 1, jitter = 2 }"), 3, ConfigError, "jitter"),
    ("exit codes not a list", (*TASK, "retries = { count = 1, on_exit_codes = 1 }"), 3, ConfigError, "on_exit_codes"),
    ("unknown resource", ("[resources]", "db = 1", *TASK, "resources = { dbb = 1 }"), 5,
     ResourceError, "task 'a' requests unknown resource 'dbb' (did you mean 'db'?); declared in [resources]: db"),
    ("oversize resource", ("[resources]", "db = 1", *TASK, "resources = { db = 2 }"), 5,
     ResourceError, "task 'a' requests db = 2 but the capacity of 'db' is 1"),
    ("oversize resource in a sub-table", ("[resources]", "db = 1", *TASK, "[tasks.a.resources]", "", "db = 1.5"), 7,
     ResourceError, "db = 1.5"),
    ("negative resource amount", (*TASK, "resources = { slots = -1 }"), 3, ConfigError, "non-negative number"),
    ("zero capacity", ("[resources]", "db = 0", *TASK), 2, ConfigError, "[resources]: 'db' must be a positive number"),
    ("boolean capacity", ("[resources]", "db = true", *TASK), 2, ConfigError, "positive number, got True"),
    ("slots declared as a resource", ("[resources]", "slots = 4", *TASK), 2, ConfigError, "-j"),
    ("malformed TOML", (*TASK, 'cwd = "sub'), 3, ConfigError, "invalid TOML: Illegal character"),
    ("unterminated multi-line string", ("[tasks.a]", 'cmd = """echo', "", "true"), 4,
     ConfigError, "invalid TOML: Unterminated string"),
    ("key set twice", (*TASK, 'cmd = "false"'), 3, ConfigError, "invalid TOML: Cannot overwrite a value"),
    ("glob matching nothing", ("[tasks.t]", 'cmd = "pytest {item}"', 'for_each = { glob = "tests/x_*.py" }'), 3,
     ConfigError, "task 't': for_each glob 'tests/x_*.py' matched no files"),
    ("empty for_each", ("[tasks.t]", 'cmd = "true"', "for_each = []"), 3, ConfigError, "empty list"),
    ("for_each of booleans", ("[tasks.t]", 'cmd = "true"', "for_each = [true]"), 3, ConfigError, "strings or numbers"),
    ("for_each as a string", ("[tasks.t]", 'cmd = "true"', 'for_each = "a b"'), 3, ConfigError, "must be a list"),
    ("for_each values table", ("[tasks.t]", 'cmd = "true"', "for_each = { values = [1] }"), 3, ConfigError, "'values'"),
    ("non-string env value", (*TASK, "env = { N = 1 }"), 3, ConfigError, "task 'a': env N must be a string, got 1"),
    ("non-string env value in a sub-table", (*TASK, "[tasks.a.env]", 'OK = "1"', "N = 1"), 5, ConfigError, "env N"),
    ("env not a table", (*TASK, 'env = "A=1"'), 3, ConfigError, "env must be a table"),
    ("empty cmd", ("[tasks.a]", "", 'cmd = "  "'), 3, ConfigError, "task 'a': cmd is empty"),
    ("empty argv", ("[tasks.a]", "cmd = []"), 2, ConfigError, "cmd must be a command string or a non-empty list"),
    ("cmd of the wrong type", ("[tasks.a]", "cmd = 42"), 2, ConfigError, "task 'a': cmd must be a command string"),
    ("argv with a number", ("[tasks.a]", 'cmd = ["sleep", 1]'), 2, ConfigError, "['sleep', 1]"),
    ("missing cmd", ("[tasks.a]", "timeout = 1"), 1, ConfigError, "task 'a': missing 'cmd'"),
    ("deps as a string", (*TASK, 'deps = "b"'), 3, ConfigError, "task 'a': deps must be a list of task names, got 'b'"),
    ("tags as a string", (*TASK, 'tags = "lint"'), 3, ConfigError, "tags must be a list of strings"),
    ("cwd not a string", (*TASK, "cwd = 1"), 3, ConfigError, "cwd must be a path string"),
    ("bad priority name", (*TASK, 'priority = "urgent"'), 3, ConfigError, "task 'a': priority: expected an integer"),
    ("boolean priority", (*TASK, "priority = false"), 3, ConfigError, "priority"),
    ("task name with brackets", (*TASK, '[tasks."b[1]"]', 'cmd = "true"'), 3, ConfigError, "'[' or ']'"),
    ("blank task name", (*TASK, '[tasks." "]', 'cmd = "true"'), 3, ConfigError, "must not be blank"),
    ("task that is not a table", ("[tasks]", 'a = "true"'), 2, ConfigError, "task 'a' must be a table"),
    ("no tasks", ("[defaults]", "timeout = 1"), 1, ConfigError, "no tasks"),
    ("error after a multi-line string", ("[tasks.a]", "cmd = '''", "tags = []", "'''", "tags = 1"), 5,
     ConfigError, "tags must be"),
]


@pytest.mark.parametrize(("name", "lines", "line", "kind", "words"), BAD, ids=[case[0] for case in BAD])
def test_bad_task_file(
    tmp_path: Path, name: str, lines: tuple[str, ...], line: int, kind: type[PhalanxError], words: str
) -> None:
    path = write(tmp_path / "phalanx.toml", *lines)
    assert_located(lambda: load_task_file(str(path)), str(path), line, kind, words)


def assert_located(call: object, file: str, line: int, kind: type[PhalanxError], words: str) -> None:
    assert callable(call)
    with pytest.raises(PhalanxError) as caught:
        call()
    error = caught.value
    assert type(error) is kind or (kind is ConfigError and isinstance(error, ConfigError)), repr(error)
    assert (error.file, error.line) == (file, line), str(error)
    text = str(error)
    assert "\n" not in text
    assert text.startswith(f"{file}:{line}: "), text
    assert words in text, text


def test_bad_key_in_pyproject_is_located(tmp_path: Path) -> None:
    path = write(tmp_path / "pyproject.toml", "[project]", 'name = "x"', "", "[tool.phalanx.tasks.a]", 'cmd = "true"',
                 "timeout = false")
    assert_located(lambda: load_task_file(path), str(path), 6, ConfigError, "task 'a': timeout")


def test_bad_key_in_a_quoted_name_is_located(tmp_path: Path) -> None:
    path = write(tmp_path / "phalanx.toml", *TASK, '[tasks."x.y"]', 'cmd = "true"', "priority = []")
    assert_located(lambda: load_task_file(path), str(path), 5, ConfigError, "task 'x.y': priority")


def test_not_utf8_names_the_line_of_the_bad_byte(tmp_path: Path) -> None:
    path = tmp_path / "phalanx.toml"
    path.write_bytes(b'[tasks.a]\ncmd = "caf\xe9"\n')
    assert_located(lambda: load_task_file(path), str(path), 2, ConfigError, "not UTF-8")


def test_a_utf8_bom_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "phalanx.toml"
    path.write_bytes(b'\xef\xbb\xbf[tasks.a]\ncmd = "true"\n')
    assert load_task_file(path).graph.ids == ["a"]


def test_missing_file(tmp_path: Path) -> None:
    path = str(tmp_path / "nope.toml")
    with pytest.raises(ConfigError) as caught:
        load_task_file(path)
    assert (caught.value.file, caught.value.line) == (path, None)
    assert str(caught.value) == f"{path}: no such file"


def test_a_directory_is_not_a_task_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_task_file(tmp_path)


def test_the_file_is_named_as_the_caller_gave_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path / "phalanx.toml", *TASK, "timeout = true")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=r"^phalanx.toml:3: "):
        load_task_file("phalanx.toml")
