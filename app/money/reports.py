"""The platform's money, for admins: where it stands, what it earned, and whether the ledger agrees with Stripe.

Everything here reads; nothing changes money. The figures come from the ledger
and the payout rows. ``reconcile`` also lists the Checkout Sessions and
transfers Stripe holds (at most ``LIST_BOUND`` of each, newest first) and
compares them with our purchases and payouts, in words an admin can act on.

Signs: a platform account's balance is what flowed into it, so money that left
(grants given, money taken in at Stripe) shows as the negative of its balance.
"""
from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import stripe
from sqlalchemy import and_, func, or_, select
from sqlalchemy.orm import selectinload

from ..extensions import db
from ..models import LedgerAccount, LedgerEntry, Payout, Purchase, utcnow
from . import ledger, payouts
from .stripe import client, enabled
from .units import MICRO_PER_CENT, format_cents, format_usd

log = logging.getLogger(__name__)

LIST_BOUND = 10_000  # objects listed from Stripe per kind, per reconciliation
PAGE = 100  # Stripe's largest page
# Our purchase row is written a moment after its Checkout Session, a transfer after its payout row: when a list
# was cut short, only our rows newer than its oldest object (less this clock difference) are looked for in it.
CLOCK_SLACK = timedelta(minutes=5)
RECENT_PAID = 20
# Real Stripe and the stand-in both expand a session's PaymentIntent and its charge: the charge says what was refunded.
SESSION_EXPAND = "data.payment_intent.latest_charge"


@dataclass
class Position:
    """The platform accounts and the totals of the per-person ones, micro-USD, each as a positive amount."""

    fees: int = 0  # platform_fees: earned from usage
    grants: int = 0  # grants: credits given away
    stripe_in: int = 0  # stripe: purchases paid to us, disputes won, transfers reversed
    stripe_out: int = 0  # stripe: refunds, disputes and payouts paid from us
    payouts_in_flight: int = 0  # payouts_pending: taken from hosts, not yet transferred
    client_balances: int = 0
    owed_by_clients: int = 0  # receivable: refunds and disputes that outran a balance
    owed_to_hosts: int = 0  # host: earnings not yet paid out

    @property
    def stripe_net(self) -> int:
        return self.stripe_in - self.stripe_out


@dataclass
class PayoutCount:
    count: int = 0
    amount: int = 0


@dataclass
class Overview:
    """What the admin money page shows, all from the database."""

    position: Position
    fees: dict[str, int]
    open_payouts: PayoutCount
    needs_attention: PayoutCount
    failed_payouts: PayoutCount
    bank_failures: int
    recent_paid: list[Payout]


@dataclass
class Mismatch:
    """One disagreement: what it is about (a purchase, a payout, the ledger), the object named, and the words."""

    subject: str
    ref: str
    description: str


@dataclass
class Reconciliation:
    mismatches: list[Mismatch] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # why Stripe was not compared, or not all of it
    stripe_checked: bool = False
    sessions: int = 0
    transfers: int = 0

    @property
    def agrees(self) -> bool:
        return self.stripe_checked and not self.mismatches


# --- the page's figures -------------------------------------------------------------------------------------------

def position() -> Position:
    """The balances of the platform accounts, and the totals owed to and by clients and hosts."""
    by_kind = dict(db.session.execute(select(LedgerAccount.kind, func.sum(LedgerAccount.balance))
                                      .group_by(LedgerAccount.kind)).all())
    stripe_in, stripe_out = db.session.execute(
        select(func.coalesce(func.sum(-LedgerEntry.amount).filter(LedgerEntry.amount < 0), 0),
               func.coalesce(func.sum(LedgerEntry.amount).filter(LedgerEntry.amount > 0), 0))
        .join(LedgerAccount, LedgerAccount.id == LedgerEntry.account_id).where(LedgerAccount.kind == "stripe")).one()

    def kind(name: str) -> int:
        return int(by_kind.get(name) or 0)

    return Position(fees=kind("platform_fees"), grants=-kind("grants"), stripe_in=int(stripe_in),
                    stripe_out=int(stripe_out), payouts_in_flight=kind("payouts_pending"),
                    client_balances=kind("client"), owed_by_clients=-kind("receivable"), owed_to_hosts=kind("host"))


