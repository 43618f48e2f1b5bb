"""A machine's life: enrollment, approval, heartbeats, and whether it serves now.

- ``__init__`` (this module): enrollment keys, registration by ``hostkit register``, approval with an overlay
  address, heartbeats, the owner's switches, earnings, and ``serving(host)``: the one rule for whether a host
  gets requests now and, if not, why.
- ``schedule``: a host's weekly windows, parsed, shown and checked against the clock.
- ``diagnostics``: ``hostkit check`` run on a host over SSH, for an admin.
- ``hub``: the WireGuard hub daemon (``flask overlay-hub``) that keeps the router's peers in step with hosts.

Imports go one way: this module -> ``schedule``; ``hub`` and ``diagnostics`` -> the models and ``overlay/``.

A host user makes a single-use enrollment key on the dashboard; the machine
registers with it, its WireGuard public key (its identity) and a hardware
report, and receives a host token (shown once). The host stays pending, and
nothing is routed to it, until an admin approves it; approval gives it one
overlay address from the allocator, which the router dials.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import NamedTuple

from flask import current_app
from sqlalchemy import func, select, text, update
from sqlalchemy.exc import IntegrityError

from overlay import identity, ipam
from overlay.hub import notify as notify_hub  # ``hub`` here is this package's daemon module

from ..accounts import audit, tokens
from ..catalog import pricing
from ..echo import shown
from ..extensions import db, redis_client
from ..models import CatalogModel, EnrollmentKey, Host, HostModel, User, utcnow
from ..money.usage import DayAmount, utc_days, zero_filled
from ..shared import quietly
from . import schedule

MAX_NAME = 80
MAX_REPORT_BYTES = 64 * 1024
STATUS_CHANGES = {"approve": ("pending", "approved"), "reject": ("pending", "rejected"),
                  "suspend": ("approved", "suspended"), "reinstate": ("suspended", "approved")}


class HostError(ValueError):
    """A host request that cannot be done; the message is for the person or the hostkit CLI."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def create_enrollment_key(user: User) -> tuple[EnrollmentKey, str]:
    """A single-use key to register one machine; returns the row and the key, which is shown once."""
    token = tokens.new_token(tokens.ENROLLMENT_PREFIX)
    key = EnrollmentKey(user_id=user.id, prefix=token.prefix, key_hash=token.hash,
                        expires_at=utcnow() + timedelta(hours=current_app.config["ENROLLMENT_KEY_TTL_HOURS"]))
    db.session.add(key)
    db.session.flush()
    audit.record(user, "enrollment_key.create", "enrollment_key", key.id, prefix=token.prefix)
    db.session.commit()
    return key, token.secret


def _clean_name(name) -> str:
    name = " ".join(str(name or "").split())
    if not name or len(name) > MAX_NAME:
        raise HostError(f"name must be 1 to {MAX_NAME} characters")
    return name


def register(enrollment_key: str, *, public_key: str, name: str, engine_port: int, hardware: dict,
             ssh_host_key: str | None = None) -> tuple[Host, str]:
    """Register a machine as a pending host, all or nothing; returns the host and its token (shown once)."""
    try:
        peer = identity.peer_id(public_key)
    except identity.PublicKeyError as exc:
        raise HostError(f"public_key: {exc}") from None
    name = _clean_name(name)
    if isinstance(engine_port, bool) or not isinstance(engine_port, int) or not 1 <= engine_port <= 65535:
        raise HostError("engine_port must be a port number, 1 to 65535")
    if not isinstance(hardware, dict) or len(json.dumps(hardware)) > MAX_REPORT_BYTES:
        raise HostError(f"hardware must be an object of at most {MAX_REPORT_BYTES // 1024} KiB (hostkit check --json)")
    if ssh_host_key is not None and (not isinstance(ssh_host_key, str) or not ssh_host_key.startswith("ssh-")):
        raise HostError("ssh_host_key must be an OpenSSH public key line")
    if db.session.scalar(select(Host.id).where(Host.public_key == public_key.strip())):
        raise HostError("this WireGuard key is already registered: generate a new key pair for a new machine",
                        status=409)
    if not tokens.well_formed(enrollment_key or "", tokens.ENROLLMENT_PREFIX):
        raise HostError("that enrollment key is not valid: make one on the host dashboard", status=401)
    key_hash = tokens.hash_secret(enrollment_key)
    now = utcnow()
    owner_id = db.session.execute(
        update(EnrollmentKey)
        .where(EnrollmentKey.key_hash == key_hash, EnrollmentKey.used_at.is_(None), EnrollmentKey.expires_at > now)
        .values(used_at=now).returning(EnrollmentKey.user_id)).scalar_one_or_none()
    if owner_id is None:
        db.session.rollback()
        found = db.session.scalar(select(EnrollmentKey).where(EnrollmentKey.key_hash == key_hash))
        if found is None:
            raise HostError("that enrollment key is not valid: make one on the host dashboard", status=401)
        if found.used_at is not None:
            raise HostError("that enrollment key has already been used: make a new one for each machine",
                            status=401)
        raise HostError("that enrollment key has expired: make a new one on the host dashboard", status=401)
    token = tokens.new_token(tokens.HOST_TOKEN_PREFIX)
    host = Host(owner_id=owner_id, name=name, status="pending", public_key=public_key.strip(), peer_id=peer,
                engine_port=engine_port, hardware=hardware, ssh_host_key=ssh_host_key,
                token_prefix=token.prefix, token_hash=token.hash, enabled=True)
    db.session.add(host)
    try:
        db.session.flush()
    except IntegrityError:  # the same key registered at the same moment by another request
        db.session.rollback()
        raise HostError("this WireGuard key is already registered: generate a new key pair for a new machine",
                        status=409) from None
    db.session.execute(update(EnrollmentKey).where(EnrollmentKey.key_hash == key_hash).values(host_id=host.id))
    audit.record(db.session.get(User, owner_id), "host.register", "host", host.id, name=name, peer_id=peer)
    db.session.commit()
    return host, token.secret


