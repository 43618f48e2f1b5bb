"""Background work run by RQ: health checks of hosts, the sweeper that voids stale holds, pricing, payouts.

Jobs are plain functions that run inside the Flask app's context and return
what they did, so a test calls them directly. This module is the registry:
queue names, how to enqueue, and the periodic schedule that ``flask
scheduler`` keeps (each periodic job is safe to run twice).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from flask import current_app
from rq import Queue

DEFAULT_QUEUE = "default"
# A request whose router process died is settled within this (and the router processes drain sooner).
HOLDS_SWEEP_SECONDS = 15
QUEUES = (DEFAULT_QUEUE,)


def queue(name: str = DEFAULT_QUEUE) -> Queue:
    return Queue(name, connection=current_app.extensions["redis"])


def enqueue(func: Callable, *args, queue_name: str = DEFAULT_QUEUE, **kwargs):
    """Enqueue after the commit that made the work necessary, never before."""
    return queue(queue_name).enqueue(func, *args, **kwargs)


@dataclass(frozen=True)
class Periodic:
    func: Callable
    every_seconds: int
    timeout_seconds: int


def periodic() -> list[Periodic]:
    from . import health, holds, payouts, pricing

    config = current_app.config
    return [
        Periodic(health.check_hosts, config["HEALTH_CHECK_SECONDS"], timeout_seconds=120),
        Periodic(holds.void_expired, HOLDS_SWEEP_SECONDS, timeout_seconds=60),
        Periodic(pricing.update_prices, config["PRICING_INTERVAL_SECONDS"], timeout_seconds=60),
        Periodic(payouts.pay_hosts, config["PAYOUT_INTERVAL_SECONDS"], timeout_seconds=600),
    ]
