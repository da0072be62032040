"""``phalanx pytest`` on real test suites, next to plain pytest, xdist, GNU parallel and pytest-forked.

Three suites, each run by every row below in the same run:

* ``attrs`` 26.1.0, the real test suite from its sdist: 1,385 tests in 24 files, most of the
  time in Hypothesis property tests (two files, ``test_make.py`` and ``test_funcs.py``, take
  about 70% of it). Selection (every row): ``--hypothesis-seed=0`` and a small plugin of
  this script's (``-p phalanx_bench_hypothesis``, written into the venv) that turns off
  Hypothesis's deadline (attrs sets 400 ms per example, which a loaded machine exceeds now
  and then: a failure at random) and its example database, so that every row and every round
  runs the same examples and the counts can be compared; and ``--deselect
  tests/test_converters.py::TestPipe::test_wrapped_annotation``, which fails with this release
  on CPython 3.11 (an annotation-introspection difference, whatever runs it).
* ``boltons`` 26.2.0, the real test suite from its sdist: 519 tests in 29 files, no
  test dependency but pytest; many small files, so the per-process cost of a file dominates.
  Selection: the ``tests`` directory (the sdist has no ``testpaths``); nothing deselected:
  its tests need no network (its socket tests use ``socket.socketpair()``).
* ``generated``: a package written by this script whose import burns about 1 s of CPU (a
  calibrated loop that builds a table: CPU work, as a large real package spends its import,
  not a ``time.sleep``; the measured import time is printed), and 20 test files of 20 tests
  each that import it (parametrized lookups, a few milliseconds of CPU each, a ``tmp_path``
  test, a conftest fixture and one skipped test per file).

The rows, at J workers (``-j``, default 2), every one a subprocess timed from start to exit,
in the suite's directory, with the same pytest arguments (the suite's selection, plus
``-p no:cacheprovider -o junit_family=xunit2``):

* ``pytest``: plain pytest, one process;
* ``pytest -n J``: pytest-xdist, the reference of the ratios;
* ``GNU parallel``: ``parallel -j J 'python -m pytest ... {}' ::: <files>``, one process per
  test file (the files pytest collects, in collection order);
* ``phalanx map``: the same command, ``phalanx map -j J '...' ::: <files>``;
* ``phalanx pytest --isolate file`` and ``--isolate test``: ``phalanx pytest -j J --isolate
  MODE --junit-out FILE -- <pytest args>``, collection in one warm process and a fork of it
  per file (per test);
* ``pytest -n J --forked``: xdist with pytest-forked, a fork per test.

Counts (tests, failed, errors, skipped) are read from the JUnit XML each row writes (one file
per process for the per-file rows, added up), with an XML parser: a ``testcase`` element is a
test, and one holding a ``failure``, ``error`` or ``skipped`` element counts as such (xfail
counts as skipped). A row whose tool is missing (GNU parallel, or ``phalanx pytest`` before it
exists: ``python -m phalanx pytest --help`` fails) prints ``n/a`` and the reason.

The environment lives in a cache directory outside the repository
(``$XDG_CACHE_HOME/phalanx-bench-suites``, else ``~/.cache/phalanx-bench-suites``; ``--cache``),
made on first use and reused: the sdists (``pip download --no-binary :all: --no-deps``),
unpacked; one clean venv per suite with the exact versions pinned below (pytest,
pytest-xdist, pytest-forked, the suite's test dependencies, the project installed from its
sdist, phalanx's own dependencies), and phalanx from this checkout through a ``.pth`` file
naming its ``src`` (the code as it is now, never a stale copy); a venv is rebuilt when what
it should hold changes. Every command runs with Python's bytecode cache on, in the cache
(``PYTHONDONTWRITEBYTECODE`` removed, ``PYTHONPYCACHEPREFIX`` set: nothing is written into
the repository), warmed by an untimed ``pytest --collect-only`` that also lists the files.
``PYTEST_ADDOPTS`` and ``PYTHONPATH`` are removed. phalanx's run journal (``.phalanx/`` in
the suite's directory) is emptied once at start, so the rounds after the first see the
history of the earlier ones, as repeated runs of a suite do.

Each round runs every row once per suite, the rows in an order rotated from round to round;
the table shows the median wall time of the rounds, the fastest round, each row's median over
xdist's, the median CPU time (user + system) of the row's processes (RUSAGE_CHILDREN), and the
counts. Targets, at J = 2, on the medians:

* ``--isolate file`` at most 0.9x ``pytest -n J``, on every real suite;
* ``--isolate file`` counts equal to the one-process-per-file counts (``phalanx map`` and
  GNU parallel);
* ``--isolate test`` no slower than ``pytest -n J --forked`` (the ratio is printed).

The exit status is 0 whether or not the targets are met (this is a report); it is 1 if a row
fails to run (no JUnit output, a per-file process without its JUnit file, a time-out) or the
environment cannot be built. Each run's output goes to a log in a temp directory, removed at
the end unless a row failed to run or a run had failed tests or errors: then the directory is
kept and the logs' paths are printed.

Run it from the repository root (the first run downloads the sdists and builds the venvs
from PyPI, a minute or two; a full run takes 25 to 40 minutes on 2 cores, most of it attrs'
per-file and per-test rows)::

    python benchmarks/pytest_suites.py                    # every suite, 3 rounds
    python benchmarks/pytest_suites.py --quick            # the generated suite, 1 round: a smoke test
    python benchmarks/pytest_suites.py --suite boltons --rounds 5 -j 2
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import tomllib
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

#: What every suite's venv holds besides the suite's own test dependencies (exact versions).
TOOL_PINS = ("pytest==9.0.3", "pytest-xdist==3.8.0", "pytest-forked==1.7.5", "execnet==2.1.2",
             "pluggy==1.7.0", "iniconfig==2.3.1", "packaging==26.4", "pygments==2.21.0")
#: pytest arguments of every row, after the suite's own.
COMMON_ARGS = ("-p", "no:cacheprovider", "-o", "junit_family=xunit2")
TARGET_FILE_VS_XDIST = 0.9
IMPORT_SECONDS = 1.0  # the generated package's import, in CPU seconds
GENERATED_FILES, GENERATED_LOOKUPS = 20, 12  # 12 lookups + 5 checksums + 3 others = 20 tests a file
GENERATED_VERSION = 1  # bump when the generated suite's source changes
TIMEOUT = 1800.0  # seconds, per command


@dataclass(frozen=True, slots=True)
class Suite:
    """A test suite: where it comes from, what its venv needs, which tests every row runs."""

    name: str
    sdist: tuple[str, str] | None  # (project, version) on PyPI; None: generated here
    test_deps: tuple[str, ...]
    paths: tuple[str, ...]  # what the whole-suite rows are given (empty: the ini's testpaths)
    selection: tuple[str, ...]  # pytest arguments of every row (deselections and the like)
    about: str
    plugins: tuple[tuple[str, str], ...] = ()  # (module, source) written into the venv, for -p


HYPOTHESIS_PLUGIN = '''\
"""Written by benchmarks/pytest_suites.py, loaded with -p: Hypothesis without its deadline
(attrs' conftest sets 400 ms, which a loaded 2-core machine exceeds now and then, failing a
test at random) and without its example database (every run the same examples: with
--hypothesis-seed, the same work in every row and every round)."""

import pytest


@pytest.hookimpl(trylast=True)
def pytest_configure(config):
    from hypothesis import settings

    settings.register_profile("phalanx-bench", settings(settings.default, deadline=None, database=None))
    settings.load_profile("phalanx-bench")


def pytest_report_header(config):
    from hypothesis import settings

    return f"phalanx-bench: hypothesis deadline={settings.default.deadline}, database={settings.default.database}"
'''

SUITES = {
    "attrs": Suite(
        "attrs", ("attrs", "26.1.0"),
        ("hypothesis==6.155.2", "cloudpickle==3.1.2", "pympler==1.1", "sortedcontainers==2.4.0"),
        (),
        ("-p", "phalanx_bench_hypothesis", "--hypothesis-seed=0",
         "--deselect", "tests/test_converters.py::TestPipe::test_wrapped_annotation"),
        "Hypothesis seeded, no deadline, no example database (the same examples every run); "
        "test_wrapped_annotation deselected (fails with this release on CPython 3.11)",
        (("phalanx_bench_hypothesis", HYPOTHESIS_PLUGIN),),
    ),
    "boltons": Suite(
        "boltons", ("boltons", "26.2.0"), (), ("tests",), (),
        "the tests directory, nothing deselected (no test needs the network)",
    ),
    "generated": Suite(
        "generated", None, (), (), (),
        f"a package whose import takes ~{IMPORT_SECONDS:g} s of CPU, {GENERATED_FILES} files of 20 tests",
    ),
}


class BenchFailed(Exception):
    """The environment could not be built, or a row failed to run."""


# --------------------------------------------------------------------- the environment

#: The environment of every command: bytecode cached in the cache directory. `main` fills it in.
ENV: dict[str, str] = {}


def cache_root(explicit: str | None) -> Path:
    if explicit:
        return Path(explicit).resolve()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "phalanx-bench-suites"


def _run(argv: Sequence[str], what: str, cwd: Path | None = None) -> str:
    """Run a set-up command; its output, or BenchFailed with the end of it."""
    done = subprocess.run(list(argv), cwd=cwd, env=ENV, capture_output=True, text=True, check=False,
                          stdin=subprocess.DEVNULL)
    if done.returncode:
        tail = (done.stdout + done.stderr).strip()[-2000:]
        raise BenchFailed(f"{what}: exit status {done.returncode}:\n{tail}")
    return done.stdout


def phalanx_dependencies() -> list[str]:
    """phalanx's runtime dependencies, as this checkout's pyproject.toml declares them."""
    with open(REPO / "pyproject.toml", "rb") as f:
        return list(tomllib.load(f)["project"]["dependencies"])


def sdist_path(cache: Path, project: str, version: str) -> Path:
    """The project's sdist in the cache, downloaded from PyPI on first use."""
    directory = cache / "sdists"
    stem = f"{project.replace('-', '_')}-{version}"
    for found in sorted(directory.glob("*.tar.gz")):
        if found.name.lower() == f"{stem}.tar.gz".lower():
            return found
    directory.mkdir(parents=True, exist_ok=True)
    print(f"downloading the {project} {version} sdist", file=sys.stderr)
    _run([sys.executable, "-m", "pip", "download", "--quiet", "--no-binary", ":all:", "--no-deps",
          "-d", str(directory), f"{project}=={version}"], f"pip download {project}=={version}")
    for found in sorted(directory.glob("*.tar.gz")):
        if found.name.lower() == f"{stem}.tar.gz".lower():
            return found
    raise BenchFailed(f"pip download {project}=={version}: no {stem}.tar.gz in {directory}")


