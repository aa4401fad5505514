"""When to try a request again, and how long to wait first.

Retried: what RequestError.retryable says, nothing else. That is 408, 409, 429 and 5xx answers
(is_retryable_status), timeouts and connection errors (aiquery/_transport.py), and a 2xx whose body
is empty or not JSON, such as one cut short (aiquery/_wire.py). A 2xx that is JSON but lacks the
answer's fields is not retried: a server that answers so tends to answer the same again, and each
try may be billed.

The wait honours the server's Retry-After (retry-after-ms, seconds, or an HTTP date), capped at
MAX_RETRY_AFTER; otherwise capped exponential backoff with full jitter. Bounded by attempts AND by
total time. The engine queues a failed request again after the wait (its sleep is injectable, so
tests never really wait); these functions decide.
"""

from __future__ import annotations

import email.utils
import math
import random
import time
from collections.abc import Callable, Mapping

from ._errors import RequestError

BACKOFF_INITIAL = 0.5  # seconds before the first retry (before jitter)
BACKOFF_MAX = 8.0      # cap of one exponential wait
MAX_RETRY_AFTER = 60.0  # cap on what a server may ask us to wait


def is_retryable_status(status: int) -> bool:
    return status in (408, 409, 429) or 500 <= status <= 599


def parse_retry_after(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """Seconds the server asked us to wait, or None (a value that is no number of seconds or date,
    NaN or infinite, is ignored). Header names are lower-case."""
    ms = _number(headers.get("retry-after-ms"))
    if ms is not None:
        return min(max(ms / 1000, 0.0), MAX_RETRY_AFTER)
    value = headers.get("retry-after")
    if value is None:
        return None
    seconds = _number(value)
    if seconds is None:
        try:
            when = email.utils.parsedate_to_datetime(value).timestamp()
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
        seconds = when - (time.time() if now is None else now)
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


def _number(text: str | None) -> float | None:
    try:
        value = float(text)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def backoff(attempt: int, rand: Callable[[], float] = random.random) -> float:
    """Full-jitter exponential backoff for the wait after failed attempt number `attempt` (1-based)."""
    return rand() * min(BACKOFF_MAX, BACKOFF_INITIAL * 2 ** (attempt - 1))


def wait_after(exc: BaseException | None, attempt: int, rand: Callable[[], float] = random.random) -> float:
    """The wait after failed attempt number `attempt`: the server's Retry-After, else backoff."""
    if isinstance(exc, RequestError) and exc.retry_after is not None:
        return exc.retry_after
    return backoff(attempt, rand)


def retry_wait(exc: BaseException, attempts: int, elapsed: float, max_attempts: int, max_time: float,
               rand: Callable[[], float] = random.random) -> float | None:
    """The wait before trying again a request that failed with `exc` after `attempts` tries, the
    first failure `elapsed` seconds ago; None when it is not tried again. The jitter is drawn once:
    the wait that fits within max_time is the wait slept."""
    if not (isinstance(exc, RequestError) and exc.retryable and attempts < max_attempts):
        return None
    wait = wait_after(exc, attempts, rand)
    return wait if elapsed + wait <= max_time else None
