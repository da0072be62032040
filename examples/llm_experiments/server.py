"""A small OpenAI-compatible chat server on localhost, to run LLM experiments without API keys.

::

    python server.py --port 0          # the first line of stdout is its URL: http://127.0.0.1:PORT/v1
    python server.py --port 8000 --seed 7 --error-rate 0.2 --tpm 6000

``POST /v1/chat/completions`` takes and answers OpenAI's JSON shapes (``model``,
``messages``, ``max_tokens`` in; ``choices[0].message.content``, ``usage.prompt_tokens``,
``usage.completion_tokens``, ``usage.total_tokens``, ``model`` out), like a real provider:

* **latency per model**: a model's base latency plus a time per completion token, with
  +-20% jitter (the ``MODELS`` table; a model not in it gets the default profile);
* **a tokens-per-minute budget per model** (``--tpm``): each request is charged its prompt
  tokens plus its ``max_tokens`` (as OpenAI estimates) against a bucket that refills at
  ``tpm / 60`` tokens a second and holds ``--burst`` seconds of them; a request the bucket
  cannot pay for is answered 429 with ``Retry-After`` (whole seconds, rounded up) and
  ``retry-after-ms`` (exact) saying when it could be paid for;
* **occasional 429s at random** (``--error-rate``, drawn from an RNG seeded with
  ``--seed``), with a short ``Retry-After``, as providers do under load.

Completions are deterministic for a given model and prompt: a short mock reply, and a
completion token count between half of ``max_tokens`` and all of it. The content is not an
answer to anything; the shapes, latencies, token counts and 429s are what matter here.

``GET /stats`` returns what the server has seen (requests, completions, 429s by cause), and
``GET /v1/models`` lists the profiled models. The server stops on SIGINT or SIGTERM, and
with ``--stop-on-eof`` when its standard input closes (so that a parent that dies, even by
SIGKILL, takes it along).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import math
import os
import random
import signal
import stat
import sys
import time
from dataclasses import dataclass, field

from aiohttp import web


@dataclass(frozen=True, slots=True)
class Profile:
    """How a model behaves: seconds before the first token, seconds per completion token."""

    base: float
    per_token: float


MODELS: dict[str, Profile] = {
    "openai/gpt-4o-mini": Profile(base=0.12, per_token=0.0015),
    "anthropic/claude-3.5-haiku": Profile(base=0.20, per_token=0.0020),
    "meta-llama/llama-3.1-8b-instruct": Profile(base=0.08, per_token=0.0010),
}
DEFAULT_PROFILE = Profile(base=0.15, per_token=0.0015)


def count_tokens(text: str) -> int:
    """About four characters a token, as OpenAI's rule of thumb for English."""
    return max(1, math.ceil(len(text) / 4))


@dataclass(slots=True)
class TokenBucket:
    """A per-model token budget: ``rate`` tokens a second, at most ``capacity`` saved up."""

    rate: float
    capacity: float
    level: float = -1.0
    updated: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        if self.level < 0:
            self.level = self.capacity

    def take(self, tokens: float) -> float:
        """Charge ``tokens`` and return 0, or charge nothing and return the seconds to wait."""
        now = time.monotonic()
        self.level = min(self.capacity, self.level + (now - self.updated) * self.rate)
        self.updated = now
        tokens = min(tokens, self.capacity)  # a request bigger than the bucket waits for a full one
        if tokens <= self.level:
            self.level -= tokens
            return 0.0
        return (tokens - self.level) / self.rate


@dataclass(slots=True)
class Stats:
    requests: int = 0
    completions: int = 0
    over_budget: int = 0
    random_429: int = 0
    bad_requests: int = 0

    def as_dict(self) -> dict[str, int]:
        return {"requests": self.requests, "completions": self.completions, "over_budget": self.over_budget,
                "random_429": self.random_429, "bad_requests": self.bad_requests}


