"""Paying host owners their earnings through Stripe Connect transfers, exactly once.

The payout job pays each owner whose available earnings reach the threshold
(the owner connects a Stripe account first: ``connect``):

1. one transaction stores the payout with a fresh idempotency key and moves
   the amount (whole cents) from the owner's ``host`` ledger account to
   ``payouts_pending``, so the same earnings can't be paid twice;
2. ``transfers.create`` with that stored key;
3. the transfer id is recorded and the amount leaves ``payouts_pending``.

A crash between 2 and 3 leaves the payout pending; the next run repeats 2 with
the same key and Stripe answers with the same transfer. Stripe forgets keys
after 24 hours, so an older payout is first looked up by its metadata. A key
that Stripe says was used with other parameters is never replaced: the payout
needs a person's attention. A transfer Stripe refuses (no balance, an account
that can't be paid) puts the amount back on the host account, still owed, and
the owner is tried again later, a bounded number of times in a row.
"""
from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import timedelta

import stripe
from flask import current_app
from sqlalchemy import func, or_, select, text, update
from sqlalchemy.dialects.postgresql import insert

from ..accounts import audit
from ..extensions import db
from ..models import Host, LedgerAccount, Payout, PayoutAccount, User, utcnow
from . import ledger
from .connect import payout_account
from .stripe import client
from .units import CURRENCY, MICRO_PER_CENT, dollars

log = logging.getLogger(__name__)

# Stripe keeps idempotency keys for 24 hours; past this age a payout is looked up before it is sent again.
KEY_TRUSTED_FOR = timedelta(hours=23)
# How long one run owns a payout it is sending; a run that dies frees it after this.
SEND_LEASE = timedelta(minutes=5)
OPEN = ("pending", "needs_attention")


@dataclass
class Summary:
    """A host owner's money, micro-USD: earned in all, on the host account, in flight, and paid out."""

    earned: int = 0
    available: int = 0
    pending: int = 0
    paid: int = 0
    threshold: int = 0
    fee_bps: int = 0
    account: PayoutAccount | None = None
    recent: list[Payout] | None = None
    held: bool = False  # a host of the owner's is quarantined: nothing is paid until an admin decides

    @property
    def onboarding(self) -> str:
        return self.account.state if self.account else "not started"

    @property
    def upcoming(self) -> int:
        """What the next run of the payout job would send (whole cents of what is available), 0 if below threshold
        or held."""
        if self.held:
            return 0
        amount = max(self.available, 0) // MICRO_PER_CENT * MICRO_PER_CENT
        return amount if amount and amount >= self.threshold else 0


def default_threshold() -> int:
    return dollars(current_app.config["PAYOUT_THRESHOLD_USD"])


def payout_id_of(transfer: dict) -> int | None:
    """The payout a Stripe transfer pays, from the metadata it was made with; None for another transfer."""
    value = str((transfer.get("metadata") or {}).get("payout_id") or "")
    return int(value) if value.isdigit() else None


def transfer_reversed_event(event: dict) -> str:
    return transfer_reversed(event["data"]["object"])


def transfer_reversed(transfer: dict) -> str:
    """Stripe took back (part of) a paid payout's transfer: what came back is owed to the host again.

    ``amount_reversed`` is the transfer's running total, so a late or repeated event never counts twice."""
    payout_id = payout_id_of(transfer)
    matches = [Payout.stripe_transfer_id == transfer["id"]]
    if payout_id is not None:
        matches.append(Payout.id == payout_id)
    payout = db.session.scalar(select(Payout).where(or_(*matches)).with_for_update()
                               .execution_options(populate_existing=True))
    if payout is not None and payout.status in OPEN and payout.destination == transfer.get("destination") \
            and int(transfer.get("amount") or 0) * MICRO_PER_CENT == payout.amount:
        # The run that made this transfer died before recording it: Stripe's event is proof enough.
        _mark_paid(payout, transfer["id"])
        db.session.refresh(payout)
    if payout is None or payout.status != "paid" or payout.stripe_transfer_id != transfer["id"]:
        log.warning("Stripe reversed transfer %s, which pays no recorded payout", transfer["id"])
        return "unknown transfer"
    total = min(int(transfer.get("amount_reversed") or 0) * MICRO_PER_CENT, payout.amount)
    back = total - payout.reversed
    if back <= 0:
        return "already reversed"
    ledger.post(f"payout:{payout.id}:reversed:{total}", "payout",
                [(ledger.account_id("stripe"), -back), (ledger.account_id("host", payout.user_id), back)],
                memo=f"Stripe reversed transfer {transfer['id']}")
    payout.reversed = total
    payout.updated_at = utcnow()
    db.session.flush()
    log.warning("Stripe reversed %s micro-USD of payout %s; owed to its host again", back, payout.id)
    return "transfer reversed"


