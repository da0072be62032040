"""Every experiment in experiments.csv (prompts x models) through an OpenAI-compatible API, with phalanx.

::

    python run.py                                   # against server.py, started here on a free port
    python run.py --results out.csv --seed 3        # another results file, another server seed
    python run.py --rate 50/s --tpm 0               # no token pacing: the server's budget answers 429s
    python run.py --url https://openrouter.ai/api/v1 --key "$OPENROUTER_API_KEY"   # a real provider

The whole run is one ``phalanx.amap`` call::

    phalanx.amap(ask, rows, max_workers=16, key=lambda row: row["model"],
                 rate=["5/s", phalanx.RateLimit("12000/min", weighted=True)], cost=tokens,
                 retries=3, timeout=60, client=session, results="results.csv", as_results=True)

* ``client=session``: one ``aiohttp.ClientSession`` for every request (a connection pool
  per provider, not a session per call), made when the run starts and closed when it ends;
  ``ask(row, session)`` gets it as its second argument.
* ``key=`` and ``rate=``: each model gets its own 5 requests a second and its own
  tokens-per-minute budget, charged ``cost=`` (the prompt's estimated tokens plus
  ``max_tokens``, as providers count them) per request.
* ``retries=3``: a 429, a 5xx, a timeout or a dropped connection is tried again, up to 3
  more times; ``phalanx.raise_for_status`` reads the response's ``Retry-After`` (and
  ``retry-after-ms``), and every request to the same model waits that long, not just the
  one that was throttled. A 400 or 401 is not retried.
* ``results=``: a row per experiment in the results CSV the moment it finishes (the
  experiment's columns, then ``status``, ``attempts``, ``duration``, ``error``, then the
  fields ``ask`` returned), so an interrupted run keeps everything finished so far.

With ``--url`` it talks to that API instead (any OpenAI-compatible ``/chat/completions``:
OpenAI, OpenRouter, a local Ollama or vLLM...), with the key from ``--key`` or
``OPENAI_API_KEY``; the model names in experiments.csv are OpenRouter's. It exits 0 when
every experiment succeeded, 1 when some did not, 2 when the run could not start.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import math
import os
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp

import phalanx

HERE = Path(__file__).resolve().parent
Row = dict[str, str]


def estimated_tokens(row: Row) -> float:
    """What a request costs a tokens-per-minute budget: the prompt (about four characters a
    token) plus all of ``max_tokens``, as providers reserve it before answering."""
    return math.ceil(len(row["prompt"]) / 4) + int(row["max_tokens"])


def make_ask(url: str) -> Callable[[Row, aiohttp.ClientSession], Awaitable[dict[str, Any]]]:
    endpoint = url.rstrip("/") + "/chat/completions"

    async def ask(row: Row, http: aiohttp.ClientSession) -> dict[str, Any]:
        """One experiment: one chat completion. Its dict becomes the row's last columns."""
        request = {"model": row["model"], "max_tokens": int(row["max_tokens"]),
                   "messages": [{"role": "user", "content": row["prompt"]}]}
        started = time.perf_counter()
        async with http.post(endpoint, json=request) as response:
            phalanx.raise_for_status(response)  # 429 -> retried after its Retry-After; 401 -> failed
            answer = await response.json()
        usage = answer.get("usage") or {}
        choice = answer["choices"][0]
        return {
            "latency": round(time.perf_counter() - started, 3),
            "prompt_tokens": usage.get("prompt_tokens"),
            "completion_tokens": usage.get("completion_tokens"),
            "finish_reason": choice.get("finish_reason"),
            "output": choice["message"]["content"],
        }

    return ask