def fees_earned() -> dict[str, int]:
    """Platform fees posted today (UTC), in the last 7 days, and in all, micro-USD."""
    now = utcnow()
    today, week = now.replace(hour=0, minute=0, second=0, microsecond=0), now - timedelta(days=7)
    row = db.session.execute(
        select(func.coalesce(func.sum(LedgerEntry.amount).filter(LedgerEntry.created_at >= today), 0),
               func.coalesce(func.sum(LedgerEntry.amount).filter(LedgerEntry.created_at >= week), 0),
               func.coalesce(func.sum(LedgerEntry.amount), 0))
        .join(LedgerAccount, LedgerAccount.id == LedgerEntry.account_id)
        .where(LedgerAccount.kind == "platform_fees")).one()
    return {"Today": int(row[0]), "Last 7 days": int(row[1]), "All time": int(row[2])}


def payout_counts() -> dict[str, PayoutCount]:
    """How many payouts are in each state, and their amounts (failed ones are owed to their hosts again)."""
    rows = db.session.execute(select(Payout.status, func.count(), func.coalesce(func.sum(Payout.amount), 0))
                              .group_by(Payout.status)).all()
    return {status: PayoutCount(int(count), int(amount)) for status, count, amount in rows}


def recent_paid(limit: int = RECENT_PAID) -> list[Payout]:
    """The newest paid payouts, with their owners."""
    return list(db.session.scalars(select(Payout).where(Payout.status == "paid").options(selectinload(Payout.user))
                                   .order_by(Payout.updated_at.desc(), Payout.id.desc()).limit(limit)))


def overview() -> Overview:
    """Every figure of the admin money page, from the database."""
    counts = payout_counts()
    result = Overview(position=position(), fees=fees_earned(), open_payouts=counts.get("pending", PayoutCount()),
                      needs_attention=counts.get("needs_attention", PayoutCount()),
                      failed_payouts=counts.get("failed", PayoutCount()), bank_failures=len(payouts.bank_failures()),
                      recent_paid=recent_paid())
    db.session.commit()
    return result


# --- reconciliation ------------------------------------------------------------------------------------------------

def reconcile() -> Reconciliation:
    """Compare the ledger with Stripe: Checkout Sessions with purchases, transfers with payouts, and the ledger's rules.

    Stripe is asked first, before any database transaction opens; an unconfigured or unreachable Stripe is said
    in ``notes`` and the ledger's own checks still run."""
    result = Reconciliation()
    sessions = transfers = None
    db.session.commit()  # no transaction stays open while Stripe answers
    if not enabled():
        result.notes.append("Reconciliation with Stripe needs Stripe configured (set STRIPE_SECRET_KEY): only the "
                            "ledger's own rules were checked.")
    else:
        stripe_client = client()
        try:
            sessions = _listed(stripe_client.v1.checkout.sessions.list(params={"limit": PAGE,
                                                                               "expand": [SESSION_EXPAND]}))
            transfers = _listed(stripe_client.v1.transfers.list(params={"limit": PAGE}))
        except stripe.StripeError as exc:
            log.warning("reconciliation could not list from Stripe: %s", exc)
            result.notes.append(f"Stripe could not be reached or refused the request, so nothing was compared with "
                                f"it ({type(exc).__name__}: {exc.user_message or exc}). Try again in a moment.")
    if sessions is not None and transfers is not None:
        result.stripe_checked = True
        result.sessions, result.transfers = len(sessions[0]), len(transfers[0])
        for (_, capped), what in ((sessions, "Checkout Sessions"), (transfers, "transfers")):
            if capped:
                result.notes.append(f"Stripe holds more than {LIST_BOUND:,} {what}: only the newest {LIST_BOUND:,} "
                                    f"were compared, and only our records newer than the oldest of them.")
        result.mismatches += _check_purchases(*sessions)
        result.mismatches += _check_payouts(*transfers)
    result.mismatches += [Mismatch("ledger", "ledger", problem) for problem in ledger.invariants()]
    result.mismatches += _check_in_flight()
    db.session.commit()
    return result


