"""``phalanx.amap`` against bare asyncio patterns and aiometer: HTTP requests to a local server.

A local ``aiohttp.web`` server, in a process of its own, answers every request after
``asyncio.sleep(0.020)`` with a small JSON body. Each client variant sends it 5,000 GET
requests, at most 100 in flight, through one shared ``aiohttp.ClientSession`` (a
connector limit of at least 100), reading every JSON body and checking every status:

* ``phalanx.amap``: ``async for _ in phalanx.amap(fetch, range(n), max_workers=100,
  client=<the session factory>, results=<a temp .jsonl>, on_event=<a counter>)``, as a
  user runs it: its events on (a callback counts them), and a results sink that writes one
  JSON line per request (what ``fetch`` returned, its status, attempts and duration);
  every line is counted afterwards;
* ``asyncio.Semaphore``: the common bare pattern, a task per request created up front,
  each taking a semaphore of 100 around its request, then ``asyncio.gather``;
* ``worker tasks``: 100 tasks that pull request numbers from one shared iterator, the
  fastest bare pattern (no task per request, no semaphore): the baseline;
* ``aiometer.amap``: ``aiometer.amap(fetch, range(n), max_at_once=100)``, streaming its
  results like ``phalanx.amap``.

Every variant runs in a fresh Python process of its own (a child of this script), so the
CPU time measured is that client's alone and no variant pays for another's garbage. In it,
after one untimed warm-up run of the same variant (200 requests: imports, first calls),
the timed run goes from creating the session to closing it, measuring wall time and the
process's CPU time (``time.process_time()``: user + system, every thread), plus that of
the child processes it ran and waited for meanwhile (``RUSAGE_CHILDREN``): phalanx writes
its results file through a small helper process, whose CPU is the client's too (the
progress lines on stderr show that part). The server is started once and serves every run.

Each round runs every variant once, in an order rotated from round to round so that none
always goes first; the table shows the medians of the rounds (at least 3): requests per
second, client CPU microseconds per request, and that CPU over the worker tasks' (the
baseline), then the lowest CPU per request of the rounds and the same ratio for it. CPU
per request is the figure to judge: requests per second also depend on the server, which
shares the machine with the client (two CPUs here), and on whatever else runs on it.

Target, on the medians: phalanx's client CPU per request at most 1.2x the worker tasks'
(measured before phalanx had ``amap``: about 255 µs for the worker tasks and 540 µs for
aiometer on this project's machine).

The exit status is 0 whether or not the target is met (this is a report); it is 1 if a
variant fails or does not complete all of its requests.

Run it from the repository root (it needs aiohttp and aiometer: the ``http`` and ``bench``
extras)::

    python benchmarks/async_throughput.py                  # 5 rounds of 5,000 requests, about a minute
    python benchmarks/async_throughput.py --quick          # 1 round of 1,000 requests: a smoke test
    python benchmarks/async_throughput.py --rounds 9 --requests 20000 --concurrency 200
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import resource
import shutil
import signal
import stat
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

LATENCY = 0.020  # seconds the server sleeps per request
WARM_UP = 200  # untimed requests per client process, before the timed run
TARGET = 1.2  # phalanx's CPU per request at most this times the worker tasks'
BASELINE = "worker tasks"


class VariantFailed(Exception):
    """A variant's process failed, or did not complete every request."""


# ------------------------------------------------------------------------ the server


def serve() -> int:
    """The server process: prints its URL, serves until SIGTERM/SIGINT or standard input closes."""
    from aiohttp import web

    body = json.dumps({"ok": True, "answer": 42, "text": "a small JSON body"}).encode()

    async def handle(request: web.Request) -> web.Response:
        await asyncio.sleep(LATENCY)
        return web.Response(body=body, content_type="application/json")

    async def main() -> None:
        app = web.Application()
        app.router.add_get("/", handle)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, backlog=1024)
        await site.start()
        host, port = runner.addresses[0][:2]
        print(f"http://{host}:{port}/", flush=True)
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        stdin = sys.stdin.fileno()

        def read_stdin() -> None:
            if not os.read(stdin, 4096):  # the benchmark is gone, or done
                loop.remove_reader(stdin)
                stop.set()

        if stat.S_ISFIFO(os.fstat(stdin).st_mode):  # a pipe from the benchmark (not a terminal, not /dev/null)
            loop.add_reader(stdin, read_stdin)
        try:
            await stop.wait()
        finally:
            await runner.cleanup()

    asyncio.run(main())
    return 0