def authenticate(token: str) -> Host | None:
    if not tokens.well_formed(token or "", tokens.HOST_TOKEN_PREFIX):
        return None
    return db.session.scalar(select(Host).where(Host.token_hash == tokens.hash_secret(token)))


def change_status(admin: User, host_id: int, change: str) -> Host:
    """Approve, reject, suspend or reinstate, as a compare-and-set on the status; approval assigns the
    overlay address and the address the router dials."""
    old, new = STATUS_CHANGES[change]
    values: dict = {"status": new}
    if change == "approve":
        host = db.session.get(Host, host_id)
        if host is None:
            raise HostError("no such host", status=404)
        address = host.overlay_address or ipam.allocate(db.session, current_app.config["OVERLAY_NETWORK"])
        values |= {"overlay_address": str(address), "approved_at": utcnow(),
                   "api_base": f"http://{_url_host(str(address))}:{host.engine_port}"}
    changed = db.session.execute(update(Host).where(Host.id == host_id, Host.status == old).values(**values)
                                 .returning(Host.id)).scalar_one_or_none()
    if changed is None:
        db.session.rollback()
        host = db.session.get(Host, host_id)
        if host is None:
            raise HostError("no such host", status=404)
        raise HostError(f"this host is {host.status}, so it cannot be {new} now", status=409)
    audit.record(admin, f"host.{change}", "host", host_id, **{k: str(v) for k, v in values.items()})
    db.session.commit()
    # The hub adds or removes the peer now, not at its next reconcile (without Redis: at that reconcile).
    quietly(lambda: notify_hub(redis_client), None, "telling the overlay hub")
    return db.session.get(Host, host_id, populate_existing=True)


def _url_host(address: str) -> str:
    return f"[{address}]" if ":" in address else address


# What an agent reports of an engine that cannot take requests (hostkit's Agent.state).
ENGINE_DOWN = ("waiting", "starting", "failed", "stopped")


def record_heartbeat(host: Host, report: dict) -> Host:
    """Keep the host's report (its shape checked by the host API's schema). A host may say it serves only
    models it offers here: anything else would show on its owner's page as if it were true."""
    if not isinstance(report, dict) or len(json.dumps(report)) > MAX_REPORT_BYTES:
        raise HostError(f"a heartbeat is an object of at most {MAX_REPORT_BYTES // 1024} KiB")
    offered = {offer.model.hf_id for offer in host.offers if offer.enabled}
    for model in report.get("models") or []:
        if model not in offered:
            raise HostError(f"models: this host does not offer {shown(str(model), 80)!r} (`hostkit models --enable` "
                            "offers a catalog model)", status=409)
    host.heartbeat = report
    host.last_heartbeat_at = utcnow()
    if report.get("engine") in ENGINE_DOWN and host.healthy:
        # Its engine is (re)starting, failed or stopped: no requests until a health check passes again.
        host.healthy, host.consecutive_successes = False, 0
    db.session.commit()
    if report.get("engine") == "running" and not host.healthy and host.status == "approved":
        import jobs
        from jobs import health

        # An engine that just came up is probed now, not next round (without Redis: next round).
        quietly(lambda: jobs.enqueue(health.check_host, host.id), None, "enqueueing a health check")
    return host


def owned_host(user: User, host_id: int) -> Host:
    """The user's own host, or a 404 (another person's host looks like no host at all)."""
    host = db.session.get(Host, host_id)
    if host is None or host.owner_id != user.id:
        raise HostError("no such host", status=404)
    return host


