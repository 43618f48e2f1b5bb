"""Trust: verify what every host serves, measure what it can do, and pay only honest hosts.

Hosts are strangers' machines. Each has a trust state (``Host.trust_state``), which the routing table reads:

- ``staged``: new; canaries and a hardware benchmark run before any client traffic;
- ``verified``: it passed; clients are routed to it;
- ``degraded``: a fallback only, when no verified host can take a request (``reputation``);
- ``quarantined``: no traffic, and its owner's payouts are held until an admin releases it or claws back what
  clients paid for its tokens since its last passed check (``money.clawback``).

The modules, in the order a check meets them:

- ``canaries``: requests a host cannot tell from a client's, sent on the ordinary path (``proxy.gateway.canary``);
  the hot path also samples client answers (``proxy.sampling``);
- ``reference``: the platform's full-precision engine scores the host's tokens (teacher forcing);
- ``scoring``: the tests (greedy gap, sampled surprise, outright violations) and thresholds from honest noise;
- ``calibration``: measures a model's honest noise on an engine an admin vouches for;
- ``checks``: one check end to end, and ``decide``: the rules that move a host between states;
- ``hardware``: throughput at several concurrencies against what the reported GPU should do;
- ``reputation``: uptime, pass rate, latency and throughput against the model's median; verified <-> degraded.

This module holds the states and the admin's actions. Imports go one way: this package -> ``proxy``, ``money``,
``hosts``, ``accounts``; nothing in those imports it.
"""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import select, update

from ..accounts import audit
from ..extensions import db
from ..models import Host, User, VerificationCheck, utcnow

# What a host's owner and an admin read for each state.
STATE_WORDS = {
    "staged": "staged: being checked before any client traffic",
    "verified": "verified: serving clients",
    "degraded": "degraded: a fallback when no verified host can serve",
    "quarantined": "quarantined: no traffic, earnings held until an admin reviews the evidence",
}


class TrustError(ValueError):
    """An action on a host's trust that cannot be done; the message is for the admin."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def set_state(host_id: int, new: str, reason: str, *, old: tuple[str, ...] | None = None,
              actor: User | None = None, **details) -> bool:
    """Move a host to ``new`` (compare-and-set from one of ``old``, if given), audited; commits. False when the
    host was not in one of ``old`` (another check or an admin moved it first) or already ``new``."""
    query = update(Host).where(Host.id == host_id, Host.trust_state != new)
    if old is not None:
        query = query.where(Host.trust_state.in_(old))
    moved = db.session.execute(query.values(trust_state=new, trust_reason=reason[:1000], trust_changed_at=utcnow())
                               .returning(Host.trust_state)).scalar_one_or_none()
    if moved is None:
        db.session.rollback()
        return False
    audit.record(actor, f"host.trust.{new}", "host", host_id, reason=reason[:1000], **details)
    db.session.commit()
    return True


def quarantine(host_id: int, reason: str, **details) -> bool:
    """Verification's verdict: no more traffic, and the owner's payouts wait for an admin."""
    return set_state(host_id, "quarantined", reason, old=("staged", "verified", "degraded"), **details)


def last_passed_at(host_id: int) -> datetime | None:
    """When the host last passed a check (canary or sampled traffic)."""
    return db.session.scalar(select(VerificationCheck.created_at)
                             .where(VerificationCheck.host_id == host_id, VerificationCheck.outcome == "passed",
                                    VerificationCheck.kind.in_(("canary", "traffic")))
                             .order_by(VerificationCheck.created_at.desc()).limit(1))


def quarantined_host(host_id: int) -> Host:
    host = db.session.get(Host, host_id)
    if host is None:
        raise TrustError("no such host", status=404)
    if host.trust_state != "quarantined":
        raise TrustError(f"this host is {host.trust_state}, not quarantined", status=409)
    return host


def release(admin: User, host_id: int) -> Host:
    """An admin read the evidence and trusts the host: it serves again and its owner's payouts resume."""
    quarantined_host(host_id)
    if not set_state(host_id, "verified", f"released by {admin.email} after review", old=("quarantined",),
                     actor=admin):
        raise TrustError("this host is no longer quarantined", status=409)
    return db.session.get(Host, host_id, populate_existing=True)


def claw_back(admin: User, host_id: int):
    """An admin read the evidence and does not trust the host: the clients who paid for its tokens since its last
    passed check are refunded (``money.clawback``); the host stays quarantined."""
    from ..money import clawback

    host = quarantined_host(host_id)
    return clawback.claw_back(admin, host, since=last_passed_at(host_id))


def set_reference(admin: User, host_id: int, reference: bool) -> Host:
    """Mark a platform-run host as a reference engine (it serves in full precision, checks others and takes no
    client traffic), or unmark it."""
    host = db.session.get(Host, host_id)
    if host is None:
        raise TrustError("no such host", status=404)
    if host.reference != reference:
        host.reference = reference
        # A reference is the platform's own engine; a host that stops being one is checked like any other first.
        state, reason = ("verified", "a reference engine") if reference else ("staged", "no longer a reference")
        host.trust_state, host.trust_reason, host.trust_changed_at = state, reason, utcnow()
        audit.record(admin, "host.reference" if reference else "host.unreference", "host", host_id)
        db.session.commit()
    return host
