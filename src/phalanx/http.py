"""HTTP failures as retry rules: which to retry, how long the server asked us to wait, which mean "slow down".

Coroutine tasks that call APIs (LLM providers above all) fail in a few ways that a retry
policy must tell apart: a response the server may answer differently next time (408, 429,
5xx), a response it never will (404, 401, 400), a network that failed on the way (a refused
or dropped connection), and a server that is overloaded (429, 503, a timeout). The last kind
is a congestion signal: retrying it at once only adds load, so every task on the same
limiter key should slow down, for as long as the server said (``Retry-After``) if it said.

`classify` turns an exception into a `Failure` saying all that. It knows phalanx's own
`RetryAfter` and `HTTPStatusError`, aiohttp's and httpx's exceptions, and the builtin
timeout and connection errors. aiohttp and httpx are optional: this module never imports
them, it looks their exception types up in ``sys.modules`` (an exception of theirs can only
exist once they have been imported) and reads responses by duck typing.
"""

from __future__ import annotations

import math
import numbers
import re
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any
from urllib.parse import urlsplit, urlunsplit

__all__ = [
    "Failure",
    "HTTPStatusError",
    "RetryAfter",
    "classify",
    "parse_retry_after",
    "raise_for_status",
    "retryable_status",
]

#: Statuses that say the server is overloaded rather than that this request is wrong:
#: 429 Too Many Requests, 503 Service Unavailable, and 529, which Anthropic's API sends
#: when it is overloaded (not a registered status, but the clearest congestion signal there is).
THROTTLE_STATUSES = frozenset({429, 503, 529})

# delta-seconds: RFC 9110 allows only digits; a fraction is accepted because some servers
# send one. Stricter than float(), which would also take "inf", "nan", "1_0" and "-1".
_DELAY = re.compile(r"[0-9]+(?:\.[0-9]*)?|\.[0-9]+")


def _seconds(value: float) -> str:
    """A delay for a message: ``2s``, ``1.5s``, ``0.125s``."""
    if value == int(value):
        return f"{int(value)}s"
    return f"{value:.3f}".rstrip("0").rstrip(".") + "s"


class RetryAfter(Exception):
    """Raised by a task to say: throttled, try again after `seconds`.

    The wait is shared by every task on the same limiter key: the server that throttled
    this task will throttle the others too, so none of them should call it before then.

    Attributes:
        seconds: how long to wait before the next attempt (finite, >= 0).
        message: what the task said about it, if anything.
    """

    seconds: float
    message: str

    def __init__(self, seconds: float, message: str = "") -> None:
        if isinstance(seconds, bool) or not isinstance(seconds, numbers.Real):
            raise TypeError(f"RetryAfter seconds must be a number, not {type(seconds).__name__}")
        if not math.isfinite(seconds) or seconds < 0:
            raise ValueError(f"RetryAfter seconds must be finite and >= 0, not {seconds!r}")
        # Both in args: an exception raised in a worker process is pickled back as cls(*args).
        super().__init__(seconds, message)
        self.seconds = float(seconds)
        self.message = message

    def __str__(self) -> str:
        wait = f"retry after {_seconds(self.seconds)}"
        return f"{self.message}: {wait}" if self.message else wait


class HTTPStatusError(Exception):
    """A response with status >= 400 (raised by `raise_for_status`).

    Attributes:
        status: the HTTP status code.
        retry_after: the seconds the response asked to wait (``Retry-After``), if it did.
        url: the URL requested, without its query string or credentials (an API key in
            ``?key=`` must not end up in logs and reports).
        reason: the status's reason phrase (``"Too Many Requests"``), or ``""``.
    """

    status: int
    url: str
    reason: str
    retry_after: float | None

    def __init__(self, status: int, url: str = "", reason: str = "", retry_after: float | None = None) -> None:
        # All in args, positionally: an exception raised in a worker process is pickled back as cls(*args).
        super().__init__(status, url, reason, retry_after)
        self.status = status
        self.url = url
        self.reason = reason
        self.retry_after = retry_after

    def __str__(self) -> str:
        text = f"HTTP {self.status}"
        if self.reason:
            text += f" {self.reason}"
        if self.url:
            text += f" from {self.url}"
        if self.retry_after is not None:
            text += f": retry after {_seconds(self.retry_after)}"
        return text


