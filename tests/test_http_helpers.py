"""phalanx.http against real clients and a real local server: raise_for_status, parse_retry_after,
classify, RetryAfter; and the LocalServer the other async tests build on."""

from __future__ import annotations

import asyncio
import calendar
import math
import pickle
import subprocess
import sys
from collections.abc import Awaitable, Callable, Mapping
from types import SimpleNamespace
from typing import Any, TypeVar

import aiohttp
import httpx
import multidict
import pytest

from httpserver import LocalServer, burst_429, closed_port, fail_first
from phalanx.http import (
    Failure,
    HTTPStatusError,
    RetryAfter,
    classify,
    parse_retry_after,
    raise_for_status,
    retryable_status,
)

T = TypeVar("T")
WAIT = 10.0  # seconds: the bound on every test's event loop

DATE = "Wed, 21 Oct 2015 07:28:00 GMT"
DATE_TS = float(calendar.timegm((2015, 10, 21, 7, 28, 0)))

CLIENTS = ["aiohttp", "httpx"]


def run(coro: Awaitable[T]) -> T:
    """Run one test's coroutine on a fresh loop, bounded: a hang fails instead of stalling the suite."""

    async def bounded() -> T:
        return await asyncio.wait_for(coro, WAIT)

    return asyncio.run(bounded())


async def fetch_error(client: str, url: str) -> HTTPStatusError | None:
    """GET ``url`` with ``client`` and return what phalanx's raise_for_status raised on the response."""
    try:
        if client == "aiohttp":
            async with aiohttp.ClientSession() as session, session.get(url) as response:
                raise_for_status(response)
        else:
            async with httpx.AsyncClient() as http_client:
                raise_for_status(await http_client.get(url))
    except HTTPStatusError as error:
        return error
    return None


async def library_error(client: str, url: str) -> BaseException:
    """GET ``url`` and return what the client library's own raise_for_status raised."""
    try:
        if client == "aiohttp":
            async with aiohttp.ClientSession() as session, session.get(url) as response:
                response.raise_for_status()
        else:
            async with httpx.AsyncClient() as http_client:
                (await http_client.get(url)).raise_for_status()
    except Exception as error:
        return error
    raise AssertionError(f"{client} raised nothing for {url}")


# --- raise_for_status with real responses --------------------------------------------------


@pytest.mark.parametrize("client", CLIENTS)
def test_success_raises_nothing(client: str) -> None:
    async def scenario() -> None:
        async with LocalServer() as server:
            assert await fetch_error(client, server.url_for(key="a")) is None
            assert await fetch_error(client, server.url_for(path="/status/204")) is None
            assert server.statuses() == [200, 204]

    run(scenario())


@pytest.mark.parametrize("client", CLIENTS)
def test_404_is_not_retryable(client: str) -> None:
    async def scenario() -> None:
        async with LocalServer() as server:
            error = await fetch_error(client, server.url_for(path="/status/404"))
            assert error is not None
            assert (error.status, error.reason, error.retry_after) == (404, "Not Found", None)
            assert error.url == f"{server.url}/status/404"
            assert str(error) == f"HTTP 404 Not Found from {server.url}/status/404"
            assert classify(error) == Failure(status=404, retry_after=None, throttled=False, retryable=False)

    run(scenario())


@pytest.mark.parametrize("client", CLIENTS)
def test_429_with_retry_after_seconds(client: str) -> None:
    async def scenario() -> None:
        async with LocalServer() as server:
            error = await fetch_error(client, server.url_for(path="/status/429", retry_after="2"))
            assert error is not None
            assert (error.status, error.retry_after) == (429, 2.0)
            assert str(error) == f"HTTP 429 Too Many Requests from {server.url}/status/429: retry after 2s"
            assert classify(error) == Failure(status=429, retry_after=2.0, throttled=True, retryable=True)

    run(scenario())


@pytest.mark.parametrize("client", CLIENTS)
def test_retry_after_ms_wins(client: str) -> None:
    async def scenario() -> None:
        async with LocalServer() as server:
            url = server.url_for(path="/status/429", retry_after_ms="1500", retry_after="2")
            error = await fetch_error(client, url)
            assert error is not None
            assert error.retry_after == 1.5
            assert str(error).endswith(": retry after 1.5s")

    run(scenario())


