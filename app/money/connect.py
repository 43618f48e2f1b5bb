"""Host owners' Stripe Connect accounts: onboarding, the state Stripe reports, and each owner's threshold.

An owner connects a Stripe Express account through account-link onboarding. Its state comes back from Stripe
(``refresh_account``, and the ``account.updated`` event); ``payout.failed`` and ``payout.paid`` tell whether
Stripe could move a payout on to the owner's bank.
"""
from __future__ import annotations

import logging

import stripe
from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert

from ..extensions import db
from ..models import PayoutAccount, User, utcnow
from .stripe import client, enabled
from .units import dollars

log = logging.getLogger(__name__)

MAX_THRESHOLD_USD = 100_000


class PayoutError(ValueError):
    """Onboarding that cannot go on; the message is for the host."""


def payout_account(user: User | int) -> PayoutAccount | None:
    return db.session.get(PayoutAccount, getattr(user, "id", user), populate_existing=True)


def onboarding_link(user: User, *, refresh_url: str, return_url: str) -> str:
    """The Stripe-hosted onboarding page for ``user``'s Express account, made on first use."""
    if not enabled():
        raise PayoutError("Payouts are not set up on this server.")
    stripe_client = client()
    account = payout_account(user)
    try:
        if account is None:
            created = stripe_client.v1.accounts.create(params={
                "type": "express", "country": "US", "email": user.email,
                "capabilities": {"transfers": {"requested": True}},
                "metadata": {"user_id": str(user.id)},
            }, options={"idempotency_key": f"connect-account-{user.id}"})
            db.session.execute(insert(PayoutAccount).values(user_id=user.id, stripe_account_id=created.id)
                               .on_conflict_do_nothing(index_elements=["user_id"]))
            db.session.commit()
            account = payout_account(user)
        link = stripe_client.v1.account_links.create(params={
            "account": account.stripe_account_id, "type": "account_onboarding",
            "refresh_url": refresh_url, "return_url": return_url})
    except stripe.StripeError as exc:
        db.session.rollback()
        log.warning("Stripe refused onboarding for user %s: %s", user.id, exc)
        raise PayoutError("Stripe could not start the set-up. Try again in a moment.") from None
    return link.url


def refresh_account(user: User) -> PayoutAccount | None:
    """Read the account's onboarding state back from Stripe (after the host returns from onboarding)."""
    account = payout_account(user)
    if account is None or not enabled():
        return account
    try:
        remote = client().v1.accounts.retrieve(account.stripe_account_id)
    except stripe.StripeError as exc:
        log.warning("Stripe could not say how account %s stands: %s", account.stripe_account_id, exc)
        return account
    account.details_submitted = bool(remote.details_submitted)
    account.payouts_enabled = bool(remote.payouts_enabled)
    account.updated_at = utcnow()
    db.session.commit()
    return account


def set_threshold(user: User, whole_dollars: int | None) -> PayoutAccount:
    """The owner's own payout threshold in whole dollars; None goes back to the server's default."""
    account = payout_account(user)
    if account is None:
        raise PayoutError("Set up payouts first.")
    if whole_dollars is not None and not 1 <= whole_dollars <= MAX_THRESHOLD_USD:
        raise PayoutError(f"Choose a threshold from $1 to ${MAX_THRESHOLD_USD:,}, or leave it empty for the default.")
    account.threshold = dollars(whole_dollars) if whole_dollars is not None else None
    account.updated_at = utcnow()
    db.session.commit()
    return account


# --- Connect webhook events ---------------------------------------------------------------------------------

def _account_of(event: dict) -> PayoutAccount | None:
    """The connected account an event is about, locked; None for an account that is not ours."""
    obj = event["data"]["object"]
    account_id = event.get("account") or (obj.get("id") if obj.get("object") == "account" else None)
    if not account_id:
        return None
    return db.session.scalar(select(PayoutAccount).where(PayoutAccount.stripe_account_id == account_id)
                             .with_for_update())


def account_updated(event: dict) -> str:
    account = _account_of(event)
    if account is None:
        return "ignored"
    obj = event["data"]["object"]
    account.details_submitted = bool(obj.get("details_submitted"))
    account.payouts_enabled = bool(obj.get("payouts_enabled"))
    account.updated_at = utcnow()
    return "account updated"


def bank_payout_failed(event: dict) -> str:
    """Our transfer arrived; Stripe could not move it on to the host's bank. Shown until a payout succeeds."""
    account = _account_of(event)
    if account is None:
        return "ignored"
    obj = event["data"]["object"]
    reason = obj.get("failure_message") or obj.get("failure_code") or "the bank refused it"
    account.bank_payout_error = f"{obj.get('failure_code') or 'failed'}: {reason}"[:2000]
    account.updated_at = utcnow()
    log.warning("Stripe payout %s to the bank of %s failed: %s", obj.get("id"), account.stripe_account_id, reason)
    return "bank payout failed"


def bank_payout_paid(event: dict) -> str:
    account = _account_of(event)
    if account is None:
        return "ignored"
    account.bank_payout_error = None
    account.updated_at = utcnow()
    return "bank payout paid"


CONNECT_EVENTS = {"account.updated": account_updated, "payout.failed": bank_payout_failed,
                  "payout.paid": bank_payout_paid}
