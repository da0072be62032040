"""``phalanx pytest`` on small projects made in tmp_path, run as a user runs it: a subprocess.

Each project has its own ``pytest.ini``, so its directory is pytest's rootdir and this
repository's settings do not apply. Entry-point plugins are not loaded in them
(``PYTEST_DISABLE_PLUGIN_AUTOLOAD``): they would only slow every run down. Where the
answer is "as plain pytest does", plain ``python -m pytest`` runs on the same project and
the two are compared.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import coverage
import psutil
import pytest
from junitparser import JUnitXml

RUN_TIMEOUT = 60.0  # the bound on one whole invocation
WAIT = 10.0  # the bound on waiting for a killed process to be gone

PHALANX_PYTEST = (sys.executable, "-m", "phalanx", "pytest")
PLAIN_PYTEST = (sys.executable, "-m", "pytest")
NO_CACHE = ("-p", "no:cacheprovider")

INI = "[pytest]\npythonpath = .\n"


@dataclass(frozen=True, slots=True)
class Run:
    code: int
    out: str
    err: str

    @property
    def summary(self) -> dict[str, list[str]]:
        """``-rA``'s short summary: node ids by outcome (PASSED, FAILED, ERROR, SKIPPED...)."""
        found: dict[str, list[str]] = {}
        lines = self.out.splitlines()
        heading = [i for i, line in enumerate(lines) if "short test summary info" in line]
        for line in lines[heading[-1] + 1 :] if heading else []:
            match = re.match(r"(PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS) (?:\[\d+\] )?(\S+)", line)
            if match:
                found.setdefault(match[1], []).append(match[2])
        return found

    @property
    def counts(self) -> str:
        """The counts of pytest's last line without its timing: ``2 failed, 3 passed``."""
        last = self.out.strip().splitlines()[-1]
        match = re.fullmatch(r"=* ?(.*?) in [\d.]+s(?: \([^)]*\))? ?=*", last.strip())
        assert match is not None, f"not a counts line: {last!r}"
        return match[1]

    def explain(self) -> str:
        return f"exit {self.code}\n--- stdout\n{self.out}\n--- stderr\n{self.err}"


def environment(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment without what the outer pytest (or its own worker) set."""
    env = {
        key: value for key, value in os.environ.items()
        if not key.startswith(("PYTEST_", "PHALANX_", "COV_CORE_", "COVERAGE_"))
        and key not in ("PY_COLORS", "FORCE_COLOR", "NO_COLOR")
    }
    env["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"
    env["COLUMNS"] = "120"
    # Many short runs: share compiled bytecode, kept out of the projects.
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPYCACHEPREFIX"] = os.path.join(tempfile.gettempdir(), "phalanx-pytest-tests-pycache")
    env.update(extra or {})
    return env


class Started:
    """A command started in ``cwd``; `result` waits for it (bounded)."""

    def __init__(self, command: Sequence[str], cwd: Path, env: Mapping[str, str] | None = None) -> None:
        # pytest's temporary folders: in the project, not the shared /tmp; apart for each run.
        temproot = tempfile.mkdtemp(prefix=".temproot-", dir=cwd)
        self._process = subprocess.Popen(
            list(command), cwd=cwd, env=environment({"PYTEST_DEBUG_TEMPROOT": str(temproot), **(env or {})}),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )

    def result(self) -> Run:
        try:
            out, err = self._process.communicate(timeout=RUN_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.kill()
            out, err = self._process.communicate()
            pytest.fail(f"still running after {RUN_TIMEOUT:.0f}s\n--- stdout\n{out}\n--- stderr\n{err}")
        return Run(self._process.returncode, out, err)

    def kill(self) -> None:
        """The command and everything it started (forks are in process groups of their own)."""
        if self._process.poll() is not None:
            return  # ended: its pid is no longer its own
        with contextlib.suppress(psutil.NoSuchProcess):
            for process in [*psutil.Process(self._process.pid).children(recursive=True), self._process]:
                with contextlib.suppress(psutil.NoSuchProcess, ProcessLookupError):
                    process.kill()


def phalanx(cwd: Path, *args: str) -> Run:
    """``phalanx pytest ARGS`` in ``cwd``, to its end."""
    return Started([*PHALANX_PYTEST, *args], cwd).result()


def both(cwd: Path, phalanx_args: Sequence[str], plain_args: Sequence[str]) -> tuple[Run, Run]:
    """``phalanx pytest`` and plain ``python -m pytest`` on one project, at the same time: (phalanx's, plain's)."""
    ours = Started([*PHALANX_PYTEST, *phalanx_args], cwd)
    theirs = Started([*PLAIN_PYTEST, *plain_args], cwd)
    try:
        return ours.result(), theirs.result()
    finally:
        theirs.kill()  # only if ours did not end in time: a no-op once it has ended


def project(root: Path, files: Mapping[str, str]) -> Path:
    """Write a project: a ``pytest.ini`` and ``files`` (dedented) under ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "pytest.ini").write_text(INI, encoding="utf-8")
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip(), encoding="utf-8")
    return root


