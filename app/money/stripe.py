"""Stripe: the client the platform calls it with, and proof that a webhook delivery is Stripe's own.

Every call goes through ``stripe.StripeClient`` with ``STRIPE_API_BASE``, so the local stand-in
(``app/dev/stripe_standin``) and real Stripe take the same code path. A delivery is acted on only when its
signature checks against the endpoint's secret (or the one being rotated out) and its timestamp is within the
tolerance either way; each event is stored by id in the transaction that acts on it (``record_event``).
"""
from __future__ import annotations

import json
import time

import stripe
from flask import current_app
from sqlalchemy.dialects.postgresql import insert

from ..extensions import db
from ..models import StripeEvent


class WebhookRejected(ValueError):
    """A webhook delivery that is not provably from Stripe, or not fresh; nothing was changed."""


def enabled() -> bool:
    """Whether Stripe is configured (a real key, or the local stand-in's): purchases and payouts need it."""
    return bool(current_app.config.get("STRIPE_SECRET_KEY"))


def client() -> stripe.StripeClient:
    config = current_app.config
    return stripe.StripeClient(config["STRIPE_SECRET_KEY"], base_addresses={"api": config["STRIPE_API_BASE"]},
                               max_network_retries=2)


PLATFORM_SECRETS = ("STRIPE_WEBHOOK_SECRET", "STRIPE_WEBHOOK_SECRET_PREVIOUS")  # the current one, and while rotating
CONNECT_SECRETS = ("STRIPE_CONNECT_WEBHOOK_SECRET",)


def verify(payload: bytes, header: str | None, *, now: float | None = None,
           secret_keys: tuple[str, ...] = PLATFORM_SECRETS) -> dict:
    """The event in ``payload`` when ``header`` carries a valid Stripe signature made within the tolerance.

    Stripe's library checks the signature (any ``v1`` entry, against the current or the previous secret)
    and refuses old timestamps; it accepts ones from the future, so both directions are checked here."""
    config = current_app.config
    if not header:
        raise WebhookRejected("missing Stripe-Signature header")
    secrets = [config.get(key) for key in secret_keys if config.get(key)]
    if not secrets:
        raise WebhookRejected(f"webhooks are not configured (no {secret_keys[0]})")
    tolerance = config["STRIPE_WEBHOOK_TOLERANCE_SECONDS"]
    try:
        timestamp = int(dict(item.split("=", 1) for item in header.split(",") if "=" in item)["t"])
        body = payload.decode("utf-8")
    except (KeyError, ValueError):
        raise WebhookRejected("malformed Stripe-Signature header or body") from None
    if abs((time.time() if now is None else now) - timestamp) > tolerance:
        raise WebhookRejected("timestamp outside the tolerance")
    for secret in secrets:
        try:
            stripe.WebhookSignature.verify_header(body, header, secret, tolerance)
            break
        except stripe.SignatureVerificationError:
            continue
    else:
        raise WebhookRejected("no valid signature")
    try:
        event = json.loads(body)
        shaped = isinstance(event["id"], str) and isinstance(event["type"], str) and \
            isinstance(event["data"]["object"], dict)
    except (ValueError, KeyError, TypeError):
        shaped = False
    if not shaped:
        raise WebhookRejected("not a Stripe event")
    return event


def record_event(event: dict, *, payment_intent: str | None = None) -> bool:
    """Store a verified event by its id in the current transaction, the one that acts on it.
    False (and the transaction rolled back) when it was stored before: a redelivery."""
    stored = db.session.execute(
        insert(StripeEvent).values(id=event["id"], type=event["type"], payment_intent_id=payment_intent,
                                   applied=True, payload=event)
        .on_conflict_do_nothing(index_elements=["id"]).returning(StripeEvent.id)).scalar_one_or_none()
    if stored is None:
        db.session.rollback()
    return stored is not None
