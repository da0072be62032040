"""The bad-input catalogue: every malformed task file and command line in tests/bad_inputs/.

Each case is one TOML file there (the format: tests/bad_inputs/README.md): the files to start
from, the command line, the exit status it must end with. Every case must end the way bad input
does anywhere in phalanx: the documented status (2; 255 for ``phalanx map``; 4 for ``phalanx
pytest``, as pytest), exactly one line on standard error, nothing on standard output, no
traceback, and nothing run: each case holds a canary (a task, a job or a test) that would create
the file ``ran``. The line is pinned by a snapshot, tests/snapshots/bad_inputs/CASE.txt, with the
case's directory written as ``<tmp>``; after an intended change, refresh them with
``PHALANX_UPDATE_SNAPSHOTS=1 pytest tests/test_bad_inputs_catalogue.py`` and review the diff.

The cases run in forks of one warm interpreter (tests/warm_phalanx.py): real processes, but
without each paying a fresh interpreter's imports. A few run in a fresh ``python -m phalanx``
too, which must answer byte for byte the same.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import pytest

from test_snapshots import SNAPSHOTS, assert_snapshot

HERE = Path(__file__).resolve().parent
CATALOGUE = HERE / "bad_inputs"
SNAPSHOT_DIR = "bad_inputs"
CANARY = "ran"  # the file a canary creates if anything runs
#: The exit status of bad input, by the command (anything else: 2).
STATUS_BY_COMMAND = {"map": 255, "pytest": 4}
#: Cases run in a fresh interpreter as well: one per front end, and a file read before anything else.
FRESH = ("taskfile_cycle_of_three", "taskfile_not_utf8", "run_unknown_option", "map_perl_expression",
         "pytest_each_file_not_utf8")
_CASE_KEYS = {"about", "argv", "status", "files", "stdin", "cwd"}


@dataclass(frozen=True, slots=True)
class Case:
    """One case of the catalogue, as its file says."""

    name: str
    about: str
    argv: tuple[str, ...]
    status: int
    files: Mapping[str, Any]  # path -> text, or a table: { text, encoding } | { directory } | { symlink }
    stdin: str = ""
    cwd: str = "."  # where phalanx starts, under the case's directory

    @classmethod
    def load(cls, path: Path) -> Case:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
        unknown = set(data) - _CASE_KEYS
        assert not unknown, f"{path.name}: unknown keys {sorted(unknown)}"
        return cls(path.stem, data["about"], tuple(data["argv"]), data["status"], data.get("files", {}),
                   data.get("stdin", ""), data.get("cwd", "."))

    def texts(self) -> Iterator[str]:
        """Every piece of text the case is made of: where its canary must be."""
        yield from self.argv
        yield self.stdin
        for spec in self.files.values():
            yield spec if isinstance(spec, str) else str(spec.get("text", ""))

    def materialise(self, root: Path) -> Path:
        """Write the case's files under ``root`` (a repository root: no task-file search leaves it)."""
        (root / ".git").mkdir(parents=True)
        for name, spec in self.files.items():
            path = root / name
            path.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(spec, str):
                path.write_text(spec, encoding="utf-8")
            elif spec.get("directory"):
                path.mkdir()
            elif "symlink" in spec:
                path.symlink_to(spec["symlink"])
            else:
                path.write_bytes(spec["text"].encode(spec["encoding"]))
        return root / self.cwd


CASES = [Case.load(path) for path in sorted(CATALOGUE.glob("*.toml"))]


@dataclass(frozen=True, slots=True)
class Outcome:
    """How a run ended: its exit status (None: killed, it outlived the server's bound) and its output."""

    status: int | None
    stdout: str
    stderr: str


def environment() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PHALANX_TASK_ID", None)  # as if started by a person, not by a phalanx task
    # Fresh interpreters share compiled bytecode, kept out of the source tree.
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPYCACHEPREFIX"] = os.path.join(tempfile.gettempdir(), "phalanx-bad-inputs-pycache")
    return env