def unpack(sdist: Path, into: Path) -> Path:
    """The sdist unpacked under ``into`` (once; reused), its top directory."""
    with tarfile.open(sdist) as tar:
        top = tar.getnames()[0].split("/")[0]
        target = into / top
        if not (target / ".unpacked").exists():
            shutil.rmtree(target, ignore_errors=True)
            into.mkdir(parents=True, exist_ok=True)
            tar.extractall(into, filter="data")
            (target / ".unpacked").touch()
    return target


def venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def ensure_venv(cache: Path, suite: Suite) -> Path:
    """The suite's venv, (re)built when what it should hold changed; its python."""
    venv = cache / "venvs" / suite.name
    sdist = sdist_path(cache, *suite.sdist) if suite.sdist else None
    spec = {
        "python": sys.version,
        "base": sys.base_prefix,
        "tools": TOOL_PINS,
        "test_deps": suite.test_deps,
        "phalanx_deps": phalanx_dependencies(),
        "sdist": sdist.name if sdist else None,
        "phalanx_src": str(REPO / "src"),
    }
    stamp = venv / "phalanx-bench.json"
    if stamp.exists() and json.loads(stamp.read_text()) == json.loads(json.dumps(spec)):
        _write_plugins(venv_python(venv), suite)
        return venv_python(venv)
    print(f"building the {suite.name} venv in {venv}", file=sys.stderr)
    shutil.rmtree(venv, ignore_errors=True)
    _run([sys.executable, "-m", "venv", str(venv)], f"python -m venv {venv}")
    python = str(venv_python(venv))
    pip = [python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    _run([*pip, *TOOL_PINS, *suite.test_deps, *spec["phalanx_deps"]], f"{suite.name} venv: pip install")
    if sdist:
        # Built from the sdist (build isolation fetches its build backend), without its dependencies.
        _run([*pip, "--no-deps", str(sdist)], f"{suite.name} venv: pip install {sdist.name}")
    # phalanx as it is in this checkout now, without copying it (so never stale).
    (_purelib(venv_python(venv)) / "phalanx_checkout.pth").write_text(f"{REPO / 'src'}\n")
    _run([python, "-c", "import phalanx, xdist, pytest_forked"], f"{suite.name} venv: import check")
    stamp.write_text(json.dumps(spec, indent=1))
    _write_plugins(venv_python(venv), suite)
    return venv_python(venv)


def _purelib(python: Path) -> Path:
    return Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                     "purelib").strip())


