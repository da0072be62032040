"""An open run lets go of finished work: memory stays flat however many items pass through.

Each case runs in a fresh interpreter (so nothing else this test session allocated moves
the figures) and prints the parent's RSS at checkpoints; the last must be within 30 MB of
the first, and the scheduler must hold no finished task between rounds.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

LIMIT_MB = 30

_MAP = """
import gc, json, sys, psutil, phalanx
def inc(x): return x + 1
rss = lambda: (gc.collect(), psutil.Process().memory_info().rss / 2**20)[1]
marks, n, total = [], 0, 0
for value in phalanx.map(inc, (i for i in range(1_000_000)), backend=sys.argv[1], max_workers=2):
    n += 1
    total += value
    if n % 100_000 == 0:
        marks.append(rss())
print(json.dumps({"n": n, "total": total, "marks": marks}))
"""

_SUBMIT = """
import gc, json, sys, psutil, phalanx
def inc(x): return x + 1
rss = lambda: (gc.collect(), psutil.Process().memory_info().rss / 2**20)[1]
rounds, per_round = int(sys.argv[2]), int(sys.argv[3])
marks, held, total = [], [], 0
with phalanx.Executor(2, backend=sys.argv[1]) as executor:
    for r in range(rounds):
        futures = [executor.submit(inc, i) for i in range(per_round)]
        total += sum(f.result() for f in futures)
        del futures
        held.append(executor.held_tasks())
        marks.append(rss())
print(json.dumps({"total": total, "marks": marks, "held": held}))
"""


def _run(script: str, *args: str) -> dict[str, object]:
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(script), *args], capture_output=True, text=True,
                          timeout=600, check=True)
    figures: dict[str, object] = json.loads(done.stdout)
    print(args, figures)  # shown with -s: the figures for the record
    return figures


@pytest.mark.parametrize("backend", ["threads", "processes"])
def test_a_million_items_through_map_over_a_generator_run_in_flat_memory(backend: str) -> None:
    figures = _run(_MAP, backend)
    assert figures["n"] == 1_000_000
    assert figures["total"] == sum(range(1, 1_000_001))
    marks = figures["marks"]
    assert isinstance(marks, list) and len(marks) == 10
    assert marks[-1] - marks[0] < LIMIT_MB, marks


def _check_submit_rounds(backend: str, rounds: int, per_round: int) -> None:
    figures = _run(_SUBMIT, backend, str(rounds), str(per_round))
    assert figures["total"] == rounds * sum(range(1, per_round + 1))
    assert figures["held"] == [0] * rounds  # every finished call let go of
    marks = figures["marks"]
    assert isinstance(marks, list)
    assert marks[-1] - marks[0] < LIMIT_MB, marks


@pytest.mark.slow  # 10-20 s each: memory rounds, with their siblings in the slow tier
@pytest.mark.parametrize("backend", ["threads", "processes"])
def test_submit_rounds_leave_nothing_behind(backend: str) -> None:
    _check_submit_rounds(backend, rounds=10, per_round=2_000)


@pytest.mark.slow
def test_two_hundred_thousand_submits_in_rounds_run_in_flat_memory() -> None:
    _check_submit_rounds("processes", rounds=20, per_round=10_000)
