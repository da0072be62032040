"""Snapshot tests of what people read: `phalanx plan`, `phalanx graph` and the summary.

Snapshots live in tests/snapshots/. After an intended change, refresh them with
``PHALANX_UPDATE_SNAPSHOTS=1 pytest tests/test_snapshots.py`` and review the diff.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from phalanx.config import load_task_file
from phalanx.ordering import DeclaredCosts, estimate_costs, path_weights
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


def cli(*args: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "phalanx", *args], capture_output=True, text=True, cwd=ROOT, timeout=60
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_plan_snapshot() -> None:
    assert_snapshot("ci_plan.txt", cli("plan", CI_TOML, "-j", "8"))


@pytest.mark.parametrize("fmt", ["text", "mermaid", "dot"])
def test_graph_snapshot(fmt: str) -> None:
    assert_snapshot(f"ci_graph.{fmt}.txt", cli("graph", CI_TOML, "--format", fmt))


def test_summary_snapshot() -> None:
    # The ci.toml run on the fake clock, each tool taking exactly its declared cost.
    task_file = load_task_file(ROOT / CI_TOML)
    weights = path_weights(estimate_costs(task_file.graph, DeclaredCosts()))
    report, _ = simulate(task_file.graph, weights, max_workers=8, resources=task_file.capacities)
    assert_snapshot("ci_summary.txt", summary_text(report) + "\n")