class WarmPhalanx:
    """The client of tests/warm_phalanx.py: one forked ``phalanx`` run per call."""

    def __init__(self, server: subprocess.Popen[str]) -> None:
        self.server = server

    def run(self, argv: tuple[str, ...], cwd: Path, stdin: Path, out: Path) -> Outcome:
        request = {"argv": list(argv), "cwd": str(cwd), "stdin": str(stdin),
                   "stdout": str(out / "stdout"), "stderr": str(out / "stderr")}
        assert self.server.stdin is not None and self.server.stdout is not None
        self.server.stdin.write(json.dumps(request) + "\n")
        self.server.stdin.flush()
        reply = self.server.stdout.readline()
        assert reply, "the warm phalanx server died (see its standard error above)"
        return Outcome(json.loads(reply)["status"], _read(out / "stdout"), _read(out / "stderr"))


def _read(path: Path) -> str:
    return path.read_bytes().decode("utf-8", errors="backslashreplace")


@pytest.fixture(scope="module")
def warm() -> Iterator[WarmPhalanx]:
    server = subprocess.Popen([sys.executable, str(HERE / "warm_phalanx.py")], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, env=environment())
    try:
        yield WarmPhalanx(server)
    finally:
        stdin: IO[str] | None = server.stdin
        if stdin is not None:
            stdin.close()  # the server ends when its input does
        server.wait(timeout=10)


def run_case(warm: WarmPhalanx, case: Case, tmp_path: Path) -> tuple[Outcome, Path]:
    root = tmp_path / "case"
    cwd = case.materialise(root)
    stdin = tmp_path / "stdin"
    stdin.write_text(case.stdin, encoding="utf-8")
    return warm.run(case.argv, cwd, stdin, tmp_path), root


def normalised(text: str, root: Path) -> str:
    """The message with the case's directory (wherever pytest put it) written as <tmp>."""
    for spelling in {str(root.resolve()), str(root)}:
        text = text.replace(spelling, "<tmp>")
    return text


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_bad_input_is_one_line_and_runs_nothing(warm: WarmPhalanx, case: Case, tmp_path: Path) -> None:
    outcome, root = run_case(warm, case, tmp_path)
    report = f"{case.name} ({case.about}): status {outcome.status}\nstderr: {outcome.stderr}stdout: {outcome.stdout}"
    assert "Traceback" not in outcome.stderr, report
    assert outcome.status == case.status, report
    assert outcome.stderr.endswith("\n") and outcome.stderr.count("\n") == 1, report
    assert outcome.stdout == "", report
    assert not (root / case.cwd / CANARY).exists() and not (root / CANARY).exists(), f"something ran: {report}"
    assert_snapshot(f"{SNAPSHOT_DIR}/{case.name}.txt", normalised(outcome.stderr, root))


@pytest.mark.parametrize("name", FRESH)
def test_a_fresh_interpreter_answers_the_same(warm: WarmPhalanx, name: str, tmp_path: Path) -> None:
    case = next(case for case in CASES if case.name == name)
    outcome, root = run_case(warm, case, tmp_path / "warm")
    fresh_root = tmp_path / "fresh"
    cwd = case.materialise(fresh_root)
    done = subprocess.run([sys.executable, "-m", "phalanx", *case.argv], input=case.stdin.encode(), cwd=cwd,
                          capture_output=True, env=environment(), timeout=60)
    fresh = Outcome(done.returncode, done.stdout.decode(errors="backslashreplace"),
                    done.stderr.decode(errors="backslashreplace"))
    assert (fresh.status, fresh.stdout, normalised(fresh.stderr, fresh_root)) == (
        outcome.status, outcome.stdout, normalised(outcome.stderr, root))
    assert not (cwd / CANARY).exists()


def test_the_catalogue_covers_every_front_end() -> None:
    assert len(CASES) >= 40
    commands = {case.argv[0] if case.argv else "" for case in CASES}
    assert {"run", "map", "pytest"} <= commands


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_each_case_is_well_formed(case: Case) -> None:
    # The documented status for the command, and a canary that would show that something ran.
    assert case.status == STATUS_BY_COMMAND.get(case.argv[0] if case.argv else "", 2), case.name
    assert any(re.search(rf"\b{CANARY}\b", text) for text in case.texts()), f"{case.name}: no canary creates {CANARY!r}"
    assert case.about.strip() and "\n" not in case.about


def test_every_snapshot_has_its_case() -> None:
    names = {case.name for case in CASES}
    orphans = sorted(path.name for path in (SNAPSHOTS / SNAPSHOT_DIR).glob("*.txt") if path.stem not in names)
    assert not orphans, f"snapshots of cases that are gone (delete them): {orphans}"