@pytest.mark.parametrize("client", CLIENTS)
def test_retry_after_http_date(client: str) -> None:
    async def scenario() -> None:
        async with LocalServer() as server:
            url = server.url_for(path="/status/503", retry_after=DATE)
            if client == "aiohttp":
                async with aiohttp.ClientSession() as session, session.get(url) as response:
                    headers: Any = response.headers
            else:
                async with httpx.AsyncClient() as http_client:
                    headers = (await http_client.get(url)).headers
            assert parse_retry_after(headers, now=DATE_TS - 30.5) == 30.5
            assert parse_retry_after(headers, now=DATE_TS + 100) == 0.0  # a date already past
            # raise_for_status counts from the real time: the 2015 date has long passed.
            error = await fetch_error(client, url)
            assert error is not None and error.retry_after == 0.0

    run(scenario())


@pytest.mark.parametrize("client", CLIENTS)
def test_503_is_throttled_and_retryable(client: str) -> None:
    async def scenario() -> None:
        async with LocalServer() as server:
            error = await fetch_error(client, server.url_for(path="/status/503"))
            assert error is not None
            assert str(error) == f"HTTP 503 Service Unavailable from {server.url}/status/503"
            assert classify(error) == Failure(status=503, retry_after=None, throttled=True, retryable=True)

    run(scenario())


@pytest.mark.parametrize("client", CLIENTS)
def test_url_in_errors_keeps_no_query(client: str) -> None:
    """An API key in the query string must not reach error messages (and so logs and reports)."""

    async def scenario() -> None:
        async with LocalServer() as server:
            error = await fetch_error(client, server.url_for(key="sk-secret", path="/status/401"))
            assert error is not None
            assert "sk-secret" not in str(error) and "sk-secret" not in error.url
            assert error.url == f"{server.url}/status/401"

    run(scenario())


@pytest.mark.parametrize(
    ("status", "retry_after", "expected"),
    [
        (404, None, Failure(404, None, throttled=False, retryable=False)),
        (400, "3", Failure(400, 3.0, throttled=False, retryable=False)),
        (408, None, Failure(408, None, throttled=False, retryable=True)),
        (429, "2", Failure(429, 2.0, throttled=True, retryable=True)),
        (500, None, Failure(500, None, throttled=False, retryable=True)),
        (502, None, Failure(502, None, throttled=False, retryable=True)),
        (503, "0.25", Failure(503, 0.25, throttled=True, retryable=True)),
        (529, None, Failure(529, None, throttled=True, retryable=True)),
    ],
)
def test_library_errors_classify_as_ours(status: int, retry_after: str | None, expected: Failure) -> None:
    """aiohttp's and httpx's own raise_for_status errors mean the same as phalanx's."""

    async def scenario() -> None:
        async with LocalServer() as server:
            query = {} if retry_after is None else {"retry_after": retry_after}
            url = server.url_for(path=f"/status/{status}", **query)
            from_aiohttp = await library_error("aiohttp", url)
            from_httpx = await library_error("httpx", url)
            ours = await fetch_error("httpx", url)
            assert isinstance(from_aiohttp, aiohttp.ClientResponseError)
            assert isinstance(from_httpx, httpx.HTTPStatusError)
            assert ours is not None
            assert classify(from_aiohttp) == classify(from_httpx) == classify(ours) == expected

    run(scenario())


def test_raise_for_status_by_duck_typing() -> None:
    response = SimpleNamespace(status=529, reason=None, url="https://user:pw@api.example/v1?key=k#f", headers={})
    with pytest.raises(HTTPStatusError) as caught:
        raise_for_status(response)
    assert (caught.value.status, caught.value.reason, caught.value.url) == (529, "", "https://api.example/v1")
    assert str(caught.value) == "HTTP 529 from https://api.example/v1"
    raise_for_status(SimpleNamespace(status_code=302, headers={}))  # below 400: nothing
    with pytest.raises(TypeError, match="not an HTTP response"):
        raise_for_status(object())


# --- network failures ----------------------------------------------------------------------


def test_connection_refused_aiohttp() -> None:
    async def scenario() -> BaseException:
        with closed_port() as port:
            try:
                async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{port}/"):
                    pass
            except aiohttp.ClientError as error:
                return error
        raise AssertionError("the connection was not refused")

    error = run(scenario())
    assert isinstance(error, aiohttp.ClientConnectorError)
    assert classify(error) == Failure(status=None, retry_after=None, throttled=False, retryable=True)


