"""An OTLP/HTTP receiver on 127.0.0.1 for the tests that send spans for real.

    with otlp_receiver() as (base, received):
        ...  # point OTEL_EXPORTER_OTLP_ENDPOINT at base, run, then read received

It takes every POST (gzip and deflate bodies decompressed), keeps it as a `Received`, and
answers 200 with an empty response message, as a collector does.
"""

from __future__ import annotations

import gzip
import http.server
import threading
import zlib
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

#: The longest the receiver's thread is waited for when it stops, in seconds.
BOUND = 10.0

#: Loopback must never go through a proxy the machine may have configured.
LOOPBACK_UNPROXIED = {"NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}


def exporting_to(base: str, environ: Mapping[str, str]) -> dict[str, str]:
    """``environ`` for a child that sends its spans to the receiver at ``base``: every other
    OTEL_* setting taken out, loopback unproxied."""
    clean = {name: value for name, value in environ.items() if not name.startswith("OTEL_")}
    return {**clean, **LOOPBACK_UNPROXIED, "OTEL_EXPORTER_OTLP_ENDPOINT": base}


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]
    body: bytes


class _Receiver(http.server.BaseHTTPRequestHandler):
    """Takes the request, answers 200 with an empty response message."""

    received: list[Received]

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        encoding = self.headers.get("Content-Encoding", "")
        if encoding == "gzip":
            body = gzip.decompress(body)
        elif encoding == "deflate":
            body = zlib.decompress(body)
        self.received.append(Received(self.path, {k.lower(): v for k, v in self.headers.items()}, body))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet


@contextmanager
def otlp_receiver() -> Iterator[tuple[str, list[Received]]]:
    """A receiver on a free port of 127.0.0.1: its base URL and what it got, as it gets it."""
    received: list[Received] = []
    handler = type("Receiver", (_Receiver,), {"received": received})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", received
    finally:
        server.shutdown()
        server.server_close()
        thread.join(BOUND)
