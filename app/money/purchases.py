"""Buying credits with Stripe Checkout, and what Stripe's events about a payment do to the ledger.

A purchase starts as a Checkout Session; credits land in the ledger only when a
signed webhook event says the payment succeeded, never from the browser's
redirect. Every event is stored by its id in the transaction that acts on it,
so a second delivery changes nothing. Events about one payment are serialised
on a lock keyed by its PaymentIntent, so a refund or dispute that arrives
before the payment it reverses waits (``applied`` false) and is applied when
the payment lands: the final balance does not depend on the order.

Amounts: Stripe speaks cents, the ledger micro-USD (one cent is 10,000).
"""
from __future__ import annotations

import uuid

import stripe
from flask import current_app
from sqlalchemy import func, select
from sqlalchemy.dialects.postgresql import insert

from ..extensions import db
from ..models import LedgerEntry, Purchase, StripeEvent, User, utcnow
from . import ledger
from .stripe import client, enabled
from .units import CURRENCY, MICRO_PER_CENT

PACKS_USD = (5, 20, 50)


class PurchaseError(ValueError):
    """A purchase that cannot be started; the message is for the client."""


def limits() -> tuple[int, int]:
    """The smallest and largest purchase, in whole dollars."""
    return current_app.config["CREDITS_MIN_PURCHASE_USD"], current_app.config["CREDITS_MAX_PURCHASE_USD"]


def start_checkout(user: User, dollars: int, *, success_url: str, cancel_url: str) -> tuple[Purchase, str]:
    """Create a Checkout Session for ``dollars`` of credits; returns the purchase and the URL to send the client to."""
    if not enabled():
        raise PurchaseError("Payments are not set up on this server.")
    low, high = limits()
    if not low <= dollars <= high:
        raise PurchaseError(f"Choose an amount from ${low} to ${high:,}.")
    cents = dollars * 100
    try:
        session = client().v1.checkout.sessions.create(params={
            "mode": "payment",
            "line_items": [{"quantity": 1, "price_data": {
                "currency": CURRENCY, "unit_amount": cents,
                "product_data": {"name": f"gpushare credits (${dollars:,})"}}}],
            "success_url": success_url,
            "cancel_url": cancel_url,
            "client_reference_id": str(user.id),
            "customer_email": user.email,
            "metadata": {"user_id": str(user.id), "credits_usd": str(dollars)},
            "payment_intent_data": {"metadata": {"user_id": str(user.id)}},
        }, options={"idempotency_key": f"checkout-{user.id}-{uuid.uuid4().hex}"})
    except stripe.StripeError as exc:
        current_app.logger.warning("Stripe refused a checkout session: %s", exc)
        raise PurchaseError("Stripe could not start the payment. Try again in a moment.") from None
    purchase = Purchase(user_id=user.id, session_id=session.id, amount=cents * MICRO_PER_CENT, currency=CURRENCY)
    db.session.add(purchase)
    db.session.commit()
    return purchase, session.url


def purchases(user: User, limit: int = 50) -> list[Purchase]:
    return list(db.session.scalars(select(Purchase).where(Purchase.user_id == user.id)
                                   .order_by(Purchase.created_at.desc(), Purchase.id.desc()).limit(limit)))


def get_purchase(user: User, *, purchase_id: int | None = None, session_id: str | None = None) -> Purchase | None:
    """The user's own purchase by id or Checkout Session id; None for anyone else's."""
    query = select(Purchase).where(Purchase.user_id == user.id)
    query = query.where(Purchase.id == purchase_id) if purchase_id is not None else \
        query.where(Purchase.session_id == session_id)
    return db.session.scalar(query.execution_options(populate_existing=True))


def payment_intent_of(obj: dict) -> str | None:
    value = obj.get("payment_intent")
    return value.get("id") if isinstance(value, dict) else value


def _stripe_account() -> int:
    return ledger.account_id("stripe")


def _lock_purchase(**where) -> Purchase | None:
    query = select(Purchase).filter_by(**where).with_for_update()
    return db.session.scalar(query.execution_options(populate_existing=True))


def _session_purchase(session: dict) -> Purchase | None:
    """The purchase for a Checkout Session, recorded now if the session was made elsewhere for a known client."""
    purchase = _lock_purchase(session_id=session["id"])
    if purchase is not None:
        return purchase
    user_id = str(session.get("client_reference_id") or (session.get("metadata") or {}).get("user_id") or "")
    if not user_id.isdigit() or db.session.get(User, int(user_id)) is None or not session.get("amount_total"):
        return None
    db.session.execute(insert(Purchase).values(
        user_id=int(user_id), session_id=session["id"], amount=session["amount_total"] * MICRO_PER_CENT,
        currency=session.get("currency") or CURRENCY).on_conflict_do_nothing(index_elements=["session_id"]))
    return _lock_purchase(session_id=session["id"])