def test_connection_refused_httpx() -> None:
    async def scenario() -> BaseException:
        with closed_port() as port:
            try:
                async with httpx.AsyncClient() as session:
                    await session.get(f"http://127.0.0.1:{port}/")
            except httpx.HTTPError as error:
                return error
        raise AssertionError("the connection was not refused")

    error = run(scenario())
    assert isinstance(error, httpx.ConnectError)
    assert classify(error) == Failure(status=None, retry_after=None, throttled=False, retryable=True)


def test_read_timeouts_are_throttled() -> None:
    """A server too slow to answer is a congestion signal, with either client."""

    async def scenario() -> list[BaseException]:
        errors: list[BaseException] = []
        async with LocalServer(latency=5.0) as server:
            timeout = aiohttp.ClientTimeout(sock_read=0.05)
            try:
                async with aiohttp.ClientSession(timeout=timeout) as session, session.get(server.url_for()):
                    pass
            except Exception as error:
                errors.append(error)
            try:
                async with httpx.AsyncClient(timeout=httpx.Timeout(0.05)) as client:
                    await client.get(server.url_for())
            except Exception as error:
                errors.append(error)
        return errors

    from_aiohttp, from_httpx = run(scenario())
    assert isinstance(from_aiohttp, aiohttp.ServerTimeoutError)
    assert isinstance(from_httpx, httpx.TimeoutException)
    timeout = Failure(status=None, retry_after=None, throttled=True, retryable=True)
    assert classify(from_aiohttp) == classify(from_httpx) == timeout


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (TimeoutError(), Failure(None, None, throttled=True, retryable=True)),
        (ConnectionRefusedError(), Failure(None, None, throttled=False, retryable=True)),
        (ConnectionResetError(), Failure(None, None, throttled=False, retryable=True)),
        (BrokenPipeError(), Failure(None, None, throttled=False, retryable=True)),
        (RetryAfter(3), Failure(None, 3.0, throttled=True, retryable=True)),
        (ValueError(), None),
        (KeyError("x"), None),
        (OSError(), None),
        (aiohttp.ServerDisconnectedError(), Failure(None, None, throttled=False, retryable=True)),
        (aiohttp.ClientPayloadError("cut short"), Failure(None, None, throttled=False, retryable=True)),
        (aiohttp.InvalidURL("nope"), None),
        (httpx.RemoteProtocolError("peer closed"), Failure(None, None, throttled=False, retryable=True)),
        (httpx.PoolTimeout("no connection free"), Failure(None, None, throttled=True, retryable=True)),
        (httpx.UnsupportedProtocol("ftp://"), Failure(None, None, throttled=False, retryable=False)),
        (httpx.DecodingError("bad gzip"), None),
    ],
    ids=repr,
)
def test_classify_exceptions(error: BaseException, expected: Failure | None) -> None:
    assert classify(error) == expected


def test_certificate_failures_are_not_retryable() -> None:
    import ssl

    cause = ssl.SSLCertVerificationError("certificate verify failed")
    try:
        try:
            raise cause
        except ssl.SSLError as inner:
            raise httpx.ConnectError("[SSL: CERTIFICATE_VERIFY_FAILED]") from inner
    except httpx.ConnectError as error:
        assert classify(error) == Failure(None, None, throttled=False, retryable=False)