def set_enabled(actor: User, host: Host, enabled: bool) -> Host:
    """The dashboard's toggle: a disabled host gets no new requests; those in flight finish."""
    if host.enabled != enabled:
        host.enabled = enabled
        audit.record(actor, "host.enable" if enabled else "host.disable", "host", host.id)
        db.session.commit()
    return host


def set_available(host: Host, available: bool) -> Host:
    """``hostkit up`` / ``hostkit down``, recorded in the owner's name."""
    if not isinstance(available, bool):
        raise HostError("available must be true or false")
    if host.available != available:
        host.available = available
        audit.record(host.owner, "host.up" if available else "host.down", "host", host.id, via="hostkit")
        db.session.commit()
    return host


def set_schedule(actor: User, host: Host, windows_text: str, timezone: str) -> Host:
    try:
        windows, tz = schedule.parse(windows_text), schedule.timezone(timezone)
    except schedule.ScheduleError as error:
        raise HostError(f"schedule: {error}") from None
    host.schedule, host.timezone = windows, tz
    audit.record(actor, "host.schedule", "host", host.id, schedule=schedule.format_windows(windows), timezone=tz)
    db.session.commit()
    return host


def gpu_memory_mib(host: Host) -> int | None:
    """The largest GPU's memory from the host's ``hostkit check`` report (0: no GPU), or None (no report).
    Reports are checked at registration; one of another shape (from before that) reads as no report."""
    report = host.hardware if isinstance(host.hardware, dict) else {}
    checks = report.get("checks")
    for check in checks if isinstance(checks, list) else []:
        if isinstance(check, dict) and check.get("name") == "gpu":
            data = check.get("data") if isinstance(check.get("data"), dict) else {}
            gpus = data.get("gpus") if isinstance(data.get("gpus"), list) else []
            sizes = [gpu.get("memory_total_mib") for gpu in gpus if isinstance(gpu, dict)]
            # A machine without a GPU serves the CPU models only.
            return max((size for size in sizes if isinstance(size, int) and not isinstance(size, bool)), default=0)
    return None


def models_for(host: Host) -> list[tuple[CatalogModel, bool, bool]]:
    """Every enabled catalog model as (model, offered by this host, fits this host's GPU)."""
    offered = {offer.model_id for offer in host.offers if offer.enabled}
    vram = gpu_memory_mib(host)
    catalog = db.session.scalars(select(CatalogModel).where(CatalogModel.enabled).order_by(CatalogModel.id))
    return [(model, model.id in offered, vram is None or model.min_vram_mib <= vram) for model in catalog]


def set_model(actor: User, host: Host, hf_id: str, enabled: bool) -> HostModel:
    """Offer a catalog model on this host, or stop offering it."""
    model = db.session.scalar(select(CatalogModel).where(CatalogModel.hf_id == str(hf_id or "").strip()))
    if model is None or not model.enabled:
        raise HostError(f"{shown(str(hf_id))!r} is not in the catalog: `hostkit models` lists the models you can offer",
                        status=404)
    vram = gpu_memory_mib(host)
    if enabled and vram is not None and model.min_vram_mib > vram:
        raise HostError(f"{model.hf_id} needs {model.min_vram_mib} MiB of GPU memory; this host has {vram} MiB")
    offer = db.session.get(HostModel, (host.id, model.id))
    if offer is None:
        offer = HostModel(host_id=host.id, model_id=model.id, enabled=enabled)
        db.session.add(offer)
    offer.enabled = enabled
    audit.record(actor, "host.model_enable" if enabled else "host.model_disable", "host", host.id,
                 model=model.hf_id)
    db.session.commit()
    return offer


@dataclass(frozen=True)
class Earnings:
    requests: int = 0
    tokens: int = 0
    earned: int = 0
    earned_7d: int = 0


EARNINGS_SQL = text("""
    SELECT u.host_id, count(*) AS requests, sum(u.prompt_tokens + u.completion_tokens) AS tokens,
           coalesce(sum(e.amount), 0) AS earned,
           coalesce(sum(e.amount) FILTER (WHERE u.created_at > now() - interval '7 days'), 0) AS earned_7d
    FROM usage_records u
    LEFT JOIN ledger_entries e ON e.transfer_id = 'usage:' || u.request_id
        AND e.account_id = (SELECT id FROM ledger_accounts WHERE kind = 'host' AND user_id = :owner)
    WHERE u.host_id = ANY(:hosts)
    GROUP BY u.host_id
""")


def earnings(owner: User, host_ids: list[int]) -> dict[int, Earnings]:
    """What each of the owner's hosts has earned, from the ledger (micro-units)."""
    if not host_ids:
        return {}
    rows = db.session.execute(EARNINGS_SQL, {"owner": owner.id, "hosts": host_ids})
    return {row.host_id: Earnings(row.requests, row.tokens or 0, row.earned, row.earned_7d) for row in rows}