def records(directory: Path) -> dict[str, str]:
    """What the tests of a project wrote to ``results/``: file name -> text."""
    return {path.name: path.read_text(encoding="utf-8") for path in sorted(directory.glob("*"))}


# --------------------------------------------------------------------------- 1. segfault

CRASHY = {
    "test_a.py": """
        import os
        import signal
        from pathlib import Path

        def record_pid(name):
            results = Path(__file__).parent / "results"
            results.mkdir(exist_ok=True)
            (results / name).write_text(str(os.getpid()))

        def test_a_before():
            record_pid("before")

        def test_a_crash():
            os.kill(os.getpid(), signal.SIGSEGV)

        def test_a_after_1():
            record_pid("after_1")

        def test_a_after_2():
            record_pid("after_2")
        """,
    "test_b.py": """
        import pytest

        @pytest.fixture
        def broken():
            raise RuntimeError("cannot set up")

        def test_b_pass():
            pass

        def test_b_skip():
            pytest.skip("not today")

        def test_b_setup_error(broken):
            pass

        def test_b_pass_again():
            pass
        """,
}


@pytest.fixture(scope="module")
def crashy_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Run]:
    root = project(tmp_path_factory.mktemp("crashy"), CRASHY)
    result = phalanx(
        root, "-j", "2", "--junit-out", "reports/merged.xml",
        "--", *NO_CACHE, "-rA", "-p", "no:faulthandler", "--junitxml=reports/pytest.xml",
    )
    return root, result


def test_segfault_costs_only_the_test_that_crashed(crashy_run: tuple[Path, Run]) -> None:
    root, result = crashy_run
    assert result.code == 1, result.explain()
    assert "worker crashed: SIGSEGV while running test_a.py::test_a_crash" in result.out
    summary = result.summary
    assert summary["FAILED"] == ["test_a.py::test_a_crash"], result.explain()
    assert sorted(summary["PASSED"]) == [
        "test_a.py::test_a_after_1", "test_a.py::test_a_after_2", "test_a.py::test_a_before",
        "test_b.py::test_b_pass", "test_b.py::test_b_pass_again",
    ]
    assert summary["ERROR"] == ["test_b.py::test_b_setup_error"]
    assert result.counts == "1 failed, 5 passed, 1 skipped, 1 error"
    # The rest of the file ran in a fresh fork, together.
    pids = records(root / "results")
    assert pids["after_1"] == pids["after_2"] != pids["before"]


# --------------------------------------------------------------------------- 6. JUnit


@pytest.mark.parametrize("report", ["merged.xml", "pytest.xml"])
def test_junit_reports_count_crash_error_and_skip(crashy_run: tuple[Path, Run], report: str) -> None:
    """``--junit-out`` (phalanx's merged report) and pytest's own ``--junitxml``, passed through."""
    root, result = crashy_run
    xml = JUnitXml.fromfile(str(root / "reports" / report))
    suites = list(xml) if isinstance(xml, JUnitXml) else [xml]
    totals = {
        "tests": sum(suite.tests for suite in suites),
        "failures": sum(suite.failures for suite in suites),
        "errors": sum(suite.errors for suite in suites),
        "skipped": sum(suite.skipped for suite in suites),
    }
    assert totals == {"tests": 8, "failures": 1, "errors": 1, "skipped": 1}, result.explain()
    cases = {case.name: case for suite in suites for case in suite}
    assert len(cases) == 8
    crash = cases["test_a_crash"].result
    assert [type(outcome).__name__ for outcome in crash] == ["Failure"]
    assert "SIGSEGV" in (crash[0].message or "") + (crash[0].text or "")
    assert [type(outcome).__name__ for outcome in cases["test_b_setup_error"].result] == ["Error"]
    assert [type(outcome).__name__ for outcome in cases["test_b_skip"].result] == ["Skipped"]
    assert cases["test_a_after_2"].result == []