def session_completed(event: dict) -> str:
    session = event["data"]["object"]
    purchase = _session_purchase(session)
    if purchase is None:
        return "unknown session"
    payment_intent = payment_intent_of(session)
    if payment_intent and purchase.payment_intent_id is None:
        purchase.payment_intent_id = payment_intent
    paid = event["type"] == "checkout.session.async_payment_succeeded" or session.get("payment_status") == "paid"
    if not paid:
        if purchase.status == "open":
            purchase.status = "processing"
        return "awaiting payment"
    if purchase.status == "paid":
        return "already credited"
    if session.get("amount_total") is not None and session["amount_total"] * MICRO_PER_CENT != purchase.amount:
        current_app.logger.warning("checkout session %s paid %s cents, not the %s micro-USD asked for",
                                   session["id"], session["amount_total"], purchase.amount)
        purchase.amount = session["amount_total"] * MICRO_PER_CENT
    ledger.post(f"purchase:{purchase.session_id}", "purchase",
                ledger.credit_entries(_stripe_account(), purchase.user_id, purchase.amount),
                memo=f"Stripe Checkout {purchase.session_id}")
    purchase.status, purchase.paid_at = "paid", utcnow()
    db.session.flush()
    if purchase.payment_intent_id:
        waiting = db.session.scalars(select(StripeEvent).where(
            StripeEvent.payment_intent_id == purchase.payment_intent_id, StripeEvent.applied.is_(False))
            .order_by(StripeEvent.received_at, StripeEvent.id).with_for_update())
        for stored in waiting:
            PAYMENT_EVENTS[stored.type](stored.payload)
            stored.applied = True
    return "credited"


def session_failed(event: dict) -> str:
    purchase = _session_purchase(event["data"]["object"])
    if purchase is None:
        return "unknown session"
    if purchase.status in ("open", "processing"):
        purchase.status = "failed"
        return "failed"
    return "unchanged"


def _reversal(event: dict, kind: str, transfer_id: str, wanted) -> str:
    """Take back part of a paid purchase (a refund or a dispute); waits when the payment isn't credited yet."""
    obj = event["data"]["object"]
    purchase = _lock_purchase(payment_intent_id=payment_intent_of(obj))
    if purchase is None or purchase.status != "paid":
        db.session.execute(StripeEvent.__table__.update().where(StripeEvent.id == event["id"]).values(applied=False))
        return "waiting for payment"
    # Each kind is bounded by the payment on its own. Their sum may pass it for a while: a refund made after a
    # dispute was won can arrive before the win. Stripe never takes back more than was paid, so the last event
    # to land brings the sum back within it.
    room = purchase.amount - (purchase.refunded if kind == "refund" else purchase.disputed)
    amount = max(0, min(wanted(purchase), room))
    if amount == 0:
        return "nothing to take"
    if not ledger.post(transfer_id, kind, ledger.debit_entries(_stripe_account(), purchase.user_id, amount),
                       memo=f"Stripe {kind} of {purchase.session_id}"):
        return "already taken"
    if kind == "refund":
        purchase.refunded += amount
    else:
        purchase.disputed += amount
    db.session.flush()
    return f"{kind} taken"


def charge_refunded(event: dict) -> str:
    # amount_refunded is the charge's running total, so a late partial refund never takes twice.
    total = event["data"]["object"]["amount_refunded"] * MICRO_PER_CENT
    return _reversal(event, "refund", f"refund:{event['id']}", lambda purchase: total - purchase.refunded)


def dispute_created(event: dict) -> str:
    dispute = event["data"]["object"]
    return _reversal(event, "dispute", f"dispute:{dispute['id']}", lambda purchase: dispute["amount"] * MICRO_PER_CENT)


def dispute_reinstated(event: dict) -> str:
    """The platform won the dispute: Stripe gives the money back, and so do we (paying any debt first)."""
    dispute = event["data"]["object"]
    outcome = dispute_created(event)  # the dispute's own event may not have come yet: take first, as it would
    if outcome == "waiting for payment":
        return outcome
    taken = db.session.scalar(select(LedgerEntry.amount).where(
        LedgerEntry.transfer_id == f"dispute:{dispute['id']}", LedgerEntry.account_id == _stripe_account()))
    if not taken:
        return "nothing to give back"
    purchase = _lock_purchase(payment_intent_id=payment_intent_of(dispute))
    if not ledger.post(f"dispute:{dispute['id']}:reinstated", "dispute",
                       ledger.credit_entries(_stripe_account(), purchase.user_id, taken),
                       memo=f"Stripe dispute {dispute['id']} won"):
        return "already given back"
    purchase.disputed -= taken
    db.session.flush()
    return "dispute won"


# Stripe's events about one payment, by type; ``webhooks`` dispatches to them, and a completed payment replays
# those that came before it.
PAYMENT_EVENTS = {
    "checkout.session.completed": session_completed,
    "checkout.session.async_payment_succeeded": session_completed,
    "checkout.session.async_payment_failed": session_failed,
    "checkout.session.expired": session_failed,
    "charge.refunded": charge_refunded,
    "charge.dispute.created": dispute_created,
    "charge.dispute.funds_reinstated": dispute_reinstated,
}


def totals(user: User) -> dict:
    """Bought and taken back, over all of the user's purchases."""
    row = db.session.execute(select(
        func.coalesce(func.sum(Purchase.amount).filter(Purchase.status == "paid"), 0),
        func.coalesce(func.sum(Purchase.refunded + Purchase.disputed), 0)).where(Purchase.user_id == user.id)).one()
    return {"bought": row[0], "reversed": row[1]}
