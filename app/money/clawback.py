"""Claw-back: refunding the clients who paid for a quarantined host's tokens.

When an admin decides a quarantined host cheated, every request it served since its last passed check is
reversed: a transfer ``clawback:<request id>`` credits the client the whole cost (paying off what the client owes
first), and takes back the host owner's share and the platform's fee. What the owner's host account no longer
holds (paid out before the quarantine) is owed on its receivable account. Each request is reversed once, whatever
runs twice; the usage records stay as they were (entries are never changed, only reversed).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import text

from ..accounts import audit
from ..extensions import db
from ..models import Host, User
from . import ledger

SERVED_SQL = text("""
    SELECT u.request_id, u.user_id, u.cost,
           coalesce((SELECT e.amount FROM ledger_entries e JOIN ledger_accounts a ON a.id = e.account_id
                     WHERE e.transfer_id = 'usage:' || u.request_id AND a.kind = 'host'), 0) AS host_share
    FROM usage_records u
    WHERE u.host_id = :host AND u.cost > 0 AND u.created_at > coalesce(CAST(:since AS timestamptz), '-infinity')
      AND NOT EXISTS (SELECT 1 FROM ledger_transfers t WHERE t.id = 'clawback:' || u.request_id)
    ORDER BY u.created_at, u.request_id
""")


@dataclass
class ClawBack:
    requests: int = 0
    refunded: int = 0  # micro-USD back to clients
    from_host: int = 0  # taken back from the owner's share
    owed_by_owner: int = 0  # of that, what the owner's host account could not cover
    clients: set[int] = field(default_factory=set)


def claw_back(admin: User, host: Host, *, since: datetime | None) -> ClawBack:
    """Reverse every request ``host`` served after ``since`` (its last passed check; None: all it served)."""
    result = ClawBack()
    fees = ledger.account_id("platform_fees")
    for row in db.session.execute(SERVED_SQL, {"host": host.id, "since": since}).all():
        entries = ledger.credit_entries(fees, row.user_id, row.cost)
        if row.host_share:
            taken = ledger.debit_entries(fees, host.owner_id, row.host_share, kind="host")
            entries += taken
            result.owed_by_owner -= sum(amount for account, amount in taken
                                        if account == ledger.account_id("receivable", host.owner_id))
        if ledger.post(f"clawback:{row.request_id}", "clawback", _merged(entries), request_id=None,
                       memo=f"claw-back of request {row.request_id}: host {host.id} failed verification",
                       created_by=admin):
            result.requests += 1
            result.refunded += row.cost
            result.from_host += row.host_share
            result.clients.add(row.user_id)
    audit.record(admin, "host.claw_back", "host", host.id, requests=result.requests, refunded=result.refunded,
                 from_host=result.from_host, owed_by_owner=result.owed_by_owner,
                 since=since.isoformat() if since else None)
    db.session.commit()
    return result


def _merged(entries: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """One entry per account (the platform's fee account appears on both sides)."""
    totals: dict[int, int] = {}
    for account, amount in entries:
        totals[account] = totals.get(account, 0) + amount
    return [(account, amount) for account, amount in totals.items() if amount]