# --------------------------------------------------------------------------- 2. hang


def test_unit_timeout_kills_the_hanging_test_and_its_subprocess(tmp_path: Path) -> None:
    root = project(tmp_path, {
        "test_hang.py": """
            import os
            import subprocess
            import threading
            from pathlib import Path

            def test_first():
                pass

            def test_hangs():
                sleeper = subprocess.Popen(["sleep", "60"])
                (Path(__file__).parent / "pids").write_text(f"{os.getpid()} {sleeper.pid}")
                threading.Event().wait()

            def test_after():
                pass
            """,
        "test_other.py": """
            def test_other():
                pass
            """,
    })
    started = time.monotonic()
    result = phalanx(root, "-j", "2", "--unit-timeout", "1s", "--", *NO_CACHE, "-rA")
    assert time.monotonic() - started < 30
    assert result.code == 1, result.explain()
    assert "unit timeout (1.00s): killed while running test_hang.py::test_hangs" in result.out, result.explain()
    summary = result.summary
    assert summary["FAILED"] == ["test_hang.py::test_hangs"]
    assert sorted(summary["PASSED"]) == [
        "test_hang.py::test_after", "test_hang.py::test_first", "test_other.py::test_other",
    ]
    fork, sleeper = (int(pid) for pid in (root / "pids").read_text().split())
    assert not _alive(fork), "the fork that hung is still there"
    deadline = time.monotonic() + WAIT
    while _alive(sleeper) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(sleeper), "the hanging test's own subprocess outlived its fork"


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie nobody has reaped yet is gone: it runs nothing)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


# --------------------------------------------------------------------------- 3. isolation

STATEFUL = {
    "shared.py": """
        STATE: list[str] = []
        """,
    "test_s1.py": """
        import json
        from pathlib import Path

        import shared

        def record(name):
            results = Path(__file__).parent / "results"
            results.mkdir(exist_ok=True)
            (results / name).write_text(json.dumps(shared.STATE))
            shared.STATE.append(name)

        def test_one():
            record("s1.one")

        def test_two():
            record("s1.two")
        """,
    "test_s2.py": """
        from test_s1 import record

        def test_one():
            record("s2.one")

        def test_two():
            record("s2.two")
        """,
}


@pytest.mark.parametrize(
    ("isolate", "expected"),
    [
        ("file", {"s1.one": [], "s1.two": ["s1.one"], "s2.one": [], "s2.two": ["s2.one"]}),
        ("test", {"s1.one": [], "s1.two": [], "s2.one": [], "s2.two": []}),
    ],
    ids=["file", "test"],
)
def test_module_state_does_not_leak_between_units(tmp_path: Path, isolate: str, expected: dict[str, list[str]]) -> None:
    root = project(tmp_path, STATEFUL)
    result = phalanx(root, "-j", "2", "--isolate", isolate, "--", *NO_CACHE, "test_s1.py", "test_s2.py")
    assert result.code == 0, result.explain()
    seen = {name: json.loads(text) for name, text in records(root / "results").items()}
    assert seen == expected


def test_isolate_none_shares_module_state_across_files_on_one_fork(tmp_path: Path) -> None:
    """The difference ``--isolate none`` makes: one warm fork takes file after file."""
    root = project(tmp_path, STATEFUL)
    result = phalanx(root, "-j", "1", "--isolate", "none", "--", *NO_CACHE, "test_s1.py", "test_s2.py")
    assert result.code == 0, result.explain()
    seen = {name: json.loads(text) for name, text in records(root / "results").items()}
    first, second = ("s1", "s2") if seen["s1.one"] == [] else ("s2", "s1")
    assert seen[f"{first}.one"] == []
    assert seen[f"{second}.one"] == [f"{first}.one", f"{first}.two"]
    assert seen[f"{second}.two"] == [f"{first}.one", f"{first}.two", f"{second}.one"]


