"""The verifier: the platform's own client account, whose key sends canaries and benchmarks.

Its requests are billed like anyone's (the host is paid for a canary as for any request, so earnings say nothing of
which requests were canaries) against a credit line of ``VERIFY_CREDIT_USD``: its balance below zero is what
verification has cost. Nobody logs in as the verifier; its password is never kept.
"""
from __future__ import annotations

import random
import secrets
from datetime import timedelta

from flask import current_app
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from .. import accounts
from ..accounts import api_keys
from ..extensions import db
from ..models import ApiKey, CatalogModel, Host, HostModel, LedgerAccount, User
from ..money import ledger, units
from ..proxy import sampling
from ..proxy.gateway import Call, admit, serve
from ..proxy.routing import Route, heartbeat_context
from . import canaries

VERIFIER_EMAIL = "verifier@gpushare.invalid"
KEY_NAME = "canaries"
# Enough for bursts of canaries and benchmarks; the verifier is limited by its schedule, not by rate limits.
REQUESTS_PER_MINUTE, TOKENS_PER_MINUTE = 100_000, 100_000_000


def account() -> User:
    """The verifier's account, made on first use with its credit line."""
    user = accounts.find_user(VERIFIER_EMAIL)
    if user is None:
        try:
            user = accounts.create_user(VERIFIER_EMAIL, secrets.token_urlsafe(32))
        except (IntegrityError, accounts.AccountError):  # made at the same moment by another worker
            db.session.rollback()
            user = accounts.find_user(VERIFIER_EMAIL)
    credit = units.dollars(current_app.config["VERIFY_CREDIT_USD"])
    account_id = ledger.account_id("client", user)
    db.session.execute(update(LedgerAccount).where(LedgerAccount.id == account_id,
                                                   LedgerAccount.credit_limit != credit).values(credit_limit=credit))
    db.session.commit()
    return user


def key() -> api_keys.KeyInfo:
    """The verifier's API key, as the request path knows a key (its secret is never needed)."""
    user = account()
    row = db.session.scalar(select(ApiKey).where(ApiKey.user_id == user.id, ApiKey.name == KEY_NAME,
                                                 ApiKey.revoked_at.is_(None)))
    if row is None:
        row, _ = api_keys.create_key(user, KEY_NAME)
        row.requests_per_minute, row.tokens_per_minute = REQUESTS_PER_MINUTE, TOKENS_PER_MINUTE
        db.session.commit()
    return api_keys.KeyInfo(id=row.id, user_id=user.id, allowed_models=None,
                            requests_per_minute=row.requests_per_minute, tokens_per_minute=row.tokens_per_minute)


def spent() -> int:
    """What verification has cost so far (micro-USD): what the verifier's requests were charged."""
    user = accounts.find_user(VERIFIER_EMAIL)
    return 0 if user is None else -min(ledger.existing("client", user).balance, 0)


def route(host: Host) -> Route:
    """The host as the request path dials it, whatever its trust."""
    max_model_len = heartbeat_context((host.heartbeat or {}).get("max_model_len"))
    return Route(host.id, host.owner_id, host.api_base.rstrip("/"), max_model_len)


def chat_model(host: Host) -> CatalogModel | None:
    """The chat model the host serves (the one its canaries ask for)."""
    return db.session.scalar(select(CatalogModel).join(HostModel, HostModel.model_id == CatalogModel.id)
                             .where(HostModel.host_id == host.id, HostModel.enabled, CatalogModel.enabled,
                                    CatalogModel.kind == "chat").order_by(CatalogModel.id).limit(1))


def send(host: Host, body: dict) -> Call:
    """Send ``body`` to ``host`` as the verifier, on a client's whole path (admission, hold, forwarding, metering,
    settlement: the same body, headers and pace a host sees from any client) whatever the routing table would
    choose, and read the answer to its end as a client does. Returns the settled call, whose ``sample`` holds the
    answer for a check (None when the host sent no token ids, or the sampling is not one the checks model).
    Raises ApiError as a client would get it (the host failed, timed out...)."""
    verifier, target = key(), route(host)
    db.session.commit()  # the request path runs its own transactions; nothing of ours stays open meanwhile
    with current_app.test_request_context():
        call = admit("chat", verifier, canaries.encoded(body))
        call.canary, call.sampled = True, sampling.sampling_of(call.req.body)
        response = serve(call, [target])
        if call.req.stream:
            try:
                for _ in response.response:
                    pass
            finally:
                response.close()
    return call


def next_gap(seconds: int, rng: random.Random | None = None) -> timedelta:
    """The wait before a host's next canary: between half and one and a half times the mean, so a host cannot
    set its watch by them."""
    return timedelta(seconds=seconds * (rng or random).uniform(0.5, 1.5))
