"""The ``--otel`` sink: real runs, their spans checked in memory and as OTLP/HTTP requests.

The in-memory tests look at every span's name, parent, times, attributes and status. The
OTLP test sends the spans for real, through the sink's own provider, to a small HTTP
receiver on 127.0.0.1, and decodes the protobuf request it got.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

import phalanx
from otlp_receiver import LOOPBACK_UNPROXIED, Received, otlp_receiver
from phalanx import Event, RetryPolicy, RunFinished, RunStarted, Status, Task, TaskStarted
from phalanx.errors import ConfigError
from phalanx.sinks.otel import MISSING_SDK, OtelSink

#: The longest any test here waits for the exporter, in seconds.
BOUND = 10.0


def test_without_opentelemetry_the_sink_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    """Runs whether or not OpenTelemetry is installed: its import is made to fail."""
    monkeypatch.setitem(sys.modules, "opentelemetry", None)
    with pytest.raises(ConfigError) as raised:
        OtelSink()
    assert str(raised.value) == MISSING_SDK == "--otel needs the opentelemetry SDK: pip install 'phalanx[otel]'"


def test_phalanx_and_its_sinks_import_without_opentelemetry() -> None:
    code = (
        "import sys; sys.modules['opentelemetry'] = None\n"
        "import phalanx, phalanx.sinks.otel, phalanx.sinks.trace\n"
        "print(sorted(m for m in sys.modules if m.startswith('opentelemetry.')))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=BOUND, check=True)
    assert done.stdout.strip() == "[]"


@dataclass
class Otel:
    """The OpenTelemetry modules the tests use; the fixture skips a test where they are missing."""

    trace: Any
    sdk_trace: Any
    export: Any
    in_memory: Any
    trace_service: Any


@pytest.fixture
def otel() -> Otel:
    return Otel(
        trace=pytest.importorskip("opentelemetry.trace"),
        sdk_trace=pytest.importorskip("opentelemetry.sdk.trace"),
        export=pytest.importorskip("opentelemetry.sdk.trace.export"),
        in_memory=pytest.importorskip("opentelemetry.sdk.trace.export.in_memory_span_exporter"),
        trace_service=pytest.importorskip("opentelemetry.proto.collector.trace.v1.trace_service_pb2"),
    )


def test_without_the_exporter_the_default_provider_is_refused(otel: Otel, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "opentelemetry.exporter.otlp.proto.http.trace_exporter", None)
    with pytest.raises(ConfigError, match="pip install 'phalanx\\[otel\\]'"):
        OtelSink()


class Recorder:
    """A provider for the sink that keeps the spans it ended, in memory."""

    def __init__(self, otel: Otel) -> None:
        self.exporter = otel.in_memory.InMemorySpanExporter()
        self.provider = otel.sdk_trace.TracerProvider()
        self.provider.add_span_processor(otel.export.SimpleSpanProcessor(self.exporter))

    def spans(self) -> list[Any]:
        return list(self.exporter.get_finished_spans())


def test_a_span_per_attempt_under_a_span_for_the_run(otel: Otel) -> None:
    trace = otel.trace
    calls = Counter[str]()

    async def fetch() -> str:
        return "ok"

    def flaky() -> str:
        calls["flaky"] += 1
        if calls["flaky"] == 1:
            raise RuntimeError("first try fails")
        return "ok"

    def broken() -> None:
        raise ValueError("always")

    tasks = [
        Task("fetch", fetch),
        Task("crunch", lambda: 1),
        Task("flaky", flaky, retry=RetryPolicy(count=1)),
        Task("broken", broken),
        Task("exit-3", "exit 3"),
        Task("after-broken", "true", deps=("broken",)),
    ]
    events: list[Event] = []
    recorder = Recorder(otel)
    report = phalanx.run(tasks, max_workers=2, sinks=[OtelSink(recorder.provider)], on_event=events.append)

    spans = recorder.spans()
    assert len(spans) == sum(result.attempts for result in report.results.values()) + 1 == 7
    roots = [span for span in spans if span.parent is None]
    assert [span.name for span in roots] == ["phalanx run"]
    root = roots[0]
    started = next(event for event in events if isinstance(event, RunStarted))
    epoch = round(started.started_at * 1e9)
    assert root.start_time == epoch
    finished = next(event for event in events if isinstance(event, RunFinished))
    assert root.end_time == epoch + round(finished.at * 1e9)
    attributes = dict(root.attributes)
    assert attributes["phalanx.run.id"] == started.run_id
    assert attributes["phalanx.run.total"] == 6 and attributes["phalanx.run.max_workers"] == 2
    assert attributes["phalanx.run.succeeded"] == 3 and attributes["phalanx.run.failed"] == 2
    assert attributes["phalanx.run.skipped"] == 1 and attributes["phalanx.run.flaky"] == 1
    assert root.status.status_code is trace.StatusCode.ERROR
    assert root.status.description == "3 of 6 tasks did not succeed"
    # The task that never ran is an event on the run's span, not a span.
    skipped = [event for event in root.events if event.name == "task skipped"]
    assert [dict(event.attributes)["phalanx.task.id"] for event in skipped] == ["after-broken"]
    assert "dependency 'broken' failed" in dict(skipped[0].attributes)["phalanx.task.reason"]

    children = [span for span in spans if span.parent is not None]
    for span in children:
        assert span.parent.span_id == root.context.span_id
        assert span.context.trace_id == root.context.trace_id
        assert span.name == span.attributes["phalanx.task.id"]
    assert Counter(span.name for span in children) == {"fetch": 1, "crunch": 1, "flaky": 2, "broken": 1, "exit-3": 1}

    # Each attempt's span starts when it started, on its slot, and ends when it ended.
    for event in events:
        if isinstance(event, TaskStarted):
            span = next(
                s for s in children if (s.name, s.attributes["phalanx.task.attempt"]) == (event.task_id, event.attempt)
            )
            assert span.start_time == epoch + round(event.at * 1e9)
            assert span.attributes["phalanx.task.worker"] == event.worker in (1, 2)
            assert span.end_time >= span.start_time
    for tid in ("fetch", "crunch", "exit-3", "broken"):
        span = next(s for s in children if s.name == tid)
        assert span.end_time == epoch + round(report[tid].end * 1e9)  # type: ignore[operator]

    by_attempt = {(s.name, s.attributes["phalanx.task.attempt"]): s for s in children}
    ok = by_attempt["fetch", 1]
    assert ok.attributes["phalanx.task.status"] == "succeeded" and ok.status.status_code is trace.StatusCode.UNSET
    assert "phalanx.task.exit_code" not in ok.attributes  # a callable has none
    retried = by_attempt["flaky", 1]
    assert retried.attributes["phalanx.task.status"] == "retried"
    assert retried.status.status_code is trace.StatusCode.ERROR
    assert "first try fails" in (retried.status.description or "")
    assert by_attempt["flaky", 2].attributes["phalanx.task.status"] == "succeeded"
    failed = by_attempt["broken", 1]
    assert failed.attributes["phalanx.task.status"] == "failed"
    assert failed.status.status_code is trace.StatusCode.ERROR
    assert failed.status.description == report["broken"].reason and "always" in failed.status.description
    exited = by_attempt["exit-3", 1]
    assert exited.attributes["phalanx.task.exit_code"] == 3
    assert exited.status.description == "exit code 3"

    # A provider handed in stays its owner's: flushed, not shut down.
    recorder.provider.get_tracer("test").start_span("after the run").end()
    assert recorder.spans()[-1].name == "after the run"


def test_an_aborted_run_ends_its_spans_at_close(otel: Otel) -> None:
    """Events fed by hand: a run that stopped with an attempt running and no RunFinished."""
    recorder = Recorder(otel)
    sink = OtelSink(recorder.provider)
    sink.handle(RunStarted("abc", total=2, max_workers=2, started_at=1_700_000_000.0))
    sink.handle(TaskStarted("a", 1, 1, 0.5))
    sink.close()
    sink.close()  # once only
    spans = {span.name: span for span in recorder.spans()}
    assert set(spans) == {"phalanx run", "a"}
    assert spans["a"].attributes["phalanx.task.status"] == "unfinished"
    assert spans["a"].end_time == spans["phalanx run"].end_time == 1_700_000_000_500_000_000
    assert spans["phalanx run"].status.status_code is otel.trace.StatusCode.ERROR


# ---------------------------------------------------------------------- OTLP over HTTP


@pytest.fixture
def receiver(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, list[Received]]]:
    """A receiver on 127.0.0.1 (its base URL and what it got), in a clean OTEL_* environment."""
    for name in list(os.environ):
        if name.startswith("OTEL_"):
            monkeypatch.delenv(name)
    for name, value in LOOPBACK_UNPROXIED.items():
        monkeypatch.setenv(name, value)
    with otlp_receiver() as got:
        yield got


@pytest.mark.parametrize("variable", ["OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"])
def test_the_default_provider_sends_otlp_http(
    otel: Otel, receiver: tuple[str, list[Received]], monkeypatch: pytest.MonkeyPatch, variable: str
) -> None:
    base, received = receiver
    # The base endpoint gets the signal's path appended by the exporter; the traces one is used as is.
    monkeypatch.setenv(variable, base if variable == "OTEL_EXPORTER_OTLP_ENDPOINT" else f"{base}/v1/traces")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", "x-phalanx-test=yes")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", str(int(BOUND)))

    began = time.monotonic()
    tasks: dict[str, Any] = {"one": "true", "two": lambda: 2, "three": "exit 1"}
    report = phalanx.run(tasks, max_workers=2, sinks=[OtelSink()])
    assert time.monotonic() - began < BOUND
    assert report.summary.counts[Status.FAILED] == 1

    # close() flushed synchronously: the request is there when the run returns.
    assert len(received) == 1
    request = received[0]
    assert request.path == "/v1/traces"
    assert request.headers["content-type"] == "application/x-protobuf"
    assert request.headers["x-phalanx-test"] == "yes"
    message = otel.trace_service.ExportTraceServiceRequest()
    message.ParseFromString(request.body)
    (resource_spans,) = message.resource_spans
    resource = {kv.key: kv.value.string_value for kv in resource_spans.resource.attributes}
    assert resource["service.name"] == "phalanx"
    spans = [span for scope in resource_spans.scope_spans for span in scope.spans]
    assert sorted(span.name for span in spans) == ["one", "phalanx run", "three", "two"]
    root = next(span for span in spans if span.name == "phalanx run")
    for span in spans:
        if span is not root:
            assert span.parent_span_id == root.span_id and span.trace_id == root.trace_id
    three = next(span for span in spans if span.name == "three")
    attributes = {kv.key: kv.value for kv in three.attributes}
    assert attributes["phalanx.task.status"].string_value == "failed"
    assert attributes["phalanx.task.exit_code"].int_value == 1
    assert three.status.code == three.status.STATUS_CODE_ERROR


def test_the_service_name_from_the_environment_wins(
    otel: Otel, receiver: tuple[str, list[Received]], monkeypatch: pytest.MonkeyPatch
) -> None:
    base, received = receiver
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", base)
    monkeypatch.setenv("OTEL_SERVICE_NAME", "nightly-build")
    phalanx.run({"one": "true"}, max_workers=1, sinks=[OtelSink(service_name="ignored")])
    message = otel.trace_service.ExportTraceServiceRequest()
    message.ParseFromString(received[0].body)
    resource = {kv.key: kv.value.string_value for kv in message.resource_spans[0].resource.attributes}
    assert resource["service.name"] == "nightly-build"


def test_an_unreachable_collector_does_not_fail_or_stall_the_run(
    otel: Otel, receiver: tuple[str, list[Received]], monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket() as closed:  # a port nothing listens on
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "1")
    began = time.monotonic()
    report = phalanx.run({"one": "true"}, max_workers=1, sinks=[OtelSink()])
    assert report.ok
    assert time.monotonic() - began < BOUND
