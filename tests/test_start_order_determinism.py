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

phalanx.run(phalanx.Graph(tasks), backend="inline", max_workers=4, resources={"db": 2}, on_event=heard,
            seed=7, shuffle=True)
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


def _order_in_process(seed: int | None, tasks: int = 60) -> list[str]:
    import phalanx

    order: list[str] = []

    def heard(event: object) -> None:
        if isinstance(event, phalanx.TaskStarted):
            order.append(event.task_id)

    # Independent tasks of equal cost and priority: every start is a tie of the policy's key.
    graph = phalanx.Graph([phalanx.Task(f"t{index}", lambda: None) for index in range(tasks)])
    phalanx.run(graph, backend="inline", max_workers=4, on_event=heard, seed=seed, shuffle=seed is not None)
    return order


def test_without_a_seed_ties_start_in_submission_order() -> None:
    assert _order_in_process(None) == [f"t{index}" for index in range(60)]


def test_a_seed_shuffles_the_ties_and_the_same_seed_gives_the_same_order() -> None:
    first = _order_in_process(3)
    assert sorted(first) == sorted(f"t{index}" for index in range(60))
    assert first != [f"t{index}" for index in range(60)]
    assert _order_in_process(3) == first
    assert _order_in_process(4) != first


def test_a_seed_never_overrides_priority_or_the_critical_path() -> None:
    import phalanx

    order: list[str] = []

    def heard(event: object) -> None:
        if isinstance(event, phalanx.TaskStarted):
            order.append(event.task_id)

    tasks = [phalanx.Task(f"short{index}", lambda: None, cost=1.0) for index in range(20)]
    tasks += [phalanx.Task("long", lambda: None, cost=5.0), phalanx.Task("urgent", lambda: None, priority=1)]
    for seed in range(5):
        order.clear()
        phalanx.run(phalanx.Graph(tasks), backend="inline", max_workers=1, on_event=heard, seed=seed,
                    shuffle=True)
        assert order[:2] == ["urgent", "long"]


def test_phalanx_run_seed_gives_a_repeatable_shuffled_order(tmp_path: object) -> None:
    import json
    import shutil
    from pathlib import Path

    directory = Path(str(tmp_path))
    names = [f"t{index}" for index in range(8)]
    (directory / "phalanx.toml").write_text("".join(f'[tasks.{name}]\ncmd = "true"\n' for name in names))

    def order(*extra: str) -> list[str]:
        # A fresh journal each time: durations from an earlier run would order the tasks instead.
        shutil.rmtree(directory / ".phalanx", ignore_errors=True)
        done = subprocess.run([sys.executable, "-m", "phalanx", "run", "-j", "1", "--json", *extra],
                              capture_output=True, text=True, cwd=directory, timeout=60, check=False)
        assert done.returncode == 0, done.stderr
        results = json.loads(done.stdout)["results"]
        return [result["task_id"] for result in sorted(results, key=lambda result: result["start"])]

    assert order() == names
    seeded = order("--seed", "5")
    assert sorted(seeded) == names and seeded != names
    assert order("--seed", "5") == seeded