def test_module_imports_no_http_library() -> None:
    """phalanx.http must work, and stay cheap to import, where neither aiohttp nor httpx is imported."""
    code = (
        "import sys, phalanx.http as h\n"
        "assert 'aiohttp' not in sys.modules and 'httpx' not in sys.modules, sorted(sys.modules)\n"
        "assert h.classify(TimeoutError()).throttled and h.classify(ValueError()) is None\n"
        "assert 'aiohttp' not in sys.modules and 'httpx' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=WAIT)


# --- RetryAfter and HTTPStatusError --------------------------------------------------------


@pytest.mark.parametrize("seconds", [-1, -0.001, math.inf, -math.inf, math.nan])
def test_retry_after_rejects_bad_seconds(seconds: float) -> None:
    with pytest.raises(ValueError, match="finite and >= 0"):
        RetryAfter(seconds)


@pytest.mark.parametrize("seconds", ["2", None, True])
def test_retry_after_rejects_non_numbers(seconds: Any) -> None:
    with pytest.raises(TypeError, match="must be a number"):
        RetryAfter(seconds)


def test_retry_after_values_and_text() -> None:
    assert RetryAfter(0).seconds == 0.0 and isinstance(RetryAfter(0).seconds, float)
    assert str(RetryAfter(2)) == "retry after 2s"
    assert str(RetryAfter(0.125, "quota exhausted")) == "quota exhausted: retry after 0.125s"
    assert RetryAfter(1.5, "m").message == "m"


def test_exceptions_survive_pickling() -> None:
    """Raised in a worker process, they come back pickled and must still classify the same."""
    for error in (RetryAfter(1.5, "slow down"), HTTPStatusError(429, "http://h/p", "Too Many Requests", 2.0)):
        copy = pickle.loads(pickle.dumps(error))
        assert type(copy) is type(error) and str(copy) == str(error)
        assert classify(copy) == classify(error)


def test_retryable_status() -> None:
    assert [s for s in range(100, 700) if retryable_status(s)] == [408, 429, *range(500, 600)]


# --- parse_retry_after ---------------------------------------------------------------------

Headers = Callable[[Mapping[str, str]], object]
CONTAINERS: dict[str, Headers] = {
    "dict": dict,
    "CIMultiDict": multidict.CIMultiDict,
    "CIMultiDictProxy": lambda pairs: multidict.CIMultiDictProxy(multidict.CIMultiDict(pairs)),
    "httpx.Headers": httpx.Headers,
}


@pytest.mark.parametrize("container", CONTAINERS.values(), ids=CONTAINERS.keys())
@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({}, None),
        ({"Content-Type": "text/plain"}, None),
        ({"Retry-After": "2"}, 2.0),
        ({"retry-after": "0"}, 0.0),
        ({"RETRY-AFTER": "120"}, 120.0),
        ({"rEtRy-AfTeR": "1.25"}, 1.25),
        ({"Retry-After": " 3 "}, 3.0),
        ({"Retry-After": "soon"}, None),
        ({"Retry-After": ""}, None),
        ({"Retry-After": "-1"}, None),
        ({"Retry-After": "inf"}, None),
        ({"Retry-After": "Infinity"}, None),
        ({"Retry-After": "nan"}, None),
        ({"Retry-After": "1_000"}, None),
        ({"Retry-After": "0x10"}, None),
        ({"Retry-After": "9" * 400}, None),  # overflows a float
        ({"Retry-After": DATE}, 30.0),
        ({"Retry-After": "Wed, 21 Oct 2015 07:28:00 -0000"}, 30.0),  # "zone unknown": taken as GMT
        ({"Retry-After": "Wed, 99 Foo 2015 07:28:00 GMT"}, None),
        ({"Retry-After-Ms": "1500"}, 1.5),
        ({"retry-after-ms": "1500", "Retry-After": "2"}, 1.5),
        ({"RETRY-AFTER-MS": "-5", "Retry-After": "2"}, 2.0),  # a broken ms header: the other one counts
        ({"retry-after-ms": "garbage"}, None),
    ],
)
def test_parse_retry_after(container: Headers, headers: Mapping[str, str], expected: float | None) -> None:
    assert parse_retry_after(container(headers), now=DATE_TS - 30) == expected


def test_parse_retry_after_odd_inputs() -> None:
    assert parse_retry_after(None) is None
    assert parse_retry_after(object()) is None
    assert parse_retry_after({b"Retry-After": b"4"}) == 4.0  # raw header bytes
    # A repeated header: the first usable value counts (httpx joins repeats with ", " in items()).
    repeated = [("Retry-After", "soon"), ("Retry-After", "2")]
    assert parse_retry_after(httpx.Headers(repeated)) == 2.0
    assert parse_retry_after(multidict.CIMultiDict(repeated)) == 2.0


def test_parse_retry_after_date_defaults_to_now() -> None:
    assert parse_retry_after({"Retry-After": DATE}) == 0.0  # long past
    assert (parse_retry_after({"Retry-After": "Fri, 01 Jan 9999 00:00:00 GMT"}) or 0.0) > 1e9


# --- LocalServer itself --------------------------------------------------------------------


def test_one_session_reuses_one_connection() -> None:
    async def scenario() -> None:
        async with LocalServer() as server:
            async with aiohttp.ClientSession() as session:
                for _ in range(20):
                    async with session.get(server.url_for(key="k")) as response:
                        assert response.status == 200
                        await response.read()  # read whole: only then does the connection go back to the pool
            assert server.connections == 1
            async with httpx.AsyncClient() as client:
                for _ in range(20):
                    (await client.get(server.url_for(key="k"))).raise_for_status()
            assert server.connections == 2
            # A connector that closes every connection: one per request.
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session:
                for _ in range(5):
                    async with session.get(server.url_for()) as response:
                        assert response.status == 200
                        await response.read()
            assert server.connections == 7
            assert [r.n for r in server.requests] == list(range(1, 46))
            assert server.statuses("k") == [200] * 40

    run(scenario())


