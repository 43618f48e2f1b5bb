"""The double-entry ledger: accounts, balanced transfers, grants, and the invariants.

Amounts are integer micro-units (1 USD = 1,000,000). PostgreSQL enforces the
rules (see migration 0002): entries are immutable, every transfer balances,
balances are derived from entries and never overdrawn. This module posts
transfers and reads balances; the request path uses the ``gs_hold`` and
``gs_finish`` functions directly for speed.
"""
from __future__ import annotations

from sqlalchemy import func, select, text
from sqlalchemy.dialects.postgresql import insert

from ..accounts import audit
from ..extensions import db
from ..models import LedgerAccount, LedgerEntry, LedgerTransfer, User
from .units import dollars

MAX_GRANT = dollars(100_000)  # one admin grant is at most $100,000


class LedgerError(ValueError):
    """A posting that cannot be made; the message is for the person who asked."""


def account_id(kind: str, user: User | int | None = None) -> int:
    """The id of a ledger account, created on first use."""
    user_id = getattr(user, "id", user)
    return db.session.execute(text("SELECT gs_account(:kind, :user)"), {"kind": kind, "user": user_id}).scalar_one()


def account(kind: str, user: User | int | None = None) -> LedgerAccount:
    return db.session.get(LedgerAccount, account_id(kind, user), populate_existing=True)


def existing(kind: str, user: User | int | None = None) -> LedgerAccount:
    """The account as it stands, for reading: an account not made yet reads as empty, and is not made (a page
    that shows a balance changes nothing)."""
    user_id = getattr(user, "id", user)
    found = db.session.scalar(select(LedgerAccount).where(LedgerAccount.kind == kind,
                                                          LedgerAccount.user_id.is_not_distinct_from(user_id))
                              .execution_options(populate_existing=True))
    return found or LedgerAccount(kind=kind, user_id=user_id, balance=0, held=0, credit_limit=0)


def post(transfer_id: str, kind: str, entries: list[tuple[int, int]], *, memo: str = "",
         created_by: User | None = None, request_id: str | None = None) -> bool:
    """Post one balanced transfer in the current transaction. False when ``transfer_id`` was already posted."""
    if sum(amount for _, amount in entries) != 0:
        raise LedgerError("a transfer must balance")
    inserted = db.session.execute(
        insert(LedgerTransfer).values(id=transfer_id, kind=kind, memo=memo, request_id=request_id,
                                      created_by_id=getattr(created_by, "id", None))
        .on_conflict_do_nothing(index_elements=["id"]).returning(LedgerTransfer.id)
    ).scalar_one_or_none()
    if inserted is None:
        return False
    db.session.execute(insert(LedgerEntry), [{"transfer_id": transfer_id, "account_id": acct, "amount": amount}
                                             for acct, amount in entries if amount])
    return True


def grant(admin: User | None, client: User, amount: int, *, memo: str, transfer_id: str) -> bool:
    """Give ``client`` credits from the platform (promotions, support, the demo). Idempotent by ``transfer_id``."""
    if not 0 < amount <= MAX_GRANT:
        raise LedgerError("A grant must be more than zero and at most $100,000.")
    posted = post(transfer_id, "grant", credit_entries(account_id("grants"), client, amount), memo=memo,
                  created_by=admin)
    if posted:
        audit.record(admin, "credits.grant", "user", client.id, amount=amount, memo=memo, transfer=transfer_id)
    db.session.commit()
    return posted


def _lock_client(client: User | int, kind: str = "client") -> LedgerAccount:
    """The person's account, locked (as ``gs_hold`` locks a client's) so its balance can't move while we split a
    posting."""
    acct_id = account_id(kind, client)
    return db.session.execute(select(LedgerAccount).where(LedgerAccount.id == acct_id).with_for_update(key_share=True)
                              .execution_options(populate_existing=True)).scalar_one()


def owed(client: User | int) -> int:
    """What ``client`` owes the platform (a refund or dispute outran its balance); 0 when nothing."""
    user_id = getattr(client, "id", client)
    balance = db.session.scalar(select(LedgerAccount.balance).where(LedgerAccount.kind == "receivable",
                                                                    LedgerAccount.user_id == user_id))
    return -(balance or 0)


def credit_entries(source: int, client: User | int, amount: int) -> list[tuple[int, int]]:
    """Entries moving ``amount`` from ``source`` to ``client``, paying what the client owes first."""
    acct = _lock_client(client)
    debt = min(owed(client), amount)
    entries = [(source, -amount), (acct.id, amount - debt)]
    if debt:
        entries.append((account_id("receivable", client), debt))
    return entries


def debit_entries(sink: int, client: User | int, amount: int, kind: str = "client") -> list[tuple[int, int]]:
    """Entries taking ``amount`` from ``client``'s account of ``kind`` (its client balance, or its host earnings)
    to ``sink``; what that account's available balance can't cover is owed on its receivable account."""
    acct = _lock_client(client, kind)
    taken = min(amount, max(acct.available, 0))
    entries = [(sink, amount), (acct.id, -taken)]
    if amount - taken:
        entries.append((account_id("receivable", client), taken - amount))
    return entries


def balance(user: User) -> LedgerAccount:
    """The client's ledger account: ``balance``, ``held`` and ``available`` (read only)."""
    acct = existing("client", user)
    db.session.commit()
    return acct


def void_expired_holds() -> int:
    """Release holds whose request never finished. Returns how many."""
    voided = db.session.execute(text("SELECT gs_void_expired(clock_timestamp())")).scalar_one()
    db.session.commit()
    return voided


def invariants() -> list[str]:
    """What is wrong with the ledger, in words; empty when every rule holds."""
    problems = []
    total = db.session.scalar(select(func.coalesce(func.sum(LedgerEntry.amount), 0)))
    if total != 0:
        problems.append(f"entries sum to {total}, not 0")
    unbalanced = db.session.execute(text(
        "SELECT transfer_id, sum(amount) FROM ledger_entries GROUP BY transfer_id HAVING sum(amount) <> 0")).all()
    problems += [f"transfer {t} is unbalanced by {s}" for t, s in unbalanced]
    drift = db.session.execute(text(
        "SELECT a.id, a.balance, coalesce(sum(e.amount), 0) FROM ledger_accounts a "
        "LEFT JOIN ledger_entries e ON e.account_id = a.id GROUP BY a.id "
        "HAVING a.balance <> coalesce(sum(e.amount), 0)")).all()
    problems += [f"account {a} says {b} but its entries sum to {s}" for a, b, s in drift]
    overdrawn = db.session.execute(text(
        "SELECT id, balance, held FROM ledger_accounts "
        "WHERE NOT allow_negative AND balance + credit_limit - held < 0")).all()
    problems += [f"account {a} is overdrawn: balance {b}, held {h}" for a, b, h in overdrawn]
    held = db.session.execute(text(
        "SELECT a.id, a.held, coalesce(sum(h.amount) FILTER (WHERE h.status = 'held'), 0) FROM ledger_accounts a "
        "LEFT JOIN holds h ON h.account_id = a.id GROUP BY a.id "
        "HAVING a.held <> coalesce(sum(h.amount) FILTER (WHERE h.status = 'held'), 0)")).all()
    problems += [f"account {a} holds {h} but its open holds sum to {s}" for a, h, s in held]
    return problems