# --- reading --------------------------------------------------------------------------------------------------

def summary(user: User) -> Summary:
    """What the host's earnings page shows."""
    host = ledger.existing("host", user)
    paid, pending = db.session.execute(select(
        func.coalesce(func.sum(Payout.amount - Payout.reversed).filter(Payout.status == "paid"), 0),
        func.coalesce(func.sum(Payout.amount).filter(Payout.status.in_(OPEN)), 0),
    ).where(Payout.user_id == user.id)).one()
    account = payout_account(user)
    recent = db.session.scalars(select(Payout).where(Payout.user_id == user.id)
                                .order_by(Payout.created_at.desc(), Payout.id.desc()).limit(10)).all()
    result = Summary(earned=host.balance + paid + pending, available=host.available, pending=pending, paid=paid,
                     threshold=(account and account.threshold) or default_threshold(),
                     fee_bps=current_app.config["PLATFORM_FEE_BPS"], account=account, recent=recent,
                     held=held_by_verification(user.id))
    db.session.commit()
    return result


def bank_failures() -> list[PayoutAccount]:
    """Connected accounts whose last payout to the bank failed."""
    return db.session.scalars(select(PayoutAccount).where(PayoutAccount.bank_payout_error.is_not(None))
                              .order_by(PayoutAccount.updated_at.desc())).all()


def needing_attention() -> dict[str, list[Payout]]:
    """Payouts an admin should see: open ones and failed ones, newest first."""
    rows = db.session.scalars(select(Payout).where(Payout.status != "paid")
                              .order_by(Payout.created_at.desc(), Payout.id.desc()).limit(200)).all()
    return {status: [p for p in rows if p.status == status] for status in ("needs_attention", "pending", "failed")}


# --- the job's steps ------------------------------------------------------------------------------------------

def held_by_verification(user_id: int) -> bool:
    """Whether one of the owner's hosts is quarantined: its earnings wait until an admin releases the host or
    claws them back (``trust``)."""
    return bool(db.session.scalar(select(func.count()).select_from(Host)
                                  .where(Host.owner_id == user_id, Host.trust_state == "quarantined")))


def due_owners() -> list[int]:
    """Owners with a ready account, no open payout, and at least their threshold available."""
    rows = db.session.execute(text("""
        SELECT pa.user_id FROM payout_accounts pa
        JOIN ledger_accounts la ON la.kind = 'host' AND la.user_id = pa.user_id
        WHERE pa.payouts_enabled
          AND la.balance + la.credit_limit - la.held >= coalesce(pa.threshold, :threshold)
          AND NOT EXISTS (SELECT 1 FROM payouts p WHERE p.user_id = pa.user_id
                          AND p.status IN ('pending', 'needs_attention'))
          AND NOT EXISTS (SELECT 1 FROM payouts p WHERE p.user_id = pa.user_id AND p.status = 'failed'
                          AND p.next_attempt_at > now()
                          AND p.created_at > coalesce(pa.failures_cleared_at, '-infinity'))
          AND NOT EXISTS (SELECT 1 FROM hosts h WHERE h.owner_id = pa.user_id AND h.trust_state = 'quarantined')
        ORDER BY pa.user_id"""), {"threshold": default_threshold()}).scalars().all()
    db.session.commit()
    return list(rows)


def failures_in_a_row(user_id: int) -> int:
    """The owner's latest payouts that failed, back to the last success or an admin's go-ahead."""
    cleared = db.session.scalar(select(PayoutAccount.failures_cleared_at).where(PayoutAccount.user_id == user_id))
    query = select(Payout.status).where(Payout.user_id == user_id)
    if cleared is not None:
        query = query.where(Payout.created_at > cleared)
    statuses = db.session.scalars(query.order_by(Payout.created_at.desc(), Payout.id.desc())
                                  .limit(current_app.config["PAYOUT_MAX_ATTEMPTS"])).all()
    count = 0
    for status in statuses:
        if status != "failed":
            break
        count += 1
    return count


