"""`phalanx.amap` against a real local HTTP server: results as they finish, the shared
client, Retry-After pauses shared by a key, adaptive concurrency, failures kept apart."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Coroutine
from typing import Any

import aiohttp
import httpx
import pytest

import phalanx
from httpserver import LocalServer, burst_429
from phalanx import ConcurrencyChanged, RateLimitPaused, Status, TaskResult, TaskStarted

BOUND = 10.0  # seconds any one test may take


def run(coroutine: Coroutine[Any, Any, Any]) -> Any:
    async def bounded() -> Any:
        return await asyncio.wait_for(coroutine, BOUND)

    return asyncio.run(bounded())


async def collect(iterator: Any) -> list[Any]:
    return [value async for value in iterator]


async def double(x: int) -> int:
    await asyncio.sleep(0.001 * (x % 5))
    return 2 * x


def test_values_as_they_finish_and_in_input_order_when_asked() -> None:
    values = run(collect(phalanx.amap(double, range(50), max_workers=10)))
    assert sorted(values) == [2 * x for x in range(50)]
    ordered = run(collect(phalanx.amap(double, range(50), max_workers=10, ordered=True)))
    assert ordered == [2 * x for x in range(50)]


def test_async_iterables_and_plain_callables() -> None:
    async def numbers() -> Any:
        for x in range(20):
            yield x

    assert sorted(run(collect(phalanx.amap(double, numbers(), max_workers=4)))) == [2 * x for x in range(20)]
    caller = threading.get_ident()
    threads: set[int] = set()

    def square(x: int) -> int:
        threads.add(threading.get_ident())
        return x * x

    assert run(collect(phalanx.amap(square, range(10), ordered=True))) == [x * x for x in range(10)]
    assert caller not in threads  # a plain callable does not block the loop


def test_coroutines_run_on_the_callers_loop() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        seen: list[asyncio.AbstractEventLoop] = []

        async def where(x: int) -> int:
            seen.append(asyncio.get_running_loop())
            return x

        assert sorted([v async for v in phalanx.amap(where, range(5))]) == list(range(5))
        assert seen == [loop] * 5

    run(main())


def test_a_failure_never_cancels_its_siblings() -> None:
    async def flaky(x: int) -> int:
        await asyncio.sleep(0.01)
        if x == 3:
            raise ValueError("three")
        return x

    results: list[TaskResult] = run(collect(phalanx.amap(flaky, range(10), as_results=True, max_workers=10)))
    by_item = {int(r.task_id): r for r in results}
    assert by_item[3].status is Status.FAILED and "ValueError: three" in (by_item[3].reason or "")
    assert all(by_item[x].status is Status.SUCCEEDED and by_item[x].value == x for x in range(10) if x != 3)


def test_a_failed_item_raises_where_its_value_would_be() -> None:
    async def broken(x: int) -> int:
        if x == 2:
            raise KeyError("two")
        return x

    async def main() -> list[int]:
        got = []
        with pytest.raises(KeyError, match="two"):
            async for value in phalanx.amap(broken, range(5), max_workers=1, ordered=True):
                got.append(value)
        return got

    assert run(main()) == [0, 1]


def test_fail_fast_cancels_the_rest() -> None:
    started: list[int] = []

    async def slow(x: int) -> int:
        started.append(x)
        if x == 0:
            raise RuntimeError("first")
        await asyncio.sleep(5)
        return x

    results = run(collect(phalanx.amap(slow, range(100), max_workers=5, fail_fast=True, as_results=True)))
    statuses = [r.status for r in results]
    assert statuses.count(Status.FAILED) == 1
    assert len(started) <= 5  # nothing new started after the failure
    assert all(s in (Status.FAILED, Status.CANCELLED) for s in statuses)


def test_timeout_stops_a_coroutine() -> None:
    async def hang(x: int) -> int:
        await asyncio.sleep(60)
        return x

    start = time.monotonic()
    results = run(collect(phalanx.amap(hang, range(3), timeout=0.1, as_results=True)))
    assert [r.status for r in results] == [Status.TIMED_OUT] * 3
    assert time.monotonic() - start < 5


def test_leaving_the_loop_early_stops_the_rest() -> None:
    running = 0
    peak_after_break = 0

    async def work(x: int) -> int:
        nonlocal running
        running += 1
        try:
            await asyncio.sleep(0.01 if x < 3 else 60)
        finally:
            running -= 1
        return x

    async def main() -> None:
        nonlocal peak_after_break
        async with asyncio.timeout(BOUND):
            iterator = phalanx.amap(work, range(50), max_workers=10)
            async for _ in iterator:
                break
            await iterator.aclose()  # type: ignore[attr-defined]
        peak_after_break = running

    run(main())
    assert peak_after_break == 0  # every attempt was cancelled and ended


class Hook:
    """A client factory that counts the clients it made and remembers them."""

    def __init__(self, make: Any) -> None:
        self.make = make
        self.made: list[Any] = []

    def __call__(self) -> Any:
        client = self.make()
        self.made.append(client)
        return client


@pytest.mark.parametrize("library", ["aiohttp", "httpx"])
def test_one_shared_client_for_500_requests_closed_at_the_end(library: str) -> None:
    hook = Hook(aiohttp.ClientSession if library == "aiohttp" else httpx.AsyncClient)
    requests = 500 if library == "aiohttp" else 200  # httpx is slower; 200 show the same

    async def fetch(n: int, client: Any) -> int:
        if library == "aiohttp":
            async with client.get(server.url_for(key="k", n=str(n))) as response:
                phalanx.raise_for_status(response)
                return int((await response.json())["n"])
        response = await client.get(server.url_for(key="k", n=str(n)))
        phalanx.raise_for_status(response)
        return int(response.json()["n"])

    async def main() -> None:
        global server
        async with LocalServer() as server:
            values = [v async for v in phalanx.amap(fetch, range(requests), max_workers=50, client=hook)]
            assert sorted(values) == list(range(1, requests + 1)) and len(server.requests) == requests
            assert server.connections <= 50  # one client's pool, reused: not a connection per request

    run(main())
    assert len(hook.made) == 1
    assert _closed(hook.made[0])


@pytest.mark.parametrize("library", ["aiohttp", "httpx"])
def test_the_shared_client_is_closed_when_the_run_fails(library: str) -> None:
    hook = Hook(aiohttp.ClientSession if library == "aiohttp" else httpx.AsyncClient)

    async def fail(n: int, client: Any) -> int:
        raise OSError("down")

    async def main() -> None:
        with pytest.raises(OSError, match="down"):
            async for _ in phalanx.amap(fail, range(10), client=hook):
                pass

    run(main())
    assert len(hook.made) == 1 and _closed(hook.made[0])


def _closed(client: Any) -> bool:
    return bool(client.closed if isinstance(client, aiohttp.ClientSession) else client.is_closed)


server: LocalServer


def test_retry_after_pauses_every_request_on_the_key() -> None:
    """The server answers 429 with Retry-After: 1 to a burst; by the client's own clock, no
    request on that key starts between a 429's arrival and the end of its pause."""
    arrivals: list[float] = []  # when a 429 reached the client
    granted: dict[str, float] = {}  # when phalanx started each attempt (loop clock)
    sent: list[tuple[float, str]] = []

    async def call(n: int, client: aiohttp.ClientSession) -> int:
        loop = asyncio.get_running_loop()
        sent.append((loop.time(), str(n)))
        async with client.get(server.url_for(key="k", n=str(n))) as response:
            if response.status == 429:
                arrivals.append(loop.time())
            phalanx.raise_for_status(response)
            return n

    def on_event(event: phalanx.Event) -> None:
        if isinstance(event, TaskStarted):
            granted[f"{event.task_id}#{event.attempt}"] = asyncio.get_running_loop().time()

    async def main() -> list[TaskResult]:
        global server
        async with LocalServer(throttle=burst_429(limit=10, window=1.0, retry_after=1)) as server:
            return [r async for r in phalanx.amap(call, range(30), max_workers=30, retries=10, as_results=True,
                                                  client=aiohttp.ClientSession, on_event=on_event)]

    results = run(main())
    assert all(r.ok for r in results), [r.reason for r in results if not r.ok]
    assert arrivals, "the server never throttled: the test tests nothing"
    starts = sorted(granted.values())
    for arrival in arrivals:
        inside = [t for t in starts if arrival < t < arrival + 1.0 - 0.005]
        assert not inside, f"started {len(inside)} attempts during the pause after a 429 at {arrival}"


