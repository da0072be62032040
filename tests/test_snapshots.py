"""Snapshot tests of what people read: `phalanx plan`, `phalanx graph` and the summary.

Snapshots live in tests/snapshots/. After an intended change, refresh them with
``PHALANX_UPDATE_SNAPSHOTS=1 pytest tests/test_snapshots.py`` and review the diff.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from phalanx.config import load_task_file
from phalanx.history import DurationHistory
from phalanx.journal import Journal
from phalanx.model import Task
from phalanx.ordering import estimate_costs, path_weights
from phalanx.plan import simulate
from phalanx.render import summary_text

ROOT = Path(__file__).resolve().parent.parent
SNAPSHOTS = Path(__file__).resolve().parent / "snapshots"
CI_TOML = "examples/ci.toml"


def assert_snapshot(name: str, text: str) -> None:
    path = SNAPSHOTS / name
    if os.environ.get("PHALANX_UPDATE_SNAPSHOTS") == "1":
        path.write_text(text)
    assert path.exists(), f"no snapshot {name}: run with PHALANX_UPDATE_SNAPSHOTS=1 and review it"
    assert text == path.read_text()


def cli(*args: str, cwd: Path = ROOT) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "phalanx", *args], capture_output=True, text=True, cwd=cwd, timeout=60
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


class SleepCosts:
    """Each ci.toml stand-in's duration: the ``sleep`` its command starts with."""

    def estimate(self, task: Task) -> float | None:
        match = re.match(r"sleep ([0-9.]+);", str(task.action))
        assert match, task.action
        return float(match.group(1))


def test_plan_snapshot(tmp_path: Path) -> None:
    # A copy, so no journal a run of the example left in examples/ is read.
    shutil.copy(ROOT / CI_TOML, tmp_path / "ci.toml")
    assert_snapshot("ci_plan.txt", cli("plan", "ci.toml", "-j", "8", cwd=tmp_path))


def test_plan_from_history_snapshot(tmp_path: Path) -> None:
    # After runs that measured each tool at its sleep: the order follows the measured
    # durations (mypy, the longest chain, before bandit, which shares its heavy slot).
    shutil.copy(ROOT / CI_TOML, tmp_path / "ci.toml")
    graph = load_task_file(tmp_path / "ci.toml").graph
    with Journal.open(tmp_path) as journal:
        history = DurationHistory(journal)
        for task in graph:
            history.observe(task.id, SleepCosts().estimate(task) or 0.0)
    text = cli("plan", "ci.toml", "-j", "8", cwd=tmp_path)
    assert_snapshot("ci_plan_history.txt", text)
    order = [line.split(". ")[1].split()[0] for line in text.splitlines() if re.match(r"\s+\d+\. ", line)]
    assert order.index("mypy") < order.index("bandit")


@pytest.mark.parametrize("fmt", ["text", "mermaid", "dot"])
def test_graph_snapshot(fmt: str) -> None:
    assert_snapshot(f"ci_graph.{fmt}.txt", cli("graph", CI_TOML, "--format", fmt))


def test_summary_snapshot() -> None:
    # The ci.toml run on the fake clock, each tool taking exactly its sleep.
    task_file = load_task_file(ROOT / CI_TOML)
    weights = path_weights(estimate_costs(task_file.graph, SleepCosts()))
    report, _ = simulate(
        task_file.graph, weights, max_workers=8, resources=task_file.capacities, cost_model=SleepCosts()
    )
    assert_snapshot("ci_summary.txt", summary_text(report) + "\n")