def start(user_id: int) -> Payout | None:
    """Step 1: store a payout and move its amount to ``payouts_pending``, in one transaction. None: nothing due."""
    account = db.session.get(PayoutAccount, user_id)
    if account is None or not account.payouts_enabled:
        db.session.rollback()
        return None
    if failures_in_a_row(user_id) >= current_app.config["PAYOUT_MAX_ATTEMPTS"]:
        db.session.rollback()
        return None  # an admin looks first (the failures show on the admin's page)
    host_id = ledger.account_id("host", user_id)
    host = db.session.execute(select(LedgerAccount).where(LedgerAccount.id == host_id).with_for_update()
                              .execution_options(populate_existing=True)).scalar_one()
    if held_by_verification(user_id):  # quarantined since the job chose the owner
        db.session.rollback()
        return None
    amount = max(host.available, 0) // MICRO_PER_CENT * MICRO_PER_CENT  # whole cents; the rest stays owed
    if amount <= 0 or amount < (account.threshold or default_threshold()):
        db.session.rollback()
        return None
    payout_id = db.session.execute(
        insert(Payout).values(user_id=user_id, amount=amount, destination=account.stripe_account_id,
                              idempotency_key=f"payout-{uuid.uuid4()}")
        .on_conflict_do_nothing(index_elements=["user_id"],
                                index_where=text("status IN ('pending', 'needs_attention')"))
        .returning(Payout.id)).scalar_one_or_none()
    if payout_id is None:  # another run started one first
        db.session.rollback()
        return None
    ledger.post(f"payout:{payout_id}", "payout", [(host_id, -amount), (ledger.account_id("payouts_pending"), amount)],
                memo=f"payout {payout_id} to {account.stripe_account_id}")
    db.session.commit()
    return db.session.get(Payout, payout_id)


def claim(payout_id: int) -> Payout | None:
    """Own a pending payout for one send (compare-and-set on its lease); None when another run has it."""
    claimed = db.session.execute(
        update(Payout).where(Payout.id == payout_id, Payout.status == "pending", Payout.next_attempt_at <= func.now())
        .values(attempts=Payout.attempts + 1, next_attempt_at=func.now() + SEND_LEASE, updated_at=func.now())
        .returning(Payout.id)).scalar_one_or_none()
    db.session.commit()
    return db.session.get(Payout, payout_id, populate_existing=True) if claimed else None


def find_transfer(client: stripe.StripeClient, payout: Payout):
    """The transfer already made for ``payout``, found by its metadata; None when there is none."""
    transfers = client.v1.transfers.list(params={"destination": payout.destination, "limit": 100})
    for transfer in transfers.auto_paging_iter():
        metadata = transfer.metadata.to_dict() if transfer.metadata else {}
        if metadata.get("payout_id") == str(payout.id):
            return transfer
    return None


def transfer(client: stripe.StripeClient, payout: Payout):
    """Step 2: the Stripe transfer for ``payout``, made with its stored key (or found, once Stripe forgot the key)."""
    if utcnow() - payout.created_at > KEY_TRUSTED_FOR:
        found = find_transfer(client, payout)
        if found is not None:
            return found
    return client.v1.transfers.create(params={
        "amount": payout.amount // MICRO_PER_CENT, "currency": CURRENCY, "destination": payout.destination,
        "metadata": {"payout_id": str(payout.id), "user_id": str(payout.user_id)},
        "description": f"gpushare host earnings, payout {payout.id}",
    }, options={"idempotency_key": payout.idempotency_key})


def record_paid(payout: Payout, transfer_id: str) -> bool:
    """Step 3: the payout is paid; its amount leaves ``payouts_pending`` for Stripe. False if already recorded."""
    done = _mark_paid(payout, transfer_id)
    db.session.commit()
    return done


def _mark_paid(payout: Payout, transfer_id: str) -> bool:
    done = db.session.execute(
        update(Payout).where(Payout.id == payout.id, Payout.status.in_(OPEN))
        .values(status="paid", stripe_transfer_id=transfer_id, last_error=None, updated_at=func.now())
        .returning(Payout.id)).scalar_one_or_none()
    if done:
        ledger.post(f"payout:{payout.id}:paid", "payout",
                    [(ledger.account_id("payouts_pending"), -payout.amount),
                     (ledger.account_id("stripe"), payout.amount)],
                    memo=f"Stripe transfer {transfer_id}")
    return bool(done)


