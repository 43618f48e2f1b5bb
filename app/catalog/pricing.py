"""Supply-and-demand pricing: the rule that moves a model's price, and the refusal counters it reads.

Demand is tokens per minute: what usage records show was served, plus what was
refused for lack of a host. Supply is the capacity of the healthy hosts serving
the model, in tokens per minute. Utilisation between half and all of supply
holds the price; above it (or any refusal, or hosts with a queue) the price
rises; below half it falls. A move is proportional to the imbalance, at most
``step_bps`` of the current price, and the result always lies in
[floor, ceiling]. Integers only: prices are micro-units per million tokens.

The job that applies the rule is ``jobs/pricing.py``. A request keeps the
price quoted at admission (``app/proxy/gateway.py``), so a move never changes
what a request in flight costs.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import datetime, timedelta

import redis
from sqlalchemy import select, text

from ..extensions import db
from ..models import PriceHistory, utcnow

log = logging.getLogger(__name__)

BPS = 10_000
REFUSED_KEY = "pricing:refused:{model_id}:{minute}"  # a hash: requests, tokens

RECENT_MOVES_SQL = text("""
    SELECT model_id, at, new_input_price, new_output_price, reason FROM (
        SELECT *, row_number() OVER (PARTITION BY model_id ORDER BY at DESC) AS n FROM price_history
        WHERE model_id = ANY(:ids) AND at >= now() - make_interval(days => :days)
          AND (new_input_price <> old_input_price OR new_output_price <> old_output_price)
    ) moves WHERE n <= :per_model ORDER BY model_id, at DESC
""")


@dataclass(frozen=True)
class Pressure:
    """Which way the market pushes, as a signed fraction of the full step (numerator / denominator)."""

    reason: str
    numerator: int
    denominator: int


def pressure(demand: int, supply: int, refused: int = 0, queued: int = 0) -> Pressure:
    """Why and how far the price should move, from tokens per minute wanted (``demand``) and available
    (``supply``), requests refused for lack of a host, and requests waiting in the hosts' queues."""
    if refused > 0:
        return Pressure("refused", 1, 1)
    if supply <= 0:
        return Pressure("no_supply", 1, 1) if demand > 0 else Pressure("steady", 0, 1)
    if demand > supply:
        return Pressure("shortage", min(demand - supply, supply), supply)  # full step at twice the supply
    if queued > 0 and 2 * demand >= supply:
        return Pressure("queued", 1, 2)
    if 2 * demand < supply:
        return Pressure("idle", -(supply - 2 * demand), supply)  # full step down when nothing is asked
    return Pressure("steady", 0, 1)


def max_step(current: int, step_bps: int) -> int:
    """The largest move allowed from ``current``: ``step_bps`` of it, rounded up, at least one micro-unit."""
    if step_bps <= 0:
        return 0
    return max(1, -(-current * step_bps // BPS))


def next_price(current: int, floor: int, ceiling: int, demand: int, supply: int, step_bps: int,
               refused: int = 0, queued: int = 0) -> int:
    """The model's next price: moved toward the market by at most the step, never outside [floor, ceiling]."""
    return move(current, floor, ceiling, pressure(demand, supply, refused, queued), step_bps)


def move(current: int, floor: int, ceiling: int, push: Pressure, step_bps: int) -> int:
    step = max_step(current, step_bps)
    if push.numerator == 0 or step == 0:
        delta = 0
    else:
        # Proportional, truncated toward zero, but at least one micro-unit so a small price still moves.
        delta = max(1, step * abs(push.numerator) // push.denominator)
        delta = min(delta, step) * (1 if push.numerator > 0 else -1)
    return min(max(current + delta, floor), ceiling)


# Refusals for lack of capacity, counted per model per minute in Redis by the request path ----------------

def minute_of(now: float | None = None) -> int:
    return int(now if now is not None else time.time()) // 60


def record_refusal(cache: redis.Redis, model_id: int, tokens: int, ttl_seconds: int,
                   now: float | None = None) -> None:
    """Count one request refused because no host serves its model. One round trip; never raises."""
    key = REFUSED_KEY.format(model_id=model_id, minute=minute_of(now))
    try:
        pipe = cache.pipeline(transaction=False)
        pipe.hincrby(key, "requests", 1)
        pipe.hincrby(key, "tokens", max(0, tokens))
        pipe.expire(key, ttl_seconds)
        pipe.execute()
    except redis.RedisError as error:  # a lost count must not turn a 503 into a 500
        log.warning("could not count a refusal for model %s: %s", model_id, error)


def refusals(cache: redis.Redis, model_id: int, minutes: range) -> tuple[int, int]:
    """(requests, tokens) refused for the model over the given minutes."""
    pipe = cache.pipeline(transaction=False)
    for minute in minutes:
        pipe.hmget(REFUSED_KEY.format(model_id=model_id, minute=minute), "requests", "tokens")
    requests = tokens = 0
    for count, wanted in pipe.execute():
        requests += int(count or 0)
        tokens += int(wanted or 0)
    return requests, tokens


def recent_moves(model_ids: list[int], per_model: int = 8, days: int = 7) -> dict[int, list]:
    """Each model's latest price changes, newest first (rows with ``at``, the new prices and the reason)."""
    found: dict[int, list] = {model_id: [] for model_id in model_ids}
    if model_ids:
        for row in db.session.execute(RECENT_MOVES_SQL, {"ids": model_ids, "per_model": per_model, "days": days}):
            found[row.model_id].append(row)
    return found


@dataclass(frozen=True)
class MarketPoint:
    """One pricing decision as charts show it: demand and supply in tokens per minute, the prices it set
    in micro-USD per million tokens."""

    at: datetime
    demand: int
    supply: int
    input_price: int
    output_price: int

    @property
    def ts(self) -> int:
        return int(self.at.timestamp())


def market_history(model_ids: list[int], hours: int = 24, *,
                   now: datetime | None = None) -> dict[int, list[MarketPoint]]:
    """Each model's pricing decisions over the last ``hours``, oldest first."""
    found: dict[int, list[MarketPoint]] = {model_id: [] for model_id in model_ids}
    if model_ids:
        end = now or utcnow()
        rows = db.session.execute(
            select(PriceHistory.model_id, PriceHistory.at, PriceHistory.demand, PriceHistory.supply,
                   PriceHistory.new_input_price, PriceHistory.new_output_price)
            .where(PriceHistory.model_id.in_(model_ids), PriceHistory.at > end - timedelta(hours=hours),
                   PriceHistory.at <= end)
            .order_by(PriceHistory.model_id, PriceHistory.at))
        for model_id, *point in rows:
            found[model_id].append(MarketPoint(*point))
    return found