def test_body_and_records() -> None:
    async def scenario() -> None:
        async with LocalServer(latency=0.01) as server, aiohttp.ClientSession() as session:
            for key in ("a", "b"):
                async with session.get(server.url_for(key=key, path="/v1/chat")) as response:
                    assert await response.json() == {"ok": True, "n": 1 if key == "a" else 2, "key": key}
            async with session.get(server.url + "/") as response:
                assert (await response.json())["key"] == ""
            first, second, third = server.requests
            assert (first.key, first.path, first.status) == ("a", "/v1/chat", 200)
            assert first.at <= second.at <= third.at
            assert server.in_flight == 0 and server.peak_in_flight == 1

    run(scenario())


def test_concurrent_requests_are_answered_concurrently() -> None:
    async def scenario() -> None:
        async with LocalServer(latency=0.05) as server:
            connector = aiohttp.TCPConnector(limit=3)
            async with aiohttp.ClientSession(connector=connector) as session:

                async def one(i: int) -> int:
                    async with session.get(server.url_for(key=str(i))) as response:
                        return response.status

                assert await asyncio.gather(*(one(i) for i in range(9))) == [200] * 9
            assert 1 <= server.peak_in_flight <= 3  # never more than the client's limit
            assert server.in_flight == 0 and server.connections <= 3

    run(scenario())


def test_burst_429_with_a_driven_clock() -> None:
    now = [100.0]

    async def scenario() -> None:
        rule = burst_429(limit=3, window=1.0, retry_after=0.5)
        async with LocalServer(throttle=rule, clock=lambda: now[0]) as server, aiohttp.ClientSession() as session:

            async def get(key: str = "a") -> tuple[int, float | None]:
                async with session.get(server.url_for(key=key)) as response:
                    return response.status, parse_retry_after(response.headers)

            assert [await get() for _ in range(3)] == [(200, None)] * 3
            assert await get() == (429, 0.5)  # the fourth within the window
            now[0] += 0.3
            assert await get() == (429, 0.5)  # still paused
            assert await get("b") == (200, None)  # another key is not
            now[0] += 0.2  # the pause is over: the key starts afresh
            assert [await get() for _ in range(3)] == [(200, None)] * 3
            assert await get() == (429, 0.5)
            now[0] += 0.5
            # Spread out, requests stay under the limit: only those within the window count.
            for _ in range(6):
                assert await get() == (200, None)
                now[0] += 0.4
            assert server.statuses("a") == [200] * 3 + [429] * 2 + [200] * 3 + [429] + [200] * 6
            assert [r.at for r in server.requests][:3] == [100.0] * 3

    run(scenario())


def test_burst_429_in_real_time() -> None:
    """Honouring the Retry-After it sends, as a client would, gets a 200 again."""

    async def scenario() -> None:
        async with (
            LocalServer(throttle=burst_429(limit=2, window=30.0, retry_after=0.2)) as server,
            httpx.AsyncClient() as client,
        ):
            statuses = [(await client.get(server.url_for(key="x"))).status_code for _ in range(3)]
            assert statuses == [200, 200, 429]
            throttled = await client.get(server.url_for(key="x"))
            assert throttled.status_code == 429 and throttled.headers["Retry-After"] == "0.2"
            wait = parse_retry_after(throttled.headers)
            assert wait == 0.2
            await asyncio.sleep(wait)  # the protocol's wait, not synchronisation
            assert (await client.get(server.url_for(key="x"))).status_code == 200
            paused_at, resumed_at = server.requests[2].at, server.requests[-1].at
            assert resumed_at - paused_at >= 0.2

    run(scenario())


def test_fail_first() -> None:
    async def scenario() -> None:
        rules = [fail_first(2, 503, retry_after=1), fail_first(1, 500)]
        async with LocalServer(throttle=rules) as server, httpx.AsyncClient() as client:
            answers = []
            for key in ("a", "a", "a", "a", "b"):
                response = await client.get(server.url_for(key=key))
                answers.append((response.status_code, response.headers.get("Retry-After")))
            # Per key; the first rule that answers decides, and a rule counts only the requests it is asked about.
            assert answers == [(503, "1"), (503, "1"), (500, None), (200, None), (503, "1")]

    run(scenario())
