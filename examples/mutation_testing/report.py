"""Reports a mutation-testing run and checks it against ``expected.tsv``.

Run as a script, it reads either the JUnit report ``phalanx pytest --each
ACTIVE_GREMLIN=... --junit-out results.xml`` wrote (run_pytest.sh: each test case's
classname starts with its gremlin), or the JSONL results ``phalanx map --results
results.jsonl`` wrote (one record per mutant, see run_cli.sh)::

    python report.py results.xml
    python report.py results.jsonl

From JUnit, a mutant is **killed** when one of its test cases failed (or errored), the
first such case naming the killing test, and **survived** when every case passed.

From JSONL, a mutant is **killed** when its test run failed (exit status not 0) and
**survived** when every test passed. pytest's output is read only to *name* the killing test: with ``-x -q``
pytest prints a short summary line ``FAILED tests/test_calc.py::test_add - assert -1 == 5``
for the first test that failed.

run_api.py imports `print_report` and `check` from here, so both ways print the same
report. The exit status is 0 when every mutant ended as ``expected.tsv`` says (killed or
survived, and by which test), 1 when not (the differences are printed), 2 for a results
file that cannot be read: wire either script into a test suite as is.
"""

from __future__ import annotations

import json
import re
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import TypedDict

HERE = Path(__file__).resolve().parent
EXPECTED = HERE / "expected.tsv"

#: pytest's short test summary lines: "FAILED <nodeid> - <message>" or "ERROR <nodeid> - ...".
SUMMARY_LINE = re.compile(r"^(?:FAILED|ERROR) (?P<nodeid>\S+)(?: - .*)?$", re.MULTILINE)


class Outcome(TypedDict):
    """One mutant's fate."""

    gremlin: str
    killed: bool
    killing_test: str | None


def load_expected(path: Path = EXPECTED) -> dict[str, Outcome]:
    """The expected outcome of every gremlin: ``gremlin<TAB>killed|survived<TAB>test|-``."""
    table: dict[str, Outcome] = {}
    for line in path.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        gremlin, outcome, test = line.split("\t")
        table[gremlin] = Outcome(gremlin=gremlin, killed=outcome == "killed",
                                 killing_test=None if test == "-" else test)
    return table


def killing_test(pytest_output: str) -> str | None:
    """The first test pytest's summary names as failed (or errored), if any."""
    match = SUMMARY_LINE.search(pytest_output)
    return match["nodeid"] if match else None


def from_jsonl(path: Path) -> list[Outcome]:
    """The outcomes recorded by ``phalanx map --results FILE.jsonl``."""
    outcomes = []
    for line in path.read_text().splitlines():
        record = json.loads(line)
        # A job that did not exit 0 (tests failed, or it timed out or crashed) killed its mutant.
        killed = record["exit_code"] != 0 or record["status"] != "succeeded"
        outcomes.append(Outcome(gremlin=record["args"][0], killed=killed,
                                killing_test=killing_test(record["stdout"]) if killed else None))
    return outcomes


def from_junit(path: Path) -> tuple[list[Outcome], list[float]]:
    """The outcomes in ``phalanx pytest --each ... --junit-out FILE``'s report, and each
    gremlin's total test time (classname ``g1.tests.test_calc``, test cases in the order
    they ended)."""
    outcomes: dict[str, Outcome] = {}
    seconds: dict[str, float] = {}
    for case in ET.parse(path).iter("testcase"):
        gremlin = case.get("classname", "").split(".", 1)[0]
        outcome = outcomes.setdefault(gremlin, Outcome(gremlin=gremlin, killed=False, killing_test=None))
        seconds[gremlin] = seconds.get(gremlin, 0.0) + float(case.get("time", "0"))
        failed = case.find("failure") is not None or case.find("error") is not None
        if failed and not outcome["killed"]:
            outcome["killed"] = True
            outcome["killing_test"] = f"{case.get('file')}::{case.get('name')}"
    return list(outcomes.values()), list(seconds.values())


def print_report(outcomes: list[Outcome], out=sys.stdout) -> None:
    """Each mutant, killed or survived and by which test, then the counts."""
    rows = sorted(outcomes, key=lambda o: (len(o["gremlin"]), o["gremlin"]))
    for o in rows:
        if o["killed"]:
            test = o["killing_test"] or "(no test named: pytest itself failed)"
            print(f"{o['gremlin']:<4} killed    by {test}", file=out)
        else:
            print(f"{o['gremlin']:<4} SURVIVED  (no test failed)", file=out)
    killed = sum(o["killed"] for o in outcomes)
    total = len(outcomes)
    score = 100 * killed / total if total else 0.0
    print(f"{killed} killed, {total - killed} survived, {total} mutants: mutation score {score:.0f}%", file=out)


def check(outcomes: list[Outcome], expected: dict[str, Outcome] | None = None) -> list[str]:
    """How the outcomes differ from the expected table (empty: they agree)."""
    expected = load_expected() if expected is None else expected
    got = {o["gremlin"]: o for o in outcomes}
    problems = [f"{g}: expected but not run" for g in expected if g not in got]
    problems += [f"{g}: run but not in {EXPECTED.name}" for g in got if g not in expected]
    for g, want in expected.items():
        have = got.get(g)
        if have is not None and (have["killed"], have["killing_test"]) != (want["killed"], want["killing_test"]):
            problems.append(f"{g}: expected {_describe(want)}, got {_describe(have)}")
    return problems


def _describe(outcome: Outcome) -> str:
    return f"killed by {outcome['killing_test']}" if outcome["killed"] else "survived"


def finish(outcomes: list[Outcome]) -> int:
    """Print the report and the check against expected.tsv; the exit status."""
    print_report(outcomes)
    problems = check(outcomes)
    if problems:
        print(f"MISMATCH with {EXPECTED.name}:", *problems, sep="\n  ", file=sys.stderr)
        return 1
    print(f"matches {EXPECTED.name}")
    return 0


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python report.py RESULTS.xml|RESULTS.jsonl", file=sys.stderr)
        return 2
    try:
        if argv[0].endswith(".xml"):
            outcomes, durations = from_junit(Path(argv[0]))
        else:
            outcomes = from_jsonl(Path(argv[0]))
            durations = [json.loads(line)["duration"] for line in Path(argv[0]).read_text().splitlines()]
    except (OSError, ValueError, KeyError, IndexError, ET.ParseError) as error:
        print(f"report.py: cannot read {argv[0]}: {error}", file=sys.stderr)
        return 2
    status = finish(outcomes)
    if durations:
        what = "tests" if argv[0].endswith(".xml") else "job"
        print(f"(each mutant's {what} took {sum(durations) / len(durations):.2f} s on average)", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