def _write_plugins(python: Path, suite: Suite) -> None:
    """The suite's own pytest plugins (loaded with -p by every row), as this script has them now."""
    if suite.plugins:
        purelib = _purelib(python)
        for module, source in suite.plugins:
            path = purelib / f"{module}.py"
            if not path.exists() or path.read_text() != source:
                path.write_text(source)


# -------------------------------------------------------------------- generated suite

HEAVY_SOURCE = '''\
"""Generated by benchmarks/pytest_suites.py: importing this package takes about {seconds:g} s of CPU.

The import builds a table in a calibrated loop (CPU work, as a large package spends its
import time; not a sleep); the tests call the small functions below.
"""

_acc = 0
_table = []
for _i in range({loops}):
    _acc = (_acc * 1103515245 + _i) & 0xFFFFFFFF
    if not _i % 16:
        _table.append(_acc)
TABLE = tuple(_table)
del _table


def lookup(position):
    return TABLE[position % len(TABLE)]


def checksum(seed, rounds=20_000):
    acc = seed
    for _ in range(rounds):
        acc = (acc * 1103515245 + 12345) & 0xFFFFFFFF
    return acc
'''

CONFTEST_SOURCE = '''\
"""Generated by benchmarks/pytest_suites.py."""

import pytest

import heavypkg


@pytest.fixture
def table():
    return heavypkg.TABLE
'''

