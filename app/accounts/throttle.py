"""Failed logins, counted in Redis so that every process shares the count.

Per account (by the e-mail typed, whether or not an account has it, so the
answer tells an attacker nothing) and per client address. After
``LOGIN_MAX_FAILURES_PER_ACCOUNT`` failures for one account, or
``LOGIN_MAX_FAILURES_PER_ADDRESS`` from one address, logins there are refused,
the right password included, until ``LOGIN_THROTTLE_SECONDS`` after the first
failure of the window. A successful login clears its account's count.
Without Redis, logins are not throttled (argon2 still makes each guess slow).
"""
from __future__ import annotations

import hashlib

from flask import current_app

from ..extensions import redis_client
from ..shared import quietly


def _keys(email: str, address: str | None) -> list[str]:
    account = hashlib.sha256((email or "").strip().lower().encode()).hexdigest()
    return [f"throttle:login:account:{account}", f"throttle:login:address:{address or 'unknown'}"]


def wait_seconds(email: str, address: str | None) -> int:
    """Seconds before a login for ``email`` from ``address`` may be tried again; 0 when it may now."""
    config = current_app.config
    limits = (config["LOGIN_MAX_FAILURES_PER_ACCOUNT"], config["LOGIN_MAX_FAILURES_PER_ADDRESS"])
    keys = _keys(email, address)

    def read():
        pipe = redis_client.pipeline(transaction=False)
        for key in keys:
            pipe.get(key)
            pipe.ttl(key)
        return pipe.execute()

    answers = quietly(read, None, "login throttling")
    if answers is None:
        return 0
    waits = [max(int(ttl), 1) for (count, ttl), limit in zip(zip(answers[::2], answers[1::2]), limits)
             if count is not None and int(count) >= limit]
    return max(waits, default=0)


# Count a failure on each key; a key's window starts at its first failure.
COUNT = """
for _, key in ipairs(KEYS) do
    if redis.call('INCR', key) == 1 then redis.call('EXPIRE', key, ARGV[1]) end
end
"""


def failed(email: str, address: str | None) -> None:
    window = current_app.config["LOGIN_THROTTLE_SECONDS"]
    quietly(lambda: redis_client.eval(COUNT, 2, *_keys(email, address), window), None, "login throttling")


def succeeded(email: str) -> None:
    quietly(lambda: redis_client.delete(_keys(email, None)[0]), None, "login throttling")


def in_words(seconds: int) -> str:
    minutes = -(-seconds // 60)
    return f"{minutes} minute{'s' if minutes != 1 else ''}" if seconds >= 60 else f"{seconds} seconds"