@dataclass(frozen=True, slots=True)
class Failure:
    """What a failed attempt means for retrying it.

    Attributes:
        status: the HTTP status, if the failure was a response.
        retry_after: the seconds the server (or the task, with `RetryAfter`) asked to wait.
        throttled: a congestion signal (429, 503, 529, a timeout, `RetryAfter`): every task
            on the same limiter key should slow down, not just this one retry later.
        retryable: worth retrying at all: 408, 429, 5xx, timeouts, connection errors,
            `RetryAfter`; not any other 4xx, nor a certificate that failed verification.
    """

    status: int | None
    retry_after: float | None
    throttled: bool
    retryable: bool


def retryable_status(status: int) -> bool:
    """Whether a response with this status may succeed if sent again: 408, 429 and 5xx."""
    return status in (408, 429) or 500 <= status <= 599


def _for_status(status: int, retry_after: float | None) -> Failure:
    return Failure(
        status=status,
        retry_after=retry_after,
        throttled=status in THROTTLE_STATUSES,
        retryable=retryable_status(status),
    )


# Failures that carry no status: the network or the clock failed, not the server's answer.
_TIMEOUT = Failure(status=None, retry_after=None, throttled=True, retryable=True)
_CONNECTION = Failure(status=None, retry_after=None, throttled=False, retryable=True)
_PERMANENT = Failure(status=None, retry_after=None, throttled=False, retryable=False)


def _header_values(headers: object, names: tuple[str, ...]) -> Iterator[tuple[str, str]]:
    """Every ``(lowercased name, value)`` among ``names`` in ``headers``, in order.

    Works on anything with ``items()`` (a dict in any case, aiohttp's CIMultiDictProxy, which
    yields repeated headers one by one) and prefers ``multi_items()`` where there is one:
    httpx.Headers joins a repeated header with ", " in ``items()``, which would mangle it.
    """
    pairs: Any = getattr(headers, "multi_items", None) or getattr(headers, "items", None)
    if not callable(pairs):
        return
    for name, value in pairs():
        if isinstance(name, bytes):
            name = name.decode("latin-1")
        if isinstance(value, bytes):
            value = value.decode("latin-1")
        if isinstance(name, str) and isinstance(value, str) and name.lower() in names:
            yield name.lower(), value


def _delay(text: str) -> float | None:
    """Non-negative finite delta-seconds, or None."""
    text = text.strip()
    if not _DELAY.fullmatch(text):
        return None
    value = float(text)
    return value if math.isfinite(value) else None  # a thousand digits overflow to inf


def _date_delay(text: str, now: float) -> float | None:
    """The seconds from ``now`` to an HTTP-date (0.0 if it has passed), or None."""
    # Imported here: email.utils costs more than the rest of this module, and dates are rare.
    import email.utils
    from datetime import UTC

    try:
        when = email.utils.parsedate_to_datetime(text.strip())
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:  # "-0000": RFC 5322's "zone unknown"; HTTP-dates are always GMT
        when = when.replace(tzinfo=UTC)
    try:
        delay = when.timestamp() - now
    except (OverflowError, OSError, ValueError):
        return None
    return max(0.0, delay) if math.isfinite(delay) else None


def parse_retry_after(headers: object, *, now: float | None = None) -> float | None:
    """The seconds a response asked to wait before the next request, or None if it did not say.

    ``headers`` is a mapping of header names to values in any case (a dict, aiohttp's
    CIMultiDictProxy, httpx.Headers). ``retry-after-ms`` (milliseconds, as OpenAI sends it)
    wins, being the more precise; then ``retry-after``, either delta-seconds (an integer, or
    a fraction) or an HTTP-date, counted from ``now`` (default: `time.time`), a date already
    past meaning 0.0. A value that is garbage, negative or not finite is ignored, as if absent:
    a broken header must not make a task wait forever, nor fail the task.
    """
    found = list(_header_values(headers, ("retry-after-ms", "retry-after")))
    for name, value in found:
        if name == "retry-after-ms" and (millis := _delay(value)) is not None:
            return millis / 1000.0
    for name, value in found:
        if name != "retry-after":
            continue
        seconds = _delay(value)
        if seconds is None:
            seconds = _date_delay(value, time.time() if now is None else now)
        if seconds is not None:
            return seconds
    return None


def _public_url(url: object) -> str:
    """``url`` as text without credentials, query or fragment: those may hold secrets (API keys)."""
    text = str(url) if url is not None else ""
    try:
        parts = urlsplit(text)
        netloc = parts.netloc.rpartition("@")[2]
        return urlunsplit((parts.scheme, netloc, parts.path, "", ""))
    except ValueError:  # an unparsable URL: better no URL in the message than a leaked key
        return ""