def _listed(page) -> tuple[list[dict], bool]:
    """Up to ``LIST_BOUND`` objects of a Stripe list, as plain dicts, and whether there were more."""
    items = [obj.to_dict() for obj in itertools.islice(page.auto_paging_iter(), LIST_BOUND + 1)]
    return items[:LIST_BOUND], len(items) > LIST_BOUND


def _cutoff(objects: list[dict], capped: bool) -> datetime | None:
    """When a list was cut short: the time before which our rows may match objects that were not listed."""
    if not capped or not objects:
        return None
    return datetime.fromtimestamp(min(obj["created"] for obj in objects), UTC) + CLOCK_SLACK


def _refunded_cents(session: dict) -> int | None:
    """What Stripe refunded of the session's payment, when its expanded charge says; None when it does not."""
    intent = session.get("payment_intent")
    charge = intent.get("latest_charge") if isinstance(intent, dict) else None
    return charge.get("amount_refunded") if isinstance(charge, dict) else None


def _check_purchases(sessions: list[dict], capped: bool) -> list[Mismatch]:
    found: list[Mismatch] = []
    seen = {session["id"]: session for session in sessions}
    newer = _cutoff(sessions, capped)
    paid_here = Purchase.status == "paid"
    rows = db.session.scalars(select(Purchase).options(selectinload(Purchase.user)).where(or_(
        Purchase.session_id.in_(list(seen)),
        and_(paid_here, Purchase.created_at >= newer) if newer is not None else paid_here))).all()
    by_session = {purchase.session_id: purchase for purchase in rows}

    def add(ref: str, words: str) -> None:
        found.append(Mismatch("purchase", ref, words))

    for session in sessions:
        purchase = by_session.get(session["id"])
        if purchase is None and not (session.get("client_reference_id") or (session.get("metadata") or {})
                                     .get("user_id")):
            continue  # not one of ours: another product on the same Stripe account
        cents = session.get("amount_total") or 0
        paid_there = session.get("payment_status") == "paid"
        credited = purchase is not None and purchase.status == "paid"
        if paid_there and not credited:
            state = "no purchase was recorded" if purchase is None else f"the purchase is {purchase.status}"
            add(session["id"], f"Stripe was paid {format_cents(cents)} for this Checkout Session but no credits were "
                               f"given here ({state}): its webhook never arrived or failed.")
        elif credited and not paid_there:
            add(session["id"], f"Purchase {purchase.id} ({purchase.user.email}) was credited "
                               f"{format_usd(purchase.amount)} here, but Stripe says this Checkout Session is "
                               f"{session.get('payment_status') or 'not paid'} ({session.get('status')}).")
        elif credited:
            if cents * MICRO_PER_CENT != purchase.amount:
                add(session["id"], f"Purchase {purchase.id} ({purchase.user.email}): Stripe was paid "
                                   f"{format_cents(cents)} but {format_usd(purchase.amount)} was credited here.")
            refunded = _refunded_cents(session)
            if refunded is not None and refunded * MICRO_PER_CENT != purchase.refunded:
                add(session["id"], f"Purchase {purchase.id} ({purchase.user.email}): Stripe refunded "
                                   f"{format_cents(refunded)} but the ledger took back "
                                   f"{format_usd(purchase.refunded)}.")
    for purchase in rows:
        if purchase.status == "paid" and purchase.session_id not in seen:
            add(purchase.session_id, f"Purchase {purchase.id} ({purchase.user.email}) was credited "
                                     f"{format_usd(purchase.amount)} here, but Stripe has no such Checkout Session.")
    return found


