"""Stripe's events, and what each does: one table for both webhook endpoints.

The platform's endpoint (``/stripe/webhook``: Checkout, refunds, disputes, reversed transfers) and the Connect
endpoint (``/stripe/connect-webhook``: host owners' accounts and their bank payouts) check signatures against
their own secrets, then hand the event here. Each event is stored by id in the transaction that acts on it, so a
redelivery changes nothing; events about one payment are serialised on a lock keyed by its PaymentIntent, so a
refund that comes before its payment waits for it (``purchases``).
"""
from __future__ import annotations

from sqlalchemy import text

from ..extensions import db
from . import connect, payouts, purchases
from .stripe import record_event

EVENTS = {
    **purchases.PAYMENT_EVENTS,
    "transfer.reversed": payouts.transfer_reversed_event,
    **connect.CONNECT_EVENTS,
}


def handle(event: dict) -> str:
    """Act on one verified event, exactly once; returns what happened, in a word or two."""
    payment_intent = purchases.payment_intent_of(event["data"]["object"])
    if payment_intent:
        # Every event about one payment takes this lock first: a refund that comes before the payment's
        # completion is stored as waiting before the completion looks for waiting events, never beside it.
        db.session.execute(text("SELECT pg_advisory_xact_lock(hashtext(:pi))"), {"pi": payment_intent})
    if not record_event(event, payment_intent=payment_intent):
        return "duplicate"
    handler = EVENTS.get(event["type"])
    outcome = handler(event) if handler else "ignored"
    db.session.commit()
    return outcome