TEST_SOURCE = '''\
"""Generated by benchmarks/pytest_suites.py: part {part} of the generated suite."""

import pytest

import heavypkg


@pytest.mark.parametrize("position", range({lookups}))
def test_lookup(position):
    assert heavypkg.lookup(position + {part}) == heavypkg.TABLE[(position + {part}) % len(heavypkg.TABLE)]

{checksums}

def test_tmp_path(tmp_path):
    path = tmp_path / "part{part}.txt"
    path.write_text(str(heavypkg.lookup({part})))
    assert int(path.read_text()) == heavypkg.TABLE[{part}]


def test_fixture(table):
    assert table is heavypkg.TABLE


@pytest.mark.skip(reason="a skipped test, to be counted")
def test_skipped():
    raise AssertionError
'''


def _checksum(seed: int, rounds: int = 20_000) -> int:
    """The generated package's ``checksum``, to write the expected values into the tests."""
    acc = seed
    for _ in range(rounds):
        acc = (acc * 1103515245 + 12345) & 0xFFFFFFFF
    return acc


def _write_generated(directory: Path, loops: int) -> None:
    shutil.rmtree(directory, ignore_errors=True)
    (directory / "heavypkg").mkdir(parents=True)
    (directory / "tests").mkdir()
    (directory / "pyproject.toml").write_text(
        '[tool.pytest.ini_options]\npythonpath = ["."]\ntestpaths = ["tests"]\n')
    (directory / "heavypkg" / "__init__.py").write_text(HEAVY_SOURCE.format(seconds=IMPORT_SECONDS, loops=loops))
    (directory / "tests" / "conftest.py").write_text(CONFTEST_SOURCE)
    for part in range(GENERATED_FILES):
        checksums = "\n".join(
            f"def test_checksum_{n}():\n    assert heavypkg.checksum({part * 10 + n}) == {_checksum(part * 10 + n)}\n"
            for n in range(5))
        (directory / "tests" / f"test_part_{part:02}.py").write_text(
            TEST_SOURCE.format(part=part, lookups=GENERATED_LOOKUPS, checksums=checksums))


def import_seconds(python: Path, directory: Path) -> float:
    """CPU seconds of ``import heavypkg`` in a fresh interpreter (median of 3)."""
    probe = "import time; t = time.process_time(); import heavypkg; print(time.process_time() - t)"
    return statistics.median(float(_run([str(python), "-c", probe], "import heavypkg", cwd=directory))
                             for _ in range(3))