EARNINGS_PER_DAY_SQL = text("""
    SELECT date(timezone('UTC', e.created_at)) AS day, sum(e.amount) AS amount
    FROM ledger_entries e
    JOIN ledger_transfers t ON t.id = e.transfer_id AND t.kind = 'usage'
    WHERE e.account_id = (SELECT id FROM ledger_accounts WHERE kind = 'host' AND user_id = :owner)
      AND e.created_at >= :start AND e.created_at < :end
    GROUP BY 1
""")


def earnings_per_day(owner: User, days: int = 30, *, now: datetime | None = None) -> list[DayAmount]:
    """What the owner's host account was credited for serving requests on each of the last ``days`` UTC days,
    oldest first, 0 on days without any.

    Read from the ledger's usage transfers, not from usage records: a record's cost includes the platform's
    fee, and the host account's other credits (a payout returned or reversed) are not earnings.
    """
    start, end = utc_days(days, now)
    rows = db.session.execute(EARNINGS_PER_DAY_SQL, {"owner": owner.id, "start": start, "end": end}).all()
    return zero_filled(dict(rows), start, days)


def served_models(owner: User) -> list[CatalogModel]:
    """The models any of the owner's hosts offers, by name."""
    return db.session.scalars(
        select(CatalogModel).join(HostModel, HostModel.model_id == CatalogModel.id)
        .join(Host, Host.id == HostModel.host_id).where(Host.owner_id == owner.id, HostModel.enabled)
        .distinct().order_by(CatalogModel.display_name, CatalogModel.id)).all()


def markets(owner: User, hours: int = 24) -> list[tuple[CatalogModel, list[pricing.MarketPoint]]]:
    """Each model the owner's hosts offer, with its demand, supply and prices over the last ``hours``."""
    models = served_models(owner)
    history = pricing.market_history([model.id for model in models], hours)
    return [(model, history[model.id]) for model in models]


class Serving(NamedTuple):
    """Whether the router sends a host new requests now; if not, the first reason, as a code and in words."""

    ok: bool
    code: str
    why: str


# The rule, in the order a host owner fixes things. The routing table applies the same rule in SQL (``routing``'s
# SERVING_HOSTS and its schedule check); tests/hosts/test_serving.py holds the two to each other.
NOT_SERVING = {
    "pending": "waiting for an admin's approval",
    "rejected": "an admin rejected it",
    "suspended": "an admin suspended it",
    "disabled": "disabled on the dashboard",
    "switched_off": "switched off on the machine (hostkit down)",
    "outside_schedule": "outside its schedule",
    "no_model": "no model chosen",
    "no_address": "no overlay address yet",
    "unhealthy": "waiting for a passing health check",
    "reference": "a reference engine: it checks other hosts and takes no client traffic",
    "quarantined": "quarantined by verification: no traffic, earnings held until an admin reviews it",
    "staged": "being verified: spot checks and a benchmark before any client traffic",
}
# Serving, but only when no verified host can take a request.
DEGRADED = "serving as a fallback only: its reputation is below the verified hosts'"


def in_schedule(host: Host, now: datetime | None = None) -> bool:
    """Whether ``now`` is inside the host's weekly windows (a schedule that cannot be read is never inside)."""
    try:
        return schedule.in_schedule(host.schedule or [], host.timezone, now or utcnow())
    except Exception:  # stored data from before validation: the host does not serve until it is set again
        return False


def serving(host: Host, now: datetime | None = None) -> Serving:
    """May this host take new requests now, and if not, why. The one place the rule is written."""
    checks = [
        (host.status == "approved", host.status if host.status in NOT_SERVING else "suspended"),
        (host.enabled, "disabled"),
        (host.available, "switched_off"),
        (in_schedule(host, now), "outside_schedule"),
        (any(offer.enabled for offer in host.offers), "no_model"),
        (host.api_base is not None, "no_address"),
        (host.healthy, "unhealthy"),
        (not host.reference, "reference"),
        (host.trust_state != "quarantined", "quarantined"),
        (host.trust_state != "staged", "staged"),
    ]
    code = next((code for ok, code in checks if not ok), None)
    if code is not None:
        return Serving(False, code, NOT_SERVING[code])
    if host.trust_state == "degraded":
        return Serving(True, "degraded", DEGRADED)
    return Serving(True, "serving", "serving")


def fleet_counts() -> dict[str, int]:
    """Hosts per status, and approved hosts that are healthy, for the admin's fleet view."""
    counts = dict(db.session.execute(select(Host.status, func.count()).group_by(Host.status)).all())
    counts["healthy"] = db.session.scalar(select(func.count()).where(Host.status == "approved", Host.healthy)) or 0
    return counts