class Server:
    """The server process, started once for the whole benchmark."""

    def __init__(self) -> None:
        self.process = subprocess.Popen([sys.executable, __file__, "--serve"], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, text=True)
        assert self.process.stdout is not None
        self.url = self.process.stdout.readline().strip()
        if not self.url.startswith("http://"):
            self.stop()
            raise VariantFailed(f"the server did not start (it printed {self.url!r})")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        for stream in (self.process.stdin, self.process.stdout):
            if stream is not None:
                stream.close()


# ----------------------------------------------------------------- the client variants


def new_session(concurrency: int) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=max(100, concurrency)))


async def fetch(session: aiohttp.ClientSession, url: str) -> dict[str, Any]:
    async with session.get(url) as response:
        response.raise_for_status()
        data: dict[str, Any] = await response.json()
    return data


async def run_worker_tasks(url: str, n: int, concurrency: int, results: Path) -> int:
    async with new_session(concurrency) as session:
        numbers = iter(range(n))

        async def worker() -> int:
            done = 0
            for _ in numbers:
                await fetch(session, url)
                done += 1
            return done

        return sum(await asyncio.gather(*(worker() for _ in range(concurrency))))


async def run_semaphore(url: str, n: int, concurrency: int, results: Path) -> int:
    async with new_session(concurrency) as session:
        semaphore = asyncio.Semaphore(concurrency)

        async def one(number: int) -> dict[str, Any]:
            async with semaphore:
                return await fetch(session, url)

        return len(await asyncio.gather(*(one(number) for number in range(n))))


async def run_aiometer(url: str, n: int, concurrency: int, results: Path) -> int:
    import aiometer

    async def one(number: int) -> dict[str, Any]:
        return await fetch(session, url)

    done = 0
    async with new_session(concurrency) as session, aiometer.amap(one, range(n), max_at_once=concurrency) as stream:
        async for _ in stream:
            done += 1
    return done


async def run_phalanx(url: str, n: int, concurrency: int, results: Path) -> int:
    import phalanx

    async def one(number: int, session: aiohttp.ClientSession) -> dict[str, Any]:
        async with session.get(url) as response:
            phalanx.raise_for_status(response)
            data: dict[str, Any] = await response.json()
        return data

    events = 0

    def on_event(event: object) -> None:
        nonlocal events
        events += 1

    done = 0
    async for _ in phalanx.amap(one, range(n), max_workers=concurrency, client=lambda: new_session(concurrency),
                                results=str(results), on_event=on_event):
        done += 1
    if not events:
        raise VariantFailed("phalanx.amap published no events")
    return done


VARIANTS: dict[str, Callable[[str, int, int, Path], Coroutine[Any, Any, int]]] = {
    "phalanx.amap": run_phalanx,
    "asyncio.Semaphore": run_semaphore,
    BASELINE: run_worker_tasks,
    "aiometer.amap": run_aiometer,
}


def client(variant: str, url: str, n: int, concurrency: int, directory: Path) -> int:
    """A client process: a warm-up run, then the timed run; prints one JSON line."""
    run = VARIANTS[variant]
    asyncio.run(run(url, min(n, WARM_UP), concurrency, directory / "warm-up.jsonl"))
    results = directory / "results.jsonl"
    gc.collect()

    async def timed() -> tuple[int, float, float, float]:
        started, cpu, children = time.perf_counter(), time.process_time(), _children_cpu()
        done = await run(url, n, concurrency, results)
        return done, time.perf_counter() - started, time.process_time() - cpu, _children_cpu() - children

    done, seconds, cpu, children = asyncio.run(timed())
    lines = sum(1 for _ in results.open()) if results.exists() else None
    print(json.dumps({"done": done, "seconds": seconds, "cpu": cpu + children, "children_cpu": children,
                      "results_lines": lines}))
    return 0


