"""Redis on the request path: shared caches and counters that help every process, and are never required.

A request must not fail because Redis is away: the key cache falls back to
PostgreSQL, rate limits let requests through, routing falls back to round
robin, and the pricing job's refusal counters miss a few. ``quietly`` runs
one such call and gives ``default`` when Redis fails, logging once per outage
(not once per request).
"""
from __future__ import annotations

import logging
import time
from typing import Callable, TypeVar

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

# Redis is away (down, restarting, loading, or every pooled connection busy too long). Other Redis errors are
# mistakes in a command, and are raised.
UNAVAILABLE = (RedisConnectionError, RedisTimeoutError)

log = logging.getLogger(__name__)

T = TypeVar("T")
LOG_EVERY_SECONDS = 30.0
_last_logged = 0.0


def quietly(call: Callable[[], T], default: T, what: str) -> T:
    """``call()``, or ``default`` when Redis fails."""
    try:
        return call()
    except UNAVAILABLE as error:
        _warn(what, error)
        return default


def _warn(what: str, error: Exception) -> None:
    global _last_logged
    now = time.monotonic()
    if now - _last_logged >= LOG_EVERY_SECONDS:
        _last_logged = now
        log.warning("Redis is unavailable (%s: %s); going on without it for %s", type(error).__name__, error, what)