def ensure_generated(cache: Path, python: Path) -> tuple[Path, float]:
    """The generated suite (written and calibrated once, recalibrated if its import time drifted
    by more than a third); its directory and the measured import time."""
    directory = cache / "generated"
    stamp = directory / "generated.json"
    if stamp.exists():
        saved = json.loads(stamp.read_text())
        if saved.get("version") == GENERATED_VERSION and saved.get("python") == sys.version:
            seconds = import_seconds(python, directory)
            if abs(seconds - IMPORT_SECONDS) <= IMPORT_SECONDS / 3:
                return directory, seconds
    print(f"writing the generated suite in {directory} (calibrating its import)", file=sys.stderr)
    loops = 2_000_000
    for _ in range(3):
        _write_generated(directory, loops)
        loops = max(1, int(loops * IMPORT_SECONDS / import_seconds(python, directory)))
    _write_generated(directory, loops)
    stamp.write_text(json.dumps({"version": GENERATED_VERSION, "python": sys.version, "loops": loops}))
    return directory, import_seconds(python, directory)


# ------------------------------------------------------------------------------ rows


@dataclass(frozen=True, slots=True)
class Counts:
    tests: int
    failed: int
    errors: int
    skipped: int

    def __str__(self) -> str:
        return f"{self.tests} tests, {self.failed} failed, {self.errors} errors, {self.skipped} skipped"


def read_junit(paths: Sequence[Path]) -> Counts:
    """Counts from JUnit XML files, added up: every ``testcase`` element is a test."""
    tests = failed = errors = skipped = 0
    for path in paths:
        for case in ET.parse(path).getroot().iter("testcase"):
            tags = {child.tag for child in case}
            tests += 1
            failed += "failure" in tags
            errors += "error" in tags
            skipped += "skipped" in tags
    return Counts(tests, failed, errors, skipped)


@dataclass(frozen=True, slots=True)
class Target:
    """Where one run of one row happens: its suite, its files, a fresh output directory."""

    python: Path
    cwd: Path
    suite: Suite
    files: tuple[str, ...]
    out: Path  # a fresh directory for this run's JUnit file(s)
    jobs: int

    def pytest_args(self) -> list[str]:
        return [*self.suite.selection, *COMMON_ARGS]


@dataclass(frozen=True, slots=True)
class Row:
    """A way to run a suite: its command, and whether its JUnit output is one file per test file."""

    label: str
    command: Callable[[Target], list[str]]
    per_file: bool = False
    needs: str | None = None  # "parallel" or "phalanx pytest": checked before the rounds


def _pytest(target: Target, *extra: str) -> list[str]:
    return [str(target.python), "-m", "pytest", *extra, *target.pytest_args(),
            f"--junitxml={target.out / 'junit.xml'}", *target.suite.paths]


def _per_file_command(target: Target) -> str:
    """The per-file job, one shell command: GNU parallel and phalanx map put the file at {}."""
    return shlex.join([str(target.python), "-m", "pytest", *target.pytest_args()]) + \
        f" --junitxml={shlex.quote(str(target.out))}/{{#}}.xml {{}}"


def _phalanx_pytest(isolate: str) -> Callable[[Target], list[str]]:
    def command(target: Target) -> list[str]:
        return [str(target.python), "-m", "phalanx", "pytest", "-j", str(target.jobs), "--isolate", isolate,
                "--junit-out", str(target.out / "junit.xml"), "--", *target.pytest_args(), *target.suite.paths]

    return command


PLAIN, XDIST, PARALLEL, MAP, ISOLATE_FILE, ISOLATE_TEST, FORKED = (
    "pytest", "pytest -n J", "GNU parallel, per file", "phalanx map, per file",
    "phalanx pytest --isolate file", "phalanx pytest --isolate test", "pytest -n J --forked")

ROWS = (
    Row(PLAIN, lambda t: _pytest(t)),
    Row(XDIST, lambda t: _pytest(t, "-n", str(t.jobs))),
    Row(PARALLEL, lambda t: ["parallel", "--will-cite", "-j", str(t.jobs), _per_file_command(t), ":::", *t.files],
        per_file=True, needs="parallel"),
    Row(MAP, lambda t: [str(t.python), "-m", "phalanx", "map", "-j", str(t.jobs), _per_file_command(t),
                        ":::", *t.files], per_file=True),
    Row(ISOLATE_FILE, _phalanx_pytest("file"), needs="phalanx pytest"),
    Row(ISOLATE_TEST, _phalanx_pytest("test"), needs="phalanx pytest"),
    Row(FORKED, lambda t: _pytest(t, "-n", str(t.jobs), "--forked")),
)


def label(row: str, jobs: int) -> str:
    return row.replace(" J", f" {jobs}")