def test_threads_in_the_parent_mean_fresh_workers_instead_of_forks(tmp_path: Path) -> None:
    """A conftest that starts a thread at import: forking would copy a process whose other
    thread may hold a lock. phalanx says so, naming it, and runs the tests on fresh worker
    processes, one per slot, each collecting for itself (still reporting to the parent)."""
    root = project(tmp_path, {
        "conftest.py": """
            import threading

            threading.Thread(target=threading.Event().wait, name="started-at-import", daemon=True).start()
            """,
        "test_a.py": """
            import os
            from pathlib import Path

            def test_where():
                command = Path("/proc/self/cmdline").read_bytes().replace(b"\\0", b" ").decode()
                Path(f"pid-a-{os.getpid()}").write_text(f"{os.environ['PYTEST_XDIST_WORKER']} {command}")

            def test_fails():
                assert 1 == 2
            """,
        "test_b.py": """
            import os
            from pathlib import Path

            def test_where():
                command = Path("/proc/self/cmdline").read_bytes().replace(b"\\0", b" ").decode()
                Path(f"pid-b-{os.getpid()}").write_text(f"{os.environ['PYTEST_XDIST_WORKER']} {command}")
            """,
    })
    result = phalanx(root, "-j", "2", "--", *NO_CACHE, "-rA")
    assert result.code == 1, result.explain()
    assert "thread(s) running after collection (started-at-import)" in result.out
    assert "fresh worker process per slot" in result.out
    assert result.counts == "1 failed, 2 passed", result.explain()
    assert result.summary["FAILED"] == ["test_a.py::test_fails"]
    # Not forks of phalanx (whose command line they would share): fresh interpreters, one per
    # slot, with the xdist-style names of the two slots.
    workers = {path.name.split("-")[2]: path.read_text().split(" ", 1) for path in root.glob("pid-*")}
    assert len(workers) == 2, workers
    assert {name for name, _ in workers.values()} == {"gw0", "gw1"}
    assert all("-m phalanx.pytestrun.spawned" in command for _, command in workers.values()), workers


# --------------------------------------------------------------------------- 4, 11, 13: a healthy project

HEALTHY = {
    "conftest.py": """
        from pathlib import Path

        import pytest

        @pytest.fixture
        def record(request, tmp_path):
            results = Path(__file__).parent / "results"
            results.mkdir(exist_ok=True)
            name = request.node.nodeid.replace("/", "_").replace("::", "__")
            (results / name).write_text(str(tmp_path))
            return tmp_path
        """,
    "test_t1.py": """
        def test_writes(record):
            (record / "mine").write_text("t1")
        """,
    "test_t2.py": """
        def test_writes(record):
            (record / "mine").write_text("t2")

        def test_writes_again(record):
            (record / "mine").write_text("t2 again")
        """,
    "test_t3.py": """
        def test_writes(record):
            (record / "mine").write_text("t3")
        """,
    "test_env.py": """
        import os
        import re

        def test_xdist_compatible_environment():
            assert re.fullmatch(r"gw\\d+", os.environ["PYTEST_XDIST_WORKER"])
            assert os.environ["PHALANX_WORKER"].isdigit()
            assert os.environ["PYTEST_XDIST_WORKER_COUNT"] == "2"
            assert os.environ["PYTEST_XDIST_WORKER"] == f"gw{int(os.environ['PHALANX_WORKER']) - 1}"
        """,
    "test_async.py": """
        import asyncio

        async def answer():
            await asyncio.sleep(0)
            return await asyncio.gather(asyncio.sleep(0, result=4), asyncio.sleep(0.01, result=2))

        def test_asyncio_run_in_a_fork():
            assert asyncio._get_running_loop() is None
            assert asyncio.run(answer()) == [4, 2]
            assert asyncio.run(answer()) == [4, 2]  # twice: each run its own loop
        """,
}


@pytest.fixture(scope="module")
def healthy_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Run]:
    root = project(tmp_path_factory.mktemp("healthy"), HEALTHY)
    result = phalanx(root, "-j", "2", "--", *NO_CACHE, "-rA", f"--basetemp={root / '.basetemp'}")
    return root, result


