"""The payout job: pays every host owner whose earnings reached the threshold (see app/money/payouts.py).

Safe to run twice at once or after a crash: a payout is stored with its
idempotency key before Stripe is called, one owner has at most one open payout,
and each send is claimed by compare-and-set.
"""
from __future__ import annotations

import logging

from app.money import payouts, stripe

log = logging.getLogger(__name__)


def pay_hosts() -> dict[str, int]:
    """One pass; returns how many payouts ended each way ('paid', 'failed', 'retry', 'needs_attention', 'busy')."""
    if not stripe.enabled():
        return {}
    outcomes = payouts.run()
    if outcomes:
        log.info("payouts: %s", outcomes)
    return outcomes
