"""The viewers phalanx's report files are opened in by the tests.

- `validate_trace`: the Trace Event Format's definition (the JSON Object Format; the
  required keys of complete "X", instant "i" and metadata "M" events; microsecond
  ``ts``/``dur``), plus what phalanx promises on top: one track per slot, slices on a track
  that never overlap. Perfetto and ``chrome://tracing`` read exactly this.
- `headless_chromium`: Debian's ``chromium`` with its matching ``chromium-driver``, driven
  by selenium; both looked up on PATH (``PHALANX_CHROMIUM`` and ``PHALANX_CHROMEDRIVER``
  name others). Without them a test is skipped, saying so, except in CI (``CI=true``),
  where the test set-up installs them and their absence is a failure.
"""

from __future__ import annotations

import itertools
import os
import shutil
from collections import Counter, defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

#: Slack when comparing microsecond times: the file keeps them to the nanosecond.
EPSILON = 1e-3

_PHASES = set("BEXiIMCbneSTpFsftPNODvVRc")  # every phase the format defines
_METADATA_ARGS = {
    "process_name": "name",
    "process_labels": "labels",
    "process_sort_index": "sort_index",
    "thread_name": "name",
    "thread_sort_index": "sort_index",
}


def validate_trace(document: Any) -> list[dict[str, Any]]:
    """Check ``document`` is a well-formed trace-event JSON object; return its events."""
    assert isinstance(document, dict), "the JSON Object Format is an object"
    events = document["traceEvents"]
    assert isinstance(events, list)
    assert document.get("displayTimeUnit", "ms") in ("ms", "ns")
    assert isinstance(document.get("otherData", {}), dict)
    for event in events:
        assert isinstance(event, dict)
        phase = event["ph"]
        assert phase in _PHASES, f"unknown phase {phase!r}"
        assert isinstance(event["name"], str) and event["name"]
        assert isinstance(event["pid"], int) and isinstance(event["tid"], int)
        assert isinstance(event.get("args", {}), dict)
        if "cat" in event:
            assert isinstance(event["cat"], str)
        if phase == "M":
            key = _METADATA_ARGS[event["name"]]
            assert key in event["args"], f"metadata {event['name']} needs args.{key}"
            continue
        ts = event["ts"]
        assert isinstance(ts, int | float) and not isinstance(ts, bool) and ts >= 0
        if phase == "X":
            dur = event["dur"]
            assert isinstance(dur, int | float) and not isinstance(dur, bool) and dur >= 0
        elif phase in "iI":
            assert event.get("s", "t") in ("g", "p", "t")
    # Complete events on one thread may nest but never partly overlap; phalanx's never even nest.
    by_track: dict[tuple[int, int], list[tuple[float, float]]] = defaultdict(list)
    for event in events:
        if event["ph"] == "X":
            by_track[event["pid"], event["tid"]].append((event["ts"], event["ts"] + event["dur"]))
    for track, spans in by_track.items():
        spans.sort()
        for (_, end), (start, _) in itertools.pairwise(spans):
            assert start >= end - EPSILON, f"slices overlap on {track}: one ends at {end}, the next starts at {start}"
    # Every track with slices is named exactly once, and no other track is.
    named = Counter(event["tid"] for event in events if event["ph"] == "M" and event["name"] == "thread_name")
    used = {tid for (_, tid) in by_track}
    assert set(named) == used, (named, used)
    assert all(count == 1 for count in named.values()), named
    return events


def _find(variable: str, *names: str) -> str | None:
    if os.environ.get(variable):
        return os.environ[variable]
    return next((found for name in names if (found := shutil.which(name))), None)


@contextmanager
def headless_chromium() -> Iterator[Any]:
    """A selenium driver on a headless Chromium (``--no-sandbox``: the tests may run as root)."""
    chromium = _find("PHALANX_CHROMIUM", "chromium", "chromium-browser", "google-chrome")
    driver_path = _find("PHALANX_CHROMEDRIVER", "chromedriver")
    if chromium is None or driver_path is None:
        missing = "no Chromium or chromedriver (apt-get install chromium chromium-driver)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{missing}: scripts/test installs them in CI")
        pytest.skip(missing)
    webdriver = pytest.importorskip("selenium.webdriver", reason="the browser tests drive Chromium with selenium")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1280,900"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # An alert must stay open for the test to see it, not be dismissed by the next command.
    options.set_capability("unhandledPromptBehavior", "ignore")
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    try:
        yield driver
    finally:
        driver.quit()
