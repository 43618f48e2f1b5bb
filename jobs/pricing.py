"""The pricing job: every ``PRICING_INTERVAL_SECONDS``, move each enabled model's price toward its market.

It prices the whole minutes that just ended (the window): demand is the tokens
in usage records of the window plus the tokens of requests refused for lack of
a host (counted in Redis by the request path), per minute; supply is the
healthy hosts' capacity per minute, each host counted at its measured rate
(heartbeat ``tokens_per_second``) or ``PRICING_HOST_TOKENS_PER_SECOND``,
whichever is more, since an idle host measures nothing. The rule is
``app.catalog.pricing.next_price``. Each model is priced in its own transaction,
with its history row; the row is unique per model and window, so a run
repeated for the same window changes nothing.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import datetime, timezone

from flask import current_app
from sqlalchemy import select, text
from sqlalchemy.dialects.postgresql import insert

from app.catalog import pricing
from app.extensions import db
from app.hosts import schedule
from app.models import CatalogModel, PriceHistory
from app.proxy.routing import SERVING_HOSTS

log = logging.getLogger(__name__)

SERVED_SQL = text("""
    SELECT model_id, sum(prompt_tokens + completion_tokens) AS tokens FROM usage_records
    WHERE created_at >= :start AND created_at < :end GROUP BY model_id
""")

# The same hosts the routing table sends requests to.
HOSTS_SQL = text(f"SELECT hm.model_id, h.heartbeat, h.schedule, h.timezone {SERVING_HOSTS}")


@dataclass(frozen=True)
class Market:
    """One model over one window: tokens per minute wanted and available, requests refused and queued."""

    demand: int
    supply: int
    refused: int
    queued: int


def _count(value) -> int:
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0 else 0


def supply_by_model(now: datetime, default_tokens_per_second: int) -> dict[int, tuple[int, int]]:
    """Model id -> (tokens per minute its serving hosts can generate, requests waiting in their queues)."""
    found: dict[int, tuple[int, int]] = {}
    for model_id, beat, windows, tz in db.session.execute(HOSTS_SQL):
        if not schedule.in_schedule(windows, tz, now):
            continue
        beat = beat if isinstance(beat, dict) else {}
        rate = max(_count(beat.get("tokens_per_second")), default_tokens_per_second)
        supply, queued = found.get(model_id, (0, 0))
        found[model_id] = (supply + int(rate * 60), queued + _count(beat.get("queue_depth")))
    return found


def markets(now: float | None = None) -> tuple[datetime, dict[int, Market]]:
    """The window's end and each enabled model's market over the window."""
    config, cache = current_app.config, current_app.extensions["redis"]
    minutes = max(1, config["PRICING_INTERVAL_SECONDS"] // 60)
    end_minute = pricing.minute_of(now)
    window = range(end_minute - minutes, end_minute)
    start = datetime.fromtimestamp(window.start * 60, timezone.utc)
    end = datetime.fromtimestamp(window.stop * 60, timezone.utc)
    model_ids = db.session.scalars(select(CatalogModel.id).where(CatalogModel.enabled)
                                   .order_by(CatalogModel.id)).all()
    served = dict(db.session.execute(SERVED_SQL, {"start": start, "end": end}).all())
    hosts = supply_by_model(end, config["PRICING_HOST_TOKENS_PER_SECOND"])
    db.session.commit()
    found = {}
    for model_id in model_ids:
        refused, refused_tokens = pricing.refusals(cache, model_id, window)
        supply, queued = hosts.get(model_id, (0, 0))
        found[model_id] = Market(demand=(int(served.get(model_id) or 0) + refused_tokens) // minutes,
                                 supply=supply, refused=refused, queued=queued)
    return end, found


def price_model(model_id: int, at: datetime, market: Market, step_bps: int) -> str | None:
    """Move one model's prices and record why, in one transaction. Returns the reason, or None when the
    model is gone, disabled, or already priced for this window."""
    model = db.session.get(CatalogModel, model_id, with_for_update=True, populate_existing=True)
    if model is None or not model.enabled:
        db.session.rollback()
        return None
    push = pricing.pressure(market.demand, market.supply, market.refused, market.queued)
    new_input = pricing.move(model.input_price, model.floor_input_price, model.ceiling_input_price, push, step_bps)
    new_output = pricing.move(model.output_price, model.floor_output_price, model.ceiling_output_price, push,
                              step_bps)
    recorded = db.session.execute(
        insert(PriceHistory).values(
            model_id=model_id, at=at, old_input_price=model.input_price, new_input_price=new_input,
            old_output_price=model.output_price, new_output_price=new_output, demand=market.demand,
            supply=market.supply, refused=market.refused, reason=push.reason)
        .on_conflict_do_nothing(constraint="uq_price_history_model_id_at").returning(PriceHistory.id)).first()
    if recorded is None:
        db.session.rollback()
        return None
    if (new_input, new_output) != (model.input_price, model.output_price):
        model.input_price, model.output_price = new_input, new_output
    db.session.commit()
    return push.reason


def update_prices(now: float | None = None) -> dict[int, str | None]:
    """Price every enabled model for the window that just ended. Returns each model's reason (None: skipped)."""
    now = time.time() if now is None else now
    at, found = markets(now)
    step_bps = current_app.config["PRICING_STEP_BPS"]
    results = {model_id: price_model(model_id, at, market, step_bps) for model_id, market in found.items()}
    moved = {model_id: reason for model_id, reason in results.items() if reason not in (None, "steady")}
    if moved:
        log.info("prices moved: %s", moved)
    return results
