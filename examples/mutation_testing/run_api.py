"""Every mutant through phalanx's Python API: pytest warmed up once per worker, then run
in-process, in a fresh fork of that warm worker for each mutant.

::

    python run_api.py              # one worker per CPU
    python run_api.py --workers 4

The whole run is one call::

    phalanx.map(run_mutant, gremlins, isolate=True, initializer=warm_up, initargs=(HERE,))

* ``warm_up`` (worker.py) runs once in each worker process: it imports pytest and the
  package under test, and runs one empty pytest session so that every installed pytest
  plugin is loaded too. This is the start-up that the command-line way (run_cli.sh) pays
  again for every mutant, in a new interpreter each time.
* ``isolate=True``: each mutant runs in a child forked from the warm worker, so nothing a
  test run leaves behind (the test modules it imported, pytest's state, ``os.environ``,
  anything a test patched) reaches the next mutant; the warm worker itself runs no test.
* ``run_mutant`` (worker.py) sets ``ACTIVE_GREMLIN`` and calls ``pytest.main`` with a small
  plugin that records the id of each failing test. The package reads ``ACTIVE_GREMLIN``
  when its functions are called, not at import, so the copy imported by the warm-up obeys
  the variable set in the child.

It prints the same report as run_cli.sh (report.py) and exits 1 if any mutant's outcome
differs from expected.tsv.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import phalanx

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # worker processes inherit sys.path, and find worker.py by it

from report import finish, load_expected  # noqa: E402
from worker import run_mutant, warm_up  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--workers", type=int, default=None, help="worker processes (default: one per CPU)")
    args = parser.parse_args(argv)
    gremlins = list(load_expected())  # g1 .. g8, the list run_cli.sh gives after :::
    started = time.perf_counter()
    results = list(phalanx.map(run_mutant, gremlins, max_workers=args.workers, isolate=True,
                               initializer=warm_up, initargs=(str(HERE),), as_results=True))
    seconds = time.perf_counter() - started
    failed = [result for result in results if not result.ok]
    for result in failed:  # run_mutant itself failed (not a test: pytest.main returns those)
        print(f"run_api.py: item {result.task_id} of {gremlins}: {result.reason}", file=sys.stderr)
    if failed:
        return 2
    status = finish([result.value for result in results])
    each = statistics.mean(result.duration for result in results)
    print(f"({len(gremlins)} mutants in {seconds:.2f} s, worker start-up and warm-up included; "
          f"each mutant's fork and tests took {each:.2f} s on average)", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