def test_adaptive_window_shrinks_after_429s_and_grows_back() -> None:
    windows: list[int] = []
    pauses: list[float] = []

    async def call(n: int, client: aiohttp.ClientSession) -> int:
        async with client.get(server.url_for(key="k", n=str(n))) as response:
            phalanx.raise_for_status(response)
            return n

    def on_event(event: phalanx.Event) -> None:
        if isinstance(event, ConcurrencyChanged):
            windows.append(event.window)
        elif isinstance(event, RateLimitPaused):
            pauses.append(event.seconds)

    async def main() -> list[TaskResult]:
        global server
        async with LocalServer(latency=0.005, throttle=burst_429(limit=12, window=0.5, retry_after=0.1)) as server:
            return [r async for r in phalanx.amap(call, range(150), max_workers=16, retries=20, adaptive=True,
                                                  as_results=True, client=aiohttp.ClientSession, on_event=on_event)]

    results = run(main())
    assert all(r.ok for r in results)
    assert pauses and windows
    assert min(windows) < 16  # it shrank after the 429s
    assert max(windows[windows.index(min(windows)):]) > min(windows)  # and grew back after


def test_options_are_checked_at_the_call() -> None:
    with pytest.raises(phalanx.ConfigError, match="max_workers must be a positive integer"):
        phalanx.amap(double, [1], max_workers=0)
    with pytest.raises(phalanx.ConfigError, match="rate: expected a rate such as"):
        phalanx.amap(double, [1], rate="fast")
    with pytest.raises(phalanx.ConfigError, match="cost= is charged to weighted rate limits"):
        phalanx.amap(double, [1], rate="1/s", cost=len)
    with pytest.raises(TypeError, match="needs a callable"):
        phalanx.amap(3, [1])  # type: ignore[arg-type]


def _cube(x: int) -> int:
    return x**3


def test_plain_callables_in_worker_processes() -> None:
    values = run(collect(phalanx.amap(_cube, range(20), backend="processes", max_workers=2, ordered=True)))
    assert values == [x**3 for x in range(20)]


def test_executor_runs_coroutine_functions_on_its_loop() -> None:
    async def fetch(x: int) -> int:
        await asyncio.sleep(0.001)
        return x + 1

    with phalanx.Executor(max_workers=4, backend="processes") as executor:
        futures = [executor.submit(fetch, x) for x in range(10)]
        assert [f.result(timeout=BOUND) for f in futures] == list(range(1, 11))
        task = phalanx.Task("later", fetch, args=(41,))
        assert executor.submit_task(task).result(timeout=BOUND) == 42
        assert executor.worker_pids() == []  # no worker process was needed for coroutines
