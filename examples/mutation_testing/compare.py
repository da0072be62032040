"""Times the three ways of running the mutants, and checks that they agree.

::

    python compare.py                     # 5 rounds, Python's bytecode cache on
    python compare.py --rounds 9
    python compare.py --no-bytecode-cache # as with PYTHONDONTWRITEBYTECODE=1

Each round runs ``sh run_pytest.sh``, ``sh run_cli.sh`` and ``python run_api.py`` once
each, in alternating order, each timed from outside (start to exit: interpreter start-up,
workers, every mutant's tests, the report). All must exit 0 (each agrees with
expected.tsv) and print the same report. One untimed run of each comes first. Beside the
wall time, the table shows how long one mutant's run took on average, as each script
reports it: its tests' time in the JUnit report (``phalanx pytest``: the fork's own
cost is not in it), a job's duration in results.jsonl (a new interpreter, pytest's
start-up, the tests), and an item's duration in phalanx.map (fork, ``pytest.main``, the
tests). With only 8 mutants the fixed start-up weighs on the wall time; with hundreds,
the per-mutant cost is the one that counts.

By default Python's bytecode cache is on, as on a developer's machine: a temporary
``PYTHONPYCACHEPREFIX``, filled by the untimed runs, with ``PYTHONDONTWRITEBYTECODE``
removed. This matters here: pytest rewrites the asserts of its plugins' modules (all of
hypothesis's, on this machine) as it imports them, and caches the result only if it may
write bytecode. ``--no-bytecode-cache`` sets ``PYTHONDONTWRITEBYTECODE=1`` instead, so
every fresh pytest redoes that work.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
WAYS = {
    "phalanx pytest --each (one warm collection)": ["sh", str(HERE / "run_pytest.sh")],
    "phalanx map (a fresh pytest per mutant)": ["sh", str(HERE / "run_cli.sh")],
    "phalanx.map isolate=True (warm workers)": [sys.executable, str(HERE / "run_api.py")],
}


#: Every script ends with the average time of one mutant's run on stderr.
EACH = re.compile(r"took (\d+\.\d+) s on average")


def run(argv: list[str], env: dict[str, str]) -> tuple[float, str, float]:
    """Wall seconds, the report printed, and the average seconds of one mutant's run."""
    started = time.perf_counter()
    done = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - started
    each = EACH.search(done.stderr)
    if done.returncode or each is None:
        sys.exit(f"{' '.join(argv)} exited with {done.returncode}:\n{done.stdout}{done.stderr}")
    return seconds, done.stdout, float(each[1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--no-bytecode-cache", action="store_true", help="set PYTHONDONTWRITEBYTECODE=1")
    args = parser.parse_args(argv)
    env = dict(os.environ, PYTHON=sys.executable)
    with tempfile.TemporaryDirectory(prefix="pycache-") as pycache:
        if args.no_bytecode_cache:
            env["PYTHONDONTWRITEBYTECODE"] = "1"
        else:
            env.pop("PYTHONDONTWRITEBYTECODE", None)
            env["PYTHONPYCACHEPREFIX"] = pycache
        reports = {name: run(command, env)[1] for name, command in WAYS.items()}  # untimed
        first = next(iter(reports.values()))
        for name, report in reports.items():
            if report != first:
                sys.exit(f"{name} disagrees:\n{first}\n{report}")
        times: dict[str, list[float]] = {name: [] for name in WAYS}
        each: dict[str, list[float]] = {name: [] for name in WAYS}
        names = list(WAYS)
        for number in range(args.rounds):
            for name in names if number % 2 == 0 else names[::-1]:
                seconds, report, one = run(WAYS[name], env)
                if report != first:
                    sys.exit(f"{name} printed a different report:\n{report}")
                times[name].append(seconds)
                each[name].append(one)
    print(first, end="")
    cache = "off (PYTHONDONTWRITEBYTECODE=1)" if args.no_bytecode_cache else "on"
    print(f"\nall ways agree; {args.rounds} rounds, bytecode cache {cache}, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}:")
    print(f"  {'':44} {'wall time':>9}  {'one mutant':>10}  runs (wall time)")
    for name in WAYS:
        runs = " ".join(f"{s:.2f}" for s in times[name])
        print(f"  {name:44} {statistics.median(times[name]):7.2f} s  {statistics.median(each[name]):8.2f} s  {runs}")
    fresh = statistics.median(times["phalanx map (a fresh pytest per mutant)"])
    for name in WAYS:
        if not name.startswith("phalanx map "):
            print(f"  {name.split(' (')[0]} is {fresh / statistics.median(times[name]):.1f}x faster than "
                  "a fresh pytest per mutant over the whole run (the medians' ratio)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
