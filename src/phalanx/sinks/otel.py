"""``--otel``: the run as OpenTelemetry spans, a root span for the run and a child per attempt.

The root span, ``phalanx run``, lasts from `RunStarted` to `RunFinished` and carries
``phalanx.run.id``, ``phalanx.run.total`` and ``phalanx.run.max_workers``, and at its end
the summary: ``phalanx.run.<status>`` counts for every status, ``phalanx.run.flaky``,
``phalanx.run.wall_time`` and, if the run stopped early, ``phalanx.run.cancelled_by``. Its
status is ERROR when some task did not succeed.

Every attempt is a child span named after its task, from the attempt's start to its end
(explicit times: the events' ``at`` added to the run's Unix start, so the spans are placed
where the attempts really ran, whatever the exporter's delay). Attributes:
``phalanx.task.id``, ``phalanx.task.attempt``, ``phalanx.task.worker`` (the slot),
``phalanx.task.status`` (a terminal status, or ``retried`` for an attempt that failed and
ran again), and when known ``phalanx.task.exit_code``, ``phalanx.task.signal``,
``phalanx.task.reason`` and ``phalanx.task.worker_address`` (the cluster worker a task's
last attempt ran on, ``--backend dask``). Failed, timed-out and crashed attempts, and
retried ones, have status ERROR with the reason; others keep the status UNSET, as
OpenTelemetry asks of instrumentation. A task that never ran (skipped, cancelled before it
started) has no span of its own: it is an event on the root span, so the span count is the
attempts plus one.

Without a tracer provider the sink builds one: OTLP over HTTP (protobuf), configured the
standard way by the ``OTEL_EXPORTER_OTLP_*`` variables (endpoint, headers, timeout,
compression), batched by a ``BatchSpanProcessor``, with ``service.name`` from
``OTEL_SERVICE_NAME`` (or ``OTEL_RESOURCE_ATTRIBUTES``) if set, else ``service_name``. At
close it flushes and shuts that provider down; a provider passed in is flushed but stays the
caller's to shut down.

OpenTelemetry is optional (``pip install 'phalanx[otel]'``): it is imported only when an
`OtelSink` is made, so ``import phalanx`` never needs it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .. import __version__
from ..errors import ConfigError
from ..events import Event, RunCancelling, RunFinished, RunStarted, TaskFinished, TaskRetrying, TaskStarted
from ..results import RunSummary, Status, TaskResult

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.trace import Span, Status as SpanStatus, Tracer, TracerProvider
    from opentelemetry.util.types import AttributeValue

MISSING_SDK = "--otel needs the opentelemetry SDK: pip install 'phalanx[otel]'"

#: The status attribute of an attempt that failed and was tried again.
RETRIED = "retried"

#: The terminal statuses that are failures (span status ERROR); a skip or a cancellation is
#: the run's decision, not the task's failure.
_FAILURES = frozenset({Status.FAILED, Status.TIMED_OUT, Status.CRASHED})

#: How long close waits for the exporter, in milliseconds: the OTLP exporter's own default
#: timeout, so an unreachable collector delays the end of a run by at most this.
FLUSH_TIMEOUT_MS = 10_000


class OtelSink:
    """Sends the run to OpenTelemetry as spans.

    Args:
        tracer_provider: where the spans go; None builds an OTLP/HTTP exporting provider
            configured by the ``OTEL_*`` environment variables, which the sink owns.
        service_name: the ``service.name`` of the provider the sink builds, unless the
            environment names one (``OTEL_SERVICE_NAME``). Unused with a provider given.

    Raises:
        ConfigError: OpenTelemetry (API, SDK and OTLP/HTTP exporter) is not installed.
    """

    def __init__(self, tracer_provider: TracerProvider | None = None, *, service_name: str = "phalanx") -> None:
        try:
            from opentelemetry import trace
        except ImportError as error:
            raise ConfigError(MISSING_SDK) from error
        self._trace = trace
        self._owned = tracer_provider is None
        self._provider: TracerProvider = _build_provider(service_name) if tracer_provider is None else tracer_provider
        self._tracer: Tracer = self._provider.get_tracer("phalanx", __version__)
        self._epoch_ns = 0  # the run's start as Unix nanoseconds: the events' `at` counts from it
        self._last = 0.0  # the latest event time, where whatever is still open ends at close
        self._root: Span | None = None
        self._root_context: Context | None = None
        self._running: dict[str, Span] = {}
        self._closed = False

    def _ns(self, at: float) -> int:
        return self._epoch_ns + round(at * 1e9)

    # ------------------------------------------------------------------ events

    def handle(self, event: Event) -> None:
        self._last = max(self._last, event.at)
        if isinstance(event, TaskStarted):
            self._running[event.task_id] = self._tracer.start_span(
                event.task_id,
                context=self._root_context,
                start_time=self._ns(event.at),
                attributes={
                    "phalanx.task.id": event.task_id,
                    "phalanx.task.attempt": event.attempt,
                    "phalanx.task.worker": event.worker,
                },
            )
        elif isinstance(event, TaskRetrying):
            span = self._running.pop(event.task_id, None)
            if span is not None:
                span.set_attribute("phalanx.task.status", RETRIED)
                span.set_attribute("phalanx.task.reason", event.reason)
                span.set_attribute("phalanx.task.retry_delay", event.delay)
                span.set_status(self._error(event.reason))
                span.end(end_time=self._ns(event.at))
        elif isinstance(event, TaskFinished):
            self._task_finished(event.result, event.at)
        elif isinstance(event, RunStarted):
            self._run_started(event)
        elif isinstance(event, RunCancelling):
            if self._root is not None:
                self._root.add_event(
                    "cancelling", {"phalanx.run.cancelled_by": event.reason.label}, timestamp=self._ns(event.at)
                )
        elif isinstance(event, RunFinished):
            self._end_root(event.report.summary, event.at)

    def _run_started(self, event: RunStarted) -> None:
        self._epoch_ns = round(event.started_at * 1e9)
        self._root = self._tracer.start_span(
            "phalanx run",
            start_time=self._epoch_ns,
            attributes={
                "phalanx.run.id": event.run_id,
                "phalanx.run.total": event.total,
                "phalanx.run.max_workers": event.max_workers,
            },
        )
        self._root_context = self._trace.set_span_in_context(self._root)

    def _task_finished(self, result: TaskResult, at: float) -> None:
        span = self._running.pop(result.task_id, None)
        if span is None:
            # It ended without an attempt running: worth a line on the run, not a span.
            if self._root is not None:
                attributes: dict[str, AttributeValue] = {
                    "phalanx.task.id": result.task_id,
                    "phalanx.task.status": result.status.value,
                }
                if result.reason:
                    attributes["phalanx.task.reason"] = result.reason
                self._root.add_event(f"task {result.status.value}", attributes, timestamp=self._ns(at))
            return
        span.set_attribute("phalanx.task.status", result.status.value)
        if result.exit_code is not None:
            span.set_attribute("phalanx.task.exit_code", result.exit_code)
        if result.signal is not None:
            span.set_attribute("phalanx.task.signal", result.signal)
        if result.reason:
            span.set_attribute("phalanx.task.reason", result.reason)
        if result.worker_address is not None:
            span.set_attribute("phalanx.task.worker_address", result.worker_address)
        if result.status in _FAILURES:
            span.set_status(self._error(result.reason or result.status.value))
        span.end(end_time=self._ns(at))

    def _end_root(self, summary: RunSummary | None, at: float) -> None:
        root, self._root = self._root, None
        if root is None:
            return
        if summary is not None:
            for status, count in summary.counts.items():
                root.set_attribute(f"phalanx.run.{status.value}", count)
            root.set_attribute("phalanx.run.flaky", summary.flaky)
            root.set_attribute("phalanx.run.wall_time", summary.wall_time)
            if summary.cancelled_by is not None:
                root.set_attribute("phalanx.run.cancelled_by", summary.cancelled_by.label)
            failed = summary.total - summary.counts.get(Status.SUCCEEDED, 0)
            if failed:
                root.set_status(self._error(f"{failed} of {summary.total} tasks did not succeed"))
        else:
            root.set_status(self._error("the run ended before it finished"))
        root.end(end_time=self._ns(at))

    def _error(self, description: str) -> SpanStatus:
        return self._trace.Status(self._trace.StatusCode.ERROR, description)

    # ------------------------------------------------------------------ close

    def close(self) -> None:
        """End whatever is still open (an aborted run), then flush the spans out."""
        if self._closed:
            return
        self._closed = True
        for span in self._running.values():
            span.set_attribute("phalanx.task.status", "unfinished")
            span.set_status(self._error("still running when the run ended"))
            span.end(end_time=self._ns(self._last))
        self._running.clear()
        self._end_root(None, self._last)
        # The API's provider has neither method; the SDK's (and most others') have both.
        flush = getattr(self._provider, "force_flush", None)
        if flush is not None:
            flush(FLUSH_TIMEOUT_MS)
        if self._owned:
            shutdown = getattr(self._provider, "shutdown", None)
            if shutdown is not None:
                shutdown()


def _build_provider(service_name: str) -> TracerProvider:
    """An SDK provider exporting OTLP/HTTP in batches, configured by the environment."""
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import SERVICE_NAME, OTELResourceDetector, Resource
        from opentelemetry.sdk.trace import TracerProvider as SdkTracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError as error:
        raise ConfigError(MISSING_SDK) from error
    # The environment's service name wins, as everywhere in OpenTelemetry: `--otel` has no
    # option for it, and OTEL_SERVICE_NAME is how a user running many tools tells them apart.
    named = OTELResourceDetector().detect().attributes.get(SERVICE_NAME)
    resource = Resource.create({} if named else {SERVICE_NAME: service_name})
    provider = SdkTracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    return provider
