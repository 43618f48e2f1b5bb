"""Requests and tokens per minute per API key, counted in Redis so every router process shares them.

A fixed one-minute window per key: one Lua call checks both limits and counts
the request atomically, so two processes can never both take the last slot.
Without Redis, requests go through uncounted (and without rate-limit
headers): the balance hold in PostgreSQL still bounds what a key can spend.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import redis

from ..shared import quietly

WINDOW_SECONDS = 60

# KEYS: requests counter, tokens counter. ARGV: request limit, token limit, tokens wanted, ttl.
# Returns {refused_by (0 none, 1 requests, 2 tokens), requests used, tokens used}.
ADMIT = """
local rpm, tpm, tokens, ttl = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local used_requests = tonumber(redis.call('GET', KEYS[1]) or '0')
local used_tokens = tonumber(redis.call('GET', KEYS[2]) or '0')
if used_requests + 1 > rpm then return {1, used_requests, used_tokens} end
if used_tokens + tokens > tpm then return {2, used_requests, used_tokens} end
redis.call('SET', KEYS[1], used_requests + 1, 'EX', ttl)
redis.call('SET', KEYS[2], used_tokens + tokens, 'EX', ttl)
return {0, used_requests + 1, used_tokens + tokens}
"""


@dataclass(frozen=True)
class Decision:
    allowed: bool
    refused_by: str | None  # "requests" or "tokens"
    request_limit: int
    token_limit: int
    requests_used: int
    tokens_used: int
    reset_seconds: float
    tokens_key: str | None  # None: not counted (Redis was away)

    def headers(self) -> dict[str, str]:
        if self.tokens_key is None:
            return {}
        reset = _duration(self.reset_seconds)
        return {
            "x-ratelimit-limit-requests": str(self.request_limit),
            "x-ratelimit-remaining-requests": str(max(0, self.request_limit - self.requests_used)),
            "x-ratelimit-reset-requests": reset,
            "x-ratelimit-limit-tokens": str(self.token_limit),
            "x-ratelimit-remaining-tokens": str(max(0, self.token_limit - self.tokens_used)),
            "x-ratelimit-reset-tokens": reset,
        }


def _duration(seconds: float) -> str:
    """OpenAI's reset format: ``"1s"``, ``"6m0s"``, ``"250ms"``."""
    if seconds < 1:
        return f"{max(1, int(seconds * 1000))}ms"
    whole = math.ceil(seconds)
    minutes, rest = divmod(whole, 60)
    return f"{minutes}m{rest}s" if minutes else f"{rest}s"


class RateLimiter:
    def __init__(self, client: redis.Redis):
        self._admit = client.register_script(ADMIT)
        self._client = client

    def admit(self, key_id: int, request_limit: int, token_limit: int, tokens: int,
              now: float | None = None) -> Decision:
        now = time.time() if now is None else now
        window = int(now // WINDOW_SECONDS)
        prefix = f"rl:{key_id}:{window}"
        counted = quietly(lambda: self._admit(keys=[f"{prefix}:r", f"{prefix}:t"],
                                              args=[request_limit, token_limit, tokens, WINDOW_SECONDS * 2]),
                          None, "rate limits")
        if counted is None:
            return Decision(allowed=True, refused_by=None, request_limit=request_limit, token_limit=token_limit,
                            requests_used=0, tokens_used=0, reset_seconds=0.0, tokens_key=None)
        refused, requests_used, tokens_used = counted
        return Decision(allowed=refused == 0, refused_by={0: None, 1: "requests", 2: "tokens"}[refused],
                        request_limit=request_limit, token_limit=token_limit, requests_used=requests_used,
                        tokens_used=tokens_used, reset_seconds=(window + 1) * WINDOW_SECONDS - now,
                        tokens_key=f"{prefix}:t")

    def correct_tokens(self, decision: Decision, delta: int) -> None:
        """After the request: count what it really used instead of what admission reserved."""
        if delta and decision.tokens_key is not None:
            quietly(lambda: self._client.incrby(decision.tokens_key, delta), None, "rate limits")
