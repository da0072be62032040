"""A real HTTP server on 127.0.0.1 for the async tests: latency, throttling rules, and a record of what it saw.

    async with LocalServer(latency=0.05, throttle=burst_429(limit=5, window=1.0, retry_after=0.5)) as server:
        async with session.get(server.url_for(key="a")) as response: ...
        assert server.connections == 1

It runs on the test's own event loop (aiohttp's low-level `web.Server`, whose
``connection_made`` hook counts TCP connections). Every request names its limiter key in
the query (``?key=a``; default ``""``); throttling rules keep their state per key.
``GET /status/<code>`` answers that status, with ``?retry_after=`` and ``?retry_after_ms=``
copied verbatim into the ``Retry-After`` and ``retry-after-ms`` headers (rules do not apply
to it); any other path is answered by the rules, else 200 with
``{"ok": true, "n": <request number>, "key": <key>}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Protocol
from urllib.parse import urlencode

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

#: What a rule answers for a request it throttles: the status and the Retry-After header value (or None).
Answer = tuple[int, str | None]


@dataclass(frozen=True, slots=True)
class Request:
    """One request the server answered.

    Attributes:
        n: its number, from 1, in order of arrival.
        at: when it arrived (the server's clock: `time.monotonic` unless told otherwise).
        key: its ``key`` query parameter (``""`` if none).
        path: the path requested.
        status: the status it was answered with.
    """

    n: int
    at: float
    key: str
    path: str
    status: int


class Rule(Protocol):
    """Decides, when a request arrives, whether to answer it with an error instead of 200."""

    def __call__(self, key: str, now: float) -> Answer | None: ...


def _header(seconds: float) -> str:
    return str(int(seconds)) if seconds == int(seconds) else repr(float(seconds))


@dataclass(slots=True)
class _Burst:
    limit: int
    window: float
    retry_after: float
    admitted: dict[str, deque[float]] = field(default_factory=dict)
    paused_until: dict[str, float] = field(default_factory=dict)

    def __call__(self, key: str, now: float) -> Answer | None:
        if now < self.paused_until.get(key, float("-inf")):
            return 429, _header(self.retry_after)
        recent = self.admitted.setdefault(key, deque())
        while recent and recent[0] <= now - self.window:
            recent.popleft()
        if len(recent) >= self.limit:
            # Forget the burst: after the pause the key starts afresh, as a token bucket refilled would.
            recent.clear()
            self.paused_until[key] = now + self.retry_after
            return 429, _header(self.retry_after)
        recent.append(now)
        return None


def burst_429(limit: int, window: float, retry_after: float) -> Rule:
    """Per key: once ``limit`` requests were answered 200 within ``window`` seconds, the next
    is answered 429 with ``Retry-After: <retry_after>``, and so is every request on that key
    until ``retry_after`` seconds have passed; then the key starts afresh. Requests answered
    429 do not count towards the limit."""
    if limit < 0 or window <= 0 or retry_after < 0:
        raise ValueError("burst_429 needs limit >= 0, window > 0 and retry_after >= 0")
    return _Burst(limit, window, retry_after)


@dataclass(slots=True)
class _FailFirst:
    n: int
    status: int
    retry_after: float | None
    seen: dict[str, int] = field(default_factory=dict)

    def __call__(self, key: str, now: float) -> Answer | None:
        count = self.seen[key] = self.seen.get(key, 0) + 1
        if count > self.n:
            return None
        return self.status, None if self.retry_after is None else _header(self.retry_after)


def fail_first(n: int, status: int, retry_after: float | None = None) -> Rule:
    """Per key: the first ``n`` requests are answered ``status`` (with ``Retry-After`` if given), the rest 200."""
    return _FailFirst(n, status, retry_after)


class _CountingServer(web.Server):
    """aiohttp's low-level server, counting the TCP connections it accepts."""

    def __init__(self, handler: Any, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self.accepted = 0

    def connection_made(self, handler: RequestHandler, transport: asyncio.Transport) -> None:
        self.accepted += 1
        super().connection_made(handler, transport)


class LocalServer:
    """A local HTTP server for one test, as ``async with LocalServer(...) as server:``.

    Args:
        latency: seconds every response waits before it is sent (the server's simulated
            work; requests wait concurrently).
        throttle: a rule (`burst_429`, `fail_first`) or several, asked in order; the first
            that answers decides.
        clock: the clock arrival times and rules use (default `time.monotonic`); a test may
            pass its own to drive time-based rules without waiting.

    Attributes:
        url: ``http://127.0.0.1:<port>`` (set on entering).
        requests: every request answered so far, in order of arrival.
        connections: the TCP connections accepted so far.
        in_flight: the requests being answered now; peak_in_flight: the most at once.
    """

    def __init__(
        self,
        *,
        latency: float = 0.0,
        throttle: Rule | Sequence[Rule] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.latency = latency
        self.rules: tuple[Rule, ...] = (
            () if throttle is None else (throttle,) if callable(throttle) else tuple(throttle)
        )
        self.clock = clock
        self.requests: list[Request] = []
        self.in_flight = 0
        self.peak_in_flight = 0
        self.url = ""
        self._server: _CountingServer | None = None
        self._runner: web.ServerRunner | None = None

    @property
    def connections(self) -> int:
        return self._server.accepted if self._server is not None else 0

    def url_for(self, key: str | None = None, path: str = "/", **query: str) -> str:
        """The URL of ``path`` on this server, with ``key`` and ``query`` as query parameters."""
        if key is not None:
            query = {"key": key, **query}
        return self.url + path + ("?" + urlencode(query) if query else "")

    def statuses(self, key: str | None = None) -> list[int]:
        """The statuses answered, in order of arrival (only ``key``'s, if given)."""
        return [r.status for r in self.requests if key is None or r.key == key]

    async def __aenter__(self) -> LocalServer:
        # handler_cancellation: a client that gave up (a timeout test) stops its handler's
        # latency wait at once, instead of holding up the server's shutdown.
        self._server = _CountingServer(self._handle, handler_cancellation=True)
        # A short shutdown timeout: a test that ends with a request still waiting out its
        # latency should not wait a minute for it on the way out.
        self._runner = web.ServerRunner(self._server, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.url = f"http://{host}:{port}"
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def _decide(self, path: str, key: str, now: float) -> tuple[int, dict[str, str]]:
        parts = path.strip("/").split("/")
        if len(parts) == 2 and parts[0] == "status" and parts[1].isdigit():
            return int(parts[1]), {}
        for rule in self.rules:
            answer = rule(key, now)
            if answer is not None:
                status, retry_after = answer
                return status, {} if retry_after is None else {"Retry-After": retry_after}
        return 200, {}

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        now = self.clock()
        key = request.query.get("key", "")
        status, headers = self._decide(request.path, key, now)
        if request.path.startswith("/status/"):
            if "retry_after" in request.query:
                headers["Retry-After"] = request.query["retry_after"]
            if "retry_after_ms" in request.query:
                headers["retry-after-ms"] = request.query["retry_after_ms"]
        number = len(self.requests) + 1
        self.requests.append(Request(n=number, at=now, key=key, path=request.path, status=status))
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        try:
            if self.latency > 0:
                await asyncio.sleep(self.latency)
        finally:
            self.in_flight -= 1
        if status == 200:
            return web.json_response({"ok": True, "n": number, "key": key})
        return web.json_response(
            {"ok": False, "n": number, "key": key, "status": status}, status=status, headers=headers
        )


@contextlib.contextmanager
def closed_port() -> Iterator[int]:
    """A local port nothing listens on, for as long as the block runs.

    The socket is bound but never listens: connecting to it is refused at once (on Linux),
    and no other process can take the port meanwhile, as it could one merely closed.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]