class Server:
    """The handlers, the buckets and the seeded RNG."""

    def __init__(self, *, seed: int, tpm: int, burst: float, error_rate: float, latency_scale: float) -> None:
        self.rng = random.Random(seed)
        self.tpm = tpm
        self.burst = burst
        self.error_rate = error_rate
        self.latency_scale = latency_scale
        self.buckets: dict[str, TokenBucket] = {}
        self.stats = Stats()

    def bucket(self, model: str) -> TokenBucket:
        if model not in self.buckets:
            rate = self.tpm / 60
            self.buckets[model] = TokenBucket(rate=rate, capacity=rate * self.burst)
        return self.buckets[model]

    async def completions(self, request: web.Request) -> web.Response:
        self.stats.requests += 1
        try:
            body = await request.json()
            model = body["model"]
            messages = body["messages"]
            prompt = "\n".join(str(message["content"]) for message in messages)
            max_tokens = int(body.get("max_tokens") or body.get("max_completion_tokens") or 256)
            if not isinstance(model, str) or max_tokens < 1:
                raise ValueError("model must be a string, max_tokens a positive integer")
        except (ValueError, KeyError, TypeError) as error:
            self.stats.bad_requests += 1
            return error_response(400, f"invalid request: {error!r}", "invalid_request_error", None)

        prompt_tokens = count_tokens(prompt)
        bucket = self.bucket(model)
        wait = bucket.take(prompt_tokens + max_tokens)
        if wait:
            self.stats.over_budget += 1
            return rate_limited(
                wait, f"Rate limit reached for {model} on tokens per min (TPM): limit {self.tpm}, "
                f"requested {prompt_tokens + max_tokens}. Please try again in {wait * 1000:.0f}ms.",
                limit=self.tpm, remaining=int(bucket.level))
        if self.rng.random() < self.error_rate:
            self.stats.random_429 += 1
            return rate_limited(self.rng.uniform(0.1, 0.5), "The server is overloaded (a simulated 429).",
                                limit=self.tpm, remaining=int(bucket.level))

        # Deterministic per (model, prompt): the same experiment gets the same reply every run.
        digest = hashlib.sha256(f"{model}\0{prompt}".encode()).digest()
        completion_tokens = max_tokens // 2 + digest[0] % (max_tokens - max_tokens // 2 + 1)
        profile = MODELS.get(model, DEFAULT_PROFILE)
        latency = (profile.base + profile.per_token * completion_tokens) * self.rng.uniform(0.8, 1.2)
        await asyncio.sleep(latency * self.latency_scale)

        self.stats.completions += 1
        content = f"Mock reply {digest[1:4].hex()} from {model.split('/')[-1]}, {completion_tokens} tokens."
        return web.json_response({
            "id": f"chatcmpl-{digest[4:16].hex()}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": "length" if completion_tokens == max_tokens else "stop",
            }],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens},
        })

    async def models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [
            {"id": name, "object": "model", "owned_by": name.split("/")[0]} for name in MODELS]})

    async def stats_handler(self, request: web.Request) -> web.Response:
        return web.json_response(self.stats.as_dict())


def error_response(status: int, message: str, kind: str, code: str | None,
                   headers: dict[str, str] | None = None) -> web.Response:
    """OpenAI's error shape: ``{"error": {"message", "type", "param", "code"}}``."""
    body = {"error": {"message": message, "type": kind, "param": None, "code": code}}
    return web.Response(status=status, text=json.dumps(body), content_type="application/json", headers=headers)


def rate_limited(seconds: float, message: str, *, limit: int, remaining: int) -> web.Response:
    headers = {
        "Retry-After": str(max(1, math.ceil(seconds))),  # HTTP's own header: whole seconds
        "retry-after-ms": str(max(1, round(seconds * 1000))),  # OpenAI's, exact
        "x-ratelimit-limit-tokens": str(limit),
        "x-ratelimit-remaining-tokens": str(max(0, remaining)),
        "x-ratelimit-reset-tokens": f"{seconds:.3f}s",
    }
    return error_response(429, message, "requests", "rate_limit_exceeded", headers)


def make_app(server: Server) -> web.Application:
    app = web.Application()
    app.router.add_post("/v1/chat/completions", server.completions)
    app.router.add_get("/v1/models", server.models)
    app.router.add_get("/stats", server.stats_handler)
    return app


async def serve(args: argparse.Namespace) -> None:
    server = Server(seed=args.seed, tpm=args.tpm, burst=args.burst, error_rate=args.error_rate,
                    latency_scale=args.latency_scale)
    runner = web.AppRunner(make_app(server), access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, args.host, args.port)
    await site.start()
    host, port = runner.addresses[0][:2]
    print(f"http://{host}:{port}/v1", flush=True)

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    if args.stop_on_eof and stat.S_ISFIFO(os.fstat(sys.stdin.fileno()).st_mode):  # a pipe from a parent
        stdin = sys.stdin.fileno()

        def read_stdin() -> None:
            if not os.read(stdin, 4096):  # end of file: the parent is gone or closed the pipe
                loop.remove_reader(stdin)
                stop.set()

        loop.add_reader(stdin, read_stdin)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
        print(f"server.py: {json.dumps(server.stats.as_dict())}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000, help="0 picks a free port (default 8000)")
    parser.add_argument("--seed", type=int, default=0, help="seeds the random 429s and the jitter (default 0)")
    parser.add_argument("--tpm", type=int, default=12000,
                        help="tokens-per-minute budget of each model (default 12000)")
    parser.add_argument("--burst", type=float, default=2.0,
                        help="seconds of the budget a model can save up and spend at once (default 2)")
    parser.add_argument("--error-rate", type=float, default=0.1,
                        help="share of requests answered 429 at random (default 0.1)")
    parser.add_argument("--latency-scale", type=float, default=1.0,
                        help="multiplies every simulated latency (0: answer at once)")
    parser.add_argument("--stop-on-eof", action="store_true", help="stop when standard input (a pipe) closes")
    args = parser.parse_args(argv)
    try:
        asyncio.run(serve(args))
    except KeyboardInterrupt:  # a second Ctrl-C while stopping
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