def test_each_fork_has_its_own_tmp_path_under_one_basetemp(healthy_run: tuple[Path, Run]) -> None:
    root, result = healthy_run
    assert result.code == 0, result.explain()
    paths = [Path(text) for text in records(root / "results").values()]
    assert len(paths) == 4
    assert len(set(paths)) == 4
    basetemp = (root / ".basetemp").resolve()
    for path in paths:
        assert path.is_dir()
        assert path.resolve().is_relative_to(basetemp)
        assert path.resolve().parent.parent == basetemp  # <basetemp>/fork-<pid>/<test>
        assert re.fullmatch(r"fork-\d+", path.parent.name)
    # Three files, three forks (at least): the forks' folders are apart.
    assert len({path.parent for path in paths}) >= 3


def test_forks_see_xdist_compatible_environment(healthy_run: tuple[Path, Run]) -> None:
    _, result = healthy_run
    assert "test_env.py::test_xdist_compatible_environment" in result.summary["PASSED"], result.explain()


def test_asyncio_run_works_inside_a_fork(healthy_run: tuple[Path, Run]) -> None:
    _, result = healthy_run
    assert "test_async.py::test_asyncio_run_in_a_fork" in result.summary["PASSED"], result.explain()


# --------------------------------------------------------------------------- 5. -x


def test_exitfirst_stops_the_rest(tmp_path: Path) -> None:
    root = project(tmp_path, {
        "test_a_fails.py": """
            def test_pass():
                pass

            def test_fail():
                assert 1 == 2

            def test_after():
                pass
            """,
        "test_b.py": "def test_one():\n    pass\n\ndef test_two():\n    pass\n",
        "test_c.py": "def test_one():\n    pass\n\ndef test_two():\n    pass\n",
    })
    result = phalanx(root, "-j", "1", "--", *NO_CACHE, "-x", "-rA")
    assert result.code == 1, result.explain()
    assert "collected 7 items" in result.out
    assert "stopping after 1 failures" in result.out
    summary = result.summary
    assert summary == {"PASSED": ["test_a_fails.py::test_pass"], "FAILED": ["test_a_fails.py::test_fail"]}
    assert result.counts == "1 failed, 1 passed"


# --------------------------------------------------------------------------- 7. coverage

COVERED = {
    "pkg/__init__.py": "",
    "pkg/mod.py": """
        import os

        AT_IMPORT = os.sep * 2


        def for_the_fixture():
            return "fixture"


        def for_test_a():
            return "a"


        def for_test_b():
            value = "b"
            return value


        def never_called():
            return "never"
        """,
    "conftest.py": """
        import pytest

        from pkg import mod

        @pytest.fixture
        def prepared():
            return mod.for_the_fixture()
        """,
    "test_a.py": """
        from pkg import mod

        def test_a(prepared):
            assert prepared == "fixture"
            assert mod.for_test_a() == "a"
        """,
    "test_b.py": """
        from pkg.mod import for_test_b

        def test_b():
            assert for_test_b() == "b"
        """,
}


def test_combined_coverage_equals_plain_coverage_run(tmp_path: Path) -> None:
    root = project(tmp_path, COVERED)
    plain_run = Started(
        [sys.executable, "-m", "coverage", "run", "--source=pkg", "-m", "pytest", *NO_CACHE, "-q"], root,
        env={"COVERAGE_FILE": str(root / "plain.coverage")},
    )
    result = phalanx(root, "-j", "2", "--coverage=pkg", "--", *NO_CACHE, "-q")
    reference = plain_run.result()
    assert reference.code == 0, reference.explain()
    assert result.code == 0, result.explain()
    assert not list(root.glob(".coverage.*")), "the forks' data files were not combined away"
    ours, theirs = _executed(root / ".coverage"), _executed(root / "plain.coverage")
    assert ours == theirs
    mod = ours[str((root / "pkg" / "mod.py").resolve())]
    source = (root / "pkg" / "mod.py").read_text(encoding="utf-8").splitlines()
    ran = {source[line - 1].strip() for line in mod}
    assert {'AT_IMPORT = os.sep * 2', 'return "fixture"', 'return "a"', 'value = "b"'} <= ran
    assert 'return "never"' not in ran


def _executed(data_file: Path) -> dict[str, list[int]]:
    data = coverage.CoverageData(basename=str(data_file))
    data.read()
    return {str(Path(name).resolve()): sorted(data.lines(name) or []) for name in data.measured_files()}