def unavailable(python: Path) -> dict[str, str]:
    """Why a tool cannot run, by the name rows give in ``needs``."""
    reasons: dict[str, str] = {}
    parallel = shutil.which("parallel")
    if parallel is None:
        reasons["parallel"] = "GNU parallel is not installed (apt-get install parallel)"
    else:
        version = subprocess.run([parallel, "--version"], capture_output=True, text=True, check=False,
                                 stdin=subprocess.DEVNULL)
        if "GNU parallel" not in version.stdout:
            reasons["parallel"] = f"{parallel} is not GNU parallel (moreutils' parallel?)"
    probe = subprocess.run([str(python), "-m", "phalanx", "pytest", "--help"], capture_output=True, text=True,
                           env=ENV, check=False, stdin=subprocess.DEVNULL)
    if probe.returncode:
        said = (probe.stderr.strip().splitlines() or [""])[-1]
        reasons["phalanx pytest"] = (f"`phalanx pytest` is not available yet (python -m phalanx pytest --help: "
                                     f"exit {probe.returncode}: {said})")
    return reasons


# ------------------------------------------------------------------------- measuring


@dataclass(frozen=True, slots=True)
class Run:
    wall: float
    cpu: float
    status: int
    counts: Counts
    log: Path  # the command's output


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_row(row: Row, target: Target, log: Path) -> Run:
    """Run one row once, timed from start to exit; its counts from its JUnit output."""
    argv = row.command(target)
    cpu = _children_cpu()
    started = time.perf_counter()
    with open(log, "wb") as output:
        output.write(f"$ {' '.join(argv)}\n".encode())
        output.flush()
        process = subprocess.Popen(argv, cwd=target.cwd, env=ENV, stdin=subprocess.DEVNULL, stdout=output,
                                   stderr=subprocess.STDOUT, start_new_session=True)
        try:
            status = process.wait(TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)  # its own session: the row's processes only
            process.wait()
            raise BenchFailed(f"{row.label}: timed out after {TIMEOUT:g} s; output in {log}") from None
    wall = time.perf_counter() - started
    cpu = _children_cpu() - cpu
    if row.per_file:
        expected = [target.out / f"{number}.xml" for number in range(1, len(target.files) + 1)]
        missing = [path.name for path in expected if not path.exists()]
        if missing:
            raise BenchFailed(f"{row.label}: exit status {status}, {len(missing)} of {len(expected)} per-file "
                              f"JUnit files missing ({', '.join(missing[:5])}...); output in {log}")
        paths = expected
    else:
        paths = [target.out / "junit.xml"]
        if not paths[0].exists():
            raise BenchFailed(f"{row.label}: exit status {status}, no JUnit file; output in {log}")
    try:
        counts = read_junit(paths)
    except ET.ParseError as error:
        raise BenchFailed(f"{row.label}: unreadable JUnit XML ({error}); output in {log}") from None
    if counts.tests == 0:
        raise BenchFailed(f"{row.label}: exit status {status}, no test in its JUnit output; output in {log}")
    return Run(wall, cpu, status, counts, log)


@dataclass(slots=True)
class Prepared:
    """A suite ready to run: its venv's python, its directory, its files, notes for the report."""

    suite: Suite
    python: Path
    cwd: Path
    files: tuple[str, ...]
    version: str
    notes: list[str] = field(default_factory=list)


def collect_files(python: Path, cwd: Path, suite: Suite) -> tuple[str, ...]:
    """The test files pytest collects with the suite's selection, in collection order (untimed;
    it also writes the bytecode caches of the tests and of what they import)."""
    listing = _run([str(python), "-m", "pytest", "--collect-only", "-q", *suite.selection, *COMMON_ARGS,
                    *suite.paths], f"{suite.name}: pytest --collect-only", cwd=cwd)
    files: dict[str, None] = {}
    for line in listing.splitlines():
        if "::" in line:
            files.setdefault(line.split("::", 1)[0], None)
    if not files:
        raise BenchFailed(f"{suite.name}: pytest --collect-only found no test:\n{listing[-2000:]}")
    return tuple(files)


def prepare(cache: Path, suite: Suite) -> Prepared:
    python = ensure_venv(cache, suite)
    notes: list[str] = []
    if suite.sdist:
        project, version = suite.sdist
        cwd = unpack(sdist_path(cache, project, version), cache / "src")
        shown = f"{project} {version} (its sdist's tests)"
    else:
        cwd, seconds = ensure_generated(cache, python)
        shown = "generated"
        notes.append(f"import heavypkg: {seconds:.2f} s of CPU in a fresh interpreter (median of 3)")
    shutil.rmtree(cwd / ".phalanx", ignore_errors=True)  # phalanx's journal: the rounds start it afresh
    _run([str(python), "-m", "phalanx", "--version"], "phalanx --version")  # warms phalanx's bytecode
    files = collect_files(python, cwd, suite)
    return Prepared(suite, python, cwd, files, shown, notes)


