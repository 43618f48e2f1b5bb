"""Hosts: enrollment keys, registration by ``hostkit register``, approval with an overlay address, heartbeats.

A host user makes a single-use enrollment key on the dashboard; the machine
registers with it, its WireGuard public key (its identity) and a hardware
report, and receives a host token (shown once). The host stays pending, and
nothing is routed to it, until an admin approves it; approval gives it one
overlay address from the allocator, which the router dials.
"""
from __future__ import annotations

import json
from datetime import timedelta

from flask import current_app
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from overlay import identity, ipam

from . import audit, tokens
from .extensions import db
from .models import EnrollmentKey, Host, User, utcnow

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
    return db.session.get(Host, host_id, populate_existing=True)


def _url_host(address: str) -> str:
    return f"[{address}]" if ":" in address else address


def record_heartbeat(host: Host, report: dict) -> Host:
    if not isinstance(report, dict) or len(json.dumps(report)) > MAX_REPORT_BYTES:
        raise HostError(f"a heartbeat is an object of at most {MAX_REPORT_BYTES // 1024} KiB")
    host.heartbeat = report
    host.last_heartbeat_at = utcnow()
    db.session.commit()
    return host