# --------------------------------------------------------------------------- 8. --each

MUTANTS = {
    "calc/__init__.py": "from .core import add, clamp, discount, is_adult, mean, sign\n",
    "calc/core.py": """
        import os


        def gremlin(name):
            return os.environ.get("MUT") == name


        def add(a, b):
            if gremlin("g1"):
                return a - b
            return a + b


        def is_adult(age):
            if gremlin("g2"):
                return age > 18
            return age >= 18


        def clamp(x, lo, hi):
            if (x <= lo) if gremlin("g3") else (x < lo):  # equivalent: survives
                return lo
            if x > hi:
                return lo if gremlin("g4") else hi
            return x


        def mean(values):
            if gremlin("g5"):
                return sum(values) / (len(values) - 1)
            return sum(values) / len(values)


        def discount(price, percent):
            if not gremlin("g6") and not 0 <= percent <= 100:
                raise ValueError(percent)
            factor = (1 + percent / 100) if gremlin("g7") else (1 - percent / 100)
            return round(price * factor, 2)


        def sign(x):
            if x > 0:
                return 1
            if x < 0:
                return 1 if gremlin("g8") else -1  # never tried with a negative: survives
            return 0
        """,
    "test_calc.py": """
        import pytest

        from calc import add, clamp, discount, is_adult, mean, sign

        def test_add():
            assert add(2, 3) == 5

        def test_is_adult():
            assert is_adult(30)
            assert not is_adult(12)

        def test_is_adult_boundary():
            assert is_adult(18)

        def test_clamp_inside():
            assert clamp(5, 0, 10) == 5

        def test_clamp_below():
            assert clamp(-3, 0, 10) == 0
            assert clamp(0, 0, 10) == 0

        def test_clamp_above():
            assert clamp(42, 0, 10) == 10

        def test_mean():
            assert mean([1, 2, 3, 6]) == 3

        def test_discount():
            assert discount(80.0, 25) == 60.0

        def test_discount_rejects_bad_percent():
            with pytest.raises(ValueError):
                discount(10.0, 150)

        def test_sign():
            assert sign(7) == 1
            assert sign(0) == 0
        """,
}

ORDER = [
    "test_add", "test_is_adult", "test_is_adult_boundary", "test_clamp_inside", "test_clamp_below",
    "test_clamp_above", "test_mean", "test_discount", "test_discount_rejects_bad_percent", "test_sign",
]
KILLERS = {
    "g1": "test_add", "g2": "test_is_adult_boundary", "g3": None, "g4": "test_clamp_above", "g5": "test_mean",
    "g6": "test_discount_rejects_bad_percent", "g7": "test_discount", "g8": None,
}


def _table(out: str) -> dict[str, str]:
    """The killed/survived table: value -> killing node id, or "survived"."""
    section = out.split("phalanx: each MUT", 1)[1]
    table: dict[str, str] = {}
    for line in section.splitlines():
        if match := re.fullmatch(r"(g\d)\s+killed\s+(\S+)", line.strip()):
            table[match[1]] = match[2]
        elif match := re.fullmatch(r"(g\d)\s+survived\s+.*", line.strip()):
            table[match[1]] = "survived"
    return table


def _expected_table() -> dict[str, str]:
    return {value: f"test_calc.py::{test}" if test else "survived" for value, test in KILLERS.items()}


def _tests_run_per_value(report: Path) -> dict[str, int]:
    xml = JUnitXml.fromfile(str(report))
    suites = list(xml) if isinstance(xml, JUnitXml) else [xml]
    ran: dict[str, int] = {}
    for suite in suites:
        for case in suite:
            value = case.classname.split(".", 1)[0]
            ran[value] = ran.get(value, 0) + 1
    return ran


def test_each_value_gets_killed_or_survived(tmp_path: Path) -> None:
    root = project(tmp_path, MUTANTS)
    values = ",".join(KILLERS)
    result = phalanx(root, "-j", "2", f"--each=MUT={values}", "--junit-out", "junit.xml", "--", *NO_CACHE, "-q")
    assert result.code == 1, result.explain()
    assert _table(result.out) == _expected_table(), result.explain()
    assert "6 killed, 2 survived" in result.out
    assert _tests_run_per_value(root / "junit.xml") == {value: len(ORDER) for value in KILLERS}