def raise_for_status(response: object) -> None:
    """Raise `HTTPStatusError` if ``response`` has a status >= 400; do nothing otherwise.

    ``response`` is an aiohttp.ClientResponse (``.status``, ``.reason``), an httpx.Response
    (``.status_code``, ``.reason_phrase``) or anything shaped like either; its ``Retry-After``
    (or ``retry-after-ms``) header becomes the error's ``retry_after``. The body is not read,
    so this works on a streamed response and needs no ``await``.
    """
    status = getattr(response, "status_code", None)
    if not isinstance(status, int):
        status = getattr(response, "status", None)
    if not isinstance(status, int) or isinstance(status, bool):
        raise TypeError(f"not an HTTP response (no integer status or status_code): {type(response).__name__}")
    if status < 400:
        return
    reason = getattr(response, "reason_phrase", None)
    if not isinstance(reason, str) or not reason:
        reason = getattr(response, "reason", None)
    if not isinstance(reason, str) or not reason:
        try:
            reason = HTTPStatus(status).phrase
        except ValueError:  # an unregistered status, such as 529
            reason = ""
    raise HTTPStatusError(
        status,
        url=_public_url(getattr(response, "url", None)),
        reason=reason,
        retry_after=parse_retry_after(getattr(response, "headers", None)),
    )


def _certificate_failed(error: BaseException) -> bool:
    """Whether a TLS certificate failed verification somewhere in ``error``'s chain.

    Retrying cannot fix that (the certificate will not change in a second), and httpx
    reports it only as a ConnectError caused by the ssl module's error.
    """
    ssl = sys.modules.get("ssl")  # not imported here: without it, no certificate was checked
    if ssl is None:
        return False
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if isinstance(current, ssl.SSLCertVerificationError):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False


def _classify_aiohttp(error: BaseException) -> Failure | None:
    aiohttp = sys.modules.get("aiohttp")
    if aiohttp is None:
        return None
    if isinstance(error, aiohttp.ClientResponseError):  # and its subclasses (ContentTypeError, ...)
        status = error.status
        retry_after = parse_retry_after(error.headers) if error.headers is not None else None
        if not isinstance(status, int) or status <= 0:  # 0: aiohttp did not know the status
            return Failure(status=None, retry_after=retry_after, throttled=False, retryable=False)
        return _for_status(status, retry_after)
    if isinstance(error, aiohttp.ServerTimeoutError):  # before ClientConnectionError: it is one too
        return _TIMEOUT
    if isinstance(error, aiohttp.ClientConnectionError | aiohttp.ClientPayloadError):
        # ClientPayloadError: the connection broke in the middle of the body; a retry gets it whole.
        # A certificate or pinned fingerprint that does not match will not match on a retry either.
        if isinstance(error, aiohttp.ServerFingerprintMismatch) or _certificate_failed(error):
            return _PERMANENT
        return _CONNECTION
    return None


def _classify_httpx(error: BaseException) -> Failure | None:
    httpx = sys.modules.get("httpx")
    if httpx is None:
        return None
    if isinstance(error, httpx.HTTPStatusError):
        response = error.response
        return _for_status(response.status_code, parse_retry_after(response.headers))
    if isinstance(error, httpx.TimeoutException):
        return _TIMEOUT
    if isinstance(error, httpx.UnsupportedProtocol | httpx.LocalProtocolError):
        return _PERMANENT  # a URL without http(s), or a request we built wrong: the same next time
    if isinstance(error, httpx.TransportError):
        return _PERMANENT if _certificate_failed(error) else _CONNECTION
    return None


def classify(error: BaseException) -> Failure | None:
    """What ``error`` means for retrying, or None if it is not an HTTP or network matter.

    Knows `RetryAfter`, `HTTPStatusError`, aiohttp's ClientResponseError (its status and
    headers), ServerTimeoutError and ClientConnectionError, httpx's HTTPStatusError,
    TimeoutException and TransportError, and the builtin TimeoutError (asyncio's included)
    and ConnectionError. For any other exception it answers None: the retry policy's own
    rules apply to it.
    """
    if isinstance(error, RetryAfter):
        return Failure(status=None, retry_after=error.seconds, throttled=True, retryable=True)
    if isinstance(error, HTTPStatusError):
        return _for_status(error.status, error.retry_after)
    # The libraries' types first: some of theirs are also builtin timeout or connection errors.
    failure = _classify_aiohttp(error) or _classify_httpx(error)
    if failure is not None:
        return failure
    if isinstance(error, TimeoutError):  # asyncio.TimeoutError is TimeoutError since 3.11
        return _TIMEOUT
    if isinstance(error, ConnectionError):
        return _CONNECTION
    return None