def measure(prepared: list[Prepared], rows: list[Row], rounds: int, jobs: int,
            work: Path) -> dict[tuple[str, str], list[Run]]:
    """Runs by (suite, row): every row once per suite per round, in an order rotated per round."""
    runs: dict[tuple[str, str], list[Run]] = {}
    for number in range(rounds):
        shift = number % len(rows)
        for item in prepared:
            for row in rows[shift:] + rows[:shift]:
                name = f"{item.suite.name}-{ROWS.index(row)}-r{number + 1}"
                out = work / name
                out.mkdir()
                target = Target(item.python, item.cwd, item.suite, item.files, out, jobs)
                run = run_row(row, target, work / f"{name}.log")
                runs.setdefault((item.suite.name, row.label), []).append(run)
                print(f"round {number + 1}/{rounds} {item.suite.name:9} {label(row.label, jobs):30} "
                      f"{run.wall:8.2f}s  CPU {run.cpu:7.2f}s  exit {run.status}  {run.counts}",
                      file=sys.stderr, flush=True)
    return runs


# -------------------------------------------------------------------------- reporting


def table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(cell) for cell in column) for column in zip(headers, *rows, strict=True)]
    lines = [headers, ["-" * width for width in widths], *rows]
    return "\n".join(
        "  ".join(cell.ljust(width) if i == 0 else cell.rjust(width)
                  for i, (cell, width) in enumerate(zip(line, widths, strict=True)))
        for line in lines
    )


def _counts_of(runs: list[Run]) -> Counts | None:
    """The row's counts if every round had the same, else None."""
    distinct = {run.counts for run in runs}
    return distinct.pop() if len(distinct) == 1 else None


def report_suite(item: Prepared, runs: dict[tuple[str, str], list[Run]], missing: dict[str, str],
                 jobs: int) -> tuple[list[str], dict[str, bool | None]]:
    """The suite's table and target lines; each target's verdict (None: not measurable)."""
    name = item.suite.name
    median = {row.label: statistics.median(r.wall for r in runs[name, row.label])
              for row in ROWS if (name, row.label) in runs}
    xdist = median.get(XDIST)
    lines = [f"{name}: {item.version}, {len(item.files)} test files; selection: {item.suite.about}",
             *(f"  {note}" for note in item.notes)]
    rows = []
    footnotes = []
    for row in ROWS:
        shown = label(row.label, jobs)
        if (name, row.label) not in runs:
            reason = missing.get(row.needs or "", "not run")
            rows.append([shown, "n/a", "", "", "", "", "", "", "", ""])
            footnotes.append(f"  n/a {shown}: {reason}")
            continue
        done = runs[name, row.label]
        counts = _counts_of(done)
        if counts is None:
            footnotes.append(f"  {shown}: the counts differ between rounds: "
                             + "; ".join(str(r.counts) for r in done))
        ratio = f"{median[row.label] / xdist:.2f}" if xdist else ""
        statuses = sorted({r.status for r in done})
        rows.append([shown, f"{median[row.label]:.2f}", f"{min(r.wall for r in done):.2f}", ratio,
                     f"{statistics.median(r.cpu for r in done):.1f}",
                     *([str(counts.tests), str(counts.failed), str(counts.errors), str(counts.skipped)]
                       if counts else ["varies"] * 4),
                     ",".join(map(str, statuses))])
    headers = ["row", "median s", "fastest s", f"x {label(XDIST, jobs)}", "CPU s", "tests", "failed", "errors",
               "skipped", "exit"]
    lines += [table(headers, rows), *footnotes]

    verdicts: dict[str, bool | None] = {}

    def target(key: str, text: str, ok: bool | None, detail: str) -> None:
        verdicts[key] = ok
        word = "n/a" if ok is None else "PASS" if ok else "MISS"
        lines.append(f"target {name}: {text}: {word} ({detail})")

    isolate_file, isolate_test, forked = median.get(ISOLATE_FILE), median.get(ISOLATE_TEST), median.get(FORKED)
    if isolate_file is not None and xdist:
        ratio = isolate_file / xdist
        target("file", f"--isolate file <= {TARGET_FILE_VS_XDIST:g}x {label(XDIST, jobs)}",
               ratio <= TARGET_FILE_VS_XDIST, f"{ratio:.2f}")
    else:
        target("file", f"--isolate file <= {TARGET_FILE_VS_XDIST:g}x {label(XDIST, jobs)}", None,
               missing.get("phalanx pytest", "not run"))

    per_file = {row: _counts_of(runs[name, row]) for row in (MAP, PARALLEL) if (name, row) in runs}
    file_counts = _counts_of(runs[name, ISOLATE_FILE]) if (name, ISOLATE_FILE) in runs else None
    text = "--isolate file counts == one-process-per-file counts"
    if (name, ISOLATE_FILE) not in runs or not per_file:
        target("counts", text, None, missing.get("phalanx pytest", "not run"))
    else:
        ok = file_counts is not None and all(counts == file_counts for counts in per_file.values())
        detail = "; ".join(f"{label(row, jobs)}: {counts or 'varies'}"
                           for row, counts in [(ISOLATE_FILE, file_counts), *per_file.items()])
        target("counts", text, ok, detail)

    text = f"--isolate test no slower than {label(FORKED, jobs)}"
    if isolate_test is not None and forked:
        target("test", text, isolate_test <= forked, f"ratio {isolate_test / forked:.2f}")
    else:
        target("test", text, None, missing.get("phalanx pytest", "not run"))
    return lines, verdicts