def test_each_from_a_file_with_exitfirst_stops_each_value_at_its_first_failure(tmp_path: Path) -> None:
    root = project(tmp_path, {**MUTANTS, "values.txt": "# the gremlins\n" + "\n".join(KILLERS) + "\n"})
    result = phalanx(
        root, "-j", "2", "--each", "MUT=@values.txt", "--junit-out", "junit.xml", "--", *NO_CACHE, "-q", "-x",
    )
    assert result.code == 1, result.explain()
    assert _table(result.out) == _expected_table(), result.explain()
    expected_runs = {value: ORDER.index(test) + 1 if test else len(ORDER) for value, test in KILLERS.items()}
    assert _tests_run_per_value(root / "junit.xml") == expected_runs


# --------------------------------------------------------------------------- 9, 10: exit codes, counts

EXIT_CODES = {
    "test_ok.py": """
        def test_ok():
            pass
        """,
    "broken/test_broken.py": """
        raise RuntimeError("this module cannot be imported")
        """,
}


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("test_ok.py",), 0),
        ((".",), 2),  # broken/ raises at import: a collection error
        (("-k", "nomatch", "test_ok.py"), 5),
        (("--no-such-pytest-option", "test_ok.py"), 4),
    ],
    ids=["passed", "collection-error", "no-tests", "pytest-usage-error"],
)
def test_exit_code_is_pytests(tmp_path: Path, args: tuple[str, ...], expected: int) -> None:
    root = project(tmp_path, EXIT_CODES)
    result, reference = both(root, ["-j", "2", "--", *NO_CACHE, *args], [*NO_CACHE, *args])
    assert reference.code == expected, reference.explain()
    assert result.code == expected, result.explain()


def test_bad_phalanx_option_exits_4(tmp_path: Path) -> None:
    root = project(tmp_path, EXIT_CODES)
    result = phalanx(root, "--isolate", "bogus", "--", *NO_CACHE, "test_ok.py")
    assert result.code == 4, result.explain()
    assert "--isolate" in result.err


def test_counts_line_is_pytests(tmp_path: Path) -> None:
    root = project(tmp_path, {
        "test_mixed.py": """
            import warnings

            import pytest

            @pytest.fixture
            def broken():
                raise RuntimeError("setup")

            def test_warns():
                warnings.warn(UserWarning("careful"))

            def test_warns_too():
                warnings.warn(DeprecationWarning("old"))

            def test_pass():
                pass

            def test_fail():
                assert 1 == 2

            def test_skip():
                pytest.skip("not today")

            @pytest.mark.xfail
            def test_xfail():
                assert 0

            @pytest.mark.xfail
            def test_xpass():
                pass

            def test_error(broken):
                pass

            def test_deselected():
                pass
            """,
        "test_more.py": """
            import pytest

            @pytest.mark.parametrize("n", range(3))
            def test_param(n):
                assert n < 2
            """,
    })
    args = (*NO_CACHE, "-k", "not deselected")
    # A fork of its own for each test: later forks start after earlier ones' warnings were heard.
    result, reference = both(root, ["-j", "2", "--isolate", "test", "--", *args], args)
    assert reference.code == result.code == 1, result.explain()
    assert reference.counts == (
        "2 failed, 5 passed, 1 skipped, 1 deselected, 1 xfailed, 1 xpassed, 2 warnings, 1 error"
    )
    assert result.counts == reference.counts, result.explain()


# --------------------------------------------------------------------------- 12. --lf


def test_last_failed_reruns_only_the_failure(tmp_path: Path) -> None:
    root = project(tmp_path, {
        "test_x.py": """
            def test_ok():
                pass

            def test_bad():
                assert 1 == 2
            """,
        "test_y.py": """
            def test_ok_too():
                pass
            """,
    })
    first = phalanx(root, "-j", "2", "--", "-rA")
    assert first.code == 1, first.explain()
    again = phalanx(root, "-j", "2", "--", "-rA", "--lf")
    assert again.code == 1, again.explain()
    assert "run-last-failure: rerun previous 1 failure" in again.out
    assert again.summary == {"FAILED": ["test_x.py::test_bad"]}, again.explain()