@contextlib.asynccontextmanager
async def local_server(seed: int) -> AsyncIterator[str]:
    """server.py on a free port for the length of the block; its base URL. Stopped however
    the block ends; it also stops by itself if this process dies (its stdin closes)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, str(HERE / "server.py"), "--port", "0", "--seed", str(seed), "--stop-on-eof",
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        assert process.stdout is not None
        line = await asyncio.wait_for(process.stdout.readline(), timeout=30)
        if not line.startswith(b"http://"):
            assert process.stderr is not None
            problem = (await process.stderr.read()).decode(errors="replace")
            raise RuntimeError(f"server.py did not start: {problem.strip() or 'no URL printed'}")
        yield line.decode().strip()
    finally:
        if process.returncode is None:
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), timeout=5)
            except TimeoutError:
                process.kill()
                await process.wait()


async def server_stats(url: str) -> dict[str, int]:
    """What the local server saw (server.py's ``/stats``): requests, and 429s by cause."""
    async with aiohttp.ClientSession() as http, http.get(url.removesuffix("/v1") + "/stats") as response:
        stats: dict[str, int] = await response.json()
    return stats


def on_event(rows: list[Row]) -> Callable[[phalanx.Event], None]:
    """Say so when an experiment is retried (the results CSV has the rest)."""

    def show(event: phalanx.Event) -> None:
        if isinstance(event, phalanx.TaskRetrying):
            row = rows[int(event.task_id)]
            print(f"  retrying {row['experiment']} on {row['model']} in {event.delay:.2f} s: {event.reason}",
                  flush=True)

    return show


async def run(args: argparse.Namespace, url: str, key: str) -> Counter[str]:
    with args.experiments.open(newline="") as file:
        rows: list[Row] = list(csv.DictReader(file))
    rate: list[str | phalanx.RateLimit] = [args.rate]
    if args.tpm:
        rate.append(phalanx.RateLimit(f"{args.tpm}/min", weighted=True))
    print(f"{len(rows)} experiments from {args.experiments.name}, {len(set(row['model'] for row in rows))} models, "
          f"at {args.rate} and {args.tpm or 'unlimited'} tokens/min per model, on {url}", flush=True)

    def session() -> aiohttp.ClientSession:
        return aiohttp.ClientSession(headers={"Authorization": f"Bearer {key}"})

    if not args.append:
        args.results.unlink(missing_ok=True)  # phalanx appends to an existing results file
    counts: Counter[str] = Counter()
    retried = 0
    started = time.perf_counter()
    async for result in phalanx.amap(
            make_ask(url), rows, max_workers=args.workers, key=lambda row: row["model"],
            rate=rate, cost=estimated_tokens if args.tpm else None, retries=args.retries, timeout=args.timeout,
            client=session, results=args.results, as_results=True, on_event=on_event(rows)):
        counts[str(result.status)] += 1
        retried += result.attempts > 1
    seconds = time.perf_counter() - started
    by_status = ", ".join(f"{count} {status}" for status, count in counts.most_common())
    print(f"{len(rows)} experiments in {seconds:.1f} s: {by_status} ({retried} retried); "
          f"results in {shown(args.results)}")
    return counts


def shown(path: Path) -> str:
    """A path as short as it can be said from here."""
    with contextlib.suppress(ValueError):
        return str(path.resolve().relative_to(Path.cwd()))
    return str(path)


async def main_async(args: argparse.Namespace) -> int:
    if args.url:
        key = args.key or os.environ.get("OPENAI_API_KEY", "")
        if not key:
            print("run.py: --url needs an API key: --key KEY or OPENAI_API_KEY", file=sys.stderr)
            return 2
        counts = await run(args, args.url, key)
    else:
        try:
            async with local_server(args.seed) as url:
                counts = await run(args, url, "no-key-needed")
                stats = await server_stats(url)
        except (RuntimeError, OSError, TimeoutError) as error:
            print(f"run.py: {error}", file=sys.stderr)
            return 2
        print(f"server.py saw {stats['requests']} requests: {stats['completions']} answered, "
              f"{stats['random_429']} random 429s, {stats['over_budget']} 429s over a model's token budget")
    return 0 if set(counts) <= {str(phalanx.Status.SUCCEEDED)} else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--experiments", type=Path, default=HERE / "experiments.csv",
                        help="a CSV with prompt, model and max_tokens columns (default: experiments.csv)")
    parser.add_argument("--results", type=Path, default=HERE / "results.csv",
                        help="the results CSV (or .jsonl), written as experiments finish (default: results.csv here)")
    parser.add_argument("--append", action="store_true",
                        help="add to an existing results file rather than start a new one (its header is reused)")
    parser.add_argument("--url", help="base URL of an OpenAI-compatible API, e.g. https://openrouter.ai/api/v1 "
                        "(default: start server.py here)")
    parser.add_argument("--key", help="the API key for --url (default: $OPENAI_API_KEY)")
    parser.add_argument("--rate", default="5/s", help="requests per model (default 5/s)")
    parser.add_argument("--tpm", type=int, default=12000,
                        help="tokens per minute per model (default 12000; 0: no limit)")
    parser.add_argument("--workers", type=int, default=16, help="requests in flight at most (default 16)")
    parser.add_argument("--retries", type=int, default=3, help="more attempts for a 429, a 5xx, a timeout (default 3)")
    parser.add_argument("--timeout", type=float, default=60, help="seconds per attempt (default 60)")
    parser.add_argument("--seed", type=int, default=0,
                        help="server.py's seed: which requests it answers 429 (default 0)")
    args = parser.parse_args(argv)
    try:
        return asyncio.run(main_async(args))
    except KeyboardInterrupt:
        print("run.py: interrupted; the results file has every experiment that finished", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
