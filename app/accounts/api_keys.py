"""Client API keys: create (shown once), rename, revoke, and the cached lookup the proxy uses.

A lookup is cached in Redis, shared by every router process. Revoking writes
a tombstone over the cache entry after the commit, and lookups only ever fill
an empty slot (SET NX), so a revoked key fails on the very next request in
every process, even when a lookup raced the revocation. The cache is a help,
not the authority: without Redis, keys are looked up in PostgreSQL, and
``gs_hold`` itself refuses a revoked key, so a key revoked while Redis was
away (its tombstone never written) still stops spending at once.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

from flask import current_app
from sqlalchemy import select

from ..extensions import db, redis_client
from ..models import ApiKey, CatalogModel, User, utcnow
from ..shared import quietly
from . import audit, tokens

MAX_NAME_LENGTH = 80
MAX_KEYS_PER_USER = 100
REVOKED = "revoked"
UNKNOWN = "unknown"


class ApiKeyError(ValueError):
    """A key request that cannot be done; the message is for the person."""


@dataclass(frozen=True)
class KeyInfo:
    """What the router needs to know about a key, without touching the database."""

    id: int
    user_id: int
    allowed_models: tuple[str, ...] | None
    requests_per_minute: int | None = None  # None: the platform default
    tokens_per_minute: int | None = None

    def allows(self, model: str) -> bool:
        return self.allowed_models is None or model in self.allowed_models


def _cache_key(key_hash: str) -> str:
    return f"apikey:{key_hash}"


def _clean_name(name: str) -> str:
    name = " ".join((name or "").split())
    if not name:
        raise ApiKeyError("Give the key a name, such as the app that will use it.")
    if len(name) > MAX_NAME_LENGTH:
        raise ApiKeyError(f"Key names are at most {MAX_NAME_LENGTH} characters.")
    return name


def _clean_allowlist(models: list[str] | None) -> list[str] | None:
    if not models:
        return None
    wanted = sorted(set(models))
    known = set(db.session.scalars(select(CatalogModel.hf_id).where(CatalogModel.hf_id.in_(wanted))))
    unknown = [m for m in wanted if m not in known]
    if unknown:
        raise ApiKeyError(f"Unknown model: {', '.join(unknown)}.")
    return wanted


def create_key(user: User, name: str, *, spend_limit: int | None = None,
               allowed_models: list[str] | None = None) -> tuple[ApiKey, str]:
    """A new key for ``user``; returns the row and the full secret, which is shown once."""
    name = _clean_name(name)
    if spend_limit is not None and spend_limit <= 0:
        raise ApiKeyError("A spend limit must be more than zero (leave it empty for no limit).")
    allowed = _clean_allowlist(allowed_models)
    active = db.session.scalar(select(db.func.count()).select_from(ApiKey)
                               .where(ApiKey.user_id == user.id, ApiKey.revoked_at.is_(None)))
    if active >= MAX_KEYS_PER_USER:
        raise ApiKeyError(f"An account may hold at most {MAX_KEYS_PER_USER} active keys; revoke one first.")
    token = tokens.new_token(tokens.API_KEY_PREFIX)
    key = ApiKey(user_id=user.id, name=name, prefix=token.prefix, key_hash=token.hash,
                 spend_limit=spend_limit, allowed_models=allowed)
    db.session.add(key)
    db.session.flush()
    audit.record(user, "api_key.create", "api_key", key.id, name=name, prefix=key.prefix,
                 spend_limit=spend_limit, allowed_models=allowed)
    db.session.commit()
    return key, token.secret


def get_user_key(user: User, key_id: int) -> ApiKey:
    """The key if ``user`` owns it, else 404: another person's key id looks like no key at all."""
    return db.first_or_404(select(ApiKey).where(ApiKey.id == key_id, ApiKey.user_id == user.id))


def list_keys(user: User) -> list[ApiKey]:
    return list(db.session.scalars(select(ApiKey).where(ApiKey.user_id == user.id)
                                   .order_by(ApiKey.revoked_at.is_not(None), ApiKey.id.desc())))


def rename_key(user: User, key: ApiKey, name: str) -> ApiKey:
    name = _clean_name(name)
    if name != key.name:
        audit.record(user, "api_key.rename", "api_key", key.id, old=key.name, new=name)
        key.name = name
        db.session.commit()
    return key


def revoke_key(user: User, key: ApiKey) -> ApiKey:
    """Revoke at once: committed first, then the shared cache is overwritten with a tombstone."""
    if key.revoked_at is None:
        key.revoked_at = utcnow()
        audit.record(user, "api_key.revoke", "api_key", key.id, prefix=key.prefix)
        db.session.commit()
    quietly(lambda: redis_client.set(_cache_key(key.key_hash), REVOKED,
                                     ex=current_app.config["API_KEY_CACHE_SECONDS"]), None, "the key cache")
    return key


def authenticate(secret: str) -> KeyInfo | None:
    """The active key whose secret this is, or None for a malformed, unknown or revoked key."""
    if not tokens.well_formed(secret, tokens.API_KEY_PREFIX):
        return None
    key_hash = tokens.hash_secret(secret)
    cache_key = _cache_key(key_hash)
    cached = quietly(lambda: redis_client.get(cache_key), None, "the key cache")
    if cached is not None:
        return _decode(cached)
    key = db.session.scalar(select(ApiKey).where(ApiKey.key_hash == key_hash))
    if key is None:
        value = UNKNOWN
    elif key.revoked_at is not None:
        value = REVOKED
    else:
        value = json.dumps({"id": key.id, "user_id": key.user_id, "allowed_models": key.allowed_models,
                            "requests_per_minute": key.requests_per_minute or key.user.requests_per_minute,
                            "tokens_per_minute": key.tokens_per_minute or key.user.tokens_per_minute})
    # NX: never overwrite a tombstone a revocation wrote after our read.
    ttl = current_app.config["API_KEY_CACHE_SECONDS"]
    stored = quietly(lambda: redis_client.set(cache_key, value, ex=ttl, nx=True) or redis_client.get(cache_key),
                     None, "the key cache")
    return _decode(value if stored in (None, True) else stored)


def _decode(raw: bytes | str) -> KeyInfo | None:
    raw = raw.decode() if isinstance(raw, bytes) else raw
    if raw in (REVOKED, UNKNOWN):
        return None
    data = json.loads(raw)
    allowed = data["allowed_models"]
    return KeyInfo(id=data["id"], user_id=data["user_id"],
                   allowed_models=tuple(allowed) if allowed is not None else None,
                   requests_per_minute=data.get("requests_per_minute"), tokens_per_minute=data.get("tokens_per_minute"))
