"""Background work run by RQ: health checks of hosts, the sweeper that voids stale holds, pricing, payouts, and
verification (on a queue of its own: a slow reference engine never delays the rest).

Jobs are plain functions that run inside the Flask app's context and return
what they did, so a test calls them directly. This module is the registry:
queue names and how to enqueue (``queues``), and the periodic schedule that ``flask
scheduler`` keeps (each periodic job is safe to run twice).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from flask import current_app

from .queues import DEFAULT_QUEUE, QUEUES, VERIFY_QUEUE, enqueue, queue

__all__ = ["DEFAULT_QUEUE", "QUEUES", "VERIFY_QUEUE", "enqueue", "queue", "Periodic", "periodic"]

# A request whose router process died is settled within this (and the router processes drain sooner).
HOLDS_SWEEP_SECONDS = 15
# How often due canaries and benchmarks are looked for, and reputations updated.
VERIFY_SCHEDULE_SECONDS = 5
REPUTATION_SECONDS = 60


@dataclass(frozen=True)
class Periodic:
    func: Callable
    every_seconds: int
    timeout_seconds: int
    queue: str = DEFAULT_QUEUE


def periodic() -> list[Periodic]:
    from . import health, holds, payouts, pricing, verification

    config = current_app.config
    return [
        Periodic(health.check_hosts, config["HEALTH_CHECK_SECONDS"], timeout_seconds=120),
        Periodic(holds.void_expired, HOLDS_SWEEP_SECONDS, timeout_seconds=60),
        Periodic(pricing.update_prices, config["PRICING_INTERVAL_SECONDS"], timeout_seconds=60),
        Periodic(payouts.pay_hosts, config["PAYOUT_INTERVAL_SECONDS"], timeout_seconds=600),
        Periodic(verification.schedule, VERIFY_SCHEDULE_SECONDS, timeout_seconds=60),
        Periodic(verification.update_reputation, REPUTATION_SECONDS, timeout_seconds=60),
    ]