def _load() -> str:
    return " ".join(f"{load:.2f}" for load in os.getloadavg())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--suite", choices=list(SUITES), action="append",
                        help="run only this suite (repeatable; default: every suite, the generated one with --quick)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per row and suite (default 3; the median counts)")
    parser.add_argument("-j", "--jobs", type=int, default=2, help="workers of every parallel row (default 2)")
    parser.add_argument("--quick", action="store_true", help="1 round, the generated suite only: a smoke test")
    parser.add_argument("--cache", help="the cache directory (default $XDG_CACHE_HOME/phalanx-bench-suites)")
    args = parser.parse_args(argv)
    rounds = 1 if args.quick else args.rounds
    if rounds < 1 or args.jobs < 1:
        parser.error("--rounds and --jobs must be at least 1")
    names = args.suite or (["generated"] if args.quick else list(SUITES))

    cache = cache_root(args.cache)
    if cache.is_relative_to(REPO):
        parser.error(f"the cache directory must be outside the repository ({REPO})")
    cache.mkdir(parents=True, exist_ok=True)
    ENV.update({k: v for k, v in os.environ.items()
                if k not in ("PYTHONDONTWRITEBYTECODE", "PYTEST_ADDOPTS", "PYTHONPATH")})
    ENV["PYTHONPYCACHEPREFIX"] = str(cache / "pycache")

    work = Path(tempfile.mkdtemp(prefix="pytest-suites-"))
    keep = False
    try:
        prepared = [prepare(cache, SUITES[name]) for name in names]
        missing = unavailable(prepared[0].python)
        rows = [row for row in ROWS if row.needs not in missing]
        load_before = _load()
        runs = measure(prepared, rows, rounds, args.jobs, work)
        failing = [run.log for done in runs.values() for run in done if run.counts.failed or run.counts.errors]
        if failing:  # kept, to see why
            keep = True
            print("runs with failed tests or errors:\n" + "\n".join(f"  {log}" for log in failing), file=sys.stderr)
    except BenchFailed as error:
        print(f"error: {error}", file=sys.stderr)
        keep = True
        return 1
    finally:
        if keep:
            print(f"the runs' output is kept in {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)

    print(f"J = {args.jobs} workers, {os.cpu_count()} CPUs, Python {sys.version.split()[0]}, median of {rounds} "
          f"round(s), wall seconds of each command from start to exit; environment in {cache}; phalanx from "
          f"{REPO / 'src'}; load average {load_before} before, {_load()} after")
    print()
    verdicts: dict[str, dict[str, bool | None]] = {}
    for item in prepared:
        lines, verdicts[item.suite.name] = report_suite(item, runs, missing, args.jobs)
        print("\n".join(lines))
        print()
    real = [name for name in names if SUITES[name].sdist]
    if real:
        results = [verdicts[name]["file"] for name in real]
        word = "n/a" if None in results else "PASS" if all(results) else "MISS"
        print(f"target: --isolate file <= {TARGET_FILE_VS_XDIST:g}x {label(XDIST, args.jobs)} on every real suite "
              f"({', '.join(real)}): {word}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
