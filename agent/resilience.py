"""What a batch job needs to survive a real endpoint: which failures to retry, how long to wait,
and how fast to send.

- :func:`classify` sorts an exception from one model request into a :class:`Failure` kind
  (rate limit, server error, timeout, connection, bad response, ...) and says whether a retry can help.
- :class:`RetryPolicy` is exponential backoff with full jitter; a ``Retry-After`` from the server wins.
- :class:`RateLimiter` keeps requests/min and tokens/min under their limits with two token
  buckets, and pauses every request after a 429 that says how long to wait.

The client's own retries are off inside jobs (``max_retries=0``): ours record every attempt.
"""
from __future__ import annotations

import asyncio
import email.utils
import json
import random
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

import openai

# Failure kinds, as stored in attempts.error_kind.
RATE_LIMIT, SERVER_ERROR, TIMEOUT, CONNECTION = "rate_limit", "server_error", "timeout", "connection"
BAD_RESPONSE, CLIENT_ERROR, REFUSED, ABANDONED, OTHER = "bad_response", "client_error", "refused", "abandoned", "other"

# 401/403: the key or account is wrong; 404: the model does not exist. Every request would fail
# the same way, so the job stops instead of filling the database with error traces.
REFUSED_STATUSES = {401, 403, 404}
RETRY_STATUSES = {408, 409, 429}  # plus every 5xx


@dataclass(frozen=True)
class Failure:
    kind: str
    retryable: bool
    http_status: int | None = None
    retry_after: float | None = None  # seconds the server asked us to wait

    @property
    def refused(self) -> bool:
        return self.kind == REFUSED


def classify(exc: BaseException) -> Failure:
    """What went wrong with one model request, and whether trying again can help."""
    if isinstance(exc, openai.APIStatusError):
        status = exc.status_code
        retry_after = retry_after_seconds(getattr(exc.response, "headers", None))
        if status == 429:
            return Failure(RATE_LIMIT, True, status, retry_after)
        if status >= 500 or status in RETRY_STATUSES:
            return Failure(SERVER_ERROR, True, status, retry_after)
        if status in REFUSED_STATUSES:
            return Failure(REFUSED, False, status)
        return Failure(CLIENT_ERROR, False, status)  # 400, 413, 422: this request is wrong, not the server
    if isinstance(exc, openai.APITimeoutError):  # before APIConnectionError: it is a subclass
        return Failure(TIMEOUT, True)
    if isinstance(exc, openai.APIConnectionError):
        return Failure(CONNECTION, True)
    # A 200 whose body is not a completion (garbage, truncated JSON, null choices) surfaces from
    # the client's parsing as one of these; a broken proxy or an overloaded server sends them.
    if isinstance(exc, (openai.APIResponseValidationError, json.JSONDecodeError, KeyError, TypeError, ValueError)):
        return Failure(BAD_RESPONSE, True)
    return Failure(OTHER, False)


def retry_after_seconds(headers: Any) -> float | None:
    """The wait a response asks for: ``retry-after-ms``, else ``Retry-After`` in seconds or as an HTTP date."""
    if not headers:
        return None
    millis = headers.get("retry-after-ms")
    if millis:
        try:
            return max(0.0, float(millis) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):  # neither a number nor a date: no advice
        return None


@dataclass(frozen=True)
class RetryPolicy:
    """Up to ``max_attempts`` tries per model request. Between them: what ``Retry-After`` says
    (capped at ``max_delay``), else exponential backoff from ``base_delay`` with full jitter, so
    that many samples failing together do not come back together."""

    max_attempts: int = 5
    base_delay: float = 0.5
    max_delay: float = 30.0

    def delay(self, failed_attempts: int, retry_after: float | None, rng: random.Random) -> float:
        if retry_after is not None:
            return min(retry_after, self.max_delay)
        return rng.uniform(0, min(self.max_delay, self.base_delay * 2 ** (failed_attempts - 1)))


class TokenBucket:
    """``per_minute`` units a minute, refilled continuously, at most one second's worth saved up
    (providers enforce per-minute limits over shorter windows). A take larger than the bucket is
    let through when the bucket is full and leaves it in debt, so big requests are never starved."""

    def __init__(self, per_minute: float, now: float):
        self.rate = per_minute / 60.0
        self.capacity = max(1.0, self.rate)
        self.level = self.capacity
        self.stamp = now

    def _refill(self, now: float) -> None:
        self.level = min(self.capacity, self.level + (now - self.stamp) * self.rate)
        self.stamp = now

    def wait_for(self, amount: float, now: float) -> float:
        """Seconds until ``amount`` may be taken (0: now)."""
        self._refill(now)
        need = min(amount, self.capacity)
        return 0.0 if self.level >= need else (need - self.level) / self.rate

    def take(self, amount: float, now: float) -> None:
        self._refill(now)
        self.level -= amount

    def give_back(self, amount: float, now: float) -> None:
        self._refill(now)
        self.level = min(self.capacity, self.level + amount)


class RateLimiter:
    """Requests/min and tokens/min limits (None: unlimited) shared by every request of a job.

    ``acquire(tokens)`` waits its turn (first come, first served), ``settle`` corrects the token
    estimate once the response says what was used, and ``pause`` holds everyone back after a 429
    that said how long to wait."""

    def __init__(self, rpm: float | None = None, tpm: float | None = None, *,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep):
        self.clock, self.sleep = clock, sleep
        now = clock()
        self.requests = TokenBucket(rpm, now) if rpm else None
        self.tokens = TokenBucket(tpm, now) if tpm else None
        self.paused_until = 0.0
        self._turn = asyncio.Lock()  # waiters queue here: a request waiting for tokens keeps its place

    async def acquire(self, tokens: int) -> None:
        async with self._turn:
            while True:
                now = self.clock()
                wait = max(self.paused_until - now,
                           self.requests.wait_for(1, now) if self.requests else 0.0,
                           self.tokens.wait_for(tokens, now) if self.tokens else 0.0)
                if wait <= 0:
                    break
                await self.sleep(wait)
            if self.requests:
                self.requests.take(1, now)
            if self.tokens:
                self.tokens.take(tokens, now)

    def settle(self, estimated: int, actual: int) -> None:
        """The request used ``actual`` tokens where ``estimated`` were taken."""
        if self.tokens is None or actual == estimated:
            return
        now = self.clock()
        if actual > estimated:
            self.tokens.take(actual - estimated, now)
        else:
            self.tokens.give_back(estimated - actual, now)

    def pause(self, seconds: float) -> None:
        self.paused_until = max(self.paused_until, self.clock() + seconds)