def _mark(payout: Payout, status: str, error: str, *, retry_in: timedelta | None = None) -> None:
    values = {"status": status, "last_error": error[:2000], "updated_at": func.now()}
    if retry_in is not None:
        values["next_attempt_at"] = func.now() + retry_in
    done = db.session.execute(update(Payout).where(Payout.id == payout.id, Payout.status == "pending")
                              .values(**values).returning(Payout.id)).scalar_one_or_none()
    if done and status == "failed":
        # Stripe refused: no money moved, so the earnings are owed again.
        ledger.post(f"payout:{payout.id}:returned", "payout",
                    [(ledger.account_id("payouts_pending"), -payout.amount),
                     (ledger.account_id("host", payout.user_id), payout.amount)],
                    memo=f"payout {payout.id} failed: {error[:200]}")
    db.session.commit()


def retry_delay(failures: int) -> timedelta:
    """Back off: one interval after the first failure, doubling, at most a day."""
    interval = current_app.config["PAYOUT_INTERVAL_SECONDS"]
    return timedelta(seconds=min(interval * 2 ** max(failures - 1, 0), 86400))


def send(payout_id: int) -> str:
    """Steps 2 and 3 for one pending payout; returns what became of it ('paid', 'failed', 'retry', ...)."""
    payout = claim(payout_id)
    if payout is None:
        return "busy"
    try:
        made = transfer(client(), payout)
    except stripe.IdempotencyError as exc:
        # The stored key was used with other parameters: never invent a new key, a person must look.
        log.error("payout %s: Stripe refused its idempotency key %s: %s", payout.id, payout.idempotency_key, exc)
        _mark(payout, "needs_attention", f"idempotency key refused: {exc.user_message or exc}")
        return "needs_attention"
    except (stripe.InvalidRequestError, stripe.PermissionError, stripe.AuthenticationError) as exc:
        # A definite refusal (no platform balance, an account that can't be paid): nothing was transferred.
        error = f"{exc.code or type(exc).__name__}: {exc.user_message or exc}"
        log.warning("payout %s refused by Stripe: %s", payout.id, error)
        _mark(payout, "failed", error, retry_in=retry_delay(failures_in_a_row(payout.user_id) + 1))
        return "failed"
    except stripe.StripeError as exc:
        # No answer, or Stripe's own error: the transfer may exist. Same key next time; give up to a person later.
        error = f"{type(exc).__name__}: {exc.user_message or exc}"
        if payout.attempts >= current_app.config["PAYOUT_MAX_ATTEMPTS"]:
            log.error("payout %s: no answer from Stripe after %s attempts: %s", payout.id, payout.attempts, error)
            _mark(payout, "needs_attention", error)
            return "needs_attention"
        _mark(payout, "pending", error, retry_in=retry_delay(payout.attempts))
        return "retry"
    record_paid(payout, made.id)
    return "paid"


def run() -> dict[str, int]:
    """One pass of the payout job: resend open payouts whose time came, then start and send the due ones."""
    outcomes: dict[str, int] = {}
    waiting = db.session.scalars(select(Payout.id).where(Payout.status == "pending",
                                                         Payout.next_attempt_at <= func.now())
                                 .order_by(Payout.id)).all()
    db.session.commit()
    for payout_id in waiting:
        outcome = send(payout_id)
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
    for user_id in due_owners():
        payout = start(user_id)
        if payout is not None:
            outcome = send(payout.id)
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
    return outcomes


def owners_on_hold() -> list[tuple[PayoutAccount, Payout]]:
    """Owners skipped because their payouts failed ``PAYOUT_MAX_ATTEMPTS`` times in a row, with the last failure."""
    limit = current_app.config["PAYOUT_MAX_ATTEMPTS"]
    held = []
    for account in db.session.scalars(select(PayoutAccount).where(PayoutAccount.user_id.in_(
            select(Payout.user_id).where(Payout.status == "failed"))).order_by(PayoutAccount.user_id)):
        if failures_in_a_row(account.user_id) >= limit:
            last = db.session.scalar(select(Payout).where(Payout.user_id == account.user_id)
                                     .order_by(Payout.created_at.desc(), Payout.id.desc()).limit(1))
            held.append((account, last))
    return held


def resume_owner(admin: User, user_id: int) -> bool:
    """After an admin looked: the owner's earlier failures stop counting, and the next run pays them if due."""
    account = db.session.get(PayoutAccount, user_id)
    if account is None:
        return False
    account.failures_cleared_at = utcnow()
    audit.record(admin, "payouts.resume", "user", user_id)
    db.session.commit()
    return True


def admin_reset(payout: Payout) -> None:
    """After an admin looked: let a needs-attention payout be sent again with its same key."""
    db.session.execute(update(Payout).where(Payout.id == payout.id, Payout.status == "needs_attention")
                       .values(status="pending", attempts=0, next_attempt_at=func.now(), updated_at=func.now()))
    db.session.commit()