def _children_cpu() -> float:
    """CPU seconds of this process's children that have ended and been waited for: the
    helper process phalanx's results file is written by (it ends with the run) counts too."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


# ------------------------------------------------------------------------ measuring


@dataclass(frozen=True, slots=True)
class Timing:
    """One timed run of a variant: wall and CPU seconds for ``requests`` requests."""

    requests: int
    seconds: float
    cpu: float  # the client process's, and its children's
    children: float  # of which its children's

    @property
    def per_second(self) -> float:
        return self.requests / self.seconds

    @property
    def cpu_us(self) -> float:
        return self.cpu / self.requests * 1e6


def time_variant(variant: str, url: str, n: int, concurrency: int) -> Timing:
    directory = Path(tempfile.mkdtemp(prefix="async-throughput-"))
    try:
        command = [sys.executable, __file__, "--client", variant, "--url", url, "--requests", str(n),
                   "--concurrency", str(concurrency), "--directory", str(directory)]
        done = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
        if done.returncode:
            raise VariantFailed(f"{variant}: exit {done.returncode}: {done.stderr[-2000:]}")
        outcome = json.loads(done.stdout.splitlines()[-1])
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    if outcome["done"] != n:
        raise VariantFailed(f"{variant}: {outcome['done']} requests of {n} completed")
    if variant == "phalanx.amap" and outcome["results_lines"] != n:
        raise VariantFailed(f"{variant}: {outcome['results_lines']} lines in its results file, for {n} requests")
    return Timing(n, outcome["seconds"], outcome["cpu"], outcome["children_cpu"])


def measure(url: str, n: int, concurrency: int, rounds: int) -> dict[str, list[Timing]]:
    """Timings by variant, every variant once per round, in an order rotated per round."""
    names = list(VARIANTS)
    timings: dict[str, list[Timing]] = {name: [] for name in names}
    for number in range(rounds):
        shift = number % len(names)
        for name in names[shift:] + names[:shift]:
            timing = time_variant(name, url, n, concurrency)
            timings[name].append(timing)
            print(f"round {number + 1}/{rounds} {name:18} {timing.seconds:7.3f}s {timing.per_second:8.0f} req/s "
                  f"{timing.cpu_us:8.1f} µs CPU/request ({timing.children / n * 1e6:.1f} in child processes)",
                  file=sys.stderr, flush=True)
    return timings


def table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(cell) for cell in column) for column in zip(headers, *rows, strict=True)]
    lines = [headers, ["-" * width for width in widths], *rows]
    return "\n".join(
        "  ".join(cell.ljust(width) if i == 0 else cell.rjust(width)
                  for i, (cell, width) in enumerate(zip(line, widths, strict=True)))
        for line in lines
    )


def report(timings: dict[str, list[Timing]]) -> str:
    median_rps = {name: statistics.median(t.per_second for t in runs) for name, runs in timings.items()}
    median_cpu = {name: statistics.median(t.cpu_us for t in runs) for name, runs in timings.items()}
    best_cpu = {name: min(t.cpu_us for t in runs) for name, runs in timings.items()}
    rows = [[name, f"{median_rps[name]:.0f}", f"{median_cpu[name]:.1f}",
             f"{median_cpu[name] / median_cpu[BASELINE]:.2f}", f"{best_cpu[name]:.1f}",
             f"{best_cpu[name] / best_cpu[BASELINE]:.2f}"] for name in timings]
    headers = ["variant", "req/s", "CPU µs/req", f"x {BASELINE}", "lowest µs/req", "x (lowest)"]
    ratio = median_cpu["phalanx.amap"] / median_cpu[BASELINE]
    best_ratio = best_cpu["phalanx.amap"] / best_cpu[BASELINE]
    verdict = "PASS" if ratio <= TARGET else "MISS"
    return "\n".join([
        table(headers, rows),
        "",
        f"{verdict}  phalanx.amap's client CPU per request <= {TARGET:g}x the {BASELINE}': "
        f"{ratio:.2f}x (lowest rounds: {best_ratio:.2f}x)",
    ])


def _load() -> str:
    return " ".join(f"{load:.2f}" for load in os.getloadavg())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=5, help="rounds of every variant (default 5; the median counts)")
    parser.add_argument("--requests", type=int, default=5000, help="requests per run (default 5,000)")
    parser.add_argument("--concurrency", type=int, default=100, help="requests in flight at most (default 100)")
    parser.add_argument("--quick", action="store_true", help="1 round of 1,000 requests: a smoke test")
    # The benchmark's own children: the server, and one client run.
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--client", choices=list(VARIANTS), help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--directory", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        return serve()
    if args.client:
        return client(args.client, args.url, args.requests, args.concurrency, args.directory)

    rounds, n = (1, 1000) if args.quick else (args.rounds, args.requests)
    if rounds < 1 or n < 1 or args.concurrency < 1:
        parser.error("--rounds, --requests and --concurrency must be at least 1")
    import phalanx

    notes = [f"{n:,} requests per run, at most {args.concurrency} in flight, server latency {LATENCY * 1e3:g} ms; "
             f"{os.cpu_count()} CPUs, Python {sys.version.split()[0]}, aiohttp {aiohttp.__version__}, phalanx from "
             f"{Path(phalanx.__file__).parent}; median of {rounds} round(s), every run in a fresh process",
             f"load average at start: {_load()}"]
    server = Server()
    try:
        timings = measure(server.url, n, args.concurrency, rounds)
    except VariantFailed as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    finally:
        server.stop()
    notes.append(f"load average at end: {_load()} (other processes on the machine disturb the timings)")
    print("\n".join(notes))
    print()
    print(report(timings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
