"""The same graph starts its tasks in the same order in every process (issue 15's
"identical start order across runs"): nothing in the scheduler's order may depend on
string hashing (``PYTHONHASHSEED`` differs from process to process) or on set order."""

from __future__ import annotations

import os
import subprocess
import sys

_SCRIPT = r"""
import random, sys
import phalanx

rng = random.Random(15)
tasks = []
for index in range(400):
    deps = tuple(sorted({f"t{rng.randrange(index)}" for _ in range(min(index, 3))}))
    tags = ("wide",) if index % 7 == 0 else ()
    tasks.append(phalanx.Task(f"t{index}", lambda: None, deps=deps, cost=rng.choice([None, 1.0, 2.5]),
                              priority=rng.choice([0, 0, 1]), resources={"db": 1} if index % 5 == 0 else {}))
order = []

def heard(event):
    if isinstance(event, phalanx.TaskStarted):
        order.append(event.task_id)

phalanx.run(phalanx.Graph(tasks), backend="inline", max_workers=4, resources={"db": 2}, on_event=heard, seed=7)
sys.stdout.write(" ".join(order))
"""


def _start_order(hash_seed: str) -> list[str]:
    env = {**os.environ, "PYTHONHASHSEED": hash_seed}
    done = subprocess.run([sys.executable, "-c", _SCRIPT], capture_output=True, text=True, env=env, timeout=60,
                          check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


def test_the_start_order_is_the_same_whatever_the_string_hashing() -> None:
    first = _start_order("1")
    assert len(first) == 400
    assert _start_order("2") == first
    assert _start_order("12345") == first