def _check_payouts(transfers: list[dict], capped: bool) -> list[Mismatch]:
    found: list[Mismatch] = []
    seen = {transfer["id"] for transfer in transfers}
    newer = _cutoff(transfers, capped)
    paid_here = Payout.status == "paid"
    rows = db.session.scalars(select(Payout).options(selectinload(Payout.user)).where(or_(
        Payout.stripe_transfer_id.in_(list(seen)),
        Payout.id.in_([pid for pid in map(payouts.payout_id_of, transfers) if pid is not None]),
        and_(paid_here, Payout.created_at >= newer) if newer is not None else paid_here))).all()
    by_transfer = {payout.stripe_transfer_id: payout for payout in rows if payout.stripe_transfer_id}
    by_id = {payout.id: payout for payout in rows}

    def add(ref: str, words: str) -> None:
        found.append(Mismatch("payout", ref, words))

    for transfer in transfers:
        payout_id = payouts.payout_id_of(transfer)
        payout = by_transfer.get(transfer["id"]) or by_id.get(payout_id)
        cents, destination = transfer.get("amount") or 0, transfer.get("destination")
        if payout is None:
            named = f" (its metadata names payout {payout_id}, which does not exist)" if payout_id else ""
            add(transfer["id"], f"Stripe transferred {format_cents(cents)} to {destination} with no payout here"
                                f"{named}: the ledger never took it from a host's earnings.")
        elif payout.status != "paid":
            add(transfer["id"], f"Stripe transferred {format_cents(cents)} for payout {payout.id} "
                                f"({payout.user.email}), which is still {payout.status.replace('_', ' ')} here.")
        elif payout.stripe_transfer_id != transfer["id"]:
            add(transfer["id"], f"Payout {payout.id} ({payout.user.email}) was paid by transfer "
                                f"{payout.stripe_transfer_id}, but Stripe also made this transfer of "
                                f"{format_cents(cents)} for it: the host may have been paid twice.")
        else:
            if cents * MICRO_PER_CENT != payout.amount:
                add(transfer["id"], f"Payout {payout.id} ({payout.user.email}): Stripe transferred "
                                    f"{format_cents(cents)} but the ledger paid out {format_usd(payout.amount)}.")
            if destination != payout.destination:
                add(transfer["id"], f"Payout {payout.id} ({payout.user.email}) was for {payout.destination}, "
                                    f"but Stripe's transfer went to {destination}.")
            reversed_cents = transfer.get("amount_reversed") or 0
            if reversed_cents * MICRO_PER_CENT != payout.reversed:
                add(transfer["id"], f"Payout {payout.id} ({payout.user.email}): Stripe reversed "
                                    f"{format_cents(reversed_cents)} of its transfer but the ledger took back "
                                    f"{format_usd(payout.reversed)}.")
    for payout in rows:
        if payout.status == "paid" and payout.stripe_transfer_id not in seen:
            add(payout.stripe_transfer_id or f"payout {payout.id}",
                f"Payout {payout.id} to {payout.user.email} is paid here ({format_usd(payout.amount)}), but Stripe "
                f"has no such transfer.")
    return found


def _check_in_flight() -> list[Mismatch]:
    """The payouts-in-flight account holds exactly what the open payouts add up to."""
    held = db.session.scalar(select(func.coalesce(func.sum(LedgerAccount.balance), 0))
                             .where(LedgerAccount.kind == "payouts_pending"))
    open_sum = db.session.scalar(select(func.coalesce(func.sum(Payout.amount), 0))
                                 .where(Payout.status.in_(payouts.OPEN)))
    if held == open_sum:
        return []
    return [Mismatch("ledger", "payouts_pending", f"The payouts-in-flight account holds {format_usd(held)} but the "
                                                  f"open payouts add up to {format_usd(open_sum)}.")]
